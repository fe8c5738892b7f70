//! `treaty bench w5`: workload W5, Gaussian noise through opendp.

use std::time::Instant;

use treaty_node::GaussianNoise;

use crate::outln;

/// W5: Gaussian noise through opendp for updates of 10^3, 10^5 and 10^6 parameters, on one
/// thread and on every core: samples per second, the median of `repeats` runs.
pub fn w5(repeats: usize, sizes: &[usize]) -> anyhow::Result<()> {
    let noise = GaussianNoise {
        sensitivity: 1.0,
        noise_multiplier: 1.0,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    outln!("W5: Gaussian noise through opendp (scale 1), median of {repeats} runs, {cores} cores");
    outln!(
        "    parameters   one thread (samples/s)   all cores (samples/s)   all cores (s per update)"
    );
    let mut rows = Vec::new();
    for &size in sizes {
        let median = |mut times: Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        let prepared = noise.prepare(size)?;
        let single = median(
            (0..repeats)
                .map(|_| {
                    let mut v = vec![0.0; size];
                    let t = Instant::now();
                    prepared.add(&mut v).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        let parallel = median(
            (0..repeats)
                .map(|_| {
                    let mut v = vec![0.0; size];
                    let t = Instant::now();
                    noise.add(&mut v).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        outln!(
            "    {size:>10}   {:>22.0}   {:>21.0}   {:>24.3}",
            size as f64 / single,
            size as f64 / parallel,
            parallel
        );
        rows.push(serde_json::json!({"parameters": size, "single_thread_samples_per_second": size as f64 / single, "all_cores_samples_per_second": size as f64 / parallel, "all_cores_seconds": parallel}));
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "W5", "cores": cores, "results": rows})
    );
    Ok(())
}

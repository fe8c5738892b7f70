//! `treaty bench timing`: the timing channel of `docs/THREAT_MODEL.md`, measured. A DP-SGD
//! round of W1's shape (64 standardised features, logistic regression, batch 256, one epoch)
//! with its sampling rate fixed by a public figure, timed on tables whose true number of
//! records differs: half the public figure, the public figure, and one record more. Reports how
//! a round's time grows with the records (seconds per record) against its run-to-run spread.

use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use treaty_node::Examples;
use treaty_node::GaussianNoise;
use treaty_node::{Architecture, Model};
use treaty_node::{DpSgd, Sampling, Sgd, train_dp};

use crate::outln;

fn examples(rows: usize, rng: &mut StdRng) -> Examples {
    let x = Array2::from_shape_fn((rows, 64), |_| rng.random::<f64>() * 4.0 - 2.0);
    let y = Array1::from_shape_fn(rows, |i| f64::from(u8::from(x[[i, 0]] > 0.0)));
    Examples { x, y }
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs the timing benchmark: `repeats` rounds per size around `public_records`.
pub fn timing(public_records: usize, repeats: usize) -> anyhow::Result<()> {
    let batch = 256.0;
    let q = (batch / public_records as f64).min(1.0);
    let dp = DpSgd {
        sampling: Sampling::Poisson(q),
        steps: (1.0 / q).ceil() as u64,
        noise: GaussianNoise {
            sensitivity: 1.0,
            noise_multiplier: 1.0,
        },
        denominator: batch.min(public_records as f64),
    };
    let sgd = Sgd {
        epochs: 1,
        batch_size: 256,
        learning_rate: 0.1,
        momentum: 0.0,
        l2: 0.0,
        proximal_mu: 0.0,
        seed: 1,
    };
    let stop = CancellationToken::new();
    let mut rng = StdRng::seed_from_u64(7);
    outln!(
        "timing: one DP-SGD round of W1's shape, q = {q:.5} from a public count of {public_records}, {} steps; median of {repeats} runs",
        dp.steps
    );
    outln!("    true records   median (s)   min (s)   max (s)");
    // The sizes are interleaved run by run, after one warm-up, so that drift in the machine's
    // speed falls on all of them alike.
    let sizes = [public_records / 2, public_records, public_records + 1];
    let tables: Vec<Examples> = sizes
        .iter()
        .map(|&n| examples(n.max(1), &mut rng))
        .collect();
    let mut times = vec![Vec::with_capacity(repeats); sizes.len()];
    for run in 0..=repeats {
        for (data, t) in tables.iter().zip(times.iter_mut()) {
            let mut model = Model::zeros(Architecture::Logistic, 64);
            let start = Instant::now();
            train_dp(&mut model, data, None, &sgd, &dp, &stop)?;
            if run > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let mut medians = Vec::new();
    let mut rows = Vec::new();
    let mut spread = 0.0;
    for (&n, t) in sizes.iter().zip(times.iter_mut()) {
        let m = median(t);
        let (lo, hi) = (t[0], t[t.len() - 1]);
        outln!("    {n:>12}   {m:>10.4}   {lo:>7.4}   {hi:>7.4}");
        if n == public_records {
            spread = hi - lo;
        }
        medians.push((n, m));
        rows.push(serde_json::json!({"records": n, "median_seconds": m, "min_seconds": lo, "max_seconds": hi}));
    }
    let (half, full) = (medians[0], medians[1]);
    let per_record = (full.1 - half.1) / (full.0 - half.0).max(1) as f64;
    let relative = if spread > 0.0 {
        per_record / spread
    } else {
        f64::NAN
    };
    outln!(
        "    a round's time grows by {per_record:.3e} s per record; one record's effect is {relative:.2e} of the run-to-run spread ({spread:.4} s) at {public_records} records"
    );
    outln!(
        "{}",
        serde_json::json!({
            "workload": "timing", "public_records": public_records, "sampling_rate": q,
            "steps": dp.steps, "repeats": repeats, "results": rows,
            "seconds_per_record": per_record, "spread_seconds": spread,
            "record_over_spread": if relative.is_finite() { Some(relative) } else { None },
        })
    );
    Ok(())
}

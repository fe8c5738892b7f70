//! Combining the nodes' noisy answers to an analytics query into the federation's answer, each
//! value with its noise and a confidence interval.
//!
//! Every node adds Laplace noise of a known scale (it reports the scale); the noise in a sum over
//! nodes is a sum of independent Laplace variables, whose distribution is known but has no simple
//! quantiles. The intervals are found by simulating that known distribution (a parametric
//! bootstrap of 20,000 draws): for a count or a sum the interval is exact up to simulation error;
//! for a mean (a ratio) and for quantiles (read off the noisy cumulative histogram, which adds
//! half a bin of discretisation) it is the bootstrap's.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use treaty_proto::query::{bins, histogram_labels, layout};
use treaty_proto::v1::{QueryKind, QuerySpec, QueryValue};

use crate::tasks::TaskResult;

const DRAWS: usize = 20_000;

fn laplace(rng: &mut StdRng, scale: f64) -> f64 {
    let u: f64 = rng.random::<f64>() - 0.5;
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

/// The empirical quantile of sorted values.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn std_of(values: &[f64]) -> f64 {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// The quantile `p` of the distribution a histogram on [lower, upper] describes (negative
/// counts read as zero), interpolating inside the bin.
fn histogram_quantile(counts: &[f64], lower: f64, upper: f64, p: f64) -> f64 {
    let clean: Vec<f64> = counts.iter().map(|c| c.max(0.0)).collect();
    let total: f64 = clean.iter().sum();
    let width = (upper - lower) / clean.len().max(1) as f64;
    if total <= 0.0 {
        return f64::NAN;
    }
    let target = p * total;
    let mut cumulative = 0.0;
    for (i, c) in clean.iter().enumerate() {
        if cumulative + c >= target && *c > 0.0 {
            return lower + width * (i as f64 + (target - cumulative) / c);
        }
        cumulative += c;
    }
    upper
}

/// The federation's answer: the plain estimates and each with its noise and interval.
pub fn combine(spec: &QuerySpec, results: &[(String, TaskResult)]) -> (Vec<f64>, Vec<QueryValue>) {
    let Some((bounds, _)) = layout(spec) else {
        return (vec![], vec![]);
    };
    let width = bounds.len();
    let mut totals = vec![0.0; width];
    let mut scales = Vec::new(); // each node's Laplace scale (on the bound-normalised values)
    for (_, r) in results {
        if let Some(t) = r.tensors.first() {
            for (acc, v) in totals.iter_mut().zip(t.values.iter()) {
                *acc += v;
            }
        }
        scales.push(r.metrics.get("laplace_scale").copied().unwrap_or(0.0));
    }
    let confidence = if spec.confidence > 0.0 && spec.confidence < 1.0 {
        spec.confidence
    } else {
        0.95
    };
    let (lo_p, hi_p) = ((1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0);
    let mut rng = StdRng::from_os_rng();
    // DRAWS draws of the noise in each total.
    let noise: Vec<Vec<f64>> = (0..DRAWS)
        .map(|_| {
            bounds
                .iter()
                .map(|b| scales.iter().map(|s| laplace(&mut rng, s * b)).sum::<f64>())
                .collect()
        })
        .collect();
    // An estimate and its bootstrap: f(totals) and f(totals - noise) for every draw.
    let interval = |label: String, f: &dyn Fn(&[f64]) -> f64, widen: f64| {
        let value = f(&totals);
        let mut draws: Vec<f64> = noise
            .iter()
            .map(|n| {
                let shifted: Vec<f64> = totals.iter().zip(n).map(|(t, e)| t - e).collect();
                f(&shifted)
            })
            .filter(|v| v.is_finite())
            .collect();
        draws.sort_by(f64::total_cmp);
        QueryValue {
            label,
            value,
            noise_std: std_of(&draws),
            ci_low: quantile(&draws, lo_p) - widen,
            ci_high: quantile(&draws, hi_p) + widen,
        }
    };
    let answer: Vec<QueryValue> =
        match QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified) {
            QueryKind::Count => vec![interval("count".into(), &|t| t[0], 0.0)],
            QueryKind::Sum => vec![interval(format!("sum of {}", spec.column), &|t| t[0], 0.0)],
            QueryKind::Mean => vec![
                interval(format!("mean of {}", spec.column), &|t| t[0] / t[1], 0.0),
                interval("count".into(), &|t| t[1], 0.0),
            ],
            QueryKind::Histogram => histogram_labels(spec)
                .into_iter()
                .enumerate()
                .map(|(i, label)| interval(label, &move |t: &[f64]| t[i], 0.0))
                .collect(),
            QueryKind::Quantile => {
                let half_bin = (spec.upper - spec.lower) / bins(spec) as f64 / 2.0;
                spec.quantiles
                    .iter()
                    .map(|&p| {
                        interval(
                            format!("q{p}"),
                            &move |t: &[f64]| histogram_quantile(t, spec.lower, spec.upper, p),
                            half_bin,
                        )
                    })
                    .collect()
            }
            QueryKind::Unspecified => vec![],
        };
    (answer.iter().map(|v| v.value).collect(), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_within_bins() {
        // 10 values in [0, 1), 30 in [1, 2), nothing above, on [0, 4) with 4 bins: the median is
        // the 20th value, 10 into the second bin's 30: 1 + 10/30.
        let q = histogram_quantile(&[10.0, 30.0, 0.0, 0.0], 0.0, 4.0, 0.5);
        assert!((q - (1.0 + 10.0 / 30.0)).abs() < 1e-12, "{q}");
        // Nothing left after the noise: no quantile.
        assert!(histogram_quantile(&[-3.0, 0.0], 0.0, 1.0, 0.5).is_nan());
    }

    #[test]
    fn laplace_draws_have_the_laplace_variance() {
        // Var(Laplace(b)) = 2 b^2.
        let mut rng = StdRng::seed_from_u64(3);
        let draws: Vec<f64> = (0..200_000).map(|_| laplace(&mut rng, 2.0)).collect();
        let var = draws.iter().map(|x| x * x).sum::<f64>() / draws.len() as f64;
        assert!((var - 8.0).abs() < 0.1, "{var}");
    }
}

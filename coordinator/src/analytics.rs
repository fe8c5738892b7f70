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
/// Bootstrap draws of a quantile query (each re-reads the whole histogram).
const QUANTILE_DRAWS: usize = 2_000;

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
///
/// The noise in any total is `bound x U`, U the sum over nodes of Laplace(node's scale), so U is
/// simulated once (DRAWS draws, sorted) and every value reads its interval off it: linear in the
/// answer's width, whatever the width. A mean (a ratio) pairs two independent draws of U; a
/// quantile re-reads the histogram QUANTILE_DRAWS times with each bin's noise resampled from U.
pub fn combine(spec: &QuerySpec, results: &[(String, TaskResult)]) -> (Vec<f64>, Vec<QueryValue>) {
    let Some((bounds, _)) = layout(spec) else {
        return (vec![], vec![]);
    };
    let mut totals = vec![0.0; bounds.len()];
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
    let draw_u = |rng: &mut StdRng| scales.iter().map(|s| laplace(rng, *s)).sum::<f64>();
    let mut unit: Vec<f64> = (0..DRAWS).map(|_| draw_u(&mut rng)).collect();
    unit.sort_by(f64::total_cmp);
    let unit_std = std_of(&unit);
    // A single total t with bound b: the truth lies in [t - b q_hi(U), t - b q_lo(U)].
    let linear = |label: String, i: usize| QueryValue {
        label,
        value: totals[i],
        noise_std: bounds[i] * unit_std,
        ci_low: totals[i] - bounds[i] * quantile(&unit, hi_p),
        ci_high: totals[i] - bounds[i] * quantile(&unit, lo_p),
    };
    // A function of several totals: its value and the interval of its bootstrap draws.
    let from_draws = |label: String, value: f64, mut draws: Vec<f64>, widen: f64| {
        draws.retain(|v| v.is_finite());
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
            QueryKind::Count => vec![linear("count".into(), 0)],
            QueryKind::Sum => vec![linear(format!("sum of {}", spec.column), 0)],
            QueryKind::Mean => {
                let draws: Vec<f64> = (0..DRAWS)
                    .map(|_| {
                        let (e_sum, e_count) =
                            (bounds[0] * draw_u(&mut rng), bounds[1] * draw_u(&mut rng));
                        (totals[0] - e_sum) / (totals[1] - e_count)
                    })
                    .collect();
                vec![
                    from_draws(
                        format!("mean of {}", spec.column),
                        totals[0] / totals[1],
                        draws,
                        0.0,
                    ),
                    linear("count".into(), 1),
                ]
            }
            QueryKind::Histogram => histogram_labels(spec)
                .into_iter()
                .enumerate()
                .map(|(i, label)| linear(label, i))
                .collect(),
            QueryKind::Quantile => {
                let half_bin = (spec.upper - spec.lower) / bins(spec) as f64 / 2.0;
                let mut shifted = vec![0.0; totals.len()];
                let mut draws: Vec<Vec<f64>> =
                    vec![Vec::with_capacity(QUANTILE_DRAWS); spec.quantiles.len()];
                for _ in 0..QUANTILE_DRAWS {
                    for ((s, t), b) in shifted.iter_mut().zip(&totals).zip(&bounds) {
                        *s = t - b * unit[rng.random_range(0..unit.len())];
                    }
                    for (d, &p) in draws.iter_mut().zip(&spec.quantiles) {
                        d.push(histogram_quantile(&shifted, spec.lower, spec.upper, p));
                    }
                }
                spec.quantiles
                    .iter()
                    .zip(draws)
                    .map(|(&p, d)| {
                        from_draws(
                            format!("q{p}"),
                            histogram_quantile(&totals, spec.lower, spec.upper, p),
                            d,
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

    fn node_answer(values: Vec<f64>, scale: f64) -> TaskResult {
        let n = values.len();
        TaskResult {
            num_examples: 1,
            metrics: [("laplace_scale".to_owned(), scale)].into(),
            tensors: vec![treaty_proto::tensor::NamedTensor::new(
                "statistic",
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), values).unwrap(),
            )],
            declared_norm_bound: 0.0,
            evaluation: None,
        }
    }

    #[test]
    fn one_laplace_count_has_the_closed_form_interval() {
        // One node, Laplace(2): P(|X| > x) = exp(-x / 2), so the 95 % interval is
        // +-2 ln 20 = +-5.99 around the count, and the standard deviation is 2 sqrt 2.
        let spec = QuerySpec {
            kind: QueryKind::Count as i32,
            epsilon: 0.5,
            ..Default::default()
        };
        let (values, answer) = combine(&spec, &[("A".into(), node_answer(vec![100.0], 2.0))]);
        assert_eq!(values, vec![100.0]);
        let v = &answer[0];
        let half = 2.0 * 20f64.ln();
        assert!(
            (v.ci_high - 100.0 - half).abs() < 0.25 && (100.0 - v.ci_low - half).abs() < 0.25,
            "{v:?}"
        );
        assert!((v.noise_std - 2.0 * 2f64.sqrt()).abs() < 0.1, "{v:?}");
        // A sum's noise is its clamp bound times the count's.
        let spec = QuerySpec {
            kind: QueryKind::Sum as i32,
            lower: -5.0,
            upper: 5.0,
            epsilon: 0.5,
            ..Default::default()
        };
        let (_, answer) = combine(&spec, &[("A".into(), node_answer(vec![30.0], 2.0))]);
        assert!(
            (answer[0].noise_std - 5.0 * 2.0 * 2f64.sqrt()).abs() < 0.5,
            "{:?}",
            answer[0]
        );
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

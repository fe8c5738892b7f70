//! Combining the nodes' noisy answers to an analytics query into the federation's answer, each
//! value with its noise and a confidence interval.
//!
//! Every node adds Laplace noise of a known scale (it reports the scale); the noise in a sum over
//! nodes is a sum of independent Laplace variables, whose distribution is known but has no simple
//! quantiles. The intervals are found by simulating that known distribution (a parametric
//! bootstrap of 20,000 draws): for a count or a sum the interval is exact up to simulation error;
//! for a mean (a ratio) and for quantiles (read off the noisy cumulative histogram, which adds
//! half a bin of discretisation) it is the bootstrap's.
//!
//! Any agency may lie: answers are checked before they get here (`answers`), and what passes can
//! still be wrong within its bounds, so a query may combine the answers robustly (`Combine`):
//! per value, the median or trimmed mean of the answers times their number.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use treaty_proto::query::{bins, histogram_labels, layout};
use treaty_proto::v1::{QuerySpec, QueryValue};

use crate::answers::{answer_of, labels, median, scale_of};
use crate::tasks::TaskResult;
use crate::valid_job::{Combination, ValidQuery};
use treaty_proto::query::Statistic;

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
pub(crate) fn combine(
    query: &ValidQuery,
    results: &[(String, TaskResult)],
) -> (Vec<f64>, Vec<QueryValue>) {
    match query.combination {
        mode @ (Combination::Median | Combination::Trimmed) => robust(query, results, mode),
        Combination::Sum => summed(query, results),
    }
}

fn confidence_of(spec: &QuerySpec) -> (f64, f64) {
    let confidence = if spec.confidence > 0.0 && spec.confidence < 1.0 {
        spec.confidence
    } else {
        0.95
    };
    ((1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0)
}

/// The robust combination: each value the median (or trimmed mean) of the agencies' answers
/// times their number. Its interval is a parametric bootstrap of the noise alone: every
/// agency's answer redrawn with its own Laplace noise, the combination recomputed. It does not
/// cover the bias a robust combination has when agencies differ.
fn robust(
    query: &ValidQuery,
    results: &[(String, TaskResult)],
    mode: Combination,
) -> (Vec<f64>, Vec<QueryValue>) {
    let spec = &query.spec;
    let Some((bounds, _)) = layout(spec) else {
        return (vec![], vec![]);
    };
    let width = bounds.len();
    let answers: Vec<Vec<f64>> = results.iter().map(|(_, r)| answer_of(r)).collect();
    let scales: Vec<f64> = results.iter().map(|(_, r)| scale_of(r)).collect();
    let estimate = robust_totals(mode, &answers, width);
    let (lo_p, hi_p) = confidence_of(spec);
    // About 2 * 10^7 noise draws in all, 200 to 2,000 redraws of the whole answer.
    let redraws = (20_000_000 / (width * answers.len()).max(1)).clamp(200, 2_000);
    let mut rng = StdRng::from_os_rng();
    let samples: Vec<Vec<f64>> = (0..redraws)
        .map(|_| {
            let noisy: Vec<Vec<f64>> = answers
                .iter()
                .zip(&scales)
                .map(|(a, s)| {
                    a.iter()
                        .zip(&bounds)
                        .map(|(v, b)| v + b * laplace(&mut rng, *s))
                        .collect()
                })
                .collect();
            robust_totals(mode, &noisy, width)
        })
        .collect();
    // A value and its redraws: the redraws' spread around the estimate, mirrored.
    let interval = |label: String, value: f64, mut draws: Vec<f64>, widen: f64| {
        draws.retain(|v| v.is_finite());
        draws.sort_by(f64::total_cmp);
        let centre = quantile(&draws, 0.5);
        QueryValue {
            label,
            value,
            noise_std: std_of(&draws),
            ci_low: value - (quantile(&draws, hi_p) - centre) - widen,
            ci_high: value - (quantile(&draws, lo_p) - centre) + widen,
        }
    };
    let at = |i: usize| samples.iter().map(|s| s[i]).collect::<Vec<f64>>();
    let labels = labels(query);
    let answer: Vec<QueryValue> = match query.statistic {
        Statistic::Count | Statistic::Sum | Statistic::Histogram => (0..width)
            .map(|i| {
                let label = labels.get(i).cloned().unwrap_or_default();
                interval(label, estimate[i], at(i), 0.0)
            })
            .collect(),
        Statistic::Mean => vec![
            interval(
                format!("mean of {}", spec.column),
                estimate[0] / estimate[1],
                samples.iter().map(|s| s[0] / s[1]).collect(),
                0.0,
            ),
            interval("count".into(), estimate[1], at(1), 0.0),
        ],
        Statistic::Quantile => {
            let half_bin = (spec.upper - spec.lower) / bins(spec) as f64 / 2.0;
            spec.quantiles
                .iter()
                .map(|&p| {
                    let draws = samples
                        .iter()
                        .map(|s| histogram_quantile(s, spec.lower, spec.upper, p))
                        .collect();
                    interval(
                        format!("q{p}"),
                        histogram_quantile(&estimate, spec.lower, spec.upper, p),
                        draws,
                        half_bin,
                    )
                })
                .collect()
        }
    };
    (answer.iter().map(|v| v.value).collect(), answer)
}

/// The plain combination: the sum of the answers.
fn summed(query: &ValidQuery, results: &[(String, TaskResult)]) -> (Vec<f64>, Vec<QueryValue>) {
    let spec = &query.spec;
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
    let (lo_p, hi_p) = confidence_of(spec);
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
    let answer: Vec<QueryValue> = match query.statistic {
        Statistic::Count => vec![linear("count".into(), 0)],
        Statistic::Sum => vec![linear(format!("sum of {}", spec.column), 0)],
        Statistic::Mean => {
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
        Statistic::Histogram => histogram_labels(spec)
            .into_iter()
            .enumerate()
            .map(|(i, label)| linear(label, i))
            .collect(),
        Statistic::Quantile => {
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
    };
    (answer.iter().map(|v| v.value).collect(), answer)
}

/// The mean without the largest and smallest fifth (rounded down) of the values.
fn trimmed_mean(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let cut = values.len() / 5;
    let kept = &values[cut..values.len() - cut];
    kept.iter().sum::<f64>() / kept.len().max(1) as f64
}

/// The robust total of `answers` (one vector per agency): per value, the median or trimmed mean
/// times the number of agencies.
fn robust_totals(mode: Combination, answers: &[Vec<f64>], width: usize) -> Vec<f64> {
    let n = answers.len() as f64;
    let mut column = Vec::with_capacity(answers.len());
    (0..width)
        .map(|i| {
            column.clear();
            column.extend(answers.iter().map(|a| a.get(i).copied().unwrap_or(0.0)));
            n * if mode == Combination::Trimmed {
                trimmed_mean(&mut column)
            } else {
                median(&mut column)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::node_answer;
    use treaty_proto::v1::{Combine, QueryKind};

    fn valid(spec: QuerySpec) -> ValidQuery {
        ValidQuery::try_from(spec).unwrap()
    }

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
    fn one_laplace_count_has_the_closed_form_interval() {
        // One node, Laplace(2): P(|X| > x) = exp(-x / 2), so the 95 % interval is
        // +-2 ln 20 = +-5.99 around the count, and the standard deviation is 2 sqrt 2.
        let spec = valid(QuerySpec {
            kind: QueryKind::Count as i32,
            epsilon: 0.5,
            ..Default::default()
        });
        let (values, answer) = combine(&spec, &[("A".into(), node_answer(vec![100.0], 2.0))]);
        assert_eq!(values, vec![100.0]);
        let v = &answer[0];
        let half = 2.0 * 20f64.ln();
        // Each end is a 2.5 % quantile of 20,000 simulated draws: its standard error is
        // sqrt(0.025 * 0.975 / 20000) / f, f = exp(-half / 2) / 4 = 0.0125 the density there,
        // i.e. 0.088; 0.45 is five of them (0.25, under three, failed about once in 100 runs).
        assert!(
            (v.ci_high - 100.0 - half).abs() < 0.45 && (100.0 - v.ci_low - half).abs() < 0.45,
            "{v:?}"
        );
        assert!((v.noise_std - 2.0 * 2f64.sqrt()).abs() < 0.1, "{v:?}");
        // A sum's noise is its clamp bound times the count's.
        let spec = valid(QuerySpec {
            kind: QueryKind::Sum as i32,
            column: "v".into(),
            lower: -5.0,
            upper: 5.0,
            epsilon: 0.5,
            ..Default::default()
        });
        let (_, answer) = combine(&spec, &[("A".into(), node_answer(vec![30.0], 2.0))]);
        assert!(
            (answer[0].noise_std - 5.0 * 2.0 * 2f64.sqrt()).abs() < 0.5,
            "{:?}",
            answer[0]
        );
    }

    #[test]
    fn robust_combinations_resist_one_liar() {
        let spec = |combine: Combine| {
            valid(QuerySpec {
                kind: QueryKind::Count as i32,
                epsilon: 1.0,
                combine: combine as i32,
                ..Default::default()
            })
        };
        let results: Vec<(String, TaskResult)> = [400.0, 402.0, 398.0, 50_000.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("A{i}"), node_answer(vec![*v], 1.0)))
            .collect();
        // The sum takes the lie whole; the median of 398, 400, 402, 50000 is 401, times four;
        // the trimmed mean of four drops none (a fifth of four rounds down to zero).
        let (sum, _) = combine(&spec(Combine::Sum), &results);
        assert_eq!(sum, vec![51_200.0]);
        let (median, answer) = combine(&spec(Combine::Median), &results);
        assert_eq!(median, vec![1_604.0]);
        assert!(answer[0].ci_low < 1_604.0 && 1_604.0 < answer[0].ci_high);
        let (trimmed, _) = combine(&spec(Combine::Trimmed), &results);
        assert_eq!(trimmed, vec![51_200.0]);
        // Of five, the trimmed mean drops the largest and the smallest.
        let mut five = results;
        five.push(("A4".into(), node_answer(vec![401.0], 1.0)));
        let (trimmed, _) = combine(&spec(Combine::Trimmed), &five);
        assert_eq!(trimmed, vec![5.0 * (400.0 + 401.0 + 402.0) / 3.0]);
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

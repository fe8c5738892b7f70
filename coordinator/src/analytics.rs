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
//! Any agency may lie. Before an answer is combined it is checked against what its query allows
//! (`check_answer`): one vector of the query's width, the Laplace scale the query's epsilon
//! implies, and every value finite and within the public range of the exact answer (0 to
//! `max_records_per_agency` records) widened by `TAIL_SCALES` times the noise's scale. An answer
//! that fails is rejected: its agency is excluded, logged and audited by identity, and named in
//! the round. What passes can still be wrong within those bounds: the query may combine the
//! answers robustly (`Combine`), and answers far from the others are flagged as outliers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use treaty_proto::query::{bins, histogram_labels, layout};
use treaty_proto::v1::{Combine, Outlier, QueryKind, QuerySpec, QueryValue};

use crate::tasks::TaskResult;

/// How far past the range of an exact answer a noisy one may lie, in Laplace scales (times the
/// value's bound): ln(10^12). An honest answer lies further out with probability 10^-12 / 2 per
/// value.
pub const TAIL_SCALES: f64 = 27.631_021_115_928_547;
/// How far a declared Laplace scale may be from the one the query's epsilon implies, relative
/// (the node widens it by about 10^-12 for floating-point slack).
pub const SCALE_TOLERANCE: f64 = 1e-6;
/// An answer further than this many robust standard deviations from the median of the
/// agencies' answers is flagged as an outlier (with 3 or more answers).
pub const OUTLIER_SCORE: f64 = 6.0;
/// The most outliers one round reports (the highest scores).
pub const MAX_OUTLIERS: usize = 100;
/// The most values a robustly combined query may have (its intervals are bootstrapped per
/// agency and value).
pub const MAX_ROBUST_WIDTH: usize = 10_000;

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
    match combine_of(spec) {
        mode @ (Combine::Median | Combine::Trimmed) => robust(spec, results, mode),
        _ => summed(spec, results),
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
    spec: &QuerySpec,
    results: &[(String, TaskResult)],
    mode: Combine,
) -> (Vec<f64>, Vec<QueryValue>) {
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
    let labels = labels(spec);
    let answer: Vec<QueryValue> =
        match QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified) {
            QueryKind::Count | QueryKind::Sum | QueryKind::Histogram => (0..width)
                .map(|i| {
                    let label = labels.get(i).cloned().unwrap_or_default();
                    interval(label, estimate[i], at(i), 0.0)
                })
                .collect(),
            QueryKind::Mean => vec![
                interval(
                    format!("mean of {}", spec.column),
                    estimate[0] / estimate[1],
                    samples.iter().map(|s| s[0] / s[1]).collect(),
                    0.0,
                ),
                interval("count".into(), estimate[1], at(1), 0.0),
            ],
            QueryKind::Quantile => {
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
            QueryKind::Unspecified => vec![],
        };
    (answer.iter().map(|v| v.value).collect(), answer)
}

/// The plain combination: the sum of the answers.
fn summed(spec: &QuerySpec, results: &[(String, TaskResult)]) -> (Vec<f64>, Vec<QueryValue>) {
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

/// The names of an answer's values, in order.
pub fn labels(spec: &QuerySpec) -> Vec<String> {
    let width = layout(spec).map(|l| l.0.len()).unwrap_or(0);
    match QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified) {
        QueryKind::Count => vec!["count".into()],
        QueryKind::Sum => vec![format!("sum of {}", spec.column)],
        QueryKind::Mean => vec![format!("sum of {}", spec.column), "count".into()],
        QueryKind::Histogram => histogram_labels(spec),
        QueryKind::Quantile => (0..width).map(|i| format!("bin {i}")).collect(),
        QueryKind::Unspecified => vec![],
    }
}

/// The Laplace scale a node answering `spec` adds to each bound-normalised value: the vector's
/// L1 sensitivity over the query's epsilon.
pub fn expected_scale(spec: &QuerySpec) -> Option<f64> {
    let (_, sensitivity) = layout(spec)?;
    let scale = sensitivity / spec.epsilon;
    (scale.is_finite() && scale > 0.0).then_some(scale)
}

/// The range of each exact (noise-free) value of one agency's answer, from the public bound on
/// its records: counts in [0, max], a sum of values clamped to [lower, upper] in
/// [min(0, max lower), max(0, max upper)].
pub fn exact_ranges(spec: &QuerySpec, max_records: u64) -> Vec<(f64, f64)> {
    let n = max_records as f64;
    let count = (0.0, n);
    let sum = ((n * spec.lower).min(0.0), (n * spec.upper).max(0.0));
    let width = layout(spec).map(|l| l.0.len()).unwrap_or(0);
    match QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified) {
        QueryKind::Count => vec![count],
        QueryKind::Sum => vec![sum],
        QueryKind::Mean => vec![sum, count],
        QueryKind::Histogram | QueryKind::Quantile => vec![count; width],
        QueryKind::Unspecified => vec![],
    }
}

/// Checks one agency's answer against what `spec` allows; the reason in words when it fails.
pub fn check_answer(spec: &QuerySpec, max_records: u64, result: &TaskResult) -> Result<(), String> {
    let (bounds, _) = layout(spec).ok_or("the query names no statistic")?;
    let width = bounds.len();
    let values = match result.tensors.as_slice() {
        [t] if t.name == "statistic" && t.values.len() == width => &t.values,
        _ => {
            return Err(format!(
                "a query result must be one tensor `statistic` of {width} values"
            ));
        }
    };
    let scale = expected_scale(spec).ok_or("the query's epsilon implies no noise scale")?;
    let declared = result.metrics.get("laplace_scale").copied();
    match declared {
        Some(d) if (d - scale).abs() <= SCALE_TOLERANCE * scale => {}
        Some(d) => {
            return Err(format!(
                "the answer declares a Laplace scale of {d:e}, but the query's epsilon {} implies {scale:e}",
                spec.epsilon
            ));
        }
        None => return Err("the answer declares no `laplace_scale`".into()),
    }
    let labels = labels(spec);
    let ranges = exact_ranges(spec, max_records);
    for (i, ((v, b), (lo, hi))) in values.iter().zip(&bounds).zip(&ranges).enumerate() {
        let label = labels.get(i).map(String::as_str).unwrap_or("?");
        if !v.is_finite() {
            return Err(format!("value {i} (`{label}`) is not finite ({v})"));
        }
        let tail = TAIL_SCALES * scale * b;
        if *v < lo - tail || *v > hi + tail {
            return Err(format!(
                "value {i} (`{label}`) is {}, outside what the query allows: [{}, {}] \
                 (exact answers in [{}, {}] for at most {max_records} records, \
                 `limits.max_records_per_agency`, plus {TAIL_SCALES:.1} times the noise scale {})",
                short(*v),
                short(lo - tail),
                short(hi + tail),
                short(*lo),
                short(*hi),
                short(scale * b)
            ));
        }
    }
    Ok(())
}

/// A number for people: plain up to 10^9, else in scientific notation.
fn short(x: f64) -> String {
    if x.abs() < 1e9 {
        format!("{}", (x * 100.0).round() / 100.0)
    } else {
        format!("{x:.4e}")
    }
}

/// The median of some values (the mean of the middle two of an even number); NaN for none.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The mean without the largest and smallest fifth (rounded down) of the values.
fn trimmed_mean(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let cut = values.len() / 5;
    let kept = &values[cut..values.len() - cut];
    kept.iter().sum::<f64>() / kept.len().max(1) as f64
}

/// The combination a spec asks for.
pub fn combine_of(spec: &QuerySpec) -> Combine {
    match Combine::try_from(spec.combine).unwrap_or(Combine::Unspecified) {
        Combine::Unspecified => Combine::Sum,
        other => other,
    }
}

/// The robust total of `answers` (one vector per agency): per value, the median or trimmed mean
/// times the number of agencies.
fn robust_totals(mode: Combine, answers: &[Vec<f64>], width: usize) -> Vec<f64> {
    let n = answers.len() as f64;
    let mut column = Vec::with_capacity(answers.len());
    (0..width)
        .map(|i| {
            column.clear();
            column.extend(answers.iter().map(|a| a.get(i).copied().unwrap_or(0.0)));
            n * if mode == Combine::Trimmed {
                trimmed_mean(&mut column)
            } else {
                median(&mut column)
            }
        })
        .collect()
}

/// Answers further than `OUTLIER_SCORE` robust standard deviations from the median of the
/// agencies' answers, at any value: the robust standard deviation is the larger of 1.4826 times
/// the answers' median absolute deviation and the standard deviation of the noise (Laplace:
/// sqrt 2 times its scale). Highest scores first, at most `MAX_OUTLIERS`.
pub fn outliers(spec: &QuerySpec, results: &[(String, TaskResult)]) -> Vec<Outlier> {
    if results.len() < 3 {
        return vec![];
    }
    let Some((bounds, _)) = layout(spec) else {
        return vec![];
    };
    let labels = labels(spec);
    let answers: Vec<Vec<f64>> = results.iter().map(|(_, r)| answer_of(r)).collect();
    let scales: Vec<f64> = results.iter().map(|(_, r)| scale_of(r)).collect();
    let noise = scales.iter().fold(0.0f64, |m, s| m.max(*s)) * std::f64::consts::SQRT_2;
    let mut out = Vec::new();
    let mut column = Vec::with_capacity(results.len());
    for (i, b) in bounds.iter().enumerate() {
        column.clear();
        column.extend(answers.iter().map(|a| a.get(i).copied().unwrap_or(0.0)));
        let m = median(&mut column.clone());
        let mut deviations: Vec<f64> = column.iter().map(|v| (v - m).abs()).collect();
        let spread = (1.4826 * median(&mut deviations)).max(noise * b);
        if spread.is_nan() || spread <= 0.0 {
            continue;
        }
        for ((agency, _), v) in results.iter().zip(&column) {
            let score = (v - m).abs() / spread;
            if score > OUTLIER_SCORE {
                out.push(Outlier {
                    agency: agency.clone(),
                    label: labels.get(i).cloned().unwrap_or_default(),
                    value: *v,
                    median: m,
                    score,
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(MAX_OUTLIERS);
    out
}

fn answer_of(r: &TaskResult) -> Vec<f64> {
    r.tensors
        .first()
        .map(|t| t.values.iter().copied().collect())
        .unwrap_or_default()
}

fn scale_of(r: &TaskResult) -> f64 {
    r.metrics.get("laplace_scale").copied().unwrap_or(0.0)
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

    fn count(epsilon: f64) -> QuerySpec {
        QuerySpec {
            kind: QueryKind::Count as i32,
            epsilon,
            ..Default::default()
        }
    }

    #[test]
    fn answers_outside_what_the_query_allows_are_rejected() {
        // COUNT at epsilon 0.5: scale 2, allowance 2 ln(10^12) = 55.26 on either side of
        // [0, 1000] records.
        let spec = count(0.5);
        let ok = |v: f64| check_answer(&spec, 1000, &node_answer(vec![v], 2.0));
        for v in [0.0, 500.0, -55.2, 1055.2] {
            assert_eq!(ok(v), Ok(()), "{v}");
        }
        for v in [-55.3, 1055.3, 3.2e250, -1e300] {
            let e = ok(v).unwrap_err();
            assert!(e.contains("outside what the query allows"), "{v}: {e}");
        }
        assert!(ok(f64::NAN).unwrap_err().contains("not finite"));
        assert!(ok(f64::INFINITY).unwrap_err().contains("not finite"));
        // The width, and the scale the epsilon implies (a larger one would widen the allowance).
        assert!(
            check_answer(&spec, 1000, &node_answer(vec![1.0, 2.0], 2.0))
                .unwrap_err()
                .contains("one tensor `statistic` of 1 values")
        );
        let e = check_answer(&spec, 1000, &node_answer(vec![1.0], 2.1)).unwrap_err();
        assert!(e.contains("declares a Laplace scale of 2.1e0"), "{e}");
        assert_eq!(
            check_answer(&spec, 1000, &node_answer(vec![1.0], 2.0 * (1.0 + 1e-12))),
            Ok(())
        );
        let mut silent = node_answer(vec![1.0], 2.0);
        silent.metrics.clear();
        assert!(check_answer(&spec, 1000, &silent).is_err());

        // SUM of values clamped to [-5, 10] at epsilon 1: bound 10, scale 1, allowance 276.3;
        // 1000 records sum to [-5000, 10000].
        let sum = QuerySpec {
            kind: QueryKind::Sum as i32,
            column: "v".into(),
            lower: -5.0,
            upper: 10.0,
            epsilon: 1.0,
            ..Default::default()
        };
        assert_eq!(exact_ranges(&sum, 1000), vec![(-5000.0, 10000.0)]);
        let s = |v: f64| check_answer(&sum, 1000, &node_answer(vec![v], 1.0));
        assert!(s(-5276.0).is_ok() && s(10276.0).is_ok());
        assert!(s(-5277.0).is_err() && s(10277.0).is_err());
        // Clamps of one sign: the range still holds 0 (no records).
        let positive = QuerySpec {
            lower: 2.0,
            upper: 3.0,
            ..sum.clone()
        };
        assert_eq!(exact_ranges(&positive, 10), vec![(0.0, 30.0)]);
        // A histogram: every cell a count (3 cells + other, with epsilon 1: scale 1).
        let histogram = QuerySpec {
            kind: QueryKind::Histogram as i32,
            column: "c".into(),
            categories: vec!["a".into(), "b".into(), "c".into()],
            epsilon: 1.0,
            ..Default::default()
        };
        let h = |cells: Vec<f64>| check_answer(&histogram, 100, &node_answer(cells, 1.0));
        assert!(h(vec![10.0, 20.0, -3.0, 0.0]).is_ok());
        let e = h(vec![10.0, 20.0, 128.0, 0.0]).unwrap_err();
        assert!(e.starts_with("value 2 (`c=c`)"), "{e}");
    }

    #[test]
    fn robust_combinations_resist_one_liar_and_outliers_are_flagged() {
        let spec = |combine: Combine| QuerySpec {
            combine: combine as i32,
            ..count(1.0)
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

        // Median 401, deviations 1, 1, 3, 49599, 0: MAD 1, robust sd max(1.4826, sqrt 2).
        let flagged = outliers(&spec(Combine::Sum), &five);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].agency, "A3");
        assert_eq!(flagged[0].median, 401.0);
        assert!(
            (flagged[0].score - 49_599.0 / 1.4826).abs() < 1e-6,
            "{flagged:?}"
        );
        // Fewer than three answers: nobody to compare with.
        assert!(outliers(&spec(Combine::Sum), &five[..2]).is_empty());
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

//! Checking each agency's answer to an analytics query against what the query allows, and
//! flagging answers that stand out from the others.
//!
//! Any agency may lie. Before an answer is combined (`analytics`) it is checked
//! (`check_answer`): one vector of the query's width, the Laplace scale the query's epsilon
//! implies, and every value finite and within the public range of the exact answer (0 to
//! `max_records_per_agency` records; sums by the clamp bounds) widened by `TAIL_SCALES` times
//! the noise's scale. An answer that fails is rejected: its agency is excluded, logged and
//! audited by identity, and named in the round. What passes can still be wrong within those
//! bounds; answers far from the others' median are flagged (`outliers`).

use treaty_proto::query::{histogram_labels, layout};
use treaty_proto::v1::{Outlier, QuerySpec};

use crate::tasks::TaskResult;
use crate::valid_job::ValidQuery;
use treaty_proto::query::Statistic;

/// How far past the range of an exact answer a noisy one may lie, in Laplace scales (times the
/// value's bound): ln(10^12). An honest answer lies further out with probability 10^-12 / 2 per
/// value.
pub(crate) const TAIL_SCALES: f64 = 27.631_021_115_928_547;
/// How far a declared Laplace scale may be from the one the query's epsilon implies, relative
/// (the node widens it by about 10^-12 for floating-point slack).
pub(crate) const SCALE_TOLERANCE: f64 = 1e-6;
/// An answer further than this many robust standard deviations from the median of the
/// agencies' answers is flagged as an outlier (with 3 or more answers).
pub(crate) const OUTLIER_SCORE: f64 = 6.0;
/// The most outliers one round reports (the highest scores).
pub(crate) const MAX_OUTLIERS: usize = 100;
/// The names of an answer's values, in order.
pub(crate) fn labels(query: &ValidQuery) -> Vec<String> {
    let spec = &query.spec;
    let width = layout(spec).map(|l| l.0.len()).unwrap_or(0);
    match query.statistic {
        Statistic::Count => vec!["count".into()],
        Statistic::Sum => vec![format!("sum of {}", spec.column)],
        Statistic::Mean => vec![format!("sum of {}", spec.column), "count".into()],
        Statistic::Histogram => histogram_labels(spec),
        Statistic::Quantile => (0..width).map(|i| format!("bin {i}")).collect(),
    }
}

/// The Laplace scale a node answering `spec` adds to each bound-normalised value: the vector's
/// L1 sensitivity over the query's epsilon.
pub(crate) fn expected_scale(spec: &QuerySpec) -> Option<f64> {
    let (_, sensitivity) = layout(spec)?;
    let scale = sensitivity / spec.epsilon;
    (scale.is_finite() && scale > 0.0).then_some(scale)
}

/// The range of each exact (noise-free) value of one agency's answer, from the public bound on
/// its records: counts in [0, max], a sum of values clamped to [lower, upper] in
/// [min(0, max lower), max(0, max upper)].
pub(crate) fn exact_ranges(query: &ValidQuery, max_records: u64) -> Vec<(f64, f64)> {
    let spec = &query.spec;
    let n = max_records as f64;
    let count = (0.0, n);
    let sum = ((n * spec.lower).min(0.0), (n * spec.upper).max(0.0));
    let width = layout(spec).map(|l| l.0.len()).unwrap_or(0);
    match query.statistic {
        Statistic::Count => vec![count],
        Statistic::Sum => vec![sum],
        Statistic::Mean => vec![sum, count],
        Statistic::Histogram | Statistic::Quantile => vec![count; width],
    }
}

/// Checks one agency's answer against what `spec` allows; the reason in words when it fails.
pub(crate) fn check_answer(
    query: &ValidQuery,
    max_records: u64,
    result: &TaskResult,
) -> Result<(), String> {
    let spec = &query.spec;
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
    let labels = labels(query);
    let ranges = exact_ranges(query, max_records);
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
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Answers further than `OUTLIER_SCORE` robust standard deviations from the median of the
/// agencies' answers, at any value: the robust standard deviation is the larger of 1.4826 times
/// the answers' median absolute deviation and the standard deviation of the noise (Laplace:
/// sqrt 2 times its scale). Highest scores first, at most `MAX_OUTLIERS`.
pub(crate) fn outliers(query: &ValidQuery, results: &[(String, TaskResult)]) -> Vec<Outlier> {
    if results.len() < 3 {
        return vec![];
    }
    let Some((bounds, _)) = layout(&query.spec) else {
        return vec![];
    };
    let labels = labels(query);
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

pub(crate) fn answer_of(r: &TaskResult) -> Vec<f64> {
    r.tensors
        .first()
        .map(|t| t.values.iter().copied().collect())
        .unwrap_or_default()
}

pub(crate) fn scale_of(r: &TaskResult) -> f64 {
    r.metrics.get("laplace_scale").copied().unwrap_or(0.0)
}

#[cfg(test)]
pub(crate) fn node_answer(values: Vec<f64>, scale: f64) -> TaskResult {
    let n = values.len();
    TaskResult {
        sha256: String::new(),
        sent: None,
        num_examples: 1,
        metrics: [("laplace_scale".to_owned(), scale)].into(),
        tensors: vec![treaty_proto::tensor::NamedTensor::new(
            "statistic",
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), values).unwrap(),
        )],
        staged: None,
        received: std::time::Instant::now(),
        declared_norm_bound: 0.0,
        evaluation: None,
        privacy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::{Combine, QueryKind};

    fn valid(spec: QuerySpec) -> ValidQuery {
        ValidQuery::try_from(spec).unwrap()
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
        let spec = valid(count(0.5));
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
        let sum_spec = QuerySpec {
            kind: QueryKind::Sum as i32,
            column: "v".into(),
            lower: -5.0,
            upper: 10.0,
            epsilon: 1.0,
            ..Default::default()
        };
        let sum = valid(sum_spec.clone());
        assert_eq!(exact_ranges(&sum, 1000), vec![(-5000.0, 10000.0)]);
        let s = |v: f64| check_answer(&sum, 1000, &node_answer(vec![v], 1.0));
        assert!(s(-5276.0).is_ok() && s(10276.0).is_ok());
        assert!(s(-5277.0).is_err() && s(10277.0).is_err());
        // Clamps of one sign: the range still holds 0 (no records).
        let positive = valid(QuerySpec {
            lower: 2.0,
            upper: 3.0,
            ..sum_spec
        });
        assert_eq!(exact_ranges(&positive, 10), vec![(0.0, 30.0)]);
        // A histogram: every cell a count (3 cells + other, with epsilon 1: scale 1).
        let histogram = valid(QuerySpec {
            kind: QueryKind::Histogram as i32,
            column: "c".into(),
            categories: vec!["a".into(), "b".into(), "c".into()],
            epsilon: 1.0,
            ..Default::default()
        });
        let h = |cells: Vec<f64>| check_answer(&histogram, 100, &node_answer(cells, 1.0));
        assert!(h(vec![10.0, 20.0, -3.0, 0.0]).is_ok());
        let e = h(vec![10.0, 20.0, 128.0, 0.0]).unwrap_err();
        assert!(e.starts_with("value 2 (`c=c`)"), "{e}");
    }

    #[test]
    fn answers_far_from_the_others_are_flagged() {
        let spec = valid(QuerySpec {
            combine: Combine::Sum as i32,
            ..count(1.0)
        });
        let five: Vec<(String, TaskResult)> = [400.0, 402.0, 398.0, 50_000.0, 401.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("A{i}"), node_answer(vec![*v], 1.0)))
            .collect();
        // Median 401, deviations 1, 1, 3, 49599, 0: MAD 1, robust sd max(1.4826, sqrt 2).
        let flagged = outliers(&spec, &five);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].agency, "A3");
        assert_eq!(flagged[0].median, 401.0);
        assert!(
            (flagged[0].score - 49_599.0 / 1.4826).abs() < 1e-6,
            "{flagged:?}"
        );
        // An answer 8 from the median is within 6 robust sd (6 x 1.4826 = 8.9); 10 is not.
        let mut near: Vec<(String, TaskResult)> = five
            .iter()
            .map(|(a, r)| (a.clone(), node_answer(answer_of(r), 1.0)))
            .collect();
        near[3].1 = node_answer(vec![409.0], 1.0);
        assert!(outliers(&spec, &near).is_empty());
        near[3].1 = node_answer(vec![411.0], 1.0);
        assert_eq!(outliers(&spec, &near).len(), 1);
        // Fewer than three answers: nobody to compare with.
        assert!(outliers(&spec, &five[..2]).is_empty());
    }
}

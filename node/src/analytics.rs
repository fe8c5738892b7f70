//! DP analytics at the node: the exact local statistic, then the Laplace mechanism through
//! opendp. Each coordinate is divided by the most one record can change it (1 for a count, the
//! clamp bound for a sum), so that the vector's L1 sensitivity is the number of coordinates one
//! record can touch; the noise is added to that and scaled back. The release is pure epsilon-DP,
//! epsilon as opendp's privacy map states it.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::L1Distance;
use treaty_proto::query::{Statistic, bins, layout};
use treaty_proto::v1::QuerySpec;

use crate::data::Table;
use crate::error::DataError;
use crate::refusal::Refusal;

/// The noise grid of the Laplace mechanism (see `noise::K`).
const K: i32 = -40;

/// How a query is answered: each coordinate's bound (its width is the answer's), and the
/// Laplace scale on the answer divided by them, for the L1 sensitivity that follows.
#[derive(Debug, Clone)]
pub(crate) struct QueryPlan {
    pub(crate) bounds: Vec<f64>,
    pub(crate) scale: f64,
}

type Laplace = opendp::core::Measurement<
    VectorDomain<AtomDomain<f64>>,
    L1Distance<f64>,
    MaxDivergence,
    Vec<f64>,
>;

fn measurement(scale: f64, size: usize) -> Result<Laplace, Refusal> {
    make_laplace(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(size),
        L1Distance::<f64>::default(),
        scale,
        Some(K),
    )
    .map_err(|e| Refusal::internal(format!("opendp refused the Laplace mechanism: {e}")))
}

/// Plans a query whose spec is checked (its statistic decoded): its Laplace scale for the
/// spec's epsilon, and the epsilon opendp accounts.
pub(crate) fn plan(spec: &QuerySpec) -> Result<(QueryPlan, f64), Refusal> {
    let (bounds, sensitivity) =
        layout(spec).ok_or_else(|| Refusal::internal("a checked query without a layout"))?;
    let (scale, epsilon) = laplace_scale_for(spec.epsilon, bounds.len(), sensitivity)?;
    Ok((QueryPlan { bounds, scale }, epsilon))
}

/// The exact local answer (before noise) of `statistic`, over the records the query's `where`
/// keeps.
pub(crate) fn exact(
    table: &Table,
    spec: &QuerySpec,
    statistic: Statistic,
) -> Result<Vec<f64>, DataError> {
    let keep = if spec.where_column.is_empty() {
        None
    } else {
        Some(table.matches(&spec.where_column, &spec.where_value)?)
    };
    let kept = |i: usize| keep.as_ref().is_none_or(|k| k[i]);
    let clamped = || table.clamped_where(&spec.column, spec.lower, spec.upper, keep.as_deref());
    Ok(match statistic {
        Statistic::Count => vec![(0..table.len()).filter(|&i| kept(i)).count() as f64],
        Statistic::Sum => vec![clamped()?.iter().sum()],
        Statistic::Mean => {
            let values = clamped()?;
            vec![values.iter().sum(), values.len() as f64]
        }
        Statistic::Histogram => {
            let first = table.categories(&spec.column, &spec.categories)?;
            let width = spec.categories.len() + 1;
            let mut counts = vec![0.0; layout(spec).map(|l| l.0.len()).unwrap_or(0)];
            let second = if spec.by_column.is_empty() {
                None
            } else {
                Some(table.categories(&spec.by_column, &spec.by_categories)?)
            };
            for (i, a) in first.into_iter().enumerate() {
                if kept(i) {
                    counts[a + width * second.as_ref().map(|s| s[i]).unwrap_or(0)] += 1.0;
                }
            }
            counts
        }
        Statistic::Quantile => {
            let n = bins(spec);
            let mut counts = vec![0.0; n];
            let width = (spec.upper - spec.lower) / n as f64;
            for v in clamped()? {
                let bin = (((v - spec.lower) / width) as usize).min(n - 1);
                counts[bin] += 1.0;
            }
            counts
        }
    })
}

/// The epsilon opendp accounts for the Laplace mechanism of `scale` on `size` values of L1
/// sensitivity `sensitivity`.
fn laplace_epsilon(scale: f64, size: usize, sensitivity: f64) -> Result<f64, Refusal> {
    measurement(scale, size)?
        .map(&sensitivity)
        .map_err(Refusal::internal)
}

/// The Laplace scale for `size` values of `sensitivity` that spends at most `epsilon` by
/// opendp's own privacy map, and the epsilon it spends. The map of floating-point Laplace
/// noise includes a hair of rounding slack over `sensitivity / scale`, so the plain scale is
/// widened until the release stays within what was stated.
pub(crate) fn laplace_scale_for(
    epsilon: f64,
    size: usize,
    sensitivity: f64,
) -> Result<(f64, f64), Refusal> {
    let mut scale = sensitivity / epsilon;
    for _ in 0..8 {
        let spent = laplace_epsilon(scale, size, sensitivity)?;
        if spent <= epsilon {
            return Ok((scale, spent));
        }
        scale *= (spent / epsilon) * (1.0 + 1e-12);
    }
    Err(Refusal::internal(format!(
        "no Laplace scale spends at most epsilon {epsilon}"
    )))
}

/// Adds Laplace noise of `scale` to every value, through opendp.
pub(crate) fn laplace(scale: f64, values: &[f64]) -> Result<Vec<f64>, Refusal> {
    measurement(scale, values.len())?
        .invoke(&values.to_vec())
        .map_err(Refusal::internal)
}

/// Adds the planned Laplace noise to an exact answer.
pub(crate) fn noisy(plan: &QueryPlan, exact: &[f64]) -> Result<Vec<f64>, Refusal> {
    let normalized: Vec<f64> = exact.iter().zip(&plan.bounds).map(|(v, b)| v / b).collect();
    let noisy = measurement(plan.scale, normalized.len())?
        .invoke(&normalized)
        .map_err(Refusal::internal)?;
    Ok(noisy.iter().zip(&plan.bounds).map(|(v, b)| v * b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_laplace_release_spends_no_more_than_its_stated_epsilon() {
        // The stated epsilon is a ceiling, not a target: for every size and sensitivity the
        // release opendp accounts for stays within it, and within a relative 1e-9 of it.
        for (epsilon, size, sensitivity) in [
            (1.0, 8, 1.0),
            (0.05, 40, 1.0),
            (0.3, 1, 2.5),
            (3.0, 1000, 1.0),
        ] {
            let (scale, spent) = laplace_scale_for(epsilon, size, sensitivity).unwrap();
            assert!(spent <= epsilon, "{epsilon}: {spent}");
            assert!(spent > epsilon * (1.0 - 1e-9), "{epsilon}: {spent}");
            // The plain scale sensitivity / epsilon, to within that slack (b = Δ/ε).
            assert!(
                (scale * epsilon / sensitivity - 1.0).abs() < 1e-9,
                "{scale}"
            );
        }
    }
}

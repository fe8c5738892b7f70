//! Combining the results of a round: federated averaging of models, sums of query statistics.

use ndarray::ArrayD;
use std::collections::HashMap;
use treaty_proto::tensor::NamedTensor;

/// Federated averaging: the average of the contributors' parameters, each weighted by its number
/// of examples. All contributions have the same layout (checked on arrival).
pub fn fedavg(contributions: &[(u64, &[NamedTensor])]) -> Option<Vec<NamedTensor>> {
    let total: u64 = contributions.iter().map(|(n, _)| n).sum();
    let (_, first) = contributions.first()?;
    if total == 0 {
        return None;
    }
    let mut out: Vec<NamedTensor> = first
        .iter()
        .map(|t| NamedTensor::new(t.name.clone(), ArrayD::zeros(t.values.raw_dim())))
        .collect();
    for (n, tensors) in contributions {
        let w = *n as f64 / total as f64;
        for (acc, t) in out.iter_mut().zip(tensors.iter()) {
            acc.values.scaled_add(w, &t.values);
        }
    }
    Some(out)
}

/// The L2 norm of `a - b` over all tensors (same layout).
pub fn l2_distance(a: &[NamedTensor], b: &[NamedTensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.values
                .iter()
                .zip(y.values.iter())
                .map(|(p, q)| (p - q) * (p - q))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

/// Metrics averaged over contributors. Metrics named `test_*` are weighted by each contributor's
/// `test_examples` (when it reports it), the others by its training examples. Metrics whose
/// total weight is zero are left out.
pub fn weighted_metrics(per_agency: &[(u64, &HashMap<String, f64>)]) -> HashMap<String, f64> {
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    for (n, metrics) in per_agency {
        for (name, value) in metrics.iter() {
            if name == "test_examples" || !value.is_finite() {
                continue;
            }
            let weight = if name.starts_with("test_") {
                metrics.get("test_examples").copied().unwrap_or(*n as f64)
            } else {
                *n as f64
            };
            let entry = sums.entry(name.clone()).or_default();
            entry.0 += weight * value;
            entry.1 += weight;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, w))| *w > 0.0)
        .map(|(k, (s, w))| (k, s / w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn t(values: &[f64]) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "w",
            ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap(),
        )]
    }

    #[test]
    fn fedavg_weights_by_examples() {
        // (1*[0,3] + 3*[4,-1]) / 4 = [3, 0]
        let a = t(&[0.0, 3.0]);
        let b = t(&[4.0, -1.0]);
        let avg = fedavg(&[(1, &a), (3, &b)]).unwrap();
        assert_eq!(avg[0].values.as_slice().unwrap(), &[3.0, 0.0]);
        assert!(fedavg(&[]).is_none());
        assert!(fedavg(&[(0, &a)]).is_none());
    }

    #[test]
    fn distance_is_euclidean() {
        assert_eq!(l2_distance(&t(&[0.0, 0.0]), &t(&[3.0, 4.0])), 5.0);
    }

    #[test]
    fn test_metrics_weight_by_test_examples() {
        let a: HashMap<String, f64> = [
            ("test_accuracy".into(), 1.0),
            ("test_examples".into(), 10.0),
            ("train_loss".into(), 2.0),
        ]
        .into();
        let b: HashMap<String, f64> = [
            ("test_accuracy".into(), 0.0),
            ("test_examples".into(), 30.0),
            ("train_loss".into(), 4.0),
        ]
        .into();
        let m = weighted_metrics(&[(100, &a), (300, &b)]);
        assert_eq!(m["test_accuracy"], 0.25);
        assert_eq!(m["train_loss"], 3.5);
        assert!(!m.contains_key("test_examples"));
    }
}

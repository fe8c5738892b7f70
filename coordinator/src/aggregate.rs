//! Combining the results of a round: the strategies of a training job (FedAvg, the adaptive
//! server optimisers of Reddi et al. 2021, and the robust aggregators), and the weighted
//! averages of metrics.
//!
//! Every strategy works on updates: a node's parameters minus the global model it started
//! from, flattened in layout order.

use std::collections::HashMap;

use ndarray::{Array1, ArrayD, IxDyn};
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::{Aggregation, Strategy};

/// The server optimiser's moments (FedAdam, FedYogi, FedAdagrad), carried from round to round.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerState {
    pub m: Array1<f64>,
    pub v: Array1<f64>,
}

/// A strategy with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    pub aggregation: Aggregation,
    pub server_learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub tau: f64,
    pub trim_fraction: f64,
    pub max_update_norm: f64,
}

fn or(value: f64, default: f64) -> f64 {
    if value == 0.0 { default } else { value }
}

impl Settings {
    /// The settings of `strategy` (zeros taken as the defaults), combining by `aggregation`
    /// (decoded from the strategy where it arrived).
    pub(crate) fn new(aggregation: Aggregation, strategy: &Strategy) -> Self {
        Settings {
            aggregation,
            server_learning_rate: or(strategy.server_learning_rate, 0.1),
            beta1: or(strategy.beta1, 0.9),
            beta2: or(strategy.beta2, 0.99),
            tau: or(strategy.tau, 1e-3),
            trim_fraction: or(strategy.trim_fraction, 0.2),
            max_update_norm: strategy.max_update_norm,
        }
    }
}

/// Flattens tensors in order.
pub(crate) fn flatten(tensors: &[NamedTensor]) -> Array1<f64> {
    tensors
        .iter()
        .flat_map(|t| t.values.iter().copied())
        .collect()
}

/// Gives `flat` the names and shapes of `like`.
pub(crate) fn unflatten(flat: &Array1<f64>, like: &[NamedTensor]) -> Vec<NamedTensor> {
    let mut offset = 0;
    like.iter()
        .map(|t| {
            let n = t.values.len();
            let values: Vec<f64> = flat.iter().skip(offset).take(n).copied().collect();
            offset += n;
            let values = ArrayD::from_shape_vec(IxDyn(t.values.shape()), values)
                .unwrap_or_else(|_| ArrayD::zeros(t.values.raw_dim()));
            NamedTensor::new(t.name.clone(), values)
        })
        .collect()
}

fn norm(v: &Array1<f64>) -> f64 {
    v.dot(v).sqrt()
}

fn weighted_mean(updates: &[(u64, Array1<f64>)]) -> Array1<f64> {
    let total: f64 = updates.iter().map(|(n, _)| *n as f64).sum();
    let dim = updates.first().map(|(_, u)| u.len()).unwrap_or(0);
    let mut out = Array1::zeros(dim);
    for (n, u) in updates {
        out.scaled_add(*n as f64 / total.max(1.0), u);
    }
    out
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Applies `f` to the column of values of each coordinate.
fn coordinatewise(updates: &[(u64, Array1<f64>)], f: impl Fn(&mut [f64]) -> f64) -> Array1<f64> {
    let dim = updates.first().map(|(_, u)| u.len()).unwrap_or(0);
    let mut column = vec![0.0; updates.len()];
    Array1::from_shape_fn(dim, |j| {
        for (slot, (_, u)) in column.iter_mut().zip(updates) {
            *slot = u[j];
        }
        f(&mut column)
    })
}

/// The new global model from the global model and the contributors' local models
/// `(examples, parameters)`, all of the same layout. `state` holds the server optimiser's
/// moments between rounds. Returns the new model and a sentence on what was done (for the
/// audit log), e.g. how many updates were clipped.
pub(crate) fn aggregate(
    settings: &Settings,
    global: &[NamedTensor],
    locals: &[(u64, &[NamedTensor])],
    state: &mut Option<ServerState>,
) -> (Vec<NamedTensor>, String) {
    let g = flatten(global);
    let updates: Vec<(u64, Array1<f64>)> =
        locals.iter().map(|(n, t)| (*n, flatten(t) - &g)).collect();
    let mut note = String::new();
    let step = match settings.aggregation {
        Aggregation::Median => coordinatewise(&updates, median_of),
        Aggregation::TrimmedMean => {
            let n = updates.len();
            let mut cut = (settings.trim_fraction * n as f64).floor() as usize;
            if 2 * cut >= n {
                cut = (n - 1) / 2;
            }
            note = format!("trimmed {cut} value(s) at each end of every coordinate");
            coordinatewise(&updates, |c| {
                c.sort_by(f64::total_cmp);
                let kept = &c[cut..c.len() - cut];
                kept.iter().sum::<f64>() / kept.len() as f64
            })
        }
        Aggregation::NormBounded => {
            let mut norms: Vec<f64> = updates.iter().map(|(_, u)| norm(u)).collect();
            let bound = if settings.max_update_norm > 0.0 {
                settings.max_update_norm
            } else {
                median_of(&mut norms.clone())
            };
            let mut clipped = 0;
            let bounded: Vec<(u64, Array1<f64>)> = updates
                .iter()
                .zip(norms.iter_mut())
                .map(|((n, u), norm)| {
                    if *norm > bound && *norm > 0.0 {
                        clipped += 1;
                        (*n, u * (bound / *norm))
                    } else {
                        (*n, u.clone())
                    }
                })
                .collect();
            note = format!("clipped {clipped} update(s) to L2 norm {bound:.6}");
            weighted_mean(&bounded)
        }
        Aggregation::Fedadam | Aggregation::Fedyogi | Aggregation::Fedadagrad => {
            let delta = weighted_mean(&updates);
            let dim = delta.len();
            let s = state.get_or_insert_with(|| ServerState {
                m: Array1::zeros(dim),
                v: Array1::from_elem(dim, settings.tau * settings.tau),
            });
            if s.m.len() != dim {
                *s = ServerState {
                    m: Array1::zeros(dim),
                    v: Array1::from_elem(dim, settings.tau * settings.tau),
                };
            }
            s.m = &s.m * settings.beta1 + &delta * (1.0 - settings.beta1);
            let sq = &delta * &delta;
            s.v = match settings.aggregation {
                Aggregation::Fedadagrad => &s.v + &sq,
                Aggregation::Fedyogi => {
                    let mut v = s.v.clone();
                    v.zip_mut_with(&sq, |v, &d2| {
                        *v -= (1.0 - settings.beta2) * d2 * (*v - d2).signum()
                    });
                    v
                }
                _ => &s.v * settings.beta2 + &sq * (1.0 - settings.beta2),
            };
            let mut step = s.m.clone();
            step.zip_mut_with(&s.v, |m, &v| {
                *m = settings.server_learning_rate * *m / (v.sqrt() + settings.tau)
            });
            step
        }
        Aggregation::Fedavg | Aggregation::Unspecified => weighted_mean(&updates),
    };
    (unflatten(&(g + step), global), note)
}

/// The L2 norm of `a - b` over all tensors (same layout).
pub(crate) fn l2_distance(a: &[NamedTensor], b: &[NamedTensor]) -> f64 {
    norm(&(flatten(a) - flatten(b)))
}

/// Metrics averaged over contributors. Metrics named `test_*` are weighted by each contributor's
/// `test_examples` (when it reports it), the others by its training examples. Metrics whose
/// total weight is zero are left out.
pub(crate) fn weighted_metrics(
    per_agency: &[(u64, &HashMap<String, f64>)],
) -> HashMap<String, f64> {
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
    use ndarray::array;

    fn t(values: &[f64]) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "w",
            ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap(),
        )]
    }

    fn settings(aggregation: Aggregation) -> Settings {
        Settings::new(aggregation, &Strategy::default())
    }

    fn run(aggregation: Aggregation, global: &[f64], locals: &[(u64, &[f64])]) -> Vec<f64> {
        let global = t(global);
        let locals: Vec<(u64, Vec<NamedTensor>)> = locals.iter().map(|(n, v)| (*n, t(v))).collect();
        let refs: Vec<(u64, &[NamedTensor])> =
            locals.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let (out, _) = aggregate(&settings(aggregation), &global, &refs, &mut None);
        out[0].values.iter().copied().collect()
    }

    #[test]
    fn fedavg_weights_by_examples() {
        // Updates [0,3] and [4,-1] from global [1,1], weights 1 and 3: [1,1] + [3,0].
        let out = run(
            Aggregation::Fedavg,
            &[1.0, 1.0],
            &[(1, &[1.0, 4.0]), (3, &[5.0, 0.0])],
        );
        assert_eq!(out, vec![4.0, 1.0]);
    }

    #[test]
    fn median_and_trimmed_mean_ignore_an_outlier() {
        let locals: [(u64, &[f64]); 5] = [
            (1, &[1.0]),
            (1, &[2.0]),
            (1, &[3.0]),
            (1, &[4.0]),
            (1, &[1000.0]),
        ];
        assert_eq!(run(Aggregation::Median, &[0.0], &locals), vec![3.0]);
        // 20% of 5 is one value cut at each end: mean of 2, 3, 4.
        assert_eq!(run(Aggregation::TrimmedMean, &[0.0], &locals), vec![3.0]);
        // An even count takes the mean of the middle two.
        assert_eq!(run(Aggregation::Median, &[0.0], &locals[..4]), vec![2.5]);
    }

    #[test]
    fn norm_bounding_clips_to_the_median_norm() {
        // Norms 5, 5 and 50: the median is 5, so [30, 40] is scaled to [3, 4].
        let out = run(
            Aggregation::NormBounded,
            &[0.0, 0.0],
            &[(1, &[3.0, 4.0]), (1, &[-3.0, 4.0]), (1, &[30.0, 40.0])],
        );
        assert!(
            (out[0] - 1.0).abs() < 1e-12 && (out[1] - 4.0).abs() < 1e-12,
            "{out:?}"
        );
    }

    #[test]
    fn fedadam_takes_the_published_first_step() {
        // Reddi et al. 2021, Algorithm 2, first round from m = 0, v = tau^2 with mean update d:
        // m = (1 - b1) d, v = b2 tau^2 + (1 - b2) d^2, x += eta m / (sqrt(v) + tau).
        let (b1, b2, tau, eta) = (0.9, 0.99, 1e-3, 0.1);
        let d = 0.5;
        let m = (1.0 - b1) * d;
        let v: f64 = b2 * tau * tau + (1.0 - b2) * d * d;
        let expected = 2.0 + eta * m / (v.sqrt() + tau);
        let out = run(Aggregation::Fedadam, &[2.0], &[(1, &[2.5])]);
        assert!(
            (out[0] - expected).abs() < 1e-12,
            "{} vs {expected}",
            out[0]
        );
        // Adagrad accumulates: v = tau^2 + d^2.
        let v = tau * tau + d * d;
        let expected = 2.0 + eta * m / (v.sqrt() + tau);
        assert!((run(Aggregation::Fedadagrad, &[2.0], &[(1, &[2.5])])[0] - expected).abs() < 1e-12);
        // Yogi: v = tau^2 - (1 - b2) d^2 sign(tau^2 - d^2) = tau^2 + (1 - b2) d^2.
        let v = tau * tau + (1.0 - b2) * d * d;
        let expected = 2.0 + eta * m / (v.sqrt() + tau);
        assert!((run(Aggregation::Fedyogi, &[2.0], &[(1, &[2.5])])[0] - expected).abs() < 1e-12);
    }

    #[test]
    fn distance_is_euclidean() {
        assert_eq!(l2_distance(&t(&[0.0, 0.0]), &t(&[3.0, 4.0])), 5.0);
        assert_eq!(flatten(&t(&[1.0, 2.0])), array![1.0, 2.0]);
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

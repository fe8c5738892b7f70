//! Combining the results of a round: the strategies of a training job (FedAvg, the adaptive
//! server optimisers of Reddi et al. 2021, and the robust aggregators), and the weighted
//! averages of metrics.
//!
//! Every strategy works on updates: a node's parameters minus the global model it started
//! from, flattened in layout order.
//!
//! FedAvg and the server optimisers need only the examples-weighted mean of the local models,
//! so a round folds each update into an [`Accumulator`] as it is accepted and holds one sum per
//! parameter, whatever the number of agencies. The sum is exact, so the mean does not depend on
//! the order updates arrive in: each value is rounded once to a fixed-point [`Grid`] (a
//! multiple of 2^-F) and the weighted values are added as integers. [`aggregate`], the batch
//! formula over every update at once, rounds and adds the same way, so streaming and batch
//! agree to the bit. The robust strategies (median, trimmed mean, norm-bounded) need every
//! update at once and hold them all: [`round_holdings`] says how much.

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

impl Settings {
    /// Whether the strategy needs only the weighted mean of the updates, which a round folds
    /// in as they arrive (FedAvg and the server optimisers), rather than every update at once
    /// (the robust strategies).
    pub(crate) fn streams(&self) -> bool {
        matches!(
            self.aggregation,
            Aggregation::Fedavg
                | Aggregation::Unspecified
                | Aggregation::Fedadam
                | Aggregation::Fedyogi
                | Aggregation::Fedadagrad
        )
    }
}

/// The bytes a round of a training job holds for the updates of `members` agencies of a model
/// of `parameters` values: a robust strategy holds every update decoded (8 bytes a value); a
/// streaming one, an exact sum of at most 16 bytes a value, whatever the number of agencies.
pub(crate) fn round_holdings(settings: &Settings, members: usize, parameters: u64) -> u128 {
    let parameters = u128::from(parameters);
    if settings.streams() {
        parameters * 16
    } else {
        members as u128 * parameters * 8
    }
}

/// The largest magnitude of a value of a local model the coordinator takes in: what a node
/// accepts of a global model. With it, every exact sum of a round has a bound.
pub(crate) const MAX_PARAMETER: f64 = 1e12;
/// 2^40 > [`MAX_PARAMETER`].
const PARAMETER_BITS: u32 = 40;
/// The finest grid: 2^-48, about 3.6e-15 (an `f32` value of magnitude above 2^-24 lies on it
/// exactly; an `f64` value of magnitude 0.01 is moved by at most 2e-13 of itself).
const MAX_FRACTION_BITS: u32 = 48;

/// The fixed-point grid of a round's exact sums: each value of a local model is rounded (half
/// away from zero) to a multiple of 2^-F, and the sums of weight times value are integers. F is
/// the largest (up to 48) with which no sum can overflow 127 bits: with values below 2^40 in
/// magnitude and a total weight of at most W, F = min(48, 126 - 40 - bits(W)). A round's total
/// weight is bounded by its federation's members times `limits.max_records_per_agency` (the
/// most examples a result may claim): 48 with the defaults for up to 2^38 / 10^8 = 2,748
/// members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    fraction_bits: u32,
    /// 2^fraction_bits.
    scale: f64,
}

impl Grid {
    /// The grid of sums whose total weight is at most `max_weight`.
    pub(crate) fn for_weight(max_weight: u128) -> Self {
        let weight_bits = 128 - max_weight.leading_zeros();
        let fraction_bits = 126u32
            .saturating_sub(PARAMETER_BITS + weight_bits)
            .min(MAX_FRACTION_BITS);
        Grid {
            fraction_bits,
            scale: (1u64 << fraction_bits) as f64,
        }
    }

    /// The grid of a round of a federation of `members` whose results claim at most
    /// `max_examples` examples each.
    pub(crate) fn for_round(members: usize, max_examples: u64) -> Self {
        Self::for_weight(members as u128 * u128::from(max_examples))
    }

    /// F: values are multiples of 2^-F.
    pub(crate) fn fraction_bits(&self) -> u32 {
        self.fraction_bits
    }

    /// `x` (finite, at most [`MAX_PARAMETER`] in magnitude) in units of 2^-F, rounded half away
    /// from zero.
    fn quantize(&self, x: f64) -> i128 {
        // Exact: a power of two, and no value comes near the largest f64.
        let y = x * self.scale;
        if y.abs() < 4_503_599_627_370_496.0 {
            // Below 2^52: truncate, then round by the exact remainder.
            let t = y as i64;
            let r = y - t as f64;
            i128::from(if r >= 0.5 {
                t + 1
            } else if r <= -0.5 {
                t - 1
            } else {
                t
            })
        } else if y.abs() < 9.2e18 {
            // 2^52 and above: an integer already.
            i128::from(y as i64)
        } else {
            y as i128
        }
    }

    /// The mean `sum / weight` (`sum` in units of 2^-F) as the nearest `f64` of each step:
    /// the sum, its quotient by the weight, then the exact division by 2^F.
    fn mean(&self, sum: i128, weight: u128) -> f64 {
        if weight == 0 {
            return 0.0;
        }
        let sum = match i64::try_from(sum) {
            Ok(s) => s as f64,
            Err(_) => sum as f64,
        };
        sum / weight as f64 / self.scale
    }
}

/// The exact examples-weighted sum of local models, folded in one at a time: one integer per
/// parameter (8 bytes while every sum fits 64 bits, 16 after), whatever the number of updates.
/// Its mean is the same, to the bit, in whatever order the same updates are folded in, and the
/// same as [`aggregate`]'s.
#[derive(Debug)]
pub(crate) struct Accumulator {
    grid: Grid,
    sums: Sums,
    weight: u128,
}

#[derive(Debug)]
enum Sums {
    Narrow(Vec<i64>),
    Wide(Vec<i128>),
}

impl Accumulator {
    /// An empty sum of models of `len` values on `grid`.
    pub(crate) fn new(len: usize, grid: Grid) -> Self {
        Accumulator {
            grid,
            sums: Sums::Narrow(vec![0; len]),
            weight: 0,
        }
    }

    /// Adds a local model of `weight` examples: its values in layout order, as many as the
    /// accumulator's length, each finite and at most [`MAX_PARAMETER`] in magnitude (the
    /// round's checks, which pass before anything is folded in).
    pub(crate) fn fold(&mut self, weight: u64, values: impl IntoIterator<Item = f64>) {
        let w = i128::from(weight);
        let grid = self.grid;
        let mut values = values.into_iter().enumerate();
        let mut overflow = None;
        if let Sums::Narrow(sums) = &mut self.sums {
            for (j, x) in values.by_ref() {
                let Some(sum) = sums.get_mut(j) else { break };
                let v = w * grid.quantize(x);
                match i64::try_from(v).ok().and_then(|v| sum.checked_add(v)) {
                    Some(total) => *sum = total,
                    None => {
                        overflow = Some((j, v));
                        break;
                    }
                }
            }
        }
        if let Some((j, v)) = overflow {
            // A sum outgrew 64 bits: every sum moves to 128 bits, exactly, and the rest of this
            // model is added there.
            if let Sums::Narrow(narrow) = &self.sums {
                let wide: Vec<i128> = narrow.iter().map(|&s| i128::from(s)).collect();
                self.sums = Sums::Wide(wide);
            }
            if let Sums::Wide(sums) = &mut self.sums
                && let Some(sum) = sums.get_mut(j)
            {
                *sum = sum.saturating_add(v);
            }
        }
        if let Sums::Wide(sums) = &mut self.sums {
            // No sum can overflow (the grid's bound): saturation is never reached.
            for (j, x) in values {
                if let Some(sum) = sums.get_mut(j) {
                    *sum = sum.saturating_add(w * grid.quantize(x));
                }
            }
        }
        self.weight += u128::from(weight);
    }

    /// The examples-weighted mean of the models folded in, made in the sums' own memory
    /// while they fit 64 bits.
    pub(crate) fn into_mean(self) -> Array1<f64> {
        let (grid, weight) = (self.grid, self.weight);
        match self.sums {
            // Same size and alignment: the collection reuses the allocation.
            Sums::Narrow(sums) => sums
                .into_iter()
                .map(|s| grid.mean(i128::from(s), weight))
                .collect::<Vec<f64>>()
                .into(),
            Sums::Wide(sums) => sums.iter().map(|&s| grid.mean(s, weight)).collect(),
        }
    }
}

/// The batch formula of the mean: per parameter, the weighted values on `grid` added up in
/// the order given, divided by the total weight, as [`Accumulator::mean`] does.
fn exact_mean(grid: Grid, locals: &[(u64, Array1<f64>)]) -> Array1<f64> {
    let dim = locals.first().map(|(_, x)| x.len()).unwrap_or(0);
    let weight: u128 = locals.iter().map(|(n, _)| u128::from(*n)).sum();
    Array1::from_shape_fn(dim, |j| {
        let sum = locals
            .iter()
            .map(|(n, x)| i128::from(*n) * grid.quantize(x[j]))
            .fold(0i128, i128::saturating_add);
        grid.mean(sum, weight)
    })
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

/// `flat` (a model in layout order) as tensors of the names and shapes of `like`, without a
/// second copy of its largest tensor when that is the first (tensors are split off its end).
pub(crate) fn into_tensors(flat: Array1<f64>, like: &[NamedTensor]) -> Vec<NamedTensor> {
    let (mut values, offset) = flat.into_raw_vec_and_offset();
    if let Some(skip) = offset.filter(|&k| k > 0) {
        values.drain(..skip);
    }
    let mut out: Vec<NamedTensor> = Vec::with_capacity(like.len());
    for (i, t) in like.iter().enumerate().rev() {
        let n = t.values.len();
        let tail = if i == 0 {
            std::mem::take(&mut values)
        } else {
            values.split_off(values.len().saturating_sub(n))
        };
        let shape = IxDyn(t.values.shape());
        let tensor =
            ArrayD::from_shape_vec(shape.clone(), tail).unwrap_or_else(|_| ArrayD::zeros(shape));
        out.push(NamedTensor::new(t.name.clone(), tensor));
    }
    out.reverse();
    out
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
/// `(examples, parameters)`, all of the same layout, every update at once (the batch formula;
/// FedAvg and the server optimisers take the mean on `grid`, as a round's [`Accumulator`]
/// does). `state` holds the server optimiser's moments between rounds. Returns the new model
/// and a sentence on what was done (for the audit log), e.g. how many updates were clipped.
pub(crate) fn aggregate(
    settings: &Settings,
    grid: Grid,
    global: &[NamedTensor],
    locals: &[(u64, &[NamedTensor])],
    state: &mut Option<ServerState>,
) -> (Vec<NamedTensor>, String) {
    if settings.streams() {
        let locals: Vec<(u64, Array1<f64>)> =
            locals.iter().map(|(n, t)| (*n, flatten(t))).collect();
        let model = server_step(settings, global, exact_mean(grid, &locals), state);
        return (unflatten(&model, global), String::new());
    }
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
        // Norm-bounded, the one robust strategy left.
        _ => {
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
    };
    (unflatten(&(g + step), global), note)
}

/// The new global model from the global model `g` and the weighted mean of the local models
/// (FedAvg and the server optimisers): the mean itself under FedAvg; under a server optimiser,
/// a step along the mean update `mean - g` (Reddi et al. 2021, Algorithm 2).
pub(crate) fn server_step(
    settings: &Settings,
    global: &[NamedTensor],
    mean: Array1<f64>,
    state: &mut Option<ServerState>,
) -> Array1<f64> {
    if !matches!(
        settings.aggregation,
        Aggregation::Fedadam | Aggregation::Fedyogi | Aggregation::Fedadagrad
    ) {
        return mean;
    }
    let g = flatten(global);
    let delta = mean - &g;
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
    g + step
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
        let grid = Grid::for_weight(1 << 20);
        let (out, _) = aggregate(&settings(aggregation), grid, &global, &refs, &mut None);
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
    fn flattening_keeps_the_layout_order() {
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

/// Streaming FedAvg (and the server optimisers) against the batch formula: the same bits over
/// random updates, weights, layouts, wire types, chunkings, interleavings of uploads, arrival
/// orders and rejections.
#[cfg(test)]
mod streaming {
    use super::*;
    use proptest::prelude::{
        Just, ProptestConfig, Strategy as Generate, prop, prop_assert, prop_assert_eq, prop_assume,
        prop_oneof, proptest,
    };
    use treaty_proto::tensor::{Assembler, encode};
    use treaty_proto::v1::Strategy;
    use treaty_proto::v1::{Dtype, TensorChunk, TensorSpec};

    /// What becomes of an upload.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fate {
        /// Complete, checked and folded in.
        Accepted,
        /// It broke off: the staging fails and nothing is folded.
        BrokeOff,
        /// A value is not finite: the staging fails.
        NotFinite,
        /// Staged but rejected by a later check (its norm bound), or too late for its round:
        /// never folded.
        Rejected,
    }

    fn fate() -> impl Generate<Value = Fate> {
        prop_oneof![
            6 => Just(Fate::Accepted),
            1 => Just(Fate::BrokeOff),
            1 => Just(Fate::NotFinite),
            1 => Just(Fate::Rejected),
        ]
    }

    /// A value of any magnitude a node may send: zero, tiny, ordinary, up to the bound.
    fn value() -> impl Generate<Value = f64> {
        prop_oneof![
            1 => Just(0.0),
            1 => prop_oneof![Just(MAX_PARAMETER), Just(-MAX_PARAMETER)],
            8 => (-1.0f64..1.0, -60i32..40).prop_map(|(m, e)| (m * 2f64.powi(e))
                .clamp(-MAX_PARAMETER, MAX_PARAMETER)),
        ]
    }

    fn weight() -> impl Generate<Value = u64> {
        prop_oneof![
            4 => Just(1u64),
            2 => 1u64..1000,
            1 => Just(100_000_000u64),
        ]
    }

    /// A round: the layout (tensor shapes), the wire type, each update's weight, values and
    /// fate, the chunk size, the order of chunk pushes across uploads, the strategy.
    #[derive(Debug, Clone)]
    struct Round {
        shapes: Vec<Vec<usize>>,
        dtype: Dtype,
        updates: Vec<(u64, Vec<f64>, Fate)>,
        chunk: usize,
        pushes: Vec<usize>,
        aggregation: Aggregation,
    }

    fn round() -> impl Generate<Value = Round> {
        let shapes = prop::collection::vec(prop::collection::vec(1usize..7, 0..3), 1..4);
        (shapes, 1usize..9).prop_flat_map(|(shapes, n)| {
            let len: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            let update = (weight(), prop::collection::vec(value(), len), fate());
            (
                Just(shapes),
                prop_oneof![Just(Dtype::F32), Just(Dtype::F64)],
                prop::collection::vec(update, n),
                // Bytes per chunk: one element up to a whole tensor and more.
                prop_oneof![Just(8usize), Just(24), Just(64), Just(1 << 20)],
                prop::collection::vec(0usize..n, 0..200),
                prop_oneof![
                    Just(Aggregation::Fedavg),
                    Just(Aggregation::Fedadam),
                    Just(Aggregation::Fedyogi),
                    Just(Aggregation::Fedadagrad)
                ],
            )
                .prop_map(|(shapes, dtype, updates, chunk, pushes, aggregation)| {
                    Round {
                        shapes,
                        dtype,
                        updates,
                        chunk,
                        pushes,
                        aggregation,
                    }
                })
        })
    }

    fn tensors(shapes: &[Vec<usize>], values: &[f64]) -> Vec<NamedTensor> {
        let mut rest = values;
        shapes
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let n: usize = shape.iter().product();
                let (mine, tail) = rest.split_at(n);
                rest = tail;
                NamedTensor::new(
                    format!("t{i}"),
                    ArrayD::from_shape_vec(IxDyn(shape), mine.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    /// One upload on its way in: its assembler and the chunks still to come.
    struct Upload {
        index: usize,
        assembler: Assembler,
        chunks: std::collections::VecDeque<TensorChunk>,
    }

    fn start(
        index: usize,
        specs: Vec<TensorSpec>,
        mut chunks: Vec<TensorChunk>,
        fate: Fate,
    ) -> Upload {
        match fate {
            Fate::BrokeOff if !chunks.is_empty() => {
                chunks.pop();
            }
            Fate::NotFinite => {
                if let Some(chunk) = chunks.iter_mut().find(|c| !c.data.is_empty()) {
                    let mut data = chunk.data.to_vec();
                    let nan = match data.len() % 8 == 0 && specs[0].dtype == Dtype::F64 as i32 {
                        true => f64::NAN.to_le_bytes().to_vec(),
                        false => f32::NAN.to_le_bytes().to_vec(),
                    };
                    data[..nan.len()].copy_from_slice(&nan);
                    chunk.data = data.into();
                }
            }
            _ => {}
        }
        Upload {
            index,
            assembler: Assembler::new(specs, 1 << 20, 1 << 20).unwrap(),
            chunks: chunks.into(),
        }
    }

    /// The round as a coordinator streams it: uploads staged chunk by chunk, interleaved as
    /// `pushes` says, each folded in when it is complete and passes; the model and which
    /// updates were folded in.
    fn streamed(r: &Round, grid: Grid, global: &[NamedTensor]) -> (Array1<f64>, Vec<usize>) {
        let len = global.iter().map(|t| t.values.len()).sum();
        let mut sum = Accumulator::new(len, grid);
        let mut folded = Vec::new();
        let mut open: Vec<Upload> = r
            .updates
            .iter()
            .enumerate()
            .map(|(i, (_, values, fate))| {
                let (specs, chunks) = encode(&tensors(&r.shapes, values), r.dtype, r.chunk);
                start(i, specs, chunks, *fate)
            })
            .collect();
        let mut pushes = r.pushes.iter().copied().chain(std::iter::repeat(0));
        while !open.is_empty() {
            let k = pushes.next().unwrap_or(0) % open.len();
            match open[k].chunks.pop_front() {
                Some(chunk) => {
                    // A chunk that cannot be taken ends its upload (never the case here: the
                    // chunks are well formed).
                    open[k].assembler.push(chunk).unwrap();
                }
                None => {
                    let upload = open.remove(k);
                    let (weight, _, fate) = &r.updates[upload.index];
                    let Ok(staged) = upload.assembler.finish_staged() else {
                        assert!(matches!(fate, Fate::BrokeOff | Fate::NotFinite));
                        continue;
                    };
                    assert_eq!(staged.len(), len);
                    if *fate == Fate::Accepted {
                        sum.fold(*weight, staged.values());
                        folded.push(upload.index);
                    }
                }
            }
        }
        let settings = Settings::new(r.aggregation, &Strategy::default());
        (
            server_step(&settings, global, sum.into_mean(), &mut None),
            folded,
        )
    }

    fn bits(values: impl IntoIterator<Item = f64>) -> Vec<u64> {
        values.into_iter().map(f64::to_bits).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn streaming_equals_the_batch_formula_to_the_bit(
            r in round(),
            members_beyond in 0usize..100,
            max_examples in prop_oneof![Just(100_000_000u64), Just(1u64 << 53)],
        ) {
            let members = r.updates.len() + members_beyond;
            let grid = Grid::for_round(members, max_examples);
            let len: usize = r.shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            let global = tensors(&r.shapes, &(0..len).map(|j| j as f64 * 0.25 - 1.0).collect::<Vec<_>>());
            let (model, folded) = streamed(&r, grid, &global);
            // The batch formula over the same accepted updates, in the federation's order,
            // each decoded whole from what was sent.
            let locals: Vec<(u64, Vec<NamedTensor>)> = (0..r.updates.len())
                .filter(|i| folded.contains(i))
                .map(|i| {
                    let (w, values, _) = &r.updates[i];
                    let (specs, chunks) = encode(&tensors(&r.shapes, values), r.dtype, 1 << 20);
                    let mut a = Assembler::new(specs, 1 << 20, 1 << 20).unwrap();
                    for c in chunks {
                        a.push(c).unwrap();
                    }
                    (*w, a.finish().unwrap())
                })
                .collect();
            prop_assume!(!locals.is_empty());
            let refs: Vec<(u64, &[NamedTensor])> =
                locals.iter().map(|(w, t)| (*w, t.as_slice())).collect();
            let settings = Settings::new(r.aggregation, &Strategy::default());
            let (batch, _) = aggregate(&settings, grid, &global, &refs, &mut None);
            prop_assert_eq!(bits(model.iter().copied()), bits(flatten(&batch)));
            // And the exact mean is the weighted mean, up to the grid and a few roundings.
            if r.aggregation == Aggregation::Fedavg {
                let total: f64 = locals.iter().map(|(w, _)| *w as f64).sum();
                for (j, got) in model.iter().enumerate() {
                    let want: f64 = locals.iter().map(|(w, t)| *w as f64 / total * flatten(t)[j]).sum();
                    let scale = locals.iter().map(|(_, t)| flatten(t)[j].abs()).fold(0.0, f64::max);
                    let tolerance = 2f64.powi(-(grid.fraction_bits() as i32)) + 1e-14 * scale;
                    prop_assert!((got - want).abs() <= tolerance, "{} vs {} at {}", got, want, j);
                }
            }
        }

        #[test]
        fn values_round_half_away_from_zero_onto_the_grid(x in value(), bits in 0u32..=48) {
            let grid = Grid { fraction_bits: bits, scale: 2f64.powi(bits as i32) };
            prop_assert_eq!(grid.quantize(x), (x * grid.scale).round() as i128);
        }
    }

    #[test]
    fn a_sum_that_outgrows_64_bits_stays_exact() {
        // 2^48 grid, weights 10^8 and values near 10^12: each product is about 2^114.
        let grid = Grid::for_round(3, 100_000_000);
        assert_eq!(grid.fraction_bits(), 48);
        let a = [1.0, -2.5e-9, 1.0e3, 3.0];
        let b = [-1.0, 7.0e-12, 9.999e11, 0.5];
        let mut sum = Accumulator::new(4, grid);
        sum.fold(1, a);
        // The first sums fit 64 bits; the third overflows them in the middle of the model.
        assert!(matches!(sum.sums, Sums::Narrow(_)));
        sum.fold(100_000_000, b);
        assert!(matches!(sum.sums, Sums::Wide(_)));
        let batch = exact_mean(
            grid,
            &[
                (1, Array1::from(a.to_vec())),
                (100_000_000, Array1::from(b.to_vec())),
            ],
        );
        let mean = sum.into_mean();
        assert_eq!(bits(mean.iter().copied()), bits(batch.iter().copied()));
        let want = (1.0e3 + 1e8 * 9.999e11) / (1e8 + 1.0);
        assert!((mean[2] - want).abs() <= 1e-16 * want);
        // The other order: wide from the start.
        let mut other = Accumulator::new(4, grid);
        other.fold(100_000_000, b);
        other.fold(1, a);
        assert_eq!(bits(other.into_mean()), bits(batch));
    }

    #[test]
    fn the_grid_narrows_as_the_total_weight_grows() {
        assert_eq!(Grid::for_round(1, 1).fraction_bits(), 48);
        // 2,748 members of 10^8 examples: 2^38 > 2.748e11, still 48.
        assert_eq!(Grid::for_round(2_748, 100_000_000).fraction_bits(), 48);
        assert_eq!(Grid::for_round(2_749, 100_000_000).fraction_bits(), 47);
        // The largest limit, 2^53 examples, and 1,000 members: 126 - 40 - 63 = 23.
        assert_eq!(Grid::for_round(1_000, 1 << 53).fraction_bits(), 23);
    }
}

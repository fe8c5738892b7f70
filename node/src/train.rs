//! Local training: mini-batch SGD with momentum, L2 regularisation and the FedProx proximal
//! term, on reusable batch buffers (nothing is allocated per row).

use ndarray::{Array1, Array2, ArrayView1, Axis, Slice};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use treaty_policies::privacy::{Release, zcdp};

use crate::data::Examples;
use crate::model::Model;

/// How to train locally.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub momentum: f64,
    pub l2: f64,
    /// FedProx: the weight of (mu / 2) ||w - w_global||²; 0 for none.
    pub proximal_mu: f64,
    pub seed: u64,
}

/// Trains `model` on `data`, starting from its current parameters (the global model, which is
/// also the FedProx anchor). Returns the mean training loss over the last epoch.
pub fn train(model: &mut Model, data: &Examples, sgd: &Sgd) -> f64 {
    let n = data.len();
    if n == 0 {
        return f64::NAN;
    }
    let d = data.x.ncols();
    let batch = sgd.batch_size.clamp(1, n);
    let anchor = model.params().clone();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(sgd.seed);
    let mut xb = Array2::<f64>::zeros((batch, d));
    let mut yb = Array1::<f64>::zeros(batch);
    let mut grad = Array1::<f64>::zeros(anchor.len());
    let mut velocity = Array1::<f64>::zeros(anchor.len());
    let mut last = f64::NAN;
    for _ in 0..sgd.epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for idx in order.chunks(batch) {
            let m = idx.len();
            for (i, &row) in idx.iter().enumerate() {
                xb.row_mut(i).assign(&data.x.row(row));
                yb[i] = data.y[row];
            }
            let loss = model.loss_and_gradient(
                xb.slice_axis(Axis(0), Slice::from(..m)),
                yb.slice_axis(Axis(0), Slice::from(..m)),
                sgd.l2,
                grad.view_mut(),
            );
            total += loss * m as f64;
            if sgd.proximal_mu > 0.0 {
                let params = model.params();
                grad.zip_mut_with(&(params - &anchor), |g, diff| *g += sgd.proximal_mu * diff);
            }
            velocity *= sgd.momentum;
            velocity += &grad;
            model.params_mut().scaled_add(-sgd.learning_rate, &velocity);
        }
        last = total / n as f64;
    }
    last
}

/// How many records to pass over before the next one taken with probability `q`: a geometric
/// draw, ln(U) / ln(1 - q) rounded down.
fn skip(rng: &mut StdRng, q: f64) -> usize {
    if q >= 1.0 {
        return 0;
    }
    let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    (u.ln() / (-q).ln_1p()).floor().min(usize::MAX as f64 / 2.0) as usize
}

/// What a per-example gradient of (finite) norm `norm` is multiplied by to have norm at most
/// `clip`.
fn clip_factor(norm: f64, clip: f64) -> f64 {
    if norm > clip { clip / norm } else { 1.0 }
}

/// How a step draws its records under differential privacy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Every record, every step.
    FullBatch,
    /// Each record independently with this probability.
    Poisson(f64),
}

impl Sampling {
    /// What `steps` DP-SGD steps with this sampling, each adding `noise`, release, as
    /// `treaty_policies::privacy::dp_sgd` describes every DP-SGD release.
    pub fn release(self, noise: StepNoise, steps: u64) -> Release {
        let sampling_rate = match self {
            Sampling::FullBatch => None,
            Sampling::Poisson(q) => Some(q),
        };
        treaty_policies::privacy::dp_sgd(sampling_rate, noise.noise_multiplier, noise.rho, steps)
    }
}

/// One DP-SGD step's Gaussian noise as the accountants see it: its noise multiplier (the
/// noise's standard deviation over the clipping norm) and its zCDP rho.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepNoise {
    pub noise_multiplier: f64,
    pub rho: f64,
}

impl StepNoise {
    /// Ideal Gaussian noise of this multiplier: rho = 1 / (2 noise_multiplier²).
    pub fn ideal(noise_multiplier: f64) -> Self {
        StepNoise {
            noise_multiplier,
            rho: zcdp::gaussian_rho(noise_multiplier),
        }
    }

    /// Noise of the rho opendp's privacy map states (the noise grid included), with the
    /// effective noise multiplier that rho implies.
    pub fn measured(rho: f64) -> Self {
        StepNoise {
            noise_multiplier: (1.0 / (2.0 * rho)).sqrt(),
            rho,
        }
    }
}

/// Record-level DP training: per-example gradients clipped to `clip_norm`, Gaussian noise of
/// standard deviation `noise.scale()` on their sum (through opendp), divided by `denominator`.
#[derive(Debug, Clone, Copy)]
pub struct DpSgd {
    pub sampling: Sampling,
    pub steps: u64,
    pub noise: crate::noise::GaussianNoise,
    /// What the noisy sum is divided by: a public constant (the expected batch from public
    /// figures), never the number of records, which would scale the release by a private value.
    pub denominator: f64,
}

/// Trains with record-level differential privacy: `dp.steps` steps from the model's current
/// parameters, with `sgd`'s learning rate, momentum, L2 and proximal term (which depend on no
/// record). The record-dependent part of each step is the clipped, noised gradient sum: each
/// record adds a vector of norm at most `clip`, and a record whose gradient is not finite adds
/// nothing (NaN would pass a `norm > clip` test unclipped), and so does a record `readable`
/// marks unreadable — after the same computation as any other, so that a step's time does not
/// depend on which records are readable. Stops between two steps once `stop` is cancelled.
pub fn train_dp(
    model: &mut Model,
    data: &Examples,
    readable: Option<&[bool]>,
    sgd: &Sgd,
    dp: &DpSgd,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), crate::noise::NoiseError> {
    let n = data.len();
    let p = model.params().len();
    let clip = dp.noise.sensitivity;
    let anchor = model.params().clone();
    let mut rng = StdRng::from_os_rng();
    let mut sum = vec![0.0; p];
    let mut grad = Array1::<f64>::zeros(p);
    let mut velocity = Array1::<f64>::zeros(p);
    let mut batch = Vec::new();
    let mask = model.regularized();
    let denominator = dp.denominator.max(1.0);
    // Small models: build the mechanism once for all steps; large ones split across threads.
    let prepared = if p < 16_384 {
        Some(dp.noise.prepare(p)?)
    } else {
        None
    };
    for _ in 0..dp.steps {
        if stop.is_cancelled() {
            return Ok(());
        }
        // The records of this step: all of them, or each with probability q (drawn by geometric
        // skips, so a step costs its batch, not n draws).
        batch.clear();
        match dp.sampling {
            Sampling::FullBatch => batch.extend(0..n),
            Sampling::Poisson(q) => {
                let mut i = skip(&mut rng, q);
                while i < n {
                    batch.push(i);
                    i += 1 + skip(&mut rng, q);
                }
            }
        }
        clipped_sum(model, data, readable, &batch, clip, &mut sum, &mut grad);
        // Each record added at most `clip` in norm, so the sum is finite; should it not be, a
        // fixed rule (zero) stands in for it rather than opendp's own handling of non-finite values.
        if !sum.iter().all(|v| v.is_finite()) {
            sum.fill(0.0);
        }
        let mut noisy = sum.clone();
        match &prepared {
            Some(prepared) => prepared.add(&mut noisy)?,
            None => dp.noise.add(&mut noisy)?,
        }
        let mut step = Array1::from(noisy) / denominator;
        if sgd.l2 > 0.0 {
            step.scaled_add(sgd.l2, &(model.params() * &mask));
        }
        if sgd.proximal_mu > 0.0 {
            step.scaled_add(sgd.proximal_mu, &(model.params() - &anchor));
        }
        velocity *= sgd.momentum;
        velocity += &step;
        model.params_mut().scaled_add(-sgd.learning_rate, &velocity);
    }
    Ok(())
}

/// Whether the model's per-example gradient is `r (x, 1)` (a linear or logistic model).
fn is_linear(model: &Model, d: usize) -> bool {
    matches!(
        model.kind,
        crate::model::Architecture::Logistic | crate::model::Architecture::Linear
    ) && model.params().len() == d + 1
}

/// The sum of the per-example gradients of `batch`'s records at the model's parameters, each
/// clipped to L2 norm `clip`, into `sum` (overwritten); `grad` is scratch of the model's size.
/// A record whose gradient is not finite adds nothing, and neither does one `readable` marks
/// unreadable, after the same computation as any other.
fn clipped_sum(
    model: &mut Model,
    data: &Examples,
    readable: Option<&[bool]>,
    batch: &[usize],
    clip: f64,
    sum: &mut [f64],
    grad: &mut Array1<f64>,
) {
    sum.fill(0.0);
    let d = data.x.ncols();
    let linear = is_linear(model, d);
    let logistic = model.kind == crate::model::Architecture::Logistic;
    // The parameters as they stand (a linear model's weights, then its bias).
    let params = model.params().to_vec();
    let weight = |i: usize| match readable {
        Some(r) if !r[i] => 0.0,
        _ => 1.0,
    };
    if linear {
        // The per-example gradient of a linear model is r (x, 1): clipped without a copy.
        // Several rows at a time ([`ROWS_TOGETHER`]), so that their loads from a table larger
        // than the cache are in flight together.
        let w = &params[..d];
        let mut add = |i: usize, (z, xx): (f64, f64)| {
            let z = z + params[d];
            let r = if logistic {
                1.0 / (1.0 + (-z).exp())
            } else {
                z
            } - data.y[i];
            let norm = r.abs() * (xx + 1.0).sqrt();
            if norm.is_finite() {
                let factor = clip_factor(norm, clip) * r * weight(i);
                for (s, a) in sum.iter_mut().zip(data.x.row(i).iter()) {
                    *s += factor * a;
                }
                sum[d] += factor;
            }
        };
        let mut groups = batch.chunks_exact(ROWS_TOGETHER);
        match data.x.as_slice() {
            // Every row contiguous (as an encoding lays them out): a group's rows read together.
            Some(flat) => {
                for group in &mut groups {
                    let rows: [&[f64]; ROWS_TOGETHER] =
                        std::array::from_fn(|k| &flat[group[k] * d..(group[k] + 1) * d]);
                    for (&i, z) in group.iter().zip(dot_and_square_rows(rows, w)) {
                        add(i, z);
                    }
                }
            }
            None => {
                for group in &mut groups {
                    for &i in group {
                        let row = data.x.row(i);
                        add(i, (row.dot(&ArrayView1::from(w)), row.dot(&row)));
                    }
                }
            }
        }
        for &i in groups.remainder() {
            let row = data.x.row(i);
            let z = match row.as_slice() {
                Some(x) => dot_and_square(x, w),
                None => (row.dot(&ArrayView1::from(w)), row.dot(&row)),
            };
            add(i, z);
        }
    } else {
        for &i in batch {
            let x = data.x.slice_axis(Axis(0), Slice::from(i..i + 1));
            let y = data.y.slice_axis(Axis(0), Slice::from(i..i + 1));
            model.loss_and_gradient(x, y, 0.0, grad.view_mut());
            let norm = grad.dot(&*grad).sqrt();
            if norm.is_finite() {
                let factor = clip_factor(norm, clip) * weight(i);
                for (s, g) in sum.iter_mut().zip(grad.iter()) {
                    *s += factor * g;
                }
            }
        }
    }
}

/// The margin on a clipped gradient's norm for the floating-point error of its clipping (a few
/// units in the last place of a norm computed in `f64`; this is 1e-9 of it).
pub(crate) const CLIP_MARGIN: f64 = 1e-9;

/// Distributed DP's one release a round, in the fixed point of secure aggregation: each
/// record's per-example gradient at the model's parameters, clipped to L2 norm `clip`, scaled by
/// `unit` (2^bits) and rounded to integers, then summed exactly (integers: no rounding of the
/// sum depends on which records are in it). Removing a record changes the sum by that record's
/// rounded gradient alone, of L2 norm at most `clip * unit * (1 + CLIP_MARGIN) + sqrt(p) / 2`.
/// A record whose gradient is not finite adds nothing, and neither does one `readable` marks
/// unreadable, after the same computation as any other. The sum saturates at the ends of i64,
/// which it cannot reach below 2^31 records of `clip * unit` under 2^32 each.
pub(crate) fn quantized_gradient_sum(
    model: &mut Model,
    data: &Examples,
    readable: Option<&[bool]>,
    clip: f64,
    unit: f64,
) -> Vec<i64> {
    let p = model.params().len();
    let d = data.x.ncols();
    let linear = is_linear(model, d);
    let logistic = model.kind == crate::model::Architecture::Logistic;
    let params = model.params().to_vec();
    let mut sum = vec![0i64; p];
    let mut grad = Array1::<f64>::zeros(p);
    // Each record's gradient rounded to the grid, added exactly; an unreadable record, or one
    // whose gradient is not finite, adds zeros by the same work (a NaN times 0 is NaN, which
    // casts to 0), so that the time spent says nothing of which records those are.
    let add = |sum: &mut [i64], i: usize, gradient: &[f64], norm: f64| {
        let weight = match readable {
            Some(r) if !r[i] => 0.0,
            _ => 1.0,
        };
        let factor = match norm.is_finite() {
            true => clip_factor(norm, clip) * weight * unit,
            false => 0.0,
        };
        for (s, g) in sum.iter_mut().zip(gradient) {
            *s = s.saturating_add((g * factor).round() as i64);
        }
    };
    for i in 0..data.len() {
        let row = data.x.row(i);
        match (linear, row.as_slice(), grad.as_slice_mut()) {
            // A linear model's per-example gradient is r (x, 1).
            (true, Some(x), Some(g)) => {
                let (dot, square) = dot_and_square(x, &params[..d]);
                let z = dot + params[d];
                let prediction = if logistic {
                    1.0 / (1.0 + (-z).exp())
                } else {
                    z
                };
                let r = prediction - data.y[i];
                for (g, a) in g.iter_mut().zip(x) {
                    *g = r * a;
                }
                g[d] = r;
                add(&mut sum, i, g, r.abs() * (square + 1.0).sqrt());
            }
            _ => {
                let x = data.x.slice_axis(Axis(0), Slice::from(i..i + 1));
                let y = data.y.slice_axis(Axis(0), Slice::from(i..i + 1));
                model.loss_and_gradient(x, y, 0.0, grad.view_mut());
                let norm = grad.dot(&grad).sqrt();
                add(&mut sum, i, grad.as_slice().unwrap_or_default(), norm);
            }
        }
    }
    sum
}

/// `x . w` and `x . x` in one pass over `x`, in four lanes each (the additions of one lane do
/// not wait on the others').
fn dot_and_square(x: &[f64], w: &[f64]) -> (f64, f64) {
    let (mut dot, mut square) = ([0.0; 4], [0.0; 4]);
    let (xs, ws) = (x.chunks_exact(4), w.chunks_exact(4));
    let (x_rest, w_rest) = (xs.remainder(), ws.remainder());
    for (a, b) in xs.zip(ws) {
        for k in 0..4 {
            dot[k] += a[k] * b[k];
            square[k] += a[k] * a[k];
        }
    }
    let mut z = (dot[0] + dot[1]) + (dot[2] + dot[3]);
    let mut xx = (square[0] + square[1]) + (square[2] + square[3]);
    for (a, b) in x_rest.iter().zip(w_rest) {
        z += a * b;
        xx += a * a;
    }
    (z, xx)
}

/// How many rows [`clipped_sum`] reads together: on a table larger than the cache, a batch's
/// rows are scattered and each waits for memory; eight rows' loads in flight at once waited
/// least (a step of 8,000 of 80,000 rows of 64 features, timed alone on the 2-core Intel Xeon
/// host of 2026-12-05: 0.67 ms at eight, 0.90 ms at four, 0.80 ms at sixteen; W1 in
/// bench/README.md).
const ROWS_TOGETHER: usize = 8;

/// [`dot_and_square`] of `N` rows at once, each row's sums taken in the same order as alone
/// (so the results are the same to the bit): the rows' loads are issued together, and a
/// batch of rows scattered over a table larger than the cache waits for memory about once per
/// `N` rows instead of once per row.
fn dot_and_square_rows<const N: usize>(rows: [&[f64]; N], w: &[f64]) -> [(f64, f64); N] {
    if rows.iter().any(|r| r.len() != w.len()) {
        return rows.map(|r| dot_and_square(r, w));
    }
    let (mut dot, mut square) = ([[0.0; 4]; N], [[0.0; 4]; N]);
    let whole = w.len() / 4 * 4;
    for (c, b) in w[..whole].chunks_exact(4).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let a = &row[4 * c..4 * c + 4];
            for k in 0..4 {
                dot[r][k] += a[k] * b[k];
                square[r][k] += a[k] * a[k];
            }
        }
    }
    let mut out = [(0.0, 0.0); N];
    for (r, row) in rows.iter().enumerate() {
        let (d, s) = (dot[r], square[r]);
        let mut z = (d[0] + d[1]) + (d[2] + d[3]);
        let mut xx = (s[0] + s[1]) + (s[2] + s[3]);
        for (a, b) in row[whole..].iter().zip(&w[whole..]) {
            z += a * b;
            xx += a * a;
        }
        out[r] = (z, xx);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use ndarray::{Array2, array};

    fn sgd(epochs: u32, batch: usize, lr: f64) -> Sgd {
        Sgd {
            epochs,
            batch_size: batch,
            learning_rate: lr,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 7,
        }
    }

    /// The space-shuttle O-ring data (23 launches before Challenger): temperature (°F) and
    /// whether any O-ring was damaged (Dalal, Fowlkes and Hoadley, JASA 1989).
    const TEMPERATURE: [f64; 23] = [
        66., 70., 69., 68., 67., 72., 73., 70., 57., 63., 70., 78., 67., 53., 67., 75., 70., 81.,
        76., 79., 75., 76., 58.,
    ];
    const DAMAGE: [f64; 23] = [
        0., 1., 0., 0., 0., 0., 0., 0., 1., 1., 1., 0., 0., 1., 0., 0., 0., 0., 0., 0., 1., 0., 1.,
    ];

    fn challenger() -> (Examples, f64, f64) {
        let mean = TEMPERATURE.iter().sum::<f64>() / 23.0;
        let sd = (TEMPERATURE.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / 23.0).sqrt();
        let x = Array2::from_shape_fn((23, 1), |(i, _)| (TEMPERATURE[i] - mean) / sd);
        (
            Examples {
                x,
                y: Array1::from(DAMAGE.to_vec()),
            },
            mean,
            sd,
        )
    }

    #[test]
    fn a_dp_sgd_release_is_zcdp_for_full_batches_and_rdp_when_sampled() {
        let ideal = StepNoise::ideal(2.0);
        assert_eq!(ideal.rho, 1.0 / 8.0);
        assert_eq!(
            Sampling::FullBatch.release(ideal, 10),
            Release::Gaussian { rho: 10.0 / 8.0 }
        );
        assert_eq!(
            Sampling::Poisson(0.01).release(ideal, 10),
            Release::SampledGaussian {
                sampling_rate: 0.01,
                noise_multiplier: 2.0,
                steps: 10
            }
        );
        // Measured by opendp: the rho as stated, and the noise multiplier it implies.
        let measured = StepNoise::measured(0.125);
        assert_eq!(
            Sampling::FullBatch.release(measured, 4),
            Release::Gaussian { rho: 0.5 }
        );
        assert_eq!(measured.noise_multiplier, 2.0);
    }

    /// Distributed DP's gradient sum in the fixed point: each launch's logistic gradient at a
    /// fixed model, clipped, by the textbook formula (a second computation, here), rounded and
    /// summed; and without any one launch the sum moves by that launch's rounded gradient alone,
    /// within the sensitivity the plan states.
    #[test]
    fn the_quantized_gradient_sum_moves_by_one_record_within_its_sensitivity() {
        let (data, _, _) = challenger();
        let mut m = Model::zeros(Architecture::Logistic, 1);
        m.params_mut().assign(&array![0.3, -1.2]);
        let (clip, unit) = (0.4, 2f64.powi(20));
        let rounded = |i: usize| -> [i64; 2] {
            let x = data.x[[i, 0]];
            let r = 1.0 / (1.0 + (-(0.3 * x - 1.2)).exp()) - data.y[i];
            let norm = r.abs() * (x * x + 1.0).sqrt();
            let f = if norm > clip { clip / norm } else { 1.0 };
            [
                (r * x * f * unit).round() as i64,
                (r * f * unit).round() as i64,
            ]
        };
        let all = quantized_gradient_sum(&mut m, &data, None, clip, unit);
        let expected = (0..23).fold([0i64; 2], |s, i| {
            let g = rounded(i);
            [s[0] + g[0], s[1] + g[1]]
        });
        // The same per-record rounding, the same exact sum (a rounding at the half may differ by
        // one unit in the last place of the product).
        for k in 0..2 {
            assert!(
                (all[k] - expected[k]).abs() <= 23,
                "{k}: {} vs {}",
                all[k],
                expected[k]
            );
        }
        let sensitivity = clip * unit * (1.0 + CLIP_MARGIN) + 2f64.sqrt() / 2.0;
        for gone in 0..23 {
            let mut readable = vec![true; 23];
            readable[gone] = false;
            let without = quantized_gradient_sum(&mut m, &data, Some(&readable), clip, unit);
            let moved: Vec<f64> = (0..2).map(|k| (all[k] - without[k]) as f64).collect();
            let norm = (moved[0] * moved[0] + moved[1] * moved[1]).sqrt();
            assert!(norm <= sensitivity, "launch {gone}: {norm} > {sensitivity}");
            let g = rounded(gone);
            for k in 0..2 {
                assert!((moved[k] - g[k] as f64).abs() <= 1.0, "launch {gone}");
            }
        }
    }

    #[test]
    fn logistic_regression_reproduces_the_published_challenger_fit() {
        // The maximum-likelihood fit, as published (e.g. Dalal et al. 1989; R's
        // glm(damage ~ temp, binomial)): logit p = 15.0429 - 0.2322 * temperature.
        let (data, mean, sd) = challenger();
        let mut m = Model::zeros(Architecture::Logistic, 1);
        train(&mut m, &data, &sgd(20_000, 23, 0.5));
        let (w, b) = (m.params()[0], m.params()[1]);
        let slope = w / sd;
        let intercept = b - w * mean / sd;
        assert!((slope - -0.2322).abs() < 5e-4, "slope {slope}");
        assert!((intercept - 15.0429).abs() < 5e-3, "intercept {intercept}");
    }

    #[test]
    fn two_class_multinomial_equals_logistic_regression() {
        // With two classes and no regularisation, softmax regression started from zero keeps
        // w1 = -w0, and w1 - w0 is the logistic-regression fit.
        let (data, mean, sd) = challenger();
        let mut m = Model::zeros(Architecture::Multinomial { classes: 2 }, 1);
        train(&mut m, &data, &sgd(20_000, 23, 0.5));
        let p = m.params();
        let (w, b) = (p[1] - p[0], p[3] - p[2]);
        assert!((w / sd - -0.2322).abs() < 5e-4);
        assert!((b - w * mean / sd - 15.0429).abs() < 5e-3);
    }

    #[test]
    fn ridge_regression_matches_the_normal_equations() {
        // y = 2 x1 - x2 + 0.5 + noise; ridge with l2 = 0.1 on the weights (not the bias).
        let x = array![
            [0.1, 1.0],
            [0.4, -0.3],
            [-1.2, 0.8],
            [0.9, 0.2],
            [-0.5, -1.1],
            [1.5, 0.4],
            [0.3, 0.9]
        ];
        let y = array![-0.39, 1.61, -2.97, 2.11, 1.07, 3.02, 0.19];
        let l2 = 0.1;
        // Closed form: centre x and y (the unpenalised bias absorbs the means), then
        // (Xc'Xc / n + l2 I) w = Xc'yc / n, b = mean(y) - mean(x) . w.
        let n = 7.0;
        let xm = x.mean_axis(ndarray::Axis(0)).unwrap();
        let ym = y.mean().unwrap();
        let xc = &x - &xm;
        let yc = &y - ym;
        let a = xc.t().dot(&xc) / n + Array2::<f64>::eye(2) * l2;
        let r = xc.t().dot(&yc) / n;
        let det = a[[0, 0]] * a[[1, 1]] - a[[0, 1]] * a[[1, 0]];
        let w0 = (a[[1, 1]] * r[0] - a[[0, 1]] * r[1]) / det;
        let w1 = (a[[0, 0]] * r[1] - a[[1, 0]] * r[0]) / det;
        let b = ym - xm[0] * w0 - xm[1] * w1;

        let mut m = Model::zeros(Architecture::Linear, 2);
        let data = Examples { x, y };
        let mut opts = sgd(5_000, 7, 0.2);
        opts.l2 = l2;
        train(&mut m, &data, &opts);
        let p = m.params();
        assert!(
            (p[0] - w0).abs() < 1e-9 && (p[1] - w1).abs() < 1e-9 && (p[2] - b).abs() < 1e-9,
            "{p} vs {w0} {w1} {b}"
        );
    }

    #[test]
    fn momentum_and_proximal_terms_behave() {
        let (data, _, _) = challenger();
        // Momentum 0.9 with a tenth of the learning rate reaches the same optimum.
        let mut plain = Model::zeros(Architecture::Logistic, 1);
        train(&mut plain, &data, &sgd(20_000, 23, 0.5));
        let mut heavy = Model::zeros(Architecture::Logistic, 1);
        let mut opts = sgd(20_000, 23, 0.05);
        opts.momentum = 0.9;
        train(&mut heavy, &data, &opts);
        assert!(
            (plain.params() - heavy.params())
                .iter()
                .all(|d| d.abs() < 1e-6)
        );
        // A strong proximal term keeps the model near where it started (zero): the optimum of
        // loss + (mu/2)||w||² with mu = 10 is within a tenth of the free optimum's norm.
        let mut anchored = Model::zeros(Architecture::Logistic, 1);
        let mut opts = sgd(2_000, 23, 0.05);
        opts.proximal_mu = 10.0;
        train(&mut anchored, &data, &opts);
        let norm = |m: &Model| m.params().dot(m.params()).sqrt();
        assert!(
            norm(&anchored) < 0.1 * norm(&plain),
            "{} vs {}",
            anchored.params(),
            plain.params()
        );
    }

    #[test]
    fn the_fused_dot_and_square_agree_with_plain_sums_at_every_length() {
        let mut rng = StdRng::seed_from_u64(7);
        for len in 0..14 {
            let x: Vec<f64> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let w: Vec<f64> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let (z, xx) = dot_and_square(&x, &w);
            let plain_z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let plain_xx: f64 = x.iter().map(|a| a * a).sum();
            assert!(
                (z - plain_z).abs() <= 1e-12 * (1.0 + plain_z.abs()),
                "{len}: {z} {plain_z}"
            );
            assert!((xx - plain_xx).abs() <= 1e-12 * (1.0 + plain_xx), "{len}");
        }
    }

    #[test]
    fn rows_taken_together_give_each_row_its_own_sums_to_the_bit() {
        let mut rng = StdRng::seed_from_u64(11);
        for len in 0..14 {
            let rows: Vec<Vec<f64>> = (0..ROWS_TOGETHER)
                .map(|_| (0..len).map(|_| rng.random_range(-3.0..3.0)).collect())
                .collect();
            let w: Vec<f64> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let together =
                dot_and_square_rows::<ROWS_TOGETHER>(std::array::from_fn(|k| &rows[k][..]), &w);
            for (row, got) in rows.iter().zip(together) {
                let (z, xx) = dot_and_square(row, &w);
                assert_eq!(got.0.to_bits(), z.to_bits(), "{len}");
                assert_eq!(got.1.to_bits(), xx.to_bits(), "{len}");
            }
        }
    }

    #[test]
    fn geometric_skips_take_each_record_with_probability_q() {
        // Over many steps the share of records taken is q (within 5 standard deviations).
        let mut rng = StdRng::seed_from_u64(5);
        let (q, n, steps) = (0.03, 1000usize, 400);
        let mut taken = 0usize;
        for _ in 0..steps {
            let mut i = skip(&mut rng, q);
            while i < n {
                taken += 1;
                i += 1 + skip(&mut rng, q);
            }
        }
        let trials = (n * steps) as f64;
        let sd = (trials * q * (1.0 - q)).sqrt();
        assert!(
            (taken as f64 - trials * q).abs() < 5.0 * sd,
            "{taken} vs {}",
            trials * q
        );
    }

    #[test]
    fn dp_training_with_vanishing_noise_matches_clipped_gradient_descent() {
        // With a clipping norm no gradient reaches and (almost) no noise, full-batch DP gradient
        // descent is plain full-batch gradient descent: the Challenger fit again.
        let (data, mean, sd) = challenger();
        let mut m = Model::zeros(Architecture::Logistic, 1);
        let dp = DpSgd {
            sampling: Sampling::FullBatch,
            steps: 20_000,
            noise: crate::noise::GaussianNoise {
                sensitivity: 1e6,
                noise_multiplier: 1e-12,
            },
            denominator: 23.0,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        train_dp(&mut m, &data, None, &sgd(1, 23, 0.5), &dp, &stop).unwrap();
        let (w, b) = (m.params()[0], m.params()[1]);
        assert!(
            (w / sd - -0.2322).abs() < 5e-4 && (b - w * mean / sd - 15.0429).abs() < 5e-3,
            "{w} {b}"
        );
    }

    /// `steps` steps of full-batch DP gradient descent with clip 100 and (almost) no noise on a
    /// linear model, from zero.
    fn released(data: &Examples, steps: u64) -> Array1<f64> {
        released_of(data, None, steps)
    }

    fn released_of(data: &Examples, readable: Option<&[bool]>, steps: u64) -> Array1<f64> {
        let mut m = Model::zeros(Architecture::Linear, 2);
        let dp = DpSgd {
            sampling: Sampling::FullBatch,
            steps,
            noise: crate::noise::GaussianNoise {
                sensitivity: 100.0,
                noise_multiplier: 1e-12,
            },
            denominator: 10.0,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        train_dp(&mut m, data, readable, &sgd(1, 1, 0.1), &dp, &stop).unwrap();
        m.params().clone()
    }

    fn rows(x: Array2<f64>, y: Array1<f64>) -> Examples {
        Examples { x, y }
    }

    #[test]
    fn a_record_with_a_zero_gradient_changes_nothing_released() {
        // At the zero model a linear record's residual is -y, so x = (0, 0), y = 0 has a zero
        // gradient. The noisy sum is divided by a public constant, so that record changes
        // nothing; dividing by the number of records (as the node once did) would scale the
        // whole step by 5/6.
        let one_step = |x: Array2<f64>, y: Array1<f64>| released(&rows(x, y), 1);
        let x = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.5, 0.5]];
        let y = array![1.0, -1.0, 0.0, 3.0, 0.0];
        let mut x2 = x.clone();
        x2.push_row(ndarray::ArrayView1::from(&[0.0, 0.0])).unwrap();
        let y2 = ndarray::concatenate![Axis(0), y, array![0.0]];
        let (a, b) = (one_step(x, y), one_step(x2, y2));
        assert!((&a - &b).iter().all(|d| d.abs() < 1e-9), "{a} vs {b}");
        // The step itself, in closed form: lr * sum_i y_i (x_i, 1) / 10 = (0.07, -0.04, 0.03).
        for (got, want) in a.iter().zip([0.07, -0.04, 0.03]) {
            assert!((got - want).abs() < 1e-9, "{a}");
        }
    }

    #[test]
    fn a_record_marked_unreadable_adds_nothing() {
        // An unreadable record stays in place and is weighted 0: the release is the one without
        // it.
        let x = array![[1.0, 0.0], [0.0, 1.0]];
        let y = array![1.0, -1.0];
        let without = released(&rows(x.clone(), y.clone()), 50);
        let mut x3 = x.clone();
        x3.push_row(ndarray::ArrayView1::from(&[5.0, -3.0]))
            .unwrap();
        let with = released_of(
            &rows(x3, array![1.0, -1.0, 1.0]),
            Some(&[true, true, false]),
            50,
        );
        assert!(
            (&with - &without).iter().all(|d| d.abs() < 1e-9),
            "{with} vs {without}"
        );
    }

    #[test]
    fn a_record_with_a_non_finite_gradient_adds_nothing() {
        // An infinite feature gives an infinite or NaN per-example gradient, which a
        // `norm > clip` test would let through unclipped (and opendp would turn the whole sum
        // into zeros): it must add nothing, and the other records must still count.
        let x = array![[1.0, 0.0], [0.0, 1.0]];
        let y = array![1.0, -1.0];
        let clean = released(&rows(x.clone(), y.clone()), 50);
        assert!(clean.iter().any(|v| v.abs() > 0.1), "{clean}");
        for bad in [f64::INFINITY, f64::NAN] {
            let mut x2 = x.clone();
            x2.push_row(ndarray::ArrayView1::from(&[bad, bad])).unwrap();
            let got = released(&rows(x2, array![1.0, -1.0, 1.0]), 50);
            assert!(
                (&got - &clean).iter().all(|d| d.abs() < 1e-9),
                "{bad}: {got} vs {clean}"
            );
        }
        // A huge finite feature is clipped like any other: 50 steps, each moving the model by
        // at most 0.1 * (3 records * clip 100) / 10 = 3 in norm.
        let mut x2 = x.clone();
        x2.push_row(ndarray::ArrayView1::from(&[1e100, 1e100]))
            .unwrap();
        let got = released(&rows(x2, array![1.0, -1.0, 1.0]), 50);
        assert!(got.iter().all(|v| v.is_finite()), "{got}");
        assert!(got.dot(&got).sqrt() <= 150.0 + 1e-9, "{got}");
    }

    #[test]
    fn an_mlp_learns_xor() {
        // XOR is not linearly separable; one hidden layer learns it.
        let x = array![[0., 0.], [0., 1.], [1., 0.], [1., 1.]];
        let y = array![0., 1., 1., 0.];
        let data = Examples { x, y };
        let mut m = Model::zeros(Architecture::Mlp { hidden: 8 }, 2);
        // Break the symmetry with a fixed spread of initial weights.
        let n = m.params().len();
        for (i, p) in m.params_mut().iter_mut().enumerate().take(n - 1) {
            *p = ((i * 37 % 17) as f64 / 17.0 - 0.5) * 1.5;
        }
        let mut opts = sgd(5_000, 4, 0.1);
        opts.momentum = 0.9;
        train(&mut m, &data, &opts);
        let p = m.predict(data.x.view());
        for (pi, yi) in p.column(0).iter().zip(data.y.iter()) {
            assert!((pi - yi).abs() < 0.1, "{p}");
        }
    }
}

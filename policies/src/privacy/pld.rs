//! Privacy-loss distributions (PLD): the tightest accounting of composed releases.
//!
//! A mechanism's privacy loss on a pair of neighbouring data sets is the random variable
//! `L = ln(P(o) / Q(o))` for an output `o` drawn from `P`; its distribution says everything
//! about the mechanism's (epsilon, delta) curve: `delta(epsilon) = P[L = inf] + E[(1 - e^(epsilon
//! - L))^+]` (Meiser and Mohammadi 2018; Sommer, Meiser and Mohammadi 2019). Independent releases
//! compose by adding their losses, so the composed distribution is the convolution of theirs,
//! computed here with FFTs (Koskela, Jälkö and Honkela 2020), as Google's `dp_accounting` does.
//!
//! Every distribution is discretised **pessimistically**, so that the result is an upper bound,
//! never an estimate, by "connect the dots" (Doroshenko, Ghazi, Kamath, Kumar and Manurangsi
//! 2022), as `dp_accounting` does: a mechanism's curve `delta(epsilon)`, a convex function of
//! `e^epsilon` that is 1 at `e^epsilon = 0`, is evaluated exactly on a grid of step [`STEP`]
//! nats, and the discrete distribution is the one whose curve joins those points with chords
//! (in `e^epsilon`), which lie above the curve; beyond the top of the grid its curve stays at
//! the top point's delta, an infinite loss of that probability. Unlike rounding each loss up to
//! the grid, whose error adds up with every composition, the dots are exact where they are
//! placed, so the composed bound stays within a fraction of a percent of the exact one. After
//! each convolution the tails are cut, each at most [`TAIL`] of mass: the top is counted as an
//! infinite loss (paid outright in delta), the bottom is put on the lowest point kept.
//!
//! The mechanisms: the Gaussian (a loss `N(mu^2 / 2, mu^2)`, mu the sensitivity over the noise's
//! standard deviation), the Poisson-subsampled Gaussian under adding and under removing one
//! record (two distributions: the add-or-remove accountant takes the larger epsilon), the
//! Laplace mechanism, and any pure epsilon-DP release through its dominating pair (randomised
//! response, which bounds every epsilon-DP mechanism).
//!
//! [`History`] composes a whole history of releases, grouped and remembered, for the ledger.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// The grid step of the losses, in nats (`dp_accounting`'s default discretisation).
pub const STEP: f64 = 1e-4;
/// The most mass a tail may hold when it is cut off (moved to an infinite loss at the top, to
/// the lowest grid point at the bottom).
pub const TAIL: f64 = 1e-15;
/// How many standard deviations of a Gaussian the discretised range spans on each side: the
/// Gaussian's tail beyond it is below [`TAIL`].
const SPAN: f64 = 8.5;
/// The most grid points a distribution may have: 2^22 points, 420 nats of loss, 32 MiB (and
/// as much for each FFT buffer). A mechanism whose losses spread wider is [`Pld::unbounded`]; a
/// composition that would is cut at the bottom (its lowest losses raised, [`Pld::compose`]).
/// Either way the bound stays sound.
pub const MAX_POINTS: usize = 1 << 22;

/// A discretised privacy-loss distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Pld {
    /// The grid index of `mass[0]`: `mass[i]` is the probability of the loss
    /// `(lowest + i) * STEP`.
    lowest: i64,
    mass: Vec<f64>,
    /// The probability of an infinite loss.
    infinite: f64,
}

/// The standard normal's survival function, `P[Z > z]`.
fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// The logarithm of [`normal_sf`], finite far into the tail where `P[Z > z]` itself underflows:
/// beyond `z = 35` (where it is about 1e-268) from the asymptotic expansion of Mills' ratio,
/// `P[Z > z] = phi(z) / z (1 - 1/z^2 + 3/z^4 - 15/z^6 + 105/z^8 ...)`, whose next term is
/// below 1e-12 of the sum there.
fn ln_normal_sf(z: f64) -> f64 {
    if z <= 35.0 {
        return normal_sf(z).ln();
    }
    let r = 1.0 / (z * z);
    let series = 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - r * 105.0)));
    -z * z / 2.0 - (2.0 * std::f64::consts::PI).sqrt().ln() - z.ln() + series.ln()
}

/// The Gaussian mechanism's exact curve (Balle and Wang 2018): `delta(epsilon) = Phi(-epsilon /
/// mu + mu / 2) - e^epsilon Phi(-epsilon / mu - mu / 2)`. The second term is computed as one
/// exponential of its logarithm, so that it stays exact where `e^epsilon` alone would overflow
/// (epsilon above 709, a long unsampled history).
pub fn gaussian_delta(mu: f64, epsilon: f64) -> f64 {
    let second = (epsilon + ln_normal_sf(epsilon / mu + mu / 2.0)).exp();
    (normal_sf(epsilon / mu - mu / 2.0) - second).max(0.0)
}

/// The exact epsilon of the Gaussian mechanism of `mu` at `delta`, by bisection on its curve
/// (decreasing in epsilon) to a relative precision of 1e-12: the bound of any history made of
/// Gaussian releases alone, which compose into one Gaussian of `mu^2` the sum of theirs.
pub fn gaussian_epsilon(mu: f64, delta: f64) -> f64 {
    if mu <= 0.0 {
        return 0.0;
    }
    if gaussian_delta(mu, 0.0) <= delta {
        return 0.0;
    }
    let mut high = mu * mu / 2.0 + mu;
    while gaussian_delta(mu, high) > delta {
        high *= 2.0;
        if !high.is_finite() {
            return f64::INFINITY;
        }
    }
    let mut low = 0.0;
    while high - low > 1e-12 * high {
        let middle = (low + high) / 2.0;
        match gaussian_delta(mu, middle) > delta {
            true => low = middle,
            false => high = middle,
        }
    }
    high
}

/// The standard normal's distribution function, `P[Z <= z]`.
fn normal_cdf(z: f64) -> f64 {
    normal_sf(-z)
}

/// The grid index a loss rounds up to.
fn up(loss: f64) -> i64 {
    (loss / STEP).ceil() as i64
}

/// The grid index a loss rounds down to.
fn down(loss: f64) -> i64 {
    (loss / STEP).floor() as i64
}

impl Pld {
    /// The distribution of a mechanism given by its privacy curve `delta(epsilon)` (the
    /// hockey-stick divergence of its dominating pair), connecting the dots of the curve on the
    /// grid points from `low` down to `high` up. With `d_i` the curve at the i-th point and
    /// `x = e^epsilon`, the chords' slopes change at each point by the point's mass over its
    /// `x`: `m_i = ((d_(i+1) - d_i) - e^STEP (d_i - d_(i-1))) / (e^STEP - 1)`, the first chord
    /// starting from `(x = 0, delta = 1)` and the last ending flat at the top point's delta,
    /// which is the infinite loss's probability.
    fn from_curve(curve: impl Fn(f64) -> f64, low: f64, high: f64) -> Pld {
        // Checked before any index is formed: a range with an infinite end (the loss of a step
        // whose noise is next to nothing overflows) is no grid at all.
        let points = (high - low) / STEP;
        let fits = points.is_finite() && points < MAX_POINTS as f64 - 2.0;
        if !fits || !low.is_finite() {
            return Pld::unbounded();
        }
        let (first, last) = (down(low), up(high).max(down(low) + 1));
        let d: Vec<f64> = (first..=last)
            .map(|k| curve(k as f64 * STEP).clamp(0.0, 1.0))
            .collect();
        // A curve that is not a number somewhere (parameters whose arithmetic overflows) is no
        // curve: every loss counted infinite, never a mass lost.
        if d.iter().any(|v| v.is_nan()) {
            return Pld::unbounded();
        }
        let n = d.len();
        let growth = STEP.exp();
        let gap = STEP.exp_m1();
        let mut mass = Vec::with_capacity(n);
        // Before the first point, the chord from (0, 1): its slope times x_0 is d_0 - 1.
        mass.push((d[1] - d[0]) / gap + (1.0 - d[0]));
        for i in 1..n - 1 {
            mass.push(((d[i + 1] - d[i]) - growth * (d[i] - d[i - 1])) / gap);
        }
        mass.push(growth * (d[n - 2] - d[n - 1]) / gap);
        // The curve is convex, so every mass is >= 0 but for the rounding of the differences
        // (about 1e-12 each). A negative mass is taken from the point below instead: mass moves
        // up, to a larger loss, which only raises the curve (pessimistic), and the total stays 1.
        let mut debt = 0.0;
        for m in mass.iter_mut().rev() {
            *m += debt;
            debt = m.min(0.0);
            *m = m.max(0.0);
        }
        Pld {
            lowest: first,
            mass,
            infinite: d[n - 1],
        }
        .trimmed()
    }

    /// The Gaussian mechanism with `mu` = sensitivity / noise standard deviation (its zCDP rho
    /// is `mu^2 / 2`): the loss is `N(mu^2 / 2, mu^2)`, the curve Balle and Wang's (2018).
    pub fn gaussian(mu: f64) -> Pld {
        if mu <= 0.0 {
            return Pld::certain();
        }
        let mean = mu * mu / 2.0;
        Pld::from_curve(
            |e| gaussian_delta(mu, e),
            mean - SPAN * mu,
            mean + SPAN * mu,
        )
    }

    /// One Poisson-subsampled Gaussian step (sampling rate `q`, noise multiplier `sigma`), the
    /// neighbour having one record **more**: `P = (1 - q) N(0, s^2) + q N(1, s^2)` against
    /// `Q = N(0, s^2)`, so `L(x) = ln(1 - q + q e^((2x - 1) / (2 s^2)))`, increasing in x, and
    /// `delta(epsilon) = P[X > x_e] - e^epsilon Q[X > x_e]` with `L(x_e) = epsilon`.
    pub fn subsampled_gaussian_remove(q: f64, sigma: f64) -> Pld {
        if q >= 1.0 {
            return Pld::gaussian(1.0 / sigma);
        }
        let s2 = sigma * sigma;
        let loss = |x: f64| {
            ((2.0 * x - 1.0) / (2.0 * s2))
                .exp()
                .mul_add(q, 1.0 - q)
                .ln()
        };
        // Every output has a loss above ln(1 - q): below it, every output counts.
        let floor = (-q).ln_1p();
        let curve = |e: f64| {
            if e <= floor {
                return -e.exp_m1();
            }
            let x = s2 * ((e.exp() - (1.0 - q)) / q).ln() + 0.5;
            q * normal_sf((x - 1.0) / sigma) - (e.exp_m1() + q) * normal_sf(x / sigma)
        };
        Pld::from_curve(curve, loss(-SPAN * sigma), loss(1.0 + SPAN * sigma))
    }

    /// One Poisson-subsampled Gaussian step, the neighbour having one record **fewer**:
    /// `P = N(0, s^2)` against `Q = (1 - q) N(0, s^2) + q N(1, s^2)`, so
    /// `L(x) = -ln(1 - q + q e^((2x - 1) / (2 s^2)))`, decreasing in x, at most `-ln(1 - q)`;
    /// `delta(epsilon) = P[X < x_e] - e^epsilon Q[X < x_e]` with `L(x_e) = epsilon`.
    pub fn subsampled_gaussian_add(q: f64, sigma: f64) -> Pld {
        if q >= 1.0 {
            return Pld::gaussian(1.0 / sigma);
        }
        let s2 = sigma * sigma;
        let loss = |x: f64| {
            -((2.0 * x - 1.0) / (2.0 * s2))
                .exp()
                .mul_add(q, 1.0 - q)
                .ln()
        };
        let ceiling = -(-q).ln_1p();
        let curve = |e: f64| {
            if e >= ceiling {
                return 0.0;
            }
            let x = s2 * (((-e).exp() - (1.0 - q)) / q).ln() + 0.5;
            let p = normal_cdf(x / sigma);
            p - e.exp() * ((1.0 - q) * p + q * normal_cdf((x - 1.0) / sigma))
        };
        Pld::from_curve(curve, loss(SPAN * sigma), ceiling)
    }

    /// The Laplace mechanism of `epsilon` = sensitivity / scale: the loss lies in
    /// `[-epsilon, epsilon]`, and `delta(e) = 1 - e^((e - epsilon) / 2)` there. Tighter than
    /// [`Pld::pure`], but [`History`] does not use it: the ledger records a Laplace release
    /// (opendp's discrete Laplace) by its epsilon alone, which only the generic pair bounds.
    pub fn laplace(epsilon: f64) -> Pld {
        Pld::bounded(epsilon, |e| -((e - epsilon) / 2.0).exp_m1())
    }

    /// Any epsilon-DP release, through its dominating pair (randomised response): a loss of
    /// `epsilon` with probability `e^epsilon / (1 + e^epsilon)`, else `-epsilon`; its curve is
    /// `(e^epsilon - e^e) / (1 + e^epsilon)` between the two.
    pub fn pure(epsilon: f64) -> Pld {
        Pld::bounded(epsilon, |e| {
            (epsilon.exp() - e.exp()) / (1.0 + epsilon.exp())
        })
    }

    /// A mechanism whose loss lies in `[-epsilon, epsilon]`, given its curve between the two:
    /// above `epsilon` nothing is left, below `-epsilon` every output counts (`1 - e^e`).
    fn bounded(epsilon: f64, inside: impl Fn(f64) -> f64) -> Pld {
        if epsilon <= 0.0 {
            return Pld::certain();
        }
        let curve = |e: f64| {
            if e >= epsilon {
                0.0
            } else if e <= -epsilon {
                -e.exp_m1()
            } else {
                inside(e)
            }
        };
        Pld::from_curve(curve, -epsilon, epsilon)
    }

    /// No release at all: a loss of 0, surely.
    pub fn certain() -> Pld {
        Pld {
            lowest: 0,
            mass: vec![1.0],
            infinite: 0.0,
        }
    }

    /// A distribution too wide for the grid: every loss counted infinite, so every epsilon is
    /// infinite (a bound that always holds, and never the one the ledger uses).
    pub fn unbounded() -> Pld {
        Pld {
            lowest: 0,
            mass: vec![0.0],
            infinite: 1.0,
        }
    }

    /// The probability of an infinite loss.
    pub fn infinite(&self) -> f64 {
        self.infinite
    }

    /// The distribution with its tails cut, each at most [`TAIL`] of mass: the top to an
    /// infinite loss, the bottom onto the lowest point kept. Negative masses (an FFT's rounding)
    /// are taken as zero.
    fn trimmed(mut self) -> Pld {
        if self.infinite.is_nan() || self.mass.iter().any(|m| m.is_nan()) {
            return Pld::unbounded();
        }
        for m in &mut self.mass {
            *m = m.max(0.0);
        }
        let mut cut = 0.0;
        let mut top = self.mass.len();
        while top > 1 && cut + self.mass[top - 1] <= TAIL {
            cut += self.mass[top - 1];
            top -= 1;
        }
        self.infinite += cut;
        self.mass.truncate(top);
        let mut below = 0.0;
        let mut bottom = 0;
        while bottom + 1 < self.mass.len() && below + self.mass[bottom] <= TAIL {
            below += self.mass[bottom];
            bottom += 1;
        }
        if bottom > 0 {
            self.mass.drain(..bottom);
            self.mass[0] += below;
            self.lowest += bottom as i64;
        }
        self
    }

    /// This distribution and `other` with `excess` grid points cut from their bottoms in all,
    /// the lower bottom raised first, then both alike: each cut point's mass is moved up onto
    /// the lowest point kept.
    fn floored_with(&self, other: &Pld, excess: usize) -> (Pld, Pld) {
        let (mut cut_self, mut cut_other) = (0usize, 0usize);
        let gap = self.lowest.abs_diff(other.lowest) as usize;
        let first = excess.min(gap);
        match self.lowest < other.lowest {
            true => cut_self = first,
            false => cut_other = first,
        }
        let rest = excess - first;
        cut_self += rest.div_ceil(2);
        cut_other += rest / 2;
        (self.floored(cut_self), other.floored(cut_other))
    }

    /// The distribution with its lowest `cut` points' mass moved onto the next (at least one
    /// point kept).
    fn floored(&self, cut: usize) -> Pld {
        let cut = cut.min(self.mass.len() - 1);
        let below: f64 = self.mass[..cut].iter().sum();
        let mut mass = self.mass[cut..].to_vec();
        mass[0] += below;
        Pld {
            lowest: self.lowest + cut as i64,
            mass,
            infinite: self.infinite,
        }
    }

    /// The distribution of the sum of the two losses (both releases).
    pub fn compose(&self, other: &Pld) -> Pld {
        let n = self.mass.len() + other.mass.len() - 1;
        if n > MAX_POINTS {
            // Too wide for the grid: the lowest losses are raised until it fits. Mass moved to
            // a larger loss only raises the curve, so the bound stays sound; what moves is the
            // far bottom, losses hundreds of nats below zero (the tail of adding a record),
            // which no delta at a non-negative epsilon feels.
            let (a, b) = self.floored_with(other, n - MAX_POINTS);
            if a.mass.len() + b.mass.len() - 1 > MAX_POINTS {
                return Pld::unbounded();
            }
            return a.compose(&b);
        }
        let mass = if self.mass.len().min(other.mass.len()) <= 64 {
            Some(direct(&self.mass, &other.mass))
        } else if std::ptr::eq(self, other) {
            convolve(&[&self.mass], 2)
        } else {
            convolve(&[&self.mass, &other.mass], 1)
        };
        let Some(mass) = mass else {
            return Pld::unbounded();
        };
        Pld {
            lowest: self.lowest + other.lowest,
            mass,
            infinite: 1.0 - (1.0 - self.infinite) * (1.0 - other.infinite),
        }
        .trimmed()
    }

    /// The distribution of the sum of all their losses, by one transform of each and one
    /// inverse (the pairwise way takes three transforms per pair).
    pub fn compose_all(plds: &[Arc<Pld>]) -> Pld {
        let n = plds.iter().map(|p| p.mass.len() - 1).sum::<usize>() + 1;
        let infinite = 1.0 - plds.iter().map(|p| 1.0 - p.infinite).product::<f64>();
        let lowest = plds.iter().map(|p| p.lowest).sum();
        let long = plds.iter().filter(|p| p.mass.len() > 64).count();
        // Pairwise when at most one is long, or when all at once would exceed the grid (each
        // pairwise result is trimmed, so the whole may still fit).
        if long < 2 || n > MAX_POINTS {
            return plds
                .iter()
                .fold(Pld::certain(), |composed, p| composed.compose(p));
        }
        let parts: Vec<&[f64]> = plds.iter().map(|p| p.mass.as_slice()).collect();
        match convolve(&parts, 1) {
            Some(mass) => Pld {
                lowest,
                mass,
                infinite,
            }
            .trimmed(),
            None => Pld::unbounded(),
        }
    }

    /// The distribution of `times` independent releases of this one (by repeated squaring).
    pub fn self_compose(&self, times: u64) -> Pld {
        let mut result = Pld::certain();
        let mut power = self.clone();
        let mut k = times;
        while k > 0 {
            if k & 1 == 1 {
                result = result.compose(&power);
            }
            k >>= 1;
            if k > 0 {
                power = power.compose(&power);
            }
        }
        result
    }

    /// `delta(epsilon)`: `P[L = inf] + sum over l > epsilon of P[L = l] (1 - e^(epsilon - l))`.
    pub fn delta(&self, epsilon: f64) -> f64 {
        let first = up(epsilon).max(self.lowest);
        let start = (first - self.lowest) as usize;
        let tail: f64 = self
            .mass
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, &m)| {
                let loss = (self.lowest + i as i64) as f64 * STEP;
                if loss > epsilon {
                    m * -(epsilon - loss).exp_m1()
                } else {
                    0.0
                }
            })
            .sum();
        (self.infinite + tail).min(1.0)
    }

    /// The smallest epsilon >= 0 with `delta(epsilon) <= delta`; infinite when even the
    /// largest loss leaves more than `delta` (the infinite losses alone, say). Between two grid
    /// points the curve is `A - e^epsilon B` (A the mass above, B its sum of `e^-loss`), so the
    /// crossing is found exactly, walking down from the top.
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.infinite.is_nan() || self.infinite > delta {
            return f64::INFINITY;
        }
        let loss = |i: usize| (self.lowest + i as i64) as f64 * STEP;
        // `weighted` is B scaled by e^loss(j), the point being walked: sum of m_k e^(l_j - l_k)
        // over the points above, so that no e^loss is formed (it overflows past 709 nats).
        let (mut above, mut weighted) = (self.infinite, 0.0);
        let shrink = (-STEP).exp();
        for j in (0..self.mass.len()).rev() {
            above += self.mass[j];
            weighted = weighted * shrink + self.mass[j];
            let at_lower = match j {
                0 => above,
                _ => above - shrink * weighted,
            };
            if at_lower > delta {
                let crossing = loss(j) + ((above - delta) / weighted).ln();
                if crossing.is_nan() {
                    // Not a figure: fail closed rather than let `max` below make it 0.
                    return f64::INFINITY;
                }
                let lower = match j {
                    0 => f64::NEG_INFINITY,
                    _ => loss(j - 1),
                };
                return crossing.clamp(lower, loss(j)).max(0.0);
            }
        }
        0.0
    }
}

/// The convolution of `parts`, each taken `times` times (a square is one transform), by real
/// FFTs: one forward transform of each part, their spectra multiplied, one inverse. `None` only
/// if the transforms refuse their buffers, which the sizes here rule out.
fn convolve(parts: &[&[f64]], times: u32) -> Option<Vec<f64>> {
    let n = parts.iter().map(|p| p.len() - 1).sum::<usize>() * times as usize + 1;
    let size = transform_size(n);
    let (forward, inverse) = plans(size);
    let mut input = vec![0.0; size];
    let mut spectrum = vec![Complex::new(0.0, 0.0); size / 2 + 1];
    let mut product = vec![Complex::new(1.0, 0.0); size / 2 + 1];
    for part in parts {
        input[..part.len()].copy_from_slice(part);
        input[part.len()..].fill(0.0);
        forward.process(&mut input, &mut spectrum).ok()?;
        for (x, y) in product.iter_mut().zip(&spectrum) {
            *x *= y.powu(times);
        }
    }
    // The spectrum of a real sequence is real at 0 and at size / 2; the products' rounding
    // must not say otherwise to the inverse transform.
    product[0].im = 0.0;
    product[size / 2].im = 0.0;
    inverse.process(&mut product, &mut input).ok()?;
    input.truncate(n);
    let scale = 1.0 / size as f64;
    for v in &mut input {
        *v *= scale;
    }
    Some(input)
}

/// The transform length for a convolution of `n` points: the smallest power of two, or three
/// quarters of one, that holds it (both transform fast; two sizes an octave keep the padding
/// under a half and the remembered plans few).
fn transform_size(n: usize) -> usize {
    let power = n.next_power_of_two().max(8);
    match 3 * (power / 4) >= n {
        true => 3 * (power / 4),
        false => power,
    }
}

/// The forward and inverse real transforms of `size` points, planned once per process: a
/// plan's twiddle factors cost more than a transform of the same size, and a node's releases
/// are judged on whichever of its worker threads is free. The sizes are powers of two and three
/// quarters of them ([`transform_size`]), so the plans kept are few.
fn plans(size: usize) -> (Arc<dyn RealToComplex<f64>>, Arc<dyn ComplexToReal<f64>>) {
    type Plans = HashMap<usize, (Arc<dyn RealToComplex<f64>>, Arc<dyn ComplexToReal<f64>>)>;
    static PLANS: OnceLock<Mutex<Plans>> = OnceLock::new();
    let mut plans = PLANS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    plans
        .entry(size)
        .or_insert_with(|| {
            let mut planner = RealFftPlanner::new();
            (
                planner.plan_fft_forward(size),
                planner.plan_fft_inverse(size),
            )
        })
        .clone()
}

/// The convolution of two short mass vectors, term by term.
fn direct(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, &x) in a.iter().enumerate() {
        if x == 0.0 {
            continue;
        }
        for (j, &y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    out
}

/// The epsilon at `delta` of `steps` Poisson-subsampled Gaussian steps under the add-or-remove
/// relation: the larger of the two directions'.
pub fn subsampled_gaussian_epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
    let mut history = History::default();
    history.sampled(q, sigma, steps);
    history.epsilon(delta)
}

/// A history of releases, grouped for the PLD accountant: Gaussian releases compose into one
/// Gaussian (their `mu^2` add up), identical subsampled steps and identical pure releases are
/// counted. The groups are kept in the order of their parameters' bits, so that two histories of
/// the same releases are equal whatever order the releases came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    mu_squared: f64,
    sampled: Vec<(f64, f64, u64)>,
    pure: Vec<(f64, u64)>,
}

/// The mechanisms whose self-compositions are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Base {
    Remove { q: u64, sigma: u64 },
    Add { q: u64, sigma: u64 },
    Pure { epsilon: u64 },
}

impl Base {
    fn pld(self) -> Pld {
        match self {
            Base::Remove { q, sigma } => {
                Pld::subsampled_gaussian_remove(f64::from_bits(q), f64::from_bits(sigma))
            }
            Base::Add { q, sigma } => {
                Pld::subsampled_gaussian_add(f64::from_bits(q), f64::from_bits(sigma))
            }
            Base::Pure { epsilon } => Pld::pure(f64::from_bits(epsilon)),
        }
    }
}

/// How many mechanisms' powers are remembered before the cache starts afresh.
const CACHED_BASES: usize = 64;
/// How many histories' epsilons are remembered before the memory starts afresh.
const CACHED_ANSWERS: usize = 1024;
/// How many grid points the remembered powers may hold in all (128 MiB, and one call's own
/// powers beyond it until it returns) before the cache starts afresh.
const CACHED_POINTS: usize = 1 << 24;

/// `times` independent releases of `base`, as the remembered powers `base^(2^k)` whose
/// composition they are (one per bit of `times`): a ledger that adds a round's steps to a long
/// history composes a handful of distributions, not all of them.
fn power(base: Base, times: u64) -> Vec<Arc<Pld>> {
    type Powers = HashMap<Base, Arc<Mutex<Vec<Arc<Pld>>>>>;
    static POWERS: OnceLock<Mutex<Powers>> = OnceLock::new();
    static POINTS: AtomicUsize = AtomicUsize::new(0);
    if times == 0 {
        return Vec::new();
    }
    let powers = {
        let mut all = POWERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let full = all.len() >= CACHED_BASES && !all.contains_key(&base);
        if full || POINTS.load(Ordering::Relaxed) > CACHED_POINTS {
            all.clear();
            POINTS.store(0, Ordering::Relaxed);
        }
        all.entry(base).or_default().clone()
    };
    let mut powers = powers.lock().unwrap_or_else(|e| e.into_inner());
    let needed = (u64::BITS - times.leading_zeros()) as usize;
    if powers.is_empty() {
        powers.push(Arc::new(base.pld()));
        POINTS.fetch_add(powers[0].mass.len(), Ordering::Relaxed);
    }
    while powers.len() < needed {
        let last = &powers[powers.len() - 1];
        let next = last.compose(last);
        POINTS.fetch_add(next.mass.len(), Ordering::Relaxed);
        powers.push(Arc::new(next));
    }
    if POINTS.load(Ordering::Relaxed) > CACHED_POINTS {
        // Over the limit with these: forgotten once this call has taken what it needs (this
        // base's lock is held, the others' not; nothing waits on this one while holding them).
        let taken = powers.clone();
        powers.clear();
        POWERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        POINTS.store(0, Ordering::Relaxed);
        return select(&taken, times, needed);
    }
    select(&powers, times, needed)
}

/// The powers `base^(2^k)` among `powers` whose composition is `times` releases.
fn select(powers: &[Arc<Pld>], times: u64, needed: usize) -> Vec<Arc<Pld>> {
    powers
        .iter()
        .enumerate()
        .take(needed)
        .filter(|(k, _)| times >> k & 1 == 1)
        .map(|(_, p)| Arc::clone(p))
        .collect()
}

impl History {
    /// Gaussian releases of total zCDP `rho` (`mu^2 = 2 rho`).
    pub fn gaussian(&mut self, rho: f64) {
        self.mu_squared += 2.0 * rho;
    }

    /// `steps` Poisson-subsampled Gaussian steps.
    pub fn sampled(&mut self, q: f64, sigma: f64, steps: u64) {
        if q >= 1.0 {
            // Everyone sampled: the step is the Gaussian of mu = 1 / sigma.
            self.mu_squared += steps as f64 / (sigma * sigma);
            return;
        }
        let key = |&(q, sigma, _): &(f64, f64, u64)| (q.to_bits(), sigma.to_bits());
        match self.sampled.binary_search_by_key(&key(&(q, sigma, 0)), key) {
            Ok(i) => self.sampled[i].2 += steps,
            Err(i) => self.sampled.insert(i, (q, sigma, steps)),
        }
    }

    /// One pure epsilon-DP release.
    pub fn pure(&mut self, epsilon: f64) {
        match self
            .pure
            .binary_search_by_key(&epsilon.to_bits(), |(e, _)| e.to_bits())
        {
            Ok(i) => self.pure[i].1 += 1,
            Err(i) => self.pure.insert(i, (epsilon, 1)),
        }
    }

    /// How many subsampled steps and pure releases the history holds.
    fn size(&self) -> u64 {
        let steps = self.sampled.iter().map(|g| g.2);
        let times = self.pure.iter().map(|g| g.1);
        steps.chain(times).fold(0, u64::saturating_add)
    }

    /// What is left of the history once `part` is taken out of it, if `part` is a part of it.
    fn without(&self, part: &History) -> Option<History> {
        if part.mu_squared > self.mu_squared {
            return None;
        }
        let mut rest = self.clone();
        rest.mu_squared -= part.mu_squared;
        for &(q, sigma, steps) in &part.sampled {
            let group = rest.sampled.iter_mut().find(|g| g.0 == q && g.1 == sigma)?;
            group.2 = group.2.checked_sub(steps)?;
        }
        for &(epsilon, times) in &part.pure {
            let group = rest.pure.iter_mut().find(|g| g.0 == epsilon)?;
            group.1 = group.1.checked_sub(times)?;
        }
        rest.sampled.retain(|g| g.2 > 0);
        rest.pure.retain(|g| g.1 > 0);
        Some(rest)
    }

    /// The composed distributions of the history, the neighbour having one record more
    /// (`[0]`, remove) or fewer (`[1]`, add). A ledger asks for its history with one more
    /// round each time: the distributions of the longest history remembered that is part of
    /// this one are composed with those of the rest (one convolution each, the rest's own
    /// remembered too), rather than every release's afresh. Either way each convolution is
    /// exact on the grid and each cut tail pessimistic, so the bound is the same to rounding
    /// (about 1e-12 of it) and sound whichever way it was reached.
    fn distributions(&self) -> [Arc<Pld>; 2] {
        if let Some(known) = recalled(self) {
            return known;
        }
        let longest = composed()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(h, _)| h.size() > 0)
            .filter_map(|(h, d)| Some((self.without(h)?, h.size(), d.clone())))
            .max_by_key(|(_, size, _)| *size);
        let made = match longest {
            Some((rest, _, part)) => {
                let rest = recalled(&rest).unwrap_or_else(|| {
                    let made = rest.afresh();
                    remember(&rest, &made);
                    made
                });
                [0, 1].map(|i| Arc::new(part[i].compose(&rest[i])))
            }
            None => self.afresh(),
        };
        remember(self, &made);
        made
    }

    /// The composed distributions from the releases' remembered powers.
    fn afresh(&self) -> [Arc<Pld>; 2] {
        let gaussian = Arc::new(Pld::gaussian(self.mu_squared.max(0.0).sqrt()));
        [true, false].map(|remove| {
            let mut parts = vec![Arc::clone(&gaussian)];
            for &(q, sigma, steps) in &self.sampled {
                let (q, sigma) = (q.to_bits(), sigma.to_bits());
                let base = match remove {
                    true => Base::Remove { q, sigma },
                    false => Base::Add { q, sigma },
                };
                parts.extend(power(base, steps));
            }
            for &(epsilon, times) in &self.pure {
                let base = Base::Pure {
                    epsilon: epsilon.to_bits(),
                };
                parts.extend(power(base, times));
            }
            Arc::new(Pld::compose_all(&parts))
        })
    }

    /// The epsilon of the whole history at `delta`, under the add-or-remove relation: the
    /// larger of the two directions'.
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.sampled.is_empty() && self.pure.is_empty() {
            // Gaussians alone compose into one Gaussian, whose curve is known exactly.
            return gaussian_epsilon(self.mu_squared.sqrt(), delta);
        }
        // A node judges the same history several times around one release (the round's
        // policy, the job's approval, the ledger's budget before and after): the answer is
        // remembered, keyed by the history (its groups are in a canonical order).
        type Answers = HashMap<Vec<u64>, f64>;
        static ANSWERS: OnceLock<Mutex<Answers>> = OnceLock::new();
        let key = self.key(delta);
        let answers = ANSWERS.get_or_init(Default::default);
        if let Some(&epsilon) = answers.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return epsilon;
        }
        let [remove, add] = self.distributions();
        let epsilon = remove.epsilon(delta).max(add.epsilon(delta));
        let mut answers = answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= CACHED_ANSWERS {
            answers.clear();
        }
        answers.insert(key, epsilon);
        epsilon
    }

    /// The history and `delta`, as bits.
    fn key(&self, delta: f64) -> Vec<u64> {
        let mut key = vec![
            delta.to_bits(),
            self.mu_squared.to_bits(),
            self.sampled.len() as u64,
        ];
        for &(q, sigma, steps) in &self.sampled {
            key.extend([q.to_bits(), sigma.to_bits(), steps]);
        }
        for &(epsilon, times) in &self.pure {
            key.extend([epsilon.to_bits(), times]);
        }
        key
    }
}

/// How many histories' composed distributions are remembered, and how many grid points they
/// may hold in all (128 MiB: two histories as wide as the grid allows, in both directions, as a
/// ledger asks of its history before and after a release): past either, the oldest are
/// forgotten first.
const CACHED_HISTORIES: usize = 64;
const CACHED_HISTORY_POINTS: usize = 1 << 24;

type Remembered = Mutex<VecDeque<(History, [Arc<Pld>; 2])>>;

/// The composed distributions remembered, oldest first.
fn composed() -> &'static Remembered {
    static COMPOSED: OnceLock<Remembered> = OnceLock::new();
    COMPOSED.get_or_init(Default::default)
}

/// The history's distributions, if they are remembered.
fn recalled(history: &History) -> Option<[Arc<Pld>; 2]> {
    let known = composed().lock().unwrap_or_else(|e| e.into_inner());
    known
        .iter()
        .find(|(h, _)| h == history)
        .map(|(_, d)| d.clone())
}

fn remember(history: &History, made: &[Arc<Pld>; 2]) {
    let mut known = composed().lock().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|(h, _)| h == history) {
        return;
    }
    known.push_back((history.clone(), made.clone()));
    let points = |d: &[Arc<Pld>; 2]| d[0].mass.len() + d[1].mass.len();
    let mut total: usize = known.iter().map(|(_, d)| points(d)).sum();
    while known.len() > 1 && (known.len() > CACHED_HISTORIES || total > CACHED_HISTORY_POINTS) {
        if let Some((_, d)) = known.pop_front() {
            total -= points(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_distribution_holds_all_its_mass() {
        for pld in [
            Pld::gaussian(0.7),
            Pld::subsampled_gaussian_remove(0.01, 1.0),
            Pld::subsampled_gaussian_add(0.01, 1.0),
            Pld::pure(0.5),
            Pld::gaussian(0.3).self_compose(37),
        ] {
            let total: f64 = pld.mass.iter().sum::<f64>() + pld.infinite;
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
    }

    #[test]
    fn composed_gaussians_bound_their_exact_curve_tightly() {
        // k Gaussians of mu compose to one of mu sqrt(k), exactly. The discretised curve lies
        // above the exact one (never below) and, the dots being exact, within a small fraction
        // of a percent of it however many compositions.
        for (mu, k) in [
            (0.5, 1u64),
            (0.2, 50),
            (0.05, 1000),
            (1.0, 4),
            (0.01, 10_000),
        ] {
            let pld = Pld::gaussian(mu).self_compose(k);
            let total = mu * (k as f64).sqrt();
            for delta in [1e-3, 1e-5, 1e-7] {
                let exact = gaussian_epsilon(total, delta);
                let ours = pld.epsilon(delta);
                assert!(
                    ours >= exact - 1e-9,
                    "mu {mu} k {k} delta {delta}: {ours} < {exact}"
                );
                assert!(
                    ours <= exact * 1.002 + 2.0 * STEP,
                    "mu {mu} k {k} delta {delta}: {ours} vs {exact}"
                );
            }
            for epsilon in [0.3, 1.0, 2.5] {
                let (ours, exact) = (pld.delta(epsilon), gaussian_delta(total, epsilon));
                assert!(ours >= exact - 1e-12, "{ours} < {exact}");
                assert!(ours <= gaussian_delta(total, epsilon - 2.0 * STEP) + 1e-12);
            }
        }
    }

    #[test]
    fn the_laplace_mechanism_bounds_its_closed_form_tightly() {
        // Laplace of epsilon0 = 1 / b: delta(e) = 1 - e^((e - epsilon0) / 2) on [-epsilon0,
        // epsilon0]; two of them compose to a loss whose curve is checked by numerical
        // integration of the exact loss's density below.
        for epsilon0 in [0.1, 0.5, 1.0, 3.0] {
            let pld = Pld::laplace(epsilon0);
            for e in [0.0, 0.05, 0.3, 0.9, 2.0] {
                let exact = if e >= epsilon0 {
                    0.0
                } else {
                    1.0 - ((e - epsilon0) / 2.0).exp()
                };
                let ours = pld.delta(e);
                assert!(ours >= exact - 1e-12, "{epsilon0} at {e}: {ours} < {exact}");
                assert!(ours <= exact + 1e-4, "{epsilon0} at {e}: {ours} vs {exact}");
            }
            // Laplace is tighter than the generic pure-DP pair at every epsilon below epsilon0.
            let generic = Pld::pure(epsilon0);
            for e in [0.0, epsilon0 / 2.0] {
                assert!(pld.delta(e) < generic.delta(e));
            }
        }
        // Two Laplace releases: delta_2(e) = E[delta_1(e - L1)] over the first release's loss,
        // integrated over its output o (midpoint rule), with delta_1 the closed form above.
        let (b, e) = (1.0f64, 0.6);
        let epsilon0 = 1.0 / b;
        let single = |t: f64| {
            if t >= epsilon0 {
                0.0
            } else if t <= -epsilon0 {
                -t.exp_m1()
            } else {
                -((t - epsilon0) / 2.0).exp_m1()
            }
        };
        let h = 1e-4;
        let exact: f64 = (0..800_000)
            .map(|i| {
                let o = -40.0 + (i as f64 + 0.5) * h;
                let loss = ((o - 1.0).abs() - o.abs()) / b;
                (-o.abs() / b).exp() / (2.0 * b) * single(e - loss) * h
            })
            .sum();
        let ours = Pld::laplace(epsilon0).self_compose(2).delta(e);
        assert!((ours - exact).abs() < 2e-3 * exact, "{ours} vs {exact}");
    }

    #[test]
    fn composed_pure_releases_match_the_binomial_closed_form() {
        // k randomised responses of epsilon0: the loss is (2j - k) epsilon0 with j ~ Bin(k, p).
        let (epsilon0, k) = (0.1f64, 30u64);
        let p = 1.0 / (1.0 + (-epsilon0).exp());
        let pld = Pld::pure(epsilon0).self_compose(k);
        for epsilon in [0.0, 0.5, 1.0, 2.0] {
            let mut exact = 0.0;
            let mut log_binomial = 0.0f64;
            for j in 0..=k {
                if j > 0 {
                    log_binomial += ((k - j + 1) as f64).ln() - (j as f64).ln();
                }
                let loss = (2.0 * j as f64 - k as f64) * epsilon0;
                if loss > epsilon {
                    let weight =
                        (log_binomial + j as f64 * p.ln() + (k - j) as f64 * (1.0 - p).ln()).exp();
                    exact += weight * -(epsilon - loss).exp_m1();
                }
            }
            let ours = pld.delta(epsilon);
            assert!(ours >= exact - 1e-12, "eps {epsilon}: {ours} < {exact}");
            assert!(
                ours <= exact * 1.02 + 1e-9,
                "eps {epsilon}: {ours} vs {exact}"
            );
        }
    }

    #[test]
    fn sampling_nearly_everyone_is_nearly_the_gaussian() {
        // As q goes to 1 the subsampled step's loss tends to the Gaussian's (sigma 2: mu 1/2).
        let gaussian = Pld::gaussian(0.5).self_compose(10).epsilon(1e-5);
        for pld in [
            Pld::subsampled_gaussian_remove(1.0 - 1e-9, 2.0),
            Pld::subsampled_gaussian_add(1.0 - 1e-9, 2.0),
        ] {
            let eps = pld.self_compose(10).epsilon(1e-5);
            assert!(
                (eps - gaussian).abs() < 0.01 * gaussian,
                "{eps} vs {gaussian}"
            );
        }
    }

    #[test]
    fn next_to_no_noise_is_an_unbounded_loss_not_a_panic() {
        // A calibration probes tiny noise: the step's loss range overflows the grid (the first
        // two), or ten steps' sum does and its lowest losses are raised onto the grid's bottom.
        // Each is hopelessly costly and says so, never a panic: with a tenth of the records
        // sampled, a sampled record's step alone has a loss near (2x - 1) / (2 sigma^2) for
        // its output x near 1, 200 nats at sigma 0.05.
        for sigma in [1e-3, 1e-2, 0.05] {
            let epsilon = subsampled_gaussian_epsilon(0.1, sigma, 10, 1e-5);
            assert!(epsilon > 150.0, "sigma {sigma}: {epsilon}");
        }
        assert_eq!(Pld::gaussian(1e6).epsilon(1e-5), f64::INFINITY);
        assert_eq!(Pld::pure(1e3).epsilon(1e-5), f64::INFINITY);
        let mut history = History::default();
        history.gaussian(1e9);
        history.pure(0.1);
        assert_eq!(history.epsilon(1e-5), f64::INFINITY);
    }

    /// A ledger's history grows a round at a time, and each is composed onto the remembered
    /// distributions of the history before it: the bound is the one composing everything
    /// afresh gives, to rounding, and never looser than the exact curve allows.
    #[test]
    fn a_history_composed_a_round_at_a_time_is_the_history_composed_at_once() {
        let mut history = History::default();
        history.gaussian(0.004);
        for round in 0..12 {
            history.sampled(0.07, 3.1, 10);
            history.pure(0.013);
            let kept = history.epsilon(1e-6);
            let [remove, add] = history.afresh();
            let at_once = remove.epsilon(1e-6).max(add.epsilon(1e-6));
            assert!(
                (kept / at_once - 1.0).abs() < 1e-9,
                "round {round}: {kept} vs {at_once}"
            );
        }
    }

    /// A composition wider than the grid raises its lowest losses onto the grid's bottom (the
    /// tail of adding a record, hundreds of nats below zero) rather than counting everything
    /// infinite: 10,000 steps of q 0.001 and sigma 0.8 in two parts are dp_accounting's 0.7825.
    #[test]
    fn a_composition_too_wide_for_the_grid_raises_its_bottom() {
        let base = Base::Add {
            q: 0.001f64.to_bits(),
            sigma: 0.8f64.to_bits(),
        };
        let small = Pld::compose_all(&power(base, 1000));
        let large = Pld::compose_all(&power(base, 9000));
        assert!(small.mass.len() + large.mass.len() > MAX_POINTS);
        let add = small.compose(&large);
        assert!(add.mass.len() <= MAX_POINTS);
        let remove = Pld::subsampled_gaussian_remove(0.001, 0.8).self_compose(10_000);
        let epsilon = add.epsilon(1e-5).max(remove.epsilon(1e-5));
        let reference = 0.7825248355900185;
        assert!(
            epsilon >= reference - 2.0 * STEP && epsilon <= reference * 1.01,
            "{epsilon}"
        );
    }

    /// Parameters whose arithmetic overflows (sigma squared beyond f64) give a curve that is
    /// not a number: the distribution counts every loss infinite rather than losing its mass,
    /// and nothing composed with it reads as free.
    #[test]
    fn a_curve_that_is_not_a_number_fails_closed() {
        for pld in [
            Pld::subsampled_gaussian_remove(0.5, 1e160),
            Pld::subsampled_gaussian_add(0.5, 1e160),
        ] {
            let total: f64 = pld.mass.iter().sum::<f64>() + pld.infinite;
            assert!((total - 1.0).abs() < 1e-12, "{pld:?}");
            assert!(pld.epsilon(1e-5) > 0.0, "{pld:?}");
        }
        assert_eq!(
            subsampled_gaussian_epsilon(0.5, 1e160, 3, 1e-5),
            f64::INFINITY
        );
    }

    #[test]
    fn more_steps_or_less_noise_never_cost_less() {
        let eps = |q, sigma, steps| subsampled_gaussian_epsilon(q, sigma, steps, 1e-5);
        let base = eps(0.05, 1.2, 50);
        assert!(eps(0.05, 1.2, 100) > base);
        assert!(eps(0.05, 1.0, 50) > base);
        assert!(eps(0.1, 1.2, 50) > base);
        assert!(base > 0.0 && base.is_finite());
    }
}

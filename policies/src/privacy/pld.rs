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
//! never an estimate: a loss is rounded *up* onto a grid of step [`STEP`] nats; the mass beyond
//! the upper end of the range kept is counted as an infinite loss (paid outright in delta); the
//! mass below the lower end is put on the lowest grid point (rounded up). After each
//! convolution the same truncation keeps the grid small, each tail at most [`TAIL`] of mass.
//!
//! The mechanisms: the Gaussian (a loss `N(mu^2 / 2, mu^2)`, mu the sensitivity over the noise's
//! standard deviation), the Poisson-subsampled Gaussian under adding and under removing one
//! record (two distributions: the add-or-remove accountant takes the larger epsilon), and any
//! pure epsilon-DP release through its dominating pair (randomised response, which bounds every
//! epsilon-DP mechanism).

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

/// The grid step of the losses, in nats (`dp_accounting`'s default discretisation).
pub const STEP: f64 = 1e-4;
/// The most mass a tail may hold when it is cut off (moved to an infinite loss at the top, to
/// the lowest grid point at the bottom).
pub const TAIL: f64 = 1e-15;
/// How many standard deviations of a Gaussian the discretised range spans on each side: the
/// Gaussian's tail beyond it is below [`TAIL`].
const SPAN: f64 = 8.5;

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

/// The grid index a loss rounds up to.
fn up(loss: f64) -> i64 {
    (loss / STEP).ceil() as i64
}

impl Pld {
    /// The distribution of a loss given by its survival function `sf(l) = P[L > l]` on
    /// `[low, high]`: the mass of `((k - 1) STEP, k STEP]` is put on `k STEP`, what lies above
    /// `high` counts as infinite, what lies at or below `low` goes to the lowest point.
    fn from_sf(sf: impl Fn(f64) -> f64, low: f64, high: f64) -> Pld {
        let (first, last) = (up(low), up(high).max(up(low)));
        let mut mass = Vec::with_capacity((last - first + 1) as usize);
        // Everything at or below `first * STEP` (the lower tail included) sits on `first`.
        let mut above = sf(first as f64 * STEP);
        mass.push(1.0 - above);
        for k in first + 1..=last {
            let next = sf(k as f64 * STEP);
            mass.push((above - next).max(0.0));
            above = next;
        }
        Pld {
            lowest: first,
            mass,
            infinite: above.max(0.0),
        }
        .trimmed()
    }

    /// The Gaussian mechanism with `mu` = sensitivity / noise standard deviation (its zCDP rho
    /// is `mu^2 / 2`): the loss is `N(mu^2 / 2, mu^2)`.
    pub fn gaussian(mu: f64) -> Pld {
        if mu <= 0.0 {
            return Pld::certain();
        }
        let mean = mu * mu / 2.0;
        Pld::from_sf(
            |l| normal_sf((l - mean) / mu),
            mean - SPAN * mu,
            mean + SPAN * mu,
        )
    }

    /// One Poisson-subsampled Gaussian step (sampling rate `q`, noise multiplier `sigma`), the
    /// neighbour having one record **more**: `P = (1 - q) N(0, s^2) + q N(1, s^2)` against
    /// `Q = N(0, s^2)`, so `L(x) = ln(1 - q + q e^((2x - 1) / (2 s^2)))`, increasing in x.
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
        // L > l  <=>  x > x(l), for l > ln(1 - q) (every output has a loss above that).
        let floor = (-q).ln_1p();
        let sf = |l: f64| {
            if l <= floor {
                return 1.0;
            }
            let x = s2 * ((l.exp() - (1.0 - q)) / q).ln() + 0.5;
            (1.0 - q) * normal_sf(x / sigma) + q * normal_sf((x - 1.0) / sigma)
        };
        Pld::from_sf(sf, loss(-SPAN * sigma), loss(1.0 + SPAN * sigma))
    }

    /// One Poisson-subsampled Gaussian step, the neighbour having one record **fewer**:
    /// `P = N(0, s^2)` against `Q = (1 - q) N(0, s^2) + q N(1, s^2)`, so
    /// `L(x) = -ln(1 - q + q e^((2x - 1) / (2 s^2)))`, decreasing in x, at most `-ln(1 - q)`.
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
        // L > l  <=>  x < x(-l), for l < -ln(1 - q).
        let sf = |l: f64| {
            if l >= ceiling {
                return 0.0;
            }
            let x = s2 * (((-l).exp() - (1.0 - q)) / q).ln() + 0.5;
            normal_sf(-x / sigma)
        };
        Pld::from_sf(sf, loss(SPAN * sigma), ceiling)
    }

    /// Any epsilon-DP release, through its dominating pair (randomised response): a loss of
    /// `epsilon` with probability `e^epsilon / (1 + e^epsilon)`, else `-epsilon`.
    pub fn pure(epsilon: f64) -> Pld {
        if epsilon <= 0.0 {
            return Pld::certain();
        }
        let p = 1.0 / (1.0 + (-epsilon).exp());
        let (low, high) = (up(-epsilon), up(epsilon));
        let mut mass = vec![0.0; (high - low + 1) as usize];
        mass[0] = 1.0 - p;
        let last = mass.len() - 1;
        mass[last] += p;
        Pld {
            lowest: low,
            mass,
            infinite: 0.0,
        }
    }

    /// No release at all: a loss of 0, surely.
    pub fn certain() -> Pld {
        Pld {
            lowest: 0,
            mass: vec![1.0],
            infinite: 0.0,
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
        for m in &mut self.mass {
            // `max` takes 0 over a NaN too.
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

    /// The distribution of the sum of the two losses (both releases).
    pub fn compose(&self, other: &Pld) -> Pld {
        let n = self.mass.len() + other.mass.len() - 1;
        let mass = if self.mass.len().min(other.mass.len()) <= 64 {
            direct(&self.mass, &other.mass)
        } else {
            let size = n.next_power_of_two();
            let mut planner = FftPlanner::<f64>::new();
            let forward = planner.plan_fft_forward(size);
            let inverse = planner.plan_fft_inverse(size);
            let spectrum = |m: &[f64]| {
                let mut buffer: Vec<Complex<f64>> = m
                    .iter()
                    .map(|&v| Complex::new(v, 0.0))
                    .chain(std::iter::repeat(Complex::new(0.0, 0.0)))
                    .take(size)
                    .collect();
                forward.process(&mut buffer);
                buffer
            };
            let (a, b) = (spectrum(&self.mass), spectrum(&other.mass));
            let mut product: Vec<Complex<f64>> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
            inverse.process(&mut product);
            product.iter().take(n).map(|c| c.re / size as f64).collect()
        };
        Pld {
            lowest: self.lowest + other.lowest,
            mass,
            infinite: 1.0 - (1.0 - self.infinite) * (1.0 - other.infinite),
        }
        .trimmed()
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

    /// The smallest epsilon >= 0 with `delta(epsilon) <= delta` (to 1e-9); infinite when even the
    /// largest loss leaves more than `delta` (the infinite losses alone, say).
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.infinite > delta {
            return f64::INFINITY;
        }
        if self.delta(0.0) <= delta {
            return 0.0;
        }
        let mut lo = 0.0;
        let mut hi = ((self.lowest + self.mass.len() as i64) as f64 * STEP).max(STEP);
        while hi - lo > 1e-9 {
            let mid = 0.5 * (lo + hi);
            if self.delta(mid) <= delta {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
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
    let remove = Pld::subsampled_gaussian_remove(q, sigma).self_compose(steps);
    let add = Pld::subsampled_gaussian_add(q, sigma).self_compose(steps);
    remove.epsilon(delta).max(add.epsilon(delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gaussian's exact curve (Balle and Wang 2018): `delta(epsilon) = Phi(-epsilon / mu +
    /// mu / 2) - e^epsilon Phi(-epsilon / mu - mu / 2)`.
    fn gaussian_delta(mu: f64, epsilon: f64) -> f64 {
        normal_sf(epsilon / mu - mu / 2.0) - epsilon.exp() * normal_sf(epsilon / mu + mu / 2.0)
    }

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

    /// The exact epsilon at `delta` of the Gaussian of `mu`, by bisection on its exact curve.
    fn gaussian_epsilon(mu: f64, delta: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, 100.0);
        while hi - lo > 1e-12 {
            let mid = 0.5 * (lo + hi);
            if gaussian_delta(mu, mid) <= delta {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    #[test]
    fn composed_gaussians_bound_their_exact_curve_tightly() {
        // k Gaussians of mu compose to one of mu sqrt(k), exactly. Each step's losses are rounded
        // up by less than one grid step, so the composed curve lies at most k steps to the right
        // of the exact one (and never to its left).
        for (mu, k) in [(0.5, 1u64), (0.2, 50), (0.05, 1000), (1.0, 4)] {
            let pld = Pld::gaussian(mu).self_compose(k);
            let total = mu * (k as f64).sqrt();
            for delta in [1e-3, 1e-5, 1e-7] {
                let exact = gaussian_epsilon(total, delta);
                let ours = pld.epsilon(delta);
                assert!(
                    ours >= exact - 1e-6,
                    "mu {mu} k {k} delta {delta}: {ours} < {exact}"
                );
                assert!(
                    ours <= exact + k as f64 * STEP + 1e-6,
                    "mu {mu} k {k} delta {delta}: {ours} vs {exact}"
                );
            }
            for epsilon in [0.3, 1.0, 2.5] {
                let ours = pld.delta(epsilon);
                assert!(ours >= gaussian_delta(total, epsilon) - 1e-12);
                assert!(ours <= gaussian_delta(total, epsilon - k as f64 * STEP) + 1e-12);
            }
        }
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
    fn more_steps_or_less_noise_never_cost_less() {
        let eps = |q, sigma, steps| subsampled_gaussian_epsilon(q, sigma, steps, 1e-5);
        let base = eps(0.05, 1.2, 50);
        assert!(eps(0.05, 1.2, 100) > base);
        assert!(eps(0.05, 1.0, 50) > base);
        assert!(eps(0.1, 1.2, 50) > base);
        assert!(base > 0.0 && base.is_finite());
    }
}

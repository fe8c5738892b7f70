//! Zero-concentrated differential privacy (Bun and Steinke 2016).
//!
//! A Gaussian mechanism with L2 sensitivity `s` and noise standard deviation `sigma * s` is
//! `1 / (2 sigma^2)`-zCDP; rhos add up under composition. rho-zCDP implies (alpha, alpha rho)-RDP
//! for every alpha > 1, and so, by Canonne, Kamath and Steinke (2020, Proposition 12 with
//! tau = alpha rho), (epsilon, delta)-DP with
//!
//! ```text
//! epsilon(delta) = min over alpha > 1 of  alpha rho + ln(1 - 1/alpha) - (ln delta + ln alpha) / (alpha - 1)
//! ```
//!
//! The minimum is found over every real alpha (the function is unimodal in alpha), not a grid.

/// rho of a Gaussian mechanism with noise multiplier `sigma` (noise std over sensitivity).
pub fn gaussian_rho(sigma: f64) -> f64 {
    1.0 / (2.0 * sigma * sigma)
}

fn bound(rho: f64, delta: f64, alpha: f64) -> f64 {
    alpha * rho + (1.0 - 1.0 / alpha).ln() - (delta.ln() + alpha.ln()) / (alpha - 1.0)
}

/// The epsilon of rho-zCDP at `delta` (0 for rho = 0).
///
/// The bound's derivative in alpha is `rho + (ln delta + ln alpha) / (alpha - 1)^2`, of the
/// sign of `g(alpha) = rho (alpha - 1)^2 + ln alpha + ln delta`, which increases on alpha > 1
/// from `ln delta < 0`: the bound falls, then rises, and its minimum is at g's one root, found
/// by bisection on ln(alpha - 1) in [-50, 50]. Whatever alpha it ends on, the bound there is
/// a valid epsilon (every alpha > 1 gives one); at the root it is the smallest. A delta
/// outside (0, 1), or a bound that is not a number, gives an infinite epsilon (fail closed).
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    if !(delta > 0.0 && delta < 1.0) {
        return f64::INFINITY;
    }
    if rho <= 0.0 {
        return 0.0;
    }
    if !rho.is_finite() {
        return f64::INFINITY;
    }
    let ln_delta = delta.ln();
    let g = |t: f64| {
        let x = t.exp();
        rho * x * x + x.ln_1p() + ln_delta
    };
    let (mut lo, mut hi) = (-50.0f64, 50.0f64);
    // 100 / 2^80 is far below the spacing of f64 values near the root.
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if g(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let alpha = 1.0 + (0.5 * (lo + hi)).exp();
    match bound(rho, delta, alpha) {
        e if e.is_nan() => f64::INFINITY,
        e => e.max(0.0),
    }
}

/// The largest rho whose epsilon at `delta` is at most `epsilon` (bisection).
pub fn rho_for(epsilon_target: f64, delta: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while epsilon(hi, delta) < epsilon_target && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if epsilon(mid, delta) <= epsilon_target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The rho of a sum of `summands` independent discrete Gaussian noises N_Z(0, scale²), each of
/// `dimensions` coordinates, added to an integer vector of L2 sensitivity `sensitivity`: the
/// distributed discrete Gaussian mechanism (Kairouz, Liu and Steinke, ICML 2021, Theorem 11 and
/// Proposition 14), which is (alpha, alpha/2 (Δ / (sqrt(n) σ) + τ sqrt(d))²)-RDP for every alpha,
/// with `τ = 10 Σ_{k=1}^{n-1} exp(-2π² σ² k / (k+1))`. A sum of discrete Gaussians is not a
/// discrete Gaussian; τ is what that costs, and it vanishes once σ is a few units. None below the
/// theorem's σ ≥ 1/2, or without a summand.
pub fn distributed_discrete_gaussian_rho(
    sensitivity: f64,
    scale: f64,
    summands: u32,
    dimensions: usize,
) -> Option<f64> {
    if summands == 0 || scale.is_nan() || scale < 0.5 || sensitivity.is_nan() || sensitivity < 0.0 {
        return None;
    }
    let variance = scale * scale;
    let tau = 10.0
        * (1..summands)
            .map(|k| {
                let k = f64::from(k);
                (-2.0 * std::f64::consts::PI.powi(2) * variance * k / (k + 1.0)).exp()
            })
            .sum::<f64>();
    let epsilon =
        sensitivity / (f64::from(summands).sqrt() * scale) + tau * (dimensions as f64).sqrt();
    Some(epsilon * epsilon / 2.0)
}

#[cfg(test)]
mod conversion_tests {
    use super::*;

    /// The conversion is the bound's minimum over alpha: no point of a dense grid of alpha
    /// (a second method, 20,000 points from 1 + 1e-9 to 1 + 1e9) gives a smaller epsilon,
    /// from tiny to huge rho and at the deltas used.
    #[test]
    fn the_conversion_is_the_minimum_over_alpha() {
        for delta in [1e-10, 1e-6, 1e-5, 1e-3] {
            for k in -24..=8 {
                let rho = 10f64.powf(f64::from(k) / 2.0);
                let e = epsilon(rho, delta);
                let grid = (0..20_000)
                    .map(|i| 1.0 + 10f64.powf(-9.0 + 18.0 * f64::from(i) / 19_999.0))
                    .map(|alpha| bound(rho, delta, alpha))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    e <= grid.max(0.0) * (1.0 + 1e-12) + 1e-15,
                    "rho {rho}, delta {delta}: {e} above the grid's {grid}"
                );
                // Not below the minimum: close to the grid's (its spacing is 0.1 %).
                assert!(
                    e >= grid * (1.0 - 1e-5),
                    "rho {rho}, delta {delta}: {e} against {grid}"
                );
            }
        }
        assert_eq!(epsilon(0.0, 1e-5), 0.0);
        assert_eq!(epsilon(f64::INFINITY, 1e-5), f64::INFINITY);
        assert_eq!(epsilon(f64::NAN, 1e-5), f64::INFINITY);
        // Fail closed: no delta outside (0, 1) buys an epsilon.
        for delta in [0.0, -1e-5, 1.0, 2.0, f64::NAN] {
            assert_eq!(epsilon(0.1, delta), f64::INFINITY, "delta {delta}");
        }
    }
}

#[cfg(test)]
mod distributed_tests {
    use super::*;

    /// The probabilities of a discrete Gaussian N_Z(0, σ²) on -m..=m (its mass beyond is below
    /// 1e-300 for the σ here).
    fn discrete_gaussian(scale: f64, m: i64) -> Vec<f64> {
        let w: Vec<f64> = (-m..=m)
            .map(|x| (-(x * x) as f64 / (2.0 * scale * scale)).exp())
            .collect();
        let total: f64 = w.iter().sum();
        w.into_iter().map(|v| v / total).collect()
    }

    fn convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                out[i + j] += x * y;
            }
        }
        out
    }

    /// The Rényi divergence of order `alpha` between a distribution on consecutive integers and
    /// itself shifted by `shift`, computed term by term (a second method, independent of the
    /// theorem).
    fn renyi_of_shift(p: &[f64], shift: usize, alpha: f64) -> f64 {
        let mut total = 0.0;
        for i in shift..p.len() {
            let (a, b) = (p[i], p[i - shift]);
            if a > 0.0 && b > 0.0 {
                total += (alpha * a.ln() + (1.0 - alpha) * b.ln()).exp();
            }
        }
        total.ln() / (alpha - 1.0)
    }

    #[test]
    fn the_sum_of_discrete_gaussians_is_as_private_as_the_theorem_states() {
        // One coordinate, sensitivity 1: the exact Rényi divergences of the sum of n discrete
        // Gaussians (its distribution by convolution) never exceed alpha times the stated rho,
        // and for σ of a few units the stated rho is the continuous Gaussian's 1 / (2 n σ²).
        for (scale, n) in [(0.5, 2), (0.7, 3), (1.0, 2), (2.0, 4), (4.0, 3)] {
            let one = discrete_gaussian(scale, 60);
            let mut sum = one.clone();
            for _ in 1..n {
                sum = convolve(&sum, &one);
            }
            let rho = distributed_discrete_gaussian_rho(1.0, scale, n, 1).unwrap();
            let continuous = 1.0 / (2.0 * f64::from(n) * scale * scale);
            assert!(rho >= continuous);
            for alpha in [1.5, 2.0, 4.0, 8.0, 16.0] {
                let exact = renyi_of_shift(&sum, 1, alpha);
                assert!(
                    exact <= alpha * rho * (1.0 + 1e-9),
                    "σ {scale}, n {n}, α {alpha}: divergence {exact} above α ρ = {}",
                    alpha * rho
                );
            }
            if scale >= 2.0 {
                assert!(
                    (rho / continuous - 1.0).abs() < 1e-12,
                    "{rho} vs {continuous}"
                );
                // And the bound is tight: the exact divergence at α = 2 is within 1 % of it.
                let exact = renyi_of_shift(&sum, 1, 2.0);
                assert!(exact >= 2.0 * rho * 0.99, "{exact} vs {}", 2.0 * rho);
            }
        }
        // A sensitivity of 2 (the shift by two) under the same bound.
        let one = discrete_gaussian(1.0, 60);
        let sum = convolve(&convolve(&one, &one), &one);
        let rho = distributed_discrete_gaussian_rho(2.0, 1.0, 3, 1).unwrap();
        assert!(renyi_of_shift(&sum, 2, 4.0) <= 4.0 * rho * (1.0 + 1e-9));
        // Outside the theorem: no rho.
        assert_eq!(distributed_discrete_gaussian_rho(1.0, 0.4, 3, 1), None);
        assert_eq!(distributed_discrete_gaussian_rho(1.0, 2.0, 0, 1), None);
        // One summand with a large σ is the discrete Gaussian mechanism's 1 / (2 σ²) (Canonne,
        // Kamath and Steinke 2020, Theorem 4).
        let one = distributed_discrete_gaussian_rho(3.0, 30.0, 1, 100).unwrap();
        assert!((one / 0.005 - 1.0).abs() < 1e-12, "{one}");
    }
}

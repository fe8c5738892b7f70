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
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    if !rho.is_finite() {
        return f64::INFINITY;
    }
    // Bracket the minimiser on a logarithmic grid of alpha - 1, then refine by golden section.
    let mut best = (f64::INFINITY, 1.0);
    let mut x = 1e-6f64;
    while x < 1e7 {
        let v = bound(rho, delta, 1.0 + x);
        if v < best.0 {
            best = (v, x);
        }
        x *= 1.05;
    }
    let (mut lo, mut hi) = ((best.1 / 1.05).ln(), (best.1 * 1.05).ln());
    let f = |t: f64| bound(rho, delta, 1.0 + t.exp());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..200 {
        let a = hi - g * (hi - lo);
        let b = lo + g * (hi - lo);
        if f(a) < f(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    f((lo + hi) / 2.0).min(best.0).max(0.0)
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

//! Rényi differential privacy of the Poisson-subsampled Gaussian mechanism.
//!
//! One step takes each record independently with probability `q`, sums the clipped per-record
//! gradients and adds Gaussian noise of standard deviation `sigma` times the clipping norm.
//! Its RDP at order alpha is `ln(A_alpha) / (alpha - 1)` (Mironov, Talwar and Zhang 2019,
//! "Rényi Differential Privacy of the Sampled Gaussian Mechanism", section 3.3):
//!
//! - integer alpha: `A = sum_{k=0}^{alpha} C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))`;
//! - fractional alpha: `A = A_0 + A_1`, two convergent series over k = 0, 1, 2, ... of generalised
//!   binomial coefficients times Gaussian tail probabilities around `z_0 = sigma^2 ln(1/q - 1) + 1/2`
//!   (bounded above term by term, see `log_a_fractional`).
//!
//! Everything is computed in log space. Steps compose by adding RDP; the total converts to
//! (epsilon, delta) with the improved conversion (Canonne, Kamath and Steinke 2020; Asoodeh et
//! al. 2021): `epsilon = rdp + ln(1 - 1/alpha) - (ln delta + ln alpha) / (alpha - 1)`, minimised
//! over the orders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The orders: 1.1 to 10.9 by 0.1, 11 to 63, and 128, 256, 512, 1024.
pub fn orders() -> Vec<f64> {
    let mut out: Vec<f64> = (11..110).map(|i| i as f64 / 10.0).collect();
    out.extend((11..64).map(f64::from));
    out.extend([128.0, 256.0, 512.0, 1024.0]);
    out
}

/// ln(e^a + e^b).
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// ln(erfc(x)), accurate also where erfc(x) underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        libm::erfc(x).ln()
    } else {
        // Asymptotic expansion: erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6)).
        let x2 = x * x;
        -x2 - (x * std::f64::consts::PI.sqrt()).ln()
            + (1.0 - 0.5 / x2 + 0.75 / (x2 * x2) - 1.875 / (x2 * x2 * x2)).ln()
    }
}

/// ln(A_alpha) for integer alpha >= 2.
fn log_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut total = f64::NEG_INFINITY;
    let mut log_binomial = 0.0; // ln C(alpha, 0)
    for k in 0..=alpha {
        let kf = k as f64;
        let term = log_binomial
            + kf * q.ln()
            + (alpha - k) as f64 * (-q).ln_1p()
            + (kf * kf - kf) / (2.0 * sigma * sigma);
        total = log_add(total, term);
        log_binomial += ((alpha - k) as f64).ln() - (kf + 1.0).ln();
    }
    total
}

/// ln(A_alpha) for fractional alpha > 1.
///
/// Every term of the two series is added with its absolute value. For i > alpha the generalised
/// binomial coefficients alternate in sign; counting them all as positive gives an upper bound of
/// A_alpha that no cancellation error can push below the true value (an accountant may
/// over-count, never under-count). Google's dp_accounting 0.6 does the same.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut log_coefficient = 0.0f64; // ln |C(alpha, i)|
    let two_sigma2 = 2.0 * sigma * sigma;
    let root2_sigma = std::f64::consts::SQRT_2 * sigma;
    for i in 0..100_000u32 {
        let fi = f64::from(i);
        let j = alpha - fi;
        let log_t0 = log_coefficient + fi * q.ln() + j * (-q).ln_1p();
        let log_t1 = log_coefficient + j * q.ln() + fi * (-q).ln_1p();
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / root2_sigma);
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / root2_sigma);
        let log_s0 = log_t0 + (fi * fi - fi) / two_sigma2 + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_sigma2 + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        // Stop once both terms decrease and are negligible beside the total.
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
        log_coefficient += ((alpha - fi).abs()).ln() - (fi + 1.0).ln();
    }
    // Not converged: this order gives no bound.
    f64::INFINITY
}

/// The RDP curve over [`orders`] of one Poisson-subsampled Gaussian step, remembered: a ledger
/// accounts the same mechanism at every release it records.
pub fn sampled_gaussian_curve(q: f64, sigma: f64) -> Arc<Vec<f64>> {
    type Curves = Mutex<HashMap<(u64, u64), Arc<Vec<f64>>>>;
    static CURVES: OnceLock<Curves> = OnceLock::new();
    let curves = CURVES.get_or_init(Default::default);
    let key = (q.to_bits(), sigma.to_bits());
    if let Some(curve) = curves.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Arc::clone(curve);
    }
    let curve: Arc<Vec<f64>> = Arc::new(
        orders()
            .iter()
            .map(|&a| sampled_gaussian(q, sigma, a))
            .collect(),
    );
    let mut curves = curves.lock().unwrap_or_else(|e| e.into_inner());
    if curves.len() >= 1024 {
        curves.clear();
    }
    curves.insert(key, Arc::clone(&curve));
    curve
}

/// The RDP at order `alpha` of one Poisson-subsampled Gaussian step.
pub fn sampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    if !sigma.is_finite() {
        return 0.0;
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha as u64)
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    (log_a / (alpha - 1.0)).max(0.0)
}

/// The smallest epsilon at `delta` over the orders, given the RDP curve; with its order.
pub fn epsilon(orders: &[f64], curve: &[f64], delta: f64) -> (f64, f64) {
    orders
        .iter()
        .zip(curve)
        .filter(|(_, r)| r.is_finite())
        .map(|(&a, &r)| {
            (
                r + (1.0 - 1.0 / a).ln() - (delta.ln() + a.ln()) / (a - 1.0),
                a,
            )
        })
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .map(|(e, a)| (e.max(0.0), a))
        .unwrap_or((f64::INFINITY, 0.0))
}

/// The epsilon at `delta` of `steps` Poisson-subsampled Gaussian steps.
pub fn sampled_gaussian_epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
    let orders = orders();
    let curve: Vec<f64> = orders
        .iter()
        .map(|&a| steps as f64 * sampled_gaussian(q, sigma, a))
        .collect();
    epsilon(&orders, &curve, delta).0
}

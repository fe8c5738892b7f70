//! The privacy arithmetic that budgets are judged by: accountants that turn a history of
//! releases into the (epsilon, delta) an agency has spent.
//!
//! - [`zcdp`]: Gaussian mechanisms on full batches compose exactly in zero-concentrated DP (rho
//!   adds up); rho converts to (epsilon, delta) with the conversion of Canonne, Kamath and
//!   Steinke (2020), optimised over every order, not a grid.
//! - [`rdp`]: Poisson-subsampled Gaussian steps (DP-SGD) compose in Rényi DP, with the
//!   sampled-Gaussian bound of Mironov, Talwar and Zhang (2019) over a grid of integer and
//!   fractional orders and the improved RDP-to-(epsilon, delta) conversion.
//! - pure and approximate DP for Laplace queries: epsilons (and deltas) add up.
//! - [`pld`]: privacy-loss distributions, composed by FFT with a pessimistic discretisation: the
//!   tightest of the bounds (not yet used by [`spent`]: issue #15's next step).
//!
//! - [`plan`]: how a training job's target is split between its statistics round, its
//!   evaluations and its training, before it starts.
//!
//! [`spent`] composes any mix of them and reports the tightest valid bound with the accountant
//! that gave it.

mod plan;
pub mod pld;
pub mod rdp;
pub mod zcdp;

pub use plan::{
    EVALUATION_SHARE, JobPlan, JobPrivacy, STATISTICS_SHARE, UNPLANNED_EVALUATION_EPSILON,
    default_parts, dp_sgd, plan, training,
};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One release of data-derived values, as far as privacy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mechanism", rename_all = "snake_case")]
pub enum Release {
    /// Gaussian mechanisms on full data: total zCDP rho (e.g. `steps / (2 sigma^2)` for full-batch
    /// DP gradient descent with noise multiplier sigma).
    Gaussian { rho: f64 },
    /// `steps` Poisson-subsampled Gaussian steps: each record taken with probability
    /// `sampling_rate`, noise multiplier `noise_multiplier` (noise standard deviation over the
    /// clipping norm).
    SampledGaussian {
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    },
    /// A Laplace (or other pure-DP) release: epsilon-DP.
    Laplace { epsilon: f64 },
    /// An (epsilon, delta)-DP release that no finer accountant describes.
    Approximate { epsilon: f64, delta: f64 },
}

/// What an agency has spent, at its delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub epsilon: f64,
    pub delta: f64,
    /// Which accountant gave the bound, e.g. `zCDP (Canonne-Kamath-Steinke conversion)`.
    pub accountant: String,
}

/// A release's parameters are not a valid mechanism.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("{0}")]
    Invalid(String),
}

impl Release {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        let bad = |m: String| Err(PrivacyError::Invalid(m));
        match *self {
            Release::Gaussian { rho } if !(rho.is_finite() && rho >= 0.0) => {
                bad(format!("rho {rho} must be a non-negative number"))
            }
            Release::SampledGaussian {
                sampling_rate,
                noise_multiplier,
                ..
            } if !(sampling_rate > 0.0
                && sampling_rate <= 1.0
                && noise_multiplier.is_finite()
                && noise_multiplier > 0.0) =>
            {
                bad(format!(
                    "a sampled Gaussian needs 0 < sampling rate <= 1 (got {sampling_rate}) and a positive noise multiplier (got {noise_multiplier})"
                ))
            }
            Release::Laplace { epsilon } if !(epsilon.is_finite() && epsilon >= 0.0) => {
                bad(format!("epsilon {epsilon} must be a non-negative number"))
            }
            Release::Approximate { epsilon, delta }
                if !(epsilon.is_finite() && epsilon >= 0.0 && (0.0..1.0).contains(&delta)) =>
            {
                bad(format!(
                    "({epsilon}, {delta}) is not a valid (epsilon, delta)"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The smallest noise multiplier sigma (to a relative precision of 1e-6) for which the releases
/// `make(sigma)` spend at most `target` epsilon at `delta`; `None` when even 10^6 does not.
pub fn calibrate(make: impl Fn(f64) -> Vec<Release>, target: f64, delta: f64) -> Option<f64> {
    let spend = |sigma: f64| {
        spent(&make(sigma), delta)
            .map(|s| s.epsilon)
            .unwrap_or(f64::INFINITY)
    };
    let (mut lo, mut hi) = (1e-3f64, 1.0f64);
    while spend(hi) > target {
        hi *= 2.0;
        if hi > 1e6 {
            return None;
        }
    }
    while (hi - lo) / hi > 1e-6 {
        let mid = (lo + hi) / 2.0;
        if spend(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// The (epsilon, delta) spent by a history of releases, at `delta`: the smallest of every valid
/// bound (RDP over all releases; zCDP when no release is subsampled; plain sums when all are pure
/// or approximate DP). The approximate releases' deltas are added to `delta`.
pub fn spent(releases: &[Release], delta: f64) -> Result<Spent, PrivacyError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Invalid(format!(
            "delta {delta} must be in (0, 1)"
        )));
    }
    for r in releases {
        r.validate()?;
    }
    let extra_delta: f64 = releases
        .iter()
        .map(|r| match r {
            Release::Approximate { delta, .. } => *delta,
            _ => 0.0,
        })
        .sum();
    let approximate_epsilon: f64 = releases
        .iter()
        .map(|r| match r {
            Release::Approximate { epsilon, .. } => *epsilon,
            _ => 0.0,
        })
        .sum();
    let fine: Vec<&Release> = releases
        .iter()
        .filter(|r| !matches!(r, Release::Approximate { .. }))
        .collect();
    let total_delta = delta + extra_delta;
    let mut candidates: Vec<(f64, &str)> = Vec::new();
    if fine.is_empty() {
        candidates.push((0.0, "none (no release)"));
    }
    // Pure DP: epsilons add (delta 0).
    if fine.iter().all(|r| matches!(r, Release::Laplace { .. })) {
        let e: f64 = fine
            .iter()
            .map(|r| {
                if let Release::Laplace { epsilon } = r {
                    *epsilon
                } else {
                    0.0
                }
            })
            .sum();
        candidates.push((e, "pure DP (basic composition)"));
    }
    // zCDP: Gaussian rhos add; an epsilon-DP release is (epsilon^2 / 2)-zCDP (Bun and Steinke 2016).
    if !fine.is_empty()
        && fine
            .iter()
            .all(|r| !matches!(r, Release::SampledGaussian { .. }))
    {
        let rho: f64 = fine
            .iter()
            .map(|r| match r {
                Release::Gaussian { rho } => *rho,
                Release::Laplace { epsilon } => epsilon * epsilon / 2.0,
                _ => 0.0,
            })
            .sum();
        candidates.push((
            zcdp::epsilon(rho, delta),
            "zCDP (Canonne-Kamath-Steinke conversion)",
        ));
    }
    // RDP over every release. Releases of the same mechanism are grouped first (their RDP adds
    // up), so that a long history costs one curve per distinct mechanism.
    if !fine.is_empty() {
        let orders = rdp::orders();
        let mut rho_total = 0.0;
        let mut sampled: Vec<(f64, f64, u64)> = Vec::new();
        let mut laplace: Vec<(f64, u64)> = Vec::new();
        for r in &fine {
            match **r {
                Release::Gaussian { rho } => rho_total += rho,
                Release::SampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                    steps,
                } => match sampled
                    .iter_mut()
                    .find(|(q, s, _)| *q == sampling_rate && *s == noise_multiplier)
                {
                    Some(group) => group.2 += steps,
                    None => sampled.push((sampling_rate, noise_multiplier, steps)),
                },
                Release::Laplace { epsilon } => {
                    match laplace.iter_mut().find(|(e, _)| *e == epsilon) {
                        Some(group) => group.1 += 1,
                        None => laplace.push((epsilon, 1)),
                    }
                }
                Release::Approximate { .. } => {}
            }
        }
        let sampled: Vec<(Arc<Vec<f64>>, u64)> = sampled
            .iter()
            .map(|&(q, s, steps)| (rdp::sampled_gaussian_curve(q, s), steps))
            .collect();
        let curve: Vec<f64> = orders
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                a * rho_total
                    + sampled
                        .iter()
                        .map(|(curve, steps)| *steps as f64 * curve[i])
                        .sum::<f64>()
                    + laplace
                        .iter()
                        .map(|&(e, n)| n as f64 * e.min(a * e * e / 2.0))
                        .sum::<f64>()
            })
            .collect();
        candidates.push((
            rdp::epsilon(&orders, &curve, delta).0,
            "RDP (sampled Gaussian, improved conversion)",
        ));
    }
    let (epsilon, accountant) = candidates
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((f64::INFINITY, "none"));
    Ok(Spent {
        epsilon: epsilon + approximate_epsilon,
        delta: total_delta,
        accountant: accountant.to_owned(),
    })
}

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
//! - [`pld`]: privacy-loss distributions of every release, composed by FFT with a pessimistic
//!   discretisation ("connect the dots"): the tightest of the bounds, within a fraction of a
//!   percent of the exact curve, and the one the ledger's figure nearly always comes from.
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
    /// The tightest of the sound bounds: the figure budgets are judged by.
    pub epsilon: f64,
    pub delta: f64,
    /// Which accountant gave the bound, e.g. `PLD (connect-the-dots, FFT composition)`.
    pub accountant: String,
    /// Every accountant that applies to the history, with its own bound (approximate
    /// releases' epsilons included), tightest first.
    #[serde(default)]
    pub bounds: Vec<Bound>,
}

impl Spent {
    /// The bound one accountant gave, if it applies to the history.
    pub fn bound(&self, accountant: &str) -> Option<f64> {
        self.bounds
            .iter()
            .find(|b| b.accountant == accountant)
            .map(|b| b.epsilon)
    }
}

/// One accountant's bound on a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub accountant: String,
    pub epsilon: f64,
}

/// The names of the accountants, as [`Spent::accountant`] gives them.
pub const PLD: &str = "PLD (connect-the-dots, FFT composition)";
pub const RDP: &str = "RDP (sampled Gaussian, improved conversion)";
pub const ZCDP: &str = "zCDP (Canonne-Kamath-Steinke conversion)";
pub const PURE: &str = "pure DP (basic composition)";
/// Every accountant, in the order they are tried.
pub const ACCOUNTANTS: [&str; 4] = [PURE, ZCDP, RDP, PLD];
/// The accountants the ledger, the budgets and the calibration of noise use (what [`spent`]
/// and [`calibrate`] take the smallest of): all of them, each a sound upper bound.
pub const LEDGER_ACCOUNTANTS: [&str; 4] = ACCOUNTANTS;

/// The ledger composes a history's privacy-loss distributions only while its other bounds
/// are at most this epsilon: far above any budget, where PLD's tighter figure would change no
/// decision, and its grid would have to span hundreds of nats.
pub const PLD_CEILING: f64 = 32.0;

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

/// The smallest noise multiplier sigma (to a relative precision of 1e-6, or spending the target
/// to 1e-6 of it) for which the releases
/// `make(sigma)` spend at most `target` epsilon at `delta` by the ledger's accountants (as
/// [`spent`] judges them); `None` when even 10^6 does not.
pub fn calibrate(make: impl Fn(f64) -> Vec<Release>, target: f64, delta: f64) -> Option<f64> {
    calibrate_by(&make, target, delta, None)
}

/// [`calibrate`] by one accountant alone (one of [`ACCOUNTANTS`]), or by the ledger's when
/// `None`: what the noise would be if only that accountant were trusted.
pub fn calibrate_by(
    make: &dyn Fn(f64) -> Vec<Release>,
    target: f64,
    delta: f64,
    accountant: Option<&str>,
) -> Option<f64> {
    // A figure that is not a number counts as spending everything (fail closed).
    let spend = |sigma: f64| {
        spent_by(&make(sigma), delta, accountant)
            .map(|s| s.epsilon)
            .ok()
            .filter(|e| !e.is_nan())
            .unwrap_or(f64::INFINITY)
    };
    // How far above (positive) or below the target sigma lands, in logarithms: nearly linear
    // in ln(sigma), so a secant finds the crossing in a handful of evaluations, each of which
    // may compose a privacy-loss distribution.
    let gap = |sigma: f64| (spend(sigma) / target).ln();
    // The bracket: `low` spends more than the target (1e-3 is taken to), `high` at most it.
    // PLD needs at most the noise RDP needs (RDP's bound is a few microseconds), and usually
    // 5 to 15 % less: the search by PLD (alone or as the ledger's smallest) starts just above
    // RDP's noise and steps down, by a tenth first, then by more.
    let start = match accountant {
        Some(PLD) | None => calibrate_by(make, target, delta, Some(RDP)).map(|s| s * 1.001),
        _ => None,
    };
    let (mut low, mut high) = (1e-3f64, start.unwrap_or(1.0));
    let (mut gap_low, mut gap_high) = (f64::INFINITY, gap(high));
    if start.is_some() && gap_high <= 0.0 {
        let mut factor = 0.9;
        loop {
            let lower = high * factor;
            let g = gap(lower);
            if g > 0.0 || lower < 1e-3 {
                (low, gap_low) = (lower, g);
                break;
            }
            (high, gap_high) = (lower, g);
            factor = (factor - 0.1f64).max(0.5);
        }
    }
    while gap_high > 0.0 {
        (low, gap_low) = (high, gap_high);
        high *= 2.0;
        if high > 1e6 {
            return None;
        }
        gap_high = gap(high);
    }
    // Illinois' regula falsi on ln(sigma): each side kept twice has its gap halved so that
    // both ends move; bisection where the secant is undefined (an infinite epsilon) or when the
    // last two steps did not halve the bracket. It stops when the bracket is within 1e-6 of
    // sigma, or sigma spends the target to 1e-6 of it (a millionth of the budget is not worth
    // another composition of the job's privacy-loss distribution).
    let (mut kept, mut widths, mut exact_gap_high) = (0i8, [f64::INFINITY; 2], gap_high);
    for _ in 0..200 {
        if (high - low) / high <= 1e-6 || exact_gap_high > -1e-6 {
            break;
        }
        let (x0, x1) = (low.ln(), high.ln());
        let width = x1 - x0;
        let secant = x1 - gap_high * (x1 - x0) / (gap_high - gap_low);
        let x = match secant.is_finite() && gap_low.is_finite() && width <= widths[0] / 2.0 {
            // `max` then `min`, not `clamp`: never a panic, whatever the bounds.
            true => secant.max(x0 + 1e-3 * width).min(x1 - 1e-3 * width),
            false => (x0 + x1) / 2.0,
        };
        widths = [widths[1], width];
        let (sigma, g) = (x.exp(), gap(x.exp()));
        if g > 0.0 {
            (low, gap_low) = (sigma, g);
            kept = kept.min(0).saturating_sub(1);
            if kept <= -2 {
                gap_high /= 2.0;
            }
        } else {
            (high, gap_high, exact_gap_high) = (sigma, g, g);
            kept = kept.max(0).saturating_add(1);
            if kept >= 2 {
                gap_low /= 2.0;
            }
        }
    }
    Some(high)
}

/// The (epsilon, delta) spent by a history of releases, at `delta`: the smallest of every valid
/// bound of [`LEDGER_ACCOUNTANTS`] (PLD and RDP over all releases; zCDP when no release is
/// subsampled; plain sums when all are pure or approximate DP). The approximate releases'
/// deltas are added to `delta`.
pub fn spent(releases: &[Release], delta: f64) -> Result<Spent, PrivacyError> {
    spent_by(releases, delta, None)
}

/// [`spent`] by one accountant alone (one of [`ACCOUNTANTS`]; its epsilon is infinite when it
/// does not apply to the history), or by [`LEDGER_ACCOUNTANTS`] when `None`.
pub fn spent_by(
    releases: &[Release],
    delta: f64,
    accountant: Option<&str>,
) -> Result<Spent, PrivacyError> {
    let wanted = |name: &str| match accountant {
        None => LEDGER_ACCOUNTANTS.contains(&name),
        Some(a) => a == name,
    };
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
    if wanted(PURE) && fine.iter().all(|r| matches!(r, Release::Laplace { .. })) {
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
        candidates.push((e, PURE));
    }
    // zCDP: Gaussian rhos add; an epsilon-DP release is (epsilon^2 / 2)-zCDP (Bun and Steinke 2016).
    if wanted(ZCDP)
        && !fine.is_empty()
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
        candidates.push((zcdp::epsilon(rho, delta), ZCDP));
    }
    // RDP over every release. Releases of the same mechanism are grouped first (their RDP adds
    // up), so that a long history costs one curve per distinct mechanism.
    if wanted(RDP) && !fine.is_empty() {
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
        candidates.push((rdp::epsilon(&orders, &curve, delta).0, RDP));
    }
    // PLD over every release: Gaussians (mu^2 = 2 rho), subsampled Gaussians in each direction,
    // pure releases through randomised response (a Laplace release is recorded by its epsilon
    // alone, which is all the ledger may assume of it).
    // Skipped, as the ledger's, when another bound is already above `PLD_CEILING`: no budget is
    // near, and the distributions of such a history are millions of points wide.
    let ceiling = match accountant {
        None => candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min),
        Some(_) => 0.0,
    };
    if wanted(PLD) && !fine.is_empty() && ceiling <= PLD_CEILING {
        let mut history = pld::History::default();
        for r in &fine {
            match **r {
                Release::Gaussian { rho } => history.gaussian(rho),
                Release::SampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                    steps,
                } => history.sampled(sampling_rate, noise_multiplier, steps),
                Release::Laplace { epsilon } => history.pure(epsilon),
                Release::Approximate { .. } => {}
            }
        }
        candidates.push((history.epsilon(delta), PLD));
    }
    // A bound that is not a number bounds nothing (fail closed: it is never the smallest).
    for candidate in &mut candidates {
        if candidate.0.is_nan() {
            candidate.0 = f64::INFINITY;
        }
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (epsilon, accountant) = candidates
        .first()
        .copied()
        .unwrap_or((f64::INFINITY, "none"));
    Ok(Spent {
        epsilon: epsilon + approximate_epsilon,
        delta: total_delta,
        accountant: accountant.to_owned(),
        bounds: candidates
            .iter()
            .map(|&(e, a)| Bound {
                accountant: a.to_owned(),
                epsilon: e + approximate_epsilon,
            })
            .collect(),
    })
}

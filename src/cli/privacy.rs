//! `treaty privacy epsilon|noise`: budget planning for people, with the accountants that judge
//! every release.

use anyhow::bail;
use treaty_devkit::outln;

use super::{Outcome, unusable};
use clap::Subcommand;
use treaty_node::{Sampling, StepNoise};
use treaty_policies::privacy::{Release, rdp, spent, zcdp};

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// The epsilon of T Poisson-subsampled Gaussian steps (sampling rate 1 = full batch).
    Epsilon {
        /// The probability that each record is taken in a step (1 = every record, full batch).
        #[arg(long)]
        sampling_rate: f64,
        /// The noise standard deviation over the clipping norm.
        #[arg(long)]
        noise_multiplier: f64,
        /// The number of steps.
        #[arg(long)]
        steps: u64,
        /// The delta at which epsilon is reported.
        #[arg(long)]
        delta: f64,
        /// Print `{"epsilon": ..., "delta": ..., "accountant": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// The smallest noise multiplier for which T steps spend at most epsilon at delta.
    Noise {
        /// The probability that each record is taken in a step (1 = every record, full batch).
        #[arg(long)]
        sampling_rate: f64,
        /// The number of steps.
        #[arg(long)]
        steps: u64,
        /// The epsilon the steps may spend.
        #[arg(long)]
        epsilon: f64,
        /// The delta at which epsilon is counted.
        #[arg(long)]
        delta: f64,
        /// Print `{"noise_multiplier": ..., "epsilon": ..., "delta": ..., "accountant": ...}`.
        #[arg(long)]
        json: bool,
    },
}

/// The release of `steps` steps, as the node describes it: exact zCDP for full batches (a
/// sampling rate of 1), RDP when subsampled.
pub fn steps_release(sampling_rate: f64, noise_multiplier: f64, steps: u64) -> Release {
    let sampling = if sampling_rate >= 1.0 {
        Sampling::FullBatch
    } else {
        Sampling::Poisson(sampling_rate)
    };
    sampling.release(StepNoise::ideal(noise_multiplier), steps)
}

fn check(sampling_rate: f64, steps: u64, delta: f64) -> anyhow::Result<()> {
    if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
        bail!("--sampling-rate {sampling_rate} must be in (0, 1]");
    }
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(delta > 0.0 && delta < 1.0) {
        bail!("--delta {delta} must be in (0, 1)");
    }
    Ok(())
}

/// Runs a `treaty privacy` command: every error is about its parameters (status 2).
pub fn run(command: PrivacyCommand) -> Outcome {
    plan(command).map_err(unusable)
}

fn plan(command: PrivacyCommand) -> anyhow::Result<()> {
    match command {
        PrivacyCommand::Epsilon {
            sampling_rate,
            noise_multiplier,
            steps,
            delta,
            json,
        } => {
            check(sampling_rate, steps, delta)?;
            if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
                bail!("--noise-multiplier {noise_multiplier} must be positive");
            }
            let s = spent(
                &[steps_release(sampling_rate, noise_multiplier, steps)],
                delta,
            )?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"epsilon": s.epsilon, "delta": s.delta, "accountant": s.accountant})
                );
            } else {
                outln!(
                    "epsilon = {:.6} at delta = {:e} ({})",
                    s.epsilon,
                    s.delta,
                    s.accountant
                );
            }
        }
        PrivacyCommand::Noise {
            sampling_rate,
            steps,
            epsilon,
            delta,
            json,
        } => {
            check(sampling_rate, steps, delta)?;
            if !(epsilon.is_finite() && epsilon > 0.0) {
                bail!("--epsilon {epsilon} must be positive");
            }
            let sigma = if sampling_rate >= 1.0 {
                let rho = zcdp::rho_for(epsilon, delta);
                (steps as f64 / (2.0 * rho)).sqrt()
            } else {
                match rdp::noise_for(sampling_rate, steps, epsilon, delta) {
                    Some(sigma) => sigma,
                    None => bail!("no noise multiplier up to 10^6 meets epsilon {epsilon}"),
                }
            };
            let s = spent(&[steps_release(sampling_rate, sigma, steps)], delta)?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"noise_multiplier": sigma, "epsilon": s.epsilon, "delta": s.delta, "accountant": s.accountant})
                );
            } else {
                outln!(
                    "noise multiplier = {sigma:.6} (spends epsilon = {:.6} at delta = {:e}, {})",
                    s.epsilon,
                    s.delta,
                    s.accountant
                );
            }
        }
    }
    Ok(())
}

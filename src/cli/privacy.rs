//! `treaty privacy epsilon|noise|plan`: budget planning for people, with the accountants that
//! judge every release.

use anyhow::bail;
use treaty_devkit::outln;

use super::{Outcome, unusable};
use clap::Subcommand;
use treaty_policies::privacy::{self, JobPlan, JobPrivacy, Release, spent};

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
        /// Print `{"epsilon": ..., "delta": ..., "accountant": ..., "accountants": [{"accountant":
        /// ..., "epsilon": ...}, ...]}`: `epsilon` is the bound the ledger uses; every
        /// accountant's (PLD's included) is listed.
        #[arg(long)]
        json: bool,
    },
    /// How a training job's target is split between its statistics round, its evaluations and
    /// its training, and the training noise that meets it: the plan every node follows.
    Plan {
        /// The whole job's epsilon per agency.
        #[arg(long)]
        epsilon: f64,
        /// The delta of the target.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Training rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u64,
        /// Local epochs per round (full batch: one DP gradient step each).
        #[arg(long, default_value_t = 1)]
        local_epochs: u64,
        /// Poisson sampling rate of each step (batch size / records); leave it out for full
        /// batches.
        #[arg(long)]
        sampling_rate: Option<f64>,
        /// The job's standardization is given, so no statistics round runs.
        #[arg(long)]
        no_statistics: bool,
        /// The statistics round's zCDP rho (default: 10 % of the target's rho).
        #[arg(long)]
        statistics_rho: Option<f64>,
        /// Each round's evaluation epsilon; 0 turns evaluations off (default: 10 % of the
        /// target's rho over all rounds).
        #[arg(long)]
        evaluation_epsilon: Option<f64>,
        /// Print the plan as JSON.
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
        /// Print `{"noise_multiplier": ..., "epsilon": ..., "delta": ..., "accountant": ...,
        /// "accountants": [{"accountant": ..., "noise_multiplier": ...}, ...]}`: each
        /// accountant's own calibration (PLD's included) beside the one the ledger uses.
        #[arg(long)]
        json: bool,
    },
}

/// The release of `steps` steps, as the node describes it: exact zCDP for full batches (a
/// sampling rate of 1), subsampled steps when not (PLD and RDP).
pub fn steps_release(sampling_rate: f64, noise_multiplier: f64, steps: u64) -> Release {
    privacy::training(
        (sampling_rate < 1.0).then_some(sampling_rate),
        noise_multiplier,
        steps,
    )
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
        PrivacyCommand::Plan {
            epsilon,
            delta,
            rounds,
            local_epochs,
            sampling_rate,
            no_statistics,
            statistics_rho,
            evaluation_epsilon,
            json,
        } => {
            let steps_per_round = match sampling_rate {
                None => local_epochs,
                Some(q) if q > 0.0 && q <= 1.0 => local_epochs * (1.0 / q).ceil() as u64,
                Some(q) => bail!("--sampling-rate {q} must be in (0, 1]"),
            };
            let job = JobPrivacy {
                target_epsilon: epsilon,
                delta,
                rounds,
                steps_per_round,
                sampling_rate,
                statistics: !no_statistics,
                statistics_rho,
                evaluation_epsilon,
            };
            let plan = privacy::plan(&job)?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "target_epsilon": epsilon, "delta": delta, "rounds": rounds,
                        "steps_per_round": steps_per_round, "sampling_rate": sampling_rate,
                        "statistics_rho": plan.statistics_rho,
                        "evaluation_epsilon": plan.evaluation_epsilon,
                        "noise_multiplier": plan.noise_multiplier,
                        "epsilon": {"statistics": plan.statistics, "evaluation": plan.evaluation,
                            "training": plan.training, "round": plan.round,
                            "total": plan.total.epsilon},
                        "accountant": plan.total.accountant,
                    })
                );
            } else {
                print_plan(&job, &plan);
            }
        }
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
            let releases = [steps_release(sampling_rate, noise_multiplier, steps)];
            let s = spent(&releases, delta)?;
            let all = &s.bounds;
            if json {
                let bounds: Vec<_> = all
                    .iter()
                    .map(|b| serde_json::json!({"accountant": b.accountant, "epsilon": b.epsilon}))
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({"epsilon": s.epsilon, "delta": s.delta, "accountant": s.accountant, "accountants": bounds})
                );
            } else {
                outln!(
                    "epsilon = {:.6} at delta = {:e} ({}: the bound the ledger uses)",
                    s.epsilon,
                    s.delta,
                    s.accountant
                );
                for b in all {
                    outln!("  {:<44} epsilon {:.6}", b.accountant, b.epsilon);
                }
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
            // Calibrated as every node calibrates a job: the smallest noise whose release the
            // ledger's accountants judge within the target; beside it, what each accountant
            // that applies would need alone.
            let make = |sigma: f64| vec![steps_release(sampling_rate, sigma, steps)];
            let Some(sigma) = privacy::calibrate(make, epsilon, delta) else {
                bail!("no noise multiplier up to 10^6 meets epsilon {epsilon}");
            };
            let s = spent(&make(sigma), delta)?;
            let by: Vec<(&str, f64)> = privacy::ACCOUNTANTS
                .into_iter()
                .filter(|a| s.bound(a).is_some())
                .filter_map(|a| Some((a, privacy::calibrate_by(&make, epsilon, delta, Some(a))?)))
                .collect();
            if json {
                let accountants: Vec<_> = by
                    .iter()
                    .map(|(a, sigma)| serde_json::json!({"accountant": a, "noise_multiplier": sigma}))
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({"noise_multiplier": sigma, "epsilon": s.epsilon, "delta": s.delta, "accountant": s.accountant, "accountants": accountants})
                );
            } else {
                outln!(
                    "noise multiplier = {sigma:.6} (spends epsilon = {:.6} at delta = {:e}, {}: the bound the ledger uses)",
                    s.epsilon,
                    s.delta,
                    s.accountant
                );
                for (a, sigma) in &by {
                    outln!("  {a:<44} noise multiplier {sigma:.6}");
                }
            }
        }
    }
    Ok(())
}

/// Prints a job's privacy plan: what each part gets, the training noise, what a round spends.
pub fn print_plan(job: &JobPrivacy, plan: &JobPlan) {
    outln!(
        "privacy plan: epsilon {} per agency at delta {:e}, over {} round(s) of {} step(s)",
        job.target_epsilon,
        job.delta,
        job.rounds,
        job.steps_per_round
    );
    if plan.statistics_rho > 0.0 {
        outln!(
            "  statistics round: rho {:.6} (alone: epsilon {:.4})",
            plan.statistics_rho,
            plan.statistics
        );
    } else {
        outln!("  statistics round: none");
    }
    if plan.evaluation_epsilon > 0.0 {
        outln!(
            "  evaluations: {} of epsilon {:.4}, of {} (all alone: epsilon {:.4})",
            job.rounds,
            plan.evaluation_epsilon,
            match job.rounds {
                1 => "the final model".to_owned(),
                2 => "the model round 2 starts from and of the final model".to_owned(),
                n => format!("the models rounds 2 to {n} start from and of the final model"),
            },
            plan.evaluation
        );
    } else {
        outln!("  evaluations: off");
    }
    let sampling = match job.sampling_rate {
        None => "full batch".to_owned(),
        Some(q) => format!("Poisson sampling rate {q}"),
    };
    outln!(
        "  training: noise multiplier {:.4}, {sampling} (alone: epsilon {:.4})",
        plan.noise_multiplier,
        plan.training
    );
    outln!(
        "  one round spends at most epsilon {:.4}; the whole job {:.4} ({})",
        plan.round,
        plan.total.epsilon,
        plan.total.accountant
    );
}

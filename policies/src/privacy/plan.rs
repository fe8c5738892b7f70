//! How a training job's privacy target is split between its parts, before it starts: the
//! statistics round that standardises the numeric columns, the evaluations of the global
//! model (one per round: of the models rounds 2 to the last start from, and of the final
//! model), and the training itself, which gets the rest.
//!
//! The default split is in zCDP, where Gaussian releases add up exactly: of the target's rho
//! (the largest rho whose (epsilon, delta) meets the target), [`STATISTICS_SHARE`] goes to the
//! statistics round and [`EVALUATION_SHARE`] to the evaluations (a Laplace release of epsilon
//! counts as epsilon²/2), spread evenly over the rounds; the noise multiplier of training is
//! then calibrated, by the same accountants that judge the ledger, so that the whole job
//! spends at most the target. An operator may set either part; an evaluation epsilon of 0
//! turns evaluations off, and their share goes to training.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{PrivacyError, Release, Spent, calibrate, spent, zcdp};

/// The share of a job's rho its statistics round gets by default.
pub const STATISTICS_SHARE: f64 = 0.1;
/// The share of a job's rho its evaluations get by default, over all rounds.
pub const EVALUATION_SHARE: f64 = 0.1;
/// Each evaluation's epsilon in a job that gives its noise multiplier instead of a target (so
/// has no plan to take a share of).
pub const UNPLANNED_EVALUATION_EPSILON: f64 = 0.05;

/// A training job's privacy, as its operator set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobPrivacy {
    /// The whole job's epsilon per agency.
    pub target_epsilon: f64,
    /// The delta of the target.
    pub delta: f64,
    /// Training rounds.
    pub rounds: u64,
    /// DP-SGD steps per round (full batch: the local epochs; Poisson: epochs / sampling rate).
    pub steps_per_round: u64,
    /// The Poisson sampling rate of each step; `None` for full batches.
    pub sampling_rate: Option<f64>,
    /// Whether the job runs a statistics round.
    pub statistics: bool,
    /// The statistics round's rho; `None` for the default share.
    pub statistics_rho: Option<f64>,
    /// Each round's evaluation epsilon; `None` for the default share, 0 for no evaluations.
    pub evaluation_epsilon: Option<f64>,
}

/// The split of a job's target.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// The statistics round's rho (0 when none runs).
    pub statistics_rho: f64,
    /// Each round's evaluation epsilon (0 when off).
    pub evaluation_epsilon: f64,
    /// Training's noise multiplier (noise standard deviation over the clipping norm).
    pub noise_multiplier: f64,
    /// What each part alone spends, at the job's delta.
    pub statistics: f64,
    /// The evaluations of every round together.
    pub evaluation: f64,
    /// The training steps of every round together.
    pub training: f64,
    /// What one round spends (its training and its evaluation).
    pub round: f64,
    /// What the whole job spends, at most the target.
    pub total: Spent,
}

/// The default parts of a job's target of (`epsilon`, `delta`) over `rounds` rounds: the
/// statistics round's rho and each round's evaluation epsilon.
pub fn default_parts(epsilon: f64, delta: f64, rounds: u64) -> (f64, f64) {
    let rho = zcdp::rho_for(epsilon, delta);
    (
        STATISTICS_SHARE * rho,
        (2.0 * EVALUATION_SHARE * rho / rounds.max(1) as f64).sqrt(),
    )
}

/// The releases of a job with training noise `sigma`.
fn releases(job: &JobPrivacy, statistics_rho: f64, evaluation: f64, sigma: f64) -> Vec<Release> {
    let mut all = Vec::new();
    if statistics_rho > 0.0 {
        all.push(Release::Gaussian {
            rho: statistics_rho,
        });
    }
    all.extend(round(job, evaluation, sigma, job.rounds));
    all
}

/// The releases of `rounds` rounds: their training steps and evaluations.
fn round(job: &JobPrivacy, evaluation: f64, sigma: f64, rounds: u64) -> Vec<Release> {
    let steps = job.steps_per_round.saturating_mul(rounds);
    let mut all = vec![training(job.sampling_rate, sigma, steps)];
    if evaluation > 0.0 {
        all.extend((0..rounds).map(|_| Release::Laplace {
            epsilon: evaluation,
        }));
    }
    all
}

/// `steps` DP-SGD steps of ideal Gaussian noise of multiplier `sigma` ([`dp_sgd`]).
pub fn training(sampling_rate: Option<f64>, sigma: f64, steps: u64) -> Release {
    dp_sgd(sampling_rate, sigma, zcdp::gaussian_rho(sigma), steps)
}

/// What `steps` DP-SGD steps release, each adding Gaussian noise of multiplier `sigma` whose
/// zCDP rho is `rho` (ideal: 1/(2 sigma²); opendp's: with its noise grid): the one description
/// of a DP-SGD release, for the ledger, the plan and `treaty privacy`. Full batches (no
/// sampling rate) compose exactly in zCDP, `steps` times the step's rho; Poisson-subsampled
/// steps are accounted (PLD, RDP) from their sampling rate and noise multiplier.
pub fn dp_sgd(sampling_rate: Option<f64>, sigma: f64, rho: f64, steps: u64) -> Release {
    match sampling_rate {
        None => Release::Gaussian {
            rho: steps as f64 * rho,
        },
        Some(sampling_rate) => Release::SampledGaussian {
            sampling_rate,
            noise_multiplier: sigma,
            steps,
        },
    }
}

/// Splits `job`'s target: the default shares for what the operator left unset, the training
/// noise calibrated to the rest. A pure function of `job`, remembered: a node plans every round
/// of a job alike, and the calibration (a search over the accountants) is the costly part.
/// One job is planned once at a time: the agencies a process hosts receive a job's first task
/// together, and the first to ask plans it while the others wait for its answer (at 1,000
/// agencies, each planning it afresh made the first round a fifth slower).
pub fn plan(job: &JobPrivacy) -> Result<JobPlan, PrivacyError> {
    type Slot = Arc<Mutex<Option<JobPlan>>>;
    static PLANS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let plans = PLANS.get_or_init(Default::default);
    // The Debug form writes each figure in its shortest round-trip form: one key per job.
    let key = format!("{job:?}");
    let slot = {
        let mut plans = plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= 256 && !plans.contains_key(&key) {
            plans.clear();
        }
        Arc::clone(plans.entry(key).or_default())
    };
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(plan) = slot.as_ref() {
        return Ok(plan.clone());
    }
    // A job that cannot be planned is not remembered: the next to ask is told why afresh.
    #[cfg(test)]
    tests::planned_afresh(job);
    let plan = plan_afresh(job)?;
    *slot = Some(plan.clone());
    Ok(plan)
}

fn plan_afresh(job: &JobPrivacy) -> Result<JobPlan, PrivacyError> {
    let (epsilon, delta) = (job.target_epsilon, job.delta);
    if !(epsilon.is_finite() && epsilon > 0.0 && delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Invalid(format!(
            "the target ({epsilon}, {delta}) must have a positive epsilon and a delta in (0, 1)"
        )));
    }
    if job.rounds == 0 || job.steps_per_round == 0 {
        return Err(PrivacyError::Invalid(
            "a job needs at least one round of at least one step".into(),
        ));
    }
    let (default_statistics, default_evaluation) = default_parts(epsilon, delta, job.rounds);
    let statistics_rho = match (job.statistics, job.statistics_rho) {
        (false, _) => 0.0,
        (true, Some(r)) => r,
        (true, None) => default_statistics,
    };
    let evaluation = job.evaluation_epsilon.unwrap_or(default_evaluation);
    if !(statistics_rho.is_finite() && statistics_rho >= 0.0 && evaluation.is_finite())
        || evaluation < 0.0
    {
        return Err(PrivacyError::Invalid(format!(
            "the statistics rho {statistics_rho} and the evaluation epsilon {evaluation} must be finite and not negative"
        )));
    }
    let sigma = calibrate(
        |sigma| releases(job, statistics_rho, evaluation, sigma),
        epsilon,
        delta,
    )
    .ok_or_else(|| {
        PrivacyError::Invalid(format!(
            "the statistics round and the evaluations alone spend more than epsilon {epsilon}: lower the statistics rho or the evaluation epsilon"
        ))
    })?;
    let alone = |releases: &[Release]| spent(releases, delta).map(|s| s.epsilon);
    let statistics = if statistics_rho > 0.0 {
        alone(&[Release::Gaussian {
            rho: statistics_rho,
        }])?
    } else {
        0.0
    };
    let evaluations: Vec<Release> = (0..job.rounds)
        .map(|_| Release::Laplace {
            epsilon: evaluation,
        })
        .collect();
    Ok(JobPlan {
        statistics_rho,
        evaluation_epsilon: evaluation,
        noise_multiplier: sigma,
        statistics,
        evaluation: if evaluation > 0.0 {
            alone(&evaluations)?
        } else {
            0.0
        },
        training: alone(&[training(
            job.sampling_rate,
            sigma,
            job.steps_per_round * job.rounds,
        )])?,
        round: alone(&round(job, evaluation, sigma, 1))?,
        total: spent(&releases(job, statistics_rho, evaluation, sigma), delta)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job() -> JobPrivacy {
        JobPrivacy {
            target_epsilon: 1.0,
            delta: 1e-5,
            rounds: 20,
            steps_per_round: 5,
            sampling_rate: None,
            statistics: true,
            statistics_rho: None,
            evaluation_epsilon: None,
        }
    }

    /// The largest `mu` of a Gaussian mechanism (sensitivity over noise) that is (1, 1e-5)-DP:
    /// bisection on Balle and Wang's (2018) exact curve
    /// `delta = Phi(mu/2 - e/mu) - e^e Phi(-mu/2 - e/mu)`, written here apart from the
    /// accountants' own code.
    fn largest_mu() -> f64 {
        let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let delta = |mu: f64| phi(mu / 2.0 - 1.0 / mu) - 1f64.exp() * phi(-mu / 2.0 - 1.0 / mu);
        let (mut low, mut high) = (0.01, 10.0);
        for _ in 0..200 {
            let mid = (low + high) / 2.0;
            if delta(mid) > 1e-5 {
                high = mid
            } else {
                low = mid
            }
        }
        low
    }

    /// The default split of a full-batch job is made in zCDP's rho; the training noise is the
    /// least that keeps the whole job within its target by the tightest accountant: at most
    /// zCDP's closed form (the parts' rhos adding up to the target's), at least what the
    /// Gaussian releases alone need (adding the evaluations can only cost more).
    #[test]
    fn the_default_split_of_a_full_batch_job_lies_between_its_closed_forms() {
        let p = plan(&job()).unwrap();
        // The split is checked in rho, where full batches compose exactly.
        let rho = zcdp::rho_for(1.0, 1e-5);
        assert!((p.statistics_rho - 0.1 * rho).abs() < 1e-15);
        // 20 evaluations of epsilon e cost 20 e²/2 = 10 % of rho.
        assert!((20.0 * p.evaluation_epsilon.powi(2) / 2.0 - 0.1 * rho).abs() < 1e-12);
        // zCDP: 100 steps of rho 1/(2 sigma²) take the remaining 80 %.
        let by_zcdp = (100.0 / (2.0 * 0.8 * rho)).sqrt();
        // The statistics and training Gaussians compose into one of mu² = 2 rho_s + 100/sigma².
        let mu = largest_mu();
        let at_least = (100.0 / (mu * mu - 2.0 * p.statistics_rho)).sqrt();
        assert!(
            at_least < p.noise_multiplier && p.noise_multiplier < by_zcdp,
            "{at_least} < {} < {by_zcdp}",
            p.noise_multiplier
        );
        assert!(p.total.epsilon <= 1.0 + 1e-9);
        assert!(p.total.epsilon > 0.999);
        // Each part alone spends less than the whole, and one round far less.
        assert!(p.statistics < p.total.epsilon && p.training < p.total.epsilon);
        assert!(p.round < p.training);
    }

    /// What the operator sets is kept: no statistics round, evaluations off. The job is then
    /// one Gaussian mechanism of `mu = 10 / sigma`, whose exact curve the plan meets.
    #[test]
    fn parts_set_by_the_operator_are_kept_and_zero_turns_evaluations_off() {
        let p = plan(&JobPrivacy {
            statistics: false,
            evaluation_epsilon: Some(0.0),
            ..job()
        })
        .unwrap();
        assert_eq!((p.statistics_rho, p.evaluation_epsilon), (0.0, 0.0));
        assert_eq!((p.statistics, p.evaluation), (0.0, 0.0));
        let expected = 10.0 / largest_mu();
        assert!(
            (p.noise_multiplier / expected - 1.0).abs() < 1e-5,
            "{} vs {expected}",
            p.noise_multiplier
        );
    }

    #[test]
    fn a_target_the_other_parts_exhaust_is_refused() {
        let error = plan(&JobPrivacy {
            statistics_rho: Some(1.0),
            ..job()
        })
        .unwrap_err();
        assert!(error.to_string().contains("statistics"), "{error}");
        assert!(
            plan(&JobPrivacy {
                target_epsilon: 0.0,
                ..job()
            })
            .is_err()
        );
    }

    /// Poisson jobs are planned by the tightest accountant (PLD): the plan meets the target too.
    #[test]
    fn a_poisson_job_meets_its_target() {
        let p = plan(&JobPrivacy {
            sampling_rate: Some(0.01),
            steps_per_round: 100,
            ..job()
        })
        .unwrap();
        assert!(p.total.epsilon <= 1.0 + 1e-9, "{p:?}");
        assert!(
            p.noise_multiplier > 0.5 && p.noise_multiplier < 20.0,
            "{p:?}"
        );
    }

    /// How many times each job (by its target epsilon) was planned afresh, in this process.
    fn afresh() -> &'static Mutex<HashMap<u64, usize>> {
        static AFRESH: OnceLock<Mutex<HashMap<u64, usize>>> = OnceLock::new();
        AFRESH.get_or_init(Default::default)
    }

    pub(super) fn planned_afresh(job: &JobPrivacy) {
        *afresh()
            .lock()
            .unwrap()
            .entry(job.target_epsilon.to_bits())
            .or_default() += 1;
    }

    /// Agencies hosted in one process receive a job's first task together: the job is planned
    /// once, and every one of them gets that plan.
    #[test]
    fn a_job_asked_for_by_many_at_once_is_planned_once() {
        // A target no other test plans, so that the count is this test's alone.
        let target = 0.8125;
        let asked = JobPrivacy {
            target_epsilon: target,
            sampling_rate: Some(0.05),
            steps_per_round: 20,
            ..job()
        };
        let start = std::sync::Barrier::new(8);
        let plans: Vec<JobPlan> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        plan(&asked).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(afresh().lock().unwrap()[&target.to_bits()], 1);
        assert!(plans.iter().all(|p| *p == plans[0]));
        assert!(plans[0].total.epsilon <= target + 1e-9);
    }
}

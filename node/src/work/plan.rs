//! Planning a task: what it will release and with which noise, decided from the checked task
//! and public figures alone (the agency's declared or the coordinator's estimated number of
//! records, never the table's length), before any record is read for it. The mechanisms are
//! calibrated through opendp here, so planning runs on a blocking thread.

use treaty_policies::privacy::{self, Release};
use treaty_proto::v1::task;

use super::Worker;
use super::checks::{
    Evaluation, InvalidTask, MAX_STEPS_PER_ROUND, Mode, Query, Statistics, Training,
};
use crate::analytics::{self, QueryPlan};
use crate::model::Architecture;
use crate::noise::GaussianNoise;
use crate::refusal::{Refusal, RefusalCode};
use crate::train::{CLIP_MARGIN, DpSgd, Sampling, StepNoise};
use treaty_proto::secagg::{FixedPoint, Params};

/// The default zCDP rho of a statistics round under DP.
const DEFAULT_STATISTICS_RHO: f64 = 0.005;

/// What a task will release, decided before it touches the data: the mechanisms for the
/// ledger, and the checked task with the noise its computation must add.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The mechanisms of everything the task releases.
    pub releases: Vec<Release>,
    /// What the job's next task would release, for the privacy report's "after the next round"
    /// (after a training job's last round: the evaluation of its final model).
    pub next: Vec<Release>,
    pub(super) work: Work,
}

/// A checked task with its noise.
#[derive(Debug, Clone)]
pub(super) enum Work {
    Training(Box<TrainingRound>),
    Statistics(StatisticsRound),
    Query(QueryRound),
    Evaluation(Box<EvaluationRound>),
}

/// A training round: DP-SGD, and the Laplace scale of the noisy evaluation of the global model
/// when the node has a test split and the round is not the first (whose model is the initial
/// one: the job's last evaluation is of its final model instead).
#[derive(Debug, Clone)]
pub(super) struct TrainingRound {
    pub(super) task: Training,
    pub(super) dp: DpSgd,
    pub(super) evaluation: Option<f64>,
    /// Under distributed DP: the round's one release, in the fixed point.
    pub(super) distributed: Option<Distributed>,
}

/// Distributed DP (docs/SECURE_AGGREGATION.md): the round releases the clipped gradient sum at
/// the global model, in the round's fixed point, plus this agency's noise, and its public
/// denominator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Distributed {
    pub(crate) fixed_point: FixedPoint,
    /// The L2 sensitivity of the contribution in the fixed point: `clip 2^bits (1 + margin) +
    /// sqrt(p) / 2` (each record's gradient is rounded to integers before the exact sum).
    pub(crate) sensitivity: f64,
    /// The discrete Gaussian scale of the share every agency adds, in the fixed point.
    pub(crate) scale: f64,
    /// The scale of the whole noise this agency adds on top of its share when its own
    /// assumption is stricter than the job's (the fallback to local noise).
    pub(crate) whole: Option<f64>,
    /// The fewest honest agencies whose shares the round's sum carries, as this agency counts
    /// them (1: its own noise alone).
    pub(crate) honest: u32,
    /// The most agencies this agency assumes dishonest in the round.
    pub(crate) dishonest: u32,
    /// The public figure the sum of gradient sums is divided by.
    pub(crate) denominator: f64,
}

impl Distributed {
    /// The zCDP rho of the round's release as this agency accounts it: the sum of `honest`
    /// shares (Kairouz, Liu and Steinke 2021), or its own whole noise alone.
    fn rho(&self, parameters: usize) -> Option<f64> {
        let (scale, summands) = match self.whole {
            Some(whole) => (whole, 1),
            None => (self.scale, self.honest),
        };
        privacy::zcdp::distributed_discrete_gaussian_rho(
            self.sensitivity,
            scale,
            summands,
            parameters,
        )
    }
}

/// How many honest agencies' shares the sum of a round of `n` agencies with threshold `t`
/// carries if at most `c` are dishonest: `t - c` — the coordinator recovers one sum, of at least
/// `t` contributions — but only while `c < 2t - n`: with more, the coordinator and its
/// colluders can unmask one agency's contribution (docs/SECURE_AGGREGATION.md, "The threshold,
/// and collusion"), which then carries that agency's share alone. Never below 1.
fn honest_shares(n: u32, t: u32, c: u32) -> u32 {
    if c >= (2 * t).saturating_sub(n) {
        return 1;
    }
    t.saturating_sub(c).max(1)
}

/// The evaluation of a training job's final model: the Laplace scale of its noisy counts.
#[derive(Debug, Clone)]
pub(super) struct EvaluationRound {
    pub(super) task: Evaluation,
    pub(super) scale: f64,
}

/// A statistics round: Gaussian noise on the centred column sums divided by their scales.
#[derive(Debug, Clone)]
pub(super) struct StatisticsRound {
    pub(super) task: Statistics,
    pub(super) noise: GaussianNoise,
}

/// A query: Laplace noise on its answer divided by its bounds.
#[derive(Debug, Clone)]
pub(super) struct QueryRound {
    pub(super) task: Query,
    pub(super) plan: QueryPlan,
}

impl Plan {
    /// A training round's distributed DP, if it has one.
    pub(crate) fn distributed(&self) -> Option<Distributed> {
        match &self.work {
            Work::Training(round) => round.distributed,
            _ => None,
        }
    }

    /// The kind of task, as the ledger names it: `training`, `statistics`, `query` or
    /// `evaluation`.
    pub fn kind(&self) -> &'static str {
        match self.work {
            Work::Training(_) => "training",
            Work::Statistics(_) => "statistics",
            Work::Query(_) => "query",
            Work::Evaluation(_) => "evaluation",
        }
    }
}

/// How many counts an evaluation of the task's model releases.
fn evaluation_width(task: &Training) -> usize {
    match task.architecture {
        Architecture::Multinomial { classes } => classes.pow(2),
        Architecture::Linear => treaty_proto::evaluation::BINS,
        Architecture::Logistic | Architecture::Mlp { .. } => 2 * treaty_proto::evaluation::BINS,
    }
}

impl Worker {
    /// Decides what task `kind` of round `round` will release and with which noise, from the
    /// task and public figures alone (the agency's declared or the coordinator's estimated
    /// number of records, never the table's length; whether the agency has a test split, which
    /// its configuration says), before any record is read for it. Calibrates opendp
    /// mechanisms: call it off the async runtime.
    pub fn plan(&self, round: u32, kind: &task::Kind) -> Result<Plan, Refusal> {
        self.plan_round(round, kind, None)
    }

    /// [`Worker::plan`] of a task whose round may be under secure aggregation (`secure`, checked
    /// by `crate::secure::params`).
    pub fn plan_round(
        &self,
        round: u32,
        kind: &task::Kind,
        secure: Option<&Params>,
    ) -> Result<Plan, Refusal> {
        match kind {
            task::Kind::Training(t) => self.training_plan(round, Training::try_from(t)?, secure),
            task::Kind::Evaluation(e) => self.evaluation_plan(Evaluation::try_from(e)?),
            task::Kind::Stats(s) => statistics_plan(Statistics::try_from(s)?),
            task::Kind::Query(q) => {
                let task = Query::try_from(q)?;
                let (plan, epsilon) = analytics::plan(&task.spec)?;
                let releases = vec![Release::Laplace { epsilon }];
                Ok(Plan {
                    next: releases.clone(),
                    releases,
                    work: Work::Query(QueryRound { task, plan }),
                })
            }
        }
    }

    /// The Laplace scale and epsilon of an evaluation of `task`'s model on the test split: none
    /// without a test split or with an evaluation epsilon of 0; unset (a job the coordinator
    /// did not plan) means the old default.
    fn evaluation_noise(&self, task: &Training) -> Result<Option<(f64, f64)>, Refusal> {
        let epsilon = task
            .privacy
            .evaluation_epsilon
            .unwrap_or(privacy::UNPLANNED_EVALUATION_EPSILON);
        Ok(match &self.test {
            Some(_) if epsilon > 0.0 => Some(analytics::laplace_scale_for(
                epsilon,
                evaluation_width(task),
                1.0,
            )?),
            _ => None,
        })
    }

    /// Plans the evaluation of a training job's final model: Laplace noise on the counts, at
    /// the job's evaluation epsilon. A node without a test split, or a job without
    /// evaluations, refuses it (which says nothing of the records).
    fn evaluation_plan(&self, task: Evaluation) -> Result<Plan, Refusal> {
        if self.test.is_none() {
            return Err(Refusal::new(
                RefusalCode::NoTestSplit,
                "this node has no test split (`test` in its [data]), so it evaluates no model",
            ));
        }
        let (scale, epsilon) = self
            .evaluation_noise(&task.training)?
            .ok_or(InvalidTask::NoEvaluation)?;
        Ok(Plan {
            releases: vec![Release::Laplace { epsilon }],
            next: Vec::new(),
            work: Work::Evaluation(Box::new(EvaluationRound { task, scale })),
        })
    }

    /// The public figure for the agency's number of training records: its own declaration,
    /// else the coordinator's estimate carried by the task. Never the table's length.
    fn public_records(&self, from_task: f64) -> Option<f64> {
        match self.public_records {
            Some(n) => Some(n.max(1) as f64),
            None if from_task.is_finite() && from_task >= 1.0 => Some(from_task),
            None => None,
        }
    }

    /// Plans a training round from the task and public figures alone: what it releases, its
    /// sampling, its steps and the constant its noisy sums are divided by. A refusal here
    /// quotes only the task's own figures.
    fn training_plan(
        &self,
        round: u32,
        task: Training,
        secure: Option<&Params>,
    ) -> Result<Plan, Refusal> {
        let (spec, privacy) = (&task.spec, &task.privacy);
        let epochs = u64::from(spec.local_epochs.max(1));
        let records = self.public_records(task.public_records);
        let batch = f64::from(spec.batch_size.max(1));
        let (sampling, steps, denominator) = match task.mode {
            Mode::FullBatch => {
                let n = records.ok_or(InvalidTask::NoPublicRecords("full-batch DP training"))?;
                (Sampling::FullBatch, epochs, n)
            }
            Mode::Poisson => {
                let q = if privacy.sampling_rate > 0.0 {
                    privacy.sampling_rate
                } else {
                    let n = records.ok_or(InvalidTask::NoPublicRecords(
                        "a job without a sampling rate",
                    ))?;
                    (batch / n).min(1.0)
                };
                if !(q > 0.0 && q <= 1.0) {
                    return Err(InvalidTask::SamplingRate(q).into());
                }
                // The expected batch, from public figures: q times the public count, or
                // the job's batch size.
                let denominator = records.map(|n| q * n).unwrap_or(batch);
                (
                    Sampling::Poisson(q),
                    epochs.saturating_mul((1.0 / q).ceil() as u64),
                    denominator,
                )
            }
        };
        if steps > MAX_STEPS_PER_ROUND {
            return Err(InvalidTask::TooManySteps(steps).into());
        }
        // The evaluation of the global model on the test split: Laplace noise on its counts.
        // The job's `rounds` evaluations are of the models of rounds 2 to `rounds` and of the
        // final model; the noise is calibrated for all of them, whichever take place.
        let evaluation = self.evaluation_noise(&task)?;
        let distributed_noise = spec.secure_aggregation.is_some_and(|s| s.distributed_noise);
        let sigma = if privacy.noise_multiplier > 0.0 {
            privacy.noise_multiplier
        } else {
            // Calibrate the whole job to its target (its statistics round when it ran under
            // DP, every round's training and evaluation) by the job's privacy plan, the one
            // `treaty job train` and `treaty privacy plan` show; a hair more noise covers the
            // noise grid.
            let (epsilon, delta) = (privacy.target_epsilon, privacy.target_delta);
            if !(epsilon > 0.0 && delta > 0.0 && delta < 1.0) {
                return Err(InvalidTask::NoNoise.into());
            }
            let rounds = u64::from(spec.rounds.max(1));
            let job = privacy::JobPrivacy {
                target_epsilon: epsilon,
                delta,
                rounds,
                steps_per_round: steps,
                sampling_rate: match sampling {
                    Sampling::FullBatch => None,
                    Sampling::Poisson(q) => Some(q),
                },
                statistics: privacy.statistics_round_rho > 0.0,
                statistics_rho: Some(privacy.statistics_round_rho),
                evaluation_epsilon: Some(match distributed_noise {
                    // Every agency of a round of distributed DP must add the same share: its
                    // noise is calibrated as if it evaluated, test split or not.
                    true => privacy
                        .evaluation_epsilon
                        .unwrap_or(privacy::UNPLANNED_EVALUATION_EPSILON),
                    false => evaluation.map_or(0.0, |(_, epsilon)| epsilon),
                }),
            };
            // The plan's reason names the job's own figures alone.
            let plan = privacy::plan(&job).map_err(|e| InvalidTask::Uncalibrated {
                epsilon,
                steps: steps * rounds,
                reason: e.to_string(),
            })?;
            plan.noise_multiplier * (1.0 + 1e-6)
        };
        let noise = GaussianNoise {
            sensitivity: privacy.clip_norm,
            noise_multiplier: sigma,
        };
        let distributed = match task.spec.secure_aggregation {
            Some(s) if s.distributed_noise => Some(self.distributed(
                &task,
                secure.ok_or(InvalidTask::DistributedWithoutSecureAggregation)?,
                s.assumed_dishonest,
                sigma,
                denominator,
            )?),
            _ => None,
        };
        let rho = match &distributed {
            // The sum's rho, under the agency's assumption.
            Some(d) => d
                .rho(task.parameters)
                .ok_or(InvalidTask::DistributedScale(d.scale))?,
            // opendp's rho includes the noise grid.
            None => noise.rho(task.parameters).map_err(Refusal::internal)?,
        };
        // The effective noise multiplier is the one the rho implies.
        let training = sampling.release(StepNoise::measured(rho), steps);
        let evaluating = evaluation.map(|(_, epsilon)| Release::Laplace { epsilon });
        let evaluates = round >= 2;
        let releases: Vec<Release> = std::iter::once(training)
            .chain(evaluating.filter(|_| evaluates))
            .collect();
        // After the last round, the evaluation of the final model; before it, a round that
        // trains and evaluates.
        let next: Vec<Release> = if round >= spec.rounds.max(1) {
            evaluating.into_iter().collect()
        } else {
            std::iter::once(training).chain(evaluating).collect()
        };
        Ok(Plan {
            releases,
            next,
            work: Work::Training(Box::new(TrainingRound {
                task,
                dp: DpSgd {
                    sampling,
                    steps,
                    noise,
                    denominator: denominator.max(1.0),
                },
                evaluation: evaluation.map(|(scale, _)| scale).filter(|_| evaluates),
                distributed,
            })),
        })
    }

    /// The distributed DP of a round of secure aggregation `secure` whose job assumes at most
    /// `job_dishonest` agencies dishonest, for noise of multiplier `sigma`. Every honest agency
    /// adds the same share, set by the job's assumption — `σ Δ / sqrt(h)` with `h` the honest
    /// shares the job's assumption guarantees ([`honest_shares`]) — so that the sum of `h` of
    /// them is the whole noise. An agency that assumes more dishonest agencies than the job (its
    /// own `[secure_aggregation] assume_dishonest`; without one, every other agency) cannot
    /// count on the others' shares: it adds its whole noise on top of its share and accounts for
    /// that alone — the fallback to local noise.
    fn distributed(
        &self,
        task: &Training,
        secure: &Params,
        job_dishonest: u32,
        sigma: f64,
        denominator: f64,
    ) -> Result<Distributed, Refusal> {
        treaty_proto::secagg::one_linear_step(&task.spec).map_err(InvalidTask::NotLinear)?;
        if secure.length != task.parameters + 1 {
            return Err(Refusal::invalid(format!(
                "under distributed noise a contribution is the model's {} parameters and a denominator, but the round's secure aggregation says {} values",
                task.parameters, secure.length
            )));
        }
        let n = secure.participants.len() as u32;
        let t = secure.threshold as u32;
        let job = job_dishonest.min(n.saturating_sub(1));
        let own = self
            .assume_dishonest
            .unwrap_or(n.saturating_sub(1))
            .min(n.saturating_sub(1));
        let fixed_point = secure.fixed_point();
        let sensitivity = task.privacy.clip_norm * fixed_point.unit() * (1.0 + CLIP_MARGIN)
            + (task.parameters as f64).sqrt() / 2.0;
        let whole = sigma * sensitivity;
        let shares = honest_shares(n, t, job);
        let scale = whole / f64::from(shares).sqrt();
        // Stricter than the job: the others' shares may be too few; its own whole noise too.
        let fallback = own > job && shares > 1;
        let (honest, dishonest) = match fallback || shares == 1 {
            // Its own noise alone, under the stricter of the two assumptions.
            true => (1, own.max(job)),
            false => (shares, job),
        };
        if !whole.is_finite() || scale.is_nan() || scale < 0.5 {
            return Err(InvalidTask::DistributedScale(scale).into());
        }
        if denominator.is_nan() || denominator > fixed_point.bound() / 2.0 {
            return Err(InvalidTask::DenominatorRange(denominator).into());
        }
        Ok(Distributed {
            fixed_point,
            sensitivity,
            scale,
            whole: fallback.then_some(whole),
            honest,
            dishonest,
            denominator,
        })
    }
}

/// The plan of a statistics round under DP. Every numeric column has bounds: with c the centre
/// and R the half-range of its transformed bounds (public, from the schema), a record adds at
/// most 1 to a column's count, R to the sum of its deviations from c and R^2 to the sum of
/// their squares. Each sum is divided by that bound before the noise, so that every coordinate
/// has sensitivity 1 and the vector `sqrt(3 columns)`, then multiplied back: each statistic gets
/// noise in proportion to its own scale.
fn statistics_plan(task: Statistics) -> Result<Plan, Refusal> {
    let rho_target = match task.privacy.statistics_rho {
        Some(rho) if rho > 0.0 => rho,
        _ => DEFAULT_STATISTICS_RHO,
    };
    let width = task.scales.len();
    let noise = GaussianNoise {
        sensitivity: (width as f64).sqrt(),
        noise_multiplier: (1.0 / (2.0 * rho_target)).sqrt(),
    };
    let rho = noise.rho(width).map_err(Refusal::internal)?;
    let releases = vec![Release::Gaussian { rho }];
    Ok(Plan {
        next: releases.clone(),
        releases,
        work: Work::Statistics(StatisticsRound { task, noise }),
    })
}

//! Running jobs: a training job's statistics round, its training rounds and the evaluation of
//! its final model, a query's single round; aggregation by the job's strategy; model versions
//! with their provenance; the metrics of noisy evaluations with their intervals.
//!
//! A job's state is stored after every step, so a coordinator that restarts resumes each running
//! job at the first step that had not completed.

use std::sync::{Arc, Mutex};

use treaty_proto::evaluation;
use treaty_proto::schema::{self, TransformedBounds};
use treaty_proto::tensor::{self, NamedTensor};
use treaty_proto::v1::{
    ColumnStats, EvaluationTask, Job, JobEventKind, JobState, QueryTask, RoundSummary, StatsTask,
    TrainingTask, task,
};

use crate::aggregate::{self, Accumulator, Grid, MAX_PARAMETER};
use crate::error::CoordinatorError;
use crate::federation::members;
use crate::models;
use crate::rounds::{self, round_line, shown};
use crate::service::carried_model;
use crate::state::{Coordinator, audit_entry, now_ms};
use crate::tasks::{Intake, TaskResult};
use crate::valid_job::{
    Combination, InvalidJob, JobProblem, RoundRules, ValidJob, ValidQuery, ValidTraining, Work,
};
use crate::{analytics, answers};

/// Starts the job's runner on its own task.
pub(crate) fn spawn(ctx: Arc<Coordinator>, job_id: String) {
    tokio::spawn(async move {
        let result = tokio::select! {
            r = run(&ctx, &job_id) => r,
            _ = ctx.shutdown.cancelled() => {
                tracing::info!(job = %job_id, "coordinator shutting down; the job resumes at the next start");
                return;
            }
        };
        ctx.approvals.forget(&job_id);
        if let Err(error) = result {
            tracing::error!(job = %job_id, %error, "job failed");
            if let Err(e) = record_failure(&ctx, &job_id, error.to_string()).await {
                tracing::error!(job = %job_id, error = %e, "the job's failure could not be recorded");
            }
        }
    });
}

/// Marks a job failed for `message`: stored, audited and told to its watchers.
async fn record_failure(
    ctx: &Arc<Coordinator>,
    job_id: &str,
    message: String,
) -> Result<(), CoordinatorError> {
    let id = job_id.to_owned();
    let Some(mut job) = ctx.blocking(move |ctx| ctx.store.job(&id)).await? else {
        return Ok(());
    };
    job.state = JobState::Failed as i32;
    job.message = message;
    let stored = ctx.save_job(&job).await;
    let audited = match &stored {
        Ok(()) => {
            ctx.save_audit(
                &ctx.identity.to_string(),
                "job.failed",
                &job,
                0,
                "",
                job.message.clone(),
            )
            .await
        }
        Err(_) => Ok(()),
    };
    ctx.emit(
        &job,
        JobEventKind::JobFailed,
        0,
        "",
        format!("job failed: {}", job.message),
    );
    stored.and(audited)
}

async fn run(ctx: &Arc<Coordinator>, job_id: &str) -> Result<(), CoordinatorError> {
    let id = job_id.to_owned();
    let mut job = ctx
        .blocking(move |ctx| ctx.store.job(&id))
        .await?
        .ok_or_else(|| CoordinatorError::UnknownJob {
            job: job_id.to_owned(),
        })?;
    // The store is an edge too: the spec is decoded once, here, for the whole run.
    // On a blocking thread: a calibrated job's check plans its noise (compositions of
    // privacy-loss distributions, tens of milliseconds).
    let (spec, id) = (job.spec.clone().unwrap_or_default(), job_id.to_owned());
    let ValidJob { rules, work } = ctx
        .blocking(move |_| {
            ValidJob::try_from(spec)
                .map_err(|source| CoordinatorError::StoredJob { job: id, source })
        })
        .await?;
    // Resume: a round that started but did not complete is run again (only completed rounds
    // are stored).
    let resumed = job.state == JobState::Running as i32;
    job.state = JobState::Running as i32;
    ctx.save_job(&job).await?;
    if resumed {
        ctx.emit(
            &job,
            JobEventKind::JobResumed,
            0,
            "",
            format!("job resumed after round {}", job.rounds_completed),
        );
    } else {
        ctx.emit(
            &job,
            JobEventKind::JobStarted,
            0,
            "",
            "job started".to_owned(),
        );
    }
    match work {
        Work::Training(spec) => train(ctx, &mut job, &rules, spec).await?,
        Work::Query(spec) => {
            if job.rounds_completed == 0 {
                query(ctx, &mut job, &rules, spec).await?;
            }
        }
    }
    job.state = JobState::Succeeded as i32;
    ctx.save_job(&job).await?;
    ctx.save_audit(
        &ctx.identity.to_string(),
        "job.succeeded",
        &job,
        0,
        "",
        String::new(),
    )
    .await?;
    ctx.emit(
        &job,
        JobEventKind::JobSucceeded,
        0,
        "",
        format!("job succeeded after {} round(s)", job.rounds_completed),
    );
    Ok(())
}

/// Stores the job's spec as it is now (after the statistics round filled it in).
fn set_training_spec(job: &mut Job, rules: &RoundRules, spec: &ValidTraining) {
    job.spec = Some(
        ValidJob {
            rules: rules.clone(),
            work: Work::Training(spec.clone()),
        }
        .to_spec(),
    );
}

async fn train(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    rules: &RoundRules,
    mut spec: ValidTraining,
) -> Result<(), CoordinatorError> {
    if spec.needs_statistics() {
        let stats = statistics(ctx, job, rules, &spec).await?;
        spec.set_standardization(stats);
        set_training_spec(job, rules, &spec);
        ctx.save_job(job).await?;
    }
    if job.latest_model_version.is_empty() {
        let version = format!("{}/r0", job.job_id);
        let (job_id, v, s) = (job.job_id.clone(), version.clone(), spec.clone());
        let digest = ctx
            .blocking(move |ctx| {
                let model = models::initial_model(&s).map_err(|e| CoordinatorError::StoredJob {
                    job: job_id.clone(),
                    source: InvalidJob {
                        problems: vec![JobProblem::Enum(e)],
                    },
                })?;
                models::store(&ctx.store, &job_id, &s.to_spec(), 0, &v, model, &[], None)
            })
            .await?;
        job.latest_model_version = version.clone();
        ctx.save_job(job).await?;
        // The log records the initial model's digest, as each round's entry records its model's.
        ctx.save_audit_documents(
            "model.initialized",
            job,
            0,
            format!("the initial model {version}"),
            vec![digest],
        )
        .await?;
    }
    let settings = spec.settings;
    let shape = evaluation::shape(&spec.to_spec()).map_err(|e| CoordinatorError::StoredJob {
        job: job.job_id.clone(),
        source: InvalidJob {
            problems: vec![JobProblem::Enum(e)],
        },
    })?;
    // The grid of the rounds' exact sums: a round's total weight is at most its federation's
    // members times the examples one result may claim.
    let name = job.federation.clone();
    let members = ctx
        .blocking(move |ctx| ctx.store.federation(&name))
        .await?
        .map(|f| members(&f).len())
        .unwrap_or(0);
    let grid = Grid::for_round(members, ctx.limits.max_records_per_agency);
    // Under secure aggregation each update arrives masked and only the round's sum is
    // recovered (the job's check refused every strategy that needs more).
    let secure = spec.secure_aggregation();
    let streams = settings.streams() && secure.is_none();
    let intake = if streams || secure.is_some() {
        Intake::Staged
    } else {
        Intake::Whole
    };
    while job.rounds_completed < spec.rounds() {
        let round = job.rounds_completed + 1;
        let latest = job.latest_model_version.clone();
        let (global, state, carried) = ctx
            .blocking(move |ctx| {
                let (global, state) = models::load(&ctx.store, &latest)?;
                // A small model goes with the task (no download); a large one is downloaded.
                let carried = carried_model(ctx, &latest)?;
                Ok::<_, CoordinatorError>((global, state, carried))
            })
            .await?;
        let wire = spec.to_spec();
        let learning_rate = wire.learning_rate;
        let kind = task::Kind::Training(TrainingTask {
            spec: Some(wire.clone()),
            model_version: job.latest_model_version.clone(),
            // Set for each agency when the task is sent.
            public_records: 0.0,
            model: carried,
        });
        let global = Arc::new(global);
        // FedAvg and the server optimisers: each update is folded into the round's exact sum
        // once it passes its checks, and its staged bytes dropped.
        let parameters = global.iter().map(|t| t.values.len()).sum();
        let sum = streams.then(|| Arc::new(Mutex::new(Accumulator::new(parameters, grid))));
        let (checked, folded) = (Arc::clone(&global), sum.clone());
        let masked = secure.is_some();
        // Under distributed noise each contribution is the model's layout and a denominator.
        let distributed = secure.is_some_and(|s| s.distributed_noise);
        let layout = treaty_proto::secagg::layout(&global, distributed);
        let check = move |r: &mut TaskResult| {
            match masked {
                true => check_masked(&layout, r)?,
                false => check_update(&checked, r)?,
            }
            if let Some(e) = &r.evaluation {
                evaluation::check(e, shape)?;
            }
            // Under secure aggregation there is no sum here: the masked update stays staged for
            // the round's masked sum.
            if let Some(sum) = &folded
                && let Some(staged) = r.staged.take()
            {
                let mut sum = sum.lock().unwrap_or_else(|e| e.into_inner());
                sum.fold(r.num_examples, staged.tensors.values());
            }
            Ok(())
        };
        let secure_ask = secure.map(|spec| rounds::SecureAsk {
            spec,
            length: parameters + usize::from(distributed),
        });
        let collected =
            rounds::collect(ctx, job, rules, round, kind, intake, secure_ask, check).await?;
        let last_received = collected.last_received;
        let secure_sum = collected.secure_sum.clone();
        let (mut summary, results) = with_evaluation_metrics(
            collected.summary,
            collected.results,
            job.latest_model_version.clone(),
        )
        .await?;
        let version = format!("{}/r{round}", job.job_id);
        // The round's checks are done: the sum is taken out for the aggregation.
        let sum = sum.map(|sum| {
            let mut sum = sum.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *sum, Accumulator::new(0, grid))
        });
        // Aggregating and storing the new version take time and sled writes: off the runtime.
        let (job_id, v, contributors) = (
            job.job_id.clone(),
            version.clone(),
            summary.contributors.clone(),
        );
        let (note, digest) = ctx
            .blocking(move |ctx| {
                let mut state = state;
                let (model, note) = match (secure_sum, sum) {
                    // The sum of the survivors' updates (each its local model minus the global
                    // one), to the fixed point's rounding: their mean added to the global model.
                    (Some(sum), _) => {
                        let global_flat = aggregate::flatten(&global);
                        let mean = match distributed {
                            // Distributed DP: the survivors' noisy gradient sums over the sum of
                            // their public denominators, one step of the job's learning rate.
                            true => distributed_step(&global_flat, &sum, learning_rate)
                                .map_err(|problem| CoordinatorError::SecureAggregation {
                                    what: format!("round {round}"),
                                    problem,
                                })?,
                            false => {
                                let n = contributors.len().max(1) as f64;
                                ndarray::Array1::from_iter(
                                    global_flat.iter().zip(&sum).map(|(g, d)| g + d / n),
                                )
                            }
                        };
                        // The coordinator never saw an update: what it can check is the mean.
                        // An agency that sent values no honest node would (beyond the fixed
                        // point's clamp) can push it anywhere; a mean beyond what a model may
                        // hold fails the round rather than becoming the model.
                        if let Some(i) = mean
                            .iter()
                            .position(|v| !v.is_finite() || v.abs() > aggregate::MAX_PARAMETER)
                        {
                            return Err(CoordinatorError::SecureAggregation {
                                what: format!("round {round}"),
                                problem: format!(
                                    "the survivors' mean model has parameter {i} beyond {:e}: an agency sent values no honest node sends, and the round's sum is not used",
                                    aggregate::MAX_PARAMETER
                                ),
                            });
                        }
                        let model = aggregate::server_step(&settings, &global, mean, &mut state);
                        (aggregate::into_tensors(model, &global), String::new())
                    }
                    (None, Some(sum)) => {
                        let mean = sum.into_mean();
                        let model = aggregate::server_step(&settings, &global, mean, &mut state);
                        (aggregate::into_tensors(model, &global), String::new())
                    }
                    (None, None) => {
                        let locals: Vec<(u64, &[NamedTensor])> = results
                            .iter()
                            .map(|(_, r)| (r.num_examples, r.tensors.as_slice()))
                            .collect();
                        let (model, note) =
                            aggregate::aggregate(&settings, grid, &global, &locals, &mut state);
                        (model, note)
                    }
                };
                if let Some(at) = last_received {
                    tracing::info!(
                        job = %job_id,
                        round,
                        aggregation = settings.aggregation.as_str_name(),
                        contributors = contributors.len(),
                        grid_bits = grid.fraction_bits(),
                        aggregate_ready_ms = at.elapsed().as_secs_f64() * 1e3,
                        "round {round} aggregated"
                    );
                }
                let digest = models::store(
                    &ctx.store,
                    &job_id,
                    &wire,
                    round,
                    &v,
                    model,
                    &contributors,
                    state.as_ref(),
                )?;
                Ok((note, digest))
            })
            .await?;
        summary.model_version = version.clone();
        job.latest_model_version = version;
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(
                "; {} aggregation {note}",
                settings.aggregation.as_str_name()
            )
        };
        complete_round(ctx, job, summary, &note, vec![digest]).await?;
    }
    final_evaluation(ctx, job, rules, &spec, shape).await
}

/// After the last round: the final model evaluated on the agencies' test splits under DP, at
/// the job's evaluation epsilon (the job's last planned evaluation: round 1 evaluates nothing,
/// its model being the initial one). A final model that cannot be evaluated (too few agencies
/// connected, admitted or with a test split) does not fail the job: the event says why.
async fn final_evaluation(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    rules: &RoundRules,
    spec: &ValidTraining,
    shape: (&'static str, u32, usize),
) -> Result<(), CoordinatorError> {
    let epsilon = spec.privacy.evaluation_epsilon.unwrap_or(0.0);
    if job.final_evaluation.is_some() || epsilon.is_nan() || epsilon <= 0.0 {
        return Ok(());
    }
    let round = spec.rounds() + 1;
    let version = job.latest_model_version.clone();
    // The round is judged by the policies at what it spends (opendp's noise grid aside).
    let mut rules = rules.clone();
    rules.sharing.epsilon_per_round = epsilon * 1.001;
    // A small final model goes with the task. One that cannot be read here is not carried: the
    // nodes then ask for it and say whether they could have it (the job is not failed for it).
    let latest = version.clone();
    let carried = match ctx.blocking(move |ctx| carried_model(ctx, &latest)).await {
        Ok(carried) => carried,
        Err(error) => {
            tracing::warn!(job = %job.job_id, version, %error, "the final model cannot be read to go with its evaluation's tasks");
            Vec::new()
        }
    };
    let kind = task::Kind::Evaluation(EvaluationTask {
        spec: Some(spec.to_spec()),
        model_version: version.clone(),
        model: carried,
    });
    let check = move |r: &mut TaskResult| match &r.evaluation {
        Some(_) if !r.tensors.is_empty() => Err("an evaluation's result carries tensors".into()),
        Some(e) => evaluation::check(e, shape),
        None => Err("the result carries no evaluation".into()),
    };
    let collected =
        rounds::collect(ctx, job, &rules, round, kind, Intake::Whole, None, check).await;
    let collected = match collected {
        Ok(collected) => collected,
        Err(
            e @ (CoordinatorError::TooFewConnected { .. }
            | CoordinatorError::TooFewAdmitted { .. }
            | CoordinatorError::TooFewResults { .. }),
        ) => {
            let line = format!("the final model {version} was not evaluated: {e}");
            ctx.save_audit(
                &ctx.identity.to_string(),
                "model.not_evaluated",
                job,
                round,
                "",
                line.clone(),
            )
            .await?;
            ctx.emit(job, JobEventKind::ModelEvaluated, round, "", line);
            return Ok(());
        }
        Err(other) => return Err(other),
    };
    let (mut summary, _) =
        with_evaluation_metrics(collected.summary, collected.results, version.clone()).await?;
    summary.finished_unix_ms = now_ms();
    let line = format!("the final model {version}: {}", round_line(&summary));
    job.final_evaluation = Some(summary.clone());
    ctx.save_job(job).await?;
    ctx.save_audit_round(
        "model.evaluated",
        job,
        round,
        line.clone(),
        &summary.results_sha256,
    )
    .await?;
    ctx.emit_summary(job, JobEventKind::ModelEvaluated, &summary, line);
    Ok(())
}

/// The statistics round: every member's clamped column sums, combined into the federation's
/// mean and standard deviation of each numeric column. No record leaves a node.
async fn statistics(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    rules: &RoundRules,
    spec: &ValidTraining,
) -> Result<Vec<ColumnStats>, CoordinatorError> {
    let numeric = schema::numeric_columns(&spec.schema);
    // The public centre and half-range of each column, as the nodes derive them. A column
    // without bounds (which no node sums under DP) has none.
    let bounds: Vec<Option<TransformedBounds>> = numeric
        .iter()
        .map(|c| schema::transformed_bounds(c).ok().flatten())
        .collect();
    let width = numeric.len();
    let kind = task::Kind::Stats(StatsTask {
        schema: Some(spec.schema.clone()),
        privacy: Some(spec.privacy),
    });
    // Noisy sums (under DP) may be negative or exceed the records; they are combined as they are
    // and the combination clamps what must be non-negative.
    let check = move |r: &mut TaskResult| match r.tensors.as_slice() {
        [t] if t.name == "stats" && t.values.shape() == [width, 3] => Ok(()),
        _ => Err(format!(
            "statistics must be one tensor `stats` of shape [{width}, 3]"
        )),
    };
    let collected = rounds::collect(ctx, job, rules, 0, kind, Intake::Whole, None, check).await?;
    // Each agency's public record estimate: the largest of its noisy column counts, rounded
    // (post-processing of its DP release; nodes never use their true count).
    job.public_records = collected
        .results
        .iter()
        .map(|(agency, r)| {
            let largest = r.tensors[0]
                .values
                .rows()
                .into_iter()
                .map(|row| row[0])
                .fold(1.0f64, f64::max);
            (agency.clone(), largest.round())
        })
        .collect();
    let mut totals = vec![[0.0f64; 3]; width];
    for (_, r) in &collected.results {
        for (total, row) in totals.iter_mut().zip(r.tensors[0].values.rows()) {
            for (t, v) in total.iter_mut().zip(row.iter()) {
                *t += v;
            }
        }
    }
    // The noise on the pooled sums, each divided by its sensitivity: every contributor's, as
    // its plan calibrates it (node/src/work/plan.rs: 3 coordinates of sensitivity 1 per
    // column, L2 sensitivity sqrt(3 columns), noise multiplier sqrt(1 / (2 rho))).
    let rho = spec.statistics_rho();
    let noise = statistics_noise(width, rho) * (collected.results.len() as f64).sqrt();
    let estimates: Vec<Standardized> = numeric
        .iter()
        .zip(bounds)
        .zip(totals)
        .map(|((c, bounds), sums)| standardize(&c.name, bounds, sums, noise))
        .collect();
    for e in &estimates {
        let Some(line) = e.warning(rho) else { continue };
        tracing::warn!(job = %job.job_id, column = %e.stats.name, "{line}");
        ctx.save_audit(
            &ctx.identity.to_string(),
            "statistics.noisy",
            job,
            0,
            "",
            line.clone(),
        )
        .await?;
        ctx.emit(job, JobEventKind::StatisticsNoisy, 0, "", line);
    }
    let stats: Vec<ColumnStats> = estimates.into_iter().map(|e| e.stats).collect();
    let mut summary = collected.summary;
    summary.finished_unix_ms = now_ms();
    let line = round_line(&summary);
    job.statistics = Some(summary.clone());
    ctx.save_audit_round(
        "statistics.completed",
        job,
        0,
        line.clone(),
        &summary.results_sha256,
    )
    .await?;
    ctx.emit_round_completed(job, &summary, format!("statistics round completed: {line}"));
    Ok(stats)
}

/// The standard deviation of the noise a node adds to each of its statistics divided by its
/// sensitivity, for `columns` numeric columns at zCDP `rho`: the Gaussian mechanism on
/// `3 columns` coordinates of sensitivity 1, so of L2 sensitivity `sqrt(3 columns)`, with noise
/// multiplier `sqrt(1 / (2 rho))`.
fn statistics_noise(columns: usize, rho: f64) -> f64 {
    (3.0 * columns as f64 / (2.0 * rho)).sqrt()
}

/// Why a column's statistics are not to be trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Noisy {
    /// The pooled noisy count is below one record (or not finite).
    NoCount,
    /// The noisy variance is not positive, or not finite.
    NotPositive,
    /// The noisy variance exceeds the most any values within the bounds can have (R²).
    AboveRange,
    /// The noise's standard error of the variance exceeds half of it.
    Imprecise,
}

/// One numeric column's standardisation from the federation's pooled noisy sums.
#[derive(Debug, Clone, PartialEq)]
struct Standardized {
    stats: ColumnStats,
    /// The column's transformed bounds, when it has them.
    bounds: Option<TransformedBounds>,
    /// The variance the noisy sums give, before any fallback or clamp.
    variance: f64,
    /// The standard error the noise alone gives that variance (to first order), when the
    /// column has bounds and a count.
    standard_error: Option<f64>,
    noisy: Option<Noisy>,
}

/// A column's standardisation from its pooled noisy count `n` and sums `s1`, `s2` of the
/// deviations from the centre c of its transformed bounds and of their squares, `noise` being
/// the standard deviation of the noise on `n`, `s1 / R` and `s2 / R²` (R the half-range).
///
/// mean = c + s1 / n and variance = s2 / n - (s1 / n)², then post-processed with what the bounds
/// state: the mean lies within them and the variance is at most R² (Popoviciu's inequality).
/// When the variance is not positive (the noise swamped it), the standard deviation of a uniform
/// on the transformed bounds, `2R / sqrt(12)`, stands in: the spread of the least informative
/// distribution on the range, claiming nothing the schema does not state, between the
/// smallest spread and the largest (R) that values in the range can have. Without a count, the
/// mean is the centre.
///
/// The noise's standard error of the variance, to first order in the noise (e0, e1 R, e2 R²
/// on n, s1, s2, independent): with m = s1 / n and q = s2 / n, the variance moves by
/// (e2 R² - 2 m e1 R - (q - 2m²) e0) / n, so its standard error is
/// `noise / n * sqrt(R⁴ + 4 m² R² + (q - 2 m²)²)`. Centred, m and q are of the order of the
/// spread; uncentred they would be of the mean's order and its square, and the noise
/// of the sum of squares would swamp a narrow column far from 0.
fn standardize(
    name: &str,
    bounds: Option<TransformedBounds>,
    [n, s1, s2]: [f64; 3],
    noise: f64,
) -> Standardized {
    let (centre, half_range) =
        bounds.map_or((0.0, f64::INFINITY), |b| (b.centre(), b.half_range()));
    let uniform = bounds
        .map(|b| (b.upper - b.lower) / 12f64.sqrt())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    let within = |v: f64| match bounds {
        Some(b) => v.max(b.lower).min(b.upper),
        None => v,
    };
    let stats = |mean: f64, std: f64| ColumnStats {
        name: name.to_owned(),
        mean,
        std,
        count: n,
    };
    if !(n.is_finite() && n >= 1.0) {
        return Standardized {
            stats: stats(centre, uniform),
            bounds,
            variance: f64::NAN,
            standard_error: None,
            noisy: Some(Noisy::NoCount),
        };
    }
    let (m, q) = (s1 / n, s2 / n);
    let variance = q - m * m;
    let mean = match centre + m {
        mean if mean.is_finite() => within(mean),
        _ => centre,
    };
    let standard_error = bounds.map(|_| {
        let r2 = half_range * half_range;
        let drift = q - 2.0 * m * m;
        noise / n * (r2 * r2 + 4.0 * m * m * r2 + drift * drift).sqrt()
    });
    let (std, noisy) = if !(variance.is_finite() && variance > 0.0) {
        (uniform, Some(Noisy::NotPositive))
    } else if variance > half_range * half_range {
        (half_range, Some(Noisy::AboveRange))
    } else if standard_error.is_some_and(|se| se.is_nan() || se > variance / 2.0) {
        (variance.sqrt(), Some(Noisy::Imprecise))
    } else {
        (variance.sqrt(), None)
    };
    Standardized {
        stats: stats(mean, std),
        bounds,
        variance,
        standard_error,
        noisy,
    }
}

/// A figure of a warning, to four significant digits.
fn significant(v: f64) -> String {
    let a = v.abs();
    if a.is_finite() && (1e-3..1e6).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.3e}")
    }
}

impl Standardized {
    /// What to tell the operator when the noise dominates the column's statistics, `rho` being
    /// what each node spent on them.
    fn warning(&self, rho: f64) -> Option<String> {
        let noisy = self.noisy?;
        let ColumnStats {
            name,
            mean,
            std,
            count,
        } = &self.stats;
        let (mean, std, count) = (significant(*mean), significant(*std), significant(*count));
        let variance = match self.standard_error {
            Some(se) if se.is_finite() => format!(
                "{} ± {} (the noise's standard error)",
                significant(self.variance),
                significant(se)
            ),
            _ => significant(self.variance),
        };
        let what = match noisy {
            Noisy::NoCount => format!(
                "the noisy count {count} is below one record: mean {mean} (the bounds' centre) \
                 and std {std} (a uniform's on the bounds) stand in"
            ),
            Noisy::NotPositive => format!(
                "the noisy variance {variance} is not a positive number: std {std}, a uniform's \
                 on the bounds, stands in (mean {mean})"
            ),
            Noisy::AboveRange => format!(
                "the noisy variance {variance} exceeds what values within the bounds can have: \
                 std {std}, the bounds' half-range, stands in (mean {mean})"
            ),
            Noisy::Imprecise => format!(
                "the noisy variance {variance} is less than twice its standard error: mean \
                 {mean} and std {std} are unreliable"
            ),
        };
        let bounds = match self.bounds {
            Some(b) => format!(
                " (now [{}, {}] after the transform)",
                significant(b.lower),
                significant(b.upper)
            ),
            None => String::new(),
        };
        Some(format!(
            "statistics of column `{name}`: the DP noise dominates; {what}. The noise grows \
             with the bounds' range and shrinks with the records and statistics_rho: tighten \
             the column's bounds{bounds}, or give the job a larger statistics_rho (now {rho})"
        ))
    }
}

async fn query(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    rules: &RoundRules,
    spec: ValidQuery,
) -> Result<(), CoordinatorError> {
    let kind = task::Kind::Query(QueryTask {
        spec: Some(spec.spec.clone()),
    });
    // Every answer is checked against what the query allows before it is combined; one that
    // fails is rejected, its agency excluded and named (see `analytics`).
    let max_records = ctx.limits.max_records_per_agency;
    let checked = spec.clone();
    let check = move |r: &mut TaskResult| answers::check_answer(&checked, max_records, r);
    let collected = rounds::collect(ctx, job, rules, 1, kind, Intake::Whole, None, check).await?;
    let mut summary = collected.summary;
    let combination = spec.combination;
    // The bootstrap of the intervals is a long computation: off the runtime, with the
    // federation's members read for the outliers' identities.
    let (results, federation) = (collected.results, job.federation.clone());
    let (values, answer, outliers, members) = ctx
        .blocking(move |ctx| {
            let (values, answer) = analytics::combine(&spec, &results);
            let outliers = answers::outliers(&spec, &results);
            let members = match ctx.store.federation(&federation)? {
                Some(f) => members(&f),
                None => vec![],
            };
            Ok((values, answer, outliers, members))
        })
        .await?;
    summary.values = values;
    summary.answer = answer;
    summary.outliers = outliers;
    for o in &summary.outliers {
        let identity = members
            .iter()
            .find(|m| shown(m) == o.agency)
            .map(|m| m.to_string())
            .unwrap_or_else(|| o.agency.clone());
        let line = format!(
            "{}'s answer to `{}`, {}, lies {:.1} robust standard deviations from the median {} of the agencies' answers",
            o.agency, o.label, o.value, o.score, o.median
        );
        tracing::warn!(job = %job.job_id, agency = o.agency, "outlying answer: {line}");
        ctx.save_audit(
            &ctx.identity.to_string(),
            "answer.outlier",
            job,
            1,
            &identity,
            line.clone(),
        )
        .await?;
        ctx.emit(
            job,
            JobEventKind::AnswerOutlier,
            1,
            &o.agency,
            format!("outlier: {line}"),
        );
    }
    let note = match combination {
        Combination::Median => "; combined by the median",
        Combination::Trimmed => "; combined by the trimmed mean",
        Combination::Sum => "",
    };
    complete_round(ctx, job, summary, note, Vec::new()).await
}

/// Closes a round: its end time, the job stored with it, the audit log and the watchers told,
/// with `note` after the round's one-line account.
async fn complete_round(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    mut summary: RoundSummary,
    note: &str,
    documents: Vec<String>,
) -> Result<(), CoordinatorError> {
    let round = summary.round;
    summary.finished_unix_ms = now_ms();
    let line = format!("{}{note}", round_line(&summary));
    job.rounds_completed = round;
    // The record gives each exclusion its reason in full.
    let reasons: Vec<String> = summary
        .excluded
        .iter()
        .map(|e| format!("{}: {}: {}", e.agency, e.reason_code, e.message))
        .collect();
    let detail = match reasons.is_empty() {
        true => line.clone(),
        false => format!("{line}; reasons: {}", reasons.join("; ")),
    };
    let mut entry = audit_entry(
        &ctx.identity.to_string(),
        "round.completed",
        job,
        round,
        "",
        detail,
    );
    // A training round's entry records the digest of the model version it stored, and every
    // round's the hash of its results record.
    entry.documents = documents;
    entry.results = summary.results_sha256.clone();
    let (head, stored) = (job.clone(), summary.clone());
    ctx.blocking(move |ctx| ctx.store.put_round(&head, &stored, &entry))
        .await?;
    ctx.emit_round_completed(job, &summary, format!("round {round} completed: {line}"));
    Ok(())
}

/// Under DP, nodes release their evaluations of the model version `evaluated` as noisy counts:
/// each agency's metrics come from its own counts, the federation's from the counts of every
/// agency added up, each metric with its interval (computed off the runtime: many redraws).
async fn with_evaluation_metrics(
    mut summary: RoundSummary,
    results: Vec<(String, TaskResult)>,
    evaluated: String,
) -> Result<(RoundSummary, Vec<(String, TaskResult)>), CoordinatorError> {
    Ok(tokio::task::spawn_blocking(move || {
        let evaluations: Vec<&treaty_proto::v1::Evaluation> = results
            .iter()
            .filter_map(|(_, r)| r.evaluation.as_ref())
            .collect();
        if evaluations.is_empty() {
            return (summary, results);
        }
        let mut intervals = evaluation::intervals(&evaluations);
        let mut each = intervals.each.drain(..);
        for (agency, r) in &results {
            let Some(e) = &r.evaluation else {
                continue;
            };
            let of_agency = each.next().unwrap_or_default();
            if let Some(m) = summary.agency_metrics.get_mut(agency) {
                m.values.extend(evaluation::metrics(e));
                m.intervals = of_agency;
            }
        }
        drop(each);
        if let Some(pooled) = evaluation::pool(&evaluations) {
            summary.metrics.extend(evaluation::metrics(&pooled));
            summary.metric_intervals = intervals.pooled;
        }
        summary.evaluated_model_version = evaluated;
        (summary, results)
    })
    .await?)
}

/// Checks a training result against the global model: same layout, some examples, every
/// parameter within [`MAX_PARAMETER`] (what a node accepts of a global model, and what bounds
/// a round's exact sum), within its declared norm bound. Completeness and finiteness were
/// checked on arrival.
fn check_update(global: &[NamedTensor], result: &TaskResult) -> Result<(), String> {
    match &result.staged {
        Some(staged) => staged.tensors.check_layout(global),
        None => tensor::check_same_layout(global, &result.tensors),
    }
    .map_err(|e| e.to_string())?;
    if result.num_examples == 0 {
        return Err("the update claims zero examples".into());
    }
    let g = global.iter().flat_map(|t| t.values.iter().copied());
    let scanned = match &result.staged {
        Some(staged) => scan(staged.tensors.values(), g),
        None => scan(
            result.tensors.iter().flat_map(|t| t.values.iter().copied()),
            g,
        ),
    };
    let norm = scanned?.sqrt();
    if result.declared_norm_bound > 0.0 && norm > result.declared_norm_bound {
        return Err(format!(
            "the update's L2 norm {norm:.6} exceeds its declared bound {}",
            result.declared_norm_bound
        ));
    }
    Ok(())
}

/// Distributed DP's step (docs/SECURE_AGGREGATION.md): `sum` is the survivors' noisy clipped
/// gradient sums, then the sum of their public denominators; the new model is the global one
/// minus `learning_rate` times the one over the other. A denominator an honest node never sends
/// (below 1) is refused rather than used.
fn distributed_step(
    global: &ndarray::Array1<f64>,
    sum: &[f64],
    learning_rate: f64,
) -> Result<ndarray::Array1<f64>, String> {
    let (gradient, denominator) = match sum.split_last() {
        Some((&d, g)) if g.len() == global.len() => (g, d),
        _ => {
            return Err(format!(
                "the sum has {} values where the model has {} and a denominator",
                sum.len(),
                global.len()
            ));
        }
    };
    if denominator.is_nan() || denominator < 1.0 {
        return Err(format!(
            "the survivors' denominators add up to {denominator}, below what honest agencies send: the round's sum is not used"
        ));
    }
    Ok(global
        .iter()
        .zip(gradient)
        .map(|(w, g)| w - learning_rate * g / denominator)
        .collect())
}

/// Checks a masked update of a round of secure aggregation: the global model's layout, as
/// ring elements. Nothing else of it can be checked: its values are masked (the node bounds
/// its update's norm before masking, docs/SECURE_AGGREGATION.md).
fn check_masked(global: &[NamedTensor], result: &TaskResult) -> Result<(), String> {
    match &result.staged {
        Some(staged) => staged.tensors.check_masked_layout(global),
        None => return Err("a masked update arrived unstaged".into()),
    }
    .map_err(|e| e.to_string())?;
    if result.num_examples == 0 {
        return Err("the update claims zero examples".into());
    }
    Ok(())
}

/// The squared L2 distance between a local model and the global model, both in layout order;
/// the reason when a parameter of the local model is beyond [`MAX_PARAMETER`].
fn scan(
    local: impl Iterator<Item = f64>,
    global: impl Iterator<Item = f64>,
) -> Result<f64, String> {
    let mut squares = 0.0;
    for (index, (x, g)) in local.zip(global).enumerate() {
        if x.abs() > MAX_PARAMETER {
            return Err(format!(
                "parameter {index} of the update is {x:e}, beyond {MAX_PARAMETER:e} (a node refuses a global model with such a parameter)"
            ));
        }
        squares += (x - g) * (x - g);
    }
    Ok(squares)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use treaty_proto::v1::{ColumnKind, ColumnSpec, Transform};

    use super::*;

    /// Adult's `fnlwgt` under log1p, bounds 10,000 to 1.5e6 (9.2104 to 14.2210 after it).
    fn fnlwgt() -> TransformedBounds {
        column_bounds(1e4, 1.5e6, true)
    }

    fn column_bounds(lower: f64, upper: f64, log1p: bool) -> TransformedBounds {
        let c = ColumnSpec {
            name: "c".into(),
            kind: ColumnKind::Numeric as i32,
            lower: Some(lower),
            upper: Some(upper),
            transform: if log1p { Transform::Log1p as i32 } else { 0 },
            ..Default::default()
        };
        schema::transformed_bounds(&c).unwrap().unwrap()
    }

    fn close(got: f64, want: f64, tolerance: f64) -> bool {
        (got - want).abs() <= tolerance * want.abs()
    }

    #[test]
    fn with_negligible_noise_the_statistics_are_the_population_values() {
        // fnlwgt 100000, 200000, 150000, 400000: ln(1 + x) minus the centre 11.7157083498577
        // sum to 1.6737992768169, their squares to 1.7233670069968 (as a node releases them);
        // the population mean of ln(1 + x) is 12.1341581690619 and its std 0.5057089089161.
        // Hours 40, 50, 60, 38, 99 within [1, 99]: about 50, sums 37 and 2745; mean 57.4, std
        // sqrt(494.24) = 22.2315091705444.
        let noise = statistics_noise(2, 1e15);
        let f = standardize(
            "fnlwgt",
            Some(fnlwgt()),
            [4.0, 1.673_799_276_816_936, 1.723_367_006_996_760_6],
            noise,
        );
        assert!(close(f.stats.mean, 12.134_158_169_061_934, 1e-12), "{f:?}");
        assert!(close(f.stats.std, 0.505_708_908_916_121_4, 1e-12), "{f:?}");
        assert_eq!((f.stats.count, f.noisy), (4.0, None));
        let hours = column_bounds(1.0, 99.0, false);
        let h = standardize("hours", Some(hours), [5.0, 37.0, 2745.0], noise);
        assert!(close(h.stats.mean, 57.4, 1e-12), "{h:?}");
        assert!(close(h.stats.std, 22.231_509_170_544_406, 1e-12), "{h:?}");
        assert_eq!(h.noisy, None);
        assert_eq!(h.warning(1e15), None);
    }

    #[test]
    fn the_fallbacks_use_the_transformed_bounds_never_the_raw_ones() {
        // Noisy sums of 1000 records whose variance comes out negative: q = 0.05 < m² = 0.09.
        let f = standardize("fnlwgt", Some(fnlwgt()), [1000.0, 300.0, 50.0], 120.0);
        assert!(f.variance < 0.0);
        assert_eq!(f.noisy, Some(Noisy::NotPositive));
        // (ln(1500001) - ln(10001)) / sqrt(12), not (1.5e6 - 1e4) / 4 = 372,500.
        assert!(close(f.stats.std, 1.446_417_144_308_601_6, 1e-12), "{f:?}");
        // The mean is still c + s1 / n = 11.7157083498577 + 0.3.
        assert!(close(f.stats.mean, 12.015_708_349_857_7, 1e-12), "{f:?}");
        // Without a count of one record: the centre and the same std.
        for n in [0.4, -20.0, f64::NAN, f64::INFINITY] {
            let f = standardize("fnlwgt", Some(fnlwgt()), [n, 300.0, 50.0], 120.0);
            assert_eq!(f.noisy, Some(Noisy::NoCount), "{n}");
            assert!(close(f.stats.mean, 11.715_708_349_857_7, 1e-12), "{f:?}");
            assert!(close(f.stats.std, 1.446_417_144_308_601_6, 1e-12), "{f:?}");
        }
        // Sums that are not finite: the variance falls back, the mean stays within the bounds.
        let f = standardize("fnlwgt", Some(fnlwgt()), [10.0, f64::INFINITY, 1.0], 120.0);
        assert_eq!(f.noisy, Some(Noisy::NotPositive));
        assert!(close(f.stats.std, 1.446_417_144_308_601_6, 1e-12), "{f:?}");
        assert!(f.stats.mean.is_finite() && f.stats.mean <= 14.221, "{f:?}");
        // A mean beyond the bounds is brought back to them: hours in [1, 99], 50 + 80.
        let hours = column_bounds(1.0, 99.0, false);
        let h = standardize("hours", Some(hours), [10.0, 800.0, 64_100.0], 1.0);
        assert_eq!(h.stats.mean, 99.0);
        // A variance above what values in [1, 99] can have (49² = 2401) is the half-range:
        // q = 5000, m = 0.
        let h = standardize("hours", Some(hours), [10.0, 0.0, 50_000.0], 1.0);
        assert_eq!((h.stats.std, h.noisy), (49.0, Some(Noisy::AboveRange)));
        // The warning names the column, the estimate, the stand-in and what to do.
        let line = f.warning(0.005).unwrap();
        for part in [
            "`fnlwgt`",
            "is not a positive number",
            "std 1.446, a uniform's on the bounds",
            "tighten the column's bounds (now [9.210, 14.22] after the transform)",
            "larger statistics_rho (now 0.005)",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        // 100 records about 12 ± 0.6 under Adult's noise (120): m = 0.3, q = 0.45, variance
        // 0.36 with a standard error of 1.2 sqrt(R⁴ + 4 m² R² + (q - 2m²)²) = 7.7514 > 0.18.
        let few = standardize("fnlwgt", Some(fnlwgt()), [100.0, 30.0, 45.0], 120.0);
        assert_eq!(few.noisy, Some(Noisy::Imprecise));
        assert!(close(few.stats.std, 0.6, 1e-12), "{few:?}");
        assert!(close(
            few.standard_error.unwrap(),
            7.751_404_011_691_207,
            1e-12
        ));
        let line = few.warning(0.005).unwrap();
        assert!(
            line.contains("0.3600 ± 7.751 (the noise's standard error)"),
            "{line}"
        );
        assert!(line.contains("unreliable"), "{line}");
        // A column without bounds (which no node sums under DP) gets std 1.
        let u = standardize("u", None, [10.0, 0.0, -1.0], 1.0);
        assert_eq!((u.stats.mean, u.stats.std), (0.0, 1.0));
    }

    /// A standard normal draw (Box–Muller).
    fn normal(rng: &mut StdRng) -> f64 {
        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// The first-order standard deviation of `s2 / n - (s1 / n)²` when the count, `s1` and `s2`
    /// (the sums of x - c and (x - c)²) carry independent Gaussian noise of standard deviations
    /// `noise`, `noise B` and `noise B²`: differentiating by s2, s1 and n gives 1 / n,
    /// -2m / n and -(q - 2m²) / n, with m and q the population's mean and mean square about c.
    fn theoretical_sd(values: &[f64], c: f64, b: f64, noise: f64) -> f64 {
        let n = values.len() as f64;
        let m = values.iter().map(|x| x - c).sum::<f64>() / n;
        let q = values.iter().map(|x| (x - c) * (x - c)).sum::<f64>() / n;
        noise / n * ((b * b).powi(2) + (2.0 * m * b).powi(2) + (q - 2.0 * m * m).powi(2)).sqrt()
    }

    #[test]
    fn centred_sums_keep_the_variance_out_of_the_noise() {
        // The deployments of the issue: 8 agencies, 6 numeric columns, 32,561 records (Adult),
        // and W1's (8 agencies, 64 columns, 800,000 records), at the default rho 0.005: noise
        // sqrt(3 * 6 / 0.01) * sqrt(8) = 120 and sqrt(3 * 64 / 0.01) * sqrt(8) = 391.9.
        let lo = 10_001f64.ln();
        let hi = 1_500_001f64.ln();
        let (c, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
        let hours = column_bounds(1.0, 99.0, false);
        for (agencies, columns, records, noise) in [
            (8usize, 6usize, 32_561usize, 120.0),
            (8, 64, 800_000, 391.918_358_845_308_4),
        ] {
            assert!(close(
                statistics_noise(columns, 0.005) * (agencies as f64).sqrt(),
                noise,
                1e-12
            ));
            let mut rng = StdRng::seed_from_u64(11);
            // log1p(fnlwgt) about 12 ± 0.6, and hours per week about 40.4 ± 12.35, clamped.
            let columns = [
                (
                    "fnlwgt",
                    fnlwgt(),
                    (0..records)
                        .map(|_| (12.0 + 0.6 * normal(&mut rng)).clamp(lo, hi))
                        .collect::<Vec<f64>>(),
                    (c, r, hi),
                ),
                (
                    "hours",
                    hours,
                    (0..records)
                        .map(|_| (40.4 + 12.35 * normal(&mut rng)).clamp(1.0, 99.0))
                        .collect(),
                    (50.0, 49.0, 99.0),
                ),
            ];
            for (name, bounds, values, (c, r, largest)) in columns {
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let variance = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                // The estimator as implemented (centred on c, sensitivities r) against the
                // uncentred one of before (about 0, sensitivities the largest magnitude).
                let centred = theoretical_sd(&values, c, r, noise);
                let uncentred = theoretical_sd(&values, 0.0, largest, noise);
                let sums = |c: f64| {
                    let s1: f64 = values.iter().map(|x| x - c).sum();
                    let s2: f64 = values.iter().map(|x| (x - c) * (x - c)).sum();
                    [n, s1, s2]
                };
                let (exact, exact_uncentred) = (sums(c), sums(0.0));
                let repetitions = 2000;
                let (mut squared, mut squared_uncentred) = (0.0, 0.0);
                for _ in 0..repetitions {
                    let e = [normal(&mut rng), normal(&mut rng), normal(&mut rng)];
                    let scaled = |s: [f64; 3], b: f64| {
                        [
                            s[0] + noise * e[0],
                            s[1] + noise * b * e[1],
                            s[2] + noise * b * b * e[2],
                        ]
                    };
                    let got = standardize(name, Some(bounds), scaled(exact, r), noise);
                    assert_eq!(got.noisy, None, "{name}: {got:?}");
                    squared += (got.variance - variance).powi(2);
                    // The uncentred estimator, by hand.
                    let [n, s, q] = scaled(exact_uncentred, largest);
                    squared_uncentred += (q / n - (s / n).powi(2) - variance).powi(2);
                    // The standard error the coordinator states is the theoretical one.
                    assert!(
                        close(got.standard_error.unwrap(), centred, 0.05),
                        "{name}: {got:?} vs {centred}"
                    );
                }
                let rms = (squared / repetitions as f64).sqrt();
                let rms_uncentred = (squared_uncentred / repetitions as f64).sqrt();
                // The theory holds for both (2000 repetitions: about 1.6 % sampling error)...
                assert!(
                    close(rms, centred, 0.1),
                    "{name}, {records} records: {rms} vs {centred}"
                );
                assert!(
                    close(rms_uncentred, uncentred, 0.1),
                    "{name}, {records} records: {rms_uncentred} vs {uncentred}"
                );
                // ... and centring divides the error by 5 (hours) to 60 (log1p(fnlwgt)).
                assert!(
                    uncentred > 4.0 * centred,
                    "{name}: {uncentred} vs {centred}"
                );
                if name == "fnlwgt" {
                    assert!(uncentred > 40.0 * centred, "{uncentred} vs {centred}");
                    if records == 32_561 {
                        // Uncentred, the error exceeded the variance itself.
                        assert!(uncentred > variance, "{uncentred} vs {variance}");
                    }
                }
                // The centred error is below a tenth of the variance.
                assert!(centred < variance / 10.0, "{name}: {centred} vs {variance}");
            }
        }
    }
}

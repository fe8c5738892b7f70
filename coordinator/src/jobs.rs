//! Running jobs: a training job's statistics round and its training rounds, a query's single
//! round; aggregation by the job's strategy; model versions with their provenance.
//!
//! A job's state is stored after every step, so a coordinator that restarts resumes each running
//! job at the first step that had not completed.

use std::sync::Arc;

use treaty_proto::schema;
use treaty_proto::tensor::{self, NamedTensor};
use treaty_proto::v1::{
    ColumnStats, Job, JobEventKind, JobState, QueryTask, RoundSummary, StatsTask, TrainingTask,
    task,
};

use crate::aggregate;
use crate::error::CoordinatorError;
use crate::federation::members;
use crate::models;
use crate::rounds::{self, round_line, shown};
use crate::state::{Coordinator, now_ms};
use crate::tasks::TaskResult;
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
    let ValidJob { rules, work } = ValidJob::try_from(job.spec.clone().unwrap_or_default())
        .map_err(|source| CoordinatorError::StoredJob {
            job: job_id.to_owned(),
            source,
        })?;
    // Resume: a round that started but did not complete is run again.
    job.rounds.retain(|r| r.finished_unix_ms != 0);
    let resumed = job.state == JobState::Running as i32;
    job.state = JobState::Running as i32;
    ctx.save_job(&job).await?;
    if resumed {
        ctx.emit(
            &job,
            JobEventKind::JobResumed,
            0,
            "",
            format!("job resumed after round {}", job.rounds.len()),
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
            if job.rounds.is_empty() {
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
        format!("job succeeded after {} round(s)", job.rounds.len()),
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
        ctx.blocking(move |ctx| {
            let model = models::initial_model(&s).map_err(|e| CoordinatorError::StoredJob {
                job: job_id.clone(),
                source: InvalidJob {
                    problems: vec![JobProblem::Enum(e)],
                },
            })?;
            models::store(&ctx.store, &job_id, &s.to_spec(), 0, &v, &model, &[], None)
        })
        .await?;
        job.latest_model_version = version;
        ctx.save_job(job).await?;
    }
    let settings = spec.settings;
    while (job.rounds.len() as u32) < spec.rounds() {
        let round = job.rounds.len() as u32 + 1;
        let latest = job.latest_model_version.clone();
        let (global, state) = ctx
            .blocking(move |ctx| models::load(&ctx.store, &latest))
            .await?;
        let wire = spec.to_spec();
        let kind = task::Kind::Training(TrainingTask {
            spec: Some(wire.clone()),
            model_version: job.latest_model_version.clone(),
            // Set for each agency when the task is sent.
            public_records: 0.0,
        });
        let global = Arc::new(global);
        let checked = Arc::clone(&global);
        let check = move |r: &TaskResult| check_update(&checked, r);
        let collected = rounds::collect(ctx, job, rules, round, kind, check).await?;
        let mut summary = collected.summary;
        evaluation_metrics(&mut summary, &collected.results);
        let version = format!("{}/r{round}", job.job_id);
        // Aggregating and storing the new version take time and sled writes: off the runtime.
        let (job_id, v, contributors, results) = (
            job.job_id.clone(),
            version.clone(),
            summary.contributors.clone(),
            collected.results,
        );
        let note = ctx
            .blocking(move |ctx| {
                let mut state = state;
                let locals: Vec<(u64, &[NamedTensor])> = results
                    .iter()
                    .map(|(_, r)| (r.num_examples, r.tensors.as_slice()))
                    .collect();
                let (model, note) = aggregate::aggregate(&settings, &global, &locals, &mut state);
                models::store(
                    &ctx.store,
                    &job_id,
                    &wire,
                    round,
                    &v,
                    &model,
                    &contributors,
                    state.as_ref(),
                )?;
                Ok(note)
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
        complete_round(ctx, job, summary, &note).await?;
    }
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
    let columns: Vec<String> = numeric.iter().map(|c| c.name.clone()).collect();
    // Noisy sums can make a variance non-positive; then the bounds' range / 4 stands in for the
    // standard deviation (a scale the schema itself states), or 1 without bounds.
    let ranges: Vec<Option<f64>> = numeric
        .iter()
        .map(|c| c.lower.zip(c.upper).map(|(lo, hi)| (hi - lo) / 4.0))
        .collect();
    let width = columns.len();
    let kind = task::Kind::Stats(StatsTask {
        schema: Some(spec.schema.clone()),
        privacy: Some(spec.privacy),
    });
    // Noisy sums (under DP) may be negative or exceed the records; they are combined as they are
    // and the combination clamps what must be non-negative.
    let check = move |r: &TaskResult| match r.tensors.as_slice() {
        [t] if t.name == "stats" && t.values.shape() == [width, 3] => Ok(()),
        _ => Err(format!(
            "statistics must be one tensor `stats` of shape [{width}, 3]"
        )),
    };
    let collected = rounds::collect(ctx, job, rules, 0, kind, check).await?;
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
    let stats: Vec<ColumnStats> = columns
        .into_iter()
        .zip(totals)
        .zip(ranges)
        .map(|((name, [n, sum, squares]), range)| {
            let mean = if n >= 1.0 { sum / n } else { 0.0 };
            let variance = if n >= 1.0 {
                squares / n - mean * mean
            } else {
                0.0
            };
            let std = if variance > 1e-24 {
                variance.sqrt()
            } else {
                range.filter(|r| *r > 0.0).unwrap_or(1.0)
            };
            ColumnStats {
                name,
                mean,
                std,
                count: n,
            }
        })
        .collect();
    let mut summary = collected.summary;
    summary.finished_unix_ms = now_ms();
    let line = round_line(&summary);
    job.statistics = Some(summary);
    ctx.save_audit(
        &ctx.identity.to_string(),
        "statistics.completed",
        job,
        0,
        "",
        line.clone(),
    )
    .await?;
    ctx.emit(
        job,
        JobEventKind::RoundCompleted,
        0,
        "",
        format!("statistics round completed: {line}"),
    );
    Ok(stats)
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
    let check = move |r: &TaskResult| answers::check_answer(&checked, max_records, r);
    let collected = rounds::collect(ctx, job, rules, 1, kind, check).await?;
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
    complete_round(ctx, job, summary, note).await
}

/// Closes a round: its end time, the job stored with it, the audit log and the watchers told,
/// with `note` after the round's one-line account.
async fn complete_round(
    ctx: &Arc<Coordinator>,
    job: &mut Job,
    mut summary: RoundSummary,
    note: &str,
) -> Result<(), CoordinatorError> {
    let round = summary.round;
    summary.finished_unix_ms = now_ms();
    let line = format!("{}{note}", round_line(&summary));
    job.rounds.push(summary);
    ctx.save_job(job).await?;
    ctx.save_audit(
        &ctx.identity.to_string(),
        "round.completed",
        job,
        round,
        "",
        line.clone(),
    )
    .await?;
    ctx.emit(
        job,
        JobEventKind::RoundCompleted,
        round,
        "",
        format!("round {round} completed: {line}"),
    );
    Ok(())
}

/// Under DP, nodes release their evaluations as noisy counts: each agency's metrics come from its
/// own counts, the federation's from the counts of every agency added up.
fn evaluation_metrics(summary: &mut RoundSummary, results: &[(String, TaskResult)]) {
    let evaluations: Vec<&treaty_proto::v1::Evaluation> = results
        .iter()
        .filter_map(|(_, r)| r.evaluation.as_ref())
        .collect();
    if evaluations.is_empty() {
        return;
    }
    for (agency, r) in results {
        if let (Some(e), Some(m)) = (&r.evaluation, summary.agency_metrics.get_mut(agency)) {
            m.values.extend(treaty_proto::evaluation::metrics(e));
        }
    }
    if let Some(pooled) = treaty_proto::evaluation::pool(&evaluations) {
        summary
            .metrics
            .extend(treaty_proto::evaluation::metrics(&pooled));
    }
}

/// Checks a training result against the global model: same layout, some examples, within its
/// declared norm bound. Completeness and finiteness were checked on arrival.
fn check_update(global: &[NamedTensor], result: &TaskResult) -> Result<(), String> {
    tensor::check_same_layout(global, &result.tensors).map_err(|e| e.to_string())?;
    if result.num_examples == 0 {
        return Err("the update claims zero examples".into());
    }
    let norm = aggregate::l2_distance(&result.tensors, global);
    if result.declared_norm_bound > 0.0 && norm > result.declared_norm_bound {
        return Err(format!(
            "the update's L2 norm {norm:.6} exceeds its declared bound {}",
            result.declared_norm_bound
        ));
    }
    Ok(())
}

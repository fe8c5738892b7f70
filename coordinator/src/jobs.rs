//! Running jobs: rounds out to the federation's connected members, results back, aggregation,
//! model versions and provenance.
//!
//! A job's state is stored after every step, so a coordinator that restarts resumes each running
//! job at the first round that had not completed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use treaty_proto::tensor::{self, NamedTensor};
use treaty_proto::v1::{
    AgencyMetrics, CancelTask, CoordinatorMessage, Dtype, Exclusion, Job, JobState, ModelHeader,
    ModelKind, QueryKind, QuerySpec, QueryTask, RoundSummary, StoredModel, Task, TrainingSpec,
    TrainingTask, coordinator_message, job_spec, task,
};

use crate::aggregate;
use crate::error::CoordinatorError;
use crate::state::{Coordinator, now_ms};
use crate::tasks::{Delivery, Outcome, TaskResult};

/// Default wait for a round's results.
pub const DEFAULT_ROUND_TIMEOUT_MS: u32 = 60_000;
/// Default wait for enough members to be connected.
pub const DEFAULT_JOIN_TIMEOUT_MS: u32 = 60_000;

/// Starts the job's runner on its own task.
pub fn spawn(ctx: Arc<Coordinator>, job_id: String) {
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
            if let Ok(Some(mut job)) = ctx.store.job(&job_id) {
                job.state = JobState::Failed as i32;
                job.message = error.to_string();
                if ctx.store.put_job(&job).is_ok() {
                    let _ = ctx.audit(
                        &ctx.identity.to_string(),
                        "job.failed",
                        &job,
                        0,
                        "",
                        job.message.clone(),
                    );
                }
                ctx.emit(&job, 0, "", format!("job failed: {}", job.message));
            }
        }
    });
}

/// Why a job stopped before its last round.
fn fail(message: String) -> CoordinatorError {
    CoordinatorError::JobFailed(message)
}

async fn run(ctx: &Coordinator, job_id: &str) -> Result<(), CoordinatorError> {
    let mut job = ctx
        .store
        .job(job_id)?
        .ok_or_else(|| CoordinatorError::NotFound(format!("job `{job_id}` does not exist")))?;
    let spec = job.spec.clone().unwrap_or_default();
    let rounds = match &spec.kind {
        Some(job_spec::Kind::Training(t)) => t.rounds,
        Some(job_spec::Kind::Query(_)) => 1,
        None => return Err(fail("the job has no kind".into())),
    };
    // Resume: drop a round that started but did not complete.
    job.rounds.retain(|r| r.finished_unix_ms != 0);
    if job.state != JobState::Running as i32 {
        job.state = JobState::Running as i32;
        ctx.store.put_job(&job)?;
        ctx.emit(&job, 0, "", format!("job started: {rounds} round(s)"));
    } else {
        ctx.store.put_job(&job)?;
        ctx.emit(
            &job,
            0,
            "",
            format!("job resumed after round {}", job.rounds.len()),
        );
    }
    while (job.rounds.len() as u32) < rounds {
        let round = job.rounds.len() as u32 + 1;
        run_round(ctx, &mut job, round).await?;
    }
    job.state = JobState::Succeeded as i32;
    ctx.store.put_job(&job)?;
    ctx.audit(
        &ctx.identity.to_string(),
        "job.succeeded",
        &job,
        0,
        "",
        String::new(),
    )?;
    ctx.emit(
        &job,
        0,
        "",
        format!("job succeeded after {rounds} round(s)"),
    );
    Ok(())
}

/// Waits until at least `min` members hold a session; returns the connected members, in the
/// federation's order.
async fn wait_for_members(
    ctx: &Coordinator,
    members: &[String],
    min: usize,
    timeout: Duration,
) -> Result<Vec<String>, Vec<String>> {
    let mut changes = ctx.sessions.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let connected: Vec<String> = members
            .iter()
            .filter(|m| ctx.sessions.is_connected(m))
            .cloned()
            .collect();
        if connected.len() >= min {
            return Ok(connected);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Err(connected) },
            _ = tokio::time::sleep_until(deadline) => return Err(connected),
        }
    }
}

async fn run_round(ctx: &Coordinator, job: &mut Job, round: u32) -> Result<(), CoordinatorError> {
    let spec = job.spec.clone().unwrap_or_default();
    let federation = ctx
        .store
        .federation(&job.federation)?
        .ok_or_else(|| fail(format!("federation `{}` no longer exists", job.federation)))?;
    let min = spec.min_participants.max(1) as usize;
    let join_timeout = Duration::from_millis(u64::from(or_default(
        spec.join_timeout_ms,
        DEFAULT_JOIN_TIMEOUT_MS,
    )));
    let round_timeout = or_default(spec.round_timeout_ms, DEFAULT_ROUND_TIMEOUT_MS);

    let invited = match wait_for_members(ctx, &federation.members, min, join_timeout).await {
        Ok(invited) => invited,
        Err(connected) => {
            return Err(fail(format!(
                "round {round}: only {} member(s) connected ({}) after {} s; the job needs {min}",
                connected.len(),
                connected.join(", "),
                join_timeout.as_secs()
            )));
        }
    };

    // The global model this round starts from (training jobs).
    let global = match &spec.kind {
        Some(job_spec::Kind::Training(t)) => Some(current_model(ctx, job, t)?),
        _ => None,
    };

    let started = now_ms();
    let deadline_ms = started + i64::from(round_timeout);
    job.rounds.push(RoundSummary {
        round,
        invited: invited.clone(),
        started_unix_ms: started,
        ..Default::default()
    });
    ctx.store.put_job(job)?;
    ctx.audit(
        &ctx.identity.to_string(),
        "round.started",
        job,
        round,
        "",
        format!("invited: {}", invited.join(", ")),
    )?;
    ctx.emit(
        job,
        round,
        "",
        format!("round {round} started: {} agencies invited", invited.len()),
    );

    // Send the task to every invited member.
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let mut open: HashMap<String, String> = HashMap::new(); // agency -> task id
    let mut excluded: Vec<Exclusion> = Vec::new();
    for agency in &invited {
        let task_id = format!("{}-r{round}-{agency}", job.job_id);
        let kind = match &spec.kind {
            Some(job_spec::Kind::Training(t)) => task::Kind::Training(TrainingTask {
                spec: Some(t.clone()),
                model_version: job.latest_model_version.clone(),
            }),
            Some(job_spec::Kind::Query(q)) => task::Kind::Query(QueryTask {
                spec: Some(q.clone()),
            }),
            None => return Err(fail("the job has no kind".into())),
        };
        let message = CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Task(Task {
                task_id: task_id.clone(),
                job_id: job.job_id.clone(),
                federation: job.federation.clone(),
                round,
                deadline_unix_ms: deadline_ms,
                kind: Some(kind),
            })),
        };
        ctx.tasks.open(&task_id, agency, tx.clone());
        let sent = match ctx.sessions.outbox(agency) {
            Some(outbox) => outbox.send(Ok(message)).await.is_ok(),
            None => false,
        };
        if sent {
            open.insert(agency.clone(), task_id);
        } else {
            ctx.tasks.close(&task_id);
            excluded.push(exclusion(
                agency,
                "NOT_CONNECTED",
                "the node's session closed before the task could be sent",
            ));
        }
    }
    drop(tx);

    // Collect outcomes until every task is answered or the deadline passes.
    let mut results: Vec<(String, TaskResult)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(round_timeout));
    while !open.is_empty() {
        let delivery = tokio::select! {
            d = rx.recv() => d,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some((agency, outcome)) = delivery else {
            break;
        };
        open.remove(&agency);
        match outcome {
            Outcome::Refused {
                reason_code,
                message,
            } => {
                ctx.emit(
                    job,
                    round,
                    &agency,
                    format!("{agency} refused the task: {reason_code}: {message}"),
                );
                ctx.audit(
                    &format!("agency:{agency}"),
                    "task.refused",
                    job,
                    round,
                    &agency,
                    format!("{reason_code}: {message}"),
                )?;
                excluded.push(exclusion(
                    &agency,
                    "REFUSED",
                    &format!("{reason_code}: {message}"),
                ));
            }
            Outcome::Invalid(reason) => reject(ctx, job, round, &agency, reason, &mut excluded)?,
            Outcome::Result(result) => match check_result(&spec.kind, global.as_deref(), &result) {
                Ok(()) => {
                    ctx.emit(
                        job,
                        round,
                        &agency,
                        format!(
                            "{agency} sent its result ({} examples)",
                            result.num_examples
                        ),
                    );
                    results.push((agency, result));
                }
                Err(reason) => reject(ctx, job, round, &agency, reason, &mut excluded)?,
            },
        }
    }
    for (agency, task_id) in open {
        ctx.tasks.close(&task_id);
        if let Some(outbox) = ctx.sessions.outbox(&agency) {
            let _ = outbox.try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Cancel(CancelTask {
                    task_id,
                    reason: "the round's deadline passed".into(),
                })),
            }));
        }
        excluded.push(exclusion(
            &agency,
            "TIMED_OUT",
            &format!("no result within {} ms", round_timeout),
        ));
    }

    if results.len() < min {
        return Err(fail(format!(
            "round {round}: {} result(s) arrived, fewer than the {min} the job needs",
            results.len()
        )));
    }

    // Aggregate.
    let mut summary = job.rounds.pop().unwrap_or_default();
    summary.contributors = results.iter().map(|(a, _)| a.clone()).collect();
    summary.excluded = excluded;
    summary.num_examples = results.iter().map(|(_, r)| r.num_examples).sum();
    let metric_inputs: Vec<(u64, &HashMap<String, f64>)> = results
        .iter()
        .map(|(_, r)| (r.num_examples, &r.metrics))
        .collect();
    summary.metrics = aggregate::weighted_metrics(&metric_inputs);
    summary.agency_metrics = results
        .iter()
        .map(|(a, r)| {
            (
                a.clone(),
                AgencyMetrics {
                    values: r.metrics.clone(),
                    num_examples: r.num_examples,
                },
            )
        })
        .collect();
    match &spec.kind {
        Some(job_spec::Kind::Training(t)) => {
            let inputs: Vec<(u64, &[NamedTensor])> = results
                .iter()
                .map(|(_, r)| (r.num_examples, r.tensors.as_slice()))
                .collect();
            let model = aggregate::fedavg(&inputs)
                .ok_or_else(|| fail(format!("round {round}: the results hold no examples")))?;
            let version = format!("{}/r{round}", job.job_id);
            store_model(ctx, job, t, round, &version, &model, &summary.contributors)?;
            summary.model_version = version.clone();
            job.latest_model_version = version;
        }
        Some(job_spec::Kind::Query(q)) => {
            summary.values = combine_query(q, &results);
        }
        None => {}
    }
    summary.finished_unix_ms = now_ms();
    let line = round_line(&summary);
    job.rounds.push(summary);
    ctx.store.put_job(job)?;
    ctx.audit(
        &ctx.identity.to_string(),
        "round.completed",
        job,
        round,
        "",
        line.clone(),
    )?;
    ctx.emit(job, round, "", format!("round {round} completed: {line}"));
    Ok(())
}

/// Records a result that cannot be used: logged and audited with the agency's identity, reported
/// to watchers, and the agency excluded from the round.
fn reject(
    ctx: &Coordinator,
    job: &Job,
    round: u32,
    agency: &str,
    reason: String,
    excluded: &mut Vec<Exclusion>,
) -> Result<(), CoordinatorError> {
    tracing::warn!(job = %job.job_id, round, agency, reason, "update rejected");
    ctx.audit(
        &format!("agency:{agency}"),
        "update.rejected",
        job,
        round,
        agency,
        reason.clone(),
    )?;
    ctx.emit(
        job,
        round,
        agency,
        format!("{agency}'s result was rejected: {reason}"),
    );
    excluded.push(exclusion(agency, "INVALID_UPDATE", &reason));
    Ok(())
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

fn exclusion(agency: &str, code: &str, message: &str) -> Exclusion {
    Exclusion {
        agency: agency.to_owned(),
        reason_code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// A one-line account of a completed round.
fn round_line(summary: &RoundSummary) -> String {
    let mut metrics: Vec<_> = summary.metrics.iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    let metrics: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
    let mut line = format!(
        "{} contributor(s) ({}), {} examples",
        summary.contributors.len(),
        summary.contributors.join(", "),
        summary.num_examples
    );
    if !metrics.is_empty() {
        line.push_str(&format!(", {}", metrics.join(" ")));
    }
    if !summary.values.is_empty() {
        line.push_str(&format!(", values {:?}", summary.values));
    }
    line
}

/// The tensors of a new model for `spec`, all zero.
pub fn initial_model(spec: &TrainingSpec) -> Vec<NamedTensor> {
    use ndarray::{ArrayD, IxDyn};
    vec![
        NamedTensor::new("weights", ArrayD::zeros(IxDyn(&[spec.features.len()]))),
        NamedTensor::new("bias", ArrayD::zeros(IxDyn(&[]))),
    ]
}

/// The model the next round starts from: the latest stored version, or a new one (stored as
/// round 0, so that nodes download it like any other).
fn current_model(
    ctx: &Coordinator,
    job: &mut Job,
    spec: &TrainingSpec,
) -> Result<Vec<NamedTensor>, CoordinatorError> {
    if !job.latest_model_version.is_empty() {
        let stored = ctx.store.model(&job.latest_model_version)?.ok_or_else(|| {
            CoordinatorError::Corrupt(format!("model `{}` is missing", job.latest_model_version))
        })?;
        return tensor::from_whole(&stored.tensors, ctx.limits.max_update_elements).map_err(|e| {
            CoordinatorError::Corrupt(format!("model `{}`: {e}", job.latest_model_version))
        });
    }
    if spec.model != ModelKind::LogisticRegression as i32 {
        return Err(fail("the job's model kind is not supported".into()));
    }
    let model = initial_model(spec);
    let version = format!("{}/r0", job.job_id);
    store_model(ctx, job, spec, 0, &version, &model, &[])?;
    job.latest_model_version = version;
    ctx.store.put_job(job)?;
    Ok(model)
}

fn store_model(
    ctx: &Coordinator,
    job: &Job,
    spec: &TrainingSpec,
    round: u32,
    version: &str,
    model: &[NamedTensor],
    contributors: &[String],
) -> Result<(), CoordinatorError> {
    let tensors = tensor::to_whole(model, Dtype::F64);
    ctx.store.put_model(&StoredModel {
        header: Some(ModelHeader {
            job_id: job.job_id.clone(),
            model_version: version.to_owned(),
            round,
            spec: Some(spec.clone()),
            tensors: tensors.iter().filter_map(|t| t.spec.clone()).collect(),
        }),
        tensors,
        contributors: contributors.to_vec(),
        created_unix_ms: now_ms(),
    })
}

/// Checks a result against what the round expects: the global model's layout and the declared
/// norm bound for training; one value per expected statistic for queries. Finiteness and
/// completeness were checked on arrival.
fn check_result(
    kind: &Option<job_spec::Kind>,
    global: Option<&[NamedTensor]>,
    result: &TaskResult,
) -> Result<(), String> {
    match (kind, global) {
        (Some(job_spec::Kind::Training(_)), Some(global)) => {
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
        (Some(job_spec::Kind::Query(q)), _) => {
            let expected = query_width(q);
            match result.tensors.as_slice() {
                [t] if t.name == "statistic" && t.values.len() == expected => Ok(()),
                _ => Err(format!(
                    "a query result must be one tensor `statistic` of {expected} values"
                )),
            }
        }
        _ => Err("the round expects no result".into()),
    }
}

/// How many values a node returns for a query: [count], [sum], or [sum, count] for a mean.
pub fn query_width(q: &QuerySpec) -> usize {
    if q.kind == QueryKind::Mean as i32 {
        2
    } else {
        1
    }
}

/// The federation-wide statistic from the nodes' values.
fn combine_query(q: &QuerySpec, results: &[(String, TaskResult)]) -> Vec<f64> {
    let mut totals = vec![0.0; query_width(q)];
    for (_, r) in results {
        if let Some(t) = r.tensors.first() {
            for (acc, v) in totals.iter_mut().zip(t.values.iter()) {
                *acc += v;
            }
        }
    }
    if q.kind == QueryKind::Mean as i32 {
        let (sum, count) = (totals[0], totals[1]);
        vec![if count > 0.0 { sum / count } else { f64::NAN }, count]
    } else {
        totals
    }
}

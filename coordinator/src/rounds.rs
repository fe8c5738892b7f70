//! The mechanics every round shares: wait for enough members, send each a task over its
//! session, collect outcomes until all have answered or the deadline passes, and account for
//! every invited agency (contributor or excluded, with the reason).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use treaty_proto::Identity;
use treaty_proto::receipt::{ReceivedResult, ResultsRecord};
use treaty_proto::v1::{
    AgencyMetrics, AgencySpending, CancelTask, CoordinatorMessage, Exclusion, Job, JobEventKind,
    JobTerms, RoundExclusion, RoundSummary, Task, coordinator_message, job_spec, task,
};

use crate::aggregate;
use crate::approvals::MAX_APPROVAL_WAIT;
use crate::error::CoordinatorError;
use crate::federation::members;
use crate::policy::{self, Question};
use crate::state::{Coordinator, now_ms};
use crate::tasks::{Delivery, Intake, Outcome, TaskResult};
use crate::valid_job::RoundRules;

/// Why an invited agency did not contribute to a round: the code a round's record and the
/// operator show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExclusionCode {
    /// The sharing policies did not admit it (the spec's reason code).
    Policy(treaty_policies::Reason),
    /// Its node reported a spent privacy budget: it is not invited.
    BudgetExhausted,
    /// Its session closed before the task could be sent.
    NotConnected,
    /// Its node refused the task (the node's own code is `Exclusion.node_code`).
    Refused,
    /// No result arrived before the round's deadline.
    TimedOut,
    /// Its result failed the coordinator's checks.
    InvalidUpdate,
    /// Its node requires its own operator's approval of the job, not given yet: it is asked
    /// again in the next round.
    ApprovalPending,
    /// Its operator rejected the job: it is not asked again in this job.
    ApprovalRejected,
}

impl ExclusionCode {
    /// The code on the wire (`Exclusion.reason_code`).
    pub(crate) fn code(self) -> String {
        let own = match self {
            ExclusionCode::Policy(reason) => return reason.code(),
            ExclusionCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            ExclusionCode::NotConnected => "NOT_CONNECTED",
            ExclusionCode::Refused => "REFUSED",
            ExclusionCode::TimedOut => "TIMED_OUT",
            ExclusionCode::InvalidUpdate => "INVALID_UPDATE",
            ExclusionCode::ApprovalPending => "APPROVAL_PENDING",
            ExclusionCode::ApprovalRejected => "APPROVAL_REJECTED",
        };
        own.to_owned()
    }
}

fn exclusion(agency: &str, code: ExclusionCode, message: &str) -> Exclusion {
    Exclusion {
        agency: agency.to_owned(),
        reason_code: code.code(),
        message: message.to_owned(),
        node_code: String::new(),
    }
}

/// The exclusion of an agency whose node refused the task with `node_code`: the approval
/// codes of a node that requires its operator's approval are the round's own, any other is
/// `REFUSED`.
fn refused(agency: &str, node_code: &str, message: &str) -> Exclusion {
    let code = match node_code {
        "APPROVAL_PENDING" => ExclusionCode::ApprovalPending,
        "APPROVAL_REJECTED" => ExclusionCode::ApprovalRejected,
        _ => ExclusionCode::Refused,
    };
    Exclusion {
        node_code: node_code.to_owned(),
        ..exclusion(agency, code, &format!("{node_code}: {message}"))
    }
}

/// What the job as a whole asks of each agency, stated in each of its tasks: what a person at
/// an agency that approves jobs sees, and what the approval is bound to.
fn job_terms(job: &Job, purpose: &str, rules: &RoundRules) -> JobTerms {
    let spec = job.spec.as_ref().and_then(|s| s.kind.as_ref());
    let secure_aggregation = match spec {
        Some(job_spec::Kind::Training(t)) => t.secure_aggregation,
        _ => None,
    };
    let (kind, rounds, epsilon, delta) = match spec {
        Some(job_spec::Kind::Training(t)) => {
            let p = t.privacy.unwrap_or_default();
            // A calibrated job's target is its total; one whose noise is given states none.
            let (epsilon, delta) = match p.noise_multiplier == 0.0 {
                true => (p.target_epsilon, p.target_delta),
                false => (0.0, rules.sharing.delta),
            };
            ("training", t.rounds, epsilon, delta)
        }
        Some(job_spec::Kind::Query(q)) => ("query", 0, q.epsilon, 0.0),
        None => ("", 0, 0.0, 0.0),
    };
    JobTerms {
        kind: kind.to_owned(),
        created_by: job.created_by.clone(),
        created_unix_ms: job.created_unix_ms,
        rounds,
        epsilon,
        delta,
        purpose: purpose.to_owned(),
        fields: rules.sharing.fields.clone(),
        secure_aggregation,
    }
}

/// The agency id an agency is shown by in a job's rounds and events. A federation never has
/// two members of one id (its creation refuses that), so within a job the id names one
/// (country, id) pair, the one its membership states.
pub(crate) fn shown(agency: &Identity) -> &str {
    agency.agency_id().unwrap_or_default()
}

/// Waits until at least `min` members hold a session; returns the connected members, in the
/// federation's order.
async fn wait_for_members(
    ctx: &Coordinator,
    members: &[Identity],
    min: usize,
    timeout: Duration,
) -> Result<Vec<Identity>, Vec<Identity>> {
    let mut changes = ctx.sessions.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let connected: Vec<Identity> = members
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

/// The results of one round: what was sent, who answered with a usable result.
#[derive(Debug)]
pub(crate) struct Collected {
    pub summary: RoundSummary,
    pub results: Vec<(String, TaskResult)>,
    /// When the last chunk of the last usable result arrived.
    pub last_received: Option<Instant>,
    /// Under secure aggregation: the sum of the survivors' updates (the only thing the
    /// coordinator learns of them); the survivors are the round's contributors.
    pub secure_sum: Option<Vec<f64>>,
}

/// What a round of secure aggregation needs besides its agencies: the job's spec and the
/// number of values each agency contributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecureAsk {
    pub spec: treaty_proto::v1::SecureAggregationSpec,
    pub length: usize,
}

/// Runs round `round` of `job`: sends `kind` to the connected members and collects their
/// results, taken in by `intake`, each checked by `check` on a blocking thread (a full model's
/// distance, an answer's bounds), which may also take it in (fold a staged update into a
/// running sum) when it passes: `check` sees exactly the results that arrive in time, one at a
/// time, and those it passes are the round's contributors. Fails the job when fewer agencies
/// than its `rules` need are connected, admitted by the sharing policies, or send usable
/// results. With `secure`, the round is one of secure aggregation (`ask_secure`): its
/// contributors' updates arrive masked and only their sum (`Collected::secure_sum`) is known.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn collect(
    ctx: &Arc<Coordinator>,
    job: &Job,
    rules: &RoundRules,
    round: u32,
    kind: task::Kind,
    intake: Intake,
    secure: Option<SecureAsk>,
    check: impl Fn(&mut TaskResult) -> Result<(), String> + Send + Sync + 'static,
) -> Result<Collected, CoordinatorError> {
    let check = Arc::new(check);
    // A job that waits for approvals waits for decisions after those made before this round.
    let decisions_before = ctx.approvals.decisions();
    let name = job.federation.clone();
    let federation = ctx
        .blocking(move |ctx| ctx.store.federation(&name))
        .await?
        .ok_or_else(|| CoordinatorError::FederationGone {
            federation: job.federation.clone(),
        })?;
    let min = rules.min_participants();
    let join_timeout = rules.join_timeout();
    let round_timeout = rules.round_timeout_ms();
    let all_members = members(&federation);
    let invited = wait_for_members(ctx, &all_members, min, join_timeout)
        .await
        .map_err(|connected| CoordinatorError::TooFewConnected {
            round,
            connected: connected.iter().filter_map(Identity::member).collect(),
            waited_secs: join_timeout.as_secs(),
            min,
        })?;

    // An agency whose own ledger says the next round would exceed its budget is not invited
    // (to a training round: its report's next round is what the job would release next).
    let final_evaluation = matches!(kind, task::Kind::Evaluation(_));
    let mut excluded: Vec<Exclusion> = Vec::new();
    // Every member is accounted for: one without a session when the round starts is named.
    for member in all_members.iter().filter(|m| !invited.contains(m)) {
        excluded.push(exclusion(
            shown(member),
            ExclusionCode::NotConnected,
            "a member of the federation whose node had no session when the round started",
        ));
    }
    let rejected = ctx.approvals.rejected(&job.job_id);
    let (gone, invited): (Vec<Identity>, Vec<Identity>) = invited
        .into_iter()
        .partition(|agency| rejected.iter().any(|r| r == shown(agency)));
    for agency in &gone {
        excluded.push(exclusion(
            shown(agency),
            ExclusionCode::ApprovalRejected,
            "its operator rejected the job in an earlier round; it is not asked again",
        ));
    }
    let invited: Vec<Identity> = invited
        .into_iter()
        .filter(
            |agency| match ctx.over_budget(agency).filter(|_| !final_evaluation) {
                Some(why) => {
                    let name = shown(agency);
                    ctx.emit(
                        job,
                        JobEventKind::AgencyOverBudget,
                        round,
                        name,
                        format!("{name} is not invited: {why}"),
                    );
                    excluded.push(exclusion(name, ExclusionCode::BudgetExhausted, &why));
                    false
                }
                None => true,
            },
        )
        .collect();
    let what = if round == 0 {
        "statistics round".to_owned()
    } else if final_evaluation {
        format!("round {round} (the evaluation of the final model)")
    } else {
        format!("round {round}")
    };
    // The sharing policies decide who takes part; each agency left out is told why.
    let decided = policy::decide_round(
        ctx,
        Question {
            job_id: job.job_id.clone(),
            round,
            federation,
            candidates: invited.clone(),
            sharing: crate::valid_job::Sharing {
                secure_aggregation: secure.is_some(),
                ..rules.sharing.clone()
            },
            min_participants: min,
        },
    )
    .await?;
    // The decision and its audit line are not flushed yet: before an excluded agency or a
    // watcher is told, or the round fails, they are; otherwise the round's `round.started`
    // line below carries them, before any task leaves.
    if !decided.decision.excluded.is_empty() || decided.decision.admitted.len() < min {
        ctx.blocking(|ctx| ctx.store.flush()).await?;
    }
    // By id, once: a round of many agencies looks each one up.
    let ids: HashMap<&str, &Identity> = invited.iter().map(|a| (shown(a), a)).collect();
    let by_id = |id: &str| ids.get(id).map(|a| (*a).clone());
    for e in &decided.decision.excluded {
        let code = e.reason.code();
        ctx.emit(
            job,
            JobEventKind::AgencyExcluded,
            round,
            &e.agency,
            format!("{} is not admitted: {code}: {}", e.agency, e.explanation),
        );
        if let Some(outbox) = by_id(&e.agency).and_then(|a| ctx.sessions.outbox(&a)) {
            let _ = outbox.try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Excluded(RoundExclusion {
                    job_id: job.job_id.clone(),
                    round,
                    reason_code: code.clone(),
                    all_reasons: e.all_reasons.iter().map(|r| r.code()).collect(),
                    explanation: e.explanation.clone(),
                })),
            }));
        }
        excluded.push(exclusion(
            &e.agency,
            ExclusionCode::Policy(e.reason),
            &e.explanation,
        ));
    }
    if decided.decision.admitted.len() < min {
        return Err(CoordinatorError::TooFewAdmitted {
            what,
            admitted: decided.decision.admitted.clone(),
            min,
            why: excluded
                .iter()
                .map(|e| format!("{}: {}: {}", e.agency, e.reason_code, e.message))
                .collect(),
        });
    }
    let admitted: Vec<Identity> = decided
        .decision
        .admitted
        .iter()
        .filter_map(|id| by_id(id))
        .collect();
    let invited = decided.decision.admitted.clone();
    let stated = job_terms(job, &decided.terms.purpose, rules);
    let started = now_ms();
    ctx.save_audit(
        &ctx.identity.to_string(),
        "round.started",
        job,
        round,
        "",
        format!(
            "{what}; invited: {}; not invited: {}",
            admitted
                .iter()
                .filter_map(Identity::member)
                .collect::<Vec<_>>()
                .join(", "),
            match excluded.is_empty() {
                true => "none".to_owned(),
                false => excluded
                    .iter()
                    .map(|e| format!("{} ({}: {})", e.agency, e.reason_code, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        ),
    )
    .await?;
    ctx.emit(
        job,
        JobEventKind::RoundStarted,
        round,
        "",
        format!("{what} started: {} agencies invited", invited.len()),
    );

    let mut results: Vec<(String, TaskResult)> = Vec::new();
    // Every result taken in, by its hash, for the round's results record.
    let mut received: Vec<ReceivedResult> = Vec::new();
    // The round asks its admitted agencies; when it is short of results only for want of
    // approvals still pending, it waits for their operators' decisions and asks those
    // agencies again (the others' results stay: nobody releases twice for one round).
    let mut asked: Vec<Identity> = admitted.clone();
    let mut decisions_seen = decisions_before;
    let waiting_since = tokio::time::Instant::now();
    let mut secure_sum = None;
    for attempt in 0u32.. {
        let mut round_ctx = Asking {
            ctx,
            job,
            round,
            intake,
            excluded: &mut excluded,
            results: &mut results,
            received: &mut received,
            secure,
            secure_sum: &mut secure_sum,
        };
        let (terms, stated) = (&decided.terms, &stated);
        round_ctx
            .ask(&asked, attempt, &kind, terms, stated, round_timeout, &check)
            .await?;
        // A round of secure aggregation is one protocol run among the agencies asked at once:
        // it is not asked again (another run's sum could not be added to this one's).
        if results.len() >= min || secure.is_some() {
            break;
        }
        let pending: Vec<&Exclusion> = excluded
            .iter()
            .filter(|e| e.reason_code == ExclusionCode::ApprovalPending.code())
            .collect();
        let could = !pending.is_empty() && results.len() + pending.len() >= min;
        if !could || waiting_since.elapsed() > MAX_APPROVAL_WAIT {
            break;
        }
        let names: Vec<String> = pending.iter().map(|e| e.agency.clone()).collect();
        let line = format!(
            "{what} waits for the approval of the job by the operators of {}; it asks them again when one of them decides",
            names.join(", ")
        );
        ctx.save_audit(
            &ctx.identity.to_string(),
            "round.awaiting_approval",
            job,
            round,
            "",
            line.clone(),
        )
        .await?;
        ctx.emit(job, JobEventKind::AwaitingApproval, round, "", line);
        ctx.approvals.wait(decisions_seen).await;
        decisions_seen = ctx.approvals.decisions();
        // Those still connected are asked again; their earlier refusals leave the record.
        asked = names
            .iter()
            .filter_map(|n| by_id(n))
            .filter(|a| ctx.sessions.is_connected(a))
            .collect();
        excluded.retain(|e| {
            !(e.reason_code == ExclusionCode::ApprovalPending.code() && names.contains(&e.agency))
        });
        for name in names
            .iter()
            .filter(|n| !asked.iter().any(|a| shown(a) == n.as_str()))
        {
            excluded.push(exclusion(
                name,
                ExclusionCode::NotConnected,
                "its node's session closed while the round waited for its approval",
            ));
        }
    }
    if results.len() < min {
        // The results taken in (and signed for) stay in the evidence, vouched for by the
        // round's failure.
        let sha = archive_results(ctx, job, round, received).await?;
        if !sha.is_empty() {
            let line = format!(
                "{what}: {} usable result(s), fewer than {min}",
                results.len()
            );
            ctx.save_audit_round("round.failed", job, round, line, &sha)
                .await?;
        }
        return Err(CoordinatorError::TooFewResults {
            what,
            results: results.len(),
            min,
            why: excluded
                .iter()
                .map(|e| format!("{}: {}", e.agency, e.message))
                .collect(),
        });
    }
    // Contributors in the federation's order, whatever order their results arrived in.
    let order: HashMap<&str, usize> = invited
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), i))
        .collect();
    results.sort_by_key(|(agency, _)| order.get(agency.as_str()).copied());
    let metric_inputs: Vec<(u64, &HashMap<String, f64>)> = results
        .iter()
        .map(|(_, r)| (r.num_examples, &r.metrics))
        .collect();
    let summary = RoundSummary {
        round,
        invited,
        contributors: results.iter().map(|(a, _)| a.clone()).collect(),
        excluded,
        num_examples: results.iter().map(|(_, r)| r.num_examples).sum(),
        metrics: aggregate::weighted_metrics(&metric_inputs),
        agency_metrics: results
            .iter()
            .map(|(a, r)| {
                let mut values = r.metrics.clone();
                // What the agency's own ledger says it has spent, over every job, after this
                // round's release: the operator sees each agency's spending as the round goes.
                if let Some(p) = &r.privacy
                    && p.spent_epsilon.is_finite()
                {
                    values.insert("spent_epsilon".into(), p.spent_epsilon);
                }
                (
                    a.clone(),
                    AgencyMetrics {
                        values,
                        num_examples: r.num_examples,
                        intervals: HashMap::new(),
                        spending: r.privacy.as_ref().map(|p| AgencySpending {
                            spent_epsilon: p.spent_epsilon,
                            job_spent_epsilon: p.job_spent_epsilon,
                            delta: p.delta,
                            max_epsilon: p.max_epsilon,
                        }),
                    },
                )
            })
            .collect(),
        started_unix_ms: started,
        policy_decision: decided.record,
        ..Default::default()
    };
    let last_received = results.iter().map(|(_, r)| r.received).max();
    let mut summary = summary;
    summary.results_sha256 = archive_results(ctx, job, round, received).await?;
    Ok(Collected {
        summary,
        results,
        last_received,
        secure_sum,
    })
}

/// Archives a round's results record under its SHA-256 (which the round's completing or
/// failing audit entry vouches for); the SHA-256, empty when no result arrived.
async fn archive_results(
    ctx: &Arc<Coordinator>,
    job: &Job,
    round: u32,
    received: Vec<ReceivedResult>,
) -> Result<String, CoordinatorError> {
    if received.is_empty() {
        return Ok(String::new());
    }
    let record = ResultsRecord {
        job: job.job_id.clone(),
        round,
        results: received,
    };
    // Strings, numbers and booleans: serialising cannot fail.
    let record = serde_json::to_string(&record).unwrap_or_default();
    let sha = treaty_proto::hex::sha256_hex(record.as_bytes());
    let archived = sha.clone();
    ctx.blocking(move |ctx| ctx.store.archive_policy(&archived, &record))
        .await?;
    Ok(sha)
}

/// One asking of a round: tasks sent to some of its admitted agencies, and their outcomes
/// collected into the round's record until each has answered or the deadline passed.
struct Asking<'a> {
    ctx: &'a Arc<Coordinator>,
    job: &'a Job,
    round: u32,
    intake: Intake,
    excluded: &'a mut Vec<Exclusion>,
    results: &'a mut Vec<(String, TaskResult)>,
    received: &'a mut Vec<ReceivedResult>,
    secure: Option<SecureAsk>,
    secure_sum: &'a mut Option<Vec<f64>>,
}

impl Asking<'_> {
    /// Sends `kind` to `agencies` (the round's first asking is attempt 0; a later one's task
    /// ids say which it is) and collects what comes back.
    #[allow(clippy::too_many_arguments)]
    async fn ask<F>(
        &mut self,
        agencies: &[Identity],
        attempt: u32,
        kind: &task::Kind,
        terms: &treaty_proto::v1::RoundTerms,
        stated: &JobTerms,
        round_timeout: u32,
        check: &Arc<F>,
    ) -> Result<(), CoordinatorError>
    where
        F: Fn(&mut TaskResult) -> Result<(), String> + Send + Sync + 'static,
    {
        let (ctx, job, round) = (self.ctx, self.job, self.round);
        let deadline_ms = now_ms() + i64::from(round_timeout);
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let secure_params = match self.secure {
            Some(s) => Some(self.secure_params(agencies, s)?),
            None => None,
        };
        let mut open: HashMap<Identity, String> = HashMap::new(); // agency -> task id
        let bare = treaty_proto::participants::bare(terms);
        for agency in agencies {
            let task_id = match attempt {
                0 => format!("{}-r{round}-{}", job.job_id, shown(agency)),
                n => format!("{}-r{round}-{}-a{n}", job.job_id, shown(agency)),
            };
            // A training task carries the receiving agency's own public record estimate alone
            // (one that missed the statistics round gets the federation's median estimate: any
            // public figure keeps its node's release DP, this one keeps its sampling sensible).
            let mut kind = kind.clone();
            if let task::Kind::Training(t) = &mut kind {
                t.public_records = job
                    .public_records
                    .get(shown(agency))
                    .copied()
                    .unwrap_or_else(|| median(job.public_records.values().copied()));
            }
            let task = Task {
                task_id: task_id.clone(),
                job_id: job.job_id.clone(),
                federation: job.federation.clone(),
                round,
                deadline_unix_ms: deadline_ms,
                kind: Some(kind),
                // Set by `send_task`: in full, or naming participants the session was sent.
                terms: None,
                job: Some(stated.clone()),
                secure_aggregation: secure_params.as_ref().map(crate::secure::wire),
            };
            let secure = secure_params.is_some();
            ctx.tasks
                .open(&task_id, agency, tx.clone(), self.intake, secure);
            let sent = ctx.sessions.send_task(agency, task, terms, &bare).await;
            if sent {
                open.insert(agency.clone(), task_id);
            } else {
                ctx.tasks.close(&task_id);
                self.excluded.push(exclusion(
                    shown(agency),
                    ExclusionCode::NotConnected,
                    "the node's session closed before the task could be sent",
                ));
            }
        }
        drop(tx);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(round_timeout));
        if let Some(params) = secure_params {
            let outcome = self
                .ask_secure(params, &mut open, &mut rx, deadline, round_timeout, check)
                .await;
            for task_id in open.values() {
                ctx.tasks.close(task_id);
            }
            return outcome;
        }
        while !open.is_empty() {
            // What has arrived is taken in before the deadline is looked at, and once it has
            // passed, what had arrived by then still is: a result the coordinator signed a
            // receipt for is never dropped unread.
            let delivery = tokio::select! {
                biased;
                d = rx.recv() => d,
                _ = tokio::time::sleep_until(deadline) => rx.try_recv().ok(),
            };
            let Some((identity, outcome)) = delivery else {
                break;
            };
            let task_id = open.remove(&identity).unwrap_or_default();
            self.take(identity, task_id, outcome, check).await?;
        }
        for (agency, task_id) in open {
            ctx.tasks.close(&task_id);
            self.timed_out(
                &agency,
                task_id,
                "the round's deadline passed",
                format!("no result within {round_timeout} ms"),
            );
        }
        Ok(())
    }

    /// An agency that did not answer in time: its node is told to stop, and the round records
    /// why it is left out.
    fn timed_out(&mut self, agency: &Identity, task_id: String, cancel: &str, why: String) {
        if let Some(outbox) = self.ctx.sessions.outbox(agency) {
            let _ = outbox.try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Cancel(CancelTask {
                    task_id,
                    reason: cancel.into(),
                })),
            }));
        }
        self.excluded
            .push(exclusion(shown(agency), ExclusionCode::TimedOut, &why));
    }

    /// The parameters of the round of secure aggregation among `agencies`.
    fn secure_params(
        &self,
        agencies: &[Identity],
        secure: SecureAsk,
    ) -> Result<treaty_proto::secagg::Params, CoordinatorError> {
        let params = crate::secure::params(
            &secure.spec,
            &self.job.job_id,
            self.round,
            agencies,
            secure.length,
        );
        params.check().map_err(|e| self.secure_failed(e))?;
        Ok(params)
    }

    fn secure_failed(&self, e: treaty_proto::secagg::SecAggError) -> CoordinatorError {
        CoordinatorError::SecureAggregation {
            what: format!("round {}", self.round),
            problem: e.to_string(),
        }
    }

    /// Collects a round of secure aggregation: the protocol's steps as they arrive, each
    /// closed when every agency still in it answered or its time is up (the masked updates'
    /// at the round's deadline), the masked updates taken in as results (checked, then added to
    /// the round's masked sum, never kept on their own), and at the end the sum recovered.
    async fn ask_secure<F>(
        &mut self,
        params: treaty_proto::secagg::Params,
        open: &mut HashMap<Identity, String>,
        rx: &mut mpsc::UnboundedReceiver<Delivery>,
        deadline: tokio::time::Instant,
        round_timeout: u32,
        check: &Arc<F>,
    ) -> Result<(), CoordinatorError>
    where
        F: Fn(&mut TaskResult) -> Result<(), String> + Send + Sync + 'static,
    {
        use crate::secure::{SecureRound, Stage};
        let (ctx, job, round) = (self.ctx, self.job, self.round);
        let ca = ctx
            .store
            .signer()
            .map(|s| s.ca_certificate().to_vec())
            .ok_or_else(|| CoordinatorError::SecureAggregation {
                what: format!("round {round}"),
                problem: "the coordinator keeps no CA certificate to check the agencies' keys by"
                    .into(),
            })?;
        tracing::info!(
            job = %job.job_id,
            round,
            agencies = params.participants.len(),
            threshold = params.threshold,
            fractional_bits = params.fractional_bits,
            "secure aggregation round started"
        );
        let mut secure = SecureRound::new(params, ca, open, round_timeout, deadline)
            .map_err(|e| self.secure_failed(e))?;
        let mut answered: std::collections::HashSet<Identity> = Default::default();
        let mut changes = ctx.sessions.subscribe();
        let mut watching = true;
        while secure.stage != Stage::Done {
            if secure.complete() || tokio::time::Instant::now() >= secure.deadline {
                secure
                    .advance(ctx)
                    .await
                    .map_err(|e| self.secure_failed(e))?;
                continue;
            }
            let wake = secure.deadline;
            tokio::select! {
                biased;
                d = rx.recv() => {
                    let Some((identity, outcome)) = d else { break };
                    let task_id = open.get(&identity).cloned().unwrap_or_default();
                    match outcome {
                        Outcome::SecAgg(step) => {
                            if let Err(e) = secure.step(&identity, *step) {
                                ctx.warn_peer(&identity, "secure aggregation step refused", &e.to_string());
                            }
                        }
                        Outcome::Result(result) if secure.stage == Stage::Inputs => {
                            answered.insert(identity.clone());
                            let before = self.results.len();
                            self.take(identity.clone(), task_id, Outcome::Result(result), check).await?;
                            if self.results.len() == before {
                                secure.gone(&identity);
                                continue;
                            }
                            let masked = self
                                .results
                                .last_mut()
                                .and_then(|(_, r)| r.staged.take())
                                .ok_or_else(|| "its result holds no masked update".to_owned())
                                .and_then(|s| s.tensors.masked().map_err(|e| e.to_string()))
                                .and_then(|values| secure.masked(&identity, &values).map_err(|e| e.to_string()));
                            if let Err(reason) = masked {
                                self.results.pop();
                                secure.gone(&identity);
                                reject(ctx, job, round, &identity, reason, self.excluded).await?;
                            }
                        }
                        Outcome::Result(_) => {
                            answered.insert(identity.clone());
                            let reason = "its masked update arrived after the round stopped taking them".to_owned();
                            reject(ctx, job, round, &identity, reason, self.excluded).await?;
                        }
                        other => {
                            answered.insert(identity.clone());
                            secure.gone(&identity);
                            self.take(identity, task_id, other, check).await?;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                changed = changes.changed(), if watching => {
                    watching = changed.is_ok();
                    let gone: Vec<Identity> = secure
                        .waiting()
                        .filter(|a| !ctx.sessions.is_connected(a))
                        .cloned()
                        .collect();
                    for agency in &gone {
                        secure.gone(agency);
                    }
                }
            }
        }
        for (agency, task_id) in open.iter() {
            if answered.contains(agency) {
                continue;
            }
            self.timed_out(
                agency,
                task_id.clone(),
                "the round of secure aggregation went on without it",
                format!("no masked update within {round_timeout} ms"),
            );
        }
        *self.secure_sum = secure.into_sum().map(|(sum, _)| sum);
        Ok(())
    }

    /// Takes in one agency's outcome.
    async fn take<F>(
        &mut self,
        identity: Identity,
        task_id: String,
        outcome: Outcome,
        check: &Arc<F>,
    ) -> Result<(), CoordinatorError>
    where
        F: Fn(&mut TaskResult) -> Result<(), String> + Send + Sync + 'static,
    {
        let (ctx, job, round) = (self.ctx, self.job, self.round);
        let agency = shown(&identity).to_owned();
        match outcome {
            Outcome::Refused {
                reason_code,
                message,
            } => {
                ctx.emit(
                    job,
                    JobEventKind::AgencyRefused,
                    round,
                    &agency,
                    format!("{agency} refused the task: {reason_code}: {message}"),
                );
                ctx.save_audit(
                    &identity.to_string(),
                    "task.refused",
                    job,
                    round,
                    &identity.to_string(),
                    format!("{reason_code}: {message}"),
                )
                .await?;
                let exclusion = refused(&agency, &reason_code, &message);
                if exclusion.reason_code == ExclusionCode::ApprovalRejected.code() {
                    ctx.approvals.note_rejected(&job.job_id, &agency);
                }
                if exclusion.reason_code == ExclusionCode::ApprovalPending.code() {
                    ctx.approvals.note_pending(&job.job_id, &agency);
                }
                self.excluded.push(exclusion);
            }
            Outcome::Invalid(reason) => {
                reject(ctx, job, round, &identity, reason, self.excluded).await?
            }
            Outcome::SecAgg(_) => {
                ctx.warn_peer(
                    &identity,
                    "secure aggregation step outside such a round",
                    "",
                );
            }
            Outcome::Result(result) => {
                let check = Arc::clone(check);
                let small = result.tensor_bytes() <= CHECKED_HERE_BYTES;
                let checked = move || {
                    let mut result = *result;
                    let verdict = check(&mut result);
                    (result, verdict)
                };
                // A small result is checked (and folded in) here, in microseconds: less than
                // handing it to a blocking thread and back. A large one on a blocking thread.
                // Either way a panic fails the round, as a failed blocking thread does.
                let (result, verdict) = match small {
                    true => std::panic::catch_unwind(std::panic::AssertUnwindSafe(checked))
                        .map_err(|_| CoordinatorError::CheckPanicked)?,
                    false => tokio::task::spawn_blocking(checked).await?,
                };
                self.received.push(ReceivedResult {
                    agency: identity.to_string(),
                    task_id,
                    result_sha256: result.sha256.clone(),
                    passed: verdict.is_ok(),
                    sent: result.sent.clone(),
                });
                match verdict {
                    Ok(()) => {
                        ctx.emit(
                            job,
                            JobEventKind::ResultAccepted,
                            round,
                            &agency,
                            format!("{agency} sent its result"),
                        );
                        self.results.push((agency, result));
                    }
                    Err(reason) => {
                        reject(ctx, job, round, &identity, reason, self.excluded).await?
                    }
                }
            }
        }
        Ok(())
    }
}

/// A result whose tensors take at most this many bytes (8,192 `f64` values) is checked on the
/// round's own task, a larger one on a blocking thread.
const CHECKED_HERE_BYTES: usize = 64 * 1024;

/// The median of some figures; 0 for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Records a result that cannot be used: logged and audited with the agency's identity, reported
/// to watchers, and the agency excluded from the round.
async fn reject(
    ctx: &Arc<Coordinator>,
    job: &Job,
    round: u32,
    identity: &Identity,
    reason: String,
    excluded: &mut Vec<Exclusion>,
) -> Result<(), CoordinatorError> {
    let agency = shown(identity);
    tracing::warn!(job = %job.job_id, round, agency = %identity, reason = %crate::peerlog::capped(&reason), "update rejected");
    ctx.save_audit(
        &identity.to_string(),
        "update.rejected",
        job,
        round,
        &identity.to_string(),
        reason.clone(),
    )
    .await?;
    ctx.emit(
        job,
        JobEventKind::ResultRejected,
        round,
        agency,
        format!("{agency}'s result was rejected: {reason}"),
    );
    excluded.push(exclusion(agency, ExclusionCode::InvalidUpdate, &reason));
    Ok(())
}

/// A one-line account of a completed round.
pub(crate) fn round_line(summary: &RoundSummary) -> String {
    let metrics = treaty_proto::evaluation::describe(&summary.metrics, &summary.metric_intervals);
    // No count of records: under DP a node's result counts 1, whatever its data.
    let mut line = format!(
        "{} contributor(s) ({})",
        summary.contributors.len(),
        summary.contributors.join(", "),
    );
    if !summary.excluded.is_empty() {
        let out: Vec<String> = summary
            .excluded
            .iter()
            .map(|e| format!("{} {}", e.agency, e.reason_code))
            .collect();
        line.push_str(&format!(", excluded: {}", out.join(", ")));
    }
    if !metrics.is_empty() {
        line.push_str(&format!(", {metrics}"));
    }
    if !summary.values.is_empty() {
        line.push_str(&format!(", values {:?}", summary.values));
    }
    line
}

#[cfg(test)]
mod exclusion_codes {
    use super::ExclusionCode;
    use treaty_policies::Reason;

    /// The codes operators, audit records and docs/THREAT_MODEL.md name.
    #[test]
    fn each_code_has_its_wire_string() {
        for (code, wire) in [
            (ExclusionCode::BudgetExhausted, "BUDGET_EXHAUSTED"),
            (ExclusionCode::NotConnected, "NOT_CONNECTED"),
            (ExclusionCode::Refused, "REFUSED"),
            (ExclusionCode::ApprovalPending, "APPROVAL_PENDING"),
            (ExclusionCode::ApprovalRejected, "APPROVAL_REJECTED"),
            (ExclusionCode::TimedOut, "TIMED_OUT"),
            (ExclusionCode::InvalidUpdate, "INVALID_UPDATE"),
            (
                ExclusionCode::Policy(Reason::PolicyMissing),
                "POLICY_MISSING",
            ),
        ] {
            assert_eq!(code.code(), wire);
        }
    }
}

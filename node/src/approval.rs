//! Human approval of jobs at the agency. A node configured with `[approval] required = true`
//! takes part in no job its own operator has not approved: the first task of a new job is
//! refused `APPROVAL_PENDING` and the job is listed by `treaty node pending` with the terms the
//! coordinator states for it (purpose, fields, who started it, rounds, the epsilon it would spend
//! at this agency); a person approves or rejects it with `treaty node approve|reject JOB`, and
//! the decision, their name and the operating-system account that asked go into the node's
//! evidence log. An approval is bound to the terms approved (their SHA-256): a task of the job
//! under other terms is pending again, and no release of the job may take its spending at this
//! agency, by the node's own ledger, past the epsilon approved. A rejection is final.
//!
//! Whether a node refuses depends only on its operator's decisions, never on its records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use treaty_policies::privacy::{self, Release};
use treaty_proto::v1::{Task, task};

use crate::ledger::{ApprovalRecord, Entry, Evidence, Record};
use crate::refusal::{Refusal, RefusalCode};

/// The `[approval]` section of a node's configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Whether each new job needs the approval of the agency's own operator before the node
    /// takes part in it. Default: false.
    #[serde(default)]
    pub required: bool,
    /// The operating-system accounts that may approve or reject jobs; empty: any account that
    /// can open the node's control socket (`control/control.sock` in its state directory: the
    /// node's own account and the members of the node's group).
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// What a person approves: the job as the coordinator states it, with who states it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTermsView {
    pub job_id: String,
    pub federation: String,
    /// The coordinator's identity, from its certificate.
    pub coordinator: String,
    pub kind: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub rounds: u32,
    /// The most epsilon the job would spend at this agency, at `delta`; 0: not stated (each
    /// round then spends at most its terms' epsilon per round).
    pub epsilon: f64,
    pub delta: f64,
    pub purpose: String,
    pub fields: Vec<String>,
    /// A training job's secure aggregation, in words (absent: none; so a view of a job without
    /// it, and its SHA-256, are what they were before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<String>,
}

/// A job's secure aggregation as a person approving it reads it.
fn secure_aggregation_words(spec: &treaty_proto::v1::SecureAggregationSpec) -> String {
    let dropouts = match spec.max_dropouts {
        0 => "a third of the agencies may drop out".to_owned(),
        d => format!("at most {d} agencies may drop out"),
    };
    let noise = match spec.distributed_noise {
        true => format!(
            "distributed noise: each agency adds a share, assuming at most {} of a round's agencies dishonest (an agency that assumes more adds its whole noise)",
            spec.assumed_dishonest
        ),
        false => "each agency adds its whole noise".to_owned(),
    };
    format!("the coordinator learns only each round's sum ({dropouts}); {noise}")
}

impl JobTermsView {
    /// The terms `stated` in `task`, sent by `coordinator`, as a person reads them.
    fn of(task: &Task, stated: &treaty_proto::v1::JobTerms, coordinator: &str) -> Self {
        JobTermsView {
            job_id: task.job_id.clone(),
            federation: task.federation.clone(),
            coordinator: coordinator.to_owned(),
            kind: stated.kind.clone(),
            created_by: stated.created_by.clone(),
            created_unix_ms: stated.created_unix_ms,
            rounds: stated.rounds,
            epsilon: stated.epsilon,
            delta: stated.delta,
            purpose: stated.purpose.clone(),
            fields: stated.fields.clone(),
            secure_aggregation: stated
                .secure_aggregation
                .as_ref()
                .map(secure_aggregation_words),
        }
    }

    /// The SHA-256 (hex) of the view's JSON, which an approval is bound to.
    pub fn sha256(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        treaty_proto::hex::sha256_hex(&bytes)
    }
}

/// A job waiting for its approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub terms: JobTermsView,
    pub terms_sha256: String,
    /// When the coordinator last asked, and for which round.
    pub asked_unix_ms: i64,
    pub round: u32,
}

#[derive(Debug, Clone)]
enum Standing {
    Pending(Pending),
    /// Approved under `view` (of SHA-256 `sha`); `proposed`: other terms a task of the job
    /// stated since, waiting for an approval of their own (the approval stands for its own).
    Approved {
        view: JobTermsView,
        sha: String,
        proposed: Option<Box<Pending>>,
    },
    Rejected,
}

/// The node's approvals: from its evidence log, and the jobs asked about since it started.
#[derive(Debug)]
pub(crate) struct Approvals {
    config: ApprovalConfig,
    evidence: Arc<Evidence>,
    jobs: Mutex<HashMap<String, Standing>>,
    /// Each decision, as (job, approved), for the session to tell the coordinator: a job
    /// waiting for it runs its round again.
    decided: tokio::sync::broadcast::Sender<(String, bool)>,
}

/// A decision a person asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve,
    Reject,
}

impl Approvals {
    /// The approvals recorded in `records` (the evidence log, oldest first).
    pub(crate) fn new(config: ApprovalConfig, evidence: Arc<Evidence>, records: &[Record]) -> Self {
        let mut jobs = HashMap::new();
        for record in records {
            if let Record::Approval(a) = record {
                let standing = match (a.decision.as_str(), serde_json::from_value(a.terms.clone()))
                {
                    ("approved", Ok(view)) => Standing::Approved {
                        view,
                        sha: a.terms_sha256.clone(),
                        proposed: None,
                    },
                    _ => Standing::Rejected,
                };
                jobs.insert(a.job_id.clone(), standing);
            }
        }
        Approvals {
            config,
            evidence,
            jobs: Mutex::new(jobs),
            decided: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// The decisions from now on, as (job, approved).
    pub(crate) fn decisions(&self) -> tokio::sync::broadcast::Receiver<(String, bool)> {
        self.decided.subscribe()
    }

    pub(crate) fn required(&self) -> bool {
        self.config.required
    }

    /// The evidence log the decisions go into.
    pub(crate) fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// Whether the node may take part in `task`'s job, sent by `coordinator`: with approval
    /// required, only in a job approved under the terms the task states.
    pub(crate) fn check(&self, task: &Task, coordinator: &str, now_ms: i64) -> Result<(), Refusal> {
        if !self.config.required {
            return Ok(());
        }
        let Some(stated) = &task.job else {
            return Err(Refusal::invalid(
                "the task states no job terms, and this node takes part only in jobs its operator approved by their terms",
            ));
        };
        check_terms(task, stated)?;
        let view = JobTermsView::of(task, stated, coordinator);
        let sha = view.sha256();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        // A person reads what is pending: the list stays short (the oldest request goes).
        if !jobs.contains_key(&task.job_id) {
            let pending: Vec<(i64, String)> = jobs
                .iter()
                .filter_map(|(job, s)| match s {
                    Standing::Pending(p) => Some((p.asked_unix_ms, job.clone())),
                    _ => None,
                })
                .collect();
            if pending.len() >= MAX_PENDING
                && let Some((_, oldest)) = pending.iter().min()
            {
                jobs.remove(oldest);
            }
        }
        let job = task.job_id.clone();
        let asked = Pending {
            terms: view,
            terms_sha256: sha.clone(),
            asked_unix_ms: now_ms,
            round: task.round,
        };
        let changed = match jobs.get_mut(&task.job_id) {
            Some(Standing::Rejected) => {
                return Err(Refusal::new(
                    RefusalCode::ApprovalRejected,
                    format!(
                        "this agency's operator rejected job `{}`; the node takes no part in it",
                        task.job_id
                    ),
                ));
            }
            Some(Standing::Approved { sha: approved, .. }) if *approved == sha => return Ok(()),
            Some(Standing::Approved { proposed, .. }) => {
                *proposed = Some(Box::new(asked));
                true
            }
            _ => {
                jobs.insert(job.clone(), Standing::Pending(asked));
                false
            }
        };
        let message = match changed {
            true => format!(
                "the terms of job `{job}` changed since this agency's operator approved it; the node takes part again once they approve the new terms (treaty node pending)"
            ),
            false => format!(
                "job `{job}` waits for the approval of this agency's operator (treaty node pending, then approve or reject)"
            ),
        };
        Err(Refusal::new(RefusalCode::ApprovalPending, message))
    }

    /// Whether `releases` for `task` keep its job's spending at this agency, by `entries` (the
    /// ledger before them), within the epsilon its operator approved. Called under the ledger's
    /// lock.
    pub(crate) fn within_approved(
        &self,
        task: &Task,
        entries: &[Entry],
        releases: &[Release],
    ) -> Result<(), Refusal> {
        if !self.config.required {
            return Ok(());
        }
        let approved = self.still_approved(task)?;
        // One release a round: a round asked again (a coordinator restarted) spends nothing
        // more, and a job that states no total spends at most its rounds' terms.
        if entries.iter().any(|e| {
            e.job_id == task.job_id && e.federation == task.federation && e.round == task.round
        }) {
            return Err(Refusal::new(
                RefusalCode::ApprovalExceeded,
                format!(
                    "this agency already released for round {} of job `{}`, which its operator approved once",
                    task.round, task.job_id
                ),
            ));
        }
        if approved.epsilon <= 0.0 {
            return Ok(());
        }
        let delta = if approved.delta > 0.0 {
            approved.delta
        } else {
            1e-9
        };
        let mut job: Vec<Release> = Vec::new();
        for e in entries
            .iter()
            .filter(|e| e.job_id == task.job_id && e.federation == task.federation)
        {
            // The ledger refuses releases without DP when it keeps a budget; without one, such
            // an entry makes the job's spending unbounded.
            match &e.releases {
                Some(r) => job.extend_from_slice(r),
                None => return Err(exceeded(&task.job_id, f64::INFINITY, &approved)),
            }
        }
        job.extend_from_slice(releases);
        let spent = privacy::spent(&job, delta).map_err(|e| Refusal::invalid(e.to_string()))?;
        // The node calibrates a job's noise to its target exactly: a rounding's slack is not
        // a release beyond it.
        let within = spent.epsilon.is_finite() && spent.epsilon <= approved.epsilon * (1.0 + 1e-9);
        if !within {
            return Err(exceeded(&task.job_id, spent.epsilon, &approved));
        }
        Ok(())
    }

    /// The terms `task`'s job was approved under; the refusal when it is not approved (any
    /// more): checked again just before a result leaves.
    pub(crate) fn still_approved(&self, task: &Task) -> Result<JobTermsView, Refusal> {
        if !self.config.required {
            return Ok(JobTermsView::default());
        }
        match self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task.job_id)
        {
            Some(Standing::Approved { view, .. }) => Ok(view.clone()),
            Some(Standing::Rejected) => Err(Refusal::new(
                RefusalCode::ApprovalRejected,
                format!(
                    "this agency's operator rejected job `{}`; the node takes no part in it",
                    task.job_id
                ),
            )),
            _ => Err(Refusal::new(
                RefusalCode::ApprovalPending,
                format!(
                    "job `{}` waits for the approval of this agency's operator",
                    task.job_id
                ),
            )),
        }
    }

    /// The jobs waiting for approval, oldest request first.
    pub(crate) fn pending(&self) -> Vec<Pending> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending: Vec<Pending> = jobs
            .values()
            .filter_map(|s| match s {
                Standing::Pending(p) => Some(p.clone()),
                Standing::Approved { proposed, .. } => proposed.as_deref().cloned(),
                Standing::Rejected => None,
            })
            .collect();
        pending.sort_by(|a, b| {
            (a.asked_unix_ms, &a.terms.job_id).cmp(&(b.asked_unix_ms, &b.terms.job_id))
        });
        pending
    }

    /// Records a person's decision on `job`: approve a pending job, or reject a pending or an
    /// approved one (a rejection is final). The record is durable in the evidence log before
    /// the decision takes effect.
    ///
    /// An approval names the terms the person read (`terms`: their SHA-256 as `pending` shows
    /// it, or its first 12 digits at least): terms that changed since are not approved.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
        &self,
        job: &str,
        decision: Decision,
        terms: &str,
        by: &str,
        note: &str,
        account: (&str, u32),
        now_ms: i64,
    ) -> Result<ApprovalRecord, String> {
        if !self.config.required {
            return Err("this node does not require approval of jobs (its configuration's [approval] required is false)".into());
        }
        if !self.config.approvers.is_empty()
            && !self.config.approvers.iter().any(|a| a == account.0)
        {
            return Err(format!(
                "the account `{}` may not approve or reject jobs at this node; its configuration's approval.approvers lists those who may",
                account.0
            ));
        }
        if by.trim().is_empty() {
            return Err(
                "give your name with --by: it goes into the node's evidence log with the decision"
                    .into(),
            );
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (view, sha) = match (jobs.get(job), decision) {
            (Some(Standing::Pending(p)), _) => (p.terms.clone(), p.terms_sha256.clone()),
            (
                Some(Standing::Approved {
                    proposed: Some(p), ..
                }),
                Decision::Approve,
            ) => (p.terms.clone(), p.terms_sha256.clone()),
            (Some(Standing::Approved { view, sha, .. }), Decision::Reject) => {
                (view.clone(), sha.clone())
            }
            (Some(Standing::Approved { .. }), Decision::Approve) => {
                return Err(format!(
                    "job `{job}` is already approved under the terms it states"
                ));
            }
            (Some(Standing::Rejected), _) => {
                return Err(format!("job `{job}` was rejected; a rejection is final"));
            }
            (None, _) => {
                return Err(format!(
                    "job `{job}` has not asked this node for approval since it started; `treaty node pending` lists the jobs that have"
                ));
            }
        };
        let read = terms.trim().to_ascii_lowercase();
        let names_them = read.len() >= 12 && read.len() <= 64 && sha.starts_with(&read);
        if decision == Decision::Approve && !names_them {
            return Err(format!(
                "job `{job}`'s terms are now {sha}, not the terms you name ({}): read `treaty node pending` again and approve the terms it shows (--terms, 12 digits at least)",
                if read.is_empty() { "none" } else { &read }
            ));
        }
        let record = ApprovalRecord {
            time_unix_ms: now_ms,
            job_id: job.to_owned(),
            decision: match decision {
                Decision::Approve => "approved",
                Decision::Reject => "rejected",
            }
            .to_owned(),
            by: by.trim().to_owned(),
            account: account.0.to_owned(),
            uid: account.1,
            note: note.trim().to_owned(),
            terms: serde_json::to_value(&view).map_err(|e| e.to_string())?,
            terms_sha256: sha.clone(),
        };
        self.evidence
            .append(Record::Approval(record.clone()))
            .map_err(|e| e.to_string())?;
        jobs.insert(
            job.to_owned(),
            match decision {
                Decision::Approve => Standing::Approved {
                    view,
                    sha,
                    proposed: None,
                },
                Decision::Reject => Standing::Rejected,
            },
        );
        // No session may be listening: the coordinator then asks again by itself.
        let _ = self
            .decided
            .send((job.to_owned(), decision == Decision::Approve));
        Ok(record)
    }
}

/// The most jobs waiting for approval a node keeps (the oldest request goes first).
const MAX_PENDING: usize = 256;

/// The longest name, purpose or field a job's terms may hold, in bytes, and the most fields.
const MAX_TERM_BYTES: usize = 128;
const MAX_TERM_FIELDS: usize = 1024;

/// Whether a job's stated terms can be shown to a person and hold together with the task:
/// finite figures, short printable texts, the round within the job's rounds, the task's kind
/// the job's, and the round's purpose and fields the job's. A coordinator that states one
/// thing and asks another is refused (`INVALID_TASK`).
fn check_terms(task: &Task, stated: &treaty_proto::v1::JobTerms) -> Result<(), Refusal> {
    let printable = |t: &str| t.len() <= MAX_TERM_BYTES && !t.chars().any(char::is_control);
    let texts = [
        &task.job_id,
        &task.federation,
        &stated.kind,
        &stated.created_by,
        &stated.purpose,
    ];
    if !texts.iter().all(|t| printable(t))
        || stated.fields.len() > MAX_TERM_FIELDS
        || !stated.fields.iter().all(|f| printable(f))
    {
        return Err(Refusal::invalid(
            "the job's terms hold a text too long or not printable",
        ));
    }
    let figures_fine = stated.epsilon.is_finite()
        && stated.epsilon >= 0.0
        && stated.delta.is_finite()
        && (0.0..1.0).contains(&stated.delta);
    if !figures_fine {
        return Err(Refusal::invalid(format!(
            "the job's terms state epsilon {} at delta {}: not a budget",
            stated.epsilon, stated.delta
        )));
    }
    let kind_fits = match (&task.kind, stated.kind.as_str()) {
        (Some(task::Kind::Query(_)), "query") => task.round <= 1,
        (
            Some(task::Kind::Stats(_) | task::Kind::Training(_) | task::Kind::Evaluation(_)),
            "training",
        ) => task.round <= stated.rounds.saturating_add(1),
        _ => false,
    };
    if !kind_fits {
        return Err(Refusal::invalid(format!(
            "round {} of this kind of task is not part of a {} job of {} round(s), as the job's terms state it",
            task.round, stated.kind, stated.rounds
        )));
    }
    if let Some(terms) = &task.terms
        && (terms.purpose != stated.purpose || terms.fields != stated.fields)
    {
        return Err(Refusal::invalid(
            "the round's purpose or fields are not the ones the job's terms state",
        ));
    }
    // A training round's secure aggregation is the one the job's terms state: a job approved
    // under secure aggregation does not lose it, nor change its assumption, unseen.
    let spec = match &task.kind {
        Some(task::Kind::Training(t)) => t.spec.as_ref(),
        Some(task::Kind::Evaluation(e)) => e.spec.as_ref(),
        _ => None,
    };
    if let Some(spec) = spec
        && spec.secure_aggregation != stated.secure_aggregation
    {
        return Err(Refusal::invalid(
            "the task's secure aggregation is not the one the job's terms state",
        ));
    }
    Ok(())
}

fn exceeded(job: &str, spent: f64, approved: &JobTermsView) -> Refusal {
    Refusal::new(
        RefusalCode::ApprovalExceeded,
        format!(
            "this release would bring job `{job}`'s spending at this agency to epsilon {spent:.4} at delta {:e}, above the {} its operator approved",
            approved.delta, approved.epsilon
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::JobTerms;

    fn task(job: &str, epsilon: f64) -> Task {
        Task {
            task_id: format!("{job}-r1-DE-BKA"),
            job_id: job.into(),
            federation: "fed".into(),
            round: 1,
            kind: Some(task::Kind::Training(Default::default())),
            job: Some(JobTerms {
                kind: "training".into(),
                created_by: "treaty://operator/ops".into(),
                created_unix_ms: 5,
                rounds: 3,
                epsilon,
                delta: 1e-5,
                purpose: "counter_trafficking".into(),
                fields: vec!["f0".into()],
                secure_aggregation: None,
            }),
            ..Default::default()
        }
    }

    fn approvals(dir: &std::path::Path, approvers: &[&str]) -> (Approvals, Arc<Evidence>) {
        let db = crate::ledger::reopen_for_tests(dir);
        let (evidence, records) = Evidence::open(&db).unwrap();
        let evidence = Arc::new(evidence);
        let config = ApprovalConfig {
            required: true,
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
        };
        (Approvals::new(config, evidence.clone(), &records), evidence)
    }

    const HUB: &str = "treaty://coordinator/hub";

    /// The terms `pending` shows for the first job waiting, as a person copies them: the first
    /// 12 digits of their SHA-256.
    fn shown(a: &Approvals) -> String {
        a.pending()
            .first()
            .map(|p| p.terms_sha256[..12].to_owned())
            .unwrap_or_default()
    }

    /// Approves job j1's terms as `pending` shows them, as `by` of `account`.
    fn approve(
        a: &Approvals,
        by: &str,
        account: (&str, u32),
        now: i64,
    ) -> Result<ApprovalRecord, String> {
        a.decide("j1", Decision::Approve, &shown(a), by, "", account, now)
    }

    fn code(r: Result<(), Refusal>) -> String {
        r.map_or_else(|r| r.code.to_string(), |()| "OK".into())
    }

    /// A job's secure aggregation is part of the terms a person approves, and a training task
    /// must carry the one its terms state: dropping it, or changing its assumption, is refused.
    #[test]
    fn secure_aggregation_is_in_the_terms_and_a_task_must_keep_it() {
        use treaty_proto::v1::{SecureAggregationSpec, TrainingSpec, TrainingTask};
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        let secure = SecureAggregationSpec {
            distributed_noise: true,
            assumed_dishonest: 2,
            ..Default::default()
        };
        let with = |spec: Option<SecureAggregationSpec>, stated: Option<SecureAggregationSpec>| {
            let mut t = task("j1", 1.0);
            t.kind = Some(task::Kind::Training(TrainingTask {
                spec: Some(TrainingSpec {
                    secure_aggregation: spec,
                    ..Default::default()
                }),
                ..Default::default()
            }));
            t.job.as_mut().unwrap().secure_aggregation = stated;
            t
        };
        assert_eq!(
            code(a.check(&with(Some(secure), Some(secure)), HUB, 10)),
            "APPROVAL_PENDING"
        );
        let words = a.pending()[0].terms.secure_aggregation.clone().unwrap();
        assert!(
            words.contains("only each round's sum") && words.contains("at most 2"),
            "{words}"
        );
        approve(&a, "Jane", ("jdoe", 1000), 11).unwrap();
        assert_eq!(
            code(a.check(&with(Some(secure), Some(secure)), HUB, 12)),
            "OK"
        );
        // The task drops secure aggregation, or lowers its assumption, under the same terms.
        let lowered = SecureAggregationSpec {
            assumed_dishonest: 0,
            ..secure
        };
        for spec in [None, Some(lowered)] {
            let refusal = a.check(&with(spec, Some(secure)), HUB, 13).unwrap_err();
            assert_eq!(refusal.code, RefusalCode::InvalidTask);
            assert!(
                refusal.message.contains("secure aggregation"),
                "{}",
                refusal.message
            );
        }
        // A job without it reads as before: no such term, the same SHA-256 as before it existed.
        let plain_task = with(None, None);
        let plain = JobTermsView::of(&plain_task, plain_task.job.as_ref().unwrap(), HUB);
        assert_eq!(plain.secure_aggregation, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("secure"));
    }

    #[test]
    fn without_the_setting_every_job_goes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::ledger::reopen_for_tests(dir.path());
        let (evidence, _) = Evidence::open(&db).unwrap();
        let a = Approvals::new(ApprovalConfig::default(), Arc::new(evidence), &[]);
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 1)), "OK");
        let err = approve(&a, "Jane", ("jdoe", 1000), 2).unwrap_err();
        assert!(err.contains("does not require approval"), "{err}");
    }

    #[test]
    fn a_job_waits_until_approved_and_new_terms_need_a_new_approval() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        // Nothing can be approved before the job asks: its terms are not known.
        let err = approve(&a, "Jane", ("jdoe", 1000), 1).unwrap_err();
        assert!(err.contains("has not asked"), "{err}");
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 10)), "APPROVAL_PENDING");
        let pending = a.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].terms.epsilon, 1.0);
        assert_eq!(pending[0].terms.purpose, "counter_trafficking");
        assert_eq!(pending[0].terms.created_by, "treaty://operator/ops");
        // No name, no decision.
        assert!(approve(&a, "  ", ("jdoe", 1000), 11).is_err());
        let record = a
            .decide(
                "j1",
                Decision::Approve,
                &shown(&a),
                "Jane Doe",
                "case 7",
                ("jdoe", 1000),
                11,
            )
            .unwrap();
        assert_eq!(
            (
                record.decision.as_str(),
                record.account.as_str(),
                record.uid
            ),
            ("approved", "jdoe", 1000)
        );
        assert_eq!(record.terms_sha256, pending[0].terms_sha256);
        assert!(a.pending().is_empty());
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 12)), "OK");
        // The coordinator raises the job's budget: the approval does not cover it.
        let raised = a.check(&task("j1", 2.0), HUB, 13).unwrap_err();
        assert_eq!(raised.code.to_string(), "APPROVAL_PENDING");
        assert!(raised.message.contains("changed"), "{}", raised.message);
        // Nor does it cover the same terms from another coordinator.
        assert_eq!(
            code(a.check(&task("j1", 1.0), "treaty://coordinator/other", 14)),
            "APPROVAL_PENDING"
        );
        // The approved terms still stand for themselves; the others wait, listed.
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 15)), "OK");
        assert_eq!(a.pending().len(), 1);
    }

    #[test]
    fn a_rejection_is_final_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (a, _) = approvals(dir.path(), &[]);
            let _ = a.check(&task("j1", 1.0), HUB, 1);
            approve(&a, "Jane", ("jdoe", 1000), 2).unwrap();
            a.decide(
                "j1",
                Decision::Reject,
                "",
                "Max",
                "withdrawn",
                ("mmus", 1001),
                3,
            )
            .unwrap();
            assert_eq!(code(a.check(&task("j1", 1.0), HUB, 4)), "APPROVAL_REJECTED");
        }
        let (a, evidence) = approvals(dir.path(), &[]);
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 5)), "APPROVAL_REJECTED");
        let err = approve(&a, "Jane", ("jdoe", 1000), 6).unwrap_err();
        assert!(err.contains("final"), "{err}");
        // Both decisions are in the evidence log, with who made them.
        let stored = evidence.stored().unwrap();
        let who: Vec<(String, String)> = stored
            .iter()
            .map(|v| serde_json::from_slice::<serde_json::Value>(v).unwrap())
            .map(|l| {
                (
                    l["record"]["decision"].as_str().unwrap().to_owned(),
                    l["record"]["by"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            who,
            vec![
                ("approved".into(), "Jane".into()),
                ("rejected".into(), "Max".into())
            ]
        );
    }

    #[test]
    fn only_the_listed_accounts_may_decide() {
        let dir = tempfile::tempdir().unwrap();
        let (a, evidence) = approvals(dir.path(), &["jdoe"]);
        let _ = a.check(&task("j1", 1.0), HUB, 1);
        let err = approve(&a, "Eve", ("eve", 1002), 2).unwrap_err();
        assert!(err.contains("`eve` may not"), "{err}");
        assert!(evidence.stored().unwrap().is_empty());
        approve(&a, "Jane", ("jdoe", 1000), 3).unwrap();
    }

    #[test]
    fn no_release_takes_the_job_past_the_epsilon_approved() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        let t = task("j1", 1.0);
        let _ = a.check(&t, HUB, 1);
        approve(&a, "Jane", ("jdoe", 1000), 2).unwrap();
        let laplace = |epsilon| Release::Laplace { epsilon };
        let entry = |job: &str, epsilon| Entry {
            time_unix_ms: 1,
            task_id: "t".into(),
            job_id: job.into(),
            federation: "fed".into(),
            round: 0,
            kind: "query".into(),
            recipient: HUB.into(),
            releases: Some(vec![laplace(epsilon)]),
            secure_aggregation: None,
        };
        // Pure-DP releases add up: 0.5 spent + 0.5 = 1.0, within; + 0.6 = 1.1, beyond. Another
        // job's spending does not count against this one.
        let history = [entry("j1", 0.5), entry("other", 5.0)];
        assert_eq!(code(a.within_approved(&t, &history, &[laplace(0.5)])), "OK");
        assert_eq!(
            code(a.within_approved(&t, &history, &[laplace(0.6)])),
            "APPROVAL_EXCEEDED"
        );
        // One release a round: round 1 asked again after it released spends nothing more.
        let released = [
            entry("j1", 0.1),
            Entry {
                round: 1,
                ..entry("j1", 0.1)
            },
        ];
        let again = a
            .within_approved(&t, &released, &[laplace(0.1)])
            .unwrap_err();
        assert!(
            again.message.contains("already released for round 1"),
            "{}",
            again.message
        );
        // Revoked while the node computed: the result does not leave.
        a.decide("j1", Decision::Reject, "", "Max", "", ("mmus", 1001), 3)
            .unwrap();
        assert_eq!(
            a.still_approved(&t).unwrap_err().code.to_string(),
            "APPROVAL_REJECTED"
        );
    }

    #[test]
    fn an_approval_covers_the_terms_read_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        let _ = a.check(&task("j1", 1.0), HUB, 1);
        let read = shown(&a);
        // The coordinator raises the budget while the person reads: the old terms are no
        // longer the pending ones, and approving them approves nothing.
        let _ = a.check(&task("j1", 50.0), HUB, 2);
        let err = a
            .decide(
                "j1",
                Decision::Approve,
                &read,
                "Jane",
                "",
                ("jdoe", 1000),
                3,
            )
            .unwrap_err();
        assert!(err.contains("read `treaty node pending` again"), "{err}");
        assert!(
            a.decide("j1", Decision::Approve, "", "Jane", "", ("jdoe", 1000), 3)
                .is_err()
        );
        assert_eq!(a.pending()[0].terms.epsilon, 50.0);
        assert_eq!(code(a.check(&task("j1", 50.0), HUB, 4)), "APPROVAL_PENDING");
    }

    #[test]
    fn terms_that_cannot_be_shown_or_do_not_fit_the_task_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        let with = |change: &dyn Fn(&mut Task)| {
            let mut t = task("j1", 1.0);
            change(&mut t);
            code(a.check(&t, HUB, 1))
        };
        for (what, change) in [
            (
                "NaN epsilon",
                &(|t: &mut Task| t.job.as_mut().unwrap().epsilon = f64::NAN) as &dyn Fn(&mut Task),
            ),
            ("negative epsilon", &|t: &mut Task| {
                t.job.as_mut().unwrap().epsilon = -1.0
            }),
            ("delta 1", &|t: &mut Task| {
                t.job.as_mut().unwrap().delta = 1.0
            }),
            ("an escape in the purpose", &|t: &mut Task| {
                t.job.as_mut().unwrap().purpose = "x\u{1b}[2Jy".into()
            }),
            ("a round past the job's", &|t: &mut Task| t.round = 5),
            ("a query task in a training job", &|t: &mut Task| {
                t.kind = Some(task::Kind::Query(Default::default()))
            }),
            ("another purpose in the round", &|t: &mut Task| {
                t.terms = Some(treaty_proto::v1::RoundTerms {
                    purpose: "other".into(),
                    fields: vec!["f0".into()],
                    ..Default::default()
                })
            }),
        ] {
            assert_eq!(with(change), "INVALID_TASK", "{what}");
        }
        // The final evaluation (round rounds + 1) is part of the job.
        assert_eq!(with(&|t: &mut Task| t.round = 4), "APPROVAL_PENDING");
        assert!(a.pending().iter().all(|p| p.terms.epsilon == 1.0));
    }
}

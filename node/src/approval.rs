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
use treaty_proto::v1::Task;

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
    /// can open the node's control socket (`control.sock` in its state directory: the node's
    /// own account and the members of the state directory's group).
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// What a person approves: the job as the coordinator states it, with who states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl JobTermsView {
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
    Approved(JobTermsView, String),
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
                    ("approved", Ok(view)) => Standing::Approved(view, a.terms_sha256.clone()),
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
        let view = JobTermsView {
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
        };
        let sha = view.sha256();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match jobs.get(&task.job_id) {
            Some(Standing::Rejected) => {
                return Err(Refusal::new(
                    RefusalCode::ApprovalRejected,
                    format!(
                        "this agency's operator rejected job `{}`; the node takes no part in it",
                        task.job_id
                    ),
                ));
            }
            Some(Standing::Approved(_, approved)) if *approved == sha => return Ok(()),
            Some(Standing::Approved(..)) => true,
            _ => false,
        };
        let job = task.job_id.clone();
        jobs.insert(
            job.clone(),
            Standing::Pending(Pending {
                terms: view,
                terms_sha256: sha,
                asked_unix_ms: now_ms,
                round: task.round,
            }),
        );
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
        let approved = match self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task.job_id)
        {
            Some(Standing::Approved(view, _)) => view.clone(),
            // Approved a moment ago by `check`, unless revoked since.
            _ => {
                return Err(Refusal::new(
                    RefusalCode::ApprovalRejected,
                    format!("job `{}` is no longer approved at this agency", task.job_id),
                ));
            }
        };
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
        if spent.epsilon > approved.epsilon * (1.0 + 1e-9) {
            return Err(exceeded(&task.job_id, spent.epsilon, &approved));
        }
        Ok(())
    }

    /// The jobs waiting for approval, oldest request first.
    pub(crate) fn pending(&self) -> Vec<Pending> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending: Vec<Pending> = jobs
            .values()
            .filter_map(|s| match s {
                Standing::Pending(p) => Some(p.clone()),
                _ => None,
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
    pub(crate) fn decide(
        &self,
        job: &str,
        decision: Decision,
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
            (Some(Standing::Approved(view, sha)), Decision::Reject) => (view.clone(), sha.clone()),
            (Some(Standing::Approved(..)), Decision::Approve) => {
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
                Decision::Approve => Standing::Approved(view, sha),
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
            job: Some(JobTerms {
                kind: "training".into(),
                created_by: "treaty://operator/ops".into(),
                created_unix_ms: 5,
                rounds: 3,
                epsilon,
                delta: 1e-5,
                purpose: "counter_trafficking".into(),
                fields: vec!["f0".into()],
            }),
            ..Default::default()
        }
    }

    fn approvals(dir: &std::path::Path, approvers: &[&str]) -> (Approvals, Arc<Evidence>) {
        let db = sled::open(dir).unwrap();
        let (evidence, records) = Evidence::open(&db).unwrap();
        let evidence = Arc::new(evidence);
        let config = ApprovalConfig {
            required: true,
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
        };
        (Approvals::new(config, evidence.clone(), &records), evidence)
    }

    const HUB: &str = "treaty://coordinator/hub";

    fn code(r: Result<(), Refusal>) -> String {
        r.map_or_else(|r| r.code.to_string(), |()| "OK".into())
    }

    #[test]
    fn without_the_setting_every_job_goes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (evidence, _) = Evidence::open(&db).unwrap();
        let a = Approvals::new(ApprovalConfig::default(), Arc::new(evidence), &[]);
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 1)), "OK");
        let err = a
            .decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 2)
            .unwrap_err();
        assert!(err.contains("does not require approval"), "{err}");
    }

    #[test]
    fn a_job_waits_until_approved_and_new_terms_need_a_new_approval() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        // Nothing can be approved before the job asks: its terms are not known.
        let err = a
            .decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 1)
            .unwrap_err();
        assert!(err.contains("has not asked"), "{err}");
        assert_eq!(code(a.check(&task("j1", 1.0), HUB, 10)), "APPROVAL_PENDING");
        let pending = a.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].terms.epsilon, 1.0);
        assert_eq!(pending[0].terms.purpose, "counter_trafficking");
        assert_eq!(pending[0].terms.created_by, "treaty://operator/ops");
        // No name, no decision.
        assert!(
            a.decide("j1", Decision::Approve, "  ", "", ("jdoe", 1000), 11)
                .is_err()
        );
        let record = a
            .decide(
                "j1",
                Decision::Approve,
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
    }

    #[test]
    fn a_rejection_is_final_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (a, _) = approvals(dir.path(), &[]);
            let _ = a.check(&task("j1", 1.0), HUB, 1);
            a.decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 2)
                .unwrap();
            a.decide(
                "j1",
                Decision::Reject,
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
        let err = a
            .decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 6)
            .unwrap_err();
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
        let err = a
            .decide("j1", Decision::Approve, "Eve", "", ("eve", 1002), 2)
            .unwrap_err();
        assert!(err.contains("`eve` may not"), "{err}");
        assert!(evidence.stored().unwrap().is_empty());
        a.decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 3)
            .unwrap();
    }

    #[test]
    fn no_release_takes_the_job_past_the_epsilon_approved() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = approvals(dir.path(), &[]);
        let t = task("j1", 1.0);
        let _ = a.check(&t, HUB, 1);
        a.decide("j1", Decision::Approve, "Jane", "", ("jdoe", 1000), 2)
            .unwrap();
        let laplace = |epsilon| Release::Laplace { epsilon };
        let entry = |job: &str, epsilon| Entry {
            time_unix_ms: 1,
            task_id: "t".into(),
            job_id: job.into(),
            federation: "fed".into(),
            round: 1,
            kind: "query".into(),
            recipient: HUB.into(),
            releases: Some(vec![laplace(epsilon)]),
        };
        // Pure-DP releases add up: 0.5 spent + 0.5 = 1.0, within; + 0.6 = 1.1, beyond. Another
        // job's spending does not count against this one.
        let history = [entry("j1", 0.5), entry("other", 5.0)];
        assert_eq!(code(a.within_approved(&t, &history, &[laplace(0.5)])), "OK");
        assert_eq!(
            code(a.within_approved(&t, &history, &[laplace(0.6)])),
            "APPROVAL_EXCEEDED"
        );
    }
}

//! The privacy ledger, in sled: every release of values computed from the agency's records,
//! with its mechanism's parameters, recorded durably *before* the computation starts and so
//! before anything leaves (write-ahead). A crash can leave an entry for a release that never
//! left — the ledger over-counts — but never the reverse. Entries are never removed.
//!
//! What the agency has spent is recomputed from the whole history at every question, by the
//! accountants of `treaty-policies`, never kept as a running figure. A release without a
//! differential-privacy mechanism costs an unbounded epsilon: a node that keeps a budget refuses
//! it.
//!
//! This module alone touches the node's database.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use treaty_policies::privacy::{self, Release, Spent};
use treaty_proto::v1::PrivacyReport;

use crate::error::NodeError;

/// One release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub time_unix_ms: i64,
    pub task_id: String,
    pub job_id: String,
    pub federation: String,
    pub round: u32,
    /// `training`, `statistics` or `query`.
    pub kind: String,
    /// The coordinator it goes to.
    pub recipient: String,
    /// The mechanisms and their parameters; `None` for values that would leave without
    /// differential privacy (never recorded: the node refuses them).
    pub releases: Option<Vec<Release>>,
}

/// The agency's budget.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The most epsilon the agency spends, over every job, ever.
    pub max_epsilon: f64,
    /// The delta at which epsilon is counted.
    pub delta: f64,
}

/// The delta at which a node without a budget reports what it spent.
pub const DEFAULT_DELTA: f64 = 1e-5;

/// Why a release was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerRefusal {
    #[error(
        "this release would bring the agency's epsilon to {after:.4} at delta {delta:e} ({accountant}), above its budget of {max}; it has spent {spent:.4}"
    )]
    BudgetExhausted {
        spent: f64,
        after: f64,
        max: f64,
        delta: f64,
        accountant: String,
    },
    #[error(
        "the task releases values without differential privacy, and this agency keeps a privacy budget; give the job a privacy spec"
    )]
    NotPrivate,
    #[error("the ledger cannot be written, so nothing is released: {0}")]
    Store(String),
    /// The caller's own admission check (the agency's sharing policy) refused the release.
    #[error("{}: {}", .0.code, .0.message)]
    Refused(crate::work::Refusal),
}

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    db: sled::Db,
    entries: sled::Tree,
    budget: Option<Budget>,
    /// Check and record happen under this lock, so two tasks cannot both fit the last budget.
    write: Mutex<()>,
}

impl Ledger {
    pub fn open(dir: &Path, budget: Option<Budget>) -> Result<Self, NodeError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| NodeError::OpenStore {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Ledger {
            entries: db.open_tree("ledger")?,
            db,
            budget,
            write: Mutex::new(()),
        })
    }

    fn delta(&self) -> f64 {
        self.budget.map(|b| b.delta).unwrap_or(DEFAULT_DELTA)
    }

    /// Every entry, oldest first. An unreadable entry is an error, never skipped.
    pub fn entries(&self) -> Result<Vec<Entry>, NodeError> {
        self.entries
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v)
                    .map_err(|e| NodeError::Protocol(format!("a ledger entry is corrupt: {e}")))
            })
            .collect()
    }

    /// What the history plus `more` costs.
    fn cost(
        &self,
        entries: &[Entry],
        more: Option<Option<Vec<Release>>>,
    ) -> Result<Spent, NodeError> {
        let all: Vec<Option<Vec<Release>>> = entries
            .iter()
            .map(|e| e.releases.clone())
            .chain(more)
            .collect();
        if all.iter().any(Option::is_none) {
            return Ok(Spent {
                epsilon: f64::INFINITY,
                delta: self.delta(),
                accountant: "none: a release without differential privacy".into(),
            });
        }
        let releases: Vec<Release> = all.into_iter().flatten().flatten().collect();
        privacy::spent(&releases, self.delta()).map_err(|e| NodeError::Protocol(e.to_string()))
    }

    /// What the agency has spent.
    pub fn spent(&self) -> Result<Spent, NodeError> {
        self.cost(&self.entries()?, None)
    }

    /// Checks that the release fits the budget and records it durably. Only then may the node
    /// compute and send it.
    pub fn record(&self, entry: &Entry) -> Result<Spent, LedgerRefusal> {
        self.record_if(entry, |_| Ok(()))
    }

    /// As [`Ledger::record`], after `admit` has accepted the release given what the agency
    /// has spent before it. `admit` runs under the ledger's lock, so what it judged is still
    /// true when the release is written.
    pub fn record_if(
        &self,
        entry: &Entry,
        admit: impl FnOnce(&Spent) -> Result<(), crate::work::Refusal>,
    ) -> Result<Spent, LedgerRefusal> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let store = |e: NodeError| LedgerRefusal::Store(e.to_string());
        let entries = self.entries().map_err(store)?;
        let before = self.cost(&entries, None).map_err(store)?;
        if entry.releases.is_none() {
            return Err(LedgerRefusal::NotPrivate);
        }
        admit(&before).map_err(LedgerRefusal::Refused)?;
        let after = self
            .cost(&entries, Some(entry.releases.clone()))
            .map_err(store)?;
        if let Some(budget) = self.budget
            && after.epsilon > budget.max_epsilon
        {
            return Err(LedgerRefusal::BudgetExhausted {
                spent: before.epsilon,
                after: after.epsilon,
                max: budget.max_epsilon,
                delta: budget.delta,
                accountant: after.accountant,
            });
        }
        let value = serde_json::to_vec(entry).map_err(|e| LedgerRefusal::Store(e.to_string()))?;
        let key = self
            .db
            .generate_id()
            .map_err(|e| LedgerRefusal::Store(e.to_string()))?;
        self.entries
            .insert(key.to_be_bytes(), value)
            .map_err(|e| LedgerRefusal::Store(e.to_string()))?;
        self.db
            .flush()
            .map_err(|e| LedgerRefusal::Store(e.to_string()))?;
        Ok(after)
    }

    /// The report for the coordinator, with what one more `next` release would bring the total to.
    pub fn report(&self, next: Option<Option<Vec<Release>>>) -> PrivacyReport {
        let entries = self.entries().unwrap_or_default();
        let spent = self.cost(&entries, None).ok();
        let after = next.and_then(|n| self.cost(&entries, Some(n)).ok());
        PrivacyReport {
            spent_epsilon: spent.as_ref().map(|s| s.epsilon).unwrap_or(f64::INFINITY),
            delta: self.delta(),
            max_epsilon: self.budget.map(|b| b.max_epsilon).unwrap_or(0.0),
            epsilon_after_next_round: after.map(|s| s.epsilon).unwrap_or(0.0),
            accountant: spent.map(|s| s.accountant).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(round: u32, release: Option<Release>) -> Entry {
        let releases = release.map(|r| vec![r]);
        Entry {
            time_unix_ms: 1,
            task_id: format!("t{round}"),
            job_id: "job-000001".into(),
            federation: "f".into(),
            round,
            kind: "training".into(),
            recipient: "treaty://coordinator/hub".into(),
            releases,
        }
    }

    #[test]
    fn the_budget_admits_exactly_what_fits_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let rho = 0.01;
        let three = privacy::zcdp::epsilon(3.0 * rho, 1e-5);
        let four = privacy::zcdp::epsilon(4.0 * rho, 1e-5);
        let budget = Budget {
            max_epsilon: (three + four) / 2.0,
            delta: 1e-5,
        };
        {
            let ledger = Ledger::open(dir.path(), Some(budget)).unwrap();
            for round in 1..=3 {
                ledger
                    .record(&entry(round, Some(Release::Gaussian { rho })))
                    .unwrap();
            }
            assert!(matches!(
                ledger.record(&entry(4, Some(Release::Gaussian { rho }))),
                Err(LedgerRefusal::BudgetExhausted { .. })
            ));
            assert!(matches!(
                ledger.record(&entry(4, None)),
                Err(LedgerRefusal::NotPrivate)
            ));
        }
        let ledger = Ledger::open(dir.path(), Some(budget)).unwrap();
        assert_eq!(ledger.entries().unwrap().len(), 3);
        assert!((ledger.spent().unwrap().epsilon - three).abs() < 1e-12);
        let report = ledger.report(Some(Some(vec![Release::Gaussian { rho }])));
        assert!(
            (report.epsilon_after_next_round - four).abs() < 1e-12
                && report.max_epsilon == budget.max_epsilon
        );
    }

    #[test]
    fn an_admission_check_sees_the_spending_before_and_a_refusal_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        let laplace = |epsilon| Some(Release::Laplace { epsilon });
        ledger.record(&entry(1, laplace(0.5))).unwrap();
        let mut seen = None;
        ledger
            .record_if(&entry(2, laplace(0.25)), |before| {
                seen = Some(before.epsilon);
                Ok(())
            })
            .unwrap();
        // Pure-DP Laplace releases compose by addition: 0.5 before the second one.
        assert!((seen.unwrap() - 0.5).abs() < 1e-9, "{seen:?}");
        let refused = ledger.record_if(&entry(3, laplace(0.25)), |_| {
            Err(crate::work::Refusal::new("PURPOSE_NOT_ALLOWED", "no"))
        });
        assert!(
            matches!(refused, Err(LedgerRefusal::Refused(r)) if r.code == "PURPOSE_NOT_ALLOWED")
        );
        assert_eq!(ledger.entries().unwrap().len(), 2);
    }

    #[test]
    fn a_release_without_dp_is_refused_even_without_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), None).unwrap();
        assert!(matches!(
            ledger.record(&entry(1, None)),
            Err(LedgerRefusal::NotPrivate)
        ));
        ledger
            .record(&entry(1, Some(Release::Laplace { epsilon: 0.5 })))
            .unwrap();
        assert_eq!(ledger.spent().unwrap().epsilon, 0.5);
    }
}

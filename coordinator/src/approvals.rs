//! What the coordinator knows of agencies' approvals of running jobs, where a node requires its
//! own operator's approval of each job (the node decides; this only keeps the job moving).
//!
//! - A round whose results fall short of the job's minimum only because agencies' approvals
//!   are pending (`APPROVAL_PENDING`) does not fail the job: the round **waits**, keeping the
//!   results it has, and asks those agencies again when one of their nodes says its operator
//!   decided (`JobDecided` on its session), or after [`REASK`] in any case (a node whose
//!   session broke meanwhile), for [`MAX_APPROVAL_WAIT`] at most. Nobody releases twice for
//!   one round. Each agency wakes a job once: a node that says it decided and then refuses
//!   again as pending cannot make the coordinator ask in a loop, and no round asks again
//!   sooner than [`MIN_RETRY`] after the last.
//! - An agency whose operator rejected a job is not asked again in it ([`Approvals::rejected`]).
//!
//! All of it is in memory: after a restart the nodes say the same again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// How long a job waiting for approvals waits at most before it asks again.
pub(crate) const REASK: Duration = Duration::from_secs(600);

/// The longest a round waits for approvals in all; then it goes on without them (and fails
/// when too few results came without them).
pub(crate) const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(72 * 3600);

/// The shortest time between two runs of a round that waits for approvals.
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Approvals {
    /// By job: the agencies its rounds found pending, and those that have woken it.
    pending: Mutex<HashMap<String, HashSet<String>>>,
    woke: Mutex<HashSet<(String, String)>>,
    /// By job: the agencies whose operators rejected it.
    rejected: Mutex<HashMap<String, Vec<String>>>,
    /// Counts the decisions that woke a job.
    decisions: watch::Sender<u64>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            pending: Mutex::default(),
            woke: Mutex::default(),
            rejected: Mutex::default(),
            decisions: watch::channel(0).0,
        }
    }
}

impl Approvals {
    /// The number of decisions so far: a job waits for it to grow.
    pub(crate) fn decisions(&self) -> u64 {
        *self.decisions.borrow()
    }

    /// Notes that `agency`'s approval of `job` is pending.
    pub(crate) fn note_pending(&self, job: &str, agency: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .entry(job.to_owned())
            .or_default()
            .insert(agency.to_owned());
    }

    /// `agency`'s node says its operator decided on `job`: wakes the job if it was pending
    /// there and has not woken it before; whether it did.
    pub(crate) fn decided(&self, job: &str, agency: &str) -> bool {
        let was_pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(job)
            .is_some_and(|p| p.remove(agency));
        let first = was_pending
            && self
                .woke
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((job.to_owned(), agency.to_owned()));
        if first {
            self.decisions.send_modify(|n| *n += 1);
        }
        first
    }

    /// Waits until a decision after the `since`-th, or [`REASK`]; never less than
    /// [`MIN_RETRY`].
    pub(crate) async fn wait(&self, since: u64) {
        let mut decisions = self.decisions.subscribe();
        let woken = decisions.wait_for(|n| *n > since);
        let _ = tokio::time::timeout(REASK, woken).await;
        tokio::time::sleep(MIN_RETRY).await;
    }

    /// The agencies whose operators rejected `job`.
    pub(crate) fn rejected(&self, job: &str) -> Vec<String> {
        let rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        rejected.get(job).cloned().unwrap_or_default()
    }

    /// Notes that `agency`'s operator rejected `job`: a rejection is final.
    pub(crate) fn note_rejected(&self, job: &str, agency: &str) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        rejected
            .entry(job.to_owned())
            .or_default()
            .push(agency.to_owned());
    }

    /// Forgets `job` (it ended).
    pub(crate) fn forget(&self, job: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
        self.woke
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(j, _)| j != job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_agency_wakes_a_job_and_only_once() {
        let a = Approvals::default();
        // Not pending: a node's word alone wakes nothing.
        assert!(!a.decided("j1", "FR"));
        a.note_pending("j1", "FR");
        assert!(!a.decided("j2", "FR"));
        assert!(!a.decided("j1", "DE"));
        assert_eq!(a.decisions(), 0);
        assert!(a.decided("j1", "FR"));
        assert_eq!(a.decisions(), 1);
        // Pending again, it does not wake the job a second time.
        a.note_pending("j1", "FR");
        assert!(!a.decided("j1", "FR"));
        assert_eq!(a.decisions(), 1);
        a.forget("j1");
        a.note_pending("j1", "FR");
        assert!(a.decided("j1", "FR"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_job_asks_again_when_a_decision_comes_or_after_the_reask_period() {
        let a = std::sync::Arc::new(Approvals::default());
        a.note_pending("j1", "FR");
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.wait(0).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished());
        assert!(a.decided("j1", "FR"));
        waiting.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(30) + MIN_RETRY);
        // Without a decision: after REASK.
        let started = tokio::time::Instant::now();
        a.wait(1).await;
        assert_eq!(started.elapsed(), REASK + MIN_RETRY);
    }
}

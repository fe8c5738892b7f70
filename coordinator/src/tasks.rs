//! Tasks sent and not yet answered, and the routing of their outcomes to the round waiting for
//! them. A result is accepted only from the agency the task was given to: the identity of its
//! certificate, country and id together.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use treaty_proto::Identity;
use treaty_proto::tensor::{NamedTensor, Staged};

/// What a node sent back for a task.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A result, checked for completeness and finiteness (decoded, or staged as it arrived).
    Result(Box<TaskResult>),
    /// The node declined the task.
    Refused {
        reason_code: String,
        message: String,
    },
    /// The node sent a result that cannot be used (malformed, incomplete or not finite).
    Invalid(String),
    /// A step of secure aggregation (its size checked): it leaves the task open.
    SecAgg(Box<treaty_proto::v1::sec_agg_from_node::Step>),
}

/// How the result of a task is taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Decoded whole as it arrives (statistics, answers, evaluations, and the updates of a
    /// robust strategy, which its round holds all of).
    Whole,
    /// Staged as its wire bytes in one of the coordinator's staging slots (a node waits for a
    /// free one before its chunks are read), checked, folded into its round's running sum and
    /// dropped: the updates of FedAvg and the server optimisers.
    Staged,
}

/// An update staged in one of the coordinator's staging slots, freed when it is dropped.
#[derive(Debug)]
pub(crate) struct StagedUpdate {
    pub tensors: Staged,
    /// Held until the update is dropped (folded in, rejected or too late).
    pub _slot: OwnedSemaphorePermit,
}

/// A node's result.
#[derive(Debug)]
pub(crate) struct TaskResult {
    /// Its SHA-256 as it arrived (`treaty_proto::receipt::ResultHasher`), which its receipt
    /// names.
    pub sha256: String,
    /// The sending agency's signed statement of it, when it sent one (checked on arrival).
    pub sent: Option<treaty_proto::receipt::SignedSent>,
    pub num_examples: u64,
    pub metrics: HashMap<String, f64>,
    /// The tensors, decoded ([`Intake::Whole`]; empty when staged).
    pub tensors: Vec<NamedTensor>,
    /// The tensors as they arrived ([`Intake::Staged`]), until the round folds them in.
    pub staged: Option<StagedUpdate>,
    /// When its last chunk arrived.
    pub received: Instant,
    pub declared_norm_bound: f64,
    /// Under DP: the node's noisy evaluation of the global model.
    pub evaluation: Option<treaty_proto::v1::Evaluation>,
    /// What the node's own ledger says after this release (figures of mechanisms, not data).
    pub privacy: Option<treaty_proto::v1::PrivacyReport>,
}

impl TaskResult {
    /// The bytes of its tensors: as they arrived when staged, 8 a value when decoded.
    pub(crate) fn tensor_bytes(&self) -> usize {
        match &self.staged {
            Some(staged) => staged.tensors.bytes(),
            None => self.tensors.iter().map(|t| 8 * t.values.len()).sum(),
        }
    }
}

/// An outcome on its way to its round: (agency, outcome).
pub(crate) type Delivery = (Identity, Outcome);

#[derive(Debug)]
struct Pending {
    agency: Identity,
    round: mpsc::UnboundedSender<Delivery>,
    intake: Intake,
    /// A task of a round of secure aggregation: its result does not close it (the steps after
    /// the masked update still arrive), but a second result is refused.
    secure: bool,
    answered: bool,
}

/// Why an outcome was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeliveryError {
    #[error("task `{0}` is not open: it is unknown, already answered, or its round has ended")]
    NotOpen(String),
    #[error("task `{task}` was not given to `{caller}`")]
    NotYours { task: String, caller: Identity },
}

/// The open tasks.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    inner: Mutex<HashMap<String, Pending>>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a task given to `agency`; its outcome goes to `round`, its result taken in by
    /// `intake`. A `secure` task (of a round of secure aggregation) stays open for the steps
    /// that follow its result.
    pub(crate) fn open(
        &self,
        task_id: &str,
        agency: &Identity,
        round: mpsc::UnboundedSender<Delivery>,
        intake: Intake,
        secure: bool,
    ) {
        self.lock().insert(
            task_id.to_owned(),
            Pending {
                agency: agency.clone(),
                round,
                intake,
                secure,
                answered: false,
            },
        );
    }

    /// Checks, before reading a large upload, that `caller` may answer `task_id`; how its
    /// result is taken in.
    pub(crate) fn check(&self, task_id: &str, caller: &Identity) -> Result<Intake, DeliveryError> {
        match self.lock().get(task_id) {
            None => Err(DeliveryError::NotOpen(task_id.to_owned())),
            Some(p) if p.agency != *caller => Err(DeliveryError::NotYours {
                task: task_id.to_owned(),
                caller: caller.clone(),
            }),
            Some(p) if p.answered => Err(DeliveryError::NotOpen(task_id.to_owned())),
            Some(p) => Ok(p.intake),
        }
    }

    /// Delivers an outcome from `caller`, closing the task (a secure task stays open for its
    /// later steps, answered).
    pub(crate) fn deliver(
        &self,
        task_id: &str,
        caller: &Identity,
        outcome: Outcome,
    ) -> Result<(), DeliveryError> {
        self.check(task_id, caller)?;
        let round = {
            let mut open = self.lock();
            match open.get_mut(task_id) {
                Some(p) if p.secure => {
                    p.answered = true;
                    p.round.clone()
                }
                _ => {
                    open.remove(task_id)
                        .ok_or_else(|| DeliveryError::NotOpen(task_id.to_owned()))?
                        .round
                }
            }
        };
        round
            .send((caller.clone(), outcome))
            .map_err(|_| DeliveryError::NotOpen(task_id.to_owned()))
    }

    /// Relays a step of secure aggregation from `caller` to its task's round, leaving the task
    /// open.
    pub(crate) fn relay(
        &self,
        task_id: &str,
        caller: &Identity,
        step: treaty_proto::v1::sec_agg_from_node::Step,
    ) -> Result<(), DeliveryError> {
        let open = self.lock();
        match open.get(task_id) {
            Some(p) if p.agency != *caller => Err(DeliveryError::NotYours {
                task: task_id.to_owned(),
                caller: caller.clone(),
            }),
            Some(p) if p.secure => p
                .round
                .send((caller.clone(), Outcome::SecAgg(Box::new(step))))
                .map_err(|_| DeliveryError::NotOpen(task_id.to_owned())),
            _ => Err(DeliveryError::NotOpen(task_id.to_owned())),
        }
    }

    /// Closes a task without an outcome (its round ended).
    pub(crate) fn close(&self, task_id: &str) {
        self.lock().remove(task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_assigned_agency_may_answer_once() {
        let tasks = Tasks::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let de = Identity::agency("DE", "DE-BKA").unwrap();
        let nl = Identity::agency("NL", "NL-POLITIE").unwrap();
        // The same agency id under another country's certificate is another agency.
        let impostor = Identity::agency("NL", "DE-BKA").unwrap();
        tasks.open("t1", &de, tx, Intake::Whole, false);
        let refuse = || Outcome::Refused {
            reason_code: "X".into(),
            message: String::new(),
        };
        for caller in [&nl, &impostor] {
            assert_eq!(
                tasks.deliver("t1", caller, refuse()),
                Err(DeliveryError::NotYours {
                    task: "t1".into(),
                    caller: caller.clone()
                })
            );
        }
        assert_eq!(tasks.check("t1", &de), Ok(Intake::Whole));
        assert_eq!(tasks.deliver("t1", &de, refuse()), Ok(()));
        assert_eq!(rx.try_recv().map(|d| d.0).ok(), Some(de.clone()));
        assert_eq!(
            tasks.deliver("t1", &de, refuse()),
            Err(DeliveryError::NotOpen("t1".into()))
        );
    }
}

//! A node's side of secure aggregation (docs/SECURE_AGGREGATION.md): the round's parameters
//! checked from the task before anything is recorded; the key exchange beside local training;
//! the update masked (its difference from the global model, in the round's fixed point) before
//! it leaves; and the signed survivors and revealed shares after. The protocol itself is
//! `treaty_proto::secagg::Participant`: this module carries its messages.
//!
//! What the node sends here depends only on keys, protocol messages and counts of agencies,
//! and on its update, which leaves masked; a refusal names what it refused, never a record.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use treaty_proto::Identity;
use treaty_proto::secagg::{Params, Participant, SealedShare};
use treaty_proto::tls::KeySigner;
use treaty_proto::v1::{
    NodeMessage, SecAggFromNode, SecAggToNode, Task, node_message, sec_agg_from_node,
    sec_agg_to_node, task,
};

use crate::refusal::{Refusal, RefusalCode};
use crate::work::Output;

/// How long past its task's deadline a node waits for a step of the coordinator's: the
/// coordinator's own steps after the masked updates take at most 10 s each.
const GRACE: Duration = Duration::from_secs(30);

/// The messages the coordinator sends for each task in a round of secure aggregation, routed
/// from the session to the task.
#[derive(Debug, Default)]
pub(crate) struct Inboxes(Mutex<HashMap<String, mpsc::Sender<sec_agg_to_node::Step>>>);

impl Inboxes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<sec_agg_to_node::Step>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An inbox for `task_id`, closed when dropped.
    pub(crate) fn open(self: &Arc<Self>, task_id: &str) -> Inbox {
        // The protocol has four messages for a node: a few more are refused, not queued.
        let (tx, rx) = mpsc::channel(8);
        self.lock().insert(task_id.to_owned(), tx);
        Inbox {
            rx,
            task_id: task_id.to_owned(),
            inboxes: Arc::clone(self),
        }
    }

    /// Routes a message to its task; false when no task of that id waits for one (or its
    /// inbox is full).
    pub(crate) fn deliver(&self, message: SecAggToNode) -> bool {
        let Some(step) = message.step else {
            return false;
        };
        match self.lock().get(&message.task_id) {
            Some(tx) => tx.try_send(step).is_ok(),
            None => false,
        }
    }
}

/// The coordinator's messages for one task.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<sec_agg_to_node::Step>,
    task_id: String,
    inboxes: Arc<Inboxes>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.inboxes.lock().remove(&self.task_id);
    }
}

fn failed(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::SecureAggregationFailed, message)
}

/// The parameters of a task's round of secure aggregation, checked from the task alone: none
/// when the round has none. A training task of a job that asks for secure aggregation must
/// carry them; they must be sound, name the round's admitted agencies (as its terms state them,
/// which the agency's policy judges) and this agency among them.
pub(crate) fn params(task: &Task, me: &Identity) -> Result<Option<Params>, Refusal> {
    let asked = match &task.kind {
        Some(task::Kind::Training(t)) => t.spec.as_ref().and_then(|s| s.secure_aggregation),
        _ => None,
    };
    let Some(wire) = &task.secure_aggregation else {
        return match asked {
            Some(_) => Err(Refusal::invalid(
                "the job asks for secure aggregation, but its task carries no round of it: the update would reach the coordinator on its own",
            )),
            None => Ok(None),
        };
    };
    let Some(spec) = asked else {
        return Err(Refusal::invalid(
            "the task carries a round of secure aggregation, but its job does not ask for one",
        ));
    };
    if !matches!(task.kind, Some(task::Kind::Training(_))) {
        return Err(Refusal::invalid(
            "secure aggregation is for training rounds only",
        ));
    }
    let params = Params::of_task(&task.job_id, task.round, wire);
    params
        .check()
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    // The protection is the job's, not the coordinator's to lower: at least 3 agencies, the
    // threshold the job's own spec gives them (a lower one hides an update against fewer
    // colluders), its fixed point.
    let n = params.participants.len();
    let floor = Params::threshold_for(n, spec.max_dropouts);
    if n < 3 || params.threshold < floor {
        return Err(Refusal::invalid(format!(
            "a round of secure aggregation of {n} agencies with threshold {}: the job's spec asks for at least 3 agencies and a threshold of {floor}",
            params.threshold
        )));
    }
    let bits = match spec.fractional_bits {
        0 => 32,
        b => b,
    };
    if params.fractional_bits != bits || !(8..=40).contains(&bits) {
        return Err(Refusal::invalid(format!(
            "secure aggregation with {} fractional bits where the job's spec gives {bits} (8 to 40)",
            params.fractional_bits
        )));
    }
    let terms = task
        .terms
        .as_ref()
        .ok_or_else(|| Refusal::invalid("the task carries no terms"))?;
    let admitted: BTreeSet<String> = terms
        .participants
        .iter()
        .filter_map(|p| Identity::agency(&p.country, &p.agency).ok())
        .map(|i| i.to_string())
        .collect();
    let named: BTreeSet<String> = params.participants.iter().cloned().collect();
    if admitted != named {
        return Err(Refusal::invalid(
            "the secure aggregation's agencies are not the agencies the round's terms admit",
        ));
    }
    if !named.contains(&me.to_string()) {
        return Err(Refusal::invalid(
            "this agency is not among the secure aggregation's agencies",
        ));
    }
    Ok(Some(params))
}

/// A round whose protocol state went away with a computation on a blocking thread that failed.
fn state_lost() -> Refusal {
    failed("the round's state was lost while the update was masked")
}

/// One task's round of secure aggregation in progress.
pub(crate) struct SecureTask {
    /// The protocol's state (away on a blocking thread while the update is masked).
    participant: Option<Participant>,
    inbox: Inbox,
    session: mpsc::Sender<NodeMessage>,
    task_id: String,
    ca: Arc<Vec<u8>>,
    signer: Arc<KeySigner>,
    /// The latest a step of the coordinator's is waited for.
    until: Instant,
}

impl std::fmt::Debug for SecureTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTask")
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

impl SecureTask {
    /// Starts the round: this agency's keys, signed, sent to the coordinator, with the round's
    /// parameters and, under distributed DP, the share of noise every agency adds (`noise_share`,
    /// which every other agency must state alike).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        params: Params,
        me: &Identity,
        signer: Arc<KeySigner>,
        ca: Arc<Vec<u8>>,
        inbox: Inbox,
        session: mpsc::Sender<NodeMessage>,
        task: &Task,
        noise_share: Option<f64>,
    ) -> Result<Self, Refusal> {
        let (participant, advert) =
            Participant::with_noise_share(params, &me.to_string(), &signer, noise_share)
                .map_err(|e| failed(e.to_string()))?;
        let left = task.deadline_unix_ms - crate::session::now_ms();
        let until =
            Instant::now() + Duration::from_millis(left.clamp(0, 24 * 3600 * 1000) as u64) + GRACE;
        let mut round = SecureTask {
            participant: Some(participant),
            inbox,
            session,
            task_id: task.task_id.clone(),
            ca,
            signer,
            until,
        };
        round.send(sec_agg_from_node::Step::Keys(advert)).await?;
        Ok(round)
    }

    fn participant(&mut self) -> Result<&mut Participant, Refusal> {
        self.participant.as_mut().ok_or_else(state_lost)
    }

    /// Runs `work` on the protocol's state on a blocking thread: checking every agency's keys or
    /// signatures and sealing or opening their shares takes tens of milliseconds for hundreds of
    /// agencies, and masking a large update longer, while the node's async thread keeps its
    /// session going.
    async fn on_participant<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Participant) -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let mut participant = self.participant.take().ok_or_else(state_lost)?;
        let (participant, out) = crate::work::blocking(move || {
            let out = work(&mut participant);
            (participant, out)
        })
        .await?;
        self.participant = Some(participant);
        Ok(out)
    }

    async fn send(&mut self, step: sec_agg_from_node::Step) -> Result<(), Refusal> {
        let message = NodeMessage {
            kind: Some(node_message::Kind::Secagg(SecAggFromNode {
                task_id: self.task_id.clone(),
                step: Some(step),
            })),
        };
        self.session
            .send(message)
            .await
            .map_err(|_| failed("the session closed during secure aggregation"))
    }

    /// The coordinator's next message, by the task's deadline (and some grace).
    async fn next(&mut self, what: &str) -> Result<sec_agg_to_node::Step, Refusal> {
        match tokio::time::timeout_at(self.until, self.inbox.rx.recv()).await {
            Ok(Some(step)) => Ok(step),
            Ok(None) => Err(failed("the task's secure aggregation was closed")),
            Err(_) => Err(failed(format!(
                "the coordinator sent no {what} before the task's deadline passed"
            ))),
        }
    }

    /// The key exchange: every agency's keys checked, this agency's shares sealed and sent, and
    /// the shares sealed for it received (run beside local training).
    pub(crate) async fn exchange(&mut self) -> Result<Vec<SealedShare>, Refusal> {
        let keys = match self.next("keys").await? {
            sec_agg_to_node::Step::Keys(k) => k.statements,
            _ => {
                return Err(failed(
                    "the coordinator sent another step where the keys were due",
                ));
            }
        };
        let ca = Arc::clone(&self.ca);
        let agencies = keys.len();
        let sealed = self
            .on_participant(move |p| p.share_keys(&keys, &ca))
            .await?
            .map_err(|e| failed(e.to_string()))?;
        self.send(sec_agg_from_node::Step::Shares(
            treaty_proto::v1::SealedShares { shares: sealed },
        ))
        .await?;
        tracing::info!(
            task = self.task_id,
            agencies,
            "secure aggregation: keys checked, shares sent"
        );
        match self.next("shares").await? {
            sec_agg_to_node::Step::Shares(s) => Ok(s.shares),
            _ => Err(failed(
                "the coordinator sent another step where the shares were due",
            )),
        }
    }

    /// The masked update: the trained model's difference from the global model it started
    /// from, in the round's fixed point, plus its masks (one ChaCha20 stream a peer over the
    /// whole update: on a blocking thread, which takes `output` and gives it back).
    pub(crate) async fn mask(
        &mut self,
        shares: Vec<SealedShare>,
        output: Output,
    ) -> Result<(Output, Vec<u64>), Refusal> {
        let (output, masked) = self
            .on_participant(move |participant| {
                let masked = match &output.ring {
                    // Distributed DP: the noisy contribution is in the fixed point already.
                    Some(ring) => participant.mask_encoded(&shares, ring.clone()),
                    None => {
                        let local = output.tensors.iter().flat_map(|t| t.values.iter());
                        let global = output.started_from.iter().flat_map(|t| t.values.iter());
                        let delta: Vec<f64> = local.zip(global).map(|(l, g)| l - g).collect();
                        participant.mask(&shares, &delta)
                    }
                };
                (output, masked)
            })
            .await?;
        Ok((output, masked.map_err(|e| failed(e.to_string()))?))
    }

    /// After the masked update was sent: the survivors signed, their signatures checked, and
    /// this agency's shares revealed (of survivors' seeds, of dropped agencies' mask keys).
    pub(crate) async fn unmask(mut self) -> Result<(), Refusal> {
        let survivors = match self.next("survivors").await? {
            sec_agg_to_node::Step::Survivors(s) => s.agencies,
            _ => {
                return Err(failed(
                    "the coordinator sent another step where the survivors were due",
                ));
            }
        };
        let signer = Arc::clone(&self.signer);
        let signed = self
            .participant()?
            .sign_survivors(&survivors, &signer)
            .map_err(|e| failed(e.to_string()))?;
        self.send(sec_agg_from_node::Step::Survivors(signed))
            .await?;
        let signatures = match self.next("signatures").await? {
            sec_agg_to_node::Step::Signatures(s) => s.statements,
            _ => {
                return Err(failed(
                    "the coordinator sent another step where the signatures were due",
                ));
            }
        };
        let ca = Arc::clone(&self.ca);
        let reveal = self
            .on_participant(move |p| p.reveal(&signatures, &ca))
            .await?
            .map_err(|e| failed(e.to_string()))?;
        self.send(sec_agg_from_node::Step::Reveal(reveal.into()))
            .await
    }
}

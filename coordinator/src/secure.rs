//! A round of secure aggregation at the coordinator (docs/SECURE_AGGREGATION.md): the
//! protocol's state ([`treaty_proto::secagg::Aggregation`]) driven by the messages of the
//! round's tasks, each step closed when every agency still in it has answered or its time is
//! up, and the next step's messages sent. What it keeps is what the protocol gives the
//! coordinator: public keys, sealed shares it cannot open, the running sum of masked updates,
//! and at the end the recovered masks. No individual update is ever held unmasked.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use treaty_proto::Identity;
use treaty_proto::secagg::{Aggregation, Params, Reveal, SecAggError};
use treaty_proto::v1::{
    CoordinatorMessage, SealedShares, SecAggToNode, SecureAggregationRound, SecureAggregationSpec,
    SignedStatements, Survivors, coordinator_message, sec_agg_from_node, sec_agg_to_node,
};

use crate::state::Coordinator;

/// The default fixed-point scale: 2^-32, far below an `f32`'s resolution of an update.
pub(crate) const DEFAULT_FRACTIONAL_BITS: u32 = 32;

/// The public parameters of a round of `agencies`, as its tasks state them.
pub(crate) fn params(
    spec: &SecureAggregationSpec,
    job: &str,
    round: u32,
    agencies: &[Identity],
    length: usize,
) -> Params {
    let mut participants: Vec<String> = agencies.iter().map(|a| a.to_string()).collect();
    participants.sort();
    participants.dedup();
    Params {
        job: job.to_owned(),
        round,
        threshold: Params::threshold_for(participants.len(), spec.max_dropouts),
        participants,
        fractional_bits: match spec.fractional_bits {
            0 => DEFAULT_FRACTIONAL_BITS,
            b => b,
        },
        length,
    }
}

/// The parameters as a task carries them.
pub(crate) fn wire(params: &Params) -> SecureAggregationRound {
    SecureAggregationRound {
        participants: params.participants.clone(),
        threshold: params.threshold as u32,
        fractional_bits: params.fractional_bits,
        length: params.length as u64,
    }
}

/// How long each of the steps after the masked updates waits for the agencies still in it: a
/// quarter of the round's timeout, between 2 and 10 seconds.
fn step_timeout(round_timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(round_timeout_ms / 4))
        .clamp(Duration::from_secs(2), Duration::from_secs(10))
}

/// How long the keys and shares steps wait: a node judges the task by its policy, records it in
/// its ledger and plans its noise before it advertises keys, so a third of the round's timeout,
/// between 2 and 20 seconds.
fn exchange_timeout(round_timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(round_timeout_ms / 3))
        .clamp(Duration::from_secs(2), Duration::from_secs(20))
}

/// How long the coordinator waits to hand one agency a message of a step: an agency that does
/// not read its session is left out of the step rather than holding the round.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The step a round is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Keys,
    Shares,
    Inputs,
    Signatures,
    Reveals,
    Done,
}

/// One round of secure aggregation in progress.
#[derive(Debug)]
pub(crate) struct SecureRound {
    aggregation: Option<Aggregation>,
    ca: Vec<u8>,
    /// Each agency's identity and task, by identity text.
    tasks: HashMap<String, (Identity, String)>,
    pub(crate) stage: Stage,
    /// The agencies the current step waits for.
    waiting: BTreeSet<String>,
    /// When the current step closes whoever has not answered.
    pub(crate) deadline: Instant,
    step: Duration,
    exchange: Duration,
    /// The round's own deadline: when the masked updates stop being taken.
    inputs_deadline: Instant,
    /// The sum and its survivors, once recovered.
    sum: Option<(Vec<f64>, Vec<String>)>,
}

impl SecureRound {
    /// A round of `params` whose tasks are `tasks` (agency -> task id), checked by the CA
    /// certificate `ca` (DER).
    pub(crate) fn new(
        params: Params,
        ca: Vec<u8>,
        tasks: &HashMap<Identity, String>,
        round_timeout_ms: u32,
        inputs_deadline: Instant,
    ) -> Result<Self, SecAggError> {
        let (step, exchange) = (
            step_timeout(round_timeout_ms),
            exchange_timeout(round_timeout_ms),
        );
        let aggregation = Aggregation::new(params)?;
        let tasks: HashMap<String, (Identity, String)> = tasks
            .iter()
            .map(|(a, t)| (a.to_string(), (a.clone(), t.clone())))
            .collect();
        Ok(SecureRound {
            aggregation: Some(aggregation),
            ca,
            waiting: tasks.keys().cloned().collect(),
            tasks,
            stage: Stage::Keys,
            deadline: Instant::now() + exchange,
            step,
            exchange,
            inputs_deadline,
            sum: None,
        })
    }

    fn aggregation(&mut self) -> Result<&mut Aggregation, SecAggError> {
        self.aggregation
            .as_mut()
            .ok_or_else(|| SecAggError::Order("the round's sum was already recovered".into()))
    }

    /// Takes a step an agency sent; what is wrong with it, when it cannot be taken (the
    /// agency is then out of the round's later steps).
    pub(crate) fn step(
        &mut self,
        from: &Identity,
        step: sec_agg_from_node::Step,
    ) -> Result<(), SecAggError> {
        use sec_agg_from_node::Step;
        let who = from.to_string();
        let ca = self.ca.clone();
        let taken = match (self.stage, step) {
            (Stage::Keys, Step::Keys(signed)) => self.aggregation()?.advert(&who, signed, &ca),
            (Stage::Shares, Step::Shares(s)) => self.aggregation()?.shares(&who, s.shares),
            (Stage::Signatures, Step::Survivors(signed)) => {
                self.aggregation()?.signature(&who, signed, &ca)
            }
            (Stage::Reveals, Step::Reveal(r)) => {
                self.aggregation()?.reveal(&who, Reveal::from_wire(&who, r))
            }
            (stage, _) => Err(SecAggError::Peer {
                agency: who.clone(),
                problem: format!("its step arrived while the round is at {stage:?}"),
            }),
        };
        self.waiting.remove(&who);
        taken
    }

    /// Adds an agency's masked update to the sum.
    pub(crate) fn masked(&mut self, from: &Identity, values: &[u64]) -> Result<(), SecAggError> {
        let who = from.to_string();
        if self.stage != Stage::Inputs {
            return Err(SecAggError::Peer {
                agency: who,
                problem: format!(
                    "its masked update arrived while the round is at {:?}",
                    self.stage
                ),
            });
        }
        self.waiting.remove(&who);
        self.aggregation()?.masked_input(&who, values)
    }

    /// An agency that will not answer any more (it refused, its result was rejected, its
    /// session closed): the current step stops waiting for it.
    pub(crate) fn gone(&mut self, agency: &Identity) {
        self.waiting.remove(&agency.to_string());
    }

    /// The agencies the current step waits for.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &Identity> {
        self.waiting
            .iter()
            .filter_map(|w| self.tasks.get(w).map(|(a, _)| a))
    }

    /// Whether the current step has every answer it waits for.
    pub(crate) fn complete(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Closes the current step and sends the next one's messages: the round fails (in words)
    /// when fewer agencies than its threshold remain.
    pub(crate) async fn advance(&mut self, ctx: &Coordinator) -> Result<(), SecAggError> {
        use sec_agg_to_node::Step;
        match self.stage {
            Stage::Keys => {
                let keys = self.aggregation()?.close_keys()?;
                let advertised = self.aggregation()?.advertisers();
                let message = Step::Keys(SignedStatements { statements: keys });
                self.send_all(ctx, &advertised, |_| message.clone()).await;
                let until = Instant::now() + self.exchange;
                self.next(Stage::Shares, advertised, Some(until));
            }
            Stage::Shares => {
                let inboxes = self.aggregation()?.close_shares()?;
                let sharers: Vec<String> = inboxes.keys().cloned().collect();
                let mut by_agency: HashMap<String, Step> = inboxes
                    .into_iter()
                    .map(|(to, shares)| (to, Step::Shares(SealedShares { shares })))
                    .collect();
                self.send_all(ctx, &sharers, |a| {
                    by_agency
                        .remove(a)
                        .unwrap_or(Step::Shares(SealedShares::default()))
                })
                .await;
                let until = self.inputs_deadline;
                self.next(Stage::Inputs, sharers, Some(until));
            }
            Stage::Inputs => {
                let survivors = self.aggregation()?.close_inputs()?;
                let message = Step::Survivors(Survivors {
                    agencies: survivors.clone(),
                });
                self.send_all(ctx, &survivors, |_| message.clone()).await;
                self.next(Stage::Signatures, survivors, None);
            }
            Stage::Signatures => {
                let signatures = self.aggregation()?.close_signatures()?;
                let signers = self.aggregation()?.signers();
                let message = Step::Signatures(SignedStatements {
                    statements: signatures,
                });
                self.send_all(ctx, &signers, |_| message.clone()).await;
                self.next(Stage::Reveals, signers, None);
            }
            Stage::Reveals => {
                let aggregation = self
                    .aggregation
                    .take()
                    .ok_or_else(|| SecAggError::Order("no round to finish".into()))?;
                // Recovering the masks expands one generator's stream per seed and per pair
                // with a dropped agency: CPU work, off the async runtime.
                let sum = tokio::task::spawn_blocking(move || aggregation.finish())
                    .await
                    .map_err(|e| {
                        SecAggError::Crypto(format!("recovering the sum failed: {e}"))
                    })??;
                self.sum = Some(sum);
                self.next(Stage::Done, Vec::new(), None);
            }
            Stage::Done => {}
        }
        Ok(())
    }

    fn next(&mut self, stage: Stage, waiting: Vec<String>, until: Option<Instant>) {
        self.stage = stage;
        self.waiting = waiting.into_iter().collect();
        self.deadline = until.unwrap_or_else(|| Instant::now() + self.step);
    }

    /// Sends each of `to` its message of the next step over its session; one whose session is
    /// gone is left out of the step.
    async fn send_all(
        &mut self,
        ctx: &Coordinator,
        to: &[String],
        mut message: impl FnMut(&str) -> sec_agg_to_node::Step,
    ) {
        for agency in to {
            let Some((identity, task_id)) = self.tasks.get(agency) else {
                continue;
            };
            let sent = CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Secagg(SecAggToNode {
                    task_id: task_id.clone(),
                    step: Some(message(agency)),
                })),
            };
            if let Some(outbox) = ctx.sessions.outbox(identity) {
                let _ = tokio::time::timeout(SEND_TIMEOUT, outbox.send(Ok(sent))).await;
            }
        }
    }

    /// The sum of the survivors' updates and the survivors (identities), once recovered.
    pub(crate) fn into_sum(self) -> Option<(Vec<f64>, Vec<String>)> {
        self.sum
    }
}

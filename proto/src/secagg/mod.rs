//! Secure aggregation: the coordinator learns the sum of a round's updates and nothing else of
//! any one of them, even when agencies drop out mid-round (Bonawitz et al., "Practical Secure
//! Aggregation for Privacy-Preserving Machine Learning", CCS 2017, in its version against an
//! active server: signed keys and a consistency check). docs/SECURE_AGGREGATION.md is the
//! protocol as a reviewer reads it; this module is both ends of it, as pure state machines the
//! node ([`Participant`]) and the coordinator ([`Aggregation`]) drive over the wire.
//!
//! In one round of `n` participants (at most 255) with threshold `t` (`2t > n`):
//!
//! 1. Each participant makes two X25519 key pairs (one to encrypt shares, one to agree masks)
//!    and advertises their public halves in a statement signed with its agency certificate's
//!    key, naming the job and round ([`KeyAdvert`]).
//! 2. Each checks every advertisement (issued by the federation CA, an agency of the round,
//!    signed, this job and round), then Shamir-shares its mask key's secret and a fresh
//!    self-mask seed among the advertisers (`t` of `n`), each share sealed for its holder.
//! 3. Each quantises its input into the ring of integers modulo 2^64 ([`FixedPoint`]) and adds
//!    its self-mask and, for every peer that shared, the pairwise mask agreed with it (added
//!    towards a later identity, subtracted towards an earlier one), and sends that.
//! 4. The coordinator names the survivors (whose masked inputs arrived); each survivor signs
//!    that list, and reveals shares only once it has seen `t` survivors' signatures on the very
//!    same list: of each survivor's self-mask seed, of each dropped agency's mask key, never
//!    both of one agency.
//! 5. The coordinator recovers the seeds and the dropped agencies' keys from `t` shares each,
//!    takes the masks away from the sum of the masked inputs and is left with the sum.

mod aggregator;
mod crypto;
mod participant;

use serde::{Deserialize, Serialize};

pub use aggregator::Aggregation;
pub use participant::Participant;

/// The most participants a round of secure aggregation can have: shares are identified by a
/// participant's place in the round, an element of GF(256) other than zero.
pub const MAX_PARTICIPANTS: usize = 255;

/// What every party of one round of secure aggregation agrees on before it starts, all of it
/// public: the coordinator states it in the task, and each node checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// The job and the round: every key, share and signature is bound to both.
    pub job: String,
    pub round: u32,
    /// The agencies admitted to the round (their identities, `treaty://agency/CC/ID`), in
    /// strictly increasing order; a share's id is its holder's place here, counted from 1.
    pub participants: Vec<String>,
    /// How many shares recover a secret; also the fewest agencies each step needs. `2t > n`.
    pub threshold: usize,
    /// The fixed-point scale: a value `x` travels as `round(x * 2^bits)` modulo 2^64.
    pub fractional_bits: u32,
    /// The number of values each participant contributes.
    pub length: usize,
}

/// Under distributed DP (`SecureAggregationSpec.distributed_noise`), the tensor after the model's
/// in each contribution: one value, the agency's public denominator, so that the round's sum
/// carries the sum of the survivors' denominators beside the sum of their gradient sums.
pub const DENOMINATOR: &str = "treaty.denominator";

/// The layout of a round's contributions: the global model's tensors, and under distributed DP
/// the [`DENOMINATOR`] after them.
pub fn layout(
    global: &[crate::tensor::NamedTensor],
    distributed: bool,
) -> Vec<crate::tensor::NamedTensor> {
    let mut layout = global.to_vec();
    if distributed {
        layout.push(crate::tensor::NamedTensor::new(
            DENOMINATOR,
            ndarray::ArrayD::zeros(ndarray::IxDyn(&[1])),
        ));
    }
    layout
}

/// Whether a job's round is one linear release, as distributed DP needs: one step of full-batch
/// DP gradient descent, without momentum, L2 or a proximal term (which would make a
/// contribution a non-linear function of its noise); why not, when it is not.
pub fn one_linear_step(spec: &crate::v1::TrainingSpec) -> Result<(), &'static str> {
    let full_batch = spec
        .privacy
        .as_ref()
        .is_some_and(|p| p.mode == crate::v1::DpMode::FullBatch as i32);
    let checks = [
        (full_batch, "it does not train full batch"),
        (spec.local_epochs <= 1, "it takes several local epochs"),
        (spec.momentum == 0.0, "it has momentum"),
        (spec.l2 == 0.0, "it has L2 regularisation"),
        (
            spec.strategy.as_ref().is_none_or(|s| s.proximal_mu == 0.0),
            "it has a proximal term",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, why)) => Err(why),
        None => Ok(()),
    }
}

/// The most values a contribution may have (as `[limits] max_update_elements`' default).
pub const MAX_LENGTH: usize = 10_000_000;

impl Params {
    /// The default threshold for `n` participants: the smallest above two thirds, so that the
    /// round survives `n - t` drop-outs and an honest agency's input stays hidden against the
    /// coordinator with fewer than `2t - n` agencies on its side (docs/SECURE_AGGREGATION.md).
    pub fn default_threshold(n: usize) -> usize {
        (2 * n / 3 + 1).min(n)
    }

    /// The fewest shares a node accepts as the threshold of `n` agencies when the job lets at
    /// most `max_dropouts` drop out (0: the default, a third): the threshold the job's own spec
    /// gives, never below a majority. A coordinator that states a lower one is refused.
    pub fn threshold_for(n: usize, max_dropouts: u32) -> usize {
        let majority = n / 2 + 1;
        match max_dropouts {
            0 => Self::default_threshold(n),
            d => n.saturating_sub(d as usize).max(majority),
        }
        .min(n)
    }

    /// Checks the parameters: what is wrong with them, in words.
    pub fn check(&self) -> Result<(), SecAggError> {
        let n = self.participants.len();
        let bad = |m: String| Err(SecAggError::Params(m));
        if !(2..=MAX_PARTICIPANTS).contains(&n) {
            return bad(format!(
                "a round of secure aggregation needs 2 to {MAX_PARTICIPANTS} participants, not {n}"
            ));
        }
        if self.participants.windows(2).any(|w| w[0] >= w[1]) {
            return bad("the participants are not in strictly increasing order".into());
        }
        if self.threshold < 2 || 2 * self.threshold <= n || self.threshold > n {
            return bad(format!(
                "the threshold {} is not above half of the {n} participants and at most all of them",
                self.threshold
            ));
        }
        if !(1..=48).contains(&self.fractional_bits) {
            return bad(format!(
                "{} fractional bits is outside 1 to 48",
                self.fractional_bits
            ));
        }
        if !(1..=MAX_LENGTH).contains(&self.length) {
            return bad(format!(
                "a contribution of {} values is outside 1 to {MAX_LENGTH}",
                self.length
            ));
        }
        Ok(())
    }

    /// The parameters a task states for its round (`Task.secure_aggregation`), of `job` and
    /// `round`; unchecked ([`Params::check`]).
    pub fn of_task(job: &str, round: u32, wire: &crate::v1::SecureAggregationRound) -> Self {
        Params {
            job: job.to_owned(),
            round,
            participants: wire.participants.clone(),
            threshold: wire.threshold as usize,
            fractional_bits: wire.fractional_bits,
            length: usize::try_from(wire.length).unwrap_or(usize::MAX),
        }
    }

    /// `agency`'s share id: its place among the participants, from 1.
    fn id_of(&self, agency: &str) -> Option<u8> {
        let i = self.participants.iter().position(|p| p == agency)?;
        u8::try_from(i + 1).ok()
    }

    /// The fixed-point code of this round.
    pub fn fixed_point(&self) -> FixedPoint {
        FixedPoint {
            fractional_bits: self.fractional_bits,
            participants: self.participants.len(),
        }
    }
}

/// The fixed-point code of a round: a value `x` is clamped to `[-bound, bound]`, scaled by
/// `2^bits` and rounded to the nearest integer, which is taken modulo 2^64. The bound leaves room
/// for `n` contributions to add up without wrapping: `bound = 2^(62 - bits) / n`, so a sum of
/// `n` of them stays below `2^62 * 2^-bits` in magnitude. Rounding adds at most `2^-(bits+1)` to
/// each value, so at most `n * 2^-(bits+1)` to each coordinate of the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPoint {
    pub fractional_bits: u32,
    pub participants: usize,
}

impl FixedPoint {
    /// The largest magnitude a value keeps; larger ones are clamped to it.
    pub fn bound(&self) -> f64 {
        2f64.powi(62 - self.fractional_bits as i32) / self.participants.max(1) as f64
    }

    /// The fixed point's unit: `2^bits`.
    pub fn unit(&self) -> f64 {
        2f64.powi(self.fractional_bits as i32)
    }

    /// The most rounding can change one coordinate of a sum of `n` contributions.
    pub fn sum_error(&self) -> f64 {
        self.participants as f64 * 2f64.powi(-(self.fractional_bits as i32) - 1)
    }

    /// `values` in the ring. A value that is not a number is refused (a node's update never holds
    /// one: it is checked before it is masked).
    pub fn encode(&self, values: &[f64]) -> Result<Vec<u64>, SecAggError> {
        let bound = self.bound();
        let scale = 2f64.powi(self.fractional_bits as i32);
        values
            .iter()
            .map(|&x| {
                if x.is_nan() {
                    return Err(SecAggError::Params(
                        "a contribution holds a value that is not a number".into(),
                    ));
                }
                let q = (x.clamp(-bound, bound) * scale).round() as i64;
                Ok(q as u64)
            })
            .collect()
    }

    /// A sum in the ring as values (read as a two's complement integer, then scaled back).
    pub fn decode(&self, sum: &[u64]) -> Vec<f64> {
        let scale = 2f64.powi(-(self.fractional_bits as i32));
        sum.iter().map(|&q| q as i64 as f64 * scale).collect()
    }
}

/// An agency's public keys for one round, as it signs them (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAdvert {
    pub agency: String,
    pub job: String,
    pub round: u32,
    /// X25519 public key that shares sent to this agency are sealed under.
    pub cipher_key: String,
    /// X25519 public key its pairwise masks are agreed with.
    pub mask_key: String,
    /// SHA-256 of its self-mask seed (hex, [`seed_commitment`]): the coordinator checks the
    /// seed it recovers from revealed shares against it, so a wrong share fails the round
    /// instead of making the sum wrong.
    pub seed_commitment: String,
    /// [`round_digest`] of the round as this agency was told it, with the share of noise it
    /// adds: every agency checks that every other states the same, so a coordinator cannot give
    /// agencies different thresholds, participants or fixed points, nor jobs that make their
    /// shares of distributed noise differ.
    pub round_digest: String,
}

/// The digest of a round's public parameters and of the discrete Gaussian scale of the share
/// of noise every agency adds under distributed DP (none without it): SHA-256 of a label and
/// their canonical JSON, in hex.
pub fn round_digest(params: &Params, noise_share: Option<f64>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"treaty-secagg/1 round\n");
    // Params and an optional number serialise infallibly.
    ctx.update(&serde_json::to_vec(&(params, noise_share)).unwrap_or_default());
    crate::hex::hex(ctx.finish().as_ref())
}

/// The commitment to a self-mask seed: SHA-256 of a label and the seed, in hex.
pub(crate) fn seed_commitment(seed: &[u8; 32]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"treaty-secagg/1 seed\n");
    ctx.update(seed);
    crate::hex::hex(ctx.finish().as_ref())
}

/// The digest of one run's accepted key advertisements (agency, keys and commitment, in the
/// agencies' order): a list of survivors signed in one run is no list of another run of the
/// same job and round (a round run again after a restart has fresh keys).
pub(crate) fn keys_digest<'a>(adverts: impl IntoIterator<Item = &'a KeyAdvert>) -> String {
    let mut sorted: Vec<&KeyAdvert> = adverts.into_iter().collect();
    sorted.sort_by(|a, b| a.agency.cmp(&b.agency));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"treaty-secagg/1 keys\n");
    for a in sorted {
        for field in [&a.agency, &a.cipher_key, &a.mask_key, &a.seed_commitment] {
            ctx.update(&(field.len() as u64).to_le_bytes());
            ctx.update(field.as_bytes());
        }
    }
    crate::hex::hex(ctx.finish().as_ref())
}

/// The survivors of a round as an agency signs them before it reveals any share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurvivorList {
    pub agency: String,
    pub job: String,
    pub round: u32,
    /// The run's [`keys_digest`]: this list belongs to this run of the round only.
    pub keys: String,
    pub survivors: Vec<String>,
}

/// A share one agency sealed for another, as the wire carries it (the coordinator relays it
/// and cannot open it).
pub use crate::v1::SealedShare;

/// What a sealed share holds: a Shamir share of the sender's self-mask seed and one of its mask
/// key's secret (33 bytes each), bound to the sender, recipient, job and round once more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBundle {
    from: String,
    to: String,
    job: String,
    round: u32,
    seed: Vec<u8>,
    mask_key: Vec<u8>,
}

/// A survivor's answer in the last step: shares of each survivor's seed and of each dropped
/// agency's mask key, by the agency they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reveal {
    pub from: String,
    pub seeds: Vec<(String, Vec<u8>)>,
    pub mask_keys: Vec<(String, Vec<u8>)>,
}

impl From<Reveal> for crate::v1::RevealedShares {
    fn from(r: Reveal) -> Self {
        let wire = |v: Vec<(String, Vec<u8>)>| {
            v.into_iter()
                .map(|(agency, share)| crate::v1::AgencyShare {
                    agency,
                    share: share.into(),
                })
                .collect()
        };
        crate::v1::RevealedShares {
            seeds: wire(r.seeds),
            mask_keys: wire(r.mask_keys),
        }
    }
}

impl Reveal {
    /// `from`'s revealed shares as the wire carried them.
    pub fn from_wire(from: &str, wire: crate::v1::RevealedShares) -> Self {
        let own = |v: Vec<crate::v1::AgencyShare>| {
            v.into_iter()
                .map(|s| (s.agency, s.share.to_vec()))
                .collect()
        };
        Reveal {
            from: from.to_owned(),
            seeds: own(wire.seeds),
            mask_keys: own(wire.mask_keys),
        }
    }
}

/// Why a step of secure aggregation could not be taken. Each names what is wrong; none of them
/// depends on an agency's records (they depend on keys, messages and counts of agencies only).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecAggError {
    #[error("secure aggregation parameters: {0}")]
    Params(String),
    #[error("secure aggregation out of order: {0}")]
    Order(String),
    #[error("secure aggregation: {agency}'s message is refused: {problem}")]
    Peer { agency: String, problem: String },
    #[error(
        "secure aggregation needs {need} agencies at {step}, only {have} remain: the round cannot complete"
    )]
    TooFew {
        step: &'static str,
        have: usize,
        need: usize,
    },
    #[error("secure aggregation: the coordinator's message is refused: {0}")]
    Coordinator(String),
    #[error("secure aggregation: {0}")]
    Crypto(String),
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    crate::hex::unhex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests;

//! The coordinator's database (sled): federations, jobs, model versions and the audit log.
//!
//! This module alone touches sled. Records are protobuf (the definitions of `treaty.v1`), the
//! audit log is a hash chain of JSON entries with a signed head after each (`audit`). Every
//! write that a later decision depends on is flushed and synced before the call returns, or
//! (a round's decision and its `round.decided` line) by the round's next flush, before anything
//! that depends on it leaves the coordinator.
//!
//! A model version encoded in more than [`INLINE_MODEL_BYTES`] is kept in a file of its own
//! ([`crate::model_files`]); sled keeps its name, size and hash.
//!
//! A job is kept as its head (the `Job` record without its rounds) and one record per completed
//! round, so that what a round costs to store and to read does not grow with the rounds before
//! it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;

use prost::Message;
use serde::Serialize;
use treaty_proto::v1::{FederationInfo, Job, RoundSummary, StoredModel};

use crate::audit::{self, Head, Link, SignedHead};
use crate::error::CoordinatorError;
use crate::model_files::{INLINE_MODEL_BYTES, ModelFileRef, ModelFiles};

/// The coordinator's database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: sled::Db,
    /// sled's log file (`db`), open to be synced by [`Store::flush`].
    log: Arc<std::fs::File>,
    federations: sled::Tree,
    /// Each job's head: `Job` without its rounds.
    jobs: sled::Tree,
    /// Each completed round's summary: `job/round` -> `RoundSummary`.
    rounds: sled::Tree,
    /// Model versions encoded in at most [`INLINE_MODEL_BYTES`]: version -> `StoredModel`.
    models: sled::Tree,
    /// Larger model versions, each in a file of its own (`files`): version -> its
    /// [`ModelFileRef`]. A version is in one of `models` and `model_files`, never both.
    model_files: sled::Tree,
    files: Arc<ModelFiles>,
    /// The audit log: entry `n` under `n` (eight bytes, big-endian), as an `audit::Link`.
    audit: sled::Tree,
    /// The signed heads of the audit log: `n` -> `audit::SignedHead` JSON.
    heads: sled::Tree,
    /// The audit log's head; held while an entry is appended, so that entries chain in order.
    chain: Arc<Mutex<Head>>,
    /// Every certificate that signed a head: SHA-256 (hex) -> DER.
    certificates: sled::Tree,
    /// The last `audit.signing_started` entry as the log stood when opened: from it on, every
    /// entry has its own signed head.
    signing_started: Option<u64>,
    /// Signs each new head (the coordinator's TLS key); none in unit tests.
    signer: Option<Arc<treaty_proto::tls::KeySigner>>,
    meta: sled::Tree,
    /// Each round's policy decision: `job/round` -> decision JSON.
    decisions: sled::Tree,
    /// Every policy and registry text a decision cited: SHA-256 -> text.
    archive: sled::Tree,
}

/// One line of the audit log: who did what, when, to which job, round and agency.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct AuditEntry {
    pub time_unix_ms: i64,
    /// The identity that caused the event (an operator, an agency, or the coordinator itself).
    pub actor: String,
    /// What happened, e.g. `federation.created`, `round.completed`, `update.rejected`.
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub federation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agency: String,
    /// Details in words and figures.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The SHA-256 of each document the entry vouches for: for `round.decided`, the decision
    /// record first, then the registry and policy texts it was decided under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<String>,
    /// For `round.completed`: the SHA-256 of the round's results record (every result taken
    /// in, by the hash its receipt names; docs/AUDIT.md), when a result arrived.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub results: String,
    /// Random, set when the entry is linked: its hash, in a bundle of another job, cannot be
    /// confirmed by guessing its words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
}

/// A store in `dir` that signs its audit heads with the key of a coordinator of a PKI made in
/// `pki`.
#[cfg(test)]
pub(crate) fn signed_for_tests(dir: &Path, pki: &Path) -> Store {
    let pki = treaty_proto::pki::PkiDir::new(pki.join("pki"));
    if !pki.ca_cert().exists() {
        treaty_proto::pki::init(
            &pki,
            &treaty_proto::pki::InitOptions {
                federation: "test".into(),
                coordinator: "hub".into(),
                coordinator_hosts: vec![],
                operators: vec![],
                agencies: vec![("DE-BKA".into(), "DE".into())],
                validity_days: 30,
            },
        )
        .unwrap();
    }
    Store::open(dir)
        .unwrap()
        .signed_by(hub_signer(&pki))
        .unwrap()
}

/// The signer of the coordinator `hub` of a test PKI.
#[cfg(test)]
pub(crate) fn hub_signer(pki: &treaty_proto::pki::PkiDir) -> treaty_proto::tls::KeySigner {
    let identity = treaty_proto::identity::Identity::coordinator("hub").unwrap();
    let (cert, key) = pki.cert_and_key(&identity);
    let files = treaty_proto::tls::TlsFiles {
        ca_cert: pki.ca_cert(),
        cert,
        key,
    };
    treaty_proto::tls::KeySigner::load(&files).unwrap()
}

/// An audit entry as stored: its number and bytes (link line, newline, entry line).
pub(crate) type StoredEntry = (u64, Vec<u8>);

/// sled 0.34's log, the file its database writes (values above about 128 KiB go to blob files of
/// their own, which sled does not sync; large models are not kept in sled: [`Store::put_model`]).
const SLED_LOG: &str = "db";

/// The mark in `meta` that large models are kept in files ([`Store::move_large_models`]).
const MODELS_IN_FILES: &str = "models_in_files";

/// The action of the entry from which on every entry has its own signed head.
const SIGNING_STARTED: &str = "audit.signing_started";

/// The number of an audit entry or head from its key (eight bytes, big-endian); a key of
/// another length, which no entry has, reads as `u64::MAX` and breaks the chain where it is.
fn seq_of(key: &[u8]) -> u64 {
    <[u8; 8]>::try_from(key).map_or(u64::MAX, u64::from_be_bytes)
}

/// The `meta` key of the federation CA's certificate.
const CA_CERTIFICATE: &[u8] = b"ca_certificate";

/// An audit entry ready to store: its bytes, the head after it and that head signed.
struct Linked {
    bytes: Vec<u8>,
    head: Head,
    signed: Option<Vec<u8>>,
}

fn storage_error(
    e: sled::transaction::TransactionError<std::convert::Infallible>,
) -> CoordinatorError {
    match e {
        sled::transaction::TransactionError::Storage(e) => CoordinatorError::from(e),
        sled::transaction::TransactionError::Abort(never) => match never {},
    }
}

/// The key of a job's round: the job id, `/`, the round as eight digits (in round order).
fn round_key(job: &str, round: u32) -> Vec<u8> {
    format!("{job}/{round:08}").into_bytes()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn decode<M: Message + Default>(
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<M, CoordinatorError> {
    M::decode(bytes).map_err(|source| CoordinatorError::CorruptRecord {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// A stored job head read for what a model download needs: the fields of `Job` of the same
/// numbers, decoded alone. Its other fields (the spec, the statistics round's summary, each
/// agency's public record estimate), which grow with the federation's members, are skipped
/// unread: every agency downloads every round's model, so reading them would cost each round
/// the square of the number of agencies.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct JobRef {
    /// `Job.federation`.
    #[prost(string, tag = "2")]
    pub federation: String,
    /// `Job.latest_model_version`.
    #[prost(string, tag = "9")]
    pub latest_model_version: String,
}

/// A stored model version read for a download: the fields of `StoredModel` of the same
/// numbers, decoded alone. Its contributors (one per agency of the round) and its optimizer
/// state are skipped unread: every agency downloads every round's model.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ModelToSend {
    /// `StoredModel.header`.
    #[prost(message, optional, tag = "1")]
    pub header: Option<treaty_proto::v1::ModelHeader>,
    /// `StoredModel.tensors`.
    #[prost(message, repeated, tag = "2")]
    pub tensors: Vec<treaty_proto::v1::Tensor>,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, CoordinatorError> {
        let db =
            sled::Config::new()
                .path(dir)
                .open()
                .map_err(|source| CoordinatorError::OpenStore {
                    path: dir.to_owned(),
                    source,
                })?;
        let log =
            std::fs::File::open(dir.join(SLED_LOG)).map_err(|e| CoordinatorError::OpenStore {
                path: dir.to_owned(),
                source: sled::Error::Io(e),
            })?;
        let files = ModelFiles::open(dir)
            .map_err(|(path, source)| CoordinatorError::Write { path, source })?;
        let mut store = Store {
            log: Arc::new(log),
            federations: db.open_tree("federations")?,
            jobs: db.open_tree("jobs")?,
            rounds: db.open_tree("rounds")?,
            models: db.open_tree("models")?,
            model_files: db.open_tree("model_files")?,
            files: Arc::new(files),
            audit: db.open_tree("audit")?,
            heads: db.open_tree("audit_heads")?,
            certificates: db.open_tree("certificates")?,
            chain: Arc::new(Mutex::new(Head::genesis())),
            signing_started: None,
            signer: None,
            meta: db.open_tree("meta")?,
            decisions: db.open_tree("decisions")?,
            archive: db.open_tree("policy_archive")?,
            db,
        };
        store.split_rounds()?;
        store.move_large_models()?;
        store.chain_unchained()?;
        let (head, signing_started) = store.read_audit()?;
        *store.chain.lock().unwrap_or_else(|e| e.into_inner()) = head;
        store.signing_started = signing_started;
        Ok(store)
    }

    /// Moves the rounds a job record written by an earlier version holds inline into their own
    /// records, each job in one transaction: nothing is lost if the move is cut short.
    fn split_rounds(&self) -> Result<(), CoordinatorError> {
        let mut moved = false;
        for kv in self.jobs.iter() {
            let (key, value) = kv?;
            let mut job: Job = decode("job", &key, &value)?;
            if job.rounds.is_empty() {
                continue;
            }
            let rounds = std::mem::take(&mut job.rounds);
            job.rounds_completed = rounds.len() as u32;
            self.write_job(&job, &rounds, None)?;
            moved = true;
        }
        if moved {
            self.flush()?;
        }
        Ok(())
    }

    /// Moves the large models an earlier version kept in sled into files of their own, each
    /// with its record in one transaction: nothing is lost if the move is cut short. Once,
    /// when a store of an earlier version is first opened (a mark in `meta` says it was done):
    /// the move reads every model stored, which later starts need not.
    fn move_large_models(&self) -> Result<(), CoordinatorError> {
        if self.meta.contains_key(MODELS_IN_FILES)? {
            return Ok(());
        }
        for kv in self.models.iter() {
            let (key, value) = kv?;
            if value.len() > INLINE_MODEL_BYTES {
                self.put_encoded(&key, value.to_vec())?;
            }
        }
        self.meta.insert(MODELS_IN_FILES, b"1".as_slice())?;
        self.flush()
    }

    /// Writes a job's head, `rounds` and an audit line (its sequence number and JSON) in one
    /// transaction (not yet flushed).
    fn write_job(
        &self,
        head: &Job,
        rounds: &[RoundSummary],
        entry: Option<AuditEntry>,
    ) -> Result<(), CoordinatorError> {
        use sled::Transactional;
        let encoded = head.encode_to_vec();
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let linked = entry.map(|e| self.link(&chain, &e)).transpose()?;
        (&self.jobs, &self.rounds, &self.audit, &self.heads)
            .transaction(|(jobs, stored, log, heads)| {
                for r in rounds {
                    stored.insert(round_key(&head.job_id, r.round), r.encode_to_vec())?;
                }
                jobs.insert(head.job_id.as_bytes(), encoded.as_slice())?;
                if let Some(linked) = &linked {
                    let key = linked.head.seq.to_be_bytes();
                    log.insert(&key, linked.bytes.as_slice())?;
                    if let Some(signed) = &linked.signed {
                        heads.insert(&key, signed.as_slice())?;
                    }
                }
                Ok(())
            })
            .map_err(storage_error)?;
        if let Some(linked) = linked {
            *chain = linked.head;
        }
        Ok(())
    }

    /// `entry` linked after `chain`, with the new head signed when the store has a signer.
    fn link(&self, chain: &Head, entry: &AuditEntry) -> Result<Linked, CoordinatorError> {
        let mut entry = entry.clone();
        entry.nonce = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let (bytes, head) = chain
            .append(&entry)
            .map_err(CoordinatorError::CorruptAudit)?;
        let signed = match &self.signer {
            Some(signer) => {
                let signed = SignedHead::sign(&head, crate::state::now_ms(), signer)?;
                Some(serde_json::to_vec(&signed).map_err(CoordinatorError::CorruptAudit)?)
            }
            None => None,
        };
        Ok(Linked {
            bytes,
            head,
            signed,
        })
    }

    /// Signs each new head of the audit log from now on with `signer` (the coordinator's TLS
    /// key), keeping its certificate (DER, under its SHA-256) so that
    /// the signatures can be checked, and signs the head as it stands if it is not signed yet.
    pub(crate) fn signed_by(
        mut self,
        signer: treaty_proto::tls::KeySigner,
    ) -> Result<Self, CoordinatorError> {
        let ca = signer.ca_certificate().to_vec();
        self.check_signed_heads(&ca)?;
        let der = signer.certificate().as_ref();
        self.certificates
            .insert(treaty_policies::sha256_hex(der).as_bytes(), der)?;
        self.meta.insert(CA_CERTIFICATE, ca)?;
        self.flush()?;
        let unsigned = self.heads.is_empty();
        self.signer = Some(Arc::new(signer));
        let head = self.audit_head();
        if unsigned && head.seq > 0 {
            // A log no coordinator signed (written before signing existed, or linked just
            // now): the log says so, and from this entry on every entry has its signed head.
            self.audit(&AuditEntry {
                time_unix_ms: crate::state::now_ms(),
                actor: "coordinator".into(),
                action: SIGNING_STARTED.into(),
                detail: format!(
                    "entries 1 to {} were written before the coordinator signed its log; this entry's signed head covers them through the chain, and every entry from it on has its own",
                    head.seq
                ),
                ..Default::default()
            })?;
        }
        Ok(self)
    }

    /// Checks the signed heads against the chain as a signer would: every entry from the first
    /// signed one has its head, and the last head is signed by a coordinator certificate the
    /// federation CA `ca` issued (it covers every link before it through the chain). A log
    /// edited in the database without the coordinator's key fails here.
    fn check_signed_heads(&self, ca: &[u8]) -> Result<(), CoordinatorError> {
        // Where signing began is read from the chain itself (the signed head after it covers
        // it): the last `audit.signing_started` entry, else the first entry. A log without any
        // head and without that entry was never signed.
        let from = self.signing_started;
        if from.is_none() && self.heads.is_empty() {
            return Ok(());
        }
        let from = from.unwrap_or(1);
        let head = self.audit_head();
        let broken = |seq: u64, problem: String| audit::ChainBreak { seq, problem };
        for seq in from..=head.seq {
            if !self.heads.contains_key(seq.to_be_bytes())? {
                return Err(broken(
                    seq,
                    "its signed head is missing (every entry since signing began has one)".into(),
                )
                .into());
            }
        }
        if head.seq < from {
            return Ok(());
        }
        let bad = |problem: String| broken(head.seq, format!("its signed head: {problem}"));
        let value = self
            .heads
            .get(head.seq.to_be_bytes())?
            .ok_or_else(|| bad("missing".into()))?;
        let signed: SignedHead =
            serde_json::from_slice(&value).map_err(CoordinatorError::CorruptAudit)?;
        let certificate = self
            .certificates
            .get(signed.certificate_sha256.as_bytes())?
            .ok_or_else(|| bad("the certificate that signed it is not on record".into()))?;
        treaty_proto::tls::verify_coordinator(&certificate, ca).map_err(bad)?;
        let signature = treaty_proto::hex::unhex(&signed.signature)
            .ok_or_else(|| bad("the signature is not hex".into()))?;
        treaty_proto::tls::verify_signature(
            &certificate,
            &signed.scheme,
            signed.statement.as_bytes(),
            &signature,
        )
        .map_err(bad)?;
        Ok(())
    }

    /// The number of the audit entry that recorded `digest` as the model `job` stored after
    /// `round` (`round.completed`; `model.initialized` for round 0), the newest first.
    pub(crate) fn model_entry(
        &self,
        job: &str,
        round: u32,
        digest: &str,
    ) -> Result<Option<u64>, CoordinatorError> {
        let action = if round == 0 {
            "model.initialized"
        } else {
            "round.completed"
        };
        for kv in self.audit.iter().rev() {
            let (key, value) = kv?;
            let Some(line) = audit::split(&value).1 else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(line) else {
                continue;
            };
            if entry.job == job
                && entry.round == round
                && entry.action == action
                && entry.documents.first().map(String::as_str) == Some(digest)
            {
                return Ok(Some(seq_of(&key)));
            }
        }
        Ok(None)
    }

    /// The database's size on disk, in bytes (0 when sled cannot tell).
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.files.size_on_disk()
    }

    /// The audit log's head as it stands.
    pub(crate) fn audit_head(&self) -> Head {
        self.chain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key that signs the audit log's heads and models' provenance, once set.
    pub(crate) fn signer(&self) -> Option<&treaty_proto::tls::KeySigner> {
        self.signer.as_deref()
    }

    /// Links an audit log written before entries were chained (each a bare `AuditEntry` under
    /// a sequence number), in its order, content unchanged, and records that it did so.
    fn chain_unchained(&self) -> Result<(), CoordinatorError> {
        // Never a log that holds a signed head.
        if !self.heads.is_empty() {
            return Ok(());
        }
        let mut old = Vec::new();
        for kv in self.audit.iter() {
            let (key, value) = kv?;
            if serde_json::from_slice::<Link>(audit::split(&value).0).is_ok() {
                return Ok(());
            }
            let entry: AuditEntry =
                serde_json::from_slice(&value).map_err(CoordinatorError::CorruptAudit)?;
            old.push((key, entry));
        }
        if old.is_empty() {
            return Ok(());
        }
        let count = old.len();
        let mut head = Head::genesis();
        let mut linked = Vec::with_capacity(count + 1);
        let note = AuditEntry {
            time_unix_ms: crate::state::now_ms(),
            actor: "coordinator".into(),
            action: "audit.chained".into(),
            detail: format!(
                "the {count} entries before this one were written before the audit log was a hash chain; they were linked into it in their order, unchanged"
            ),
            ..Default::default()
        };
        for entry in old.iter().map(|(_, e)| e.clone()).chain([note]) {
            let (bytes, next) = head
                .append(&entry)
                .map_err(CoordinatorError::CorruptAudit)?;
            linked.push((next.seq, bytes));
            head = next;
        }
        self.audit
            .transaction(|log| {
                for (key, _) in &old {
                    log.remove(key)?;
                }
                for (seq, bytes) in &linked {
                    log.insert(&seq.to_be_bytes(), bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(storage_error)?;
        self.flush()
    }

    /// Reads the whole audit log and checks its chain and that each signed head states the
    /// head at its own key (signatures are checked when the key is loaded, `signed_by`): the
    /// head, or the first entry where the stored log is not what the chain says.
    #[cfg(test)]
    pub(crate) fn verify_audit(&self) -> Result<Head, CoordinatorError> {
        self.read_audit().map(|(head, _)| head)
    }

    /// As [`Store::verify_audit`], with the last `audit.signing_started` entry, in one pass.
    fn read_audit(&self) -> Result<(Head, Option<u64>), CoordinatorError> {
        let mut stored = Vec::new();
        let mut signing_started = None;
        for kv in self.audit.iter() {
            let (key, value) = kv?;
            let seq = seq_of(&key);
            // Parsed only where the words are: the log's own entries are few.
            if let Some(entry) = audit::split(&value).1
                && entry
                    .windows(SIGNING_STARTED.len())
                    .any(|w| w == SIGNING_STARTED.as_bytes())
                && serde_json::from_slice::<AuditEntry>(entry)
                    .is_ok_and(|e| e.action == SIGNING_STARTED && e.job.is_empty())
            {
                signing_started = Some(seq);
            }
            stored.push((seq, value));
        }
        let (head, hashes) = audit::verify(stored.iter().map(|(k, v)| (*k, v.as_ref())))?;
        let mut heads = Vec::new();
        for kv in self.heads.iter() {
            let (key, value) = kv?;
            heads.push((
                seq_of(&key),
                serde_json::from_slice::<SignedHead>(&value)
                    .map_err(CoordinatorError::CorruptAudit)?,
            ));
        }
        audit::check_heads(heads.iter().map(|(k, h)| (*k, h)), &hashes)?;
        Ok((head, signing_started))
    }

    /// Makes what was written durable. sled's flush writes its log with Linux's
    /// `sync_file_range`, which persists neither the file's size nor the disk's write cache: a
    /// power failure could take back what it wrote. The `fdatasync` of the log after it does
    /// persist them (as the node's ledger does). A crash of the process loses nothing flushed;
    /// after a power failure, what sled wrote to a blob file of its own (a write above about
    /// 128 KiB: a page of the tree grown that large) may be lost, as sled does not sync those.
    /// Large models are not in sled ([`Store::put_model`]).
    pub(crate) fn flush(&self) -> Result<(), CoordinatorError> {
        self.db.flush()?;
        self.log.sync_data().map_err(sled::Error::Io)?;
        Ok(())
    }

    /// Stores a new federation; fails when the name is taken.
    pub(crate) fn create_federation(&self, info: &FederationInfo) -> Result<(), CoordinatorError> {
        let swapped = self.federations.compare_and_swap(
            info.name.as_bytes(),
            None::<&[u8]>,
            Some(info.encode_to_vec()),
        )?;
        if swapped.is_err() {
            return Err(CoordinatorError::FederationExists {
                name: info.name.clone(),
            });
        }
        self.flush()
    }

    pub(crate) fn federation(
        &self,
        name: &str,
    ) -> Result<Option<FederationInfo>, CoordinatorError> {
        self.federations
            .get(name.as_bytes())?
            .map(|v| decode("federation", name.as_bytes(), &v))
            .transpose()
    }

    /// Every federation, by name.
    #[cfg(test)]
    fn federations(&self) -> Result<Vec<FederationInfo>, CoordinatorError> {
        self.federations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("federation", &k, &v)
            })
            .collect()
    }

    /// The federations whose names come after `after` (all, when it is empty), by name, read
    /// as they are taken.
    pub(crate) fn federations_after(
        &self,
        after: &str,
    ) -> impl Iterator<Item = Result<FederationInfo, CoordinatorError>> + use<> {
        use std::ops::Bound;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        self.federations
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .map(|kv| {
                let (k, v) = kv?;
                decode("federation", &k, &v)
            })
    }

    /// The heads of the jobs older than the job `before` (all, when it is empty), newest first,
    /// read as they are taken.
    pub(crate) fn jobs_before(
        &self,
        before: &str,
    ) -> impl Iterator<Item = Result<Job, CoordinatorError>> + use<> {
        use std::ops::Bound;
        let end = if before.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(before.as_bytes().to_vec())
        };
        self.jobs
            .range::<Vec<u8>, _>((Bound::Unbounded, end))
            .rev()
            .map(|kv| {
                let (k, v) = kv?;
                decode("job", &k, &v)
            })
    }

    /// A fresh job id, `job-000001` and up; never reused, also across restarts.
    pub(crate) fn next_job_id(&self) -> Result<String, CoordinatorError> {
        let next = self.meta.update_and_fetch("last_job_number", |old| {
            let old = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((old + 1).to_be_bytes().to_vec())
        })?;
        let number = next
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or(CoordinatorError::CorruptCounter)?;
        self.flush()?;
        Ok(format!("job-{number:06}"))
    }

    /// Stores a job's head as it is now (replacing the previous state), durably. Its rounds
    /// are stored one at a time, by [`Store::put_round`].
    pub(crate) fn put_job(&self, job: &Job) -> Result<(), CoordinatorError> {
        debug_assert!(
            job.rounds.is_empty(),
            "a job's rounds are stored on their own"
        );
        self.jobs
            .insert(job.job_id.as_bytes(), job.encode_to_vec())?;
        self.flush()
    }

    /// Stores a completed round, the job's head as it is after it and the round's line of the
    /// audit log, together, durably (one flush).
    pub(crate) fn put_round(
        &self,
        head: &Job,
        round: &RoundSummary,
        entry: &AuditEntry,
    ) -> Result<(), CoordinatorError> {
        self.write_job(head, std::slice::from_ref(round), Some(entry.clone()))?;
        self.flush()
    }

    /// A job's head: the job without its rounds (`rounds_completed` counts them).
    pub(crate) fn job(&self, job_id: &str) -> Result<Option<Job>, CoordinatorError> {
        self.jobs
            .get(job_id.as_bytes())?
            .map(|v| decode("job", job_id.as_bytes(), &v))
            .transpose()
    }

    /// What a model download needs of a job's head ([`JobRef`]), read without decoding the
    /// rest of it.
    pub(crate) fn job_ref(&self, job_id: &str) -> Result<Option<JobRef>, CoordinatorError> {
        self.jobs
            .get(job_id.as_bytes())?
            .map(|v| decode("job", job_id.as_bytes(), &v))
            .transpose()
    }

    /// A job with its rounds, in order.
    pub(crate) fn job_with_rounds(&self, job_id: &str) -> Result<Option<Job>, CoordinatorError> {
        let Some(mut job) = self.job(job_id)? else {
            return Ok(None);
        };
        job.rounds = self
            .rounds
            .scan_prefix(format!("{job_id}/").as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode("round", &k, &v)
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(job))
    }

    /// Every job's head, newest first.
    pub(crate) fn jobs(&self) -> Result<Vec<Job>, CoordinatorError> {
        self.jobs
            .iter()
            .rev()
            .map(|kv| {
                let (k, v) = kv?;
                decode("job", &k, &v)
            })
            .collect()
    }

    /// Stores a model version, not yet flushed: the caller's next durable write — the job's
    /// head naming it as its latest model ([`Store::put_job`], [`Store::put_round`]) — flushes
    /// it with that write, one flush for both, and sled's log keeps it before the head that
    /// names it. A version encoded in more than [`INLINE_MODEL_BYTES`] is first written to a
    /// file of its own and synced, so that the record naming it is never on disk without it.
    /// The record is encoded and dropped before the encoding is stored: a large model is held
    /// twice at most, never three times.
    pub(crate) fn put_model(&self, model: StoredModel) -> Result<(), CoordinatorError> {
        let version = model
            .header
            .as_ref()
            .map(|h| h.model_version.clone())
            .unwrap_or_default();
        let encoded = model.encode_to_vec();
        drop(model);
        self.put_encoded(version.as_bytes(), encoded)
    }

    /// Stores a model version's encoding in sled or in a file of its own, and removes what
    /// was stored of the version before (a round redone after a crash stores its version
    /// again), in one transaction.
    fn put_encoded(&self, version: &[u8], encoded: Vec<u8>) -> Result<(), CoordinatorError> {
        use sled::Transactional;
        let inline = encoded.len() <= INLINE_MODEL_BYTES;
        let value = match inline {
            true => encoded,
            false => self
                .files
                .write(encoded)
                .map_err(|(path, source)| CoordinatorError::Write { path, source })?
                .encode(),
        };
        // A version is stored once, unless a round is redone after a crash: then, and only
        // then, the record it leaves is removed in the same transaction. Otherwise one insert
        // (a sled transaction writes its log twice more).
        let (kept, other) = match inline {
            true => (&self.models, &self.model_files),
            false => (&self.model_files, &self.models),
        };
        if !other.contains_key(version)? {
            kept.insert(version, value)?;
            return Ok(());
        }
        (&self.models, &self.model_files)
            .transaction(|(models, files)| {
                let (kept, other) = if inline {
                    (models, files)
                } else {
                    (files, models)
                };
                kept.insert(version, value.as_slice())?;
                other.remove(version)?;
                Ok(())
            })
            .map_err(storage_error)?;
        Ok(())
    }

    /// A model version as a download sends it ([`ModelToSend`]): its header and tensors, read
    /// without its contributors and optimizer state. Its tensors' bytes are not copied.
    pub(crate) fn model_to_send(
        &self,
        version: &str,
    ) -> Result<Option<ModelToSend>, CoordinatorError> {
        self.model_decoded(version)
    }

    /// A model version. Its tensors' bytes are not copied: they share the stored encoding.
    pub(crate) fn model(&self, version: &str) -> Result<Option<StoredModel>, CoordinatorError> {
        self.model_decoded(version)
    }

    fn model_decoded<M: Message + Default>(
        &self,
        version: &str,
    ) -> Result<Option<M>, CoordinatorError> {
        let Some(encoded) = self.model_encoded(version)? else {
            return Ok(None);
        };
        M::decode(encoded)
            .map(Some)
            .map_err(|source| CoordinatorError::CorruptRecord {
                what: "model",
                key: version.to_owned(),
                source,
            })
    }

    /// A model version's encoding: from sled, or from its file, checked against its size and
    /// SHA-256.
    fn model_encoded(&self, version: &str) -> Result<Option<Bytes>, CoordinatorError> {
        if let Some(value) = self.models.get(version.as_bytes())? {
            return Ok(Some(Bytes::from_owner(value)));
        }
        let Some(record) = self.model_files.get(version.as_bytes())? else {
            return Ok(None);
        };
        let damaged = |file: String, problem: String| CoordinatorError::ModelFile {
            version: version.to_owned(),
            file,
            problem,
        };
        let file = ModelFileRef::decode(&record)
            .map_err(|problem| damaged(crate::model_files::MODEL_DIR.to_owned(), problem))?;
        let name = format!("{}/{}", crate::model_files::MODEL_DIR, file.name());
        self.files
            .read(&file)
            .map(Some)
            .map_err(|problem| damaged(name, problem))
    }

    /// Appends to the audit log, durably.
    pub(crate) fn audit(&self, entry: &AuditEntry) -> Result<(), CoordinatorError> {
        self.audit_unflushed(entry)?;
        self.flush()
    }

    /// Appends to the audit log, not yet flushed: the caller's next durable write (an
    /// [`Store::audit`], or [`Store::flush`] itself) carries it, and must come before anything
    /// the line vouches for leaves the coordinator. sled's log keeps the order of the lines.
    pub(crate) fn audit_unflushed(&self, entry: &AuditEntry) -> Result<(), CoordinatorError> {
        use sled::Transactional;
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let linked = self.link(&chain, entry)?;
        let key = linked.head.seq.to_be_bytes();
        (&self.audit, &self.heads)
            .transaction(|(log, heads)| {
                log.insert(&key, linked.bytes.as_slice())?;
                if let Some(signed) = &linked.signed {
                    heads.insert(&key, signed.as_slice())?;
                }
                Ok(())
            })
            .map_err(storage_error)?;
        *chain = linked.head;
        drop(chain);
        Ok(())
    }

    /// Records a round's policy decision (JSON) under `job/round`, not yet flushed: it goes to
    /// disk with the round's `round.decided` line of the audit log, written right after it, at
    /// the next flush (the round's `round.started` line, or the flush before an excluded agency
    /// is told), and sled's log keeps the decision before the line that vouches for it. A crash
    /// before that flush (or sled's own, every half second) leaves the round as if it had not
    /// been decided, and it is decided again: nothing outside the coordinator heard of it.
    pub(crate) fn put_decision(
        &self,
        job: &str,
        round: u32,
        decision: &str,
    ) -> Result<(), CoordinatorError> {
        self.decisions
            .insert(round_key(job, round), decision.as_bytes())?;
        Ok(())
    }

    /// The recorded decisions of a job (round, JSON), in round order.
    #[cfg(test)]
    pub(crate) fn decisions(&self, job: &str) -> Result<Vec<(u32, String)>, CoordinatorError> {
        let prefix = format!("{job}/");
        self.decisions
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (key, value) = kv?;
                let round = String::from_utf8_lossy(&key[prefix.len()..])
                    .parse()
                    .map_err(|_| CoordinatorError::CorruptCounter)?;
                Ok((round, String::from_utf8_lossy(&value).into_owned()))
            })
            .collect()
    }

    /// The newest signed head of the audit log and every stored entry up to it, (number,
    /// stored bytes) in order; `None` before the first signed head.
    pub(crate) fn audit_to_signed_head(
        &self,
    ) -> Result<Option<(SignedHead, Vec<StoredEntry>)>, CoordinatorError> {
        // Under the chain's lock: the last head and the entries up to it are read as one.
        let _chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let Some((key, value)) = self.heads.last()? else {
            return Ok(None);
        };
        let signed: SignedHead =
            serde_json::from_slice(&value).map_err(CoordinatorError::CorruptAudit)?;
        let mut entries = Vec::new();
        for kv in self.audit.range(..=key) {
            let (key, value) = kv?;
            entries.push((seq_of(&key), value.to_vec()));
        }
        Ok(Some((signed, entries)))
    }

    /// A certificate that signed a head (DER), by its SHA-256.
    pub(crate) fn certificate(&self, sha256: &str) -> Result<Option<Vec<u8>>, CoordinatorError> {
        Ok(self
            .certificates
            .get(sha256.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// The federation CA's certificate (DER) as of the coordinator's last start.
    pub(crate) fn ca_certificate(&self) -> Result<Option<Vec<u8>>, CoordinatorError> {
        Ok(self.meta.get(CA_CERTIFICATE)?.map(|v| v.to_vec()))
    }

    /// Keeps a policy or registry file's text under its SHA-256, so that every version a
    /// decision cites stays on record.
    pub(crate) fn archive_policy(&self, sha256: &str, text: &str) -> Result<(), CoordinatorError> {
        if !self.archive.contains_key(sha256.as_bytes())? {
            self.archive.insert(sha256.as_bytes(), text.as_bytes())?;
        }
        Ok(())
    }

    /// An archived policy or registry text by its SHA-256.
    pub(crate) fn archived_policy(&self, sha256: &str) -> Result<Option<String>, CoordinatorError> {
        Ok(self
            .archive
            .get(sha256.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The audit log, oldest first.
    #[cfg(test)]
    fn audit_log(&self) -> Result<Vec<AuditEntry>, CoordinatorError> {
        self.audit
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(audit::split(&v).1.unwrap_or_default())
                    .map_err(CoordinatorError::CorruptAudit)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `n` operator lines to the audit log.
    fn audit_lines(store: &Store, n: usize) {
        for i in 0..n {
            store
                .audit(&AuditEntry {
                    time_unix_ms: i as i64,
                    actor: "treaty://operator/ops".into(),
                    action: format!("action.{i}"),
                    ..Default::default()
                })
                .unwrap();
        }
    }

    /// `open()`'s value once a handle of the same database dropped just before has let go of
    /// its lock (sled's flusher thread releases it a moment after the drop).
    fn once_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(opened) => return opened,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn sled_open(dir: &Path) -> sled::Db {
        once_unlocked(|| sled::open(dir))
    }

    fn reopen(dir: &Path) -> Store {
        once_unlocked(|| Store::open(dir))
    }

    /// What opening the store in `dir` gives, once a handle dropped just before has let go of
    /// sled's lock.
    fn opened(dir: &Path) -> Result<Store, CoordinatorError> {
        once_unlocked(|| match Store::open(dir) {
            Err(e) if e.to_string().contains("lock") => Err(e),
            other => Ok(other),
        })
    }

    /// Why the store in `dir` does not open, once a handle dropped just before has let go of
    /// sled's lock.
    fn refusal(dir: &Path) -> CoordinatorError {
        once_unlocked(|| match Store::open(dir) {
            Ok(_) => panic!("the store at {} opened", dir.display()),
            Err(e) if e.to_string().contains("lock") => Err(e),
            Err(e) => Ok(e),
        })
    }

    #[test]
    fn the_audit_log_is_a_hash_chain_that_continues_across_openings() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path());
            audit_lines(&store, 3);
            assert_eq!(store.verify_audit().unwrap().seq, 3);
        }
        let store = reopen(dir.path());
        audit_lines(&store, 2);
        let head = store.verify_audit().unwrap();
        assert_eq!(head.seq, 5);
        let stored: Vec<Vec<u8>> = store
            .audit
            .iter()
            .map(|kv| kv.unwrap().1.to_vec())
            .collect();
        // Entry 4 (the first after reopening) links to entry 3's link.
        let link: Link = serde_json::from_slice(audit::split(&stored[3]).0).unwrap();
        assert_eq!(
            link.prev,
            treaty_policies::sha256_hex(audit::split(&stored[2]).0)
        );
        assert_eq!(
            head.sha256,
            treaty_policies::sha256_hex(audit::split(&stored[4]).0)
        );
    }

    #[test]
    fn an_altered_audit_entry_stops_the_coordinator_from_opening_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path());
            audit_lines(&store, 4);
            let key = 2u64.to_be_bytes();
            let bytes = store.audit.get(key).unwrap().unwrap().to_vec();
            let text = String::from_utf8(bytes)
                .unwrap()
                .replace("action.1", "action.9");
            store.audit.insert(key, text.as_bytes()).unwrap();
            store.flush().unwrap();
        }
        let err = refusal(dir.path());
        match &err {
            CoordinatorError::AuditChain(b) => assert_eq!(b.seq, 2, "{err}"),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("audit entry 2"), "{err}");
        // Nothing was repaired or removed: the altered entry is still there.
        let db = sled_open(dir.path());
        let log = db.open_tree("audit").unwrap();
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn a_log_written_before_chaining_is_linked_in_order_unchanged_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<AuditEntry> = (0..3)
            .map(|i| AuditEntry {
                time_unix_ms: i,
                actor: "treaty://operator/ops".into(),
                action: format!("old.{i}"),
                ..Default::default()
            })
            .collect();
        {
            let db = sled_open(dir.path());
            let log = db.open_tree("audit").unwrap();
            for e in &old {
                let seq = db.generate_id().unwrap();
                log.insert(seq.to_be_bytes(), serde_json::to_vec(e).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        let log = store.audit_log().unwrap();
        assert_eq!(&log[..3], &old[..]);
        assert_eq!(log[3].action, "audit.chained");
        assert!(log[3].detail.contains("3 entries"), "{}", log[3].detail);
        assert_eq!(store.verify_audit().unwrap().seq, 4);
    }

    #[test]
    fn every_head_is_signed_by_the_coordinators_key_and_a_cut_log_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let pki = tempfile::tempdir().unwrap();
        {
            let store = signed_for_tests(dir.path(), pki.path());
            audit_lines(&store, 3);
            let heads: Vec<SignedHead> = store
                .heads
                .iter()
                .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
                .collect();
            assert_eq!(heads.len(), 3);
            let last = heads.last().unwrap();
            assert!(last.statement.contains("seq 3"), "{}", last.statement);
            let der = store
                .certificates
                .get(last.certificate_sha256.as_bytes())
                .unwrap()
                .unwrap();
            let signature: Vec<u8> = (0..last.signature.len() / 2)
                .map(|i| u8::from_str_radix(&last.signature[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            treaty_proto::tls::verify_signature(
                &der,
                &last.scheme,
                last.statement.as_bytes(),
                &signature,
            )
            .unwrap();
            // Another statement under the same signature is refused.
            let forged = last.statement.replace("seq 3", "seq 2");
            assert!(
                treaty_proto::tls::verify_signature(
                    &der,
                    &last.scheme,
                    forged.as_bytes(),
                    &signature
                )
                .is_err()
            );
            // The last entry removed: the chain is whole, but shorter than a signed head.
            store.audit.remove(3u64.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        let err = refusal(dir.path());
        assert!(err.to_string().contains("audit entry 3: missing"), "{err}");
    }

    /// A forger with the database but not the key: entries 3 and 4 of the log in `dir`
    /// rewritten and relinked after entry 2, `heads` doing what it will with each one's head
    /// (given the log's heads and the entry's key).
    fn forge_tail(dir: &Path, heads: impl Fn(&sled::Tree, u64)) {
        let db = sled_open(dir);
        let log = db.open_tree("audit").unwrap();
        let stored_heads = db.open_tree("audit_heads").unwrap();
        let prev = log.get(2u64.to_be_bytes()).unwrap().unwrap();
        let mut head = Head {
            seq: 2,
            sha256: treaty_policies::sha256_hex(audit::split(&prev).0),
        };
        for seq in 3..=4u64 {
            let (bytes, next) = head
                .append(&AuditEntry {
                    action: format!("forged.{seq}"),
                    ..Default::default()
                })
                .unwrap();
            log.insert(seq.to_be_bytes(), bytes).unwrap();
            heads(&stored_heads, seq);
            head = next;
        }
        db.flush().unwrap();
    }

    /// Someone who can write the database but has not the coordinator's key rewrites an
    /// entry, relinks the chain after it and removes the heads that no longer match: the next
    /// start that signs refuses the log, naming the first entry without its head. Heads
    /// re-signed with another PKI's coordinator key are refused too.
    #[test]
    fn a_log_rewritten_in_the_database_without_the_key_is_refused_at_the_next_start() {
        let (dir, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let store = signed_for_tests(dir.path(), pki.path());
            audit_lines(&store, 4);
        }
        // The forger: entries 3 and 4 rewritten and relinked, their heads removed.
        forge_tail(dir.path(), |heads, seq| {
            heads.remove(seq.to_be_bytes()).unwrap();
        });
        // The chain is whole again, but entries since signing began must each have a head.
        let pki_dir = treaty_proto::pki::PkiDir::new(pki.path().join("pki"));
        let err = match opened(dir.path()).map(|s| s.signed_by(hub_signer(&pki_dir))) {
            Ok(Ok(_)) => panic!("the rewritten log was accepted"),
            Ok(Err(e)) | Err(e) => e.to_string(),
        };
        assert!(
            err.contains("audit entry 3: its signed head is missing"),
            "{err}"
        );

        // Heads re-signed with another PKI's coordinator: the last head is not the trusted
        // CA's coordinator's.
        let other = tempfile::tempdir().unwrap();
        let other_db = tempfile::tempdir().unwrap();
        let forger = signed_for_tests(other_db.path(), other.path());
        {
            let db = sled_open(dir.path());
            let log = db.open_tree("audit").unwrap();
            let heads = db.open_tree("audit_heads").unwrap();
            let certificates = db.open_tree("certificates").unwrap();
            let signer = forger.signer().unwrap();
            let der = signer.certificate().as_ref();
            certificates
                .insert(treaty_policies::sha256_hex(der).as_bytes(), der)
                .unwrap();
            for seq in 3..=4u64 {
                let value = log.get(seq.to_be_bytes()).unwrap().unwrap();
                let head = Head {
                    seq,
                    sha256: treaty_policies::sha256_hex(audit::split(&value).0),
                };
                let signed = SignedHead::sign(&head, 1, signer).unwrap();
                heads
                    .insert(seq.to_be_bytes(), serde_json::to_vec(&signed).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        drop(forger);
        let err = match opened(dir.path()).map(|s| s.signed_by(hub_signer(&pki_dir))) {
            Ok(Ok(_)) => panic!("the re-signed log was accepted"),
            Ok(Err(e)) | Err(e) => e.to_string(),
        };
        assert!(err.contains("audit entry 4: its signed head"), "{err}");
    }

    /// A rewritten tail whose heads are copies of the last genuine one, stored under the later
    /// entries' keys: each head must state the head at its own key, so the log is refused when
    /// it is opened.
    #[test]
    fn a_genuine_head_copied_under_later_entries_is_refused() {
        let (dir, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let store = signed_for_tests(dir.path(), pki.path());
            audit_lines(&store, 4);
        }
        forge_tail(dir.path(), |heads, seq| {
            let genuine = heads.get(2u64.to_be_bytes()).unwrap().unwrap();
            heads.insert(seq.to_be_bytes(), genuine).unwrap();
        });
        let err = refusal(dir.path()).to_string();
        assert!(
            err.contains("audit entry 3: its signed head is not a statement"),
            "{err}"
        );
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path());
            let fed = FederationInfo {
                name: "eu-narcotics".into(),
                purpose: "narcotics".into(),
                members: vec!["DE-BKA:DE".into()],
                ..Default::default()
            };
            store.create_federation(&fed).unwrap();
            assert!(matches!(
                store.create_federation(&fed),
                Err(CoordinatorError::FederationExists { .. })
            ));
            let id = store.next_job_id().unwrap();
            store
                .put_job(&Job {
                    job_id: id,
                    federation: "eu-narcotics".into(),
                    ..Default::default()
                })
                .unwrap();
            store
                .audit(&AuditEntry {
                    time_unix_ms: 1,
                    actor: "treaty://operator/alice".into(),
                    action: "federation.created".into(),
                    federation: "eu-narcotics".into(),
                    job: String::new(),
                    round: 0,
                    agency: String::new(),
                    detail: String::new(),
                    ..Default::default()
                })
                .unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.federations().unwrap().len(), 1);
        assert_eq!(store.jobs().unwrap().len(), 1);
        assert_eq!(store.audit_log().unwrap()[0].action, "federation.created");
        // Job ids keep increasing after a reopen.
        let next = store.next_job_id().unwrap();
        assert_eq!(next, "job-000002");
    }

    fn round(n: u32) -> RoundSummary {
        RoundSummary {
            round: n,
            model_version: format!("job-000001/r{n}"),
            finished_unix_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_job_reads_back_with_its_rounds_in_order_and_its_head_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let mut head = Job {
            job_id: "job-000001".into(),
            ..Default::default()
        };
        store.put_job(&head).unwrap();
        // Round 10 sorts after round 9; a job whose id extends this one's keeps its own rounds.
        for n in 1..=10 {
            head.rounds_completed = n;
            store.put_round(&head, &round(n), &line(n)).unwrap();
        }
        let other = Job {
            job_id: "job-0000010".into(),
            rounds_completed: 1,
            ..Default::default()
        };
        store.put_round(&other, &round(1), &line(1)).unwrap();
        let full = store.job_with_rounds("job-000001").unwrap().unwrap();
        let order: Vec<u32> = full.rounds.iter().map(|r| r.round).collect();
        assert_eq!(order, (1..=10).collect::<Vec<_>>());
        assert_eq!(full.rounds_completed, 10);
        let head = store.job("job-000001").unwrap().unwrap();
        assert!(head.rounds.is_empty());
        assert_eq!(head.rounds_completed, 10);
        assert!(store.job_with_rounds("job-000002").unwrap().is_none());
        // Each round's audit line was written with it, in order.
        let log: Vec<u32> = store.audit_log().unwrap().iter().map(|e| e.round).collect();
        assert_eq!(log, (1..=10).chain([1]).collect::<Vec<_>>());
    }

    fn line(round: u32) -> AuditEntry {
        AuditEntry {
            time_unix_ms: 1,
            actor: "treaty://coordinator".into(),
            action: "round.completed".into(),
            federation: String::new(),
            job: "job-000001".into(),
            round,
            agency: String::new(),
            detail: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_ref_reads_the_federation_and_latest_version_of_a_whole_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let head = Job {
            job_id: "job-000001".into(),
            federation: "eu-narcotics".into(),
            message: "running".into(),
            created_by: "treaty://operator/alice".into(),
            latest_model_version: "job-000001/r3".into(),
            statistics: Some(RoundSummary {
                invited: (0..50).map(|k| format!("AGENCY-{k}")).collect(),
                ..round(0)
            }),
            public_records: (0..50).map(|k| (format!("AGENCY-{k}"), 1e3)).collect(),
            rounds_completed: 3,
            ..Default::default()
        };
        store.put_job(&head).unwrap();
        let read = store.job_ref("job-000001").unwrap().unwrap();
        assert_eq!(read.federation, "eu-narcotics");
        assert_eq!(read.latest_model_version, "job-000001/r3");
        assert!(store.job_ref("job-000002").unwrap().is_none());
    }

    #[test]
    fn a_model_to_send_is_the_stored_header_and_tensors() {
        use treaty_proto::tensor::{NamedTensor, to_whole};
        use treaty_proto::v1::{Dtype, ModelHeader};
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let weights = NamedTensor::new("w", ndarray::arr1(&[0.5, -1.25, 3.0]).into_dyn());
        let moments = NamedTensor::new("m", ndarray::arr1(&[9.0, 9.0, 9.0]).into_dyn());
        let tensors = to_whole(&[weights], Dtype::F64);
        let header = ModelHeader {
            job_id: "job-000001".into(),
            model_version: "job-000001/r1".into(),
            round: 1,
            tensors: tensors.iter().filter_map(|t| t.spec.clone()).collect(),
            ..Default::default()
        };
        store
            .put_model(StoredModel {
                header: Some(header.clone()),
                tensors: tensors.clone(),
                contributors: (0..100).map(|k| format!("AGENCY-{k}")).collect(),
                created_unix_ms: 1,
                optimizer_state: to_whole(&[moments], Dtype::F64),
            })
            .unwrap();
        let sent = store.model_to_send("job-000001/r1").unwrap().unwrap();
        assert_eq!(sent.header, Some(header));
        assert_eq!(sent.tensors, tensors);
        assert!(store.model_to_send("job-000001/r2").unwrap().is_none());
    }

    /// A model of `values` stored as `version` (with `contributors` agencies), as the store
    /// keeps it.
    fn stored_model(version: &str, values: &[f64], contributors: usize) -> StoredModel {
        use treaty_proto::tensor::{NamedTensor, to_whole};
        use treaty_proto::v1::{Dtype, ModelHeader};
        let tensors = to_whole(
            &[NamedTensor::new("w", ndarray::arr1(values).into_dyn())],
            Dtype::F64,
        );
        StoredModel {
            header: Some(ModelHeader {
                job_id: "job-000001".into(),
                model_version: version.into(),
                round: 1,
                tensors: tensors.iter().filter_map(|t| t.spec.clone()).collect(),
                ..Default::default()
            }),
            tensors,
            contributors: (0..contributors).map(|k| format!("AGENCY-{k}")).collect(),
            created_unix_ms: 1,
            optimizer_state: Vec::new(),
        }
    }

    /// 20,000 values: 160 KB encoded, above the size kept in sled.
    fn large(offset: f64) -> Vec<f64> {
        (0..20_000).map(|k| f64::from(k) / 7.0 + offset).collect()
    }

    /// The file a model's encoding is kept in: named by its SHA-256, computed here by ring.
    fn file_of(dir: &Path, model: &StoredModel) -> std::path::PathBuf {
        let sha = ring::digest::digest(&ring::digest::SHA256, &model.encode_to_vec());
        let name: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        dir.join("models").join(format!("{name}.model"))
    }

    /// A large model: kept in a file of its own, named by its SHA-256, not in sled; each
    /// version reads back as itself, from memory and after the store is reopened; a damaged,
    /// cut or missing file is an error naming the version and the file, never a different
    /// model.
    #[test]
    fn a_large_model_is_kept_in_a_checked_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (
            stored_model("job-000001/r1", &large(0.0), 1),
            stored_model("job-000001/r2", &large(1.0), 1),
        );
        assert!(r1.encode_to_vec().len() > INLINE_MODEL_BYTES);
        {
            let store = reopen(dir.path());
            store.put_model(r1.clone()).unwrap();
            store.put_model(r2.clone()).unwrap();
            store.flush().unwrap();
            assert!(store.models.is_empty(), "a large model was kept in sled");
            // The version written last is held, the other read from disk, in any order.
            for version in [
                "job-000001/r2",
                "job-000001/r1",
                "job-000001/r2",
                "job-000001/r1",
            ] {
                let model = store.model(version).unwrap().unwrap();
                assert_eq!(
                    model,
                    if version.ends_with("r1") {
                        r1.clone()
                    } else {
                        r2.clone()
                    }
                );
            }
        }
        let path = file_of(dir.path(), &r1);
        assert_eq!(std::fs::read(&path).unwrap(), r1.encode_to_vec());

        let store = reopen(dir.path());
        assert_eq!(store.model("job-000001/r1").unwrap(), Some(r1.clone()));
        let sent = store.model_to_send("job-000001/r2").unwrap().unwrap();
        assert_eq!(
            (sent.header, sent.tensors),
            (r2.header.clone(), r2.tensors.clone())
        );
        drop(store);

        let name = format!("models/{}", path.file_name().unwrap().to_string_lossy());
        let problem = |damage: &dyn Fn()| {
            damage();
            let store = reopen(dir.path());
            let err = store.model("job-000001/r1").unwrap_err().to_string();
            assert!(err.contains("model `job-000001/r1`"), "{err}");
            assert!(err.contains(&name), "{err}");
            err
        };
        let mut altered = r1.encode_to_vec();
        altered[INLINE_MODEL_BYTES] ^= 1;
        let err = problem(&|| std::fs::write(&path, &altered).unwrap());
        assert!(err.contains("SHA-256"), "{err}");
        let err = problem(&|| std::fs::write(&path, &altered[..100]).unwrap());
        assert!(err.contains("100 bytes"), "{err}");
        let err = problem(&|| std::fs::remove_file(&path).unwrap());
        assert!(err.contains("missing"), "{err}");
        // The other version is untouched.
        let store = reopen(dir.path());
        assert_eq!(store.model("job-000001/r2").unwrap(), Some(r2));
    }

    /// A version stored again (a round redone after a crash) reads as the latest storing,
    /// whether each was kept in sled or in a file.
    #[test]
    fn a_version_stored_again_reads_as_stored_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let small = stored_model("job-000001/r1", &[1.0, 2.0], 1);
        let big = stored_model("job-000001/r1", &large(0.0), 1);
        let other_big = stored_model("job-000001/r1", &large(0.0), 2);
        for model in [&small, &big, &small, &big, &other_big] {
            store.put_model(model.clone()).unwrap();
            assert_eq!(store.model("job-000001/r1").unwrap().as_ref(), Some(model));
        }
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.model("job-000001/r1").unwrap(), Some(other_big));
    }

    /// A large model an earlier version kept in sled is moved to a file of its own when the
    /// store is opened, and reads back the same; a file a crash left half-written is removed.
    #[test]
    fn a_large_model_kept_in_sled_is_moved_to_a_file_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let old = stored_model("job-000001/r1", &large(0.0), 3);
        let small = stored_model("job-000001/r0", &[1.0], 0);
        let part = dir.path().join("models").join("cut.part");
        once_unlocked(|| {
            let db = sled::open(dir.path())?;
            let models = db.open_tree("models")?;
            models.insert("job-000001/r1", old.encode_to_vec())?;
            models.insert("job-000001/r0", small.encode_to_vec())?;
            db.flush()?;
            std::fs::create_dir_all(part.parent().unwrap()).unwrap();
            std::fs::write(&part, b"half").unwrap();
            Ok::<_, sled::Error>(())
        });
        let store = reopen(dir.path());
        assert_eq!(store.models.len(), 1, "only the small model stays in sled");
        assert!(file_of(dir.path(), &old).exists());
        assert!(!part.exists());
        assert_eq!(store.model("job-000001/r1").unwrap(), Some(old.clone()));
        assert_eq!(store.model("job-000001/r0").unwrap(), Some(small));
        // Once: a later start does not read the stored models again (a large model put back
        // in sled by hand stays there).
        store
            .models
            .insert("job-000001/r1", old.encode_to_vec())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.models.len(), 2);
    }

    /// The record of a file is written after the file: a file that cannot be written leaves
    /// no record (and the error names the file); a record that does not name a file by its
    /// hash is refused, never followed out of `models/`.
    #[test]
    fn a_model_file_is_written_before_its_record_and_a_bad_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let model = stored_model("job-000001/r1", &large(0.0), 1);
        let blocked = file_of(dir.path(), &model).with_extension("part");
        std::fs::create_dir(&blocked).unwrap();
        let err = store.put_model(model).unwrap_err().to_string();
        assert!(err.contains(&blocked.display().to_string()), "{err}");
        assert!(store.model_files.is_empty());
        assert_eq!(store.model("job-000001/r1").unwrap(), None);

        let outside = ModelFileRef {
            sha256: "../../etc/passwd".into(),
            bytes: 1,
        };
        store
            .model_files
            .insert("job-000001/r2", outside.encode())
            .unwrap();
        let err = store.model("job-000001/r2").unwrap_err().to_string();
        assert!(err.contains("not a SHA-256"), "{err}");
        store
            .model_files
            .insert("job-000001/r3", b"{".as_slice())
            .unwrap();
        let err = store.model("job-000001/r3").unwrap_err().to_string();
        assert!(err.contains("not readable"), "{err}");
    }

    #[test]
    fn a_job_stored_with_its_rounds_inline_is_split_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let inline = Job {
            job_id: "job-000001".into(),
            rounds: vec![round(1), round(2)],
            ..Default::default()
        };
        {
            // As an earlier version wrote it: the rounds inside the job's record.
            let db = sled_open(dir.path());
            db.open_tree("jobs")
                .unwrap()
                .insert("job-000001", inline.encode_to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        let head = store.job("job-000001").unwrap().unwrap();
        assert!(head.rounds.is_empty());
        assert_eq!(head.rounds_completed, 2);
        let full = store.job_with_rounds("job-000001").unwrap().unwrap();
        assert_eq!(full.rounds, inline.rounds);
        drop(store);
        // Opening again changes nothing.
        let store = reopen(dir.path());
        assert_eq!(
            store.job_with_rounds("job-000001").unwrap().unwrap().rounds,
            inline.rounds
        );
    }

    #[test]
    fn a_decision_is_on_disk_with_the_audit_line_written_after_it() {
        // What a crash leaves is the database's files as they are: copied while the store is
        // open, then opened. Neither `put_decision` nor the `round.decided` line flushes; the
        // round's next line does, and carries them.
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        // As `policy::decide_now` and `rounds::collect` write them.
        let record = "{\"round\":1}";
        store.put_decision("job-000001", 1, record).unwrap();
        let sha256 = treaty_policies::sha256_hex(record.as_bytes());
        store.archive_policy(&sha256, record).unwrap();
        let mut decided = line(1);
        decided.action = "round.decided".into();
        store.audit_unflushed(&decided).unwrap();
        let mut started = line(1);
        started.action = "round.started".into();
        store.audit(&started).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(dir.path())
            .arg(copy.path().join("db"))
            .status()
            .unwrap();
        assert!(copied.success());
        let crashed = reopen(&copy.path().join("db"));
        assert_eq!(
            crashed.decisions("job-000001").unwrap(),
            [(1, record.to_owned())]
        );
        assert_eq!(
            crashed.archived_policy(&sha256).unwrap().as_deref(),
            Some(record)
        );
        let log = crashed.audit_log().unwrap();
        let last: Vec<&str> = log
            .iter()
            .rev()
            .take(2)
            .map(|e| e.action.as_str())
            .collect();
        assert_eq!(last, ["round.started", "round.decided"]);
    }

    #[test]
    fn decisions_and_the_texts_they_cite_stay_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        store
            .put_decision("job-000001", 2, "{\"round\":2}")
            .unwrap();
        store
            .put_decision("job-000001", 1, "{\"round\":1}")
            .unwrap();
        store.put_decision("job-000010", 1, "{}").unwrap();
        assert_eq!(
            store.decisions("job-000001").unwrap(),
            [
                (1, "{\"round\":1}".to_owned()),
                (2, "{\"round\":2}".to_owned())
            ]
        );
        store.archive_policy("abc", "version = 1").unwrap();
        // A text is archived once under its digest.
        store.archive_policy("abc", "something else").unwrap();
        assert_eq!(
            store.archived_policy("abc").unwrap().as_deref(),
            Some("version = 1")
        );
        assert_eq!(store.archived_policy("def").unwrap(), None);
    }

    #[test]
    fn pages_read_on_from_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        for name in ["b", "a", "c"] {
            store
                .create_federation(&FederationInfo {
                    name: name.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        for _ in 0..3 {
            let job_id = store.next_job_id().unwrap();
            store
                .put_job(&Job {
                    job_id,
                    ..Default::default()
                })
                .unwrap();
        }
        let names = |after: &str| -> Vec<String> {
            store
                .federations_after(after)
                .map(|f| f.unwrap().name)
                .collect()
        };
        assert_eq!(names(""), ["a", "b", "c"]);
        assert_eq!(names("a"), ["b", "c"]);
        assert!(names("c").is_empty());
        let ids = |before: &str| -> Vec<String> {
            store
                .jobs_before(before)
                .map(|j| j.unwrap().job_id)
                .collect()
        };
        assert_eq!(ids(""), ["job-000003", "job-000002", "job-000001"]);
        assert_eq!(ids("job-000003"), ["job-000002", "job-000001"]);
        assert!(ids("job-000001").is_empty());
    }
}

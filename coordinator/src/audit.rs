//! The audit log as a hash chain, with signed heads.
//!
//! Entry `n` (counted from 1) is two lines of JSON, stored together under the key `n` (eight
//! bytes, big-endian): its [`Link`], `{"seq":n,"prev":"<hex>","entry_sha256":"<hex>"}`, then the
//! entry itself. `entry_sha256` is the SHA-256 of the entry's line, `prev` the SHA-256 of link
//! `n - 1`'s line (64 zeros for the first): the chain runs through the links, and each link
//! commits to its entry. So a bundle can carry the links of the whole log but only the entries
//! it is about, and still be checked end to end (docs/AUDIT.md). Changing, removing or
//! reordering a stored entry breaks the chain there, and [`verify`] names the first entry that
//! is not what the chain says. Removing entries from the end leaves a shorter chain consistent
//! in itself: that is what the signed heads are for. With every entry it appends, the
//! coordinator signs the new head — the [`Head::statement`] `treaty audit head\nseq N\nsha256
//! HEX\ntime_unix_ms T\n`, HEX the SHA-256 of link `N` — with its TLS key and stores the
//! [`SignedHead`] under the key `N`: a log that ends before a signed head, or whose link there
//! hashes otherwise, contradicts a signature only the coordinator's key could make.

use serde::{Deserialize, Serialize};
use treaty_policies::sha256_hex;
use treaty_proto::tls::KeySigner;
use treaty_proto::v1::{
    AuditEntryLine, AuditExportInfo, AuditLinks, AuditPart, AuditSignedHead, CitedText, Job,
    RoundDecision, RoundResults, audit_part::Part,
};

use crate::error::CoordinatorError;
use crate::store::{AuditEntry, Store};

/// The most bytes of links in one part of an export.
const LINKS_PER_PART_BYTES: usize = 1 << 20;

/// The `prev` of the first entry.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The link of an entry of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Link {
    pub seq: u64,
    /// The SHA-256 of the previous link's line, in hex.
    pub prev: String,
    /// The SHA-256 of this entry's line, in hex.
    pub entry_sha256: String,
    /// What the entry is about ([`scope`]): a bundle of a job must hold the entry of every
    /// link of the job, of its federation and of the log itself.
    pub scope: String,
}

/// What an entry is about, as its link names it: its job's id; else `federation:NAME`; else
/// `log` (the log's own entries, e.g. `audit.signing_started`).
pub(crate) fn scope(entry: &AuditEntry) -> String {
    match (entry.job.as_str(), entry.federation.as_str()) {
        ("", "") => "log".to_owned(),
        ("", federation) => format!("federation:{federation}"),
        (job, _) => job.to_owned(),
    }
}

/// A stored entry's link line and, when present, its entry line.
pub(crate) fn split(stored: &[u8]) -> (&[u8], Option<&[u8]>) {
    match stored.iter().position(|b| *b == b'\n') {
        Some(i) => (&stored[..i], Some(&stored[i + 1..])),
        None => (stored, None),
    }
}

/// Where the chain ends: the last entry's number (0 when empty) and the SHA-256 of its link's
/// line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Head {
    pub seq: u64,
    pub sha256: String,
}

impl Head {
    /// The head of an empty log.
    pub(crate) fn genesis() -> Head {
        Head {
            seq: 0,
            sha256: GENESIS.to_owned(),
        }
    }

    /// `entry` linked after this head: its stored bytes (link line, newline, entry line), and
    /// the head after it.
    pub(crate) fn append(&self, entry: &AuditEntry) -> Result<(Vec<u8>, Head), serde_json::Error> {
        let scope = scope(entry);
        let entry = serde_json::to_vec(entry)?;
        let link = Link {
            seq: self.seq + 1,
            prev: self.sha256.clone(),
            entry_sha256: sha256_hex(&entry),
            scope,
        };
        let mut bytes = serde_json::to_vec(&link)?;
        let head = Head {
            seq: link.seq,
            sha256: sha256_hex(&bytes),
        };
        bytes.push(b'\n');
        bytes.extend_from_slice(&entry);
        Ok((bytes, head))
    }

    /// The text the coordinator signs for this head, at `time_unix_ms`.
    pub(crate) fn statement(&self, time_unix_ms: i64) -> String {
        format!(
            "treaty audit head\nseq {}\nsha256 {}\ntime_unix_ms {time_unix_ms}\n",
            self.seq, self.sha256
        )
    }

    /// The head a statement states, when it is one: exactly the text [`Head::statement`]
    /// writes, byte for byte.
    pub(crate) fn of_statement(statement: &str) -> Option<Head> {
        let mut lines = statement.split('\n');
        (lines.next()? == "treaty audit head").then_some(())?;
        let seq: u64 = lines.next()?.strip_prefix("seq ")?.parse().ok()?;
        let sha256 = lines.next()?.strip_prefix("sha256 ")?.to_owned();
        let time: i64 = lines.next()?.strip_prefix("time_unix_ms ")?.parse().ok()?;
        let head = Head { seq, sha256 };
        (head.statement(time) == statement).then_some(head)
    }
}

/// A head as the coordinator signed it, stored under its `seq`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignedHead {
    /// The signed bytes ([`Head::statement`]).
    pub statement: String,
    /// The signature scheme by its TLS name (e.g. `ECDSA_NISTP256_SHA256`).
    pub scheme: String,
    /// The signature, in hex (for ECDSA, ASN.1 DER as openssl writes it).
    pub signature: String,
    /// The SHA-256 of the signing certificate's DER, which the store keeps.
    pub certificate_sha256: String,
}

impl SignedHead {
    /// `head` signed now by `signer`.
    pub(crate) fn sign(
        head: &Head,
        time_unix_ms: i64,
        signer: &KeySigner,
    ) -> Result<SignedHead, treaty_proto::TlsError> {
        let statement = head.statement(time_unix_ms);
        let signature = signer.sign(statement.as_bytes())?;
        Ok(SignedHead {
            statement,
            scheme: signer.scheme(),
            signature: treaty_proto::hex::hex(&signature),
            certificate_sha256: sha256_hex(signer.certificate()),
        })
    }
}

/// The first place where a stored log is not what its chain says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("audit entry {seq}: {problem}")]
pub struct ChainBreak {
    /// The entry's number (its position in the log, from 1).
    pub seq: u64,
    pub problem: String,
}

/// Checks a log's stored entries, given as (key, stored bytes) in key order: every key is the
/// next number, every link's `seq` its key and its `prev` the hash of the link before, and
/// every entry present hashes to its link's `entry_sha256` (an entry may be left out: its link
/// still vouches for it). The head at its end with every link's hash (`[i]` is link `i + 1`'s),
/// or the first entry that breaks the chain.
pub(crate) fn verify<'a>(
    stored: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(Head, Vec<String>), ChainBreak> {
    let mut head = Head::genesis();
    let mut hashes = Vec::new();
    for (key, stored) in stored {
        let (bytes, entry) = split(stored);
        let seq = head.seq + 1;
        let broken = |problem: String| ChainBreak { seq, problem };
        if key != seq {
            return Err(broken(match key > seq {
                true => format!(
                    "missing: the entry after {} is stored as entry {key}",
                    head.seq
                ),
                false => format!("stored out of order, as entry {key}"),
            }));
        }
        let link: Link = serde_json::from_slice(bytes)
            .map_err(|e| broken(format!("its link is not a link of the log ({e})")))?;
        if link.seq != seq {
            return Err(broken(format!(
                "missing or moved: the link in entry {seq}'s place is numbered {}",
                link.seq
            )));
        }
        if link.prev != head.sha256 {
            return Err(broken(match seq {
                1 => "the first entry does not start the chain".to_owned(),
                _ => format!(
                    "entry {} was altered: its link hashes to {}, but entry {seq}'s link says {}",
                    head.seq, head.sha256, link.prev
                ),
            })
            .with_seq(head.seq.max(1)));
        }
        if let Some(entry) = entry
            && sha256_hex(entry) != link.entry_sha256
        {
            return Err(broken(format!(
                "the entry was altered: it hashes to {}, but its link says {}",
                sha256_hex(entry),
                link.entry_sha256
            )));
        }
        head = Head {
            seq,
            sha256: sha256_hex(bytes),
        };
        hashes.push(head.sha256.clone());
    }
    Ok((head, hashes))
}

impl ChainBreak {
    fn with_seq(mut self, seq: u64) -> ChainBreak {
        self.seq = seq;
        self
    }
}

/// Checks signed heads, each with the key it is stored under, against a verified chain's link
/// hashes (`hashes[i]` is link `i + 1`'s): each must state the head at its own key: each statement must be a head of this chain. Signatures are checked apart
/// (`treaty_proto::tls::verify_signature`), as they need the certificate.
pub(crate) fn check_heads<'a>(
    heads: impl IntoIterator<Item = (u64, &'a SignedHead)>,
    hashes: &[String],
) -> Result<(), ChainBreak> {
    for (key, signed) in heads {
        let Some(head) = Head::of_statement(&signed.statement).filter(|h| h.seq == key) else {
            return Err(ChainBreak {
                seq: key,
                problem: "its signed head is not a statement of this entry's head".into(),
            });
        };
        let Some(stored) = usize::try_from(head.seq)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| hashes.get(i))
        else {
            return Err(ChainBreak {
                seq: head.seq,
                problem: format!(
                    "missing: the coordinator signed a log of {} entries, this one has {}",
                    head.seq,
                    hashes.len()
                ),
            });
        };
        if *stored != head.sha256 {
            return Err(ChainBreak {
                seq: head.seq,
                problem: format!(
                    "its link hashes to {stored}, but the coordinator signed {}",
                    head.sha256
                ),
            });
        }
    }
    Ok(())
}

/// The evidence of `job` as the parts of an export (docs/AUDIT.md): every link up to the newest
/// signed head, the entries of the job and of its federation's creation, the head, the
/// certificates, the job's decisions and the texts they cite (synchronous: call it on a
/// blocking thread).
pub(crate) fn export_parts(
    store: &Store,
    job: &Job,
    exported_by: &str,
) -> Result<Vec<AuditPart>, CoordinatorError> {
    // The export goes on record first, and so into the bundle: who exported it, and when.
    let now = crate::state::now_ms();
    store.audit(&AuditEntry {
        time_unix_ms: now,
        actor: exported_by.to_owned(),
        action: "audit.exported".into(),
        federation: job.federation.clone(),
        job: job.job_id.clone(),
        ..Default::default()
    })?;
    let (signed, stored) = store
        .audit_to_signed_head()?
        .ok_or(CoordinatorError::AuditUnsigned)?;
    // A line written since without a flush (a round's `round.decided`, [`Store::audit_unflushed`])
    // is on disk before the bundle vouches for it: a power failure cannot take back a head
    // the operator holds signed, and sign another in its place.
    store.flush()?;
    let mut parts = vec![Part::Info(AuditExportInfo {
        job_id: job.job_id.clone(),
        federation: job.federation.clone(),
        exported_unix_ms: now,
        exported_by: exported_by.to_owned(),
    })];
    let mut run = AuditLinks {
        first_seq: 1,
        lines: Vec::new(),
    };
    let mut run_bytes = 0;
    let mut entries = Vec::new();
    let (mut vouched, mut cited, mut results) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeSet::new(),
        std::collections::BTreeMap::new(),
    );
    for (seq, bytes) in &stored {
        let (link, line) = split(bytes);
        if run_bytes + link.len() > LINKS_PER_PART_BYTES && !run.lines.is_empty() {
            let next = AuditLinks {
                first_seq: *seq,
                lines: Vec::new(),
            };
            parts.push(Part::Links(std::mem::replace(&mut run, next)));
            run_bytes = 0;
        }
        run_bytes += link.len();
        run.lines.push(link.to_vec().into());
        let Some(line) = line else { continue };
        let entry: AuditEntry =
            serde_json::from_slice(line).map_err(CoordinatorError::CorruptAudit)?;
        // The job's entries, its federation's, and the log's own (`audit.chained`, ...).
        let ours = in_bundle(&scope(&entry), &job.job_id, &job.federation);
        if ours {
            // A round's decision and the texts it was decided under, as its entry vouches.
            if entry.action == "round.decided"
                && let Some((decision, texts)) = entry.documents.split_first()
            {
                vouched.insert(decision.clone(), entry.round);
                cited.extend(texts.iter().cloned());
            }
            // A round's results record, as its completion vouches.
            if !entry.results.is_empty() {
                results.insert(entry.results.clone(), entry.round);
            }
            entries.push(Part::Entry(AuditEntryLine {
                seq: *seq,
                line: line.to_vec().into(),
            }));
        }
    }
    parts.push(Part::Links(run));
    parts.extend(entries);
    let seq = stored.last().map_or(0, |(seq, _)| *seq);
    let broken = |problem: &str| ChainBreak {
        seq,
        problem: format!("its signed head: {problem}"),
    };
    let signature = treaty_proto::hex::unhex(&signed.signature)
        .ok_or_else(|| broken("the signature is not hex"))?;
    let certificate = store
        .certificate(&signed.certificate_sha256)?
        .ok_or_else(|| broken("the certificate that signed it is not on record"))?;
    parts.push(Part::Head(AuditSignedHead {
        statement: signed.statement,
        scheme: signed.scheme,
        signature: signature.into(),
        certificate_sha256: signed.certificate_sha256,
    }));
    parts.push(Part::CoordinatorCertificate(certificate.into()));
    if let Some(ca) = store.ca_certificate()? {
        parts.push(Part::CaCertificate(ca.into()));
    }
    // Each decision record the entries vouch for, from the archive (never overwritten, so a
    // round decided twice, before and after a restart, keeps both).
    for (sha256, round) in vouched {
        if let Some(json) = store.archived_policy(&sha256)? {
            parts.push(Part::Decision(RoundDecision { round, json }));
        }
    }
    for sha256 in cited {
        if let Some(text) = store.archived_policy(&sha256)? {
            parts.push(Part::Text(CitedText { sha256, text }));
        }
    }
    for (sha256, round) in results {
        if let Some(json) = store.archived_policy(&sha256)? {
            parts.push(Part::Results(RoundResults { round, json }));
        }
    }
    Ok(parts
        .into_iter()
        .map(|part| AuditPart { part: Some(part) })
        .collect())
}

/// Whether an entry of `scope` belongs in the bundle of `job` of `federation`.
pub(crate) fn in_bundle(scope: &str, job: &str, federation: &str) -> bool {
    scope == job || scope == "log" || scope.strip_prefix("federation:") == Some(federation)
}

/// Every run of exactly 64 hex digits in `text` (the SHA-256s a decision cites).
pub(crate) fn hex_digests(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            time_unix_ms: 1,
            actor: "treaty://operator/ops".into(),
            action: action.into(),
            federation: "f".into(),
            job: String::new(),
            round: 0,
            agency: String::new(),
            detail: String::new(),
            ..Default::default()
        }
    }

    /// Five linked entries, as (key, bytes).
    fn log() -> Vec<(u64, Vec<u8>)> {
        let mut head = Head::genesis();
        (0..5)
            .map(|i| {
                let (bytes, next) = head.append(&entry(&format!("action.{i}"))).unwrap();
                head = next;
                (head.seq, bytes)
            })
            .collect()
    }

    fn check(log: &[(u64, Vec<u8>)]) -> Result<Head, ChainBreak> {
        verify(log.iter().map(|(k, v)| (*k, v.as_slice()))).map(|(head, _)| head)
    }

    fn sha256(bytes: &[u8]) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn an_untouched_log_verifies_to_the_hash_of_its_last_link() {
        let log = log();
        let head = check(&log).unwrap();
        assert_eq!(head.seq, 5);
        // Independent hashes of the stored lines.
        let text = String::from_utf8(log[4].1.clone()).unwrap();
        let (link, entry) = text.split_once('\n').unwrap();
        assert_eq!(head.sha256, sha256(link.as_bytes()));
        assert!(link.contains(&sha256(entry.as_bytes())), "{link}");
        assert!(entry.contains("action.4"), "{entry}");
        assert!(String::from_utf8_lossy(&log[0].1).contains(GENESIS));
    }

    #[test]
    fn one_changed_byte_names_the_entry_it_changed() {
        let mut log = log();
        // "action.1" -> "action.X" in entry 2: valid JSON, another text.
        let at = log[1].1.windows(8).position(|w| w == b"action.1").unwrap();
        log[1].1[at + 7] = b'X';
        let err = check(&log).unwrap_err();
        assert_eq!(err.seq, 2, "{err}");
        assert!(err.problem.contains("altered"), "{err}");
        // A changed byte in a link (its hash of the entry) breaks the next link.
        let mut log = super::tests::log();
        let at = log[2].1.iter().position(|b| *b == b'\n').unwrap() - 3;
        log[2].1[at] = if log[2].1[at] == b'0' { b'1' } else { b'0' };
        let err = check(&log).unwrap_err();
        assert_eq!(err.seq, 3, "{err}");
    }

    #[test]
    fn entries_left_out_still_chain_through_their_links() {
        let mut log = log();
        for (_, bytes) in log.iter_mut().take(3) {
            let link_end = bytes.iter().position(|b| *b == b'\n').unwrap();
            bytes.truncate(link_end);
        }
        assert_eq!(check(&log).unwrap().seq, 5);
    }

    #[test]
    fn a_deleted_or_reordered_entry_is_named() {
        let mut deleted = log();
        deleted.remove(2);
        let err = check(&deleted).unwrap_err();
        assert_eq!(err.seq, 3, "{err}");
        assert!(err.problem.contains("missing"), "{err}");

        // Two entries' bytes swapped under their keys.
        let mut swapped = log();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        let err = check(&swapped).unwrap_err();
        assert_eq!(err.seq, 2, "{err}");
        assert!(err.problem.contains("missing or moved"), "{err}");

        // Renumbered in full (keys and seqs rewritten in the swapped order): the hashes break.
        let mut renumbered = log();
        renumbered.swap(1, 2);
        let err = check(&renumbered).unwrap_err();
        assert_eq!(err.seq, 2, "{err}");
    }

    #[test]
    fn a_log_cut_short_contradicts_a_signed_head() {
        let log = log();
        let hashes: Vec<String> = log.iter().map(|(_, v)| sha256_hex(split(v).0)).collect();
        let head = check(&log).unwrap();
        let signed = SignedHead {
            statement: head.statement(7),
            scheme: "ECDSA_NISTP256_SHA256".into(),
            signature: String::new(),
            certificate_sha256: String::new(),
        };
        check_heads([(5, &signed)], &hashes).unwrap();
        let err = check_heads([(5, &signed)], &hashes[..4]).unwrap_err();
        assert_eq!(err.seq, 5, "{err}");
        // A head of another log of the same length.
        let mut other = hashes.clone();
        other[4] = sha256_hex(b"another entry");
        assert_eq!(check_heads([(5, &signed)], &other).unwrap_err().seq, 5);
        // The head of entry 5 stored as entry 6's.
        let err = check_heads([(6, &signed)], &hashes).unwrap_err();
        assert!(
            err.to_string()
                .contains("audit entry 6: its signed head is not"),
            "{err}"
        );
        assert_eq!(Head::of_statement(&signed.statement), Some(head));
        assert_eq!(Head::of_statement("treaty audit head\nseq 1\n"), None);
    }
}

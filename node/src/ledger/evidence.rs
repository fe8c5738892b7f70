//! The node's evidence log: what the coordinator asked it, what it decided and under which
//! policy text, what it sent (its SHA-256) and the coordinator's signed receipt for it, and its
//! operator's approvals and rejections of jobs with the person's identity. It lets the agency
//! show later, to a court or to the coordinator's own audit bundle, what it did and why.
//!
//! Record `n` (counted from 1) is stored in the ledger's database (tree `evidence`) under the key
//! `n` (eight bytes, big-endian) as the JSON of a [`EvidenceLink`]: its sequence number, the
//! SHA-256 of record `n - 1`'s stored bytes (64 zeros for the first), and the record. Changing,
//! removing or reordering a stored record breaks the chain after it. A record is flushed to
//! disk before [`Evidence::append`] returns; one written by [`Evidence::append_later`] (what
//! happened after the fact: a receipt, a refusal already sent) waits for the database's next
//! flush, which its caller makes happen soon ([`Evidence::flush`]). Opening the log walks the
//! whole chain: a node does not start on a broken one (its approvals could not be trusted).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::Database;
use super::chain::{GENESIS, Hash, hex, key, sha256};

/// One thing the node did or was told, as its log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A task the coordinator sent, and what the node did with it.
    Task(TaskRecord),
    /// A person at the agency approved or rejected a job.
    Approval(ApprovalRecord),
    /// The coordinator's signed receipt for a result the node sent.
    Receipt(ReceiptRecord),
}

/// A task and the node's decision on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    pub time_unix_ms: i64,
    pub task_id: String,
    pub job_id: String,
    pub federation: String,
    pub round: u32,
    /// `training`, `statistics`, `evaluation`, `query` (or empty for a task without a kind).
    pub task_kind: String,
    /// The coordinator's identity, from its certificate.
    pub coordinator: String,
    /// The SHA-256 of the round's sharing terms as the task carried them (protobuf bytes).
    pub terms_sha256: String,
    /// `sent` (the release was recorded and the result is about to leave: written before it
    /// does), `refused` (written after the refusal was sent) or `failed` (a second record of
    /// a task whose result did not arrive, or was turned away).
    pub decision: String,
    /// The refusal's code and sentence, when refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The SHA-256 of the agency's own country's policy text the task was judged by (empty
    /// when it was refused before its policy was read).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_sha256: String,
    /// The SHA-256 of the registry text it was judged under.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry_sha256: String,
    /// The privacy ledger's entry of the release (its sequence number), when one was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_seq: Option<u64>,
    /// The SHA-256 of the result sent (`treaty_proto::receipt::ResultHasher`), when one was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sent_sha256: String,
}

/// A person's decision on a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    pub time_unix_ms: i64,
    pub job_id: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// The name the person gave (`--by`).
    pub by: String,
    /// The operating-system account that asked, as the kernel reported it on the node's control
    /// socket, and its uid.
    pub account: String,
    pub uid: u32,
    /// Why, in the person's words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// The job's terms the decision is about, and their SHA-256.
    pub terms: serde_json::Value,
    pub terms_sha256: String,
}

/// A receipt the coordinator signed for a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRecord {
    pub time_unix_ms: i64,
    pub task_id: String,
    /// The receipt's statement (canonical JSON), its signature (hex) and the signer's
    /// certificate (PEM), as the coordinator sent them.
    pub statement: String,
    pub signature: String,
    pub scheme: String,
    pub certificate: String,
    /// Whether the statement names the SHA-256 the node computed of what it sent.
    pub matches_sent: bool,
}

/// One stored record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceLink {
    pub seq: u64,
    /// The SHA-256 of the previous record's stored bytes, in hex.
    pub prev: String,
    pub record: Record,
}

/// Why the evidence log cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvidenceError {
    #[error("the node's evidence log cannot be read: {0}")]
    Unreadable(String),
    #[error(
        "the node's evidence log is broken at record {at}: {why}; restore the node's state directory from a backup"
    )]
    Broken { at: u64, why: String },
    #[error("the node's evidence log cannot be written: {0}")]
    Write(String),
}

/// The log, open.
#[derive(Debug)]
pub struct Evidence {
    db: Database,
    tree: sled::Tree,
    /// The chain's length and last hash; appends hold this lock.
    end: Mutex<(u64, Hash)>,
    /// A record was written by [`Evidence::append_later`] and no flush asked for since.
    unflushed: AtomicBool,
}

impl Evidence {
    /// Opens the log in the ledger's database and walks its chain.
    pub(crate) fn open(db: &Database) -> Result<(Self, Vec<Record>), EvidenceError> {
        let tree = db
            .open_tree("evidence")
            .map_err(|e| EvidenceError::Unreadable(e.to_string()))?;
        let stored = tree.iter().enumerate().map(|(i, item)| {
            let (k, v) = item.map_err(|e| EvidenceError::Unreadable(e.to_string()))?;
            // Record i + 1 is stored under its own number.
            let placed = *k == key(i as u64 + 1);
            Ok((placed, v.to_vec()))
        });
        let (records, end) = walk(stored)?;
        Ok((
            Evidence {
                db: db.clone(),
                tree,
                end: Mutex::new(end),
                unflushed: AtomicBool::new(false),
            },
            records,
        ))
    }

    /// Appends `record` and makes it durable; its sequence number.
    pub fn append(&self, record: Record) -> Result<u64, EvidenceError> {
        self.append_all(vec![record])
    }

    /// Appends `records` in order and makes them durable at once; the last one's sequence
    /// number.
    pub fn append_all(&self, records: Vec<Record>) -> Result<u64, EvidenceError> {
        let seq = self.write(records)?;
        self.flush()?;
        Ok(seq)
    }

    /// Appends `record` without waiting for the disk: it is durable once the database is next
    /// flushed (by the node's next write to its ledger or log, or by [`Evidence::flush`]).
    /// Its sequence number, and whether it is the first record since the last flush was asked
    /// for: then the caller is to see that [`Evidence::flush`] is called soon.
    pub fn append_later(&self, record: Record) -> Result<(u64, bool), EvidenceError> {
        let seq = self.write(vec![record])?;
        Ok((seq, !self.unflushed.swap(true, Ordering::AcqRel)))
    }

    /// Makes every record written so far durable. A flush that fails leaves the records
    /// waiting as they were: the next [`Evidence::append_later`] asks for a flush again.
    pub fn flush(&self) -> Result<(), EvidenceError> {
        self.unflushed.store(false, Ordering::Release);
        self.db.flush().map_err(|e| {
            self.unflushed.store(true, Ordering::Release);
            EvidenceError::Write(e.to_string())
        })
    }

    /// Appends `records` to the chain in order, in the database's memory; the last one's
    /// sequence number.
    fn write(&self, records: Vec<Record>) -> Result<u64, EvidenceError> {
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        let write = |e: &dyn std::fmt::Display| EvidenceError::Write(e.to_string());
        let mut next = *end;
        for record in records {
            let seq = next.0 + 1;
            let link = EvidenceLink {
                seq,
                prev: hex(&next.1),
                record,
            };
            let value = serde_json::to_vec(&link).map_err(|e| write(&e))?;
            let swapped = self
                .tree
                .compare_and_swap(key(seq), None::<&[u8]>, Some(value.as_slice()))
                .map_err(|e| write(&e))?;
            if swapped.is_err() {
                return Err(write(&format!(
                    "record {seq} is already stored though the chain ended before it"
                )));
            }
            next = (seq, sha256(&value));
            // The chain in memory follows the tree, whatever fails after.
            *end = next;
        }
        Ok(next.0)
    }

    /// Every stored link's bytes, oldest first, for an export: flushed first, so that an
    /// export never shows a record that a crash could still take back and replace.
    pub fn stored(&self) -> Result<Vec<Vec<u8>>, EvidenceError> {
        let _end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        self.flush()?;
        self.tree
            .iter()
            .values()
            .map(|v| v.map(|v| v.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| EvidenceError::Unreadable(e.to_string()))
    }
}

/// Walks a chain of stored links, oldest first, each with whether it was stored in its place:
/// its records, and its length and last hash.
fn walk(
    stored: impl Iterator<Item = Result<(bool, Vec<u8>), EvidenceError>>,
) -> Result<(Vec<Record>, (u64, Hash)), EvidenceError> {
    let mut records = Vec::new();
    let mut end = (0u64, GENESIS);
    for item in stored {
        let (placed, v) = item?;
        let at = end.0 + 1;
        let broken = |why: &str| EvidenceError::Broken {
            at,
            why: why.to_owned(),
        };
        if !placed {
            return Err(broken("a record is missing or out of place"));
        }
        let link: EvidenceLink =
            serde_json::from_slice(&v).map_err(|e| broken(&format!("unreadable ({e})")))?;
        if link.seq != at {
            return Err(broken("it says it is another record"));
        }
        if link.prev != hex(&end.1) {
            return Err(broken("it does not follow its predecessor (hash differs)"));
        }
        records.push(link.record);
        end = (at, sha256(&v));
    }
    Ok((records, end))
}

/// The records of an exported log (`evidence.jsonl`: each stored link on its own line, oldest
/// first), its chain checked.
pub fn read_export(text: &[u8]) -> Result<Vec<Record>, EvidenceError> {
    let Some(body) = text.strip_suffix(b"\n") else {
        return match text.is_empty() {
            true => Ok(Vec::new()),
            false => Err(EvidenceError::Unreadable(
                "its last line is cut (no newline at its end)".into(),
            )),
        };
    };
    let lines = body.split(|b| *b == b'\n').map(|l| Ok((true, l.to_vec())));
    walk(lines).map(|(records, _)| records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(job: &str) -> Record {
        Record::Approval(ApprovalRecord {
            time_unix_ms: 1,
            job_id: job.into(),
            decision: "approved".into(),
            by: "Jane Doe".into(),
            account: "jdoe".into(),
            uid: 1000,
            note: String::new(),
            terms: serde_json::json!({"purpose": "x"}),
            terms_sha256: "00".into(),
        })
    }

    #[test]
    fn records_survive_a_reopen_and_chain_by_the_sha256_of_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::ledger::reopen_for_tests(dir.path());
            let (log, none) = Evidence::open(&db).unwrap();
            assert!(none.is_empty());
            assert_eq!(log.append(approval("a")).unwrap(), 1);
            assert_eq!(log.append(approval("b")).unwrap(), 2);
        }
        let db = crate::ledger::reopen_for_tests(dir.path());
        let (log, records) = Evidence::open(&db).unwrap();
        assert_eq!(records, vec![approval("a"), approval("b")]);
        // The second link names the SHA-256 of the first's stored bytes, computed here by ring
        // directly, not by the log's own helper.
        let stored = log.stored().unwrap();
        let first = ring::digest::digest(&ring::digest::SHA256, &stored[0]);
        let second: serde_json::Value = serde_json::from_slice(&stored[1]).unwrap();
        let want: String = first.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(second["prev"], want);
        assert_eq!(log.append(approval("c")).unwrap(), 3);
    }

    #[test]
    fn an_altered_removed_or_reordered_record_is_found_with_its_place() {
        let setup = || {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::ledger::reopen_for_tests(dir.path());
            let (log, _) = Evidence::open(&db).unwrap();
            for job in ["a", "b", "c"] {
                log.append(approval(job)).unwrap();
            }
            (dir, db)
        };
        let tree = |db: &sled::Db| db.open_tree("evidence").unwrap();

        // One byte of record 2 changed (its job id): record 3 no longer follows it.
        let (_d, db) = setup();
        let v = tree(&db).get(key(2)).unwrap().unwrap().to_vec();
        let altered = String::from_utf8(v).unwrap().replace("\"b\"", "\"x\"");
        tree(&db).insert(key(2), altered.as_bytes()).unwrap();
        let err = Evidence::open(&db).unwrap_err();
        assert!(matches!(err, EvidenceError::Broken { at: 3, .. }), "{err}");

        // Record 2 removed.
        let (_d, db) = setup();
        tree(&db).remove(key(2)).unwrap();
        let err = Evidence::open(&db).unwrap_err();
        assert!(matches!(err, EvidenceError::Broken { at: 2, .. }), "{err}");

        // Records 2 and 3 swapped.
        let (_d, db) = setup();
        let (two, three) = (
            tree(&db).get(key(2)).unwrap().unwrap(),
            tree(&db).get(key(3)).unwrap().unwrap(),
        );
        tree(&db).insert(key(2), three).unwrap();
        tree(&db).insert(key(3), two).unwrap();
        let err = Evidence::open(&db).unwrap_err();
        assert!(matches!(err, EvidenceError::Broken { at: 2, .. }), "{err}");
        assert!(err.to_string().contains("record 2"), "{err}");
    }

    #[test]
    fn a_record_written_later_is_chained_at_once_and_on_disk_after_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::ledger::reopen_for_tests(dir.path());
        let (log, _) = Evidence::open(&db).unwrap();
        // What a crash would leave at this moment: the directory's files as they are, copied
        // while the database is open, and opened as the node would open them.
        let on_disk = || {
            let copy = tempfile::tempdir().unwrap();
            crate::ledger::damage_tests::copy_dir(dir.path(), copy.path());
            let (_, records) =
                Evidence::open(&crate::ledger::reopen_for_tests(copy.path())).unwrap();
            records
        };
        log.append(approval("a")).unwrap();
        // The first record written later asks its writer for a flush; the next, before one, not.
        assert_eq!(log.append_later(approval("b")).unwrap(), (2, true));
        assert_eq!(log.append_later(approval("c")).unwrap(), (3, false));
        log.flush().unwrap();
        assert_eq!(on_disk(), vec![approval("a"), approval("b"), approval("c")]);
        // After the flush, the next one asks again; a record appended the usual way (the next
        // task's) carries it to disk with its own.
        assert_eq!(log.append_later(approval("d")).unwrap(), (4, true));
        log.append(approval("e")).unwrap();
        assert_eq!(on_disk().len(), 5);
        assert_eq!(on_disk()[3], approval("d"));
        // An export from the running node shows only what is on disk: it flushes first.
        assert_eq!(log.append_later(approval("f")).unwrap(), (6, true));
        assert_eq!(log.stored().unwrap().len(), 6);
        assert_eq!(on_disk().len(), 6);
    }

    #[test]
    fn an_export_is_read_with_the_same_checks() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::ledger::reopen_for_tests(dir.path());
        let (log, _) = Evidence::open(&db).unwrap();
        for job in ["a", "b", "c"] {
            log.append(approval(job)).unwrap();
        }
        let lines = log.stored().unwrap();
        let export = |lines: &[Vec<u8>]| {
            let mut text = Vec::new();
            for l in lines {
                text.extend_from_slice(l);
                text.push(b'\n');
            }
            text
        };
        assert_eq!(read_export(&export(&lines)).unwrap().len(), 3);
        assert!(read_export(b"").unwrap().is_empty());
        let mut cut = export(&lines);
        cut.pop();
        assert!(read_export(&cut).is_err());
        let dropped = [lines[0].clone(), lines[2].clone()];
        let err = read_export(&export(&dropped)).unwrap_err();
        assert!(matches!(err, EvidenceError::Broken { at: 2, .. }), "{err}");
    }
}

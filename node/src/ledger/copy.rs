//! The copy of the ledger a running node keeps for its operator (`ledger.copy` in the state
//! directory), so that `treaty node ledger` can show what the agency has spent while the node
//! holds its database.
//!
//! The copy is the chain's stored bytes, one entry a line after a header line:
//!
//! ```text
//! treaty privacy ledger copy 1
//! {"seq":1,"prev":"0000…","entry":{…}}
//! {"seq":2,"prev":"9ab1…","entry":{…}}
//! ```
//!
//! The node rewrites it whole when it opens its ledger (written to a temporary file and renamed
//! over the old one) and appends each release it records after. The copy is never the ledger:
//! nothing is decided from it. A reader walks its chain as the node walks its own and checks it
//! against the anchor (`ledger.head`), so the copy it shows holds every release the node has
//! recorded; the node writes the anchor before it appends, so a reader that finds the copy one
//! release behind (or the last line being written) reads again.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::anchor;
use super::chain::{self, Chain, Fault};

/// The copy's file name in the state directory.
pub(crate) const FILE: &str = "ledger.copy";
const TEMPORARY: &str = "ledger.copy.tmp";
const MAGIC: &str = "treaty privacy ledger copy 1";
/// How often a reader reads again a copy found behind the anchor (a release being recorded).
const ATTEMPTS: u32 = 40;
const PAUSE: Duration = Duration::from_millis(50);

/// Why the copy of a running node's ledger cannot be shown.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CopyError {
    #[error("keeps no readable copy of its ledger ({0})")]
    Unreadable(String),
    #[error("keeps a copy of its ledger that is not one ({0})")]
    Malformed(&'static str),
    #[error(
        "keeps a copy of its ledger that does not match the ledger's anchor `{file}` ({0}); the node may have failed to write it (see its log)",
        file = anchor::FILE
    )]
    Mismatch(Fault),
}

/// Rewrites the copy in `dir` from the stored bytes of every entry, in order.
pub(crate) fn write<'a>(dir: &Path, stored: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    let temporary = dir.join(TEMPORARY);
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
        file.write_all(MAGIC.as_bytes())?;
        file.write_all(b"\n")?;
        for value in stored {
            // A stored entry is compact JSON: a newline inside one is escaped.
            file.write_all(value)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
    }
    // No sync: the copy is rewritten whenever the node opens its ledger, and a reader checks
    // whatever it finds against the anchor.
    std::fs::rename(&temporary, dir.join(FILE))
}

/// Appends one entry's stored bytes to the copy in `dir`.
pub(crate) fn append(dir: &Path, stored: &[u8]) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(stored.len() + 1);
    line.extend_from_slice(stored);
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(FILE))?
        .write_all(&line)
}

/// Whether a process holds the ledger's database in `dir` (a running node: sled locks its file
/// for as long as it has it open).
pub(crate) fn in_use(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return false;
    };
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}

/// The chain of the copy in `dir`, checked link by link and against the anchor.
pub(crate) fn read(dir: &Path) -> Result<Chain, CopyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match read_once(dir) {
            // The node records a release: its anchor is ahead of its copy for a moment, or
            // half written in place (one slot torn as this reads it).
            Err(CopyError::Mismatch(Fault::Lost { .. } | Fault::Interrupted { .. }))
                if attempt < ATTEMPTS =>
            {
                std::thread::sleep(PAUSE)
            }
            other => return other,
        }
    }
}

fn read_once(dir: &Path) -> Result<Chain, CopyError> {
    // The anchor first: the node writes the copy after it, so the copy read next is at least
    // as new, or one release behind while it is written.
    let anchor = anchor::read(dir).map_err(|e| CopyError::Mismatch(Fault::Anchor(e)))?;
    let bytes = std::fs::read(dir.join(FILE)).map_err(|e| CopyError::Unreadable(e.to_string()))?;
    let body = bytes
        .strip_prefix(MAGIC.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"\n"))
        .ok_or(CopyError::Malformed("no header"))?;
    // A last line without its newline is being appended: not there yet.
    let lines: Vec<&[u8]> = match body.iter().rposition(|b| *b == b'\n') {
        Some(end) => body[..end].split(|b| *b == b'\n').collect(),
        None => Vec::new(),
    };
    let chain = chain::walk_values(
        lines
            .into_iter()
            .zip(1u64..)
            .map(|(value, seq)| Ok((seq, value))),
    )
    .map_err(CopyError::Mismatch)?;
    chain::stand(&chain, anchor).map_err(CopyError::Mismatch)?;
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::super::{Budget, Entry, Ledger, LedgerError, Source, read as read_ledger};
    use super::*;
    use treaty_policies::privacy::{Release, zcdp};

    const RHO: f64 = 0.01;

    fn entry(round: u32) -> Entry {
        Entry {
            time_unix_ms: 1,
            task_id: format!("t{round}"),
            job_id: "job-000001".into(),
            federation: "f".into(),
            round,
            kind: "training".into(),
            recipient: "treaty://coordinator/hub".into(),
            releases: Some(vec![Release::Gaussian { rho: RHO }]),
            secure_aggregation: None,
        }
    }

    fn budget() -> Option<Budget> {
        Some(Budget {
            max_epsilon: 100.0,
            delta: 1e-5,
        })
    }

    fn copy_error(dir: &Path) -> CopyError {
        match read_ledger(dir, budget()) {
            Err(LedgerError::Copy { error, .. }) => error,
            other => panic!("expected the copy refused, got {other:?}"),
        }
    }

    #[test]
    fn a_running_nodes_ledger_is_read_from_its_copy_and_a_stopped_ones_from_its_database() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), budget()).unwrap();
        for round in 1..=3 {
            ledger.record(&entry(round)).unwrap();
        }
        assert!(in_use(dir.path()));
        let running = read_ledger(dir.path(), budget()).unwrap();
        assert_eq!(running.source, Source::RunningNode);
        assert_eq!(running.entries, ledger.entries().unwrap());
        // Three Gaussian releases of rho 0.01 are one Gaussian of rho 0.03 (mu^2 = 0.06): what
        // the ledger itself says, the exact curve of Balle and Wang (2018) at delta, below
        // zCDP's conversion and the classic rho + 2 sqrt(rho ln(1/delta)).
        assert_eq!(running.spent.epsilon, ledger.spent().unwrap().epsilon);
        let (e, mu) = (running.spent.epsilon, 0.06f64.sqrt());
        let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let delta = phi(mu / 2.0 - e / mu) - e.exp() * phi(-mu / 2.0 - e / mu);
        assert!((delta / 1e-5 - 1.0).abs() < 1e-6, "{e}: {delta}");
        assert!(e < zcdp::epsilon(0.03, 1e-5));
        let classic = 0.03 + 2.0 * (0.03 * (1e5f64).ln()).sqrt();
        assert!(running.spent.epsilon > 0.5 && running.spent.epsilon <= classic);
        drop(ledger);
        assert!(!in_use(dir.path()));
        let stopped = read_ledger(dir.path(), budget()).unwrap();
        assert_eq!(stopped.source, Source::Database);
        assert_eq!(stopped.entries, running.entries);
        assert_eq!(stopped.spent.epsilon, running.spent.epsilon);
    }

    #[test]
    fn a_copy_that_does_not_reach_the_anchor_or_was_altered_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), budget()).unwrap();
        for round in 1..=3 {
            ledger.record(&entry(round)).unwrap();
        }
        let path = dir.path().join(FILE);
        let whole = std::fs::read_to_string(&path).unwrap();
        assert_eq!(whole.lines().count(), 4, "a header and three entries");

        // One release missing (a copy the node failed to write): refused after reading again.
        let short: String = whole.lines().take(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &short).unwrap();
        assert!(matches!(
            copy_error(dir.path()),
            CopyError::Mismatch(Fault::Lost {
                found: 2,
                anchored: 3,
                ..
            })
        ));
        // An entry altered: its successor no longer follows it.
        std::fs::write(&path, whole.replacen("\"round\":2", "\"round\":7", 1)).unwrap();
        assert!(matches!(
            copy_error(dir.path()),
            CopyError::Mismatch(Fault::Broken { at: 3, previous: 2 })
        ));
        // The last entry altered: it is not the one the anchor records.
        std::fs::write(&path, whole.replacen("\"round\":3", "\"round\":8", 1)).unwrap();
        assert!(matches!(
            copy_error(dir.path()),
            CopyError::Mismatch(Fault::Altered { anchored: 3, .. })
        ));
        // A last line still being written is not there yet: the copy is one release behind.
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        assert!(matches!(
            copy_error(dir.path()),
            CopyError::Mismatch(Fault::Lost {
                found: 2,
                anchored: 3,
                ..
            })
        ));
        std::fs::write(&path, whole.replacen(MAGIC, "treaty ledger", 1)).unwrap();
        assert_eq!(copy_error(dir.path()), CopyError::Malformed("no header"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(copy_error(dir.path()), CopyError::Unreadable(_)));
        // The next opening of the ledger rewrites the copy whole; each release is appended.
        drop(ledger);
        let ledger = Ledger::open(dir.path(), budget()).unwrap();
        ledger.record(&entry(4)).unwrap();
        assert_eq!(read_ledger(dir.path(), budget()).unwrap().entries.len(), 4);
    }

    #[test]
    fn releases_the_anchor_missed_reach_the_copy_when_the_anchor_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), budget()).unwrap();
        ledger.record(&entry(1)).unwrap();
        let anchor_after_one = std::fs::read(dir.path().join(anchor::FILE)).unwrap();
        let copy_after_one = std::fs::read(dir.path().join(FILE)).unwrap();
        ledger.record(&entry(2)).unwrap();
        // As if the second release's anchor and copy had not been written (a failed write).
        std::fs::write(dir.path().join(anchor::FILE), anchor_after_one).unwrap();
        std::fs::write(dir.path().join(FILE), copy_after_one).unwrap();
        // The next use walks the chain, counts the release and moves the anchor on; the copy
        // follows.
        assert_eq!(ledger.entries().unwrap().len(), 2);
        let reading = read_ledger(dir.path(), budget()).unwrap();
        assert_eq!(reading.source, Source::RunningNode);
        assert_eq!(reading.entries.len(), 2);
    }

    #[test]
    fn readings_taken_while_releases_are_recorded_are_whole_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), budget()).unwrap();
        let reader = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for _ in 0..200 {
                    seen.push(read_ledger(&dir, budget()).unwrap().entries.len());
                }
                seen
            })
        };
        for round in 1..=60 {
            ledger.record(&entry(round)).unwrap();
        }
        let seen = reader.join().unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(read_ledger(dir.path(), budget()).unwrap().entries.len(), 60);
    }
}

//! The ledger's hash chain in sled, and its verification against the anchor.
//!
//! Entry `n` (counted from 1) is stored under the key `n` (eight bytes, big-endian) as the JSON
//! of a [`Link`]: its sequence number, the SHA-256 of entry `n - 1`'s stored bytes (32 zero
//! bytes for the first), and the entry. Changing, removing or reordering any stored entry
//! breaks the chain after it; removing entries from the end shortens it below its anchor.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Entry;
use super::anchor::{self, Anchor, AnchorError, Found};

/// A SHA-256.
pub(crate) type Hash = [u8; 32];

/// The predecessor of the first entry.
pub(crate) const GENESIS: Hash = [0; 32];

pub(crate) fn sha256(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

pub(crate) fn hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in hash {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// One stored entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Link {
    pub seq: u64,
    /// The SHA-256 of the previous entry's stored bytes, in hex.
    pub prev: String,
    pub entry: Entry,
}

/// The sled key of entry `seq`.
pub(crate) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// A chain read in full and found consistent in itself.
#[derive(Debug)]
pub(crate) struct Chain {
    pub entries: Vec<Entry>,
    /// The hash of entry `i + 1`'s stored bytes at `i`.
    hashes: Vec<Hash>,
}

impl Chain {
    /// Where the chain ends: its length and the last entry's hash.
    pub(crate) fn end(&self) -> Anchor {
        Anchor {
            count: self.hashes.len() as u64,
            head: self.hashes.last().copied().unwrap_or(GENESIS),
        }
    }

    /// The chain with one more entry, whose stored bytes hash to `hash`.
    pub(crate) fn push(&mut self, entry: Entry, hash: Hash) {
        self.entries.push(entry);
        self.hashes.push(hash);
    }

    /// The hash after `count` entries, when the chain is that long.
    fn head_at(&self, count: u64) -> Option<Hash> {
        match count {
            0 => Some(GENESIS),
            n => usize::try_from(n - 1)
                .ok()
                .and_then(|i| self.hashes.get(i))
                .copied(),
        }
    }
}

/// What is wrong with a ledger.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    #[error(
        "cannot be opened ({0}); if a node is running on it, stop that node first, otherwise its files are damaged"
    )]
    Unopenable(String),
    #[error("cannot be read after {after} entries ({message}): its files are damaged")]
    Unreadable { after: u64, message: String },
    #[error("has an entry stored as {at} that says it is another: history was altered")]
    Misplaced { at: u64 },
    #[error("has an unreadable entry {at} ({message}): history was altered")]
    Garbled { at: u64, message: String },
    #[error("has entry {at} where entry {expected} should follow: history was lost or altered")]
    OutOfSequence { at: u64, expected: u64 },
    #[error(
        "has an entry {at} that does not follow entry {previous} (its predecessor's hash differs): history was lost or altered"
    )]
    Broken { at: u64, previous: u64 },
    #[error(
        "holds {found} entries but its anchor `{file}` records {anchored} ending in {head}…: history was lost",
        file = anchor::FILE
    )]
    Lost {
        found: u64,
        anchored: u64,
        head: String,
    },
    #[error(
        "holds an entry {anchored} that is not the one its anchor `{file}` records (ending in {head}…): history was altered",
        file = anchor::FILE
    )]
    Altered { anchored: u64, head: String },
    #[error(
        "holds {found} entries but its anchor `{file}` is missing, so nothing vouches that none were lost",
        file = anchor::FILE
    )]
    AnchorMissing { found: u64 },
    #[error(
        "holds {found} entries, the number its anchor `{file}` records, but the anchor was being moved past them when its writer stopped (one of its two slots is unreadable), and a move starts only once its entry is on disk: an entry was lost, or the anchor file is damaged",
        file = anchor::FILE
    )]
    Interrupted { found: u64 },
    #[error("has an anchor `{file}` that {0}", file = anchor::FILE)]
    Anchor(AnchorError),
}

/// A ledger found damaged: it releases nothing until an operator restores it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the privacy ledger at `{}` {fault}; restore the state directory from a backup that holds every release (an older backup forgets what was spent since); this node releases nothing until then",
    dir.display()
)]
pub struct Damage {
    pub dir: PathBuf,
    pub fault: Fault,
}

/// Reads the whole chain in `tree`, checking every key, sequence number and link.
pub(crate) fn walk(tree: &sled::Tree) -> Result<Chain, Fault> {
    let mut done = 0u64;
    walk_values(tree.iter().map(|item| {
        let (k, v) = item.map_err(|e| Fault::Unreadable {
            after: done,
            message: e.to_string(),
        })?;
        done += 1;
        let seq = <[u8; 8]>::try_from(&*k)
            .map(u64::from_be_bytes)
            .map_err(|_| Fault::Garbled {
                at: done,
                message: "its key is not a sequence number".into(),
            })?;
        Ok((seq, v))
    }))
}

/// Reads a whole chain from its stored entries in order, each with the sequence number it is
/// stored under, checking every sequence number and link.
pub(crate) fn walk_values<V: AsRef<[u8]>>(
    stored: impl Iterator<Item = Result<(u64, V), Fault>>,
) -> Result<Chain, Fault> {
    let mut chain = Chain {
        entries: Vec::new(),
        hashes: Vec::new(),
    };
    for item in stored {
        let done = chain.hashes.len() as u64;
        let (found, v) = item?;
        let v = v.as_ref();
        let at = done + 1;
        if found != at {
            return Err(Fault::OutOfSequence {
                at: found,
                expected: at,
            });
        }
        let link: Link = serde_json::from_slice(v).map_err(|e| Fault::Garbled {
            at,
            message: e.to_string(),
        })?;
        if link.seq != at {
            return Err(Fault::Misplaced { at });
        }
        let previous = chain.hashes.last().copied().unwrap_or(GENESIS);
        if link.prev != hex(&previous) {
            return Err(Fault::Broken { at, previous: done });
        }
        chain.hashes.push(sha256(v));
        chain.entries.push(link.entry);
    }
    Ok(chain)
}

/// How a chain stands against its anchor.
#[derive(Debug, PartialEq)]
pub(crate) enum Standing {
    /// The chain ends where the anchor says.
    Anchored,
    /// The chain passes through the anchor and goes on by `extra` entries, each following the
    /// one before: entries recorded before a crash or a failed write kept the anchor from
    /// following. They are counted; the anchor is to be moved to `to`.
    Ahead { extra: u64, to: Anchor },
}

/// Checks that `chain` reaches the anchor `found` (`None`: there is no anchor file).
pub(crate) fn stand(chain: &Chain, found: Option<Found>) -> Result<Standing, Fault> {
    let end = chain.end();
    let Some(Found {
        anchor,
        interrupted,
        ..
    }) = found
    else {
        // A new ledger has no anchor yet; one with entries must have had one.
        return match end.count {
            0 => Ok(Standing::Ahead { extra: 0, to: end }),
            found => Err(Fault::AnchorMissing { found }),
        };
    };
    let short = || hex(&anchor.head)[..12].to_owned();
    if end.count < anchor.count {
        return Err(Fault::Lost {
            found: end.count,
            anchored: anchor.count,
            head: short(),
        });
    }
    if chain.head_at(anchor.count) != Some(anchor.head) {
        return Err(Fault::Altered {
            anchored: anchor.count,
            head: short(),
        });
    }
    Ok(match end.count - anchor.count {
        0 if interrupted => return Err(Fault::Interrupted { found: end.count }),
        0 => Standing::Anchored,
        extra => Standing::Ahead { extra, to: end },
    })
}

/// Reads the anchor in `dir` and the chain in `tree`, and checks one against the other.
pub(crate) fn verify(dir: &Path, tree: &sled::Tree) -> Result<(Chain, Standing), Damage> {
    let damage = |fault| Damage {
        dir: dir.to_owned(),
        fault,
    };
    let anchor = anchor::read(dir).map_err(|e| damage(Fault::Anchor(e)))?;
    let chain = walk(tree).map_err(damage)?;
    let standing = stand(&chain, anchor).map_err(damage)?;
    Ok((chain, standing))
}

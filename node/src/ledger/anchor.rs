//! The ledger's anchor: how many entries the chain holds and the hash of the last, in a small
//! file of its own beside sled's (`ledger.head`), so that a truncation of sled's file cannot
//! remove the entries and the record of them together.
//!
//! The file is text, three lines and a checksum of them:
//!
//! ```text
//! treaty privacy ledger anchor 1
//! count 36
//! head 3f0c…(64 hex digits)
//! check 9ab1…(64 hex digits: the SHA-256 of the three lines above, with their newlines)
//! ```
//!
//! It is replaced atomically: written to a temporary file, synced, renamed over the old one, and
//! the directory synced, so that after a crash it is either the old anchor or the new one.

use std::io::{Read, Write};
use std::path::Path;

use super::chain::{Hash, hex, sha256};

/// The anchor's file name in the state directory.
pub(crate) const FILE: &str = "ledger.head";
const TEMPORARY: &str = "ledger.head.tmp";
const MAGIC: &str = "treaty privacy ledger anchor 1";
/// A larger file is not an anchor; reading stops there.
const MAX_BYTES: u64 = 1024;

/// How long the chain is and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// The number of entries (the last one's sequence number).
    pub count: u64,
    /// The SHA-256 of the last entry's stored bytes; [`super::chain::GENESIS`] for none.
    pub head: Hash,
}

/// Why the anchor cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot be read ({0})")]
    Unreadable(String),
    #[error("is corrupt ({0})")]
    Corrupt(&'static str),
}

fn body(anchor: &Anchor) -> String {
    format!(
        "{MAGIC}\ncount {}\nhead {}\n",
        anchor.count,
        hex(&anchor.head)
    )
}

/// The text of the anchor file.
pub(crate) fn render(anchor: &Anchor) -> String {
    let body = body(anchor);
    let check = hex(&sha256(body.as_bytes()));
    format!("{body}check {check}\n")
}

/// Reads an anchor file's text; every deviation from [`render`]'s output is corruption.
pub(crate) fn parse(text: &str) -> Result<Anchor, AnchorError> {
    let mut lines = text.split_inclusive('\n');
    let mut line = |name: &'static str| -> Result<&str, AnchorError> {
        lines
            .next()
            .and_then(|l| l.strip_suffix('\n'))
            .ok_or(AnchorError::Corrupt(name))
    };
    if line("no header")? != MAGIC {
        return Err(AnchorError::Corrupt("not an anchor of this version"));
    }
    let count = line("no count")?
        .strip_prefix("count ")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or(AnchorError::Corrupt("the count is not a number"))?;
    let head = line("no head")?
        .strip_prefix("head ")
        .and_then(unhex)
        .ok_or(AnchorError::Corrupt("the head is not a SHA-256 in hex"))?;
    let check = line("no checksum")?
        .strip_prefix("check ")
        .and_then(unhex)
        .ok_or(AnchorError::Corrupt("the checksum is not a SHA-256 in hex"))?;
    if lines.next().is_some() {
        return Err(AnchorError::Corrupt("text after the checksum"));
    }
    let anchor = Anchor { count, head };
    if sha256(body(&anchor).as_bytes()) != check {
        return Err(AnchorError::Corrupt("the checksum does not match"));
    }
    Ok(anchor)
}

fn unhex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The anchor in `dir`, or `None` when there is no file.
pub(crate) fn read(dir: &Path) -> Result<Option<Anchor>, AnchorError> {
    let file = match std::fs::File::open(dir.join(FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AnchorError::Unreadable(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| AnchorError::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(AnchorError::Corrupt("the file is too large"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| AnchorError::Corrupt("not text"))?;
    parse(text).map(Some)
}

/// Replaces the anchor in `dir` atomically: the new file is complete on disk before it takes
/// the old one's name. Replacing an anchor does not sync the directory: a crash may undo the
/// rename, leaving the previous anchor, which the chain then passes through and goes on from —
/// the window between sled's flush and the anchor's write that the ledger counts and moves the
/// anchor over (never a torn anchor, never fewer entries than an anchor names). The first
/// anchor is made durable, directory included: entries without any anchor are damage. The
/// caller holds the ledger's lock, so no other writer uses the temporary file.
pub(crate) fn write(dir: &Path, anchor: &Anchor) -> std::io::Result<()> {
    let temporary = dir.join(TEMPORARY);
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(render(anchor).as_bytes())?;
        file.sync_all()?;
    }
    let first = !dir.join(FILE).try_exists()?;
    std::fs::rename(&temporary, dir.join(FILE))?;
    if first {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_reads_back_and_every_altered_byte_is_refused() {
        let anchor = Anchor {
            count: 36,
            head: sha256(b"the last entry"),
        };
        let text = render(&anchor);
        assert_eq!(parse(&text), Ok(anchor));
        // The checksum line is SHA-256 over the first three lines, by an independent route:
        // the well-known digest of the empty string checks that `sha256` is SHA-256 at all.
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(altered) = std::str::from_utf8(&bytes) {
                assert!(parse(altered).is_err(), "byte {i} altered: {altered}");
            }
        }
        assert!(parse(&text[..text.len() - 1]).is_err());
        assert!(parse(&format!("{text}\n")).is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn writing_replaces_the_anchor_and_a_missing_or_huge_file_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let first = Anchor {
            count: 1,
            head: sha256(b"1"),
        };
        let second = Anchor {
            count: 2,
            head: sha256(b"2"),
        };
        write(dir.path(), &first).unwrap();
        write(dir.path(), &second).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(second)));
        assert!(!dir.path().join(TEMPORARY).exists());
        std::fs::write(dir.path().join(FILE), vec![b'a'; 4096]).unwrap();
        assert_eq!(
            read(dir.path()),
            Err(AnchorError::Corrupt("the file is too large"))
        );
    }
}

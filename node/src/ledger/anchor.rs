//! The ledger's anchor: how many entries the chain holds and the hash of the last, in a small
//! file of its own beside sled's (`ledger.head`), so that a truncation of sled's file cannot
//! remove the entries and the record of them together.
//!
//! The file is two slots of [`SLOT`] bytes (a block each), each an anchor as text, four lines,
//! padded with zero bytes:
//!
//! ```text
//! treaty privacy ledger anchor 2
//! count 36
//! head 3f0c…(64 hex digits)
//! check 9ab1…(64 hex digits: the SHA-256 of the three lines above, with their newlines)
//! ```
//!
//! A new anchor is written in place over the slot that does not hold the newest one, and
//! synced (`fdatasync`): no new file, inode or rename per release, which at 1,000 agencies on
//! one host took 7 % of the machine. A crash in the middle of a write leaves the other slot
//! whole. The anchor is the newer of the two readable slots ([`read`]); a slot that cannot be
//! read beside one that can is a write of the next anchor that was interrupted ([`Found::
//! interrupted`]), and a write starts only once its entry is on disk: the chain must then hold
//! more entries than the readable slot records, or an entry was lost (or the file damaged).
//!
//! The file is created whole (written to a temporary file, synced, renamed, the directory
//! synced), both slots holding the first anchor. A file of version 1 (one anchor, `treaty
//! privacy ledger anchor 1`, replaced by renaming at every write) is read as the anchor it
//! holds and replaced, whole, by a file of version 2 at the next write.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::chain::{Hash, hex, sha256};

/// The anchor's file name in the state directory.
pub(crate) const FILE: &str = "ledger.head";
const TEMPORARY: &str = "ledger.head.tmp";
const MAGIC: &str = "treaty privacy ledger anchor 2";
const MAGIC_1: &str = "treaty privacy ledger anchor 1";
/// The bytes of one slot: a filesystem block and page of its own, so that a torn write of one
/// slot, or a disk's rewrite of the sector under it, cannot reach the other.
pub(crate) const SLOT: usize = 4096;
/// A larger file is not an anchor; reading stops there.
const MAX_BYTES: u64 = 2 * SLOT as u64;

/// How long the chain is and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// The number of entries (the last one's sequence number).
    pub count: u64,
    /// The SHA-256 of the last entry's stored bytes; [`super::chain::GENESIS`] for none.
    pub head: Hash,
}

/// The anchor a file holds, and what its other slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub anchor: Anchor,
    /// The other slot cannot be read: the write of the next anchor was interrupted, so the
    /// chain holds at least one entry more than `anchor` records.
    pub interrupted: bool,
    /// The slot holding `anchor` (`None`: a file of version 1).
    slot: Option<usize>,
}

/// Why the anchor cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot be read ({0})")]
    Unreadable(String),
    #[error("is corrupt ({0})")]
    Corrupt(&'static str),
}

fn body(magic: &str, anchor: &Anchor) -> String {
    format!(
        "{magic}\ncount {}\nhead {}\n",
        anchor.count,
        hex(&anchor.head)
    )
}

fn render_with(magic: &str, anchor: &Anchor) -> String {
    let body = body(magic, anchor);
    let check = hex(&sha256(body.as_bytes()));
    format!("{body}check {check}\n")
}

/// The text of one slot (without its padding).
pub(crate) fn render(anchor: &Anchor) -> String {
    render_with(MAGIC, anchor)
}

/// One slot's bytes: the anchor's text padded with zero bytes.
fn slot_bytes(anchor: &Anchor) -> [u8; SLOT] {
    let mut out = [0u8; SLOT];
    let text = render(anchor);
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

/// A whole file whose slots hold `first` and `second`.
pub(crate) fn file_bytes(first: &Anchor, second: &Anchor) -> Vec<u8> {
    [slot_bytes(first), slot_bytes(second)].concat()
}

/// Reads an anchor's text under `magic`; every deviation from [`render`]'s output is corruption.
fn parse_with(magic: &str, text: &str) -> Result<Anchor, AnchorError> {
    let mut lines = text.split_inclusive('\n');
    let mut line = |name: &'static str| -> Result<&str, AnchorError> {
        lines
            .next()
            .and_then(|l| l.strip_suffix('\n'))
            .ok_or(AnchorError::Corrupt(name))
    };
    if line("no header")? != magic {
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
    if sha256(body(magic, &anchor).as_bytes()) != check {
        return Err(AnchorError::Corrupt("the checksum does not match"));
    }
    Ok(anchor)
}

/// Reads one slot: its text, then zero bytes to its end.
fn parse_slot(bytes: &[u8]) -> Result<Anchor, AnchorError> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    if bytes[end..].iter().any(|b| *b != 0) {
        return Err(AnchorError::Corrupt("text after the padding"));
    }
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| AnchorError::Corrupt("not text"))?;
    parse_with(MAGIC, text)
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

/// Reads an anchor file's bytes.
fn parse(bytes: &[u8]) -> Result<Found, AnchorError> {
    if bytes.len() == 2 * SLOT {
        let slots = [parse_slot(&bytes[..SLOT]), parse_slot(&bytes[SLOT..])];
        return match slots {
            [Ok(a), Ok(b)] if a.count == b.count && a.head != b.head => Err(AnchorError::Corrupt(
                "its two slots record different entries as the same one",
            )),
            [Ok(a), Ok(b)] => {
                let slot = usize::from(b.count > a.count);
                Ok(Found {
                    anchor: [a, b][slot],
                    interrupted: false,
                    slot: Some(slot),
                })
            }
            [Ok(anchor), Err(_)] | [Err(_), Ok(anchor)] => Ok(Found {
                anchor,
                interrupted: true,
                slot: Some(usize::from(slots[0].is_err())),
            }),
            [Err(e), Err(_)] => Err(e),
        };
    }
    let text = std::str::from_utf8(bytes).map_err(|_| AnchorError::Corrupt("not text"))?;
    if text.starts_with(MAGIC_1) {
        return parse_with(MAGIC_1, text).map(|anchor| Found {
            anchor,
            interrupted: false,
            slot: None,
        });
    }
    Err(AnchorError::Corrupt("not an anchor of this version"))
}

/// The anchor in `dir`, or `None` when there is no file.
pub(crate) fn read(dir: &Path) -> Result<Option<Found>, AnchorError> {
    let file = match std::fs::File::open(dir.join(FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AnchorError::Unreadable(e.to_string())),
    };
    let mut bytes = Vec::with_capacity(2 * SLOT);
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| AnchorError::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(AnchorError::Corrupt("the file is too large"));
    }
    parse(&bytes).map(Some)
}

/// Moves the anchor in `dir` to `anchor`: in place, over the slot that does not hold the newest
/// anchor, synced before it returns; a new file (or one of version 1) is written whole and
/// renamed into place. A crash may undo or tear the in-place write, leaving the previous
/// anchor, which the chain then passes through and goes on from — the window between sled's
/// flush and the anchor's write that the ledger counts and moves the anchor over (never fewer
/// entries than an anchor names). A file that holds no readable anchor is left as it is, for
/// the ledger to find damaged. The caller holds the ledger's lock, so no other writer uses the
/// file.
pub(crate) fn write(dir: &Path, anchor: &Anchor) -> std::io::Result<()> {
    let path = dir.join(FILE);
    match read(dir) {
        Ok(Some(Found {
            slot: Some(newest), ..
        })) => {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let other = 1 - newest;
            file.write_all_at(&slot_bytes(anchor), (other * SLOT) as u64)?;
            file.sync_data()
        }
        Ok(_) => replace(dir, anchor),
        Err(e) => Err(std::io::Error::other(format!(
            "the anchor file holds no readable anchor ({e}); it is left as it is"
        ))),
    }
}

/// Writes a whole new file, both slots holding `anchor`, and renames it into place, the
/// directory synced (entries without any anchor are damage, and the writes in place that
/// follow are to this file).
fn replace(dir: &Path, anchor: &Anchor) -> std::io::Result<()> {
    let temporary = dir.join(TEMPORARY);
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&file_bytes(anchor, anchor))?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(count: u64) -> Anchor {
        Anchor {
            count,
            head: sha256(format!("entry {count}").as_bytes()),
        }
    }

    #[test]
    fn a_slot_reads_back_and_every_altered_byte_is_refused() {
        let a = anchor(36);
        let slot = slot_bytes(&a);
        assert_eq!(parse_slot(&slot), Ok(a));
        // The checksum line is SHA-256 over the first three lines, by an independent route:
        // the well-known digest of the empty string checks that `sha256` is SHA-256 at all.
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let text = render(&a);
        assert!(text.starts_with("treaty privacy ledger anchor 2\ncount 36\nhead "));
        // Every bit of every byte, padding included.
        for i in 0..SLOT {
            for bit in 0..8 {
                let mut altered = slot;
                altered[i] ^= 1 << bit;
                assert!(parse_slot(&altered).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(parse_slot(&[0u8; SLOT]).is_err());
    }

    #[test]
    fn writes_alternate_slots_in_place_and_the_newest_readable_slot_is_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        write(dir.path(), &anchor(1)).unwrap();
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, file_bytes(&anchor(1), &anchor(1)));
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = inode(&path);
        for count in 2..=5 {
            write(dir.path(), &anchor(count)).unwrap();
            let found = read(dir.path()).unwrap().unwrap();
            assert_eq!((found.anchor, found.interrupted), (anchor(count), false));
            // The previous anchor is in the other slot.
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), 2 * SLOT);
            let slots = [parse_slot(&bytes[..SLOT]), parse_slot(&bytes[SLOT..])];
            let mut counts: Vec<u64> = slots.iter().map(|s| s.clone().unwrap().count).collect();
            counts.sort();
            assert_eq!(counts, [count - 1, count]);
        }
        // In place: the same file throughout, no temporary left.
        assert_eq!(inode(&path), first);
        assert!(!dir.path().join(TEMPORARY).exists());
    }

    #[test]
    fn an_interrupted_write_leaves_the_other_slot_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // 7 and 8 in either order: the write of 9 goes over 7's slot.
        for (bytes, older) in [
            (file_bytes(&anchor(7), &anchor(8)), 0),
            (file_bytes(&anchor(8), &anchor(7)), 1),
        ] {
            // Cut after the first byte that differs (the count's digit, byte 37) and before
            // the last (in the checksum).
            for cut in [38, 100, 170] {
                // Torn anywhere: 8 is read, and the write is known to have been interrupted.
                let mut torn = bytes.clone();
                let at = older * SLOT;
                torn[at..at + cut].copy_from_slice(&slot_bytes(&anchor(9))[..cut]);
                std::fs::write(&path, &torn).unwrap();
                let found = read(dir.path()).unwrap().unwrap();
                assert_eq!(
                    (found.anchor, found.interrupted),
                    (anchor(8), true),
                    "cut {cut}"
                );
                // The next write goes over the torn slot, and the file is whole again.
                write(dir.path(), &anchor(9)).unwrap();
                let found = read(dir.path()).unwrap().unwrap();
                assert_eq!((found.anchor, found.interrupted), (anchor(9), false));
                let now = std::fs::read(&path).unwrap();
                assert_eq!(
                    parse_slot(&now[(1 - older) * SLOT..][..SLOT]),
                    Ok(anchor(8))
                );
            }
        }
    }

    #[test]
    fn unreadable_slots_and_disagreeing_ones_are_corrupt_and_left_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut both = file_bytes(&anchor(3), &anchor(4));
        both[10] ^= 1;
        both[SLOT + 10] ^= 1;
        std::fs::write(&path, &both).unwrap();
        assert!(matches!(read(dir.path()), Err(AnchorError::Corrupt(_))));
        assert!(write(dir.path(), &anchor(5)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), both);
        let mut other = anchor(4);
        other.head = sha256(b"another fourth entry");
        std::fs::write(&path, file_bytes(&anchor(4), &other)).unwrap();
        assert!(matches!(read(dir.path()), Err(AnchorError::Corrupt(_))));
        std::fs::write(&path, vec![b'a'; 3 * SLOT]).unwrap();
        assert_eq!(
            read(dir.path()),
            Err(AnchorError::Corrupt("the file is too large"))
        );
    }

    #[test]
    fn a_file_of_version_1_is_read_and_replaced_by_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // Version 1, as the previous release wrote it, by hand.
        let body = format!(
            "treaty privacy ledger anchor 1\ncount 12\nhead {}\n",
            hex(&anchor(12).head)
        );
        let text = format!("{body}check {}\n", hex(&sha256(body.as_bytes())));
        std::fs::write(&path, &text).unwrap();
        let found = read(dir.path()).unwrap().unwrap();
        assert_eq!((found.anchor, found.interrupted), (anchor(12), false));
        // Altered, it is corrupt.
        std::fs::write(&path, text.replace("count 12", "count 13")).unwrap();
        assert!(read(dir.path()).is_err());
        std::fs::write(&path, &text).unwrap();
        write(dir.path(), &anchor(13)).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            file_bytes(&anchor(13), &anchor(13))
        );
    }
}

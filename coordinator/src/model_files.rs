//! Large model versions, each in a file of its own under the data directory's `models/`,
//! named by its SHA-256 and written durably (synced, renamed into place, the directory synced)
//! before the store records it ([`crate::store::Store::put_model`]).
//!
//! Why not sled: sled 0.34 kept every value it wrote in memory, whatever its cache capacity,
//! until far more reads than a coordinator makes, so a large model held the coordinator's
//! memory by one more version every round (W2: 8 MB a round); and it does not sync the blob
//! files it keeps large values in. Here the version written last is kept in memory (every
//! agency of a round downloads it) and one other, the version read from disk last; a file is
//! checked against its recorded size and SHA-256 whenever it is read from disk.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A model version encoded in more bytes than this is kept in a file of its own, not in sled
/// (whose log keeps smaller values, synced with every flush).
pub(crate) const INLINE_MODEL_BYTES: usize = 64 << 10;

/// The directory of the model files, in the data directory.
pub(crate) const MODEL_DIR: &str = "models";

/// The store's record of a model version kept in a file: the file's SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelFileRef {
    /// The SHA-256 of the file (lowercase hex), which also names it.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

impl ModelFileRef {
    /// The record as stored (JSON).
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record, checked: its hash must be one (it names a file in `models/`).
    pub(crate) fn decode(record: &[u8]) -> Result<Self, String> {
        let file: ModelFileRef = serde_json::from_slice(record)
            .map_err(|e| format!("the record naming its file is not readable: {e}"))?;
        let hex = file.sha256.len() == 64
            && file
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match hex {
            true => Ok(file),
            false => Err(format!(
                "the record naming its file holds `{}`, which is not a SHA-256",
                file.sha256
            )),
        }
    }

    /// The file's name in `models/`.
    pub(crate) fn name(&self) -> String {
        format!("{}.model", self.sha256)
    }
}

/// A version's encoding in memory, by its SHA-256.
type Held = Option<(String, Bytes)>;

/// The model files of a data directory.
#[derive(Debug)]
pub(crate) struct ModelFiles {
    dir: PathBuf,
    /// The version written last.
    written: Mutex<Held>,
    /// The version read from disk last.
    read: Mutex<Held>,
    /// Held while a file is read from disk: the downloads of one version read it once.
    reading: Mutex<()>,
}

impl ModelFiles {
    /// The model files of the data directory `data_dir`: `models/` is created if missing, and
    /// a file left half-written by a crash (`.part`, never named by a record) is removed.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, (PathBuf, std::io::Error)> {
        let dir = data_dir.join(MODEL_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
        sync_dir(data_dir).map_err(|e| (data_dir.to_owned(), e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| (dir.clone(), e))? {
            let path = entry.map_err(|e| (dir.clone(), e))?.path();
            if path.extension().is_some_and(|e| e == "part") {
                std::fs::remove_file(&path).map_err(|e| (path.clone(), e))?;
                tracing::info!(file = %path.display(), "removed a model file a crash left half-written");
            }
        }
        Ok(ModelFiles {
            dir,
            written: Mutex::new(None),
            read: Mutex::new(None),
            reading: Mutex::new(()),
        })
    }

    /// Writes `encoded` to its file so that a crash or power failure leaves either the whole
    /// file or none under its name (written to a `.part` file, synced, renamed, the directory
    /// synced), keeps it as the version written last, and returns its record. Which file
    /// failed, when one did.
    pub(crate) fn write(
        &self,
        encoded: Vec<u8>,
    ) -> Result<ModelFileRef, (PathBuf, std::io::Error)> {
        let file = ModelFileRef {
            sha256: treaty_proto::hex::sha256_hex(&encoded),
            bytes: encoded.len() as u64,
        };
        let path = self.dir.join(file.name());
        let part = path.with_extension("part");
        let written = std::fs::File::create(&part).and_then(|mut f| {
            f.write_all(&encoded)?;
            f.sync_data()
        });
        written.map_err(|e| (part.clone(), e))?;
        std::fs::rename(&part, &path).map_err(|e| (path.clone(), e))?;
        sync_dir(&self.dir).map_err(|e| (self.dir.clone(), e))?;
        *lock(&self.written) = Some((file.sha256.clone(), encoded.into()));
        *lock(&self.read) = None;
        Ok(file)
    }

    /// The encoding `file` records: from memory, or from its file, checked against the
    /// record's size and SHA-256. What is wrong with the file otherwise, and what to do.
    pub(crate) fn read(&self, file: &ModelFileRef) -> Result<Bytes, String> {
        let held = |slot: &Mutex<Held>| match &*lock(slot) {
            Some((sha256, encoded)) if *sha256 == file.sha256 => Some(encoded.clone()),
            _ => None,
        };
        if let Some(encoded) = held(&self.written).or_else(|| held(&self.read)) {
            return Ok(encoded);
        }
        let _reading = lock(&self.reading);
        if let Some(encoded) = held(&self.written).or_else(|| held(&self.read)) {
            return Ok(encoded);
        }
        let encoded = self.read_from_disk(file)?;
        *lock(&self.read) = Some((file.sha256.clone(), encoded.clone()));
        Ok(encoded)
    }

    fn read_from_disk(&self, file: &ModelFileRef) -> Result<Bytes, String> {
        const RESTORE: &str = "restore the data directory's `models/` from a backup";
        let unreadable = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => format!("the file is missing: {RESTORE}"),
            _ => format!("the file cannot be read: {e}"),
        };
        let path = self.dir.join(file.name());
        // Checked before it is opened too: opening a named pipe would wait for a writer.
        if !std::fs::metadata(&path).map_err(unreadable)?.is_file() {
            return Err(format!("it is not a regular file: {RESTORE}"));
        }
        let mut opened = std::fs::File::open(&path).map_err(unreadable)?;
        let meta = opened.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(format!("it is not a regular file: {RESTORE}"));
        }
        if meta.len() != file.bytes {
            return Err(format!(
                "the file has {} bytes, its record says {}: it was cut short or altered; {RESTORE}",
                meta.len(),
                file.bytes
            ));
        }
        let mut encoded = Vec::with_capacity(usize::try_from(file.bytes).unwrap_or(0));
        (&mut opened)
            .take(file.bytes)
            .read_to_end(&mut encoded)
            .map_err(unreadable)?;
        let sha256 = treaty_proto::hex::sha256_hex(&encoded);
        if sha256 != file.sha256 || encoded.len() as u64 != file.bytes {
            return Err(format!(
                "the file's SHA-256 is {sha256}, its record says {}: it was altered or damaged; {RESTORE}",
                file.sha256
            ));
        }
        Ok(encoded.into())
    }

    /// The model files' size on disk, in bytes.
    pub(crate) fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

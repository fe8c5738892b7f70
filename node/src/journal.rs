//! The node's journal of releases, in sled: every result that leaves the node is recorded
//! durably *before* it is sent (write-ahead), so the agency can always say what it released,
//! when, for which job and round. A crash between the record and the send over-reports a release;
//! it never under-reports one.
//!
//! This module alone touches the node's database.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// One release of data-derived values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub time_unix_ms: i64,
    pub task_id: String,
    pub job_id: String,
    pub federation: String,
    pub round: u32,
    /// `training` or `query`.
    pub kind: String,
    /// Records the released values were computed from.
    pub num_examples: u64,
    /// The released tensors as `name[shape]`.
    pub tensors: Vec<String>,
    /// The coordinator it was sent to.
    pub recipient: String,
}

/// The journal.
#[derive(Debug, Clone)]
pub struct Journal {
    db: sled::Db,
    releases: sled::Tree,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| NodeError::OpenStore {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Journal {
            releases: db.open_tree("releases")?,
            db,
        })
    }

    /// Records a release and flushes it to disk before returning.
    pub fn record(&self, release: &Release) -> Result<(), NodeError> {
        let key = self.db.generate_id()?.to_be_bytes();
        let value = serde_json::to_vec(release)
            .map_err(|e| NodeError::Protocol(format!("cannot encode a release: {e}")))?;
        self.releases.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every release, oldest first. An unreadable entry is an error, never skipped.
    pub fn releases(&self) -> Result<Vec<Release>, NodeError> {
        self.releases
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v)
                    .map_err(|e| NodeError::Protocol(format!("a journal entry is corrupt: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let release = Release {
            time_unix_ms: 7,
            task_id: "job-000001-r1-DE-BKA".into(),
            job_id: "job-000001".into(),
            federation: "f".into(),
            round: 1,
            kind: "training".into(),
            num_examples: 100,
            tensors: vec!["weights[8]".into(), "bias[]".into()],
            recipient: "treaty://coordinator/hub".into(),
        };
        Journal::open(dir.path()).unwrap().record(&release).unwrap();
        assert_eq!(
            Journal::open(dir.path()).unwrap().releases().unwrap(),
            vec![release]
        );
    }
}

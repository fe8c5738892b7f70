//! The agencies whose nodes hold a session now, and the outbox of each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tonic::Status;
use treaty_proto::v1::{ConnectedAgency, CoordinatorMessage, DatasetSummary};

/// Where messages for one node's session go.
pub type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// One open session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub country: String,
    pub outbox: Outbox,
    pub connected_unix_ms: i64,
    pub software_version: String,
    pub datasets: Vec<DatasetSummary>,
}

/// The open sessions, one per agency.
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // The map is always left whole, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session, replacing (and so closing) an older one of the same agency.
    pub fn register(&self, agency: &str, session: Session) {
        let old = self.lock().insert(agency.to_owned(), session);
        if old.is_some() {
            tracing::info!(agency, "a new session replaces the previous one");
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Removes a session, unless a newer one of the agency replaced it already.
    pub fn unregister(&self, agency: &str, id: u64) {
        let mut map = self.lock();
        if map.get(agency).is_some_and(|s| s.id == id) {
            map.remove(agency);
            drop(map);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The outbox of an agency's session, if it has one.
    pub fn outbox(&self, agency: &str) -> Option<Outbox> {
        self.lock().get(agency).map(|s| s.outbox.clone())
    }

    /// The country of a connected agency, from its certificate.
    pub fn country(&self, agency: &str) -> Option<String> {
        self.lock().get(agency).map(|s| s.country.clone())
    }

    /// Whether an agency holds a session.
    pub fn is_connected(&self, agency: &str) -> bool {
        self.lock().contains_key(agency)
    }

    /// The connected agencies, sorted by id.
    pub fn connected(&self) -> Vec<ConnectedAgency> {
        let mut out: Vec<ConnectedAgency> = self
            .lock()
            .iter()
            .map(|(agency, s)| ConnectedAgency {
                agency: agency.clone(),
                country: s.country.clone(),
                connected_unix_ms: s.connected_unix_ms,
                software_version: s.software_version.clone(),
                datasets: s.datasets.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.agency.cmp(&b.agency));
        out
    }

    /// Notified whenever a session opens or closes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Closes every session (at shutdown): their streams end.
    pub fn close_all(&self) {
        self.lock().clear();
        self.changed.send_modify(|n| *n += 1);
    }
}

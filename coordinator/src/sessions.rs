//! The agencies whose nodes hold a session now, and the outbox of each. An agency is its
//! certificate's identity, country and id together: `treaty://agency/NL/DE-BKA` is not
//! `treaty://agency/DE/DE-BKA` and never holds, replaces or closes its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tonic::Status;
use treaty_proto::v1::{
    ConnectedAgency, CoordinatorMessage, DatasetSummary, RoundTerms, Task, coordinator_message,
};
use treaty_proto::{Identity, participants};

/// Where messages for one node's session go.
pub(crate) type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// One open session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: u64,
    pub outbox: Outbox,
    /// The round participants this session was last sent in full, when its node takes them
    /// by digest (its `Hello` said so): tasks are sent through it ([`Sessions::send_task`]),
    /// one at a time, so that the node receives the lists in the order this remembers them.
    pub participants: Option<Arc<tokio::sync::Mutex<participants::Sent>>>,
    pub connected_unix_ms: i64,
    pub software_version: String,
    pub datasets: Vec<DatasetSummary>,
}

/// The open sessions, one per agency identity.
#[derive(Debug)]
pub(crate) struct Sessions {
    inner: Mutex<HashMap<Identity, Session>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Session>> {
        // The map is always left whole, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh session id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session, replacing (and so closing) an older one of the same agency.
    pub(crate) fn register(&self, agency: &Identity, session: Session) {
        let old = self.lock().insert(agency.clone(), session);
        if old.is_some() {
            tracing::info!(%agency, "a new session replaces the previous one");
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Removes a session, unless a newer one of the agency replaced it already.
    pub(crate) fn unregister(&self, agency: &Identity, id: u64) {
        let mut map = self.lock();
        if map.get(agency).is_some_and(|s| s.id == id) {
            map.remove(agency);
            drop(map);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The outbox of an agency's session, if it has one.
    pub(crate) fn outbox(&self, agency: &Identity) -> Option<Outbox> {
        self.lock().get(agency).map(|s| s.outbox.clone())
    }

    /// Sends `task` to an agency's session, its terms being `full` or, when the session was
    /// last sent the same participants, `bare` (naming them by their digest: see
    /// `treaty_proto::participants`). False when the agency holds no session or it closed.
    pub(crate) async fn send_task(
        &self,
        agency: &Identity,
        mut task: Task,
        full: &RoundTerms,
        bare: &RoundTerms,
    ) -> bool {
        let Some((outbox, sent)) = self
            .lock()
            .get(agency)
            .map(|s| (s.outbox.clone(), s.participants.clone()))
        else {
            return false;
        };
        // Held until the task is in the outbox: the session's tasks go out in the order their
        // lists are noted.
        let mut sent = match &sent {
            Some(sent) => Some(sent.lock().await),
            None => None,
        };
        let named = sent.as_ref().is_some_and(|s| s.knows(bare));
        task.terms = Some(if named { bare } else { full }.clone());
        let message = CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Task(task)),
        };
        let delivered = outbox.send(Ok(message)).await.is_ok();
        if let (true, false, Some(sent)) = (delivered, named, sent.as_mut()) {
            sent.sent(bare);
        }
        delivered
    }

    /// Whether an agency holds a session.
    pub(crate) fn is_connected(&self, agency: &Identity) -> bool {
        self.lock().contains_key(agency)
    }

    /// How many agencies hold a session.
    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }

    /// One page of the connected agencies, sorted by id and then country: those after the
    /// member form `after` (`AGENCY-ID:CC`, empty: from the first), at most `max` of them and
    /// at most `max_bytes` encoded (but always at least one, so that paging goes forward).
    /// Returns the page and whether more follow.
    pub(crate) fn page(
        &self,
        after: &str,
        max: usize,
        max_bytes: usize,
    ) -> (Vec<ConnectedAgency>, bool) {
        let mut keyed: Vec<((String, String), ConnectedAgency)> = self
            .lock()
            .iter()
            .filter_map(|(identity, s)| match identity {
                Identity::Agency { country, agency } => Some((
                    (agency.clone(), country.clone()),
                    ConnectedAgency {
                        agency: agency.clone(),
                        country: country.clone(),
                        connected_unix_ms: s.connected_unix_ms,
                        software_version: s.software_version.clone(),
                        datasets: s.datasets.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let start = match after.split_once(':') {
            Some((agency, country)) => {
                let key = (agency.to_owned(), country.to_owned());
                keyed.partition_point(|(k, _)| *k <= key)
            }
            None => 0,
        };
        crate::paging::take_page(
            keyed.into_iter().skip(start).map(|(_, a)| a),
            max,
            max_bytes,
        )
    }

    /// Notified whenever a session opens or closes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Closes every session (at shutdown): their streams end.
    pub(crate) fn close_all(&self) {
        self.lock().clear();
        self.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64) -> Session {
        Session {
            participants: None,
            id,
            outbox: mpsc::channel(1).0,
            connected_unix_ms: 0,
            software_version: "0.1.0".into(),
            datasets: vec![],
        }
    }

    #[test]
    fn one_agency_id_in_two_countries_holds_two_sessions() {
        let sessions = Sessions::default();
        let de = Identity::agency("DE", "DE-BKA").unwrap();
        let impostor = Identity::agency("NL", "DE-BKA").unwrap();
        sessions.register(&de, session(1));
        sessions.register(&impostor, session(2));
        assert_eq!(sessions.count(), 2);
        // Closing the impostor's session leaves Germany's.
        sessions.unregister(&impostor, 2);
        assert!(sessions.is_connected(&de) && !sessions.is_connected(&impostor));
        // An old session's end does not close the newer one of the same agency.
        sessions.register(&de, session(3));
        sessions.unregister(&de, 1);
        assert!(sessions.is_connected(&de));
    }

    #[test]
    fn pages_follow_id_then_country() {
        let sessions = Sessions::default();
        for (i, (country, agency)) in [("NL", "DE-BKA"), ("FR", "FR-DOUANE"), ("DE", "DE-BKA")]
            .into_iter()
            .enumerate()
        {
            sessions.register(
                &Identity::agency(country, agency).unwrap(),
                session(i as u64),
            );
        }
        let names = |page: &[ConnectedAgency]| -> Vec<String> {
            page.iter()
                .map(|a| format!("{}:{}", a.agency, a.country))
                .collect()
        };
        let (page, more) = sessions.page("", 2, usize::MAX);
        assert_eq!(
            (names(&page), more),
            (vec!["DE-BKA:DE".into(), "DE-BKA:NL".into()], true)
        );
        let (page, more) = sessions.page("DE-BKA:NL", 2, usize::MAX);
        assert_eq!((names(&page), more), (vec!["FR-DOUANE:FR".into()], false));
        let (page, more) = sessions.page("FR-DOUANE:FR", 2, usize::MAX);
        assert!(page.is_empty() && !more);
    }
}

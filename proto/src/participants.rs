//! A round's participants sent once per session. Every task carries the round's terms, whose
//! participants a node checks against its own policy; in a federation of 1,000 agencies the
//! list is 1,000 names, and sending it with every task of every round made a round's traffic
//! grow with the square of the agencies. The coordinator sends the list in full on a session
//! once, and after that, while it stays the same, only its SHA-256 ([`digest`]); the node
//! remembers the last list its session carried ([`Remembered`]) and puts it back into the
//! terms before anything reads them, so the terms it judges, hashes and records are the full
//! ones either way. A digest the node was not sent is refused, never guessed.

use prost::Message;

use crate::v1::{RoundParticipant, RoundTerms};

/// The SHA-256 of a list of participants: of each, encoded length-delimited, in order.
pub fn digest(participants: &[RoundParticipant]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for p in participants {
        // Writing into a Vec cannot fail.
        let _ = p.encode_length_delimited(&mut bytes);
    }
    ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .to_vec()
}

/// Why a task's participants cannot be known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unknown {
    #[error(
        "the task's terms name their participants by SHA-256 {0}, but this session was sent no list of participants yet"
    )]
    NoneSent(String),
    #[error(
        "the task's terms name their participants by SHA-256 {named}, but the last list this session was sent has SHA-256 {sent}"
    )]
    Other { named: String, sent: String },
    #[error(
        "the task's terms carry participants whose SHA-256 is {carried}, not the {named} they name"
    )]
    Mismatch { carried: String, named: String },
}

/// The last list of participants a session carried, on the node's side.
#[derive(Debug, Default)]
pub struct Remembered {
    last: Option<(Vec<u8>, Vec<RoundParticipant>)>,
}

impl Remembered {
    /// Completes `terms` as they arrived on the session: a full list is remembered (and, when
    /// the terms also name a digest, must match it); a digest alone is replaced by the list it
    /// names. The digest is cleared either way, so that the terms read afterwards are the
    /// ones the round was decided under.
    pub fn complete(&mut self, terms: &mut RoundTerms) -> Result<(), Unknown> {
        let named = std::mem::take(&mut terms.participants_sha256);
        if !terms.participants.is_empty() {
            let carried = digest(&terms.participants);
            if !named.is_empty() && named[..] != carried[..] {
                return Err(Unknown::Mismatch {
                    carried: crate::hex::hex(&carried),
                    named: crate::hex::hex(&named),
                });
            }
            self.last = Some((carried, terms.participants.clone()));
            return Ok(());
        }
        if named.is_empty() {
            // No participants at all: the policy check says what is wrong with that.
            return Ok(());
        }
        match &self.last {
            Some((sent, list)) if sent[..] == named[..] => {
                terms.participants = list.clone();
                Ok(())
            }
            Some((sent, _)) => Err(Unknown::Other {
                named: crate::hex::hex(&named),
                sent: crate::hex::hex(sent),
            }),
            None => Err(Unknown::NoneSent(crate::hex::hex(&named))),
        }
    }
}

/// What the coordinator last sent on one session, on its side.
#[derive(Debug, Default)]
pub struct Sent {
    last: Option<Vec<u8>>,
}

impl Sent {
    /// The terms to send on this session: `bare` (the terms without participants, naming them
    /// by `digest`) when this session was last sent the list of that digest, else `full`, which
    /// the session then remembers. The caller sends what this returns, in order.
    pub fn terms<'t>(&mut self, full: &'t RoundTerms, bare: &'t RoundTerms) -> &'t RoundTerms {
        if full.participants.is_empty() {
            return full;
        }
        if self.last.as_deref() == Some(&bare.participants_sha256[..]) {
            return bare;
        }
        self.last = Some(bare.participants_sha256.to_vec());
        full
    }
}

/// `full` without its participants, naming them by their digest.
pub fn bare(full: &RoundTerms) -> RoundTerms {
    RoundTerms {
        participants: Vec::new(),
        participants_sha256: digest(&full.participants).into(),
        ..full.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(agency: &str, country: &str) -> RoundParticipant {
        RoundParticipant {
            agency: agency.into(),
            country: country.into(),
        }
    }

    fn terms(participants: Vec<RoundParticipant>) -> RoundTerms {
        RoundTerms {
            purpose: "counter-trafficking".into(),
            epsilon_per_round: 0.25,
            participants,
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_length_delimited_participants() {
        // By hand: a participant `a`/`DE` is field 1 "a" (0a 01 61) and field 2 "DE"
        // (12 02 44 45), 7 bytes, preceded by its length 07.
        let bytes = [0x07, 0x0a, 0x01, b'a', 0x12, 0x02, b'D', b'E'];
        assert_eq!(
            digest(&[participant("a", "DE")]),
            ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()
        );
        // Order and content count.
        let (x, y) = (participant("a", "DE"), participant("b", "FR"));
        assert_ne!(digest(&[x.clone(), y.clone()]), digest(&[y, x]));
        assert_ne!(digest(&[participant("a", "DE")]), digest(&[]));
    }

    #[test]
    fn a_list_is_sent_once_and_named_after_while_it_stays_the_same() {
        let list = vec![participant("DE-BKA", "DE"), participant("FR-DGDDI", "FR")];
        let full = terms(list.clone());
        let bare = bare(&full);
        let mut sent = Sent::default();
        let mut remembered = Remembered::default();
        let mut received = Vec::new();
        for _ in 0..3 {
            let mut arriving = sent.terms(&full, &bare).clone();
            received.push(arriving.participants.len());
            remembered.complete(&mut arriving).unwrap();
            // The node reads the very terms the round was decided under.
            assert_eq!(arriving, full);
        }
        assert_eq!(received, [2, 0, 0]);
        // Another list goes in full, and is what a digest names from then on.
        let other = terms(vec![participant("NL-FIOD", "NL")]);
        let other_bare = super::bare(&other);
        let mut arriving = sent.terms(&other, &other_bare).clone();
        assert_eq!(arriving.participants.len(), 1);
        remembered.complete(&mut arriving).unwrap();
        let mut arriving = sent.terms(&other, &other_bare).clone();
        assert!(arriving.participants.is_empty());
        remembered.complete(&mut arriving).unwrap();
        assert_eq!(arriving, other);
        // A digest of the earlier list is no longer known.
        let mut stale = bare.clone();
        assert!(matches!(
            remembered.complete(&mut stale),
            Err(Unknown::Other { .. })
        ));
    }

    #[test]
    fn a_digest_the_session_was_not_sent_or_that_does_not_match_is_refused() {
        let full = terms(vec![participant("DE-BKA", "DE")]);
        // A fresh session knows no list: a hostile or confused coordinator cannot make a node
        // judge a round whose participants it never saw.
        let mut fresh = Remembered::default();
        let mut named = bare(&full);
        let error = fresh.complete(&mut named).unwrap_err();
        assert!(matches!(error, Unknown::NoneSent(_)));
        assert!(error.to_string().contains("sent no list"), "{error}");
        // A list with a digest that is not its own.
        let mut lying = full.clone();
        lying.participants_sha256 = digest(&[participant("FR-DGDDI", "FR")]).into();
        assert!(matches!(
            fresh.complete(&mut lying),
            Err(Unknown::Mismatch { .. })
        ));
        // Terms with no participants and no digest are passed on as they are (the policy
        // check refuses them: the node is not among the participants).
        let mut empty = terms(Vec::new());
        fresh.complete(&mut empty).unwrap();
        assert!(empty.participants.is_empty());
    }
}

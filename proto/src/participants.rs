//! A round's participants sent once per session. Every task carries the round's terms, whose
//! participants a node checks against its own policy; in a federation of 1,000 agencies the
//! list is 1,000 names, and sending it with every task of every round made a round's traffic
//! grow with the square of the agencies. To a node whose `Hello` says `participants_by_digest`,
//! the coordinator sends the list in full on a session once, and after that, while it stays the
//! same, only its SHA-256 ([`digest`]); the node remembers the last list its session carried
//! ([`Remembered`]) and puts it back into the terms before anything reads them ([`restore`]),
//! so the terms it judges, hashes and records are the full ones either way. A digest the node
//! was not sent is refused, never guessed.

use std::sync::Arc;

use crate::v1::{RoundParticipant, RoundTerms};

/// The bytes of a SHA-256.
const DIGEST_BYTES: usize = 32;

/// The SHA-256 of a list of participants: of each one's agency and country, in order, each
/// string preceded by its length in bytes (8 bytes, big-endian). Written out here rather than
/// taken from the messages' encoding, so that a field added to `RoundParticipant` later leaves
/// it as it is.
pub fn digest(participants: &[RoundParticipant]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for p in participants {
        for text in [&p.agency, &p.country] {
            context.update(&(text.len() as u64).to_be_bytes());
            context.update(text.as_bytes());
        }
    }
    context.finish().as_ref().to_vec()
}

/// Why a task's participants cannot be known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unknown {
    #[error("the task's terms name their participants by {0} bytes, which is not a SHA-256")]
    NotADigest(usize),
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
    last: Option<(Vec<u8>, Arc<Vec<RoundParticipant>>)>,
}

impl Remembered {
    /// Reads the participants of `terms` as they arrive on the session, in order: a full list is
    /// remembered (and, when the terms also name a digest, must match it); a digest alone is
    /// answered with the list it names, to [`restore`] when the task is carried out (a list
    /// shared, not copied, while the task waits its turn). The digest is cleared once known; a
    /// digest that cannot be known is left in the terms, as they came.
    pub fn take(
        &mut self,
        terms: &mut RoundTerms,
    ) -> Result<Option<Arc<Vec<RoundParticipant>>>, Unknown> {
        let named = &terms.participants_sha256;
        if !named.is_empty() && named.len() != DIGEST_BYTES {
            return Err(Unknown::NotADigest(named.len()));
        }
        let named_hex = || crate::hex::hex(named);
        if !terms.participants.is_empty() {
            let carried = digest(&terms.participants);
            if !named.is_empty() && named[..] != carried[..] {
                return Err(Unknown::Mismatch {
                    carried: crate::hex::hex(&carried),
                    named: named_hex(),
                });
            }
            terms.participants_sha256 = Default::default();
            self.last = Some((carried, Arc::new(terms.participants.clone())));
            return Ok(None);
        }
        if named.is_empty() {
            // No participants at all: the policy check says what is wrong with that.
            return Ok(None);
        }
        match &self.last {
            Some((sent, list)) if sent[..] == named[..] => {
                let list = Arc::clone(list);
                terms.participants_sha256 = Default::default();
                Ok(Some(list))
            }
            Some((sent, _)) => Err(Unknown::Other {
                named: named_hex(),
                sent: crate::hex::hex(sent),
            }),
            None => Err(Unknown::NoneSent(named_hex())),
        }
    }
}

/// Puts back into `terms` the participants [`Remembered::take`] answered for them.
pub fn restore(terms: &mut RoundTerms, participants: &[RoundParticipant]) {
    terms.participants = participants.to_vec();
}

/// What the coordinator last sent on one session, on its side.
#[derive(Debug, Default)]
pub struct Sent {
    last: Option<Vec<u8>>,
}

impl Sent {
    /// Whether `bare` ([`bare`]) may go instead of the full terms: this session was last sent
    /// the list it names.
    pub fn knows(&self, bare: &RoundTerms) -> bool {
        !bare.participants_sha256.is_empty()
            && self.last.as_deref() == Some(&bare.participants_sha256[..])
    }

    /// Notes that the full list `bare` names reached the session.
    pub fn sent(&mut self, bare: &RoundTerms) {
        self.last = Some(bare.participants_sha256.to_vec());
    }
}

/// `full` without its participants, naming them by their digest (`full` itself when it has
/// none: an empty list is never named).
pub fn bare(full: &RoundTerms) -> RoundTerms {
    if full.participants.is_empty() {
        return full.clone();
    }
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

    /// What a session delivers: the node takes the terms as they arrive and puts the list back.
    fn arrive(remembered: &mut Remembered, sent: &RoundTerms) -> Result<RoundTerms, Unknown> {
        let mut arriving = sent.clone();
        if let Some(list) = remembered.take(&mut arriving)? {
            restore(&mut arriving, &list);
        }
        Ok(arriving)
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_length_prefixed_names() {
        // By hand: `a`/`DE` is the length 1 in 8 bytes, `a`, the length 2, `DE`.
        let mut bytes = Vec::new();
        bytes.extend(1u64.to_be_bytes());
        bytes.push(b'a');
        bytes.extend(2u64.to_be_bytes());
        bytes.extend(b"DE");
        assert_eq!(
            digest(&[participant("a", "DE")]),
            ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()
        );
        // Order, content and where one name ends count.
        let (x, y) = (participant("a", "DE"), participant("b", "FR"));
        assert_ne!(digest(&[x.clone(), y.clone()]), digest(&[y, x]));
        assert_ne!(
            digest(&[participant("ab", "")]),
            digest(&[participant("a", "b")])
        );
        assert_ne!(digest(&[participant("a", "DE")]), digest(&[]));
    }

    #[test]
    fn a_list_is_sent_once_and_named_after_while_it_stays_the_same() {
        let list = vec![participant("DE-BKA", "DE"), participant("FR-DGDDI", "FR")];
        let full = terms(list.clone());
        let bare = bare(&full);
        let mut sent = Sent::default();
        let mut remembered = Remembered::default();
        let mut carried = Vec::new();
        for _ in 0..3 {
            let on_the_wire = match sent.knows(&bare) {
                true => bare.clone(),
                false => {
                    sent.sent(&bare);
                    full.clone()
                }
            };
            carried.push(on_the_wire.participants.len());
            // The node reads the very terms the round was decided under.
            assert_eq!(arrive(&mut remembered, &on_the_wire).unwrap(), full);
        }
        assert_eq!(carried, [2, 0, 0]);
        // Another list is not known until it reached the session in full.
        let other = terms(vec![participant("NL-FIOD", "NL")]);
        let other_bare = super::bare(&other);
        assert!(!sent.knows(&other_bare));
        sent.sent(&other_bare);
        assert_eq!(arrive(&mut remembered, &other).unwrap(), other);
        assert!(sent.knows(&other_bare) && !sent.knows(&bare));
        assert_eq!(arrive(&mut remembered, &other_bare).unwrap(), other);
        // An empty list is never named.
        let none = terms(Vec::new());
        assert_eq!(super::bare(&none), none);
        assert!(!sent.knows(&super::bare(&none)));
        // A digest of the earlier list is no longer known, and the terms stay as they came.
        let mut stale = bare.clone();
        assert!(matches!(
            remembered.take(&mut stale),
            Err(Unknown::Other { .. })
        ));
        assert_eq!(stale, bare);
    }

    #[test]
    fn a_digest_the_session_was_not_sent_or_that_does_not_match_is_refused() {
        let full = terms(vec![participant("DE-BKA", "DE")]);
        // A fresh session knows no list: a hostile or confused coordinator cannot make a node
        // judge a round whose participants it never saw.
        let mut fresh = Remembered::default();
        let error = arrive(&mut fresh, &bare(&full)).unwrap_err();
        assert!(matches!(error, Unknown::NoneSent(_)));
        assert!(error.to_string().contains("sent no list"), "{error}");
        // A list with a digest that is not its own.
        let mut lying = full.clone();
        lying.participants_sha256 = digest(&[participant("FR-DGDDI", "FR")]).into();
        assert!(matches!(
            arrive(&mut fresh, &lying),
            Err(Unknown::Mismatch { .. })
        ));
        // A "digest" of any other length is not echoed: the refusal stays short.
        let mut long = bare(&full);
        long.participants_sha256 = vec![7u8; 1 << 20].into();
        let error = arrive(&mut fresh, &long).unwrap_err();
        assert_eq!(error, Unknown::NotADigest(1 << 20));
        assert!(error.to_string().len() < 100, "{error}");
        // Terms with no participants and no digest are passed on as they are (the policy
        // check refuses them: the node is not among the participants).
        let empty = terms(Vec::new());
        assert_eq!(arrive(&mut fresh, &empty).unwrap(), empty);
    }
}

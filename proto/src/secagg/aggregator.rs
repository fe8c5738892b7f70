//! The coordinator's side of one round of secure aggregation: it relays keys and sealed shares,
//! adds up masked inputs as they arrive (one running sum modulo 2^64: the memory of one
//! contribution, whatever the number of agencies), and at the end recovers the masks from the
//! revealed shares and takes them away. What it holds is, by construction, never more than the
//! protocol gives it: public keys, ciphertexts it cannot open, masked inputs, and `t` shares of
//! each secret the protocol lets it recover.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::StaticSecret;

use super::participant::ordered;
use super::{KeyAdvert, Params, Reveal, SealedShare, SecAggError, SurvivorList, crypto, hex32};
use crate::receipt::{named, verify_agency_statement};
use crate::v1::SignedStatement;

/// Where the coordinator is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Keys,
    Shares,
    Inputs,
    Signatures,
    Reveals,
}

/// One round of secure aggregation at the coordinator.
#[derive(Debug)]
pub struct Aggregation {
    params: Params,
    stage: Stage,
    /// The signed advertisements, and each agency's advertisement, by agency: the first set.
    adverts: BTreeMap<String, (SignedStatement, KeyAdvert)>,
    /// The digest of the advertisements relayed (fixed when the key exchange closes).
    keys_digest: String,
    /// The sealed shares each agency sent, by sender: the second set.
    shares: BTreeMap<String, Vec<SealedShare>>,
    /// Who the shares were relayed among (fixed when the sharing closes).
    sharers: Vec<String>,
    /// The masked inputs' running sum and who it holds: the third set.
    sum: Vec<u64>,
    masked: BTreeSet<String>,
    survivors: Vec<String>,
    signatures: BTreeMap<String, SignedStatement>,
    reveals: BTreeMap<String, Reveal>,
}

impl Aggregation {
    /// A round of secure aggregation under `params`.
    pub fn new(params: Params) -> Result<Self, SecAggError> {
        params.check()?;
        Ok(Aggregation {
            sum: vec![0; params.length],
            params,
            stage: Stage::Keys,
            adverts: BTreeMap::new(),
            keys_digest: String::new(),
            shares: BTreeMap::new(),
            sharers: Vec::new(),
            masked: BTreeSet::new(),
            survivors: Vec::new(),
            signatures: BTreeMap::new(),
            reveals: BTreeMap::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    fn expect(&self, stage: Stage, from: &str, what: &str) -> Result<(), SecAggError> {
        if self.stage != stage {
            return Err(SecAggError::Peer {
                agency: from.to_owned(),
                problem: format!("{what} arrived while the round is at {:?}", self.stage),
            });
        }
        if self.params.id_of(from).is_none() {
            return Err(SecAggError::Peer {
                agency: from.to_owned(),
                problem: "it is not a participant of the round".into(),
            });
        }
        Ok(())
    }

    /// Takes `from`'s (its identity from its TLS certificate) signed key advertisement.
    pub fn advert(
        &mut self,
        from: &str,
        signed: SignedStatement,
        ca: &[u8],
    ) -> Result<(), SecAggError> {
        self.expect(Stage::Keys, from, "keys")?;
        let refuse = |problem: String| SecAggError::Peer {
            agency: from.to_owned(),
            problem,
        };
        // A repeat is refused before its signature costs anything.
        if self.adverts.contains_key(from) {
            return Err(refuse("it advertised keys twice".into()));
        }
        let (signer, advert): (_, KeyAdvert) =
            verify_agency_statement(&signed, ca).map_err(refuse)?;
        named(&advert.agency, &signer, "key advertisement").map_err(refuse)?;
        if signer.to_string() != from {
            return Err(refuse(format!("it relays {signer}'s keys as its own")));
        }
        if advert.job != self.params.job || advert.round != self.params.round {
            return Err(refuse("its keys are for another job or round".into()));
        }
        let (Some(cipher), Some(mask), Some(_)) = (
            hex32(&advert.cipher_key),
            hex32(&advert.mask_key),
            hex32(&advert.seed_commitment),
        ) else {
            return Err(refuse("its keys are not 32 bytes of hex".into()));
        };
        // A key of small order would make every other agency's agreement with it fail: one
        // agency could stop the round for all. Refused here, before it is relayed.
        if crypto::small_order(&cipher)? || crypto::small_order(&mask)? {
            return Err(refuse(
                "a key of small order, with which no secret can be agreed".into(),
            ));
        }
        self.adverts.insert(from.to_owned(), (signed, advert));
        Ok(())
    }

    /// The agencies whose keys were taken, in increasing order.
    pub fn advertisers(&self) -> Vec<String> {
        self.adverts.keys().cloned().collect()
    }

    /// The survivors whose signatures of the list were taken, in increasing order.
    pub fn signers(&self) -> Vec<String> {
        self.signatures.keys().cloned().collect()
    }

    /// Closes the key exchange: the advertisements to relay to every advertiser.
    pub fn close_keys(&mut self) -> Result<Vec<SignedStatement>, SecAggError> {
        self.at_least(self.adverts.len(), "the key exchange")?;
        self.keys_digest = super::keys_digest(self.adverts.values().map(|(_, a)| a));
        self.stage = Stage::Shares;
        Ok(self.adverts.values().map(|(s, _)| s.clone()).collect())
    }

    fn at_least(&self, have: usize, step: &'static str) -> Result<(), SecAggError> {
        match have >= self.params.threshold {
            true => Ok(()),
            false => Err(SecAggError::TooFew {
                step,
                have,
                need: self.params.threshold,
            }),
        }
    }

    /// Takes `from`'s sealed shares: one for each other advertiser, no more, no fewer.
    pub fn shares(&mut self, from: &str, sealed: Vec<SealedShare>) -> Result<(), SecAggError> {
        self.expect(Stage::Shares, from, "shares")?;
        let refuse = |problem: String| SecAggError::Peer {
            agency: from.to_owned(),
            problem,
        };
        if !self.adverts.contains_key(from) {
            return Err(refuse("it advertised no keys".into()));
        }
        if self.shares.contains_key(from) {
            return Err(refuse("it sent shares twice".into()));
        }
        let to: BTreeSet<&str> = sealed.iter().map(|s| s.to.as_str()).collect();
        let expected: BTreeSet<&str> = self
            .adverts
            .keys()
            .map(String::as_str)
            .filter(|a| *a != from)
            .collect();
        if to != expected || sealed.len() != expected.len() || sealed.iter().any(|s| s.from != from)
        {
            return Err(refuse(
                "its shares are not one from it to each other agency that advertised keys".into(),
            ));
        }
        if sealed.iter().any(|s| s.ciphertext.len() > 1024) {
            return Err(refuse("a sealed share is over 1 KiB".into()));
        }
        self.shares.insert(from.to_owned(), sealed);
        Ok(())
    }

    /// Closes the sharing: for each agency that shared, the shares sealed for it by the others
    /// that shared (an agency that did not share is treated as dropped from here on).
    pub fn close_shares(&mut self) -> Result<BTreeMap<String, Vec<SealedShare>>, SecAggError> {
        self.at_least(self.shares.len(), "the sharing of keys")?;
        let sharers: Vec<String> = self.shares.keys().cloned().collect();
        let mut out: BTreeMap<String, Vec<SealedShare>> =
            sharers.iter().map(|a| (a.clone(), Vec::new())).collect();
        for sealed in self.shares.values() {
            for s in sealed {
                if let Some(inbox) = out.get_mut(&s.to) {
                    inbox.push(s.clone());
                }
            }
        }
        self.sharers = sharers;
        self.stage = Stage::Inputs;
        Ok(out)
    }

    /// Adds `from`'s masked input to the running sum.
    pub fn masked_input(&mut self, from: &str, values: &[u64]) -> Result<(), SecAggError> {
        self.expect(Stage::Inputs, from, "a masked input")?;
        let refuse = |problem: String| SecAggError::Peer {
            agency: from.to_owned(),
            problem,
        };
        if !self.sharers.iter().any(|s| s == from) {
            return Err(refuse("it took no part in the sharing of keys".into()));
        }
        if self.masked.contains(from) {
            return Err(refuse("it sent its masked input twice".into()));
        }
        if values.len() != self.params.length {
            return Err(refuse(format!(
                "its masked input has {} values, the round {}",
                values.len(),
                self.params.length
            )));
        }
        for (s, v) in self.sum.iter_mut().zip(values) {
            *s = s.wrapping_add(*v);
        }
        self.masked.insert(from.to_owned());
        Ok(())
    }

    /// Closes the inputs: the survivors to send to each of them for signing.
    pub fn close_inputs(&mut self) -> Result<Vec<String>, SecAggError> {
        self.at_least(self.masked.len(), "the masked inputs")?;
        self.survivors = self.masked.iter().cloned().collect();
        self.stage = Stage::Signatures;
        Ok(self.survivors.clone())
    }

    /// Takes a survivor's signature of the list of survivors.
    pub fn signature(
        &mut self,
        from: &str,
        signed: SignedStatement,
        ca: &[u8],
    ) -> Result<(), SecAggError> {
        self.expect(Stage::Signatures, from, "a signature of the survivors")?;
        let refuse = |problem: String| SecAggError::Peer {
            agency: from.to_owned(),
            problem,
        };
        let (signer, list): (_, SurvivorList) =
            verify_agency_statement(&signed, ca).map_err(refuse)?;
        named(&list.agency, &signer, "list of survivors").map_err(refuse)?;
        if signer.to_string() != from
            || list.job != self.params.job
            || list.round != self.params.round
            || list.keys != self.keys_digest
            || list.survivors != self.survivors
            || !self.masked.contains(from)
        {
            return Err(refuse("it signed another list of survivors".into()));
        }
        self.signatures.insert(from.to_owned(), signed);
        Ok(())
    }

    /// Closes the consistency check: the signatures to relay to the survivors.
    pub fn close_signatures(&mut self) -> Result<Vec<SignedStatement>, SecAggError> {
        self.at_least(self.signatures.len(), "the consistency check")?;
        self.stage = Stage::Reveals;
        Ok(self.signatures.values().cloned().collect())
    }

    /// Takes a survivor's revealed shares.
    pub fn reveal(&mut self, from: &str, reveal: Reveal) -> Result<(), SecAggError> {
        self.expect(Stage::Reveals, from, "revealed shares")?;
        if reveal.from != from || !self.signatures.contains_key(from) {
            return Err(SecAggError::Peer {
                agency: from.to_owned(),
                problem: "it reveals shares without having signed the survivors".into(),
            });
        }
        self.reveals.insert(from.to_owned(), reveal);
        Ok(())
    }

    /// The sum of the survivors' inputs (decoded from the ring), and the survivors: each
    /// survivor's seed and each dropped sharer's mask key recovered from `t` revealed shares, and
    /// their masks taken away. A recovered mask key is checked against the key its agency
    /// advertised, so a wrong share is caught and named rather than making the sum wrong.
    pub fn finish(mut self) -> Result<(Vec<f64>, Vec<String>), SecAggError> {
        self.at_least(self.reveals.len(), "the revealing of shares")?;
        let dropped: Vec<String> = self
            .sharers
            .iter()
            .filter(|a| !self.masked.contains(*a))
            .cloned()
            .collect();
        let mut sum = std::mem::take(&mut self.sum);
        for survivor in &self.survivors {
            let seed = self.recover(survivor, |r| &r.seeds)?;
            let committed = self.adverts.get(survivor).map(|(_, a)| &a.seed_commitment);
            if Some(&super::seed_commitment(&seed)) != committed {
                return Err(SecAggError::Crypto(format!(
                    "the seed recovered for {survivor} is not the one it committed to: a survivor revealed a wrong share, and the round's sum cannot be trusted"
                )));
            }
            crypto::apply_mask(&mut sum, &seed, true);
        }
        for gone in &dropped {
            let secret = self.recover(gone, |r| &r.mask_keys)?;
            let advertised = self.adverts.get(gone).and_then(|(_, a)| hex32(&a.mask_key));
            if Some(crypto::public_of(&secret)) != advertised {
                return Err(SecAggError::Crypto(format!(
                    "the mask key recovered for {gone} is not the one it advertised: a survivor revealed a wrong share"
                )));
            }
            let secret = StaticSecret::from(secret);
            for survivor in &self.survivors {
                let Some(public) = self
                    .adverts
                    .get(survivor)
                    .and_then(|(_, a)| hex32(&a.mask_key))
                else {
                    continue;
                };
                let (a, b) = ordered(gone, survivor);
                let seed = crypto::agreed_key(&secret, &public, "mask", &self.params, a, b)?;
                // The survivor added this mask if the dropped agency comes later, took it away
                // if earlier: undo that.
                crypto::apply_mask(&mut sum, &seed, gone.as_str() > survivor.as_str());
            }
        }
        Ok((self.params.fixed_point().decode(&sum), self.survivors))
    }

    /// The secret of `agency` recovered from the first `t` shares revealed of it (by `pick`).
    fn recover(
        &self,
        agency: &str,
        pick: impl Fn(&Reveal) -> &Vec<(String, Vec<u8>)>,
    ) -> Result<[u8; 32], SecAggError> {
        let mut shares = Vec::new();
        let mut ids = BTreeSet::new();
        for reveal in self.reveals.values() {
            // A revealer's shares carry its own id: one share a revealer.
            let id = self.params.id_of(&reveal.from);
            for (of, share) in pick(reveal) {
                if of == agency && share.len() == 33 && Some(share[0]) == id && ids.insert(share[0])
                {
                    shares.push(share.clone());
                }
            }
        }
        if shares.len() < self.params.threshold {
            return Err(SecAggError::TooFew {
                step: "the revealing of shares",
                have: shares.len(),
                need: self.params.threshold,
            });
        }
        shares.truncate(self.params.threshold);
        crypto::combine(&shares)
    }
}

//! A node's side of one round of secure aggregation: a state machine that takes the
//! coordinator's messages in the one order the protocol has and refuses anything else: a step
//! repeated or skipped, a key that is not its agency's, a share moved from another round or
//! pair, survivors it cannot check, signatures on another list of survivors than its own.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::StaticSecret;

use super::crypto;
use super::{
    KeyAdvert, Params, Reveal, SealedShare, SecAggError, ShareBundle, SurvivorList, hex32,
};
use crate::hex::hex;
use crate::receipt::{named, sign, verify_agency_statement};
use crate::tls::KeySigner;
use crate::v1::SignedStatement;

/// Where a participant is in its round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Its keys are advertised; it waits for everyone's.
    Advertised,
    /// Its shares are sealed and sent; it waits for the shares sent to it.
    Shared,
    /// Its masked input is sent; it waits for the list of survivors.
    Masked,
    /// It signed the survivors; it waits for their signatures.
    Signed,
    /// It revealed its shares: the round is over for it.
    Revealed,
}

/// The agencies whose keys a participant accepted, with their keys.
#[derive(Debug, Clone)]
struct PeerKeys {
    cipher: [u8; 32],
    mask: [u8; 32],
}

/// One agency in one round of secure aggregation.
pub struct Participant {
    params: Params,
    me: String,
    cipher: StaticSecret,
    mask: StaticSecret,
    advert: KeyAdvert,
    seed: [u8; 32],
    step: Step,
    /// The agencies whose keys it accepted (itself included): the round's first set.
    keyed: BTreeMap<String, PeerKeys>,
    /// The shares it holds, by the agency that sent them (its own included): whoever is here
    /// took part in the masking.
    held: BTreeMap<String, ShareBundle>,
    /// The survivors it signed.
    survivors: Vec<String>,
    /// The digest of the advertisements it accepted: what its list of survivors is bound to.
    keys_digest: String,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("me", &self.me)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// A participant for `me` (its identity, as its certificate names it) in the round of
    /// `params`, and its signed key advertisement to send.
    pub fn new(
        params: Params,
        me: &str,
        signer: &KeySigner,
    ) -> Result<(Self, SignedStatement), SecAggError> {
        Self::with_noise_share(params, me, signer, None)
    }

    /// [`Participant::new`] for a round of distributed DP in which every agency adds a share of
    /// noise of discrete Gaussian scale `noise_share`: the advertisement states it, and the
    /// agency accepts only advertisements that state the same share and parameters.
    pub fn with_noise_share(
        params: Params,
        me: &str,
        signer: &KeySigner,
        noise_share: Option<f64>,
    ) -> Result<(Self, SignedStatement), SecAggError> {
        params.check()?;
        if params.id_of(me).is_none() {
            return Err(SecAggError::Params(format!(
                "{me} is not among the round's participants"
            )));
        }
        let (cipher, cipher_public) = crypto::key_pair()?;
        let (mask, mask_public) = crypto::key_pair()?;
        let seed = crypto::random32()?;
        let advert = KeyAdvert {
            agency: me.to_owned(),
            job: params.job.clone(),
            round: params.round,
            cipher_key: hex(&cipher_public),
            mask_key: hex(&mask_public),
            seed_commitment: super::seed_commitment(&seed),
            round_digest: super::round_digest(&params, noise_share),
        };
        let signed = sign(&advert, signer)
            .map_err(|e| SecAggError::Crypto(format!("the key advertisement: {e}")))?;
        let participant = Participant {
            params,
            me: me.to_owned(),
            cipher,
            mask,
            advert,
            seed,
            step: Step::Advertised,
            keyed: BTreeMap::new(),
            held: BTreeMap::new(),
            survivors: Vec::new(),
            keys_digest: String::new(),
        };
        Ok((participant, signed))
    }

    fn expect(&self, step: Step, what: &str) -> Result<(), SecAggError> {
        match self.step == step {
            true => Ok(()),
            false => Err(SecAggError::Order(format!(
                "{what} arrived while this agency is at {:?}",
                self.step
            ))),
        }
    }

    /// Takes every participant's key advertisement (relayed by the coordinator) and returns
    /// the shares to send, one sealed for each other advertiser. `ca` is the federation CA's
    /// certificate (DER).
    pub fn share_keys(
        &mut self,
        adverts: &[SignedStatement],
        ca: &[u8],
    ) -> Result<Vec<SealedShare>, SecAggError> {
        self.expect(Step::Advertised, "the round's keys")?;
        let mut keyed = BTreeMap::new();
        let mut accepted = Vec::new();
        for signed in adverts {
            let (agency, keys, advert) = self.checked_advert(signed, ca)?;
            accepted.push(advert);
            if keyed.insert(agency.clone(), keys).is_some() {
                return Err(SecAggError::Coordinator(format!(
                    "{agency}'s keys are listed twice"
                )));
            }
        }
        match keyed.get(&self.me) {
            Some(k)
                if hex(&k.cipher) == self.advert.cipher_key
                    && hex(&k.mask) == self.advert.mask_key => {}
            _ => {
                return Err(SecAggError::Coordinator(
                    "the keys listed for this agency are not the ones it advertised".into(),
                ));
            }
        }
        let t = self.params.threshold;
        if keyed.len() < t {
            return Err(SecAggError::TooFew {
                step: "the key exchange",
                have: keyed.len(),
                need: t,
            });
        }
        let ids: Vec<u8> = keyed
            .keys()
            .map(|a| self.params.id_of(a).unwrap_or(0))
            .collect();
        let seed_shares = crypto::split(&self.seed, t, &ids)?;
        let key_shares = crypto::split(&self.mask.to_bytes(), t, &ids)?;
        let mut sealed = Vec::new();
        for ((to, keys), (seed, mask_key)) in
            keyed.iter().zip(seed_shares.into_iter().zip(key_shares))
        {
            let bundle = ShareBundle {
                from: self.me.clone(),
                to: to.clone(),
                job: self.params.job.clone(),
                round: self.params.round,
                seed,
                mask_key,
            };
            if *to == self.me {
                self.held.insert(self.me.clone(), bundle);
                continue;
            }
            let key = crypto::agreed_key(
                &self.cipher,
                &keys.cipher,
                "share",
                &self.params,
                &self.me,
                to,
            )?;
            let plain = serde_json::to_vec(&bundle)
                .map_err(|e| SecAggError::Crypto(format!("a share cannot be written: {e}")))?;
            sealed.push(SealedShare {
                from: self.me.clone(),
                to: to.clone(),
                ciphertext: crypto::seal(&key, &self.params, &self.me, to, &plain)?.into(),
            });
        }
        self.keyed = keyed;
        self.keys_digest = super::keys_digest(&accepted);
        self.step = Step::Shared;
        Ok(sealed)
    }

    /// One key advertisement checked: signed by an agency certificate of the CA `ca`, by an
    /// agency of this round, for this job and round, with keys that are keys.
    fn checked_advert(
        &self,
        signed: &SignedStatement,
        ca: &[u8],
    ) -> Result<(String, PeerKeys, KeyAdvert), SecAggError> {
        let refuse = |agency: &str, problem: String| SecAggError::Peer {
            agency: agency.to_owned(),
            problem,
        };
        let (signer, advert): (_, KeyAdvert) =
            verify_agency_statement(signed, ca).map_err(|e| refuse("a key advertisement", e))?;
        let agency = signer.to_string();
        named(&advert.agency, &signer, "key advertisement").map_err(|e| refuse(&agency, e))?;
        if advert.job != self.params.job || advert.round != self.params.round {
            return Err(refuse(
                &agency,
                format!(
                    "its keys are for job `{}` round {}, not job `{}` round {}: a replayed message",
                    advert.job, advert.round, self.params.job, self.params.round
                ),
            ));
        }
        if self.params.id_of(&agency).is_none() {
            return Err(refuse(
                &agency,
                "it is not a participant of the round".into(),
            ));
        }
        if advert.round_digest != self.advert.round_digest {
            return Err(refuse(
                &agency,
                "it was told other parameters of the round (participants, threshold, fixed point, length) or adds another share of noise than this agency: the coordinator did not give every agency the same round".into(),
            ));
        }
        let (Some(cipher), Some(mask), Some(_)) = (
            hex32(&advert.cipher_key),
            hex32(&advert.mask_key),
            hex32(&advert.seed_commitment),
        ) else {
            return Err(refuse(&agency, "its keys are not 32 bytes of hex".into()));
        };
        Ok((agency, PeerKeys { cipher, mask }, advert))
    }

    /// Takes the shares sealed for this agency (relayed by the coordinator) and returns its
    /// input masked: quantised by the round's fixed-point code, plus its self-mask and every
    /// pairwise mask with an agency that sent it a share.
    pub fn mask(&mut self, shares: &[SealedShare], input: &[f64]) -> Result<Vec<u64>, SecAggError> {
        let values = self.params.fixed_point().encode(input)?;
        self.mask_encoded(shares, values)
    }

    /// [`Participant::mask`] of an input already in the ring (distributed DP: a node adds its
    /// integer noise there, after the fixed-point code).
    pub fn mask_encoded(
        &mut self,
        shares: &[SealedShare],
        mut values: Vec<u64>,
    ) -> Result<Vec<u64>, SecAggError> {
        self.expect(Step::Shared, "the shares for this agency")?;
        let input = &values;
        if input.len() != self.params.length {
            return Err(SecAggError::Params(format!(
                "the input has {} values, the round {}",
                input.len(),
                self.params.length
            )));
        }
        let mut held = BTreeMap::new();
        for share in shares {
            let bundle = self.opened(share)?;
            if held.insert(share.from.clone(), bundle).is_some() {
                return Err(SecAggError::Coordinator(format!(
                    "two shares from {} were relayed",
                    share.from
                )));
            }
        }
        if held.len() + 1 < self.params.threshold {
            return Err(SecAggError::TooFew {
                step: "the sharing of keys",
                have: held.len() + 1,
                need: self.params.threshold,
            });
        }
        crypto::apply_mask(&mut values, &self.seed, false);
        for peer in held.keys() {
            let seed = self.pairwise_seed(peer)?;
            // Added towards a later identity, taken away towards an earlier one: the two masks
            // of a pair cancel in the sum.
            crypto::apply_mask(&mut values, &seed, peer.as_str() < self.me.as_str());
        }
        self.held.append(&mut held);
        self.step = Step::Masked;
        Ok(values)
    }

    /// A relayed share opened and checked: addressed here, from an agency whose keys were
    /// accepted, sealed for this pair in this round, holding shares of this agency's id.
    fn opened(&self, share: &SealedShare) -> Result<ShareBundle, SecAggError> {
        let refuse = |problem: String| SecAggError::Peer {
            agency: share.from.clone(),
            problem,
        };
        if share.to != self.me {
            return Err(SecAggError::Coordinator(format!(
                "a share for {} was relayed to {}",
                share.to, self.me
            )));
        }
        let keys = match self.keyed.get(&share.from) {
            Some(k) if share.from != self.me => k,
            _ => return Err(refuse("its keys were not accepted in this round".into())),
        };
        let key = crypto::agreed_key(
            &self.cipher,
            &keys.cipher,
            "share",
            &self.params,
            &share.from,
            &self.me,
        )?;
        let plain = crypto::open(&key, &self.params, &share.from, &self.me, &share.ciphertext)
            .ok_or_else(|| {
                refuse(
                    "its share does not open: altered, or sealed for another pair or round".into(),
                )
            })?;
        let bundle: ShareBundle = serde_json::from_slice(&plain)
            .map_err(|e| refuse(format!("its share is unreadable: {e}")))?;
        let id = self.params.id_of(&self.me).unwrap_or(0);
        if bundle.from != share.from
            || bundle.to != self.me
            || bundle.job != self.params.job
            || bundle.round != self.params.round
            || bundle.seed.len() != 33
            || bundle.mask_key.len() != 33
            || bundle.seed[0] != id
            || bundle.mask_key[0] != id
        {
            return Err(refuse(
                "its share is not one of this agency's in this round".into(),
            ));
        }
        Ok(bundle)
    }

    /// The seed of the pairwise mask with `peer`.
    fn pairwise_seed(&self, peer: &str) -> Result<[u8; 32], SecAggError> {
        let keys = self
            .keyed
            .get(peer)
            .ok_or_else(|| SecAggError::Order(format!("no keys of {peer}")))?;
        let (a, b) = ordered(&self.me, peer);
        crypto::agreed_key(&self.mask, &keys.mask, "mask", &self.params, a, b)
    }

    /// Takes the coordinator's list of survivors (the agencies whose masked inputs it holds)
    /// and returns this agency's signature of it. The list must be in increasing order, hold
    /// this agency, only agencies that took part in the masking, and at least the threshold.
    pub fn sign_survivors(
        &mut self,
        survivors: &[String],
        signer: &KeySigner,
    ) -> Result<SignedStatement, SecAggError> {
        self.expect(Step::Masked, "the list of survivors")?;
        if survivors.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SecAggError::Coordinator(
                "the survivors are not in strictly increasing order".into(),
            ));
        }
        if let Some(stranger) = survivors.iter().find(|s| !self.held.contains_key(*s)) {
            return Err(SecAggError::Coordinator(format!(
                "{stranger} is listed as a survivor but took no part in the masking"
            )));
        }
        if !survivors.contains(&self.me) {
            return Err(SecAggError::Coordinator(
                "this agency sent its masked input but is not listed as a survivor".into(),
            ));
        }
        if survivors.len() < self.params.threshold {
            return Err(SecAggError::TooFew {
                step: "the masked inputs",
                have: survivors.len(),
                need: self.params.threshold,
            });
        }
        let list = SurvivorList {
            agency: self.me.clone(),
            job: self.params.job.clone(),
            round: self.params.round,
            keys: self.keys_digest.clone(),
            survivors: survivors.to_vec(),
        };
        let signed = sign(&list, signer)
            .map_err(|e| SecAggError::Crypto(format!("the list of survivors: {e}")))?;
        self.survivors = survivors.to_vec();
        self.step = Step::Signed;
        Ok(signed)
    }

    /// Takes the survivors' signatures (relayed by the coordinator) and, once at least the
    /// threshold of distinct survivors signed the very list this agency signed, reveals its
    /// shares: of each survivor's seed and of each dropped agency's mask key. A signature of
    /// any other list is proof that the coordinator told agencies different stories: refused.
    pub fn reveal(
        &mut self,
        signatures: &[SignedStatement],
        ca: &[u8],
    ) -> Result<Reveal, SecAggError> {
        self.expect(Step::Signed, "the survivors' signatures")?;
        let mut signers = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for signed in signatures {
            // The same signature twice is checked once.
            if !seen.insert(signed.signature.as_str()) {
                continue;
            }
            let (signer, list): (_, SurvivorList) =
                verify_agency_statement(signed, ca).map_err(|e| SecAggError::Peer {
                    agency: "a survivor's signature".into(),
                    problem: e,
                })?;
            let agency = signer.to_string();
            named(&list.agency, &signer, "list of survivors").map_err(|e| SecAggError::Peer {
                agency: agency.clone(),
                problem: e,
            })?;
            if list.job != self.params.job
                || list.round != self.params.round
                || list.keys != self.keys_digest
                || list.survivors != self.survivors
            {
                return Err(SecAggError::Coordinator(format!(
                    "{agency} signed another list of survivors (job `{}` round {}, {} agencies, or of another run of the round) than this agency's: shares are not revealed",
                    list.job,
                    list.round,
                    list.survivors.len()
                )));
            }
            if !self.survivors.contains(&agency) {
                return Err(SecAggError::Coordinator(format!(
                    "{agency} signed the survivors but is not one"
                )));
            }
            signers.insert(agency);
        }
        if signers.len() < self.params.threshold {
            return Err(SecAggError::TooFew {
                step: "the consistency check",
                have: signers.len(),
                need: self.params.threshold,
            });
        }
        let mut reveal = Reveal {
            from: self.me.clone(),
            ..Reveal::default()
        };
        for (agency, bundle) in &self.held {
            if self.survivors.contains(agency) {
                reveal.seeds.push((agency.clone(), bundle.seed.clone()));
            } else {
                reveal
                    .mask_keys
                    .push((agency.clone(), bundle.mask_key.clone()));
            }
        }
        self.step = Step::Revealed;
        Ok(reveal)
    }
}

/// Two identities in increasing order.
pub(crate) fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a < b { (a, b) } else { (b, a) }
}

#[cfg(test)]
impl Participant {
    /// The shares this agency holds of `agency`'s seed and mask key (a colluder hands them over).
    pub(super) fn held_shares_of(&self, agency: &str) -> (Vec<u8>, Vec<u8>) {
        let b = &self.held[agency];
        (b.seed.clone(), b.mask_key.clone())
    }
}

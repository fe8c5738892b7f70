//! The primitives secure aggregation is built from, each from a well-kept crate: X25519 key
//! agreement (`x25519-dalek`), HKDF-SHA256 and ChaCha20-Poly1305 (`ring`), Shamir sharing over
//! GF(256) (`vsss-rs`) and ChaCha20 as the masks' generator (`rand_chacha`). Nothing here is a
//! hand-written primitive: this file only fixes how they are combined and labelled.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};

use super::{Params, SecAggError};

/// The label every derivation and associated data of this protocol starts with.
const LABEL: &str = "treaty-secagg/1";

/// 32 bytes from the operating system's RNG.
pub(crate) fn random32() -> Result<[u8; 32], SecAggError> {
    let mut out = [0u8; 32];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SecAggError::Crypto("the system's random number generator failed".into()))?;
    Ok(out)
}

/// A fresh X25519 key pair.
pub(crate) fn key_pair() -> Result<(StaticSecret, [u8; 32]), SecAggError> {
    let secret = StaticSecret::from(random32()?);
    let public = PublicKey::from(&secret).to_bytes();
    Ok((secret, public))
}

/// Whether an X25519 public key is of small order: its agreement with a fresh secret is not
/// contributory (every secret agrees on the same value with it).
pub(crate) fn small_order(public: &[u8; 32]) -> Result<bool, SecAggError> {
    let probe = StaticSecret::from(random32()?);
    Ok(!probe
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory())
}

/// The X25519 public key of a secret's bytes.
pub(crate) fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// A key of 32 bytes derived from the X25519 agreement of `secret` with `public`, for `purpose`
/// between `a` and `b` in the round `params` names. A public key of small order (whose
/// agreement is not contributory: an all-zero secret) is refused.
pub(crate) fn agreed_key(
    secret: &StaticSecret,
    public: &[u8; 32],
    purpose: &str,
    params: &Params,
    a: &str,
    b: &str,
) -> Result<[u8; 32], SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(SecAggError::Crypto(
            "a public key of small order gives no shared secret".into(),
        ));
    }
    let info = context(purpose, params, a, b);
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL.as_bytes())
        .extract(shared.as_bytes())
        .expand(&[info.as_bytes()], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SecAggError::Crypto("key derivation failed".into()))?;
    Ok(out)
}

/// What a derivation or a ciphertext is bound to: the protocol, the purpose, the job, the round
/// and the two agencies in the order given.
fn context(purpose: &str, params: &Params, a: &str, b: &str) -> String {
    format!(
        "{LABEL}\n{purpose}\n{}\n{}\n{a}\n{b}",
        params.job, params.round
    )
}

/// `plaintext` sealed under `key` (used for one message only, so a zero nonce), bound to the
/// share sent from `from` to `to` in the round of `params`.
pub(crate) fn seal(
    key: &[u8; 32],
    params: &Params,
    from: &str,
    to: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, SecAggError> {
    let key = aead_key(key)?;
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(context("share", params, from, to).as_bytes()),
        &mut data,
    )
    .map_err(|_| SecAggError::Crypto("sealing a share failed".into()))?;
    Ok(data)
}

/// The plaintext of a ciphertext [`seal`]ed under `key` for the same round, sender and
/// recipient; `None` when it was not (altered, or moved to another round or pair).
pub(crate) fn open(
    key: &[u8; 32],
    params: &Params,
    from: &str,
    to: &str,
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    let key = aead_key(key).ok()?;
    let mut data = ciphertext.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(context("share", params, from, to).as_bytes()),
            &mut data,
        )
        .ok()?;
    Some(plain.to_vec())
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, SecAggError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| SecAggError::Crypto("not a ChaCha20-Poly1305 key".into()))
}

/// Shamir shares of a 32-byte secret, `threshold` of which recover it, one for each of `ids`
/// (1 to 255: the holders' places in the round's participants, counted from 1). Each share is
/// 33 bytes: its id, then one GF(256) value a byte of the secret.
pub(crate) fn split(
    secret: &[u8; 32],
    threshold: usize,
    ids: &[u8],
) -> Result<Vec<Vec<u8>>, SecAggError> {
    let rng = ChaCha20Rng::from_seed(random32()?);
    let ids = ids
        .iter()
        .map(|&id| vsss_rs::IdentifierGf256::from(vsss_rs::Gf256(id)));
    vsss_rs::Gf256::split_bytes_with_participant_ids_iter(threshold, ids.len(), secret, rng, ids)
        .map_err(|e| SecAggError::Crypto(format!("secret sharing failed: {e}")))
}

/// The secret that `shares` (33 bytes each, distinct ids) interpolate at zero. With fewer than
/// the sharing's threshold this is a value unrelated to the secret: the caller checks the count.
pub(crate) fn combine(shares: &[Vec<u8>]) -> Result<[u8; 32], SecAggError> {
    if shares.iter().any(|s| s.len() != 33) {
        return Err(SecAggError::Crypto("a share is not 33 bytes".into()));
    }
    let secret = vsss_rs::Gf256::combine_bytes(shares)
        .map_err(|e| SecAggError::Crypto(format!("shares cannot be combined: {e}")))?;
    secret
        .try_into()
        .map_err(|_| SecAggError::Crypto("the combined secret is not 32 bytes".into()))
}

/// Adds (or, with `subtract`, takes away) the mask that `seed` generates to `values`, modulo
/// 2^64: ChaCha20's stream from `seed`, one `u64` (little-endian) a coordinate.
pub(crate) fn apply_mask(values: &mut [u64], seed: &[u8; 32], subtract: bool) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    for v in values.iter_mut() {
        let m = rng.next_u64();
        *v = if subtract {
            v.wrapping_sub(m)
        } else {
            v.wrapping_add(m)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            job: "job-1".into(),
            round: 3,
            participants: vec!["a".into(), "b".into(), "c".into()],
            threshold: 2,
            fractional_bits: 32,
            length: 4,
        }
    }

    #[test]
    fn both_sides_of_an_agreement_derive_the_same_key_and_only_for_their_context() {
        let p = params();
        let (sa, pa) = key_pair().unwrap();
        let (sb, pb) = key_pair().unwrap();
        let ab = agreed_key(&sa, &pb, "mask", &p, "a", "b").unwrap();
        assert_eq!(ab, agreed_key(&sb, &pa, "mask", &p, "a", "b").unwrap());
        assert_ne!(ab, agreed_key(&sb, &pa, "share", &p, "a", "b").unwrap());
        let mut next = p.clone();
        next.round = 4;
        assert_ne!(ab, agreed_key(&sb, &pa, "mask", &next, "a", "b").unwrap());
        // The identity point (all zeros) is of small order: refused.
        assert!(agreed_key(&sa, &[0u8; 32], "mask", &p, "a", "b").is_err());
    }

    #[test]
    fn a_sealed_share_opens_only_for_its_pair_and_round() {
        let p = params();
        let key = random32().unwrap();
        let sealed = seal(&key, &p, "a", "b", b"share").unwrap();
        assert_eq!(open(&key, &p, "a", "b", &sealed).unwrap(), b"share");
        assert!(open(&key, &p, "a", "c", &sealed).is_none());
        assert!(open(&key, &p, "b", "a", &sealed).is_none());
        let mut other = p.clone();
        other.job = "job-2".into();
        assert!(open(&key, &other, "a", "b", &sealed).is_none());
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(open(&key, &p, "a", "b", &tampered).is_none());
    }

    #[test]
    fn any_threshold_of_shares_recovers_the_secret_and_fewer_do_not() {
        let secret = random32().unwrap();
        let shares = split(&secret, 3, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(shares.len(), 5);
        assert!(shares.iter().all(|s| s.len() == 33));
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let some: Vec<_> = pick.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(combine(&some).unwrap(), secret);
        }
        // Two shares of a 3-of-5 sharing interpolate a line, not the secret's polynomial.
        assert_ne!(combine(&shares[..2]).unwrap(), secret);
    }

    #[test]
    fn a_mask_added_then_taken_away_leaves_the_values() {
        let seed = random32().unwrap();
        let mut v = vec![1u64, u64::MAX, 0, 42];
        apply_mask(&mut v, &seed, false);
        assert_ne!(v, vec![1u64, u64::MAX, 0, 42]);
        apply_mask(&mut v, &seed, true);
        assert_eq!(v, vec![1u64, u64::MAX, 0, 42]);
    }

    #[test]
    fn the_mask_generator_is_chacha20_as_published() {
        // RFC 8439 section 2.3.2's block function test vector uses a nonce; the all-zero key and
        // nonce stream of RFC 7539 appendix A.1 (test vector 1) starts 76 b8 e0 ad a0 f1 3d 90.
        let mut v = vec![0u64];
        apply_mask(&mut v, &[0u8; 32], false);
        assert_eq!(
            v[0].to_le_bytes(),
            [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90]
        );
    }
}

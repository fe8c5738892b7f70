//! Signed policies: a country's legal team signs its file with an Ed25519 key, and whoever
//! loads the file (coordinator or node) verifies it against the federation's list of each
//! country's public key, so that nobody can alter a country's policy unnoticed.
//!
//! Keys are the standard PEM forms (`openssl genpkey -algorithm ed25519` makes a usable private
//! key; `openssl pkey -pubout` its public key). A signature lives next to the policy as
//! `<CC>.toml.sig`:
//!
//! ```text
//! treaty-policy-signature 1
//! country DE
//! sha256 <hex SHA-256 of the policy file's bytes>
//! ed25519 <base64 signature of the three lines above, each ending in \n>
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::sha256_hex;

const HEADER: &str = "treaty-policy-signature 1";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Signature(String),
}

fn pem_decode(text: &str, label: &str, path: &Path) -> Result<Vec<u8>, SigningError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| {
            SigningError::Key(format!("{} holds no PEM block `{label}`", path.display()))
        })?;
    let joined: String = body.split_whitespace().collect();
    STANDARD.decode(joined).map_err(|e| {
        SigningError::Key(format!(
            "{}: the PEM body is not base64 ({e})",
            path.display()
        ))
    })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A new Ed25519 key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn generate() -> Result<(String, String), SigningError> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| SigningError::Key("could not generate a key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| SigningError::Key("generated key unusable".into()))?;
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((
        pem_encode("PRIVATE KEY", pkcs8.as_ref()),
        pem_encode("PUBLIC KEY", &spki),
    ))
}

fn read(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path)
        .map_err(|e| SigningError::Io(format!("cannot read {}: {e}", path.display())))
}

/// Reads an Ed25519 private key (PKCS#8 PEM).
pub fn load_private_key(path: &Path) -> Result<Ed25519KeyPair, SigningError> {
    let der = pem_decode(&read(path)?, "PRIVATE KEY", path)?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
        SigningError::Key(format!(
            "{} is not an Ed25519 private key ({e})",
            path.display()
        ))
    })
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM) as its 32 raw bytes.
pub fn load_public_key(path: &Path) -> Result<Vec<u8>, SigningError> {
    let der = pem_decode(&read(path)?, "PUBLIC KEY", path)?;
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.to_vec()),
        _ => Err(SigningError::Key(format!(
            "{} is not an Ed25519 public key",
            path.display()
        ))),
    }
}

fn signed_text(country: &str, sha256: &str) -> String {
    format!("{HEADER}\ncountry {country}\nsha256 {sha256}\n")
}

/// The signature file's text for a policy of `country` with contents `policy`.
pub fn sign(key: &Ed25519KeyPair, country: &str, policy: &[u8]) -> String {
    let message = signed_text(country, &sha256_hex(policy));
    let signature = key.sign(message.as_bytes());
    format!("{message}ed25519 {}\n", STANDARD.encode(signature.as_ref()))
}

/// Checks a signature file against the policy's bytes and the country's public key; the
/// error says what does not match.
pub fn verify(
    public_key: &[u8],
    country: &str,
    policy: &[u8],
    signature_file: &str,
) -> Result<(), SigningError> {
    let bad = |m: &str| Err(SigningError::Signature(m.to_string()));
    let mut lines = signature_file.lines();
    if lines.next() != Some(HEADER) {
        return bad("the signature file does not start with `treaty-policy-signature 1`");
    }
    let Some(signed_country) = lines.next().and_then(|l| l.strip_prefix("country ")) else {
        return bad("the signature file has no `country` line");
    };
    let Some(signed_hash) = lines.next().and_then(|l| l.strip_prefix("sha256 ")) else {
        return bad("the signature file has no `sha256` line");
    };
    let Some(signature) = lines.next().and_then(|l| l.strip_prefix("ed25519 ")) else {
        return bad("the signature file has no `ed25519` line");
    };
    if signed_country != country {
        return Err(SigningError::Signature(format!(
            "the signature is for {signed_country}'s policy, not {country}'s"
        )));
    }
    if signed_hash != sha256_hex(policy) {
        return bad(
            "the policy file was changed after it was signed (its SHA-256 differs from the signed one)",
        );
    }
    let Ok(signature) = STANDARD.decode(signature.trim()) else {
        return bad("the signature is not base64");
    };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(
            signed_text(signed_country, signed_hash).as_bytes(),
            &signature,
        )
        .map_err(|_| {
            SigningError::Signature(format!(
                "the signature does not verify with {country}'s registered key"
            ))
        })
}

/// Where a policy's signature lives: `DE.toml` -> `DE.toml.sig`.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The federation's public keys, one per country: a directory of `<CC>.pub` files.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, Vec<u8>>,
}

impl TrustedKeys {
    pub fn load(dir: &Path) -> Result<TrustedKeys, SigningError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            SigningError::Io(format!(
                "cannot read the key directory {}: {e}",
                dir.display()
            ))
        })?;
        let mut keys = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(country) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pub"))
            else {
                continue;
            };
            keys.insert(country.to_string(), load_public_key(&path)?);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn key(&self, country: &str) -> Option<&[u8]> {
        self.keys.get(country).map(Vec::as_slice)
    }

    /// Verifies `policy` (the bytes of `<CC>.toml` at `path`) for `country`.
    pub fn check(&self, country: &str, path: &Path, policy: &[u8]) -> Result<(), SigningError> {
        let Some(key) = self.key(country) else {
            return Err(SigningError::Signature(format!(
                "the federation has no public key for {country}"
            )));
        };
        let sig_path = signature_path(path);
        let text = std::fs::read_to_string(&sig_path).map_err(|_| {
            SigningError::Signature(format!(
                "the policy is unsigned ({} is missing)",
                sig_path.display()
            ))
        })?;
        verify(key, country, policy, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_the_bytes_and_the_country() {
        let (private, public) = generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), &private).unwrap();
        std::fs::write(dir.path().join("DE.pub"), &public).unwrap();
        let key = load_private_key(&dir.path().join("k")).unwrap();
        let public = load_public_key(&dir.path().join("DE.pub")).unwrap();
        let policy = b"schema_version = 1\n";
        let sig = sign(&key, "DE", policy);
        verify(&public, "DE", policy, &sig).unwrap();
        let changed = verify(&public, "DE", b"schema_version = 2\n", &sig).unwrap_err();
        assert!(
            changed.to_string().contains("changed after it was signed"),
            "{changed}"
        );
        let other = verify(&public, "FR", policy, &sig).unwrap_err();
        assert!(
            other.to_string().contains("for DE's policy, not FR's"),
            "{other}"
        );
        // A forged hash line fails the signature itself.
        let forged = sig.replace(&sha256_hex(policy), &sha256_hex(b"x"));
        assert!(verify(&public, "DE", b"x", &forged).is_err());
        // Another key does not verify it.
        let (_, other_public) = generate().unwrap();
        std::fs::write(dir.path().join("o.pub"), &other_public).unwrap();
        let other_public = load_public_key(&dir.path().join("o.pub")).unwrap();
        assert!(verify(&other_public, "DE", policy, &sig).is_err());
    }
}

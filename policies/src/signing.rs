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
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use crate::sha256_hex;

const HEADER: &str = "treaty-policy-signature 1";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key or a signature cannot be read, written or verified; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Signature(String),
}

/// The first `label` block of the PEM file at `path` (`T`: a PKCS#8 private key or a public
/// key), read by `rustls-pki-types`' PEM parser, as the TLS files are.
fn read_pem<T: PemObject>(path: &Path, label: &str) -> Result<T, SigningError> {
    T::from_pem_slice(read(path)?.as_bytes()).map_err(|e| {
        let path = path.display();
        SigningError::Key(match e {
            pem::Error::NoItemsFound => format!("{path} holds no PEM block `{label}`"),
            pem::Error::MissingSectionEnd { .. } => {
                format!("{path}: the PEM block `{label}` has no END line")
            }
            pem::Error::Base64Decode(e) => format!("{path}: the PEM body is not base64 ({e})"),
            other => format!("{path} is not readable PEM ({other})"),
        })
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
fn generate() -> Result<(String, String), SigningError> {
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
    let der: PrivatePkcs8KeyDer = read_pem(path, "PRIVATE KEY")?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(|e| {
        SigningError::Key(format!(
            "{} is not an Ed25519 private key ({e})",
            path.display()
        ))
    })
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM) as its 32 raw bytes.
fn load_public_key(path: &Path) -> Result<Vec<u8>, SigningError> {
    let der: SubjectPublicKeyInfoDer = read_pem(path, "PUBLIC KEY")?;
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
fn sign(key: &Ed25519KeyPair, country: &str, policy: &[u8]) -> String {
    let message = signed_text(country, &sha256_hex(policy));
    let signature = key.sign(message.as_bytes());
    format!("{message}ed25519 {}\n", STANDARD.encode(signature.as_ref()))
}

/// Checks a signature file against the policy's bytes and the country's public key; the
/// error says what does not match.
fn verify(
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
fn signature_path(policy: &Path) -> PathBuf {
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

/// Whether `code` looks like an ISO 3166-1 alpha-2 code (two capital letters).
fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// The country a key file is named after: `DE.key` -> `DE`.
pub fn country_of_key(path: &Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".key")?;
    is_country_code(stem).then(|| stem.to_string())
}

/// Makes a key pair for `country`: `DIR/<CC>.key` (private, mode 0600) and `DIR/<CC>.pub`.
/// Never overwrites: if either file exists, nothing is written. Returns the two paths.
pub fn write_key_pair(dir: &Path, country: &str) -> Result<(PathBuf, PathBuf), SigningError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    if !is_country_code(country) {
        return Err(SigningError::Key(format!(
            "`{country}` is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. DE)"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| SigningError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let private_path = dir.join(format!("{country}.key"));
    let public_path = dir.join(format!("{country}.pub"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(SigningError::Io(format!(
                "{} already exists; a key is never overwritten (move it away first if you really mean to replace it)",
                path.display()
            )));
        }
    }
    let (private, public) = generate()?;
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| SigningError::Io(format!("cannot write {}: {e}", path.display())))
    };
    write(&private_path, &private, 0o600)?;
    if let Err(e) = write(&public_path, &public, 0o644) {
        // A private key without its public key is of no use; do not leave half a pair.
        let _ = std::fs::remove_file(&private_path);
        return Err(e);
    }
    Ok((private_path, public_path))
}

/// A light check that `text` is `country`'s policy, for signing without a registry: valid
/// TOML whose `[policy] country` is `country`.
pub fn looks_like_policy_of(country: &str, text: &str) -> Result<(), String> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        format!(
            "it is not valid TOML ({})",
            e.message().trim().replace('\n', " ")
        )
    })?;
    let named = doc
        .get_ref()
        .get("policy")
        .and_then(|p| p.get_ref().as_table())
        .and_then(|t| t.get("country"))
        .and_then(|c| c.get_ref().as_str());
    match named {
        Some(c) if c == country => Ok(()),
        Some(c) => Err(format!(
            "its [policy] country is `{c}`, but the file is named for {country}"
        )),
        None => Err("it has no [policy] country".to_string()),
    }
}

/// Signs the policy file at `path` with `key`, writing `<path>.sig`; returns the signature's
/// path. Refuses a file not named `<CC>.toml`, a key named for another country
/// (`key_country`, from `<CC>.key`), and a file that is not that country's policy (`check`
/// says whether it is; see [`looks_like_policy_of`] for a check without a registry).
pub fn sign_file(
    key: &Ed25519KeyPair,
    key_country: Option<&str>,
    path: &Path,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<PathBuf, SigningError> {
    let Some(country) = crate::load::country_of(path) else {
        return Err(SigningError::Signature(format!(
            "{} is not named after its country (`<CC>.toml`, e.g. DE.toml), so it cannot be signed for one",
            path.display()
        )));
    };
    if let Some(k) = key_country
        && k != country
    {
        return Err(SigningError::Signature(format!(
            "the key is {k}'s ({k}.key) but {} is {country}'s policy",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| SigningError::Io(format!("cannot read {}: {e}", path.display())))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| SigningError::Signature(format!("{} is not UTF-8 text", path.display())))?;
    check(&country, text).map_err(|why| {
        SigningError::Signature(format!(
            "{} is not a valid policy of {country}, so it is not signed: {why}",
            path.display()
        ))
    })?;
    let sig_path = signature_path(path);
    std::fs::write(&sig_path, sign(key, &country, &bytes))
        .map_err(|e| SigningError::Io(format!("cannot write {}: {e}", sig_path.display())))?;
    Ok(sig_path)
}

/// Verifies the policy file at `path` (named `<CC>.toml`) against `keys`; returns its country.
pub fn verify_file(keys: &TrustedKeys, path: &Path) -> Result<String, SigningError> {
    let Some(country) = crate::load::country_of(path) else {
        return Err(SigningError::Signature(format!(
            "{} is not named after its country (`<CC>.toml`), so no country's key applies",
            path.display()
        )));
    };
    let bytes = std::fs::read(path)
        .map_err(|e| SigningError::Io(format!("cannot read {}: {e}", path.display())))?;
    keys.check(&country, path, &bytes)?;
    Ok(country)
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

    #[test]
    fn an_unreadable_key_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (private, public) = generate().unwrap();
        let cases = [
            (
                write("none.key", "not a key\n"),
                "none.key holds no PEM block `PRIVATE KEY`",
            ),
            (
                write("public.key", &public),
                "public.key holds no PEM block `PRIVATE KEY`",
            ),
            (
                write("open.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n"),
                "open.key: the PEM block `PRIVATE KEY` has no END line",
            ),
            (
                write(
                    "bad.key",
                    "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                ),
                "bad.key: the PEM body is not base64",
            ),
        ];
        for (path, expected) in cases {
            let e = load_private_key(&path).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
        // Text around the block, as openssl writes it with -text, is ignored.
        let noted = write(
            "noted.key",
            &format!("ED25519 Private-Key:\n{private}trailing\n"),
        );
        load_private_key(&noted).unwrap();
        let e = load_public_key(&write("private.pub", &private))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("private.pub holds no PEM block `PUBLIC KEY`"),
            "{e}"
        );
    }

    #[test]
    fn key_pairs_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let (private, public) = write_key_pair(&keys, "DE").unwrap();
        assert_eq!(private, keys.join("DE.key"));
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        load_private_key(&private).unwrap();
        load_public_key(&public).unwrap();
        let before = std::fs::read(&private).unwrap();
        let again = write_key_pair(&keys, "DE").unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(std::fs::read(&private).unwrap(), before);
        // Only the public half left behind: still refused, and no private key is made.
        std::fs::write(keys.join("FR.pub"), "x").unwrap();
        assert!(write_key_pair(&keys, "FR").is_err());
        assert!(!keys.join("FR.key").exists());
        assert!(write_key_pair(&keys, "de").is_err());
        assert_eq!(country_of_key(&private).as_deref(), Some("DE"));
        assert_eq!(country_of_key(Path::new("k.pem")), None);
    }

    #[test]
    fn signing_files_refuses_what_cannot_be_a_countrys_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = write_key_pair(dir.path(), "DE").unwrap();
        let key = load_private_key(&private).unwrap();
        let policy = dir.path().join("DE.toml");
        std::fs::write(&policy, "schema_version = 1\n[policy]\ncountry = \"DE\"\n").unwrap();
        let sig = sign_file(&key, Some("DE"), &policy, looks_like_policy_of).unwrap();
        assert_eq!(sig, dir.path().join("DE.toml.sig"));
        let keys = TrustedKeys::load(dir.path()).unwrap();
        assert_eq!(verify_file(&keys, &policy).unwrap(), "DE");

        let draft = dir.path().join("DE-draft.toml");
        std::fs::copy(&policy, &draft).unwrap();
        let e = sign_file(&key, None, &draft, looks_like_policy_of).unwrap_err();
        assert!(e.to_string().contains("not named after its country"), "{e}");
        let fr = dir.path().join("FR.toml");
        std::fs::copy(&policy, &fr).unwrap();
        let e = sign_file(&key, Some("DE"), &fr, looks_like_policy_of).unwrap_err();
        assert!(e.to_string().contains("the key is DE's"), "{e}");
        let e = sign_file(&key, None, &fr, looks_like_policy_of).unwrap_err();
        assert!(e.to_string().contains("country is `DE`"), "{e}");
        assert!(!signature_path(&fr).exists());
        std::fs::write(&fr, "[policy\n").unwrap();
        let e = sign_file(&key, None, &fr, looks_like_policy_of).unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");

        // Changed after signing: verification names it.
        std::fs::write(
            &policy,
            "schema_version = 1\n[policy]\ncountry = \"DE\"\n# x\n",
        )
        .unwrap();
        let e = verify_file(&keys, &policy).unwrap_err();
        assert!(e.to_string().contains("changed after it was signed"), "{e}");
        std::fs::remove_file(signature_path(&policy)).unwrap();
        let e = verify_file(&keys, &policy).unwrap_err();
        assert!(e.to_string().contains("unsigned"), "{e}");
    }
}

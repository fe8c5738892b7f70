//! Receipts for results. A node and the coordinator compute the same SHA-256 of a result as it
//! travelled ([`ResultHasher`]); the coordinator signs a [`Receipt`] naming it when it takes
//! the result in, and the node keeps the signed receipt in its evidence log. Either side can
//! later prove what was sent and received: the node's log says what it sent, the receipt that
//! the coordinator received exactly that, and the coordinator's audit log records the same
//! hash for the round.
//!
//! The hash (docs/AUDIT.md, "Receipts"): SHA-256 over `treaty-result/1\n`; then the result's
//! header as protobuf with its `metrics` left out, preceded by its length (u64 little-endian);
//! then each metric in the byte order of its name: the name's length (u64 LE), the name, the
//! value (f64 LE); then each chunk in the order sent: its tensor index (u32 LE), its offset
//! (u64 LE), its length (u64 LE) and its bytes.

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::hex::{hex, unhex};
use crate::tls::{self, KeySigner};
use crate::v1::{ResultHeader, SignedStatement, SubmitReceipt, TensorChunk};

/// The SHA-256 of a result, fed its header and then its chunks in order.
pub struct ResultHasher(ring::digest::Context);

impl ResultHasher {
    /// A hasher that has taken `header`.
    pub fn new(header: &ResultHeader) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"treaty-result/1\n");
        let mut bare = header.clone();
        bare.metrics.clear();
        let bytes = bare.encode_to_vec();
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
        let mut metrics: Vec<(&String, &f64)> = header.metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, value) in metrics {
            ctx.update(&(name.len() as u64).to_le_bytes());
            ctx.update(name.as_bytes());
            ctx.update(&value.to_le_bytes());
        }
        ResultHasher(ctx)
    }

    /// Takes the next chunk.
    pub fn chunk(&mut self, chunk: &TensorChunk) {
        self.0.update(&chunk.tensor_index.to_le_bytes());
        self.0.update(&chunk.offset.to_le_bytes());
        self.0.update(&(chunk.data.len() as u64).to_le_bytes());
        self.0.update(&chunk.data);
    }

    /// The hash, in hex.
    pub fn finish(self) -> String {
        hex(self.0.finish().as_ref())
    }

    /// The hash of what it has taken so far, in hex.
    pub fn current(&self) -> String {
        hex(self.0.clone().finish().as_ref())
    }
}

impl std::fmt::Debug for ResultHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResultHasher")
    }
}

/// What the coordinator states when it takes a result in (or turns it away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The coordinator's identity, from its certificate.
    pub coordinator: String,
    /// The sending agency's identity, from its certificate.
    pub agency: String,
    pub task_id: String,
    /// The result's SHA-256 ([`ResultHasher`]) as the coordinator computed it on arrival.
    pub result_sha256: String,
    /// Whether it was taken into its round, and why not.
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub received_unix_ms: i64,
}

impl Receipt {
    /// The receipt signed by `signer`, as the wire carries it.
    pub fn signed(&self, signer: &KeySigner) -> Result<SubmitReceipt, crate::TlsError> {
        let s = sign(self, signer)?;
        Ok(SubmitReceipt {
            accepted: self.accepted,
            message: self.message.clone(),
            statement: s.statement,
            signature: s.signature,
            scheme: s.scheme,
            certificate: s.certificate,
        })
    }
}

/// What an agency states it sent: signed with its TLS key and sent after the result's chunks
/// ([`SignedStatement`]), kept by the coordinator in the round's results record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    /// The agency's identity, from its certificate.
    pub agency: String,
    pub task_id: String,
    /// The result's SHA-256 ([`ResultHasher`]).
    pub result_sha256: String,
}

impl Sent {
    /// The statement signed by `signer`.
    pub fn signed(&self, signer: &KeySigner) -> Result<SignedStatement, crate::TlsError> {
        sign(self, signer)
    }
}

/// `value`'s JSON, signed by `signer`, with its scheme and certificate.
pub(crate) fn sign(
    value: &impl Serialize,
    signer: &KeySigner,
) -> Result<SignedStatement, crate::TlsError> {
    let statement = serde_json::to_string(value)
        .map_err(|e| crate::TlsError::Config(format!("a statement cannot be written: {e}")))?;
    let signature = signer.sign(statement.as_bytes())?;
    Ok(SignedStatement {
        statement,
        signature: hex(&signature),
        scheme: signer.scheme(),
        certificate: tls::certificate_pem(signer.certificate()),
    })
}

/// Checks an agency's signed statement of what it sent: its certificate is an agency's issued
/// by the CA `ca` (DER), the signature is that certificate's key's of the statement, and the
/// statement names that agency; the statement.
pub fn verify_sent(signed: &SignedStatement, ca: &[u8]) -> Result<Sent, String> {
    let (signer, statement): (_, Sent) = verify_agency_statement(signed, ca)?;
    named(&statement.agency, &signer, "statement")?;
    Ok(statement)
}

/// An agency's signed statement of a `T` once checked: its certificate is an agency's issued by
/// the CA `ca` (DER) and the signature is that certificate's key's; the signer and the statement.
pub(crate) fn verify_agency_statement<T: serde::de::DeserializeOwned>(
    signed: &SignedStatement,
    ca: &[u8],
) -> Result<(crate::Identity, T), String> {
    let der = tls::certificate_der(signed.certificate.as_bytes())
        .map_err(|e| format!("the sender's certificate {e}"))?;
    tls::verify_issued_by(&der, ca)?;
    let signer =
        crate::Identity::from_certificate(&rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("the sender's certificate names no Treaty identity: {e}"))?;
    if signer.agency_id().is_none() {
        return Err(format!(
            "the sender's certificate is {signer}'s, not an agency's"
        ));
    }
    let statement: T = checked(&der, &signed.statement, &signed.signature, &signed.scheme)
        .map_err(|e| format!("the sender's {e}"))?;
    Ok((signer, statement))
}

/// The statement (the JSON of a `T`), once `signature` (hex) under `scheme` checks against the
/// certificate `der`.
fn checked<T: serde::de::DeserializeOwned>(
    der: &[u8],
    statement: &str,
    signature: &str,
    scheme: &str,
) -> Result<T, String> {
    let signature = unhex(signature).ok_or("signature is not hexadecimal")?;
    tls::verify_signature(der, scheme, statement.as_bytes(), &signature)
        .map_err(|e| format!("signature: {e}"))?;
    serde_json::from_str(statement).map_err(|e| format!("statement is unreadable: {e}"))
}

/// Whether a statement names its signer.
pub(crate) fn named(stated: &str, signer: &crate::Identity, what: &str) -> Result<(), String> {
    match stated == signer.to_string() {
        true => Ok(()),
        false => Err(format!(
            "the {what} names `{stated}` but is signed by `{signer}`"
        )),
    }
}

/// A round's results record, as the coordinator archives it and its audit bundle carries it
/// (`results/SHA256.json`): every result it took in, by the hash its receipt names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsRecord {
    pub job: String,
    pub round: u32,
    pub results: Vec<ReceivedResult>,
}

/// One result a round took in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedResult {
    /// The sending agency's identity, from its certificate.
    pub agency: String,
    pub task_id: String,
    pub result_sha256: String,
    /// Whether it passed the round's checks (and so was combined).
    pub passed: bool,
    /// The agency's signed statement of what it sent ([`Sent`]), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<SignedSent>,
}

/// [`SignedStatement`] as a results record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedSent {
    pub statement: String,
    pub signature: String,
    pub scheme: String,
    pub certificate: String,
}

impl From<SignedStatement> for SignedSent {
    fn from(s: SignedStatement) -> Self {
        SignedSent {
            statement: s.statement,
            signature: s.signature,
            scheme: s.scheme,
            certificate: s.certificate,
        }
    }
}

impl From<SignedSent> for SignedStatement {
    fn from(s: SignedSent) -> Self {
        SignedStatement {
            statement: s.statement,
            signature: s.signature,
            scheme: s.scheme,
            certificate: s.certificate,
        }
    }
}

/// Checks a signed receipt: its certificate is a coordinator's issued by the CA `ca` (DER), the
/// signature is that certificate's key's of the statement, and the statement names that
/// coordinator; the receipt.
pub fn verify(receipt: &SubmitReceipt, ca: &[u8]) -> Result<Receipt, String> {
    let der = tls::certificate_der(receipt.certificate.as_bytes())
        .map_err(|e| format!("the receipt's certificate {e}"))?;
    let coordinator = tls::verify_coordinator(&der, ca)?;
    let statement: Receipt = checked(
        &der,
        &receipt.statement,
        &receipt.signature,
        &receipt.scheme,
    )
    .map_err(|e| format!("the receipt's {e}"))?;
    named(&statement.coordinator, &coordinator, "receipt")?;
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn header() -> ResultHeader {
        ResultHeader {
            task_id: "j1-r1-DE-BKA".into(),
            num_examples: 7,
            metrics: HashMap::from([("b".to_owned(), 2.0), ("a".to_owned(), 1.0)]),
            ..Default::default()
        }
    }

    /// The hash written out by hand, byte by byte, as the docs define it.
    #[test]
    fn the_hash_is_the_documented_byte_string() {
        let chunk = TensorChunk {
            tensor_index: 1,
            offset: 8,
            data: vec![9, 8, 7].into(),
        };
        let mut hasher = ResultHasher::new(&header());
        hasher.chunk(&chunk);
        let mut bytes: Vec<u8> = b"treaty-result/1\n".to_vec();
        // task_id (field 1, length-delimited), num_examples (field 2, varint).
        let mut proto = vec![0x0a, 12];
        proto.extend_from_slice(b"j1-r1-DE-BKA");
        proto.extend_from_slice(&[0x10, 7]);
        bytes.extend_from_slice(&(proto.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&proto);
        for (name, value) in [("a", 1.0f64), ("b", 2.0)] {
            bytes.extend_from_slice(&1u64.to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&8u64.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&[9, 8, 7]);
        let want = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        assert_eq!(hasher.finish(), want);
    }

    #[test]
    fn any_change_to_a_result_changes_its_hash() {
        let chunk = |data: Vec<u8>| TensorChunk {
            tensor_index: 0,
            offset: 0,
            data: data.into(),
        };
        let of = |h: &ResultHeader, c: &[TensorChunk]| {
            let mut hasher = ResultHasher::new(h);
            c.iter().for_each(|c| hasher.chunk(c));
            hasher.finish()
        };
        let base = of(&header(), &[chunk(vec![1, 2]), chunk(vec![3])]);
        let mut other = header();
        other.metrics.insert("a".into(), 1.5);
        assert_ne!(of(&other, &[chunk(vec![1, 2]), chunk(vec![3])]), base);
        assert_ne!(of(&header(), &[chunk(vec![1, 2, 3])]), base);
        assert_ne!(of(&header(), &[chunk(vec![3]), chunk(vec![1, 2])]), base);
        assert_eq!(of(&header(), &[chunk(vec![1, 2]), chunk(vec![3])]), base);
    }
}

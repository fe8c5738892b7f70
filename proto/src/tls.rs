//! Mutual TLS 1.3 for every connection, with rustls and ring.
//!
//! The coordinator accepts only TLS 1.3 with a client certificate that chains to the federation
//! CA and is not on the federation's CRL. The CRL file is re-read whenever it changes, so a
//! revocation applies to the next connection without a restart. After the handshake each
//! connection carries a [`PeerInfo`] — the verified identity — into every request's extensions.
//!
//! Nodes and operators dial with [`ClientTls::connect`], which requires the server to present a
//! coordinator certificate of the same CA, valid for the name dialled.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::TlsError;
use crate::hex::hex;
use crate::identity::Identity;

/// How long a peer may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS files of one party, as its configuration names them.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The federation CA's certificate (PEM): the only trust anchor.
    pub ca_cert: PathBuf,
    /// This party's certificate (PEM), issued by the federation CA.
    pub cert: PathBuf,
    /// This party's private key (PEM, PKCS#8 or SEC1).
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What is wrong with a PEM file whose `label` blocks (e.g. `CERTIFICATE`) cannot be read, in
/// words: the one description of `rustls-pki-types`' PEM errors for the TLS files and the PKI.
pub(crate) fn pem_problem(error: &pem::Error, label: &str) -> String {
    match error {
        pem::Error::NoItemsFound => format!("no `-----BEGIN {label}-----` block"),
        pem::Error::MissingSectionEnd { .. } => {
            format!("the `-----BEGIN {label}-----` block has no END line")
        }
        pem::Error::Base64Decode(e) => format!("the PEM body is not base64 ({e})"),
        other => other.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: pem_problem(&e, "CERTIFICATE"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            message: pem_problem(&other, "PRIVATE KEY"),
        },
    })
}

/// Signs statements with a party's own TLS key, so that anyone holding its certificate can
/// check them (with `openssl dgst -sha256 -verify` for an ECDSA or RSA key): the coordinator
/// signs the heads of its audit log this way.
#[derive(Debug)]
pub struct KeySigner {
    signer: Box<dyn rustls::sign::Signer>,
    certificate: CertificateDer<'static>,
    ca_certificate: CertificateDer<'static>,
}

impl KeySigner {
    /// The signer of `files`' key, with the first certificate of `files.cert` and of
    /// `files.ca_cert`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let key = load_key(&files.key)?;
        let first = |path: &PathBuf| {
            load_certs(path)?
                .into_iter()
                .next()
                .ok_or_else(|| TlsError::Empty {
                    path: path.clone(),
                    what: "certificate",
                })
        };
        let certificate = first(&files.cert)?;
        let ca_certificate = first(&files.ca_cert)?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            TlsError::Config(format!(
                "the key in `{}` cannot sign: {e}",
                files.key.display()
            ))
        })?;
        use rustls::SignatureScheme::*;
        let signer = key
            .choose_scheme(&[
                ECDSA_NISTP256_SHA256,
                RSA_PKCS1_SHA256,
            ])
            .ok_or_else(|| {
                TlsError::Config(format!(
                    "the key in `{}` is of a kind Treaty does not sign evidence with (ECDSA P-256, as `treaty pki` makes, or RSA: both checkable with `openssl dgst -sha256`)",
                    files.key.display()
                ))
            })?;
        Ok(KeySigner {
            signer,
            certificate,
            ca_certificate,
        })
    }

    /// The signature of `message` (for ECDSA, ASN.1 DER as openssl writes it).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        self.signer
            .sign(message)
            .map_err(|e| TlsError::Config(format!("signing failed: {e}")))
    }

    /// The signature scheme, by its TLS name (e.g. `ECDSA_NISTP256_SHA256`).
    pub fn scheme(&self) -> String {
        format!("{:?}", self.signer.scheme())
    }

    /// The certificate whose public key checks the signatures (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The certificate of the CA that issued it (DER).
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_certificate
    }
}

/// Checks that `signature` is `certificate`'s (DER) key's signature of `message` under
/// `scheme` (a [`KeySigner::scheme`] name); says what is wrong otherwise.
pub fn verify_signature(
    certificate: &[u8],
    scheme: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use ring::signature as sig;
    let algorithm: &dyn sig::VerificationAlgorithm = match scheme {
        "ECDSA_NISTP256_SHA256" => &sig::ECDSA_P256_SHA256_ASN1,
        "RSA_PKCS1_SHA256" => &sig::RSA_PKCS1_2048_8192_SHA256,
        other => {
            return Err(format!(
                "`{other}` is not a signature scheme Treaty signs with"
            ));
        }
    };
    let key = checked::public_key(certificate)
        .map_err(|e| format!("the signing certificate is not a certificate: {e}"))?;
    sig::UnparsedPublicKey::new(algorithm, &*key)
        .verify(message, signature)
        .map_err(|_| {
            "the signature is not the certificate's key's signature of the statement".into()
        })
}

/// Checks that the certificate `der` was issued by the CA certificate `ca` (its issuer is the
/// CA's subject and its signature the CA key's); says what is wrong otherwise. A pair this
/// process has checked before is not checked again ([`checked`]).
pub fn verify_issued_by(der: &[u8], ca: &[u8]) -> Result<(), String> {
    checked::issued_by(der, ca, || issued_by(der, ca))
}

/// The issuer and the signature, nothing that depends on the time: its success is remembered
/// ([`checked`]). A check that does depend on it (a validity period, a CRL) belongs outside,
/// in every caller's path, never in here.
fn issued_by(der: &[u8], ca: &[u8]) -> Result<(), String> {
    use ring::signature as sig;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the certificate is not a certificate: {e}"))?;
    let (_, ca) = X509Certificate::from_der(ca)
        .map_err(|e| format!("the CA certificate is not a certificate: {e}"))?;
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(format!(
            "the certificate was issued by `{}`, not by the CA `{}`",
            cert.issuer(),
            ca.subject()
        ));
    }
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let algorithm: &dyn sig::VerificationAlgorithm = match oid.as_str() {
        "1.2.840.10045.4.3.2" => &sig::ECDSA_P256_SHA256_ASN1,
        "1.2.840.10045.4.3.3" => &sig::ECDSA_P384_SHA384_ASN1,
        "1.3.101.112" => &sig::ED25519,
        "1.2.840.113549.1.1.11" => &sig::RSA_PKCS1_2048_8192_SHA256,
        other => {
            return Err(format!(
                "the certificate's signature algorithm {other} is not one Treaty checks"
            ));
        }
    };
    sig::UnparsedPublicKey::new(algorithm, ca.public_key().subject_public_key.data.as_ref())
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .map_err(|_| "the certificate's signature is not the CA's".to_owned())
}

/// What this process has already checked of certificates. The same few certificates (a
/// federation's agencies and its coordinator) sign statements every round — results, receipts,
/// keys of secure aggregation — and each statement's check began with an ECDSA verification of
/// the certificate by its CA (some 0.1 ms) and a parse of its DER. A pair (certificate, CA)
/// found issued, and a certificate's public key, are remembered by the SHA-256 of their bytes,
/// so a certificate that differs by one byte is checked afresh; failures are not remembered.
/// Nothing in these checks depends on the time, so a remembered answer is the answer. At most
/// [`checked::REMEMBERED`] of each are kept: all are forgotten when one more would not fit.
pub(crate) mod checked {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, LazyLock, Mutex};

    use x509_parser::prelude::{FromDer, X509Certificate};

    /// The most pairs, and the most keys, remembered.
    pub(crate) const REMEMBERED: usize = 4096;

    type Digest = [u8; 32];

    #[derive(Default)]
    struct Checked {
        issued: HashSet<Digest>,
        keys: HashMap<Digest, Arc<[u8]>>,
    }

    static CHECKED: LazyLock<Mutex<Checked>> = LazyLock::new(Default::default);

    fn checked() -> std::sync::MutexGuard<'static, Checked> {
        CHECKED.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The SHA-256 of the parts, each preceded by its length.
    fn digest(parts: &[&[u8]]) -> Digest {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    /// `check`'s answer on whether `der` was issued by `ca`, unless this pair passed before.
    pub(crate) fn issued_by(
        der: &[u8],
        ca: &[u8],
        check: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let pair = digest(&[der, ca]);
        if checked().issued.contains(&pair) {
            return Ok(());
        }
        check()?;
        let mut checked = checked();
        if checked.issued.len() >= REMEMBERED {
            checked.issued.clear();
        }
        checked.issued.insert(pair);
        Ok(())
    }

    /// The subject public key of the certificate `der`.
    pub(crate) fn public_key(der: &[u8]) -> Result<Arc<[u8]>, String> {
        let id = digest(&[der]);
        if let Some(key) = checked().keys.get(&id) {
            return Ok(Arc::clone(key));
        }
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let key: Arc<[u8]> = cert.public_key().subject_public_key.data.as_ref().into();
        let mut checked = checked();
        if checked.keys.len() >= REMEMBERED {
            checked.keys.clear();
        }
        checked.keys.insert(id, Arc::clone(&key));
        Ok(key)
    }

    /// How many pairs and keys are remembered (for the tests).
    #[cfg(test)]
    pub(crate) fn sizes() -> (usize, usize) {
        let checked = checked();
        (checked.issued.len(), checked.keys.len())
    }
}

/// A certificate's subject, as text.
pub fn subject_of(der: &[u8]) -> Result<String, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    Ok(cert.subject().to_string())
}

/// A certificate's DER as PEM text.
pub fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The DER of the one certificate of a PEM text (evidence names one certificate: a text of
/// several, whichever a reader would take, is refused).
pub fn certificate_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let mut all = CertificateDer::pem_slice_iter(pem);
    let first = all
        .next()
        .ok_or_else(|| "holds no PEM certificate".to_owned())?
        .map(|c| c.to_vec())
        .map_err(|e| {
            format!(
                "is not a PEM certificate: {}",
                pem_problem(&e, "CERTIFICATE")
            )
        })?;
    if all.next().is_some() {
        return Err("holds more than one certificate".into());
    }
    Ok(first)
}

/// Checks that `der` is a certificate of a coordinator identity (`treaty://coordinator/NAME`)
/// issued by the CA `ca`; its identity.
pub fn verify_coordinator(der: &[u8], ca: &[u8]) -> Result<Identity, String> {
    verify_issued_by(der, ca)?;
    let identity = Identity::from_certificate(&CertificateDer::from(der.to_vec()))
        .map_err(|e| format!("the signing certificate names no Treaty identity: {e}"))?;
    match identity {
        Identity::Coordinator { .. } => Ok(identity),
        other => Err(format!(
            "the signing certificate is {other}'s, not a coordinator's"
        )),
    }
}

/// Reads every CRL of a PEM file (an empty file holds none).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: pem_problem(&e, "X509 CRL"),
        })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// This party's certificate chain, key and the identity its certificate names.
fn own_identity(
    files: &TlsFiles,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Identity,
    ),
    TlsError,
> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let identity = Identity::from_certificate(&certs[0]).map_err(|source| TlsError::Identity {
        path: files.cert.clone(),
        source,
    })?;
    Ok((certs, key, identity))
}

/// A server configuration and the serial numbers its CRL revokes.
#[derive(Debug, Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    revoked: Arc<HashSet<String>>,
}

fn build_server_config(
    files: &TlsFiles,
    crl: Option<&Path>,
) -> Result<(Loaded, Identity), TlsError> {
    let (certs, key, identity) = own_identity(files)?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&files.ca_cert)?, provider());
    let mut revoked = HashSet::new();
    if let Some(crl) = crl {
        let crls = load_crls(crl)?;
        revoked = serials_of(&crls, crl)?;
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("`{}`: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let loaded = Loaded {
        config: Arc::new(config),
        revoked: Arc::new(revoked),
    };
    Ok((loaded, identity))
}

/// The verified peer of a connection, available in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The identity of the peer's verified certificate.
    pub identity: Identity,
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The serial number of the peer's certificate, hex.
    pub serial: String,
}

/// A server-side TLS connection whose peer has been verified.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The coordinator's TLS: its configuration, rebuilt when the CRL file changes.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    crl: Option<PathBuf>,
    identity: Identity,
    current: Mutex<(Option<FileStamp>, Loaded)>,
}

/// When a file was last modified, and its length: a change of either means it was rewritten.
type FileStamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl ServerTls {
    /// Loads the coordinator's certificate, key, CA and (optionally) CRL, checking them all now.
    pub fn new(files: TlsFiles, crl: Option<PathBuf>) -> Result<Self, TlsError> {
        let crl_stamp = crl.as_deref().and_then(stamp);
        let (loaded, identity) = build_server_config(&files, crl.as_deref())?;
        Ok(ServerTls {
            files,
            crl,
            identity,
            current: Mutex::new((crl_stamp, loaded)),
        })
    }

    /// The identity of the server's own certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The configuration in force, reloading the CRL when its file changed. A CRL that no longer
    /// loads keeps the previous one in force and is logged: revocations already in force are
    /// never dropped because of a bad write.
    fn current(&self) -> Loaded {
        // The pair is always whole (replaced in one assignment), so a poisoned lock is usable.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(crl) = &self.crl {
            let now = stamp(crl);
            if now != current.0 {
                match build_server_config(&self.files, Some(crl)) {
                    Ok((loaded, _)) => {
                        tracing::info!(crl = %crl.display(), revoked = loaded.revoked.len(), "revocation list changed; reloaded");
                        *current = (now, loaded);
                    }
                    Err(error) => {
                        tracing::error!(crl = %crl.display(), %error, "revocation list changed but cannot be loaded; keeping the previous one");
                    }
                }
            }
        }
        current.1.clone()
    }

    /// Whether the certificate with this serial number (hex, as in [`PeerInfo::serial`]) is
    /// revoked by the CRL in force now. Connections opened before a revocation use this to end
    /// themselves.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.current().revoked.contains(serial)
    }

    /// Accepts connections on `listener`, handshakes each on its own task and yields only the
    /// verified ones. A failed handshake is logged with the peer's address and reason, and the
    /// server goes on serving everyone else.
    pub fn incoming(self: Arc<Self>, listener: TcpListener) -> ReceiverStream<io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, remote_addr) = tokio::select! {
                    _ = tx.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(self.current().config);
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Err(_) => tracing::warn!(%remote_addr, "TLS handshake timed out"),
                        Ok(Err(error)) => {
                            tracing::warn!(%remote_addr, %error, "TLS handshake refused")
                        }
                        Ok(Ok(stream)) => match verified_peer(&stream, remote_addr) {
                            Ok(peer) => {
                                tracing::debug!(%remote_addr, identity = %peer.identity, "TLS connection verified");
                                let _ = tx
                                    .send(Ok(TlsConn {
                                        inner: stream,
                                        peer,
                                    }))
                                    .await;
                            }
                            Err(error) => {
                                tracing::warn!(%remote_addr, %error, "certificate names no usable identity; connection closed")
                            }
                        },
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn verified_peer(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    remote_addr: SocketAddr,
) -> Result<PeerInfo, crate::error::IdentityError> {
    let (_, conn) = stream.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(crate::error::IdentityError::Missing)?;
    let identity = Identity::from_certificate(cert)?;
    Ok(PeerInfo {
        identity,
        remote_addr,
        serial: serial_hex(cert),
    })
}

/// The serial numbers (lowercase hex) a PEM file of revocation lists revokes.
pub fn revoked_serials(path: &Path) -> Result<HashSet<String>, TlsError> {
    serials_of(&load_crls(path)?, path)
}

/// The serial numbers (lowercase hex) the revocation lists `crls`, read from `path`, revoke.
fn serials_of(
    crls: &[CertificateRevocationListDer<'_>],
    path: &Path,
) -> Result<HashSet<String>, TlsError> {
    let mut revoked = HashSet::new();
    for der in crls {
        let (_, parsed) =
            CertificateRevocationList::from_der(der.as_ref()).map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                message: format!("not a revocation list: {e}"),
            })?;
        revoked.extend(
            parsed
                .iter_revoked_certificates()
                .map(|r| hex(r.raw_serial())),
        );
    }
    Ok(revoked)
}

/// The serial number of a certificate, lowercase hex; empty when it cannot be parsed.
pub fn serial_hex(cert: &CertificateDer<'_>) -> String {
    X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| hex(c.tbs_certificate.raw_serial()))
        .unwrap_or_default()
}

/// A client's TLS: dials the coordinator with this party's certificate.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    identity: Identity,
}

impl ClientTls {
    /// Loads this party's certificate, key and the federation CA, checking them now.
    pub fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        let (certs, key, identity) = own_identity(files)?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots(&files.ca_cert)?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("`{}`: {e}", files.key.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            identity,
        })
    }

    /// The identity of this party's own certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Opens a gRPC channel to the coordinator at `address` (`host:port`). The server must present
    /// a certificate of the federation CA, valid for `host`, naming a coordinator.
    pub async fn connect(
        &self,
        address: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let connector = TlsConnector::from(self.config.clone());
        endpoint
            .connect_with_connector(tower::service_fn(move |uri: Uri| {
                let connector = connector.clone();
                async move { dial(connector, uri).await.map(TokioIo::new) }
            }))
            .await
    }
}

async fn dial(
    connector: TlsConnector,
    uri: Uri,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let host = uri
        .host()
        .ok_or_else(|| bad("the coordinator address has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .ok_or_else(|| bad("the coordinator address has no port"))?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| bad("the coordinator address is not a valid host name"))?;
    let stream = connector.connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(Identity::from_certificate);
    match identity {
        Some(Ok(Identity::Coordinator { .. })) => Ok(stream),
        Some(Ok(other)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the server at {host}:{port} presented `{other}`, which is not a coordinator"),
        )),
        Some(Err(e)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            e.to_string(),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server presented no certificate",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, InitOptions, PkiDir};

    /// A federation's PKI with the agencies `DE-BKA` and `FR-DGDDI`: its directory.
    fn federation(root: &Path, name: &str) -> PkiDir {
        let dir = PkiDir::new(root.join(name));
        pki::init(
            &dir,
            &InitOptions {
                federation: name.into(),
                coordinator: "hub".into(),
                coordinator_hosts: vec![],
                operators: vec![],
                agencies: vec![
                    ("DE-BKA".into(), "DE".into()),
                    ("FR-DGDDI".into(), "FR".into()),
                ],
                validity_days: 30,
            },
        )
        .unwrap();
        dir
    }

    fn der(path: &Path) -> Vec<u8> {
        certificate_der(&std::fs::read(path).unwrap()).unwrap()
    }

    fn agency(dir: &PkiDir, id: &str, country: &str) -> (Vec<u8>, KeySigner) {
        let (cert, key) = dir.cert_and_key(&Identity::agency(country, id).unwrap());
        let signer = KeySigner::load(&TlsFiles {
            ca_cert: dir.ca_cert(),
            cert: cert.clone(),
            key,
        })
        .unwrap();
        (der(&cert), signer)
    }

    /// A remembered check answers for its own bytes only: the same certificate under another
    /// CA, a certificate altered by one byte, another certificate's key.
    #[test]
    fn a_remembered_check_answers_only_for_the_same_bytes() {
        let root = tempfile::tempdir().unwrap();
        let (one, two) = (
            federation(root.path(), "one"),
            federation(root.path(), "two"),
        );
        let (ca_one, ca_two) = (der(&one.ca_cert()), der(&two.ca_cert()));
        let (bka, bka_signer) = agency(&one, "DE-BKA", "DE");
        let (dgddi, _) = agency(&one, "FR-DGDDI", "FR");

        for _ in 0..2 {
            verify_issued_by(&bka, &ca_one).unwrap();
        }
        let other = verify_issued_by(&bka, &ca_two).unwrap_err();
        assert!(other.contains("not by the CA"), "{other}");
        // The signature's last byte changed: still parsed, no longer the CA's.
        let mut altered = bka.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let forged = verify_issued_by(&altered, &ca_one).unwrap_err();
        assert!(forged.contains("not the CA's"), "{forged}");
        verify_issued_by(&bka, &ca_one).unwrap();

        let message = b"round 7: 1,000 examples";
        let signature = bka_signer.sign(message).unwrap();
        let scheme = bka_signer.scheme();
        for _ in 0..2 {
            verify_signature(&bka, &scheme, message, &signature).unwrap();
        }
        let wrong = verify_signature(&dgddi, &scheme, message, &signature).unwrap_err();
        assert!(wrong.contains("not the certificate's key's"), "{wrong}");
        let changed = verify_signature(&bka, &scheme, b"round 7: 9,000 examples", &signature);
        assert!(changed.is_err());
        let garbage = verify_signature(b"not a certificate", &scheme, message, &signature);
        assert!(garbage.unwrap_err().contains("not a certificate"));
    }

    /// What is remembered stays within its bound however many certificates pass.
    #[test]
    fn what_is_remembered_is_bounded() {
        for i in 0..checked::REMEMBERED + 10 {
            checked::issued_by(format!("certificate {i}").as_bytes(), b"ca", || Ok(())).unwrap();
        }
        let (issued, keys) = checked::sizes();
        assert!(issued <= checked::REMEMBERED, "{issued} pairs remembered");
        assert!(keys <= checked::REMEMBERED, "{keys} keys remembered");
        // A failed check is not remembered: the next asks again.
        let mut asked = 0;
        for _ in 0..2 {
            let _ = checked::issued_by(b"refused", b"ca", || {
                asked += 1;
                Err("no".into())
            });
        }
        assert_eq!(asked, 2);
    }
}

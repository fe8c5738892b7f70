//! A development PKI for a federation, in one directory.
//!
//! `treaty pki init` makes the federation CA, the coordinator's certificate (a server certificate
//! for `localhost`, the loopback addresses and any other host names given), operator certificates
//! and one client certificate per agency, each naming its identity in a SAN URI, plus an empty
//! CRL. `treaty pki revoke` adds a certificate to the CRL. Private keys are written with mode
//! 0600. Production federations bring their own CA and keys; Treaty only needs the PEM files.
//!
//! Layout: `ca.crt`, `ca.key`, `crl.pem`, `coordinator.crt`/`.key`,
//! `operator-<name>.crt`/`.key`, `agency-<CC>-<id>.crt`/`.key` (country and id: an agency is both).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::PkiError;
use crate::identity::Identity;
use crate::tls::pem_problem;

/// Paths of a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiDir { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// The certificate and key paths of an identity.
    pub fn cert_and_key(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let stem = match identity {
            Identity::Agency { agency, country } => format!("agency-{country}-{agency}"),
            Identity::Coordinator { .. } => "coordinator".to_owned(),
            Identity::Operator { name } => format!("operator-{name}"),
        };
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

/// What `treaty pki init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The federation's name, in the CA's subject.
    pub federation: String,
    /// The coordinator's name (`treaty://coordinator/<name>`).
    pub coordinator: String,
    /// Host names or addresses the coordinator is reached at, besides `localhost` and loopback.
    pub coordinator_hosts: Vec<String>,
    /// Operator names.
    pub operators: Vec<String>,
    /// Agencies as (agency id, country).
    pub agencies: Vec<(String, String)>,
    /// How long certificates are valid.
    pub validity_days: u32,
}

/// Parses `DE-BKA:DE` into (agency id, country).
pub fn parse_agency_spec(spec: &str) -> Result<(String, String), PkiError> {
    let (agency, country) = spec.split_once(':').ok_or_else(|| PkiError::AgencySpec {
        spec: spec.to_owned(),
    })?;
    Identity::agency(country, agency)?;
    Ok((agency.to_owned(), country.to_owned()))
}

/// Makes a new PKI in `dir` (created if missing). Refuses to overwrite an existing CA.
pub fn init(dir: &PkiDir, options: &InitOptions) -> Result<Vec<PathBuf>, PkiError> {
    if dir.ca_key().exists() {
        return Err(PkiError::Exists(dir.dir().to_owned()));
    }
    std::fs::create_dir_all(dir.dir()).map_err(|source| PkiError::Write {
        path: dir.dir().to_owned(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Treaty federation CA ({})", options.federation),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(options.validity_days) + 365);
    let ca_cert = params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    write_file(
        &dir.ca_cert(),
        ca_cert.pem().as_bytes(),
        false,
        &mut written,
    )?;
    write_file(
        &dir.ca_key(),
        ca_key.serialize_pem().as_bytes(),
        true,
        &mut written,
    )?;
    let issuer = Issuer::new(params, ca_key);
    write_crl(dir, &issuer, &[], 1, &mut written)?;

    let mut identities = vec![Identity::coordinator(&options.coordinator)?];
    for name in &options.operators {
        identities.push(Identity::operator(name)?);
    }
    for (agency, country) in &options.agencies {
        identities.push(Identity::agency(country, agency)?);
    }
    let validity = Validity::days_from_now(options.validity_days);
    for identity in &identities {
        let (cert, key) = issue_with(&issuer, identity, &options.coordinator_hosts, validity)?;
        let (cert_path, key_path) = dir.cert_and_key(identity);
        write_file(&cert_path, cert.as_bytes(), false, &mut written)?;
        write_file(&key_path, key.as_bytes(), true, &mut written)?;
    }
    Ok(written)
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (for clock skew) to `days` from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// Loads the CA of a PKI directory so that it can sign.
pub fn load_issuer(dir: &PkiDir) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert = read_string(&dir.ca_cert())?;
    let key = read_string(&dir.ca_key())?;
    let key = KeyPair::from_pem(&key).map_err(|e| PkiError::Corrupt {
        path: dir.ca_key(),
        message: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| PkiError::Corrupt {
        path: dir.ca_cert(),
        message: e.to_string(),
    })
}

/// Issues a certificate for `identity` and writes it (and its key) into the PKI directory.
pub fn issue(
    dir: &PkiDir,
    identity: &Identity,
    hosts: &[String],
    validity_days: u32,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let issuer = load_issuer(dir)?;
    let (cert, key) = issue_with(
        &issuer,
        identity,
        hosts,
        Validity::days_from_now(validity_days),
    )?;
    let (cert_path, key_path) = dir.cert_and_key(identity);
    let mut written = Vec::new();
    write_file(&cert_path, cert.as_bytes(), false, &mut written)?;
    write_file(&key_path, key.as_bytes(), true, &mut written)?;
    Ok((cert_path, key_path))
}

/// Signs a certificate for `identity` with `issuer`; returns (certificate PEM, key PEM).
///
/// A coordinator certificate is a server certificate for `localhost`, 127.0.0.1, ::1 and `hosts`,
/// each name once; every other identity gets a client certificate.
pub fn issue_with(
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    hosts: &[String],
    validity: Validity,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.to_string());
    params.serial_number = Some(random_serial());
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    if let Identity::Coordinator { .. } = identity {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
            .subject_alt_names
            .push(SanType::DnsName("localhost".try_into()?));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        for host in hosts {
            // Each name once: `localhost`, the loopback addresses or a host given twice are
            // already there (DNS names compare without case).
            let name = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.to_ascii_lowercase().try_into()?),
            };
            if !params.subject_alt_names.contains(&name) {
                params.subject_alt_names.push(name);
            }
        }
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Adds the certificate at `cert_path` to the PKI's CRL; returns its serial number in hex.
/// Revoking a certificate twice is harmless.
pub fn revoke(dir: &PkiDir, cert_path: &Path) -> Result<String, PkiError> {
    let issuer = load_issuer(dir)?;
    let cert_der = read_pem_der::<CertificateDer>(cert_path, "CERTIFICATE")?;
    let ca_der = read_pem_der::<CertificateDer>(&dir.ca_cert(), "CERTIFICATE")?;
    let parse_err = |path: &Path, e: String| PkiError::Parse {
        path: path.to_owned(),
        message: e,
    };
    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| parse_err(cert_path, e.to_string()))?;
    let (_, ca) =
        X509Certificate::from_der(&ca_der).map_err(|e| parse_err(&dir.ca_cert(), e.to_string()))?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(PkiError::ForeignCertificate {
            path: cert_path.to_owned(),
        });
    }
    let serial = cert.tbs_certificate.raw_serial().to_vec();

    let crl_der = read_pem_der::<CertificateRevocationListDer>(&dir.crl(), "X509 CRL")?;
    let (_, crl) =
        CertificateRevocationList::from_der(&crl_der).map_err(|e| PkiError::Corrupt {
            path: dir.crl(),
            message: e.to_string(),
        })?;
    let mut revoked: Vec<RevokedCertParams> = crl
        .iter_revoked_certificates()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                    .map_err(|e| PkiError::Corrupt {
                        path: dir.crl(),
                        message: e.to_string(),
                    })?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<_, PkiError>>()?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(1)
        + 1;
    if !revoked
        .iter()
        .any(|r| r.serial_number.as_ref() == serial.as_slice())
    {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    let mut written = Vec::new();
    write_crl(dir, &issuer, &revoked, number, &mut written)?;
    Ok(crate::hex::hex(&serial))
}

fn write_crl(
    dir: &PkiDir,
    issuer: &Issuer<'_, KeyPair>,
    revoked: &[RevokedCertParams],
    number: u64,
    written: &mut Vec<PathBuf>,
) -> Result<(), PkiError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(365),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked.to_vec(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer)?;
    // Write to a temporary file and rename, so that a reader never sees half a CRL.
    let tmp = dir.crl().with_extension("pem.tmp");
    write_file(&tmp, crl.pem()?.as_bytes(), false, written)?;
    written.pop();
    std::fs::rename(&tmp, dir.crl()).map_err(|source| PkiError::Write {
        path: dir.crl(),
        source,
    })?;
    written.push(dir.crl());
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // ring's system random; failure of the OS RNG is not recoverable here.
    let _ = ring_fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and of full length
    SerialNumber::from_slice(&bytes)
}

fn ring_fill(bytes: &mut [u8]) -> Result<(), rustls::Error> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(bytes)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The DER of the first `label` block of the PEM file at `path` (`T`: a certificate or a CRL),
/// read by `rustls-pki-types`' PEM parser.
fn read_pem_der<T: PemObject + AsRef<[u8]>>(path: &Path, label: &str) -> Result<Vec<u8>, PkiError> {
    let text = read_string(path)?;
    T::from_pem_slice(text.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            message: pem_problem(&e, label),
        })
}

fn write_file(
    path: &Path,
    contents: &[u8],
    private: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    written.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agency_of_another_country_with_the_same_id_gets_its_own_files() {
        let dir = PkiDir::new(PathBuf::from("pki"));
        let de = dir.cert_and_key(&Identity::agency("DE", "DE-BKA").unwrap());
        let nl = dir.cert_and_key(&Identity::agency("NL", "DE-BKA").unwrap());
        assert_ne!(de.0, nl.0);
        assert_ne!(de.1, nl.1);
        assert_eq!(de.0, PathBuf::from("pki/agency-DE-DE-BKA.crt"));
    }

    fn options() -> InitOptions {
        InitOptions {
            federation: "test".into(),
            coordinator: "hub".into(),
            coordinator_hosts: vec!["coordinator.example".into()],
            operators: vec!["alice".into()],
            agencies: vec![
                ("DE-BKA".into(), "DE".into()),
                ("NL-POLITIE".into(), "NL".into()),
            ],
            validity_days: 30,
        }
    }

    #[test]
    fn init_writes_identities_and_private_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        init(&dir, &options()).unwrap();
        let id = Identity::agency("DE", "DE-BKA").unwrap();
        let (cert, key) = dir.cert_and_key(&id);
        let der = crate::tls::load_certs(&cert).unwrap();
        assert_eq!(Identity::from_certificate(&der[0]).unwrap(), id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = std::fs::metadata(dir.ca_key())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        // A second init over the same directory is refused: the CA is never overwritten.
        assert!(matches!(init(&dir, &options()), Err(PkiError::Exists(_))));
    }

    #[test]
    fn the_coordinator_certificate_names_each_host_once() {
        use x509_parser::extensions::GeneralName;
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        let hosts = [
            "127.0.0.1",
            "localhost",
            "LocalHost",
            "::1",
            "[::1]",
            "hub.example",
            "Hub.Example",
            "10.0.0.5",
        ];
        let options = InitOptions {
            coordinator_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..options()
        };
        init(&dir, &options).unwrap();
        let (cert, _) = dir.cert_and_key(&Identity::coordinator("hub").unwrap());
        let der = crate::tls::load_certs(&cert).unwrap();
        let (_, parsed) = X509Certificate::from_der(&der[0]).unwrap();
        let names: Vec<String> = parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "URI:treaty://coordinator/hub".to_owned(),
                "DNS:localhost".to_owned(),
                format!("IP:{:?}", [127u8, 0, 0, 1]),
                format!(
                    "IP:{:?}",
                    [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                ),
                "DNS:hub.example".to_owned(),
                format!("IP:{:?}", [10u8, 0, 0, 5]),
            ]
        );
    }

    #[test]
    fn revoke_lists_the_serial_in_the_crl() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        init(&dir, &options()).unwrap();
        let (cert, _) = dir.cert_and_key(&Identity::agency("NL", "NL-POLITIE").unwrap());
        let serial = revoke(&dir, &cert).unwrap();
        let again = revoke(&dir, &cert).unwrap();
        assert_eq!(serial, again);
        let der = read_pem_der::<CertificateRevocationListDer>(&dir.crl(), "X509 CRL").unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(listed, vec![serial]);
        assert_eq!(
            crl.crl_number().and_then(|n| u64::try_from(n).ok()),
            Some(3)
        );
    }

    #[test]
    fn revoke_refuses_a_foreign_certificate() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init(&PkiDir::new(a.path()), &options()).unwrap();
        init(&PkiDir::new(b.path()), &options()).unwrap();
        let (foreign, _) =
            PkiDir::new(b.path()).cert_and_key(&Identity::operator("alice").unwrap());
        assert!(matches!(
            revoke(&PkiDir::new(a.path()), &foreign),
            Err(PkiError::ForeignCertificate { .. })
        ));
    }

    #[test]
    fn revoke_names_a_file_that_is_not_a_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        init(&dir, &options()).unwrap();
        let (_, key) = dir.cert_and_key(&Identity::operator("alice").unwrap());
        let e = revoke(&dir, &key).unwrap_err().to_string();
        assert!(
            e.contains("operator-alice.key")
                && e.contains("no `-----BEGIN CERTIFICATE-----` block"),
            "{e}"
        );
    }
}

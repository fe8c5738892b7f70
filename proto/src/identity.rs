//! The identity scheme: who a certificate speaks for.
//!
//! Every certificate of a federation carries exactly one SAN URI of the form
//! `treaty://agency/<CC>/<agency-id>`, `treaty://coordinator/<name>` or
//! `treaty://operator/<name>`. After TLS has verified the chain, this URI is the only source of
//! identity anywhere in Treaty: no message field can claim one.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::IdentityError;

/// The URI scheme of Treaty identities.
pub const SCHEME: &str = "treaty://";

/// Who a verified certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A national agency's node: its country (ISO 3166-1 alpha-2) and its agency id.
    Agency { country: String, agency: String },
    /// The federation's coordinator.
    Coordinator { name: String },
    /// A person or tool allowed to run the federation (create federations and jobs).
    Operator { name: String },
}

impl Identity {
    /// An agency identity, checking both parts.
    pub fn agency(country: &str, agency: &str) -> Result<Self, IdentityError> {
        check_country(country)?;
        check_name(agency)?;
        Ok(Identity::Agency {
            country: country.to_owned(),
            agency: agency.to_owned(),
        })
    }

    /// A coordinator identity, checking the name.
    pub fn coordinator(name: &str) -> Result<Self, IdentityError> {
        check_name(name)?;
        Ok(Identity::Coordinator {
            name: name.to_owned(),
        })
    }

    /// An operator identity, checking the name.
    pub fn operator(name: &str) -> Result<Self, IdentityError> {
        check_name(name)?;
        Ok(Identity::Operator {
            name: name.to_owned(),
        })
    }

    /// The agency id, when this is an agency.
    pub fn agency_id(&self) -> Option<&str> {
        match self {
            Identity::Agency { agency, .. } => Some(agency),
            _ => None,
        }
    }

    /// The agency as a federation names its member: `AGENCY-ID:CC`, e.g. `DE-BKA:DE` (the form
    /// `treaty pki init --agency` takes). `None` for a coordinator or an operator.
    pub fn member(&self) -> Option<String> {
        match self {
            Identity::Agency { country, agency } => Some(format!("{agency}:{country}")),
            _ => None,
        }
    }

    /// Reads a federation member, `AGENCY-ID:CC`. An agency is its id and its country
    /// together: `DE-BKA` alone, or the certificate's order `DE/DE-BKA`, is refused with the
    /// form to write instead.
    pub fn from_member(spec: &str) -> Result<Self, IdentityError> {
        let refuse = |hint: String| IdentityError::Member {
            spec: spec.to_owned(),
            hint,
        };
        if let Some((country, agency)) = spec.split_once('/') {
            return Err(refuse(format!("here `{agency}:{country}`")));
        }
        let Some((agency, country)) = spec.split_once(':') else {
            return Err(refuse(format!(
                "here `{spec}:<CC>` with the country code in its certificate, e.g. `DE-BKA:DE`"
            )));
        };
        Identity::agency(country, agency)
    }

    /// Reads the identity of a certificate: its one `treaty://` SAN URI.
    ///
    /// This does not verify the certificate; call it only on a chain TLS has verified.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = x509
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [uri] => uri.parse(),
            [] => Err(IdentityError::Missing),
            many => Err(IdentityError::Ambiguous(
                many.iter().map(|s| s.to_string()).collect(),
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agency { country, agency } => write!(f, "{SCHEME}agency/{country}/{agency}"),
            Identity::Coordinator { name } => write!(f, "{SCHEME}coordinator/{name}"),
            Identity::Operator { name } => write!(f, "{SCHEME}operator/{name}"),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["agency", country, agency] => Identity::agency(country, agency),
            ["coordinator", name] => Identity::coordinator(name),
            ["operator", name] => Identity::operator(name),
            _ => Err(bad()),
        }
    }
}

/// A country code is two uppercase ASCII letters (ISO 3166-1 alpha-2).
pub fn check_country(country: &str) -> Result<(), IdentityError> {
    if country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(IdentityError::Country(country.to_owned()))
    }
}

/// A name (agency id, coordinator or operator name) is 1 to 64 ASCII letters, digits, `-`, `_`
/// or `.`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for uri in [
            "treaty://agency/DE/DE-BKA",
            "treaty://coordinator/eu-hub",
            "treaty://operator/alice",
        ] {
            let id: Identity = uri.parse().unwrap();
            assert_eq!(id.to_string(), uri);
        }
    }

    #[test]
    fn members_name_the_country_in_one_form_only() {
        let de = Identity::from_member("DE-BKA:DE").unwrap();
        assert_eq!(de, Identity::agency("DE", "DE-BKA").unwrap());
        assert_eq!(de.member().as_deref(), Some("DE-BKA:DE"));
        // The same id in another country is another agency.
        assert_ne!(Identity::from_member("DE-BKA:NL").unwrap(), de);
        assert_eq!(Identity::operator("op").unwrap().member(), None);
        let slash = Identity::from_member("DE/DE-BKA").unwrap_err().to_string();
        assert!(
            slash.contains("write `AGENCY-ID:CC`, here `DE-BKA:DE`"),
            "{slash}"
        );
        let bare = Identity::from_member("DE-BKA").unwrap_err().to_string();
        assert!(bare.contains("`DE-BKA:<CC>`"), "{bare}");
        for bad in ["DE-BKA:de", "DE-BKA:", ":DE", "DE BKA:DE", "DE-BKA:DE:NL"] {
            assert!(Identity::from_member(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn malformed_uris_are_refused() {
        for uri in [
            "https://agency/DE/DE-BKA",
            "treaty://agency/de/DE-BKA",
            "treaty://agency/DEU/DE-BKA",
            "treaty://agency/DE/",
            "treaty://agency/DE/DE BKA",
            "treaty://agency/DE/DE-BKA/extra",
            "treaty://judge/alice",
            "treaty://operator/-alice",
        ] {
            assert!(uri.parse::<Identity>().is_err(), "{uri} was accepted");
        }
    }
}

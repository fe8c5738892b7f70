//! Errors of the wire layer: identities, tensors, TLS material and the PKI.

use std::path::PathBuf;

/// A certificate's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "`{0}` is not a Treaty identity (expected treaty://agency/<CC>/<id>, treaty://coordinator/<name> or treaty://operator/<name>)"
    )]
    Malformed(String),
    #[error(
        "`{0}` is not a country code (expected two uppercase letters, ISO 3166-1 alpha-2, e.g. `DE`)"
    )]
    Country(String),
    #[error(
        "`{0}` is not a valid name (1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit)"
    )]
    Name(String),
    #[error(
        "the certificate carries no treaty:// SAN URI, so it names no agency, coordinator or operator"
    )]
    Missing,
    #[error("the certificate carries several treaty:// SAN URIs ({}); exactly one is allowed", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error(
        "`{spec}` does not name a member agency with its country; write `AGENCY-ID:CC`, {hint}"
    )]
    Member { spec: String, hint: String },
}

/// A tensor on the wire is malformed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("tensor `{name}` has no dtype")]
    NoDtype { name: String },
    #[error("tensor `{name}` has shape {shape:?}, which overflows")]
    ShapeOverflow { name: String, shape: Vec<u64> },
    #[error("tensor `{name}` declares {declared} elements, above the limit of {limit}")]
    TooLarge {
        name: String,
        declared: u64,
        limit: u64,
    },
    #[error("tensor `{name}` should have {expected} bytes but has {actual}")]
    Length {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("chunk for tensor index {index} names no tensor of the header ({count} tensors)")]
    UnknownTensor { index: u32, count: usize },
    #[error("chunk of tensor `{name}` starts at byte {offset}, expected {expected}")]
    Gap {
        name: String,
        offset: u64,
        expected: u64,
    },
    #[error("chunk of tensor `{name}` has {len} bytes, above the chunk limit of {limit}")]
    ChunkTooLarge {
        name: String,
        len: usize,
        limit: usize,
    },
    #[error("chunk of tensor `{name}` runs past its end ({end} > {size} bytes)")]
    Overrun { name: String, end: u64, size: u64 },
    #[error("tensor `{name}` holds a non-finite value at element {index}")]
    NotFinite { name: String, index: usize },
    #[error(
        "tensor `{name}` holds masked ring elements (`DTYPE_U64`) where real values are expected"
    )]
    NotReal { name: String },
    #[error(
        "tensor `{name}` holds real values where masked ring elements (`DTYPE_U64`) are expected"
    )]
    NotMasked { name: String },
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("expected tensor `{expected}`, found `{actual}`")]
    Name { expected: String, actual: String },
    #[error("expected {expected} tensors, found {actual}")]
    Count { expected: usize, actual: usize },
    #[error("the stream ended before its header")]
    NoHeader,
    #[error("a second header arrived in one stream")]
    SecondHeader,
    #[error("two tensors are named `{0}`")]
    DuplicateName(String),
}

/// TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("`{path}` is not valid PEM: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration is invalid: {0}")]
    Config(String),
    #[error("the certificate in `{path}` has no usable identity: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
}

/// The development PKI could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` already holds a PKI; choose another directory or remove it first")]
    Exists(PathBuf),
    #[error("`{spec}` is not an agency (expected AGENCY-ID:CC, e.g. `DE-BKA:DE`)")]
    AgencySpec { spec: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("`{path}` is not a certificate: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{path}` was not issued by this federation's CA")]
    ForeignCertificate { path: PathBuf },
    #[error("`{path}` is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl PkiError {
    /// Whether the error is about the caller's input: a PKI directory or certificate that is
    /// missing, unreadable, corrupt or foreign, or a name that is not valid. Writing files and
    /// generating keys are failures of the machine.
    pub fn is_unusable(&self) -> bool {
        match self {
            PkiError::Read { .. }
            | PkiError::Parse { .. }
            | PkiError::Corrupt { .. }
            | PkiError::Exists(_)
            | PkiError::AgencySpec { .. }
            | PkiError::Identity(_)
            | PkiError::ForeignCertificate { .. } => true,
            PkiError::Write { .. } | PkiError::Generate(_) => false,
        }
    }
}

/// An enum field of a message holds a value this build does not know, or leaves unspecified a
/// value that is needed. prost keeps such a field as the `i32` that arrived; [`crate::enums`]
/// decodes it into this error rather than reading it as "unspecified".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnumError {
    #[error(
        "{field} is {value}, a value this build does not know; the sender speaks another version of the protocol"
    )]
    Unknown { field: String, value: i32 },
    #[error("{field} is not given")]
    Unspecified { field: String },
}

/// A schema cannot be written as TOML.
#[derive(Debug, thiserror::Error)]
pub enum SchemaTomlError {
    #[error("the schema cannot be written: {0}")]
    Enum(#[from] EnumError),
    #[error("the schema cannot be written as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
}

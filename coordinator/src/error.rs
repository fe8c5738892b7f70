//! The coordinator's errors, and how each reaches a gRPC caller: mapped to a `Status` in one
//! place, `impl From<CoordinatorError> for Status`.

use std::path::PathBuf;

use treaty_policies::{LoadError, RequestError};
pub use treaty_proto::config::ConfigError;
use treaty_proto::{Identity, TensorError};

use crate::federation::InvalidFederation;
use crate::limits::BoundError;
use crate::tasks::DeliveryError;
use crate::valid_job::InvalidJob;

/// Something the coordinator could not do.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    // Starting, storing and serving: the coordinator's own failures.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] treaty_proto::TlsError),
    #[error("the database at `{path}` cannot be opened: {source}")]
    OpenStore { path: PathBuf, source: sled::Error },
    #[error("the database failed: {0}")]
    Store(#[from] sled::Error),
    #[error("cannot serve metrics on {address} (`[monitoring] listen`): {source}")]
    Monitoring {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("a stored record is corrupt: {what} `{key}`: {source}")]
    CorruptRecord {
        what: &'static str,
        key: String,
        source: prost::DecodeError,
    },
    #[error(
        "the audit log is not what its hash chain and signed heads say: {0}; it was altered or damaged outside the coordinator — keep the data directory as it is for investigation and restore it from a backup"
    )]
    AuditChain(#[from] crate::audit::ChainBreak),
    #[error(
        "the audit log has no signed head yet: the coordinator signs its log with its TLS key from its next start"
    )]
    AuditUnsigned,
    #[error("the model's provenance cannot be stated: {0}")]
    Manifest(String),
    #[error("a stored record is corrupt: audit entry: {0}")]
    CorruptAudit(#[source] serde_json::Error),
    #[error("a stored record is corrupt: the job counter")]
    CorruptCounter,
    #[error("a stored record is corrupt: model `{version}` is missing")]
    MissingModel { version: String },
    #[error("a stored record is corrupt: model `{version}`: {source}")]
    CorruptModel {
        version: String,
        source: TensorError,
    },
    #[error("model `{version}` cannot be read from `{file}` in the data directory: {problem}")]
    ModelFile {
        version: String,
        file: String,
        problem: String,
    },
    #[error("the stored spec of job `{job}` cannot run: {source}")]
    StoredJob { job: String, source: InvalidJob },
    #[error("the reflection service cannot be built: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("work on a blocking thread did not finish: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("checking a result failed (a bug: the coordinator's log has the panic)")]
    CheckPanicked,

    // Why a job stopped before its end (its `message`).
    #[error("federation `{federation}` no longer exists")]
    FederationGone { federation: String },
    #[error(
        "round {round}: only {} member(s) connected ({}) after {waited_secs} s; the job needs {min}",
        connected.len(),
        connected.join(", ")
    )]
    TooFewConnected {
        round: u32,
        /// The connected members, `AGENCY-ID:CC`.
        connected: Vec<String>,
        waited_secs: u64,
        min: usize,
    },
    #[error(
        "{what}: the sharing policies admit {} agencies ({}), fewer than the {min} the job needs; {}",
        admitted.len(),
        admitted.join(", "),
        why.join(" ")
    )]
    TooFewAdmitted {
        /// `statistics round` or `round N`.
        what: String,
        admitted: Vec<String>,
        min: usize,
        /// Each agency left out: `AGENCY: CODE: explanation`.
        why: Vec<String>,
    },
    #[error(
        "{what}: {results} usable result(s), fewer than the {min} the job needs ({})",
        why.join("; ")
    )]
    TooFewResults {
        what: String,
        results: usize,
        min: usize,
        /// Each agency left out: `AGENCY: why`.
        why: Vec<String>,
    },
    #[error("{what}: {problem}")]
    SecureAggregation { what: String, problem: String },
    #[error("round {round}: {source}; fix it and start the job again")]
    Registry { round: u32, source: LoadError },
    #[error("round {round}: {source}")]
    PolicyKeys { round: u32, source: LoadError },
    #[error("round {round}: the policy engine cannot decide it: {source}")]
    Undecidable { round: u32, source: RequestError },

    // Refused requests: the caller's to fix.
    #[error("no verified client certificate")]
    NoCertificate,
    #[error("the certificate of `{identity}` has been revoked")]
    Revoked { identity: Identity },
    #[error("`{identity}` is not an agency; only agency certificates may use the agency service")]
    NotAnAgency { identity: Identity },
    #[error("`{identity}` is not an operator; only operator certificates may use the operator API")]
    NotAnOperator { identity: Identity },
    #[error(
        "`{agency}` is not a member of federation `{federation}` (members are agencies of a country: id and country together)"
    )]
    NotAMember {
        agency: Identity,
        federation: String,
    },
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error(
        "`{identity}` already has {limit} model downloads open, the most one peer may have at once; finish or cancel one first"
    )]
    TooManyDownloads { identity: Identity, limit: usize },
    #[error(
        "a round of this job would hold {holdings} bytes of updates: {strategy} must see every update at once ({members} members x {parameters} parameters x 8 bytes), above the coordinator's `limits.max_round_memory_bytes` of {limit}; use FEDAVG or a server optimiser (they fold updates in as they arrive), a smaller model or federation, or ask the coordinator's operator to raise the limit"
    )]
    RoundMemory {
        holdings: u128,
        strategy: &'static str,
        members: usize,
        parameters: u64,
        limit: u64,
    },
    #[error(transparent)]
    InvalidJob(#[from] InvalidJob),
    #[error(transparent)]
    InvalidFederation(#[from] InvalidFederation),
    #[error("a federation named `{name}` already exists")]
    FederationExists { name: String },
    #[error("federation `{name}` does not exist; create it first")]
    UnknownFederation { name: String },
    #[error("job `{job}` does not exist")]
    UnknownJob { job: String },
    #[error("job `{job}` has no model version `{version}`")]
    NotAVersionOfJob { job: String, version: String },
    #[error("model version `{version}` does not exist")]
    UnknownModelVersion { version: String },

    // An agency's session and uploads.
    #[error("no Hello within {secs} s of opening the session")]
    NoHello { secs: u64 },
    #[error("the first message of a session must be Hello")]
    NotHello,
    #[error("Hello refused: {0}")]
    HelloOverBound(#[source] BoundError),
    #[error(
        "the node speaks protocol version {node}, this coordinator speaks {ours}; upgrade the older side"
    )]
    ProtocolVersion { node: u32, ours: u32 },
    #[error("the session closed")]
    SessionClosed,
    #[error(
        "session closed after {count} unusable messages (empty, over a bound, or about tasks that are not yours)"
    )]
    TooManyUnusable { count: u32 },
    #[error("a result must start with its header")]
    NoResultHeader,
    #[error("result refused: {0}")]
    ResultOverBound(#[source] BoundError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("result rejected: {reason}")]
    ResultRejected { reason: String },
    /// The peer's stream failed; its status is passed on as it is.
    #[error("the stream failed: {0}")]
    Stream(#[from] tonic::Status),
}

impl CoordinatorError {
    /// Whether the error is about the coordinator's own input files (its configuration, its
    /// certificate and key), which the person starting it must fix, rather than a failure of the
    /// process, its store or a peer.
    pub fn is_unusable(&self) -> bool {
        matches!(self, CoordinatorError::Config(_) | CoordinatorError::Tls(_))
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        use CoordinatorError::*;
        use tonic::Status;
        let message = error.to_string();
        match error {
            Stream(status) => status,
            NoCertificate | Revoked { .. } => Status::unauthenticated(message),
            NotAnAgency { .. } | NotAnOperator { .. } | NotAMember { .. } => {
                Status::permission_denied(message)
            }
            Missing(_)
            | RoundMemory { .. }
            | InvalidJob(_)
            | InvalidFederation(_)
            | NotHello
            | HelloOverBound(_)
            | TooManyUnusable { .. }
            | NoResultHeader
            | ResultOverBound(_)
            | ResultRejected { .. } => Status::invalid_argument(message),
            FederationExists { .. } => Status::already_exists(message),
            UnknownFederation { .. }
            | UnknownJob { .. }
            | NotAVersionOfJob { .. }
            | UnknownModelVersion { .. } => Status::not_found(message),
            NoHello { .. } => Status::deadline_exceeded(message),
            TooManyDownloads { .. } => Status::resource_exhausted(message),
            ProtocolVersion { .. } | Delivery(_) => Status::failed_precondition(message),
            SessionClosed => Status::unavailable(message),
            Config(_)
            | Tls(_)
            | OpenStore { .. }
            | Monitoring { .. }
            | Store(_)
            | CorruptRecord { .. }
            | CorruptAudit(_)
            | AuditChain(_)
            | AuditUnsigned
            | Manifest(_)
            | CorruptCounter
            | MissingModel { .. }
            | CorruptModel { .. }
            | ModelFile { .. }
            | StoredJob { .. }
            | Reflection(_)
            | Write { .. }
            | Serve(_)
            | Blocking(_)
            | CheckPanicked
            | FederationGone { .. }
            | TooFewConnected { .. }
            | TooFewAdmitted { .. }
            | TooFewResults { .. }
            | SecureAggregation { .. }
            | Registry { .. }
            | PolicyKeys { .. }
            | Undecidable { .. } => {
                tracing::error!(error = %message, "internal error");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_reaches_the_caller_with_its_code_and_words() {
        let status = tonic::Status::from(CoordinatorError::UnknownJob {
            job: "job-000007".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "job `job-000007` does not exist");
        let status = tonic::Status::from(CoordinatorError::Missing("spec"));
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "`spec` is missing")
        );
        // A peer's own status is passed on unchanged.
        let status =
            tonic::Status::from(CoordinatorError::Stream(tonic::Status::cancelled("gone")));
        assert_eq!((status.code(), status.message()), (Code::Cancelled, "gone"));
        let status = tonic::Status::from(CoordinatorError::CorruptCounter);
        assert_eq!(status.code(), Code::Internal);
    }
}

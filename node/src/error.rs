//! The node's errors.

use std::path::PathBuf;

pub use treaty_proto::config::ConfigError;

/// A data file cannot be used for a task.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: PathBuf, message: String },
    #[error("`{path}` has no header row")]
    NoHeader { path: PathBuf },
    #[error("`{path}`: column `{column}` is missing (the file has: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    /// A cell the schema cannot read (never its content: the node's log may be read by more
    /// people than the data).
    #[error("`{path}`, line {row}, column `{column}`: {problem}")]
    Cell {
        path: PathBuf,
        row: u64,
        column: String,
        problem: String,
    },
    #[error("`{path}`, line {row}: {message}")]
    BadRow {
        path: PathBuf,
        row: u64,
        message: String,
    },
    #[error("`{path}` has no records")]
    Empty { path: PathBuf },
    /// The schema holds an enum value this build does not know (a schema that passed
    /// `schema::problems` never does).
    #[error("the schema cannot be used: {0}")]
    Schema(#[from] treaty_proto::EnumError),
}

impl DataError {
    /// What may leave the node of an error met while encoding for a task: only what depends on
    /// the file's header, which the node declares anyway (no path, line or cell). Encoding for
    /// a release drops unreadable records instead of failing, so this is the missing column.
    pub fn redacted(&self) -> String {
        match self {
            DataError::MissingColumn {
                column, available, ..
            } => format!("the agency's data has no column `{column}` (it has: {available})"),
            _ => "the agency's data cannot be read for this task".to_owned(),
        }
    }
}

/// Something the node could not do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] treaty_proto::TlsError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cannot serve metrics on {address} (`[monitoring] listen`): {source}")]
    Monitoring {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the node's database failed: {0}")]
    Store(#[from] sled::Error),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(
        "the certificate `{path}` names `{identity}`, not an agency; a node needs an agency certificate"
    )]
    NotAnAgency { path: PathBuf, identity: String },
    #[error("cannot connect to the coordinator: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the coordinator answered: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the coordinator broke the protocol: {0}")]
    Protocol(String),
    #[error("a model from the coordinator is unusable: {0}")]
    Model(#[from] treaty_proto::TensorError),
    #[error(transparent)]
    Evidence(#[from] crate::ledger::EvidenceError),
    #[error(
        "the node requires approval of jobs but cannot open its control socket `{}` ({source}), through which its operator approves them; check the state directory's permissions and that its path is short enough for a socket (about 100 bytes)",
        path.display()
    )]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl NodeError {
    /// Whether the error is about what the node reads before it connects (its configuration,
    /// certificate, key and data files), which the agency must fix, rather than a failure of
    /// the process, its database or the coordinator.
    pub fn is_unusable(&self) -> bool {
        match self {
            NodeError::Config(_)
            | NodeError::Tls(_)
            | NodeError::Data(_)
            | NodeError::NotAnAgency { .. } => true,
            NodeError::Store(_)
            | NodeError::Monitoring { .. }
            | NodeError::Ledger(_)
            | NodeError::Connect(_)
            | NodeError::Rpc(_)
            | NodeError::Protocol(_)
            | NodeError::Model(_)
            | NodeError::Evidence(_)
            | NodeError::Control { .. } => false,
        }
    }
}

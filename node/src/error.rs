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
    #[error("`{path}`, line {row}, column `{column}`: `{value}` is not a number")]
    NotNumeric {
        path: PathBuf,
        row: u64,
        column: String,
        value: String,
    },
    #[error(
        "`{path}`, line {row}, column `{column}`: the label `{value}` is not expected; expected {expected}"
    )]
    BadLabel {
        path: PathBuf,
        row: u64,
        column: String,
        value: String,
        expected: String,
    },
    #[error(
        "`{path}`, line {row}, column `{column}`: the cell is empty and the schema rejects missing values there"
    )]
    MissingValue {
        path: PathBuf,
        row: u64,
        column: String,
    },
    #[error("`{path}`, line {row}, column `{column}`: {message}")]
    BadValue {
        path: PathBuf,
        row: u64,
        column: String,
        message: String,
    },
    #[error(
        "`{path}`, column `{column}`: more than {limit} distinct values, so it cannot be categorical"
    )]
    TooManyValues {
        path: PathBuf,
        column: String,
        limit: usize,
    },
    #[error("`{path}`, line {row}: {message}")]
    BadRow {
        path: PathBuf,
        row: u64,
        message: String,
    },
    #[error("`{path}` has no records")]
    Empty { path: PathBuf },
}

impl DataError {
    /// The error without any cell's content, for messages that leave the node.
    pub fn redacted(&self) -> String {
        let at = |path: &PathBuf, row: &u64, column: &str| {
            format!("`{}`, line {row}, column `{column}`", path.display())
        };
        match self {
            DataError::NotNumeric {
                path, row, column, ..
            } => format!("{}: the cell is not a number", at(path, row, column)),
            DataError::BadLabel {
                path,
                row,
                column,
                expected,
                ..
            } => {
                format!(
                    "{}: the label is not expected; expected {expected}",
                    at(path, row, column)
                )
            }
            DataError::BadValue {
                path, row, column, ..
            } => format!(
                "{}: the value does not fit the schema",
                at(path, row, column)
            ),
            other => other.to_string(),
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
    #[error("the node's database at `{path}` cannot be opened: {source}")]
    OpenStore { path: PathBuf, source: sled::Error },
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
}

//! The coordinator's errors, and how each reaches a gRPC caller.

use std::path::PathBuf;

pub use treaty_proto::config::ConfigError;

/// Something the coordinator could not do.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] treaty_proto::TlsError),
    #[error("the database at `{path}` cannot be opened: {source}")]
    OpenStore { path: PathBuf, source: sled::Error },
    #[error("the database failed: {0}")]
    Store(#[from] sled::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    JobFailed(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        use CoordinatorError::*;
        match error {
            InvalidRequest(m) => tonic::Status::invalid_argument(m),
            NotFound(m) => tonic::Status::not_found(m),
            AlreadyExists(m) => tonic::Status::already_exists(m),
            PermissionDenied(m) => tonic::Status::permission_denied(m),
            other => {
                tracing::error!(error = %other, "internal error");
                tonic::Status::internal(other.to_string())
            }
        }
    }
}

//! The federation's coordinator.
//!
//! It owns the registry of connected agencies (their sessions), federations and jobs, the rounds
//! of each job (tasks out, results back, validation, aggregation), the model registry with each
//! version's provenance, and the audit log. Only this crate's `store` module touches its sled
//! database. It knows the wire contract and the policy engine, never the node's internals:
//! everything it learns of an agency arrives over the agency service, authenticated by the
//! agency's certificate.

pub mod aggregate;
pub mod analytics;
pub mod answers;
pub mod config;
pub mod error;
pub mod federation;
pub mod jobs;
pub mod limits;
pub mod models;
pub mod paging;
pub mod peerlog;
pub mod policy;
pub mod rounds;
pub mod server;
pub mod service;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tasks;
pub mod valid_job;

pub use config::CoordinatorConfig;
pub use error::{ConfigError, CoordinatorError};
pub use server::run;

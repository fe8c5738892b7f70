//! The federation's coordinator.
//!
//! It owns the registry of connected agencies (their sessions), federations and jobs, the rounds
//! of each job (tasks out, results back, validation, aggregation), the model registry with each
//! version's provenance, and the audit log. Only this crate's `store` module touches its sled
//! database. It knows the wire contract and the policy engine, never the node's internals:
//! everything it learns of an agency arrives over the agency service, authenticated by the
//! agency's certificate.
//!
//! # Map
//!
//! - Serving: `server` (`run`: TLS, services, graceful shutdown), `service` (the gRPC handlers:
//!   `agency` for nodes, `operator` for operators), `config` (the configuration file), `error`
//!   (every error, and the one mapping to a gRPC status).
//! - The edge: `valid_job` (a job spec decoded and checked into a `ValidJob`), `federation` (a
//!   federation request into a `ValidFederation`), `limits` (the bounds on everything a node
//!   sends; [`check_hello`] and the bounds a node's Hello and task ids must keep are public), `peerlog` (logging what peers do without letting them fill the log), `paging`.
//! - Running jobs: `jobs` (a job's runner: statistics, training, query), `rounds` (what every
//!   round shares: invite, send, collect, account), `secure` (a round of secure aggregation:
//!   the protocol's steps relayed, the masked sum, the masks recovered), `policy` (each round's sharing-policy
//!   decision, on a blocking thread), `aggregate` (training strategies), `analytics` and
//!   `answers` (combining and checking query answers), `models` (the model registry's rules), `provenance` (a
//!   model version's signed manifest).
//! - The other side: [`client`] (the operator's client of a coordinator: its configuration
//!   file, connecting, following a job, downloading a model).
//! - Shared state: `state` (`Coordinator`), `sessions` (connected nodes), `tasks` (open tasks and
//!   the routing of their outcomes), `store` (the sled database and audit log), `audit` (the
//!   audit log's hash chain and signed heads).

#![deny(unreachable_pub)]

mod aggregate;
mod analytics;
mod answers;
mod approvals;
mod audit;
pub mod bundle;
pub mod client;
mod config;
mod error;
mod federation;
mod jobs;
mod limits;
mod model_files;
mod models;
mod monitoring;
mod paging;
mod peerlog;
mod policy;
mod provenance;
mod rounds;
mod secure;
mod server;
mod service;
mod sessions;
mod state;
mod store;
mod tasks;
mod valid_job;

pub use audit::ChainBreak;
pub use config::{CoordinatorConfig, CoordinatorPolicy, CoordinatorTls, Limits};
pub use error::{ConfigError, CoordinatorError};
pub use federation::{FederationProblem, InvalidFederation};
pub use limits::{BoundError, MAX_COLUMNS, MAX_HELLO_BYTES, MAX_TASK_ID_BYTES, check_hello};
pub use server::run;
pub use service::operator::state_name;
pub use tasks::DeliveryError;
pub use valid_job::{InvalidJob, JobProblem};

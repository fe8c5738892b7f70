//! Treaty's wire contract and the trust it rests on: what a node and a coordinator must agree
//! on, since neither may depend on the other.
//!
//! - [`v1`]: the protobuf messages and gRPC services of `treaty/v1` (compiled at build time with
//!   protox, so no system `protoc` is needed); [`PROTOCOL_VERSION`], [`MAX_MESSAGE_BYTES`].
//! - [`tensor`]: tensors packed into bounded little-endian chunks, and their reassembly.
//! - [`identity`]: the identity scheme that maps a certificate to an agency, a coordinator or
//!   an operator; [`tls`]: the mutual TLS 1.3 configuration of both ends; [`pki`]: the
//!   development PKI (CA, certificates, revocation list).
//! - The shared meaning of the learning messages, which both ends compute and so must not
//!   compute twice: [`schema`] (the federation's feature schema, its checks, encoded feature
//!   names and parameter layouts), [`query`] (the layout and sensitivity of an analytics
//!   answer), [`evaluation`] (metrics from pooled noisy evaluation counts), [`provenance`] (the
//!   manifest a coordinator signs for a model version, and the digest of a model's tensors),
//!   [`receipt`] (the hash of a result as it travelled, and the receipt a coordinator signs).
//! - [`secagg`]: secure aggregation, both ends of it: the coordinator learns only the sum of a
//!   round's updates, even when agencies drop out.
//! - [`hex`]: lowercase hex and SHA-256 digests in hex.
//! - [`config`]: how a process reads its configuration file and reports every problem.
//! - [`enums`]: decoding the enum fields of the wire's messages (an unknown or missing value is
//!   an [`EnumError`], never read as "unspecified").
//! - `error`: the errors of this layer ([`IdentityError`], [`TensorError`], [`TlsError`],
//!   [`PkiError`], [`EnumError`], [`SchemaTomlError`]), re-exported here.
//!
//! It knows nothing of nodes, coordinators or policies: no training, no aggregation, no
//! storage, no decisions.

#![deny(unreachable_pub)]

pub mod config;
pub mod enums;
mod error;
pub mod evaluation;
pub mod hex;
pub mod identity;
pub mod monitoring;
pub mod participants;
pub mod pki;
pub mod provenance;
pub mod query;
pub mod receipt;
pub mod schema;
pub mod secagg;
pub mod tensor;
pub mod tls;
pub mod upload;

pub use error::{EnumError, IdentityError, PkiError, SchemaTomlError, TensorError, TlsError};
pub use identity::Identity;

/// The generated protobuf messages and gRPC services of `treaty.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("treaty.v1");
}

/// The encoded file descriptor set of `treaty.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/treaty_descriptor.bin"));

/// The wire-protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest gRPC message either side accepts or sends: 8 MiB. Tensors travel in chunks of at
/// most [`tensor::DEFAULT_MAX_CHUNK_BYTES`], so this bound is never reached by a payload.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

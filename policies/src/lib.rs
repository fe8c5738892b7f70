//! Treaty's sharing-policy language (`docs/POLICY_LANGUAGE.md`) and the privacy arithmetic that
//! policies are judged by.
//!
//! - [`registry`]: the federation's vocabulary (`registry.toml`).
//! - [`policy`]: one country's policy file, parsed with source spans and validated.
//! - [`decide`]: the three-phase decision of a round, with explanations.
//! - [`load`]: reading a directory of policies, verifying signatures ([`signing`]).
//! - [`lint`], [`diff`], [`matrix`], [`testing`]: tools for legal teams.
//! - [`privacy`]: what a history of releases costs an agency in (epsilon, delta).
//!
//! The crate is synchronous and knows nothing of tonic, tokio, nodes or coordinators.

pub mod date;
pub mod decide;
pub mod decimal;
pub mod diff;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fixtures;
pub mod lint;
pub mod load;
pub mod matrix;
pub mod policy;
pub mod privacy;
pub mod registry;
pub mod signing;
pub mod source;
pub mod testing;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Treaty's sharing-policy language (`docs/POLICY_LANGUAGE.md`) and the privacy arithmetic that
//! policies are judged by.
//!
//! Modules, each private; what callers use is re-exported here:
//! - `registry`: the federation's vocabulary (`registry.toml`): countries, purposes, fields and
//!   dated groups.
//! - `policy`: one country's policy file, parsed with source spans and validated against the
//!   registry; how a policy judges a recipient.
//! - `decide`: the three-phase decision of a round, with explanations, and a node's own view of
//!   a round it was admitted to.
//! - `load`: reading a directory of policies (and the `[policy]` settings of a process);
//!   `signing`: Ed25519 signatures of policy files and the federation's trusted keys.
//! - `lint`, `diff`, `matrix`, `testing`: tools for legal teams.
//! - `source`: TOML read with positions, diagnostics and "did you mean" hints (internal, but
//!   [`Diagnostic`] and [`did_you_mean`]).
//! - `date`, `decimal`: calendar dates and exact decimals, the only time and numbers policies
//!   compare.
//! - [`privacy`] (the one public module, a namespace of accountants): what a history of releases
//!   costs an agency in (epsilon, delta), by zCDP ([`privacy::zcdp`]) or RDP ([`privacy::rdp`]).
//!
//! The crate is synchronous and knows nothing of tonic, tokio, the wire (`treaty-proto`), nodes
//! or coordinators: they call it with requests and files, and it answers with decisions.

#![deny(unreachable_pub)]

mod date;
mod decide;
mod decimal;
mod diff;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fixtures;
mod lint;
mod load;
mod matrix;
mod policy;
pub mod privacy;
mod registry;
mod signing;
mod source;
mod testing;

pub use date::Date;
pub use decide::{
    Decision, Exclusion, Loaded, MAX_COUNTRIES, OwnReason, Participant, PolicyVersion, Reason,
    Request, RequestError, decide, own_view,
};
pub use decimal::Decimal;
pub use diff::{Changes, LimitChange, PairChange, PolicyDiff, RuleChanges, diff};
pub use lint::{Shadow, Warning, lint, shadow};
pub use load::{LoadError, PolicyDir, PolicyFiles, country_of, load_file};
pub use matrix::{Cell, Matrix, matrix};
pub use policy::{Acceptance, Effect, Limit, Match, Policy, PolicyError, Rule};
pub use registry::{DatedMembership, Group, Membership, Registry};
pub use signing::{
    SigningError, TrustedKeys, country_of_key, load_private_key, looks_like_policy_of, sign_file,
    verify_file, write_key_pair,
};
pub use source::{Diagnostic, did_you_mean};
pub use testing::{Expect, Outcome, PolicyTest, Summary, TestFile, TestResult};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

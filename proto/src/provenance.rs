//! A model version's provenance: the manifest the coordinator signs for it (which agencies'
//! updates shaped it round by round, under which policy decisions and texts, the schema, the
//! strategy, the privacy the job was planned to spend, Treaty's version), delivered with
//! `treaty model get` and checked by `treaty model verify` (docs/MODEL_FILE.md).

use serde::{Deserialize, Serialize};

use crate::hex::hex;
#[cfg(test)]
use crate::hex::sha256_hex;

/// The manifest's `format`.
pub const FORMAT: &str = "treaty-model-manifest/1";

/// What the coordinator states about a model version, signed as its JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub job_id: String,
    pub federation: String,
    /// The operator who created the job.
    pub created_by: String,
    pub model_version: String,
    /// The round after which the version was stored (0: the initial model).
    pub round: u32,
    /// The SHA-256 of the model's tensors ([`digest`]).
    pub model_sha256: String,
    /// The SHA-256 of the job's feature schema as TOML (a model file's `schema_toml`).
    pub schema_sha256: String,
    /// The SHA-256 of the standardisation ([`standardization_digest`]).
    pub standardization_sha256: String,
    /// The model kind, e.g. `MODEL_KIND_LOGISTIC_REGRESSION`.
    pub model_kind: String,
    /// The MLP's hidden units (0 for the other models).
    pub hidden_units: u32,
    /// The aggregation strategy, e.g. `STRATEGY_FEDAVG`.
    pub strategy: String,
    pub privacy: ManifestPrivacy,
    /// What each contributing agency's node reported it had spent, by its own ledger, with its
    /// last result for the model's rounds: on this job, and over every job. Absent from
    /// manifests signed before Treaty stated it.
    #[serde(default)]
    pub spent: Vec<ManifestSpending>,
    /// The statistics round (0) and each training round up to the version's, in order.
    pub rounds: Vec<ManifestRound>,
    /// The audit entry that recorded the model's digest when the coordinator stored it
    /// (`round.completed`, or `model.initialized` for the initial model): provenance is signed
    /// only for a stored model that is still the one the log recorded.
    pub model_entry_seq: u64,
    /// The audit log's head when the manifest was signed: its length and the SHA-256 of its
    /// last link (docs/AUDIT.md), so that a bundle exported later can be checked to contain it.
    pub audit_seq: u64,
    pub audit_sha256: String,
    /// The coordinator's Treaty version.
    pub treaty_version: String,
    /// Its build: the git commit it was built from (`unknown` outside a checkout) and the
    /// cargo profile. Absent from manifests signed before Treaty stated it.
    #[serde(default)]
    pub treaty_build: String,
    /// When the coordinator signed this manifest, milliseconds since the Unix epoch.
    pub signed_unix_ms: i64,
}

/// The privacy the job was planned to spend: every agency's node refuses a release that would
/// take it past `target_epsilon` for the job, by its own ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPrivacy {
    /// The most epsilon any agency spends on the whole job, at `delta`.
    pub target_epsilon: f64,
    pub delta: f64,
}

/// An agency's spending, as its node reported it by its own ledger (the agency's word: the
/// coordinator cannot see its ledger; every node refuses a release beyond its own budget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpending {
    pub agency: String,
    /// Epsilon spent on this job up to the model's last round, at `delta`.
    pub job_epsilon: f64,
    /// Epsilon spent over every job, at `delta`, at the same moment.
    pub total_epsilon: f64,
    pub delta: f64,
}

/// One round of the model's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRound {
    pub round: u32,
    /// The agencies whose results were aggregated.
    pub contributors: Vec<String>,
    /// Each agency that did not contribute, as `AGENCY CODE`.
    pub excluded: Vec<String>,
    /// The SHA-256 of the round's results record (docs/AUDIT.md): every result taken in, by
    /// the hash its receipt names. Empty when none arrived, and in manifests signed before
    /// rounds kept one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub results_sha256: String,
    /// The SHA-256 of the round's recorded sharing-policy decision (JSON).
    pub policy_decision_sha256: String,
    /// The SHA-256s of the policy and registry texts the decision cites.
    pub policy_texts_sha256: Vec<String>,
}

/// The SHA-256 (hex) of a model's tensors, in order: for each, the length of its name in bytes
/// (u64 little-endian) and its name's UTF-8 bytes, its number of dimensions and each dimension
/// (u64 little-endian), its number of values (u64 little-endian), then its values as f64
/// little-endian, row-major.
pub fn digest<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f64])>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, shape, values) in tensors {
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(shape.len() as u64).to_le_bytes());
        for d in shape {
            ctx.update(&(*d as u64).to_le_bytes());
        }
        ctx.update(&(values.len() as u64).to_le_bytes());
        for v in values {
            ctx.update(&v.to_le_bytes());
        }
    }
    hex(ctx.finish().as_ref())
}

/// The SHA-256 (hex) of a standardisation, in order: for each column, the length of its name
/// (u64 little-endian), its name's UTF-8 bytes, then its mean, standard deviation and count as
/// f64 little-endian.
pub fn standardization_digest<'a>(
    columns: impl IntoIterator<Item = (&'a str, f64, f64, f64)>,
) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, mean, std, count) in columns {
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        for v in [mean, std, count] {
            ctx.update(&v.to_le_bytes());
        }
    }
    hex(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest of one tensor, by the bytes the doc lists (a second way: one buffer, hashed
    /// whole).
    #[test]
    fn the_digest_is_of_the_documented_bytes() {
        let values = [1.5f64, -2.0];
        let mut bytes = 7u64.to_le_bytes().to_vec();
        bytes.extend(b"weights");
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(2u64.to_le_bytes());
        bytes.extend(2u64.to_le_bytes());
        for v in values {
            bytes.extend(v.to_le_bytes());
        }
        assert_eq!(
            digest([("weights", &[2usize][..], &values[..])]),
            sha256_hex(&bytes)
        );
        // A changed value changes it.
        assert_ne!(
            digest([("weights", &[2usize][..], &[1.5, -2.0000001][..])]),
            sha256_hex(&bytes)
        );
    }
}

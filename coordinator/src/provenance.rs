//! A model version's provenance: its manifest (`treaty_proto::provenance::Manifest`), built
//! from the stored job, model and decisions, and signed now with the coordinator's TLS key.

use treaty_proto::provenance::{self, Manifest, ManifestPrivacy, ManifestRound, ManifestSpending};
use treaty_proto::v1::{Aggregation, ModelKind, Provenance, RoundSummary};
use treaty_proto::{schema, tensor};

use crate::error::CoordinatorError;
use crate::store::{AuditEntry, Store};

/// The signed manifest of `version` of `job_id` (its latest when empty). Synchronous (store
/// reads, hashing the model): call it on a blocking thread.
pub(crate) fn provenance(
    store: &Store,
    job_id: &str,
    version: &str,
    requested_by: &str,
) -> Result<Provenance, CoordinatorError> {
    let job = store
        .job_with_rounds(job_id)?
        .ok_or_else(|| CoordinatorError::UnknownJob {
            job: job_id.to_owned(),
        })?;
    let version = match version {
        "" => job.latest_model_version.clone(),
        v => v.to_owned(),
    };
    if !version.starts_with(&format!("{job_id}/")) {
        return Err(CoordinatorError::NotAVersionOfJob {
            job: job_id.to_owned(),
            version,
        });
    }
    let model = store
        .model(&version)?
        .ok_or_else(|| CoordinatorError::UnknownModelVersion {
            version: version.clone(),
        })?;
    let header = model.header.clone().unwrap_or_default();
    let tensors = tensor::from_whole(&model.tensors, u64::MAX).map_err(|source| {
        CoordinatorError::CorruptModel {
            version: version.clone(),
            source,
        }
    })?;
    let model_sha256 = crate::models::digest(&tensors);
    // Signed only for the model the log recorded when it was stored: one changed in the
    // database since is refused, not vouched for.
    let model_entry_seq = store
        .model_entry(job_id, header.round, &model_sha256)?
        .ok_or_else(|| {
            CoordinatorError::Manifest(format!(
                "the stored model {version} is not the one the audit log recorded when it was stored (its tensors hash to {model_sha256}); it was changed in the database, or stored by a version of Treaty that did not record it"
            ))
        })?;
    let spec = header.spec.clone().unwrap_or_default();
    let schema_toml = spec
        .schema
        .as_ref()
        .map(schema::to_toml)
        .transpose()
        .map_err(|e| CoordinatorError::Manifest(e.to_string()))?
        .unwrap_or_default();
    let privacy = spec.privacy.unwrap_or_default();
    let strategy = spec
        .strategy
        .as_ref()
        .and_then(|s| Aggregation::try_from(s.aggregation).ok())
        .unwrap_or(Aggregation::Unspecified);
    let round_of = |r: &RoundSummary| {
        let decision = &r.policy_decision;
        ManifestRound {
            round: r.round,
            contributors: r.contributors.clone(),
            excluded: r
                .excluded
                .iter()
                .map(|e| format!("{} {}", e.agency, e.reason_code))
                .collect(),
            results_sha256: r.results_sha256.clone(),
            policy_decision_sha256: treaty_proto::hex::sha256_hex(decision.as_bytes()),
            policy_texts_sha256: crate::audit::hex_digests(decision),
        }
    };
    let history: Vec<&RoundSummary> = job
        .statistics
        .iter()
        .chain(job.rounds.iter().filter(|r| r.round <= header.round))
        .collect();
    let rounds = history.iter().map(|r| round_of(r)).collect();
    // Each agency's spending as its node last reported it in those rounds, by agency.
    let mut spent: Vec<ManifestSpending> = Vec::new();
    for r in &history {
        for (agency, m) in &r.agency_metrics {
            // (A node whose ledger is damaged reports an infinite spending, and releases
            // nothing: it contributed to no round.)
            let Some(s) = m.spending.filter(|s| {
                s.spent_epsilon.is_finite()
                    && s.job_spent_epsilon.is_finite()
                    && s.delta.is_finite()
            }) else {
                continue;
            };
            let figures = ManifestSpending {
                agency: agency.clone(),
                job_epsilon: s.job_spent_epsilon,
                total_epsilon: s.spent_epsilon,
                delta: s.delta,
            };
            match spent.iter_mut().find(|s| s.agency == *agency) {
                Some(s) => *s = figures,
                None => spent.push(figures),
            }
        }
    }
    spent.sort_by(|a, b| a.agency.cmp(&b.agency));
    let head = store.audit_head();
    let manifest = Manifest {
        format: provenance::FORMAT.to_owned(),
        job_id: job.job_id.clone(),
        federation: job.federation.clone(),
        created_by: job.created_by.clone(),
        model_version: version,
        round: header.round,
        model_sha256,
        schema_sha256: treaty_proto::hex::sha256_hex(schema_toml.as_bytes()),
        standardization_sha256: provenance::standardization_digest(
            spec.standardization
                .iter()
                .map(|c| (c.name.as_str(), c.mean, c.std, c.count)),
        ),
        hidden_units: spec.hidden_units,
        model_kind: ModelKind::try_from(spec.model)
            .unwrap_or(ModelKind::Unspecified)
            .as_str_name()
            .to_owned(),
        strategy: strategy.as_str_name().to_owned(),
        privacy: ManifestPrivacy {
            target_epsilon: privacy.target_epsilon,
            delta: privacy.target_delta,
        },
        spent,
        rounds,
        model_entry_seq,
        audit_seq: head.seq,
        audit_sha256: head.sha256,
        treaty_version: env!("CARGO_PKG_VERSION").to_owned(),
        treaty_build: env!("TREATY_BUILD").to_owned(),
        signed_unix_ms: crate::state::now_ms(),
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| CoordinatorError::Manifest(e.to_string()))?;
    let signer = store.signer().ok_or(CoordinatorError::AuditUnsigned)?;
    let signature = signer.sign(text.as_bytes())?;
    // What the coordinator signed goes on record.
    store.audit(&AuditEntry {
        time_unix_ms: manifest.signed_unix_ms,
        actor: requested_by.to_owned(),
        action: "provenance.signed".into(),
        federation: manifest.federation.clone(),
        job: manifest.job_id.clone(),
        round: manifest.round,
        detail: format!("the provenance of model {}", manifest.model_version),
        documents: vec![treaty_proto::hex::sha256_hex(text.as_bytes())],
        ..Default::default()
    })?;
    Ok(Provenance {
        manifest: text,
        scheme: signer.scheme(),
        signature: signature.into(),
        coordinator_certificate: signer.certificate().to_vec().into(),
        ca_certificate: signer.ca_certificate().to_vec().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::signed_for_tests;
    use ndarray::ArrayD;
    use treaty_proto::tensor::NamedTensor;
    use treaty_proto::v1::{Job, TrainingSpec};

    fn weights(w: f64) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "weights",
            ArrayD::from_shape_vec(vec![2], vec![w, -1.0]).unwrap(),
        )]
    }

    /// Provenance is signed for the model the log recorded when it was stored, and refused
    /// for one changed in the database since.
    #[test]
    fn provenance_is_refused_for_a_model_changed_after_it_was_logged() {
        let (db, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = signed_for_tests(db.path(), pki.path());
        let job = Job {
            job_id: "job-000001".into(),
            federation: "f".into(),
            latest_model_version: "job-000001/r1".into(),
            ..Default::default()
        };
        store.put_job(&job).unwrap();
        let spec = TrainingSpec::default();
        let digest = crate::models::store(
            &store,
            "job-000001",
            &spec,
            1,
            "job-000001/r1",
            weights(0.5),
            &[],
            None,
        )
        .unwrap();
        store
            .audit(&AuditEntry {
                action: "round.completed".into(),
                job: "job-000001".into(),
                federation: "f".into(),
                round: 1,
                documents: vec![digest.clone()],
                ..Default::default()
            })
            .unwrap();
        let signed = provenance(&store, "job-000001", "", "treaty://operator/ops").unwrap();
        let manifest: Manifest = serde_json::from_str(&signed.manifest).unwrap();
        assert_eq!(manifest.model_sha256, digest);
        assert_eq!(manifest.model_entry_seq, 1);

        // The weights changed in the database: not vouched for.
        crate::models::store(
            &store,
            "job-000001",
            &spec,
            1,
            "job-000001/r1",
            weights(0.6),
            &[],
            None,
        )
        .unwrap();
        let err = provenance(&store, "job-000001", "", "treaty://operator/ops").unwrap_err();
        assert!(
            err.to_string()
                .contains("not the one the audit log recorded"),
            "{err}"
        );
    }
}

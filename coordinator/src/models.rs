//! The model registry's rules: the initial model of a training job, and storing and loading
//! model versions with their provenance and the server optimiser's state.

use ndarray::{Array1, ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use treaty_proto::tensor::{self, NamedTensor};
use treaty_proto::v1::{Dtype, ModelHeader, ModelKind, StoredModel, TrainingSpec};
use treaty_proto::{EnumError, schema};

use crate::aggregate::ServerState;
use crate::error::CoordinatorError;
use crate::state::now_ms;
use crate::store::Store;
use crate::valid_job::ValidTraining;

/// The first model of a job: zeros for linear models; for an MLP, hidden weights drawn
/// uniformly from ±sqrt(6 / inputs) (He et al. 2015) with the job's seed, so that the starting
/// point is on record and reproducible.
/// An error only for a spec whose model or label kind this build does not know, which a
/// [`ValidTraining`] never has.
pub(crate) fn initial_model(spec: &ValidTraining) -> Result<Vec<NamedTensor>, EnumError> {
    let layout = schema::parameter_layout(&spec.to_spec())?;
    let mlp = spec.model == ModelKind::Mlp;
    let mut rng = StdRng::seed_from_u64(spec.seed());
    let model = layout
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in = shape.first().copied().unwrap_or(1).max(1) as f64;
            let values: Vec<f64> = if mlp && name.ends_with("weights") {
                let bound = (6.0 / fan_in).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else {
                vec![0.0; n]
            };
            let values = ArrayD::from_shape_vec(IxDyn(&shape), values)
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&shape)));
            NamedTensor::new(name, values)
        })
        .collect();
    Ok(model)
}

/// A stored model version's tensors and server optimiser state.
pub(crate) fn load(
    store: &Store,
    version: &str,
) -> Result<(Vec<NamedTensor>, Option<ServerState>), CoordinatorError> {
    let stored = store
        .model(version)?
        .ok_or_else(|| CoordinatorError::MissingModel {
            version: version.to_owned(),
        })?;
    let corrupt = |source| CoordinatorError::CorruptModel {
        version: version.to_owned(),
        source,
    };
    let tensors = tensor::from_whole(&stored.tensors, u64::MAX).map_err(corrupt)?;
    let state = tensor::from_whole(&stored.optimizer_state, u64::MAX).map_err(corrupt)?;
    let flat = |name: &str| -> Option<Array1<f64>> {
        state
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.values.iter().copied().collect())
    };
    let state = match (flat("m"), flat("v")) {
        (Some(m), Some(v)) => Some(ServerState { m, v }),
        _ => None,
    };
    Ok((tensors, state))
}

/// Stores a model version with its contributors and the server optimiser's state, made
/// durable by the caller's next write of the job that names it ([`Store::put_model`]); the
/// digest of its tensors (`treaty_proto::provenance::digest`), which the round's audit entry
/// records.
#[allow(clippy::too_many_arguments)]
pub(crate) fn store(
    store: &Store,
    job_id: &str,
    spec: &TrainingSpec,
    round: u32,
    version: &str,
    model: Vec<NamedTensor>,
    contributors: &[String],
    state: Option<&ServerState>,
) -> Result<String, CoordinatorError> {
    let digest = digest(&model);
    // Each form of a large model is dropped as soon as the next is made.
    let tensors = tensor::to_whole(&model, Dtype::F64);
    drop(model);
    let optimizer_state = state
        .map(|s| {
            tensor::to_whole(
                &[
                    NamedTensor::new("m", s.m.clone().into_dyn()),
                    NamedTensor::new("v", s.v.clone().into_dyn()),
                ],
                Dtype::F64,
            )
        })
        .unwrap_or_default();
    store.put_model(StoredModel {
        header: Some(ModelHeader {
            job_id: job_id.to_owned(),
            model_version: version.to_owned(),
            round,
            spec: Some(spec.clone()),
            tensors: tensors.iter().filter_map(|t| t.spec.clone()).collect(),
        }),
        tensors,
        contributors: contributors.to_vec(),
        created_unix_ms: now_ms(),
        optimizer_state,
    })?;
    Ok(digest)
}

/// The digest of a model's tensors, as its provenance states it.
pub(crate) fn digest(model: &[NamedTensor]) -> String {
    // A tensor in standard layout is hashed where it lies; another is copied out first.
    let copies: Vec<Option<Vec<f64>>> = model
        .iter()
        .map(|t| match t.values.as_slice() {
            Some(_) => None,
            None => Some(t.values.iter().copied().collect()),
        })
        .collect();
    treaty_proto::provenance::digest(model.iter().zip(&copies).map(|(t, copy)| {
        let values = copy.as_deref().or(t.values.as_slice()).unwrap_or_default();
        (t.name.as_str(), t.values.shape(), values)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_initialization_is_seeded_and_bounded() {
        let spec = ValidTraining::try_from(TrainingSpec {
            model: ModelKind::Mlp as i32,
            hidden_units: 4,
            seed: 9,
            schema: schema::parse("[label]\nname = \"y\"\nkind = \"binary\"\n[[column]]\nname = \"a\"\nkind = \"numeric\"\n[[column]]\nname = \"b\"\nkind = \"numeric\"\n").unwrap().ok(),
            ..crate::valid_job::tests::training_spec()
        })
        .unwrap();
        let a = initial_model(&spec).unwrap();
        assert_eq!(a, initial_model(&spec).unwrap());
        let bound = (6.0f64 / 2.0).sqrt();
        assert!(
            a[0].values.iter().all(|v| v.abs() <= bound) && a[0].values.iter().any(|v| *v != 0.0)
        );
        assert!(a[1].values.iter().all(|v| *v == 0.0));
    }
}

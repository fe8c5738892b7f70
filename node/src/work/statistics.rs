//! Carrying out a statistics round: each numeric column's count, sum and sum of squares, with
//! Gaussian noise through opendp on the sums divided by their scales.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use treaty_proto::tensor::NamedTensor;

use super::plan::StatisticsRound;
use super::{Output, Worker, blocking, data_refusal};
use crate::refusal::Refusal;

impl Worker {
    /// Computes the noisy column statistics, as planned.
    pub(super) async fn stats(&self, round: &StatisticsRound) -> Result<Output, Refusal> {
        let (table, schema) = (self.train.clone(), round.task.schema.clone());
        let scales = &round.task.scales;
        let sums = blocking(move || table.column_sums(&schema))
            .await?
            .map_err(|e| data_refusal(&e))?;
        let mut flat: Vec<f64> = sums.iter().flatten().copied().collect();
        flat.iter_mut().zip(scales).for_each(|(v, s)| *v /= s);
        round.noise.add(&mut flat).map_err(Refusal::internal)?;
        flat.iter_mut().zip(scales).for_each(|(v, s)| *v *= s);
        let values =
            ArrayD::from_shape_vec(IxDyn(&[sums.len(), 3]), flat).map_err(Refusal::internal)?;
        Ok(Output {
            num_examples: 1,
            metrics: HashMap::new(),
            tensors: vec![NamedTensor::new("stats", values)],
            evaluation: None,
        })
    }
}

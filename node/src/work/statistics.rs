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
        let (scales, noise) = (round.task.scales.clone(), round.noise);
        // The sums and opendp's noise, on a blocking thread.
        let (columns, flat) = blocking(move || {
            let sums = table.column_sums(&schema).map_err(|e| data_refusal(&e))?;
            let mut flat: Vec<f64> = sums.iter().flatten().copied().collect();
            flat.iter_mut().zip(&scales).for_each(|(v, s)| *v /= s);
            noise.add(&mut flat).map_err(Refusal::internal)?;
            flat.iter_mut().zip(&scales).for_each(|(v, s)| *v *= s);
            Ok::<_, Refusal>((sums.len(), flat))
        })
        .await??;
        let values =
            ArrayD::from_shape_vec(IxDyn(&[columns, 3]), flat).map_err(Refusal::internal)?;
        Ok(Output {
            num_examples: 1,
            metrics: HashMap::new(),
            tensors: vec![NamedTensor::new("stats", values)],
            evaluation: None,
        })
    }
}

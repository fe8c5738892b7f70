//! Carrying out a query: the exact local answer, then Laplace noise through opendp on the
//! answer divided by its bounds, on a blocking thread.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use treaty_proto::tensor::NamedTensor;

use super::plan::QueryRound;
use super::{Output, Worker, blocking, data_refusal};
use crate::analytics;
use crate::refusal::Refusal;

impl Worker {
    /// Answers a query with noise, as planned.
    pub(super) async fn query(&self, round: &QueryRound) -> Result<Output, Refusal> {
        let (table, spec, statistic) = (
            self.train.clone(),
            round.task.spec.clone(),
            round.task.statistic,
        );
        let plan = round.plan.clone();
        // The exact answer and opendp's noise, on a blocking thread.
        let values = blocking(move || {
            let exact = analytics::exact(&table, &spec, statistic).map_err(|e| data_refusal(&e))?;
            analytics::noisy(&plan, &exact)
        })
        .await??;
        let mut metrics = HashMap::new();
        metrics.insert("laplace_scale".to_owned(), round.plan.scale);
        Ok(Output {
            num_examples: 1,
            metrics,
            tensors: vec![NamedTensor::new(
                "statistic",
                ArrayD::from_shape_vec(IxDyn(&[values.len()]), values)
                    .map_err(Refusal::internal)?,
            )],
            evaluation: None,
            started_from: Vec::new(),
            ring: None,
        })
    }
}

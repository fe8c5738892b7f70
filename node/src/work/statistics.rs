//! Carrying out a statistics round: each numeric column's count, and the sum and sum of squares
//! of its values' deviations from the centre of its transformed bounds, with Gaussian noise
//! through opendp on the sums divided by their scales (1, R and R² for R the half-range).
//! Centred on a public point, the sum of squares is about the column's spread, not its mean's
//! square, and its noise stays small beside it.

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
            started_from: Vec::new(),
            ring: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use treaty_policies::privacy::Release;
    use treaty_proto::schema;
    use treaty_proto::v1::{PrivacySpec, StatsTask, task};

    use super::super::plan::Work;
    use crate::data::Table;
    use crate::work::Worker;

    /// Adult's `fnlwgt` (log1p, bounds 10,000 to 1.5e6) and `hours_per_week` (bounds 1 to 99).
    const SCHEMA: &str = "[label]\nname = \"seized\"\nkind = \"binary\"\n\
        [[column]]\nname = \"fnlwgt\"\nkind = \"numeric\"\nlower = 1e4\nupper = 1.5e6\ntransform = \"log1p\"\nmissing = \"mean\"\n\
        [[column]]\nname = \"hours\"\nkind = \"numeric\"\nlower = 1.0\nupper = 99.0\n";

    fn worker(csv: &str) -> Worker {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(csv.as_bytes()).unwrap();
        Worker::new(Table::open(f.path()).unwrap(), None)
    }

    fn stats_task(rho: f64) -> task::Kind {
        task::Kind::Stats(StatsTask {
            schema: schema::parse(SCHEMA).unwrap().ok(),
            privacy: Some(PrivacySpec {
                statistics_rho: Some(rho),
                ..Default::default()
            }),
        })
    }

    #[tokio::test]
    async fn the_sums_are_centred_on_the_transformed_bounds_midpoint() {
        // fnlwgt: four values (the fifth is missing); hours: five, 150 clamped to 99.
        let worker = worker(
            "fnlwgt,hours,seized\n100000,40,0\n200000,50,1\n150000,60,0\n400000,38,1\n,150,0\n",
        );
        let plan = worker.plan(2, &stats_task(1e15)).unwrap();
        let Work::Statistics(round) = &plan.work else {
            panic!("not a statistics plan: {plan:?}")
        };
        // The sensitivities: 1, R and R² for R = (ln(1500001) - ln(10001)) / 2 and (99 - 1) / 2.
        let r = 2.505_267_982_881_182_6;
        let expected = [1.0, r, r * r, 1.0, 49.0, 2401.0];
        for (got, want) in round.task.scales.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");
        }
        let output = worker.stats(round).await.unwrap();
        let values = &output.tensors[0].values;
        assert_eq!(values.shape(), [2, 3]);
        // By hand: ln(1 + x) - 11.7157083498577 for 100000, 200000, 150000 and 400000 sum to
        // 1.6737992768169, their squares to 1.7233670069968; hours about 50: -10, 0, 10, -12
        // and 49 sum to 37, their squares to 100 + 0 + 100 + 144 + 2401 = 2745. The noise (at
        // rho 1e15, 5.5e-8 times each sensitivity) is far below the tolerance.
        let hand = [
            [4.0, 1.673_799_276_816_936, 1.723_367_006_996_760_6],
            [5.0, 37.0, 2745.0],
        ];
        for (row, want) in values.rows().into_iter().zip(hand) {
            for (got, want) in row.iter().zip(want) {
                assert!((got - want).abs() < 1e-3, "{row} vs {want:?}");
            }
        }
    }

    #[test]
    fn the_noise_and_the_ledger_entry_are_those_of_three_unit_coordinates_per_column() {
        // Two columns: six coordinates of sensitivity 1 each, L2 sensitivity sqrt(6); at rho
        // 0.005 the noise multiplier is sqrt(1 / 0.01) = 10 and the noise sqrt(6) * 10.
        let plan = worker("fnlwgt,hours,seized\n1,1,0\n")
            .plan(2, &stats_task(0.005))
            .unwrap();
        assert!(
            matches!(plan.releases.as_slice(), [Release::Gaussian { rho }] if (rho - 0.005).abs() < 1e-9),
            "{:?}",
            plan.releases
        );
        let Work::Statistics(round) = &plan.work else {
            panic!("not a statistics plan: {plan:?}")
        };
        assert!((round.noise.scale() - 600f64.sqrt()).abs() < 1e-12);
    }
}

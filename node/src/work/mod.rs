//! Carrying out one task on the agency's own data. A task is decoded and checked from itself
//! alone ([`checks`]), then planned from public figures ([`plan`]): what it will release and
//! with which noise, before any record is read. The session records the plan's releases in the
//! ledger; only then is the task carried out, by its kind ([`training`] and the evaluation of
//! a final model, [`statistics`], [`query`]), on the records encoded by the job's schema. CPU work runs on a blocking thread,
//! off the async runtime.

mod checks;
mod plan;
mod query;
mod statistics;
mod training;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{ColumnStats, Evaluation, FeatureSchema};

pub(crate) use checks::InvalidTask;
pub use plan::Plan;
use plan::Work;
pub use training::download;
use training::global_model;

use crate::data::{Private, Table};
use crate::error::DataError;
use crate::ledger::LedgerRefusal;
use crate::refusal::{Refusal, RefusalCode};

/// What a task produced, ready to release.
#[derive(Debug)]
pub struct Output {
    pub num_examples: u64,
    pub metrics: HashMap<String, f64>,
    pub tensors: Vec<NamedTensor>,
    /// Under DP: the noisy evaluation of a model (the global model of a training round, an
    /// evaluation task's model) on the test split.
    pub evaluation: Option<Evaluation>,
    /// A training round's global model, which `tensors` was trained from (empty otherwise):
    /// under secure aggregation the node sends the difference.
    pub started_from: Vec<NamedTensor>,
    /// Under distributed DP: the contribution already in the round's fixed point (the noisy
    /// clipped gradient sum, then the public denominator); `tensors` is then empty.
    pub ring: Option<Vec<u64>>,
}

/// Encoded examples of one table for one schema and standardisation.
type Encoded = Result<Arc<Private>, Refusal>;

/// The agency's data, with the encodings of recent jobs kept in memory.
#[derive(Debug)]
pub struct Worker {
    pub(crate) train: Arc<Table>,
    pub(crate) test: Option<Arc<Table>>,
    /// The number of training records the agency declares public in its configuration, if it
    /// does: then it, not the coordinator's estimate, sets the sampling rate and the scale.
    pub(crate) public_records: Option<u64>,
    /// The most of a round's agencies this agency assumes may be dishonest under distributed
    /// DP (`[secure_aggregation] assume_dishonest`); without it, every other agency.
    pub(crate) assume_dishonest: Option<u32>,
    /// Cancelled when the node shuts down: training stops between two steps.
    pub(crate) stop: CancellationToken,
    cache: Mutex<HashMap<(bool, Vec<u8>), Encoded>>,
}

/// A refusal for data that does not fit a task: only a column missing from the header (which
/// the node declares anyway) reaches the coordinator; the node's own log keeps the whole error.
fn data_refusal(e: &DataError) -> Refusal {
    tracing::warn!(error = %e, "the agency's data does not fit the task");
    Refusal::new(RefusalCode::DataError, e.redacted())
}

/// Runs CPU or blocking work (a computation on the data, opendp's calibration, the ledger) on a
/// blocking thread. Should it fail (a bug) or be cancelled, the coordinator is told a fixed
/// text: a panic's message might depend on the data; the node's log keeps it.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "a task's computation failed on its blocking thread");
        Refusal::new(
            RefusalCode::InternalError,
            "the node failed to compute the task",
        )
    })
}

/// The refusal of a release the ledger did not record: the agency's own policy's refusal as
/// it is, the ledger's with its code (a damaged ledger with a fixed text: the damage itself is
/// in the node's log, and the coordinator learns only that).
impl From<LedgerRefusal<Refusal>> for Refusal {
    fn from(refusal: LedgerRefusal<Refusal>) -> Self {
        let code = match refusal {
            LedgerRefusal::Admission(refusal) => return refusal,
            LedgerRefusal::Damaged(_) => {
                return Refusal::new(RefusalCode::LedgerError, crate::ledger::DAMAGED);
            }
            LedgerRefusal::BudgetExhausted { .. } => RefusalCode::BudgetExhausted,
            LedgerRefusal::NotPrivate => RefusalCode::DpRequired,
            LedgerRefusal::Store(_) => RefusalCode::LedgerError,
        };
        Refusal::new(code, refusal.to_string())
    }
}

impl Worker {
    /// A worker on the agency's training records and, optionally, its test split.
    pub fn new(train: Table, test: Option<Table>) -> Self {
        Worker {
            train: Arc::new(train),
            test: test.map(Arc::new),
            public_records: None,
            assume_dishonest: None,
            stop: CancellationToken::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Encodes (or recalls) a table by a schema, on a blocking thread. A data error is
    /// remembered too, so the node refuses every round of the job with the same message.
    async fn encoded(
        &self,
        test: bool,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Option<Encoded> {
        let table = if test {
            self.test.clone()?
        } else {
            self.train.clone()
        };
        let mut key = schema.encode_to_vec();
        for s in stats {
            s.encode(&mut key).ok()?;
        }
        let key = (test, key);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Some(hit.clone());
        }
        let (schema, stats) = (schema.clone(), stats.to_vec());
        let encoded = match blocking(move || table.encode_private(&schema, &stats)).await {
            Ok(Ok(private)) => {
                let unreadable = private.unreadable();
                if unreadable > 0 {
                    // For the agency's staff only: nothing of it leaves the node.
                    let first: Vec<String> =
                        private.problems.iter().map(|e| e.to_string()).collect();
                    tracing::warn!(
                        split = if test { "test" } else { "train" },
                        records = unreadable,
                        first = first.join("; "),
                        "records the job's schema cannot read are left out"
                    );
                }
                Ok(Arc::new(private))
            }
            Ok(Err(e)) => Err(data_refusal(&e)),
            Err(refusal) => Err(refusal),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 8 {
            cache.clear();
        }
        cache.insert(key, encoded.clone());
        Some(encoded)
    }

    /// Carries out a task, as planned (and recorded in the ledger).
    pub async fn run(
        &self,
        client: &mut AgencyServiceClient<Channel>,
        job_id: &str,
        plan: &Plan,
    ) -> Result<Output, Refusal> {
        match &plan.work {
            Work::Training(round) => {
                let task = &round.task;
                let global = global_model(client, job_id, &task.model_version, &task.model).await?;
                self.train_round(round, global).await
            }
            Work::Evaluation(round) => {
                let task = &round.task.training;
                let model = global_model(client, job_id, &task.model_version, &task.model).await?;
                self.evaluate_model(round, model).await
            }
            Work::Statistics(round) => self.stats(round).await,
            Work::Query(round) => self.query(round).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{DpSgd, Sampling};
    use std::io::Write;
    use treaty_policies::privacy::Release;
    use treaty_proto::schema;
    use treaty_proto::v1::{
        DpMode, ModelKind, PrivacySpec, StatsTask, TrainingSpec, TrainingTask, task,
    };

    #[tokio::test]
    async fn a_panic_on_a_blocking_thread_is_refused_with_a_fixed_text() {
        let refusal = blocking(|| -> u8 { panic!("a message that might depend on a record") })
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::new(
                RefusalCode::InternalError,
                "the node failed to compute the task"
            )
        );
    }

    #[test]
    fn an_unknown_enum_in_a_training_task_is_refused_naming_the_field_and_the_value() {
        let worker = worker_of(10);
        let mut model = training_task(DpMode::Poisson, 0.1, 0.0);
        let mut mode = model.clone();
        if let task::Kind::Training(t) = &mut model {
            t.spec.as_mut().unwrap().model = 99;
        }
        if let task::Kind::Training(t) = &mut mode {
            t.spec.as_mut().unwrap().privacy.as_mut().unwrap().mode = 42;
        }
        for (task, expected) in [
            (model, "the training spec's model is 99"),
            (mode, "the privacy spec's mode is 42"),
        ] {
            let refusal = worker.plan(2, &task).unwrap_err();
            assert_eq!(
                refusal.code,
                RefusalCode::InvalidTask,
                "{}",
                refusal.message
            );
            assert!(refusal.message.starts_with(expected), "{}", refusal.message);
        }
    }

    #[test]
    fn an_mlp_is_planned_only_with_1_to_max_hidden_units() {
        let worker = worker_of(10);
        let mlp = |hidden: u32| {
            let mut task = training_task(DpMode::Poisson, 0.1, 0.0);
            if let task::Kind::Training(t) = &mut task {
                let spec = t.spec.as_mut().unwrap();
                spec.model = ModelKind::Mlp as i32;
                spec.hidden_units = hidden;
            }
            task
        };
        for hidden in [1, 16, schema::MAX_HIDDEN_UNITS] {
            let plan = worker.plan(2, &mlp(hidden));
            assert!(plan.is_ok(), "{hidden}: {:?}", plan.err());
        }
        // Refused from the task alone, before the ledger: no budget is spent on it.
        for hidden in [0, schema::MAX_HIDDEN_UNITS + 1, u32::MAX] {
            let refusal = worker.plan(2, &mlp(hidden)).unwrap_err();
            assert_eq!(refusal.code, RefusalCode::InvalidTask, "{hidden}");
            assert!(
                refusal.message.starts_with(&format!(
                    "an MLP needs 1 to {} hidden units",
                    schema::MAX_HIDDEN_UNITS
                )),
                "{}",
                refusal.message
            );
        }
    }

    #[test]
    fn a_ledger_refusal_keeps_its_code_and_a_damaged_ledger_its_fixed_text() {
        let own = Refusal::new(RefusalCode::PolicyTermsMissing, "no terms");
        assert_eq!(Refusal::from(LedgerRefusal::Admission(own.clone())), own);
        assert_eq!(
            Refusal::from(LedgerRefusal::<Refusal>::NotPrivate).code,
            RefusalCode::DpRequired
        );
        let store = Refusal::from(LedgerRefusal::<Refusal>::Store("disk full".into()));
        assert_eq!(store.code, RefusalCode::LedgerError);
        let damaged = Refusal::from(LedgerRefusal::<Refusal>::Damaged(crate::ledger::Damage {
            dir: "/var/lib/treaty".into(),
            fault: crate::ledger::Fault::AnchorMissing { found: 3 },
        }));
        assert_eq!(
            damaged,
            Refusal::new(RefusalCode::LedgerError, crate::ledger::DAMAGED)
        );
    }

    /// The DP-SGD of a training plan.
    fn dp_of(plan: Plan) -> DpSgd {
        match plan.work {
            Work::Training(round) => round.dp,
            other => panic!("not a training plan: {other:?}"),
        }
    }

    fn worker_of(rows: usize) -> Worker {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "x,seized").unwrap();
        for i in 0..rows {
            writeln!(f, "{},{}", i % 3, i % 2).unwrap();
        }
        Worker::new(Table::open(f.path()).unwrap(), None)
    }

    fn training_task(mode: DpMode, sampling_rate: f64, public_records: f64) -> task::Kind {
        task::Kind::Training(TrainingTask {
            spec: Some(TrainingSpec {
                model: ModelKind::LogisticRegression as i32,
                schema: schema::parse("[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x\"\nkind = \"numeric\"\n").unwrap().ok(),
                rounds: 3,
                local_epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                privacy: Some(PrivacySpec {
                    mode: mode as i32,
                    clip_norm: 1.0,
                    sampling_rate,
                    target_epsilon: 1.0,
                    target_delta: 1e-5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            model_version: String::new(),
            public_records,
            model: Vec::new(),
        })
    }

    #[test]
    fn what_a_round_releases_depends_on_public_figures_only() {
        // Two nodes whose data differ in one record plan every training task alike: the same
        // mechanisms and parameters for the ledger, steps and divisor, the same refusals.
        let (a, b) = (worker_of(400), worker_of(401));
        for (mode, q, public) in [
            (DpMode::Poisson, 0.0, 1000.0),
            (DpMode::Poisson, 0.05, 0.0),
            (DpMode::Poisson, 0.05, 1000.0),
            (DpMode::FullBatch, 0.0, 1000.0),
            (DpMode::Poisson, 0.0, 0.0),
            (DpMode::FullBatch, 0.0, 0.0),
        ] {
            let task = training_task(mode, q, public);
            let (pa, pb) = (a.plan(2, &task), b.plan(2, &task));
            assert_eq!(
                format!("{pa:?}"),
                format!("{pb:?}"),
                "{mode:?} {q} {public}"
            );
        }
        // Without a sampling rate the node samples batch / public count: 32 / 1000.
        let plan = a
            .plan(2, &training_task(DpMode::Poisson, 0.0, 1000.0))
            .unwrap();
        let dp = dp_of(plan);
        assert_eq!(dp.sampling, Sampling::Poisson(0.032));
        assert_eq!(dp.steps, 32); // ceil(1 / 0.032)
        assert!((dp.denominator - 32.0).abs() < 1e-9);
        // Without any public figure it refuses, quoting none of its own.
        let refusal = a
            .plan(2, &training_task(DpMode::Poisson, 0.0, 0.0))
            .unwrap_err();
        assert_eq!(refusal.code, RefusalCode::InvalidTask);
        assert!(!refusal.message.contains("400"), "{}", refusal.message);
        // An agency's own declaration wins over the coordinator's estimate.
        let mut declared = worker_of(400);
        declared.public_records = Some(3200);
        let dp = dp_of(
            declared
                .plan(2, &training_task(DpMode::Poisson, 0.0, 1000.0))
                .unwrap(),
        );
        assert_eq!(dp.sampling, Sampling::Poisson(0.01));
    }

    /// Distributed noise: every agency adds the share the job's assumption sets, for `t - c`
    /// honest agencies while `c < 2t - n`; an agency whose own assumption is stricter adds its
    /// whole noise on top and accounts for that alone; the sum is accounted as the whole noise;
    /// a task that is not one linear step is refused.
    #[test]
    fn distributed_noise_rests_on_the_agencys_own_assumption() {
        use treaty_proto::secagg::Params;
        use treaty_proto::v1::SecureAggregationSpec;
        let with = |job_dishonest: u32, mode: DpMode| {
            let mut task = training_task(mode, 0.0, 1000.0);
            let task::Kind::Training(t) = &mut task else {
                unreachable!()
            };
            let spec = t.spec.as_mut().unwrap();
            spec.secure_aggregation = Some(SecureAggregationSpec {
                distributed_noise: true,
                assumed_dishonest: job_dishonest,
                ..Default::default()
            });
            spec.privacy.as_mut().unwrap().noise_multiplier = 2.0;
            task
        };
        // Eight agencies, threshold 6 (so 2t - n = 4), 16 fractional bits; 2 parameters.
        let params = Params {
            job: "job-1".into(),
            round: 2,
            participants: (0..8).map(|i| format!("treaty://agency/DE/A{i}")).collect(),
            threshold: 6,
            fractional_bits: 16,
            length: 3,
        };
        // clip 2^16 (1 + 1e-9) + sqrt(parameters) / 2
        let sensitivity = 65536.0 * (1.0 + 1e-9) + 2f64.sqrt() / 2.0;
        let mut worker = worker_of(400);
        // (own assumption, job's, the shares the job's sets, honest counted, whole noise added)
        for (own, job, shares, honest, whole) in [
            // No assumption of its own: every other agency; its whole noise over the share.
            (None, 0, 6, 1, true),
            (None, 2, 4, 1, true),
            // Its own as the job's: the job's share, counted on 6 - 2 honest.
            (Some(2), 2, 4, 4, false),
            // More lenient than the job: the job's stands.
            (Some(1), 3, 3, 3, false),
            // Stricter than the job: its whole noise on top.
            (Some(3), 2, 4, 1, true),
            // 4 colluders can unmask one contribution (4 >= 2t - n): each share is whole.
            (Some(4), 4, 1, 1, false),
            (Some(5), 5, 1, 1, false),
        ] {
            worker.assume_dishonest = own;
            let plan = worker
                .plan_round(2, &with(job, DpMode::FullBatch), Some(&params))
                .unwrap();
            let d = plan.distributed().unwrap();
            let case = format!("own {own:?}, job {job}");
            assert_eq!(d.honest, honest, "{case}");
            assert_eq!(d.sensitivity, sensitivity, "{case}");
            let share = 2.0 * sensitivity / f64::from(shares).sqrt();
            assert!((d.scale / share - 1.0).abs() < 1e-12, "{case}");
            assert_eq!(d.whole.is_some(), whole, "{case}");
            if let Some(w) = d.whole {
                assert!((w / (2.0 * sensitivity) - 1.0).abs() < 1e-12, "{case}");
            }
            assert_eq!(d.denominator, 1000.0);
            // The release is accounted as noise of multiplier 2 over the sensitivity: rho 1/8
            // (the discrete Gaussian's correction is below 1e-12 at this scale).
            let Release::Gaussian { rho } = plan.releases[0] else {
                panic!("{:?}", plan.releases)
            };
            assert!((rho / 0.125 - 1.0).abs() < 1e-12, "{case}: {rho}");
        }
        // A round that is more than one linear step, or has no secure aggregation, or a
        // contribution of the wrong length, or noise that is not finite, is refused.
        let refusal = worker
            .plan_round(2, &with(0, DpMode::Poisson), Some(&params))
            .unwrap_err();
        assert!(
            refusal.message.contains("does not train full batch"),
            "{}",
            refusal.message
        );
        let refusal = worker
            .plan_round(2, &with(0, DpMode::FullBatch), None)
            .unwrap_err();
        assert_eq!(refusal.code, RefusalCode::InvalidTask);
        let short = Params {
            length: 2,
            ..params.clone()
        };
        assert!(
            worker
                .plan_round(2, &with(0, DpMode::FullBatch), Some(&short))
                .is_err()
        );
        // Calibrated to the job's target, the share is the same with a test split or without
        // (a node without one calibrates as if it evaluated): every agency adds the same.
        let mut calibrated = with(2, DpMode::FullBatch);
        if let task::Kind::Training(t) = &mut calibrated {
            let privacy = t.spec.as_mut().unwrap().privacy.as_mut().unwrap();
            privacy.noise_multiplier = 0.0;
            privacy.evaluation_epsilon = Some(0.05);
        }
        worker.assume_dishonest = Some(2);
        let share = |w: &Worker| {
            w.plan_round(2, &calibrated, Some(&params))
                .unwrap()
                .distributed()
                .unwrap()
                .scale
        };
        let without = share(&worker);
        worker.test = Some(worker.train.clone());
        assert_eq!(share(&worker), without);
        let mut infinite = with(0, DpMode::FullBatch);
        if let task::Kind::Training(t) = &mut infinite {
            t.spec
                .as_mut()
                .unwrap()
                .privacy
                .as_mut()
                .unwrap()
                .noise_multiplier = f64::INFINITY;
        }
        assert!(worker.plan_round(2, &infinite, Some(&params)).is_err());
    }

    #[test]
    fn a_job_evaluates_the_models_of_rounds_2_to_the_last_and_its_final_model() {
        let mut worker = worker_of(10);
        let evaluation_epsilon = 0.05;
        let mut task = training_task(DpMode::FullBatch, 0.0, 1000.0);
        let task::Kind::Training(training) = &mut task else {
            unreachable!()
        };
        let spec = training.spec.as_mut().unwrap();
        spec.privacy.as_mut().unwrap().evaluation_epsilon = Some(evaluation_epsilon);
        let mut spec = spec.clone();
        let rounds = spec.rounds;
        let evaluate = |spec: &TrainingSpec, version: &str| {
            task::Kind::Evaluation(treaty_proto::v1::EvaluationTask {
                spec: Some(spec.clone()),
                model_version: version.into(),
                model: Vec::new(),
            })
        };
        let (final_model, unnamed) = (evaluate(&spec, "job-000001/r3"), evaluate(&spec, ""));
        // Without a test split: training alone, and the final evaluation refused as such.
        for round in 1..=rounds {
            let plan = worker.plan(round, &task).unwrap();
            assert_eq!(plan.releases.len(), 1, "round {round}");
        }
        let refusal = worker.plan(rounds + 1, &final_model).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::NoTestSplit);

        worker.test = Some(worker.train.clone());
        let plans: Vec<Plan> = (1..=rounds)
            .map(|round| worker.plan(round, &task).unwrap())
            .collect();
        // Round 1 trains the initial model without evaluating it; later rounds evaluate the
        // model they receive. The training noise is the same in every round.
        assert_eq!(plans[0].releases.len(), 1);
        assert!(plans.iter().all(|p| p.releases[0] == plans[0].releases[0]));
        for plan in &plans[1..] {
            assert_eq!(plan.releases.len(), 2);
            assert!(
                matches!(plan.releases[1], Release::Laplace { epsilon } if (epsilon - evaluation_epsilon).abs() < 1e-9)
            );
        }
        // The report's next round: a whole round, then, after the last, the final evaluation.
        assert_eq!(plans[0].next, plans[1].releases);
        assert_eq!(plans[rounds as usize - 1].next.len(), 1);
        let last = worker.plan(rounds + 1, &final_model).unwrap();
        assert_eq!(last.kind(), "evaluation");
        assert!(
            matches!(last.releases.as_slice(), [Release::Laplace { epsilon }] if (*epsilon - evaluation_epsilon).abs() < 1e-9)
        );
        assert!(last.next.is_empty());
        // The whole job, its final evaluation included, spends at most its target (epsilon 1
        // at delta 1e-5), and nearly all of it: the noise was calibrated for `rounds`
        // evaluations, and `rounds` took place.
        let all: Vec<Release> = plans
            .iter()
            .flat_map(|p| p.releases.clone())
            .chain(last.releases.clone())
            .collect();
        let spent = treaty_policies::privacy::spent(&all, 1e-5).unwrap().epsilon;
        assert!(spent <= 1.0 && spent > 0.99, "{spent}");
        // An evaluation task without a model version, or in a job without evaluations, is
        // refused from the task alone.
        assert_eq!(
            worker.plan(rounds + 1, &unnamed).unwrap_err().code,
            RefusalCode::InvalidTask
        );
        spec.privacy.as_mut().unwrap().evaluation_epsilon = Some(0.0);
        let refusal = worker
            .plan(rounds + 1, &evaluate(&spec, "job-000001/r3"))
            .unwrap_err();
        assert_eq!(
            refusal.code,
            RefusalCode::InvalidTask,
            "{}",
            refusal.message
        );
    }

    #[test]
    fn a_poisoned_standardization_or_clip_is_refused_from_the_task_alone() {
        let worker = worker_of(10);
        let with = |std: f64, clip: f64| {
            let mut task = training_task(DpMode::Poisson, 0.1, 0.0);
            if let task::Kind::Training(t) = &mut task {
                let spec = t.spec.as_mut().unwrap();
                spec.standardization = vec![ColumnStats {
                    name: "x".into(),
                    mean: 0.0,
                    std,
                    count: 0.0,
                }];
                spec.privacy.as_mut().unwrap().clip_norm = clip;
            }
            worker.plan(2, &task).map(|_| ())
        };
        assert!(with(1.0, 1.0).is_ok());
        for (std, clip) in [
            (0.0, 1.0),
            (f64::NAN, 1.0),
            (f64::INFINITY, 1.0),
            (1.0, 1e300),
            (1.0, f64::NAN),
        ] {
            let refusal = with(std, clip).unwrap_err();
            assert_eq!(
                refusal.code,
                RefusalCode::InvalidTask,
                "{std} {clip}: {}",
                refusal.message
            );
        }
    }

    #[test]
    fn a_task_without_a_privacy_spec_is_refused_before_the_data_is_read() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"x,seized\n1,0\n2,1\n").unwrap();
        let worker = Worker::new(Table::open(f.path()).unwrap(), None);
        let schema = schema::parse("[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x\"\nkind = \"numeric\"\nlower = 0.0\nupper = 3.0\n")
            .unwrap()
            .unwrap();
        let training = task::Kind::Training(TrainingTask {
            spec: Some(TrainingSpec {
                model: ModelKind::LogisticRegression as i32,
                schema: Some(schema.clone()),
                rounds: 1,
                local_epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                ..Default::default()
            }),
            model_version: String::new(),
            public_records: 0.0,
            model: Vec::new(),
        });
        assert_eq!(
            worker.plan(2, &training).unwrap_err().code,
            RefusalCode::DpRequired
        );
        let stats = task::Kind::Stats(StatsTask {
            schema: Some(schema.clone()),
            privacy: None,
        });
        assert_eq!(
            worker.plan(2, &stats).unwrap_err().code,
            RefusalCode::DpRequired
        );
        // With a privacy spec the statistics are planned, as a Gaussian release.
        let private = task::Kind::Stats(StatsTask {
            schema: Some(schema),
            privacy: Some(PrivacySpec {
                statistics_rho: Some(0.01),
                ..Default::default()
            }),
        });
        let plan = worker.plan(2, &private).unwrap();
        // A round of more steps than a node takes is refused, not run for ever.
        let endless = worker
            .plan(2, &training_task(DpMode::Poisson, 1e-300, 0.0))
            .unwrap_err();
        assert_eq!(endless.code, RefusalCode::InvalidTask);
        assert!(endless.message.contains("steps"), "{}", endless.message);
        assert!(
            matches!(plan.releases.as_slice(), [Release::Gaussian { rho }] if (*rho - 0.01).abs() < 1e-9)
        );
    }
}

//! Differential privacy end to end: budgets, the ledger under crashes, calibrated DP-SGD.

use std::time::Duration;

use treaty_devkit::local::write_toml;
use treaty_node::NodeConfig;
use treaty_policies::privacy::{Release, spent, zcdp};
use treaty_proto::v1::{ColumnStats, DpMode, PrivacySpec};

use crate::common::*;

/// The evaluation epsilon of a job that gives its noise multiplier.
const EVALUATION: Release = Release::Laplace { epsilon: 0.05 };

/// What `rounds` rounds cost: a Gaussian of `rho` for the training each round, and a Laplace
/// of epsilon 0.05 for the evaluation of the model each round from the second starts from.
fn releases(rounds: usize, rho: f64) -> Vec<Release> {
    (0..rounds)
        .flat_map(|round| {
            std::iter::once(Release::Gaussian { rho }).chain((round > 0).then_some(EVALUATION))
        })
        .collect()
}

fn rounds_cost(rounds: usize) -> f64 {
    spent(&releases(rounds, zcdp::gaussian_rho(2.0)), 1e-5)
        .unwrap()
        .epsilon
}

/// Adds a privacy budget to a node's configuration file.
fn with_budget(config: &std::path::Path, max_epsilon: f64) {
    let mut node = NodeConfig::load(config).unwrap();
    node.privacy = Some(treaty_node::Budget {
        max_epsilon,
        delta: 1e-5,
    });
    write_toml(config, &node).unwrap();
}

fn ledger(config: &std::path::Path) -> serde_json::Value {
    treaty_json(&[
        std::ffi::OsStr::new("node"),
        "ledger".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ])
}

/// A full-batch DP job with a known standardisation (so that no statistics round spends budget).
fn dp_spec(rounds: u32, sigma: f64) -> treaty_proto::v1::TrainingSpec {
    let mut spec = training_spec(rounds);
    spec.local_epochs = 1;
    spec.learning_rate = 0.5;
    spec.standardization = ["x1", "x2"]
        .iter()
        .map(|n| ColumnStats {
            name: n.to_string(),
            mean: 0.0,
            std: 1.15,
            count: 0.0,
        })
        .collect();
    spec.privacy = Some(PrivacySpec {
        mode: DpMode::FullBatch as i32,
        clip_norm: 1.0,
        noise_multiplier: sigma,
        ..Default::default()
    });
    spec
}

#[tokio::test]
async fn an_agency_whose_budget_allows_three_rounds_takes_part_in_exactly_three() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    // A round is one full-batch step with noise multiplier 2 (1/8-zCDP) and, from the second,
    // an evaluation on the test split (Laplace, epsilon 0.05); the budget sits between what
    // three and four rounds cost.
    let (three, four) = (rounds_cost(3), rounds_cost(4));
    let budget = (three + four) / 2.0;
    let (train, test) = write_data(fx.dir.path(), "DE-BKA", 400, 1);
    let de_config = fx.node_config_for("DE-BKA", "DE", &address, &train, &test);
    with_budget(&de_config, budget);
    // The job gives its standardisation, so there is no statistics round: each agency declares
    // a public record count for its full-batch divisor.
    declare_public_records(&de_config, 400);
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    let mut others = Vec::new();
    for (agency, country, seed) in [("NL-POLITIE", "NL", 2), ("FR-DOUANE", "FR", 3)] {
        let config = fx.node_config(agency, country, &address, seed);
        declare_public_records(&config, 400);
        others.push(fx.start_node_with(agency, &config));
    }
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DOUANE"]).await;
    create_federation(
        &mut op,
        "three",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    let job = run_job(&mut op, "three", dp_spec(10, 2.0), 2).await;

    let with_de: Vec<u32> = job
        .rounds
        .iter()
        .filter(|r| r.contributors.iter().any(|a| a == "DE-BKA"))
        .map(|r| r.round)
        .collect();
    assert_eq!(with_de, vec![1, 2, 3], "{:#?}", job.rounds);
    assert_eq!(job.rounds.len(), 10);
    for r in &job.rounds[3..] {
        assert_eq!(r.contributors.len(), 2, "the job goes on with the others");
        let e = r.excluded.iter().find(|e| e.agency == "DE-BKA").unwrap();
        assert_eq!(e.reason_code, "BUDGET_EXHAUSTED", "{e:?}");
    }
    // The final model's evaluation costs one Laplace release: it still fits DE's budget (the
    // coordinator does not judge it by a whole round's cost), so DE evaluates it too.
    let last = job
        .final_evaluation
        .as_ref()
        .expect("the final model evaluated");
    assert_eq!(last.round, 11);
    assert_eq!(last.evaluated_model_version, job.latest_model_version);
    assert_eq!(last.contributors.len(), 3, "{last:#?}");
    // At epsilon 0.05 on 100 test records an agency, the noisy counts may leave no metric to
    // compute (the rounds tests read metrics at a readable epsilon); each evaluator's own
    // ledger report comes with its result whatever the noise.
    for agency in &last.contributors {
        assert!(
            last.agency_metrics[agency]
                .values
                .contains_key("spent_epsilon"),
            "{last:#?}"
        );
    }
    // The node's own ledger: three rounds and the evaluation, within the budget.
    de.signal(nix::sys::signal::Signal::SIGTERM);
    de.wait_for_exit(Duration::from_secs(10)).unwrap();
    let l = ledger(&de_config);
    assert_eq!(l["entries"].as_array().unwrap().len(), 4, "{l}");
    assert_eq!(l["entries"][3]["kind"], "evaluation", "{l}");
    let mut held = releases(3, zcdp::gaussian_rho(2.0));
    held.push(EVALUATION);
    let expected = spent(&held, 1e-5).unwrap().epsilon;
    let spent = l["spent"]["epsilon"].as_f64().unwrap();
    assert!(
        spent <= budget && (spent - expected).abs() < 1e-6 * expected,
        "{spent} vs {expected}, budget {budget}: {l}"
    );
    // Gaussians and Laplace releases: PLD, the tightest, gives the ledger's figure.
    assert!(
        l["spent"]["accountant"]
            .as_str()
            .unwrap()
            .starts_with("PLD"),
        "{l}"
    );
}

#[tokio::test]
async fn a_node_killed_again_and_again_never_under_counts() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let (train, test) = write_data(fx.dir.path(), "DE-BKA", 2000, 4);
    let de_config = fx.node_config_for("DE-BKA", "DE", &address, &train, &test);
    with_budget(&de_config, 1000.0);
    declare_public_records(&de_config, 2000);
    let mut de = fx.start_node_with("DE-BKA", &de_config);
    let nl_config = fx.node_config("NL-POLITIE", "NL", &address, 5);
    declare_public_records(&nl_config, 400);
    let _nl = fx.start_node_with("NL-POLITIE", &nl_config);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;

    let mut spec = dp_spec(40, 4.0);
    spec.local_epochs = 3;
    let job = op
        .create_job(treaty_proto::v1::CreateJobRequest {
            federation: "pair".into(),
            spec: Some(treaty_proto::v1::JobSpec {
                kind: Some(treaty_proto::v1::job_spec::Kind::Training(spec)),
                min_participants: 1,
                round_timeout_ms: 1_500,
                join_timeout_ms: 20_000,
                sharing: Some(test_sharing()),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // Kill -9 DE's node five times while the job runs, at moments that fall mid-round.
    for i in 0..5u64 {
        tokio::time::sleep(Duration::from_millis(150 + 70 * i)).await;
        de.signal(nix::sys::signal::Signal::SIGKILL);
        de.wait_for_exit(Duration::from_secs(5)).unwrap();
        drop(de);
        de = fx.start_node_with("DE-BKA", &de_config);
    }
    let job = watch_to_end(&mut op, &job.job_id).await;
    de.signal(nix::sys::signal::Signal::SIGTERM);
    de.wait_for_exit(Duration::from_secs(10)).unwrap();

    // Every round the coordinator received from DE has its entry in DE's ledger (write-ahead), and
    // the ledger's epsilon is at least what those rounds cost.
    let contributed: Vec<u64> = job
        .rounds
        .iter()
        .filter(|r| r.contributors.iter().any(|a| a == "DE-BKA"))
        .map(|r| u64::from(r.round))
        .collect();
    let l = ledger(&de_config);
    let recorded: Vec<u64> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    for round in &contributed {
        assert!(
            recorded.contains(round),
            "round {round} left DE without a ledger entry: {recorded:?}"
        );
    }
    assert!(recorded.len() >= contributed.len());
    assert!(
        !contributed.is_empty(),
        "DE never contributed: {:#?}",
        job.rounds
    );
    let true_spent = spent(
        &releases(contributed.len(), 3.0 * zcdp::gaussian_rho(4.0)),
        1e-5,
    )
    .unwrap()
    .epsilon;
    let spent = l["spent"]["epsilon"].as_f64().unwrap();
    assert!(
        spent >= true_spent * (1.0 - 1e-9),
        "ledger {spent} < true {true_spent}"
    );
    eprintln!(
        "DE contributed {} rounds, its ledger holds {} releases",
        contributed.len(),
        recorded.len()
    );
}

#[tokio::test]
async fn dp_sgd_calibrated_to_a_target_spends_at_most_the_target_and_learns() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut configs = Vec::new();
    let mut nodes = Vec::new();
    for (i, (agency, country)) in [("DE-BKA", "DE"), ("NL-POLITIE", "NL")]
        .into_iter()
        .enumerate()
    {
        let (train, test) = write_data(fx.dir.path(), agency, 4000, 10 + i as u64);
        let config = fx.node_config_for(agency, country, &address, &train, &test);
        with_budget(&config, 2.0);
        declare_public_records(&config, 4000);
        nodes.push(fx.start_node_with(agency, &config));
        configs.push(config);
    }
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    let mut spec = dp_spec(5, 0.0);
    spec.batch_size = 200;
    spec.learning_rate = 0.5;
    spec.privacy = Some(PrivacySpec {
        mode: DpMode::Poisson as i32,
        clip_norm: 1.0,
        target_epsilon: 1.0,
        target_delta: 1e-5,
        ..Default::default()
    });
    let job = run_job(&mut op, "pair", spec, 2).await;
    let (file, tensors) = model_get(&fx, &address, &job.job_id);
    assert_eq!(file["features"].as_array().unwrap().len(), 2);
    let model =
        treaty_node::Model::from_tensors(treaty_node::Architecture::Logistic, 2, &tensors).unwrap();
    let stats: Vec<ColumnStats> = ["x1", "x2"]
        .iter()
        .map(|n| ColumnStats {
            name: n.to_string(),
            mean: 0.0,
            std: 1.15,
            count: 0.0,
        })
        .collect();
    let test = treaty_node::Table::open(&fx.path("DE-BKA_test.csv"))
        .unwrap()
        .encode(&schema_of_test_data(), &stats)
        .unwrap();
    let accuracy = treaty_node::evaluate(&model, &test)["accuracy"];
    assert!(accuracy > 0.8, "{accuracy}");
    for (node, config) in nodes.iter_mut().zip(&configs) {
        node.signal(nix::sys::signal::Signal::SIGTERM);
        node.wait_for_exit(Duration::from_secs(10)).unwrap();
        let l = ledger(config);
        let spent = l["spent"]["epsilon"].as_f64().unwrap();
        assert!(spent <= 1.0 + 1e-6 && spent > 0.9, "{l}");
        // Calibrated by the tightest accountant, PLD, which the ledger reports; RDP's bound on
        // the same history is beside it, above the target.
        assert!(
            l["spent"]["accountant"]
                .as_str()
                .unwrap()
                .starts_with("PLD"),
            "{l}"
        );
        let rdp = l["spent"]["bounds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["accountant"].as_str().unwrap().starts_with("RDP"))
            .unwrap()["epsilon"]
            .as_f64()
            .unwrap();
        assert!(rdp > 1.0 + 1e-6, "{l}");
        // Five rounds and the evaluation of the final model.
        assert_eq!(l["entries"].as_array().unwrap().len(), 6, "{l}");
    }
}

/// A statistics round whose noise swamps a column (bounds a million times wider than its
/// values, 400 records per agency, a small rho) says so while the job runs: an event naming
/// the column and what to do, with the standardisation kept within what the bounds allow; the
/// job goes on.
#[tokio::test]
async fn a_column_drowned_in_the_statistics_noise_is_named_and_the_job_goes_on() {
    use tokio_stream::StreamExt;
    use treaty_proto::v1::{
        CreateJobRequest, JobEventKind, JobSpec, JobState, WatchJobRequest, job_spec,
    };

    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 1);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 2);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    let mut spec = training_spec(1);
    // x1 lies in [-2, 2] (variance 4/3); with bounds ±1e6 the noise on its sum of squares
    // over 800 records is some 1e10 times that. The noisy variance's standard error is
    // B^2 / 23.8 at the default rho 0.005 (B the half-range: 12.25 / 0.5143 for x2's ±3.5 in a
    // run), so a draw between 2 and 23.8 standard errors, 2.3 % of runs, looked sound and was
    // not named. At rho 5e-6 it is B^2 / 0.75: a variance above twice its standard error is
    // above B^2, which no values within the bounds have, and is named as such. (The noisy count
    // is noisy too, so a rare draw still escapes: about 1 in 25,000 by a simulation of the
    // coordinator's criteria.)
    let schema = spec.schema.as_mut().unwrap();
    schema.columns[0].lower = Some(-1e6);
    schema.columns[0].upper = Some(1e6);
    let privacy = spec.privacy.as_mut().unwrap();
    privacy.statistics_rho = Some(5e-6);
    let job = op
        .create_job(CreateJobRequest {
            federation: "pair".into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: 2,
                round_timeout_ms: 20_000,
                join_timeout_ms: 20_000,
                sharing: Some(test_sharing()),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = op
        .watch_job(WatchJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut noisy, mut last) = (Vec::new(), None);
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if event.kind() == JobEventKind::StatisticsNoisy {
            noisy.push(event.message.clone());
        }
        last = event.job;
    }
    let job = last.unwrap();
    assert_eq!(job.state, JobState::Succeeded as i32, "{}", job.message);
    let x1 = noisy
        .iter()
        .find(|m| m.contains("column `x1`"))
        .unwrap_or_else(|| panic!("no warning names x1: {noisy:?}"));
    for part in [
        "the DP noise dominates",
        "tighten the column's bounds (now [-1.000e6, 1.000e6] after the transform)",
        "a larger statistics_rho (now 0.000005)",
    ] {
        assert!(x1.contains(part), "{part} in {x1}");
    }
    // Whatever the noise, the standardisation stays within what values in the bounds can
    // have: a mean within them, a positive std of at most the half-range.
    let stats = &job.spec.unwrap().kind.unwrap();
    let job_spec::Kind::Training(training) = stats else {
        panic!("not a training job")
    };
    let s = &training.standardization[0];
    assert_eq!(s.name, "x1");
    assert!(s.mean.abs() <= 1e6 && s.std > 0.0 && s.std <= 1e6, "{s:?}");
}

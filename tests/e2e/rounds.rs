//! A node joins, completes rounds, and comes back by itself after the coordinator restarts.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use treaty_proto::Identity;
use treaty_proto::tls::ClientTls;
use treaty_proto::v1::TrainingSpec;

use crate::common::*;

#[tokio::test]
async fn a_node_joins_and_completes_a_round() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 1);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 2);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    let job = run_training(&mut op, "pair", 3, 2).await;

    assert_eq!(job.rounds.len(), 3);
    for round in &job.rounds {
        assert_eq!(round.contributors.len(), 2, "{round:?}");
        // Under DP the nodes release no record counts: each update weighs one.
        assert_eq!(round.num_examples, 2);
        assert!(round.excluded.is_empty());
    }
    // The data follow a linear rule, so a few rounds learn it well: the model entering round 3
    // is far better than chance on every agency's test split.
    let last = &job.rounds[2];
    assert!(last.metrics["test_accuracy"] > 0.85, "{:?}", last.metrics);
    assert_eq!(job.latest_model_version, format!("{}/r3", job.job_id));

    // The health service answers over the same mutual TLS.
    let tls = ClientTls::new(&fx.files(&Identity::operator("op").unwrap())).unwrap();
    let mut health =
        HealthClient::new(tls.connect(&address, Duration::from_secs(5)).await.unwrap());
    let status = health
        .check(HealthCheckRequest {
            service: "treaty.v1.AgencyService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // Server reflection lists Treaty's services, so that grpcurl and friends can explore them.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection =
        ServerReflectionClient::new(tls.connect(&address, Duration::from_secs(5)).await.unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "treaty.v1.AgencyService",
        "treaty.v1.OperatorService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == service), "{names:?}");
    }
}

#[tokio::test]
async fn a_node_reconnects_after_the_coordinator_restarts() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    // A fixed port, so that the restarted coordinator is where the node looks for it.
    let listen = free_loopback_address();
    let (mut coordinator, address) = fx.start_coordinator(&listen);
    let node = fx.start_node("DE-BKA", "DE", &address, 3);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA"]).await;
    create_federation(&mut op, "solo", &["DE-BKA:DE"]).await;
    let first = run_training(&mut op, "solo", 1, 1).await;
    assert_eq!(first.rounds[0].contributors, vec!["DE-BKA".to_owned()]);

    // The coordinator dies without warning, then comes back on the same port.
    coordinator.signal(nix::sys::signal::Signal::SIGKILL);
    coordinator.wait_for_exit(Duration::from_secs(5)).unwrap();
    drop(coordinator);
    let (_coordinator, address) = fx.start_coordinator(&listen);

    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA"]).await;
    // The federation and the first job survived in the coordinator's database.
    let again = op
        .get_job(treaty_proto::v1::GetJobRequest {
            job_id: first.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.rounds.len(), 1);
    let second = run_training(&mut op, "solo", 1, 1).await;
    assert_eq!(second.rounds[0].contributors, vec!["DE-BKA".to_owned()]);
    assert_ne!(second.job_id, first.job_id);
    assert!(node.log().contains("session open"), "{}", node.log());
}

#[tokio::test]
async fn sigterm_stops_coordinator_and_node_gracefully() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let (mut coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut node = fx.start_node("DE-BKA", "DE", &address, 4);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA"]).await;
    drop(op);

    node.signal(nix::sys::signal::Signal::SIGTERM);
    let status = node
        .wait_for_exit(Duration::from_secs(10))
        .expect("node did not stop");
    assert!(status.success(), "{status:?}: {}", node.log());

    coordinator.signal(nix::sys::signal::Signal::SIGTERM);
    let status = coordinator
        .wait_for_exit(Duration::from_secs(10))
        .expect("coordinator did not stop");
    assert!(status.success(), "{status:?}: {}", coordinator.log());
    assert!(
        coordinator.log().contains("coordinator stopped"),
        "{}",
        coordinator.log()
    );
}

#[tokio::test]
async fn the_operator_cli_creates_a_federation_and_trains() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 21);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 22);
    let config = fx.operator_config(&address);
    let schema = fx.schema_file();
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(TREATY)
            .args(args)
            .output()
            .unwrap();
        succeeded_stdout(&out)
    };
    let c = config.to_str().unwrap();
    // A member names its country: the id alone, or the certificate's order, is refused with the
    // form to write.
    for (member, hint) in [
        ("DE-BKA", "`DE-BKA:<CC>`"),
        ("DE/DE-BKA", "here `DE-BKA:DE`"),
    ] {
        let out = std::process::Command::new(TREATY)
            .args([
                "federation",
                "create",
                "--config",
                c,
                "--name",
                "pair",
                "--purpose",
                "narcotics",
                "--member",
                member,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{member} was accepted");
        assert!(
            stderr.contains("write `AGENCY-ID:CC`") && stderr.contains(hint),
            "{stderr}"
        );
    }
    let out = run(&[
        "federation",
        "create",
        "--config",
        c,
        "--name",
        "pair",
        "--purpose",
        "narcotics",
        "--member",
        "DE-BKA:DE",
        "--member",
        "NL-POLITIE:NL",
    ]);
    assert!(out.contains("federation `pair` created"), "{out}");
    let out = run(&["agencies", "--config", c]);
    assert!(
        out.contains("DE-BKA\tDE") && out.contains("NL-POLITIE\tNL"),
        "{out}"
    );
    let out = run(&[
        "job",
        "train",
        "--config",
        c,
        "--federation",
        "pair",
        "--schema",
        schema.to_str().unwrap(),
        "--rounds",
        "2",
        "--learning-rate",
        "0.2",
        "--aggregation",
        "median",
        "--min-participants",
        "2",
    ]);
    assert!(out.contains("job succeeded after 2 round(s)"), "{out}");
    // The plan every node follows is shown before the job starts.
    assert!(
        out.contains("privacy plan: epsilon 1 per agency at delta 1e-5, over 2 round(s)"),
        "{out}"
    );
    assert!(out.contains("  statistics round: rho "), "{out}");
    let out = run(&["job", "show", "--config", c, "--job", "job-000001"]);
    assert!(out.contains("statistics: 2 of 2 invited"), "{out}");
    assert!(out.contains("round 2: 2 of 2 invited"), "{out}");
    // No agency's number of records is shown: a noisy count reads as the whole number it
    // estimates.
    assert!(!out.contains("examples  "), "{out}");
    assert!(out.contains("test_examples~"), "{out}");
    // Each agency's spending, as its own ledger reports it, then its noisy metrics.
    assert!(out.contains("    NL-POLITIE:  spent_epsilon="), "{out}");
    assert!(out.contains(" test_accuracy="), "{out}");
    // Round 1 starts from the initial model and evaluates nothing; round 2 evaluates the model
    // of round 1, and the final model is evaluated after the last round. Every noisy metric
    // comes with its interval.
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {out}"))
            .to_owned()
    };
    // At the default plan's evaluation epsilon, 100 test records an agency may leave no
    // positive noisy count: then no metric, and the line says why.
    let evaluated = |line: &str| {
        (line.contains(" test_accuracy=") && line.contains(" ["))
            || line.contains("no metric: the noise left no positive count")
    };
    assert!(!line("  round 1:").contains("test_"), "{out}");
    let round2 = line("  round 2:");
    assert!(round2.ends_with("(of job-000001/r1)"), "{out}");
    assert!(evaluated(&round2), "{out}");
    let last = line("  final model job-000001/r2: 2 of 2 invited ");
    assert!(evaluated(&last), "{out}");
    // An evaluation epsilon of 0 turns evaluations off: the nodes have test splits, yet no
    // round has a test metric, and the plan says so.
    let out = run(&[
        "job",
        "train",
        "--config",
        c,
        "--federation",
        "pair",
        "--schema",
        schema.to_str().unwrap(),
        "--rounds",
        "2",
        "--dp-mode",
        "full-batch",
        "--evaluation-epsilon",
        "0",
        "--min-participants",
        "2",
    ]);
    assert!(out.contains("job succeeded after 2 round(s)"), "{out}");
    assert!(out.contains("  evaluations: off"), "{out}");
    assert!(out.contains("full batch"), "{out}");
    let out = run(&["job", "show", "--config", c, "--job", "job-000002"]);
    assert!(out.contains("round 2: 2 of 2 invited"), "{out}");
    assert!(!out.contains("test_"), "{out}");
    assert!(!out.contains("final model"), "{out}");
}

/// The final model is evaluated by every agency with a test split, each metric with its
/// interval; a node without one refuses (`NO_TEST_SPLIT`), and too few evaluators leave the
/// job successful and its final model unevaluated.
#[tokio::test]
async fn the_final_model_is_evaluated_by_the_agencies_with_a_test_split() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 1);
    let nl_config = fx.node_config("NL-POLITIE", "NL", &address, 2);
    let mut nl = treaty_node::NodeConfig::load(&nl_config).unwrap();
    nl.data.test = None;
    treaty_devkit::local::write_toml(&nl_config, &nl).unwrap();
    let _nl = fx.start_node_with("NL-POLITIE", &nl_config);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;

    let job = run_training(&mut op, "pair", 2, 1).await;
    let last = job.final_evaluation.as_ref().expect("evaluated");
    assert_eq!(
        (last.round, last.evaluated_model_version.as_str()),
        (3, job.latest_model_version.as_str())
    );
    assert_eq!(last.contributors, ["DE-BKA"]);
    let refusal = last
        .excluded
        .iter()
        .find(|e| e.agency == "NL-POLITIE")
        .unwrap();
    assert_eq!(
        (refusal.reason_code.as_str(), refusal.node_code.as_str()),
        ("REFUSED", "NO_TEST_SPLIT"),
        "{refusal:?}"
    );
    // Every metric of the noisy counts has its interval, around it.
    for (name, value) in &last.metrics {
        let i = &last.metric_intervals[name];
        assert!(i.low <= *value && *value <= i.high, "{name} {value} {i:?}");
    }
    let accuracy = last.metrics["test_accuracy"];
    assert!(accuracy > 0.7, "{last:?}");
    assert!(
        last.agency_metrics["DE-BKA"]
            .intervals
            .contains_key("test_accuracy")
    );

    // Two evaluators needed, one able: the job succeeds, its final model unevaluated.
    let job = run_training(&mut op, "pair", 2, 2).await;
    assert!(job.final_evaluation.is_none(), "{:?}", job.final_evaluation);
    assert_eq!(job.rounds.len(), 2);
}

#[tokio::test]
async fn a_robust_job_whose_rounds_would_hold_too_much_is_refused_before_it_starts() {
    use tonic::Code;
    use treaty_proto::v1::{
        Aggregation, CreateJobRequest, JobSpec, ListJobsRequest, ModelKind, Strategy, job_spec,
    };
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    // A coordinator that lets a round hold 200,000 bytes of updates.
    let mut config = fx
        .site
        .coordinator_config("127.0.0.1:0".parse().unwrap(), "NL");
    config.limits.max_round_memory_bytes = 200_000;
    let (_coordinator, address) = fx.site.start_coordinator(&config).unwrap();
    let mut op = fx.operator(&address).await;
    create_federation(&mut op, "pair", &["DE-BKA:DE", "NL-POLITIE:NL"]).await;
    // An MLP of 2 inputs and 4,096 hidden units: 4,096 x (2 + 2) + 1 = 16,385 parameters; a
    // robust round of the 2 members holds 2 x 16,385 x 8 = 262,160 bytes.
    let request = |aggregation: Aggregation| CreateJobRequest {
        federation: "pair".into(),
        spec: Some(JobSpec {
            kind: Some(job_spec::Kind::Training(TrainingSpec {
                model: ModelKind::Mlp as i32,
                hidden_units: 4096,
                strategy: Some(Strategy {
                    aggregation: aggregation as i32,
                    ..Default::default()
                }),
                ..training_spec(1)
            })),
            min_participants: 2,
            sharing: Some(test_sharing()),
            ..Default::default()
        }),
    };
    for robust in [
        Aggregation::Median,
        Aggregation::TrimmedMean,
        Aggregation::NormBounded,
    ] {
        let status = op.create_job(request(robust)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let message = status.message();
        for needle in [
            "would hold 262160 bytes",
            robust.as_str_name(),
            "2 members x 16385 parameters x 8 bytes",
            "`limits.max_round_memory_bytes` of 200000",
            "use FEDAVG",
        ] {
            assert!(message.contains(needle), "`{needle}` in {message}");
        }
    }
    // Refused up front: no job exists, so none can fail mid-round.
    let jobs = op
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "{jobs:?}");
    // FedAvg folds the updates in as they arrive: the same model is taken.
    op.create_job(request(Aggregation::Fedavg)).await.unwrap();
}

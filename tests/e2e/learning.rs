//! Learning on sovereign data: the federated model is as good as the pooled one, bad data keeps
//! an agency out with a precise message, and robust aggregation withstands a malicious agency.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use treaty_node::{Architecture, Model};
use treaty_node::{Examples, Table};
use treaty_node::{Sgd, train};
use treaty_node::{Worker, download};
use treaty_proto::tls::ClientTls;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    Aggregation, ColumnStats, DpMode, Hello, ModelKind, NodeMessage, PrivacySpec, Strategy,
    TrainingSpec, coordinator_message, node_message, task,
};
use treaty_proto::{Identity, schema};

use crate::common::*;

fn pooled(
    tables: &[Table],
    schema: &treaty_proto::v1::FeatureSchema,
    stats: &[ColumnStats],
) -> Examples {
    let parts: Vec<Examples> = tables
        .iter()
        .map(|t| t.encode(schema, stats).unwrap())
        .collect();
    let xs: Vec<_> = parts.iter().map(|e| e.x.view()).collect();
    let ys: Vec<_> = parts.iter().map(|e| e.y.view()).collect();
    Examples {
        x: ndarray::concatenate(ndarray::Axis(0), &xs).unwrap(),
        y: ndarray::concatenate(ndarray::Axis(0), &ys).unwrap(),
    }
}

fn auc(model: &Model, data: &Examples) -> f64 {
    treaty_node::roc_auc(model.predict(data.x.view()).column(0), data.y.view()).unwrap()
}

#[tokio::test]
async fn the_federated_model_is_as_good_as_the_pooled_one() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    let status = Command::new(TREATY)
        .args([
            "synth",
            "--agencies",
            "4",
            "--rows",
            "6000",
            "--seed",
            "11",
            "--out",
            synth.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let agencies = [
        ("NL-DOUANE", "NL"),
        ("BE-DOUANE", "BE"),
        ("DE-ZOLL", "DE"),
        ("FR-DGDDI", "FR"),
    ];
    let fx = Fixture::new(&agencies);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut nodes = Vec::new();
    for (agency, country) in agencies {
        let train = synth.join(format!("{agency}_train.csv"));
        let test = synth.join(format!("{agency}_test.csv"));
        let config = fx.node_config_for(agency, country, &address, &train, &test);
        nodes.push(fx.start_node_with(agency, &config));
    }
    let mut op = fx.operator(&address).await;
    let names: Vec<&str> = agencies.iter().map(|(a, _)| *a).collect();
    wait_connected(&mut op, &names).await;
    let members: Vec<String> = agencies.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    create_federation(&mut op, "customs", &members).await;

    let schema = schema::load(&synth.join("schema.toml")).unwrap();
    let (rounds, batch, lr, momentum) = (30, 64, 0.05, 0.9);
    let spec = TrainingSpec {
        model: ModelKind::LogisticRegression as i32,
        schema: Some(schema.clone()),
        rounds,
        local_epochs: 1,
        batch_size: batch,
        learning_rate: lr,
        momentum,
        // DP with almost no noise and a clipping norm no gradient reaches, and statistics noised
        // so little that they match the pooled data's: the comparison is of federation, not of
        // privacy (which the DP tests measure).
        privacy: Some(PrivacySpec {
            mode: DpMode::Poisson as i32,
            clip_norm: 1e6,
            noise_multiplier: 1e-9,
            statistics_rho: Some(1e9),
            evaluation_epsilon: Some(20.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let job = run_job(&mut op, "customs", spec, 4).await;
    let stats = &job.statistics.as_ref().unwrap();
    assert_eq!(stats.contributors.len(), 4);
    let (file, tensors) = model_get(&fx, &address, &job.job_id);
    let inputs = file["features"].as_array().unwrap().len();
    let federated = Model::from_tensors(Architecture::Logistic, inputs, &tensors).unwrap();

    // The federation's standardisation, computed from (barely noised) column sums, equals the
    // pooled data's.
    let train_tables: Vec<Table> = names
        .iter()
        .map(|a| Table::open(&synth.join(format!("{a}_train.csv"))).unwrap())
        .collect();
    let test_tables: Vec<Table> = names
        .iter()
        .map(|a| Table::open(&synth.join(format!("{a}_test.csv"))).unwrap())
        .collect();
    let standardization = standardization_of(&file);
    let raw = pooled(&train_tables, &schema, &[]);
    let first_numeric = raw.x.column(0);
    let mean = first_numeric.mean().unwrap();
    let std = first_numeric.std(0.0);
    assert!(
        (standardization[0].mean - mean).abs() < 1e-6 * mean.abs()
            && (standardization[0].std - std).abs() < 1e-6 * std,
        "{:?} vs {mean} {std}",
        standardization[0]
    );

    // The same model trained centrally on the pooled training data, with the same optimiser for
    // as many epochs, which the law would never allow.
    let pooled_train = pooled(&train_tables, &schema, &standardization);
    let pooled_test = pooled(&test_tables, &schema, &standardization);
    let mut central = Model::zeros(Architecture::Logistic, inputs);
    train(
        &mut central,
        &pooled_train,
        &Sgd {
            epochs: rounds,
            batch_size: batch as usize,
            learning_rate: lr,
            momentum,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        },
    );
    let (fed_auc, central_auc) = (auc(&federated, &pooled_test), auc(&central, &pooled_test));
    eprintln!("pooled test AUC: federated {fed_auc:.4}, central {central_auc:.4}");
    assert!(
        (fed_auc - central_auc).abs() <= 0.01,
        "federated {fed_auc} vs central {central_auc}"
    );
    assert!(central_auc > 0.75, "{central_auc}");

    // Every prediction of the linear model can be explained.
    let out = Command::new(TREATY)
        .args(["model", "explain", "--model"])
        .arg(fx.path(&format!("{}.json", job.job_id)))
        .arg("--data")
        .arg(synth.join("DE-ZOLL_test.csv"))
        .args(["--limit", "2"])
        .output()
        .unwrap();
    let text = succeeded_stdout(&out);
    assert!(
        text.contains("record 2 (line 3): p = ")
            && text.contains("origin")
            && text.contains("= bias"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_cells_stay_in_the_agency_and_a_missing_column_is_named() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 1);
    // NL's file names a column differently from the schema: its header, which its node
    // declares anyway, does not fit the job.
    let (train, test) = write_data(fx.dir.path(), "NL-POLITIE", 50, 2);
    for file in [&train, &test] {
        let text = std::fs::read_to_string(file).unwrap();
        std::fs::write(file, text.replacen("x1,x2,", "x1,x_2,", 1)).unwrap();
    }
    let config = fx.node_config_for("NL-POLITIE", "NL", &address, &train, &test);
    let _nl = fx.start_node_with("NL-POLITIE", &config);
    // FR's training file has a word where a number belongs, on line 3.
    let (train, test) = write_data(fx.dir.path(), "FR-DOUANE", 50, 3);
    let text = std::fs::read_to_string(&train).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = format!("twelve,{}", lines[2].split_once(',').unwrap().1);
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    let config = fx.node_config_for("FR-DOUANE", "FR", &address, &train, &test);
    let fr = fx.start_node_with("FR-DOUANE", &config);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DOUANE"]).await;
    create_federation(
        &mut op,
        "three",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    let job = run_training(&mut op, "three", 2, 2).await;

    // FR takes part: its unreadable record is left out by a fixed rule, as any record would
    // be, and nothing of it reaches the coordinator.
    let statistics = job.statistics.as_ref().unwrap();
    assert_eq!(statistics.contributors, ["DE-BKA", "FR-DOUANE"]);
    for round in &job.rounds {
        assert_eq!(round.contributors, ["DE-BKA", "FR-DOUANE"]);
    }
    let everything = format!("{job:?}") + &coordinator.log();
    for secret in ["twelve", "line 3", "FR-DOUANE_train.csv"] {
        assert!(
            !everything.contains(secret),
            "`{secret}` reached the coordinator"
        );
    }
    // The agency's own staff read where the problem is in their node's log.
    fr.wait_for_log(
        "FR-DOUANE_train.csv`, line 3, column `x1`: the cell is not a number",
        Duration::from_secs(5),
    );
    // NL stays out, told which column is missing (from its header, never a record).
    let excluded = &statistics.excluded[0];
    assert_eq!(excluded.agency, "NL-POLITIE");
    assert_eq!(excluded.reason_code, "REFUSED");
    assert_eq!(excluded.node_code, "DATA_ERROR");
    assert!(
        excluded.message.contains(
            "the agency's data has no column `x2` (it has: x1, x_2, mode, band, amount, seized)"
        ),
        "{}",
        excluded.message
    );
    for round in &job.rounds {
        assert_eq!(round.excluded[0].agency, "NL-POLITIE");
        assert!(round.excluded[0].message.contains("no column `x2`"));
    }
}

/// A broken agency: its labels are inverted (a data feed gone wrong) and it sends `factor` times
/// the update it trains on them. With `factor` 1 and correct labels it is honest.
async fn adversary(
    fx: &Fixture,
    address: &str,
    agency: &str,
    country: &str,
    seed: u64,
    factor: Arc<Mutex<f64>>,
) -> Arc<Mutex<Vec<usize>>> {
    let (train_file, test_file) = write_shifted_data(fx.dir.path(), agency, 500, seed, 0.5);
    let text = std::fs::read_to_string(&train_file).unwrap();
    let inverted: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| match (i, line.rsplit_once(',')) {
            (0, _) | (_, None) => line.to_owned(),
            (_, Some((rest, label))) => format!("{rest},{}", if label == "1" { "0" } else { "1" }),
        })
        .collect();
    std::fs::write(
        fx.path(&format!("{agency}_inverted.csv")),
        inverted.join("\n") + "\n",
    )
    .unwrap();
    let broken = Table::open(&fx.path(&format!("{agency}_inverted.csv"))).unwrap();
    let honest = Table::open(&train_file).unwrap();
    let honest_worker = Worker::new(honest, Some(Table::open(&test_file).unwrap()));
    let worker = Worker::new(broken, Some(Table::open(&test_file).unwrap()));
    let tls = ClientTls::new(&fx.files(&Identity::agency(country, agency).unwrap())).unwrap();
    let channel = tls.connect(address, Duration::from_secs(5)).await.unwrap();
    let mut client = AgencyServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        software_version: "adversary".into(),
        protocol_version: treaty_proto::PROTOCOL_VERSION,
        datasets: vec![],
        privacy: None,
        // A node that does not take participants by digest: every task lists them in full.
        participants_by_digest: false,
    };
    tx.send(NodeMessage {
        kind: Some(node_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // How many participants each task's terms listed.
    let listed = Arc::new(Mutex::new(Vec::new()));
    let seen = listed.clone();
    tokio::spawn(async move {
        let _keep_session_open = tx;
        while let Ok(Some(message)) = inbound.message().await {
            let Some(coordinator_message::Kind::Task(task)) = message.kind else {
                continue;
            };
            let terms = task.terms.clone().unwrap_or_default();
            seen.lock()
                .unwrap()
                .push(match terms.participants_sha256.is_empty() {
                    true => terms.participants.len(),
                    false => 0,
                });
            let kind = task.kind.clone().unwrap();
            let plan = worker.plan(task.round, &kind).unwrap();
            let f = *factor.lock().unwrap();
            let chosen = if f == 1.0 { &honest_worker } else { &worker };
            let mut output = chosen.run(&mut client, &task.job_id, &plan).await.unwrap();
            if let task::Kind::Training(t) = &kind {
                let global = download(&mut client, &task.job_id, &t.model_version)
                    .await
                    .unwrap();
                for (local, global) in output.tensors.iter_mut().zip(&global) {
                    local.values = &global.values + &((&local.values - &global.values) * f);
                }
            }
            treaty_node::upload(&mut client, &task.task_id, output, None)
                .await
                .unwrap();
        }
    });
    listed
}

#[tokio::test]
async fn robust_aggregation_withstands_a_malicious_agency() {
    let agencies: Vec<(String, String)> = (0..8)
        .map(|i| (format!("AG-{i}"), format!("C{}", (b'A' + i as u8) as char)))
        .collect();
    let refs: Vec<(&str, &str)> = agencies
        .iter()
        .map(|(a, c)| (a.as_str(), c.as_str()))
        .collect();
    let fx = Fixture::new(&refs);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut honest = Vec::new();
    let mut tests = Vec::new();
    for (i, (agency, country)) in refs.iter().enumerate().take(7) {
        // Non-IID: each agency's x1 is shifted differently.
        let (train_file, test_file) = write_shifted_data(
            fx.dir.path(),
            agency,
            500,
            10 + i as u64,
            i as f64 * 0.3 - 1.0,
        );
        tests.push(Table::open(&test_file).unwrap());
        let config = fx.node_config_for(agency, country, &address, &train_file, &test_file);
        honest.push(fx.start_node_with(agency, &config));
    }
    let factor = Arc::new(Mutex::new(1.0));
    let listed = adversary(&fx, &address, refs[7].0, refs[7].1, 99, factor.clone()).await;
    let mut op = fx.operator(&address).await;
    let names: Vec<&str> = refs.iter().map(|(a, _)| *a).collect();
    wait_connected(&mut op, &names).await;
    let members: Vec<String> = refs.iter().map(|(a, c)| format!("{a}:{c}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    create_federation(&mut op, "eight", &members).await;

    let mut accuracy = std::collections::BTreeMap::new();
    for aggregation in [
        Aggregation::Fedavg,
        Aggregation::Median,
        Aggregation::TrimmedMean,
        Aggregation::NormBounded,
    ] {
        for (attack, f) in [
            ("honest", 1.0),
            ("scaled x100", 100.0),
            ("sign-flipped x100", -100.0),
        ] {
            *factor.lock().unwrap() = f;
            // Five local epochs: each round moves far toward the local optima, as real
            // deployments do, so that a boosted update overshoots.
            let mut spec = training_spec(10);
            spec.local_epochs = 5;
            spec.learning_rate = 1.0;
            spec.strategy = Some(Strategy {
                aggregation: aggregation as i32,
                ..Default::default()
            });
            let job = run_job(&mut op, "eight", spec, 8).await;
            let (file, tensors) = model_get(&fx, &address, &job.job_id);
            let stats = standardization_of(&file);
            let model = Model::from_tensors(Architecture::Logistic, 2, &tensors).unwrap();
            let test = pooled(&tests, &schema_of_test_data(), &stats);
            let acc = treaty_node::evaluate(&model, &test)["accuracy"];
            accuracy.insert((aggregation.as_str_name(), attack), acc);
        }
    }
    eprintln!("{accuracy:#?}");
    let get = |a: Aggregation, attack: &str| accuracy[&(a.as_str_name(), attack)];
    for a in [
        Aggregation::Median,
        Aggregation::TrimmedMean,
        Aggregation::NormBounded,
    ] {
        for attack in ["scaled x100", "sign-flipped x100"] {
            assert!(
                get(a, attack) >= get(a, "honest") - 0.01,
                "{} under {attack}: {accuracy:#?}",
                a.as_str_name()
            );
        }
    }
    for attack in ["scaled x100", "sign-flipped x100"] {
        assert!(
            get(Aggregation::Fedavg, attack) < get(Aggregation::Fedavg, "honest") - 0.02,
            "FedAvg under {attack}: {accuracy:#?}"
        );
    }
    // The adversary's `Hello` did not offer to take participants by digest: every one of its
    // tasks (a statistics round and 10 rounds, 12 jobs) listed the eight in full.
    let listed = listed.lock().unwrap().clone();
    assert!(listed.len() >= 12 * 11, "{listed:?}");
    assert!(listed.iter().all(|n| *n == 8), "{listed:?}");
}

#[tokio::test]
async fn every_model_and_strategy_trains_end_to_end() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let mut nodes = Vec::new();
    for (i, (agency, country)) in [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]
        .into_iter()
        .enumerate()
    {
        let (train_file, test_file) = write_shifted_data(
            fx.dir.path(),
            agency,
            600,
            40 + i as u64,
            i as f64 * 0.4 - 0.4,
        );
        let config = fx.node_config_for(agency, country, &address, &train_file, &test_file);
        nodes.push(fx.start_node_with(agency, &config));
    }
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE", "FR-DOUANE"]).await;
    create_federation(
        &mut op,
        "models",
        &["DE-BKA:DE", "NL-POLITIE:NL", "FR-DOUANE:FR"],
    )
    .await;
    let columns = "[[column]]\nname = \"x1\"\nkind = \"numeric\"\nlower = -3.5\nupper = 3.5\n[[column]]\nname = \"x2\"\nkind = \"numeric\"\nlower = -3.5\nupper = 3.5\n[[column]]\nname = \"mode\"\nkind = \"categorical\"\nvalues = [\"sea\", \"air\"]\n";
    let spec = |model: ModelKind, label: &str| {
        let mut spec = training_spec(8);
        spec.model = model as i32;
        spec.learning_rate = 0.05;
        spec.momentum = 0.5;
        spec.schema = Some(
            schema::parse(&format!("{label}\n{columns}"))
                .unwrap()
                .unwrap(),
        );
        spec
    };
    let last =
        |job: &treaty_proto::v1::Job, metric: &str| job.rounds.last().unwrap().metrics[metric];

    // Multinomial regression of the three bands (chance is about 1/3).
    let job = run_job(&mut op, "models", spec(ModelKind::MultinomialLogisticRegression, "[label]\nname = \"band\"\nkind = \"categorical\"\nclasses = [\"low\", \"mid\", \"high\"]\n"), 3).await;
    assert!(
        last(&job, "test_accuracy") > 0.85,
        "{:?}",
        job.rounds.last().unwrap().metrics
    );

    // Linear regression of the amount: the error falls well under the label's spread (about 7).
    let job = run_job(
        &mut op,
        "models",
        spec(
            ModelKind::LinearRegression,
            "[label]\nname = \"amount\"\nkind = \"numeric\"\n",
        ),
        3,
    )
    .await;
    assert!(
        last(&job, "test_rmse") < 1.0,
        "{:?}",
        job.rounds.last().unwrap().metrics
    );

    // An MLP and every strategy on the binary label.
    let mut mlp = spec(
        ModelKind::Mlp,
        "[label]\nname = \"seized\"\nkind = \"binary\"\n",
    );
    mlp.hidden_units = 8;
    let job = run_job(&mut op, "models", mlp, 3).await;
    assert!(
        last(&job, "test_auc") > 0.9,
        "{:?}",
        job.rounds.last().unwrap().metrics
    );
    for (aggregation, proximal_mu) in [
        (Aggregation::Fedavg, 0.1),
        (Aggregation::Fedadam, 0.0),
        (Aggregation::Fedyogi, 0.0),
        (Aggregation::Fedadagrad, 0.0),
    ] {
        let mut s = spec(
            ModelKind::LogisticRegression,
            "[label]\nname = \"seized\"\nkind = \"binary\"\n",
        );
        s.strategy = Some(Strategy {
            aggregation: aggregation as i32,
            proximal_mu,
            ..Default::default()
        });
        let job = run_job(&mut op, "models", s, 3).await;
        // Chance is 0.5; the adaptive server optimisers take smaller first steps.
        assert!(
            last(&job, "test_auc") > 0.8,
            "{} {:?}",
            aggregation.as_str_name(),
            job.rounds.last().unwrap().metrics
        );
    }
}

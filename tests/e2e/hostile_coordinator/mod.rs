//! Attacks of a malicious, adaptive coordinator on a real node: each is run against two nodes
//! whose data differ in one record, and everything the nodes say — refusals and their texts,
//! privacy reports, result layouts, counts — must be the same, up to DP noise in the released
//! values. The double in `double.rs` speaks the real protocol over real mutual TLS.

mod double;
mod secure;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use treaty_proto::v1::{
    ColumnStats, DpMode, EvaluationTask, ModelKind, PrivacySpec, QueryKind, QuerySpec, QueryTask,
    StatsTask, TrainingSpec, TrainingTask, task,
};

use crate::common::*;
use double::{Hostile, Seen, model_of, model_parts, terms};

const AGENCY: (&str, &str) = ("DE-BKA", "DE");

/// The schema of `write_data`'s files over the given numeric columns, without bounds unless
/// `bounded`.
fn schema_over(columns: &[&str], bounded: bool) -> treaty_proto::v1::FeatureSchema {
    let mut text = "[label]\nname = \"seized\"\nkind = \"binary\"\n".to_owned();
    for c in columns {
        text.push_str(&format!("[[column]]\nname = \"{c}\"\nkind = \"numeric\"\n"));
        if bounded {
            text.push_str("lower = -3.5\nupper = 3.5\n");
        }
    }
    treaty_proto::schema::parse(&text).unwrap().unwrap()
}

fn training(columns: &[&str], privacy: PrivacySpec) -> TrainingSpec {
    TrainingSpec {
        model: ModelKind::LogisticRegression as i32,
        schema: Some(schema_over(columns, true)),
        rounds: 1,
        local_epochs: 1,
        batch_size: 32,
        learning_rate: 0.1,
        privacy: Some(privacy),
        ..Default::default()
    }
}

/// Poisson DP-SGD with the sampling rate left to the node (the CLI's default).
fn poisson() -> PrivacySpec {
    PrivacySpec {
        mode: DpMode::Poisson as i32,
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        evaluation_epsilon: Some(0.5),
        ..Default::default()
    }
}

fn train_task(spec: TrainingSpec, public_records: f64) -> task::Kind {
    task::Kind::Training(TrainingTask {
        spec: Some(spec),
        model_version: "job-hostile/r0".into(),
        public_records,
        model: Vec::new(),
    })
}

/// One node on `train`/`test`, put through every attack in order; what it said of each.
async fn attack(train: PathBuf, test: PathBuf) -> Vec<(&'static str, Vec<Seen>)> {
    let (agency, country) = AGENCY;
    let fx = Fixture::new(&[AGENCY]);
    let mut hostile = Hostile::start(&fx).await;
    let config = fx.node_config_for(agency, country, &hostile.address, &train, &test);
    let node = fx.start_node_with(agency, &config);
    let hello = hostile.hello().await;
    let all = ["x1", "x2", "seized"];
    let mut out = vec![("hello", vec![Seen::Hello(hello)])];

    // 1. The record count through a refusal: a task claiming a tiny epsilon per round, with no
    // sampling rate. The node once computed q = batch / n and quoted its exact epsilon.
    let spec = training(&["x2"], poisson());
    hostile.serve_model(model_of(&spec, 0.0));
    let seen = hostile
        .run(
            train_task(spec.clone(), 0.0),
            terms(agency, country, 1e-6, &all),
        )
        .await;
    out.push(("no public count", seen));
    let seen = hostile
        .run(
            train_task(spec.clone(), 1000.0),
            terms(agency, country, 1e-6, &all),
        )
        .await;
    out.push(("epsilon refusal", seen));

    // 2. An accepted round: the privacy report and the update's layout.
    let seen = hostile
        .run(
            train_task(spec.clone(), 1000.0),
            terms(agency, country, 1e9, &all),
        )
        .await;
    out.push(("training round", seen));

    // 2b. The participants named by digest instead of listed: the list this session last
    // carried (the round above's) is put back and the round goes ahead; a list it was never
    // sent is refused from the task, whatever the records.
    let full = terms(agency, country, 1e9, &all);
    let seen = hostile
        .run(
            train_task(spec.clone(), 1000.0),
            treaty_proto::participants::bare(&full),
        )
        .await;
    out.push(("participants by digest", seen));
    let mut other = full.clone();
    other.participants[0].agency = "FR-DGDDI".into();
    other.participants[0].country = "FR".into();
    let seen = hostile
        .run(
            train_task(spec.clone(), 1000.0),
            treaty_proto::participants::bare(&other),
        )
        .await;
    out.push(("participants never sent", seen));

    // 3. A bad cell: a schema that reads it, which once made the node refuse with its line.
    let spec = training(&["x1", "x2"], poisson());
    hostile.serve_model(model_of(&spec, 0.0));
    let seen = hostile
        .run(train_task(spec, 1000.0), terms(agency, country, 1e9, &all))
        .await;
    out.push(("bad cell", seen));

    // 4. Poisoned tasks: a global model with huge weights, a standardisation with a vanishing
    // standard deviation (which once drove a record's gradient to NaN, unclipped).
    let spec = training(&["x2"], poisson());
    hostile.serve_model(model_of(&spec, 1e300));
    let seen = hostile
        .run(
            train_task(spec.clone(), 1000.0),
            terms(agency, country, 1e9, &all),
        )
        .await;
    out.push(("huge model", seen));
    let mut tiny = training(&["x2"], poisson());
    tiny.standardization = vec![ColumnStats {
        name: "x2".into(),
        mean: 0.0,
        std: 1e-300,
        count: 0.0,
    }];
    let seen = hostile
        .run(train_task(tiny, 1000.0), terms(agency, country, 1e9, &all))
        .await;
    out.push(("vanishing std", seen));
    let mut amount = training(&["amount"], poisson());
    amount.schema = Some(schema_over(&["amount"], false));
    amount.standardization = vec![ColumnStats {
        name: "amount".into(),
        mean: 0.0,
        std: 1e-6,
        count: 0.0,
    }];
    hostile.serve_model(model_of(&amount, 1e5));
    let seen = hostile
        .run(
            train_task(amount, 1000.0),
            terms(agency, country, 1e9, &["amount", "seized"]),
        )
        .await;
    out.push(("extreme features", seen));

    // 5. A statistics round and a query over the column with the bad cell, at a negligible
    // epsilon: once a refusal naming the line.
    let stats = task::Kind::Stats(StatsTask {
        schema: Some(schema_over(&["x1", "x2"], true)),
        privacy: Some(PrivacySpec {
            statistics_rho: Some(0.01),
            ..Default::default()
        }),
    });
    let seen = hostile.run(stats, terms(agency, country, 1e9, &all)).await;
    out.push(("statistics", seen));
    // A statistics round whose upper bound is NaN: clamping would stop at nothing while the
    // noise is scaled to the tiny lower bound, releasing the exact sums.
    let mut unbounded = schema_over(&["x1"], true);
    unbounded.columns[0].lower = Some(-1e-12);
    unbounded.columns[0].upper = Some(f64::NAN);
    let stats = task::Kind::Stats(StatsTask {
        schema: Some(unbounded),
        privacy: Some(PrivacySpec {
            statistics_rho: Some(0.01),
            ..Default::default()
        }),
    });
    let seen = hostile.run(stats, terms(agency, country, 1e9, &all)).await;
    out.push(("NaN bound", seen));
    // A multinomial model over a numeric label: zero classes, which once panicked on the first
    // readable record, so that the refusal itself said whether one existed.
    let mut multinomial = training(&["x2"], poisson());
    multinomial.model = ModelKind::MultinomialLogisticRegression as i32;
    multinomial.schema = Some(
        treaty_proto::schema::parse(
            "[label]\nname = \"amount\"\nkind = \"numeric\"\n[[column]]\nname = \"x2\"\nkind = \"numeric\"\n",
        )
        .unwrap()
        .unwrap(),
    );
    let seen = hostile
        .run(
            train_task(multinomial, 1000.0),
            terms(agency, country, 1e9, &["x2", "amount"]),
        )
        .await;
    out.push(("label misfit", seen));

    // 6. The evaluation of a "final model": a sound one over the column with the bad cell, one
    // of huge weights; each releases noisy counts alone, or is refused from the task.
    let spec = training(&["x1", "x2"], poisson());
    let evaluate = |spec: &TrainingSpec| {
        task::Kind::Evaluation(EvaluationTask {
            spec: Some(spec.clone()),
            model_version: "job-hostile/r3".into(),
            model: Vec::new(),
        })
    };
    hostile.serve_model(model_of(&spec, 0.1));
    let seen = hostile
        .run(evaluate(&spec), terms(agency, country, 1e9, &all))
        .await;
    out.push(("final evaluation", seen));
    hostile.serve_model(model_of(&spec, 1e300));
    let seen = hostile
        .run(evaluate(&spec), terms(agency, country, 1e9, &all))
        .await;
    out.push(("final evaluation of a huge model", seen));
    let query = task::Kind::Query(QueryTask {
        spec: Some(QuerySpec {
            kind: QueryKind::Sum as i32,
            column: "x1".into(),
            lower: -3.5,
            upper: 3.5,
            where_column: "mode".into(),
            where_value: "sea".into(),
            epsilon: 1e-9,
            ..Default::default()
        }),
    });
    let seen = hostile.run(query, terms(agency, country, 1e9, &all)).await;
    out.push(("query", seen));
    drop(node);
    out
}

/// What must not differ between the two nodes: everything but the noisy values themselves.
fn public_part(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| match s {
            Seen::Result { header, tensors } => {
                let mut h = header.clone();
                if let Some(e) = h.evaluation.as_mut() {
                    e.counts = vec![0.0; e.counts.len()];
                }
                let layout: Vec<(String, Vec<usize>)> = tensors
                    .iter()
                    .map(|t| (t.name.clone(), t.values.shape().to_vec()))
                    .collect();
                format!("result {h:?} {layout:?}")
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_coordinator_learns_nothing_beyond_dp_from_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = write_data(dir.path(), "base", 400, 7);
    // The neighbour: one more record, with a cell that is not a number in `x1` and an extreme
    // `amount`. Schemas over `x2` see one more ordinary record; schemas over `x1` a bad cell.
    let neighbour = dir.path().join("neighbour_train.csv");
    std::fs::copy(&train, &neighbour).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&neighbour)
        .unwrap();
    writeln!(f, "abc,0.5,sea,low,1e300,1").unwrap();
    drop(f);

    let a = attack(train, test.clone()).await;
    let b = attack(neighbour, test).await;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(
            public_part(x),
            public_part(y),
            "attack `{name}`: the two nodes' messages differ"
        );
    }

    // And each attack met the answer it should have (the same on both sides, as checked).
    let outcome = |name: &str| {
        a.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    let refused = |s: &[Seen]| match s.last() {
        Some(Seen::Refused { code, message, .. }) => Some((code.clone(), message.clone())),
        _ => None,
    };
    let (code, message) = refused(&outcome("no public count")).unwrap();
    assert_eq!(code, "INVALID_TASK", "{message}");
    assert!(message.contains("public figure"), "{message}");
    let (code, message) = refused(&outcome("epsilon refusal")).unwrap();
    assert_eq!(code, "EPSILON_PER_ROUND_EXCEEDED", "{message}");
    let (code, message) = refused(&outcome("participants never sent")).unwrap();
    assert_eq!(code, "INVALID_TASK", "{message}");
    assert!(message.contains("SHA-256"), "{message}");
    for name in [
        "training round",
        "participants by digest",
        "bad cell",
        "extreme features",
        "statistics",
        "final evaluation",
        "query",
    ] {
        let seen = outcome(name);
        assert!(
            matches!(seen.last(), Some(Seen::Result { .. })),
            "{name}: {seen:?}"
        );
    }
    assert_eq!(refused(&outcome("huge model")).unwrap().0, "INVALID_TASK");
    assert_eq!(
        refused(&outcome("final evaluation of a huge model"))
            .unwrap()
            .0,
        "INVALID_TASK"
    );
    // The evaluation's result: noisy counts of the model's shape, nothing else.
    let Some(Seen::Result { header, tensors }) = outcome("final evaluation").last().cloned() else {
        unreachable!()
    };
    let e = header.evaluation.expect("an evaluation");
    assert!(tensors.is_empty() && header.num_examples == 1 && header.metrics.is_empty());
    assert_eq!((e.kind.as_str(), e.counts.len()), ("binary", 40));
    for name in ["NaN bound", "label misfit"] {
        let seen = outcome(name);
        assert!(
            matches!(seen.as_slice(), [Seen::Refused { code, .. }] if code == "INVALID_TASK"),
            "{name}: {seen:?}"
        );
    }
    assert_eq!(
        refused(&outcome("vanishing std")).unwrap().0,
        "INVALID_TASK"
    );
    // The extreme features left the update finite and bounded: 32 steps of learning rate 0.1
    // from 1e5, each moving a parameter by the clipped sum (at most the expected batch, 32)
    // plus noise, over the public expected batch of 32.
    let Some(Seen::Result { tensors, .. }) = outcome("extreme features").last().cloned() else {
        unreachable!()
    };
    for t in &tensors {
        for v in t.values.iter() {
            assert!(v.is_finite() && (v - 1e5).abs() < 1e3, "{v}");
        }
    }
    // The privacy reports are the node's whole ledger: equal across the two, and not zero.
    let Some(Seen::Result { header, .. }) = outcome("query").last().cloned() else {
        unreachable!()
    };
    assert!(header.privacy.unwrap().spent_epsilon > 0.0);
}

/// A long training round stops when the node is told to stop, and the release stays in the
/// ledger (it may have left in part: the ledger over-counts, never under-counts).
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_node_stops_within_its_grace_on_sigterm() {
    let (agency, country) = AGENCY;
    let fx = Fixture::new(&[AGENCY]);
    let mut hostile = Hostile::start(&fx).await;
    let config = fx.node_config(agency, country, &hostile.address, 3);
    let mut node = fx.start_node_with(agency, &config);
    hostile.hello().await;
    let mut spec = training(
        &["x1", "x2"],
        PrivacySpec {
            mode: DpMode::FullBatch as i32,
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            ..Default::default()
        },
    );
    spec.model = ModelKind::Mlp as i32;
    spec.hidden_units = 1000;
    spec.local_epochs = 1_000_000;
    hostile.serve_model(model_of(&spec, 0.01));
    let outbox_task = train_task(spec, 400.0);
    let run = hostile.run(
        outbox_task,
        terms(agency, country, 1e30, &["x1", "x2", "seized"]),
    );
    // The task is accepted and then trains for ever; stop the node while it does.
    let waiting = tokio::time::timeout(Duration::from_secs(3), run).await;
    assert!(waiting.is_err(), "the round ended early: {waiting:?}");
    node.wait_for_log("release recorded in the ledger", Duration::from_secs(10));
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let status = node.wait_for_exit(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "the node is still running:\n{}",
        node.log()
    );
    let ledger = treaty_json(&[
        "node",
        "ledger",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(ledger["entries"].as_array().unwrap().len(), 1, "{ledger}");
    // The evidence log says what became of the task the release was for: the node waited for
    // the task to wind down before its last flush.
    let out = fx.path("evidence-after-sigterm");
    let exported = std::process::Command::new(TREATY)
        .args([
            "node",
            "evidence",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    let log = std::fs::read_to_string(out.join("evidence.jsonl")).unwrap();
    let task = ledger["entries"][0]["task_id"].as_str().unwrap().to_owned();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("\"task_id\":\"{task}\""))
                && l.contains("\"decision\":\"refused\"")),
        "no record of task {task}'s end in the evidence log:\n{log}\n{}",
        node.log()
    );
}

/// A node that requires its operator's approval, against a coordinator that states no terms,
/// changes them after the approval, and asks beyond the job's rounds: the node takes part only
/// under the terms its operator approved, in the job's rounds.
#[tokio::test]
async fn a_hostile_coordinator_cannot_stretch_an_approval() {
    let (agency, country) = AGENCY;
    let fx = Fixture::new(&[AGENCY]);
    let mut hostile = Hostile::start(&fx).await;
    let config = fx.node_config(agency, country, &hostile.address, 3);
    let mut node_config = treaty_node::NodeConfig::load(&config).unwrap();
    node_config.approval.required = true;
    treaty_devkit::local::write_toml(&config, &node_config).unwrap();
    let _node = fx.start_node_with(agency, &config);
    hostile.hello().await;
    let all = ["x1", "x2", "seized"];
    let spec = training(&["x1", "x2"], poisson());
    hostile.serve_model(model_of(&spec, 0.0));
    let code = |seen: &[Seen]| match seen.last() {
        Some(Seen::Refused { code, .. }) => code.clone(),
        Some(Seen::Result { .. }) => "RESULT".to_owned(),
        other => format!("{other:?}"),
    };
    let ask = async |hostile: &mut Hostile| {
        let seen = hostile
            .run(
                train_task(spec.clone(), 1000.0),
                terms(agency, country, 1e9, &all),
            )
            .await;
        code(&seen)
    };
    // Round 1: no job terms to approve.
    assert_eq!(ask(&mut hostile).await, "INVALID_TASK");
    // Round 2: terms stated, not approved yet.
    let stated = treaty_proto::v1::JobTerms {
        kind: "training".into(),
        created_by: "treaty://operator/op".into(),
        created_unix_ms: 1,
        rounds: 4,
        epsilon: 0.0,
        delta: 1e-5,
        purpose: "narcotics".into(),
        fields: all.iter().map(|f| f.to_string()).collect(),
        secure_aggregation: None,
    };
    hostile.job = Some(stated.clone());
    assert_eq!(ask(&mut hostile).await, "APPROVAL_PENDING");
    let config = config.to_str().unwrap();
    let pending = treaty_json(&["node", "pending", "--config", config, "--json"]);
    let read = pending[0]["terms_sha256"].as_str().unwrap().to_owned();
    let out = std::process::Command::new(TREATY)
        .args(["node", "approve", "job-hostile", "--config", config])
        .args(["--terms", &read, "--by", "Officer Weber"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Round 3: approved, it takes part.
    assert_eq!(ask(&mut hostile).await, "RESULT");
    // Round 4: the same job, now said to have 40 rounds: these terms wait for an approval of
    // their own.
    hostile.job = Some(treaty_proto::v1::JobTerms {
        rounds: 40,
        ..stated.clone()
    });
    assert_eq!(ask(&mut hostile).await, "APPROVAL_PENDING");
    // Round 5 under the approved terms, which still stand: the final evaluation's round
    // (rounds + 1) is the last a task may have.
    hostile.job = Some(stated);
    assert_eq!(ask(&mut hostile).await, "RESULT");
    // Round 6: past the job's rounds.
    assert_eq!(ask(&mut hostile).await, "INVALID_TASK");
}

/// A model the task carries (a small one, which the coordinator sends with the task instead of
/// having the node download it) is checked as a download is: a hostile coordinator's carried
/// model that is poisoned, incomplete, out of order or of another layout is refused from the
/// task, and a sound one is trained from without a download.
#[tokio::test]
async fn a_carried_model_is_checked_as_a_download_is() {
    let (agency, country) = AGENCY;
    let fx = Fixture::new(&[AGENCY]);
    let mut hostile = Hostile::start(&fx).await;
    let config = fx.node_config(agency, country, &hostile.address, 3);
    let _node = fx.start_node_with(agency, &config);
    hostile.hello().await;
    let all = ["x1", "x2", "seized"];
    let spec = training(&["x1", "x2"], poisson());
    // What a download would give is sound: a refusal below comes from the carried model.
    hostile.serve_model(model_of(&spec, 0.0));
    let version = "job-hostile/r1";
    let carrying = |parts: Vec<treaty_proto::v1::ModelPart>| {
        task::Kind::Training(TrainingTask {
            spec: Some(spec.clone()),
            model_version: version.into(),
            public_records: 1000.0,
            model: parts,
        })
    };
    let last = |seen: &[Seen]| match seen.last() {
        Some(Seen::Refused { code, message, .. }) => format!("{code}: {message}"),
        Some(Seen::Result { .. }) => "RESULT".to_owned(),
        other => format!("{other:?}"),
    };
    let parts = |value: f64| model_parts(&model_of(&spec, value), "job-hostile", version);
    let mut ask = async |kind: task::Kind| {
        let seen = hostile.run(kind, terms(agency, country, 1e9, &all)).await;
        last(&seen)
    };

    // A sound carried model: trained from, no download.
    assert_eq!(ask(carrying(parts(0.1))).await, "RESULT");
    // Huge weights: refused as a downloaded one is.
    let refused = ask(carrying(parts(1e300))).await;
    assert!(refused.starts_with("INVALID_TASK"), "{refused}");
    // A value that is not a number.
    let refused = ask(carrying(parts(f64::NAN))).await;
    assert!(
        refused.starts_with("MODEL_UNAVAILABLE") && refused.contains("finite"),
        "{refused}"
    );
    // A chunk before its header, and a header without its chunks.
    let mut swapped = parts(0.1);
    swapped.swap(0, 1);
    let refused = ask(carrying(swapped)).await;
    assert!(
        refused.starts_with("MODEL_UNAVAILABLE") && refused.contains("out of order"),
        "{refused}"
    );
    let refused = ask(carrying(parts(0.1)[..1].to_vec())).await;
    assert!(refused.starts_with("MODEL_UNAVAILABLE"), "{refused}");
    // Another model's layout (one feature fewer).
    let other = training(&["x1"], poisson());
    let refused = ask(carrying(model_parts(
        &model_of(&other, 0.1),
        "job-hostile",
        version,
    )))
    .await;
    assert!(refused.starts_with("INVALID_TASK"), "{refused}");
    // The evaluation of a final model carries it too.
    let evaluation = task::Kind::Evaluation(EvaluationTask {
        spec: Some(spec.clone()),
        model_version: version.into(),
        model: parts(1e300),
    });
    let refused = ask(evaluation).await;
    assert!(refused.starts_with("INVALID_TASK"), "{refused}");
    assert_eq!(
        hostile.downloads(),
        0,
        "the node downloaded a model its task carried"
    );
}

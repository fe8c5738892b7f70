//! `treaty bench score`: risk scoring at the agency (`treaty serve`), one declaration at a time.
//! A logistic model of the customs schema is trained (without DP: the latency does not depend
//! on how the weights were found) on `treaty synth` declarations and written as a model file;
//! `treaty serve` is started on it as its own process, and one client sends the test
//! declarations one after another over loopback gRPC, each request waiting for the answer
//! before the next: the latency of each, end to end, as an application at the agency sees it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use treaty_node::{Architecture, Model, ModelFile, Sgd, Table, train};
use treaty_proto::v1::scoring_service_client::ScoringServiceClient;
use treaty_proto::v1::{ModelHeader, ModelKind, ScoreRequest, TrainingSpec};

use crate::local::Process;
use crate::outln;
use crate::synth::customs;

/// Runs the scoring benchmark: `requests` timed requests after `requests / 10` to warm up.
pub async fn serving(requests: usize, exe: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let agencies = customs::agencies(1);
    let synth = customs::generate(dir.path(), &agencies, 4000, 7)?;
    let agency = &synth.agencies[0];
    let schema = customs::schema();
    let train_table = Table::open(&agency.train)?;
    let examples = train_table.encode(&schema, &[])?;
    let mut model = Model::zeros(Architecture::Logistic, examples.x.ncols());
    train(
        &mut model,
        &examples,
        &Sgd {
            epochs: 5,
            batch_size: 64,
            learning_rate: 0.1,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        },
    );
    let header = ModelHeader {
        job_id: "bench".into(),
        model_version: "bench/r1".into(),
        round: 1,
        spec: Some(TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: Some(schema.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let file = ModelFile::new(&header, &model.to_tensors())?;
    let model_path = dir.path().join("model.json");
    std::fs::write(&model_path, serde_json::to_string(&file)?)?;

    // The declarations to score: the test split, as (column, value) pairs.
    let text = std::fs::read_to_string(&agency.test)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let columns: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    let records: Vec<ScoreRequest> = reader
        .records()
        .map(|r| {
            r.map(|r| ScoreRequest {
                fields: columns
                    .iter()
                    .cloned()
                    .zip(r.iter().map(str::to_owned))
                    .collect(),
                top: 3,
            })
        })
        .collect::<Result<_, _>>()?;

    let log = dir.path().join("serve.log");
    let serve = Process::spawn(
        exe,
        "treaty serve",
        &[
            "serve",
            "--model",
            &model_path.to_string_lossy(),
            "--unverified",
            "--listen",
            "127.0.0.1:0",
        ],
        &log,
    )?;
    serve.wait_for_log("scoring service listening", Duration::from_secs(20))?;
    let address = serve
        .log()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .map(str::to_owned)
        .context("the scoring service's log names no address")?;
    let mut client = ScoringServiceClient::connect(format!("http://{address}")).await?;

    let warm = (requests / 10).max(1);
    let mut times = Vec::with_capacity(requests);
    for (i, request) in records.iter().cycle().take(warm + requests).enumerate() {
        let start = Instant::now();
        let answer = client.score(request.clone()).await?.into_inner();
        let took = start.elapsed();
        anyhow::ensure!(
            answer.prediction.is_finite() && answer.contributions.len() == 3,
            "an answer without a prediction or its contributions: {answer:?}"
        );
        if i >= warm {
            times.push(took.as_secs_f64() * 1000.0);
        }
    }
    drop(serve);
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (median, p99, p999, max) = (at(0.5), at(0.99), at(0.999), at(1.0));
    outln!(
        "score: {requests} declarations one at a time over loopback gRPC ({} columns, top 3 contributions each): median {median:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms, max {max:.3} ms",
        columns.len()
    );
    outln!(
        "{}",
        serde_json::json!({
            "workload": "score", "requests": requests, "columns": columns.len(),
            "median_ms": median, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
        })
    );
    Ok(())
}

//! `treaty demo`: a whole federation on this machine, end to end.
//!
//! It writes synthetic customs declarations for five agencies of four countries (`treaty
//! synth`), starts the coordinator and one node per agency as separate processes over mutual
//! TLS on loopback (`local`), creates a federation as the operator, runs a training job (a
//! statistics round for the standardisation, then federated logistic regression) and a query
//! while showing their progress, prints a summary with one explained prediction, and stops
//! every process it started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use treaty_coordinator::client;
use treaty_node::ModelFile;
use treaty_node::Table;
use treaty_node::explain;
use treaty_proto::v1::{
    Aggregation, CreateFederationRequest, CreateJobRequest, DpMode, FederationInfo, Job, JobSpec,
    ModelKind, PrivacySpec, QueryKind, QuerySpec, SharingSpec, Strategy, TrainingSpec, job_spec,
};

use crate::evaluate;
use crate::local::{LocalFederation, Member};
use crate::outln;
use crate::output::Follow;
use crate::synth::{self, customs};

/// Each agency's privacy budget (epsilon at delta 1e-5), and what the training job may spend.
const BUDGET: f64 = 10.0;
const JOB_EPSILON: f64 = 3.0;

/// The demo's agencies: (id, country).
const AGENCIES: [(&str, &str); 5] = [
    ("DE-BKA", "DE"),
    ("DE-ZOLL", "DE"),
    ("NL-POLITIE", "NL"),
    ("FR-DOUANE", "FR"),
    ("PL-KAS", "PL"),
];

/// How `treaty demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Training rounds.
    pub rounds: u32,
    /// Declarations per agency (80 % train, 20 % test).
    pub rows: usize,
    /// Keep the working directory (PKI, data, configurations, logs, databases) here instead of a
    /// temporary directory that is removed at the end.
    pub keep: Option<PathBuf>,
    /// The `treaty` binary the federation's processes run.
    pub exe: PathBuf,
}

/// Runs the demo, printing its progress and summary, until it ends or `stop` completes (the
/// binary passes SIGINT or SIGTERM); either way it stops every process it started.
pub async fn run(
    args: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("treaty-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut federation = None;
    let result = tokio::select! {
        r = demo(&args, &dir, &mut federation) => r,
        () = stop => {
            // A process its start-up may still be starting on another thread is not started.
            crate::local::stop_starting();
            Err(anyhow::anyhow!("stopped by a signal"))
        }
    };
    if let Some(f) = federation.as_mut() {
        f.stop().await;
        if result.is_ok()
            && let Ok(spent) = f.spent()
        {
            let list: Vec<String> = spent.iter().map(|(a, e)| format!("{a} {e:.3}")).collect();
            outln!(
                "  privacy spent, from each agency's own ledger (budget {BUDGET} at delta 1e-5): {}",
                list.join(", ")
            );
        }
    }
    match (&result, &args.keep) {
        (_, Some(dir)) => outln!("\nEverything is kept in {}", dir.display()),
        (Err(_), None) => outln!(
            "\nThe logs were in {} (removed); rerun with --keep DIR to keep them",
            dir.display()
        ),
        _ => {}
    }
    result
}

fn step(text: &str) {
    outln!("==> {text}");
}

async fn demo(
    args: &DemoOptions,
    dir: &Path,
    slot: &mut Option<LocalFederation>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    step(&format!(
        "writing synthetic customs declarations for {} agencies (non-IID, {} each)",
        AGENCIES.len(),
        args.rows
    ));
    let agencies: Vec<(String, String)> = AGENCIES
        .iter()
        .map(|(a, c)| (a.to_string(), c.to_string()))
        .collect();
    let (data_dir, rows) = (dir.join("data"), args.rows);
    let synth =
        tokio::task::spawn_blocking(move || customs::generate(&data_dir, &agencies, rows, 2026))
            .await??;
    let data = synth.agencies.clone();
    for a in &data {
        outln!(
            "    {} ({}): {:.1} % seized",
            a.agency,
            a.country,
            100.0 * a.prevalence
        );
    }

    step(
        "making a throwaway PKI and starting the coordinator and one node per agency (mutual TLS 1.3)",
    );
    let members: Vec<Member> = data.iter().map(Member::from).collect();
    let fed = slot.insert(LocalFederation::start(dir, &args.exe, &members, BUDGET, &[]).await?);
    let mut client = fed.operator().await?;
    let connected = fed
        .wait_connected(&mut client, AGENCIES.len(), Duration::from_secs(30))
        .await?;
    step(&format!(
        "all agencies connected to {}: {}",
        fed.address,
        connected.join(", ")
    ));

    let federation = client
        .create_federation(CreateFederationRequest {
            federation: Some(FederationInfo {
                name: "demo-customs".into(),
                purpose: "narcotics".into(),
                members: AGENCIES.iter().map(|(a, c)| format!("{a}:{c}")).collect(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    step(&format!(
        "federation `{}` created by {}",
        federation.name, federation.created_by
    ));

    let schema = customs::schema();
    let training = TrainingSpec {
        model: ModelKind::LogisticRegression as i32,
        schema: Some(schema.clone()),
        rounds: args.rounds,
        local_epochs: 1,
        batch_size: 64,
        learning_rate: 0.5,
        momentum: 0.5,
        l2: 1e-4,
        strategy: Some(Strategy {
            aggregation: Aggregation::Fedavg as i32,
            ..Default::default()
        }),
        privacy: Some(PrivacySpec {
            mode: DpMode::Poisson as i32,
            clip_norm: 1.0,
            target_epsilon: JOB_EPSILON,
            target_delta: 1e-5,
            evaluation_epsilon: Some(0.1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let job = client
        .create_job(CreateJobRequest {
            federation: federation.name.clone(),
            spec: Some(demo_job(job_spec::Kind::Training(training))),
        })
        .await?
        .into_inner();
    step(&format!(
        "training job {}: a DP statistics round, then {} rounds of federated logistic regression with DP-SGD (epsilon 3 per agency at delta 1e-5)",
        job.job_id, args.rounds
    ));
    let progress = Follow::new(u64::from(args.rounds) + 1, false);
    let job = client::follow_to_success(&mut client, &job.job_id, |e| progress.event(e)).await;
    progress.finish();
    let job = job?;

    let query = client
        .create_job(CreateJobRequest {
            federation: federation.name.clone(),
            spec: Some(demo_job(job_spec::Kind::Query(QuerySpec {
                kind: QueryKind::Histogram as i32,
                column: "origin".into(),
                categories: vec!["CO".into(), "EC".into(), "PE".into(), "BR".into()],
                by_column: "transport_mode".into(),
                by_categories: vec!["sea".into(), "air".into()],
                where_column: "seized".into(),
                where_value: "1".into(),
                epsilon: 1.0,
                confidence: 0.95,
                ..Default::default()
            }))),
        })
        .await?
        .into_inner();
    step(&format!(
        "analytics job {}: seizures by origin and transport mode across the federation (Laplace noise, epsilon 1 per agency)",
        query.job_id
    ));
    let progress = Follow::new(1, false);
    let query = client::follow_to_success(&mut client, &query.job_id, |e| progress.event(e)).await;
    progress.finish();
    let query = query?;

    // Each job's page, as `treaty job report` writes it.
    let generated = format!("{} (treaty demo)", crate::report::now_utc());
    for j in [&job, &query] {
        let page = dir.join(format!("report-{}.html", j.job_id));
        std::fs::write(&page, crate::report::render(j, &generated))
            .with_context(|| format!("cannot write `{}`", page.display()))?;
        outln!(
            "    {}'s page (treaty job report): {}{}",
            j.job_id,
            page.display(),
            if args.keep.is_some() {
                ""
            } else {
                " (kept with --keep DIR)"
            }
        );
    }

    let (header, tensors) = client::download(&mut client, &job.job_id, "").await?;
    let model_file = ModelFile::new(&header, &tensors)?;
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_string_pretty(&model_file)?,
    )?;

    step(&format!(
        "exporting job {}'s evidence from the coordinator's audit log, and checking it offline",
        job.job_id
    ));
    let bundle_dir = dir.join(format!("audit-{}", job.job_id));
    client::export_audit(&mut client, &job.job_id)
        .await?
        .write(&bundle_dir)?;
    // Checked against the demo's own federation CA, the one the operator trusts.
    let ca = treaty_proto::tls::certificate_der(&std::fs::read(fed.site().pki().ca_cert())?)
        .map_err(|e| anyhow::anyhow!("the demo's CA certificate {e}"))?;
    let verified = treaty_coordinator::bundle::verify(&bundle_dir, &ca, None)?;
    outln!(
        "    audit bundle verified: {} entries of the job within a hash-chained log of {}, its head signed by {} ({})",
        verified.entries,
        verified.links,
        verified.signed_by,
        bundle_dir.display()
    );
    // An agency's own evidence, from its running node, agrees with the coordinator's: its
    // signed receipts are in the bundle, and the bundle holds no result it did not send.
    let (agency, country) = AGENCIES[0];
    let answer = treaty_node::control::ask(
        &fed.site().path(&format!("node-{agency}-db")),
        &treaty_node::control::Request::Evidence,
    )?;
    let evidence_dir = dir.join(format!("evidence-{agency}"));
    let lines: Vec<Vec<u8>> = answer
        .evidence
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let identity = format!("treaty://agency/{country}/{agency}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    treaty_node::export::write(&evidence_dir, &identity, &lines, now)?;
    let records = verified
        .results
        .values()
        .map(|r| serde_json::from_value(r.clone()))
        .collect::<Result<Vec<treaty_proto::receipt::ResultsRecord>, _>>()?;
    let agreed = treaty_node::export::cross_check(
        &evidence_dir,
        &ca,
        &verified.signed_by,
        &verified.job_id,
        &records,
    )
    .map_err(|problem| {
        anyhow::anyhow!("{agency}'s evidence disagrees with the bundle: {problem}")
    })?;
    outln!(
        "    {agency}'s own evidence agrees: {} signed receipt(s), {} result(s) the bundle records from it ({})",
        agreed.receipts,
        agreed.results,
        evidence_dir.display()
    );
    summary(&job, &query, &model_file, &synth, started.elapsed())
}

/// A job of the demo: it goes ahead with all agencies but one, waiting at most 30 s.
fn demo_job(kind: job_spec::Kind) -> JobSpec {
    JobSpec {
        kind: Some(kind),
        min_participants: AGENCIES.len() as u32 - 1,
        round_timeout_ms: 30_000,
        join_timeout_ms: 30_000,
        // Germany's policy keeps models at most 365 days.
        sharing: Some(SharingSpec {
            model_retention_days: Some(180),
            ..Default::default()
        }),
    }
}

fn summary(
    job: &Job,
    query: &Job,
    model_file: &ModelFile,
    synth: &synth::Synth,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let data = &synth.agencies;
    outln!("\nSummary");
    outln!(
        "  federation demo-customs: {} agencies in 4 countries, over mutual TLS 1.3",
        AGENCIES.len()
    );
    if let Some(last) = job.rounds.last()
        && let Ok(record) = serde_json::from_str::<serde_json::Value>(&last.policy_decision)
    {
        let d = &record["decision"];
        let versions: Vec<String> = d["policy_versions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(c, v)| format!("{c} {}", v["version"].as_str().unwrap_or("unusable")))
                    .collect()
            })
            .unwrap_or_default();
        outln!(
            "  sharing policies: every round decided by the engine under registry {} and policies {}; the last admitted {} agencies (the coordinator keeps each decision with the policies' SHA-256)",
            d["registry_version"].as_str().unwrap_or("?"),
            versions.join(", "),
            d["admitted"].as_array().map_or(0, Vec::len)
        );
    }
    if let Some(stats) = &job.statistics {
        outln!(
            "  statistics round: column sums from {} agencies standardise the numeric columns",
            stats.contributors.len()
        );
    }
    outln!(
        "  training job {}: {} rounds (metrics of the global model entering each round, then of the final model, from every agency's noisy evaluation counts, with the 95 % interval of their noise)",
        job.job_id,
        job.rounds.len()
    );
    outln!("    round  contributors  accuracy                  AUC");
    for r in job.rounds.iter().chain(&job.final_evaluation) {
        let round = if job.final_evaluation.as_ref() == Some(r) {
            "final".to_owned()
        } else {
            r.round.to_string()
        };
        let contributors = format!("{}/{}", r.contributors.len(), r.invited.len());
        if r.evaluated_model_version.is_empty() {
            outln!(
                "    {round:>5}  {contributors:>12}  (starts from the initial model: not evaluated)"
            );
            continue;
        }
        let shown = |k: &str| match (r.metrics.get(k), r.metric_intervals.get(k)) {
            (Some(v), Some(i)) => format!(
                "{v:.4} [{:.4}, {:.4}]{}",
                i.low,
                i.high,
                if i.meaningless { "*" } else { "" }
            ),
            (Some(v), None) => format!("{v:.4}"),
            _ => "-".to_owned(),
        };
        outln!(
            "    {round:>5}  {contributors:>12}  {:<24}  {}",
            shown("test_accuracy"),
            shown("test_auc"),
        );
    }
    outln!("    (* the noise makes the figure meaningless)");
    // The final model on the union of the test splits (the demo made the data, so it may look).
    let tests: Vec<PathBuf> = data.iter().map(|a| a.test.clone()).collect();
    let scored = evaluate::binary(model_file, &tests)?;
    outln!(
        "  final model {}: AUC {:.4}, accuracy {:.4} on the union of the test splits ({} declarations); the ground truth itself scores AUC {:.4}",
        job.latest_model_version,
        scored.auc,
        scored.accuracy,
        scored.records,
        synth.truth_test_auc
    );

    // Why the riskiest declaration of one agency's test split scores as it does.
    let (model, schema, stats) = model_file.model()?;
    let agency = &data[2];
    let ex = Table::open(&agency.test)?.encode(&schema, &stats)?;
    let p = model.predict(ex.x.view());
    let riskiest = (0..ex.len()).fold(0, |b, i| if p[[i, 0]] > p[[b, 0]] { i } else { b });
    if let Some(e) = explain(&model, &schema, ex.x.row(riskiest), 0) {
        outln!(
            "  the riskiest declaration in {}'s test split (line {}): P(seized) = {:.3}; log-odds {:.3} = bias {:.3}",
            agency.agency,
            riskiest + 2,
            p[[riskiest, 0]],
            e.score,
            e.bias
        );
        for (name, c) in e.ranked().into_iter().take(5) {
            outln!("    {c:+.3}  {name}");
        }
    }
    if let Some(r) = query.rounds.first() {
        outln!(
            "  analytics job {}: seizures by origin and transport mode from {} agencies, each answer with Laplace noise (epsilon 1 per agency); 95 % intervals:",
            query.job_id,
            r.contributors.len()
        );
        for v in r.answer.iter().filter(|v| !v.label.contains("<other>")) {
            outln!(
                "    {:<34} {:>8.1}   [{:.1}, {:.1}]",
                v.label,
                v.value,
                v.ci_low,
                v.ci_high
            );
        }
    }

    outln!("  finished in {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

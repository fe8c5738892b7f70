//! `treaty demo`: a whole federation on this machine, end to end.
//!
//! It makes a throwaway PKI and working directory, writes synthetic data for five agencies of
//! four countries, starts the coordinator and one node per agency as separate processes of this
//! binary (real gRPC over real mutual TLS on loopback), creates a federation as the operator,
//! runs a training job and a count query while showing their progress, prints a summary, and
//! stops every process it started.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use treaty_proto::Identity;
use treaty_proto::pki::{self, PkiDir};
use treaty_proto::tensor::Assembler;
use treaty_proto::tls::TlsFiles;
use treaty_proto::v1::{
    CreateFederationRequest, CreateJobRequest, DownloadModelRequest, FederationInfo, Job, JobSpec,
    JobState, ListAgenciesRequest, ModelKind, QueryKind, QuerySpec, TrainingSpec, WatchJobRequest,
    job_spec, model_part,
};

use crate::operator;
use crate::synth;

/// The demo's agencies: (id, country).
const AGENCIES: [(&str, &str); 5] = [
    ("DE-BKA", "DE"),
    ("DE-ZOLL", "DE"),
    ("NL-POLITIE", "NL"),
    ("FR-DOUANE", "FR"),
    ("PL-KAS", "PL"),
];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Training rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Training records per agency (a quarter as many test records are added).
    #[arg(long, default_value_t = 4000)]
    rows: usize,
    /// Keep the working directory (PKI, data, configs, logs, databases) here instead of a
    /// temporary directory that is removed at the end.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// The processes the demo started; each is stopped when this is dropped, whatever happens.
struct Fleet {
    children: Vec<(String, Child)>,
}

impl Fleet {
    fn spawn(&mut self, name: &str, args: &[&str], log: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the treaty binary")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot write `{}`", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .env("TREATY_LOG", "info")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// SIGTERM to every process, then waits for each (SIGKILL after five seconds).
    async fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for (name, child) in &mut self.children {
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        process = name.as_str(),
                        "did not stop within 5 s; killing it"
                    );
                    let _ = child.kill().await;
                }
            }
        }
        self.children.clear();
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
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
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    let result = tokio::select! {
        r = demo(&args, &dir, &mut fleet) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    fleet.stop().await;
    match (&result, &args.keep) {
        (_, Some(dir)) => println!("\nEverything is kept in {}", dir.display()),
        (Err(_), None) => println!(
            "\nThe logs were in {} (removed); rerun with --keep DIR to keep them",
            dir.display()
        ),
        _ => {}
    }
    result
}

fn step(text: &str) {
    println!("==> {text}");
}

async fn demo(args: &DemoArgs, dir: &Path, fleet: &mut Fleet) -> anyhow::Result<()> {
    let started = Instant::now();
    let pki_dir = PkiDir::new(dir.join("pki"));
    step("making a throwaway PKI: a federation CA, the coordinator, an operator, five agencies");
    pki::init(
        &pki_dir,
        &pki::InitOptions {
            federation: "treaty-demo".into(),
            coordinator: "demo-hub".into(),
            coordinator_hosts: vec![],
            operators: vec!["demo-operator".into()],
            agencies: AGENCIES
                .iter()
                .map(|(a, c)| (a.to_string(), c.to_string()))
                .collect(),
            validity_days: 2,
        },
    )?;

    step(&format!(
        "writing synthetic customs declarations: {} training records per agency, non-IID",
        args.rows
    ));
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let mut splits = Vec::new();
    for (i, (agency, _)) in AGENCIES.iter().enumerate() {
        splits.push(synth::write_agency(
            &data_dir,
            agency,
            i,
            args.rows,
            args.rows / 4,
            2026,
        )?);
    }

    step("starting the coordinator (mutual TLS 1.3 on 127.0.0.1)");
    let address_file = dir.join("coordinator.address");
    let coordinator_config = dir.join("coordinator.toml");
    let (ccert, ckey) = pki_dir.cert_and_key(&Identity::coordinator("demo-hub")?);
    std::fs::write(
        &coordinator_config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\naddress_file = {:?}\nshutdown_grace_secs = 3\n\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\ncrl = {:?}\n",
            dir.join("coordinator-db"),
            address_file,
            pki_dir.ca_cert(),
            ccert,
            ckey,
            pki_dir.crl()
        ),
    )?;
    fleet.spawn(
        "coordinator",
        &[
            "coordinator",
            "--config",
            &coordinator_config.to_string_lossy(),
        ],
        &dir.join("coordinator.log"),
    )?;
    let address = wait_for_file(&address_file, Duration::from_secs(20)).await?;

    step(&format!(
        "starting {} agency nodes; each dials out to {address}",
        AGENCIES.len()
    ));
    for ((agency, country), (train, test)) in AGENCIES.iter().zip(&splits) {
        let (cert, key) = pki_dir.cert_and_key(&Identity::agency(country, agency)?);
        let config = dir.join(format!("node-{agency}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n\n[coordinator]\naddress = {address:?}\nreconnect_initial_ms = 200\nreconnect_max_ms = 2000\n\n[tls]\nca_cert = {:?}\ncert = {cert:?}\nkey = {key:?}\n\n[data]\ntrain = {train:?}\ntest = {test:?}\n",
                dir.join(format!("node-{agency}-db")),
                pki_dir.ca_cert(),
            ),
        )?;
        fleet.spawn(
            agency,
            &["node", "--config", &config.to_string_lossy()],
            &dir.join(format!("node-{agency}.log")),
        )?;
    }

    let operator_id = Identity::operator("demo-operator")?;
    let (ocert, okey) = pki_dir.cert_and_key(&operator_id);
    let files = TlsFiles {
        ca_cert: pki_dir.ca_cert(),
        cert: ocert,
        key: okey,
    };
    let mut client = operator::connect(&address, &files).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = client
            .list_agencies(ListAgenciesRequest {})
            .await?
            .into_inner()
            .agencies;
        if connected.len() == AGENCIES.len() {
            let names: Vec<String> = connected
                .iter()
                .map(|a| format!("{} ({})", a.agency, a.country))
                .collect();
            step(&format!("all agencies connected: {}", names.join(", ")));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} nodes connected within 30 s; see the node logs",
                connected.len(),
                AGENCIES.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let federation = client
        .create_federation(CreateFederationRequest {
            federation: Some(FederationInfo {
                name: "demo-customs".into(),
                purpose: "narcotics".into(),
                members: AGENCIES.iter().map(|(a, _)| a.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    step(&format!(
        "federation `{}` created by {}",
        federation.name, federation.created_by
    ));

    let features: Vec<String> = synth::FEATURES.iter().map(|f| f.to_string()).collect();
    let training = TrainingSpec {
        model: ModelKind::LogisticRegression as i32,
        features: features.clone(),
        label: synth::LABEL.into(),
        rounds: args.rounds,
        local_epochs: 1,
        batch_size: 64,
        learning_rate: 0.1,
        l2: 1e-4,
    };
    let job = client
        .create_job(CreateJobRequest {
            federation: federation.name.clone(),
            spec: Some(demo_job(job_spec::Kind::Training(training))),
        })
        .await?
        .into_inner();
    step(&format!(
        "training job {} started: logistic regression, {} rounds, FedAvg",
        job.job_id, args.rounds
    ));
    let job = watch(&mut client, &job.job_id).await?;

    let query = client
        .create_job(CreateJobRequest {
            federation: federation.name.clone(),
            spec: Some(demo_job(job_spec::Kind::Query(QuerySpec {
                kind: QueryKind::Mean as i32,
                column: "declared_value".into(),
                lower: -5.0,
                upper: 5.0,
            }))),
        })
        .await?
        .into_inner();
    step(&format!(
        "analytics job {} started: mean of `declared_value` across the federation",
        query.job_id
    ));
    let query = watch(&mut client, &query.job_id).await?;

    let model = download(&mut client, &job).await?;
    summary(&job, &query, &model, &splits, started.elapsed())?;
    Ok(())
}

/// A job of the demo: it goes ahead with all agencies but one, waiting at most 30 s.
fn demo_job(kind: job_spec::Kind) -> JobSpec {
    JobSpec {
        kind: Some(kind),
        min_participants: AGENCIES.len() as u32 - 1,
        round_timeout_ms: 30_000,
        join_timeout_ms: 30_000,
    }
}

async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return Ok(text.trim().to_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not start within {} s; see coordinator.log",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Client =
    treaty_proto::v1::operator_service_client::OperatorServiceClient<tonic::transport::Channel>;

/// Prints a job's events until it ends; returns it as it ended.
async fn watch(client: &mut Client, job_id: &str) -> anyhow::Result<Job> {
    let mut events = client
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event?;
        if event.round > 0 {
            println!("    [round {:>2}] {}", event.round, event.message);
        } else {
            println!("    {}", event.message);
        }
        last = event.job;
    }
    let job = last.context("the coordinator sent no events")?;
    if job.state != JobState::Succeeded as i32 {
        bail!("job {} did not succeed: {}", job.job_id, job.message);
    }
    Ok(job)
}

/// Downloads the job's final model.
async fn download(client: &mut Client, job: &Job) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut parts = client
        .download_model(DownloadModelRequest {
            job_id: job.job_id.clone(),
            model_version: String::new(),
        })
        .await?
        .into_inner();
    let mut assembler = None;
    while let Some(part) = parts.next().await {
        match part?.kind {
            Some(model_part::Kind::Header(h)) => {
                assembler = Some(Assembler::new(h.tensors, 1 << 24, 1 << 20)?)
            }
            Some(model_part::Kind::Chunk(c)) => {
                assembler.as_mut().context("chunk before header")?.push(c)?
            }
            None => {}
        }
    }
    let tensors = assembler.context("empty model download")?.finish()?;
    let weights = tensors
        .first()
        .context("no weights")?
        .values
        .iter()
        .copied()
        .collect();
    let bias = tensors
        .get(1)
        .and_then(|t| t.values.iter().next().copied())
        .context("no bias")?;
    Ok((weights, bias))
}

fn summary(
    job: &Job,
    query: &Job,
    model: &(Vec<f64>, f64),
    splits: &[(PathBuf, PathBuf)],
    elapsed: Duration,
) -> anyhow::Result<()> {
    println!("\nSummary");
    println!(
        "  federation demo-customs: {} agencies in 4 countries, over mutual TLS 1.3",
        AGENCIES.len()
    );
    println!("  training job {}: {} rounds", job.job_id, job.rounds.len());
    println!("    round  contributors  examples  accuracy at start  log loss at start");
    for r in &job.rounds {
        println!(
            "    {:>5}  {:>12}  {:>8}  {:>17.4}  {:>17.4}",
            r.round,
            format!("{}/{}", r.contributors.len(), r.invited.len()),
            r.num_examples,
            r.metrics.get("test_accuracy").copied().unwrap_or(f64::NAN),
            r.metrics.get("test_log_loss").copied().unwrap_or(f64::NAN),
        );
    }
    // The final model on the union of the test splits (the demo made the data, so it may).
    let (weights, bias) = model;
    let (mut correct, mut total) = (0usize, 0usize);
    for (_, test) in splits {
        let table = treaty_node::data::Table::open(test)?;
        let features: Vec<String> = synth::FEATURES.iter().map(|f| f.to_string()).collect();
        let ex = table.load(&features, Some(synth::LABEL))?;
        for (row, y) in ex.x.rows().into_iter().zip(ex.y.iter()) {
            let z = bias + row.iter().zip(weights).map(|(a, b)| a * b).sum::<f64>();
            correct += usize::from((z >= 0.0) == (*y >= 0.5));
            total += 1;
        }
    }
    println!(
        "  final model {}: accuracy {:.4} on the union of the test splits ({} records)",
        job.latest_model_version,
        correct as f64 / total.max(1) as f64,
        total
    );
    println!("    feature               learned     true");
    for ((name, w), truth) in synth::FEATURES.iter().zip(weights).zip(synth::WEIGHTS) {
        println!("    {name:<20} {w:>8.3} {truth:>8.3}");
    }
    println!("    {:<20} {bias:>8.3} {:>8.3}", "(bias)", synth::BIAS);
    if let Some(r) = query.rounds.first() {
        println!(
            "  analytics job {}: mean declared_value = {:.4} over {} records from {} agencies",
            query.job_id,
            r.values.first().copied().unwrap_or(f64::NAN),
            r.num_examples,
            r.contributors.len()
        );
    }
    println!(
        "  note: updates left the nodes without differential privacy; DP lands with the privacy work"
    );
    println!("  finished in {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

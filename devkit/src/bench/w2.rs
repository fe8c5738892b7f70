//! `treaty bench w2`: workload W2 (bench/README.md), aggregation of 100 updates of 10^6 `f32`
//! values each, on the real path.
//!
//! One coordinator process, a real FedAvg training job, and 100 agencies uploading from this
//! process, each over its own mutual-TLS connection with its own certificate and session (the
//! agencies do not train: each answers its training task with an update of the job's layout,
//! as an `f32` tensor in 1 MiB chunks, all 100 at once). An MLP whose layout has the asked
//! number of parameters (10^6: 257 inputs, 3,861 hidden units) carries the updates; the job
//! gives its standardisation, so it has no statistics round, and evaluates nothing.
//!
//! Each round is measured when every agency holds its task (the round has started and the
//! coordinator holds the global model) and the uploads are released together:
//! - the time from the last chunk of the last update received to the aggregate ready, as the
//!   coordinator logs it (`aggregate_ready_ms`), and from the last upload acknowledged to the
//!   round completed (the new version stored durably, audited and announced), as an operator
//!   watching the job sees it;
//! - the coordinator's peak RSS over the round (its high-water mark is reset, through
//!   `/proc/PID/clear_refs`, as the uploads are released) above its RSS at that moment, also as
//!   a multiple of one model of `f32` values; and its peak over the job above its RSS before the
//!   job was created.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use treaty_coordinator::client;
use treaty_proto::Identity;
use treaty_proto::tensor::{self, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::tls::{ClientTls, TlsFiles};
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    Aggregation, ColumnKind, ColumnSpec, ColumnStats, CoordinatorMessage, CreateFederationRequest,
    CreateJobRequest, DpMode, Dtype, FeatureSchema, FederationInfo, Hello, JobEventKind, JobSpec,
    LabelKind, LabelSpec, MissingRule, ModelKind, NodeMessage, PrivacySpec, ResultHeader,
    SharingSpec, Strategy, TaskRefused, TensorChunk, TensorSpec, TrainingSpec, coordinator_message,
    job_spec, node_message, task,
};

use super::{median_or_nan, memory, mib};
use crate::local::{COORDINATOR_COUNTRY, Process, Site, SiteOptions, policies};
use crate::outln;

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];
/// Distinct updates the agencies send (each agency one of them): enough that the sum is not
/// of equal terms, few enough that this process does not hold 100 models.
const PAYLOADS: usize = 4;

/// How W2 runs (`treaty bench w2 --help` gives the defaults).
#[derive(Debug, Clone)]
pub struct W2Options {
    /// How many agencies upload an update each round.
    pub agencies: usize,
    /// Parameters of the model (the job's MLP has exactly this many).
    pub parameters: usize,
    /// Rounds: each is one measurement (the median is reported).
    pub rounds: u32,
    /// Keep the working directory (PKI, configurations, the coordinator's log) here.
    pub keep: Option<PathBuf>,
}

/// A model size W2 cannot build: input to fix.
#[derive(Debug, thiserror::Error)]
pub enum W2Error {
    #[error(
        "no MLP has exactly {parameters} parameters (h x (inputs + 2) + 1 with at most 4,096 hidden units and 1,024 inputs); choose another --parameters, e.g. 1000000"
    )]
    NoLayout { parameters: usize },
    #[error("--agencies and --rounds must be at least 1")]
    Empty,
}

/// The MLP of exactly `parameters` parameters: (inputs, hidden units), the most hidden units.
fn mlp_shape(parameters: usize) -> Result<(usize, usize), W2Error> {
    let rest = parameters.saturating_sub(1);
    (1..=4096usize)
        .rev()
        .filter(|h| rest.is_multiple_of(*h))
        .map(|h| (rest / h, h))
        .find(|(width, _)| (3..=1026).contains(width))
        .map(|(width, h)| (width - 2, h))
        .ok_or(W2Error::NoLayout { parameters })
}

/// Resets the high-water mark of a process's resident memory to its current value.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("cannot reset the peak RSS of process {pid}"))
}

/// An update as it goes on the wire: its specs and chunks (cheap to clone: shared bytes).
struct Payload {
    specs: Vec<TensorSpec>,
    chunks: Vec<TensorChunk>,
}

/// `PAYLOADS` updates of the layout, values in [-1, 1).
fn payloads(layout: &[(String, Vec<usize>)]) -> Vec<Arc<Payload>> {
    use rand::{Rng, SeedableRng};
    (0..PAYLOADS)
        .map(|k| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(k as u64);
            let tensors: Vec<NamedTensor> = layout
                .iter()
                .map(|(name, shape)| {
                    let values = ndarray::ArrayD::from_shape_simple_fn(shape.as_slice(), || {
                        rng.random_range(-1.0..1.0)
                    });
                    NamedTensor::new(name.clone(), values)
                })
                .collect();
            let (specs, chunks) = tensor::encode(&tensors, Dtype::F32, DEFAULT_MAX_CHUNK_BYTES);
            Arc::new(Payload { specs, chunks })
        })
        .collect()
}

/// What an agency tells the conductor.
enum Note {
    /// It holds its training task of this round.
    Tasked(u32),
    /// Its update of this round was acknowledged.
    Uploaded(u32, Instant),
}

/// One agency: a session, and for each training task an upload of `payload` once the round is
/// released; other tasks (the final model's evaluation) refused.
async fn agency(
    files: TlsFiles,
    address: String,
    payload: Arc<Payload>,
    mut released: watch::Receiver<u32>,
    notes: mpsc::UnboundedSender<Note>,
) -> anyhow::Result<()> {
    let channel = ClientTls::new(&files)?
        .connect(&address, Duration::from_secs(30))
        .await?;
    let mut client = AgencyServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(treaty_proto::MAX_MESSAGE_BYTES);
    let (outbox, rx) = mpsc::channel(16);
    let message = |kind| NodeMessage { kind: Some(kind) };
    outbox
        .send(message(node_message::Kind::Hello(Hello {
            software_version: "bench-w2".into(),
            protocol_version: treaty_proto::PROTOCOL_VERSION,
            ..Default::default()
        })))
        .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(CoordinatorMessage { kind }) = inbound.message().await? {
        let Some(coordinator_message::Kind::Task(t)) = kind else {
            continue;
        };
        if !matches!(t.kind, Some(task::Kind::Training(_))) {
            outbox
                .send(message(node_message::Kind::Refused(TaskRefused {
                    task_id: t.task_id,
                    reason_code: "NO_TEST_SPLIT".into(),
                    message: "a W2 agency only uploads updates".into(),
                })))
                .await?;
            continue;
        }
        let _ = notes.send(Note::Tasked(t.round));
        released.wait_for(|r| *r >= t.round).await?;
        let header = ResultHeader {
            task_id: t.task_id.clone(),
            num_examples: 1,
            tensors: payload.specs.clone(),
            ..Default::default()
        };
        let chunks = payload.chunks.clone();
        treaty_proto::upload::submit(&mut client, header, chunks, None).await?;
        let _ = notes.send(Note::Uploaded(t.round, Instant::now()));
    }
    Ok(())
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct RoundFigures {
    /// RSS as the uploads were released.
    base: u64,
    /// Peak RSS from then to the round's end.
    peak: u64,
    /// When the last upload was acknowledged.
    last_ack: Instant,
}

/// Runs W2 with the `treaty` binary `exe`, printing its figures and a JSON line.
pub async fn w2(options: W2Options, exe: &Path) -> anyhow::Result<()> {
    if options.agencies == 0 || options.rounds == 0 {
        return Err(W2Error::Empty.into());
    }
    let (inputs, hidden) = mlp_shape(options.parameters)?;
    let temp;
    let dir = match &options.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("treaty-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let members: Vec<(String, String)> = (0..options.agencies)
        .map(|k| {
            (
                format!("W2-AGENCY-{k}"),
                COUNTRIES[k % COUNTRIES.len()].to_owned(),
            )
        })
        .collect();
    let fields: Vec<String> = (0..inputs).map(|j| format!("f{j}")).collect();
    outln!(
        "W2: {} agencies each upload an update of {} f32 parameters (an MLP of {inputs} inputs and {hidden} hidden units) every round, {} round(s), FedAvg, over mutual TLS",
        options.agencies,
        options.parameters,
        options.rounds
    );
    let (site, coordinator, address) = {
        let (dir, exe, members, fields) =
            (dir.clone(), exe.to_owned(), members.clone(), fields.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Site, Process, String)> {
            let site = Site::create(
                &dir,
                &exe,
                &SiteOptions {
                    federation: "treaty-w2".into(),
                    coordinator: "w2-hub".into(),
                    operator: "w2-operator".into(),
                    agencies: members.clone(),
                },
            )?;
            let countries: Vec<&str> = members.iter().map(|(_, c)| c.as_str()).collect();
            policies::write_samples(&site, &countries, &fields)?;
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let (coordinator, address) =
                site.start_coordinator(&site.coordinator_config(listen, COORDINATOR_COUNTRY))?;
            Ok((site, coordinator, address))
        })
        .await??
    };
    let mut coordinator = coordinator;
    let result = measure(
        &options,
        &site,
        &coordinator,
        &address,
        &members,
        &fields,
        hidden,
    )
    .await;
    coordinator.stop(Duration::from_secs(5));
    let (report, figures) = result?;
    // The coordinator's own account of each round: the aggregate ready after the last chunk.
    let log = coordinator.log();
    let ready: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("aggregate_ready_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    if ready.len() != figures.len() {
        bail!(
            "the coordinator logged {} aggregation(s) for {} round(s); see `{}`",
            ready.len(),
            figures.len(),
            coordinator.log_path().display()
        );
    }
    let model = (options.parameters * 4) as u64;
    let mut report = report;
    for (r, (f, ready)) in figures.iter().zip(&ready).enumerate() {
        outln!(
            "  round {}: aggregate ready {ready:.1} ms after the last chunk; peak RSS {:.1} MiB above the round's start ({:.2} models of f32)",
            r + 1,
            mib(f.peak.saturating_sub(f.base)),
            f.peak.saturating_sub(f.base) as f64 / model as f64
        );
    }
    let above: Vec<f64> = figures
        .iter()
        .map(|f| f.peak.saturating_sub(f.base) as f64)
        .collect();
    let ready_median = median_or_nan(&ready);
    let above_median = median_or_nan(&above);
    outln!(
        "  median of {} round(s): aggregate ready {ready_median:.1} ms after the last update's last chunk; coordinator peak RSS {:.1} MiB above the round's start = {:.2} x one model ({:.1} MiB of f32)",
        figures.len(),
        above_median / f64::from(1 << 20),
        above_median / model as f64,
        mib(model)
    );
    report["aggregate_ready_ms"] = serde_json::json!(ready);
    report["aggregate_ready_ms_median"] = serde_json::json!(ready_median);
    report["peak_rss_above_round_start_bytes"] = serde_json::json!(above);
    report["peak_rss_above_round_start_models"] = serde_json::json!(above_median / model as f64);
    outln!("{report}");
    Ok(())
}

/// Connects the agencies, runs the job and measures each round; the report so far and each
/// round's figures.
async fn measure(
    options: &W2Options,
    site: &Site,
    coordinator: &Process,
    address: &str,
    members: &[(String, String)],
    fields: &[String],
    hidden: usize,
) -> anyhow::Result<(serde_json::Value, Vec<RoundFigures>)> {
    let pid = coordinator.id();
    let spec = training_spec(fields, hidden, options.rounds);
    let layout = treaty_proto::schema::parameter_layout(&spec)?;
    let parameters: usize = layout
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let payloads = payloads(&layout);
    let (release, released) = watch::channel(0u32);
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let mut agencies = tokio::task::JoinSet::new();
    for (k, (id, country)) in members.iter().enumerate() {
        let files = site.files(&Identity::agency(country, id)?);
        agencies.spawn(agency(
            files,
            address.to_owned(),
            Arc::clone(&payloads[k % payloads.len()]),
            released.clone(),
            notes_tx.clone(),
        ));
    }
    drop(notes_tx);
    let mut operator = site.operator_config(address).connect().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while client::all_agencies(&mut operator).await?.len() < members.len() {
        if let Some(Ok(Err(e))) = agencies.try_join_next() {
            return Err(e.context("an agency could not hold its session"));
        }
        if Instant::now() > deadline {
            bail!(
                "the {} agencies did not all connect within 120 s",
                members.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (idle, _) = memory(pid).context("cannot read the coordinator's memory")?;
    operator
        .create_federation(CreateFederationRequest {
            federation: Some(FederationInfo {
                name: "w2".into(),
                purpose: "narcotics".into(),
                members: members.iter().map(|(a, c)| format!("{a}:{c}")).collect(),
                ..Default::default()
            }),
        })
        .await?;
    let job = operator
        .create_job(CreateJobRequest {
            federation: "w2".into(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: members.len() as u32,
                round_timeout_ms: 600_000,
                join_timeout_ms: 60_000,
                sharing: Some(SharingSpec {
                    model_retention_days: Some(30),
                    ..Default::default()
                }),
            }),
        })
        .await?
        .into_inner();

    // The conductor: each round, once every agency holds its task, the peak is reset and the
    // uploads released.
    let n = members.len();
    let rounds = options.rounds;
    let conductor = tokio::spawn(async move {
        let mut figures: Vec<(u64, Option<Instant>)> = Vec::new();
        let (mut tasked, mut uploaded) = (
            vec![0usize; rounds as usize + 2],
            vec![0usize; rounds as usize + 2],
        );
        while let Some(note) = notes.recv().await {
            match note {
                Note::Tasked(r) => {
                    let r = r as usize;
                    if let Some(count) = tasked.get_mut(r) {
                        *count += 1;
                        if *count == n {
                            reset_peak(pid)?;
                            let (base, _) =
                                memory(pid).context("cannot read the coordinator's memory")?;
                            figures.push((base, None));
                            let _ = release.send(r as u32);
                        }
                    }
                }
                Note::Uploaded(r, at) => {
                    let r = r as usize;
                    if let Some(count) = uploaded.get_mut(r) {
                        *count += 1;
                        if *count == n
                            && let Some(f) = figures.get_mut(r - 1)
                        {
                            f.1 = Some(at);
                        }
                    }
                    if r == rounds as usize && uploaded[r] == n {
                        break;
                    }
                }
            }
        }
        anyhow::Ok(figures)
    });

    // Each round's end, as a watching operator sees it: the peak read at once.
    let mut ends: Vec<(Instant, u64)> = Vec::new();
    let started = Instant::now();
    let done = client::follow_to_success(&mut operator, &job.job_id, |event| {
        if event.kind == JobEventKind::RoundCompleted as i32 {
            let peak = memory(pid).map(|(_, peak)| peak).unwrap_or(0);
            ends.push((Instant::now(), peak));
        }
    })
    .await?;
    let wall = started.elapsed();

    let figures = conductor.await??;
    agencies.abort_all();
    let (_, job_peak) = memory(pid).unwrap_or((0, 0));
    let rounds: Vec<RoundFigures> = figures
        .iter()
        .zip(&ends)
        .filter_map(|((base, ack), (_, peak))| {
            Some(RoundFigures {
                base: *base,
                peak: *peak,
                last_ack: (*ack)?,
            })
        })
        .collect();
    if rounds.len() != done.rounds.len() {
        bail!(
            "measured {} of the job's {} rounds",
            rounds.len(),
            done.rounds.len()
        );
    }
    let completed: Vec<f64> = rounds
        .iter()
        .zip(&ends)
        .map(|(f, (end, _))| end.saturating_duration_since(f.last_ack).as_secs_f64() * 1e3)
        .collect();
    let peak_over_job = rounds
        .iter()
        .map(|f| f.peak)
        .chain([job_peak])
        .max()
        .unwrap_or(0);
    let model = (parameters * 4) as u64;
    outln!(
        "  job {}: {} rounds in {:.2} s; coordinator RSS {:.1} MiB before the job, peak {:.1} MiB over its rounds ({:.2} models of f32 above the RSS before the job)",
        done.job_id,
        done.rounds.len(),
        wall.as_secs_f64(),
        mib(idle),
        mib(peak_over_job),
        peak_over_job.saturating_sub(idle) as f64 / model as f64
    );
    outln!(
        "  the last upload acknowledged to the round completed (stored, audited, announced): {} ms",
        completed
            .iter()
            .map(|ms| format!("{ms:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let report = serde_json::json!({
        "workload": "W2", "agencies": members.len(), "parameters": parameters,
        "dtype": "f32", "model_bytes": model, "rounds": done.rounds.len(),
        "job_seconds": wall.as_secs_f64(),
        "round_completed_after_last_ack_ms": completed,
        "round_completed_after_last_ack_ms_median": median_or_nan(&completed),
        "coordinator_rss_before_job_bytes": idle,
        "coordinator_peak_rss_bytes": peak_over_job,
        "peak_rss_above_before_job_models": peak_over_job.saturating_sub(idle) as f64 / model as f64,
    });
    Ok((report, rounds))
}

/// The job: an MLP on `fields` with `hidden` units, FedAvg, its standardisation given (no
/// statistics round), no evaluation; record-level DP as every job (the agencies do not train).
fn training_spec(fields: &[String], hidden: usize, rounds: u32) -> TrainingSpec {
    TrainingSpec {
        model: ModelKind::Mlp as i32,
        hidden_units: hidden as u32,
        schema: Some(FeatureSchema {
            columns: fields
                .iter()
                .map(|name| ColumnSpec {
                    name: name.clone(),
                    kind: ColumnKind::Numeric as i32,
                    lower: Some(-10.0),
                    upper: Some(10.0),
                    missing: MissingRule::Reject as i32,
                    ..Default::default()
                })
                .collect(),
            label: Some(LabelSpec {
                name: "seized".into(),
                kind: LabelKind::Binary as i32,
                classes: vec![],
            }),
        }),
        standardization: fields
            .iter()
            .map(|name| ColumnStats {
                name: name.clone(),
                mean: 0.0,
                std: 1.0,
                count: 1000.0,
            })
            .collect(),
        rounds,
        local_epochs: 1,
        batch_size: 256,
        learning_rate: 0.1,
        strategy: Some(Strategy {
            aggregation: Aggregation::Fedavg as i32,
            ..Default::default()
        }),
        privacy: Some(PrivacySpec {
            mode: DpMode::Poisson as i32,
            clip_norm: 1.0,
            target_epsilon: 1.0,
            target_delta: 1e-5,
            evaluation_epsilon: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_has_exactly_the_parameters_asked_for() {
        assert_eq!(mlp_shape(1_000_000).unwrap(), (257, 3861));
        for parameters in [1_000_000, 10_000, 100_000, 4] {
            let (inputs, hidden) = mlp_shape(parameters).unwrap();
            assert_eq!(hidden * (inputs + 2) + 1, parameters, "{parameters}");
        }
        assert!(mlp_shape(2).is_err());
    }
}

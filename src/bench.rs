//! `treaty bench w1`: workload W1 (bench/README.md) on this machine, end to end.
//!
//! Eight agencies, each a separate node process with its own CSV data (from
//! `treaty synth --kind numeric`), one coordinator, mutual TLS on loopback: logistic regression on
//! the 64 standardised features, 20 rounds of one local epoch of mini-batch SGD (batch 256,
//! learning rate 0.1), FedAvg weighted by examples, evaluation on every test split each round.
//! Reported: the nodes' start-up (spawn to connected, data loaded), the job's wall time (from
//! its creation to the final model, including the statistics round), the per-round median,
//! accuracy and ROC AUC of the final model on the union of the test splits, and the peak RSS of
//! the coordinator and of one node.

use crate::output::outln;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use treaty_node::Table;
use treaty_node::roc_auc;
use treaty_proto::v1::{
    Aggregation, CreateFederationRequest, CreateJobRequest, DpMode, FeatureSchema, FederationInfo,
    JobSpec, LabelKind, LabelSpec, ModelKind, PrivacySpec, SharingSpec, Strategy, TrainingSpec,
    job_spec,
};

use crate::local::LocalFederation;
use crate::model_cmd::ModelFile;
use crate::operator;
use crate::synth::AgencyData;

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];

#[derive(Debug, Args)]
pub struct W1Args {
    /// The directory `treaty synth --kind numeric --agencies 8 --rows 100000 --out DIR` wrote.
    #[arg(long)]
    data: PathBuf,
    /// How many agencies (agency_0 .. agency_{N-1}).
    #[arg(long, default_value_t = 8)]
    agencies: usize,
    /// Training rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// How many feature columns (f0 ..), 64 for W1.
    #[arg(long, default_value_t = 64)]
    features: usize,
    /// Keep the working directory here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Record-level DP (Poisson DP-SGD): each agency spends at most this epsilon on the whole job
    /// (statistics round and evaluations included), at delta 1e-5.
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// The clipping norm of per-example gradients under DP.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// The local learning rate (W1 says 0.1; clipped DP gradients take a larger one).
    #[arg(long, default_value_t = 1.0)]
    learning_rate: f64,
}

fn mib(bytes: Option<u64>) -> String {
    bytes
        .map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "n/a".into())
}

pub async fn w1(args: W1Args) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("treaty-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    // The nodes' configurations live elsewhere: the data's path must not be relative.
    let data = std::fs::canonicalize(&args.data).with_context(|| {
        format!(
            "cannot read `{}`; write W1's data with `treaty synth --kind numeric --agencies 8 --rows 100000 --out DIR`",
            args.data.display()
        )
    })?;
    let mut agencies = Vec::new();
    for k in 0..args.agencies {
        let train = data.join(format!("agency_{k}_train.csv"));
        let test = data.join(format!("agency_{k}_test.csv"));
        if !train.is_file() || !test.is_file() {
            bail!(
                "`{}` has no agency_{k}_train.csv / agency_{k}_test.csv; write them with `treaty synth --kind numeric --agencies {} --out DIR` (see bench/README.md)",
                data.display(),
                args.agencies
            );
        }
        agencies.push(AgencyData {
            agency: format!("W1-AGENCY-{k}"),
            country: COUNTRIES[k % COUNTRIES.len()].to_owned(),
            train,
            test,
            prevalence: f64::NAN,
        });
    }
    let mut schema = FeatureSchema {
        columns: (0..args.features)
            .map(|j| treaty_proto::v1::ColumnSpec {
                name: format!("f{j}"),
                kind: treaty_proto::v1::ColumnKind::Numeric as i32,
                missing: treaty_proto::v1::MissingRule::Reject as i32,
                ..Default::default()
            })
            .collect(),
        label: Some(LabelSpec {
            name: "seized".into(),
            kind: LabelKind::Binary as i32,
            classes: vec![],
        }),
    };

    {
        // DP statistics need bounds on every numeric column. The schema's author would know each
        // column's plausible range; here the harness takes the 0.1 % and 99.9 % quantiles of the
        // pooled training data, before anything is timed. Values beyond are clamped.
        let names: Vec<String> = (0..args.features).map(|j| format!("f{j}")).collect();
        let mut columns: Vec<Vec<f64>> = vec![Vec::new(); args.features];
        for a in &agencies {
            let table = Table::open(&a.train)?;
            for (j, name) in names.iter().enumerate() {
                columns[j].extend(table.clamped_where(name, f64::MIN, f64::MAX, None)?);
            }
        }
        let bounds: Vec<(f64, f64)> = columns
            .iter_mut()
            .map(|c| {
                c.sort_by(f64::total_cmp);
                let at = |p: f64| c[((c.len() - 1) as f64 * p) as usize];
                (at(0.001), at(0.999))
            })
            .collect();
        drop(columns);
        for (c, (lo, hi)) in schema.columns.iter_mut().zip(bounds) {
            c.lower = Some(lo);
            c.upper = Some(hi);
        }
    }
    outln!(
        "W1: {} agencies, {} rounds, {} features, data in {}, record-level DP, epsilon {} per agency for the whole job (delta 1e-5)",
        args.agencies,
        args.rounds,
        args.features,
        args.data.display(),
        args.epsilon
    );
    let spawned = Instant::now();
    let fields: Vec<String> = (0..args.features).map(|j| format!("f{j}")).collect();
    let mut fed =
        LocalFederation::start(&dir, &agencies, 10.0_f64.max(args.epsilon * 1.5), &fields).await?;
    let result = async {
        let mut client = fed.operator().await?;
        fed.wait_connected(&mut client, args.agencies, Duration::from_secs(300)).await?;
        let startup = spawned.elapsed();
        outln!("  nodes started, data loaded and connected in {:.2} s", startup.as_secs_f64());
        let members: Vec<String> = agencies
            .iter()
            .map(|a| format!("{}:{}", a.agency, a.country))
            .collect();
        client
            .create_federation(CreateFederationRequest {
                federation: Some(FederationInfo {
                    name: "w1".into(),
                    purpose: "narcotics".into(),
                    members,
                    ..Default::default()
                }),
            })
            .await?;
        let spec = TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: Some(schema.clone()),
            rounds: args.rounds,
            local_epochs: 1,
            batch_size: 256,
            learning_rate: args.learning_rate,
            strategy: Some(Strategy {
                aggregation: Aggregation::Fedavg as i32,
                ..Default::default()
            }),
            privacy: Some(PrivacySpec {
                mode: DpMode::Poisson as i32,
                clip_norm: args.clip,
                target_epsilon: args.epsilon,
                target_delta: 1e-5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = Instant::now();
        let job = client
            .create_job(CreateJobRequest {
                federation: "w1".into(),
                spec: Some(JobSpec {
                    kind: Some(job_spec::Kind::Training(spec)),
                    min_participants: args.agencies as u32,
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
        let job = operator::watch(&mut client, &job.job_id, false).await?;
        let wall = started.elapsed();
        let mut rounds: Vec<f64> = job.rounds.iter().map(|r| (r.finished_unix_ms - r.started_unix_ms) as f64 / 1000.0).collect();
        rounds.sort_by(f64::total_cmp);
        let median = rounds.get(rounds.len() / 2).copied().unwrap_or(f64::NAN);
        let statistics = job.statistics.as_ref().map(|s| (s.finished_unix_ms - s.started_unix_ms) as f64 / 1000.0).unwrap_or(0.0);
        let coordinator_rss = fed.peak_rss("coordinator");
        let node_rss = fed.peak_rss(&agencies[0].agency);

        let (header, tensors) = operator::download(&mut client, &job.job_id, "").await?;
        let (model, schema, stats) = ModelFile::new(&header, &tensors)?.model()?;
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for a in &agencies {
            let ex = Table::open(&a.test)?.encode(&schema, &stats)?;
            scores.extend(model.predict(ex.x.view()).column(0).iter().copied());
            labels.extend(ex.y.iter().copied());
        }
        let auc = roc_auc(ndarray::ArrayView1::from(&scores), ndarray::ArrayView1::from(&labels)).context("one class only")?;
        let accuracy = scores.iter().zip(&labels).filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5)).count() as f64 / scores.len() as f64;
        outln!("  job {}: {:.2} s from creation to the final model ({} rounds; statistics round {statistics:.3} s; per-round median {median:.3} s)", job.job_id, wall.as_secs_f64(), job.rounds.len());
        outln!("  final model on the union of the test splits ({} rows): accuracy {accuracy:.4}, ROC AUC {auc:.4}", scores.len());
        outln!("  peak RSS: coordinator {}, one node {}", mib(coordinator_rss), mib(node_rss));
        anyhow::Ok(serde_json::json!({
            "workload": "W1", "agencies": args.agencies, "rounds": job.rounds.len(),
            "startup_seconds": startup.as_secs_f64(), "job_seconds": wall.as_secs_f64(),
            "round_median_seconds": median, "statistics_seconds": statistics,
            "accuracy": accuracy, "auc": auc,
            "coordinator_peak_rss_bytes": coordinator_rss, "node_peak_rss_bytes": node_rss,
            "target_epsilon": args.epsilon,
        }))
    }
    .await;
    fed.stop().await;
    let mut report = result?;
    // Each agency's own ledger, read after its node stopped.
    let spent: Vec<f64> = fed.spent()?.into_iter().map(|(_, e)| e).collect();
    let max = spent.iter().copied().fold(0.0, f64::max);
    outln!(
        "  privacy: largest epsilon an agency spent: {max:.4} at delta 1e-5 (per agency: {})",
        spent
            .iter()
            .map(|e| format!("{e:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    report["max_epsilon_spent"] = serde_json::json!(max);
    outln!("{report}");
    Ok(())
}

/// W5: Gaussian noise through opendp for updates of 10^3, 10^5 and 10^6 parameters, on one
/// thread and on every core: samples per second, the median of `repeats` runs.
pub fn w5(repeats: usize, sizes: &[usize]) -> anyhow::Result<()> {
    use treaty_node::GaussianNoise;
    let noise = GaussianNoise {
        sensitivity: 1.0,
        noise_multiplier: 1.0,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    outln!("W5: Gaussian noise through opendp (scale 1), median of {repeats} runs, {cores} cores");
    outln!(
        "    parameters   one thread (samples/s)   all cores (samples/s)   all cores (s per update)"
    );
    let mut rows = Vec::new();
    for &size in sizes {
        let median = |mut times: Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        let prepared = noise.prepare(size)?;
        let single = median(
            (0..repeats)
                .map(|_| {
                    let mut v = vec![0.0; size];
                    let t = Instant::now();
                    prepared.add(&mut v).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        let parallel = median(
            (0..repeats)
                .map(|_| {
                    let mut v = vec![0.0; size];
                    let t = Instant::now();
                    noise.add(&mut v).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        outln!(
            "    {size:>10}   {:>22.0}   {:>21.0}   {:>24.3}",
            size as f64 / single,
            size as f64 / parallel,
            parallel
        );
        rows.push(serde_json::json!({"parameters": size, "single_thread_samples_per_second": size as f64 / single, "all_cores_samples_per_second": size as f64 / parallel, "all_cores_seconds": parallel}));
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "W5", "cores": cores, "results": rows})
    );
    Ok(())
}

/// One generated policy benchmark instance: a registry, 30 policies, a request of 60 agencies.
struct PolicyInstance {
    dir: tempfile::TempDir,
}

/// How the generated countries accept one another.
#[derive(Clone, Copy)]
enum Shape {
    /// Every country accepts every other (EU-style) but for a few bilateral denies.
    Eu,
    /// Each country denies each other with probability 1/2.
    Random,
    /// Countries deny each other in disjoint pairs: 2^(n/2) maximal sets of equal size, the
    /// hard case for enumerating them.
    Pairs,
}

/// Writes `countries` policies (2 agencies each) into a new directory.
fn policy_instance(
    countries: &[String],
    shape: Shape,
    seed: u64,
) -> anyhow::Result<PolicyInstance> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let list: Vec<String> = countries.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        dir.path().join("registry.toml"),
        format!(
            "registry_version = \"bench-1\"\ncountries = [{}]\n\n[purposes]\nnarcotics = \"Narcotics\"\n\n[fields]\nshipment_value = \"ordinary\"\n\n[groups.ALL]\nmembers = [{}]\n",
            list.join(", "),
            list.join(", ")
        ),
    )?;
    for (i, c) in countries.iter().enumerate() {
        let mut rules = format!(
            "[[rule]]\nid = \"{c}-ALL\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [\"ALL\"]\nlegal_basis = \"LED Art. 1(3)\"\n"
        );
        let denied: Vec<String> = countries
            .iter()
            .enumerate()
            .filter(|&(j, _)| {
                j != i
                    && match shape {
                        Shape::Eu => i % 5 == 0 && (i * 7 + j) % 29 == 0,
                        Shape::Random => rng.random_bool(0.5),
                        Shape::Pairs => j == i ^ 1,
                    }
            })
            .map(|(_, d)| format!("{d:?}"))
            .collect();
        if !denied.is_empty() {
            rules += &format!(
                "\n[[rule]]\nid = \"{c}-DENY\"\neffect = \"deny\"\nrecipients = [{}]\nlegal_basis = \"bilateral\"\n",
                denied.join(", ")
            );
        }
        std::fs::write(
            dir.path().join(format!("{c}.toml")),
            format!(
                "schema_version = 1\n\n[policy]\ncountry = \"{c}\"\nversion = \"1\"\nvalid_from = 2025-01-01\nvalid_until = 2030-12-31\nlegal_basis = [\"LED\"]\n\n[coordinator]\nallowed_jurisdictions = [\"ALL\"]\n\n[privacy]\nmax_epsilon_per_round = 1.0\nmax_epsilon_total = 10.0\nmax_delta = 1e-5\nmin_participants = {}\nmin_distinct_countries = {}\n\n{rules}",
                2 + i % 5,
                1 + i % 4
            ),
        )?;
    }
    let participants: Vec<String> = countries
        .iter()
        .flat_map(|c| {
            (1..=2).map(move |k| {
                format!(
                    "{{\"agency\": \"{c}-{k}\", \"country\": \"{c}\", \"cumulative_epsilon\": 0.5}}"
                )
            })
        })
        .collect();
    std::fs::write(
        dir.path().join("request.json"),
        format!(
            "{{\"federation\": \"bench\", \"round\": 1, \"date\": \"2026-01-15\", \"purpose\": \"narcotics\", \"coordinator_country\": {:?}, \"epsilon_per_round\": 0.25, \"delta\": 1e-6, \"fields\": [\"shipment_value\"], \"participants\": [{}]}}",
            countries[0],
            participants.join(", ")
        ),
    )?;
    Ok(PolicyInstance { dir })
}

/// `treaty policy decide` for 30 countries and 60 agencies: the whole command (a process that
/// reads the registry, the 30 files and the request, decides and prints), and the decision
/// alone, on an EU-style instance and on a random one.
pub fn policy(repeats: usize) -> anyhow::Result<()> {
    use treaty_policies::decide::decide;
    use treaty_policies::load::PolicyDir;
    use treaty_policies::registry::Registry;
    let code = |i: usize| {
        format!(
            "{}{}",
            (b'A' + (i / 26) as u8) as char,
            (b'A' + (i % 26) as u8) as char
        )
    };
    let thirty: Vec<String> = (0..30).map(code).collect();
    let sixty_four: Vec<String> = (0..64).map(code).collect();
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let exe = std::env::current_exe()?;
    outln!("treaty policy decide, 2 agencies per country, median of {repeats} runs");
    outln!(
        "    instance                  admitted   whole command (ms)   parse + decide (ms)   decide (ms)"
    );
    for (name, countries, shape) in [
        ("30 EU-style", &thirty, Shape::Eu),
        ("30 random 1/2", &thirty, Shape::Random),
        ("64 in deny pairs", &sixty_four, Shape::Pairs),
    ] {
        let inst = policy_instance(countries, shape, 7)?;
        let dir = inst.dir.path();
        let args = [
            "policy",
            "decide",
            "--registry",
            &dir.join("registry.toml").to_string_lossy(),
            "--policies",
            &dir.to_string_lossy(),
            "--request",
            &dir.join("request.json").to_string_lossy(),
        ]
        .map(|s| s.to_string());
        let mut command_times = Vec::new();
        let mut admitted = 0;
        for _ in 0..repeats {
            let t = Instant::now();
            let out = std::process::Command::new(&exe).args(&args).output()?;
            command_times.push(t.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() {
                bail!(
                    "treaty policy decide failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let decision: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            admitted = decision["admitted"].as_array().map_or(0, Vec::len);
        }
        let request = crate::policy_cmd::read_request(&dir.join("request.json"))
            .map_err(anyhow::Error::msg)?;
        let mut load_times = Vec::new();
        let mut decide_times = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let registry =
                Registry::load(&dir.join("registry.toml")).map_err(anyhow::Error::msg)?;
            let loaded = PolicyDir::new(dir, None).load_all(
                &registry,
                request.participants.iter().map(|p| p.country.as_str()),
            );
            let t2 = Instant::now();
            let d = decide(&registry, &loaded, &request)?;
            decide_times.push(t2.elapsed().as_secs_f64() * 1e3);
            load_times.push(t.elapsed().as_secs_f64() * 1e3);
            if d.admitted.len() != admitted {
                bail!("the library and the command disagree");
            }
        }
        outln!(
            "    {name:<25} {admitted:>8}   {:>18.2}   {:>19.3}   {:>11.3}",
            median(command_times),
            median(load_times),
            median(decide_times)
        );
    }
    Ok(())
}

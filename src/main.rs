//! `treaty`: the one binary. Parses the command line, starts logging, calls into the crates and
//! maps errors to exit codes (0 success, 1 failure, 2 unusable input).

mod bench;
mod bench_timing;
mod demo;
mod job_cmd;
mod local;
mod model_cmd;
mod operator;
mod output;
mod policy_cmd;
mod privacy_cmd;
mod signals;
mod synth;
mod synth_numeric;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use output::outln;
use tracing_subscriber::EnvFilter;
use treaty_proto::pki;

/// Federated learning for law-enforcement agencies, under each country's sharing policy.
#[derive(Debug, Parser)]
#[command(name = "treaty", version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text (filter with TREATY_LOG, e.g. `debug`).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a local federation end to end: a coordinator and five agencies of four countries,
    /// over real mutual TLS on loopback, with a throwaway PKI.
    Demo(demo::DemoArgs),
    /// Runs the coordinator.
    Coordinator {
        /// The coordinator's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs an agency's node (`treaty node --config FILE`), or reads its ledger.
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<NodeCommand>,
    },
    /// Makes and manages a development PKI.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Writes synthetic data for N agencies: realistic customs declarations (a schema, train and
    /// test splits per agency, and the ground truth), or the numeric data of benchmark
    /// workloads W1 and W3 (`--kind numeric`: `agency_K_train.csv`, `agency_K_test.csv`).
    Synth {
        /// The directory to write.
        #[arg(long)]
        out: PathBuf,
        /// What to write.
        #[arg(long, value_enum, default_value_t = SynthKind::Customs)]
        kind: SynthKind,
        /// How many agencies.
        #[arg(long, default_value_t = 4)]
        agencies: usize,
        /// Declarations per agency (80 % train, 20 % test).
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// The seed: the same seed writes the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Creates and lists federations (operators).
    #[command(subcommand)]
    Federation(job_cmd::FederationCommand),
    /// Lists the agencies connected now (operators).
    Agencies {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Starts, follows and shows jobs (operators).
    #[command(subcommand)]
    Job(job_cmd::JobCommand),
    /// Plans privacy budgets: the epsilon of DP-SGD steps, or the noise a target needs.
    #[command(subcommand)]
    Privacy(privacy_cmd::PrivacyCommand),
    /// Sharing policies: check, decide a round, test, lint, diff, matrix, sign.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Runs a benchmark workload (bench/README.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Downloads and explains models.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// What `treaty synth` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SynthKind {
    /// Customs declarations with a schema and ground truth (the demo's data).
    Customs,
    /// 64 numeric features and a binary label: workloads W1 and W3.
    Numeric,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Shows the node's privacy ledger: every release with its mechanism, and what the agency has
    /// spent (stop the node first: its database is its own while it runs). A ledger that has
    /// lost or altered history is shown as damaged, with a non-zero exit.
    Ledger {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// W1: a training job of 8 agencies x 100,000 rows, 20 rounds, end to end.
    W1(bench::W1Args),
    /// `treaty policy decide` for 30 countries and 60 agencies, whole command and engine.
    Policy {
        /// Runs per measurement (the median is reported).
        #[arg(long, default_value_t = 21)]
        repeats: usize,
    },
    /// W5: Gaussian noise through opendp for 10^3, 10^5, 10^6 parameters.
    /// The timing channel: a DP-SGD round's time as the true number of records varies, with
    /// the sampling rate fixed by a public figure (docs/THREAT_MODEL.md).
    Timing {
        /// The public record count the sampling rate comes from (W1: 80,000).
        #[arg(long, default_value_t = 80_000)]
        records: usize,
        /// Runs per size (the median is reported).
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    W5 {
        /// Runs per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// The update sizes, in parameters.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 100_000, 1_000_000])]
        sizes: Vec<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Downloads a model version with its feature names, schema and standardisation, as JSON.
    Get {
        /// The operator's configuration file (coordinator address and TLS files).
        #[arg(long)]
        config: PathBuf,
        /// The job.
        #[arg(long)]
        job: String,
        /// The model version (default: the job's latest).
        #[arg(long, default_value = "")]
        version: String,
        /// Where to write the model (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Predicts the records of a CSV file with a model file, and explains each prediction of a
    /// linear model: every feature column's contribution to the score.
    Explain {
        /// A model file written by `treaty model get`.
        #[arg(long)]
        model: PathBuf,
        /// Records to predict (CSV with a header, the schema's columns).
        #[arg(long)]
        data: PathBuf,
        /// At most this many records.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Makes a federation CA, a coordinator certificate, operator and agency certificates, and an
    /// empty revocation list, in one directory.
    Init(PkiInit),
    /// Issues one more certificate from an existing PKI.
    Issue {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// An agency, as AGENCY-ID:CC (e.g. `DE-BKA:DE`).
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        agency: Option<String>,
        /// An operator name.
        #[arg(long)]
        operator: Option<String>,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Adds a certificate to the federation's revocation list; coordinators refuse it from their
    /// next connection on.
    Revoke {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        cert: PathBuf,
    },
}

#[derive(Debug, Args)]
struct PkiInit {
    /// The directory to write (created if missing; an existing CA is never overwritten).
    #[arg(long)]
    dir: PathBuf,
    /// The federation's name, written into the CA's subject.
    #[arg(long, default_value = "treaty")]
    federation: String,
    /// The coordinator's name.
    #[arg(long, default_value = "coordinator")]
    coordinator: String,
    /// A host name or address the coordinator is reached at, besides localhost (repeatable).
    #[arg(long = "coordinator-host")]
    coordinator_hosts: Vec<String>,
    /// An operator name (repeatable; default `operator`).
    #[arg(long = "operator")]
    operators: Vec<String>,
    /// An agency, as AGENCY-ID:CC (repeatable), e.g. `--agency DE-BKA:DE`.
    #[arg(long = "agency")]
    agencies: Vec<String>,
    /// Days of validity of the issued certificates.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Policy(command) = cli.command {
        // Synchronous, with its own exit codes (the spec's contract).
        init_tracing(cli.log_json, true);
        return policy_cmd::run(command);
    }
    init_tracing(
        cli.log_json,
        matches!(cli.command, Command::Demo(_) | Command::Bench(_)),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    // Blocking work still running (a training step between two checks of its stop token) must
    // not hold the process past its grace: what it computed can no longer leave.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("TREATY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Coordinator { config } => {
            let config = treaty_coordinator::CoordinatorConfig::load(&config)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            treaty_coordinator::run(config, listener, signals::terminate()).await?;
            Ok(())
        }
        Command::Node {
            command: Some(NodeCommand::Ledger { config, json }),
            ..
        } => show_ledger(&config, json),
        Command::Node { config, .. } => {
            let Some(config) = config else {
                anyhow::bail!("give the node's configuration: treaty node --config FILE");
            };
            let config = treaty_node::NodeConfig::load(&config)?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                signals::terminate().await;
                trigger.cancel();
            });
            treaty_node::run(config, shutdown).await?;
            Ok(())
        }
        Command::Pki(command) => run_pki(command),
        Command::Synth {
            out,
            kind,
            agencies,
            rows,
            seed,
        } => {
            if agencies == 0 || rows < 5 {
                anyhow::bail!("give at least one agency and five rows");
            }
            match kind {
                SynthKind::Customs => {
                    let written = synth::generate(&out, &synth::agencies(agencies), rows, seed)?;
                    print_synth(&out, &written);
                }
                SynthKind::Numeric => {
                    for (k, w) in synth_numeric::generate(&out, agencies, rows, seed)?
                        .iter()
                        .enumerate()
                    {
                        tracing::info!(agency = k, train = %w.train.display(), test = %w.test.display(), positive_rate = w.positive_rate, "written");
                    }
                }
            }
            Ok(())
        }
        Command::Model(ModelCommand::Get {
            config,
            job,
            version,
            out,
        }) => {
            let config = operator::OperatorConfig::load(&config)?;
            let mut client = config.connect().await?;
            let (header, tensors) = operator::download(&mut client, &job, &version).await?;
            let text =
                serde_json::to_string_pretty(&model_cmd::ModelFile::new(&header, &tensors)?)?;
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write `{}`", path.display()))?,
                None => print_line(&text),
            }
            Ok(())
        }
        Command::Bench(BenchCommand::W1(args)) => bench::w1(args).await,
        Command::Bench(BenchCommand::Policy { repeats }) => {
            tokio::task::spawn_blocking(move || bench::policy(repeats.max(1))).await?
        }
        Command::Bench(BenchCommand::Timing { records, repeats }) => {
            tokio::task::spawn_blocking(move || {
                bench_timing::timing(records.max(2), repeats.max(1))
            })
            .await?
        }
        Command::Bench(BenchCommand::W5 { repeats, sizes }) => {
            tokio::task::spawn_blocking(move || bench::w5(repeats.max(1), &sizes)).await?
        }
        Command::Privacy(command) => privacy_cmd::run(command),
        Command::Policy(_) => anyhow::bail!("policy commands run before the runtime starts"),
        Command::Federation(command) => job_cmd::federation(command).await,
        Command::Agencies { config } => job_cmd::agencies(config).await,
        Command::Job(command) => job_cmd::job(command).await,
        Command::Model(ModelCommand::Explain { model, data, limit }) => {
            model_cmd::explain_records(&model, &data, limit)
        }
    }
}

fn show_ledger(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let config = treaty_node::NodeConfig::load(config)?;
    // A damaged ledger is the answer, not a failure to find one: said as such (in JSON too),
    // with a non-zero exit.
    let ledger = match treaty_node::Ledger::open(&config.state_dir, config.privacy) {
        Ok(ledger) => ledger,
        Err(treaty_node::LedgerError::Damaged(damage)) => {
            if json {
                outln!("{}", serde_json::json!({"damaged": damage.to_string()}));
            }
            return Err(damage.into());
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot open the ledger in `{}`; if the node is running, stop it first",
                    config.state_dir.display()
                )
            });
        }
    };
    let entries = ledger.entries()?;
    let spent = ledger.spent()?;
    if json {
        outln!(
            "{}",
            serde_json::json!({"entries": entries, "spent": spent, "budget": config.privacy.map(|b| serde_json::json!({"max_epsilon": b.max_epsilon, "delta": b.delta}))})
        );
        return Ok(());
    }
    for e in &entries {
        let mechanism = match &e.releases {
            Some(r) => serde_json::to_string(r)?,
            None => "no differential privacy".to_owned(),
        };
        outln!(
            "{}\t{}\tround {}\t{}\t{}",
            e.time_unix_ms,
            e.job_id,
            e.round,
            e.kind,
            mechanism
        );
    }
    let budget = config
        .privacy
        .map(|b| format!(" of a budget of {}", b.max_epsilon))
        .unwrap_or_default();
    outln!(
        "{} release(s); spent epsilon {:.6}{budget} at delta {:e} ({})",
        entries.len(),
        spent.epsilon,
        spent.delta,
        spent.accountant
    );
    Ok(())
}

fn print_line(text: &str) {
    outln!("{text}");
}

fn print_synth(out: &std::path::Path, written: &synth::Synth) {
    outln!("{}", out.join("schema.toml").display());
    outln!(
        "the ground truth's AUC on the test splits: {:.4}",
        written.truth_test_auc
    );
    for a in &written.agencies {
        outln!(
            "{} ({}): {} and {}, {:.1} % seized",
            a.agency,
            a.country,
            a.train.display(),
            a.test.display(),
            100.0 * a.prevalence
        );
    }
}

fn run_pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init(args) => {
            let agencies = args
                .agencies
                .iter()
                .map(|s| pki::parse_agency_spec(s))
                .collect::<Result<Vec<_>, _>>()?;
            let operators = if args.operators.is_empty() {
                vec!["operator".to_owned()]
            } else {
                args.operators
            };
            let options = pki::InitOptions {
                federation: args.federation,
                coordinator: args.coordinator,
                coordinator_hosts: args.coordinator_hosts,
                operators,
                agencies,
                validity_days: args.days,
            };
            let written = pki::init(&pki::PkiDir::new(&args.dir), &options)?;
            for path in written {
                outln!("{}", path.display());
            }
        }
        PkiCommand::Issue {
            dir,
            agency,
            operator,
            days,
        } => {
            let identity = match (agency, operator) {
                (Some(spec), _) => {
                    let (agency, country) = pki::parse_agency_spec(&spec)?;
                    treaty_proto::Identity::agency(&country, &agency)?
                }
                (None, Some(name)) => treaty_proto::Identity::operator(&name)?,
                (None, None) => anyhow::bail!("give --agency or --operator"),
            };
            let (cert, key) = pki::issue(&pki::PkiDir::new(&dir), &identity, &[], days)?;
            outln!("{}\n{}", cert.display(), key.display());
        }
        PkiCommand::Revoke { dir, cert } => {
            let serial = pki::revoke(&pki::PkiDir::new(&dir), &cert)?;
            outln!(
                "revoked serial {serial}; coordinators refuse it from now on and close its open sessions"
            );
        }
    }
    Ok(())
}

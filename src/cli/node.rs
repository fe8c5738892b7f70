//! `treaty node --config FILE`: runs an agency's node until SIGINT or SIGTERM;
//! `treaty node ledger --config FILE`: shows its privacy ledger;
//! `treaty node pending|approve|reject`: its operator's approval of jobs, through the running
//! node's control socket.
//!
//! Hidden, for benchmarks of many agencies on one machine (`treaty bench w3`): `treaty node
//! --many DIR` hosts the node of every `*.toml` configuration in `DIR` in this one process, each
//! exactly as `--config` runs it: its own certificate and key, session, ledger, policy files
//! and data; they share only the process and its async runtime.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use treaty_devkit::outln;
use treaty_node::NodeConfig;
use treaty_node::control;
use treaty_node::{LedgerError, LedgerSource};

use super::{CliError, Outcome, unusable, utc};
use crate::signals;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// The node's configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Hosts the node of every `*.toml` configuration in this directory in one process (for
    /// benchmarks of many agencies on one machine).
    #[arg(long, hide = true, conflicts_with = "config")]
    many: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<NodeCommand>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Shows the node's privacy ledger: every release with its mechanism, and what the agency has
    /// spent. Read-only: while the node runs, from the copy it keeps beside its database, checked
    /// against the ledger's anchor. A ledger that has lost or altered history is shown as
    /// damaged, with exit status 1.
    Ledger {
        /// The node's configuration file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the jobs waiting for this agency's approval (a node whose configuration has
    /// `[approval] required = true`), with the terms each states: purpose, fields, who started
    /// it, rounds, and the epsilon it would spend here. Asks the running node.
    Pending {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approves a pending job under the terms it states (`--terms`, as `pending` shows them):
    /// the node takes part from its next round, and never spends more on it than the epsilon
    /// approved. The decision, your name and your account go into the node's evidence log.
    Approve(Decide),
    /// Rejects a job, pending or approved: the node takes no further part in it. Final.
    Reject(Decide),
    /// Exports the node's evidence log (every task it was asked, its decision, the hash of
    /// what it sent, the coordinator's signed receipts, its operator's approvals) into a new
    /// directory, from the running node or, when it is stopped, from its database. `treaty
    /// audit verify BUNDLE --ca ca.crt --node DIR` checks it against a job's audit bundle.
    Evidence {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// A new (or empty) directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct Decide {
    /// The job's id, as `treaty node pending` lists it.
    job: String,
    /// The node's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Your name, as the node's evidence log should record it.
    #[arg(long)]
    by: String,
    /// To approve: the SHA-256 of the job's terms as `treaty node pending` shows them (its
    /// first 12 digits at least): terms that changed since you read them are not approved.
    #[arg(long, default_value = "")]
    terms: String,
    /// Why, in your words (recorded with the decision).
    #[arg(long, default_value = "")]
    note: String,
}

/// Runs `treaty node`: the node itself (on an async runtime), or `ledger`.
pub fn run(args: NodeArgs) -> Outcome {
    match args.command {
        Some(NodeCommand::Ledger { config, json }) => ledger(&config, json),
        Some(NodeCommand::Pending { config, json }) => pending(&config, json),
        Some(NodeCommand::Approve(d)) => decide(d, true),
        Some(NodeCommand::Reject(d)) => decide(d, false),
        Some(NodeCommand::Evidence { config, out }) => evidence(&config, &out),
        None => match args.many {
            Some(dir) => super::block_on(serve_many(&dir)),
            None => super::block_on_one_thread(serve(args.config.as_deref())),
        },
    }
}

/// Runs the node of `config` until SIGINT or SIGTERM.
async fn serve(config: Option<&Path>) -> Outcome {
    let Some(config) = config else {
        return Err(unusable(anyhow::anyhow!(
            "give the node's configuration: treaty node --config FILE"
        )));
    };
    let config = NodeConfig::load(config).map_err(unusable)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signals::terminate().await;
        trigger.cancel();
    });
    // The node runs on this one thread: let the task above install its signal handlers before
    // the node's files are read (nothing yields until then), so that SIGTERM during start-up
    // stops it as it would later.
    tokio::task::yield_now().await;
    // What the node reads before it connects (its files) is unusable input: `NodeError::is_unusable`.
    treaty_node::run(config, shutdown).await?;
    Ok(())
}

/// Runs the node of every `*.toml` configuration in `dir` until SIGINT or SIGTERM; the first
/// node that cannot run (its files) stops them all, with its error.
async fn serve_many(dir: &Path) -> Outcome {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| unusable(anyhow::anyhow!("cannot read `{}`: {e}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| unusable(anyhow::anyhow!("cannot read `{}`: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(unusable(anyhow::anyhow!(
            "`{}` holds no node configuration (`*.toml`)",
            dir.display()
        )));
    }
    let configs = paths
        .iter()
        .map(|p| NodeConfig::load(p).map_err(unusable))
        .collect::<Result<Vec<_>, _>>()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signals::terminate().await;
        trigger.cancel();
    });
    tracing::info!(nodes = configs.len(), dir = %dir.display(), "hosting nodes");
    let mut nodes = tokio::task::JoinSet::new();
    for (path, config) in paths.iter().zip(configs) {
        let span = tracing::info_span!("node", config = %path.display());
        let node = treaty_node::run(config, shutdown.clone());
        nodes.spawn(tracing::Instrument::instrument(node, span));
    }
    let mut failure: Option<CliError> = None;
    while let Some(done) = nodes.join_next().await {
        let error = match done {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => CliError::from(error),
            Err(error) => CliError::Failed(anyhow::anyhow!("a hosted node failed: {error}")),
        };
        shutdown.cancel();
        failure.get_or_insert(error);
    }
    failure.map_or(Ok(()), Err)
}

/// Shows the ledger of the node of `config`.
fn ledger(config: &Path, json: bool) -> Outcome {
    let config = NodeConfig::load(config).map_err(unusable)?;
    // A damaged ledger is the answer, not a failure to find one: said as such (in JSON too),
    // with status 1.
    let reading = match treaty_node::read_ledger(&config.state_dir, config.privacy) {
        Ok(reading) => reading,
        Err(LedgerError::Damaged(damage)) => {
            if json {
                outln!("{}", serde_json::json!({"damaged": damage.to_string()}));
            }
            return Err(CliError::Failed(damage.into()));
        }
        Err(e) => {
            return Err(CliError::Failed(anyhow::Error::from(e).context(format!(
                "cannot read the ledger in `{}`",
                config.state_dir.display()
            ))));
        }
    };
    let (entries, spent) = (reading.entries, reading.spent);
    if json {
        outln!(
            "{}",
            serde_json::json!({"entries": entries, "spent": spent, "source": reading.source, "budget": config.privacy.map(|b| serde_json::json!({"max_epsilon": b.max_epsilon, "delta": b.delta}))})
        );
        return Ok(());
    }
    for e in &entries {
        let mechanism = match &e.releases {
            Some(r) => serde_json::to_string(r)?,
            None => "no differential privacy".to_owned(),
        };
        let secure = match &e.secure_aggregation {
            Some(s) => {
                let assumption = match (s.honest, s.assumed_dishonest) {
                    (Some(1), Some(c)) => {
                        format!(" (assuming at most {c} dishonest: its own noise alone)")
                    }
                    (Some(h), Some(c)) => format!(
                        " (the sum's, assuming at most {c} dishonest: at least {h} honest agencies' noise)"
                    ),
                    _ => String::new(),
                };
                format!(
                    "\tmasked in a secure sum of {} agencies (threshold {}), {} noise{assumption}",
                    s.agencies, s.threshold, s.noise
                )
            }
            None => String::new(),
        };
        outln!(
            "{}\t{}\tround {}\t{}\t{}{secure}",
            utc(e.time_unix_ms),
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
    if reading.source == LedgerSource::RunningNode {
        outln!(
            "(the node is running: read from the copy it keeps, checked against the ledger's anchor)"
        );
    }
    outln!(
        "{} release(s); spent epsilon {:.6}{budget} at delta {:e} (the bound used: {})",
        entries.len(),
        spent.epsilon,
        spent.delta,
        spent.accountant
    );
    for b in spent.bounds.iter().skip(1) {
        outln!(
            "  also bounded by {}: epsilon {:.6}",
            b.accountant,
            b.epsilon
        );
    }
    Ok(())
}

/// Asks the node of `config` which jobs wait for approval.
fn pending(config: &Path, json: bool) -> Outcome {
    let config = NodeConfig::load(config).map_err(unusable)?;
    let answer = control::ask(&config.state_dir, &control::Request::Pending)
        .map_err(|e| CliError::Failed(e.into()))?;
    if json {
        outln!("{}", serde_json::to_string(&answer.pending)?);
        return Ok(());
    }
    if answer.pending.is_empty() {
        outln!("no job waits for approval");
    }
    for p in &answer.pending {
        let t = &p.terms;
        let epsilon = match t.epsilon > 0.0 {
            true => format!("epsilon {} at delta {:e} in all", t.epsilon, t.delta),
            false => "no total stated (each round within its terms' epsilon per round)".into(),
        };
        outln!(
            "{}\t{} job of federation {}, started by {} on {}; coordinator {}",
            t.job_id,
            t.kind,
            t.federation,
            t.created_by,
            utc(t.created_unix_ms),
            t.coordinator
        );
        outln!(
            "\tpurpose {}; fields {}; {} round(s); {epsilon}; asked for round {} at {}",
            t.purpose,
            t.fields.join(", "),
            t.rounds,
            p.round,
            utc(p.asked_unix_ms)
        );
        if let Some(secure) = &t.secure_aggregation {
            outln!("\tsecure aggregation: {secure}");
        }
        outln!("\tterms sha256 {}", p.terms_sha256);
    }
    Ok(())
}

/// Approves (`approve`) or rejects a job at the node of `d.config`.
fn decide(d: Decide, approve: bool) -> Outcome {
    let config = NodeConfig::load(&d.config).map_err(unusable)?;
    let request = match approve {
        true => control::Request::Approve {
            job: d.job,
            terms: d.terms,
            by: d.by,
            note: d.note,
        },
        false => control::Request::Reject {
            job: d.job,
            by: d.by,
            note: d.note,
        },
    };
    let answer =
        control::ask(&config.state_dir, &request).map_err(|e| CliError::Failed(e.into()))?;
    if let Some(r) = answer.recorded {
        outln!(
            "job {} {} by {} (account {}), recorded in the node's evidence log; terms sha256 {}",
            r.job_id,
            r.decision,
            r.by,
            r.account,
            r.terms_sha256
        );
    }
    Ok(())
}

/// Exports the evidence log of the node of `config` into `out`.
fn evidence(config: &Path, out: &Path) -> Outcome {
    let config = NodeConfig::load(config).map_err(unusable)?;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(unusable(anyhow::anyhow!(
            "`{}` is not empty: give a new directory",
            out.display()
        )));
    }
    let agency = treaty_proto::tls::load_certs(&config.tls.cert)
        .map_err(unusable)?
        .first()
        .map(treaty_proto::Identity::from_certificate)
        .transpose()
        .map_err(unusable)?
        .map(|i| i.to_string())
        .unwrap_or_default();
    // From the running node; from its database when none runs on it.
    let lines: Vec<Vec<u8>> = match control::ask(&config.state_dir, &control::Request::Evidence) {
        Ok(answer) => answer
            .evidence
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        Err(control::ControlError::Unreachable { .. }) => {
            let ledger = treaty_node::Ledger::open(&config.state_dir, config.privacy)?;
            let (log, _) = ledger.evidence()?;
            log.stored()?
        }
        Err(e) => return Err(CliError::Failed(e.into())),
    };
    treaty_node::export::write(out, &agency, &lines, super::now_ms())?;
    outln!(
        "{}: {} record(s) of {agency}'s evidence log",
        out.display(),
        lines.len()
    );
    Ok(())
}

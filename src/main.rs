//! `treaty`: the one binary. It parses the command line and dispatches to `cli/`, one file per
//! command; `cli` states the exit-code contract (0 ok, 1 failure, 2 unusable input).

mod cli;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{agencies, bench, demo, federation, job, model, node, pki, policy, privacy, synth};

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
    Coordinator(cli::coordinator::CoordinatorArgs),
    /// Runs an agency's node (`treaty node --config FILE`), or reads its ledger.
    Node(node::NodeArgs),
    /// Makes and manages a development PKI.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Writes synthetic data for N agencies: realistic customs declarations (a schema, train and
    /// test splits per agency, and the ground truth), or the numeric data of benchmark
    /// workloads W1 and W3 (`--kind numeric`: `agency_K_train.csv`, `agency_K_test.csv`).
    Synth(synth::SynthArgs),
    /// Creates and lists federations (operators).
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Lists the agencies connected now (operators).
    Agencies(agencies::AgenciesArgs),
    /// Starts, follows and shows jobs (operators).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Plans privacy budgets: the epsilon of DP-SGD steps, or the noise a target needs.
    #[command(subcommand)]
    Privacy(privacy::PrivacyCommand),
    /// Sharing policies: check, decide a round, test, lint, diff, matrix, sign.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Runs a benchmark workload (bench/README.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Downloads and explains models.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that print a report log only warnings unless TREATY_LOG says otherwise.
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Bench(_) | Command::Policy(_)
    );
    cli::init_tracing(cli.log_json, quiet);
    let outcome = match cli.command {
        // Synchronous, with the finer codes of the policy language's contract.
        Command::Policy(command) => return policy::run(command),
        Command::Pki(command) => pki::run(command),
        Command::Synth(args) => synth::run(args),
        Command::Privacy(command) => privacy::run(command),
        // Each starts an async runtime for what needs one.
        Command::Node(args) => node::run(args),
        Command::Model(command) => model::run(command),
        Command::Demo(args) => cli::block_on(demo::run(args)),
        Command::Coordinator(args) => cli::block_on(cli::coordinator::run(args)),
        Command::Federation(command) => cli::block_on(federation::run(command)),
        Command::Agencies(args) => cli::block_on(agencies::run(args)),
        Command::Job(command) => cli::block_on(job::run(command)),
        Command::Bench(command) => cli::block_on(bench::run(command)),
    };
    cli::exit(outcome)
}

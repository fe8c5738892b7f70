//! `treaty`: the one binary. It parses the command line and dispatches to `cli/`, one file per
//! command; `cli` states the exit-code contract (0 ok, 1 failure, 2 unusable input).

mod cli;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{
    agencies, audit, bench, demo, federation, job, model, node, pki, policy, privacy, query,
    schema, score, serve, synth,
};

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
    /// Checks a feature schema whole, before a job uses it (`treaty schema check FILE`).
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Asks a federation one differentially private statistic (analysts): count, sum, mean,
    /// histogram or quantiles, each agency spending --epsilon under its sharing policy.
    #[command(subcommand)]
    Query(query::QueryCommand),
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
    /// Scores the records of a CSV file with a model file, each with the columns that moved
    /// its score most (CSV or JSON), on the agency's own machine.
    Score(score::ScoreArgs),
    /// Answers score requests for a model file over gRPC, on this machine (loopback) only.
    Serve(serve::ServeArgs),
    /// Exports a job's evidence from the audit log, and checks it offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
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
        Command::Schema(command) => schema::run(command),
        Command::Score(args) => score::run(args),
        // Each starts an async runtime for what needs one.
        Command::Node(args) => node::run(args),
        Command::Model(command) => model::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Demo(args) => cli::block_on(demo::run(args)),
        Command::Coordinator(args) => cli::block_on(cli::coordinator::run(args)),
        Command::Federation(command) => cli::block_on(federation::run(command)),
        Command::Agencies(args) => cli::block_on(agencies::run(args)),
        Command::Job(command) => cli::block_on(job::run(command)),
        Command::Query(command) => cli::block_on(query::run(command)),
        Command::Serve(args) => cli::block_on(serve::run(args)),
        Command::Bench(command) => cli::block_on(signals::until_signalled(bench::run(command))),
    };
    cli::exit(outcome)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of `cmd` and its subcommands without help text, as `treaty sub --arg`.
    fn undocumented(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            let documented = arg
                .get_help()
                .is_some_and(|h| !h.to_string().trim().is_empty());
            if !builtin && !documented {
                let name = match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => arg.get_id().to_string().to_uppercase(),
                };
                found.push(format!("{} {name}", path.trim()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                found.push(format!(
                    "{} {} (the command itself)",
                    path.trim(),
                    sub.get_name()
                ));
            }
            undocumented(sub, &path, found);
        }
    }

    #[test]
    fn every_command_and_option_has_help_text() {
        let mut found = Vec::new();
        undocumented(&Cli::command(), "", &mut found);
        assert!(
            found.is_empty(),
            "options without help text:\n  {}",
            found.join("\n  ")
        );
    }
}

/// jemalloc instead of the system's allocator, for every process the binary runs (coordinator,
/// nodes, benchmarks). Measured on W3 (a host of 1,000 agencies on 2 cores): glibc's malloc and
/// free were about a sixth of the host's CPU, and jemalloc made the round some 15 % shorter for
/// a peak some 7 % higher (mimalloc, also tried, made it as short but held five times the memory).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

//! The commands of `treaty`, one file each, and the one exit-code contract they share:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the command did what was asked |
//! | 1 | it failed: a process, a peer or the machine let it down (a job that failed, a coordinator that cannot be reached, a damaged ledger) |
//! | 2 | its input is unusable: a command line, configuration, data, model or policy file that is missing or wrong, or a request the coordinator refused as invalid; the message names what to fix |
//!
//! `treaty policy` follows the same contract and gives some of its commands a finer meaning
//! (docs/POLICY_LANGUAGE.md): `check` and `test` exit 1 when a file has problems, `decide` exits
//! 2 when it cannot decide. Command-line errors exit 2 (clap's own).

pub mod agencies;
pub mod audit;
pub mod bench;
pub mod coordinator;
pub mod demo;
pub mod federation;
pub mod job;
pub mod model;
pub mod node;
pub mod pki;
pub mod policy;
pub mod privacy;
pub mod query;

pub mod schema;
pub mod score;
pub mod serve;
pub mod synth;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use treaty_devkit::errln;

/// Why a command did not succeed, and so its exit status.
#[derive(Debug)]
pub enum CliError {
    /// Status 1: the command failed.
    Failed(anyhow::Error),
    /// Status 2: its input is unusable.
    Unusable(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(error: E) -> Self {
        let error = error.into();
        if is_unusable(&error) {
            CliError::Unusable(error)
        } else {
            CliError::Failed(error)
        }
    }
}

/// Whether an error is about the command's input: a configuration, certificate, key, PKI, data
/// or model file that is missing or wrong, or a request the coordinator refused as invalid
/// (`INVALID_ARGUMENT`) or about something that does not exist (`NOT_FOUND`). Each crate's error
/// says which of its variants are input (`is_unusable`): a `#[error(transparent)]` variant hides
/// the error it wraps from the chain, so the chain is asked about the wrapping errors too.
fn is_unusable(error: &anyhow::Error) -> bool {
    use treaty_coordinator::CoordinatorError;
    use treaty_coordinator::client::ClientError;
    use treaty_node::NodeError;
    use treaty_proto::PkiError;
    error.chain().any(|cause| {
        cause.is::<treaty_proto::config::ConfigError>()
            || cause.is::<treaty_proto::TlsError>()
            || cause.is::<treaty_node::ModelFileError>()
            || cause.is::<treaty_node::DataError>()
            || cause.is::<treaty_node::scoring::ScoringError>()
            || cause.is::<treaty_devkit::bench::W1DataError>()
            || cause.is::<treaty_devkit::bench::W3Error>()
            || cause
                .downcast_ref::<CoordinatorError>()
                .is_some_and(CoordinatorError::is_unusable)
            || cause
                .downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_unusable)
            || cause
                .downcast_ref::<NodeError>()
                .is_some_and(NodeError::is_unusable)
            || cause
                .downcast_ref::<PkiError>()
                .is_some_and(PkiError::is_unusable)
            || matches!(
                cause
                    .downcast_ref::<tonic::Status>()
                    .map(tonic::Status::code),
                Some(tonic::Code::InvalidArgument | tonic::Code::NotFound)
            )
    })
}

/// The result of a command.
pub type Outcome = Result<(), CliError>;

/// The CA certificate (DER) of a PEM file the reader trusts (`--ca` of the commands that
/// check evidence: `treaty audit`, `treaty model`).
pub fn trusted_ca(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let pem = std::fs::read(path)
        .map_err(|e| unusable(anyhow::anyhow!("cannot read `{}`: {e}", path.display())))?;
    treaty_proto::tls::certificate_der(&pem)
        .map_err(|e| unusable(anyhow::anyhow!("`{}` {e}", path.display())))
}

/// Fails when the certificate `der` is on the revocation list `crl`.
pub fn not_revoked(der: &[u8], crl: &std::path::Path) -> Outcome {
    let revoked = treaty_proto::tls::revoked_serials(crl).map_err(unusable)?;
    let serial = treaty_proto::tls::serial_hex(&der.to_vec().into());
    if revoked.contains(&serial) {
        return Err(anyhow::anyhow!(
            "not verified: the coordinator certificate that signed it (serial {serial}) is revoked by `{}`",
            crl.display()
        )
        .into());
    }
    Ok(())
}

/// Marks an error as unusable input (status 2).
pub fn unusable(error: impl Into<anyhow::Error>) -> CliError {
    CliError::Unusable(error.into())
}

/// Prints a command's error and gives its exit status.
pub fn exit(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Failed(error)) => {
            errln!("error: {error:#}");
            ExitCode::from(1)
        }
        Err(CliError::Unusable(error)) => {
            errln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Starts logging to standard error: plain text (coloured only on a terminal, and not when
/// `NO_COLOR` is set) or JSON lines, filtered by `TREATY_LOG` (default `info`, or `warn` for the
/// commands that print a report). A log line that cannot be written (standard error closed) is
/// dropped: it never stops the process.
pub fn init_tracing(json: bool, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("TREATY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = colour_logs(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // Its default reports a failed write with `eprintln!`, which panics on a closed pipe.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether logs are coloured: only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>). A log redirected to a file or a pipe is plain
/// text.
fn colour_logs(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time as people read it: RFC 3339 in UTC to the second, e.g. `2026-11-30T12:30:28Z`, from
/// milliseconds since the Unix epoch (the raw number when it is out of range).
pub fn utc(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970-01-01T00:00:00Z"))
}

/// Runs an asynchronous command on a multi-threaded runtime. Blocking work still running when
/// it ends (a training step between two checks of its stop token) gets two seconds: what it
/// computed can no longer leave.
pub fn block_on(command: impl std::future::Future<Output = Outcome>) -> Outcome {
    run_on(tokio::runtime::Builder::new_multi_thread(), command)
}

/// Runs an asynchronous command all on this thread, its blocking work on threads of their own:
/// for a process whose asynchronous work is light (one agency's node), where threads waking
/// one another cost more than they share.
pub fn block_on_one_thread(command: impl std::future::Future<Output = Outcome>) -> Outcome {
    run_on(tokio::runtime::Builder::new_current_thread(), command)
}

fn run_on(
    mut builder: tokio::runtime::Builder,
    command: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    let runtime = builder
        .max_blocking_threads(blocking_threads())
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(command);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}

/// The most threads a runtime starts for blocking work (sled's writes and their syncs, training
/// steps, policy checks): eight a core, at least 16. Tokio's default, 512, is reached when many
/// agencies' work queues at once, and every thread that touches sled then joins the list
/// crossbeam's epochs walk on sled's every write: at 1,000 agencies on 2 cores (`treaty bench
/// w3`), the round took 2.70-2.76 s with 512 (520-640 threads in the host), 2.76 s with 64,
/// 2.44-2.48 s with 32 and 2.38-2.43 s with 16, and the host's memory fell by an eighth.
fn blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (8 * cores).max(16)
}

/// This binary, which a local federation's processes run.
pub fn this_binary() -> Result<std::path::PathBuf, CliError> {
    std::env::current_exe()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot find the treaty binary: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(colour_logs(true, Some("".into())));
        assert!(!colour_logs(true, Some("1".into())));
        assert!(!colour_logs(false, None));
        assert!(!colour_logs(false, Some("".into())));
    }

    #[test]
    fn times_read_as_rfc_3339_utc() {
        // `date -u -d @1796056228.940 +%Y-%m-%dT%H:%M:%SZ`: the `since` of issue #11.
        assert_eq!(utc(1_796_056_228_940), "2026-11-30T16:30:28Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        // 2000-02-29T23:59:59.999Z, a leap day: 951868799 s (`date -u -d 2000-02-29T23:59:59Z +%s`).
        assert_eq!(utc(951_868_799_999), "2000-02-29T23:59:59Z");
        assert!(utc(i64::MAX).contains("ms after 1970"));
    }
}

//! Waiting for SIGINT or SIGTERM, the signals that start a graceful shutdown, and stopping the
//! processes a command started when it receives one.

/// Completes when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a command that starts processes of its own (a benchmark) until it ends or the process
/// receives SIGINT or SIGTERM: then every child process is stopped ([`stop_children`]) and the
/// command dropped, so that a benchmark stopped by a signal leaves nothing running.
pub async fn until_signalled(
    command: impl std::future::Future<Output = crate::cli::Outcome>,
) -> crate::cli::Outcome {
    let mut command = std::pin::pin!(command);
    tokio::select! {
        biased;
        outcome = &mut command => return outcome,
        () = terminate() => {}
    }
    // The command is not dropped yet (it is when this returns): its children are asked to stop
    // on their own first, as the coordinator and nodes do on SIGTERM.
    let stopped = tokio::task::spawn_blocking(|| stop_children(CHILDREN_GRACE))
        .await
        .unwrap_or(0);
    Err(crate::cli::CliError::Failed(anyhow::anyhow!(
        "stopped by a signal; the {stopped} process(es) it had started were stopped too"
    )))
}

/// How long the children of a stopped command have to stop on their own after SIGTERM (a
/// benchmark's run of another benchmark stops its own children in turn) before SIGKILL.
const CHILDREN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Sends SIGTERM to every child process of this one, waits up to `grace` for them to exit,
/// then sends SIGKILL to those still running; how many there were. (Linux: children are found
/// by their parent's id in `/proc`.)
fn stop_children(grace: std::time::Duration) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let first = running_children();
    for pid in &first {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while !running_children().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for pid in running_children() {
        tracing::warn!(
            pid,
            "a child process did not stop within its grace; killing it"
        );
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    first.len()
}

/// The ids of this process's children that are still running (not exited and waiting to be
/// reaped), from the parent id and state in each `/proc/PID/stat`.
fn running_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `PID (COMMAND) STATE PPID ...`: the command may hold spaces and parentheses.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let (state, parent) = (fields.next()?, fields.next()?);
            (parent == me && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

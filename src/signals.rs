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
/// receives SIGINT or SIGTERM: then nothing more is started, every child process is stopped
/// ([`stop_children`]) and the command dropped, so that a benchmark stopped by a signal leaves
/// nothing running.
pub async fn until_signalled(
    command: impl std::future::Future<Output = crate::cli::Outcome>,
) -> crate::cli::Outcome {
    let mut command = std::pin::pin!(command);
    tokio::select! {
        // The signal first: its handlers are in place before the command starts anything.
        biased;
        () = terminate() => {}
        outcome = &mut command => return outcome,
    }
    treaty_devkit::local::stop_starting();
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

/// Sends SIGTERM to every child process of this one (and to any that appears while it waits),
/// waits up to `grace` for them to exit, then sends SIGKILL to every process still running
/// below this one, children of children included (a child killed first would leave its own to
/// run on); how many children it signalled. (Linux: processes are found by their parent's id
/// in `/proc`.)
fn stop_children(grace: std::time::Duration) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let deadline = std::time::Instant::now() + grace;
    let mut signalled: Vec<i32> = Vec::new();
    loop {
        let running = processes();
        let children: Vec<i32> = running
            .iter()
            .filter(|(_, parent)| *parent == me)
            .map(|(pid, _)| *pid)
            .collect();
        if children.is_empty() {
            return signalled.len();
        }
        for pid in children {
            if !signalled.contains(&pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                signalled.push(pid);
            }
        }
        if std::time::Instant::now() >= deadline {
            for pid in descendants(me, &running) {
                tracing::warn!(pid, "a process did not stop within its grace; killing it");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return signalled.len();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every process below `root` in `running` (pid, parent pairs).
fn descendants(root: i32, running: &[(i32, i32)]) -> Vec<i32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            running
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Every running process (not exited and waiting to be reaped) with its parent's id, from each
/// `/proc/PID/stat`.
fn processes() -> Vec<(i32, i32)> {
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
            let state = fields.next()?;
            let parent: i32 = fields.next()?.parse().ok()?;
            (state != "Z" && state != "X").then_some((pid, parent))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::descendants;

    #[test]
    fn descendants_are_children_and_theirs_not_the_root_nor_strangers() {
        // 1 -> 2 -> 4 -> 5, 1 -> 3; 6 -> 7 elsewhere.
        let running = [(2, 1), (3, 1), (4, 2), (5, 4), (7, 6), (6, 0)];
        let mut below = descendants(1, &running);
        below.sort();
        assert_eq!(below, [2, 3, 4, 5]);
        assert!(descendants(5, &running).is_empty());
    }
}

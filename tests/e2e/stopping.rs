//! A command that starts processes of its own (the demo, a benchmark, the benchmarks' runner),
//! stopped by SIGTERM from outside (`kill`, `timeout`, a service manager, a CI job cancelled),
//! stops every process it started and leaves none running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::TREATY;

/// The parent id and state of process `pid` (`None` once it is gone).
fn parent_and_state(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.to_owned();
    Some((fields.next()?.parse().ok()?, state))
}

/// Whether `pid` is still running (neither gone nor exited and waiting to be reaped).
fn running(pid: i32) -> bool {
    parent_and_state(pid).is_some_and(|(_, state)| state != "Z" && state != "X")
}

/// The running processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    all_running()
        .into_iter()
        .filter(|pid| parent_and_state(*pid).is_some_and(|(p, _)| p == parent))
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits up to `timeout` for `done`, polling.
fn eventually(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGTERM to `child` and waits for it to exit (at most a minute); its standard error.
fn terminate(mut child: Child) -> String {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within a minute of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(
        !status.success(),
        "a command stopped by a signal did not fail: {stderr}"
    );
    stderr
}

/// Kills, when dropped, every process that names its directory: a failed test leaves none
/// running.
struct Reaper<'a>(&'a Path);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        let dir = self.0.to_string_lossy().to_string();
        for pid in all_running() {
            if cmdline(pid).contains(&dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn all_running() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| running(*pid))
        .collect()
}

/// No process names `dir` on its command line.
fn none_names(dir: &Path) {
    let dir = dir.to_string_lossy().to_string();
    for pid in all_running() {
        let line = cmdline(pid);
        assert!(!line.contains(&dir), "still running: {line}");
    }
}

fn start(args: &[&str], dir: &Path) -> Child {
    Command::new(TREATY)
        .args(args)
        .arg("--keep")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `treaty ARGS --keep DIR` until its federation's round 2 has started, stops it with
/// SIGTERM, and checks that it failed saying so, that nothing it started still runs, and that
/// its coordinator was stopped, not killed (its log ends with its own stop).
fn stopped_at_round_2(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path());
    let command = start(args, dir.path());
    let log = dir.path().join("coordinator.log");
    eventually(Duration::from_secs(180), "round 2", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("round 2 started"))
    });
    let stderr = terminate(command);
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    none_names(dir.path());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("coordinator stopped"), "{log}");
}

#[test]
fn a_benchmark_stopped_by_sigterm_stops_its_coordinator_and_nodes() {
    stopped_at_round_2(&["bench", "w4", "--rounds", "5000"]);
}

#[test]
fn the_demo_stopped_by_sigterm_stops_its_federation() {
    stopped_at_round_2(&["demo", "--rounds", "20", "--rows", "200"]);
}

/// The runner's child is a benchmark of its own: it is stopped, and it stops its own children,
/// nodes started after the signal included. Every process below the runner works in a
/// temporary directory under the `TMPDIR` the runner is given, which their command lines name.
#[test]
fn the_benchmarks_runner_stopped_by_sigterm_leaves_no_benchmark_running() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path());
    let runner = Command::new(TREATY)
        .args([
            "bench",
            "run",
            "--only",
            "w4",
            "--repeats",
            "1",
            "--results",
        ])
        .arg(tmp.path().join("r.jsonl"))
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = runner.id() as i32;
    // Its benchmark's coordinator is running (its nodes may not be yet).
    eventually(
        Duration::from_secs(180),
        "the runner's W4 coordinator",
        || {
            children_of(id)
                .iter()
                .flat_map(|c| children_of(*c))
                .any(|g| cmdline(g).contains("coordinator"))
        },
    );
    terminate(runner);
    none_names(tmp.path());
}

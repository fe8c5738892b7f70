//! The command line as people use it: the README's own commands, output piped into a reader
//! that stops early (`| head`), a closed standard error, plain-text logs in files, and times
//! people can read.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

/// A pipe whose reading end is closed already: whatever is written to it fails (`EPIPE`), as
/// when `head` has read what it wanted.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

/// Runs `treaty ARGS` with standard output (and standard error when `stderr_too`) into a closed
/// pipe; its exit status.
fn run_into_closed_pipe(args: &[&str], stderr_too: bool) -> ExitStatus {
    let stderr = if stderr_too {
        closed_pipe()
    } else {
        Stdio::null()
    };
    Command::new(TREATY)
        .args(args)
        .stdout(closed_pipe())
        .stderr(stderr)
        .status()
        .unwrap()
}

/// `treaty ARGS`: its standard output; panics with its standard error unless it succeeds.
fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(TREATY).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "treaty {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `text` is a UTC time as RFC 3339 writes it to the second: `YYYY-MM-DDTHH:MM:SSZ`,
/// in this century.
fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && text.starts_with("20")
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn the_readme_policy_check_passes_in_the_sample_directory() {
    // The README's command, word for word, run by a shell in `policies/sample` so that the
    // glob expands as it does for a reader (to the registry and the test file too).
    let command = "treaty policy check --registry registry.toml *.toml";
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(command),
        "the README no longer says `{command}`"
    );
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/sample");
    let out = Command::new("sh")
        .arg("-c")
        .arg(command.replacen("treaty", "\"$TREATY\"", 1))
        .env("TREATY", TREATY)
        .current_dir(&sample)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for said in [
        "registry.toml: valid (the registry)",
        "DE.tests.toml: valid (",
        "DE.toml: valid (DE policy version",
        "US.toml: valid (US policy version",
    ] {
        assert!(stderr.contains(said), "no `{said}` in: {stderr}");
    }
}

#[tokio::test]
async fn piped_output_that_is_cut_short_and_a_closed_stderr_end_nothing_badly() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let (mut coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let node_config = fx.node_config("DE-BKA", "DE", &address, 1);
    let mut node = fx.start_node_with("DE-BKA", &node_config);
    let mut client = fx.operator(&address).await;
    wait_connected(&mut client, &["DE-BKA"]).await;
    create_federation(&mut client, "f", &["DE-BKA:DE"]).await;
    run_training(&mut client, "f", 1, 1).await;
    let operator = fx.operator_config(&address);
    let operator = operator.to_str().unwrap();

    // `treaty agencies`: when each session opened, in UTC as RFC 3339, not epoch milliseconds.
    let agencies = stdout_of(&["agencies", "--config", operator]);
    let line = agencies.lines().next().unwrap();
    let since = line.rsplit("\tsince ").next().unwrap();
    assert!(is_rfc3339_utc(since), "{line}");

    // `treaty job list | head`, `treaty federation list | head`: a reader that stops early.
    for args in [
        ["job", "list", "--config", operator],
        ["federation", "list", "--config", operator],
    ] {
        assert!(!stdout_of(&args).is_empty(), "{args:?} printed nothing");
        let status = run_into_closed_pipe(&args, false);
        assert_eq!(status.code(), Some(0), "treaty {args:?}: {status}");
        // Standard error closed as well: nothing to say, nothing to panic about.
        let status = run_into_closed_pipe(&args, true);
        assert_eq!(status.code(), Some(0), "treaty {args:?}: {status}");
    }
    // A command that fails keeps its exit status when it cannot even say why.
    let status = run_into_closed_pipe(
        &["job", "show", "--config", operator, "--job", "nope"],
        true,
    );
    assert_eq!(status.code(), Some(2), "{status}");

    // `treaty node ledger | head` (the node stopped): every line starts with a readable time.
    node.stop(Duration::from_secs(5));
    let config = node_config.to_str().unwrap();
    let ledger = stdout_of(&["node", "ledger", "--config", config]);
    let entries: Vec<&str> = ledger.lines().filter(|l| l.contains("\tround ")).collect();
    assert!(!entries.is_empty(), "{ledger}");
    for line in &entries {
        let time = line.split('\t').next().unwrap();
        assert!(is_rfc3339_utc(time), "{line}");
    }
    let status = run_into_closed_pipe(&["node", "ledger", "--config", config], true);
    assert_eq!(status.code(), Some(0), "{status}");

    // A log redirected to a file is plain text: no ANSI escape codes.
    for (who, log) in [("coordinator", coordinator.log()), ("node", node.log())] {
        assert!(log.contains(" INFO "), "{who}: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "{who}'s log has ANSI codes: {log:?}"
        );
    }
    coordinator.stop(Duration::from_secs(5));
}

#[test]
fn a_coordinator_whose_stderr_is_closed_keeps_serving() {
    let fx = Fixture::new(&[]);
    let config = fx.coordinator_config("127.0.0.1:0");
    let address_file = fx.path("coordinator.address");
    let mut child = Command::new(TREATY)
        .args(["coordinator", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(&address_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the coordinator stopped ({status}) with its standard error closed");
        }
        assert!(Instant::now() < deadline, "the coordinator never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    // It serves, and logs, with no one reading its standard error.
    let operator = fx.operator_config(&address);
    for _ in 0..3 {
        stdout_of(&["federation", "list", "--config", operator.to_str().unwrap()]);
    }
    assert!(child.try_wait().unwrap().is_none(), "the coordinator died");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_demo_whose_reader_is_gone_still_stops_every_process_it_started() {
    // `treaty demo | head`: a reader that stops once the federation runs. The command must not
    // exit on the spot, which would leave its coordinator and nodes running; it finishes
    // silently and stops them.
    use std::io::BufRead;
    let keep = tempfile::tempdir().unwrap();
    let keep_path = keep.path().join("demo");
    let mut child = Command::new(TREATY)
        .args([
            "demo",
            "--rounds",
            "1",
            "--keep",
            keep_path.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("all agencies connected") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the demo ended early"
        );
    }
    drop(reader);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let log = std::fs::read_to_string(keep_path.join("coordinator.log")).unwrap();
    assert!(log.contains("coordinator stopped"), "{log}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read_to_string(entry.path().join("cmdline")) {
            assert!(
                !cmdline.contains(keep_path.to_str().unwrap()),
                "still running: {cmdline}"
            );
        }
    }
}

/// Following a job shows a progress bar of its rounds on a terminal (here a pseudo-terminal
/// that `script` makes), and plain lines otherwise.
#[test]
fn following_a_job_shows_a_bar_on_a_terminal_and_plain_lines_otherwise() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must check the progress bar: it needs `script` (util-linux)"
        );
        eprintln!("progress: skipped: no `script` (util-linux) to make a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("terminal.log");
    let demo = format!("{TREATY} demo --rounds 2 --rows 400");
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &demo])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let seen = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    // The statistics round, 2 rounds and the final model's evaluation.
    assert!(
        seen.contains("rounds 4/4 [=============================="),
        "{seen}"
    );
    assert!(seen.contains("rounds 2/4 [==="), "{seen}");
    // Not on a terminal: the rounds as lines, no bar.
    let plain = stdout_of(&["demo", "--rounds", "2", "--rows", "400"]);
    assert!(plain.contains("[round  2] round 2 completed"), "{plain}");
    assert!(!plain.contains("rounds 0/"), "{plain}");
}

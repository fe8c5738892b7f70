//! One `treaty` process of a local federation: its standard error goes to a log file, and it is
//! killed when dropped, whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How many [`Process`]es this process holds now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Whether this process holds child processes that only dropping their [`Process`] stops: a
/// command must then not end with `std::process::exit`, which would leave them running.
pub fn holds_processes() -> bool {
    HELD.load(Ordering::SeqCst) > 0
}

/// Set once the command is stopping (a signal): no process is started after it.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// From now on, [`Process::spawn`] (and the benchmarks' runner) start nothing: the command is
/// stopping, and a process started on a thread that has not noticed yet would outlive it.
pub fn stop_starting() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Whether [`stop_starting`] was called.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// A running `treaty` process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `exe ARGS`, its standard error into `log` (logging at `info`).
    pub fn spawn(exe: &Path, name: &str, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        if stopping() {
            bail!("not starting {name}: the command is stopping");
        }
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot write `{}`", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .env("TREATY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name} (`{}`)", exe.display()))?;
        HELD.fetch_add(1, Ordering::SeqCst);
        Ok(Process {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The name it was started with, as messages name it: `the coordinator` for a [`Site`]'s
    /// coordinator, the agency's id for a node.
    ///
    /// [`Site`]: super::Site
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until its log contains `needle`; an error with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "no `{needle}` in the log of {} within {} s:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)
            .with_context(|| format!("cannot signal {} ({pid})", self.name))
    }

    /// Waits for it to exit, at most `timeout`; its exit status if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `grace` for it to exit; SIGKILL after. Its exit status, if it
    /// stopped on its own.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_for_exit(grace);
        if status.is_none() {
            tracing::warn!(
                process = self.name.as_str(),
                "did not stop within {} s; killing it",
                grace.as_secs()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    /// Its peak resident memory (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

//! Writing to standard output and standard error. A reader that stops reading (`treaty policy
//! matrix ... | head`) ends the command quietly, instead of the panic `println!` gives on a
//! closed pipe — at once, or, for a command that holds child processes (`treaty demo`, `treaty
//! bench`), by writing nothing more while it finishes and stops them; any other failure to write
//! standard output is reported and ends the command with status 1. What cannot be written to
//! standard error is dropped, never a panic.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once standard output's reader is gone: nothing more is written to it.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes formatted text to standard output (as `print!`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}

/// Writes formatted text and a newline to standard output (as `println!`).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// Writes formatted text and a newline to standard error (as `eprintln!`, which panics when
/// standard error is a closed pipe). A message that cannot be written is lost: there is nowhere
/// left to report it.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!($($arg)*)) };
}

/// Writes `args` and a newline to standard error, ignoring a failure to write.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Writes `args` (and a newline) to standard output; on a closed pipe, exits quietly (or, while
/// child processes are held, writes nothing more).
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if STDOUT_GONE.load(Ordering::SeqCst) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    match written {
        Ok(()) => {}
        // Child processes stop when their handles drop, which `exit` skips: the command then
        // goes on, silently, to its end.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            if !crate::local::holds_processes() {
                std::process::exit(0);
            }
            STDOUT_GONE.store(true, Ordering::SeqCst);
        }
        Err(e) => {
            write_err(format_args!("error: cannot write to standard output: {e}"));
            std::process::exit(1);
        }
    }
}

/// Prints a job's event as an operator follows it: routine arrivals of results are left out;
/// refusals, rejections, exclusions and the rounds' progress are shown.
pub fn print_event(event: &treaty_proto::v1::JobEvent) {
    if let Some(line) = event_line(event) {
        outln!("{line}");
    }
}

/// Text from a peer (a coordinator's message, an agency's refusal, a label) as it may be
/// printed on a terminal: every control character replaced, so that none can move the cursor,
/// rewrite a line or set the clipboard of the person reading.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// How [`print_event`] shows an event; `None` for one it leaves out.
fn event_line(event: &treaty_proto::v1::JobEvent) -> Option<String> {
    if event.kind() == treaty_proto::v1::JobEventKind::ResultAccepted {
        return None;
    }
    let message = printable(&event.message);
    Some(
        if event.kind() == treaty_proto::v1::JobEventKind::ModelEvaluated {
            format!("    [final]    {message}")
        } else if event.round > 0 {
            format!("    [round {:>2}] {message}", event.round)
        } else {
            format!("    {message}")
        },
    )
}

/// How a command follows a job. On a terminal: a progress bar of its rounds on standard
/// error, with the events printed above it. Otherwise: the events as plain lines, on standard
/// output, or on standard error for a command whose standard output is data.
#[derive(Debug)]
pub struct Follow {
    bar: Option<indicatif::ProgressBar>,
    to_stderr: bool,
}

impl Follow {
    /// Following a job of `rounds` rounds (a statistics round, when one comes, adds one).
    pub fn new(rounds: u64, to_stderr: bool) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(rounds);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "  {spinner} rounds {pos}/{len} [{bar:30}] {elapsed} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Follow { bar, to_stderr }
    }

    /// Shows one event.
    pub fn event(&self, event: &treaty_proto::v1::JobEvent) {
        use treaty_proto::v1::JobEventKind;
        let line = event_line(event);
        match &self.bar {
            Some(bar) => {
                if event.kind() == JobEventKind::CurrentState
                    && let Some(job) = &event.job
                {
                    // A job followed part-way: what it has done already.
                    let statistics = u64::from(job.statistics.is_some());
                    bar.inc_length(statistics);
                    bar.set_position(u64::from(job.rounds_completed) + statistics);
                }
                if event.kind() == JobEventKind::RoundCompleted && event.round == 0 {
                    bar.inc_length(1);
                }
                if matches!(
                    event.kind(),
                    JobEventKind::RoundCompleted | JobEventKind::ModelEvaluated
                ) {
                    bar.inc(1);
                }
                if let Some(line) = line {
                    bar.println(line);
                }
            }
            None => match (line, self.to_stderr) {
                (Some(line), true) => errln!("{line}"),
                (Some(line), false) => outln!("{line}"),
                (None, _) => {}
            },
        }
    }

    /// Clears the bar once the job has ended.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(printable("round 2: FR refused"), "round 2: FR refused");
        assert_eq!(
            printable("ok\u{1b}]52;c;ZXZpbA==\u{7}\r\n\u{9b}2J"),
            "ok\u{fffd}]52;c;ZXZpbA==\u{fffd}\u{fffd}\u{fffd}\u{fffd}2J"
        );
    }
}

//! Writing to standard output and standard error. A reader that stops reading (`treaty policy
//! matrix ... | head`) ends the command quietly, instead of the panic `println!` gives on a
//! closed pipe; any other failure to write standard output is reported and ends the command
//! with status 1. What cannot be written to standard error is dropped, never a panic.

use std::io::Write;

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

/// Writes `args` (and a newline) to standard output; exits quietly on a closed pipe.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
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
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            write_err(format_args!("error: cannot write to standard output: {e}"));
            std::process::exit(1);
        }
    }
}

/// Prints a job's event as an operator follows it: routine arrivals of results are left out;
/// refusals, rejections, exclusions and the rounds' progress are shown.
pub fn print_event(event: &treaty_proto::v1::JobEvent) {
    if event.kind() == treaty_proto::v1::JobEventKind::ResultAccepted {
        return;
    }
    if event.round > 0 {
        outln!("    [round {:>2}] {}", event.round, event.message);
    } else {
        outln!("    {}", event.message);
    }
}

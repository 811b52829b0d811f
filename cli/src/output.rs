//! Writing to stdout the way Unix tools do: a reader that goes away (`berth ps | head`)
//! ends the CLI quietly with 141 (128 + SIGPIPE), instead of the panic `println!` gives.
//!
//! SIGPIPE itself stays ignored: the NATS connection writes with `writev`, which would
//! raise it on a reset socket and kill a CLI that async-nats would have reconnected.

use std::io::{self, Write};

/// The exit code of a process ended by SIGPIPE, as shells report it.
pub const CLOSED_PIPE_EXIT: i32 = 141;

/// Writes formatted text to stdout; see [`handle_stdout_error`] for what a failure does.
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(err) = out.write_fmt(args) {
        handle_stdout_error(&err);
    }
}

/// Writes raw bytes to stdout and flushes them (container output, logs).
pub fn write_bytes(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(err) = out.write_all(bytes).and_then(|()| out.flush()) {
        handle_stdout_error(&err);
    }
}

/// A closed stdout ends the process with 141 and no message; any other write error
/// (a full disk behind a redirect) is reported and ends it with 125, since output the
/// user asked for was lost.
pub fn handle_stdout_error(err: &io::Error) -> ! {
    if err.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_PIPE_EXIT);
    }
    eprintln!("berth: cannot write to stdout: {err}");
    std::process::exit(i32::from(crate::exit::BERTH_ERROR));
}

/// `println!` through [`write_fmt`].
macro_rules! outln {
    () => { $crate::output::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`write_fmt`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!($($arg)*)) };
}

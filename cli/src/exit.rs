//! Exit codes and the one-line error every failure prints (Docker's conventions).

use std::process::ExitCode;

/// berth itself failed (Docker's daemon-error code): bus unreachable, service error.
pub const BERTH_ERROR: u8 = 125;

/// A failed command: what to print and which code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A berth error (exit 125).
    pub fn berth(message: impl Into<String>) -> Self {
        Failure {
            code: BERTH_ERROR,
            message: message.into(),
        }
    }
}

/// Prints `berth: <message>` on stderr and returns the exit code.
pub fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("berth: {message}");
    ExitCode::from(code)
}

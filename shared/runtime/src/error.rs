//! One error type for the runtime; every variant says which container, path or resource.

use std::path::PathBuf;

/// Result alias used across the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the isolation runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    /// A system call failed.
    #[error("{context}: {cause}")]
    Sys {
        context: String,
        cause: nix::errno::Errno,
    },
    /// The spec (config.json or process.json) is invalid or unsupported.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// No container with that id under the state root.
    #[error("container does not exist: {id}")]
    NotFound { id: String },
    /// A container with that id already exists.
    #[error("container with id exists: {id}")]
    Exists { id: String },
    /// The operation does not fit the container's current status (runc's wording).
    #[error("{message}")]
    InvalidState {
        id: String,
        status: String,
        message: String,
    },
    /// The container's init reported a failure while setting the container up.
    #[error("container {id}: init failed: {message}")]
    Init { id: String, message: String },
    /// A cgroup operation failed.
    #[error("cgroup {path}: {message}")]
    Cgroup { path: String, message: String },
    /// The seccomp profile could not be compiled or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A hook exited non-zero or timed out.
    #[error("{kind} hook {path}: {message}")]
    Hook {
        kind: String,
        path: PathBuf,
        message: String,
    },
    /// An rlimit asks for more than this host allows.
    #[error("{0}")]
    Rlimit(String),
    /// Reading or writing JSON (spec, state, init protocol) failed.
    #[error("{context}: {cause}")]
    Json {
        context: String,
        cause: serde_json::Error,
    },
}

/// Attach context to `io::Result` and `nix::Result`.
pub trait Context<T> {
    /// Wrap the error with a description of what was being done (computed lazily).
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|cause| Error::Io {
            context: f(),
            cause,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::errno::Errno> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|cause| Error::Sys {
            context: f(),
            cause,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, serde_json::Error> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|cause| Error::Json {
            context: f(),
            cause,
        })
    }
}

impl Error {
    /// The errno behind this error, if it came from a system call.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Sys { cause, .. } => Some(*cause),
            Error::Io { cause, .. } => cause.raw_os_error().map(nix::errno::Errno::from_raw),
            _ => None,
        }
    }
}

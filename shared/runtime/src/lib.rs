//! Isolation runtime: turns an OCI runtime spec and a root filesystem into an isolated process.
//!
//! The executor uses [`Container`] in-process; the `berth-runtime` binary exposes the same
//! library with runc's command line. Every binary that creates containers must call
//! [`init_if_requested`] first thing in `main`: the container's init is a sealed memfd copy
//! of the calling executable re-executed in "init mode" (see [`init`]).

pub mod caps;
pub mod cgroups;
pub mod container;
pub mod error;
pub mod hooks;
pub mod init;
pub mod mounts;
pub mod path;
pub mod rlimits;
pub mod seccomp;
pub mod spec;
pub mod sys;

pub use cgroups::CgroupStats;
pub use container::{Container, ContainerStatus, CreateOptions, ExitInfo, Stdio};
pub use error::{Error, Result};
pub use init::init_if_requested;
pub use spec::{default_spec, DefaultSpecOptions};

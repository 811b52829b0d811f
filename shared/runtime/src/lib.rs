//! Isolation runtime: turns an OCI runtime spec and a root filesystem into an isolated,
//! limited process. The executor uses [`Container`] in-process; the `berth-runtime`
//! binary exposes the same library with runc's command line.
//!
//! # Using it from a service
//!
//! ```no_run
//! use berth_runtime::{default_spec, Container, CreateOptions, DefaultSpecOptions, Stdio};
//! # fn main() -> berth_runtime::Result<()> {
//! berth_runtime::init_if_requested(); // first line of main(): the container init re-execs us
//! let mut o = DefaultSpecOptions::new(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]);
//! o.memory = Some(256 << 20);
//! o.cpus = Some(0.5);
//! o.pids_limit = Some(512);
//! let spec = default_spec(&o)?; // Docker-equivalent isolation
//! let mut opts = CreateOptions::new("c1", "/var/lib/berth/containers/c1", "/run/berth/runtime");
//! opts.spec = Some(spec); // or None: read <bundle>/config.json
//! opts.stdio = Stdio::default(); // or pipes/files for stdin/stdout/stderr
//! let mut c = Container::create(opts)?; // namespaces, cgroup, rootfs; waits for start
//! c.start()?; // execs the process; returns once it runs (or its exec failed)
//! let stats = c.stats(); // cpu_usage_ns, memory_usage/max/limit, pids_current, oom_kills
//! let exit = c.wait()?; // code (128+signal if killed), signal, oom_killed
//! c.delete(false)?; // removes the cgroup and state, runs poststop hooks
//! # let _ = (stats, exit); Ok(()) }
//! ```
//!
//! Also: [`Container::load`] / [`Container::list`] (state written by any process),
//! [`Container::state`] (runtime-spec state JSON), [`Container::kill`],
//! [`Container::exec`] + [`container::wait_pid`], [`Container::pids`],
//! [`Container::take_console`] for `process.terminal`.
//!
//! The init is a sealed memfd copy of the *calling* executable run in "init mode"
//! ([`init`]): a binary that creates containers must call [`init_if_requested`] first
//! thing in `main`, or set [`CreateOptions::init_binary`] to the `berth-runtime` binary.
//! The process that calls `create` is the container process' parent (it alone gets exact
//! exit codes from `wait`).

pub mod bpf;
pub mod caps;
pub mod cgroups;
pub mod container;
pub mod devfilter;
pub mod error;
pub mod hooks;
pub mod init;
pub mod mounts;
pub mod path;
pub mod rlimits;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod sys;

pub use cgroups::CgroupStats;
pub use container::{Container, ContainerStatus, CreateOptions, ExitInfo, Stdio};
pub use error::{Error, Result};
pub use init::init_if_requested;
pub use spawn::forget_sealed_inits;
pub use spec::{default_spec, DefaultSpecOptions};

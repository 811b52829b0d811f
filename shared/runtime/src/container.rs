//! The library API: create, start, state, kill, wait, exec, stats, delete.
//!
//! State lives under `<state_root>/<id>/`: `state.json` (ours), `config.json` (the spec,
//! for hooks and delete), `exec.fifo` (exists while created-but-not-started, as in runc).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroups::{cgroup_path, CgroupManager, CgroupStats};
use crate::error::{Context, Error, Result};
use crate::init::{recv_msg, recv_msg_fd, InitConfig, Msg};
pub use crate::spawn::sealed_init_path;
use crate::spawn::{handshake, host_root_ids, spawn_init};

/// Standard streams for the container process; `None` inherits the caller's.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Everything `Container::create` needs.
#[derive(Debug)]
pub struct CreateOptions {
    /// Container id (unique under `state_root`).
    pub id: String,
    /// Bundle directory: relative rootfs and mount sources are resolved against it.
    pub bundle: PathBuf,
    /// The spec; `None` reads `<bundle>/config.json`.
    pub spec: Option<Spec>,
    /// Where container state directories live (runc's `--root`).
    pub state_root: PathBuf,
    /// Streams of the container process.
    pub stdio: Stdio,
    /// Binary to re-execute as the container init (must call [`crate::init_if_requested`]
    /// first thing in `main`); default: the current executable.
    pub init_binary: Option<PathBuf>,
}

impl CreateOptions {
    /// Options for a bundle with its own config.json.
    pub fn new(
        id: impl Into<String>,
        bundle: impl Into<PathBuf>,
        state_root: impl Into<PathBuf>,
    ) -> Self {
        CreateOptions {
            id: id.into(),
            bundle: bundle.into(),
            spec: None,
            state_root: state_root.into(),
            stdio: Stdio::default(),
            init_binary: None,
        }
    }
}

/// Container status as in the runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    /// Running, but frozen by `pause` (cgroup freezer).
    Paused,
    Stopped,
}

impl std::fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerStatus::Creating => "creating",
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
        })
    }
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code (128+signal when killed by a signal, as shells report it); None if unknown
    /// because this process is not the container's parent.
    pub code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The cgroup saw an OOM kill.
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    id: String,
    pid: i32,
    /// Start time (clock ticks since boot) of `pid`, to detect pid reuse.
    start_time: u64,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    cgroup_path: String,
    owner: String,
}

/// A container on this host.
pub struct Container {
    state: Persisted,
    dir: PathBuf,
    spec: Spec,
    /// Init socket, held by the process that created the container: `start` waits on it
    /// for the exec to happen (EOF) or fail (an error message).
    sock: Option<OwnedFd>,
    /// This process is the parent of `pid` and may wait(2) for it.
    is_parent: bool,
    exit: Option<ExitInfo>,
    /// pty master when `process.terminal` is set (only in the creating process).
    console: Option<OwnedFd>,
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 1024
        || id == "."
        || id == ".."
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
    {
        return Err(Error::InvalidSpec(format!(
            "invalid container id format: {id:?}"
        )));
    }
    Ok(())
}

/// Start time (field 22 of /proc/<pid>/stat) and state letter of a process.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((
        fields.get(19)?.parse().ok()?,
        fields.first()?.chars().next()?,
    ))
}

/// Current UTC time in RFC 3339 with nanoseconds (state "created", log lines).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

impl Container {
    /// Create the container: namespaces, cgroup, rootfs; the process waits for [`start`](Self::start).
    pub fn create(opts: CreateOptions) -> Result<Container> {
        Self::create_preserving_fds(opts, 0)
    }

    /// [`create`](Self::create) where the container process also inherits this process'
    /// fds 3..3+`preserve_fds` (runc's `--preserve-fds`; socket activation's LISTEN_FDS).
    pub fn create_preserving_fds(opts: CreateOptions, preserve_fds: u32) -> Result<Container> {
        validate_id(&opts.id)?;
        let bundle = std::fs::canonicalize(&opts.bundle)
            .ctx(|| format!("bundle {}", opts.bundle.display()))?;
        let spec = match opts.spec {
            Some(s) => s,
            None => {
                let p = bundle.join("config.json");
                let f = std::fs::File::open(&p).ctx(|| format!("open {}", p.display()))?;
                serde_json::from_reader(std::io::BufReader::new(f))
                    .ctx(|| format!("parse {}", p.display()))?
            }
        };
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::InvalidSpec("root is missing".into()))?;
        let rootfs = bundle.join(root.path());
        let rootfs =
            std::fs::canonicalize(&rootfs).ctx(|| format!("rootfs {}", rootfs.display()))?;
        std::fs::create_dir_all(&opts.state_root)
            .ctx(|| format!("create state root {}", opts.state_root.display()))?;
        let dir = opts.state_root.join(&opts.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists { id: opts.id })
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
        }
        let result = (|| {
            let fifo = dir.join("exec.fifo");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .ctx(|| format!("mkfifo {}", fifo.display()))?;
            // The init opens it for writing after switching to process.user (so that a
            // failing setuid/capset fails `create`): like runc, let any user write it.
            std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
                .ctx(|| format!("chmod {}", fifo.display()))?;
            // With a user namespace the init is "root" only for mapped ids: hand it the fifo.
            if let Some((uid, gid)) = host_root_ids(&spec) {
                nix::unistd::chown(&fifo, Some(uid.into()), Some(gid.into()))
                    .ctx(|| format!("chown {}", fifo.display()))?;
            }
            let cg_path = cgroup_path(
                spec.linux()
                    .as_ref()
                    .and_then(|l| l.cgroups_path().as_deref()),
                &opts.id,
            );
            let resources = crate::cgroups::resources_for(&spec);
            let cg = CgroupManager::create(&cg_path, resources.as_ref())?;
            tracing::debug!(id = %opts.id, cgroup = %cg_path, "cgroup created");
            let mut c = Container {
                state: Persisted {
                    id: opts.id.clone(),
                    pid: 0,
                    start_time: 0,
                    bundle: bundle.clone(),
                    rootfs: rootfs.clone(),
                    created: now_rfc3339(),
                    cgroup_path: cg_path,
                    owner: nix::unistd::User::from_uid(nix::unistd::geteuid())
                        .ok()
                        .flatten()
                        .map(|u| u.name)
                        .unwrap_or_else(|| nix::unistd::geteuid().to_string()),
                },
                dir: dir.clone(),
                spec: spec.clone(),
                sock: None,
                is_parent: true,
                exit: None,
                console: None,
            };
            let setup = (|| {
                let mut sp = spawn_init(
                    opts.init_binary.as_deref(),
                    &bundle,
                    opts.stdio,
                    preserve_fds,
                )?;
                tracing::debug!(id = %opts.id, "init spawned");
                if let Err(e) = cg.add_pid(sp.stage1.id() as i32) {
                    let _ = sp.stage1.kill();
                    let _ = sp.stage1.wait();
                    return Err(e);
                }
                let cfg = InitConfig {
                    id: opts.id.clone(),
                    spec: spec.clone(),
                    process: process.clone(),
                    rootfs: rootfs.clone(),
                    fifo: Some(fifo.clone()),
                    join_pid: None,
                    state_json: c.state_json_with(ContainerStatus::Creating, 0),
                };
                let mut console = None;
                let pid = handshake(&opts.id, &mut sp, &spec, cfg, true, &mut console, |p| {
                    c.state_json_with(ContainerStatus::Creating, p)
                })?;
                tracing::debug!(id = %opts.id, pid, "container created");
                Ok((pid, sp.sock, console))
            })();
            let (pid, sock, console) = match setup {
                Ok(x) => x,
                Err(e) => {
                    let _ = cg.destroy();
                    return Err(e);
                }
            };
            // From outside: inside a user namespace /proc/self/oom_score_adj is not writable.
            if let Some(adj) = process.oom_score_adj() {
                if let Err(e) =
                    std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(pid), None);
                    let _ = cg.destroy();
                    return Err(e).ctx(|| format!("set oom_score_adj {adj} of {}", opts.id));
                }
            }
            c.state.pid = pid;
            c.state.start_time = proc_stat(pid).map(|s| s.0).unwrap_or(0);
            c.sock = Some(sock);
            c.console = console;
            let saved = spec
                .save(dir.join("config.json"))
                .map_err(|e| Error::Io {
                    context: format!("save config of {}", opts.id),
                    cause: std::io::Error::other(e.to_string()),
                })
                .and_then(|()| c.persist());
            if let Err(e) = saved {
                // Do not leave a waiting init and its cgroup behind a failed create.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid), None);
                let _ = cg.destroy();
                return Err(e);
            }
            Ok(c)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Load a container created by this or another process.
    pub fn load(state_root: &Path, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = state_root.join(id);
        let p = dir.join("state.json");
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { id: id.into() })
            }
            Err(e) => return Err(e).ctx(|| format!("read {}", p.display())),
        };
        let state: Persisted =
            serde_json::from_slice(&text).ctx(|| format!("parse {}", p.display()))?;
        let spec = Spec::load(dir.join("config.json"))
            .map_err(|e| Error::InvalidSpec(format!("load config of {id}: {e}")))?;
        Ok(Container {
            state,
            dir,
            spec,
            sock: None,
            is_parent: false,
            exit: None,
            console: None,
        })
    }

    /// [`load`](Self::load) by the container process' parent that did not keep the handle
    /// `create` gave it: a creating process that re-executed itself (execve keeps its
    /// children), so that [`wait`](Self::wait) reaps the process and has its exact code.
    pub fn load_as_parent(state_root: &Path, id: &str) -> Result<Container> {
        let mut container = Self::load(state_root, id)?;
        container.is_parent = true;
        Ok(container)
    }

    /// Ids of all containers under `state_root`.
    pub fn list(state_root: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(state_root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx(|| format!("read {}", state_root.display())),
        };
        for e in rd.flatten() {
            if e.path().join("state.json").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn persist(&self) -> Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        let data = serde_json::to_vec(&self.state).ctx(|| "encode state".into())?;
        std::fs::write(&tmp, data).ctx(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("state.json"))
            .ctx(|| format!("rename state of {}", self.state.id))
    }

    /// Container id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Host pid of the container process (0 if never started).
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// The spec the container was created with.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.state.bundle
    }

    /// Creation time (RFC 3339).
    pub fn created(&self) -> &str {
        &self.state.created
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> CgroupManager {
        CgroupManager::load(&self.state.cgroup_path)
    }

    fn alive(&self) -> bool {
        if self.state.pid <= 0 || self.exit.is_some() {
            return false;
        }
        match proc_stat(self.state.pid) {
            Some((start, st)) => start == self.state.start_time && st != 'Z' && st != 'X',
            None => false,
        }
    }

    /// Current status.
    pub fn status(&self) -> ContainerStatus {
        if !self.alive() {
            ContainerStatus::Stopped
        } else if self.dir.join("exec.fifo").exists() {
            ContainerStatus::Created
        } else if self.frozen() {
            ContainerStatus::Paused
        } else {
            ContainerStatus::Running
        }
    }

    /// The freezer file of the container's cgroup and the values that freeze/thaw it
    /// (v1 `freezer.state`, v2 `cgroup.freeze`).
    fn freezer(&self) -> Option<(PathBuf, &'static str, &'static str)> {
        let cg = self.cgroup();
        if cg.v2() {
            let d = cg.dir(cgroups_rs::fs::Controllers::Freezer)?;
            Some((d.join("cgroup.freeze"), "1", "0"))
        } else {
            let d = cg.dir(cgroups_rs::fs::Controllers::Freezer)?;
            Some((d.join("freezer.state"), "FROZEN", "THAWED"))
        }
    }

    fn frozen(&self) -> bool {
        let Some((file, frozen, _)) = self.freezer() else {
            return false;
        };
        // v1 reads FREEZING while in progress: not yet paused, as runc reports it.
        std::fs::read_to_string(file).is_ok_and(|s| s.trim() == frozen)
    }

    fn set_frozen(&self, freeze: bool) -> Result<()> {
        let (file, frozen, thawed) = self.freezer().ok_or_else(|| Error::Cgroup {
            path: self.state.cgroup_path.clone(),
            message: "no freezer controller for this cgroup".into(),
        })?;
        let want = if freeze { frozen } else { thawed };
        // v1 freezing can stall on a task in an uninterruptible sleep: retry the write as
        // runc does, and give up (thawing again) rather than leave it half frozen.
        for _ in 0..1000 {
            std::fs::write(&file, want).ctx(|| format!("write {want} to {}", file.display()))?;
            let now = std::fs::read_to_string(&file).ctx(|| format!("read {}", file.display()))?;
            if now.trim() == want {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if freeze {
            let _ = std::fs::write(&file, thawed);
        }
        Err(Error::Cgroup {
            path: self.state.cgroup_path.clone(),
            message: format!("{} did not become {want}", file.display()),
        })
    }

    /// Freeze every process of the container (runc `pause`).
    pub fn pause(&self) -> Result<()> {
        match self.status() {
            ContainerStatus::Running => self.set_frozen(true),
            st => Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: "container not running".into(),
            }),
        }
    }

    /// Thaw a paused container (runc `resume`).
    pub fn resume(&self) -> Result<()> {
        match self.status() {
            ContainerStatus::Paused => self.set_frozen(false),
            st => Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: "container not paused".into(),
            }),
        }
    }

    /// Change the cgroup limits of a live container (runc `update`): only the fields set in
    /// `resources` change. Device rules are not updated (as with runc).
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let st = self.status();
        if st == ContainerStatus::Stopped {
            return Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: "container not running".into(),
            });
        }
        let mut r = resources.clone();
        r.set_devices(None);
        CgroupManager::create(&self.state.cgroup_path, Some(&r)).map(drop)
    }

    fn state_json_with(&self, status: ContainerStatus, pid: i32) -> String {
        let mut v = serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.state.id,
            "status": status.to_string(),
            "bundle": self.state.bundle,
            "annotations": self.spec.annotations().clone().unwrap_or_default(),
        });
        if pid > 0 {
            v["pid"] = serde_json::json!(pid);
        }
        v.to_string()
    }

    /// The runtime-spec state document.
    pub fn state(&self) -> serde_json::Value {
        let st = self.status();
        let pid = if st == ContainerStatus::Stopped {
            0
        } else {
            self.state.pid
        };
        let mut v: serde_json::Value =
            serde_json::from_str(&self.state_json_with(st, pid)).unwrap_or_default();
        v["created"] = serde_json::json!(self.state.created);
        v["rootfs"] = serde_json::json!(self.state.rootfs);
        v["owner"] = serde_json::json!(self.state.owner);
        if pid == 0 {
            v["pid"] = serde_json::json!(0);
        }
        v
    }

    /// Let the created process exec the user's program.
    pub fn start(&mut self) -> Result<()> {
        let st = self.status();
        if st != ContainerStatus::Created {
            return Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: if st == ContainerStatus::Running {
                    "cannot start an already running container".into()
                } else {
                    format!("cannot start a container that is {st}")
                },
            });
        }
        let fifo = self.dir.join("exec.fifo");
        let mut f = std::fs::File::open(&fifo).ctx(|| format!("open {}", fifo.display()))?;
        let mut b = [0u8; 1];
        let n = f.read(&mut b).ctx(|| "read exec fifo".into())?;
        let _ = std::fs::remove_file(&fifo);
        if n != 1 {
            return Err(Error::Init {
                id: self.state.id.clone(),
                message: "init exited before start".into(),
            });
        }
        if let Some(sock) = self.sock.take() {
            // EOF means the exec happened (the socket is close-on-exec); a message is a failure.
            if let Some(Msg::Error(message)) = recv_msg(&sock)? {
                return Err(Error::Init {
                    id: self.state.id.clone(),
                    message,
                });
            }
        }
        if let Some(h) = self
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().clone())
        {
            crate::hooks::run(
                &h,
                &self.state_json_with(ContainerStatus::Running, self.state.pid),
                "poststart",
            )?;
        }
        Ok(())
    }

    /// Send a signal to the container process (or, with `all`, every process in its cgroup).
    pub fn kill(&self, sig: Signal, all: bool) -> Result<()> {
        self.signal(sig as i32, all)
    }

    /// [`kill`](Self::kill) with a raw signal number: real-time signals have no [`Signal`]
    /// variant, and engines pass numbers (`kill ID 34`).
    pub fn signal(&self, sig: i32, all: bool) -> Result<()> {
        let st = self.status();
        let cg = self.cgroup();
        // `kill --all` after the init exited still reaches what is left in the cgroup (a
        // stop sequence's final SIGKILL), as runc does.
        let leftovers = all && !cg.pids().is_empty();
        if st == ContainerStatus::Stopped && !leftovers {
            return Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: "container not running".into(),
            });
        }
        if all {
            for p in cg.pids() {
                unsafe { libc::kill(p, sig) };
            }
        } else {
            let r = unsafe { libc::kill(self.state.pid, sig) };
            nix::errno::Errno::result(r)
                .ctx(|| format!("kill {} with signal {sig}", self.state.id))?;
        }
        // A frozen process acts on SIGKILL only once thawed.
        if sig == libc::SIGKILL && st == ContainerStatus::Paused {
            self.set_frozen(false)?;
        }
        Ok(())
    }

    /// Wait for the container process to exit. Exact codes need this process to be its
    /// parent (it is for the process that called `create`); otherwise polls until it is gone.
    pub fn wait(&mut self) -> Result<ExitInfo> {
        if let Some(e) = self.exit {
            return Ok(e);
        }
        let pid = Pid::from_raw(self.state.pid);
        let (code, signal) = if self.is_parent {
            loop {
                match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, c)) => break (Some(c), None),
                    Ok(WaitStatus::Signaled(_, s, _)) => {
                        break (Some(128 + s as i32), Some(s as i32))
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).ctx(|| format!("wait for {}", self.state.id)),
                }
            }
        } else {
            while self.alive() {
                std::thread::sleep(Duration::from_millis(10));
            }
            (None, None)
        };
        let e = ExitInfo {
            code,
            signal,
            oom_killed: self.cgroup().oom_kills() > 0,
        };
        self.exit = Some(e);
        Ok(e)
    }

    /// Non-blocking [`wait`](Self::wait): `None` while still running.
    pub fn try_wait(&mut self) -> Result<Option<ExitInfo>> {
        if self.exit.is_some() || !self.is_parent {
            return if self.alive() {
                Ok(None)
            } else {
                self.wait().map(Some)
            };
        }
        match waitpid(Pid::from_raw(self.state.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(WaitStatus::Exited(_, c)) => {
                let e = ExitInfo {
                    code: Some(c),
                    signal: None,
                    oom_killed: self.cgroup().oom_kills() > 0,
                };
                self.exit = Some(e);
                Ok(Some(e))
            }
            Ok(WaitStatus::Signaled(_, s, _)) => {
                let e = ExitInfo {
                    code: Some(128 + s as i32),
                    signal: Some(s as i32),
                    oom_killed: self.cgroup().oom_kills() > 0,
                };
                self.exit = Some(e);
                Ok(Some(e))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e).ctx(|| format!("wait for {}", self.state.id)),
        }
    }

    /// A pidfd for the container process: it becomes readable when the process exits, so
    /// an async caller can await exit (e.g. tokio `AsyncFd`) and then call [`wait`](Self::wait)
    /// without blocking a thread.
    pub fn pidfd(&self) -> Result<OwnedFd> {
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.state.pid, 0) };
        let fd =
            nix::errno::Errno::result(fd).ctx(|| format!("pidfd_open for {}", self.state.id))?;
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
    }

    /// Usage counters of the container's cgroup (cpu, memory, pids, OOM kills).
    pub fn stats(&self) -> CgroupStats {
        self.cgroup().stats()
    }

    /// Host pids of all processes in the container.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup().pids()
    }

    /// The pty master of a `process.terminal` container (once; the caller owns it).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Run another process in the running container's namespaces and cgroup. This process
    /// is its parent, so [`wait_pid`] gives its exit status.
    pub fn exec(
        &self,
        process: &Process,
        stdio: Stdio,
        init_binary: Option<&Path>,
    ) -> Result<ExecProcess> {
        let st = self.status();
        if st != ContainerStatus::Running && st != ContainerStatus::Created {
            return Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: format!("cannot exec in a {st} container"),
            });
        }
        let mut sp = spawn_init(init_binary, Path::new("/"), stdio, 0)?;
        if let Err(e) = self.cgroup().add_pid(sp.stage1.id() as i32) {
            let _ = sp.stage1.kill();
            let _ = sp.stage1.wait();
            return Err(e);
        }
        let cfg = InitConfig {
            id: self.state.id.clone(),
            spec: self.spec.clone(),
            process: process.clone(),
            rootfs: PathBuf::from("/"),
            fifo: None,
            join_pid: Some(self.state.pid),
            state_json: String::new(),
        };
        let mut console = None;
        let pid = handshake(
            &self.state.id,
            &mut sp,
            &self.spec,
            cfg,
            false,
            &mut console,
            |_| String::new(),
        )?;
        // EOF: exec'd. An error message: setup failed after the clone.
        loop {
            match recv_msg_fd(&sp.sock)? {
                (Some(Msg::Console), fd) => console = fd,
                (Some(Msg::Error(message)), _) => {
                    let _ = waitpid(Pid::from_raw(pid), None);
                    return Err(Error::Init {
                        id: self.state.id.clone(),
                        message,
                    });
                }
                (Some(other), _) => {
                    return Err(Error::Init {
                        id: self.state.id.clone(),
                        message: format!("unexpected message {other:?}"),
                    })
                }
                (None, _) => break,
            }
        }
        Ok(ExecProcess { pid, console })
    }

    /// Remove the container: kill what is left (only if stopped or created, unless `force`),
    /// remove the cgroup and state, run poststop hooks.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let st = self.status();
        if matches!(st, ContainerStatus::Running | ContainerStatus::Paused) && !force {
            return Err(Error::InvalidState {
                id: self.state.id.clone(),
                status: st.to_string(),
                message: format!(
                    "cannot delete container {} that is not stopped: {st}",
                    self.state.id
                ),
            });
        }
        if st == ContainerStatus::Paused {
            // Thawed below, after the kill: a frozen process dies only once thawed, and
            // thawing first would let it run again for a moment.
            let _ = nix::sys::signal::kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            let _ = self.set_frozen(false);
        }
        if st != ContainerStatus::Stopped {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            if self.is_parent {
                let _ = self.wait();
            }
        }
        self.cgroup().destroy()?;
        std::fs::remove_dir_all(&self.dir).ctx(|| format!("remove {}", self.dir.display()))?;
        if let Some(h) = self
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().clone())
        {
            // The spec says poststop failures are warnings, not errors.
            if let Err(e) = crate::hooks::run(
                &h,
                &self.state_json_with(ContainerStatus::Stopped, 0),
                "poststop",
            ) {
                tracing::warn!(id = %self.state.id, error = %e, "poststop hook failed");
            }
        }
        Ok(())
    }
}

/// A process started by [`Container::exec`].
#[derive(Debug)]
pub struct ExecProcess {
    /// Host pid.
    pub pid: i32,
    /// pty master when the process asked for a terminal.
    pub console: Option<OwnedFd>,
}

/// Wait for a process started by [`Container::exec`]; returns its exit code (128+signal).
pub fn wait_pid(pid: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| format!("wait for pid {pid}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Container>();
        send::<CreateOptions>();
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("abc-1_2.x").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn missing_container_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Container::load(dir.path(), "nope"),
            Err(Error::NotFound { .. })
        ));
        assert!(Container::list(dir.path()).expect("list").is_empty());
    }
}

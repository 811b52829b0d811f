//! `berth-runtime`: the berth isolation library behind runc's command line.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use berth_runtime::container::wait_pid;
use berth_runtime::{Container, CreateOptions, Stdio};
use clap::{Parser, Subcommand};
use nix::sys::signal::Signal;
use oci_spec::runtime::Process;

#[derive(Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// Root directory for storage of container state.
    #[arg(long, global = true, default_value = "/run/berth-runtime")]
    root: PathBuf,
    /// Log file (default stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; berth-runtime manages cgroupfs directly.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (go-runc passes `--rootless=<bool>`).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    /// Accepted for runc compatibility (checkpoint/restore is not supported).
    #[arg(long, global = true, hide = true)]
    criu: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    id: String,
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// File to write the container process' pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket for the pty master (only for terminal: true, unsupported yet).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Accepted for runc compatibility (only 0 is supported).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
}

#[derive(clap::Args)]
struct UpdateArgs {
    id: String,
    /// LinuxResources JSON file ("-": stdin); flags below override its fields.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a k/m/g suffix).
    #[arg(short, long)]
    memory: Option<String>,
    /// Memory+swap limit (-1: unlimited).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Maximum number of pids (-1: unlimited).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Output the state of a container.
    State { id: String },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change the cgroup limits of a running container.
    Update(UpdateArgs),
    /// Print the container's resource usage as JSON events (runc's format).
    Events {
        id: String,
        /// One stats event, then exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats events (e.g. 5s, 500ms).
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Send a signal (default SIGTERM) to the container's init process.
    Kill {
        id: String,
        signal: Option<String>,
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Create and run a container.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Detach from the container's process.
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Execute a new process inside the container.
    Exec {
        id: String,
        /// process.json with the process to run.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Extra environment (KEY=value).
        #[arg(short, long)]
        env: Vec<String>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// uid[:gid].
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        /// Unix socket to send the pty master to (with a terminal).
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Add a capability to the process' bounding, effective, permitted sets.
        #[arg(short, long)]
        cap: Vec<String>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Additional gids (runc's -g).
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Accepted for runc compatibility (no AppArmor/SELinux support).
        #[arg(long)]
        apparmor: Option<String>,
        #[arg(long = "process-label")]
        process_label: Option<String>,
        /// Accepted for runc compatibility (only 0 is supported).
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Display the processes running inside a container.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the enabled features.
    Features,
    /// Write a default (Docker-equivalent) config.json into the bundle.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
}

fn main() {
    // Must come first: in init mode this process is a container's init.
    berth_runtime::init_if_requested();
    let cli = Cli::parse();
    init_tracing(&cli);
    let code = match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            log_error(&cli, &format!("{e:#}"));
            1
        }
    };
    std::process::exit(code);
}

/// Library warnings (e.g. a failed poststop hook) go to --log (or stderr) as runc's
/// records in --log-format, so that an engine parsing the log reads them too.
fn init_tracing(cli: &Cli) {
    let level = if cli.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .event_format(RuncFormat {
            json: cli.log_format == "json",
        });
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Formats tracing events as runc (logrus) log records.
struct RuncFormat {
    json: bool,
}

/// The event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct MsgVisitor {
    msg: String,
    fields: String,
}

impl tracing::field::Visit for MsgVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.fields
                .push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.fields.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for RuncFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut v = MsgVisitor::default();
        event.record(&mut v);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        let format = if self.json { "json" } else { "text" };
        let msg = format!("{}{}", v.msg, v.fields);
        writer.write_str(&log_line(
            format,
            level,
            &msg,
            &berth_runtime::container::now_rfc3339(),
        ))
    }
}

/// One line of runc's log format: logrus JSON (`{"level","msg","time"}`, which conmon and
/// containerd's shim parse to show the error) or logrus text. Newlines in `msg` (a hook's
/// stderr, say) are flattened so that every record stays one line.
fn log_line(format: &str, level: &str, msg: &str, time: &str) -> String {
    let msg = one_line(msg);
    if format == "json" {
        format!(
            "{}\n",
            serde_json::json!({"level": level, "msg": msg, "time": time})
        )
    } else {
        format!("time=\"{time}\" level={level} msg={msg:?}\n")
    }
}

fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A fatal error: the log record goes to --log (in --log-format), and the bare message is
/// one line on stderr, as runc does, so a caller that only captures stderr sees why.
fn log_error(cli: &Cli, msg: &str) {
    if let Some(p) = &cli.log {
        let line = log_line(
            &cli.log_format,
            "error",
            msg,
            &berth_runtime::container::now_rfc3339(),
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    let _ = std::io::stderr().write_all(format!("{}\n", one_line(msg)).as_bytes());
}

/// A signal as runc takes it: a number (engines pass numbers, real-time ones too), or a
/// name with or without `SIG`, any case (`TERM`, `SIGTERM`, `term`, `RTMIN+2`).
fn parse_signal(s: &str) -> Result<i32> {
    let (min, max) = (1, libc::SIGRTMAX());
    if let Ok(n) = s.parse::<i32>() {
        if (min..=max).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal: {s}");
    }
    let up = s.to_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, off: &str| -> Option<i32> {
        let n = if off.is_empty() {
            base
        } else {
            base.checked_add(off.parse::<i32>().ok()?)?
        };
        (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .contains(&n)
            .then_some(n)
    };
    if let Some(off) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), off).ok_or_else(|| anyhow!("invalid signal: {s}"));
    }
    if let Some(off) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), off).ok_or_else(|| anyhow!("invalid signal: {s}"));
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| anyhow!("invalid signal: {s}"))
}

/// A size as runc's flags take it: bytes, or with a b/k/m/g/t suffix (binary units).
fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1i64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("invalid size {s:?}: want bytes or a number with k/m/g/t"))?;
    if !(n.is_finite() && n >= 0.0) {
        bail!("invalid size {s:?}");
    }
    Ok((n * mult as f64) as i64)
}

/// A duration such as `5s`, `500ms`, `1m` (runc's --interval).
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}: unit must be ms, s, m or h"),
    };
    if !(secs.is_finite() && secs > 0.0) {
        bail!("invalid duration {s:?}");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The resources `update` applies: the --resources JSON, then the flags on top.
fn update_resources(a: &UpdateArgs) -> Result<oci_spec::runtime::LinuxResources> {
    use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
    let mut r: LinuxResources = match &a.resources {
        Some(p) => {
            let data = if p.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                    .context("read resources from stdin")?;
                v
            } else {
                std::fs::read(p).with_context(|| format!("read {}", p.display()))?
            };
            serde_json::from_slice(&data)
                .with_context(|| format!("parse resources {}", p.display()))?
        }
        None => LinuxResources::default(),
    };
    let mut mem = r.memory().unwrap_or_default();
    if let Some(m) = &a.memory {
        mem.set_limit(Some(parse_size(m)?));
    }
    if let Some(m) = &a.memory_swap {
        mem.set_swap(Some(parse_size(m)?));
    }
    if let Some(m) = &a.memory_reservation {
        mem.set_reservation(Some(parse_size(m)?));
    }
    if mem != LinuxMemory::default() {
        r.set_memory(Some(mem));
    }
    let mut cpu = r.cpu().clone().unwrap_or_default();
    if let Some(v) = a.cpu_shares {
        cpu.set_shares(Some(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.set_quota(Some(v));
    }
    if let Some(v) = a.cpu_period {
        cpu.set_period(Some(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
    }
    if cpu != LinuxCpu::default() {
        r.set_cpu(Some(cpu));
    }
    if let Some(v) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(v);
        r.set_pids(Some(p));
    }
    if let Some(w) = a.blkio_weight {
        let mut b = r.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        r.set_block_io(Some(b));
    }
    Ok(r)
}

/// runc's `events` record: `{"type":"stats","id":…,"data":{cpu,memory,pids}}`.
fn stats_event(id: &str, s: &berth_runtime::CgroupStats) -> serde_json::Value {
    serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {"usage": {"total": s.cpu_usage_ns}},
            "memory": {
                "usage": {
                    "usage": s.memory_usage,
                    "max": s.memory_max_usage,
                    "limit": s.memory_limit.unwrap_or(u64::MAX),
                },
                "raw": {"oom_kill": s.oom_kills},
            },
            "pids": {"current": s.pids_current},
        }
    })
}

/// Socket activation (as runc): when LISTEN_FDS/LISTEN_PID name this process, its fds
/// 3..3+LISTEN_FDS go to the container process, which sees LISTEN_FDS=n and LISTEN_PID=1.
fn listen_fds() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn create(cli: &Cli, a: &CreateArgs) -> Result<Container> {
    let _ = (a.no_pivot, a.no_new_keyring);
    let mut opts = CreateOptions::new(a.id.clone(), a.bundle.clone(), cli.root.clone());
    let listen = listen_fds();
    if listen > 0 {
        let p = a.bundle.join("config.json");
        let mut spec =
            oci_spec::runtime::Spec::load(&p).map_err(|e| anyhow!("load {}: {e}", p.display()))?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| anyhow!("{}: process is missing", p.display()))?;
        let mut env = process.env().clone().unwrap_or_default();
        env.push(format!("LISTEN_FDS={listen}"));
        env.push("LISTEN_PID=1".into());
        process.set_env(Some(env));
        spec.set_process(Some(process));
        opts.spec = Some(spec);
    }
    let preserve = listen
        .checked_add(a.preserve_fds)
        .ok_or_else(|| anyhow!("--preserve-fds {} is too large", a.preserve_fds))?;
    let mut c = Container::create_preserving_fds(opts, preserve)?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, c.pid())?;
    }
    if let Some(sock) = &a.console_socket {
        match c.take_console() {
            Some(master) => send_console(sock, &master)?,
            None => bail!("--console-socket given but process.terminal is false"),
        }
    }
    Ok(c)
}

/// Hand the pty master to whoever listens on `--console-socket` (runc's protocol: one
/// SCM_RIGHTS message).
fn send_console(path: &Path, master: &OwnedFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connect console socket {}", path.display()))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("send pty master over console socket")?;
    Ok(())
}

/// Attach our stdin/stdout to a pty master (run/exec with a terminal and no console
/// socket). Returns the thread copying the container's output; it ends with the pty.
fn attach_console(
    master: OwnedFd,
) -> Result<(
    std::thread::JoinHandle<()>,
    Option<nix::sys::termios::Termios>,
)> {
    use std::io::Read;
    let stdin = std::io::stdin();
    let saved = nix::sys::termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
    }
    let mut to_pty = std::fs::File::from(master.try_clone().context("dup pty master")?);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut input = std::io::stdin();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || to_pty.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut from_pty = std::fs::File::from(master);
    let out = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        // EIO once every slave fd is closed: the container side is gone.
        while let Ok(n) = from_pty.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    Ok((out, saved))
}

fn restore_terminal(saved: Option<nix::sys::termios::Termios>) {
    if let Some(t) = saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
}

fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("rename {}", p.display()))
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forward the usual termination signals to the container process, like runc run does.
fn forward_signals(pid: i32) {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for s in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        unsafe { libc::signal(s, forward as *const () as libc::sighandler_t) };
    }
}

fn run(cli: &Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Create(a) => {
            create(cli, a)?;
            Ok(0)
        }
        Cmd::Start { id } => {
            Container::load(&cli.root, id)?.start()?;
            Ok(0)
        }
        Cmd::State { id } => {
            let c = Container::load(&cli.root, id)?;
            println!("{}", serde_json::to_string_pretty(&c.state())?);
            Ok(0)
        }
        Cmd::Kill { id, signal, all } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("TERM"))?;
            Container::load(&cli.root, id)?.signal(sig, *all)?;
            Ok(0)
        }
        Cmd::Pause { id } => {
            Container::load(&cli.root, id)?.pause()?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            Container::load(&cli.root, id)?.resume()?;
            Ok(0)
        }
        Cmd::Update(a) => {
            let r = update_resources(a)?;
            Container::load(&cli.root, &a.id)?.update(&r)?;
            Ok(0)
        }
        Cmd::Events {
            id,
            stats,
            interval,
        } => {
            let every = parse_duration(interval)?;
            let c = Container::load(&cli.root, id)?;
            let mut out = std::io::stdout();
            let mut ooms = c.stats().oom_kills;
            loop {
                if c.status() == berth_runtime::ContainerStatus::Stopped {
                    if *stats {
                        bail!("container {id} is not running");
                    }
                    return Ok(0);
                }
                let s = c.stats();
                let mut lines = vec![stats_event(id, &s)];
                if s.oom_kills > ooms {
                    lines.push(serde_json::json!({"type": "oom", "id": id}));
                    ooms = s.oom_kills;
                }
                for l in lines {
                    writeln!(out, "{l}").context("write event")?;
                }
                out.flush().context("write event")?;
                if *stats {
                    return Ok(0);
                }
                std::thread::sleep(every);
            }
        }
        Cmd::Delete { id, force } => {
            match Container::load(&cli.root, id) {
                Ok(c) => c.delete(*force)?,
                Err(berth_runtime::Error::NotFound { .. }) if *force => {}
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        Cmd::Run {
            create: a,
            detach,
            keep,
        } => {
            let mut c = create(cli, a)?;
            let console = c.take_console();
            if console.is_some() && *detach {
                let _ = c.delete(true);
                bail!("cannot allocate tty if berth-runtime will detach without setting console socket");
            }
            forward_signals(c.pid());
            let attached = match console {
                Some(m) => Some(attach_console(m)?),
                None => None,
            };
            if let Err(e) = c.start() {
                let _ = c.delete(true);
                return Err(e.into());
            }
            if *detach {
                return Ok(0);
            }
            let exit = c.wait()?;
            if let Some((out, saved)) = attached {
                let _ = out.join();
                restore_terminal(saved);
            }
            if !keep {
                c.delete(true)?;
            }
            Ok(exit.code.unwrap_or(0))
        }
        Cmd::Exec {
            id,
            process,
            env,
            cwd,
            user,
            detach,
            pid_file,
            tty,
            console_socket,
            cap,
            no_new_privs,
            additional_gids,
            apparmor: _,
            process_label: _,
            preserve_fds,
            args,
        } => {
            if *preserve_fds != 0 {
                bail!("--preserve-fds is not supported");
            }
            let c = Container::load(&cli.root, id)?;
            let mut p: Process = match process {
                Some(path) => serde_json::from_slice(
                    &std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
                )
                .with_context(|| format!("parse {}", path.display()))?,
                None => {
                    if args.is_empty() {
                        bail!("exec: no command given (use --process or arguments)");
                    }
                    let mut p = c
                        .spec()
                        .process()
                        .clone()
                        .ok_or_else(|| anyhow!("container has no process"))?;
                    p.set_args(Some(args.clone()));
                    p
                }
            };
            if !env.is_empty() {
                let mut e = p.env().clone().unwrap_or_default();
                e.extend(env.iter().cloned());
                p.set_env(Some(e));
            }
            if let Some(cwd) = cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(u) = user {
                let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                let mut usr = p.user().clone();
                usr.set_uid(uid.parse().context("exec --user uid")?);
                usr.set_gid(gid.parse().context("exec --user gid")?);
                p.set_user(usr);
            }
            if *tty {
                p.set_terminal(Some(true));
            }
            if !additional_gids.is_empty() {
                let mut usr = p.user().clone();
                let mut g = usr.additional_gids().clone().unwrap_or_default();
                g.extend(additional_gids.iter().copied());
                usr.set_additional_gids(Some(g));
                p.set_user(usr);
            }
            if *no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !cap.is_empty() {
                add_caps(&mut p, cap)?;
            }
            if *detach && console_socket.is_none() && p.terminal().unwrap_or(false) {
                bail!("cannot allocate tty if berth-runtime will detach without setting console socket");
            }
            if console_socket.is_some() && !p.terminal().unwrap_or(false) {
                bail!("--console-socket given but the process has no terminal (use --tty)");
            }
            let mut e = c.exec(&p, Stdio::default(), None)?;
            if let Some(sock) = console_socket {
                let master = e
                    .console
                    .take()
                    .ok_or_else(|| anyhow!("exec: no pty master from the process"))?;
                if let Err(err) = send_console(sock, &master) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(e.pid), Signal::SIGKILL);
                    let _ = wait_pid(e.pid);
                    return Err(err);
                }
            }
            if let Some(f) = pid_file {
                write_pid_file(f, e.pid)?;
            }
            if *detach {
                return Ok(0);
            }
            forward_signals(e.pid);
            let attached = match e.console {
                Some(m) => Some(attach_console(m)?),
                None => None,
            };
            let code = wait_pid(e.pid)?;
            if let Some((out, saved)) = attached {
                let _ = out.join();
                restore_terminal(saved);
            }
            Ok(code)
        }
        Cmd::Ps {
            id,
            format,
            ps_args,
        } => {
            let c = Container::load(&cli.root, id)?;
            let pids = c.pids();
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
                return Ok(0);
            }
            let args = if ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                ps_args.clone()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .ok_or_else(|| anyhow!("ps output has no PID column"))?;
            println!("{header}");
            for l in lines {
                if l.split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|p| pids.contains(&p))
                {
                    println!("{l}");
                }
            }
            Ok(0)
        }
        Cmd::List { format, quiet } => {
            let ids = Container::list(&cli.root)?;
            let mut rows = Vec::new();
            for id in &ids {
                if let Ok(c) = Container::load(&cli.root, id) {
                    rows.push(c.state());
                }
            }
            if *quiet {
                for id in ids {
                    println!("{id}");
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<12} {:<8} {:<10} {:<40} {:<32} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for r in rows {
                    println!(
                        "{:<12} {:<8} {:<10} {:<40} {:<32} {}",
                        r["id"].as_str().unwrap_or(""),
                        r["pid"],
                        r["status"].as_str().unwrap_or(""),
                        r["bundle"].as_str().unwrap_or(""),
                        r["created"].as_str().unwrap_or(""),
                        r["owner"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        Cmd::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        Cmd::Spec { bundle } => {
            let p = bundle.join("config.json");
            if p.exists() {
                bail!("File {} exists. Remove it first", p.display());
            }
            let s = berth_runtime::default_spec(&berth_runtime::DefaultSpecOptions::new(vec![
                "sh".into(),
            ]))?;
            s.save(&p)
                .map_err(|e| anyhow!("write {}: {e}", p.display()))?;
            Ok(0)
        }
    }
}

/// runc exec's --cap: added to the bounding, effective, permitted (and inheritable) sets.
fn add_caps(p: &mut Process, caps: &[String]) -> Result<()> {
    use oci_spec::runtime::Capability;
    let mut set = p.capabilities().clone().unwrap_or_default();
    for name in caps {
        let up = name.to_uppercase();
        let full = if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        };
        let c = Capability::from_str(&full).map_err(|_| anyhow!("unknown capability {name:?}"))?;
        let add = |v: &Option<oci_spec::runtime::Capabilities>| {
            let mut v = v.clone().unwrap_or_default();
            v.insert(c);
            Some(v)
        };
        let (b, e, pm) = (
            add(set.bounding()),
            add(set.effective()),
            add(set.permitted()),
        );
        set.set_bounding(b).set_effective(e).set_permitted(pm);
    }
    p.set_capabilities(Some(set));
    Ok(())
}

fn features() -> serde_json::Value {
    let mount_opts = [
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "private",
        "rbind",
        "relatime",
        "remount",
        "ro",
        "rprivate",
        "rshared",
        "rslave",
        "runbindable",
        "rw",
        "shared",
        "slave",
        "strictatime",
        "suid",
        "sync",
        "unbindable",
    ];
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mount_opts.to_vec(),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": berth_runtime::caps::NAMES.to_vec(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": [std::env::consts::ARCH]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"org.berth.runtime.seccomp.compiler": "seccompiler"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_as_runc_does() {
        for s in ["TERM", "SIGTERM", "term", "SigTerm", "15"] {
            assert_eq!(parse_signal(s).expect(s), libc::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("KILL").expect("kill"), 9);
        assert_eq!(parse_signal("RTMIN").expect("rtmin"), libc::SIGRTMIN());
        assert_eq!(
            parse_signal("SIGRTMIN+2").expect("rtmin+2"),
            libc::SIGRTMIN() + 2
        );
        assert_eq!(
            parse_signal("RTMAX-1").expect("rtmax-1"),
            libc::SIGRTMAX() - 1
        );
        assert_eq!(parse_signal("40").expect("40"), 40);
        for bad in ["", "0", "-1", "65", "FOO", "SIG", "RTMIN+60", "RTMAX+1"] {
            assert!(parse_signal(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("134217728").expect("bytes"), 134217728);
        assert_eq!(parse_size("128m").expect("m"), 128 << 20);
        assert_eq!(parse_size("1G").expect("g"), 1 << 30);
        assert_eq!(parse_size("64kb").expect("kb"), 64 << 10);
        assert_eq!(parse_size("-1").expect("unlimited"), -1);
        assert!(parse_size("lots").is_err() && parse_size("-5m").is_err());
        assert_eq!(
            parse_duration("500ms").expect("ms"),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("5").expect("s"),
            std::time::Duration::from_secs(5)
        );
        assert!(parse_duration("0s").is_err() && parse_duration("5x").is_err());
    }

    #[test]
    fn log_records_are_runc_format_and_one_line() {
        let l = log_line("json", "error", "hook failed:\nline two\n", "T");
        assert!(
            l.ends_with('\n') && l.trim_end().lines().count() == 1,
            "{l:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "hook failed: | line two");
        assert_eq!(v["time"], "T");
        assert_eq!(
            log_line("text", "error", "a \"b\"", "T"),
            "time=\"T\" level=error msg=\"a \\\"b\\\"\"\n"
        );
    }
}

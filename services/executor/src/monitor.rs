//! The per-container monitor: a small single-threaded-at-heart process (no async runtime)
//! that creates and starts the container through berth-runtime, owns its stdout/stderr
//! pipes, writes them to the CRI log, waits for the exit and records it in `state.json`.
//! It outlives executor restarts: it runs in its own process group and needs nothing
//! from the executor after reporting "started" on its stdout.
//!
//! Once the container runs, the monitor re-executes itself (`supervise`, same pid, the
//! container still its child) so that what stays resident for the container's life is
//! a fresh image that only ran the supervising code: not the runtime's set-up, its
//! parsed spec, heap and init copy.
//!
//! Report protocol (one line on the monitor's stdout, then stdout is closed):
//! `ok <pid>` or `err <exit code> <message>`.

use crate::crilog::{self, LineSplitter, Stream};
use crate::logfiles::{LogWriter, Rotation};
use crate::state::{self, files, ContainerState};
use crate::stdio;
use berth_proto::messages::exec::ContainerStatus;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Docker's code for a command that was found but cannot be run, and for one not found.
pub const CANNOT_INVOKE: i32 = 126;
pub const NOT_FOUND: i32 = 127;
/// Any other failure to start.
pub const START_FAILED: i32 = 125;

/// Drops the clean page-cache pages of the monitor binary that no process maps, so that
/// monitors map it from pages read from disk. A binary just written (by `cargo build`,
/// an install, a copy) sits in large page-cache folios, and a process that touches one
/// byte of a folio has all of it counted in its RSS: 2.4 MB per idle monitor instead of
/// 0.9 MB. Mapped pages (monitors of running containers) are left alone by the kernel.
pub fn settle_binary_pages(binary: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(binary)?;
    // Only clean pages can be dropped: write the new file back first.
    file.sync_data()?;
    // SAFETY: posix_fadvise reads nothing from memory; the fd is open for the call.
    let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Exit code Docker reports when a container failed to start with `message`.
pub fn start_failure_code(message: &str) -> i32 {
    let lower = message.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("is a directory") {
        CANNOT_INVOKE
    } else if lower.contains("not found")
        || lower.contains("no such file")
        || lower.contains("executable file")
    {
        NOT_FOUND
    } else {
        START_FAILED
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Copies one stream as CRI records into `write` until EOF. `flush` (interactive
/// containers): what a read ends with goes out as a partial record at once, so that a
/// prompt or a terminal's echo is seen before the line is finished.
fn pump(reader: OwnedFd, stream: Stream, flush: bool, write: &mut dyn FnMut(&[u8])) {
    let mut reader = std::fs::File::from(reader);
    let mut splitter = LineSplitter::new(crilog::MAX_RECORD_TEXT);
    let mut buf = vec![0u8; 16 * 1024];
    // A full disk must not stop the container: the writer reports it once and drops
    // lines while the pipe keeps being drained.
    let mut emit = |text: &[u8], partial: bool| {
        let ts = crilog::timestamp(std::time::SystemTime::now());
        write(&crilog::format_record(&ts, stream, partial, text));
    };
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                splitter.push(&buf[..n], &mut emit);
                if flush {
                    splitter.finish(&mut emit);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master once no process has the terminal open any more.
            Err(err) if err.raw_os_error() == Some(libc::EIO) => break,
            Err(err) => {
                eprintln!("berth-monitor: reading {}: {err}", stream.as_str());
                break;
            }
        }
    }
    splitter.finish(&mut emit);
}

/// The container's standard streams as the monitor sets them up, and the ends it keeps.
struct Streams {
    stdio: berth_runtime::Stdio,
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    /// `-i` without a terminal: the write end of the container's stdin.
    stdin_w: Option<OwnedFd>,
}

impl Streams {
    fn new(tty: bool, open_stdin: bool) -> std::io::Result<Streams> {
        let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
        if tty {
            // The runtime puts the terminal's slave on 0, 1 and 2; these only keep the
            // monitor's own streams (its report pipe) out of the container.
            return Ok(Streams {
                stdio: berth_runtime::Stdio {
                    stdin: Some(null()?),
                    stdout: Some(null()?),
                    stderr: Some(null()?),
                },
                out_r: None,
                err_r: None,
                stdin_w: None,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin, stdin_w) = if open_stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (null()?, None)
        };
        Ok(Streams {
            stdio: berth_runtime::Stdio {
                stdin: Some(stdin),
                stdout: Some(out_w),
                stderr: Some(err_w),
            },
            out_r: Some(out_r),
            err_r: Some(err_r),
            stdin_w,
        })
    }
}

fn record_failure(dir: &Path, code: i32, message: &str) {
    let mut st = state::read_state(dir).unwrap_or_else(|_| ContainerState::created());
    st.status = ContainerStatus::Exited;
    st.pid = 0;
    st.pid_start = 0;
    st.exit_code = Some(code);
    st.error = Some(message.to_string());
    st.finished_at = Some(state::now_rfc3339());
    if let Err(err) = state::write_state(dir, &st) {
        eprintln!("berth-monitor: {err}");
    }
}

/// Runs the monitor for the container in `dir`; returns the monitor's exit status.
/// `report` is where the one-line start report goes (the executor reads it).
pub fn run(
    dir: &Path,
    runtime_root: &Path,
    id: &str,
    log_dir: &Path,
    mut report: impl Write,
) -> i32 {
    let fail = |report: &mut dyn Write, code: i32, message: String| {
        record_failure(dir, code, &message);
        let _ = writeln!(report, "err {code} {}", message.replace('\n', " "));
        let _ = report.flush();
        1
    };
    let spec_path = dir.join(files::SPEC);
    let spec = match oci_spec::runtime::Spec::load(&spec_path) {
        Ok(spec) => spec,
        Err(err) => {
            return fail(
                &mut report,
                START_FAILED,
                format!("{}: {err}", spec_path.display()),
            )
        }
    };
    let record = match state::read_record(dir) {
        Ok(record) => record,
        Err(err) => return fail(&mut report, START_FAILED, err.to_string()),
    };
    let rotation = match Rotation::from_opts(&record.config.log_opts) {
        Ok(rotation) => rotation,
        Err(err) => return fail(&mut report, START_FAILED, err),
    };
    let tty = record.config.tty;
    let interactive = tty || record.config.open_stdin;
    let log = match LogWriter::open(log_dir, rotation, log_note(dir)) {
        Ok(writer) => writer,
        Err(err) => {
            return fail(
                &mut report,
                START_FAILED,
                format!("log {}: {err}", log_dir.display()),
            )
        }
    };
    let streams = match Streams::new(tty, record.config.open_stdin) {
        Ok(streams) => streams,
        Err(err) => return fail(&mut report, START_FAILED, format!("stdio: {err}")),
    };
    let Streams {
        stdio,
        out_r,
        err_r,
        stdin_w,
    } = streams;
    // A container of a previous run (start after exit) leaves no runtime state: the
    // monitor deletes it on exit. One left by a crashed monitor is removed here.
    if let Ok(old) = berth_runtime::Container::load(runtime_root, id) {
        let _ = old.delete(true);
    }
    let created = berth_runtime::Container::create(berth_runtime::CreateOptions {
        id: id.to_string(),
        bundle: dir.to_path_buf(),
        spec: Some(spec),
        state_root: runtime_root.to_path_buf(),
        stdio,
        init_binary: None,
    });
    let mut container = match created {
        Ok(c) => c,
        Err(err) => {
            let message = err.to_string();
            return fail(&mut report, start_failure_code(&message), message);
        }
    };
    // With a terminal, its master is the one output stream and where input goes.
    let (out_r, sink) = match (tty, out_r, stdin_w) {
        (true, _, _) => {
            let master = container.take_console();
            let copy = master.as_ref().map(|m| m.try_clone());
            match (master, copy) {
                (Some(master), Some(Ok(copy))) => (Some(master), Some(SinkFd::Pty(copy))),
                _ => {
                    let _ = container.delete(true);
                    return fail(
                        &mut report,
                        START_FAILED,
                        "the runtime gave no terminal for the container".into(),
                    );
                }
            }
        }
        (false, out_r, stdin_w) => (out_r, stdin_w.map(SinkFd::Pipe)),
    };
    // The FIFO the executor writes input into, made before "ok" so that input sent as
    // soon as `start` replies finds it.
    let fifo_path = dir.join(files::STDIN);
    let fifo = match sink {
        Some(sink) => match stdio::create_fifo(&fifo_path) {
            Ok(fifo) => Some((fifo, sink)),
            Err(err) => {
                let _ = container.delete(true);
                return fail(
                    &mut report,
                    START_FAILED,
                    format!("{}: {err}", fifo_path.display()),
                );
            }
        },
        None => None,
    };
    // Nothing reads the streams until the container runs: what it writes first waits in
    // the pipe (or terminal) buffer, and the reading starts in the supervising image.
    if let Err(err) = container.start() {
        let message = err.to_string();
        let _ = container.delete(true);
        // Whatever the process wrote before it failed belongs in the log; with it killed,
        // the streams end.
        let mut log = log;
        for (fd, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
            if let Some(fd) = fd {
                pump(fd, stream, interactive, &mut |record| {
                    log.write_record(record)
                });
            }
        }
        let _ = std::fs::remove_file(&fifo_path);
        return fail(&mut report, start_failure_code(&message), message);
    }
    let pid = container.pid();
    let mut st = state::read_state(dir).unwrap_or_else(|_| ContainerState::created());
    let me = std::process::id() as i32;
    st.status = ContainerStatus::Running;
    st.pid = pid;
    st.pid_start = state::proc_start_time(pid).unwrap_or(0);
    st.monitor_pid = me;
    st.monitor_start = state::proc_start_time(me).unwrap_or(0);
    st.exit_code = None;
    st.oom_killed = false;
    st.error = None;
    st.started_at = Some(state::now_rfc3339());
    st.finished_at = None;
    if let Err(err) = state::write_state(dir, &st) {
        // Without a state file nobody could find the container again: do not run it.
        let _ = container.kill(nix::sys::signal::Signal::SIGKILL, true);
        let _ = container.wait();
        let _ = container.delete(true);
        let _ = std::fs::remove_file(&fifo_path);
        return fail(&mut report, START_FAILED, err.to_string());
    }
    let _ = writeln!(report, "ok {pid}");
    let _ = report.flush();
    drop(report);
    // The handle goes without deleting anything: the supervising half loads the
    // container again when it has exited.
    drop(container);
    let (log_file, log_start, log_size) = log.into_parts();
    let supervision = Supervision {
        dir: dir.to_path_buf(),
        runtime_root: runtime_root.to_path_buf(),
        id: id.to_string(),
        log_dir: log_dir.to_path_buf(),
        rotation,
        log: (OwnedFd::from(log_file), log_start, log_size),
        pid,
        stdout: out_r,
        stderr: err_r,
        stdin: fifo.map(|(fifo, sink)| (OwnedFd::from(fifo), sink)),
        interactive,
    };
    let err = reexec(&supervision);
    // Still this image: supervise from here, only bigger. Give back what set-up took.
    eprintln!("berth-monitor: cannot re-execute to supervise {id} ({err}): supervising in place");
    // SAFETY: the container is created and started, and this process creates no other
    // (exec runs from the executor), so nothing uses the init copy any more.
    unsafe {
        berth_runtime::forget_sealed_inits();
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    supervise(supervision)
}

/// The log's notes (a full disk, logging resumed): on the monitor's stderr, and beside
/// the state where inspect shows them while they hold.
fn log_note(dir: &Path) -> Box<dyn FnMut(&str) + Send> {
    let log_error = dir.join(files::LOG_ERROR);
    Box::new(move |message: &str| {
        eprintln!("berth-monitor: {message}");
        if message.contains("resumed") {
            let _ = std::fs::remove_file(&log_error);
        } else {
            let _ = state::write_atomic(&log_error, message.as_bytes());
        }
    })
}

/// Where a container's input goes, as an inherited fd.
#[derive(Debug)]
pub enum SinkFd {
    /// `-i`: the write end of its stdin pipe.
    Pipe(OwnedFd),
    /// `-t`: (a copy of) the terminal's master.
    Pty(OwnedFd),
}

/// What supervising a started container takes. All of it crosses the re-exec: numbers
/// and paths in argv, the open files as inherited fds.
#[derive(Debug)]
pub struct Supervision {
    pub dir: PathBuf,
    pub runtime_root: PathBuf,
    pub id: String,
    pub log_dir: PathBuf,
    pub rotation: Rotation,
    /// The current log file, its logical start and its size.
    pub log: (OwnedFd, u64, u64),
    /// The container process: this process' child.
    pub pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The input FIFO and where its frames go.
    pub stdin: Option<(OwnedFd, SinkFd)>,
    /// Partial lines go out at once (a prompt, a terminal's echo).
    pub interactive: bool,
}

/// The first argument of the supervising image.
pub const SUPERVISE: &str = "supervise";

fn fd_arg(fd: Option<&OwnedFd>) -> String {
    fd.map_or_else(|| "-".to_string(), |fd| fd.as_raw_fd().to_string())
}

/// An inherited fd named in argv, checked to be open (not yet taken over).
fn inherited_fd(arg: &str) -> Result<Option<RawFd>, String> {
    if arg == "-" {
        return Ok(None);
    }
    let fd: RawFd = arg
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("not an fd: {arg:?}"))?;
    // SAFETY: F_GETFD only reads the fd's flags; it says whether the fd is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("fd {fd} is not open"));
    }
    Ok(Some(fd))
}

/// Takes over an fd [`inherited_fd`] checked.
fn take_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the fd is open, and the first image handed it to this one alone: nothing
    // else in this process owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Supervision {
    /// The arguments after [`SUPERVISE`].
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let (log_fd, log_start, log_size) = &self.log;
        let sink = match &self.stdin {
            None => "-".to_string(),
            Some((_, SinkFd::Pipe(fd))) => format!("pipe:{}", fd.as_raw_fd()),
            Some((_, SinkFd::Pty(fd))) => format!("pty:{}", fd.as_raw_fd()),
        };
        let text = [
            self.id.clone(),
            self.pid.to_string(),
            format!("{}:{log_start}:{log_size}", log_fd.as_raw_fd()),
            self.rotation
                .max_size
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            self.rotation.max_files.to_string(),
            fd_arg(self.stdout.as_ref()),
            fd_arg(self.stderr.as_ref()),
            fd_arg(self.stdin.as_ref().map(|(fifo, _)| fifo)),
            sink,
            u8::from(self.interactive).to_string(),
        ];
        let mut args: Vec<std::ffi::OsString> = vec![
            self.dir.clone().into(),
            self.runtime_root.clone().into(),
            self.log_dir.clone().into(),
        ];
        args.extend(text.into_iter().map(Into::into));
        args
    }

    /// Parses what [`to_args`](Self::to_args) made, taking over the fds it names.
    pub fn from_args(args: &[std::ffi::OsString]) -> Result<Supervision, String> {
        let [dir, runtime_root, log_dir, rest @ ..] = args else {
            return Err("too few arguments".into());
        };
        let text: Vec<&str> = rest
            .iter()
            .map(|a| a.to_str().ok_or_else(|| format!("not UTF-8: {a:?}")))
            .collect::<Result<_, _>>()?;
        let [id, pid, log, max_size, max_files, stdout, stderr, fifo, sink, interactive] = text[..]
        else {
            return Err(format!("{} arguments, expected 13", args.len()));
        };
        let number = |what: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("{what}: not a number: {text:?}"))
        };
        let pid = pid
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("not a pid: {pid:?}"))?;
        let mut log_parts = log.splitn(3, ':');
        let (Some(log_fd), Some(log_start), Some(log_size)) =
            (log_parts.next(), log_parts.next(), log_parts.next())
        else {
            return Err(format!("log: expected fd:start:size, got {log:?}"));
        };
        let log_start = number("log start", log_start)?;
        let log_size = number("log size", log_size)?;
        let rotation = Rotation {
            max_size: match max_size {
                "-" => None,
                n => Some(number("max-size", n)?),
            },
            max_files: u32::try_from(number("max-file", max_files)?)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("max-file: {max_files:?}"))?,
        };
        let interactive = match interactive {
            "0" => false,
            "1" => true,
            other => return Err(format!("interactive: {other:?}")),
        };
        // Every argument is checked before any fd is taken over: a refusal closes nothing.
        let stdin = match (inherited_fd(fifo)?, sink.split_once(':')) {
            (None, None) if sink == "-" => None,
            (Some(fifo), Some((kind @ ("pipe" | "pty"), fd))) => match inherited_fd(fd)? {
                Some(fd) => Some((fifo, kind == "pty", fd)),
                None => return Err(format!("stdin: no sink fd in {sink:?}")),
            },
            _ => return Err(format!("stdin: fifo {fifo:?} with sink {sink:?}")),
        };
        let log_fd = inherited_fd(log_fd)?.ok_or("log: no fd")?;
        let stdout = inherited_fd(stdout)?;
        let stderr = inherited_fd(stderr)?;
        let mut all: Vec<RawFd> = [Some(log_fd), stdout, stderr]
            .into_iter()
            .flatten()
            .chain(stdin.iter().flat_map(|(fifo, _, sink)| [*fifo, *sink]))
            .collect();
        all.sort_unstable();
        if all.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(format!("an fd is named twice: {all:?}"));
        }
        Ok(Supervision {
            dir: dir.into(),
            runtime_root: runtime_root.into(),
            id: id.to_string(),
            log_dir: log_dir.into(),
            rotation,
            log: (take_fd(log_fd), log_start, log_size),
            pid,
            stdout: stdout.map(take_fd),
            stderr: stderr.map(take_fd),
            stdin: stdin.map(|(fifo, pty, sink)| {
                let sink = take_fd(sink);
                (
                    take_fd(fifo),
                    if pty {
                        SinkFd::Pty(sink)
                    } else {
                        SinkFd::Pipe(sink)
                    },
                )
            }),
            interactive,
        })
    }

    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.log.0.as_raw_fd()];
        fds.extend(
            self.stdout
                .iter()
                .chain(&self.stderr)
                .map(|fd| fd.as_raw_fd()),
        );
        if let Some((fifo, sink)) = &self.stdin {
            fds.push(fifo.as_raw_fd());
            fds.push(match sink {
                SinkFd::Pipe(fd) | SinkFd::Pty(fd) => fd.as_raw_fd(),
            });
        }
        fds
    }
}

fn set_cloexec(fd: RawFd, on: bool) {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the flag of an fd this process owns.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags);
    }
}

/// Re-executes this binary to supervise: execve keeps the pid (the container stays this
/// process' child, and the state's monitor pid and start time stay true) and the fds
/// without close-on-exec, and gives a fresh address space that only maps what supervising
/// touches: none of the runtime's set-up code, heap or thread arenas. Returns only if
/// the exec failed.
fn reexec(supervision: &Supervision) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let fds = supervision.fds();
    for fd in &fds {
        set_cloexec(*fd, false);
    }
    // /proc/self/exe is the file this process runs even if the path was replaced since
    // (an upgrade): the two images always speak the same argv.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0("berth-monitor")
        .arg(SUPERVISE)
        .args(supervision.to_args())
        .exec();
    for fd in &fds {
        set_cloexec(*fd, true);
    }
    err
}

/// Supervises a started container until it exits: its streams into the log, input from
/// the FIFO into it, then its exit into `state.json`. Returns the monitor's exit status.
pub fn supervise(supervision: Supervision) -> i32 {
    let Supervision {
        dir,
        runtime_root,
        id,
        log_dir,
        rotation,
        log: (log_fd, log_start, log_size),
        pid,
        stdout,
        stderr,
        stdin,
        interactive,
    } = supervision;
    // One malloc arena for all threads: a thread's own arena would keep its pages for
    // the container's life to save lock contention that three mostly idle threads do
    // not have.
    // SAFETY: mallopt only changes allocator tuning, under the allocator's own lock;
    // it applies to the arenas threads would make from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let log = Arc::new(Mutex::new(LogWriter::from_parts(
        &log_dir,
        std::fs::File::from(log_fd),
        log_start,
        log_size,
        rotation,
        log_note(&dir),
    )));
    // Each thread says when its own start-up is over, so that this code is unmapped too.
    // Small stacks: the pumps only read into a buffer on the heap and format a line.
    let (started, started_rx) = std::sync::mpsc::channel::<()>();
    let mut running = 0;
    let mut spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        let started = started.clone();
        let spawned = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = started.send(());
                f()
            });
        running += usize::from(spawned.is_ok());
        spawned
    };
    let mut threads = Vec::new();
    for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
        let Some(fd) = fd else { continue };
        let stream_log = Arc::clone(&log);
        let pumping = move || {
            pump(fd, stream, interactive, &mut |record| {
                // One write per record under the lock: records of two streams never
                // interleave.
                if let Ok(mut log) = stream_log.lock() {
                    log.write_record(record);
                }
            })
        };
        match spawn(stream.as_str(), Box::new(pumping)) {
            Ok(thread) => threads.push(thread),
            // Nobody would drain the pipe and the container would block on it: it
            // cannot run unlogged.
            Err(err) => {
                eprintln!(
                    "berth-monitor: cannot start the {} thread: {err}",
                    stream.as_str()
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let fifo_path = dir.join(files::STDIN);
    // Never joined: it blocks on the FIFO (which this process keeps open) until exit.
    if let Some((fifo, sink)) = stdin {
        let sink = match sink {
            SinkFd::Pipe(fd) => stdio::Sink::pipe(fd),
            SinkFd::Pty(fd) => stdio::Sink::pty(fd),
        };
        let fifo = std::fs::File::from(fifo);
        if let Err(err) = spawn("stdin", Box::new(move || stdio::relay(fifo, sink))) {
            eprintln!("berth-monitor: cannot start the stdin thread: {err}; input is not relayed");
        }
    }
    // Only the threads' senders are left: a thread that died early cannot block this.
    drop(started);
    for _ in 0..running {
        let _ = started_rx.recv();
    }
    unmap_startup_code();
    let (exit, container) = wait_exit(&runtime_root, &id, pid);
    // The pid namespace is gone with its init, so the pipes reach EOF soon; wait for
    // the last lines before recording the exit, so a reader who sees "exited" sees them.
    for thread in threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_file(&fifo_path);
    if let Ok(log) = log.lock() {
        log.sync();
    }
    let (code, oom) = match exit {
        Ok(info) => (info.code.unwrap_or(START_FAILED), info.oom_killed),
        Err(err) => {
            eprintln!("berth-monitor: waiting for {id}: {err}");
            (START_FAILED, false)
        }
    };
    // Nothing else writes the state while this monitor lives: it is what was written
    // before "ok".
    let mut st = state::read_state(&dir).unwrap_or_else(|_| ContainerState::created());
    st.status = ContainerStatus::Exited;
    st.exit_code = Some(code);
    st.oom_killed = oom;
    st.finished_at = Some(state::now_rfc3339());
    let written = state::write_state(&dir, &st);
    match container {
        Some(container) => {
            if let Err(err) = container.delete(true) {
                eprintln!("berth-monitor: cleaning up {id}: {err}");
            }
        }
        None => eprintln!("berth-monitor: cleaning up {id}: its runtime state is gone"),
    }
    match written {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("berth-monitor: recording the exit of {id}: {err}");
            1
        }
    }
}

/// Unmaps the code that only starting this image ran. The C library's and Rust's
/// start-up and the argv parsing never run again, yet stay mapped: the kernel maps code
/// in whole page-cache folios and 64 KB fault-around windows, which made them most of
/// an idle monitor's RSS. Dropped are only read-only file mappings none of whose pages
/// was ever written (no anonymous pages): their pages are the file's, stay in the page
/// cache, shared with every other monitor, and fault back in from there when their code
/// runs again. So nothing is lost, and what a monitor maps afterwards is what it runs
/// (its working set); start-up code no monitor runs any more is mapped by none, which
/// lets the kernel reclaim it first.
fn unmap_startup_code() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut mapping: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let range = first.split_once('-').and_then(|(start, end)| {
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        });
        if let Some(range) = range {
            // start-end perms offset dev inode path
            let perms = fields.next().unwrap_or("w");
            let path = fields.nth(3).unwrap_or("");
            mapping = (path.starts_with('/') && !perms.contains('w')).then_some(range);
        } else if first == "Anonymous:" {
            if let Some((start, end)) = mapping.take() {
                if fields.next() == Some("0") {
                    // SAFETY: a read-only private file mapping without anonymous (written)
                    // pages: dropping its page table entries loses nothing, the next
                    // access maps the same file pages again.
                    unsafe {
                        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                    }
                }
            }
        }
    }
}

/// Waits for the container process to exit and reaps it; also the runtime's handle
/// for the clean-up, if its state can still be read.
fn wait_exit(
    runtime_root: &Path,
    id: &str,
    pid: i32,
) -> (
    Result<berth_runtime::ExitInfo, String>,
    Option<berth_runtime::Container>,
) {
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
    let child = nix::unistd::Pid::from_raw(pid);
    // Waits without reaping, and loads the container only then: loading parses the
    // spec, which the idle monitor should not hold for the container's life. The
    // runtime's wait reaps it and reads the cgroup's OOM count.
    loop {
        match waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return (Err(format!("waitid: {err}")), None),
            Ok(_) => break,
        }
    }
    match berth_runtime::Container::load_as_parent(runtime_root, id) {
        Ok(mut container) => {
            let exit = container.wait().map_err(|err| err.to_string());
            (exit, Some(container))
        }
        Err(err) => {
            eprintln!("berth-monitor: loading {id} after its exit: {err}");
            let exit = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break Ok((Some(code), None)),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        break Ok((Some(128 + signal as i32), Some(signal as i32)))
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(err) => break Err(format!("waitpid: {err}")),
                }
            };
            let exit = exit.map(|(code, signal)| berth_runtime::ExitInfo {
                code,
                signal,
                oom_killed: false,
            });
            (exit, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `file` in the page cache, by mincore over a mapping (mapping faults in
    /// nothing).
    fn resident_pages(file: &std::fs::File, len: usize) -> usize {
        let page = 4096;
        // SAFETY: a fresh read-only shared mapping of an open file, unmapped below;
        // mincore writes one byte per page into a vector of that size.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
            libc::munmap(addr, len);
            vec.iter().filter(|b| **b & 1 == 1).count()
        }
    }

    #[test]
    fn a_freshly_written_binary_leaves_the_page_cache() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
        // tmpfs pages cannot be dropped: the test needs a disk.
        let on_tmpfs = nix::sys::statfs::statfs(dir.path())
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if on_tmpfs {
            eprintln!("SKIPPED: /var/tmp is tmpfs, whose pages never leave the cache");
            return;
        }
        let path = dir.path().join("berth-monitor");
        let len = 4 << 20;
        std::fs::write(&path, vec![7u8; len]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        assert!(
            resident_pages(&file, len) > 0,
            "a file just written is cached"
        );
        settle_binary_pages(&path).expect("settle");
        assert_eq!(resident_pages(&file, len), 0);
        assert!(settle_binary_pages(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn supervision_crosses_the_reexec_in_argv() {
        let fd = || pipe().expect("pipe").0;
        let supervision = Supervision {
            dir: "/var/lib/berth/containers/c1".into(),
            runtime_root: "/run/berth/runtime".into(),
            id: "c1".into(),
            log_dir: "/var/log/berth/c1".into(),
            rotation: Rotation {
                max_size: Some(10 << 20),
                max_files: 3,
            },
            log: (fd(), 4096, 17),
            pid: 4242,
            stdout: Some(fd()),
            stderr: None,
            stdin: Some((fd(), SinkFd::Pty(fd()))),
            interactive: true,
        };
        let args = supervision.to_args();
        let fds = supervision.fds();
        // The parsed copy owns the same fds now, as the re-executed image would.
        std::mem::forget(supervision);
        let back = Supervision::from_args(&args).expect("parses");
        assert_eq!(back.fds(), fds);
        assert_eq!(back.id, "c1");
        assert_eq!(back.pid, 4242);
        assert_eq!(back.log_dir, Path::new("/var/log/berth/c1"));
        assert_eq!(back.rotation.max_size, Some(10 << 20));
        assert_eq!(back.rotation.max_files, 3);
        assert_eq!((back.log.1, back.log.2), (4096, 17));
        assert!(back.stderr.is_none() && back.interactive);
        assert!(matches!(back.stdin, Some((_, SinkFd::Pty(_)))));

        let refused = |edit: &dyn Fn(&mut Vec<std::ffi::OsString>)| {
            let mut bad = args.clone();
            edit(&mut bad);
            Supervision::from_args(&bad).is_err()
        };
        assert!(refused(&|a| {
            a.pop();
        }));
        assert!(refused(&|a| a[4] = "0".into()), "pid 0");
        assert!(refused(&|a| a[8] = "1".into()), "stdio is not handed over");
        assert!(refused(&|a| a[8] = "999999".into()), "a closed fd");
        assert!(refused(&|a| a[11] = "-".into()), "a FIFO without a sink");
        assert!(refused(&|a| a[7] = "0".into()), "max-file 0");
    }

    #[test]
    fn start_failures_map_to_docker_codes() {
        assert_eq!(
            start_failure_code("init failed: exec: \"nope\": executable file not found in $PATH"),
            NOT_FOUND
        );
        assert_eq!(
            start_failure_code("exec: \"/x\": no such file or executable"),
            NOT_FOUND
        );
        assert_eq!(
            start_failure_code("exec /etc: Permission denied"),
            CANNOT_INVOKE
        );
        assert_eq!(start_failure_code("cgroup: EBUSY"), START_FAILED);
    }
}

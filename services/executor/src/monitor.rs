//! The per-container monitor: a small single-threaded-at-heart process (no async runtime)
//! that creates and starts the container through berth-runtime, owns its stdout/stderr
//! pipes, writes them to the CRI log, waits for the exit and records it in `state.json`.
//! It outlives executor restarts: it runs in its own process group and needs nothing
//! from the executor after reporting "started" on its stdout.
//!
//! Report protocol (one line on the monitor's stdout, then stdout is closed):
//! `ok <pid>` or `err <exit code> <message>`.

use crate::crilog::{self, LineSplitter, Stream};
use crate::logfiles::{LogWriter, Rotation};
use crate::state::{self, files, ContainerState};
use crate::stdio;
use berth_proto::messages::exec::ContainerStatus;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Docker's code for a command that was found but cannot be run, and for one not found.
pub const CANNOT_INVOKE: i32 = 126;
pub const NOT_FOUND: i32 = 127;
/// Any other failure to start.
pub const START_FAILED: i32 = 125;

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

/// Copies one stream into the log as CRI records until EOF. `flush` (interactive
/// containers): what a read ends with goes out as a partial record at once, so that a
/// prompt or a terminal's echo is seen before the line is finished.
fn pump(reader: OwnedFd, stream: Stream, log: Arc<Mutex<LogWriter>>, flush: bool) {
    let mut reader = std::fs::File::from(reader);
    let mut splitter = LineSplitter::new(crilog::MAX_RECORD_TEXT);
    let mut buf = vec![0u8; 16 * 1024];
    let mut emit = |text: &[u8], partial: bool| {
        let ts = crilog::timestamp(std::time::SystemTime::now());
        let record = crilog::format_record(&ts, stream, partial, text);
        // One write per record under the lock: records of two streams never interleave.
        // A full disk must not stop the container: the writer reports it once and
        // drops lines while the pipe keeps being drained.
        if let Ok(mut log) = log.lock() {
            log.write_record(&record);
        }
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

/// Asks the kernel to reclaim the file-backed pages (program text, libc) that only this
/// process maps: set-up touched megabytes of runtime code the idle monitor never runs
/// again. Pages shared with other monitors stay; what is needed at exit faults back in.
fn page_out_file_mappings() {
    const MADV_PAGEOUT: libc::c_int = 21;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // address perms offset dev inode path: file-backed, not writable.
        let (Some(range), Some(perms), Some(path)) = (fields.first(), fields.get(1), fields.get(5))
        else {
            continue;
        };
        if !path.starts_with('/') || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: advice on our own read-only file mappings; the pages stay mapped and
        // are read back from the page cache or the file on the next access.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, MADV_PAGEOUT);
        }
    }
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
    let log_error = dir.join(files::LOG_ERROR);
    let note = Box::new(move |message: &str| {
        eprintln!("berth-monitor: {message}");
        // Also beside the state (inspect shows it); gone once logging works again.
        if message.contains("resumed") {
            let _ = std::fs::remove_file(&log_error);
        } else {
            let _ = state::write_atomic(&log_error, message.as_bytes());
        }
    });
    let log = match LogWriter::open(log_dir, rotation, note) {
        Ok(writer) => Arc::new(Mutex::new(writer)),
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
                (Some(master), Some(Ok(copy))) => (Some(master), Some(stdio::Sink::pty(copy))),
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
        (false, out_r, stdin_w) => (out_r, stdin_w.map(stdio::Sink::pipe)),
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
    // Small stacks: the pumps only read into a buffer on the heap and format a line.
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(128 * 1024)
            .spawn(f)
    };
    let mut threads = Vec::new();
    let mut spawned = true;
    for (fd, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
        let Some(fd) = fd else { continue };
        let stream_log = Arc::clone(&log);
        match spawn(
            stream.as_str(),
            Box::new(move || pump(fd, stream, stream_log, interactive)),
        ) {
            Ok(thread) => threads.push(thread),
            Err(_) => spawned = false,
        }
    }
    // Never joined: it blocks on the FIFO (which this process keeps open) until exit.
    if let Some((fifo, sink)) = fifo {
        spawned &= spawn("stdin", Box::new(move || stdio::relay(fifo, sink))).is_ok();
    }
    if !spawned {
        let _ = container.delete(true);
        return fail(
            &mut report,
            START_FAILED,
            "cannot start the stdio threads".into(),
        );
    }
    if let Err(err) = container.start() {
        let message = err.to_string();
        let _ = container.delete(true);
        for thread in threads {
            let _ = thread.join();
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
        return fail(&mut report, START_FAILED, err.to_string());
    }
    let _ = writeln!(report, "ok {pid}");
    let _ = report.flush();
    drop(report);
    // Set-up is over: give what it took back, the monitor lives as long as the container.
    // SAFETY: the container is created and started, and this process creates no other
    // (exec runs from the executor), so nothing uses the init copy any more.
    unsafe {
        berth_runtime::forget_sealed_inits();
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    page_out_file_mappings();

    let exit = container.wait();
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
    st.status = ContainerStatus::Exited;
    st.exit_code = Some(code);
    st.oom_killed = oom;
    st.finished_at = Some(state::now_rfc3339());
    let written = state::write_state(dir, &st);
    if let Err(err) = container.delete(true) {
        eprintln!("berth-monitor: cleaning up {id}: {err}");
    }
    match written {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("berth-monitor: recording the exit of {id}: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! `berth-monitor`: one per container (see `berth_executor::monitor`). A separate small
//! binary rather than the executor re-executed: berth-runtime copies the calling binary
//! into a sealed memfd to become the container's init, once per process, and every
//! monitor is a fresh process — copying a few MB instead of the executor with its async
//! runtime and NATS client keeps `run` fast and the monitor's footprint small.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    // In init mode this never returns: the binary is the container's init as well.
    berth_runtime::init_if_requested();
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The same process, re-executed by `run` once its container started.
    if raw
        .get(1)
        .is_some_and(|a| a == berth_executor::monitor::SUPERVISE)
    {
        // Named as before the exec (the kernel names it after /proc/self/exe's link).
        // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"berth-monitor".as_ptr());
        }
        return match berth_executor::monitor::Supervision::from_args(&raw[2..]) {
            Ok(supervision) => {
                ExitCode::from(berth_executor::monitor::supervise(supervision) as u8)
            }
            Err(err) => {
                eprintln!("berth-monitor: supervise: {err}");
                ExitCode::from(2)
            }
        };
    }
    let args: Vec<String> = raw
        .into_iter()
        .map(|a| a.into_string().unwrap_or_default())
        .collect();
    match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 5 || args.len() == 6 => {
            // A fixed mmap threshold: glibc would otherwise raise it after the runtime frees
            // its large init-protocol buffer, and the next such buffer would be carved from
            // the heap and zeroed — megabytes of dirty memory kept for the container's life.
            // SAFETY: mallopt only changes allocator tuning; called before any thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
            let dir = Path::new(&args[2]);
            // The log directory: the container's own unless the executor says otherwise.
            let log_dir = args.get(5).map_or(dir, |d| Path::new(d));
            let code = berth_executor::monitor::run(
                dir,
                Path::new(&args[3]),
                &args[4],
                log_dir,
                std::io::stdout(),
            );
            ExitCode::from(code as u8)
        }
        // Overlay with relative lowerdirs: needs its own cwd, which a single-threaded
        // helper can change without disturbing anyone.
        Some("mount-overlay") if args.len() == 5 => {
            if let Err(err) = std::env::set_current_dir(&args[2]) {
                eprintln!("berth-monitor: chdir {}: {err}", args[2]);
                return ExitCode::from(1);
            }
            match berth_executor::overlay::mount_here(&args[4], Path::new(&args[3])) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("berth-monitor: {err}");
                    ExitCode::from(1)
                }
            }
        }
        _ => {
            eprintln!(
                "usage: berth-monitor run <container dir> <runtime root> <id> [<log dir>]\n       berth-monitor mount-overlay <cwd> <target> <options>\n       (berth-monitor supervise ...: run's own second stage)"
            );
            ExitCode::from(2)
        }
    }
}

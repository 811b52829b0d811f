//! Interactive sessions (`run -i/-t`, `exec -i/-t`, `attach`): the CLI's stdin sent to
//! the node in ordered chunks, the terminal in raw mode while a pty is attached (and
//! restored on every way out), window sizes at start and on SIGWINCH.

use super::*;
use berth_proto::messages::exec::{
    ConsoleSize, StdinAck, StdinPayload, StdinRequest, MAX_STDIN_CHUNK,
};
use std::io::{IsTerminal, Read};
use std::sync::Mutex;
use std::time::Instant;

use super::logs::{transient, OUTAGE_PATIENCE};
/// How long an exec session may take to appear after the exec request went out.
const SESSION_PATIENCE: Duration = Duration::from_secs(20);

/// The terminal settings to put back, for the signal path that skips destructors.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The size of the terminal the CLI runs on, if it runs on one.
pub fn console_size() -> Option<ConsoleSize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which outlives the call.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some(ConsoleSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// A random subject token (exec session ids, client ids).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // Unique enough for telling two attached clients apart.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return now ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}

fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(saved) = saved {
        // SAFETY: tcsetattr reads the termios we saved from this very terminal.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
        }
    }
}

/// The CLI's terminal in raw mode: keys go to the container's pty as typed (^C included),
/// and the container's pty does the echoing. Dropping it restores the settings.
struct RawMode;

impl RawMode {
    fn enter() -> Option<RawMode> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: zeroed termios is a valid value to be overwritten by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on our own stdin with valid pointers.
        unsafe {
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                SAVED_TERMIOS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                return None;
            }
        }
        Some(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Where input goes and how it is sent.
struct Sender {
    client: async_nats::Client,
    subject: String,
    id: String,
    exec_id: Option<String>,
    me: u64,
    seq: u64,
}

impl Sender {
    /// Sends one payload and waits until the node has it; retries while the executor is
    /// away (the container's monitor keeps its stdin meanwhile). `Err` ends the input.
    async fn send(&mut self, payload: StdinPayload) -> Result<(), String> {
        self.seq += 1;
        let request = StdinRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            client: self.me,
            seq: self.seq,
            payload,
        };
        let started = Instant::now();
        loop {
            let sent: Result<StdinAck, BusError> = berth_bus::request(
                &self.client,
                &self.subject,
                &request,
                Encoding::Bincode,
                Duration::from_secs(30),
            )
            .await;
            let retry = match &sent {
                Ok(_) => return Ok(()),
                Err(err) if transient(err) => started.elapsed() < OUTAGE_PATIENCE,
                // The exec request may not have reached the node yet.
                Err(err) if err.kind() == Some(ErrorKind::NotFound) && self.exec_id.is_some() => {
                    started.elapsed() < SESSION_PATIENCE
                }
                Err(_) => false,
            };
            match sent {
                Err(err) if !retry => {
                    return Err(match err.kind() {
                        // The process is gone or took no input: nothing to report.
                        Some(ErrorKind::Conflict) => String::new(),
                        _ => failure(err).message,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// One attached session's input side; dropping it stops the input and restores the
/// terminal.
pub(super) struct Session {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _raw: Option<RawMode>,
    detached: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// What a session forwards.
pub(super) struct SessionOptions {
    /// Send the CLI's stdin (and EOF at its end).
    pub stdin: bool,
    /// The process has a pty: raw mode, window sizes.
    pub tty: bool,
    /// Send the current window size first (attach: the pty exists already).
    pub resize_now: bool,
    /// The detach sequence (see `detach::parse`); only watched for with a terminal.
    pub detach_keys: Vec<u8>,
}

/// Docker's check before attaching a terminal: `-it` needs the CLI's stdin to be one
/// (`-t` alone is fine, the output just carries the pty's line endings).
pub(super) fn check_tty(attach_stdin: bool, tty: bool) -> Result<(), Failure> {
    tty_allowed(attach_stdin, tty, std::io::stdin().is_terminal())
}

fn tty_allowed(attach_stdin: bool, tty: bool, stdin_is_terminal: bool) -> Result<(), Failure> {
    if attach_stdin && tty && !stdin_is_terminal {
        return Err(Failure {
            code: 1,
            message: "the input device is not a TTY".into(),
        });
    }
    Ok(())
}

impl Session {
    /// Starts forwarding to container `id` (or its exec session `exec_id`).
    pub(super) fn start(
        target: &Target,
        id: &str,
        exec_id: Option<String>,
        options: SessionOptions,
    ) -> Result<Session, Failure> {
        let mut tasks = Vec::new();
        let raw = if options.tty && options.stdin {
            RawMode::enter()
        } else {
            None
        };
        if raw.is_some() {
            tasks.push(tokio::spawn(restore_on_signal()));
        }
        let mut winch = if options.tty && console_size().is_some() {
            Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                    .map_err(|err| Failure::berth(format!("cannot watch SIGWINCH: {err}")))?,
            )
        } else {
            None
        };
        let mut input = options.stdin.then(read_stdin);
        let (detach_tx, detached) = tokio::sync::oneshot::channel();
        let mut detach_tx = Some(detach_tx);
        let mut matcher = (options.tty && options.stdin && !options.detach_keys.is_empty())
            .then(|| super::detach::Matcher::new(options.detach_keys.clone()));
        let mut sender = Sender {
            client: target.client.clone(),
            subject: subjects::exec(&target.node, ExecVerb::Stdin),
            id: id.to_string(),
            exec_id,
            me: random_u64(),
            seq: 0,
        };
        let resize_now = options.resize_now;
        tasks.push(tokio::spawn(async move {
            if resize_now {
                if let Some(size) = console_size() {
                    if let Err(err) = sender.send(StdinPayload::Resize(size)).await {
                        report(&err);
                        return;
                    }
                }
            }
            loop {
                if input.is_none() && winch.is_none() {
                    return;
                }
                enum Next {
                    Chunk(Option<Vec<u8>>),
                    Resized,
                }
                let next = {
                    let resized = async {
                        match winch.as_mut() {
                            Some(signal) => signal.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    let chunk = async {
                        match input.as_mut() {
                            Some(receiver) => receiver.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        chunk = chunk => Next::Chunk(chunk),
                        _ = resized => Next::Resized,
                    }
                };
                let payload = match next {
                    Next::Chunk(Some(data)) if !data.is_empty() => {
                        let Some(matcher) = matcher.as_mut() else {
                            if let Err(err) = sender.send(StdinPayload::Data(data)).await {
                                report(&err);
                                return;
                            }
                            continue;
                        };
                        let fed = matcher.feed(&data);
                        // Held-back bytes can make it longer than one request may carry.
                        for piece in fed.forward.chunks(MAX_STDIN_CHUNK) {
                            if let Err(err) = sender.send(StdinPayload::Data(piece.to_vec())).await
                            {
                                report(&err);
                                return;
                            }
                        }
                        if fed.detach {
                            if let Some(tx) = detach_tx.take() {
                                let _ = tx.send(());
                            }
                            return;
                        }
                        continue;
                    }
                    // End of the CLI's stdin (or it failed): the process's ends too.
                    Next::Chunk(_) => {
                        input = None;
                        StdinPayload::Eof
                    }
                    Next::Resized => match console_size() {
                        Some(size) => StdinPayload::Resize(size),
                        None => continue,
                    },
                };
                if let Err(err) = sender.send(payload).await {
                    report(&err);
                    return;
                }
            }
        }));
        Ok(Session {
            tasks,
            _raw: raw,
            detached: Some(detached),
        })
    }

    /// Resolves once the user typed the detach sequence; never otherwise.
    pub(super) async fn detached(&mut self) {
        let Some(receiver) = self.detached.as_mut() else {
            return std::future::pending().await;
        };
        if receiver.await.is_err() {
            // The input ended without detaching: keep following the output.
            self.detached = None;
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn report(err: &str) {
    if !err.is_empty() {
        // Raw mode needs its own carriage return.
        eprint!("berth: stdin: {err}\r\n");
    }
}

/// Chunks of the CLI's stdin; an empty chunk (or the channel's end) is EOF. A plain
/// thread rather than tokio's stdin: a read blocked on a terminal cannot be cancelled,
/// and the process must be free to exit while one is pending.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; MAX_STDIN_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if sender.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = sender.blocking_send(Vec::new());
        });
    if spawned.is_err() {
        eprintln!("berth: cannot read stdin: no thread for it");
    }
    receiver
}

/// Raw mode turns ^C into a byte for the container; a signal from elsewhere (kill, a
/// closed terminal) must still leave the terminal as it was found.
async fn restore_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::quit(), libc::SIGQUIT),
    ];
    let mut streams = Vec::new();
    for (kind, number) in kinds {
        if let Ok(stream) = signal(kind) {
            streams.push((stream, number));
        }
    }
    if streams.is_empty() {
        return;
    }
    let waits = streams.iter_mut().map(|(stream, number)| {
        let number = *number;
        Box::pin(async move {
            stream.recv().await;
            number
        })
    });
    let (number, _, _) = futures::future::select_all(waits).await;
    restore_terminal();
    std::process::exit(128 + number);
}

/// What `run` and `attach` pass on to the container (Docker's `--sig-proxy`): every
/// catchable signal but those about the CLI's own process, pipe and terminal (SIGCHLD,
/// SIGPIPE, SIGWINCH, SIGURG, job control).
const PROXIED: [libc::c_int; 16] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGPWR,
    libc::SIGSYS,
];

/// Signals received by the CLI, sent on to container `id` while it lives.
pub(super) struct SignalProxy {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SignalProxy {
    /// Takes over the signals now (so none arriving from here on ends the CLI).
    pub(super) fn start(target: &Target, id: &str) -> Result<SignalProxy, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut tasks = Vec::new();
        for number in PROXIED {
            let mut stream = signal(SignalKind::from_raw(number))
                .map_err(|err| Failure::berth(format!("cannot proxy signal {number}: {err}")))?;
            let target = Target {
                client: target.client.clone(),
                node: target.node.clone(),
                timeout: target.timeout,
            };
            let id = id.to_string();
            tasks.push(tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    let request = ContainerKillRequest {
                        id: id.clone(),
                        signal: Some(number.to_string()),
                    };
                    let sent: Result<ContainerDone, BusError> =
                        target.call(ExecVerb::Kill, &request, None).await;
                    match sent {
                        // Gone already: its exit is on its way to the CLI.
                        Err(err) if err.kind() == Some(ErrorKind::Conflict) => {}
                        Err(err) => {
                            eprintln!(
                                "berth: forwarding signal {number}: {}",
                                failure(err).message
                            )
                        }
                        Ok(_) => {}
                    }
                }
            }));
        }
        Ok(SignalProxy { tasks })
    }
}

impl Drop for SignalProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_needs_a_terminal_on_stdin_like_docker() {
        let refused = tty_allowed(true, true, false).expect_err("-it without a terminal");
        assert_eq!(
            (refused.code, refused.message.as_str()),
            (1, "the input device is not a TTY")
        );
        assert!(tty_allowed(true, true, true).is_ok());
        assert!(tty_allowed(false, true, false).is_ok(), "-t alone");
        assert!(tty_allowed(true, false, false).is_ok(), "-i alone");
    }
}

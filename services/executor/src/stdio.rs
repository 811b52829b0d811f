//! Interactive stdin on the node: the frames the executor writes into a container's
//! stdin FIFO (`containers/<id>/stdin`, read by its monitor), and the sinks that put
//! input into a process — a pipe (`-i`) or a pty master (`-t`).
//!
//! The monitor creates the FIFO and holds it open for reading and writing, so the
//! executor can open it, write and close at will (and restart) without the container
//! ever seeing EOF; EOF is a frame. Each frame is one `write` of at most `PIPE_BUF`
//! bytes, which the kernel keeps whole: frames of two writers never interleave.

use berth_proto::messages::exec::{ConsoleSize, StdinPayload, MAX_STDIN_CHUNK};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// kind, client, seq, length.
pub const HEADER: usize = 1 + 8 + 8 + 2;
/// Frames stay within one atomic pipe write.
const PIPE_BUF: usize = 4096;
const _: () = assert!(HEADER + MAX_STDIN_CHUNK <= PIPE_BUF);

const KIND_DATA: u8 = 1;
const KIND_EOF: u8 = 2;
const KIND_RESIZE: u8 = 3;

/// One frame: who sent it, its place in that sender's sequence, and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub client: u64,
    pub seq: u64,
    pub payload: StdinPayload,
}

/// Why a frame could not be encoded or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stdin chunk of {0} bytes is larger than {MAX_STDIN_CHUNK}")]
    TooLarge(usize),
    #[error("malformed stdin frame: {0}")]
    Malformed(String),
    #[error("reading stdin frames: {0}")]
    Io(#[from] std::io::Error),
}

/// The bytes of one frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let (kind, data): (u8, Vec<u8>) = match &frame.payload {
        StdinPayload::Data(data) => (KIND_DATA, data.clone()),
        StdinPayload::Eof => (KIND_EOF, Vec::new()),
        StdinPayload::Resize(size) => {
            let mut data = size.rows.to_le_bytes().to_vec();
            data.extend_from_slice(&size.cols.to_le_bytes());
            (KIND_RESIZE, data)
        }
    };
    if data.len() > MAX_STDIN_CHUNK {
        return Err(FrameError::TooLarge(data.len()));
    }
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.push(kind);
    out.extend_from_slice(&frame.client.to_le_bytes());
    out.extend_from_slice(&frame.seq.to_le_bytes());
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Reads the next frame; `Ok(None)` at EOF. `buf` is reused between calls.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let kind = header[0];
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[range]);
        u64::from_le_bytes(bytes)
    };
    let client = word(1..9);
    let seq = word(9..17);
    let len = u16::from_le_bytes([header[17], header[18]]) as usize;
    if len > MAX_STDIN_CHUNK {
        return Err(FrameError::Malformed(format!("length {len}")));
    }
    buf.resize(len, 0);
    reader.read_exact(buf)?;
    let payload = match kind {
        KIND_DATA => StdinPayload::Data(buf.clone()),
        KIND_EOF => StdinPayload::Eof,
        KIND_RESIZE if len == 4 => StdinPayload::Resize(ConsoleSize {
            rows: u16::from_le_bytes([buf[0], buf[1]]),
            cols: u16::from_le_bytes([buf[2], buf[3]]),
        }),
        other => return Err(FrameError::Malformed(format!("kind {other}, length {len}"))),
    };
    Ok(Some(Frame {
        client,
        seq,
        payload,
    }))
}

/// Drops repeats: a client that did not get its reply sends the same frame again.
#[derive(Debug, Default)]
pub struct Dedup {
    last: Option<(u64, u64)>,
}

impl Dedup {
    /// `true` if the frame is new and should be applied.
    pub fn admit(&mut self, client: u64, seq: u64) -> bool {
        match self.last {
            Some((c, s)) if c == client && seq <= s => false,
            _ => {
                self.last = Some((client, seq));
                true
            }
        }
    }
}

/// Sets a terminal's window size.
pub fn set_window_size(fd: &impl AsRawFd, size: ConsoleSize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where a process's input goes.
#[derive(Debug)]
pub enum Sink {
    /// `-i`: the write end of its stdin pipe; `None` once closed.
    Pipe(Option<std::fs::File>),
    /// `-t`: the pty master.
    Pty(std::fs::File),
}

impl Sink {
    /// A pipe sink over its write end.
    pub fn pipe(write_end: OwnedFd) -> Sink {
        Sink::Pipe(Some(std::fs::File::from(write_end)))
    }

    /// A pty sink over (a copy of) the master.
    pub fn pty(master: OwnedFd) -> Sink {
        Sink::Pty(std::fs::File::from(master))
    }

    /// Applies one payload, blocking while the process does not read. Input after EOF,
    /// or for a process that closed its stdin, is dropped: the process cannot take it.
    pub fn apply(&mut self, payload: &StdinPayload) -> std::io::Result<()> {
        match (self, payload) {
            (Sink::Pipe(slot), StdinPayload::Data(data)) => {
                if let Some(pipe) = slot {
                    if let Err(err) = pipe.write_all(data) {
                        *slot = None;
                        if err.kind() != std::io::ErrorKind::BrokenPipe {
                            return Err(err);
                        }
                    }
                }
                Ok(())
            }
            (Sink::Pipe(slot), StdinPayload::Eof) => {
                *slot = None;
                Ok(())
            }
            (Sink::Pipe(_), StdinPayload::Resize(_)) => Ok(()),
            (Sink::Pty(master), StdinPayload::Data(data)) => master.write_all(data),
            // A terminal has no end of input: the line discipline's EOF character (^D)
            // is what a program on it treats as one.
            (Sink::Pty(master), StdinPayload::Eof) => master.write_all(&[4]),
            (Sink::Pty(master), StdinPayload::Resize(size)) => set_window_size(master, *size),
        }
    }
}

/// Why input could not be delivered to a container's FIFO.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("the container has no open stdin (not running, or not created with -i or -t)")]
    NoStdin,
    #[error("the container's process is not reading its stdin")]
    Full,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Writes one frame into a container's stdin FIFO, waiting up to `patience` for room.
/// Blocking: call from a blocking task.
pub fn deliver(fifo: &Path, frame: &Frame, patience: Duration) -> Result<(), DeliverError> {
    let bytes = encode(frame)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo);
    let mut file = match file {
        Ok(file) => file,
        // Gone with its monitor, or nobody reading it.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENXIO)) => {
            return Err(DeliverError::NoStdin)
        }
        Err(source) => {
            return Err(DeliverError::Io {
                path: fifo.display().to_string(),
                source,
            })
        }
    };
    if !file.metadata().is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    }) {
        return Err(DeliverError::NoStdin);
    }
    let deadline = Instant::now() + patience;
    loop {
        // At most PIPE_BUF bytes to a non-blocking pipe: all of it, or EAGAIN and nothing.
        match file.write(&bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(DeliverError::Io {
                    path: fifo.display().to_string(),
                    source: std::io::Error::other(format!(
                        "short write of {n} of {} bytes",
                        bytes.len()
                    )),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(DeliverError::Full);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(DeliverError::Io {
                    path: fifo.display().to_string(),
                    source,
                })
            }
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Creates the FIFO at `path` (replacing a leftover) and opens it for reading and
/// writing: this process is its reader, and holding a writer too means it never sees
/// EOF when an executor goes away.
pub fn create_fifo(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The monitor's relay: frames from the FIFO into the container's stdin, until the FIFO
/// fails (it does not end: this process holds a writer).
pub fn relay(mut fifo: std::fs::File, mut sink: Sink) {
    let mut dedup = Dedup::default();
    let mut buf = Vec::with_capacity(MAX_STDIN_CHUNK);
    loop {
        match read_frame(&mut fifo, &mut buf) {
            Ok(Some(frame)) => {
                if !dedup.admit(frame.client, frame.seq) {
                    continue;
                }
                if let Err(err) = sink.apply(&frame.payload) {
                    eprintln!("berth-monitor: container stdin: {err}");
                }
            }
            Ok(None) => return,
            Err(err) => {
                // Only the executor writes here, one whole frame per write: a bad frame
                // means a bug, and the rest of the stream cannot be trusted.
                eprintln!("berth-monitor: {err}; container stdin no longer relayed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_fit_one_pipe_write() {
        let frames = [
            Frame {
                client: 9,
                seq: 1,
                payload: StdinPayload::Data(vec![b'x'; MAX_STDIN_CHUNK]),
            },
            Frame {
                client: 9,
                seq: 2,
                payload: StdinPayload::Resize(ConsoleSize {
                    rows: 40,
                    cols: 132,
                }),
            },
            Frame {
                client: 9,
                seq: 3,
                payload: StdinPayload::Eof,
            },
        ];
        let mut stream = Vec::new();
        for frame in &frames {
            let bytes = encode(frame).expect("encodes");
            assert!(bytes.len() <= PIPE_BUF);
            stream.extend_from_slice(&bytes);
        }
        let mut reader = std::io::Cursor::new(stream);
        let mut buf = Vec::new();
        for frame in &frames {
            assert_eq!(
                read_frame(&mut reader, &mut buf).expect("reads").as_ref(),
                Some(frame)
            );
        }
        assert!(read_frame(&mut reader, &mut buf).expect("eof").is_none());
        let too_big = Frame {
            client: 1,
            seq: 1,
            payload: StdinPayload::Data(vec![0; MAX_STDIN_CHUNK + 1]),
        };
        assert!(matches!(encode(&too_big), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut bad = vec![7u8];
        bad.extend_from_slice(&[0; 16]);
        bad.extend_from_slice(&0u16.to_le_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut std::io::Cursor::new(bad), &mut buf),
            Err(FrameError::Malformed(_))
        ));
        let mut long = vec![KIND_DATA];
        long.extend_from_slice(&[0; 16]);
        long.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut std::io::Cursor::new(long), &mut buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn repeats_are_dropped_per_client() {
        let mut dedup = Dedup::default();
        assert!(dedup.admit(1, 1));
        assert!(!dedup.admit(1, 1));
        assert!(dedup.admit(1, 2));
        assert!(dedup.admit(2, 1));
        assert!(dedup.admit(1, 1), "another client came in between");
    }

    #[test]
    fn a_pipe_sink_closes_at_eof_and_ignores_resizes() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut sink = Sink::pipe(w);
        sink.apply(&StdinPayload::Data(b"hi\n".to_vec()))
            .expect("writes");
        sink.apply(&StdinPayload::Resize(ConsoleSize { rows: 1, cols: 1 }))
            .expect("ignored");
        sink.apply(&StdinPayload::Eof).expect("closes");
        sink.apply(&StdinPayload::Data(b"late".to_vec()))
            .expect("dropped");
        let mut text = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut text)
            .expect("reads to EOF");
        assert_eq!(text, "hi\n");
    }

    #[test]
    fn delivery_goes_through_the_fifo_and_needs_a_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdin");
        let frame = Frame {
            client: 1,
            seq: 1,
            payload: StdinPayload::Data(b"abc".to_vec()),
        };
        assert!(matches!(
            deliver(&path, &frame, Duration::ZERO),
            Err(DeliverError::NoStdin)
        ));
        let mut fifo = create_fifo(&path).expect("fifo");
        deliver(&path, &frame, Duration::ZERO).expect("delivers");
        let mut buf = Vec::new();
        assert_eq!(
            read_frame(&mut fifo, &mut buf).expect("reads"),
            Some(frame.clone())
        );
        // Nobody drains it: it fills, and delivery says so instead of blocking.
        let full = loop {
            match deliver(&path, &frame, Duration::ZERO) {
                Ok(()) => continue,
                Err(err) => break err,
            }
        };
        assert!(matches!(full, DeliverError::Full), "{full}");
    }
}

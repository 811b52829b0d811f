//! Glue between the blocking format code (tar, gzip, spool files) and the async store:
//! a blocking reader pumped into an `AsyncRead`, and object downloads to local files.

use crate::store::backend::{Backend, BackendError};
use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

const CHUNK: usize = 256 * 1024;

/// An `AsyncRead` fed by a blocking thread that reads the reader `open` returns.
pub struct PumpedReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
    done: bool,
}

/// Opens a reader on a blocking thread and streams it; dropping the result stops the pump.
pub fn pump<R, F>(open: F) -> PumpedReader
where
    R: Read,
    F: FnOnce() -> io::Result<R> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match open() {
            Ok(reader) => reader,
            Err(err) => {
                let _ = tx.blocking_send(Err(err));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    PumpedReader {
        rx,
        current: Vec::new(),
        offset: 0,
        done: false,
    }
}

impl AsyncRead for PumpedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.offset >= this.current.len() {
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    return Poll::Ready(Err(err));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.current = chunk;
                    this.offset = 0;
                }
            }
        }
        let n = buf.remaining().min(this.current.len() - this.offset);
        buf.put_slice(&this.current[this.offset..this.offset + n]);
        this.offset += n;
        Poll::Ready(Ok(()))
    }
}

/// Copies object `name` to the local file `dest`. `Ok(false)` if there is no such object.
pub async fn fetch_to_file<B: Backend>(
    backend: &B,
    name: &str,
    dest: &Path,
) -> Result<bool, String> {
    let mut reader = match backend.blob_get(name).await {
        Ok(reader) => reader,
        Err(BackendError::NotFound) => return Ok(false),
        Err(err) => return Err(format!("cannot read {name}: {err}")),
    };
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|err| format!("cannot create {}: {err}", dest.display()))?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|err| format!("cannot copy {name} to {}: {err}", dest.display()))?;
    file.flush()
        .await
        .map_err(|err| format!("cannot write {}: {err}", dest.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn pumped_bytes_arrive_in_order_and_errors_pass_through() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let copy = data.clone();
        let mut reader = pump(move || Ok(io::Cursor::new(copy)));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, data);

        let mut failing =
            pump(|| -> io::Result<io::Cursor<Vec<u8>>> { Err(io::Error::other("cannot open")) });
        let err = failing
            .read_to_end(&mut Vec::new())
            .await
            .expect_err("error");
        assert!(err.to_string().contains("cannot open"));
    }
}

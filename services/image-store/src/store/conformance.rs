//! One behaviour suite every [`Backend`] must pass: the in-memory backend in unit
//! tests, the JetStream backend against a real nats-server (`tests/store_jetstream.rs`).
//! What the store's correctness rests on is checked here: compare-and-set semantics,
//! and that a blob write whose reader fails leaves nothing visible.

use super::backend::{Backend, BackendError};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

macro_rules! check {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// A reader that yields some bytes, then fails (a digest mismatch, a dropped connection).
struct FailingReader {
    sent: bool,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.sent {
            return Poll::Ready(Err(std::io::Error::other("verification failed")));
        }
        self.sent = true;
        let n = buf.remaining().min(1000);
        buf.put_slice(&vec![1u8; n]);
        Poll::Ready(Ok(()))
    }
}

/// Runs the suite; keys and blob names are prefixed with `ns` so runs do not collide.
pub async fn run<B: Backend>(backend: &B, ns: &str) -> Result<(), String> {
    let key = format!("{ns}.k");
    let e = |what: &str, err: BackendError| format!("{what}: {err}");

    check!(
        backend
            .kv_get(&key)
            .await
            .map_err(|x| e("get", x))?
            .is_none(),
        "fresh key exists"
    );
    let r1 = backend
        .kv_create(&key, b"one".to_vec())
        .await
        .map_err(|x| e("create", x))?;
    check!(
        backend.kv_create(&key, b"again".to_vec()).await == Err(BackendError::Conflict),
        "create over a live key must conflict"
    );
    let got = backend.kv_get(&key).await.map_err(|x| e("get", x))?;
    check!(
        got.as_ref().map(|g| (g.value.as_slice(), g.revision)) == Some((b"one".as_slice(), r1)),
        "get returns value and revision: {got:?}"
    );
    let r2 = backend
        .kv_update(&key, b"two".to_vec(), r1)
        .await
        .map_err(|x| e("update", x))?;
    check!(r2 > r1, "revisions grow");
    check!(
        backend.kv_update(&key, b"stale".to_vec(), r1).await == Err(BackendError::Conflict),
        "update at an old revision must conflict"
    );
    check!(
        backend.kv_delete(&key, r1).await == Err(BackendError::Conflict),
        "delete at an old revision must conflict"
    );
    let other = format!("{ns}.other");
    backend
        .kv_create(&other, b"x".to_vec())
        .await
        .map_err(|x| e("create", x))?;
    let mut keys = backend
        .kv_keys(&format!("{ns}."))
        .await
        .map_err(|x| e("keys", x))?;
    keys.sort();
    check!(
        keys == [key.clone(), other.clone()],
        "keys by prefix: {keys:?}"
    );
    backend
        .kv_delete(&key, r2)
        .await
        .map_err(|x| e("delete", x))?;
    check!(
        backend
            .kv_get(&key)
            .await
            .map_err(|x| e("get", x))?
            .is_none(),
        "deleted key is gone"
    );
    let keys = backend
        .kv_keys(&format!("{ns}."))
        .await
        .map_err(|x| e("keys", x))?;
    check!(keys == [other.clone()], "deleted key not listed: {keys:?}");
    backend
        .kv_create(&key, b"reborn".to_vec())
        .await
        .map_err(|x| e("create after delete", x))?;

    let blob = format!("{ns}-blob");
    check!(
        backend
            .blob_size(&blob)
            .await
            .map_err(|x| e("size", x))?
            .is_none(),
        "no blob yet"
    );
    let err = backend
        .blob_put(&blob, &mut FailingReader { sent: false })
        .await;
    check!(
        matches!(err, Err(BackendError::Input(_))),
        "a failing reader is an input error: {err:?}"
    );
    check!(
        backend
            .blob_size(&blob)
            .await
            .map_err(|x| e("size", x))?
            .is_none(),
        "a failed write must leave nothing visible"
    );
    check!(
        matches!(backend.blob_get(&blob).await, Err(BackendError::NotFound)),
        "a failed write must not be readable"
    );
    let content = vec![9u8; 300_000];
    let size = backend
        .blob_put(&blob, &mut &content[..])
        .await
        .map_err(|x| e("put", x))?;
    check!(size == content.len() as u64, "put reports the size");
    check!(
        backend.blob_size(&blob).await.map_err(|x| e("size", x))? == Some(size),
        "size after put"
    );
    let mut back = Vec::new();
    backend
        .blob_get(&blob)
        .await
        .map_err(|x| e("get blob", x))?
        .read_to_end(&mut back)
        .await
        .map_err(|x| format!("read blob: {x}"))?;
    check!(back == content, "blob reads back");
    let names: Vec<String> = backend
        .blob_list()
        .await
        .map_err(|x| e("list", x))?
        .into_iter()
        .map(|b| b.name)
        .collect();
    check!(names.contains(&blob), "listed: {names:?}");
    backend
        .blob_delete(&blob)
        .await
        .map_err(|x| e("delete blob", x))?;
    backend
        .blob_delete(&blob)
        .await
        .map_err(|x| e("delete absent blob", x))?;
    check!(
        backend
            .blob_size(&blob)
            .await
            .map_err(|x| e("size", x))?
            .is_none(),
        "deleted blob gone"
    );
    backend
        .purge_unfinished(0)
        .await
        .map_err(|x| e("purge unfinished", x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_backend_conforms() {
        let backend = super::super::backend::MemoryBackend::default();
        super::run(&backend, "conf").await.expect("conforms");
    }
}

//! The storage seam of the image store: a KV bucket with compare-and-set and a blob
//! store. [`MemoryBackend`] serves unit tests; [`super::jetstream::JetStreamBackend`]
//! is the real thing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A boxed blob reader.
pub type BlobReader = Box<dyn AsyncRead + Unpin + Send>;

/// A KV value and the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub revision: u64,
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The key exists (create) or changed since it was read (update, delete).
    #[error("changed concurrently")]
    Conflict,
    /// No such blob.
    #[error("not found")]
    NotFound,
    /// Reading the input failed (the caller's reader returned an error).
    #[error("reading the input failed: {0}")]
    Input(String),
    /// The store itself failed.
    #[error("{0}")]
    Unavailable(String),
}

/// A blob in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub name: String,
    pub size: u64,
    /// Unix seconds of the last write, when known.
    pub modified: Option<u64>,
}

/// KV with compare-and-set plus a named blob store.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The live value of `key`, `None` if absent or deleted.
    fn kv_get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<KvEntry>, BackendError>> + Send;
    /// Creates `key`; `Conflict` if it holds a value.
    fn kv_create(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;
    /// Replaces `key` if it is still at `revision`; `Conflict` otherwise.
    fn kv_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;
    /// Deletes `key` if it is still at `revision`; `Conflict` otherwise.
    fn kv_delete(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Live keys starting with `prefix`.
    fn kv_keys(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;
    /// Size of a complete blob, `None` if there is none.
    fn blob_size(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send;
    /// Writes a blob from `data`. It becomes visible only once `data` reached its end
    /// without error, so a reader that fails on bad content leaves nothing behind.
    fn blob_put<'a>(
        &'a self,
        name: &'a str,
        data: &'a mut (dyn AsyncRead + Unpin + Send),
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'a;
    /// Opens a blob; `NotFound` if absent.
    fn blob_get(&self, name: &str)
        -> impl Future<Output = Result<BlobReader, BackendError>> + Send;
    /// Deletes a blob; absent is fine.
    fn blob_delete(&self, name: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Every blob.
    fn blob_list(&self) -> impl Future<Output = Result<Vec<BlobInfo>, BackendError>> + Send;
    /// Removes the stored parts of writes that never completed (the writer failed
    /// verification or died) and are older than `older_than` seconds; returns how
    /// many such writes were removed.
    fn purge_unfinished(
        &self,
        older_than: u64,
    ) -> impl Future<Output = Result<usize, BackendError>> + Send;
}

#[derive(Default)]
struct Memory {
    revision: u64,
    kv: BTreeMap<String, (Vec<u8>, u64)>,
    blobs: BTreeMap<String, Vec<u8>>,
    puts: usize,
}

/// An in-memory backend with the same compare-and-set semantics, for unit tests.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Memory>>,
}

impl MemoryBackend {
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// How many blob writes completed (for tests).
    pub fn put_count(&self) -> usize {
        self.with(|m| m.puts)
    }

    /// Names of the blobs held (for tests).
    pub fn blob_names(&self) -> Vec<String> {
        self.with(|m| m.blobs.keys().cloned().collect())
    }
}

impl Backend for MemoryBackend {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, BackendError> {
        Ok(self.with(|m| {
            m.kv.get(key).map(|(value, revision)| KvEntry {
                value: value.clone(),
                revision: *revision,
            })
        }))
    }

    async fn kv_create(&self, key: &str, value: Vec<u8>) -> Result<u64, BackendError> {
        self.with(|m| {
            if m.kv.contains_key(key) {
                return Err(BackendError::Conflict);
            }
            m.revision += 1;
            m.kv.insert(key.to_string(), (value, m.revision));
            Ok(m.revision)
        })
    }

    async fn kv_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, BackendError> {
        self.with(|m| {
            match m.kv.get(key) {
                Some((_, current)) if *current == revision => {}
                _ => return Err(BackendError::Conflict),
            }
            m.revision += 1;
            m.kv.insert(key.to_string(), (value, m.revision));
            Ok(m.revision)
        })
    }

    async fn kv_delete(&self, key: &str, revision: u64) -> Result<(), BackendError> {
        self.with(|m| match m.kv.get(key) {
            Some((_, current)) if *current == revision => {
                m.kv.remove(key);
                m.revision += 1;
                Ok(())
            }
            _ => Err(BackendError::Conflict),
        })
    }

    async fn kv_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        Ok(self.with(|m| {
            m.kv.keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        }))
    }

    async fn blob_size(&self, name: &str) -> Result<Option<u64>, BackendError> {
        Ok(self.with(|m| m.blobs.get(name).map(|b| b.len() as u64)))
    }

    async fn blob_put<'a>(
        &'a self,
        name: &'a str,
        data: &'a mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, BackendError> {
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .await
            .map_err(|err| BackendError::Input(err.to_string()))?;
        let size = bytes.len() as u64;
        self.with(|m| {
            m.puts += 1;
            m.blobs.insert(name.to_string(), bytes)
        });
        Ok(size)
    }

    async fn blob_get(&self, name: &str) -> Result<BlobReader, BackendError> {
        let bytes = self
            .with(|m| m.blobs.get(name).cloned())
            .ok_or(BackendError::NotFound)?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }

    async fn blob_delete(&self, name: &str) -> Result<(), BackendError> {
        self.with(|m| m.blobs.remove(name));
        Ok(())
    }

    async fn purge_unfinished(&self, _older_than: u64) -> Result<usize, BackendError> {
        // A failed write here never stored anything.
        Ok(0)
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>, BackendError> {
        Ok(self.with(|m| {
            m.blobs
                .iter()
                .map(|(name, b)| BlobInfo {
                    name: name.clone(),
                    size: b.len() as u64,
                    modified: None,
                })
                .collect()
        }))
    }
}

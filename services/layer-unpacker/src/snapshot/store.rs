//! The node's snapshot store: `snapshots/<n>/fs` + `snapshots/<n>/meta.json`,
//! keyed by chainID.
//!
//! Crash safety: a layer is unpacked into `snapshots/tmp-<n>/`, verified
//! (diff_id), its `meta.json` written and fsynced, the filesystem synced, and
//! only then renamed to `snapshots/<n>`. So a numbered directory with a
//! readable `meta.json` is complete; anything else (`tmp-*`, `rm-*`, a number
//! without meta) is debris of a crash and is removed at [`SnapshotStore::open`].
//! An exclusive `flock` on `snapshots/.lock` keeps a second unpacker on the same
//! disk from deleting the first one's temp dirs.
//!
//! Everything here blocks; the async service calls it from `spawn_blocking`.
//! [`SnapshotStore`] is `Sync`: share it in an `Arc`.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::chain::{chain_ids, validate_digest, ChainError};
use super::extract::{unpack_layer, ExtractMode, LayerStats};
use super::implicit;
use super::safe_path::{fsync, open_dir_path, syncfs};
use super::{Error, LayerSpec, Limits};

/// The kernel copies mount options into one page; the string and its NUL must fit.
pub const MAX_MOUNT_OPTIONS: usize = 4095;

const META: &str = "meta.json";
const FS: &str = "fs";
const LOCK: &str = ".lock";

/// Opens the stored blob of a layer for reading. Called only for layers that
/// are not unpacked yet, possibly from several threads at once.
pub type BlobOpener<'a> = dyn Fn(&LayerSpec) -> io::Result<Box<dyn Read + Send>> + Sync + 'a;

/// `snapshots/<n>/meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The `<n>` of `snapshots/<n>`.
    pub id: u64,
    pub chain_id: String,
    pub diff_id: String,
    /// chainID of the layer below; `None` for a base layer.
    pub parent: Option<String>,
    /// Blob digest it was unpacked from.
    pub digest: String,
    pub media_type: String,
    /// Sum of regular file sizes.
    pub size: u64,
    /// Containers and image pins using it; `prune` keeps a snapshot while non-empty.
    pub users: BTreeSet<String>,
    /// Seconds since the epoch.
    pub created: i64,
    /// Implicit directories (see [`super::implicit`]) still waiting for their
    /// lower layers' metadata; `prepare` settles them before it returns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_dirs: Vec<String>,
}

/// What the store could not do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot store {0} is locked by another process")]
    Locked(PathBuf),
    #[error(transparent)]
    Layer(#[from] Error),
    #[error("layer {layer}: opening the blob: {source}")]
    Blob {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Digest(#[from] ChainError),
    #[error("no snapshot with chainID {0}")]
    NotFound(String),
    #[error("snapshot {chain_id} is in use by {users:?}")]
    InUse {
        chain_id: String,
        users: Vec<String>,
    },
    #[error("overlay mount options are {len} bytes, over the limit of {max}")]
    OptionsTooLong { len: usize, max: usize },
    #[error("{path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("destination {0} already exists")]
    Exists(PathBuf),
}

impl StoreError {
    /// The wire error category (`berth_proto::ErrorKind`) this error maps to.
    pub fn kind(&self) -> berth_proto::ErrorKind {
        use berth_proto::ErrorKind as K;
        match self {
            // A bad layer is bad input: retrying will not help.
            StoreError::Layer(e) => match e.source {
                super::LayerError::Io { .. } => K::Internal,
                _ => K::Invalid,
            },
            StoreError::Digest(_) | StoreError::OptionsTooLong { .. } => K::Invalid,
            StoreError::NotFound(_) => K::NotFound,
            StoreError::InUse { .. } => K::Conflict,
            StoreError::Exists(_) => K::AlreadyExists,
            StoreError::Blob { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                K::NotFound
            }
            StoreError::Blob { .. } | StoreError::Locked(_) => K::Unavailable,
            StoreError::Io { .. } | StoreError::Meta { .. } => K::Internal,
        }
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How `prepare` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Layers unpacked at once (each layer is independent in overlay form).
    pub parallelism: usize,
    /// Pinned on every snapshot of the image under the same lock that finds or
    /// creates it, so a concurrent `prune` cannot remove it in between.
    pub user: Option<String>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            user: None,
        }
    }
}

/// Whether `prepare` did the work or found it done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Unpacked now.
    Unpacked(LayerStats),
    /// Already on disk (this or an earlier prepare, possibly of another image).
    Reused,
}

/// One layer of a prepared image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedLayer {
    pub meta: SnapshotMeta,
    /// `snapshots/<n>/fs`, absolute.
    pub fs: PathBuf,
    pub outcome: LayerOutcome,
}

/// Result of [`SnapshotStore::prepare`]: layers bottom first, as in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub layers: Vec<PreparedLayer>,
}

impl Prepared {
    /// Absolute lowerdirs, top layer first (overlayfs order).
    pub fn lowerdirs(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().map(|l| l.fs.clone()).collect()
    }

    /// Snapshot ids, top first.
    pub fn ids_top_first(&self) -> Vec<u64> {
        self.layers.iter().rev().map(|l| l.meta.id).collect()
    }

    /// `lowerdir=` value relative to the snapshots dir (see [`lowerdir_option`]).
    pub fn lowerdir_option(&self) -> String {
        lowerdir_option(&self.ids_top_first())
    }

    /// How many layers were unpacked by this call (the rest were reused).
    pub fn unpacked(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.outcome, LayerOutcome::Unpacked(_)))
            .count()
    }
}

/// The `lowerdir=` value for snapshot ids given top first: `7/fs:3/fs:1/fs`,
/// relative to the snapshots directory. Relative paths keep a 128-layer image
/// under one page; the mounter must `chdir` to the snapshots dir first (mount(2)
/// resolves relative lowerdirs against the caller's cwd).
pub fn lowerdir_option(ids_top_first: &[u64]) -> String {
    let parts: Vec<String> = ids_top_first
        .iter()
        .map(|id| format!("{id}/{FS}"))
        .collect();
    parts.join(":")
}

/// The full overlay option string, checked against the one-page limit.
pub fn overlay_mount_options(
    ids_top_first: &[u64],
    upper: &Path,
    work: &Path,
) -> Result<String, StoreError> {
    let s = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir_option(ids_top_first),
        upper.display(),
        work.display()
    );
    if s.len() > MAX_MOUNT_OPTIONS {
        return Err(StoreError::OptionsTooLong {
            len: s.len(),
            max: MAX_MOUNT_OPTIONS,
        });
    }
    Ok(s)
}

struct Index {
    by_chain: HashMap<String, SnapshotMeta>,
    next_id: u64,
}

/// The snapshots of one node.
pub struct SnapshotStore {
    dir: PathBuf,
    limits: Limits,
    index: Mutex<Index>,
    /// One mutex per chainID being worked on: concurrent prepares of the same
    /// layer queue here and the second finds the first one's snapshot.
    chain_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Held for the store's lifetime (flock is released when the fd closes).
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread cannot leave the index inconsistent (every
    // update is a single insert/remove), so poisoning is not fatal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotStore {
    /// Opens (creating) the store at `dir` (`<data-dir>/snapshots`), removes
    /// crash debris and loads the complete snapshots.
    pub fn open(dir: impl AsRef<Path>, limits: Limits) -> Result<SnapshotStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let lock_path = dir.join(LOCK);
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        // SAFETY: valid fd owned by `lock_file`.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock_file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::Locked(dir));
            }
            return Err(io_err("flock", &lock_path)(e));
        }

        let mut by_chain: HashMap<String, SnapshotMeta> = HashMap::new();
        let mut max_id = 0u64;
        let mut debris = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = e.path();
            if name.starts_with("tmp-") || name.starts_with("rm-") {
                debris.push(path);
                continue;
            }
            let Ok(id) = name.parse::<u64>() else {
                continue;
            };
            // Temp ids are allocated from the same counter: never reuse one.
            max_id = max_id.max(id);
            match read_meta(&path) {
                Some(m) if m.id == id && path.join(FS).is_dir() => {
                    let _ = fs::remove_file(path.join(format!("{META}.tmp")));
                    match by_chain.get(&m.chain_id) {
                        // Two dirs for one chainID cannot happen through this
                        // code; keep the older one.
                        Some(other) if other.id < m.id => debris.push(path),
                        Some(other) => {
                            debris.push(dir.join(other.id.to_string()));
                            by_chain.insert(m.chain_id.clone(), m);
                        }
                        None => {
                            by_chain.insert(m.chain_id.clone(), m);
                        }
                    }
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing incomplete snapshot");
                    debris.push(path);
                }
            }
        }
        for d in debris {
            // Debris must never keep the store from opening: what cannot go now
            // is retried at the next start.
            if let Err(e) = berth_fstree::remove_tree(&d) {
                tracing::warn!(path = %d.display(), error = %e, "cannot remove snapshot debris");
            }
        }
        Ok(SnapshotStore {
            dir,
            limits,
            index: Mutex::new(Index {
                by_chain,
                next_id: max_id + 1,
            }),
            chain_locks: Mutex::new(HashMap::new()),
            _lock: lock_file,
        })
    }

    /// The snapshots directory (the cwd for a mount with [`lowerdir_option`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `snapshots/<id>/fs`.
    pub fn fs_path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string()).join(FS)
    }

    /// All snapshots, by id.
    pub fn list(&self) -> Vec<SnapshotMeta> {
        let mut v: Vec<SnapshotMeta> = lock(&self.index).by_chain.values().cloned().collect();
        v.sort_by_key(|m| m.id);
        v
    }

    /// The snapshot of one chainID.
    pub fn get(&self, chain_id: &str) -> Option<SnapshotMeta> {
        lock(&self.index).by_chain.get(chain_id).cloned()
    }

    /// Ensures every layer is unpacked (in parallel, each chainID once) and
    /// returns them bottom first. `open_blob` is called only for missing layers.
    pub fn prepare(
        &self,
        layers: &[LayerSpec],
        open_blob: &BlobOpener<'_>,
        opts: &PrepareOptions,
    ) -> Result<Prepared, StoreError> {
        for l in layers {
            validate_digest(&l.diff_id)?;
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let chains = chain_ids(&diff_ids)?;
        // Pins this call adds are taken back if it fails: a container that is never
        // created must not keep its image's snapshots from `prune`.
        let pinned_before: Vec<bool> = chains
            .iter()
            .map(|chain| {
                opts.user.as_deref().is_some_and(|user| {
                    self.get(chain)
                        .is_some_and(|meta| meta.users.contains(user))
                })
            })
            .collect();
        let results: Mutex<Vec<Option<Result<PreparedLayer, StoreError>>>> =
            Mutex::new((0..layers.len()).map(|_| None).collect());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let workers = opts.parallelism.max(1).min(layers.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    // Stop taking work after a failure; the image cannot be used anyway.
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = layers.get(i) else { return };
                    let parent = i.checked_sub(1).map(|p| chains[p].clone());
                    let r = self.prepare_layer(
                        layer,
                        &chains[i],
                        parent,
                        open_blob,
                        opts.user.as_deref(),
                    );
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    lock(&results)[i] = Some(r);
                });
            }
        });
        let mut out = Vec::with_capacity(layers.len());
        let mut first_err = None;
        for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match r {
                Some(Ok(l)) => out.push(l),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        let settled = match first_err {
            Some(e) => Err(e),
            None => self.settle_all(&mut out),
        };
        if let Err(e) = settled {
            if let Some(user) = opts.user.as_deref() {
                self.unpin_new(&out, &pinned_before, &chains, user);
            }
            return Err(e);
        }
        Ok(Prepared { layers: out })
    }

    /// Bottom up, so that a layer inherits from lowers that are settled.
    fn settle_all(&self, out: &mut [PreparedLayer]) -> Result<(), StoreError> {
        for i in 0..out.len() {
            if out[i].meta.pending_dirs.is_empty() {
                continue;
            }
            let lowers: Vec<PathBuf> = out[..i].iter().rev().map(|l| l.fs.clone()).collect();
            out[i].meta = self.settle_implicit_dirs(&out[i].meta.chain_id, &lowers)?;
        }
        Ok(())
    }

    /// Removes `user` from the prepared layers it did not pin before this prepare.
    fn unpin_new(
        &self,
        prepared: &[PreparedLayer],
        pinned_before: &[bool],
        chains: &[String],
        user: &str,
    ) {
        for layer in prepared {
            let index = chains.iter().position(|c| *c == layer.meta.chain_id);
            if index.is_some_and(|i| pinned_before[i]) {
                continue;
            }
            if let Err(err) = self.remove_user(&layer.meta.chain_id, user) {
                tracing::warn!(chain_id = %layer.meta.chain_id, user, error = %err,
                    "cannot take back the pin of a failed prepare");
            }
        }
    }

    /// Gives a snapshot's implicit directories the metadata the lower layers
    /// (`lowers_top_first`, the snapshots of its parent chain) show there.
    /// Idempotent; done under the chainID's lock.
    pub fn settle_implicit_dirs(
        &self,
        chain_id: &str,
        lowers_top_first: &[PathBuf],
    ) -> Result<SnapshotMeta, StoreError> {
        self.with_chain_lock(chain_id, || {
            let mut meta = self
                .get(chain_id)
                .ok_or_else(|| StoreError::NotFound(chain_id.to_string()))?;
            if meta.pending_dirs.is_empty() {
                return Ok(meta);
            }
            let fs_dir = self.fs_path(meta.id);
            for rel in &meta.pending_dirs {
                let path = fs_dir.join(rel);
                implicit::inherit_dir_meta(
                    &fs_dir,
                    lowers_top_first,
                    Path::new(rel),
                    self.limits.preserve_owner,
                )
                .map_err(io_err("inherit dir metadata", &path))?;
            }
            // Durable before meta.json says it is done.
            let fd = open_dir_path(&fs_dir).map_err(io_err("open", &fs_dir))?;
            syncfs(fd.as_fd()).map_err(io_err("syncfs", &fs_dir))?;
            meta.pending_dirs.clear();
            self.rewrite_meta(&meta)?;
            Ok(meta)
        })
    }

    /// Ensures one layer (whose chainID and parent chainID the caller computed)
    /// is unpacked. Does not settle implicit directories: [`Self::prepare`]
    /// does, or call [`Self::settle_implicit_dirs`] once the lowers exist.
    pub fn prepare_layer(
        &self,
        layer: &LayerSpec,
        chain_id: &str,
        parent: Option<String>,
        open_blob: &BlobOpener<'_>,
        user: Option<&str>,
    ) -> Result<PreparedLayer, StoreError> {
        self.with_chain_lock(chain_id, || {
            if let Some(mut meta) = self.get(chain_id) {
                if let Some(u) = user {
                    meta = self.add_user_locked(meta, u)?;
                }
                return Ok(PreparedLayer {
                    fs: self.fs_path(meta.id),
                    meta,
                    outcome: LayerOutcome::Reused,
                });
            }
            let (meta, stats) = self.unpack_new(layer, chain_id, parent, open_blob, user)?;
            Ok(PreparedLayer {
                fs: self.fs_path(meta.id),
                meta,
                outcome: LayerOutcome::Unpacked(stats),
            })
        })
    }

    fn unpack_new(
        &self,
        layer: &LayerSpec,
        chain_id: &str,
        parent: Option<String>,
        open_blob: &BlobOpener<'_>,
        user: Option<&str>,
    ) -> Result<(SnapshotMeta, LayerStats), StoreError> {
        let id = {
            let mut idx = lock(&self.index);
            let id = idx.next_id;
            idx.next_id += 1;
            id
        };
        let tmp = self.dir.join(format!("tmp-{id}"));
        let fs_dir = tmp.join(FS);
        fs::create_dir_all(&fs_dir).map_err(io_err("create", &fs_dir))?;
        let result = (|| {
            let blob = open_blob(layer).map_err(|source| StoreError::Blob {
                layer: layer.digest.clone(),
                source,
            })?;
            let stats = unpack_layer(blob, &fs_dir, layer, &self.limits, ExtractMode::Overlay)?;
            let has_parent = parent.is_some();
            let meta = SnapshotMeta {
                id,
                chain_id: chain_id.to_string(),
                diff_id: layer.diff_id.clone(),
                parent,
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
                size: stats.file_bytes,
                users: user.map(str::to_string).into_iter().collect(),
                created: now(),
                // A base layer has nothing below to inherit from. Paths that are
                // not UTF-8 cannot go into meta.json and keep the default (quirk).
                pending_dirs: if has_parent {
                    stats
                        .implicit_dirs
                        .iter()
                        .filter_map(|p| p.to_str().map(str::to_string))
                        .collect()
                } else {
                    Vec::new()
                },
            };
            write_file_synced(&tmp.join(META), &meta_bytes(&meta, &tmp)?)?;
            // One syncfs flushes every file of the layer before it becomes visible.
            let fd = open_dir_path(&tmp).map_err(io_err("open", &tmp))?;
            syncfs(fd.as_fd()).map_err(io_err("syncfs", &tmp))?;
            let dest = self.dir.join(id.to_string());
            fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
            sync_dir(&self.dir)?;
            Ok((meta, stats))
        })();
        match result {
            Ok((meta, stats)) => {
                lock(&self.index)
                    .by_chain
                    .insert(chain_id.to_string(), meta.clone());
                Ok((meta, stats))
            }
            Err(e) => {
                // A failed or unverified unpack never becomes a snapshot.
                let _ = berth_fstree::remove_tree(&tmp);
                Err(e)
            }
        }
    }

    /// Adds a user (container id, image pin) to a snapshot.
    pub fn add_user(&self, chain_id: &str, user: &str) -> Result<SnapshotMeta, StoreError> {
        self.with_chain_lock(chain_id, || {
            let meta = self
                .get(chain_id)
                .ok_or_else(|| StoreError::NotFound(chain_id.to_string()))?;
            self.add_user_locked(meta, user)
        })
    }

    fn add_user_locked(
        &self,
        mut meta: SnapshotMeta,
        user: &str,
    ) -> Result<SnapshotMeta, StoreError> {
        if meta.users.insert(user.to_string()) {
            self.rewrite_meta(&meta)?;
        }
        Ok(meta)
    }

    /// Removes a user; unknown users are ignored (idempotent).
    pub fn remove_user(&self, chain_id: &str, user: &str) -> Result<SnapshotMeta, StoreError> {
        self.with_chain_lock(chain_id, || {
            let mut meta = self
                .get(chain_id)
                .ok_or_else(|| StoreError::NotFound(chain_id.to_string()))?;
            if meta.users.remove(user) {
                self.rewrite_meta(&meta)?;
            }
            Ok(meta)
        })
    }

    fn rewrite_meta(&self, meta: &SnapshotMeta) -> Result<(), StoreError> {
        let dir = self.dir.join(meta.id.to_string());
        let tmp = dir.join(format!("{META}.tmp"));
        write_file_synced(&tmp, &meta_bytes(meta, &dir)?)?;
        let dest = dir.join(META);
        fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
        sync_dir(&dir)?;
        lock(&self.index)
            .by_chain
            .insert(meta.chain_id.clone(), meta.clone());
        Ok(())
    }

    /// Removes a snapshot; refused while it has users unless `force`.
    pub fn remove(&self, chain_id: &str, force: bool) -> Result<SnapshotMeta, StoreError> {
        self.with_chain_lock(chain_id, || {
            let meta = self
                .get(chain_id)
                .ok_or_else(|| StoreError::NotFound(chain_id.to_string()))?;
            if !meta.users.is_empty() && !force {
                return Err(StoreError::InUse {
                    chain_id: chain_id.to_string(),
                    users: meta.users.iter().cloned().collect(),
                });
            }
            // Rename first: the snapshot disappears atomically, and a crash
            // during the slow delete leaves `rm-*` debris that open() clears.
            let from = self.dir.join(meta.id.to_string());
            let to = self.dir.join(format!("rm-{}", meta.id));
            fs::rename(&from, &to).map_err(io_err("rename", &from))?;
            lock(&self.index).by_chain.remove(chain_id);
            sync_dir(&self.dir)?;
            berth_fstree::remove_tree(&to).map_err(io_err("remove", &to))?;
            Ok(meta)
        })
    }

    /// Removes every snapshot without users; returns what was removed.
    pub fn prune(&self) -> Result<Vec<SnapshotMeta>, StoreError> {
        let mut removed = Vec::new();
        for m in self.list() {
            if !m.users.is_empty() {
                continue;
            }
            match self.remove(&m.chain_id, false) {
                Ok(m) => removed.push(m),
                // Pinned or removed by someone else since the listing.
                Err(StoreError::InUse { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    fn with_chain_lock<T>(&self, chain_id: &str, f: impl FnOnce() -> T) -> T {
        let m = lock(&self.chain_locks)
            .entry(chain_id.to_string())
            .or_default()
            .clone();
        let out = {
            let _g = lock(&m);
            f()
        };
        let mut locks = lock(&self.chain_locks);
        // Only the map and this call hold it: nobody waits, forget it.
        if Arc::strong_count(&m) == 2 {
            locks.remove(chain_id);
        }
        out
    }
}

fn meta_bytes(meta: &SnapshotMeta, dir: &Path) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(meta).map_err(|source| StoreError::Meta {
        path: dir.join(META),
        source,
    })
}

fn read_meta(dir: &Path) -> Option<SnapshotMeta> {
    let bytes = fs::read(dir.join(META)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let fd = open_dir_path(dir).map_err(io_err("open", dir))?;
    fsync(fd.as_fd()).map_err(io_err("fsync", dir))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_wire_kinds() {
        use berth_proto::ErrorKind as K;
        assert_eq!(StoreError::NotFound("x".into()).kind(), K::NotFound);
        let mismatch = StoreError::Layer(Error::new(
            "sha256:l",
            super::super::LayerError::DigestMismatch {
                expected: "a".into(),
                actual: "b".into(),
            },
        ));
        assert_eq!(mismatch.kind(), K::Invalid);
        let users = vec!["c".to_string()];
        let in_use = StoreError::InUse {
            chain_id: "x".into(),
            users,
        };
        assert_eq!(in_use.kind(), K::Conflict);
    }

    #[test]
    fn lowerdir_option_is_relative_and_top_first() {
        assert_eq!(lowerdir_option(&[3, 2, 1]), "3/fs:2/fs:1/fs");
    }

    #[test]
    fn options_for_128_layers_fit_one_page() {
        // Worst realistic case: ids in the hundred-thousands on a busy node and
        // long upper/work paths under a custom data dir.
        let ids: Vec<u64> = (0..128).map(|i| 999_000 + i).rev().collect();
        let upper = Path::new("/var/lib/berth/containers/0123456789abcdef0123456789abcdef/upper");
        let work = Path::new("/var/lib/berth/containers/0123456789abcdef0123456789abcdef/work");
        let s = overlay_mount_options(&ids, upper, work).expect("fits");
        assert!(s.len() < 4096, "{} bytes", s.len());
        assert_eq!(s.matches(":").count(), 127);
        // Absolute snapshot paths would not have fit: that is why they are relative.
        let abs: Vec<String> = ids
            .iter()
            .map(|i| format!("/var/lib/berth/snapshots/{i}/fs"))
            .collect();
        assert!(abs.join(":").len() > 4096);
    }

    #[test]
    fn options_too_long_is_an_error() {
        let ids: Vec<u64> = (0..1000).collect();
        assert!(matches!(
            overlay_mount_options(&ids, Path::new("/u"), Path::new("/w")),
            Err(StoreError::OptionsTooLong { .. })
        ));
    }
}

//! The copy-based ("native") snapshotter for hosts without overlayfs: one complete tree
//! per image at `<data>/native/<top chainID hex>/fs`, built by the snapshot library's
//! applier (same extractor and safety rules as overlay form; whiteouts delete, opaque
//! markers clear). A tree is complete exactly when its `meta.json` exists: the tree is
//! renamed into place after verification, then the meta file is written atomically, and
//! anything else found at open is debris of a crash and is removed.

use crate::snapshot::{apply_layers, chain_ids, BlobOpener, LayerSpec, Limits, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const META: &str = "meta.json";
const FS: &str = "fs";

/// `native/<key>/meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMeta {
    /// chainID of the image's top layer: the tree's identity.
    pub chain_id: String,
    /// diff_id of the top layer.
    pub diff_id: String,
    /// Blob digest of the top layer.
    pub digest: String,
    /// Layers applied.
    pub layers: u32,
    /// Bytes of regular files.
    pub size: u64,
    pub users: BTreeSet<String>,
    /// Unix seconds.
    pub created: i64,
}

/// A prepared tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub meta: TreeMeta,
    pub fs: PathBuf,
    /// Built by this call (false: it was already there).
    pub built: bool,
}

/// The native trees of one node.
pub struct NativeTrees {
    dir: PathBuf,
    limits: Limits,
    /// One lock per tree being built or changed.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use crate::snapshot::store::io_err as io;

/// The directory name of a tree: the chainID's hex.
pub fn tree_key(chain_id: &str) -> &str {
    chain_id.split_once(':').map_or(chain_id, |(_, hex)| hex)
}

impl NativeTrees {
    /// Opens (creating) `dir` and removes crash debris: temp trees and trees whose meta
    /// file was never written.
    pub fn open(dir: impl AsRef<Path>, limits: Limits) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let path = entry.map_err(io("read", &dir))?.path();
            let complete = path.join(META).is_file();
            if !complete {
                tracing::info!(path = %path.display(), "removing an incomplete native tree");
                // Never a reason not to start: retried at the next one.
                if let Err(e) = berth_fstree::remove_tree(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove native tree debris");
                }
            }
        }
        Ok(NativeTrees {
            dir,
            limits,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn with_lock<T>(&self, key: &str, work: impl FnOnce() -> T) -> T {
        let entry = lock(&self.locks)
            .entry(key.to_string())
            .or_default()
            .clone();
        let _guard = lock(&entry);
        work()
    }

    fn read_meta(&self, key: &str) -> Option<TreeMeta> {
        let bytes = std::fs::read(self.dir.join(key).join(META)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_meta(&self, key: &str, meta: &TreeMeta) -> Result<(), StoreError> {
        let path = self.dir.join(key).join(META);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(meta).map_err(|source| StoreError::Meta {
            path: path.clone(),
            source,
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(&bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        Ok(())
    }

    /// Ensures the tree of an image exists, pinning it for `user`.
    pub fn prepare(
        &self,
        layers: &[LayerSpec],
        open_blob: &BlobOpener<'_>,
        user: Option<&str>,
    ) -> Result<Tree, StoreError> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let chains = chain_ids(&diff_ids)?;
        let (Some(top), Some(top_layer)) = (chains.last(), layers.last()) else {
            return Err(StoreError::NotFound("an image without layers".into()));
        };
        let key = tree_key(top).to_string();
        self.with_lock(&key, || {
            let fs = self.dir.join(&key).join(FS);
            if let Some(mut meta) = self.read_meta(&key) {
                if let Some(user) = user {
                    if meta.users.insert(user.to_string()) {
                        self.write_meta(&key, &meta)?;
                    }
                }
                return Ok(Tree {
                    meta,
                    fs,
                    built: false,
                });
            }
            // A tree dir without meta is debris of a build that did not finish.
            let tree_dir = self.dir.join(&key);
            if tree_dir.exists() {
                berth_fstree::remove_tree(&tree_dir).map_err(io("remove", &tree_dir))?;
            }
            std::fs::create_dir_all(&tree_dir).map_err(io("create", &tree_dir))?;
            let stats = match apply_layers(&fs, layers, open_blob, &self.limits) {
                Ok(stats) => stats,
                Err(err) => {
                    let _ = berth_fstree::remove_tree(&tree_dir);
                    return Err(err);
                }
            };
            let meta = TreeMeta {
                chain_id: top.clone(),
                diff_id: top_layer.diff_id.clone(),
                digest: top_layer.digest.clone(),
                layers: layers.len() as u32,
                size: stats.iter().map(|s| s.file_bytes).sum(),
                users: user.map(str::to_string).into_iter().collect(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            };
            self.write_meta(&key, &meta)?;
            Ok(Tree {
                meta,
                fs,
                built: true,
            })
        })
    }

    /// Drops `user`'s pin from the tree of `chain_id`; true when it held one.
    pub fn remove_user(&self, chain_id: &str, user: &str) -> Result<bool, StoreError> {
        let key = tree_key(chain_id).to_string();
        self.with_lock(&key, || {
            let Some(mut meta) = self.read_meta(&key) else {
                return Ok(false);
            };
            if !meta.users.remove(user) {
                return Ok(false);
            }
            self.write_meta(&key, &meta)?;
            Ok(true)
        })
    }

    /// Every complete tree.
    pub fn list(&self) -> Vec<TreeMeta> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut trees: Vec<TreeMeta> = entries
            .flatten()
            .filter_map(|e| self.read_meta(&e.file_name().to_string_lossy()))
            .collect();
        trees.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        trees
    }

    /// The tree of one top chainID.
    pub fn get(&self, chain_id: &str) -> Option<TreeMeta> {
        self.read_meta(tree_key(chain_id))
    }

    /// Removes one tree (meta first, so a crash halfway leaves debris, never a tree
    /// that looks complete).
    pub fn remove(&self, chain_id: &str, force: bool) -> Result<TreeMeta, StoreError> {
        let key = tree_key(chain_id).to_string();
        self.with_lock(&key, || {
            let meta = self
                .read_meta(&key)
                .ok_or_else(|| StoreError::NotFound(chain_id.to_string()))?;
            if !force && !meta.users.is_empty() {
                return Err(StoreError::InUse {
                    chain_id: chain_id.to_string(),
                    users: meta.users.iter().cloned().collect(),
                });
            }
            let dir = self.dir.join(&key);
            let meta_path = dir.join(META);
            std::fs::remove_file(&meta_path).map_err(io("remove", &meta_path))?;
            berth_fstree::remove_tree(&dir).map_err(io("remove", &dir))?;
            Ok(meta)
        })
    }

    /// Removes every tree without users.
    pub fn prune(&self) -> Result<Vec<TreeMeta>, StoreError> {
        let mut removed = Vec::new();
        for meta in self.list() {
            if meta.users.is_empty() {
                match self.remove(&meta.chain_id, false) {
                    Ok(meta) => removed.push(meta),
                    Err(StoreError::InUse { .. }) | Err(StoreError::NotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder
                .append_data(&mut header, path, content.as_bytes())
                .expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn spec(bytes: &[u8]) -> LayerSpec {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        LayerSpec {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            diff_id: digest,
        }
    }

    #[test]
    fn a_tree_is_built_once_pinned_and_pruned_when_unused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lower = layer_tar(&[("a", "1"), ("gone", "x")]);
        let upper = layer_tar(&[("b", "2"), (".wh.gone", "")]);
        let layers = vec![spec(&lower), spec(&upper)];
        let blobs: HashMap<String, Vec<u8>> = [
            (layers[0].digest.clone(), lower),
            (layers[1].digest.clone(), upper),
        ]
        .into_iter()
        .collect();
        let opens = std::sync::atomic::AtomicUsize::new(0);
        let open = |layer: &LayerSpec| -> std::io::Result<Box<dyn Read + Send>> {
            opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(std::io::Cursor::new(blobs[&layer.digest].clone())))
        };
        let limits = Limits {
            preserve_owner: false,
            ..Default::default()
        };
        let trees = NativeTrees::open(dir.path(), limits).expect("open");
        let first = trees.prepare(&layers, &open, Some("c1")).expect("prepare");
        assert!(first.built);
        assert_eq!(std::fs::read_to_string(first.fs.join("a")).expect("a"), "1");
        assert_eq!(std::fs::read_to_string(first.fs.join("b")).expect("b"), "2");
        assert!(
            !first.fs.join("gone").exists(),
            "whiteouts delete in a native tree"
        );
        let again = trees.prepare(&layers, &open, None).expect("prepare again");
        assert!(!again.built);
        assert_eq!(
            opens.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "blobs read once"
        );
        assert!(
            trees.prune().expect("prune").is_empty(),
            "pinned trees stay"
        );
        assert!(matches!(
            trees.remove(&first.meta.chain_id, false),
            Err(StoreError::InUse { .. })
        ));
        trees
            .remove(&first.meta.chain_id, true)
            .expect("forced remove");
        assert!(trees.list().is_empty());
    }

    #[test]
    fn debris_is_removed_at_open_and_a_failed_build_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("deadbeef/fs/x")).expect("debris");
        let trees = NativeTrees::open(dir.path(), Limits::default()).expect("open");
        assert!(!dir.path().join("deadbeef").exists());
        let layer = layer_tar(&[("a", "1")]);
        let mut wrong = spec(&layer);
        wrong.diff_id = format!("sha256:{}", "0".repeat(64));
        let open = |_: &LayerSpec| -> std::io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(std::io::Cursor::new(layer.clone())))
        };
        assert!(trees.prepare(&[wrong], &open, None).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
    }
}

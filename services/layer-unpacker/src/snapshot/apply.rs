//! The copy-based ("native") fallback for hosts without overlayfs: the layers of
//! one image applied in order into one tree. Same entry rules as overlay form
//! (same extractor, same safety checks); whiteouts delete and opaque markers
//! clear instead of being kept.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::extract::{unpack_layer, ExtractMode, LayerStats};
use super::safe_path::{fsync, open_dir_path, syncfs};
use super::store::{io_err, BlobOpener, StoreError};
use super::{LayerSpec, Limits};

/// Builds the root filesystem of an image at `dest` (which must not exist) by
/// applying `layers` bottom first. The tree is built in a sibling temp dir and
/// renamed into place only when every layer verified, so `dest` either is
/// complete or does not exist. Returns per-layer stats, bottom first.
pub fn apply_layers(
    dest: &Path,
    layers: &[LayerSpec],
    open_blob: &BlobOpener<'_>,
    limits: &Limits,
) -> Result<Vec<LayerStats>, StoreError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(StoreError::Exists(dest.to_path_buf()));
    }
    let tmp = temp_sibling(dest);
    // Debris of an earlier crashed apply of the same destination.
    if fs::symlink_metadata(&tmp).is_ok() {
        berth_fstree::remove_tree(&tmp).map_err(io_err("remove stale", &tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    let result = (|| {
        let mut stats = Vec::with_capacity(layers.len());
        for layer in layers {
            let blob = open_blob(layer).map_err(|source| StoreError::Blob {
                layer: layer.digest.clone(),
                source,
            })?;
            stats.push(unpack_layer(blob, &tmp, layer, limits, ExtractMode::Apply)?);
        }
        let fd = open_dir_path(&tmp).map_err(io_err("open", &tmp))?;
        syncfs(fd.as_fd()).map_err(io_err("syncfs", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("rename", dest))?;
        if let Some(parent) = dest.parent() {
            let pfd = open_dir_path(parent).map_err(io_err("open", parent))?;
            fsync(pfd.as_fd()).map_err(io_err("fsync", parent))?;
        }
        Ok(stats)
    })();
    if result.is_err() {
        let _ = berth_fstree::remove_tree(&tmp);
    }
    result
}

/// `<parent>/.<name>.tmp`: same filesystem, so the final rename is atomic.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rootfs".to_string());
    dest.with_file_name(format!(".{name}.tmp"))
}

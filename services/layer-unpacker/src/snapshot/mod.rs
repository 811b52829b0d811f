//! Layer snapshots on a node's disk (DESIGN.md, "A node's disk").
//!
//! Pure, synchronous building blocks the async service calls from
//! `spawn_blocking`:
//! - [`decompress`]: media type + magic bytes → a decompressing reader;
//! - [`extract`]: one layer tar → one directory, in overlay form (whiteouts as
//!   0:0 char devices, opaque dirs as `trusted.overlay.opaque=y`) or applied onto
//!   an existing tree (whiteouts delete, opaque dirs clear), verifying the diff_id;
//! - [`safe_path`]: every path is resolved inside the root without following
//!   symlinks;
//! - [`store`]: `snapshots/<n>/{fs,meta.json}` keyed by chainID, crash safe;
//! - [`apply`]: the copy-based fallback that builds one tree per image;
//! - [`chain`]: chainID computation (OCI image spec);
//! - [`implicit`]: directories a layer only implies get their lower layers' metadata.

pub mod apply;
pub mod chain;
pub mod decompress;
pub mod extract;
pub mod implicit;
pub mod safe_path;
pub mod store;

use std::path::PathBuf;

pub use apply::apply_layers;
pub use chain::{chain_ids, ChainError};
pub use decompress::Compression;
pub use extract::{unpack_layer, ExtractMode, LayerStats};
pub use store::{
    lowerdir_option, overlay_mount_options, BlobOpener, LayerOutcome, PrepareOptions, Prepared,
    PreparedLayer, SnapshotMeta, SnapshotStore, StoreError, MAX_MOUNT_OPTIONS,
};

/// One layer of an image as the manifest and config describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// Digest of the blob as stored (compressed), e.g. `sha256:…`.
    pub digest: String,
    /// Manifest media type; decides the decompressor (checked by magic bytes).
    pub media_type: String,
    /// Digest of the uncompressed tar from the image config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// Bounds and policy for unpacking untrusted layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Max bytes of the decompressed stream (tar headers included): bombs stop here.
    pub max_uncompressed_bytes: u64,
    /// Max tar entries in one layer.
    pub max_entries: u64,
    /// Create block/char device nodes found in layers. Off inside a user namespace,
    /// where a device node would be a way to reach host devices if the tree were
    /// ever used outside it.
    pub allow_devices: bool,
    /// Apply uid/gid from the tar (needs CAP_CHOWN). Off when not root, so that
    /// logic can be tested unprivileged.
    pub preserve_owner: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 4_000_000,
            allow_devices: !in_user_namespace(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            preserve_owner: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// True when this process runs in a user namespace that does not map the whole
/// uid range (i.e. anything but the initial namespace).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        // No /proc: assume the worst.
        Err(_) => true,
    }
}

/// What went wrong with one entry (or the stream) of a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the layer stream: {0}")]
    Stream(#[source] std::io::Error),
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: PathBuf, reason: &'static str },
    #[error("duplicate entry {0}")]
    Duplicate(PathBuf),
    #[error("hardlink {path} -> {target}: {reason}")]
    Hardlink {
        path: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("device node {0} refused (device nodes are not allowed here)")]
    DeviceNotAllowed(PathBuf),
    #[error("unsupported entry type {kind:?} at {path}")]
    Unsupported { path: PathBuf, kind: u8 },
    #[error("uncompressed size exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("compression: {0}")]
    Compression(String),
    #[error("diff_id mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("malformed entry {path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

/// A layer failed to unpack; says which one.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: {source}")]
pub struct Error {
    /// The layer's blob digest.
    pub layer: String,
    #[source]
    pub source: LayerError,
}

impl Error {
    pub(crate) fn new(layer: &str, source: LayerError) -> Self {
        Error {
            layer: layer.to_string(),
            source,
        }
    }
}

//! `berth.v1.image.*`
//!
//! Bulk bytes never ride these messages: a tarball for `import`/`load` is first put in
//! the `berth-blobs` Object Store under [`crate::subjects::jetstream::upload_object`],
//! and `save` writes its archive under [`crate::subjects::jetstream::download_object`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `list`: images known to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageListRequest {
    /// Only references whose repository starts with this (Docker's `images REPO`).
    #[serde(default)]
    pub repository_prefix: Option<String>,
}

/// One row of `berth images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageSummary {
    /// `repository:tag`, or `None` for an untagged (dangling) image.
    pub reference: Option<String>,
    /// Manifest digest (`sha256:…`).
    pub digest: String,
    /// Creation time from the image config, RFC 3339.
    pub created: Option<String>,
    /// Sum of the compressed layer sizes plus config, in bytes.
    pub size: u64,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageList {
    pub images: Vec<ImageSummary>,
}

/// `import`: a one-layer image from a root filesystem tarball (like `docker import`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageImportRequest {
    /// Object in `berth-blobs` holding the tarball (plain or gzip); deleted afterwards.
    pub upload: String,
    /// `name[:tag]` to give the image; `None` leaves it untagged.
    #[serde(default)]
    pub reference: Option<String>,
    /// `--change` instructions (`CMD …`, `ENV …`, `WORKDIR …`, `ENTRYPOINT …`…).
    #[serde(default)]
    pub changes: Vec<String>,
    /// History comment (`--message`).
    #[serde(default)]
    pub message: Option<String>,
    /// `os/arch[/variant]` recorded in the config (default: the store's host).
    #[serde(default)]
    pub platform: Option<String>,
    /// Name of the source for history and errors (a file name, or `-`).
    #[serde(default)]
    pub source_name: Option<String>,
}

/// An image the store now holds, with the names it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoredImage {
    /// Manifest digest.
    pub digest: String,
    /// Config digest (Docker's image ID).
    pub config_digest: String,
    /// References pointing at it after the operation (familiar form).
    pub references: Vec<String>,
    /// Layer blobs that were written (the rest were already stored).
    pub blobs_written: u32,
}

/// Reply to `import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageImportReply {
    pub image: StoredImage,
}

/// `load`: every image of a docker-archive or OCI layout tar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageLoadRequest {
    /// Object in `berth-blobs` holding the tar; deleted afterwards.
    pub upload: String,
    /// Platform to pick from OCI indexes (default: the store's host).
    #[serde(default)]
    pub platform: Option<String>,
    /// Name of the source for errors (a file name, or `-`).
    #[serde(default)]
    pub source_name: Option<String>,
}

/// Reply to `load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageLoadReply {
    pub images: Vec<StoredImage>,
}

/// `save`: a docker-archive of one or more images, written to a download object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSaveRequest {
    /// References, digests or ID prefixes.
    pub names: Vec<String>,
    /// Object in `berth-blobs` to write the archive to; the caller fetches and deletes it.
    pub download: String,
}

/// Reply to `save`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageSaveReply {
    /// The object holding the archive.
    pub download: String,
    /// Archive size in bytes.
    pub size: u64,
    /// Manifest digests of the images in it.
    pub digests: Vec<String>,
}

/// `inspect` and `history`: one image by reference, digest or ID prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInspectRequest {
    pub name: String,
}

/// os/arch/variant of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// One layer as stored, with what the unpacker needs to fetch and key it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LayerInfo {
    /// Blob digest (object name in `berth-blobs`).
    pub digest: String,
    /// Layer media type (tells the compression).
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Uncompressed tar size when known.
    pub uncompressed_size: Option<u64>,
    /// Digest of the uncompressed tar (config `rootfs.diff_ids`).
    pub diff_id: String,
    /// chainID of this layer and every layer below it.
    pub chain_id: String,
}

/// Reply to `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageInspect {
    /// Manifest digest.
    pub digest: String,
    /// Config digest (Docker's image ID).
    pub config_digest: String,
    /// References pointing at it (familiar form), sorted.
    pub references: Vec<String>,
    pub manifest_media_type: String,
    /// The manifest JSON exactly as stored.
    pub manifest: String,
    /// The config JSON exactly as stored (what the executor builds the runtime spec from).
    pub config: String,
    pub platform: ImagePlatform,
    /// Creation time from the config, RFC 3339.
    pub created: Option<String>,
    /// Config plus compressed layers, bytes.
    pub size: u64,
    /// Sum of the uncompressed layer sizes, when every one is known.
    pub uncompressed_size: Option<u64>,
    /// Layers, base first.
    pub layers: Vec<LayerInfo>,
}

/// One row of `berth history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_by: String,
    /// Bytes the step added (0 for an empty layer).
    pub size: u64,
    pub comment: String,
    pub empty_layer: bool,
}

/// Reply to `history`: rows newest first, like `docker history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageHistory {
    pub digest: String,
    pub entries: Vec<HistoryEntry>,
}

/// `tag`: point `target` at the image `source` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageTagRequest {
    pub source: String,
    pub target: String,
}

/// Reply to `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageTagReply {
    /// The new reference (familiar form).
    pub reference: String,
    pub digest: String,
}

/// `remove` (`berth rmi`): untag a reference, or delete an image by digest/ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRemoveRequest {
    pub name: String,
    /// Like `docker rmi -f`: remove every reference of an image named by digest/ID.
    #[serde(default)]
    pub force: bool,
}

/// What `remove` and `prune` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRemoveReply {
    /// References removed.
    pub untagged: Vec<String>,
    /// Manifest digests of images deleted.
    pub deleted: Vec<String>,
    /// Blobs deleted because no image refers to them any more.
    pub blobs_deleted: Vec<String>,
    /// Bytes of the deleted blobs.
    pub space_reclaimed: u64,
}

/// `prune`: delete dangling (untagged) images and unreferenced blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePruneRequest {
    /// Reserved for `prune -a`; must be false for now.
    #[serde(default)]
    pub all: bool,
}

/// Body of `berth.v1.events.image.<digest hex>.<action>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageEvent {
    /// `pull`, `import`, `load`, `tag`, `untag` or `delete`.
    pub action: String,
    /// Manifest digest.
    pub digest: String,
    /// The reference concerned, if any.
    pub reference: Option<String>,
    /// RFC 3339.
    pub time: String,
}

/// `pull`: fetch an image from a registry into the store (`docker pull`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePullRequest {
    /// `name[:tag]` or `name@sha256:…` (Docker Hub rules for short names).
    pub reference: String,
    /// `os/arch[/variant]` to pick from a multi-platform image (default: the store's host).
    #[serde(default)]
    pub platform: Option<String>,
    /// Subject to publish [`ImageTransferProgress`] on while the work goes on.
    #[serde(default)]
    pub progress: Option<String>,
}

/// Reply to `pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePullReply {
    pub image: StoredImage,
    /// Digest the reference resolved to on the registry: the index's for a
    /// multi-platform image, else the manifest's (what `docker pull` prints).
    pub registry_digest: String,
    /// Layers that were already stored and not fetched.
    pub layers_present: u32,
}

/// `push`: upload an image to a registry (`docker push`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePushRequest {
    /// The local image (reference, digest or ID prefix).
    pub name: String,
    /// Where to push (`registry/repo[:tag]`); default: `name` itself.
    #[serde(default)]
    pub destination: Option<String>,
    /// Subject to publish [`ImageTransferProgress`] on while the work goes on.
    #[serde(default)]
    pub progress: Option<String>,
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushedBlob {
    pub digest: String,
    /// `exists`, `mounted` or `uploaded`.
    pub outcome: String,
    /// PATCH requests of a chunked upload (0 for one PUT or no upload).
    pub chunks: u32,
}

/// Reply to `push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePushReply {
    /// The reference pushed to (full form, with registry).
    pub destination: String,
    /// Manifest digest on the registry.
    pub digest: String,
    /// Config first, then layers.
    pub blobs: Vec<PushedBlob>,
}

/// One blob's state in a pull or push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BlobProgress {
    pub digest: String,
    /// Bytes done so far.
    pub done: u64,
    /// Blob size.
    pub total: u64,
    /// `waiting`, `present`, `downloading`, `uploading`, `done`, `exists`, `mounted`.
    pub status: String,
}

/// Published a few times a second on a pull's or push's progress subject; also the
/// heartbeat that tells the caller the store is alive while it waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageTransferProgress {
    /// The image (reference as given).
    pub image: String,
    /// Layers (pull) or config and layers (push), in manifest order; empty while
    /// the manifest is being resolved.
    pub blobs: Vec<BlobProgress>,
}

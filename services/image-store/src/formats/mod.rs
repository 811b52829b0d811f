//! Pure image-format logic: references, digests, manifests, archives, import.
//! Nothing here talks to NATS; the store persists what these modules produce.
//!
//! Every producer ends in the same shape: an [`image::ImageToStore`] (manifest and
//! config bytes with their digests, layer descriptors with diff_ids, references) plus
//! layer blobs handed out as readers that verify digest and size while streaming:
//!
//! - pull: [`reference::Reference::parse`] → fetch manifest (`manifest::MANIFEST_ACCEPT`)
//!   → [`manifest::parse_manifest`]; for an index [`manifest::select_platform`] and fetch
//!   again → fetch config → [`image::ImageToStore::from_manifest_and_config`]; stream
//!   each layer through [`digest::AsyncVerifyingReader`] into the object store.
//! - load: [`load::load_archive`] (docker-archive or OCI layout tar, detected), or
//!   [`docker_archive::DockerArchive::read`] / [`oci_layout::OciLayout::open_dir`] /
//!   [`oci_layout::OciLayout::read_tar`]; then `images()`, `blobs()`, `open_blob(digest)`.
//! - import: [`import::import_rootfs`] → `image` + `open_layer()`.
//! - save: [`docker_archive::write_docker_archive`] with a blob-opening closure.
//!
//! Archives are spooled once to a temp dir the caller chooses (see [`archive`]); all
//! spool files are removed when the returned value is dropped.

pub mod archive;
pub mod auth;
pub mod changes;
pub mod digest;
pub mod docker_archive;
pub mod image;
pub mod import;
pub mod load;
pub mod manifest;
pub mod oci_layout;
pub mod reference;

pub use archive::ArchiveError;
pub use digest::{Digest, DigestError};
pub use docker_archive::{write_docker_archive, DockerArchive};
pub use image::{ImageToStore, LayerToStore};
pub use import::{import_rootfs, ImportOptions, ImportedImage};
pub use load::{load_archive, LoadedArchive};
pub use manifest::{select_platform, ManifestError, PlatformSpec};
pub use oci_layout::{OciLayout, OciLoadOptions};
pub use reference::Reference;

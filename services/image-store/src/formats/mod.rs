//! Pure image-format logic: references, digests, manifests, archives, import.
//! Nothing here talks to NATS; the store persists what these modules produce
//! ([`image::ImageToStore`] plus layer blobs handed out as verified readers).

pub mod archive;
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

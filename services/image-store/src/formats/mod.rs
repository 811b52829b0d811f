//! Pure image-format logic: references, digests, manifests, archives, import.
//! Nothing here talks to NATS; the store persists what these modules produce.

pub mod archive;
pub mod digest;
pub mod docker_archive;
pub mod image;
pub mod manifest;
pub mod oci_layout;
pub mod reference;

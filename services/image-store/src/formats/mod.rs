//! Pure image-format logic: references, digests, manifests, archives, import.
//! Nothing here talks to NATS; the store persists what these modules produce.

pub mod digest;
pub mod manifest;
pub mod reference;

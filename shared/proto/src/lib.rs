//! The berth bus contract: every subject, wire type and error code lives here and nowhere else.
//!
//! Servers, the CLI, tests and benchmarks all build subjects with the functions in
//! [`subjects`] and exchange the types in [`messages`], encoded by [`codec`].

pub mod b64;
pub mod codec;
pub mod error;
pub mod json_shape;
pub mod messages;
pub mod subjects;

pub use codec::Encoding;
pub use error::{ErrorEnvelope, ErrorKind};

/// Version of the bus contract; also the `vN` segment of every subject.
pub const CONTRACT_VERSION: &str = "v1";

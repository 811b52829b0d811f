//! Wire types, one module per service. Plain data only: no behaviour beyond constructors.
//!
//! Rules that keep both encodings working: no `skip_serializing_if` (bincode is positional),
//! no untagged enums or `serde_json::Value` (bincode cannot deserialize_any). Optional
//! request fields carry `#[serde(default)]` so JSON callers may leave them out.

pub mod exec;
pub mod image;
pub mod network;
pub mod node;
pub mod sched;
pub mod unpack;

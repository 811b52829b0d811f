//! `berth.v1.image.*`

use serde::{Deserialize, Serialize};

/// `list`: images known to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageListRequest {
    /// Only references whose repository starts with this (Docker's `images REPO`).
    #[serde(default)]
    pub repository_prefix: Option<String>,
}

/// One row of `berth images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<ImageSummary>,
}

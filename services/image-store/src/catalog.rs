//! The image catalogue in the `berth-images` KV bucket.
//!
//! KV keys only allow `[-/_=.a-zA-Z0-9]`, while references contain `:` and `@`, so a
//! reference is stored under `ref.<base64url(reference)>`; the value is a JSON record that
//! stays readable with `nats kv get`.

use async_nats::jetstream::kv;
use berth_proto::messages::image::{ImageList, ImageListRequest, ImageSummary};
use berth_proto::ErrorEnvelope;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// Key prefix of reference records.
pub const REFERENCE_PREFIX: &str = "ref.";

/// What the store keeps for one `repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub reference: String,
    pub digest: String,
    pub created: Option<String>,
    pub size: u64,
}

/// KV key of a reference.
pub fn reference_key(reference: &str) -> String {
    format!("{REFERENCE_PREFIX}{}", base64url(reference.as_bytes()))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let symbols = chunk.len() + 1;
        for i in 0..symbols {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// The catalogue over one KV bucket; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    kv: kv::Store,
}

impl Catalog {
    /// Wraps the `berth-images` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Catalog { kv }
    }

    /// `berth images`: every reference record, sorted by reference.
    pub async fn list(&self, request: &ImageListRequest) -> Result<ImageList, ErrorEnvelope> {
        let unavailable = |err: &dyn std::fmt::Display| {
            ErrorEnvelope::unavailable(format!("cannot read the image catalogue: {err}"))
        };
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|err| unavailable(&err))?,
            Err(err) => return Err(unavailable(&err)),
        };
        let mut images = Vec::new();
        for key in keys.iter().filter(|key| key.starts_with(REFERENCE_PREFIX)) {
            let Some(value) = self.kv.get(key).await.map_err(|err| unavailable(&err))? else {
                continue;
            };
            let record: ReferenceRecord = serde_json::from_slice(&value).map_err(|err| {
                ErrorEnvelope::internal(format!("corrupt catalogue record {key}: {err}"))
            })?;
            if let Some(prefix) = &request.repository_prefix {
                if !record.reference.starts_with(prefix.as_str()) {
                    continue;
                }
            }
            images.push(ImageSummary {
                reference: Some(record.reference),
                digest: record.digest,
                created: record.created,
                size: record.size,
            });
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(ImageList { images })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_keys_use_only_kv_safe_characters() {
        for reference in [
            "busybox:latest",
            "127.0.0.1:5000/x/y:tag",
            "a@sha256:00ff",
            "",
        ] {
            let key = reference_key(reference);
            assert!(key.starts_with(REFERENCE_PREFIX));
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)),
                "{key}"
            );
        }
    }

    #[test]
    fn base64url_matches_rfc4648_without_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn distinct_references_get_distinct_keys() {
        assert_ne!(reference_key("a:b"), reference_key("a:c"));
    }
}

//! The image catalogue's records in the `berth-images` KV bucket, their keys, and the
//! pure decisions of the reference-counted content graph (no NATS here).
//!
//! KV keys only allow `[-/_=.a-zA-Z0-9]`, while references contain `:` and `@`, so a
//! reference is stored under `ref.<base64url(reference)>`; digests become
//! `image.sha256.<hex>` / `blob.sha256.<hex>`. Values are JSON so that they stay
//! readable with `nats kv get`.
//!
//! The graph: `ref.*` → `image.*` (manifest digest) → blobs (config + layers). Each blob
//! has a `blob.*` record listing the manifests that use it ("users", each with the time
//! it was added). A user is added *before* the blob is written, so a blob being
//! written is never collected; a user whose image record never appeared (an import
//! that died) expires after a grace period. Deleting a blob first marks its record
//! `deleting` with a compare-and-set, so a concurrent import either lands its user
//! before the mark (and the deletion backs off) or waits until the deletion is done.

use crate::formats::{Digest, LayerToStore, PlatformSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key prefix of reference records.
pub const REFERENCE_PREFIX: &str = "ref.";
/// Key prefix of image (manifest) records.
pub const IMAGE_PREFIX: &str = "image.";
/// Key prefix of blob records.
pub const BLOB_PREFIX: &str = "blob.";

/// What the store keeps for one `repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub reference: String,
    pub digest: String,
    pub created: Option<String>,
    pub size: u64,
}

/// What the store keeps for one image, keyed by manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Manifest digest.
    pub digest: Digest,
    pub manifest_media_type: String,
    /// The manifest exactly as received (its digest is `digest`).
    pub manifest: String,
    pub config_digest: Digest,
    /// The config exactly as received; also stored as a blob.
    pub config: String,
    /// Layers, base first.
    pub layers: Vec<LayerToStore>,
    pub platform: PlatformSpec,
    /// Creation time from the config.
    pub created: Option<String>,
    /// Config plus compressed layers, bytes.
    pub size: u64,
}

impl ImageRecord {
    /// Every blob the image needs: config first, then layers, without repeats.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out = vec![self.config_digest.clone()];
        for layer in &self.layers {
            if !out.contains(&layer.digest) {
                out.push(layer.digest.clone());
            }
        }
        out
    }
}

/// Users of one blob and whether it is being deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Manifest digest → unix seconds when it started using the blob.
    pub users: BTreeMap<String, u64>,
    /// Unix seconds when a deletion began; the blob must not be used meanwhile.
    pub deleting_since: Option<u64>,
    /// The one writer of the blob's bytes right now, so that concurrent imports or
    /// pulls of the same blob write it once (and never replace each other's object
    /// under a reader).
    #[serde(default)]
    pub writer: Option<BlobWriter>,
}

/// Who is writing a blob, and when it last said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobWriter {
    pub id: String,
    /// Unix seconds of the last heartbeat.
    pub since: u64,
}

/// What a would-be writer of a blob should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDecision {
    /// The record now names us as the writer; store it and write.
    Write,
    /// Someone else is writing it: wait for the blob to appear.
    WaitForWriter,
}

/// What adding a user to a blob record decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinDecision {
    /// The record now lists the user; write it back.
    Pinned,
    /// A deletion is in progress: wait for it to finish, then create a fresh record.
    WaitForDeletion,
    /// A deletion began so long ago that its deleter died: finish it, then retry.
    FinishStaleDeletion,
}

impl BlobRecord {
    /// Adds `user` (or refreshes its time) unless a deletion is under way.
    pub fn pin(&mut self, user: &str, now: u64, deleting_grace: u64) -> PinDecision {
        if let Some(since) = self.deleting_since {
            return if now.saturating_sub(since) > deleting_grace {
                PinDecision::FinishStaleDeletion
            } else {
                PinDecision::WaitForDeletion
            };
        }
        self.users.insert(user.to_string(), now);
        PinDecision::Pinned
    }

    /// Removes `user`; true when nobody uses the blob any more, so it may be deleted.
    pub fn unpin(&mut self, user: &str) -> bool {
        self.users.remove(user);
        self.users.is_empty() && self.deleting_since.is_none()
    }

    /// Claims the right to write the blob unless another writer's heartbeat is fresher
    /// than `writer_grace` seconds (a writer that died loses its claim).
    pub fn claim_write(&mut self, id: &str, now: u64, writer_grace: u64) -> WriteDecision {
        match &self.writer {
            Some(w) if w.id != id && now.saturating_sub(w.since) <= writer_grace => {
                WriteDecision::WaitForWriter
            }
            _ => {
                self.writer = Some(BlobWriter {
                    id: id.to_string(),
                    since: now,
                });
                WriteDecision::Write
            }
        }
    }

    /// Drops our claim; false if it was not ours (any more).
    pub fn release_write(&mut self, id: &str) -> bool {
        if self.writer.as_ref().is_some_and(|w| w.id == id) {
            self.writer = None;
            true
        } else {
            false
        }
    }

    /// Users whose image record does not exist and who were added more than `grace`
    /// seconds ago: imports that died before committing their image.
    pub fn stale_users(
        &self,
        now: u64,
        grace: u64,
        image_exists: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        self.users
            .iter()
            .filter(|(user, added)| now.saturating_sub(**added) > grace && !image_exists(user))
            .map(|(user, _)| user.clone())
            .collect()
    }
}

/// KV key of a reference.
pub fn reference_key(reference: &str) -> String {
    format!("{REFERENCE_PREFIX}{}", base64url(reference.as_bytes()))
}

/// KV key of an image record.
pub fn image_key(digest: &Digest) -> String {
    format!(
        "{IMAGE_PREFIX}{}.{}",
        digest.algorithm().name(),
        digest.hex()
    )
}

/// KV key of a blob record.
pub fn blob_key(digest: &Digest) -> String {
    format!(
        "{BLOB_PREFIX}{}.{}",
        digest.algorithm().name(),
        digest.hex()
    )
}

/// The digest an `image.*` or `blob.*` key names.
pub fn digest_of_key(key: &str) -> Option<Digest> {
    let rest = key
        .strip_prefix(IMAGE_PREFIX)
        .or_else(|| key.strip_prefix(BLOB_PREFIX))?;
    let (algorithm, hex) = rest.split_once('.')?;
    format!("{algorithm}:{hex}").parse().ok()
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

    #[test]
    fn digest_keys_round_trip() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(digest_of_key(&image_key(&d)), Some(d.clone()));
        assert_eq!(digest_of_key(&blob_key(&d)), Some(d));
        assert_eq!(digest_of_key("ref.abc"), None);
        assert_eq!(digest_of_key("image.sha256.zz"), None);
    }

    #[test]
    fn a_blob_is_collectable_only_when_its_last_user_leaves() {
        let mut r = BlobRecord::default();
        assert_eq!(r.pin("a", 10, 60), PinDecision::Pinned);
        assert_eq!(r.pin("b", 11, 60), PinDecision::Pinned);
        assert!(!r.unpin("a"));
        assert!(!r.unpin("a"), "unpinning twice changes nothing");
        assert!(r.unpin("b"));
    }

    #[test]
    fn pinning_waits_for_a_fresh_deletion_and_finishes_a_stale_one() {
        let mut r = BlobRecord {
            deleting_since: Some(100),
            ..BlobRecord::default()
        };
        assert_eq!(r.pin("a", 130, 60), PinDecision::WaitForDeletion);
        assert!(r.users.is_empty(), "no user added while deleting");
        assert_eq!(r.pin("a", 200, 60), PinDecision::FinishStaleDeletion);
        assert!(!r.unpin("x"), "a record being deleted is not deleted twice");
    }

    #[test]
    fn one_writer_at_a_time_until_its_heartbeat_goes_stale() {
        let mut r = BlobRecord::default();
        assert_eq!(r.claim_write("a", 100, 60), WriteDecision::Write);
        assert_eq!(r.claim_write("b", 150, 60), WriteDecision::WaitForWriter);
        assert_eq!(r.claim_write("a", 150, 60), WriteDecision::Write, "renewal");
        assert_eq!(r.claim_write("b", 211, 60), WriteDecision::Write, "a died");
        assert!(!r.release_write("a"), "a lost its claim");
        assert!(r.release_write("b"));
        assert!(r.writer.is_none());
    }

    #[test]
    fn only_old_users_without_an_image_are_stale() {
        let mut r = BlobRecord::default();
        r.pin("committed", 0, 60);
        r.pin("died", 0, 60);
        r.pin("in-flight", 950, 60);
        let stale = r.stale_users(1000, 100, |u| u == "committed");
        assert_eq!(stale, vec!["died".to_string()]);
    }

    #[test]
    fn image_blobs_are_deduplicated_config_first() {
        let layer = |n: &[u8]| LayerToStore {
            digest: Digest::sha256_of(n),
            size: 1,
            media_type: String::new(),
            diff_id: Digest::sha256_of(n),
            uncompressed_size: None,
        };
        let record = ImageRecord {
            digest: Digest::sha256_of(b"m"),
            manifest_media_type: String::new(),
            manifest: String::new(),
            config_digest: Digest::sha256_of(b"c"),
            config: String::new(),
            layers: vec![layer(b"a"), layer(b"a"), layer(b"b")],
            platform: PlatformSpec::host(),
            created: None,
            size: 0,
        };
        let blobs = record.blobs();
        assert_eq!(blobs.len(), 3);
        assert_eq!(blobs[0], Digest::sha256_of(b"c"));
    }
}

//! `inspect`: everything about one image, including what the layer-unpacker needs
//! (layer digests, media types, diff_ids, chainIDs) and the raw config JSON.

use super::Verbs;
use crate::catalog::ImageRecord;
use crate::formats::digest::chain_ids;
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest, ImagePlatform, LayerInfo};
use berth_proto::ErrorEnvelope;

impl Verbs {
    /// Handles `inspect`.
    pub async fn inspect(
        &self,
        request: ImageInspectRequest,
    ) -> Result<ImageInspect, ErrorEnvelope> {
        let resolved = self.store.resolve(&request.name).await?;
        let references = self.store.references_to(&resolved.record.digest).await?;
        Ok(inspect_record(&resolved.record, references))
    }
}

/// The inspect reply for a record.
pub fn inspect_record(record: &ImageRecord, references: Vec<String>) -> ImageInspect {
    let diff_ids: Vec<_> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let layers: Vec<LayerInfo> = record
        .layers
        .iter()
        .zip(chains)
        .map(|(l, chain)| LayerInfo {
            digest: l.digest.to_string(),
            media_type: l.media_type.clone(),
            size: l.size,
            uncompressed_size: l.uncompressed_size,
            diff_id: l.diff_id.to_string(),
            chain_id: chain.to_string(),
        })
        .collect();
    let uncompressed_size = layers
        .iter()
        .map(|l| l.uncompressed_size)
        .sum::<Option<u64>>();
    ImageInspect {
        digest: record.digest.to_string(),
        config_digest: record.config_digest.to_string(),
        references,
        manifest_media_type: record.manifest_media_type.clone(),
        manifest: record.manifest.clone(),
        config: record.config.clone(),
        platform: ImagePlatform {
            os: record.platform.os.clone(),
            architecture: record.platform.architecture.clone(),
            variant: record.platform.variant.clone(),
        },
        created: record.created.clone(),
        size: record.size,
        uncompressed_size,
        layers,
    }
}

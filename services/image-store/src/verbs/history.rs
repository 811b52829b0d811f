//! `history`: one row per history entry, newest first (`docker history`).

use super::{invalid, Verbs};
use crate::store::image_of_record;
use berth_proto::messages::image::{HistoryEntry, ImageHistory, ImageInspectRequest};
use berth_proto::ErrorEnvelope;

impl Verbs {
    /// Handles `history`.
    pub async fn history(
        &self,
        request: ImageInspectRequest,
    ) -> Result<ImageHistory, ErrorEnvelope> {
        let mut record = self.store.resolve(&request.name).await?.record;
        self.store.measure_uncompressed(&mut record).await?;
        let image = image_of_record(&record, Vec::new());
        let rows = image.history().map_err(invalid)?;
        Ok(ImageHistory {
            digest: record.digest.to_string(),
            entries: rows
                .into_iter()
                .rev()
                .map(|row| HistoryEntry {
                    created: row.created,
                    created_by: row.created_by,
                    size: row.size,
                    comment: row.comment,
                    empty_layer: row.empty_layer,
                })
                .collect(),
        })
    }
}

//! The volume verbs: `volume_create`, `volume_list`, `volume_inspect`, `volume_remove`.

use crate::lifecycle::{blocking, Executor};
use crate::volumes::VolumeError;
use berth_proto::messages::exec::{
    VolumeCreateRequest, VolumeInfo, VolumeList, VolumeListRequest, VolumeRef, VolumeRemoveRequest,
};
use berth_proto::ErrorEnvelope;
use std::sync::Arc;

type Handled<T> = Result<T, ErrorEnvelope>;

/// How long a volume or network verb waits for the node record to carry its change.
pub(crate) const RECORD_REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A volume error as the caller's envelope.
pub(crate) fn volume_error(err: VolumeError) -> ErrorEnvelope {
    match err {
        VolumeError::Invalid(m) => ErrorEnvelope::invalid(m),
        VolumeError::NotFound(_) => ErrorEnvelope::not_found(err.to_string()),
        VolumeError::InUse { .. } => ErrorEnvelope::conflict(err.to_string()),
        VolumeError::Io { .. } => ErrorEnvelope::internal(err.to_string()),
    }
}

/// `key` or `key=value` matches the labels.
pub(crate) fn labels_match(
    labels: &std::collections::BTreeMap<String, String>,
    wanted: &[String],
) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(w.as_str()),
    })
}

impl Executor {
    /// Ids of the containers whose records name volume `name`.
    pub(crate) fn volume_users(&self, name: &str) -> Vec<String> {
        Executor::records_in(&self.paths.containers_dir)
            .into_iter()
            .filter(|(r, _)| r.volumes.iter().any(|v| v.name == name))
            .map(|(r, _)| r.id)
            .collect()
    }

    fn volume_info(&self, record: &crate::volumes::VolumeRecord) -> VolumeInfo {
        let users = self.volume_users(&record.name);
        self.volumes.info(record, &self.node_id, users)
    }

    /// `volume_create`
    pub async fn volume_create(
        self: &Arc<Self>,
        request: VolumeCreateRequest,
    ) -> Handled<VolumeInfo> {
        let this = Arc::clone(self);
        let info = blocking(move || {
            let name = if request.name.is_empty() {
                crate::lifecycle::new_id()?
            } else {
                request.name
            };
            let record = this
                .volumes
                .create(&name, request.labels, false)
                .map_err(volume_error)?;
            tracing::info!(volume = %name, "volume created");
            Ok(this.volume_info(&record))
        })
        .await?;
        self.record_refresh.publish_now(RECORD_REFRESH_WAIT).await;
        Ok(info)
    }

    /// `volume_list`
    pub async fn volume_list(self: &Arc<Self>, request: VolumeListRequest) -> Handled<VolumeList> {
        let this = Arc::clone(self);
        blocking(move || {
            let volumes = this
                .volumes
                .list()
                .iter()
                .filter(|r| labels_match(&r.labels, &request.labels))
                .map(|r| this.volume_info(r))
                .collect();
            Ok(VolumeList {
                node_id: this.node_id.clone(),
                volumes,
            })
        })
        .await
    }

    /// `volume_inspect`
    pub async fn volume_inspect(self: &Arc<Self>, request: VolumeRef) -> Handled<VolumeInfo> {
        let this = Arc::clone(self);
        blocking(move || {
            let record = this.volumes.get(&request.name).map_err(volume_error)?;
            Ok(this.volume_info(&record))
        })
        .await
    }

    /// `volume_remove`: refused while any container (running or not) uses it.
    pub async fn volume_remove(
        self: &Arc<Self>,
        request: VolumeRemoveRequest,
    ) -> Handled<VolumeRef> {
        let this = Arc::clone(self);
        let removed = blocking(move || {
            this.volumes
                .remove(
                    &request.name,
                    || this.volume_users(&request.name),
                    request.force,
                )
                .map_err(volume_error)?;
            tracing::info!(volume = %request.name, "volume removed");
            Ok(VolumeRef { name: request.name })
        })
        .await?;
        self.record_refresh.publish_now(RECORD_REFRESH_WAIT).await;
        Ok(removed)
    }
}

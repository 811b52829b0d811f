//! The `berth.v1.net.<node>.*` verbs, served by the executor (it owns the containers
//! that connect and disconnect).

use crate::lifecycle::{blocking, Executor};
use crate::state;
use berth_proto::messages::exec::ContainerStatus;
use berth_proto::messages::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkDone,
    NetworkInfo, NetworkList, NetworkRef,
};
use berth_proto::ErrorEnvelope;
use std::sync::Arc;

type Handled<T> = Result<T, ErrorEnvelope>;

impl Executor {
    /// `create`
    pub async fn network_create(
        self: &Arc<Self>,
        request: NetworkCreateRequest,
    ) -> Handled<NetworkInfo> {
        let net = Arc::clone(&self.net);
        let info = blocking(move || {
            net.create(&request.name, request.subnet.as_deref(), request.labels)
                .map_err(ErrorEnvelope::from)
        })
        .await?;
        tracing::info!(network = %info.name, subnet = %info.subnet, bridge = %info.bridge, "network created");
        self.record_refresh
            .publish_now(crate::volumes_verbs::RECORD_REFRESH_WAIT)
            .await;
        Ok(info)
    }

    /// `list`
    pub async fn network_list(self: &Arc<Self>) -> Handled<NetworkList> {
        let net = Arc::clone(&self.net);
        let node_id = self.node_id.clone();
        blocking(move || {
            Ok(NetworkList {
                node_id,
                networks: net.list(),
            })
        })
        .await
    }

    /// `inspect`
    pub async fn network_inspect(self: &Arc<Self>, request: NetworkRef) -> Handled<NetworkInfo> {
        let net = Arc::clone(&self.net);
        blocking(move || net.inspect(&request.network).map_err(ErrorEnvelope::from)).await
    }

    /// `remove`
    pub async fn network_remove(self: &Arc<Self>, request: NetworkRef) -> Handled<NetworkDone> {
        let net = Arc::clone(&self.net);
        let id =
            blocking(move || net.remove(&request.network).map_err(ErrorEnvelope::from)).await?;
        tracing::info!(network_id = %id, "network removed");
        self.record_refresh
            .publish_now(crate::volumes_verbs::RECORD_REFRESH_WAIT)
            .await;
        Ok(NetworkDone { id })
    }

    /// `connect`
    pub async fn network_connect(
        self: &Arc<Self>,
        request: NetworkConnectRequest,
    ) -> Handled<NetworkDone> {
        let id = self.resolve(&request.container).await?;
        let lock = self.op_lock(&id);
        let _guard = lock.lock().await;
        let dir = self.dir(&id);
        let running = state::read_state(&dir)
            .map(|s| s.status == ContainerStatus::Running)
            .unwrap_or(false);
        let net = Arc::clone(&self.net);
        let container = id.clone();
        let network_id = blocking(move || {
            net.connect(
                &container,
                &dir,
                &request.network,
                &request.aliases,
                running,
            )
            .map_err(ErrorEnvelope::from)
        })
        .await?;
        tracing::info!(container_id = %id, %network_id, "container connected");
        Ok(NetworkDone { id: network_id })
    }

    /// `disconnect`
    pub async fn network_disconnect(
        self: &Arc<Self>,
        request: NetworkDisconnectRequest,
    ) -> Handled<NetworkDone> {
        let id = self.resolve(&request.container).await?;
        let lock = self.op_lock(&id);
        let _guard = lock.lock().await;
        let dir = self.dir(&id);
        let net = Arc::clone(&self.net);
        let container = id.clone();
        let network_id = blocking(move || {
            net.disconnect(&container, &dir, &request.network)
                .map_err(ErrorEnvelope::from)
        })
        .await?;
        tracing::info!(container_id = %id, %network_id, "container disconnected");
        Ok(NetworkDone { id: network_id })
    }
}

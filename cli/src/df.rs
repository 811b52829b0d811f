//! `berth system df`: what berth keeps on disk and how much of it could be reclaimed.

use crate::discovery::service_nodes;
use crate::exit::Failure;
use crate::images::human_size;
use crate::snapshots::bus_failure;
use berth_bus::{connect_once, request, NatsSettings};
use berth_proto::messages::exec::{ContainerList, ContainerListRequest};
use berth_proto::messages::image::{ImageList, ImageListRequest};
use berth_proto::messages::unpack::{SnapshotList, SnapshotListRequest};
use berth_proto::subjects::{self, service_names, ExecVerb, ImageVerb, UnpackVerb};
use berth_proto::Encoding;
use serde::Serialize;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

/// One row of the table.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    /// `Images`, `Snapshots`, `Containers`.
    pub kind: String,
    /// Node for per-node rows, `None` for the fleet-wide image store.
    pub node_id: Option<String>,
    pub total: usize,
    pub active: usize,
    pub size: u64,
    pub reclaimable: u64,
}

/// The snapshot row of one node: unused snapshots are reclaimable.
pub fn snapshot_row(list: &SnapshotList) -> UsageRow {
    let active = list
        .snapshots
        .iter()
        .filter(|s| !s.users.is_empty())
        .count();
    UsageRow {
        kind: "Snapshots".into(),
        node_id: Some(list.node_id.clone()),
        total: list.snapshots.len(),
        active,
        size: list.snapshots.iter().map(|s| s.size).sum(),
        reclaimable: list
            .snapshots
            .iter()
            .filter(|s| s.users.is_empty())
            .map(|s| s.size)
            .sum(),
    }
}

/// The image row: dangling (untagged) images are reclaimable.
pub fn image_row(list: &ImageList) -> UsageRow {
    let digests: BTreeSet<&str> = list.images.iter().map(|i| i.digest.as_str()).collect();
    let mut size = 0;
    let mut reclaimable = 0;
    let mut counted = BTreeSet::new();
    for image in &list.images {
        if counted.insert(image.digest.as_str()) {
            size += image.size;
            if image.reference.is_none() {
                reclaimable += image.size;
            }
        }
    }
    UsageRow {
        kind: "Images".into(),
        node_id: None,
        total: digests.len(),
        active: list
            .images
            .iter()
            .filter(|i| i.reference.is_some())
            .map(|i| i.digest.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        size,
        reclaimable,
    }
}

pub async fn run(nats: &NatsSettings, timeout: Duration, json: bool) -> Result<ExitCode, Failure> {
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let mut rows = Vec::new();
    let images: ImageList = request(
        &client,
        &subjects::image(ImageVerb::List),
        &ImageListRequest::default(),
        Encoding::Bincode,
        timeout,
    )
    .await
    .map_err(bus_failure)?;
    rows.push(image_row(&images));
    let discovery = timeout.min(Duration::from_secs(2));
    for node in service_nodes(&client, service_names::LAYER_UNPACKER, discovery)
        .await
        .map_err(Failure::berth)?
    {
        let list: SnapshotList = request(
            &client,
            &subjects::unpack(&node, UnpackVerb::List),
            &SnapshotListRequest::default(),
            Encoding::Bincode,
            timeout,
        )
        .await
        .map_err(bus_failure)?;
        rows.push(snapshot_row(&list));
    }
    for node in service_nodes(&client, service_names::EXECUTOR, discovery)
        .await
        .map_err(Failure::berth)?
    {
        let list: ContainerList = request(
            &client,
            &subjects::exec(&node, ExecVerb::List),
            &ContainerListRequest { all: true },
            Encoding::Bincode,
            timeout,
        )
        .await
        .map_err(bus_failure)?;
        let running = list
            .containers
            .iter()
            .filter(|c| c.status == berth_proto::messages::exec::ContainerStatus::Running)
            .count();
        rows.push(UsageRow {
            kind: "Containers".into(),
            node_id: Some(node),
            total: list.containers.len(),
            active: running,
            size: 0,
            reclaimable: 0,
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|err| Failure::berth(format!("cannot encode JSON: {err}")))?;
        outln!("{text}");
    } else {
        outln!(
            "{:<12} {:<16} {:>6} {:>7} {:>10} {:>12}",
            "TYPE",
            "NODE",
            "TOTAL",
            "ACTIVE",
            "SIZE",
            "RECLAIMABLE"
        );
        for row in &rows {
            outln!(
                "{:<12} {:<16} {:>6} {:>7} {:>10} {:>12}",
                row.kind,
                row.node_id.as_deref().unwrap_or("-"),
                row.total,
                row.active,
                human_size(row.size),
                human_size(row.reclaimable)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::image::ImageSummary;
    use berth_proto::messages::unpack::SnapshotInfo;

    fn snapshot(size: u64, users: &[&str]) -> SnapshotInfo {
        SnapshotInfo {
            id: "1".into(),
            chain_id: "sha256:a".into(),
            diff_id: "sha256:a".into(),
            digest: "sha256:b".into(),
            parent: None,
            size,
            users: users.iter().map(|u| u.to_string()).collect(),
            created: 0,
        }
    }

    #[test]
    fn unused_snapshots_are_reclaimable() {
        let row = snapshot_row(&SnapshotList {
            node_id: "n1".into(),
            snapshots: vec![snapshot(10, &["c1"]), snapshot(5, &[])],
        });
        assert_eq!(
            (row.total, row.active, row.size, row.reclaimable),
            (2, 1, 15, 5)
        );
    }

    #[test]
    fn images_count_once_per_digest_and_dangling_ones_are_reclaimable() {
        let image = |reference: Option<&str>, digest: &str, size| ImageSummary {
            reference: reference.map(str::to_string),
            digest: digest.into(),
            created: None,
            size,
        };
        let row = image_row(&ImageList {
            images: vec![
                image(Some("a:1"), "sha256:1", 100),
                image(Some("a:2"), "sha256:1", 100),
                image(None, "sha256:2", 7),
            ],
        });
        assert_eq!(
            (row.total, row.active, row.size, row.reclaimable),
            (2, 1, 107, 7)
        );
    }
}

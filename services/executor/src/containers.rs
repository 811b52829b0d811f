//! The node's containers as recorded on disk (`containers/<id>/state.json`).

use berth_proto::messages::exec::{ContainerList, ContainerStatus, ContainerSummary};
use berth_proto::ErrorEnvelope;
use std::path::{Path, PathBuf};

/// `<data_dir>/containers`
pub fn containers_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("containers")
}

/// Every container with a readable `state.json`; running ones only unless `all`.
/// A directory without a state file is a create that did not finish and is skipped.
pub fn list(dir: &Path, node_id: &str, all: bool) -> Result<ContainerList, ErrorEnvelope> {
    let entries = std::fs::read_dir(dir)
        .map_err(|err| ErrorEnvelope::internal(format!("cannot read {}: {err}", dir.display())))?;
    let mut containers = Vec::new();
    for entry in entries.flatten() {
        let state_path = entry.path().join("state.json");
        let Ok(bytes) = std::fs::read(&state_path) else {
            continue;
        };
        let summary: ContainerSummary = match serde_json::from_slice(&bytes) {
            Ok(summary) => summary,
            Err(err) => {
                tracing::warn!(path = %state_path.display(), error = %err, "unreadable container state");
                continue;
            }
        };
        if all || summary.status == ContainerStatus::Running {
            containers.push(summary);
        }
    }
    containers.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(ContainerList {
        node_id: node_id.to_string(),
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_state(dir: &Path, id: &str, status: ContainerStatus) {
        let container_dir = dir.join(id);
        std::fs::create_dir_all(&container_dir).expect("mkdir");
        let summary = ContainerSummary {
            id: id.into(),
            name: format!("name-{id}"),
            image: "busybox:latest".into(),
            node_id: "n1".into(),
            status,
            exit_code: None,
            created: format!("2026-11-29T00:00:0{}Z", id.len()),
        };
        std::fs::write(
            container_dir.join("state.json"),
            serde_json::to_vec(&summary).expect("json"),
        )
        .expect("write");
    }

    #[test]
    fn lists_running_by_default_and_all_with_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_state(dir.path(), "a", ContainerStatus::Running);
        write_state(dir.path(), "bb", ContainerStatus::Exited);
        std::fs::create_dir_all(dir.path().join("half-created")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("corrupt")).expect("mkdir");
        std::fs::write(dir.path().join("corrupt/state.json"), b"{").expect("write");

        let running = list(dir.path(), "n1", false).expect("lists");
        assert_eq!(running.containers.len(), 1);
        assert_eq!(running.containers[0].id, "a");
        let all = list(dir.path(), "n1", true).expect("lists");
        let ids: Vec<_> = all.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, vec!["bb", "a"]);
        assert_eq!(all.node_id, "n1");
    }
}

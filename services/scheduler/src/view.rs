//! The scheduler's in-memory picture of `berth-nodes` and `berth-containers`, kept
//! current by KV watches (and by this instance's own writes, applied at once). Placement
//! reads only this, so it costs no KV reads however many nodes there are; every write
//! still goes to KV with a compare-and-set on the revision the view holds.

use async_nats::jetstream::kv;
use berth_proto::messages::node::{NodeRecord, NodeState, Resources};
use berth_proto::messages::sched::{
    ContainerRecord, NodeAdmin, NodeAlloc, Tombstone, ADMIN_KEY_SUFFIX, ALLOC_KEY_SUFFIX,
    GONE_KEY_PREFIX, NAME_KEY_PREFIX,
};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

use crate::placement::Candidate;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything known about one node, from its three keys.
#[derive(Debug, Clone, Default)]
pub struct NodeEntry {
    pub heartbeat: Option<NodeRecord>,
    pub heartbeat_revision: u64,
    pub chain_ids: HashSet<String>,
    pub admin: Option<NodeAdmin>,
    pub admin_revision: u64,
    pub alloc: NodeAlloc,
    /// 0 while `<node>.alloc` does not exist.
    pub alloc_revision: u64,
}

impl NodeEntry {
    /// Ready, draining (operator) or lost (silent for longer than `lost_after`).
    pub fn state(&self, now_ms: u64, lost_after: Duration) -> NodeState {
        let Some(heartbeat) = &self.heartbeat else {
            return NodeState::Lost;
        };
        let silent_for = now_ms.saturating_sub(heartbeat.last_heartbeat_ms);
        if u128::from(silent_for) > lost_after.as_millis() {
            return NodeState::Lost;
        }
        match self.admin.as_ref().map(|a| a.state) {
            Some(NodeState::Draining) => NodeState::Draining,
            _ => NodeState::Ready,
        }
    }

    /// The record as `node ls` shows it: effective state, the schedulers' allocation.
    pub fn shown(&self, node_id: &str, now_ms: u64, lost_after: Duration) -> NodeRecord {
        let mut record = self.heartbeat.clone().unwrap_or_else(|| NodeRecord {
            node_id: node_id.to_string(),
            state: NodeState::Lost,
            capacity: Resources::default(),
            allocated: Resources::default(),
            labels: Default::default(),
            chain_ids: Vec::new(),
            containers: 0,
            last_heartbeat_ms: 0,
            executor_version: String::new(),
            ports: Vec::new(),
            platform: None,
            volumes: Vec::new(),
            networks: Vec::new(),
        });
        record.state = self.state(now_ms, lost_after);
        record.allocated = self.alloc.allocated;
        record
    }
}

/// One key of `berth-nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKey<'a> {
    Heartbeat(&'a str),
    Admin(&'a str),
    Alloc(&'a str),
}

/// Which node and which of its keys.
pub fn parse_node_key(key: &str) -> NodeKey<'_> {
    if let Some(node) = key.strip_suffix(ALLOC_KEY_SUFFIX) {
        NodeKey::Alloc(node)
    } else if let Some(node) = key.strip_suffix(ADMIN_KEY_SUFFIX) {
        NodeKey::Admin(node)
    } else {
        NodeKey::Heartbeat(key)
    }
}

/// Whether a `berth-containers` key is a container record (not a name reservation or
/// a tombstone).
pub fn is_record_key(key: &str) -> bool {
    !key.starts_with(NAME_KEY_PREFIX) && !key.starts_with(GONE_KEY_PREFIX)
}

/// The shared view; cheap to clone.
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: RwLock<HashMap<String, NodeEntry>>,
    containers: RwLock<HashMap<String, (ContainerRecord, u64)>>,
    /// Tombstones by container id, with their revision.
    tombstones: RwLock<HashMap<String, (Tombstone, u64)>>,
    /// Fired when capacity may have appeared (a node changed, a container went away).
    changed: Notify,
    lost_after: Duration,
}

impl View {
    /// An empty view; `lost_after` is the liveness rule.
    pub fn new(lost_after: Duration) -> View {
        View {
            inner: Arc::new(Inner {
                nodes: RwLock::new(HashMap::new()),
                containers: RwLock::new(HashMap::new()),
                tombstones: RwLock::new(HashMap::new()),
                changed: Notify::new(),
                lost_after,
            }),
        }
    }

    /// How long a node may stay silent.
    pub fn lost_after(&self) -> Duration {
        self.inner.lost_after
    }

    /// Resolves when something that may free capacity happens (or after `at_most`).
    pub async fn changed(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.inner.changed.notified()).await;
    }

    fn nodes_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, NodeEntry>> {
        self.inner.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, NodeEntry>> {
        self.inner.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn containers_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, (ContainerRecord, u64)>> {
        self.inner
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn containers_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (ContainerRecord, u64)>> {
        self.inner
            .containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one `berth-nodes` entry (or its deletion) if it is newer than what is held.
    pub fn apply_node(&self, key: &str, value: Option<&[u8]>, revision: u64) {
        let mut nodes = self.nodes_write();
        match parse_node_key(key) {
            NodeKey::Heartbeat(node) => {
                let entry = nodes.entry(node.to_string()).or_default();
                if revision <= entry.heartbeat_revision {
                    return;
                }
                entry.heartbeat_revision = revision;
                match value.map(serde_json::from_slice::<NodeRecord>) {
                    Some(Ok(record)) => {
                        if entry.heartbeat.as_ref().map(|h| &h.chain_ids) != Some(&record.chain_ids)
                        {
                            entry.chain_ids = record.chain_ids.iter().cloned().collect();
                        }
                        entry.heartbeat = Some(record);
                    }
                    Some(Err(err)) => {
                        tracing::warn!(node = %node, error = %err, "unreadable node record ignored");
                    }
                    None => {
                        entry.heartbeat = None;
                        entry.chain_ids.clear();
                    }
                }
            }
            NodeKey::Admin(node) => {
                let entry = nodes.entry(node.to_string()).or_default();
                if revision <= entry.admin_revision {
                    return;
                }
                entry.admin_revision = revision;
                entry.admin = value.and_then(|v| serde_json::from_slice(v).ok());
            }
            NodeKey::Alloc(node) => {
                let entry = nodes.entry(node.to_string()).or_default();
                if revision <= entry.alloc_revision {
                    return;
                }
                entry.alloc_revision = revision;
                entry.alloc = value
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or_default();
            }
        }
        drop(nodes);
        self.inner.changed.notify_waiters();
    }

    /// Sets a node's allocation as this instance just wrote it.
    pub fn set_alloc(&self, node: &str, alloc: NodeAlloc, revision: u64) {
        let mut nodes = self.nodes_write();
        let entry = nodes.entry(node.to_string()).or_default();
        if revision > entry.alloc_revision {
            entry.alloc = alloc;
            entry.alloc_revision = revision;
        }
    }

    /// Applies one `berth-containers` record (or its deletion) if newer than what is held.
    pub fn apply_container(&self, key: &str, value: Option<&[u8]>, revision: u64) {
        if let Some(id) = key.strip_prefix(GONE_KEY_PREFIX) {
            self.apply_tombstone(id, value, revision);
            return;
        }
        if !is_record_key(key) {
            return;
        }
        let mut containers = self.containers_write();
        if containers
            .get(key)
            .is_some_and(|(_, held)| *held >= revision)
        {
            return;
        }
        match value.map(serde_json::from_slice::<ContainerRecord>) {
            Some(Ok(record)) => {
                containers.insert(key.to_string(), (record, revision));
            }
            Some(Err(err)) => {
                tracing::warn!(container_id = %key, error = %err, "unreadable container record ignored");
            }
            None => {
                containers.remove(key);
                drop(containers);
                self.inner.changed.notify_waiters();
            }
        }
    }

    fn apply_tombstone(&self, id: &str, value: Option<&[u8]>, revision: u64) {
        let mut tombstones = self
            .inner
            .tombstones
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if tombstones
            .get(id)
            .is_some_and(|(_, held)| *held >= revision)
        {
            return;
        }
        match value.map(serde_json::from_slice::<Tombstone>) {
            Some(Ok(tombstone)) => {
                tombstones.insert(id.to_string(), (tombstone, revision));
            }
            Some(Err(err)) => {
                tracing::warn!(container_id = %id, error = %err, "unreadable tombstone ignored");
            }
            None => {
                tombstones.remove(id);
            }
        }
    }

    /// Containers removed while their node was lost, by id.
    pub fn tombstones(&self) -> Vec<(String, Tombstone)> {
        self.inner
            .tombstones
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (t, _))| (id.clone(), t.clone()))
            .collect()
    }

    /// One node's entry.
    pub fn node(&self, node: &str) -> Option<NodeEntry> {
        self.nodes_read().get(node).cloned()
    }

    /// Every node id with its effective state.
    pub fn node_states(&self) -> Vec<(String, NodeState)> {
        let now = now_ms();
        self.nodes_read()
            .iter()
            .filter(|(_, e)| e.heartbeat.is_some() || e.alloc_revision > 0)
            .map(|(id, e)| (id.clone(), e.state(now, self.inner.lost_after)))
            .collect()
    }

    /// Every node as `node ls` shows it, sorted by id.
    pub fn node_records(&self) -> Vec<NodeRecord> {
        let now = now_ms();
        let mut records: Vec<NodeRecord> = self
            .nodes_read()
            .iter()
            .filter(|(_, e)| e.heartbeat.is_some())
            .map(|(id, e)| e.shown(id, now, self.inner.lost_after))
            .collect();
        records.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        records
    }

    /// Runs `f` over placement candidates (every node with a heartbeat record).
    pub fn with_candidates<T>(&self, f: impl FnOnce(&[Candidate<'_>]) -> T) -> T {
        let now = now_ms();
        let nodes = self.nodes_read();
        let candidates: Vec<Candidate<'_>> = nodes
            .iter()
            .filter_map(|(id, e)| {
                let heartbeat = e.heartbeat.as_ref()?;
                Some(Candidate {
                    node_id: id.as_str(),
                    state: e.state(now, self.inner.lost_after),
                    capacity: heartbeat.capacity,
                    allocated: e.alloc.allocated,
                    containers: e.alloc.containers.len(),
                    labels: &heartbeat.labels,
                    chain_ids: &e.chain_ids,
                    platform: heartbeat.platform.as_ref(),
                    volumes: &heartbeat.volumes,
                    networks: &heartbeat.networks,
                    ports: &heartbeat.ports,
                })
            })
            .collect();
        f(&candidates)
    }

    /// One container record and its revision.
    pub fn container(&self, id: &str) -> Option<(ContainerRecord, u64)> {
        self.containers_read().get(id).cloned()
    }

    /// Every container record.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.containers_read()
            .values()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The container a reference names: full id, name, or unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ContainerRecord, ResolveError> {
        let containers = self.containers_read();
        if let Some((record, _)) = containers.get(reference) {
            return Ok(record.clone());
        }
        if let Some((record, _)) = containers.values().find(|(r, _)| r.name == reference) {
            return Ok(record.clone());
        }
        let mut matches = containers
            .values()
            .filter(|(r, _)| !reference.is_empty() && r.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some((one, _)), None) => Ok(one.clone()),
            (None, _) => Err(ResolveError::NotFound),
            (Some(_), Some(_)) => Err(ResolveError::Ambiguous),
        }
    }
}

/// Why a reference named no single container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    NotFound,
    Ambiguous,
}

/// Keeps the view current from a bucket until the task is aborted; a broken watch is
/// re-opened (the full current state is delivered again, older revisions are ignored).
pub async fn follow(store: kv::Store, view: View, nodes: bool) {
    let bucket = if nodes {
        "berth-nodes"
    } else {
        "berth-containers"
    };
    loop {
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => {
                            let value = match entry.operation {
                                kv::Operation::Put => Some(entry.value.as_ref()),
                                kv::Operation::Delete | kv::Operation::Purge => None,
                            };
                            if nodes {
                                view.apply_node(&entry.key, value, entry.revision);
                            } else {
                                view.apply_container(&entry.key, value, entry.revision);
                            }
                        }
                        Err(err) => {
                            tracing::warn!(bucket, error = %err, "KV watch error");
                            break;
                        }
                    }
                }
                tracing::warn!(bucket, "KV watch ended; re-opening");
            }
            Err(err) => tracing::warn!(bucket, error = %err, "cannot watch KV bucket"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(node: &str, at: u64) -> Vec<u8> {
        serde_json::to_vec(&NodeRecord {
            node_id: node.into(),
            state: NodeState::Ready,
            capacity: Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                pids: 0,
            },
            allocated: Resources::default(),
            labels: Default::default(),
            chain_ids: vec!["sha256:a".into()],
            containers: 0,
            last_heartbeat_ms: at,
            executor_version: "0".into(),
            ports: vec![],
            platform: None,
            volumes: vec![],
            networks: vec![],
        })
        .expect("encodes")
    }

    #[test]
    fn node_keys_are_told_apart() {
        assert_eq!(parse_node_key("n1"), NodeKey::Heartbeat("n1"));
        assert_eq!(parse_node_key("n1.alloc"), NodeKey::Alloc("n1"));
        assert_eq!(parse_node_key("n1.admin"), NodeKey::Admin("n1"));
        assert!(is_record_key("abc"));
        assert!(!is_record_key("name.web"));
        assert!(!is_record_key("gone.abc"));
    }

    #[test]
    fn tombstones_are_kept_apart_from_records() {
        let view = View::new(Duration::from_secs(10));
        let tombstone = serde_json::to_vec(&Tombstone {
            node_id: "n1".into(),
            volumes: false,
            removed_ms: 1,
        })
        .expect("encodes");
        view.apply_container("gone.abc", Some(&tombstone), 4);
        assert!(view.containers().is_empty());
        assert_eq!(view.tombstones().len(), 1);
        assert_eq!(view.tombstones()[0].1.node_id, "n1");
        view.apply_container("gone.abc", Some(&tombstone), 3);
        assert_eq!(view.tombstones().len(), 1);
        view.apply_container("gone.abc", None, 6);
        assert!(view.tombstones().is_empty());
    }

    #[test]
    fn the_view_keeps_the_newest_revision_and_applies_liveness_and_admin() {
        let view = View::new(Duration::from_secs(10));
        let now = now_ms();
        view.apply_node("n1", Some(&heartbeat("n1", now)), 5);
        // An older revision delivered late does not win.
        view.apply_node("n1", Some(&heartbeat("n1", 1)), 3);
        assert_eq!(
            view.node_states(),
            vec![("n1".to_string(), NodeState::Ready)]
        );
        let admin = serde_json::to_vec(&NodeAdmin {
            state: NodeState::Draining,
            updated_ms: now,
        })
        .expect("encodes");
        view.apply_node("n1.admin", Some(&admin), 6);
        assert_eq!(view.node_states()[0].1, NodeState::Draining);
        view.apply_node("n1", Some(&heartbeat("n1", 1)), 7);
        assert_eq!(view.node_states()[0].1, NodeState::Lost);
        assert!(view
            .node("n1")
            .is_some_and(|n| n.chain_ids.contains("sha256:a")));
        view.apply_node("n1", Some(b"not json"), 8);
        assert!(view.node("n1").is_some_and(|n| n.heartbeat.is_some()));
    }
}

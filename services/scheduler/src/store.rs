//! Writes to KV, each a compare-and-set on the revision last seen: reserving and
//! releasing resources in `<node>.alloc`, creating and updating container records,
//! reserving names. A lost race re-reads the key and tries again, so two scheduler
//! instances never over-allocate a node or place a container twice.

use async_nats::jetstream::kv;
use berth_proto::messages::node::Resources;
use berth_proto::messages::sched::{
    alloc_key, gone_key, name_key, ContainerRecord, NodeAlloc, Tombstone,
};
use berth_proto::ErrorEnvelope;

use crate::placement::fits;
use crate::sched::generated_name;
use crate::view::{now_ms, View};

/// Attempts before a compare-and-set gives up (each attempt re-reads the key).
const CAS_ATTEMPTS: usize = 64;

fn unavailable(what: &str, err: impl std::fmt::Display) -> ErrorEnvelope {
    ErrorEnvelope::unavailable(format!("{what}: {err}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<bytes::Bytes, ErrorEnvelope> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|err| ErrorEnvelope::internal(format!("cannot encode: {err}")))
}

/// Re-reads `<node>.alloc` into the view after a lost race.
async fn refresh_alloc(kv: &kv::Store, view: &View, node: &str) -> Result<(), ErrorEnvelope> {
    let key = alloc_key(node);
    match kv.entry(key.as_str()).await {
        Ok(Some(entry)) => {
            let value = match entry.operation {
                kv::Operation::Put => Some(entry.value.as_ref()),
                _ => None,
            };
            view.apply_node(&key, value, entry.revision);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => Err(unavailable(&format!("reading {key}"), err)),
    }
}

/// Writes a new allocation for `node` if the key is still at `revision` (0: absent).
async fn write_alloc(
    kv: &kv::Store,
    node: &str,
    alloc: &NodeAlloc,
    revision: u64,
) -> Result<Option<u64>, ErrorEnvelope> {
    let key = alloc_key(node);
    let body = encode(alloc)?;
    let written = if revision == 0 {
        kv.create(key.as_str(), body)
            .await
            .map_err(|err| match err.kind() {
                kv::CreateErrorKind::AlreadyExists => None,
                _ => Some(unavailable(&format!("writing {key}"), err)),
            })
    } else {
        kv.update(key.as_str(), body, revision)
            .await
            .map_err(|err| match err.kind() {
                kv::UpdateErrorKind::WrongLastRevision => None,
                _ => Some(unavailable(&format!("writing {key}"), err)),
            })
    };
    match written {
        Ok(revision) => Ok(Some(revision)),
        Err(None) => Ok(None),
        Err(Some(err)) => Err(err),
    }
}

/// Reserves `ask` on `node` for container `id`. `Ok(false)`: it no longer fits there.
/// Idempotent: a reservation already held for `id` counts as made.
pub async fn reserve(
    kv: &kv::Store,
    view: &View,
    node: &str,
    id: &str,
    ask: Resources,
) -> Result<bool, ErrorEnvelope> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(entry) = view.node(node) else {
            return Ok(false);
        };
        let Some(capacity) = entry.heartbeat.as_ref().map(|h| h.capacity) else {
            return Ok(false);
        };
        if entry.alloc.containers.contains_key(id) {
            return Ok(true);
        }
        if !fits(capacity, entry.alloc.allocated, ask) {
            return Ok(false);
        }
        let mut alloc = entry.alloc.clone();
        alloc.allocated = add(alloc.allocated, ask);
        alloc.containers.insert(id.to_string(), (ask, now_ms()));
        match write_alloc(kv, node, &alloc, entry.alloc_revision).await? {
            Some(revision) => {
                view.set_alloc(node, alloc, revision);
                return Ok(true);
            }
            None => refresh_alloc(kv, view, node).await?,
        }
    }
    Err(ErrorEnvelope::unavailable(format!(
        "node {node}: too much contention on its allocation; try again"
    )))
}

/// Gives back what container `id` holds on `node` (nothing to do when it holds nothing).
pub async fn release(
    kv: &kv::Store,
    view: &View,
    node: &str,
    id: &str,
) -> Result<(), ErrorEnvelope> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(entry) = view.node(node) else {
            return Ok(());
        };
        let mut alloc = entry.alloc.clone();
        let Some((held, _)) = alloc.containers.remove(id) else {
            return Ok(());
        };
        alloc.allocated = sub(alloc.allocated, held);
        match write_alloc(kv, node, &alloc, entry.alloc_revision).await? {
            Some(revision) => {
                view.set_alloc(node, alloc, revision);
                return Ok(());
            }
            None => refresh_alloc(kv, view, node).await?,
        }
    }
    Err(ErrorEnvelope::unavailable(format!(
        "node {node}: too much contention on its allocation; try again"
    )))
}

/// `a + b`, saturating.
pub fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_add(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
        pids: a.pids.saturating_add(b.pids),
    }
}

/// `a - b`, saturating.
pub fn sub(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_sub(b.memory_bytes),
        pids: a.pids.saturating_sub(b.pids),
    }
}

/// Creates a container record; `Ok(false)` when one with that id exists already.
pub async fn create_record(
    kv: &kv::Store,
    view: &View,
    record: &ContainerRecord,
) -> Result<bool, ErrorEnvelope> {
    match kv.create(record.id.as_str(), encode(record)?).await {
        Ok(revision) => {
            view.apply_container(&record.id, Some(&encode(record)?), revision);
            Ok(true)
        }
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(unavailable(&format!("creating record {}", record.id), err)),
    }
}

/// The current record and revision, read from KV (not the view).
pub async fn read_record(
    kv: &kv::Store,
    id: &str,
) -> Result<Option<(ContainerRecord, u64)>, ErrorEnvelope> {
    match kv.entry(id).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            let record = serde_json::from_slice(&entry.value).map_err(|err| {
                ErrorEnvelope::internal(format!("record {id} is unreadable: {err}"))
            })?;
            Ok(Some((record, entry.revision)))
        }
        Ok(_) => Ok(None),
        Err(err) => Err(unavailable(&format!("reading record {id}"), err)),
    }
}

/// Applies `change` to the current record and writes it back if the revision is still
/// the one read; retried on a lost race. `change` returns false to leave it as it is.
/// `Ok(None)`: no such record (or `change` declined); else the record as written.
pub async fn update_record(
    kv: &kv::Store,
    view: &View,
    id: &str,
    mut change: impl FnMut(&mut ContainerRecord) -> bool,
) -> Result<Option<ContainerRecord>, ErrorEnvelope> {
    // The view's copy first: it is this instance's own last write or the watch's latest,
    // so the common update costs one KV write and no read. The compare-and-set still
    // decides; a stale copy (or one `change` declines) is followed by a read from KV.
    let mut cached = view.container(id);
    for _ in 0..CAS_ATTEMPTS {
        let from_view = cached.is_some();
        let current = match cached.take() {
            Some(held) => Some(held),
            None => read_record(kv, id).await?,
        };
        let Some((mut record, revision)) = current else {
            return Ok(None);
        };
        if !change(&mut record) {
            if from_view {
                continue;
            }
            return Ok(None);
        }
        record.observed.updated_ms = now_ms();
        let body = encode(&record)?;
        match kv.update(id, body.clone(), revision).await {
            Ok(new_revision) => {
                view.apply_container(id, Some(&body), new_revision);
                return Ok(Some(record));
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(err) => return Err(unavailable(&format!("updating record {id}"), err)),
        }
    }
    Err(ErrorEnvelope::unavailable(format!(
        "record {id}: too much contention; try again"
    )))
}

/// Deletes a record (and its name reservation) if `still` holds for the current one.
pub async fn delete_record(
    kv: &kv::Store,
    view: &View,
    id: &str,
    still: impl Fn(&ContainerRecord) -> bool,
) -> Result<Option<ContainerRecord>, ErrorEnvelope> {
    for _ in 0..CAS_ATTEMPTS {
        let Some((record, revision)) = read_record(kv, id).await? else {
            return Ok(None);
        };
        if !still(&record) {
            return Ok(None);
        }
        match kv.delete_expect_revision(id, Some(revision)).await {
            Ok(()) => {
                view.apply_container(id, None, revision + 1);
                if record.name != generated_name(id) {
                    release_name(kv, &record.name, id).await;
                }
                return Ok(Some(record));
            }
            Err(err) => {
                // A wrong-revision refusal comes back as a publish error: tell it from
                // an outage by looking again.
                match read_record(kv, id).await? {
                    Some((_, now)) if now != revision => continue,
                    None => return Ok(None),
                    Some(_) => return Err(unavailable(&format!("deleting record {id}"), err)),
                }
            }
        }
    }
    Err(ErrorEnvelope::unavailable(format!(
        "record {id}: too much contention; try again"
    )))
}

/// Reserves a container name fleet-wide for `id`; a conflict names the holder.
pub async fn reserve_name(kv: &kv::Store, name: &str, id: &str) -> Result<(), ErrorEnvelope> {
    let key = name_key(name);
    match kv.create(key.as_str(), id.to_string().into()).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let holder = kv
                .get(key.as_str())
                .await
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if holder == id {
                Ok(())
            } else {
                Err(ErrorEnvelope::conflict(format!(
                    "the container name {name} is already in use by container {holder}"
                )))
            }
        }
        Err(err) => Err(unavailable(&format!("reserving the name {name}"), err)),
    }
}

/// Frees a name if `id` holds it (best effort: a stale name only blocks re-use).
pub async fn release_name(kv: &kv::Store, name: &str, id: &str) {
    let key = name_key(name);
    if let Ok(Some(entry)) = kv.entry(key.as_str()).await {
        if entry.operation == kv::Operation::Put && entry.value.as_ref() == id.as_bytes() {
            let _ = kv
                .delete_expect_revision(key.as_str(), Some(entry.revision))
                .await;
        }
    }
}

/// Writes the tombstone of a container removed while its node was lost.
pub async fn put_tombstone(
    kv: &kv::Store,
    view: &View,
    id: &str,
    tombstone: &Tombstone,
) -> Result<(), ErrorEnvelope> {
    let key = gone_key(id);
    let body = encode(tombstone)?;
    let revision = kv
        .put(key.as_str(), body.clone())
        .await
        .map_err(|err| unavailable(&format!("writing {key}"), err))?;
    view.apply_container(&key, Some(&body), revision);
    Ok(())
}

/// Drops a tombstone once its container is gone from its node.
pub async fn delete_tombstone(kv: &kv::Store, view: &View, id: &str) -> Result<(), ErrorEnvelope> {
    let key = gone_key(id);
    kv.delete(key.as_str())
        .await
        .map_err(|err| unavailable(&format!("deleting {key}"), err))?;
    // The watch delivers the deletion with its revision; drop it from the view now.
    view.apply_container(&key, None, u64::MAX);
    Ok(())
}

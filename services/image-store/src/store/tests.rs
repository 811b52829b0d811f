//! The store's graph logic against the in-memory backend (no NATS).

use super::backend::{Backend, MemoryBackend};
use super::*;
use crate::formats::manifest::media;
use crate::formats::LayerToStore;
use serde_json::json;

fn layer(content: &[u8]) -> (LayerToStore, Vec<u8>) {
    let l = LayerToStore {
        digest: Digest::sha256_of(content),
        size: content.len() as u64,
        media_type: media::OCI_LAYER_TAR.to_string(),
        diff_id: Digest::sha256_of(content),
        uncompressed_size: Some(content.len() as u64),
    };
    (l, content.to_vec())
}

fn image(name: &str, layers: &[&[u8]]) -> (ImageToStore, Vec<(Digest, Vec<u8>)>) {
    let layers: Vec<(LayerToStore, Vec<u8>)> = layers.iter().map(|c| layer(c)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(l, _)| l.diff_id.to_string()).collect::<Vec<_>>()},
        "config": {"Labels": {"name": name}},
    }))
    .expect("json");
    let img = ImageToStore::build(
        config,
        media::OCI_CONFIG,
        layers.iter().map(|(l, _)| l.clone()).collect(),
        vec![Reference::parse(name).expect("ref")],
        name,
    )
    .expect("image");
    let mut blobs: Vec<(Digest, Vec<u8>)> = layers
        .into_iter()
        .map(|(l, bytes)| (l.digest, bytes))
        .collect();
    blobs.push((img.config_digest.clone(), img.config_bytes.clone()));
    (img, blobs)
}

fn store() -> Store<MemoryBackend> {
    Store::new(
        MemoryBackend::default(),
        GcSettings {
            pin_grace: 100,
            deleting_grace: 100,
            wait_for_deletion: Duration::from_millis(300),
            writer_grace: 60,
            wait_for_writer: Duration::from_secs(10),
        },
    )
}

async fn add(store: &Store<MemoryBackend>, img: &ImageToStore, blobs: &[(Digest, Vec<u8>)]) {
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    store
        .pin(&img.manifest_digest, &digests)
        .await
        .expect("pin");
    for (d, bytes) in blobs {
        store
            .put_blob(d, bytes.len() as u64, &bytes[..], "test blob")
            .await
            .expect("put");
    }
    store.commit(img).await.expect("commit");
}

async fn all_blobs_present(store: &Store<MemoryBackend>, img: &ImageToStore) -> bool {
    let record = image_record(img).expect("record");
    for blob in record.blobs() {
        if !store.has_blob(&blob).await.expect("has") {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn removing_one_image_keeps_the_layers_another_shares() {
    let s = store();
    let (a, a_blobs) = image("a:1", &[b"base", b"a-top"]);
    let (b, b_blobs) = image("b:1", &[b"base", b"b-top"]);
    add(&s, &a, &a_blobs).await;
    add(&s, &b, &b_blobs).await;
    assert_eq!(s.backend().blob_names().len(), 5, "shared base stored once");

    let (_, reply) = s.remove("a:1", false).await.expect("rmi a");
    assert_eq!(reply.untagged, vec!["a:1".to_string()]);
    assert_eq!(reply.deleted, vec![a.manifest_digest.to_string()]);
    assert!(reply
        .blobs_deleted
        .contains(&Digest::sha256_of(b"a-top").to_string()));
    assert!(!reply
        .blobs_deleted
        .contains(&Digest::sha256_of(b"base").to_string()));
    assert!(all_blobs_present(&s, &b).await);
    assert_eq!(s.backend().blob_names().len(), 3);

    s.remove("b:1", false).await.expect("rmi b");
    assert!(
        s.backend().blob_names().is_empty(),
        "last user gone: all blobs collected"
    );
    assert!(
        s.backend().kv_keys("").await.expect("keys").is_empty(),
        "no records left"
    );
}

#[tokio::test]
async fn untagging_one_of_two_references_keeps_the_image() {
    let s = store();
    let (a, blobs) = image("a:1", &[b"x"]);
    add(&s, &a, &blobs).await;
    s.tag("a:1", "a:2").await.expect("tag");
    let err = s
        .remove(&a.manifest_digest.to_string(), false)
        .await
        .expect_err("two references need force");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let (_, reply) = s.remove("a:2", false).await.expect("untag");
    assert!(reply.deleted.is_empty());
    assert!(all_blobs_present(&s, &a).await);
    s.tag("a:1", "a:3").await.expect("tag");
    let (_, reply) = s
        .remove(&a.manifest_digest.to_string(), true)
        .await
        .expect("forced");
    assert_eq!(reply.untagged.len(), 2);
    assert_eq!(reply.deleted.len(), 1);
    assert!(s.backend().blob_names().is_empty());
}

#[tokio::test]
async fn a_bad_blob_leaves_nothing_and_names_the_blob() {
    let s = store();
    let d = Digest::sha256_of(b"right");
    s.pin(&Digest::sha256_of(b"m"), std::slice::from_ref(&d))
        .await
        .expect("pin");
    let err = s
        .put_blob(&d, 5, &b"wrong"[..], "layer 1 of x:1")
        .await
        .expect_err("mismatch");
    assert!(matches!(err, StoreError::Invalid(_)));
    assert!(err.to_string().contains("layer 1 of x:1"), "{err}");
    let err = s
        .put_blob(&d, 5, &b"rig"[..], "layer 1 of x:1")
        .await
        .expect_err("truncated");
    assert!(err.to_string().contains("size mismatch"), "{err}");
    assert!(!s.has_blob(&d).await.expect("has"));
    assert!(s.put_blob(&d, 5, &b"right"[..], "l").await.expect("put"));
    assert!(!s.put_blob(&d, 5, &b"right"[..], "l").await.expect("no-op"));
}

#[tokio::test]
async fn prune_removes_dangling_images_and_dead_pins_but_not_fresh_ones() {
    let s = store();
    let (a, a_blobs) = image("a:1", &[b"one"]);
    let (a2, a2_blobs) = image("a:1", &[b"two"]);
    add(&s, &a, &a_blobs).await;
    add(&s, &a2, &a2_blobs).await; // moves a:1: the first image is dangling now
    let listed = s.list(None).await.expect("list");
    assert_eq!(listed.images.len(), 2);
    assert_eq!(listed.images[1].reference, None);

    // An import in flight (pinned, not committed) and one that died long ago.
    let fresh = Digest::sha256_of(b"fresh");
    s.pin(
        &Digest::sha256_of(b"in-flight"),
        std::slice::from_ref(&fresh),
    )
    .await
    .expect("pin");
    s.put_blob(&fresh, 5, &b"fresh"[..], "fresh")
        .await
        .expect("put");
    let dead = Digest::sha256_of(b"dead!");
    let key = blob_key(&dead);
    let record = BlobRecord {
        users: BTreeMap::from([(Digest::sha256_of(b"died").to_string(), 1)]),
        ..BlobRecord::default()
    };
    s.backend()
        .kv_create(&key, serde_json::to_vec(&record).expect("json"))
        .await
        .expect("create");
    s.put_blob(&dead, 5, &b"dead!"[..], "dead")
        .await
        .expect("put");

    let reply = s.prune().await.expect("prune");
    assert_eq!(reply.deleted, vec![a.manifest_digest.to_string()]);
    assert!(reply.blobs_deleted.contains(&dead.to_string()));
    assert!(
        s.has_blob(&fresh).await.expect("has"),
        "a blob being imported is kept"
    );
    assert!(all_blobs_present(&s, &a2).await);
    assert!(!s.has_blob(&Digest::sha256_of(b"one")).await.expect("has"));
}

#[tokio::test]
async fn a_pin_waits_for_a_deletion_in_progress_and_takes_over_a_stale_one() {
    let s = store();
    let blob = Digest::sha256_of(b"b");
    let key = blob_key(&blob);
    let marked = BlobRecord {
        deleting_since: Some(now()),
        ..BlobRecord::default()
    };
    s.backend()
        .kv_create(&key, serde_json::to_vec(&marked).expect("json"))
        .await
        .expect("create");
    let err = s
        .pin(&Digest::sha256_of(b"m"), std::slice::from_ref(&blob))
        .await
        .expect_err("waits, then gives up");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");

    let entry = s.backend().kv_get(&key).await.expect("get").expect("entry");
    let stale = BlobRecord {
        deleting_since: Some(1),
        ..BlobRecord::default()
    };
    s.backend()
        .kv_update(
            &key,
            serde_json::to_vec(&stale).expect("json"),
            entry.revision,
        )
        .await
        .expect("update");
    s.backend()
        .blob_put(&blob.to_string(), &mut &b"b"[..])
        .await
        .expect("put");
    s.pin(&Digest::sha256_of(b"m"), std::slice::from_ref(&blob))
        .await
        .expect("takes over");
    let entry = s.backend().kv_get(&key).await.expect("get").expect("entry");
    let record: BlobRecord = serde_json::from_slice(&entry.value).expect("json");
    assert!(record.deleting_since.is_none());
    assert_eq!(record.users.len(), 1);
    assert!(
        !s.has_blob(&blob).await.expect("has"),
        "the stale deletion was finished"
    );
}

#[tokio::test]
async fn names_resolve_by_reference_digest_and_id_prefix() {
    let s = store();
    let (a, blobs) = image("docker.io/library/busybox:latest", &[b"x"]);
    add(&s, &a, &blobs).await;
    for name in [
        "busybox".to_string(),
        "busybox:latest".to_string(),
        a.manifest_digest.to_string(),
        a.manifest_digest.hex()[..12].to_string(),
        a.config_digest.hex()[..12].to_string(),
        format!("busybox@{}", a.manifest_digest),
    ] {
        let r = s.resolve(&name).await.expect(&name);
        assert_eq!(r.record.digest, a.manifest_digest, "{name}");
    }
    assert!(matches!(
        s.resolve("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.resolve("UPPER:case").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.tag("busybox", "bad tag!").await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn concurrent_writers_of_one_blob_write_it_once() {
    let s = store();
    let content = vec![7u8; 300_000];
    let d = Digest::sha256_of(&content);
    s.pin(&Digest::sha256_of(b"m1"), std::slice::from_ref(&d))
        .await
        .expect("pin");
    // The first writer's bytes arrive slowly, so the second finds it at work.
    let (mut tx, rx) = tokio::io::duplex(1024);
    let first = {
        let (s, d) = (s.clone(), d.clone());
        tokio::spawn(async move { s.put_blob(&d, 300_000, rx, "first").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = {
        let (s, d, content) = (s.clone(), d.clone(), content.clone());
        tokio::spawn(async move { s.put_blob(&d, 300_000, &content[..], "second").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::io::AsyncWriteExt::write_all(&mut tx, &content)
        .await
        .expect("feed");
    drop(tx);
    assert!(first.await.expect("join").expect("first writes"));
    assert!(
        !second.await.expect("join").expect("second waits"),
        "the second writer found the blob written"
    );
    assert_eq!(s.backend().put_count(), 1);

    // A blob written without a pin is a caller bug, not silently accepted.
    let other = Digest::sha256_of(b"x");
    let err = s
        .put_blob(&other, 1, &b"x"[..], "x")
        .await
        .expect_err("no pin");
    assert!(err.to_string().contains("pin"), "{err}");
}

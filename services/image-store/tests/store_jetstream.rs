//! The JetStream backend against a real nats-server: the backend conformance suite,
//! then a whole image graph through the store.

use async_nats::jetstream;
use berth_image_store::formats::{Digest, ImageToStore, LayerToStore, Reference};
use berth_image_store::store::jetstream::JetStreamBackend;
use berth_image_store::store::{conformance, GcSettings, Store};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nats_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(std::env::var("BERTH_NATS_SERVER").unwrap_or("nats-server".into()))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (setup.sh)");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Server {
        child,
        port,
        _dir: dir,
    }
}

async fn backend(server: &Server) -> JetStreamBackend {
    // The port answers before nats-server is ready to talk on a loaded machine: retry.
    let url = format!("nats://127.0.0.1:{}", server.port);
    let mut attempt = 0;
    let client = loop {
        match async_nats::connect(&url).await {
            Ok(client) => break client,
            Err(err) if attempt < 40 => {
                attempt += 1;
                eprintln!("connect to {url}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("connect to {url}: {err}"),
        }
    };
    let js = jetstream::new(client);
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "berth-images".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .expect("kv");
    let blobs = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "berth-blobs".into(),
            ..Default::default()
        })
        .await
        .expect("object store");
    let chunks = js.get_stream("OBJ_berth-blobs").await.expect("stream");
    JetStreamBackend::new(js, kv, blobs, chunks, "berth-blobs")
}

#[tokio::test]
async fn the_jetstream_backend_conforms() {
    let server = nats_server().await;
    let backend = backend(&server).await;
    conformance::run(&backend, "conf").await.expect("conforms");
}

#[tokio::test]
async fn an_image_graph_through_the_jetstream_store() {
    let server = nats_server().await;
    let store = Store::new(backend(&server).await, GcSettings::default());
    let layer = |bytes: &[u8]| LayerToStore {
        digest: Digest::sha256_of(bytes),
        size: bytes.len() as u64,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        diff_id: Digest::sha256_of(bytes),
        uncompressed_size: Some(bytes.len() as u64),
    };
    let mut images = Vec::new();
    for (name, top) in [("a:1", b"top-a".as_slice()), ("b:1", b"top-b".as_slice())] {
        let layers = vec![layer(b"base"), layer(top)];
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        }))
        .expect("json");
        let image = ImageToStore::build(
            config,
            "application/vnd.oci.image.config.v1+json",
            layers,
            vec![Reference::parse(name).expect("ref")],
            name,
        )
        .expect("image");
        let mut blobs = vec![image.config_digest.clone()];
        blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
        store
            .pin(&image.manifest_digest, &blobs)
            .await
            .expect("pin");
        store
            .put_blob(
                &image.config_digest,
                image.config_bytes.len() as u64,
                &image.config_bytes[..],
                "config",
            )
            .await
            .expect("config");
        for bytes in [b"base".as_slice(), top] {
            store
                .put_blob(
                    &Digest::sha256_of(bytes),
                    bytes.len() as u64,
                    bytes,
                    "layer",
                )
                .await
                .expect("layer");
        }
        store.commit(&image).await.expect("commit");
        images.push(image);
    }
    assert_eq!(store.list(None).await.expect("list").images.len(), 2);
    let (_, reply) = store.remove("a:1", false).await.expect("rmi");
    assert_eq!(
        reply.blobs_deleted.len(),
        2,
        "a's config and top layer: {reply:?}"
    );
    for blob in [
        &images[1].config_digest,
        &Digest::sha256_of(b"base"),
        &Digest::sha256_of(b"top-b"),
    ] {
        assert!(store.has_blob(blob).await.expect("has"), "{blob} kept");
    }
    store.remove("b:1", false).await.expect("rmi");
    for blob in [Digest::sha256_of(b"base"), Digest::sha256_of(b"top-b")] {
        assert!(
            !store.has_blob(&blob).await.expect("has"),
            "{blob} collected"
        );
    }
    assert!(store.list(None).await.expect("list").images.is_empty());
}

//! `berth pull` and `berth push` end to end: real nats-server, the real
//! `berth-image-store` binary, the real `berth` CLI and a real registry (Debian's
//! `docker-registry`, own config and storage, free loopback port). Images come from
//! Debian's busybox-static (`berth import`), from umoci + skopeo, and a hand-made
//! multi-arch index pushed with `skopeo copy --all`.
//!
//! The image-store is started by these tests (not by `Stack::start`) so that each test
//! can give it its own environment: `DOCKER_CONFIG` (credentials, and never the host's
//! `~/.docker`) and `BERTH_CONFIG` (a short writer grace for the SIGKILL test).
//!
//! Needs docker-registry, skopeo, umoci, busybox, base64 and root (umoci); a missing
//! tool fails the test with its name.

use anyhow::{bail, ensure, Context};
use async_nats::jetstream;
use berth_bus::BusError;
use berth_proto::messages::image::{ImageInspect, ImagePullReply, ImagePullRequest};
use berth_proto::subjects::{self, jetstream as names, service_names, ImageVerb};
use berth_proto::{Encoding, ErrorKind};
use berth_tests::fixtures::{busybox_rootfs_tar, need, need_root, ok, umoci_layout};
use berth_tests::{bin_path, free_port, Stack};
use futures::TryStreamExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const STORE: &str = service_names::IMAGE_STORE;

// ---- a registry ---------------------------------------------------------------------

/// `docker-registry serve` on 127.0.0.1:<port> with its storage in a temp dir; its
/// access log (one line per request) is what proves which blobs were fetched.
struct Registry {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    async fn start(htpasswd: Option<(&str, &str)>) -> anyhow::Result<Self> {
        need("docker-registry")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n",
            storage.display()
        );
        if let Some((user, password)) = htpasswd {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{}\n", bcrypt::hash(password, 4)?))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", registry.log());
            }
            ensure!(
                Instant::now() < deadline,
                "docker-registry did not listen: {}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(registry)
    }

    /// `127.0.0.1:<port>/<rest>`
    fn name(&self, rest: &str) -> String {
        format!("127.0.0.1:{}/{rest}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GETs of `path` (e.g. `/v2/x/y/blobs/sha256:…`) the log shows from
    /// byte `from` on.
    fn gets(&self, from: usize, path: &str) -> usize {
        let log = self.log();
        let needle = format!("\"GET {path} ");
        log.get(from..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the registry that stops forwarding a response once it has
/// passed `stall_after` bytes (only a layer blob is that big), once; later connections
/// pass through whole. `stalled` fires when it holds.
struct StallingProxy {
    port: u16,
    stalled: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start(upstream: u16, stall_after: usize) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let stalled = std::sync::Arc::new(tokio::sync::Notify::new());
        let has_stalled = std::sync::Arc::new(AtomicBool::new(false));
        let notify = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (notify, has_stalled) = (notify.clone(), has_stalled.clone());
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let requests = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut passed = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        passed += n;
                        if passed > stall_after && !has_stalled.swap(true, Ordering::SeqCst) {
                            notify.notify_one();
                            // Hold the connection open, forwarding nothing more.
                            std::future::pending::<()>().await;
                        }
                    }
                    requests.abort();
                });
            }
        });
        Ok(StallingProxy {
            port,
            stalled,
            task,
        })
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- an image-store with its own environment ----------------------------------------

/// A stack of nats-server plus one `berth-image-store` process started here.
struct Env {
    stack: Stack,
    store: Option<tokio::process::Child>,
    /// More instances serving beside `store` (same queue group).
    more_stores: Vec<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> anyhow::Result<Self> {
        let stack = Stack::start(&[], "node-pull").await?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("docker"))?;
        // Short writer grace: a pull killed mid-blob holds its claim this long. Small
        // push limits: a busybox layer (~1 MB) goes up in chunks, a config in one PUT.
        std::fs::write(
            dir.path().join("image-store.toml"),
            "writer_grace_seconds = 3\npush_monolithic_limit = 262144\npush_chunk_size = 262144\n",
        )?;
        let mut env = Env {
            stack,
            store: None,
            more_stores: Vec::new(),
            dir,
        };
        env.start_store().await?;
        Ok(env)
    }

    fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker/config.json")
    }

    fn store_log(&self) -> PathBuf {
        self.dir.path().join("image-store.log")
    }

    fn spawn_store(&self) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store_log())?;
        tokio::process::Command::new(bin_path(STORE)?)
            .env("BERTH_NATS_URL", self.stack.nats.url())
            .env("BERTH_DATA_DIR", self.stack.data_dir())
            .env("BERTH_NODE_ID", &self.stack.node_id)
            .env("BERTH_CONFIG", self.dir.path().join("image-store.toml"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start berth-image-store")
    }

    /// Waits until `instances` image-stores answer on the bus.
    async fn wait_for_stores(&self, instances: usize) -> anyhow::Result<()> {
        let client = self.stack.nats.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while berth_tests::ping_count(&client, STORE, Duration::from_millis(250)).await? < instances
        {
            ensure!(
                Instant::now() < deadline,
                "{instances} image-stores did not come up; log {}",
                self.store_log().display()
            );
        }
        Ok(())
    }

    async fn start_store(&mut self) -> anyhow::Result<()> {
        self.store = Some(self.spawn_store()?);
        self.wait_for_stores(1 + self.more_stores.len()).await
    }

    /// One more instance beside the first.
    async fn start_another_store(&mut self) -> anyhow::Result<()> {
        let child = self.spawn_store()?;
        self.more_stores.push(child);
        self.wait_for_stores(1 + self.more_stores.len()).await
    }

    /// SIGKILL: no chance to clean up.
    async fn kill_store(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.store.take() {
            child.kill().await?;
        }
        Ok(())
    }

    fn berth(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut command = self.stack.berth()?;
        command.args(["--timeout", "30"]).args(args);
        Ok(command)
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(&mut self.berth(args)?)
            .with_context(|| format!("store log: {}", self.store_log().display()))
    }

    /// Runs `berth` expecting failure; returns (exit code, stderr).
    fn fails(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let output: Output = self.berth(args)?.output()?;
        ensure!(
            !output.status.success(),
            "berth {args:?} should have failed but printed {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        ensure!(
            stderr.starts_with("berth: ") && stderr.trim_end().lines().count() == 1,
            "error is not one `berth: …` line: {stderr:?}"
        );
        Ok((output.status.code().unwrap_or(-1), stderr))
    }

    fn inspect(&self, name: &str) -> anyhow::Result<ImageInspect> {
        let out = self.ok(&["image", "inspect", name, "--json"])?;
        let mut all: Vec<ImageInspect> = serde_json::from_str(&out)?;
        ensure!(all.len() == 1, "inspect {name} gave {} images", all.len());
        Ok(all.remove(0))
    }

    fn references(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ok(&["images", "--json"])?;
        let rows: Vec<berth_proto::messages::image::ImageSummary> = serde_json::from_str(&out)?;
        Ok(rows.into_iter().filter_map(|r| r.reference).collect())
    }

    /// A pull over the bus, for the error kind itself.
    async fn pull_request(&self, reference: &str) -> Result<ImagePullReply, BusError> {
        let client = self
            .stack
            .nats
            .client()
            .await
            .map_err(|err| BusError::Transport {
                subject: "connect".into(),
                reason: err.to_string(),
            })?;
        berth_bus::request(
            &client,
            &subjects::image(ImageVerb::Pull),
            &ImagePullRequest {
                reference: reference.to_string(),
                platform: None,
                progress: None,
            },
            Encoding::Bincode,
            Duration::from_secs(60),
        )
        .await
    }

    /// Names of the visible objects in `berth-blobs`.
    async fn objects(&self) -> anyhow::Result<Vec<String>> {
        let client = self.stack.nats.client().await?;
        let store = jetstream::new(client)
            .get_object_store(names::BLOBS_BUCKET)
            .await?;
        let infos: Vec<_> = store.list().await?.try_collect().await?;
        Ok(infos
            .into_iter()
            .filter(|i| !i.deleted)
            .map(|i| i.name)
            .collect())
    }
}

// ---- helpers ------------------------------------------------------------------------

fn sha256(bytes: &[u8]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("x");
    std::fs::write(&file, bytes)?;
    let out = ok(Command::new("sha256sum").arg(&file))?;
    Ok(format!(
        "sha256:{}",
        out.split_whitespace().next().unwrap_or_default()
    ))
}

/// `skopeo inspect --raw` of an image in the registry: (manifest digest, manifest JSON).
fn skopeo_raw(name: &str) -> anyhow::Result<(String, serde_json::Value)> {
    need("skopeo")?;
    let raw = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{name}"))
        .output()?;
    ensure!(
        raw.status.success(),
        "skopeo inspect {name}: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    Ok((sha256(&raw.stdout)?, serde_json::from_slice(&raw.stdout)?))
}

/// Config and layer digests of a manifest JSON.
fn blobs_of(manifest: &serde_json::Value) -> Vec<String> {
    let mut out = vec![manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()];
    if let Some(layers) = manifest["layers"].as_array() {
        out.extend(
            layers
                .iter()
                .map(|l| l["digest"].as_str().unwrap_or_default().to_string()),
        );
    }
    out
}

fn stored_blobs(image: &ImageInspect) -> Vec<String> {
    let mut out = vec![image.config_digest.clone()];
    out.extend(image.layers.iter().map(|l| l.digest.clone()));
    out
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str, all: bool) -> anyhow::Result<()> {
    let mut command = Command::new("skopeo");
    command.args(["copy", "-q", "--dest-tls-verify=false"]);
    if all {
        command.arg("--all");
    }
    ok(command
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}")))?;
    Ok(())
}

// ---- tests --------------------------------------------------------------------------

/// import → push → rmi → pull gives the same image digest by digest; a second push
/// skips every blob (HEAD), a push to another repository mounts them.
#[tokio::test]
async fn pull_push_round_trip_digest_by_digest() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let tar = busybox_rootfs_tar(work.path(), "bb", &[("etc/hello", "hello\n")])?;
    let name = registry.name("berth/busybox:1");
    env.ok(&["import", &tar.display().to_string(), &name])?;
    let before = env.inspect(&name)?;

    let mark = registry.log().len();
    let pushed = env.ok(&["push", &name])?;
    // The layer went up in PATCH chunks, the small config in one PUT.
    let log = registry.log();
    let patches = log[mark..]
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/berth/busybox/blobs/uploads/"))
        .count();
    ensure!(
        patches >= 2,
        "{patches} PATCH requests for a chunked layer upload"
    );
    let config_put = before
        .config_digest
        .trim_start_matches("sha256:")
        .to_string();
    ensure!(
        log[mark..].lines().any(
            |l| l.contains("\"PUT /v2/berth/busybox/blobs/uploads/") && l.contains(&config_put)
        ),
        "no monolithic PUT of the config"
    );
    ensure!(pushed.contains(&before.digest), "push output: {pushed}");
    ensure!(pushed.contains("Pushed"), "push output: {pushed}");
    let (raw_digest, raw) = skopeo_raw(&name)?;
    ensure!(
        raw_digest == before.digest,
        "registry has {raw_digest}, berth pushed {}",
        before.digest
    );
    ensure!(
        blobs_of(&raw) == stored_blobs(&before),
        "blobs differ: {raw}"
    );

    // Everything is there already: HEAD says so, nothing is uploaded.
    let again = env.ok(&["push", &name])?;
    ensure!(
        !again.contains("Pushed") && again.contains("Layer already exists"),
        "second push: {again}"
    );
    // Another repository of the same registry: mounted from the first.
    let other = registry.name("other/busybox:copy");
    let mounted = env.ok(&["push", &name, &other])?;
    ensure!(
        mounted.contains("Mounted"),
        "push to another repo: {mounted}"
    );
    ensure!(skopeo_raw(&other)?.0 == before.digest);

    env.ok(&["rmi", &name])?;
    ensure!(env.fails(&["image", "inspect", &name])?.0 == 1);
    let pulled = env.ok(&["pull", &name])?;
    ensure!(pulled.contains(&before.digest), "pull output: {pulled}");
    let after = env.inspect(&name)?;
    ensure!(after.digest == before.digest);
    ensure!(after.config_digest == before.config_digest);
    ensure!(after.manifest == before.manifest && after.config == before.config);
    ensure!(stored_blobs(&after) == stored_blobs(&before));
    let objects = env.objects().await?;
    for blob in stored_blobs(&after) {
        ensure!(objects.contains(&blob), "{blob} not stored: {objects:?}");
    }
    // Pulled again: nothing fetched.
    let up_to_date = env.ok(&["pull", &name])?;
    ensure!(up_to_date.contains("up to date"), "{up_to_date}");
    Ok(())
}

/// Images made by umoci and pushed by skopeo pull into berth exactly as skopeo sees
/// them; the shared base layer is fetched once.
#[tokio::test]
async fn pull_skopeo_pushed_umoci_images_match_skopeo_view() -> anyhow::Result<()> {
    need_root("umoci unpack keeps file owners")?;
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let layout = umoci_layout(work.path())?;
    for tag in ["a", "b"] {
        skopeo_push(&layout, tag, &registry.name(&format!("x/y:{tag}")), false)?;
    }
    let mark = registry.log().len();
    for tag in ["a", "b"] {
        let name = registry.name(&format!("x/y:{tag}"));
        env.ok(&["pull", "-q", &name])?;
        let (digest, raw) = skopeo_raw(&name)?;
        let image = env.inspect(&name)?;
        ensure!(
            image.digest == digest,
            "{tag}: berth {} vs skopeo {digest}",
            image.digest
        );
        ensure!(stored_blobs(&image) == blobs_of(&raw), "{tag}: {raw}");
        ensure!(
            sha256(image.manifest.as_bytes())? == digest,
            "{tag}: stored manifest bytes differ"
        );
    }
    // The base layer is shared by a and b: one GET in all.
    let (_, raw) = skopeo_raw(&registry.name("x/y:a"))?;
    let base = blobs_of(&raw)[1].clone();
    let gets = registry.gets(mark, &format!("/v2/x/y/blobs/{base}"));
    ensure!(gets == 1, "base layer fetched {gets} times");
    Ok(())
}

/// A multi-arch index: the host's entry is pulled, the arm64 one is never fetched
/// (unless asked for with --platform).
#[tokio::test]
async fn pull_multi_arch_index_takes_only_the_host_platform() -> anyhow::Result<()> {
    need_root("umoci unpack keeps file owners")?;
    ensure!(
        std::env::consts::ARCH == "x86_64",
        "this test assumes an amd64 host (it builds an amd64 + arm64 index)"
    );
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let layout = umoci_layout(work.path())?;
    // Tag `a` becomes the arm64 image (its own config and layer); `base` stays amd64.
    ok(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:a", layout.display()),
        "--architecture",
        "arm64",
        "--tag",
        "arm",
    ]))?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let entry = |tag: &str| -> anyhow::Result<serde_json::Value> {
        index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
                })
            })
            .cloned()
            .with_context(|| format!("no {tag} in {index}"))
    };
    let (amd, arm) = (entry("base")?, entry("arm")?);
    let descriptor = |d: &serde_json::Value, arch: &str| {
        serde_json::json!({
            "mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"],
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor(&arm, "arm64"), descriptor(&amd, "amd64")],
    });
    let multi_bytes = serde_json::to_vec(&multi)?;
    let multi_digest = sha256(&multi_bytes)?;
    let hex = multi_digest.trim_start_matches("sha256:");
    std::fs::write(layout.join("blobs/sha256").join(hex), &multi_bytes)?;
    let mut top = index.clone();
    if let Some(list) = top["manifests"].as_array_mut() {
        list.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": multi_digest, "size": multi_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    }
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top)?)?;
    let name = registry.name("x/multi:1");
    skopeo_push(&layout, "multi", &name, true)?;

    let arm_manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        layout.join("blobs/sha256").join(
            arm["digest"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("sha256:"),
        ),
    )?)?;
    let arm_only: Vec<String> = blobs_of(&arm_manifest)
        .into_iter()
        .filter(|b| {
            // Layers arm64 shares with amd64 (the base) are fetched for amd64 anyway.
            !env_blob_shared(&layout, &amd, b)
        })
        .collect();
    ensure!(!arm_only.is_empty(), "arm64 image has no blob of its own");

    let mark = registry.log().len();
    let out = env.ok(&["pull", &name])?;
    ensure!(
        out.contains(&multi_digest),
        "pull prints the index digest: {out}"
    );
    let image = env.inspect(&name)?;
    ensure!(
        image.digest == amd["digest"].as_str().unwrap_or_default(),
        "pulled {}",
        image.digest
    );
    ensure!(image.platform.architecture == "amd64");
    let arm_digest = arm["digest"].as_str().unwrap_or_default();
    ensure!(registry.gets(mark, &format!("/v2/x/multi/manifests/{arm_digest}")) == 0);
    for blob in &arm_only {
        ensure!(
            registry.gets(mark, &format!("/v2/x/multi/blobs/{blob}")) == 0,
            "arm64 blob {blob} was fetched on amd64"
        );
        ensure!(!env.objects().await?.contains(blob));
    }

    // Asked for explicitly, arm64 comes.
    let arm_name = registry.name("x/multi:1");
    env.ok(&["pull", "--platform", "linux/arm64", &arm_name])?;
    let arm_image = env.inspect(&arm_name)?;
    ensure!(arm_image.digest == arm_digest && arm_image.platform.architecture == "arm64");
    Ok(())
}

/// Whether blob `b` belongs to the manifest `d` of `layout`.
fn env_blob_shared(layout: &Path, d: &serde_json::Value, b: &str) -> bool {
    let hex = d["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:");
    std::fs::read(layout.join("blobs/sha256").join(hex))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|m| blobs_of(&m).iter().any(|x| x == b))
}

/// htpasswd registry: credentials from `$DOCKER_CONFIG/config.json` work for push and
/// pull; a registry name without credentials gets a clear error; the same login in
/// berth's own config file works without any Docker config.
#[tokio::test]
async fn pull_push_basic_auth_from_docker_config_and_berth_config() -> anyhow::Result<()> {
    need("base64")?;
    let registry = Registry::start(Some(("berth", "s3cret"))).await?;
    let mut env = Env::start().await?;
    // Credentials for 127.0.0.1:<port> only; `localhost:<port>` is the same registry
    // under a name that has none.
    let auth = ok(Command::new("sh").args(["-c", "printf %s berth:s3cret | base64"]))?;
    std::fs::write(
        env.docker_config(),
        serde_json::to_vec(&serde_json::json!({
            "auths": { format!("127.0.0.1:{}", registry.port): {"auth": auth.trim()} }
        }))?,
    )?;
    let work = tempfile::tempdir()?;
    let tar = busybox_rootfs_tar(work.path(), "bb", &[])?;
    let name = registry.name("private/busybox:1");
    env.ok(&["import", &tar.display().to_string(), &name])?;
    let digest = env.inspect(&name)?.digest;
    env.ok(&["push", &name])?;
    env.ok(&["rmi", &name])?;
    env.ok(&["pull", &name])?;
    ensure!(env.inspect(&name)?.digest == digest);

    let anonymous = format!("localhost:{}/private/busybox:1", registry.port);
    let (code, message) = env.fails(&["pull", &anonymous])?;
    ensure!(code == 125, "exit {code}: {message}");
    ensure!(
        message.contains("unauthorized")
            && message.contains("credentials")
            && message.contains(&anonymous),
        "unclear auth error: {message}"
    );
    match env.pull_request(&anonymous).await {
        Err(BusError::Service(e)) if e.code == ErrorKind::Invalid => {}
        other => bail!("expected invalid, got {other:?}"),
    }
    ensure!(!env.references()?.contains(&anonymous));

    // The same login from berth's own config file, with no Docker config at all.
    std::fs::remove_file(env.docker_config())?;
    env.kill_store().await?;
    let config = env.dir.path().join("image-store.toml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "[credentials.\"localhost:{}\"]\nusername = \"berth\"\npassword = \"s3cret\"\n",
        registry.port
    ));
    std::fs::write(&config, text)?;
    env.start_store().await?;
    env.ok(&["pull", &anonymous])?;
    ensure!(env.inspect(&anonymous)?.digest == digest);
    env.ok(&["rmi", &name])?;
    let (code, message) = env.fails(&["pull", &name])?;
    ensure!(
        code == 125,
        "127.0.0.1 has no login left: exit {code}: {message}"
    );
    Ok(())
}

/// 404 → not_found (exit 1), registry down → unavailable; neither leaves a reference.
#[tokio::test]
async fn pull_errors_not_found_and_unavailable() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let missing = registry.name("no/such:image");
    let (code, message) = env.fails(&["pull", &missing])?;
    ensure!(code == 1, "exit {code}: {message}");
    ensure!(
        message.contains("no/such") && message.contains("not found"),
        "{message}"
    );
    match env.pull_request(&missing).await {
        Err(BusError::Service(e)) if e.code == ErrorKind::NotFound => {}
        other => bail!("expected not_found, got {other:?}"),
    }
    let down = format!("127.0.0.1:{}/x/y:1", free_port()?);
    match env.pull_request(&down).await {
        Err(BusError::Service(e)) if e.code == ErrorKind::Unavailable => {
            ensure!(e.message.contains("x/y"), "{}", e.message)
        }
        other => bail!("expected unavailable, got {other:?}"),
    }
    let (code, _) = env.fails(&["pull", "not a reference"])?;
    ensure!(code == 125);
    ensure!(env.references()?.is_empty());
    Ok(())
}

/// `history` shows each layer's uncompressed size, as Docker and podman do, whether
/// the image was imported (size known) or pulled (gzip layers, measured on demand).
#[tokio::test]
async fn history_shows_uncompressed_layer_sizes_for_pulled_images_too() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let tar = busybox_rootfs_tar(work.path(), "bb", &[("etc/sized", "sized\n")])?;
    let name = registry.name("berth/sized:1");
    env.ok(&["import", &tar.display().to_string(), &name])?;
    let sizes = |env: &Env| -> anyhow::Result<Vec<u64>> {
        let rows: serde_json::Value =
            serde_json::from_str(&env.ok(&["history", "--json", &name])?)?;
        rows.as_array()
            .context("history rows")?
            .iter()
            .map(|row| row["size"].as_u64().context("a row without a size"))
            .collect()
    };
    let imported = sizes(&env)?;
    let tar_size = std::fs::metadata(&tar)?.len();
    ensure!(
        imported.contains(&tar_size),
        "an imported layer's size is its tar's ({tar_size}): {imported:?}"
    );
    let compressed = env.inspect(&name)?.layers[0].size;
    ensure!(compressed < tar_size, "the stored layer is compressed");
    env.ok(&["push", &name])?;
    env.ok(&["rmi", &name])?;
    env.ok(&["pull", &name])?;
    let pulled = sizes(&env)?;
    ensure!(
        pulled == imported,
        "pulled {pulled:?}, imported {imported:?} (compressed {compressed})"
    );
    // Measured once, then kept in the image record.
    ensure!(sizes(&env)? == imported);
    Ok(())
}

/// A pull refused for a digest mismatch leaves nothing in the blob store: not the
/// config it wrote first, not the layer that failed.
#[tokio::test]
async fn a_refused_pull_leaves_no_blob_behind() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let tar = busybox_rootfs_tar(work.path(), "bb", &[("etc/tampered", "yes\n")])?;
    let name = registry.name("berth/tampered:1");
    env.ok(&["import", &tar.display().to_string(), &name])?;
    let image = env.inspect(&name)?;
    env.ok(&["push", &name])?;
    env.ok(&["rmi", &name])?;
    ensure!(
        env.objects().await?.is_empty(),
        "rmi left blobs: {:?}",
        env.objects().await?
    );
    // Flip one byte of the layer in the registry's storage: same size, wrong digest.
    let layer = image
        .layers
        .first()
        .context("the image has a layer")?
        .digest
        .clone();
    let hex = layer.trim_start_matches("sha256:");
    let data = registry
        .dir
        .path()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).with_context(|| format!("read {}", data.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes)?;

    let (code, message) = env.fails(&["pull", &name])?;
    ensure!(code != 0, "the pull of a tampered layer succeeded");
    ensure!(message.contains("digest"), "exit {code}: {message}");
    let left = env.objects().await?;
    ensure!(
        left.is_empty(),
        "a refused pull left {left:?} (config {})",
        image.config_digest
    );
    ensure!(env.references()?.is_empty(), "{:?}", env.references()?);
    Ok(())
}

/// Two pulls of the same image at once both succeed and fetch each blob once.
#[tokio::test]
async fn pull_twice_at_once_fetches_each_blob_once() -> anyhow::Result<()> {
    need_root("umoci unpack keeps file owners")?;
    let registry = Registry::start(None).await?;
    let env = Env::start().await?;
    let work = tempfile::tempdir()?;
    let layout = umoci_layout(work.path())?;
    let name = registry.name("x/twice:a");
    skopeo_push(&layout, "a", &name, false)?;
    let mark = registry.log().len();
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.berth(&["pull", "-q", &name]).and_then(|mut c| {
                c.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(Into::into)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "a concurrent pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, raw) = skopeo_raw(&name)?;
    for layer in blobs_of(&raw).iter().skip(1) {
        let gets = registry.gets(mark, &format!("/v2/x/twice/blobs/{layer}"));
        ensure!(gets == 1, "layer {layer} fetched {gets} times");
    }
    let image = env.inspect(&name)?;
    let objects = env.objects().await?;
    for blob in stored_blobs(&image) {
        ensure!(
            objects.iter().filter(|o| **o == blob).count() == 1,
            "{blob}"
        );
    }
    Ok(())
}

/// SIGKILL of the image-store mid-pull: no reference appears, and after a restart the
/// same pull succeeds (the dead writer's claim expires) with every blob intact.
// Multi-threaded: the proxy's tasks must run while a blocking `berth` call waits on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_survives_sigkill_of_the_image_store() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let mut env = Env::start().await?;
    let work = tempfile::tempdir()?;
    // Incompressible, so the layer is big on the wire too and the pull takes a while.
    let noise = {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..32 * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(ALPHABET[(x >> 58) as usize])
            })
            .collect::<String>()
    };
    let tar = busybox_rootfs_tar(work.path(), "big", &[("noise", &noise)])?;
    let name = registry.name("big/image:1");
    env.ok(&["import", &tar.display().to_string(), &name])?;
    let before = env.inspect(&name)?;
    env.ok(&["push", &name])?;
    env.ok(&["rmi", &name])?;

    // The pull goes through a proxy that holds the first large blob response part-way,
    // so the kill lands mid-blob every time (a loopback registry serves 32 MB faster
    // than its access log shows the GET).
    let proxy = StallingProxy::start(registry.port, 4 * 1024 * 1024).await?;
    let name = format!("127.0.0.1:{}/big/image:1", proxy.port);
    let pull = env
        .berth(&["pull", "-q", &name])?
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    tokio::time::timeout(Duration::from_secs(60), proxy.stalled.notified())
        .await
        .context("the pull never got part-way into the layer")?;
    env.kill_store().await?;
    let out = tokio::task::spawn_blocking(move || pull.wait_with_output()).await??;
    ensure!(
        !out.status.success(),
        "the pull cannot succeed without its image-store"
    );
    env.start_store().await?;
    ensure!(
        !env.references()?.contains(&name),
        "a killed pull left a reference"
    );

    env.ok(&["pull", &name])?;
    let after = env.inspect(&name)?;
    ensure!(after.digest == before.digest && stored_blobs(&after) == stored_blobs(&before));
    // Every blob reads back whole: save streams them with digest checks.
    let archive = work.path().join("saved.tar");
    env.ok(&["save", &name, "-o", &archive.display().to_string()])?;
    ensure!(std::fs::metadata(&archive)?.len() > 32 * 1024 * 1024);
    Ok(())
}

/// Two image-stores serving at once: 10 concurrent pulls of overlapping images (three
/// images under ten references, so the same blobs are pulled by several requests on
/// both instances), then `rmi` of half of them; every remaining image is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_ten_concurrent_overlapping_pulls_then_rmi_of_half() -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let mut env = Env::start().await?;
    env.start_another_store().await?;
    let work = tempfile::tempdir()?;
    let mut references = Vec::new();
    let mut digests = Vec::new();
    for (image, copies) in [(0, 4), (1, 3), (2, 3)] {
        let tar = busybox_rootfs_tar(
            work.path(),
            &format!("img{image}"),
            &[("id", &format!("image {image}\n"))],
        )?;
        let local = format!("local/img{image}:1");
        env.ok(&["import", &tar.display().to_string(), &local])?;
        for copy in 0..copies {
            let name = registry.name(&format!("pulls/img{image}-{copy}:1"));
            env.ok(&["tag", &local, &name])?;
            env.ok(&["push", &name])?;
            references.push(name);
        }
        digests.push(env.inspect(&local)?.digest);
        env.ok(&["rmi", &local])?;
    }
    for name in &references {
        env.ok(&["rmi", name])?;
    }
    ensure!(
        env.references()?.is_empty(),
        "the store is not empty before the pulls"
    );

    let pulls: Vec<_> = references
        .iter()
        .map(|name| {
            let mut command = env.berth(&["pull", "-q", name])?;
            let name = name.clone();
            Ok(tokio::task::spawn_blocking(move || {
                (name, command.output())
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    for pull in pulls {
        let (name, output) = pull.await?;
        let output = output?;
        ensure!(
            output.status.success(),
            "pull {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (removed, kept): (Vec<_>, Vec<_>) =
        references.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, name) in &removed {
        env.ok(&["rmi", name])?;
    }
    let listed = env.references()?;
    for (_, name) in &removed {
        ensure!(!listed.contains(name), "{name} is still listed after rmi");
    }
    for (i, name) in &kept {
        let image = env.inspect(name)?;
        let expected = match i {
            0..=3 => &digests[0],
            4..=6 => &digests[1],
            _ => &digests[2],
        };
        ensure!(
            &image.digest == expected,
            "{name}: {} != {expected}",
            image.digest
        );
        // save streams every blob with its digest checked: all present and whole.
        let archive = work.path().join(format!("kept-{i}.tar"));
        env.ok(&["save", name, "-o", &archive.display().to_string()])?;
    }
    Ok(())
}

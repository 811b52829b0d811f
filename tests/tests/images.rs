//! The image-store end to end: real nats-server, real `berth-image-store` binaries (one
//! or two at once), the real `berth` CLI, and images made from Debian's busybox-static,
//! by umoci and by skopeo; archives checked with skopeo and podman.
//!
//! Needs root (umoci unpack, podman) and busybox, umoci, skopeo, podman, sha256sum, tar
//! on PATH; a missing tool fails the test with its name instead of passing silently.

use anyhow::{bail, ensure, Context};
use async_nats::jetstream;
use berth_proto::messages::image::{ImageInspect, ImageSummary};
use berth_proto::subjects::{jetstream as names, service_names, transfer};
use berth_tests::fixtures::{busybox_rootfs_tar, need, ok, skopeo_archive, umoci_layout};
use berth_tests::{bin_path, Stack};
use futures::{StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const NODE: &str = "node-img";
const STORE: &str = service_names::IMAGE_STORE;

// ---- helpers ------------------------------------------------------------------------

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    Ok(output)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn berth(stack: &Stack, args: &[&str]) -> anyhow::Result<Command> {
    let mut command = stack.berth()?;
    command.args(args);
    Ok(command)
}

/// Runs `berth` expecting failure; returns (exit code, stderr).
fn berth_fails(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = run(&mut berth(stack, args)?)?;
    ensure!(
        !output.status.success(),
        "berth {args:?} should have failed but printed {}",
        text(&output.stdout)
    );
    let stderr = text(&output.stderr);
    ensure!(
        stderr.starts_with("berth: ") && stderr.trim_end().lines().count() == 1,
        "error is not one `berth: …` line: {stderr:?}"
    );
    Ok((output.status.code().unwrap_or(-1), stderr))
}

fn images(stack: &Stack) -> anyhow::Result<Vec<ImageSummary>> {
    Ok(serde_json::from_str(&ok(&mut berth(
        stack,
        &["images", "--json"],
    )?)?)?)
}

fn inspect(stack: &Stack, name: &str) -> anyhow::Result<ImageInspect> {
    let out = ok(&mut berth(stack, &["image", "inspect", name, "--json"])?)?;
    let mut all: Vec<ImageInspect> = serde_json::from_str(&out)?;
    ensure!(all.len() == 1, "inspect {name} gave {} images", all.len());
    Ok(all.remove(0))
}

async fn object_store(stack: &Stack) -> anyhow::Result<jetstream::object_store::ObjectStore> {
    let client = stack.nats.client().await?;
    Ok(jetstream::new(client)
        .get_object_store(names::BLOBS_BUCKET)
        .await?)
}

/// Names of every visible object in `berth-blobs`.
async fn object_names(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let store = object_store(stack).await?;
    let infos: Vec<_> = store.list().await?.try_collect().await?;
    let mut names: Vec<String> = infos
        .into_iter()
        .filter(|i| !i.deleted)
        .map(|i| i.name)
        .collect();
    names.sort();
    Ok(names)
}

async fn kv_keys(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let client = stack.nats.client().await?;
    let kv = jetstream::new(client)
        .get_key_value(names::IMAGES_BUCKET)
        .await?;
    let mut keys: Vec<String> = kv.keys().await?.try_collect().await?;
    keys.sort();
    Ok(keys)
}

/// Downloads a blob and checks its sha256 against its name.
async fn verify_blob(stack: &Stack, digest: &str, scratch: &Path) -> anyhow::Result<()> {
    let store = object_store(stack).await?;
    let mut object = store
        .get(digest)
        .await
        .with_context(|| format!("blob {digest} is missing"))?;
    let path = scratch.join("verify.blob");
    let mut file = tokio::fs::File::create(&path).await?;
    tokio::io::copy(&mut object, &mut file).await?;
    let sum = ok(Command::new("sha256sum").arg(&path))?;
    let hex = sum.split_whitespace().next().unwrap_or("");
    ensure!(
        digest == format!("sha256:{hex}"),
        "blob {digest} holds content with sha256 {hex}"
    );
    Ok(())
}

/// Every blob of an image (config and layers) is present and hashes to its digest.
async fn verify_image(stack: &Stack, image: &ImageInspect, scratch: &Path) -> anyhow::Result<()> {
    verify_blob(stack, &image.config_digest, scratch).await?;
    for layer in &image.layers {
        verify_blob(stack, &layer.digest, scratch).await?;
    }
    Ok(())
}

/// An image-store process started by the test (for a second instance or a restart).
struct ExtraStore {
    child: tokio::process::Child,
}

impl ExtraStore {
    fn start(stack: &Stack, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(stack, log, None)
    }

    fn start_with(stack: &Stack, log: &Path, config: Option<&Path>) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let mut command = tokio::process::Command::new(bin_path(STORE)?);
        command.env_remove("BERTH_CONFIG");
        if let Some(config) = config {
            command.env("BERTH_CONFIG", config);
        }
        let child = command
            .env("BERTH_NATS_URL", stack.nats.url())
            .env("BERTH_DATA_DIR", stack.data_dir())
            .env("BERTH_NODE_ID", NODE)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        Ok(ExtraStore { child })
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

async fn wait_for_instances(stack: &Stack, count: usize) -> anyhow::Result<()> {
    let client = stack.nats.client().await?;
    for _ in 0..200 {
        if berth_tests::ping_count(&client, STORE, Duration::from_millis(200)).await? >= count {
            return Ok(());
        }
    }
    bail!("{count} image-store instances did not come up")
}

/// Every image event in `BERTH_EVENTS`: (subject, JSON body), oldest first.
async fn image_events(stack: &Stack) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let js = jetstream::new(stack.nats.client().await?);
    let stream = js.get_stream(names::EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: berth_proto::subjects::events_of_kind(
                berth_proto::subjects::EventKind::Image,
            ),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(message) = messages
        .try_next()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        out.push((
            message.subject.to_string(),
            serde_json::from_slice(&message.payload)?,
        ));
    }
    Ok(out)
}

/// Chunk subjects of `berth-blobs` that no object's metadata refers to.
async fn orphan_chunk_subjects(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let js = jetstream::new(stack.nats.client().await?);
    let store = js.get_object_store(names::BLOBS_BUCKET).await?;
    let live: Vec<String> = store
        .list()
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .map(|i| i.nuid)
        .collect();
    let prefix = format!("$O.{}.C.", names::BLOBS_BUCKET);
    let stream = js
        .get_stream(format!("OBJ_{}", names::BLOBS_BUCKET))
        .await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await?
        .try_collect()
        .await?;
    Ok(subjects
        .into_iter()
        .map(|(subject, _)| subject)
        .filter(|s| {
            !live
                .iter()
                .any(|nuid| s.strip_prefix(&prefix) == Some(nuid.as_str()))
        })
        .collect())
}

/// Every object name and KV key: equal before and after means "store unchanged".
async fn store_state(stack: &Stack) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    Ok((object_names(stack).await?, kv_keys(stack).await?))
}

// ---- tests --------------------------------------------------------------------------

#[tokio::test]
async fn import_list_inspect_history_tag_save_load_round_trip() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let dir = tempfile::tempdir()?;
    let rootfs = busybox_rootfs_tar(dir.path(), "busybox", &[("etc/motd", "hello\n")])?;
    let rootfs_str = rootfs.display().to_string();

    let digest = ok(&mut berth(
        &stack,
        &[
            "import",
            &rootfs_str,
            "busybox:1",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            "ENV GREETING=hi",
            "--message",
            "from busybox-static",
        ],
    )?)?
    .trim()
    .to_string();
    ensure!(digest.starts_with("sha256:"), "import printed {digest:?}");

    let listed = images(&stack)?;
    ensure!(listed.len() == 1, "{listed:?}");
    assert_eq!(listed[0].reference.as_deref(), Some("busybox:1"));
    assert_eq!(listed[0].digest, digest);
    let table = ok(&mut berth(&stack, &["images"])?)?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "DIGEST", "CREATED", "SIZE"]);
    assert!(
        table.contains("busybox") && table.contains(&digest[7..19]),
        "{table}"
    );

    let image = inspect(&stack, "busybox:1")?;
    assert_eq!(image.digest, digest);
    assert_eq!(image.references, ["busybox:1"]);
    assert_eq!(image.layers.len(), 1);
    let layer = &image.layers[0];
    assert_eq!(
        layer.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        layer.chain_id, layer.diff_id,
        "a base layer's chainID is its diff_id"
    );
    let rootfs_len = std::fs::metadata(&rootfs)?.len();
    assert_eq!(layer.uncompressed_size, Some(rootfs_len));
    let sum = ok(Command::new("sha256sum").arg(&rootfs))?;
    assert_eq!(layer.diff_id, format!("sha256:{}", &sum[..64]));
    let config: serde_json::Value = serde_json::from_str(&image.config)?;
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(config["config"]["Env"][0], "GREETING=hi");
    assert_eq!(image.platform.os, "linux");
    verify_image(&stack, &image, dir.path()).await?;
    // The inspect reply works for JSON callers on the bus too.
    let client = stack.nats.client().await?;
    let json_reply: ImageInspect = berth_bus::request(
        &client,
        &berth_proto::subjects::image(berth_proto::subjects::ImageVerb::Inspect),
        &serde_json::json!({"name": "busybox:1"}),
        berth_proto::Encoding::Json,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(json_reply, image);

    let history: Vec<serde_json::Value> = serde_json::from_str(&ok(&mut berth(
        &stack,
        &["history", "busybox:1", "--json"],
    )?)?)?;
    ensure!(history.len() == 1, "{history:?}");
    assert_eq!(history[0]["comment"], "from busybox-static");
    assert_eq!(history[0]["size"], rootfs_len);
    let history_table = ok(&mut berth(&stack, &["history", "busybox:1"])?)?;
    assert!(history_table.starts_with("CREATED"), "{history_table}");

    ok(&mut berth(
        &stack,
        &["tag", "busybox:1", "127.0.0.1:5000/x/bb:2"],
    )?)?;
    let refs: Vec<Option<String>> = images(&stack)?.into_iter().map(|i| i.reference).collect();
    assert_eq!(
        refs,
        [
            Some("127.0.0.1:5000/x/bb:2".to_string()),
            Some("busybox:1".to_string())
        ]
    );

    let archive = dir.path().join("saved.tar");
    let archive_str = archive.display().to_string();
    ok(&mut berth(
        &stack,
        &[
            "save",
            "busybox:1",
            "127.0.0.1:5000/x/bb:2",
            "-o",
            &archive_str,
        ],
    )?)?;
    need("skopeo")?;
    let skopeo: serde_json::Value = serde_json::from_str(&ok(Command::new("skopeo").args([
        "inspect",
        &format!("docker-archive:{archive_str}:busybox:1"),
    ]))?)?;
    assert_eq!(
        skopeo["Layers"].as_array().map(Vec::len),
        Some(1),
        "{skopeo}"
    );
    assert_eq!(skopeo["Env"][0], "GREETING=hi");
    need("podman")?;
    let podman_root = dir.path().join("podman");
    let loaded = ok(Command::new("podman")
        .arg("--root")
        .arg(podman_root.join("root"))
        .arg("--runroot")
        .arg(podman_root.join("run"))
        .args(["--storage-driver", "vfs", "load", "-i", &archive_str]))?;
    assert!(loaded.contains("busybox:1"), "{loaded}");
    // Nothing left in the blob store but content: the download object is gone.
    let objects = object_names(&stack).await?;
    ensure!(
        objects.iter().all(|n| n.starts_with("sha256:")),
        "transfer objects left behind: {objects:?}"
    );

    // Delete everything, then load the archive back.
    ok(&mut berth(
        &stack,
        &["rmi", "busybox:1", "127.0.0.1:5000/x/bb:2"],
    )?)?;
    ensure!(images(&stack)?.is_empty());
    ensure!(
        object_names(&stack).await?.is_empty(),
        "all blobs collected"
    );
    let loaded = ok(&mut berth(&stack, &["load", "-i", &archive_str])?)?;
    assert!(loaded.contains("Loaded image: busybox:1"), "{loaded}");
    let reloaded = inspect(&stack, "127.0.0.1:5000/x/bb:2")?;
    assert_eq!(
        reloaded.config_digest, image.config_digest,
        "image ID survives"
    );
    assert_eq!(reloaded.layers[0].diff_id, layer.diff_id);
    verify_image(&stack, &reloaded, dir.path()).await?;

    // Second round trip: from here on every digest is stable.
    let again = dir.path().join("again.tar");
    let again_str = again.display().to_string();
    ok(&mut berth(
        &stack,
        &["save", "busybox:1", "-o", &again_str],
    )?)?;
    ok(&mut berth(&stack, &["rmi", "-f", &reloaded.digest])?)?;
    let loaded = ok(berth(&stack, &["load"])?.stdin(std::fs::File::open(&again)?))?;
    assert!(loaded.contains("busybox:1"), "{loaded}");
    assert_eq!(inspect(&stack, "busybox:1")?.digest, reloaded.digest);

    // Each change was announced on berth.v1.events.image.<hex>.<action>.
    let events = image_events(&stack).await?;
    let import_subject = berth_proto::subjects::event(
        berth_proto::subjects::EventKind::Image,
        &digest[7..],
        "import",
    );
    ensure!(
        events
            .iter()
            .any(|(subject, body)| *subject == import_subject
                && body["digest"] == digest.as_str()
                && body["reference"] == "busybox:1"),
        "no import event on {import_subject}: {events:?}"
    );
    for action in ["tag", "untag", "delete", "load"] {
        ensure!(
            events.iter().any(|(_, body)| body["action"] == action),
            "no {action} event: {events:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rmi_of_one_image_keeps_the_layers_another_shares() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let dir = tempfile::tempdir()?;
    let layout = umoci_layout(dir.path())?;
    for tag in ["a", "b"] {
        let archive = dir.path().join(format!("{tag}.tar"));
        skopeo_archive(&layout, tag, &archive, &format!("shared/{tag}:1"))?;
        ok(&mut berth(
            &stack,
            &["load", "-i", &archive.display().to_string()],
        )?)?;
    }
    let a = inspect(&stack, "shared/a:1")?;
    let b = inspect(&stack, "shared/b:1")?;
    ensure!(a.layers.len() == 2 && b.layers.len() == 2, "{a:?}");
    assert_eq!(a.layers[0].digest, b.layers[0].digest, "base layer shared");
    assert_ne!(a.layers[1].digest, b.layers[1].digest);
    assert_eq!(a.layers[0].chain_id, b.layers[0].chain_id);
    assert_ne!(a.layers[1].chain_id, a.layers[1].diff_id);

    let removed = ok(&mut berth(&stack, &["rmi", "shared/a:1"])?)?;
    assert!(removed.contains("Untagged: shared/a:1") && removed.contains("Deleted:"));
    verify_image(&stack, &b, dir.path()).await?;
    let objects = object_names(&stack).await?;
    ensure!(
        !objects.contains(&a.layers[1].digest),
        "a's own layer should be collected: {objects:?}"
    );
    assert_eq!(
        objects.len(),
        3,
        "b's config and two layers remain: {objects:?}"
    );

    // Two names for b: untagging one keeps it; by digest needs --force.
    ok(&mut berth(&stack, &["tag", "shared/b:1", "shared/b:2"])?)?;
    let (code, err) = berth_fails(&stack, &["rmi", &b.digest])?;
    assert_eq!(code, 125);
    assert!(err.contains("must be forced"), "{err}");
    ok(&mut berth(&stack, &["rmi", "-f", &b.digest[7..19]])?)?;
    ensure!(images(&stack)?.is_empty());
    ensure!(
        object_names(&stack).await?.is_empty(),
        "every blob collected"
    );
    let keys = kv_keys(&stack).await?;
    ensure!(keys.is_empty(), "no records left: {keys:?}");

    // Not found: Docker's exit code 1.
    let (code, err) = berth_fails(&stack, &["rmi", "shared/a:1"])?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No such image: shared/a:1"), "{err}");
    Ok(())
}

#[tokio::test]
async fn oci_layout_tar_loads_untagged_images_and_prune_removes_them() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let dir = tempfile::tempdir()?;
    let layout = umoci_layout(dir.path())?;
    // Without ref names the images load untagged (with umoci's bare names `base`, `a`,
    // `b` they would load as base:latest… like `docker load`: see hardening.rs).
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    for manifest in index["manifests"]
        .as_array_mut()
        .context("index.json has manifests")?
    {
        if let Some(fields) = manifest.as_object_mut() {
            fields.remove("annotations");
        }
    }
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    let tar = dir.path().join("layout.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    let out = ok(&mut berth(
        &stack,
        &["load", "-i", &tar.display().to_string()],
    )?)?;
    assert_eq!(out.matches("Loaded image ID: sha256:").count(), 3, "{out}");
    let listed = images(&stack)?;
    ensure!(
        listed.len() == 3 && listed.iter().all(|i| i.reference.is_none()),
        "{listed:?}"
    );
    // Keep one by tagging it; prune takes the other two.
    ok(&mut berth(&stack, &["tag", &listed[0].digest, "kept:1"])?)?;
    let pruned: serde_json::Value =
        serde_json::from_str(&ok(&mut berth(&stack, &["image", "prune", "--json"])?)?)?;
    assert_eq!(
        pruned["deleted"].as_array().map(Vec::len),
        Some(2),
        "{pruned}"
    );
    let left = images(&stack)?;
    ensure!(left.len() == 1, "{left:?}");
    let kept = inspect(&stack, "kept:1")?;
    verify_image(&stack, &kept, dir.path()).await?;
    Ok(())
}

#[tokio::test]
async fn two_instances_with_concurrent_overlapping_imports_and_loads_stay_consistent(
) -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE, STORE], NODE).await?;
    wait_for_instances(&stack, 2).await?;
    let dir = tempfile::tempdir()?;
    let rootfs = busybox_rootfs_tar(dir.path(), "busybox", &[])?;
    let layout = umoci_layout(dir.path())?;
    let mut archives = Vec::new();
    for tag in ["a", "b"] {
        let archive = dir.path().join(format!("{tag}.tar"));
        skopeo_archive(&layout, tag, &archive, &format!("umoci/{tag}:1"))?;
        archives.push(archive);
    }
    // Eight imports of the same rootfs (one shared layer, eight configs) and the two
    // umoci archives (shared base) twice each, all at once.
    let mut children = Vec::new();
    for i in 0..8 {
        let mut command = berth(
            &stack,
            &[
                "import",
                &rootfs.display().to_string(),
                &format!("many/img{i}:1"),
                "--change",
                &format!("ENV N={i}"),
            ],
        )?;
        children.push((
            format!("import {i}"),
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        ));
    }
    for round in 0..2 {
        for archive in &archives {
            let mut command = berth(&stack, &["load", "-i", &archive.display().to_string()])?;
            children.push((
                format!("load {} #{round}", archive.display()),
                command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?,
            ));
        }
    }
    for (what, child) in children {
        let output = child.wait_with_output()?;
        ensure!(output.status.success(), "{what}: {}", text(&output.stderr));
    }
    let listed = images(&stack)?;
    assert_eq!(listed.len(), 10, "{listed:?}");
    // Both instances did some of the work.
    for service in &stack.services {
        let log = std::fs::read_to_string(&service.log)?;
        ensure!(
            log.contains("stored image"),
            "an instance stored nothing: {}",
            service.log.display()
        );
    }

    // Remove half, concurrently, across both instances.
    let names: Vec<String> = listed.iter().filter_map(|i| i.reference.clone()).collect();
    let (gone, kept) = names.split_at(5);
    let mut children = Vec::new();
    for name in gone {
        children.push(
            berth(&stack, &["rmi", name])?
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?,
        );
    }
    for child in children {
        let output = child.wait_with_output()?;
        ensure!(output.status.success(), "rmi: {}", text(&output.stderr));
    }
    let left = images(&stack)?;
    assert_eq!(left.len(), kept.len(), "{left:?}");
    let mut needed = std::collections::BTreeSet::new();
    for name in kept {
        let image = inspect(&stack, name)?;
        verify_image(&stack, &image, dir.path()).await?;
        needed.insert(image.config_digest.clone());
        needed.extend(image.layers.iter().map(|l| l.digest.clone()));
    }
    // And nothing else is left: unused blobs were collected.
    let objects: std::collections::BTreeSet<String> =
        object_names(&stack).await?.into_iter().collect();
    assert_eq!(objects, needed);
    Ok(())
}

/// A docker-archive written by hand, so every part can be broken on purpose.
struct HandArchive {
    dir: PathBuf,
}

impl HandArchive {
    /// One image: `<diff_id>.tar` layer, `<config hex>.json` config, manifest.json.
    fn new(parent: &Path, name: &str) -> anyhow::Result<(Self, String, String)> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir)?;
        let layer_src = parent.join(format!("{name}-layer"));
        std::fs::create_dir_all(&layer_src)?;
        std::fs::write(layer_src.join("hello"), "hello\n")?;
        let layer = dir.join("layer.tar");
        ok(Command::new("tar")
            .arg("-C")
            .arg(&layer_src)
            .arg("-cf")
            .arg(&layer)
            .arg("hello"))?;
        let diff_id = ok(Command::new("sha256sum").arg(&layer))?[..64].to_string();
        let layer_name = format!("{diff_id}.tar");
        std::fs::rename(&layer, dir.join(&layer_name))?;
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        });
        let config_bytes = serde_json::to_vec(&config)?;
        std::fs::write(dir.join("config.json"), &config_bytes)?;
        let config_hex =
            ok(Command::new("sha256sum").arg(dir.join("config.json")))?[..64].to_string();
        std::fs::rename(
            dir.join("config.json"),
            dir.join(format!("{config_hex}.json")),
        )?;
        let archive = HandArchive { dir };
        archive.manifest(&format!("{config_hex}.json"), &[&layer_name], "hand/made:1")?;
        Ok((archive, config_hex, layer_name))
    }

    fn manifest(&self, config: &str, layers: &[&str], tag: &str) -> anyhow::Result<()> {
        let manifest = serde_json::json!([{"Config": config, "RepoTags": [tag], "Layers": layers}]);
        std::fs::write(
            self.dir.join("manifest.json"),
            serde_json::to_vec(&manifest)?,
        )?;
        Ok(())
    }

    fn tar(&self, out: &Path) -> anyhow::Result<String> {
        ok(Command::new("tar")
            .arg("-C")
            .arg(&self.dir)
            .arg("-cf")
            .arg(out)
            .arg("."))?;
        Ok(out.display().to_string())
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let dir = tempfile::tempdir()?;
    // A good image first, so "unchanged" is not just "empty".
    let rootfs = busybox_rootfs_tar(dir.path(), "busybox", &[])?;
    ok(&mut berth(
        &stack,
        &["import", &rootfs.display().to_string(), "good:1"],
    )?)?;
    let before = store_state(&stack).await?;
    let mut case = 0;
    let mut expect = |stack: &Stack, args: &[&str], needles: &[&str]| -> anyhow::Result<()> {
        case += 1;
        let (code, err) = berth_fails(stack, args)?;
        ensure!(code == 125, "case {case} {args:?}: exit {code}: {err}");
        for needle in needles {
            ensure!(
                err.contains(needle),
                "case {case} {args:?}: {err:?} lacks {needle:?}"
            );
        }
        Ok(())
    };

    // A reference that does not parse.
    let rootfs_str = rootfs.display().to_string();
    expect(
        &stack,
        &["import", &rootfs_str, "Bad:Name"],
        &["invalid image reference", "Bad:Name"],
    )?;
    expect(
        &stack,
        &["tag", "good:1", "no spaces:1"],
        &["invalid image reference"],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // Not a tar at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![0x42u8; 4096])?;
    expect(
        &stack,
        &["import", &junk.display().to_string(), "junk:1"],
        &["not a valid tar"],
    )?;
    expect(
        &stack,
        &["load", "-i", &junk.display().to_string()],
        &["junk.tar"],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // Malformed config JSON.
    let (hand, config_hex, layer) = HandArchive::new(dir.path(), "badconfig")?;
    std::fs::remove_file(hand.dir.join(format!("{config_hex}.json")))?;
    std::fs::write(hand.dir.join("config.json"), b"{\"architecture\": ")?;
    hand.manifest("config.json", &[&layer], "hand/made:1")?;
    let file = hand.tar(&dir.path().join("badconfig.tar"))?;
    expect(
        &stack,
        &["load", "-i", &file],
        &["badconfig.tar", "malformed", "config"],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // Malformed manifest.json.
    let (hand, _, _) = HandArchive::new(dir.path(), "badmanifest")?;
    std::fs::write(hand.dir.join("manifest.json"), b"[{\"Config\": 12}]")?;
    let file = hand.tar(&dir.path().join("badmanifest.tar"))?;
    expect(&stack, &["load", "-i", &file], &["malformed manifest.json"])?;

    // manifest.json pointing outside the archive.
    let (hand, config_hex, layer) = HandArchive::new(dir.path(), "escape")?;
    hand.manifest(&format!("{config_hex}.json"), &["../../etc/passwd"], "x:1")?;
    std::fs::remove_file(hand.dir.join(&layer))?;
    let file = hand.tar(&dir.path().join("escape.tar"))?;
    expect(&stack, &["load", "-i", &file], &["escapes the archive"])?;

    // A missing layer file.
    let (hand, _, layer) = HandArchive::new(dir.path(), "missing")?;
    std::fs::remove_file(hand.dir.join(&layer))?;
    let file = hand.tar(&dir.path().join("missing.tar"))?;
    expect(
        &stack,
        &["load", "-i", &file],
        &["is missing", &layer[..12]],
    )?;

    // An extra file nothing refers to.
    let (hand, _, _) = HandArchive::new(dir.path(), "extra")?;
    std::fs::write(hand.dir.join("surprise.bin"), b"?")?;
    let file = hand.tar(&dir.path().join("extra.tar"))?;
    expect(
        &stack,
        &["load", "-i", &file],
        &["unexpected file", "surprise.bin"],
    )?;

    // A layer whose content does not match the digest its name promises.
    let (hand, _, layer) = HandArchive::new(dir.path(), "mismatch")?;
    let mut bytes = std::fs::read(hand.dir.join(&layer))?;
    bytes[600] ^= 0x01;
    std::fs::write(hand.dir.join(&layer), bytes)?;
    let file = hand.tar(&dir.path().join("mismatch.tar"))?;
    expect(
        &stack,
        &["load", "-i", &file],
        &["digest mismatch", &layer[..12]],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // A truncated archive (cut in the middle of the layer).
    let (hand, _, _) = HandArchive::new(dir.path(), "truncated")?;
    let whole = hand.tar(&dir.path().join("whole.tar"))?;
    let bytes = std::fs::read(&whole)?;
    let cut = dir.path().join("truncated.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 100])?;
    expect(
        &stack,
        &["load", "-i", &cut.display().to_string()],
        &["truncated.tar"],
    )?;

    // An OCI layout whose layer blob was cut short: size mismatch naming the blob.
    let layout = umoci_layout(dir.path())?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        layout.join("blobs/sha256").join(&manifest_digest[7..]),
    )?)?;
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let blob = layout.join("blobs/sha256").join(&layer_digest[7..]);
    let bytes = std::fs::read(&blob)?;
    std::fs::write(&blob, &bytes[..bytes.len() - 10])?;
    let tar = dir.path().join("cut-layout.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    expect(
        &stack,
        &["load", "-i", &tar.display().to_string()],
        &[&layer_digest[7..19]],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // A bad --change.
    expect(
        &stack,
        &["import", &rootfs_str, "c:1", "--change", "FROB x"],
        &["FROB"],
    )?;
    ensure!(store_state(&stack).await? == before, "the store changed");

    // Requests that try to use a content blob as an upload are refused.
    let client = stack.nats.client().await?;
    let good = inspect(&stack, "good:1")?;
    let reply = berth_bus::request::<_, serde_json::Value>(
        &client,
        &berth_proto::subjects::image(berth_proto::subjects::ImageVerb::Load),
        &serde_json::json!({"upload": good.layers[0].digest}),
        berth_proto::Encoding::Json,
        Duration::from_secs(5),
    )
    .await;
    match reply {
        Err(berth_bus::BusError::Service(e)) => {
            assert_eq!(e.code, berth_proto::ErrorKind::Invalid);
            assert!(e.message.contains(transfer::PREFIX), "{e:?}");
        }
        other => bail!("expected invalid, got {other:?}"),
    }
    ensure!(store_state(&stack).await? == before, "the store changed");
    verify_image(&stack, &good, dir.path()).await?;
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_import_leaves_the_store_consistent_and_the_retry_succeeds(
) -> anyhow::Result<()> {
    let stack = Stack::start(&[], NODE).await?;
    let dir = tempfile::tempdir()?;
    let mut store = ExtraStore::start(&stack, &dir.path().join("store1.log"))?;
    wait_for_instances(&stack, 1).await?;
    // Big enough that the layer upload takes a while even in a release build: 128 MB
    // that gzip cannot shrink.
    let rootfs = busybox_rootfs_tar(dir.path(), "big", &[])?;
    let noise = dir.path().join("big-rootfs/noise");
    ok(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=128", "status=none"])
        .arg(format!("of={}", noise.display())))?;
    ok(Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("big-rootfs"))
        .arg("-cf")
        .arg(&rootfs)
        .arg("."))?;
    let rootfs_str = rootfs.display().to_string();

    // One watcher on the catalogue (not a key listing per poll: each listing is a new
    // JetStream consumer, and polling fast enough to catch a release build hits the
    // server's consumer limit).
    let kv = jetstream::new(stack.nats.client().await?)
        .get_key_value(names::IMAGES_BUCKET)
        .await?;
    let mut watch = kv.watch_all().await?;
    let mut cli = berth(&stack, &["import", &rootfs_str, "big:1"])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Kill the store once it has pinned the blobs, i.e. while it writes the layer.
    let mut pinned_blobs = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while pinned_blobs.len() < 2 {
        let entry = tokio::time::timeout_at(deadline, watch.next())
            .await
            .context("the import never pinned its blobs")?
            .context("the catalogue watch ended")??;
        if entry.key.starts_with("blob.") {
            pinned_blobs.insert(entry.key.clone());
        }
    }
    // Kill at once: a release build uploads tens of MB in well under a second.
    store.kill().await?;
    let _ = cli.kill();
    let _ = cli.wait();
    let orphans = orphan_chunk_subjects(&stack).await?;
    eprintln!(
        "chunk subjects of unfinished writes after the kill: {}",
        orphans.len()
    );

    // Consistent: no image, no reference, and the half-written layer is not visible.
    let keys = kv_keys(&stack).await?;
    ensure!(
        keys.iter().all(|k| k.starts_with("blob.")),
        "only pins may remain: {keys:?}"
    );
    let objects: Vec<String> = object_names(&stack)
        .await?
        .into_iter()
        .filter(|n| n.starts_with("sha256:"))
        .collect();
    ensure!(
        objects.len() <= 1,
        "at most the small config blob is visible: {objects:?}"
    );

    // The restarted store drops pins of dead imports after 1 s instead of an hour, and
    // takes over the dead instance's claim on the layer it was writing after 3 s.
    let config = dir.path().join("image-store.toml");
    std::fs::write(&config, "pin_grace_seconds = 1\nwriter_grace_seconds = 3\n")?;
    let _store2 = ExtraStore::start_with(&stack, &dir.path().join("store2.log"), Some(&config))?;
    wait_for_instances(&stack, 1).await?;
    let listed = images(&stack)?;
    ensure!(listed.is_empty(), "{listed:?}");
    let started = std::time::Instant::now();
    ok(&mut berth(&stack, &["import", &rootfs_str, "big:1"])?)?;
    eprintln!("retry of the import took {:?}", started.elapsed());
    let image = inspect(&stack, "big:1")?;
    verify_image(&stack, &image, dir.path()).await?;
    // Deleting it keeps the layer: the dead import pinned the same layer (same rootfs,
    // same gzip) and its pin is still in its grace period. Once that has passed, prune
    // drops the dead pin and collects everything.
    ok(&mut berth(&stack, &["rmi", "big:1"])?)?;
    let objects = object_names(&stack).await?;
    ensure!(
        objects.contains(&image.layers[0].digest),
        "a pinned layer was collected: {objects:?}"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let pruned = ok(&mut berth(&stack, &["image", "prune"])?)?;
    assert!(pruned.contains(&image.layers[0].digest), "{pruned}");
    let digests: Vec<String> = object_names(&stack)
        .await?
        .into_iter()
        .filter(|n| n.starts_with("sha256:"))
        .collect();
    ensure!(digests.is_empty(), "blobs left after prune: {digests:?}");
    let keys = kv_keys(&stack).await?;
    ensure!(keys.is_empty(), "records left after prune: {keys:?}");
    // The chunks the killed store had written for its half-finished layer are gone
    // too: every chunk subject left belongs to an object (the leftover upload).
    let orphans = orphan_chunk_subjects(&stack).await?;
    ensure!(
        orphans.is_empty(),
        "unfinished writes left chunks: {orphans:?}"
    );
    Ok(())
}

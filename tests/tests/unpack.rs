//! The layer-unpacker end to end: images loaded into a real image-store, unpacked by the
//! real `berth-layer-unpacker` through `berth image unpack`, mounted as overlay and
//! compared file by file with `umoci unpack` of the same image.
//!
//! Needs root (overlay mounts, ownership) and busybox, umoci, skopeo on PATH.

use anyhow::{ensure, Context};
use berth_bus::request;
use berth_proto::messages::unpack::{
    SnapshotList, SnapshotListRequest, SnapshotPruneRequest, SnapshotsRemoved,
};
use berth_proto::subjects::{self, service_names, EventKind, UnpackVerb};
use berth_proto::Encoding;
use berth_tests::fixtures::{
    busybox_rootfs_tar, need, need_root, ok, skopeo_archive, umoci_layout,
};
use berth_tests::Stack;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NODE: &str = "node-unpack";

fn berth(stack: &Stack, args: &[&str]) -> anyhow::Result<String> {
    let mut command = stack.berth()?;
    command.args(args);
    ok(&mut command)
}

fn unpack(stack: &Stack, image: &str) -> anyhow::Result<serde_json::Value> {
    let out = berth(stack, &["image", "unpack", image, "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("unpack output: {out}"))
}

/// What is compared of each file: type, mode (incl. setuid/setgid/sticky), owner, link
/// target or content digest, and mtime for non-directories.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    detail: String,
    mtime: Option<i64>,
}

fn describe_tree(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for item in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = item?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let file_type = meta.file_type();
            let (kind, detail, mtime) = if file_type.is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&path)?.display().to_string(),
                    Some(meta.mtime()),
                )
            } else if file_type.is_dir() {
                pending.push(path.clone());
                ("dir", String::new(), None)
            } else if file_type.is_file() {
                let bytes = std::fs::read(&path)?;
                let digest = format!("{}:{:x}", bytes.len(), fxhash(&bytes));
                ("file", digest, Some(meta.mtime()))
            } else {
                ("other", format!("rdev {}", meta.rdev()), Some(meta.mtime()))
            };
            let relative = path.strip_prefix(root)?.to_path_buf();
            out.insert(
                relative,
                Entry {
                    kind,
                    mode: meta.permissions().mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    detail,
                    mtime,
                },
            );
        }
    }
    Ok(out)
}

/// A cheap content fingerprint (FNV-1a); collisions are irrelevant at this scale.
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

/// Mounts `lowerdirs` (top first) read-only at `target` and unmounts on drop.
struct OverlayMount(PathBuf);

impl OverlayMount {
    fn new(lowerdirs: &[String], target: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(target)?;
        ok(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdirs.join(":")))
            .arg(target))?;
        Ok(OverlayMount(target.to_path_buf()))
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn layers_are_unpacked_once_per_node_and_match_umoci_unpack() -> anyhow::Result<()> {
    need_root("overlay mounts and file ownership")?;
    need("umoci")?;
    need("skopeo")?;
    let stack = Stack::start(
        &[service_names::IMAGE_STORE, service_names::LAYER_UNPACKER],
        NODE,
    )
    .await?;
    let scratch = tempfile::tempdir()?;
    let layout = umoci_layout(scratch.path())?;
    let client = stack.nats.client().await?;
    let mut events = client
        .subscribe(subjects::events_of_kind(EventKind::Snapshot))
        .await?;
    // The CLI calls below block this test's runtime thread: make sure the subscription
    // has reached the server before they run.
    client.flush().await?;
    for tag in ["a", "b"] {
        let archive = scratch.path().join(format!("{tag}.tar"));
        skopeo_archive(&layout, tag, &archive, &format!("unpack/{tag}:1"))?;
        berth(&stack, &["load", "-i", &archive.display().to_string()])?;
    }

    // a: base + its own layer, both new. b: shares the base layer, so only one is new.
    let a = unpack(&stack, "unpack/a:1")?;
    assert_eq!(
        (a["unpacked"].as_u64(), a["reused"].as_u64()),
        (Some(2), Some(0)),
        "{a}"
    );
    let b = unpack(&stack, "unpack/b:1")?;
    assert_eq!(
        (b["unpacked"].as_u64(), b["reused"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
    let again = unpack(&stack, "unpack/a:1")?;
    assert_eq!(again["unpacked"].as_u64(), Some(0), "{again}");
    // One `unpack` event per layer actually unpacked: three, not four.
    let mut unpack_events = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await
    {
        let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
        if body["action"] == "unpack" {
            unpack_events.push(body["chain_id"].as_str().unwrap_or_default().to_string());
        }
    }
    unpack_events.sort();
    unpack_events.dedup();
    assert_eq!(unpack_events.len(), 3, "{unpack_events:?}");
    let lowerdirs_a = strings(&a["lowerdirs"]);
    let lowerdirs_b = strings(&b["lowerdirs"]);
    assert_eq!(lowerdirs_a.len(), 2);
    assert_eq!(
        lowerdirs_a.last(),
        lowerdirs_b.last(),
        "the base snapshot is shared"
    );
    for dir in lowerdirs_a.iter().chain(&lowerdirs_b) {
        ensure!(Path::new(dir).is_dir(), "{dir} is not a directory");
        ensure!(
            dir.starts_with(&stack.data_dir().join("snapshots").display().to_string()),
            "{dir} is outside the node's snapshots dir"
        );
    }
    let snapshots: serde_json::Value =
        serde_json::from_str(&berth(&stack, &["system", "df", "--json"])?)?;
    let row = snapshots
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["kind"] == "Snapshots"))
        .context("no snapshot row in system df")?;
    assert_eq!(row["total"].as_u64(), Some(3), "{snapshots}");

    // The overlay of berth's snapshots equals what umoci unpacks, file by file.
    for (tag, lowerdirs) in [("a", &lowerdirs_a), ("b", &lowerdirs_b)] {
        let mount = OverlayMount::new(lowerdirs, &scratch.path().join(format!("mnt-{tag}")))?;
        compare_with_umoci(scratch.path(), &layout, tag, &mount.0)?;
    }

    // Releasing a's pin by hand lets prune take a's own layer; the base stays, b uses it.
    let mut release = stack.berth()?;
    release.args(["image", "unpack", "--release", "unpack/a:1"]);
    let released = release.output()?;
    let said = String::from_utf8_lossy(&released.stderr);
    ensure!(released.status.success(), "unpack --release failed: {said}");
    ensure!(said.contains("2 snapshots released"), "{said}");
    let pruned = prune(&client).await?;
    assert_eq!(pruned.removed.len(), 1, "{pruned:?}");
    assert!(
        Path::new(&lowerdirs_b[1]).is_dir(),
        "the shared base must stay"
    );
    assert!(
        !Path::new(&lowerdirs_a[0]).exists(),
        "a's own layer is reclaimed"
    );

    // Deleting image b drops its pin on the node: prune then reclaims the rest.
    berth(&stack, &["rmi", "unpack/b:1"])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pinned = snapshot_users(&client).await?;
        if pinned.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "pins left after rmi: {pinned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pruned = prune(&client).await?;
    assert_eq!(pruned.removed.len(), 2, "{pruned:?}");
    Ok(())
}

async fn prune(client: &async_nats::Client) -> anyhow::Result<SnapshotsRemoved> {
    Ok(request(
        client,
        &subjects::unpack(NODE, UnpackVerb::Prune),
        &SnapshotPruneRequest {},
        Encoding::Bincode,
        Duration::from_secs(30),
    )
    .await?)
}

/// Every user pinning a snapshot of the node.
async fn snapshot_users(client: &async_nats::Client) -> anyhow::Result<Vec<String>> {
    let listed: SnapshotList = request(
        client,
        &subjects::unpack(NODE, UnpackVerb::List),
        &SnapshotListRequest::default(),
        Encoding::Bincode,
        Duration::from_secs(10),
    )
    .await?;
    Ok(listed
        .snapshots
        .into_iter()
        .flat_map(|snapshot| snapshot.users)
        .collect())
}

/// `tree` (berth's view of image `tag`) equals `umoci unpack` of the same layout.
fn compare_with_umoci(scratch: &Path, layout: &Path, tag: &str, tree: &Path) -> anyhow::Result<()> {
    let bundle = scratch.join(format!("umoci-{tag}"));
    if !bundle.exists() {
        ok(Command::new("umoci")
            .args(["unpack", "--image", &format!("{}:{tag}", layout.display())])
            .arg(&bundle))?;
    }
    let ours = describe_tree(tree)?;
    let theirs = describe_tree(&bundle.join("rootfs"))?;
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    ensure!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "image {tag}: only in berth: {only_ours:?}; only in umoci: {only_theirs:?}"
    );
    for (path, entry) in &ours {
        assert_eq!(
            Some(entry),
            theirs.get(path),
            "image {tag}: {}",
            path.display()
        );
    }
    assert!(
        !ours.contains_key(Path::new("bin/sh")),
        "whiteout of bin/sh must hide it"
    );
    assert_eq!(ours[Path::new(&format!("home/{tag}/owned"))].uid, 1000);
    assert_eq!(ours[Path::new(&format!("bin/suid-{tag}"))].mode, 0o4755);
    Ok(())
}

#[tokio::test]
async fn the_native_snapshotter_builds_the_same_trees_without_overlayfs() -> anyhow::Result<()> {
    need_root("file ownership")?;
    need("umoci")?;
    need("skopeo")?;
    let scratch = tempfile::tempdir()?;
    let config = scratch.path().join("layer-unpacker.toml");
    std::fs::write(&config, "snapshotter = \"native\"\n")?;
    let config_text = config.display().to_string();
    let stack = Stack::start_with_env(
        &[service_names::IMAGE_STORE, service_names::LAYER_UNPACKER],
        NODE,
        &[("BERTH_CONFIG", config_text.as_str())],
    )
    .await?;
    let layout = umoci_layout(scratch.path())?;
    for tag in ["a", "b"] {
        let archive = scratch.path().join(format!("{tag}.tar"));
        skopeo_archive(&layout, tag, &archive, &format!("native/{tag}:1"))?;
        berth(&stack, &["load", "-i", &archive.display().to_string()])?;
        let first = unpack(&stack, &format!("native/{tag}:1"))?;
        assert_eq!(first["unpacked"].as_u64(), Some(2), "{first}");
        let again = unpack(&stack, &format!("native/{tag}:1"))?;
        assert_eq!(again["reused"].as_u64(), Some(2), "{again}");
        let trees = strings(&first["lowerdirs"]);
        assert_eq!(trees.len(), 1, "one applied tree per image: {first}");
        ensure!(
            trees[0].starts_with(&stack.data_dir().join("native").display().to_string()),
            "{first}"
        );
        compare_with_umoci(scratch.path(), &layout, tag, Path::new(&trees[0]))?;
    }
    let df: serde_json::Value = serde_json::from_str(&berth(&stack, &["system", "df", "--json"])?)?;
    let row = df
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["kind"] == "Snapshots"))
        .context("no snapshot row")?;
    assert_eq!(row["total"].as_u64(), Some(2), "{df}");
    Ok(())
}

#[tokio::test]
async fn unpacking_an_unknown_image_is_a_clear_error_and_leaves_no_snapshot() -> anyhow::Result<()>
{
    let stack = Stack::start(
        &[service_names::IMAGE_STORE, service_names::LAYER_UNPACKER],
        NODE,
    )
    .await?;
    let output = stack
        .berth()?
        .args(["image", "unpack", "no/such-image:1"])
        .output()?;
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no/such-image"), "{stderr}");
    let df: serde_json::Value = serde_json::from_str(&berth(&stack, &["system", "df", "--json"])?)?;
    let row = df
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["kind"] == "Snapshots"))
        .context("no snapshot row")?;
    assert_eq!(row["total"].as_u64(), Some(0));
    Ok(())
}

/// `snapshots/tmp-*` and other debris an interrupted unpack leaves behind.
fn debris(snapshots: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(snapshots)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name.parse::<u64>().is_err() {
            names.push(name);
        }
    }
    Ok(names)
}

#[tokio::test]
async fn an_unpacker_killed_mid_unpack_leaves_no_snapshot_and_the_next_prepare_succeeds(
) -> anyhow::Result<()> {
    need_root("layer ownership")?;
    let mut stack = Stack::start(
        &[service_names::IMAGE_STORE, service_names::LAYER_UNPACKER],
        NODE,
    )
    .await?;
    let scratch = tempfile::tempdir()?;
    // Enough files and bytes that the unpack takes a noticeable moment.
    let mut extra: Vec<(String, String)> = (0..4000)
        .map(|i| (format!("data/f{i:05}"), format!("file {i}\n").repeat(64)))
        .collect();
    extra.push(("data/big".into(), "berth ".repeat(8 << 20)));
    let extra_refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let tar = busybox_rootfs_tar(scratch.path(), "slow", &extra_refs)?;
    berth(
        &stack,
        &["import", &tar.display().to_string(), "slow/unpack:1"],
    )?;

    let snapshots = stack.data_dir().join("snapshots");
    let mut prepare = stack.berth()?;
    prepare.args(["image", "unpack", "slow/unpack:1"]);
    let mut running = prepare.spawn()?;
    // Kill the unpacker as soon as an unpack is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if !debris(&snapshots)?.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the unpack never started"
        );
        ensure!(
            running.try_wait()?.is_none(),
            "prepare finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stack.kill_service(service_names::LAYER_UNPACKER).await?;
    let interrupted = running.wait()?;
    assert!(
        !interrupted.success(),
        "an interrupted prepare must not report success"
    );
    // Nothing complete-looking was left: only debris, no numbered snapshot.
    let numbered = std::fs::read_dir(&snapshots)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok())
        .count();
    assert_eq!(numbered, 0, "a killed unpack must not leave a snapshot");

    stack.start_service(service_names::LAYER_UNPACKER).await?;
    assert_eq!(
        debris(&snapshots)?,
        Vec::<String>::new(),
        "restart cleans debris"
    );
    let done = unpack(&stack, "slow/unpack:1")?;
    assert_eq!(done["unpacked"].as_u64(), Some(1), "{done}");
    let lowerdirs = strings(&done["lowerdirs"]);
    let big = Path::new(&lowerdirs[0]).join("data/big");
    assert_eq!(std::fs::metadata(&big)?.len(), 6 * (8 << 20));
    Ok(())
}

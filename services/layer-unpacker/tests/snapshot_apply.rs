//! Whiteout and opaque semantics across layers, and the three ways of getting a
//! root filesystem compared file by file: the copy-based applier, an overlay
//! mount of the store's snapshots, and `umoci unpack` of the same OCI layout.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_layer_unpacker::snapshot::{
    apply_layers, LayerError, LayerSpec, PrepareOptions, SnapshotStore, StoreError,
};
use common::*;

/// Four layers exercising: file whiteout then re-creation, directory whiteout
/// then re-creation, opaque dirs (with the same layer's entries before and
/// after the marker), type changes (file → symlink, dir → file).
fn semantics_image() -> Vec<Layer> {
    vec![
        gz_layer(&[
            Ent::dir("etc/"),
            Ent::file("etc/a", b"a1"),
            Ent::file("etc/b", b"b1"),
            Ent::dir("etc/conf.d/"),
            Ent::file("etc/conf.d/x", b"x"),
            Ent::dir("data/"),
            Ent::file("data/old1", b"o1"),
            Ent::file("data/old2", b"o2"),
            Ent::dir("tree/"),
            Ent::dir("tree/sub/"),
            Ent::file("tree/sub/deep", b"deep"),
            Ent::dir("opt/"),
            Ent::dir("opt/keep/"),
            Ent::file("opt/keep/file", b"k"),
            Ent::dir("var/"),
            Ent::dir("var/cache/"),
            Ent::file("var/cache/c1", b"c1"),
        ]),
        gz_layer(&[
            Ent::dir("etc/"),
            Ent::file("etc/.wh.a", b""),
            Ent::file(".wh.tree", b""),
            Ent::dir("data/"),
            Ent::file("data/.wh..wh..opq", b""),
            Ent::file("data/new", b"n2"),
            Ent::dir("var/"),
            Ent::dir("var/cache/"),
            Ent::file("var/cache/.wh..wh..opq", b""),
        ]),
        gz_layer(&[
            Ent::dir("tree/"),
            Ent::file("tree/fresh", b"fresh"),
            Ent::dir("etc/"),
            Ent::file("etc/a", b"a3"),
            Ent::symlink("etc/b", "a"),
            Ent::dir("opt/"),
            Ent::file("opt/.wh.keep", b""),
        ]),
        gz_layer(&[
            Ent::dir("data/"),
            Ent::file("data/newer", b"n4"),
            // No `data/sub/` entry: its implicit dir must survive the marker too.
            Ent::file("data/sub/kept", b"k4"),
            Ent::file("data/.wh..wh..opq", b""),
            Ent::dir("etc/"),
            Ent::file("etc/conf.d", b"now a file"),
        ]),
    ]
}

fn assert_semantics(root: &Path) {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let gone = |p: &str| {
        assert!(
            std::fs::symlink_metadata(root.join(p)).is_err(),
            "{p} exists"
        )
    };
    assert_eq!(read("etc/a"), "a3", "re-created after its whiteout");
    assert_eq!(
        std::fs::read_link(root.join("etc/b")).expect("b"),
        Path::new("a")
    );
    assert_eq!(read("etc/conf.d"), "now a file");
    gone("etc/conf.d/x");
    assert_eq!(read("tree/fresh"), "fresh");
    gone("tree/sub");
    gone("opt/keep");
    assert!(root.join("opt").is_dir());
    assert_eq!(
        read("data/newer"),
        "n4",
        "same-layer entry kept by its opaque marker"
    );
    assert_eq!(read("data/sub/kept"), "k4", "and its implicit parent dir");
    gone("data/new");
    gone("data/old1");
    gone("data/old2");
    assert_eq!(
        std::fs::read_dir(root.join("var/cache"))
            .expect("cache")
            .count(),
        0,
        "opaque dir with nothing new is empty"
    );
    // No whiteout artefacts of any kind.
    for (p, _) in tree(root) {
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "{}", p.display());
    }
}

fn refs(layers: &[Layer]) -> Vec<&Layer> {
    layers.iter().collect()
}

fn specs(layers: &[Layer]) -> Vec<LayerSpec> {
    layers.iter().map(|l| l.spec.clone()).collect()
}

#[test]
fn applier_whiteouts_and_opaque_dirs_across_four_layers() {
    let img = semantics_image();
    let blobs = Blobs::new(&refs(&img));
    let t = tempfile::tempdir().expect("tempdir");
    let dest = t.path().join("rootfs");
    let stats = apply_layers(
        &dest,
        &specs(&img),
        &|s: &LayerSpec| blobs.open(s),
        &limits(),
    )
    .expect("apply");
    assert_eq!(stats.len(), 4);
    assert_semantics(&dest);
}

#[test]
fn applier_is_all_or_nothing() {
    let mut img = semantics_image();
    img[2].spec.diff_id = sha256(b"wrong");
    let blobs = Blobs::new(&refs(&img));
    let t = tempfile::tempdir().expect("tempdir");
    let dest = t.path().join("rootfs");
    let e = apply_layers(
        &dest,
        &specs(&img),
        &|s: &LayerSpec| blobs.open(s),
        &limits(),
    )
    .expect_err("bad layer");
    match e {
        StoreError::Layer(e) => {
            assert_eq!(e.layer, img[2].spec.digest);
            assert!(matches!(e.source, LayerError::DigestMismatch { .. }));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        std::fs::read_dir(t.path()).expect("ls").count(),
        0,
        "debris left"
    );
    // And an existing destination is never applied onto.
    std::fs::create_dir(&dest).expect("dest");
    assert!(matches!(
        apply_layers(&dest, &[], &|s: &LayerSpec| blobs.open(s), &limits()),
        Err(StoreError::Exists(_))
    ));
}

/// Layers with every kind of entry and metadata, plus the semantics image.
fn rich_image() -> Vec<Layer> {
    let cap: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut img = vec![gz_layer(&[
        Ent::dir("usr/"),
        Ent::dir("usr/bin/"),
        Ent::file("usr/bin/tool", b"\x7fELF tool")
            .mode(0o4755)
            .xattr("security.capability", &cap),
        Ent::hardlink("usr/bin/tool2", "usr/bin/tool"),
        Ent::dir("usr/lib/"),
        Ent::file("usr/lib/libfoo.so.1", b"lib").mode(0o755),
        Ent::symlink("usr/lib/libfoo.so", "libfoo.so.1"),
        Ent::dir("home/"),
        Ent::dir("home/u/").mode(0o750).owner(1000, 1000),
        Ent::file("home/u/.profile", b"export A=1\n")
            .mode(0o600)
            .owner(1000, 1000)
            .xattr("user.origin", b"test"),
        Ent::dir("tmp/").mode(0o1777),
        Ent::dir("srv/").mode(0o2775).owner(0, 50),
        Ent::dir("empty/"),
        Ent::dir("dev/"),
        Ent::chardev("dev/null", 1, 3).mode(0o666),
        Ent::blockdev("dev/loop9", 7, 9).mode(0o660).owner(0, 6),
        Ent::fifo("dev/fifo").mode(0o620),
        Ent::file("sparse", &{
            let mut v = vec![0u8; 4 << 20];
            v[1 << 20] = 1;
            v
        }),
    ])];
    img.extend(semantics_image());
    img.push(gz_layer(&[
        Ent::dir("usr/"),
        Ent::dir("usr/lib/"),
        Ent::file("usr/lib/.wh.libfoo.so", b""),
        Ent::file("usr/lib/libbar.so", b"bar")
            .owner(2, 3)
            .mode(0o640),
    ]));
    img
}

fn write_oci_layout(dir: &Path, layers: &[Layer]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = sha256(bytes);
        let hex = d.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), bytes).expect("blob");
        (d, bytes.len())
    };
    let mut layer_descs = Vec::new();
    for l in layers {
        let (d, n) = put(&l.blob);
        layer_descs
            .push(serde_json::json!({"mediaType": l.spec.media_type, "digest": d, "size": n}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.spec.diff_id.clone()).collect::<Vec<_>>()},
    });
    let (cd, cn) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layer_descs,
    });
    let (md, mn) = put(&serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": "test"},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

fn umoci_unpack(layout: &Path, bundle: &Path) -> Option<PathBuf> {
    let out = match Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(bundle)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run umoci comparison: umoci not runnable ({e}); apt-get install umoci")
        }
    };
    assert!(
        out.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bundle.join("rootfs"))
}

fn mount_overlay(cwd: &Path, lowerdir: &str, target: &Path) -> bool {
    let out = Command::new("mount")
        .current_dir(cwd)
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lowerdir}"))
        .arg(target)
        .output()
        .expect("mount");
    if !out.status.success() {
        panic!(
            "cannot run overlay part: mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    }
    true
}

struct Umount(PathBuf);
impl Drop for Umount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn applier_overlay_mount_and_umoci_agree_file_by_file() {
    require_root("applier_overlay_mount_and_umoci_agree_file_by_file");
    let img = rich_image();
    let blobs = Blobs::new(&refs(&img));
    let open = |s: &LayerSpec| blobs.open(s);
    let t = tempfile::tempdir().expect("tempdir");

    // 1. Copy-based applier.
    let applied = t.path().join("applied");
    apply_layers(&applied, &specs(&img), &open, &limits()).expect("apply");
    assert_semantics(&applied);
    let applied_tree = tree(&applied);
    // The comparison below is only worth something if the tree saw everything.
    let node = |p: &str| applied_tree.get(Path::new(p)).expect(p).clone();
    assert!(node("usr/bin/tool")
        .xattrs
        .contains_key("security.capability"));
    assert_eq!(node("usr/bin/tool").mode, 0o4755);
    assert!(node("usr/bin/tool2").link_group.is_some());
    assert_eq!(node("home/u/.profile").uid, 1000);
    assert_eq!(node("home/u/.profile").xattrs["user.origin"], b"test");
    assert_eq!(
        (node("dev/null").kind, node("dev/fifo").kind),
        ("char", "fifo")
    );
    assert_eq!(node("srv").mode, 0o2775);
    assert!(!applied_tree.contains_key(Path::new("usr/lib/libfoo.so")));

    // 2. umoci, the reference implementation.
    let layout = t.path().join("layout");
    write_oci_layout(&layout, &img);
    if let Some(umoci_root) = umoci_unpack(&layout, &t.path().join("bundle")) {
        assert_same_tree("applier", &applied_tree, "umoci", &tree(&umoci_root));
    }

    // 3. The store's overlay-form snapshots, mounted.
    let store = SnapshotStore::open(t.path().join("snapshots"), limits()).expect("store");
    let p = store
        .prepare(&specs(&img), &open, &PrepareOptions::default())
        .expect("prepare");
    let merged = t.path().join("merged");
    std::fs::create_dir(&merged).expect("merged");
    if mount_overlay(store.dir(), &p.lowerdir_option(), &merged) {
        let _guard = Umount(merged.clone());
        assert_semantics(&merged);
        assert_same_tree("applier", &applied_tree, "overlay", &tree(&merged));
    }
}

#[test]
fn skopeo_made_layout_matches_umoci() {
    // A layout written by another tool (skopeo copies our layout to a new one,
    // recompressing nothing but rewriting manifests) unpacks the same way.
    require_root("skopeo_made_layout_matches_umoci");
    let img = semantics_image();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    write_oci_layout(&src, &img);
    let dst = t.path().join("dst");
    let out = match Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:test", src.display()))
        .arg(format!("oci:{}:test", dst.display()))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run skopeo_made_layout_matches_umoci: skopeo not runnable ({e})")
        }
    };
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = read_layout(&dst, "test");
    let blobs = Blobs::new(&refs(&layers));
    let applied = t.path().join("applied");
    apply_layers(
        &applied,
        &specs(&layers),
        &|s: &LayerSpec| blobs.open(s),
        &limits(),
    )
    .expect("apply");
    assert_semantics(&applied);
    if let Some(u) = umoci_unpack(&dst, &t.path().join("bundle")) {
        assert_same_tree("applier", &tree(&applied), "umoci", &tree(&u));
    }
}

/// The layers of tag `tag` in an OCI layout: manifest → layers, config → diff_ids.
fn read_layout(dir: &Path, tag: &str) -> Vec<Layer> {
    let json = |b: &[u8]| -> serde_json::Value { serde_json::from_slice(b).expect("json") };
    let index = json(&std::fs::read(dir.join("index.json")).expect("index"));
    let blob = |d: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .expect("blob")
    };
    let desc = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index");
    let manifest = json(&blob(desc["digest"].as_str().expect("digest")));
    let config = json(&blob(
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let digest = l["digest"].as_str().expect("digest").to_string();
            Layer {
                blob: blob(&digest),
                tar: Vec::new(),
                spec: LayerSpec {
                    digest,
                    media_type: l["mediaType"].as_str().expect("mt").to_string(),
                    diff_id: config["rootfs"]["diff_ids"][i]
                        .as_str()
                        .expect("diff_id")
                        .to_string(),
                },
            }
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn layers_made_by_umoci_match_umoci_unpack() {
    // Layers written by another tool: umoci computes the diffs (and so the
    // whiteouts) from real filesystem changes between repacks.
    require_root("layers_made_by_umoci_match_umoci_unpack");
    if Command::new("umoci").arg("--version").output().is_err() {
        panic!("cannot run layers_made_by_umoci_match_umoci_unpack: umoci not installed")
    }
    let t = tempfile::tempdir().expect("tempdir");
    let layout = t.path().join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    let bundle = t.path().join("work");
    let rootfs = bundle.join("rootfs");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image("base")]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image("base")])
        .arg(&bundle));

    // Layer 1: a small tree with every kind of entry.
    let w = |p: &str, data: &str| {
        let p = rootfs.join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    w("etc/hostname", "box\n");
    w("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    w("usr/bin/tool", "tool");
    w("var/lib/app/db", "db");
    w("var/lib/app/cache/c", "c");
    w("opt/old/readme", "old");
    std::fs::create_dir_all(rootfs.join("empty")).expect("empty");
    std::os::unix::fs::symlink("tool", rootfs.join("usr/bin/alias")).expect("symlink");
    std::fs::hard_link(rootfs.join("usr/bin/tool"), rootfs.join("usr/bin/tool-hl")).expect("hl");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        rootfs.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    std::os::unix::fs::chown(rootfs.join("var/lib/app"), Some(1000), Some(1000)).expect("chown");
    run(Command::new("mkfifo").arg(rootfs.join("var/lib/app/fifo")));
    run(Command::new("mknod")
        .arg(rootfs.join("null"))
        .args(["c", "1", "3"]));
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &image("v1")])
        .arg(&bundle));

    // Layer 2: deletions (file, whole dir), a dir emptied and refilled, edits.
    std::fs::remove_file(rootfs.join("etc/passwd")).expect("rm");
    std::fs::remove_dir_all(rootfs.join("opt/old")).expect("rm -r");
    std::fs::remove_dir_all(rootfs.join("var/lib/app/cache")).expect("rm -r");
    w("var/lib/app/cache/fresh", "fresh");
    w("etc/hostname", "renamed\n");
    w("opt/new/readme", "new");
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &image("v2")])
        .arg(&bundle));

    // Layer 3: re-create a deleted path.
    w("etc/passwd", "root:x:0:0::/root:/bin/bash\n");
    run(Command::new("umoci")
        .args(["repack", "--image", &image("v3")])
        .arg(&bundle));

    let layers = read_layout(&layout, "v3");
    assert!(layers.len() >= 3, "{} layers", layers.len());
    let blobs = Blobs::new(&refs(&layers));
    let open = |s: &LayerSpec| blobs.open(s);
    let applied = t.path().join("applied");
    apply_layers(&applied, &specs(&layers), &open, &limits()).expect("apply");
    let read = |p: &str| std::fs::read_to_string(applied.join(p)).expect(p);
    assert_eq!(read("etc/passwd"), "root:x:0:0::/root:/bin/bash\n");
    assert_eq!(read("etc/hostname"), "renamed\n");
    assert!(!applied.join("opt/old").exists());
    assert_eq!(read("var/lib/app/cache/fresh"), "fresh");
    assert!(!applied.join("var/lib/app/cache/c").exists());

    let reference = t.path().join("reference");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image("v3")])
        .arg(&reference));
    let applied_tree = tree(&applied);
    assert_same_tree(
        "applier",
        &applied_tree,
        "umoci",
        &tree(&reference.join("rootfs")),
    );

    let store = SnapshotStore::open(t.path().join("snapshots"), limits()).expect("store");
    let p = store
        .prepare(&specs(&layers), &open, &PrepareOptions::default())
        .expect("prepare");
    let merged = t.path().join("merged");
    std::fs::create_dir(&merged).expect("merged");
    if mount_overlay(store.dir(), &p.lowerdir_option(), &merged) {
        let _guard = Umount(merged.clone());
        assert_same_tree("applier", &applied_tree, "overlay", &tree(&merged));
    }
}

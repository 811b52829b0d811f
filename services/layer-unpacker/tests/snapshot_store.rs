//! The snapshot store: chainID dedup, concurrency, parallel unpack, crash
//! debris, users/prune, and a 128-layer image under one page of mount options.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_layer_unpacker::snapshot::{
    chain_ids, overlay_mount_options, LayerSpec, PrepareOptions, SnapshotStore, StoreError,
};
use common::*;

fn image(tag: &str, n: usize) -> Vec<Layer> {
    (0..n)
        .map(|i| {
            gz_layer(&[
                Ent::dir(&format!("{tag}{i}/")),
                Ent::file(
                    &format!("{tag}{i}/file"),
                    format!("{tag} layer {i}").as_bytes(),
                ),
            ])
        })
        .collect()
}

fn specs(layers: &[&Layer]) -> Vec<LayerSpec> {
    layers.iter().map(|l| l.spec.clone()).collect()
}

fn opts(parallelism: usize) -> PrepareOptions {
    PrepareOptions {
        parallelism,
        user: None,
    }
}

#[test]
fn prepare_unpacks_each_layer_once_then_reuses() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("a", 3);
    let refs: Vec<&Layer> = img.iter().collect();
    let blobs = Blobs::new(&refs);
    let open = |s: &LayerSpec| blobs.open(s);
    let p = store
        .prepare(&specs(&refs), &open, &opts(2))
        .expect("prepare");
    assert_eq!((p.unpacked(), blobs.opened()), (3, 3));
    let diff_ids: Vec<&str> = img.iter().map(|l| l.spec.diff_id.as_str()).collect();
    let chains = chain_ids(&diff_ids).expect("chain");
    for (i, l) in p.layers.iter().enumerate() {
        assert_eq!(l.meta.chain_id, chains[i]);
        assert_eq!(l.meta.parent, i.checked_sub(1).map(|j| chains[j].clone()));
        assert!(l.fs.join(format!("a{i}/file")).is_file());
        assert!(l.fs.parent().expect("dir").join("meta.json").is_file());
        assert_eq!(l.fs, store.fs_path(l.meta.id));
    }
    // Top first, relative, short.
    let ids = p.ids_top_first();
    assert_eq!(
        p.lowerdir_option(),
        format!("{}/fs:{}/fs:{}/fs", ids[0], ids[1], ids[2])
    );
    assert_eq!(p.lowerdirs()[0], p.layers[2].fs);

    let again = store
        .prepare(&specs(&refs), &open, &opts(2))
        .expect("again");
    assert_eq!(
        (again.unpacked(), blobs.opened()),
        (0, 3),
        "reused, not reopened"
    );
    assert_eq!(again.ids_top_first(), ids);
    assert_eq!(store.list().len(), 3);
}

#[test]
fn two_images_sharing_a_base_unpack_it_once() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let base = image("base", 2);
    let a_top = gz_layer(&[Ent::file("a", b"a")]);
    let b_top = gz_layer(&[Ent::file("b", b"b")]);
    let all = [&base[0], &base[1], &a_top, &b_top];
    let blobs = Blobs::new(&all);
    let open = |s: &LayerSpec| blobs.open(s);
    let a = store
        .prepare(&specs(&[&base[0], &base[1], &a_top]), &open, &opts(4))
        .expect("a");
    let b = store
        .prepare(&specs(&[&base[0], &base[1], &b_top]), &open, &opts(4))
        .expect("b");
    assert_eq!((a.unpacked(), b.unpacked()), (3, 1));
    assert_eq!(store.list().len(), 4);
    assert_eq!(blobs.opened(), 4);
    assert_eq!(a.layers[0].meta.id, b.layers[0].meta.id);
    assert_eq!(a.layers[1].meta.id, b.layers[1].meta.id);
    // The same top layer over a different base is another chainID: its own snapshot.
    let c = store
        .prepare(&specs(&[&b_top, &a_top]), &open, &opts(4))
        .expect("c");
    assert_eq!(c.unpacked(), 2);
    assert_eq!(store.list().len(), 6);
}

/// A reader that sleeps on each read: makes overlaps observable.
struct Slow {
    inner: Box<dyn Read + Send>,
    active: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    started: bool,
}

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.started {
            self.started = true;
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            // Long enough that a loaded machine still starts the others meanwhile.
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(20));
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.started = false;
        }
        Ok(n)
    }
}

#[test]
fn layers_of_one_image_unpack_in_parallel() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("p", 4);
    let refs: Vec<&Layer> = img.iter().collect();
    let blobs = Blobs::new(&refs);
    let active = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let open = |s: &LayerSpec| -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(Slow {
            inner: blobs.open(s)?,
            active: active.clone(),
            max: max.clone(),
            started: false,
        }))
    };
    store
        .prepare(&specs(&refs), &open, &opts(4))
        .expect("prepare");
    assert!(
        max.load(Ordering::SeqCst) >= 2,
        "layers were unpacked one at a time"
    );

    // parallelism 1 really is sequential.
    let t2 = tempfile::tempdir().expect("tempdir");
    let store2 = SnapshotStore::open(t2.path(), limits()).expect("open");
    max.store(0, Ordering::SeqCst);
    store2
        .prepare(&specs(&refs), &open, &opts(1))
        .expect("prepare");
    assert_eq!(max.load(Ordering::SeqCst), 1);
}

#[test]
fn concurrent_prepares_of_the_same_image_do_the_work_once() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SnapshotStore::open(t.path(), limits()).expect("open"));
    let img = image("c", 3);
    let refs: Vec<&Layer> = img.iter().collect();
    let blobs = Arc::new(Blobs::new(&refs));
    let layer_specs = specs(&refs);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, blobs, layer_specs) = (store.clone(), blobs.clone(), layer_specs.clone());
            // As the async service would: one blocking task per request.
            std::thread::spawn(move || {
                let open = |s: &LayerSpec| -> std::io::Result<Box<dyn Read + Send>> {
                    std::thread::sleep(Duration::from_millis(30));
                    blobs.open(s)
                };
                store
                    .prepare(&layer_specs, &open, &opts(2))
                    .expect("prepare")
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(blobs.opened(), 3, "each layer fetched and unpacked once");
    assert_eq!(results.iter().map(|p| p.unpacked()).sum::<usize>(), 3);
    for r in &results {
        assert_eq!(r.ids_top_first(), results[0].ids_top_first());
    }
    assert_eq!(store.list().len(), 3);
}

#[test]
fn crash_debris_is_removed_at_open_and_never_complete() {
    let t = tempfile::tempdir().expect("tempdir");
    let img = image("d", 1);
    let blobs = Blobs::new(&[&img[0]]);
    let open = |s: &LayerSpec| blobs.open(s);
    let good = {
        let store = SnapshotStore::open(t.path(), limits()).expect("open");
        store
            .prepare(&specs(&[&img[0]]), &open, &opts(1))
            .expect("prepare")
    };
    // What a killed unpacker can leave: a temp dir, a half-removed snapshot,
    // a numbered dir without meta.json, one with a torn meta.json.
    for d in ["tmp-41/fs/usr", "rm-3/fs", "7/fs", "8/fs"] {
        std::fs::create_dir_all(t.path().join(d)).expect("debris");
    }
    std::fs::write(t.path().join("8/meta.json"), b"{\"id\": 8, \"chain").expect("torn");
    let store = SnapshotStore::open(t.path(), limits()).expect("reopen");
    let mut names: Vec<String> = std::fs::read_dir(t.path())
        .expect("read")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let good_id = good.layers[0].meta.id.to_string();
    assert_eq!(names, [".lock".to_string(), good_id]);
    assert_eq!(store.list(), vec![good.layers[0].meta.clone()]);
    // New ids never collide with what was on disk.
    let img2 = image("e", 1);
    let blobs2 = Blobs::new(&[&img2[0]]);
    let p = store
        .prepare(
            &specs(&[&img2[0]]),
            &|s: &LayerSpec| blobs2.open(s),
            &opts(1),
        )
        .expect("prepare");
    assert!(p.layers[0].meta.id > 8);
}

#[test]
fn a_second_store_on_the_same_dir_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let _first = SnapshotStore::open(t.path(), limits()).expect("open");
    assert!(matches!(
        SnapshotStore::open(t.path(), limits()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn users_pin_snapshots_against_prune_and_remove() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("u", 2);
    let other = image("o", 1);
    let refs: Vec<&Layer> = img.iter().chain(other.iter()).collect();
    let blobs = Blobs::new(&refs);
    let open = |s: &LayerSpec| blobs.open(s);
    let pinned = PrepareOptions {
        parallelism: 2,
        user: Some("container-1".to_string()),
    };
    let p = store
        .prepare(&specs(&[&img[0], &img[1]]), &open, &pinned)
        .expect("prepare");
    store
        .prepare(&specs(&[&other[0]]), &open, &opts(1))
        .expect("unpinned");
    assert!(p
        .layers
        .iter()
        .all(|l| l.meta.users.contains("container-1")));
    // Users survive a restart (they are in meta.json).
    drop(store);
    let store = SnapshotStore::open(t.path(), limits()).expect("reopen");
    let top = &p.layers[1].meta.chain_id;
    assert_eq!(store.get(top).expect("top").users.len(), 1);

    let pruned = store.prune().expect("prune");
    assert_eq!(pruned.len(), 1, "only the unpinned snapshot goes");
    assert!(matches!(
        store.remove(top, false),
        Err(StoreError::InUse { .. })
    ));
    for l in &p.layers {
        store
            .remove_user(&l.meta.chain_id, "container-1")
            .expect("unpin");
    }
    let pruned = store.prune().expect("prune");
    assert_eq!(pruned.len(), 2);
    assert!(store.list().is_empty());
    assert!(!p.layers[0].fs.exists());
    assert!(matches!(
        store.remove(top, false),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn a_failed_prepare_takes_back_the_pins_it_added() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("f", 2);
    // A layer whose blob cannot be opened: the third layer of the image fails.
    let missing = image("missing", 1);
    let blobs = Blobs::new(&[&img[0], &img[1]]);
    let open = |s: &LayerSpec| blobs.open(s);
    let user = |u: &str| PrepareOptions {
        parallelism: 1,
        user: Some(u.to_string()),
    };
    // The base layer was pinned by this user before (an earlier, good prepare).
    store
        .prepare(&specs(&[&img[0]]), &open, &user("c1"))
        .expect("base");
    let failed = store.prepare(&specs(&[&img[0], &img[1], &missing[0]]), &open, &user("c1"));
    assert!(failed.is_err(), "a missing blob fails the prepare");
    let failed_new_user = store.prepare(
        &specs(&[&img[0], &img[1], &missing[0]]),
        &open,
        &user("never-created"),
    );
    assert!(failed_new_user.is_err());
    let snapshots = store.list();
    assert_eq!(
        snapshots.len(),
        2,
        "the good layers stay unpacked for reuse"
    );
    for meta in &snapshots {
        assert!(
            !meta.users.contains("never-created"),
            "{}: a failed prepare left its pin",
            meta.chain_id
        );
    }
    let base = store.get(&snapshots_chain(&img, 0)).expect("base");
    assert!(base.users.contains("c1"), "a pin from before is kept");
    let second = store.get(&snapshots_chain(&img, 1)).expect("second");
    assert!(second.users.is_empty(), "pins: {:?}", second.users);
    let pruned = store.prune().expect("prune");
    assert_eq!(pruned.len(), 1, "the layer no one holds is reclaimed");
}

fn snapshots_chain(img: &[Layer], index: usize) -> String {
    let diff_ids: Vec<&str> = img.iter().map(|l| l.spec.diff_id.as_str()).collect();
    chain_ids(&diff_ids).expect("chain")[index].clone()
}

#[test]
fn forced_remove_then_prepare_again() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("f", 1);
    let blobs = Blobs::new(&[&img[0]]);
    let open = |s: &LayerSpec| blobs.open(s);
    let p = store
        .prepare(&specs(&[&img[0]]), &open, &opts(1))
        .expect("p");
    let chain = &p.layers[0].meta.chain_id;
    store.add_user(chain, "pin").expect("pin");
    store.remove(chain, true).expect("forced");
    assert!(store.get(chain).is_none());
    let again = store
        .prepare(&specs(&[&img[0]]), &open, &opts(1))
        .expect("p");
    assert_eq!(again.unpacked(), 1);
}

#[test]
fn blob_errors_name_the_layer_and_leave_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let img = image("g", 2);
    let blobs = Blobs::new(&[&img[0]]); // the second blob is missing
    let open = |s: &LayerSpec| blobs.open(s);
    let e = store
        .prepare(&specs(&[&img[0], &img[1]]), &open, &opts(2))
        .expect_err("missing blob");
    assert!(e.to_string().contains(&img[1].spec.digest), "{e}");
    let names: Vec<_> = std::fs::read_dir(t.path())
        .expect("read")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn image_of_128_layers_fits_one_page_and_mounts() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path().join("snapshots"), limits()).expect("open");
    let img: Vec<Layer> = (0..128)
        .map(|i| {
            layer(
                tar_of(&[Ent::file(
                    &format!("layer{i:03}"),
                    format!("{i}").as_bytes(),
                )]),
                Comp::None,
            )
        })
        .collect();
    let refs: Vec<&Layer> = img.iter().collect();
    let blobs = Blobs::new(&refs);
    let p = store
        .prepare(&specs(&refs), &|s: &LayerSpec| blobs.open(s), &opts(2))
        .expect("prepare");
    assert_eq!(p.layers.len(), 128);
    // A container's upper/work under a long-ish data dir.
    let ctr = t
        .path()
        .join("containers/0123456789abcdef0123456789abcdef0123456789abcdef");
    let (upper, work, rootfs) = (ctr.join("upper"), ctr.join("work"), ctr.join("rootfs"));
    let options = overlay_mount_options(&p.ids_top_first(), &upper, &work).expect("fits");
    assert!(options.len() < 4096, "{} bytes", options.len());

    require_root("image_of_128_layers_fits_one_page_and_mounts (mount part)");
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let mounted = mount_overlay(store.dir(), &options, &rootfs);
    if !mounted {
        return;
    }
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).expect(p);
    assert_eq!(read("layer000"), "0");
    assert_eq!(read("layer127"), "127");
    assert_eq!(std::fs::read_dir(&rootfs).expect("ls").count(), 128);
    umount(&rootfs);
}

/// Mounts overlayfs with `options` (relative lowerdirs resolved from `cwd`),
/// run as a child process so this test's cwd stays put. False (with a SKIP
/// line) when the kernel has no overlayfs.
pub fn mount_overlay(cwd: &Path, options: &str, target: &Path) -> bool {
    let out = std::process::Command::new("mount")
        .current_dir(cwd)
        .args(["-t", "overlay", "overlay", "-o", options])
        .arg(target)
        .output()
        .expect("run mount");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if !std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("overlay")
        {
            panic!("cannot run overlay mount: no overlayfs on this kernel ({err})")
        }
        panic!("mount failed: {err}");
    }
    true
}

pub fn umount(target: &Path) {
    let st = std::process::Command::new("umount")
        .arg(target)
        .status()
        .expect("umount");
    assert!(st.success());
}

#[test]
fn implicit_parent_dirs_inherit_the_lower_layers_metadata() {
    // Layer 2 names `home/u/new` but has no `home/u/` entry: in the merged view
    // its directory must still look like layer 1's (mode, owner, xattrs).
    let t = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(t.path(), limits()).expect("open");
    let l1 = gz_layer(&[
        Ent::dir("./").mode(0o751),
        Ent::dir("home/"),
        Ent::dir("home/u/")
            .mode(0o710)
            .owner(1000, 1000)
            .xattr("user.tag", b"home"),
    ]);
    let l2 = gz_layer(&[Ent::file("home/u/new", b"new")]);
    let blobs = Blobs::new(&[&l1, &l2]);
    let p = store
        .prepare(
            &specs(&[&l1, &l2]),
            &|s: &LayerSpec| blobs.open(s),
            &opts(2),
        )
        .expect("prepare");
    let top = &p.layers[1];
    assert!(top.meta.pending_dirs.is_empty());
    assert!(store
        .get(&top.meta.chain_id)
        .expect("meta")
        .pending_dirs
        .is_empty());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(top.fs.join("home/u")).expect("home/u");
    assert_eq!(md.mode() & 0o7777, 0o710);
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
    }
    assert_eq!(xattrs(&top.fs.join("home/u"))["user.tag"], b"home");
    // The layer root had no `./` entry either: it inherits the base's.
    assert_eq!(
        std::fs::metadata(&top.fs).expect("root").mode() & 0o7777,
        0o751
    );
}

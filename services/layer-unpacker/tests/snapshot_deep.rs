//! Deep trees: a 5,000-level layer unpacks, and
//! pruning it, or finding one left half-removed at start, neither overflows a
//! stack nor blocks the store from opening.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use berth_layer_unpacker::snapshot::{LayerSpec, PrepareOptions, SnapshotStore};
use common::*;

/// Deep enough that std's recursive walks overflow [`SMALL_STACK`] many times over,
/// shallow enough to keep the suite fast (20,000 levels take over a minute on 2 cores).
const DEPTH: usize = 5_000;

/// A stack on which std's recursive `remove_dir_all` overflows long before
/// 5,000 levels, while the iterative walks need a few KiB.
const SMALL_STACK: usize = 256 << 10;

fn open_dir(dir: &impl AsFd, name: &str) -> OwnedFd {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid dirfd and C string; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open {name}: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `depth` nested `d` directories under `root`, made through fds (the path is
/// far beyond PATH_MAX), as a container's `mkdir t && mv d t/d && mv t d` does.
fn make_deep(root: &Path, depth: usize) {
    let mut cur = OwnedFd::from(std::fs::File::open(root).expect("open root"));
    for _ in 0..depth {
        let c = std::ffi::CString::new("d").expect("name");
        // SAFETY: valid dirfd and C string.
        let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
        assert_eq!(r, 0, "mkdir: {}", std::io::Error::last_os_error());
        cur = open_dir(&cur, "d");
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn_scoped(s, f)
            .expect("spawn")
            .join()
            .expect("overflowed or panicked")
    })
}

#[test]
fn a_5000_level_layer_unpacks_and_prunes_on_a_small_stack() {
    let t = tempfile::tempdir().expect("tempdir");
    let snapshots = t.path().join("snapshots");
    let store = SnapshotStore::open(&snapshots, limits()).expect("open");
    let spec = deep_spec(DEPTH);
    let open = |_: &LayerSpec| -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(DeepTar::new(DEPTH)))
    };
    let started = Instant::now();
    let prepared = on_small_stack(|| {
        store.prepare(
            std::slice::from_ref(&spec),
            &open,
            &PrepareOptions::default(),
        )
    })
    .expect("a deep layer unpacks");
    eprintln!("{DEPTH} levels unpacked in {:?}", started.elapsed());

    // The bottom, reached through fds.
    let mut cur = OwnedFd::from(std::fs::File::open(&prepared.layers[0].fs).expect("fs"));
    for _ in 0..DEPTH {
        cur = open_dir(&cur, "d");
    }
    let c = std::ffi::CString::new("f").expect("name");
    // SAFETY: valid dirfd and C string.
    let fd = unsafe { libc::openat(cur.as_raw_fd(), c.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "the deepest file exists");
    // SAFETY: fresh fd.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut content = String::new();
    f.read_to_string(&mut content).expect("read");
    assert_eq!(content, "deep");

    let started = Instant::now();
    let removed = on_small_stack(|| store.prune()).expect("prune");
    eprintln!("{DEPTH} levels pruned in {:?}", started.elapsed());
    assert_eq!(removed.len(), 1);
    assert!(store.list().is_empty());
    let left: Vec<String> = names(&snapshots)
        .into_iter()
        .filter(|n| n.starts_with("rm-") || n.parse::<u64>().is_ok())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_deep_leftover_of_an_interrupted_prune_does_not_block_a_restart() {
    let t = tempfile::tempdir().expect("tempdir");
    let snapshots = t.path().join("snapshots");
    drop(SnapshotStore::open(&snapshots, limits()).expect("first open"));
    // What a prune killed mid-delete (or crashed by the deep tree) left.
    std::fs::create_dir(snapshots.join("rm-7")).expect("mkdir");
    make_deep(&snapshots.join("rm-7"), DEPTH);
    std::fs::create_dir(snapshots.join("tmp-8")).expect("mkdir");
    std::os::unix::fs::symlink("/", snapshots.join("tmp-8").join("root")).expect("symlink");

    let store = on_small_stack(|| SnapshotStore::open(&snapshots, limits())).expect("reopen");
    assert!(store.list().is_empty());
    let left = names(&snapshots);
    assert!(
        !left
            .iter()
            .any(|n| n.starts_with("rm-") || n.starts_with("tmp-")),
        "debris left: {left:?}"
    );
    assert!(
        Path::new("/").join("etc").exists(),
        "a symlink was followed"
    );
}

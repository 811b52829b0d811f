//! What one layer becomes on disk: every kind of entry and every piece of
//! metadata kept exactly, overlay-form whiteouts, compressions, diff_id checks.

mod common;

use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_layer_unpacker::snapshot::{unpack_layer, ExtractMode, LayerError, LayerSpec};
use common::*;

/// `security.capability` v2 granting cap_net_bind_service (bit 10), effective.
const CAP_NET_BIND: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic v2 | effective
    0x00, 0x04, 0x00, 0x00, // permitted[0]
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

fn unpack(l: &Layer, dir: &Path) -> Result<(), berth_layer_unpacker::snapshot::Error> {
    unpack_layer(
        Cursor::new(&l.blob),
        dir,
        &l.spec,
        &limits(),
        ExtractMode::Overlay,
    )
    .map(|_| ())
}

#[test]
fn every_entry_kind_and_its_metadata_is_kept() {
    require_root("every_entry_kind_and_its_metadata_is_kept");
    let mut sparse = vec![0u8; 32 << 20];
    sparse[..5].copy_from_slice(b"start");
    let n = sparse.len();
    sparse[n - 3..].copy_from_slice(b"end");
    let l = layer(
        tar_of(&[
            Ent::dir("./").mode(0o755).mtime(1_500_000_000),
            Ent::dir("home/").mode(0o755).mtime(1_500_000_001),
            Ent::dir("home/user/")
                .mode(0o750)
                .owner(1000, 1001)
                .mtime(1_500_000_002),
            Ent::file("home/user/notes", b"hello")
                .mode(0o600)
                .owner(1000, 1001)
                .mtime(1_500_000_003)
                .xattr("user.note", b"kept"),
            Ent::dir("shared/")
                .mode(0o3775)
                .owner(0, 50)
                .mtime(1_500_000_004),
            Ent::dir("tmp/").mode(0o1777).mtime(1_500_000_005),
            Ent::dir("empty/").mode(0o700).mtime(1_500_000_006),
            Ent::dir("bin/").mtime(1_500_000_007),
            Ent::file("bin/su", b"\x7fELF-su").mode(0o4755),
            Ent::file("bin/wall", b"\x7fELF-wall")
                .mode(0o2755)
                .owner(0, 5),
            Ent::file("bin/ping", b"\x7fELF-ping")
                .mode(0o755)
                .xattr("security.capability", &CAP_NET_BIND),
            Ent::hardlink("bin/ping6", "bin/ping"),
            Ent::symlink("bin/sh", "busybox")
                .owner(1000, 1000)
                .mtime(1_500_000_008),
            Ent::symlink("bin/abs", "/etc/passwd"),
            Ent::dir("dev/"),
            Ent::chardev("dev/null", 1, 3).mode(0o666),
            Ent::blockdev("dev/loop0", 7, 0).mode(0o660).owner(0, 6),
            Ent::fifo("dev/initctl").mode(0o600),
            Ent::file("big.sparse", &sparse),
            Ent::file("precise", b"x").pax("mtime", b"1500000009.123456789"),
            Ent::file("bigid", b"x")
                .pax("uid", b"3000000000")
                .pax("gid", b"3000000001"),
        ]),
        Comp::Zstd,
    );
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    let stats = unpack_layer(
        Cursor::new(&l.blob),
        root,
        &l.spec,
        &limits(),
        ExtractMode::Overlay,
    )
    .expect("unpack");
    assert_eq!(stats.diff_id, l.spec.diff_id);

    let md = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p);
    let m = md("home/user");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 1000, 1001));
    assert_eq!(m.mtime(), 1_500_000_002, "dir mtime set after its contents");
    let m = md("home/user/notes");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1000, 1001));
    assert_eq!(m.mtime(), 1_500_000_003);
    assert_eq!(xattrs(&root.join("home/user/notes"))["user.note"], b"kept");
    assert_eq!(md("shared").mode() & 0o7777, 0o3775);
    assert_eq!(md("shared").gid(), 50);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("empty").mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::read_dir(root.join("empty"))
            .expect("empty")
            .count(),
        0
    );
    assert_eq!(md("bin/su").mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        (md("bin/wall").mode() & 0o7777, md("bin/wall").gid()),
        (0o2755, 5)
    );
    assert_eq!(
        xattrs(&root.join("bin/ping"))["security.capability"],
        CAP_NET_BIND,
        "file capability kept"
    );
    assert_eq!(md("bin/ping").ino(), md("bin/ping6").ino(), "hardlink");
    assert_eq!(md("bin/ping").nlink(), 2);
    assert!(md("bin/sh").file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("sh"),
        Path::new("busybox")
    );
    assert_eq!(
        (md("bin/sh").uid(), md("bin/sh").mtime()),
        (1000, 1_500_000_008)
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/abs")).expect("abs"),
        Path::new("/etc/passwd")
    );
    let null = md("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (libc::makedev(1, 3), 0o666)
    );
    let lp = md("dev/loop0");
    assert!(lp.file_type().is_block_device());
    assert_eq!((lp.rdev(), lp.gid()), (libc::makedev(7, 0), 6));
    assert!(md("dev/initctl").file_type().is_fifo());
    assert_eq!(md("dev/initctl").mode() & 0o7777, 0o600);
    let big = md("big.sparse");
    assert_eq!(big.len(), sparse.len() as u64);
    assert!(
        big.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        big.blocks()
    );
    assert_eq!(
        std::fs::read(root.join("big.sparse")).expect("read"),
        sparse
    );
    let p = md("precise");
    assert_eq!((p.mtime(), p.mtime_nsec()), (1_500_000_009, 123_456_789));
    assert_eq!(
        (md("bigid").uid(), md("bigid").gid()),
        (3_000_000_000, 3_000_000_001)
    );
    assert_eq!(
        md(".").mtime(),
        1_500_000_000,
        "root entry metadata applied"
    );
}

#[test]
fn whiteouts_become_char_devices_and_opaque_an_xattr() {
    require_root("whiteouts_become_char_devices_and_opaque_an_xattr");
    let l = gz_layer(&[
        Ent::dir("a/"),
        Ent::file("a/.wh.b", b""),
        Ent::file(".wh.gone", b""),
        Ent::dir("c/").mode(0o711),
        Ent::file("c/.wh..wh..opq", b""),
        Ent::file("c/new", b"new"),
        Ent::file("d/.wh..wh..opq", b""),
        Ent::file("e/.wh..wh.plnk", b""),
    ]);
    let t = tempfile::tempdir().expect("tempdir");
    unpack(&l, t.path()).expect("unpack");
    for w in ["a/b", "gone"] {
        let m = std::fs::symlink_metadata(t.path().join(w)).expect(w);
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!((m.rdev(), m.uid(), m.gid()), (0, 0, 0), "{w}");
    }
    assert_eq!(xattrs(&t.path().join("c"))["trusted.overlay.opaque"], b"y");
    assert_eq!(
        std::fs::symlink_metadata(t.path().join("c"))
            .expect("c")
            .mode()
            & 0o7777,
        0o711
    );
    assert_eq!(std::fs::read(t.path().join("c/new")).expect("new"), b"new");
    // Opaque marker without its dir entry: the dir is made implicitly.
    assert_eq!(xattrs(&t.path().join("d"))["trusted.overlay.opaque"], b"y");
    // aufs bookkeeping names are ignored, not turned into whiteouts.
    assert!(!t.path().join("e/plnk").exists() && !t.path().join("e/.wh..wh.plnk").exists());
    assert!(!t.path().join(".wh.gone").exists());
}

#[test]
fn gzip_zstd_and_plain_give_the_same_tree() {
    let entries = || {
        vec![
            Ent::dir("etc/"),
            Ent::file("etc/hosts", b"127.0.0.1 localhost\n"),
            Ent::symlink("etc/mtab", "/proc/mounts"),
            Ent::file("data", &vec![7u8; 300_000]),
        ]
    };
    let mut trees = Vec::new();
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let l = layer(tar_of(&entries()), comp);
        let t = tempfile::tempdir().expect("tempdir");
        unpack(&l, t.path()).expect("unpack");
        trees.push(tree(t.path()));
    }
    assert_same_tree("plain", &trees[0], "gzip", &trees[1]);
    assert_same_tree("plain", &trees[0], "zstd", &trees[2]);
}

#[test]
fn magic_bytes_beat_a_wrong_media_type() {
    let tar = tar_of(&[Ent::file("f", b"x")]);
    let gz = layer(tar.clone(), Comp::Gzip);
    let zst = layer(tar.clone(), Comp::Zstd);
    let plain = layer(tar, Comp::None);
    let t = tempfile::tempdir().expect("tempdir");
    let run = |l: &Layer, mt: &str, dir: &str| {
        let spec = LayerSpec {
            media_type: mt.to_string(),
            ..l.spec.clone()
        };
        let d = t.path().join(dir);
        std::fs::create_dir(&d).expect("dir");
        unpack_layer(
            Cursor::new(&l.blob),
            &d,
            &spec,
            &limits(),
            ExtractMode::Overlay,
        )
    };
    run(&gz, MT_TAR, "a").expect("gzip labelled tar");
    run(&zst, MT_GZIP, "b").expect("zstd labelled gzip");
    let e = run(&plain, MT_GZIP, "c").expect_err("plain labelled gzip");
    assert!(matches!(e.source, LayerError::Compression(_)), "{e}");
    let e = run(&plain, "application/vnd.oci.image.config.v1+json", "d").expect_err("config");
    assert!(matches!(e.source, LayerError::Compression(_)), "{e}");
}

#[test]
fn digest_covers_padding_after_the_tar_end() {
    // Real tars are padded to a 10 KiB record; the diff_id covers the padding.
    let mut tar = tar_of(&[Ent::file("f", b"x")]);
    tar.extend(std::iter::repeat_n(0u8, 8192));
    let l = layer(tar, Comp::Gzip);
    let t = tempfile::tempdir().expect("tempdir");
    let stats = unpack_layer(
        Cursor::new(&l.blob),
        t.path(),
        &l.spec,
        &limits(),
        ExtractMode::Overlay,
    )
    .expect("unpack");
    assert_eq!(stats.uncompressed_bytes, l.tar.len() as u64);
}

#[test]
fn truncated_blob_is_an_error() {
    let l = gz_layer(&[Ent::file("f", &vec![1u8; 100_000])]);
    let cut = Layer {
        blob: l.blob[..l.blob.len() / 2].to_vec(),
        spec: l.spec.clone(),
        tar: Vec::new(),
    };
    let t = tempfile::tempdir().expect("tempdir");
    let e = unpack(&cut, t.path()).expect_err("truncated accepted");
    assert_eq!(e.layer, l.spec.digest);
}

#[test]
fn read_only_dirs_and_implicit_parents() {
    // Directory modes are applied last, so a 0555 dir can still receive its
    // files (matters when not root); missing parents are created 0755.
    let l = gz_layer(&[
        Ent::dir("ro/").mode(0o555),
        Ent::file("ro/inside", b"x"),
        Ent::file("x/y/z", b"deep"),
    ]);
    let t = tempfile::tempdir().expect("tempdir");
    unpack(&l, t.path()).expect("unpack");
    let md = |p: &str| std::fs::metadata(t.path().join(p)).expect(p);
    assert_eq!(md("ro").mode() & 0o7777, 0o555);
    assert_eq!(md("x").mode() & 0o7777, 0o755);
    assert_eq!(md("x/y").mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(t.path().join("x/y/z")).expect("z"), b"deep");
    // Let the tempdir be removed when not root.
    std::fs::set_permissions(
        t.path().join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
}

#[test]
fn long_names_via_gnu_and_pax_headers() {
    let long = format!("{}/file", "d".repeat(150));
    let pax_long = format!("{}/other", "p".repeat(200));
    let l = gz_layer(&[
        Ent::file(&long, b"gnu"),
        Ent::file("short", b"pax").pax("path", pax_long.as_bytes()),
    ]);
    let t = tempfile::tempdir().expect("tempdir");
    unpack(&l, t.path()).expect("unpack");
    assert_eq!(std::fs::read(t.path().join(&long)).expect("gnu"), b"gnu");
    assert_eq!(
        std::fs::read(t.path().join(&pax_long)).expect("pax"),
        b"pax"
    );
}

#[test]
fn gnu_tar_sparse_archives() {
    // Old-GNU sparse entries (GNU tar's default `--sparse`) are decoded and
    // written sparse; PAX sparse is refused rather than extracted wrongly.
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("src");
    let mut data = vec![0u8; 40 << 20];
    data[..4].copy_from_slice(b"head");
    let n = data.len();
    data[n - 4..].copy_from_slice(b"tail");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("f")).expect("f");
        f.write_all(b"head").expect("w");
        f.seek(SeekFrom::Start(n as u64 - 4)).expect("seek");
        f.write_all(b"tail").expect("w");
    }
    let make = |format: &str| -> Option<Vec<u8>> {
        let out = std::process::Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
            .arg(&src)
            .arg("f")
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    };
    let (Some(gnu), Some(posix)) = (make("gnu"), make("posix")) else {
        panic!("cannot run gnu_tar_sparse_archives: GNU tar not available")
    };
    let l = layer(gnu, Comp::Gzip);
    let d = t.path().join("gnu");
    std::fs::create_dir(&d).expect("dir");
    unpack(&l, &d).expect("gnu sparse");
    assert_eq!(std::fs::read(d.join("f")).expect("read"), data);
    let blocks = std::fs::metadata(d.join("f")).expect("md").blocks();
    assert!(blocks * 512 < 1 << 20, "not sparse: {blocks} blocks");

    let l = layer(posix, Comp::Gzip);
    let d = t.path().join("posix");
    std::fs::create_dir(&d).expect("dir");
    let e = unpack(&l, &d).expect_err("pax sparse");
    assert!(matches!(e.source, LayerError::Malformed { .. }), "{e}");
}

#[test]
fn empty_layers_unpack_to_empty_dirs() {
    // Docker's "empty layer" (ENV/LABEL steps in old builders): a tar of
    // just the end blocks, and the degenerate zero-byte blob.
    for tar in [tar_of(&[]), Vec::new()] {
        let l = layer(tar, Comp::Gzip);
        let t = tempfile::tempdir().expect("tempdir");
        let stats = unpack_layer(
            Cursor::new(&l.blob),
            t.path(),
            &l.spec,
            &limits(),
            ExtractMode::Overlay,
        )
        .expect("unpack");
        assert_eq!(stats.entries, 0);
        assert!(tree(t.path()).is_empty());
    }
}

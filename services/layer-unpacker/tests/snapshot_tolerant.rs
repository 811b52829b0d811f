//! Layers real tools make that are not textbook tars: umoci's tars that stop
//! right after the last entry's data, and names that appear twice in a layer
//! (Docker keeps the last one).

mod common;

use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_layer_unpacker::snapshot::{unpack_layer, Error, ExtractMode, LayerError};
use common::*;

const BOTH: [ExtractMode; 2] = [ExtractMode::Overlay, ExtractMode::Apply];

fn unpack(l: &Layer, dir: &Path, mode: ExtractMode) -> Result<(), Error> {
    unpack_layer(Cursor::new(&l.blob), dir, &l.spec, &limits(), mode).map(|_| ())
}

/// `entries` as a tar cut `from_end` bytes before its end (the end-of-archive
/// blocks are the last 1024 bytes).
fn cut_tar(entries: &[Ent], from_end: usize) -> Vec<u8> {
    let mut tar = tar_of(entries);
    tar.truncate(tar.len() - from_end);
    tar
}

#[test]
fn a_tar_ending_right_after_the_last_entry_data_unpacks() {
    let entries = [
        Ent::dir("etc/"),
        Ent::file("etc/a", b"first"),
        Ent::file("etc/b", b"hello"),
    ];
    // No end-of-archive blocks and no padding after `hello`: what `umoci insert` writes.
    let unpadded = cut_tar(&entries, 1024 + (512 - 5));
    // No end-of-archive blocks only.
    let no_end = cut_tar(&entries, 1024);
    for tar in [unpadded, no_end] {
        for comp in [Comp::None, Comp::Gzip] {
            for mode in BOTH {
                let l = layer(tar.clone(), comp);
                let t = tempfile::tempdir().expect("tempdir");
                unpack(&l, t.path(), mode).expect("a tar ending at an entry boundary unpacks");
                assert_eq!(std::fs::read(t.path().join("etc/b")).expect("b"), b"hello");
                assert_eq!(std::fs::read(t.path().join("etc/a")).expect("a"), b"first");
            }
        }
    }
}

#[test]
fn a_tar_cut_inside_an_entry_is_still_refused() {
    let entries = [Ent::file("a", &[7u8; 1000]), Ent::file("b", &[9u8; 700])];
    let full = tar_of(&entries);
    // Inside b's data; inside b's header; inside a's data (b never starts).
    let b_header = 512 + 1024;
    for len in [b_header + 512 + 300, b_header + 100, 512 + 600] {
        for mode in BOTH {
            let l = layer(full[..len].to_vec(), Comp::Gzip);
            let t = tempfile::tempdir().expect("tempdir");
            let e = unpack(&l, t.path(), mode).expect_err("a truncated entry was accepted");
            assert_eq!(e.layer, l.spec.digest);
            assert!(
                !matches!(e.source, LayerError::DigestMismatch { .. }),
                "cut at {len}: refused only for its digest: {e}"
            );
        }
    }
}

#[test]
fn a_real_umoci_insert_layer_unpacks() {
    let t = tempfile::tempdir().expect("tempdir");
    let umoci = which("umoci").expect("umoci is not installed: needed to make a real umoci layer");
    let layout = t.path().join("oci");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&umoci)
            .args(args)
            .output()
            .expect("run umoci");
        assert!(out.status.success(), "umoci {args:?}: {:?}", out);
    };
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("dir")).expect("src");
    std::fs::write(src.join("dir/hello"), b"hello from umoci").expect("file");
    let l = layout.to_string_lossy().into_owned();
    run(&["init", "--layout", &l]);
    run(&["new", "--image", &format!("{l}:t")]);
    run(&[
        "insert",
        "--image",
        &format!("{l}:t"),
        &src.to_string_lossy(),
        "/opt",
    ]);
    // The one layer blob: the largest blob that is gzip.
    let mut layer_blob = None;
    for e in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
        let p = e.expect("blob").path();
        let b = std::fs::read(&p).expect("read blob");
        if b.starts_with(&[0x1f, 0x8b]) {
            layer_blob = Some(b);
        }
    }
    let blob = layer_blob.expect("umoci wrote no gzip layer");
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut tar)
        .expect("gunzip");
    assert!(
        !tar.ends_with(&[0u8; 1024]),
        "this umoci writes end-of-archive blocks; the test no longer shows the quirk"
    );
    let l = layer(tar, Comp::Gzip);
    for mode in BOTH {
        let dest = tempfile::tempdir().expect("tempdir");
        unpack(&l, dest.path(), mode).expect("umoci's layer unpacks");
        assert_eq!(
            std::fs::read(dest.path().join("opt/dir/hello")).expect("hello"),
            b"hello from umoci"
        );
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn duplicate_names_keep_the_last_entry_like_docker() {
    let t = tempfile::tempdir().expect("tempdir");
    let host = t.path().join("host");
    std::fs::create_dir(&host).expect("host");
    std::fs::write(host.join("secret"), b"the host's secret").expect("secret");
    let h = host.to_string_lossy().into_owned();
    let l = gz_layer(&[
        // file, file
        Ent::file("x", b"one"),
        Ent::file("x", b"two"),
        // dir with content, then a file, then a dir again (empty)
        Ent::dir("d/"),
        Ent::file("d/inner", b"gone"),
        Ent::file("d", b"now a file"),
        Ent::dir("e/"),
        Ent::file("e/inner", b"gone"),
        Ent::file("e", b"a file for a while"),
        Ent::dir("e/").mode(0o750),
        // symlink, symlink; a symlink to the host replaced by a file is not written through
        Ent::symlink("l", "first"),
        Ent::symlink("l", "second"),
        Ent::symlink("s", &format!("{h}/secret")),
        Ent::file("s", b"pwned"),
        // a hardlink name reused: the link's old inode keeps its content
        Ent::file("f", b"f"),
        Ent::hardlink("h", "f"),
        Ent::file("h", b"h2"),
        // a parent made for an entry, then a file of its name
        Ent::file("p/q", b"q"),
        Ent::file("p", b"p"),
        // a file, then a hardlink of its name to an earlier file
        Ent::file("g", b"g"),
        Ent::hardlink("g", "f"),
    ]);
    for mode in BOTH {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        unpack(&l, root, mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(read("x"), b"two");
        assert_eq!(read("d"), b"now a file");
        let e = std::fs::symlink_metadata(root.join("e")).expect("e");
        assert!(e.is_dir(), "{mode:?}: e is a dir again");
        assert_eq!(e.mode() & 0o7777, 0o750);
        assert_eq!(std::fs::read_dir(root.join("e")).expect("e").count(), 0);
        assert_eq!(
            std::fs::read_link(root.join("l")).expect("l"),
            Path::new("second")
        );
        assert!(std::fs::symlink_metadata(root.join("s"))
            .expect("s")
            .is_file());
        assert_eq!(read("s"), b"pwned");
        assert_eq!(read("f"), b"f");
        assert_eq!(read("h"), b"h2");
        assert_eq!(read("p"), b"p");
        assert_eq!(read("g"), b"f");
        let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p).ino();
        assert_eq!(ino("g"), ino("f"));
        assert_eq!(
            std::fs::read(host.join("secret")).expect("secret"),
            b"the host's secret"
        );
    }
}

#[test]
fn a_name_hidden_then_written_again_in_one_layer_is_the_entry() {
    for mode in BOTH {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = gz_layer(&[Ent::file(".wh.x", b""), Ent::file("x", b"back")]);
        unpack(&l, dir.path(), mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(std::fs::read(dir.path().join("x")).expect("x"), b"back");
    }
}

//! Malicious layer fixtures: each one aims at a file outside the snapshot
//! directory (`host/secret` next to it) and must fail (or be contained) with the
//! host tree byte-for-byte untouched. Every fixture runs in overlay form and,
//! where it applies, in the copy-based applier.

mod common;

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use berth_layer_unpacker::snapshot::{
    unpack_layer, Error, ExtractMode, LayerError, LayerSpec, Limits, SnapshotStore, StoreError,
};
use common::*;

const BOTH: [ExtractMode; 2] = [ExtractMode::Overlay, ExtractMode::Apply];
const APPLY: [ExtractMode; 1] = [ExtractMode::Apply];

/// `<tmp>/host/{secret,sub/keep}` (what attacks aim at) and `<tmp>/snap` (the root).
struct Host {
    tmp: tempfile::TempDir,
    before: BTreeMap<PathBuf, Node>,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(host.join("sub")).expect("host");
        std::fs::write(host.join("secret"), b"the host's secret").expect("secret");
        std::fs::write(host.join("sub/keep"), b"keep me").expect("keep");
        std::fs::create_dir(tmp.path().join("snap")).expect("snap");
        let before = tree(&host);
        Host { tmp, before }
    }

    /// Absolute path of the host dir, for absolute-name attacks.
    fn host(&self) -> String {
        path_str(&self.tmp.path().join("host")).to_string()
    }

    fn snap(&self) -> PathBuf {
        self.tmp.path().join("snap")
    }

    /// Unpacks `layers` in order into `snap/` (overlay form: each into `snap/<i>`).
    fn unpack(&self, layers: &[Layer], mode: ExtractMode, limits: &Limits) -> Result<(), Error> {
        for (i, l) in layers.iter().enumerate() {
            let dest = match mode {
                ExtractMode::Apply => self.snap(),
                ExtractMode::Overlay => {
                    let d = self.snap().join(i.to_string());
                    std::fs::create_dir_all(&d).expect("layer dir");
                    d
                }
            };
            unpack_layer(Cursor::new(&l.blob), &dest, &l.spec, limits, mode)?;
        }
        Ok(())
    }

    fn assert_untouched(&self) {
        let after = tree(&self.tmp.path().join("host"));
        assert_same_tree("before", &self.before, "after", &after);
        let mut top: Vec<String> = std::fs::read_dir(self.tmp.path())
            .expect("read")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["host", "snap"],
            "something was written next to the root"
        );
    }
}

/// Runs one fixture in each mode: expects the given error kind from the layer
/// that carries the attack (named in the error), and the host untouched.
fn expect_refused(
    name: &str,
    modes: &[ExtractMode],
    build: impl Fn(&str) -> Vec<Vec<Ent>>,
    limits: Limits,
    expect: impl Fn(&LayerError) -> bool,
) {
    for &mode in modes {
        let h = Host::new();
        let layers: Vec<Layer> = build(&h.host()).iter().map(|e| gz_layer(e)).collect();
        match h.unpack(&layers, mode, &limits) {
            Ok(()) => panic!("{name} ({mode:?}): malicious layer accepted"),
            Err(e) => {
                assert!(
                    expect(&e.source),
                    "{name} ({mode:?}): unexpected error: {e}"
                );
                let last = layers.last().expect("a layer");
                assert_eq!(
                    e.layer, last.spec.digest,
                    "{name}: error names the wrong layer"
                );
                assert!(e.to_string().contains(&last.spec.digest), "{e}");
            }
        }
        h.assert_untouched();
    }
}

fn unsafe_path(e: &LayerError) -> bool {
    matches!(e, LayerError::UnsafePath { .. })
}
fn duplicate(e: &LayerError) -> bool {
    matches!(e, LayerError::Duplicate(_))
}
fn bad_hardlink(e: &LayerError) -> bool {
    matches!(e, LayerError::Hardlink { .. })
}

macro_rules! refused {
    ($name:ident, $modes:expr, $check:expr, |$host:ident| $layers:expr) => {
        #[test]
        fn $name() {
            expect_refused(
                stringify!($name),
                &$modes,
                |$host: &str| $layers,
                limits(),
                $check,
            );
        }
    };
}

// --- names that leave the root -------------------------------------------------
refused!(dotdot_name, BOTH, unsafe_path, |_h| vec![vec![Ent::file(
    "../host/secret",
    b"pwned"
)]]);
refused!(nested_dotdot_name, BOTH, unsafe_path, |_h| vec![vec![
    Ent::dir("a/"),
    Ent::file("a/../../host/secret", b"pwned")
]]);
refused!(absolute_file_name, BOTH, unsafe_path, |h| vec![vec![
    Ent::file(&format!("{h}/secret"), b"pwned")
]]);
refused!(absolute_dir_name, BOTH, unsafe_path, |h| vec![vec![
    Ent::dir(&format!("{h}/newdir/"))
]]);
refused!(pax_path_with_dotdot, BOTH, unsafe_path, |_h| vec![vec![
    Ent::file("innocent", b"pwned").pax("path", b"../host/secret")
]]);
refused!(gnu_long_name_with_dotdot, BOTH, unsafe_path, |_h| vec![
    vec![Ent::file(
        &format!("{}host/secret", "a/../".repeat(30)),
        b"pwned"
    )]
]);
refused!(root_entry_as_symlink, BOTH, unsafe_path, |h| vec![vec![
    Ent::symlink("./", h)
]]);

// --- symlinks followed by entries through them -----------------------------------
refused!(
    relative_symlink_then_file_through,
    BOTH,
    unsafe_path,
    |_h| vec![vec![
        Ent::symlink("l", "../host"),
        Ent::file("l/secret", b"pwned")
    ]]
);
refused!(
    absolute_symlink_then_file_through,
    BOTH,
    unsafe_path,
    |h| vec![vec![Ent::symlink("l", h), Ent::file("l/secret", b"pwned")]]
);
refused!(symlink_then_dir_through, BOTH, unsafe_path, |h| vec![vec![
    Ent::symlink("l", h),
    Ent::dir("l/newdir/")
]]);
refused!(
    symlink_chain_then_file_through,
    BOTH,
    unsafe_path,
    |h| vec![vec![
        Ent::symlink("b", h),
        Ent::symlink("a", "b"),
        Ent::file("a/secret", b"pwned")
    ]]
);
refused!(dir_replaced_by_symlink_later, BOTH, unsafe_path, |h| vec![
    vec![
        Ent::dir("d/"),
        Ent::symlink("d", h),
        Ent::file("d/secret", b"pwned")
    ]
]);
refused!(whiteout_of_own_implicit_parent, BOTH, duplicate, |_h| vec![
    vec![Ent::file("a/b", b"one"), Ent::file(".wh.a", b"")]
]);

// --- hardlinks -------------------------------------------------------------------
refused!(hardlink_with_dotdot_target, BOTH, bad_hardlink, |_h| vec![
    vec![Ent::hardlink("h", "../host/secret")]
]);
refused!(hardlink_with_absolute_target, BOTH, bad_hardlink, |h| vec![
    vec![Ent::hardlink("h", &format!("{h}/secret"))]
]);
refused!(hardlink_through_symlink, BOTH, bad_hardlink, |h| vec![
    vec![Ent::symlink("l", h), Ent::hardlink("h", "l/secret")]
]);
refused!(hardlink_to_later_entry, BOTH, bad_hardlink, |_h| vec![
    vec![Ent::hardlink("h", "f"), Ent::file("f", b"x")]
]);

// --- whiteouts -------------------------------------------------------------------
refused!(whiteout_of_dotdot, BOTH, unsafe_path, |_h| vec![vec![
    Ent::file(".wh...", b"")
]]);
refused!(nested_whiteout_of_dotdot, BOTH, unsafe_path, |_h| vec![
    vec![Ent::dir("sub/"), Ent::file("sub/.wh...", b"")]
]);
refused!(whiteout_of_dot, BOTH, unsafe_path, |_h| vec![vec![
    Ent::file("sub/.wh..", b"")
]]);
refused!(whiteout_through_symlink, BOTH, unsafe_path, |h| vec![vec![
    Ent::symlink("l", h),
    Ent::file("l/.wh.secret", b"")
]]);
refused!(opaque_through_symlink, BOTH, unsafe_path, |h| vec![vec![
    Ent::symlink("l", h),
    Ent::file("l/.wh..wh..opq", b"")
]]);

// --- across layers (applier: a lower layer's symlink must not be followed) -------
refused!(
    lower_symlink_then_file_through,
    APPLY,
    unsafe_path,
    |h| vec![
        vec![Ent::symlink("etc", h)],
        vec![Ent::file("etc/secret", b"pwned")]
    ]
);
refused!(
    lower_symlink_then_whiteout_through,
    APPLY,
    unsafe_path,
    |h| vec![
        vec![Ent::symlink("l", h)],
        vec![Ent::file("l/.wh.secret", b"")]
    ]
);
refused!(
    lower_symlink_then_opaque_through,
    APPLY,
    unsafe_path,
    |h| vec![
        vec![Ent::symlink("l", &format!("{h}/sub"))],
        vec![Ent::file("l/.wh..wh..opq", b"")]
    ]
);
refused!(
    hardlink_to_lower_layer_symlink,
    APPLY,
    bad_hardlink,
    |h| vec![
        vec![Ent::symlink("l", &format!("{h}/secret"))],
        vec![Ent::hardlink("h", "l")]
    ]
);

// --- device nodes inside a user namespace -----------------------------------------
fn no_devices() -> Limits {
    Limits {
        allow_devices: false,
        ..limits()
    }
}

#[test]
fn char_device_refused_in_user_namespace() {
    expect_refused(
        "char_device_refused_in_user_namespace",
        &BOTH,
        |_h| vec![vec![Ent::dir("dev/"), Ent::chardev("dev/mem", 1, 1)]],
        no_devices(),
        |e| matches!(e, LayerError::DeviceNotAllowed(_)),
    );
}

#[test]
fn block_device_refused_in_user_namespace() {
    expect_refused(
        "block_device_refused_in_user_namespace",
        &BOTH,
        |_h| vec![vec![Ent::blockdev("sda", 8, 0)]],
        no_devices(),
        |e| matches!(e, LayerError::DeviceNotAllowed(_)),
    );
}

// --- bombs -----------------------------------------------------------------------
/// A tar of one all-zero file of `size` bytes, compressed as it is written.
fn bomb(size: u64, comp: Comp) -> LayerSpec_and_blob {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let (blob, mt) = match comp {
        Comp::Gzip => {
            let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::best(),
            ));
            b.append_data(&mut h, "zeros", std::io::repeat(0).take(size))
                .expect("append");
            (
                b.into_inner().expect("tar").finish().expect("gzip"),
                MT_GZIP,
            )
        }
        _ => {
            let mut b = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).expect("zstd"));
            b.append_data(&mut h, "zeros", std::io::repeat(0).take(size))
                .expect("append");
            (
                b.into_inner().expect("tar").finish().expect("zstd"),
                MT_ZSTD,
            )
        }
    };
    assert!(
        (blob.len() as u64) * 500 < size,
        "not a bomb: {} bytes",
        blob.len()
    );
    let spec = LayerSpec {
        digest: sha256(&blob),
        media_type: mt.to_string(),
        diff_id: sha256(b"unknown"),
    };
    (spec, blob)
}

#[allow(non_camel_case_types)]
type LayerSpec_and_blob = (LayerSpec, Vec<u8>);

fn expect_bomb_stopped(size: u64, comp: Comp) {
    let (spec, blob) = bomb(size, comp);
    let h = Host::new();
    let lim = Limits {
        max_uncompressed_bytes: 8 << 20,
        ..limits()
    };
    let e = unpack_layer(
        Cursor::new(&blob),
        &h.snap(),
        &spec,
        &lim,
        ExtractMode::Overlay,
    )
    .expect_err("bomb accepted");
    assert!(
        matches!(e.source, LayerError::TooLarge { limit } if limit == 8 << 20),
        "{e}"
    );
    h.assert_untouched();
    // What was written before the stop is bounded by the limit.
    let written: u64 = tree(&h.snap())
        .keys()
        .map(|p| std::fs::metadata(h.snap().join(p)).expect("md").len())
        .sum();
    assert!(written <= 8 << 20, "{written} bytes written");
}

#[test]
fn gzip_bomb_stops_at_size_limit() {
    expect_bomb_stopped(24 << 20, Comp::Gzip);
}

#[test]
fn zstd_bomb_stops_at_size_limit() {
    // 1 GiB of zeros in a few tens of KiB.
    expect_bomb_stopped(1 << 30, Comp::Zstd);
}

#[test]
fn entry_count_bomb_stops_at_entry_limit() {
    expect_refused(
        "entry_count_bomb_stops_at_entry_limit",
        &BOTH,
        |_h| {
            vec![(0..1000)
                .map(|i| Ent::file(&format!("f{i}"), b""))
                .collect()]
        },
        Limits {
            max_entries: 100,
            ..limits()
        },
        |e| matches!(e, LayerError::TooManyEntries { limit: 100 }),
    );
}

#[test]
fn diff_id_mismatch_is_refused_and_discarded_by_the_store() {
    let mut l = gz_layer(&[Ent::file("a", b"content")]);
    let honest = l.spec.diff_id.clone();
    l.spec.diff_id = sha256(b"something else");
    let h = Host::new();
    let store = SnapshotStore::open(h.snap(), limits()).expect("store");
    let blobs = Blobs::new(&[&l]);
    let err = store
        .prepare(
            std::slice::from_ref(&l.spec),
            &|s: &LayerSpec| blobs.open(s),
            &Default::default(),
        )
        .expect_err("mismatch accepted");
    let msg = err.to_string();
    match err {
        StoreError::Layer(Error {
            layer,
            source: LayerError::DigestMismatch { expected, actual },
        }) => {
            assert_eq!(layer, l.spec.digest);
            assert_eq!(expected, l.spec.diff_id);
            assert_eq!(actual, honest);
        }
        other => panic!("wrong error {other}"),
    }
    assert!(
        msg.contains(&honest) && msg.contains(&l.spec.diff_id),
        "{msg}"
    );
    // Nothing left: no snapshot, no temp dir.
    assert!(store.list().is_empty());
    let left: Vec<_> = std::fs::read_dir(h.snap())
        .expect("read")
        .map(|e| e.expect("e").file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    h.assert_untouched();
}

// --- contained, not refused -------------------------------------------------------
#[test]
fn lower_symlink_replaced_by_file_is_not_written_through() {
    let h = Host::new();
    let host = h.host();
    let layers = [
        gz_layer(&[Ent::symlink("l", &format!("{host}/secret"))]),
        gz_layer(&[Ent::file("l", b"layer two")]),
    ];
    h.unpack(&layers, ExtractMode::Apply, &limits())
        .expect("apply");
    let md = std::fs::symlink_metadata(h.snap().join("l")).expect("l");
    assert!(md.is_file());
    assert_eq!(
        std::fs::read(h.snap().join("l")).expect("read"),
        b"layer two"
    );
    h.assert_untouched();
}

#[test]
fn lower_symlink_replaced_by_dir_gets_a_real_dir() {
    let h = Host::new();
    let host = h.host();
    let layers = [
        gz_layer(&[Ent::symlink("l", &host)]),
        gz_layer(&[Ent::dir("l/"), Ent::file("l/secret", b"layer two")]),
    ];
    h.unpack(&layers, ExtractMode::Apply, &limits())
        .expect("apply");
    assert!(std::fs::symlink_metadata(h.snap().join("l"))
        .expect("l")
        .is_dir());
    assert_eq!(
        std::fs::read(h.snap().join("l/secret")).expect("read"),
        b"layer two"
    );
    h.assert_untouched();
}

#[test]
fn symlink_targets_are_stored_not_followed() {
    // A symlink pointing out is legal data (it is only resolved inside the
    // container); it must be created as-is and nothing resolved through it.
    let h = Host::new();
    let host = h.host();
    let layers = [gz_layer(&[
        Ent::symlink("abs", &format!("{host}/secret")),
        Ent::symlink("rel", "../../../../../../../../etc/passwd"),
    ])];
    h.unpack(&layers, ExtractMode::Overlay, &limits())
        .expect("unpack");
    assert_eq!(
        std::fs::read_link(h.snap().join("0/abs")).expect("abs"),
        Path::new(&format!("{host}/secret"))
    );
    h.assert_untouched();
}

#[test]
fn overlay_xattrs_from_the_tar_are_dropped() {
    require_root("overlay_xattrs_from_the_tar_are_dropped");
    // trusted.overlay.redirect in a lowerdir would make overlayfs look up
    // another path; only the unpacker itself may write overlay xattrs.
    let h = Host::new();
    let layers = [gz_layer(&[Ent::dir("d/")
        .xattr("trusted.overlay.redirect", b"/host")
        .xattr("trusted.overlay.opaque", b"y")
        .xattr("user.keep", b"1")])];
    h.unpack(&layers, ExtractMode::Overlay, &limits())
        .expect("unpack");
    let x = xattrs(&h.snap().join("0/d"));
    assert!(
        x.keys().all(|k| !k.starts_with("trusted.overlay.")),
        "{x:?}"
    );
    assert_eq!(x.get("user.keep").map(Vec::as_slice), Some(&b"1"[..]));
    h.assert_untouched();
}

#[test]
fn fixture_count_is_at_least_twenty() {
    // Keeps the bar visible: count the refusal fixtures in this file.
    let src = include_str!("snapshot_malicious.rs");
    let n = src.matches("\nrefused!(").count() + src.matches("expect_refused(\n        \"").count();
    assert!(n >= 20, "only {n} fixtures");
}

const ENV_USERNS: &str = "BERTH_USERNS_CHILD_DIR";

#[test]
#[ignore = "child process of device_nodes_refused_by_default_in_a_real_user_namespace"]
fn userns_child() {
    let Ok(dir) = std::env::var(ENV_USERNS) else {
        return;
    };
    let dir = PathBuf::from(dir);
    assert!(berth_layer_unpacker::snapshot::in_user_namespace());
    let defaults = Limits::default();
    assert!(
        !defaults.allow_devices,
        "devices allowed inside a user namespace"
    );
    let l = gz_layer(&[Ent::chardev("mem", 1, 1), Ent::blockdev("sda", 8, 0)]);
    let e = unpack_layer(
        Cursor::new(&l.blob),
        &dir,
        &l.spec,
        &defaults,
        ExtractMode::Overlay,
    )
    .expect_err("device accepted");
    assert!(matches!(e.source, LayerError::DeviceNotAllowed(_)), "{e}");
    std::fs::write(dir.join("child-ok"), b"ok").expect("marker");
}

#[test]
fn device_nodes_refused_by_default_in_a_real_user_namespace() {
    let t = tempfile::tempdir().expect("tempdir");
    let out = match std::process::Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(std::env::current_exe().expect("exe"))
        .args(["userns_child", "--exact", "--ignored", "--nocapture"])
        .env(ENV_USERNS, t.path())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            panic!(
                "cannot run device_nodes_refused_by_default_in_a_real_user_namespace: no unshare ({e})"
            )
        }
    };
    if !out.status.success() && !t.path().join("child-ok").exists() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("unshare failed") || err.contains("Operation not permitted") {
            panic!("cannot run device_nodes_refused_by_default_in_a_real_user_namespace: user namespaces unavailable ({err})")
        }
        panic!(
            "child failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            err
        );
    }
    assert!(
        t.path().join("child-ok").exists(),
        "child did not run its checks"
    );
    assert!(!t.path().join("mem").exists() && !t.path().join("sda").exists());
}

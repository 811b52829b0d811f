//! A quick side-by-side timing (not a test of correctness): a ~100 MB 4-layer
//! image, gzip and zstd, unpacked cold by `SnapshotStore::prepare`, by
//! `tar -xzf` of each layer in sequence and by `umoci unpack`. Medians of 3,
//! each run into fresh directories (this ext4 is slow to create right after
//! mass deletes). Run it in release:
//!
//! `cargo test --release -p berth-layer-unpacker --test snapshot_bench -- --ignored --nocapture`
//!
//! `bench_deep_paths_vs_tar` times layers of `d/d/…/d` 2,500 to 20,000 levels deep
//! against GNU tar: such a tar is quadratic in its depth (each entry names the
//! whole path), so the claim to check is time linear in the tar's bytes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_layer_unpacker::snapshot::{LayerSpec, PrepareOptions, SnapshotStore};
use common::*;

/// Deterministic bytes that compress about 2:1, like a typical rootfs.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x >> 62) == 0 {
            out.extend_from_slice(b"lorem ipsum dolor sit amet ");
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn bench_image(comp: Comp) -> Vec<Layer> {
    (0..4u64)
        .map(|l| {
            let mut entries = Vec::new();
            for d in 0..40 {
                entries.push(Ent::dir(&format!("l{l}/d{d}/")));
                for f in 0..50u64 {
                    let size = 1024 + ((l * 7919 + d * 104_729 + f * 31) % 12_000) as usize;
                    entries.push(Ent::file(
                        &format!("l{l}/d{d}/f{f}"),
                        &content(l * 1_000_000 + d * 1000 + f, size),
                    ));
                }
            }
            for b in 0..8u64 {
                entries.push(Ent::file(
                    &format!("l{l}/big{b}"),
                    &content(l * 100 + b, 1_500_000),
                ));
            }
            layer(tar_of(&entries), comp)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// CPU seconds (user + sys) of this process (`RUSAGE_SELF`, all threads) or of
/// its waited-for children (`RUSAGE_CHILDREN`): steadier than wall time on a
/// loaded machine.
fn cpu(who: libc::c_int) -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    // SAFETY: zero-initialized and filled by getrusage.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn write_blobs(dir: &Path, img: &[Layer]) -> Vec<std::path::PathBuf> {
    img.iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("layer{i}"));
            std::fs::write(&p, &l.blob).expect("blob");
            p
        })
        .collect()
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture in release"]
fn bench_prepare_vs_tar_vs_umoci() {
    let runs = 3;
    // Dropped only at the end: ext4 slows file creation down for minutes after
    // mass deletes (`recently_deleted` in the inode allocator), which would
    // penalize whatever runs after a cleanup.
    let mut keep = Vec::new();
    for (name, comp, tar_flag) in [("gzip", Comp::Gzip, "-xzf"), ("zstd", Comp::Zstd, "--zstd")] {
        let img = bench_image(comp);
        let mb: f64 = img.iter().map(|l| l.tar.len() as f64).sum::<f64>() / 1e6;
        let t = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let files = write_blobs(t.path(), &img);
        let specs: Vec<LayerSpec> = img.iter().map(|l| l.spec.clone()).collect();
        let (mut ours, mut ours_seq, mut tar, mut umoci) = (vec![], vec![], vec![], vec![]);
        let (mut ours_cpu, mut tar_cpu) = (vec![], vec![]);
        for r in 0..runs {
            for (parallelism, out) in [(0usize, &mut ours), (1, &mut ours_seq)] {
                let dir = t.path().join(format!("store-{r}-{parallelism}"));
                let store = SnapshotStore::open(&dir, limits()).expect("store");
                let open = |s: &LayerSpec| -> std::io::Result<Box<dyn std::io::Read + Send>> {
                    let i = specs.iter().position(|x| x == s).expect("known");
                    Ok(Box::new(std::fs::File::open(&files[i])?))
                };
                let opts = PrepareOptions {
                    parallelism: if parallelism == 0 {
                        PrepareOptions::default().parallelism
                    } else {
                        parallelism
                    },
                    user: None,
                };
                let c0 = cpu(libc::RUSAGE_SELF);
                out.push(time(|| {
                    store.prepare(&specs, &open, &opts).expect("prepare");
                }));
                if parallelism == 1 {
                    ours_cpu.push(cpu(libc::RUSAGE_SELF) - c0);
                }
            }
            let c0 = cpu(libc::RUSAGE_CHILDREN);
            tar.push(time(|| {
                for (i, f) in files.iter().enumerate() {
                    let d = t.path().join(format!("tar-{r}-{i}"));
                    std::fs::create_dir(&d).expect("dir");
                    let mut c = Command::new("tar");
                    if tar_flag == "--zstd" {
                        c.args(["--zstd", "-xf"]);
                    } else {
                        c.arg(tar_flag);
                    }
                    let st = c.arg(f).arg("-C").arg(&d).status().expect("tar");
                    assert!(st.success());
                }
            }));
            tar_cpu.push(cpu(libc::RUSAGE_CHILDREN) - c0);
            // umoci 0.4 has no zstd support.
            if matches!(comp, Comp::Gzip) {
                let layout = t.path().join(format!("layout-{r}"));
                write_layout(&layout, &img);
                umoci.push(time(|| {
                    let st = Command::new("umoci")
                        .arg("unpack")
                        .arg("--image")
                        .arg(format!("{}:test", layout.display()))
                        .arg(t.path().join(format!("bundle-{r}")))
                        .stdout(std::process::Stdio::null())
                        .status()
                        .expect("umoci");
                    assert!(st.success());
                }));
            } else {
                umoci.push(f64::NAN);
            }
        }
        let (o, os, ta, u) = (median(ours), median(ours_seq), median(tar), median(umoci));
        let (oc, tc) = (median(ours_cpu), median(tar_cpu));
        println!(
            "{name}: CPU seconds: prepare {oc:.3}, tar+gzip/zstd {tc:.3}; ratio {:.2}",
            oc / tc
        );
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "{name}: load {} | {mb:.0} MB uncompressed, 4 layers; prepare {o:.3}s (sequential {os:.3}s), \
             tar {ta:.3}s, umoci {u:.3}s; prepare/tar = {:.2}, prepare/umoci = {:.2}",
            load.split(' ').next().unwrap_or("?"),
            o / ta,
            o / u
        );
        keep.push(t);
    }
}

fn write_layout(dir: &Path, layers: &[Layer]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("blob");
        (d, bytes.len())
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let (d, n) = put(&l.blob);
            serde_json::json!({"mediaType": l.spec.media_type, "digest": d, "size": n})
        })
        .collect();
    let diff_ids: Vec<_> = layers.iter().map(|l| l.spec.diff_id.clone()).collect();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cn) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs});
    let (md, mn) = put(&serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
        "annotations": {"org.opencontainers.image.ref.name": "test"}}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

/// Only `prepare` (sequential), for profiling: `BENCH_COMP=zstd perf record …`.
#[test]
#[ignore = "profiling aid; run with --ignored in release"]
fn profile_prepare_only() {
    let comp = match std::env::var("BENCH_COMP").as_deref() {
        Ok("zstd") => Comp::Zstd,
        Ok("none") => Comp::None,
        _ => Comp::Gzip,
    };
    let img = bench_image(comp);
    let t = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let files = write_blobs(t.path(), &img);
    let specs: Vec<LayerSpec> = img.iter().map(|l| l.spec.clone()).collect();
    let store = SnapshotStore::open(t.path().join("store"), limits()).expect("store");
    let open = |s: &LayerSpec| -> std::io::Result<Box<dyn std::io::Read + Send>> {
        let i = specs.iter().position(|x| x == s).expect("known");
        Ok(Box::new(std::fs::File::open(&files[i])?))
    };
    let c0 = cpu(libc::RUSAGE_SELF);
    let wall = time(|| {
        store
            .prepare(
                &specs,
                &open,
                &PrepareOptions {
                    parallelism: 1,
                    user: None,
                },
            )
            .expect("prepare");
    });
    println!(
        "prepare: {wall:.3}s wall, {:.3}s CPU",
        cpu(libc::RUSAGE_SELF) - c0
    );
}

/// Deep paths: time per uncompressed MB should stay flat as the depth doubles
/// (linear in the input), and near GNU tar's. Depths from `BENCH_DEPTHS`
/// (comma-separated), default 2500,5000,10000,20000.
#[test]
#[ignore = "benchmark; run with --ignored --nocapture in release"]
fn bench_deep_paths_vs_tar() {
    let depths: Vec<usize> = std::env::var("BENCH_DEPTHS")
        .unwrap_or_else(|_| "2500,5000,10000,20000".into())
        .split(',')
        .map(|d| d.trim().parse().expect("BENCH_DEPTHS: numbers"))
        .collect();
    let t = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    for depth in depths {
        let file = t.path().join(format!("deep-{depth}.tar"));
        let mut out = std::fs::File::create(&file).expect("create");
        let bytes = std::io::copy(&mut DeepTar::new(depth), &mut out).expect("write tar");
        drop(out);
        let spec = deep_spec(depth);
        let store =
            SnapshotStore::open(t.path().join(format!("store-{depth}")), limits()).expect("store");
        let open = |_: &LayerSpec| -> std::io::Result<Box<dyn std::io::Read + Send>> {
            Ok(Box::new(std::fs::File::open(&file)?))
        };
        let ours = time(|| {
            store
                .prepare(
                    std::slice::from_ref(&spec),
                    &open,
                    &PrepareOptions::default(),
                )
                .expect("prepare");
        });
        let dest = t.path().join(format!("tar-{depth}"));
        std::fs::create_dir(&dest).expect("mkdir");
        let mut tar_ok = true;
        let tar = time(|| {
            let st = Command::new("tar")
                .arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(&dest)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("tar");
            tar_ok = st.success();
        });
        let mb = bytes as f64 / 1e6;
        println!(
            "depth {depth}: tar is {mb:.1} MB; prepare {ours:.2}s ({:.1} ms/MB), GNU tar {tar:.2}s \
             ({:.1} ms/MB{}); prepare/tar = {:.2}",
            ours * 1e3 / mb,
            tar * 1e3 / mb,
            if tar_ok { "" } else { ", tar FAILED" },
            ours / tar
        );
        // Both trees are far deeper than PATH_MAX: removed through fds.
        store.prune().expect("prune");
        berth_fstree::remove_tree(&dest).expect("remove tar's tree");
    }
}

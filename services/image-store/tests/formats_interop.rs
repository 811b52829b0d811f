//! The format code against other tools: images built from Debian's busybox-static,
//! made or consumed by skopeo and umoci, so berth is not only tested against itself.
//!
//! These tests need `/bin/busybox` (busybox-static), `skopeo` and `umoci`
//! (docker-compose-free-scripts/setup.sh installs them); a missing tool fails the test
//! with a message saying what to install. umoci unpack/repack needs root (CI runs as root).

mod formats {
    use berth_image_store::formats::docker_archive::{write_docker_archive, DockerArchive};
    use berth_image_store::formats::import::{import_rootfs, ImportOptions};
    use berth_image_store::formats::manifest::PlatformSpec;
    use berth_image_store::formats::oci_layout::{OciLayout, OciLoadOptions};
    use berth_image_store::formats::{ArchiveError, Digest, ImageToStore, Reference};
    use std::io::{self, Read};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Path of a required tool, or a loud failure naming the package to install.
    fn tool(name: &str, package: &str) -> PathBuf {
        for dir in ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
        panic!("{name} is required by this test but not installed: apt-get install {package} (see docker-compose-free-scripts/setup.sh)");
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A rootfs tar: bin/busybox (busybox-static) with sh/ls/echo symlinks, plus etc/ and tmp/.
    fn busybox_rootfs() -> Vec<u8> {
        let busybox = tool("busybox", "busybox-static");
        let bin = std::fs::read(&busybox).expect("read busybox");
        let mut b = tar::Builder::new(Vec::new());
        for dir in ["bin/", "etc/", "tmp/"] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
            h.set_size(0);
            b.append_data(&mut h, dir, &b""[..]).expect("dir");
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o755);
        h.set_size(bin.len() as u64);
        b.append_data(&mut h, "bin/busybox", &bin[..])
            .expect("busybox");
        for link in ["sh", "ls", "echo", "cat"] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{link}"), "busybox")
                .expect("link");
        }
        let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(passwd.len() as u64);
        b.append_data(&mut h, "etc/passwd", &passwd[..])
            .expect("passwd");
        b.into_inner().expect("tar")
    }

    fn import_busybox(name: &str) -> berth_image_store::formats::ImportedImage {
        let rootfs = busybox_rootfs();
        let opts = ImportOptions {
            changes: vec![
                r#"CMD ["/bin/sh"]"#.to_string(),
                "ENV PATH=/bin".to_string(),
                "WORKDIR /tmp".to_string(),
                "LABEL org.opencontainers.image.title=busybox".to_string(),
            ],
            platform: PlatformSpec::host(),
            created: Some("2024-01-01T00:00:00Z".to_string()),
            message: None,
            source_name: "busybox-rootfs.tar".to_string(),
        };
        import_rootfs(
            &rootfs[..],
            Some(Reference::parse(name).expect("ref")),
            &opts,
            &std::env::temp_dir(),
        )
        .expect("import busybox rootfs")
    }

    #[test]
    fn import_save_accepted_by_skopeo_and_reads_back() {
        let skopeo = tool("skopeo", "skopeo");
        let tmp = tempfile::tempdir().expect("tmp");
        let imported = import_busybox("busybox:berth");
        let mut opener = |d: &Digest| -> io::Result<Box<dyn Read>> {
            assert_eq!(d, &imported.image.layers[0].digest);
            Ok(Box::new(imported.open_layer()?))
        };
        let archive = tmp.path().join("save.tar");
        let file = std::fs::File::create(&archive).expect("create");
        write_docker_archive(file, &[&imported.image], &mut opener, tmp.path()).expect("save");

        // skopeo accepts it and sees what we wrote.
        let spec = format!("docker-archive:{}", archive.display());
        let inspect: serde_json::Value =
            serde_json::from_str(&run(Command::new(&skopeo).args(["inspect", &spec])))
                .expect("json");
        assert_eq!(
            inspect["Architecture"],
            PlatformSpec::host().architecture.as_str()
        );
        assert_eq!(inspect["Os"], "linux");
        assert_eq!(
            inspect["Layers"],
            serde_json::json!([imported.image.layers[0].diff_id.to_string()]),
            "docker-archive layers are stored uncompressed, so the blob digest is the diff_id"
        );
        assert_eq!(inspect["Env"], serde_json::json!(["PATH=/bin"]));
        let raw_config = run(Command::new(&skopeo).args(["inspect", "--raw", "--config", &spec]));
        assert_eq!(
            Digest::sha256_of(raw_config.as_bytes()),
            imported.image.config_digest,
            "config bytes kept exactly (image ID stable)"
        );

        // skopeo converts it to an OCI layout; our layout reader agrees on the content.
        let oci = tmp.path().join("oci");
        // Selecting the image by its RepoTag proves the tag was written (skopeo's inspect
        // shows registry tags, not archive ones).
        let by_tag = format!("{spec}:busybox:berth");
        run(Command::new(&skopeo).args([
            "copy",
            "--quiet",
            &by_tag,
            &format!("oci:{}:converted", oci.display()),
        ]));
        let layout = OciLayout::open_dir(
            &oci,
            &OciLoadOptions {
                name: Some(Reference::parse_no_default_tag("busybox").expect("ref")),
                ..Default::default()
            },
        )
        .expect("our reader accepts skopeo's OCI layout");
        let img = &layout.images()[0].image;
        assert_eq!(img.references[0].familiar(), "busybox:converted");
        assert_eq!(img.diff_ids(), imported.image.diff_ids());
        let cfg = img.config().expect("config");
        let cmd = cfg.config().as_ref().and_then(|c| c.cmd().clone());
        assert_eq!(cmd, Some(vec!["/bin/sh".to_string()]));

        // And our docker-archive reader reads our own output.
        let back = DockerArchive::read(
            std::fs::File::open(&archive).expect("open"),
            tmp.path(),
            "save.tar",
        )
        .expect("read back");
        assert_eq!(back.images()[0].config_digest, imported.image.config_digest);
        assert_eq!(back.images()[0].references, imported.image.references);

        podman_load(&archive, tmp.path(), "busybox:berth");
    }

    #[test]
    fn save_two_images_sharing_a_layer() {
        let skopeo = tool("skopeo", "skopeo");
        let tmp = tempfile::tempdir().expect("tmp");
        let a = import_busybox("busybox:a");
        let rootfs = busybox_rootfs();
        let b = import_rootfs(
            &rootfs[..],
            Some(Reference::parse("127.0.0.1:5000/x/busybox:b").expect("ref")),
            &ImportOptions {
                changes: vec!["ENTRYPOINT /bin/echo".to_string()],
                created: Some("2024-01-02T00:00:00Z".to_string()),
                source_name: "busybox-rootfs.tar".to_string(),
                ..Default::default()
            },
            tmp.path(),
        )
        .expect("import b");
        assert_eq!(
            a.image.diff_ids(),
            b.image.diff_ids(),
            "same rootfs, same diff_id"
        );
        assert_ne!(a.image.config_digest, b.image.config_digest);
        let mut opener = |d: &Digest| -> io::Result<Box<dyn Read>> {
            if d == &a.image.layers[0].digest {
                Ok(Box::new(a.open_layer()?))
            } else {
                Ok(Box::new(b.open_layer()?))
            }
        };
        let archive = tmp.path().join("two.tar");
        write_docker_archive(
            std::fs::File::create(&archive).expect("create"),
            &[&a.image, &b.image],
            &mut opener,
            tmp.path(),
        )
        .expect("save two");
        for (sel, entrypoint) in [
            ("@0", serde_json::Value::Null),
            ("@1", serde_json::json!(["/bin/sh", "-c", "/bin/echo"])),
        ] {
            let spec = format!("docker-archive:{}:{sel}", archive.display());
            let cfg: serde_json::Value = serde_json::from_str(&run(
                Command::new(&skopeo).args(["inspect", "--config", &spec])
            ))
            .expect("json");
            assert_eq!(cfg["config"]["Entrypoint"], entrypoint, "{sel}: {cfg}");
        }
        let back = DockerArchive::read(
            std::fs::File::open(&archive).expect("open"),
            tmp.path(),
            "two.tar",
        )
        .expect("read back");
        assert_eq!(back.images().len(), 2);
        assert_eq!(back.blobs().count(), 1, "one shared layer");
        assert_eq!(
            back.images()[1].references[0].familiar(),
            "127.0.0.1:5000/x/busybox:b"
        );
        podman_load(&archive, tmp.path(), "x/busybox:b");
    }

    /// `podman load` into a throwaway storage root (vfs driver, so no overlay or root
    /// store is touched). podman is optional here: setup.sh does not install it, so when
    /// it is absent this says so loudly instead of passing silently.
    fn podman_load(archive: &Path, scratch: &Path, expect_tag: &str) {
        let Some(podman) = ["/usr/bin/podman", "/usr/local/bin/podman"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("SKIP podman load check: podman is not installed (apt-get install podman); skopeo covered the docker-archive");
            return;
        };
        let root = scratch.join("podman-root");
        let runroot = scratch.join("podman-run");
        let base = |cmd: &mut Command| {
            cmd.arg("--root")
                .arg(&root)
                .arg("--runroot")
                .arg(&runroot)
                .args([
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "none",
                ]);
        };
        let mut load = Command::new(podman);
        base(&mut load);
        let out = run(load.arg("load").arg("-i").arg(archive));
        assert!(out.contains(expect_tag), "podman load output: {out}");
        let mut images = Command::new(podman);
        base(&mut images);
        let listed = run(images.args(["images", "--format", "{{.Repository}}:{{.Tag}}"]));
        assert!(listed.contains(expect_tag), "podman images: {listed}");
    }

    /// Builds a two-layer OCI layout with umoci: busybox in layer 1, `bin/ls` deleted in
    /// layer 2 (a whiteout), and a CMD set by `umoci config` (an empty-layer history entry).
    fn umoci_layout(dir: &Path, tag: &str) -> PathBuf {
        let umoci = tool("umoci", "umoci");
        let layout = dir.join("umoci-layout");
        let image = format!("{}:{tag}", layout.display());
        let bundle = dir.join("bundle");
        run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
        run(Command::new(&umoci).args(["new", "--image", &image]));
        run(Command::new(&umoci)
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        let rootfs = busybox_rootfs();
        tar::Archive::new(&rootfs[..])
            .unpack(bundle.join("rootfs"))
            .expect("unpack busybox rootfs into the bundle");
        run(Command::new(&umoci)
            .args(["repack", "--image", &image])
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).expect("rm bundle");
        run(Command::new(&umoci)
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        std::fs::remove_file(bundle.join("rootfs/bin/ls")).expect("rm ls");
        run(Command::new(&umoci)
            .args(["repack", "--image", &image])
            .arg(&bundle));
        run(Command::new(&umoci).args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "PATH=/bin",
        ]));
        layout
    }

    fn layer_entries(blob: &mut dyn Read) -> Vec<String> {
        let mut head = [0u8; 2];
        let mut all = Vec::new();
        blob.read_to_end(&mut all).expect("read blob");
        head.copy_from_slice(&all[..2]);
        let data: Box<dyn Read> = if head == [0x1f, 0x8b] {
            Box::new(flate2::read::GzDecoder::new(&all[..]))
        } else {
            Box::new(&all[..])
        };
        let mut a = tar::Archive::new(data);
        a.entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn reads_umoci_layout_with_whiteout_and_skopeo_docker_archive() {
        let skopeo = tool("skopeo", "skopeo");
        let tmp = tempfile::tempdir().expect("tmp");
        let layout_dir = umoci_layout(tmp.path(), "v1");
        let opts = OciLoadOptions {
            name: Some(
                Reference::parse_no_default_tag("127.0.0.1:5000/tools/busybox").expect("ref"),
            ),
            ..Default::default()
        };
        let layout = OciLayout::open_dir(&layout_dir, &opts).expect("umoci layout");
        assert_eq!(layout.images().len(), 1);
        let oci_img = layout.images()[0].image.clone();
        assert_eq!(
            oci_img.references[0].familiar(),
            "127.0.0.1:5000/tools/busybox:v1"
        );
        assert_eq!(oci_img.layers.len(), 2, "two repacks, two layers");
        let history = oci_img
            .config()
            .expect("config")
            .history()
            .clone()
            .expect("history");
        assert!(
            history.len() > 2,
            "umoci config adds an empty-layer history entry: {history:?}"
        );
        let mut second = layout
            .open_blob(&oci_img.layers[1].digest)
            .expect("layer 2");
        let entries = layer_entries(&mut second);
        assert!(
            entries.iter().any(|e| e.ends_with("bin/.wh.ls")),
            "whiteout for the deleted bin/ls in {entries:?}"
        );

        // The same layout as a tar.
        let layout_tar = tmp.path().join("layout.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&layout_tar).expect("create"));
            b.append_dir_all(".", &layout_dir).expect("tar layout");
            b.finish().expect("finish");
        }
        let from_tar = OciLayout::read_tar(
            std::fs::File::open(&layout_tar).expect("open"),
            tmp.path(),
            "layout.tar",
            &opts,
        )
        .expect("layout tar");
        assert_eq!(
            from_tar.images()[0].image.manifest_digest,
            oci_img.manifest_digest
        );

        // skopeo writes a docker-archive with two tags; our reader takes it.
        let archive = tmp.path().join("skopeo.tar");
        run(Command::new(&skopeo).args([
            "copy",
            "--quiet",
            "--additional-tag",
            "busybox:also",
            &format!("oci:{}:v1", layout_dir.display()),
            &format!("docker-archive:{}:busybox:skopeo", archive.display()),
        ]));
        let a = DockerArchive::read(
            std::fs::File::open(&archive).expect("open"),
            tmp.path(),
            "skopeo.tar",
        )
        .expect("our reader accepts skopeo's docker-archive");
        assert_eq!(a.images().len(), 1);
        let img: &ImageToStore = &a.images()[0];
        let mut tags: Vec<String> = img.references.iter().map(Reference::familiar).collect();
        tags.sort();
        assert_eq!(tags, ["busybox:also", "busybox:skopeo"]);
        assert_eq!(
            img.diff_ids(),
            oci_img.diff_ids(),
            "same layers, digest by digest"
        );
        for l in &img.layers {
            let mut r = a.open_blob(&l.digest).expect("blob");
            io::copy(&mut r, &mut io::sink()).expect("verified while streaming");
        }
        // What berth writes from it, skopeo reads again.
        let mut opener = |d: &Digest| -> io::Result<Box<dyn Read>> {
            Ok(Box::new(a.open_blob(d).map_err(io::Error::other)?))
        };
        let resaved = tmp.path().join("resaved.tar");
        write_docker_archive(
            std::fs::File::create(&resaved).expect("create"),
            &[img],
            &mut opener,
            tmp.path(),
        )
        .expect("save");
        let inspect: serde_json::Value = serde_json::from_str(&run(Command::new(&skopeo)
            .args(["inspect", &format!("docker-archive:{}", resaved.display())])))
        .expect("json");
        let layers: Vec<String> = oci_img.diff_ids().iter().map(Digest::to_string).collect();
        assert_eq!(inspect["Layers"], serde_json::json!(layers));
    }

    #[test]
    fn skopeo_archive_with_tampered_layer_is_rejected() {
        let skopeo = tool("skopeo", "skopeo");
        let tmp = tempfile::tempdir().expect("tmp");
        let layout_dir = umoci_layout(tmp.path(), "t");
        // Corrupt one layer blob in the layout: our reader must refuse it, naming the layer.
        let layout = OciLayout::open_dir(&layout_dir, &OciLoadOptions::default()).expect("layout");
        let layer = layout.images()[0].image.layers[0].digest.clone();
        drop(layout);
        let archive = tmp.path().join("a.tar");
        run(Command::new(&skopeo).args([
            "copy",
            "--quiet",
            &format!("oci:{}:t", layout_dir.display()),
            &format!("docker-archive:{}:x:t", archive.display()),
        ]));
        let blob = layout_dir.join("blobs/sha256").join(layer.hex());
        let mut bytes = std::fs::read(&blob).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&blob, &bytes).expect("write");
        let err = OciLayout::open_dir(&layout_dir, &OciLoadOptions::default())
            .expect_err("corrupt layer");
        assert!(matches!(err, ArchiveError::Digest { .. }), "{err}");
        assert!(err.to_string().contains(&layer.to_string()), "{err}");

        // A skopeo docker-archive with a byte flipped inside a layer: the diff_id check catches it.
        let tar_bytes = std::fs::read(&archive).expect("read");
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let mut offset = None;
        for e in a.entries().expect("entries") {
            let e = e.expect("entry");
            let p = e.path().expect("path").display().to_string();
            if p.ends_with(".tar") && e.size() > 4096 {
                offset = Some(e.raw_file_position() + e.size() / 2);
                break;
            }
        }
        let offset = usize::try_from(offset.expect("a layer in the archive")).expect("offset");
        let mut tampered = tar_bytes.clone();
        tampered[offset] ^= 0x55;
        let err =
            DockerArchive::read(&tampered[..], tmp.path(), "tampered.tar").expect_err("tampered");
        assert!(matches!(err, ArchiveError::Digest { .. }), "{err}");
        assert!(err.to_string().contains("tampered.tar"), "{err}");
    }
}

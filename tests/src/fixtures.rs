//! Test images and tools shared by the end-to-end tests: busybox root filesystems from
//! Debian's busybox-static, umoci-made OCI layouts, and checked command runs.

use anyhow::{ensure, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails (never skips silently) when a tool a test needs is not installed.
pub fn need(tool: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()?
        .status
        .success();
    ensure!(
        found,
        "{tool} is not installed; this test needs it (docker-compose-free-scripts/setup.sh installs it)"
    );
    Ok(())
}

/// Fails unless running as root; says why the test needs it.
pub fn need_root(why: &str) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root: {why}"
    );
    Ok(())
}

/// Fails unless containers can run here: root (namespaces, cgroups, overlay mounts)
/// and Debian's busybox-static, which the test images are built from; then every tool
/// in `tools` (e.g. `nft`, `ip` for network tests).
pub fn need_containers(tools: &[&str]) -> anyhow::Result<()> {
    need_root("containers need namespaces, cgroups and overlay mounts")?;
    ensure!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is not installed; this test needs it (Debian busybox-static; docker-compose-free-scripts/setup.sh installs it)"
    );
    for tool in tools {
        need(tool)?;
    }
    Ok(())
}

/// Runs a command; fails with its output when it fails. Returns stdout.
pub fn ok(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A root filesystem tarball: busybox-static with an applet symlink for each applet
/// (what `busybox --install -s` makes), plus `extra` files.
pub fn busybox_rootfs_tar(
    dir: &Path,
    name: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    need("busybox")?;
    let root = dir.join(format!("{name}-rootfs"));
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let list = ok(Command::new("/bin/busybox").arg("--list"))?;
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    for (path, content) in extra {
        let file = root.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
    }
    let tar = dir.join(format!("{name}.tar"));
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    Ok(tar)
}

/// An OCI layout made by umoci: tag `base` (busybox), and `a`, `b` each adding one
/// layer on top of the same base layer (with a whiteout of `/bin/sh`, a new file, a
/// file owned by 1000:1000 and a setuid file, so ownership and modes are exercised).
pub fn umoci_layout(dir: &Path) -> anyhow::Result<PathBuf> {
    need("umoci")?;
    let layout = dir.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    ok(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    ok(Command::new("umoci").args(["new", "--image", &image("base")]))?;
    let bundle = dir.join("bundle");
    ok(Command::new("umoci")
        .args(["unpack", "--image", &image("base")])
        .arg(&bundle))?;
    std::fs::create_dir_all(bundle.join("rootfs/bin"))?;
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/sh"))?;
    ok(Command::new("umoci")
        .args(["repack", "--image", &image("base")])
        .arg(&bundle))?;
    ok(Command::new("umoci").args([
        "config",
        "--image",
        &image("base"),
        "--config.cmd",
        "/bin/sh",
    ]))?;
    for tag in ["a", "b"] {
        std::fs::remove_dir_all(&bundle)?;
        ok(Command::new("umoci")
            .args(["unpack", "--image", &image("base")])
            .arg(&bundle))?;
        let added = bundle.join(format!("rootfs/{tag}"));
        std::fs::write(&added, tag)?;
        let home = bundle.join(format!("rootfs/home/{tag}"));
        std::fs::create_dir_all(&home)?;
        std::fs::write(home.join("owned"), "mine")?;
        nix::unistd::chown(
            &home.join("owned"),
            Some(nix::unistd::Uid::from_raw(1000)),
            Some(nix::unistd::Gid::from_raw(1000)),
        )?;
        std::fs::write(bundle.join(format!("rootfs/bin/suid-{tag}")), "#!/bin/sh\n")?;
        std::fs::set_permissions(
            bundle.join(format!("rootfs/bin/suid-{tag}")),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )?;
        std::fs::remove_file(bundle.join("rootfs/bin/sh"))?;
        ok(Command::new("umoci")
            .args(["repack", "--image", &image(tag)])
            .arg(&bundle))?;
    }
    std::fs::remove_dir_all(&bundle)?;
    Ok(layout)
}

/// `skopeo copy oci:LAYOUT:TAG docker-archive:FILE:NAME`: a docker-archive made by
/// another tool, for `berth load`.
pub fn skopeo_archive(layout: &Path, tag: &str, file: &Path, name: &str) -> anyhow::Result<()> {
    need("skopeo")?;
    ok(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker-archive:{}:{name}", file.display()),
    ]))?;
    Ok(())
}

//! A container that builds a 25,000-level directory tree: removing it (`rm`,
//! and `run --rm`) works, the executor survives it, and `run --rm` exits with
//! the container's own code. The executor used to die of a stack overflow in
//! std's recursive `remove_dir_all`, and `run --rm` then exited 0.

use berth_tests::cli::{eventually, CliEnv};
use berth_tests::fixtures::need_containers;
use berth_tests::Stack;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NODE: &str = "node-deep";
const IMAGE: &str = "busybox:deep";
const SERVICES: [&str; 4] = [
    "berth-image-store",
    "berth-layer-unpacker",
    "berth-scheduler",
    "berth-executor",
];

/// 25 × a 1,000-level `mkdir -p` with the tree so far moved to its bottom
/// (relative paths stay under PATH_MAX; the tree's own paths do not): 25,025
/// levels in seconds, where the one-level `mv` loop takes minutes.
const BUILD_DEEP: &str = "cd /tmp && mkdir deep && P=d && i=1 && \
    while [ $i -lt 1000 ]; do P=$P/d; i=$((i+1)); done && \
    n=0 && while [ $n -lt 25 ]; do \
    mkdir -p new/$P && mv deep new/$P/deep && mv new deep || exit 1; n=$((n+1)); done && \
    echo built";

/// A rootfs tarball: /bin/busybox with its applet links.
fn busybox_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    let tar = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    anyhow::ensure!(status.success(), "tar failed: {status}");
    Ok(tar)
}

/// The executor's log, for failure messages.
fn executor_log(env: &CliEnv) -> String {
    env.stack
        .services
        .iter()
        .filter(|s| s.name == "berth-executor" || s.name == "berth-scheduler")
        .filter_map(|s| std::fs::read_to_string(&s.log).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The executor process is still running (not exited, not a zombie).
fn executor_alive(env: &CliEnv) -> bool {
    let Some(pid) = env
        .stack
        .services
        .iter()
        .find(|s| s.name == "berth-executor")
        .and_then(|s| s.pid())
    else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[tokio::test]
async fn a_25000_level_tree_is_removed_and_the_executor_survives() -> anyhow::Result<()> {
    need_containers(&[])?;
    let stack = Stack::start(&SERVICES, NODE).await?;
    let env = CliEnv::import(stack, IMAGE, &[], busybox_tar)?;

    // `rm` of a stopped container holding the tree.
    let id = env.run_d(&[], &["sh", "-c", BUILD_DEEP])?;
    assert_eq!(env.stdout(&["wait", &id])?, "0\n", "the tree was not built");
    assert_eq!(env.stdout(&["logs", &id])?, "built\n");
    let rm = env.berth(&["rm", &id])?;
    assert!(
        rm.status.success(),
        "rm failed: {}\nexecutor alive: {}\nlogs:\n{}",
        String::from_utf8_lossy(&rm.stderr),
        executor_alive(&env),
        executor_log(&env)
    );
    assert!(executor_alive(&env), "the executor died removing the tree");
    assert!(env.stdout(&["ps", "-a", "-q"])?.trim().is_empty());

    // `run --rm`: the container's own exit code, after the removal.
    let (code, out, err) = env.run_rm(&[], &["sh", "-c", &format!("{BUILD_DEEP}; exit 7")])?;
    assert_eq!((code, out.as_str()), (7, "built\n"), "{err}");
    assert!(executor_alive(&env), "the executor died removing the tree");
    assert!(env.stdout(&["ps", "-a", "-q"])?.trim().is_empty());

    // And it still runs containers.
    let (code, out, _) = env.run_rm(&[], &["echo", "still here"])?;
    assert_eq!((code, out.as_str()), (0, "still here\n"));

    // The executor deletes the trees after answering. Wait for it: the stack's temp dir
    // is removed with std's recursive remove_dir_all, which a tree left there would
    // overflow in this test process.
    let containers = env.stack.data_dir().join("containers");
    let trash_left = || {
        std::fs::read_dir(&containers).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
        })
    };
    assert!(
        eventually(Duration::from_secs(300), || !trash_left()),
        "the executor did not finish deleting the trees in {}",
        containers.display()
    );
    Ok(())
}

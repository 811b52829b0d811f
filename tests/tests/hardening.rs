//! Regression tests for the rough edges hostile and interop testing found (issue 20):
//! a closed stdout, `--rm` noise, the executor leaving its bridge and nftables table at
//! `down.sh`, and an OCI archive whose ref name is a bare image name.
//!
//! Needs root (containers, bridges, nftables), busybox-static, umoci and skopeo.

use anyhow::{ensure, Context};
use berth_proto::subjects::service_names;
use berth_tests::cli::{eventually, CliEnv};
use berth_tests::fixtures::{busybox_rootfs_tar, need, need_root, ok, umoci_layout};
use berth_tests::Stack;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "busybox:hardening";

async fn start(node: &str) -> anyhow::Result<CliEnv> {
    need_root("containers need namespaces, cgroups and overlay mounts")?;
    need("busybox")?;
    let stack = Stack::start(&service_names::ALL, node).await?;
    CliEnv::import(stack, IMAGE, &[], |dir: &Path| -> anyhow::Result<PathBuf> {
        busybox_rootfs_tar(dir, "hardening", &[])
    })
}

/// Runs `berth args…` with its stdout a pipe whose reader is already gone.
fn with_closed_stdout(env: &CliEnv, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe()?;
    drop(read_end);
    let output = env
        .stack
        .berth()?
        .args(args)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn a_closed_stdout_ends_the_cli_quietly_with_141() -> anyhow::Result<()> {
    let env = start("node-pipe").await?;
    let id = env.run_d(&[], &["sleep", "600"])?;
    for args in [
        vec!["ps", "-a"],
        vec!["images"],
        vec!["inspect", id.as_str()],
        vec!["image", "inspect", IMAGE],
        vec!["history", IMAGE],
        vec!["logs", id.as_str()],
        vec!["exec", id.as_str(), "echo", "out"],
    ] {
        let (code, stderr) = with_closed_stdout(&env, &args)?;
        ensure!(
            !stderr.contains("panicked"),
            "berth {args:?} panicked on a closed stdout: {stderr}"
        );
        // `logs` of a container that printed nothing writes nothing: success is right.
        ensure!(
            code == Some(141) || (code == Some(0) && args[0] == "logs"),
            "berth {args:?} exited {code:?} on a closed stdout: {stderr}"
        );
    }
    env.remove(&[&id]);
    Ok(())
}

#[tokio::test]
async fn run_rm_logs_no_warning() -> anyhow::Result<()> {
    let env = start("node-rm").await?;
    for code in [0, 3] {
        let output = env.berth(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            &format!("echo hi; exit {code}"),
        ])?;
        ensure!(
            output.status.code() == Some(code),
            "run --rm exited {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    ensure!(
        env.ok(&["ps", "-aq"])?.is_empty(),
        "--rm left containers behind"
    );
    let executor = env
        .stack
        .services
        .iter()
        .find(|s| s.name == service_names::EXECUTOR)
        .context("no executor in the stack")?;
    let log = std::fs::read_to_string(&executor.log)?;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("auto-remove failed"))
        .collect();
    ensure!(warnings.is_empty(), "executor warnings: {warnings:#?}");
    Ok(())
}

fn link_exists(name: &str) -> anyhow::Result<bool> {
    Ok(Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

fn nft_table_exists(table: &str) -> anyhow::Result<bool> {
    Ok(Command::new("nft")
        .args(["list", "table", "ip", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

async fn stop_executor(env: &mut CliEnv) -> anyhow::Result<()> {
    let executor = env
        .stack
        .services
        .iter_mut()
        .find(|s| s.name == service_names::EXECUTOR)
        .context("no executor in the stack")?;
    let status = executor.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "executor exited with {status}");
    env.stack
        .services
        .retain(|s| s.name != service_names::EXECUTOR);
    Ok(())
}

/// `down.sh` stops the executor with SIGTERM: the node's bridge and berth's nftables
/// table go with it unless a running container still uses them.
#[tokio::test]
async fn stopping_the_executor_takes_down_the_networking_nothing_runs_on() -> anyhow::Result<()> {
    need("nft")?;
    need("ip")?;
    let mut env = start("node-down").await?;
    let bridge = env.stack.net.bridge();
    let table = env.stack.net.nft_table();
    // A published port puts rules in the table.
    let id = env.run_d(&["-p", "127.0.0.1::80"], &["sleep", "600"])?;
    ensure!(
        link_exists(&bridge)?,
        "no bridge {bridge} while a container runs"
    );
    ensure!(
        nft_table_exists(&table)?,
        "no nft table {table} with a port published"
    );

    // A running container keeps both.
    stop_executor(&mut env).await?;
    ensure!(
        link_exists(&bridge)?,
        "the bridge of a running container was removed"
    );
    ensure!(
        nft_table_exists(&table)?,
        "the table of a running container was removed"
    );

    env.stack.start_service(service_names::EXECUTOR).await?;
    env.ok(&["rm", "-f", &id])?;
    stop_executor(&mut env).await?;
    ensure!(
        !link_exists(&bridge)?,
        "bridge {bridge} left after the executor stopped"
    );
    ensure!(
        !nft_table_exists(&table)?,
        "nft table {table} left after the executor stopped"
    );

    // The next start brings the network back.
    env.stack.start_service(service_names::EXECUTOR).await?;
    ensure!(
        eventually(Duration::from_secs(10), || link_exists(&bridge)
            .unwrap_or(false)),
        "bridge {bridge} not back after a restart"
    );
    let output = env.ok(&["run", "--rm", IMAGE, "echo", "back"])?;
    ensure!(output == "back", "{output}");
    Ok(())
}

/// `docker load` of an OCI archive whose `org.opencontainers.image.ref.name` is a bare
/// name (`fromoa`) loads it as `fromoa:latest`; berth loaded it untagged.
#[tokio::test]
async fn an_oci_archive_with_a_bare_ref_name_loads_under_that_name() -> anyhow::Result<()> {
    need_root("umoci keeps file owners")?;
    need("skopeo")?;
    let stack = Stack::start(&[service_names::IMAGE_STORE], "node-oci").await?;
    let scratch = tempfile::tempdir()?;
    let layout = umoci_layout(scratch.path())?;
    let archive = scratch.path().join("fromoa.tar");
    ok(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{}:base", layout.display()),
        &format!("oci-archive:{}:fromoa", archive.display()),
    ]))?;
    let mut load = stack.berth()?;
    load.args(["load", "-i", &archive.display().to_string()]);
    let loaded = ok(&mut load)?;
    ensure!(loaded.contains("fromoa:latest"), "load said: {loaded}");
    let mut listed = stack.berth()?;
    listed.args(["image", "inspect", "fromoa:latest"]);
    ok(&mut listed).context("fromoa:latest is not a name of the loaded image")?;
    Ok(())
}

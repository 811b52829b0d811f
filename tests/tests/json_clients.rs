//! The bus as a foreign client without bincode sees it, as root on a real stack: live
//! logs in JSON (`berth.v1.logs_json.<id>`, bytes in base64) and the Python example
//! client in examples/python run against it.

use berth_bus::request;
use berth_proto::messages::exec::ContainerCreateRequest;
use berth_proto::messages::exec::LogChunk;
use berth_proto::messages::sched::{SchedRunReply, SchedRunRequest};
use berth_proto::subjects::{self, SchedVerb};
use berth_proto::Encoding;
use berth_tests::cli::CliEnv;
use berth_tests::{fixtures, workspace_root, Stack, ALL_SERVICES};
use futures::StreamExt;
use std::path::PathBuf;
use std::time::Duration;

const NODE: &str = "node-api";
const IMAGE: &str = "busybox:api";
const DEADLINE: Duration = Duration::from_secs(60);

async fn start() -> anyhow::Result<CliEnv> {
    fixtures::need_root("containers need namespaces, cgroups and overlay mounts")?;
    let stack = Stack::start(&ALL_SERVICES, NODE).await?;
    CliEnv::import(stack, IMAGE, &[], |dir| {
        fixtures::busybox_rootfs_tar(dir, "busybox", &[])
    })
}

/// The text of CRI lines (`<time> <stream> F <text>`) of one stream, joined with `\n`.
fn cri_text(data: &[u8], stream: &str) -> String {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (_time, s, _tag) = (parts.next()?, parts.next()?, parts.next()?);
            (s == stream).then(|| format!("{}\n", parts.next().unwrap_or("")))
        })
        .collect()
}

/// Collects chunks until the one with `eof`, returning all their data in order.
async fn until_eof(
    subscriber: &mut async_nats::Subscriber,
    decode: impl Fn(&[u8]) -> anyhow::Result<LogChunk>,
) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let message = tokio::time::timeout(DEADLINE, subscriber.next())
            .await
            .map_err(|_| anyhow::anyhow!("no log chunk with eof within {DEADLINE:?}"))?
            .ok_or_else(|| anyhow::anyhow!("log subscription closed"))?;
        let chunk = decode(&message.payload)?;
        anyhow::ensure!(
            chunk.offset == data.len() as u64,
            "chunk at offset {} after {} bytes",
            chunk.offset,
            data.len()
        );
        data.extend_from_slice(&chunk.data);
        if chunk.eof {
            return Ok(data);
        }
    }
}

#[tokio::test]
async fn live_logs_reach_a_json_subscriber_with_base64_data() -> anyhow::Result<()> {
    let env = start().await?;
    let client = env.stack.nats.client().await?;
    let id = format!(
        "{:064x}",
        0x4a50_u128 << 64 | u128::from(std::process::id())
    );
    // Subscribed before the container exists, so every line is seen live.
    let mut json = client.subscribe(subjects::logs_json(&id)).await?;
    let mut bincode = client.subscribe(subjects::logs(&id)).await?;
    // The bincode wildcards a CLI or operator may use carry bincode only.
    let mut wildcard = client
        .subscribe(format!("{}.logs.>", subjects::ROOT))
        .await?;
    let run = SchedRunRequest {
        id: Some(id.clone()),
        create: ContainerCreateRequest {
            image: IMAGE.into(),
            cmd: ["sh", "-c", "echo one; echo two >&2; echo three"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
        ..Default::default()
    };
    let placed: SchedRunReply = request(
        &client,
        &subjects::sched(SchedVerb::Run),
        &run,
        Encoding::Json,
        DEADLINE,
    )
    .await?;
    assert_eq!(placed.id, id);

    // A foreign client's view: plain JSON whose `data` is a base64 string.
    let from_json = until_eof(&mut json, |body| {
        let value: serde_json::Value = serde_json::from_slice(body)?;
        anyhow::ensure!(value["data"].is_string(), "data is not a string: {value}");
        anyhow::ensure!(value["id"] == id.as_str(), "chunk of another id: {value}");
        Ok(Encoding::Json.decode::<LogChunk>(body)?)
    })
    .await?;
    assert_eq!(cri_text(&from_json, "stdout"), "one\nthree\n");
    assert_eq!(cri_text(&from_json, "stderr"), "two\n");
    let from_bincode = until_eof(&mut bincode, |body| {
        Ok(Encoding::Bincode.decode::<LogChunk>(body)?)
    })
    .await?;
    assert_eq!(from_json, from_bincode, "both forms carry the same bytes");
    let from_wildcard = until_eof(&mut wildcard, |body| {
        Ok(Encoding::Bincode.decode::<LogChunk>(body)?)
    })
    .await?;
    assert_eq!(from_wildcard, from_bincode);
    env.remove(&[&id]);
    Ok(())
}

/// The example client's interpreter: the venv setup.sh makes, or `BERTH_PYCLIENT`.
fn python_client() -> anyhow::Result<(PathBuf, PathBuf)> {
    let venv = std::env::var_os("BERTH_PYCLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth/pyclient"));
    let python = venv.join("bin/python");
    anyhow::ensure!(
        python.is_file(),
        "{} is missing: the Python example client needs its venv with nats-py \
         (docker-compose-free-scripts/setup.sh makes it)",
        python.display()
    );
    let script = workspace_root().join("examples/python/berth_client.py");
    anyhow::ensure!(script.is_file(), "{} is missing", script.display());
    Ok((python, script))
}

#[tokio::test]
async fn the_python_example_client_runs_streams_waits_and_removes() -> anyhow::Result<()> {
    let (python, script) = python_client()?;
    let env = start().await?;
    let url = env.stack.nats.url();
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--server", &url, "--image", IMAGE, "--timeout", "60"])
        .args([
            "sh",
            "-c",
            "echo out one; echo err one >&2; echo out two; exit 3",
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .map_err(|_| anyhow::anyhow!("the Python client did not finish within 180 s"))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(output.status.code(), Some(3), "{context}");
    assert_eq!(stdout, "out one\nout two\n", "{context}");
    assert!(stderr.contains("\nerr one\n"), "{context}");
    for service in ALL_SERVICES {
        assert!(
            stderr.contains(&format!("# service {service} ")),
            "{context}"
        );
    }
    assert!(stderr.contains(&format!("node={NODE}")), "{context}");
    assert!(stderr.contains("# exit code 3"), "{context}");
    assert!(stderr.contains("# removed "), "{context}");
    // Removed: nothing is left on the node or in the scheduler's records.
    assert_eq!(env.ok(&["ps", "-a", "-q"])?, "", "{context}");
    Ok(())
}

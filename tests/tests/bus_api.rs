//! The bus as a foreign client sees it: micro conventions ($SRV.STATS, error headers),
//! errors that are safe to print and never too large to send, JSON forms, schemas and
//! blocking verbs with a timeout.

use anyhow::{ensure, Context};
use berth_bus::request::raw_request;
use berth_proto::codec::{BERTH_ERROR_HEADER, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use berth_proto::error::MAX_ERROR_MESSAGE_BYTES;
use berth_proto::subjects::{self, micro, service_names, ImageVerb};
use berth_proto::{Encoding, ErrorEnvelope, ErrorKind};
use berth_tests::Stack;
use std::time::Duration;

const NODE: &str = "node-bus";
const STORE: &str = service_names::IMAGE_STORE;
/// Well under any caller's deadline: a bounded error must come back at once.
const DEADLINE: Duration = Duration::from_secs(10);

/// One instance's `$SRV.STATS` reply for `service`.
async fn stats(client: &async_nats::Client, service: &str) -> anyhow::Result<serde_json::Value> {
    let reply = client
        .request(micro::stats(service), bytes::Bytes::new())
        .await
        .with_context(|| format!("$SRV.STATS of {service}"))?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// `num_errors` and `last_error` of one endpoint in a `$SRV.STATS` reply.
fn endpoint_errors(stats: &serde_json::Value, endpoint: &str) -> anyhow::Result<(u64, String)> {
    let entry = stats["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["name"] == endpoint))
        .with_context(|| format!("no endpoint {endpoint} in {stats}"))?;
    Ok((
        entry["num_errors"].as_u64().unwrap_or(0),
        entry["last_error"].as_str().unwrap_or_default().to_string(),
    ))
}

fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str().to_string())
}

#[tokio::test]
async fn error_replies_count_in_stats_and_carry_micro_and_berth_headers() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let client = stack.nats.client().await?;
    let (before, _) = endpoint_errors(&stats(&client, STORE).await?, "inspect")?;
    ensure!(before == 0, "a fresh service counts {before} errors");

    let subject = subjects::image(ImageVerb::Inspect);
    for encoding in [Encoding::Json, Encoding::Bincode] {
        let body = encoding.encode(&serde_json::json!({"name": "nosuch:1"}));
        let body = match encoding {
            Encoding::Json => body?,
            // bincode of ImageInspectRequest { name } is the string alone.
            Encoding::Bincode => encoding.encode(&"nosuch:1".to_string())?,
        };
        let reply = raw_request(&client, &subject, body.into(), encoding, DEADLINE).await?;
        ensure!(
            header(&reply, SERVICE_ERROR_CODE_HEADER).as_deref() == Some("404"),
            "{:?}",
            reply.headers
        );
        ensure!(
            header(&reply, BERTH_ERROR_HEADER).as_deref() == Some("not_found"),
            "{:?}",
            reply.headers
        );
        let description = header(&reply, SERVICE_ERROR_HEADER).unwrap_or_default();
        ensure!(description.contains("nosuch:1"), "{description:?}");
        let envelope: ErrorEnvelope = encoding.decode(&reply.payload)?;
        ensure!(envelope.code == ErrorKind::NotFound, "{envelope:?}");
        ensure!(
            envelope.message == description,
            "{envelope:?} vs {description:?}"
        );
    }

    let (after, last_error) = endpoint_errors(&stats(&client, STORE).await?, "inspect")?;
    ensure!(after == 2, "num_errors is {after} after two error replies");
    ensure!(last_error.contains("nosuch:1"), "last_error {last_error:?}");
    Ok(())
}

#[tokio::test]
async fn a_300_kb_name_gets_a_prompt_bounded_error_not_a_timeout() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let client = stack.nats.client().await?;
    let name = format!("big{}", "x".repeat(300_000));
    for (verb, body) in [
        (ImageVerb::Inspect, serde_json::json!({ "name": name })),
        (
            ImageVerb::Tag,
            serde_json::json!({ "source": name, "target": name }),
        ),
        (ImageVerb::Remove, serde_json::json!({ "name": name })),
    ] {
        let subject = subjects::image(verb);
        let reply = raw_request(
            &client,
            &subject,
            serde_json::to_vec(&body)?.into(),
            Encoding::Json,
            DEADLINE,
        )
        .await
        .with_context(|| format!("{verb} with a 300 kB name"))?;
        let envelope: ErrorEnvelope = Encoding::Json
            .decode(&reply.payload)
            .with_context(|| format!("{verb}: reply is not an envelope"))?;
        ensure!(
            envelope.message.len() <= MAX_ERROR_MESSAGE_BYTES,
            "{verb}: {} bytes of message",
            envelope.message.len()
        );
        ensure!(
            envelope.message.contains("bytes more)"),
            "{verb}: the cut is not said: {:.200}",
            envelope.message
        );
    }
    Ok(())
}

/// Deterministic noise (xorshift), so a failure can be reproduced.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn load_and_import_of_random_bytes_print_no_control_bytes() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let dir = tempfile::tempdir()?;
    let mut printed = 0;
    for seed in 1..=8u64 {
        let path = dir.path().join(format!("noise-{seed}.tar"));
        // A tar header is 512 bytes: a few blocks reach the header parser's complaints.
        std::fs::write(&path, noise(seed, 512 * 5))?;
        let path = path.display().to_string();
        for args in [
            vec!["load", "-i", path.as_str()],
            vec!["import", path.as_str(), "noise:1"],
        ] {
            let output = stack.berth()?.args(&args).output()?;
            ensure!(!output.status.success(), "berth {args:?} took noise");
            let stderr = &output.stderr;
            let body = stderr.strip_suffix(b"\n").unwrap_or(stderr);
            ensure!(
                !body.is_empty() && !body.iter().any(|b| b.is_ascii_control()),
                "berth {args:?} printed raw control bytes: {:?}",
                String::from_utf8_lossy(stderr)
            );
            ensure!(
                std::str::from_utf8(stderr).is_ok(),
                "berth {args:?} printed non-UTF-8: {stderr:?}"
            );
            printed += 1;
        }
    }
    ensure!(printed == 16);
    Ok(())
}

/// Sends a JSON body and returns the error envelope it must get.
async fn json_error(
    client: &async_nats::Client,
    subject: &str,
    body: &'static [u8],
) -> anyhow::Result<ErrorEnvelope> {
    let reply = raw_request(client, subject, body.into(), Encoding::Json, DEADLINE).await?;
    ensure!(
        header(&reply, BERTH_ERROR_HEADER).is_some(),
        "{subject} {:?}: not an error reply: {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&reply.payload)
    );
    Ok(Encoding::Json.decode(&reply.payload)?)
}

#[tokio::test]
async fn json_requests_with_unknown_fields_or_arrays_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start(&[STORE], NODE).await?;
    let client = stack.nats.client().await?;
    let list = subjects::image(ImageVerb::List);
    // The typo used to list every image as if no filter were given.
    let typo = json_error(&client, &list, br#"{"repositry_prefix": "busy"}"#).await?;
    ensure!(typo.code == ErrorKind::Invalid, "{typo:?}");
    ensure!(typo.message.contains("repositry_prefix"), "{typo:?}");
    for body in [&b"[]"[..], b"[null]", b"7"] {
        let reply = raw_request(&client, &list, body.into(), Encoding::Json, DEADLINE).await?;
        let envelope: ErrorEnvelope = Encoding::Json.decode(&reply.payload)?;
        ensure!(
            envelope.code == ErrorKind::Invalid,
            "{body:?}: {envelope:?}"
        );
        ensure!(envelope.message.contains("JSON object"), "{envelope:?}");
    }
    // Well-formed requests still work, the empty body included.
    for body in [&b"{}"[..], b"", br#"{"repository_prefix": "busy"}"#] {
        let reply = raw_request(&client, &list, body.into(), Encoding::Json, DEADLINE).await?;
        ensure!(
            header(&reply, BERTH_ERROR_HEADER).is_none(),
            "{:?}: {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&reply.payload)
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_nested_array_in_place_of_an_object_is_refused_naming_its_path() -> anyhow::Result<()> {
    use berth_proto::subjects::SchedVerb;
    let stack = Stack::start(&[service_names::SCHEDULER], NODE).await?;
    let client = stack.nats.client().await?;
    let run = subjects::sched(SchedVerb::Run);
    // serde would read `create` by position: `["busybox"]` is a create request for image
    // busybox with every other field defaulted, past the unknown-field check.
    for (body, path) in [
        (&br#"{"create": ["busybox"]}"#[..], "$.create"),
        (
            br#"{"create": {"image": "busybox", "binds": [["/a", "/b"]]}}"#,
            "$.create.binds[0]",
        ),
    ] {
        let envelope = json_error(&client, &run, body).await?;
        ensure!(envelope.code == ErrorKind::Invalid, "{envelope:?}");
        ensure!(
            envelope.message.contains(&format!("{path}: "))
                && envelope.message.contains("not an array"),
            "{}: {envelope:?}",
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

#[tokio::test]
async fn wait_takes_a_timeout_and_json_logs_carry_base64() -> anyhow::Result<()> {
    use berth_proto::subjects::ExecVerb;
    use berth_tests::cli::CliEnv;
    use berth_tests::fixtures::{busybox_rootfs_tar, need_root};
    need_root("containers need namespaces, cgroups and overlay mounts")?;
    let stack = Stack::start(&berth_tests::ALL_SERVICES, NODE).await?;
    let env = CliEnv::import(stack, "busybox:bus", &[], |dir| {
        busybox_rootfs_tar(dir, "busybox", &[])
    })?;
    let client = env.stack.nats.client().await?;
    let wait = subjects::exec(NODE, ExecVerb::Wait);

    let id = env.run_d(&[], &["sh", "-c", "echo hello-bus; sleep 600"])?;
    let body = serde_json::to_vec(&serde_json::json!({"id": id, "timeout_ms": 300}))?;
    let reply = raw_request(&client, &wait, body.into(), Encoding::Json, DEADLINE)
        .await
        .context("wait with timeout_ms=300 must answer before the caller's deadline")?;
    let envelope: ErrorEnvelope = Encoding::Json.decode(&reply.payload)?;
    ensure!(envelope.code == ErrorKind::Unavailable, "{envelope:?}");
    ensure!(envelope.message.contains("timeout_ms"), "{envelope:?}");

    // Logs in JSON: the bytes are one base64 string, not an array of numbers.
    let logs = subjects::exec(NODE, ExecVerb::Logs);
    let body = serde_json::to_vec(&serde_json::json!({ "id": id }))?;
    let mut seen = String::new();
    for _ in 0..50 {
        let reply = raw_request(
            &client,
            &logs,
            body.clone().into(),
            Encoding::Json,
            DEADLINE,
        )
        .await?;
        let page: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let data = page["data"]
            .as_str()
            .with_context(|| format!("logs data is not a string: {page}"))?;
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(data)?;
        seen = String::from_utf8_lossy(&decoded).into_owned();
        if seen.contains("hello-bus") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        seen.contains("hello-bus"),
        "logs never showed the output: {seen:?}"
    );

    // exec with timeout_ms: the reply comes at the timeout; the process runs on, its
    // output (JSON, as the request was) still arrives, and exec_die carries its exit.
    use futures::StreamExt;
    let output = format!("test.exec_output.{id}");
    let mut pieces = client.subscribe(output.clone()).await?;
    let mut events = client
        .subscribe(subjects::event(
            subjects::EventKind::Container,
            &id,
            "exec_die",
        ))
        .await?;
    let exec = subjects::exec(NODE, ExecVerb::Exec);
    let body = serde_json::to_vec(&serde_json::json!({
        "id": id, "cmd": ["sh", "-c", "sleep 1; echo exec-done; exit 3"],
        "output": output, "timeout_ms": 200
    }))?;
    let reply = raw_request(&client, &exec, body.into(), Encoding::Json, DEADLINE).await?;
    let envelope: ErrorEnvelope = Encoding::Json.decode(&reply.payload)?;
    ensure!(envelope.code == ErrorKind::Unavailable, "{envelope:?}");
    ensure!(envelope.message.contains("timeout_ms=200"), "{envelope:?}");
    let mut printed = Vec::new();
    loop {
        let piece = tokio::time::timeout(DEADLINE, pieces.next())
            .await
            .context("exec output after the timeout reply")?
            .context("output subscription ended")?;
        let piece: serde_json::Value = serde_json::from_slice(&piece.payload)
            .context("exec output of a JSON request is JSON")?;
        use base64::Engine;
        let data = piece["data"].as_str().context("data is a base64 string")?;
        printed.extend(base64::engine::general_purpose::STANDARD.decode(data)?);
        if piece["eof"] == true {
            break;
        }
    }
    ensure!(
        String::from_utf8_lossy(&printed).contains("exec-done"),
        "{printed:?}"
    );
    let died = tokio::time::timeout(DEADLINE, events.next())
        .await
        .context("exec_die event")?
        .context("event subscription ended")?;
    let died: berth_proto::messages::exec::ContainerEvent = Encoding::Bincode
        .decode(&died.payload)
        .or_else(|_| Encoding::Json.decode(&died.payload))?;
    ensure!(died.exit_code == Some(3), "{died:?}");

    env.ok(&["kill", &id])?;
    let body = serde_json::to_vec(&serde_json::json!({"id": id, "timeout_ms": 8000}))?;
    let reply = raw_request(&client, &wait, body.into(), Encoding::Json, DEADLINE).await?;
    let exit: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    ensure!(exit["exit_code"] == 137, "{exit}");
    Ok(())
}

#[tokio::test]
async fn every_endpoint_has_its_schemas_in_info_and_from_berth_v1_schema() -> anyhow::Result<()> {
    use futures::StreamExt;
    let stack = Stack::start(&berth_tests::ALL_SERVICES, NODE).await?;
    let client = stack.nats.client().await?;

    // $SRV.INFO: each instance of each service, every endpoint with both schemas.
    let mut served = Vec::new();
    for service in berth_tests::ALL_SERVICES {
        let reply = client
            .request(micro::info(service), bytes::Bytes::new())
            .await
            .with_context(|| format!("$SRV.INFO of {service}"))?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let endpoints = info["endpoints"]
            .as_array()
            .with_context(|| format!("{service}: no endpoints in {info}"))?;
        ensure!(!endpoints.is_empty(), "{service} serves nothing");
        for endpoint in endpoints {
            let name = endpoint["name"].as_str().unwrap_or_default();
            for key in ["request_schema", "response_schema"] {
                let text = endpoint["metadata"][key]
                    .as_str()
                    .with_context(|| format!("{service}/{name}: no {key}"))?;
                let schema: serde_json::Value = serde_json::from_str(text)
                    .with_context(|| format!("{service}/{name}: {key} is not JSON"))?;
                ensure!(
                    schema.get("$schema").is_some() || schema.get("type").is_some(),
                    "{service}/{name}: {key} is not a JSON Schema: {text:.200}"
                );
            }
            served.push(format!("{service}/{name}"));
        }
    }
    // The typo case of the list request is described: its properties are known.
    ensure!(
        served.iter().any(|e| e == "berth-image-store/list"),
        "{served:?}"
    );

    // berth.v1.schema: every instance answers with all its endpoints.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subjects::schema(), inbox, bytes::Bytes::new())
        .await?;
    let mut from_verb = Vec::new();
    let mut services = Vec::new();
    while services.len() < berth_tests::ALL_SERVICES.len() {
        let reply = tokio::time::timeout(DEADLINE, replies.next())
            .await
            .with_context(|| format!("berth.v1.schema: only {services:?} answered"))?
            .context("subscription closed")?;
        let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let service = body["service"].as_str().unwrap_or_default().to_string();
        ensure!(body["error"].is_object(), "{service}: no error schema");
        for endpoint in body["endpoints"].as_array().into_iter().flatten() {
            ensure!(
                endpoint["request"].is_object() && endpoint["response"].is_object(),
                "{service}: {endpoint}"
            );
            from_verb.push(format!(
                "{service}/{}",
                endpoint["name"].as_str().unwrap_or_default()
            ));
        }
        services.push(service);
    }
    served.sort();
    from_verb.sort();
    ensure!(
        served == from_verb,
        "$SRV.INFO {served:?} vs berth.v1.schema {from_verb:?}"
    );
    Ok(())
}

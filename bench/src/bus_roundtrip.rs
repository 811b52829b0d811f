//! Round trip of a trivial endpoint through shared/bus (bincode and JSON) next to a raw
//! async-nats request/reply, on the same nats-server in the same run.
//!
//! `cargo run --release -p berth-bench --bin bus-roundtrip -- [requests]`

use berth_bus::request::raw_request;
use berth_bus::{request, ServiceHandle, ServiceIdentity};
use berth_proto::{subjects, Encoding};
use berth_tests::NatsServer;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct Echo {
    id: u64,
    text: String,
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        mean: total / samples.len() as u32,
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5_000)
        .max(100);
    let server = NatsServer::start().await?;
    let service_client = server.client().await?;
    let client = server.client().await?;

    let mut service = ServiceHandle::start(
        &service_client,
        ServiceIdentity {
            name: "berth-bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: "bench".into(),
            description: "benchmark echo".into(),
            queue_group: "bench".into(),
        },
    )
    .await?;
    service
        .endpoint(
            "echo",
            subjects::bench_echo(),
            |body: Echo, _ctx| async move { Ok::<_, berth_proto::ErrorEnvelope>(body) },
        )
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(service.serve_until(async move {
        let _ = stop_rx.await;
    }));

    let mut raw = service_client.subscribe(subjects::bench_echo_raw()).await?;
    let raw_client = service_client.clone();
    let raw_task = tokio::spawn(async move {
        while let Some(message) = raw.next().await {
            if let Some(reply) = message.reply {
                let _ = raw_client.publish(reply, message.payload).await;
            }
        }
    });

    let body = Echo {
        id: 42,
        text: "hello berth".into(),
    };
    let deadline = Duration::from_secs(5);
    let raw_payload: bytes::Bytes = Encoding::Bincode.encode(&body)?.into();

    // Warm up every path, then measure them interleaved so drift hits all alike.
    for _ in 0..200 {
        let _: Echo = request(
            &client,
            &subjects::bench_echo(),
            &body,
            Encoding::Bincode,
            deadline,
        )
        .await?;
        let _: Echo = request(
            &client,
            &subjects::bench_echo(),
            &body,
            Encoding::Json,
            deadline,
        )
        .await?;
        raw_request(
            &client,
            &subjects::bench_echo_raw(),
            raw_payload.clone(),
            Encoding::Bincode,
            deadline,
        )
        .await?;
    }
    let (mut bincode_samples, mut json_samples, mut raw_samples) = (
        Vec::with_capacity(requests),
        Vec::with_capacity(requests),
        Vec::with_capacity(requests),
    );
    for _ in 0..requests {
        let start = Instant::now();
        let _: Echo = request(
            &client,
            &subjects::bench_echo(),
            &body,
            Encoding::Bincode,
            deadline,
        )
        .await?;
        bincode_samples.push(start.elapsed());

        let start = Instant::now();
        let _: Echo = request(
            &client,
            &subjects::bench_echo(),
            &body,
            Encoding::Json,
            deadline,
        )
        .await?;
        json_samples.push(start.elapsed());

        let start = Instant::now();
        client
            .request(subjects::bench_echo_raw(), raw_payload.clone())
            .await?;
        raw_samples.push(start.elapsed());
    }
    let _ = stop_tx.send(());
    served.await??;
    raw_task.abort();

    let raw = summarize(raw_samples);
    println!("bus round trip, {requests} sequential requests each, same nats-server, interleaved");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>12}",
        "path", "p50 µs", "p99 µs", "mean µs", "p50 vs raw"
    );
    for (name, summary) in [
        ("raw async-nats", &raw),
        ("shared/bus bincode", &summarize(bincode_samples)),
        ("shared/bus JSON", &summarize(json_samples)),
    ] {
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>11.2}x",
            name,
            micros(summary.p50),
            micros(summary.p99),
            micros(summary.mean),
            summary.p50.as_secs_f64() / raw.p50.as_secs_f64()
        );
    }
    Ok(())
}

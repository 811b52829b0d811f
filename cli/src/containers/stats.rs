//! `stats`: CPU, memory and pids from the container's cgroup, streamed by default.

use super::*;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Print one sample and exit.
    #[arg(long)]
    pub(super) no_stream: bool,
    /// Containers (default: every running one).
    pub(super) containers: Vec<String>,
}

/// Docker's CPU %: container CPU time over wall time between two samples, times 100.
pub fn cpu_percent(before: &ContainerStats, after: &ContainerStats) -> f64 {
    let cpu = after.cpu_usage_ns.saturating_sub(before.cpu_usage_ns) as f64;
    let wall = after.read_ns.saturating_sub(before.read_ns) as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    cpu / wall * 100.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

pub(super) async fn stats(
    args: StatsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let target = match args.containers.first() {
        Some(first) => {
            Target::for_container(nats, &args.node, first, timeout)
                .await?
                .0
        }
        None => Target::connect(nats, &args.node, timeout).await?,
    };
    let ids = if args.containers.is_empty() {
        let list: ContainerList = target
            .call(ExecVerb::List, &ContainerListRequest { all: false }, None)
            .await
            .map_err(failure)?;
        list.containers.into_iter().map(|c| c.id).collect()
    } else {
        args.containers.clone()
    };
    let sample = |ids: Vec<String>| {
        let target = &target;
        async move {
            let mut out = Vec::new();
            for id in ids {
                let stats: ContainerStats = target
                    .call(ExecVerb::Stats, &ContainerRef { id }, None)
                    .await
                    .map_err(failure)?;
                out.push(stats);
            }
            Ok::<_, Failure>(out)
        }
    };
    let mut before = sample(ids.clone()).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = sample(ids.clone()).await?;
        outln!(
            "{:<12}  {:<20}  {:>7}  {:>22}  {:>5}",
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "PIDS"
        );
        for (b, a) in before.iter().zip(&after) {
            let limit = a.memory_limit.map_or_else(|| "-".to_string(), mib);
            outln!(
                "{:<12}  {:<20}  {:>6.2}%  {:>22}  {:>5}",
                &a.id[..a.id.len().min(12)],
                a.name,
                cpu_percent(b, a),
                format!("{} / {limit}", mib(a.memory_usage)),
                a.pids
            );
        }
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let at = |read_ns, cpu_usage_ns| ContainerStats {
            id: "x".into(),
            name: "x".into(),
            read_ns,
            cpu_usage_ns,
            online_cpus: 2,
            memory_usage: 0,
            memory_limit: None,
            pids: 1,
        };
        let pct = cpu_percent(&at(0, 0), &at(1_000_000_000, 500_000_000));
        assert!((pct - 50.0).abs() < 1e-9, "{pct}");
        assert_eq!(cpu_percent(&at(5, 0), &at(5, 10)), 0.0);
    }
}

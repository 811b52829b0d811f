//! `create` and `run` flags, and the create request they make.

use super::*;

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Container name.
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Environment variable KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    pub(super) env: Vec<String>,
    /// Overrides the image's entrypoint ("" clears it).
    #[arg(long)]
    pub(super) entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub(super) workdir: Option<String>,
    /// user[:group], by name or number.
    #[arg(short = 'u', long)]
    pub(super) user: Option<String>,
    #[arg(long)]
    pub(super) hostname: Option<String>,
    /// Memory limit (bytes, or with k, m, g suffix).
    #[arg(short = 'm', long, value_parser = parse_size)]
    pub(super) memory: Option<i64>,
    /// CPU limit (0.5 = half a CPU).
    #[arg(long)]
    pub(super) cpus: Option<f64>,
    #[arg(long)]
    pub(super) pids_limit: Option<i64>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub(super) read_only: bool,
    /// bridge (the node's default network), none, host, or a user network's name.
    #[arg(long, default_value = "bridge", value_parser = parse_network)]
    pub(super) network: NetworkMode,
    /// Another name on the user network (repeatable).
    #[arg(long = "network-alias")]
    pub(super) network_alias: Vec<String>,
    /// Publish a port: [hostIP:][hostPort:]containerPort[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub(super) publish: Vec<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub(super) publish_all: bool,
    /// Bind mount /host:/container[:ro|rw] (repeatable).
    #[arg(short = 'v', long = "volume", value_parser = parse_bind)]
    pub(super) volumes: Vec<Mount>,
    /// Every capability, no seccomp, no masked paths, the host's devices.
    #[arg(long)]
    pub(super) privileged: bool,
    /// Log rotation: max-size=SIZE, max-file=N (repeatable).
    #[arg(long = "log-opt", value_parser = parse_log_opt)]
    pub(super) log_opts: Vec<(String, String)>,

    /// Label key=value (repeatable).
    #[arg(short = 'l', long = "label")]
    pub(super) labels: Vec<String>,
    /// no, on-failure[:N], always or unless-stopped.
    #[arg(long, default_value = "no", value_parser = parse_restart)]
    pub(super) restart: RestartPolicy,
    #[arg(long)]
    pub(super) stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL.
    #[arg(long)]
    pub(super) stop_timeout: Option<u32>,
    /// Read KEY=value lines from a file (repeatable; -e wins).
    #[arg(long)]
    pub(super) env_file: Vec<std::path::PathBuf>,
    /// Memory + swap limit (-1: unlimited swap).
    #[arg(long, value_parser = parse_swap, allow_hyphen_values = true)]
    pub(super) memory_swap: Option<i64>,
    /// CPUs to run on (0-1, 0,2).
    #[arg(long)]
    pub(super) cpuset_cpus: Option<String>,
    /// Mount a tmpfs: /path[:options] (repeatable).
    #[arg(long)]
    pub(super) tmpfs: Vec<String>,
    /// Add a capability (repeatable; ALL for every one).
    #[arg(long)]
    pub(super) cap_add: Vec<String>,
    /// Drop a capability (repeatable; ALL for every one).
    #[arg(long)]
    pub(super) cap_drop: Vec<String>,
    /// no-new-privileges[=false] or seccomp=unconfined (repeatable).
    #[arg(long)]
    pub(super) security_opt: Vec<String>,
    /// name=soft[:hard], e.g. nofile=1024:2048 (repeatable).
    #[arg(long, value_parser = parse_ulimit)]
    pub(super) ulimit: Vec<Ulimit>,
    /// Keep stdin open: `run` sends the CLI's stdin, `attach` can later.
    #[arg(short = 'i', long)]
    pub(super) interactive: bool,
    /// Give the process a pseudo-terminal.
    #[arg(short = 't', long)]
    pub(super) tty: bool,
    /// Placement constraint node.labels.KEY==VALUE or node.labels.KEY!=VALUE (repeatable).
    #[arg(long = "constraint")]
    pub(super) constraints: Vec<String>,
    /// How long to wait, pending, for a node with room (30s, 2m, 1h; default the
    /// scheduler's, 5 minutes).
    #[arg(long, value_parser = parse_duration)]
    pub(super) wait_timeout: Option<Duration>,
    /// Image to run.
    pub(super) image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(super) command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub(super) detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub(super) rm: bool,
    #[command(flatten)]
    pub(super) attached: AttachedArgs,
    #[command(flatten)]
    pub(super) create: CreateArgs,
}

/// How an attached session behaves (`run`, `attach`).
#[derive(clap::Args, Debug)]
pub struct AttachedArgs {
    /// Keys that detach from a terminal and leave the container running (Docker's
    /// syntax: `ctrl-<a-z@[\]^_>` or single characters, comma-separated).
    #[arg(long, env = "BERTH_DETACH_KEYS", default_value = super::detach::DEFAULT)]
    pub(super) detach_keys: String,
    /// Pass the signals the CLI receives on to the container (not with -t: the
    /// terminal delivers ^C itself).
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub(super) sig_proxy: bool,
}

impl AttachedArgs {
    /// The detach sequence, or Docker's error for a bad one.
    pub(super) fn keys(&self) -> Result<Vec<u8>, Failure> {
        super::detach::parse(&self.detach_keys).map_err(Failure::berth)
    }
}

/// `30s`, `2m`, `1h30m`, `90` (seconds) → a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("invalid duration {text:?}: use 30s, 2m or 1h")),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: use 30s, 2m or 1h"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("invalid duration {text:?}: use 30s, 2m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

/// `64m` → 67108864.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use bytes or a k, m, g suffix"))?;
    if value <= 0.0 {
        return Err(format!("invalid size {text:?}: must be positive"));
    }
    Ok((value * unit as f64) as i64)
}

fn parse_network(text: &str) -> Result<NetworkMode, String> {
    match text {
        "" => Err("--network needs a value: bridge, none, host or a network name".into()),
        "bridge" | "default" => Ok(NetworkMode::Bridge),
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        other => Ok(NetworkMode::Named(other.to_string())),
    }
}

/// One `-v`: a host path, a named volume, or an anonymous volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    Bind(BindMount),
    Volume(VolumeMount),
}

/// `/host:/ctr[:ro|rw]` (bind), `NAME:/ctr[:ro|rw]` (named volume), `/ctr` (anonymous).
pub fn parse_bind(text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, destination, read_only) = match parts.as_slice() {
        [d] => ("", *d, false),
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => {
            return Err(format!(
                "invalid volume {text:?}: use /host:/container[:ro], NAME:/container[:ro] or /container"
            ))
        }
    };
    if !destination.starts_with('/') {
        return Err(format!(
            "invalid volume {text:?}: the container path must be absolute"
        ));
    }
    if source.starts_with('/') {
        return Ok(Mount::Bind(BindMount {
            source: source.into(),
            destination: destination.into(),
            read_only,
        }));
    }
    if !source.is_empty() && !volume_name_ok(source) {
        return Err(format!(
            "invalid volume {text:?}: {source:?} is neither an absolute host path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        ));
    }
    Ok(Mount::Volume(VolumeMount {
        name: source.into(),
        destination: destination.into(),
        read_only,
    }))
}

fn volume_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `--log-opt max-size=10m` / `max-file=3`.
pub fn parse_log_opt(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid --log-opt {text:?}: use key=value"))?;
    match key {
        "max-size" => {
            parse_size(value).map_err(|err| format!("invalid --log-opt {text:?}: {err}"))?;
        }
        "max-file" => match value.parse::<u32>() {
            Ok(n) if n >= 1 => {}
            _ => {
                return Err(format!(
                    "invalid --log-opt {text:?}: max-file must be a number of at least 1"
                ))
            }
        },
        other => {
            return Err(format!(
                "unsupported --log-opt {other:?}: berth knows max-size and max-file"
            ))
        }
    }
    Ok((key.to_string(), value.to_string()))
}

/// `no`, `on-failure[:N]`, `always`, `unless-stopped`.
pub fn parse_restart(text: &str) -> Result<RestartPolicy, String> {
    match text.split_once(':') {
        None => match text {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
            _ => Err(format!("invalid restart policy {text:?}")),
        },
        Some(("on-failure", n)) => n
            .parse()
            .map(|max_retries| RestartPolicy::OnFailure { max_retries })
            .map_err(|_| format!("invalid restart count in {text:?}")),
        Some(_) => Err(format!("invalid restart policy {text:?}")),
    }
}

/// `--memory-swap`: a size, or -1 for unlimited.
fn parse_swap(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        Ok(-1)
    } else {
        parse_size(text)
    }
}

/// `nofile=1024[:2048]`
pub fn parse_ulimit(text: &str) -> Result<Ulimit, String> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid ulimit {text:?}: use name=soft[:hard]"))?;
    let number = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("invalid ulimit {text:?}: {v:?} is not a number"))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(values)?, number(values)?),
    };
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// KEY=value lines of an env file; blank lines and `#` comments skipped, a bare KEY
/// takes the value from this environment (Docker's rule).
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            if l.contains('=') {
                Some(l.to_string())
            } else {
                std::env::var(l).ok().map(|v| format!("{l}={v}"))
            }
        })
        .collect()
}

impl CreateArgs {
    /// The scheduler request: the create request, constraints, pin, wait bound.
    pub(super) fn sched_request(&self, auto_remove: bool) -> Result<SchedRunRequest, Failure> {
        Ok(SchedRunRequest {
            id: None,
            create: self.request(auto_remove)?,
            no_start: false,
            constraints: self.constraints.clone(),
            node: self.node.node.clone(),
            wait_timeout_ms: self.wait_timeout.map(|d| d.as_millis() as u64),
        })
    }

    /// How long the reply to `run`/`create` may take: waiting for room, then the create.
    pub(super) fn reply_deadline(&self) -> Duration {
        self.wait_timeout.unwrap_or(Duration::from_secs(300)) + CREATE_DEADLINE
    }

    pub(super) fn request(&self, auto_remove: bool) -> Result<ContainerCreateRequest, Failure> {
        let mut env = Vec::new();
        for path in &self.env_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                Failure::berth(format!("cannot read env file {}: {err}", path.display()))
            })?;
            env.extend(parse_env_file(&text));
        }
        env.extend(self.env.iter().cloned());
        let mut labels = std::collections::BTreeMap::new();
        for label in &self.labels {
            let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
            labels.insert(k.to_string(), v.to_string());
        }
        let nano_cpus = match self.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => {
                return Err(Failure::berth(format!(
                    "invalid --cpus {c}: must be positive"
                )))
            }
            Some(c) => Some((c * 1e9) as u64),
            None => None,
        };
        let mut ports = Vec::new();
        for text in &self.publish {
            ports.extend(crate::network::parse_publish(text).map_err(Failure::berth)?);
        }
        Ok(ContainerCreateRequest {
            ports,
            publish_all: self.publish_all,
            network_aliases: self.network_alias.clone(),
            image: self.image.clone(),
            name: self.name.clone(),
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            cmd: self.command.clone(),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            memory_bytes: self.memory,
            nano_cpus,
            pids_limit: self.pids_limit,
            read_only: self.read_only,
            network: self.network.clone(),
            binds: self
                .volumes
                .iter()
                .filter_map(|m| match m {
                    Mount::Bind(b) => Some(b.clone()),
                    Mount::Volume(_) => None,
                })
                .collect(),
            volumes: self
                .volumes
                .iter()
                .filter_map(|m| match m {
                    Mount::Volume(v) => Some(v.clone()),
                    Mount::Bind(_) => None,
                })
                .collect(),
            privileged: self.privileged,
            log_opts: self.log_opts.iter().cloned().collect(),
            open_stdin: self.interactive,
            tty: self.tty,
            console_size: self.tty.then(super::interactive::console_size).flatten(),
            labels,
            restart: self.restart,
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_timeout,
            auto_remove,
            memory_swap_bytes: self.memory_swap,
            cpuset_cpus: self.cpuset_cpus.clone(),
            tmpfs: self.tmpfs.clone(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            security_opt: self.security_opt.clone(),
            ulimits: self.ulimit.clone(),
            id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn sizes_binds_and_restart_policies_parse() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert_eq!(
            parse_bind("/a:/b:ro"),
            Ok(Mount::Bind(BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true
            }))
        );
        assert_eq!(
            parse_bind("data:/b"),
            Ok(Mount::Volume(VolumeMount {
                name: "data".into(),
                destination: "/b".into(),
                read_only: false
            }))
        );
        assert_eq!(
            parse_bind("/b"),
            Ok(Mount::Volume(VolumeMount {
                name: String::new(),
                destination: "/b".into(),
                read_only: false
            }))
        );
        assert!(parse_bind("v:b").is_err());
        assert!(parse_bind("../x:/b").is_err());
        assert!(parse_bind("/a:/b:zz").is_err());
        assert_eq!(
            parse_log_opt("max-size=1k"),
            Ok(("max-size".into(), "1k".into()))
        );
        assert!(parse_log_opt("max-file=0").is_err());
        assert!(parse_log_opt("compress=true").is_err());
        assert_eq!(
            parse_restart("on-failure:2"),
            Ok(RestartPolicy::OnFailure { max_retries: 2 })
        );
        assert_eq!(parse_restart("always"), Ok(RestartPolicy::Always));
        assert!(parse_restart("sometimes").is_err());
        assert_eq!(
            parse_ulimit("nofile=10:20"),
            Ok(Ulimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20
            })
        );
        assert_eq!(parse_ulimit("core=0").map(|u| (u.soft, u.hard)), Ok((0, 0)));
        assert!(parse_ulimit("nofile").is_err());
        assert_eq!(parse_swap("-1"), Ok(-1));
        assert_eq!(
            parse_env_file("# c\nA=1\n\n B=two words \n"),
            vec!["A=1".to_string(), "B=two words".to_string()]
        );
    }
}

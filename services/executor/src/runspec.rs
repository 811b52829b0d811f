//! The OCI runtime spec of a container: Docker-equivalent defaults from berth-runtime,
//! the image config (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal), then the
//! request's overrides. Pure: the caller reads the image's passwd/group files.

use crate::users::ExecUser;
use berth_proto::messages::exec::{BindMount, ContainerCreateRequest, NetworkMode, VolumeMount};
use oci_spec::runtime::Spec;
use serde::Deserialize;
use std::path::Path;

/// The parts of an OCI image config (`config` object) a container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `VOLUME` paths: each gets an anonymous volume unless the request mounts something there.
    #[serde(default)]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `{"80/tcp": {}}`: what `-P` publishes.
    #[serde(default)]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<ImageRunConfig>,
}

/// Parses the raw image config JSON (the whole document, as the image-store returns it).
pub fn parse_image_config(json: &str) -> Result<ImageRunConfig, String> {
    let file: ImageConfigFile =
        serde_json::from_str(json).map_err(|err| format!("image config is not valid: {err}"))?;
    Ok(file.config.unwrap_or_default())
}

/// argv: Docker's rule — an overridden entrypoint drops the image's cmd.
pub fn command(image: &ImageRunConfig, request: &ContainerCreateRequest) -> Vec<String> {
    let (entrypoint, image_cmd) = match &request.entrypoint {
        Some(e) => (e.clone(), Vec::new()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.clone().unwrap_or_default(),
        ),
    };
    let cmd = if request.cmd.is_empty() {
        image_cmd
    } else {
        request.cmd.clone()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The image's env with the request's on top (same key: the request wins).
pub fn merge_env(image: &[String], request: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut out: Vec<String> = Vec::new();
    for entry in image.iter().chain(request) {
        let k = key(entry);
        if let Some(slot) = out.iter_mut().find(|e| key(e) == k) {
            *slot = entry.clone();
        } else {
            out.push(entry.clone());
        }
    }
    out
}

/// The user spec that applies: the request's, else the image's (empty = root).
pub fn user_spec(image: &ImageRunConfig, request: &ContainerCreateRequest) -> String {
    request
        .user
        .clone()
        .or_else(|| image.user.clone())
        .unwrap_or_default()
}

/// The volumes a container gets: the request's (`-v NAME:/ctr`, `-v /ctr`), then one
/// anonymous volume (empty name) for each image `VOLUME` nothing else is mounted on.
pub fn plan_volumes(
    request: &ContainerCreateRequest,
    image: &ImageRunConfig,
) -> Result<Vec<VolumeMount>, String> {
    let mut out: Vec<VolumeMount> = Vec::new();
    for volume in &request.volumes {
        if !volume.destination.starts_with('/') {
            return Err(format!(
                "volume {}:{}: the container path must be absolute",
                volume.name, volume.destination
            ));
        }
        out.push(volume.clone());
    }
    let norm = |p: &str| p.trim_end_matches('/').to_string();
    let taken: Vec<String> = request
        .binds
        .iter()
        .map(|b| norm(&b.destination))
        .chain(out.iter().map(|v| norm(&v.destination)))
        .collect();
    if let Some(paths) = &image.volumes {
        for path in paths.keys() {
            if path.starts_with('/') && !taken.contains(&norm(path)) {
                out.push(VolumeMount {
                    name: String::new(),
                    destination: path.clone(),
                    read_only: false,
                });
            }
        }
    }
    Ok(out)
}

/// What the spec builder decided, also recorded in `container.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub stop_signal: String,
}

/// Everything the spec needs besides the request and the image config.
pub struct SpecInputs<'a> {
    pub id: &'a str,
    /// The node the container runs on: its cgroup is `/berth/<node>/<id>`, so that
    /// several nodes on one host (tests, a laptop) never share a cgroup when the
    /// scheduler re-places a container under the same id.
    pub node_id: &'a str,
    pub rootfs: &'a Path,
    pub user: &'a ExecUser,
    /// Volumes as bind mounts of their host directories (after the request's `-v` binds).
    pub volume_binds: &'a [BindMount],
    /// The host's device nodes, given to a `--privileged` container.
    pub host_devices: &'a [HostDevice],
    /// The capabilities this host lets us give (our bounding set, bit per capability):
    /// `--privileged` gets all of these.
    pub host_bounding: u64,
}

/// The executor's own bounding set (`CapBnd` of `/proc/self/status`).
pub fn host_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// A device node of the host (`/dev/...`), for `--privileged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The character and block devices directly under the host's `/dev` (Docker gives a
/// privileged container every one; nested directories such as `/dev/pts` are the
/// container's own).
pub fn scan_host_devices(dev: &Path) -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dev) else {
        return Vec::new();
    };
    let mut out: Vec<HostDevice> = entries
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::symlink_metadata(entry.path()).ok()?;
            let kind = meta.file_type();
            let letter = if kind.is_char_device() {
                'c'
            } else if kind.is_block_device() {
                'b'
            } else {
                return None;
            };
            let rdev = meta.rdev();
            Some(HostDevice {
                path: format!("/dev/{}", entry.file_name().to_string_lossy()),
                kind: letter,
                major: nix::sys::stat::major(rdev),
                minor: nix::sys::stat::minor(rdev),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `--privileged`, as Docker: every capability, no seccomp, no masked or read-only
/// paths, /sys and its cgroup mount writable, every device allowed and the host's
/// device nodes created.
fn apply_privileged(spec: Spec, devices: &[HostDevice], bounding: u64) -> Result<Spec, String> {
    let mut value = serde_json::to_value(&spec).map_err(|err| err.to_string())?;
    // NAMES is indexed by capability number.
    let all: Vec<&str> = berth_runtime::caps::NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    for set in ["bounding", "effective", "permitted"] {
        value["process"]["capabilities"][set] = serde_json::json!(all);
    }
    value["process"]["noNewPrivileges"] = serde_json::json!(false);
    if let Some(linux) = value["linux"].as_object_mut() {
        linux.remove("seccomp");
        linux.insert("maskedPaths".into(), serde_json::json!([]));
        linux.insert("readonlyPaths".into(), serde_json::json!([]));
        linux.insert(
            "devices".into(),
            serde_json::json!(devices
                .iter()
                .map(|d| serde_json::json!({
                    "path": d.path, "type": d.kind.to_string(), "major": d.major,
                    "minor": d.minor, "fileMode": d.mode, "uid": d.uid, "gid": d.gid,
                }))
                .collect::<Vec<_>>()),
        );
    }
    value["linux"]["resources"]["devices"] = serde_json::json!([{"allow": true, "access": "rwm"}]);
    if let Some(mounts) = value["mounts"].as_array_mut() {
        for mount in mounts.iter_mut() {
            let dest = mount["destination"].as_str().unwrap_or_default();
            if dest == "/sys" || dest == "/sys/fs/cgroup" {
                if let Some(options) = mount["options"].as_array_mut() {
                    options.retain(|o| o != "ro");
                    options.push(serde_json::json!("rw"));
                }
            }
        }
    }
    serde_json::from_value(value).map_err(|err| format!("--privileged: {err}"))
}

/// Builds the plan and the runtime spec.
pub fn build(
    request: &ContainerCreateRequest,
    image: &ImageRunConfig,
    inputs: &SpecInputs<'_>,
) -> Result<(RunPlan, Spec), String> {
    let args = command(image, request);
    if args.is_empty() {
        return Err("no command specified: the image has no Entrypoint or Cmd".into());
    }
    let mut env = merge_env(image.env.as_deref().unwrap_or_default(), &request.env);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", inputs.user.home));
    }
    // Docker's habit: a terminal says what it is.
    if request.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let cwd = request
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(format!("working directory {cwd:?} is not absolute"));
    }
    let short: String = inputs.id.chars().take(12).collect();
    let hostname = request.hostname.clone().unwrap_or(short);
    let stop_signal = request
        .stop_signal
        .clone()
        .or_else(|| image.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".to_string());
    let mut options = berth_runtime::DefaultSpecOptions::new(args.clone());
    options.env = env.clone();
    options.cwd = cwd.clone();
    options.uid = inputs.user.uid;
    options.gid = inputs.user.gid;
    options.additional_gids = inputs.user.additional_gids.clone();
    options.hostname = Some(hostname.clone());
    options.rootfs = inputs.rootfs.to_path_buf();
    options.readonly_rootfs = request.read_only;
    options.memory = request.memory_bytes;
    options.cpus = request.nano_cpus.map(|n| n as f64 / 1e9);
    options.pids_limit = request.pids_limit;
    options.cgroups_path = Some(format!("/berth/{}/{}", inputs.node_id, inputs.id));
    options.host_network = request.network == NetworkMode::Host;
    options.memory_swap = request.memory_swap_bytes;
    options.cpuset_cpus = request.cpuset_cpus.clone();
    options.terminal = request.tty;
    let spec = berth_runtime::default_spec(&options).map_err(|err| err.to_string())?;
    let spec = match (request.tty, request.console_size) {
        (true, Some(size)) => with_console_size(spec, size)?,
        _ => spec,
    };
    let spec = add_binds(spec, request, inputs.volume_binds)?;
    let spec = apply_security(spec, request)?;
    // After the explicit options: --privileged grants everything (Docker's precedence).
    let spec = if request.privileged {
        apply_privileged(spec, inputs.host_devices, inputs.host_bounding)?
    } else {
        spec
    };
    Ok((
        RunPlan {
            args,
            env,
            cwd,
            hostname,
            stop_signal,
        },
        spec,
    ))
}

/// The terminal's size at start (`process.consoleSize`).
pub fn with_console_size(
    spec: Spec,
    size: berth_proto::messages::exec::ConsoleSize,
) -> Result<Spec, String> {
    let mut value = serde_json::to_value(&spec).map_err(|err| err.to_string())?;
    value["process"]["consoleSize"] = serde_json::json!({"height": size.rows, "width": size.cols});
    serde_json::from_value(value).map_err(|err| format!("console size: {err}"))
}

/// Appends `-v` bind mounts. Edited as JSON: the spec's mount list is plain data.
fn add_binds(
    spec: Spec,
    request: &ContainerCreateRequest,
    volumes: &[BindMount],
) -> Result<Spec, String> {
    if request.binds.is_empty() && volumes.is_empty() {
        return Ok(spec);
    }
    let mut value = serde_json::to_value(&spec).map_err(|err| err.to_string())?;
    let mounts = value
        .get_mut("mounts")
        .and_then(|m| m.as_array_mut())
        .ok_or("the default spec has no mount list")?;
    for bind in request.binds.iter().chain(volumes) {
        if !bind.source.starts_with('/') || !bind.destination.starts_with('/') {
            return Err(format!(
                "bind mount {}:{}: both paths must be absolute",
                bind.source, bind.destination
            ));
        }
        let mut options = vec!["rbind", "rprivate"];
        options.push(if bind.read_only { "ro" } else { "rw" });
        mounts.push(serde_json::json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": options,
        }));
    }
    serde_json::from_value(value).map_err(|err| err.to_string())
}

/// `--tmpfs`, `--cap-add/--cap-drop`, `--security-opt`, `--ulimit`, edited as JSON.
fn apply_security(spec: Spec, request: &ContainerCreateRequest) -> Result<Spec, String> {
    if request.tmpfs.is_empty()
        && request.cap_add.is_empty()
        && request.cap_drop.is_empty()
        && request.security_opt.is_empty()
        && request.ulimits.is_empty()
    {
        return Ok(spec);
    }
    let mut value = serde_json::to_value(&spec).map_err(|err| err.to_string())?;
    for entry in &request.tmpfs {
        let (path, opts) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
        if !path.starts_with('/') {
            return Err(format!("--tmpfs {entry}: the path must be absolute"));
        }
        let mut options = vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            "noexec".to_string(),
        ];
        options.extend(
            opts.split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_string),
        );
        if let Some(mounts) = value["mounts"].as_array_mut() {
            mounts.push(serde_json::json!({
                "destination": path, "type": "tmpfs", "source": "tmpfs", "options": options,
            }));
        }
    }
    let caps = capability_set(&request.cap_add, &request.cap_drop)?;
    for set in ["bounding", "effective", "permitted"] {
        value["process"]["capabilities"][set] = serde_json::json!(caps);
    }
    for opt in &request.security_opt {
        match opt.as_str() {
            "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true" => {
                value["process"]["noNewPrivileges"] = serde_json::json!(true)
            }
            "no-new-privileges=false" | "no-new-privileges:false" => {
                value["process"]["noNewPrivileges"] = serde_json::json!(false)
            }
            "seccomp=unconfined" | "seccomp:unconfined" => {
                if let Some(linux) = value["linux"].as_object_mut() {
                    linux.remove("seccomp");
                }
            }
            other => return Err(format!("unsupported --security-opt {other:?}")),
        }
    }
    if !request.ulimits.is_empty() {
        let mut rlimits: Vec<serde_json::Value> = value["process"]["rlimits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for limit in &request.ulimits {
            if limit.soft > limit.hard {
                return Err(format!(
                    "--ulimit {}: soft limit above the hard limit",
                    limit.name
                ));
            }
            let kind = format!("RLIMIT_{}", limit.name.to_ascii_uppercase());
            rlimits.retain(|r| r["type"] != kind.as_str());
            rlimits.push(serde_json::json!({"type": kind, "soft": limit.soft, "hard": limit.hard}));
        }
        value["process"]["rlimits"] = serde_json::json!(rlimits);
    }
    serde_json::from_value(value).map_err(|err| format!("invalid option: {err}"))
}

/// Docker's default capabilities with `add` and `drop` applied (`ALL` in either).
pub fn capability_set(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    let norm = |name: &str| -> Result<String, String> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") || upper == "ALL" {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if full == "ALL" || berth_runtime::caps::NAMES.contains(&full.as_str()) {
            Ok(full)
        } else {
            Err(format!("unknown capability {name:?}"))
        }
    };
    let add: Vec<String> = add.iter().map(|c| norm(c)).collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop.iter().map(|c| norm(c)).collect::<Result<_, _>>()?;
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        berth_runtime::caps::NAMES
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        let mut caps: Vec<String> = berth_runtime::caps::DOCKER_DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect();
        for cap in add {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caps
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    Ok(caps)
}

/// The process of an `exec`: the container's process (capabilities, rlimits, no_new_privs,
/// env, cwd, user) with the request's command, extra env, workdir and user.
pub fn exec_process(
    base: &oci_spec::runtime::Process,
    cmd: &[String],
    env: &[String],
    workdir: Option<&str>,
    user: Option<&ExecUser>,
) -> Result<oci_spec::runtime::Process, String> {
    if cmd.is_empty() {
        return Err("exec needs a command".into());
    }
    let mut value = serde_json::to_value(base).map_err(|err| err.to_string())?;
    let base_env: Vec<String> = base.env().clone().unwrap_or_default();
    value["args"] = serde_json::json!(cmd);
    value["env"] = serde_json::json!(merge_env(&base_env, env));
    value["terminal"] = serde_json::json!(false);
    if let Some(cwd) = workdir {
        if !cwd.starts_with('/') {
            return Err(format!("working directory {cwd:?} is not absolute"));
        }
        value["cwd"] = serde_json::json!(cwd);
    }
    if let Some(user) = user {
        value["user"] = serde_json::json!({
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        });
    }
    serde_json::from_value(value).map_err(|err| err.to_string())
}

/// An exec's process on a terminal (`exec -t`) of `size` at start.
pub fn with_terminal(
    process: oci_spec::runtime::Process,
    size: Option<berth_proto::messages::exec::ConsoleSize>,
) -> Result<oci_spec::runtime::Process, String> {
    let mut value = serde_json::to_value(&process).map_err(|err| err.to_string())?;
    value["terminal"] = serde_json::json!(true);
    if let Some(size) = size {
        value["consoleSize"] = serde_json::json!({"height": size.rows, "width": size.cols});
    }
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("TERM=")) {
        value["env"] = serde_json::json!(merge_env(&env, &["TERM=xterm".to_string()]));
    }
    serde_json::from_value(value).map_err(|err| format!("terminal: {err}"))
}

/// A signal by name (`TERM`, `SIGTERM`, `sigkill`) or number.
pub fn parse_signal(text: &str) -> Result<nix::sys::signal::Signal, String> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| format!("unknown signal {n}"));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| format!("unknown signal {trimmed:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::exec::BindMount;

    const IMAGE_CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{
        "Entrypoint":["/bin/entry"],"Cmd":["serve","--port","80"],
        "Env":["PATH=/usr/bin:/bin","MODE=prod"],"WorkingDir":"/srv","User":"www",
        "StopSignal":"SIGQUIT"},"rootfs":{"type":"layers","diff_ids":[]}}"#;

    fn root() -> ExecUser {
        ExecUser {
            uid: 33,
            gid: 33,
            additional_gids: vec![50],
            home: "/var/www".into(),
        }
    }

    #[test]
    fn image_config_gives_the_process() {
        let image = parse_image_config(IMAGE_CONFIG).expect("parses");
        let request = ContainerCreateRequest {
            image: "web".into(),
            ..Default::default()
        };
        assert_eq!(user_spec(&image, &request), "www");
        let user = root();
        let inputs = SpecInputs {
            id: "0123456789abcdef",
            node_id: "n1",
            rootfs: Path::new("/data/containers/x/rootfs"),
            user: &user,
            volume_binds: &[],
            host_devices: &[],
            host_bounding: u64::MAX,
        };
        let (plan, spec) = build(&request, &image, &inputs).expect("builds");
        assert_eq!(plan.args, ["/bin/entry", "serve", "--port", "80"]);
        assert_eq!(plan.cwd, "/srv");
        assert_eq!(plan.hostname, "0123456789ab");
        assert_eq!(plan.stop_signal, "SIGQUIT");
        assert!(plan.env.contains(&"MODE=prod".to_string()));
        assert!(plan.env.contains(&"HOME=/var/www".to_string()));
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.user().uid(), 33);
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[50][..]));
        assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/n1/0123456789abcdef");
        let namespaces = json["linux"]["namespaces"].to_string();
        assert!(namespaces.contains("network"), "{namespaces}");
    }

    #[test]
    fn request_overrides_win() {
        let image = parse_image_config(IMAGE_CONFIG).expect("parses");
        let request = ContainerCreateRequest {
            image: "web".into(),
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: vec!["-c".into(), "exit 3".into()],
            env: vec!["MODE=dev".into(), "EXTRA=1".into()],
            workdir: Some("/tmp".into()),
            user: Some("0".into()),
            hostname: Some("box".into()),
            memory_bytes: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            pids_limit: Some(64),
            read_only: true,
            network: NetworkMode::Host,
            binds: vec![BindMount {
                source: "/host/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            stop_signal: Some("SIGINT".into()),
            ..Default::default()
        };
        assert_eq!(user_spec(&image, &request), "0");
        let user = root();
        let inputs = SpecInputs {
            id: "abc",
            node_id: "n1",
            rootfs: Path::new("/r"),
            user: &user,
            volume_binds: &[],
            host_devices: &[],
            host_bounding: u64::MAX,
        };
        let (plan, spec) = build(&request, &image, &inputs).expect("builds");
        assert_eq!(plan.args, ["/bin/sh", "-c", "exit 3"]);
        assert_eq!(plan.cwd, "/tmp");
        assert_eq!(plan.stop_signal, "SIGINT");
        assert_eq!(
            plan.env
                .iter()
                .filter(|e| e.starts_with("MODE="))
                .collect::<Vec<_>>(),
            ["MODE=dev"]
        );
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["hostname"], "box");
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 64);
        assert!(!json["linux"]["namespaces"].to_string().contains("network"));
        let mounts = json["mounts"].as_array().expect("mounts");
        let bind = mounts.last().expect("bind");
        assert_eq!(bind["destination"], "/data");
        assert_eq!(bind["type"], "bind");
        assert!(bind["options"].to_string().contains("\"ro\""));
    }

    #[test]
    fn entrypoint_reset_and_missing_command() {
        let image = parse_image_config(r#"{"config":{"Cmd":["sh"]}}"#).expect("parses");
        let reset = ContainerCreateRequest {
            entrypoint: Some(vec![]),
            cmd: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        assert_eq!(command(&image, &reset), ["echo", "hi"]);
        let empty = parse_image_config("{}").expect("parses");
        let user = root();
        let inputs = SpecInputs {
            id: "abc",
            node_id: "n1",
            rootfs: Path::new("/r"),
            user: &user,
            volume_binds: &[],
            host_devices: &[],
            host_bounding: u64::MAX,
        };
        let err = build(&ContainerCreateRequest::default(), &empty, &inputs).expect_err("no cmd");
        assert!(err.contains("no command"), "{err}");
        assert!(parse_image_config("not json").is_err());
    }

    #[test]
    fn exec_processes_keep_the_containers_settings() {
        let image = parse_image_config(IMAGE_CONFIG).expect("parses");
        let request = ContainerCreateRequest::default();
        let user = root();
        let inputs = SpecInputs {
            id: "abc",
            node_id: "n1",
            rootfs: Path::new("/r"),
            user: &user,
            volume_binds: &[],
            host_devices: &[],
            host_bounding: u64::MAX,
        };
        let (_, spec) = build(&request, &image, &inputs).expect("builds");
        let base = spec.process().clone().expect("process");
        let other = ExecUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        };
        let process = exec_process(
            &base,
            &["id".into()],
            &["MODE=debug".into()],
            Some("/tmp"),
            Some(&other),
        )
        .expect("process");
        assert_eq!(process.args().as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(process.cwd(), Path::new("/tmp"));
        assert_eq!(process.user().uid(), 0);
        let env = process.env().clone().unwrap_or_default();
        assert!(env.contains(&"MODE=debug".to_string()), "{env:?}");
        assert_eq!(process.no_new_privileges(), base.no_new_privileges());
        assert_eq!(process.capabilities(), base.capabilities());
        assert!(exec_process(&base, &[], &[], None, None).is_err());
    }

    #[test]
    fn security_options_edit_the_spec() {
        use berth_proto::messages::exec::Ulimit;
        let image = parse_image_config(r#"{"config":{"Cmd":["sh"]}}"#).expect("parses");
        let request = ContainerCreateRequest {
            tmpfs: vec!["/run:size=1m".into()],
            cap_add: vec!["sys_admin".into()],
            cap_drop: vec!["NET_RAW".into(), "CAP_MKNOD".into()],
            security_opt: vec![
                "seccomp=unconfined".into(),
                "no-new-privileges=false".into(),
            ],
            ulimits: vec![Ulimit {
                name: "nofile".into(),
                soft: 100,
                hard: 200,
            }],
            memory_swap_bytes: Some(-1),
            cpuset_cpus: Some("0".into()),
            ..Default::default()
        };
        let user = root();
        let inputs = SpecInputs {
            id: "abc",
            node_id: "n1",
            rootfs: Path::new("/r"),
            user: &user,
            volume_binds: &[],
            host_devices: &[],
            host_bounding: u64::MAX,
        };
        let (_, spec) = build(&request, &image, &inputs).expect("builds");
        let json = serde_json::to_value(&spec).expect("json");
        let caps = json["process"]["capabilities"]["bounding"].to_string();
        assert!(
            caps.contains("CAP_SYS_ADMIN") && !caps.contains("CAP_NET_RAW"),
            "{caps}"
        );
        assert!(!caps.contains("CAP_MKNOD"), "{caps}");
        assert!(json["linux"]["seccomp"].is_null());
        assert_eq!(json["process"]["noNewPrivileges"], false);
        let rlimits = json["process"]["rlimits"].to_string();
        assert!(rlimits.contains(r#""soft":100"#), "{rlimits}");
        assert_eq!(json["linux"]["resources"]["memory"]["swap"], -1);
        assert_eq!(json["linux"]["resources"]["cpu"]["cpus"], "0");
        let tmpfs = json["mounts"]
            .as_array()
            .and_then(|m| m.last())
            .expect("tmpfs");
        assert_eq!(tmpfs["destination"], "/run");
        assert!(tmpfs["options"].to_string().contains("size=1m"));

        assert_eq!(
            capability_set(&[], &["ALL".into()]).expect("caps"),
            Vec::<String>::new()
        );
        assert_eq!(
            capability_set(&["ALL".into()], &[]).expect("caps").len(),
            41
        );
        assert!(capability_set(&["NOPE".into()], &[]).is_err());
        let bad = ContainerCreateRequest {
            security_opt: vec!["apparmor=x".into()],
            ..Default::default()
        };
        assert!(build(&bad, &image, &inputs).is_err());
    }

    #[test]
    fn privileged_grants_everything_and_volumes_are_planned() {
        let image =
            parse_image_config(r#"{"config":{"Cmd":["sh"],"Volumes":{"/data":{},"/cache":{}}}}"#)
                .expect("parses");
        let request = ContainerCreateRequest {
            privileged: true,
            volumes: vec![VolumeMount {
                name: "named".into(),
                destination: "/data/".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        let planned = plan_volumes(&request, &image).expect("plans");
        assert_eq!(planned.len(), 2, "{planned:?}");
        assert_eq!(planned[0].name, "named");
        assert_eq!(
            (planned[1].name.as_str(), planned[1].destination.as_str()),
            ("", "/cache")
        );
        let bad = ContainerCreateRequest {
            volumes: vec![VolumeMount {
                name: "v".into(),
                destination: "rel".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert!(plan_volumes(&bad, &image).is_err());

        let user = root();
        let devices = [HostDevice {
            path: "/dev/loop0".into(),
            kind: 'b',
            major: 7,
            minor: 0,
            mode: 0o660,
            uid: 0,
            gid: 6,
        }];
        let binds = [BindMount {
            source: "/var/lib/berth/volumes/named/_data".into(),
            destination: "/data".into(),
            read_only: true,
        }];
        let inputs = SpecInputs {
            id: "abc",
            node_id: "n1",
            rootfs: Path::new("/r"),
            user: &user,
            volume_binds: &binds,
            host_devices: &devices,
            host_bounding: u64::MAX,
        };
        let (_, spec) = build(&request, &image, &inputs).expect("builds");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            json["process"]["capabilities"]["effective"]
                .as_array()
                .map(Vec::len),
            Some(41)
        );
        assert!(json["linux"]["seccomp"].is_null());
        assert_eq!(json["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(json["linux"]["devices"][0]["path"], "/dev/loop0");
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], true);
        let sys = json["mounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["destination"] == "/sys"))
            .expect("sys");
        assert!(!sys["options"].to_string().contains("\"ro\""), "{sys}");
        let volume = json["mounts"]
            .as_array()
            .and_then(|m| m.last())
            .expect("volume");
        assert_eq!(volume["source"], "/var/lib/berth/volumes/named/_data");
        assert!(volume["options"].to_string().contains("\"ro\""));
        assert!(
            !scan_host_devices(Path::new("/dev")).is_empty() || !Path::new("/dev/null").exists()
        );
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn env_merge_keeps_order_and_overrides() {
        let merged = merge_env(
            &["A=1".into(), "B=2".into()],
            &["B=3".into(), "C=4".into(), "A".into()],
        );
        assert_eq!(merged, ["A", "B=3", "C=4"]);
    }
}

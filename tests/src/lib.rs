//! Test harness: starts a real `nats-server` (free loopback port, own JetStream dir) and
//! the real berth service binaries as child processes, waits until they answer, and
//! cleans everything up on drop. Every step returns an error instead of panicking, so a
//! test failure says what did not come up and where its log is.

pub mod cli;
pub mod fixtures;

use async_nats::Client;
use berth_proto::subjects::{micro, service_names};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// What went wrong while bringing up or tearing down test infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {within:?}; log: {log}")]
    NotReady {
        what: String,
        within: Duration,
        log: String,
    },
    #[error("NATS: {0}")]
    Nats(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Root of the cargo workspace (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory of the berth binaries: `BERTH_BIN_DIR`, else the workspace's `target/debug`
/// or `target/release` — the profile these tests were built with, so `cargo test
/// --release` finds the release binaries `setup.sh` built.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

/// Path of a berth binary; an error that says how to build it when it is missing.
pub fn bin_path(name: &str) -> Result<PathBuf, HarnessError> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Missing(format!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first (or set BERTH_BIN_DIR)",
            path.display()
        )))
    }
}

/// The `nats-server` to use: `BERTH_NATS_SERVER`, else the first on `PATH`. It must be
/// 2.10 or newer (older servers break async-nats' KV creation).
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    let candidate = match std::env::var_os("BERTH_NATS_SERVER") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|path| path.is_file())
            })
            .ok_or_else(|| {
                HarnessError::Missing(
                    "nats-server not found on PATH: run docker-compose-free-scripts/setup.sh (or set BERTH_NATS_SERVER)"
                        .into(),
                )
            })?,
    };
    let output = std::process::Command::new(&candidate)
        .arg("--version")
        .output()
        .map_err(io_error(format!("cannot run {}", candidate.display())))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    match parse_nats_version(&text) {
        Some((major, minor)) if (major, minor) >= (2, 10) => Ok(candidate),
        _ => Err(HarnessError::Missing(format!(
            "{} reports {:?}; berth needs nats-server 2.10 or newer (setup.sh installs one)",
            candidate.display(),
            text.trim()
        ))),
    }
}

/// `nats-server: v2.15.1` → (2, 15).
pub fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A free TCP port on 127.0.0.1 (bound and released; the small race is acceptable in tests).
pub fn free_port() -> Result<u16, HarnessError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("bind a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("read the free port"))?
        .port();
    Ok(port)
}

async fn wait_for_port(port: u16, within: Duration, log: &Path) -> Result<(), HarnessError> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(HarnessError::NotReady {
        what: format!("nats-server on port {port}"),
        within,
        log: log.display().to_string(),
    })
}

/// A nats-server with JetStream on a free loopback port and its own store dir.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-nats-")
            .tempdir()
            .map_err(io_error("create the NATS temp dir"))?;
        let mut server = NatsServer {
            child: None,
            port: free_port()?,
            dir,
            binary,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = self.log_path();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_error(format!("open {}", log.display())))?;
        let stderr = log_file
            .try_clone()
            .map_err(io_error("clone the NATS log handle"))?;
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(io_error(format!("start {}", self.binary.display())))?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10), &log).await
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// A client connected to this server.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        async_nats::connect(self.url())
            .await
            .map_err(|err| HarnessError::Nats(format!("connect to {}: {err}", self.url())))
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.map_err(io_error("kill nats-server"))?;
        }
        Ok(())
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await?;
        self.spawn().await
    }
}

/// Networking settings no other executor on this host uses at the same time: a bridge,
/// a default subnet, a pool of user-network subnets and an nftables table. Slot `i` is
/// held by an exclusive `flock` on `/tmp/berth-test-netslots/<i>.lock`, so test
/// processes running in parallel (and the several nodes of one test) never share one;
/// the kernel drops the lock when the holder dies. 10.201.i.0/24 and 10.210.0.0/18
/// (/20 per slot) are used; 192.0.2.0/24 (this host's uplink) is never touched.
pub struct NetSlot {
    pub index: u32,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// How many slots exist.
pub const NET_SLOTS: u32 = 64;

impl NetSlot {
    /// The first free slot; its leftovers from a crashed earlier holder are removed.
    pub fn acquire() -> Result<NetSlot, HarnessError> {
        let dir = Path::new("/tmp/berth-test-netslots");
        std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
        for index in 0..NET_SLOTS {
            let path = dir.join(format!("{index}.lock"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_error(format!("open {}", path.display())))?;
            if let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let slot = NetSlot { index, _lock: lock };
                slot.clean();
                return Ok(slot);
            }
        }
        Err(HarnessError::Missing(format!(
            "all {NET_SLOTS} network slots are held by other tests"
        )))
    }

    /// Bridge of the default network.
    pub fn bridge(&self) -> String {
        format!("berth-t{}", self.index)
    }

    /// Subnet of the default network.
    pub fn subnet(&self) -> String {
        format!("10.201.{}.0/24", self.index)
    }

    /// Pool of user network subnets (16 /24s).
    pub fn pool(&self) -> String {
        format!(
            "10.{}.{}.0/20",
            210 + self.index / 16,
            (self.index % 16) * 16
        )
    }

    /// berth's nftables table for this slot.
    pub fn nft_table(&self) -> String {
        format!("berth_t{}", self.index)
    }

    /// The alias prefix every interface of this slot's executor carries.
    pub fn tag(&self) -> String {
        format!("berth:{}:", self.nft_table())
    }

    /// Environment for an executor using this slot. `ip_forward` stays off: only the
    /// slot's own bridges get `forwarding=1`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BERTH_BRIDGE".into(), self.bridge()),
            ("BERTH_BRIDGE_SUBNET".into(), self.subnet()),
            ("BERTH_NETWORK_POOL".into(), self.pool()),
            ("BERTH_NFT_TABLE".into(), self.nft_table()),
            ("BERTH_IP_FORWARD".into(), "false".into()),
        ]
    }

    /// Interfaces of the host tagged as this slot's (name, alias).
    pub fn links(&self) -> Vec<(String, String)> {
        host_links()
            .into_iter()
            .filter(|(_, alias)| alias.starts_with(&self.tag()))
            .collect()
    }

    /// Deletes the slot's interfaces and nftables table (nothing else).
    pub fn clean(&self) {
        for (name, _) in self.links() {
            let _ = std::process::Command::new("ip")
                .args(["link", "delete", &name])
                .stderr(Stdio::null())
                .status();
        }
        let table = self.nft_table();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Every interface of the host namespace with its alias (empty when it has none).
pub fn host_links() -> Vec<(String, String)> {
    let Ok(output) = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let name = line.split(": ").nth(1)?;
            let name = name.split('@').next()?.to_string();
            let alias = line
                .split("alias ")
                .nth(1)
                .map(|a| a.trim().to_string())
                .unwrap_or_default();
            Some((name, alias))
        })
        .collect()
}

/// One berth service binary running as a child process.
pub struct ServiceProcess {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl ServiceProcess {
    /// The OS pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; returns its exit status.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> Result<std::process::ExitStatus, HarnessError> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|errno| {
                HarnessError::Io {
                    what: format!("SIGTERM {}", self.name),
                    source: errno.into(),
                }
            })?;
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.map_err(io_error(format!("wait for {}", self.name))),
            Err(_) => Err(HarnessError::NotReady {
                what: format!("{} exiting after SIGTERM", self.name),
                within,
                log: self.log.display().to_string(),
            }),
        }
    }
}

/// The four services' binaries, in start order.
pub const ALL_SERVICES: [&str; 4] = service_names::ALL;

/// A nats-server plus berth services for one node, each with its own temp dirs.
pub struct Stack {
    pub nats: NatsServer,
    pub services: Vec<ServiceProcess>,
    pub node_id: String,
    env: Vec<(String, String)>,
    dir: TempDir,
    /// More nodes on the same NATS ([`Stack::add_node`]), each with its own slot.
    pub nodes: Vec<ExtraNode>,
    /// The node's own bridge, subnets and nftables table (dropped last: after the
    /// services are gone, its leftovers are removed).
    pub net: NetSlot,
}

/// One more node of a stack: an executor and a layer-unpacker with their own node id,
/// data dir, environment and network slot (so bridges and nft tables never collide).
pub struct ExtraNode {
    pub node_id: String,
    pub services: Vec<ServiceProcess>,
    env: Vec<(String, String)>,
    dir: TempDir,
    pub net: NetSlot,
}

impl ExtraNode {
    /// The node's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's service logs, for error messages.
    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|s| s.log.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The services an extra node runs.
pub const NODE_SERVICES: [&str; 2] = [service_names::LAYER_UNPACKER, service_names::EXECUTOR];

fn spawn_process(
    name: &str,
    nats_url: &str,
    node_id: &str,
    data_dir: &Path,
    work_dir: &Path,
    env: &[(String, String)],
) -> Result<ServiceProcess, HarnessError> {
    let binary = bin_path(name)?;
    let log = work_dir.join(format!("{name}.log"));
    // Append: a restarted or second instance keeps the first one's lines.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_error(format!("open {}", log.display())))?;
    let stderr = log_file
        .try_clone()
        .map_err(io_error("clone a log handle"))?;
    let child = Command::new(&binary)
        .env("BERTH_NATS_URL", nats_url)
        .env("BERTH_DATA_DIR", data_dir)
        .env("BERTH_NODE_ID", node_id)
        .env("RUST_LOG", "info")
        .env_remove("BERTH_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error(format!("start {}", binary.display())))?;
    Ok(ServiceProcess {
        name: name.to_string(),
        child,
        log,
    })
}

impl Stack {
    /// Starts nats-server and the named services (binary names such as `berth-executor`)
    /// for node `node_id`, and waits until each answers `$SRV.PING`.
    pub async fn start(services: &[&str], node_id: &str) -> Result<Self, HarnessError> {
        Self::start_with_env(services, node_id, &[]).await
    }

    /// [`Stack::start`] with extra environment for every service (a `BERTH_CONFIG`, say).
    pub async fn start_with_env(
        services: &[&str],
        node_id: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, HarnessError> {
        let nats = NatsServer::start().await?;
        let dir = tempfile::Builder::new()
            .prefix("berth-stack-")
            .tempdir()
            .map_err(io_error("create the stack temp dir"))?;
        let net = NetSlot::acquire()?;
        // The slot's settings first: a test's own environment may override them.
        let mut all_env = net.env();
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut stack = Stack {
            nats,
            services: Vec::new(),
            node_id: node_id.to_string(),
            env: all_env,
            dir,
            nodes: Vec::new(),
            net,
        };
        for service in services {
            stack.spawn_service(service)?;
        }
        stack.wait_ready(services, Duration::from_secs(20)).await?;
        Ok(stack)
    }

    /// The node's data dir (`BERTH_DATA_DIR` of its services).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts one more service process (a second instance, or a restart after
    /// [`Stack::kill_service`]) and waits until it answers.
    pub async fn start_service(&mut self, name: &str) -> Result<(), HarnessError> {
        self.spawn_service(name)?;
        let client = self.nats.client().await?;
        let wanted = self.services.iter().filter(|s| s.name == name).count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ping_count(&client, name, Duration::from_millis(250)).await? < wanted {
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    what: name.to_string(),
                    within: Duration::from_secs(20),
                    log: self.log_of(name),
                });
            }
        }
        Ok(())
    }

    /// SIGKILLs every instance of a service (no chance to clean up) and forgets them.
    pub async fn kill_service(&mut self, name: &str) -> Result<(), HarnessError> {
        let (mut killed, kept): (Vec<_>, Vec<_>) =
            self.services.drain(..).partition(|s| s.name == name);
        self.services = kept;
        for service in killed.iter_mut() {
            service
                .child
                .kill()
                .await
                .map_err(io_error(format!("SIGKILL {name}")))?;
        }
        Ok(())
    }

    fn spawn_service(&mut self, name: &str) -> Result<(), HarnessError> {
        let process = spawn_process(
            name,
            &self.nats.url(),
            &self.node_id,
            &self.data_dir(),
            self.dir.path(),
            &self.env,
        )?;
        self.services.push(process);
        Ok(())
    }

    /// Starts another node (executor + layer-unpacker) on this stack's NATS with its own
    /// node id, data dir and network slot, plus `env` (a `BERTH_CONFIG`, labels), and
    /// waits until both answer on the node's subjects.
    pub async fn add_node(
        &mut self,
        node_id: &str,
        env: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("berth-node-")
            .tempdir()
            .map_err(io_error("create the node temp dir"))?;
        let net = NetSlot::acquire()?;
        let mut all_env = net.env();
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.nodes.push(ExtraNode {
            node_id: node_id.to_string(),
            services: Vec::new(),
            env: all_env,
            dir,
            net,
        });
        self.start_node(node_id).await
    }

    /// (Re)starts the services of an extra node that are not running and waits for them.
    pub async fn start_node(&mut self, node_id: &str) -> Result<(), HarnessError> {
        let url = self.nats.url();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.node_id == node_id)
            .ok_or_else(|| HarnessError::Missing(format!("no extra node {node_id}")))?;
        for name in NODE_SERVICES {
            if node.services.iter().any(|s| s.name == name) {
                continue;
            }
            let process = spawn_process(
                name,
                &url,
                &node.node_id,
                &node.data_dir(),
                node.dir.path(),
                &node.env,
            )?;
            node.services.push(process);
        }
        let logs = node.logs();
        let client = self.nats.client().await?;
        let subjects = [
            berth_proto::subjects::unpack(node_id, berth_proto::subjects::UnpackVerb::List),
            berth_proto::subjects::exec(node_id, berth_proto::subjects::ExecVerb::List),
        ];
        let within = Duration::from_secs(20);
        let deadline = tokio::time::Instant::now() + within;
        for subject in subjects {
            loop {
                let asked = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.request(subject.clone(), bytes::Bytes::from_static(b"{}")),
                )
                .await;
                if matches!(asked, Ok(Ok(_))) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(HarnessError::NotReady {
                        what: format!("node {node_id} ({subject})"),
                        within,
                        log: logs,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// An extra node by id.
    pub fn node(&self, node_id: &str) -> Option<&ExtraNode> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }

    /// SIGKILLs an extra node's executor and layer-unpacker (its containers are left to
    /// the caller) and forgets them; [`Stack::start_node`] brings them back.
    pub async fn kill_node(&mut self, node_id: &str) -> Result<(), HarnessError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.node_id == node_id)
            .ok_or_else(|| HarnessError::Missing(format!("no extra node {node_id}")))?;
        for service in node.services.iter_mut() {
            service
                .child
                .kill()
                .await
                .map_err(io_error(format!("SIGKILL {} of {node_id}", service.name)))?;
        }
        node.services.clear();
        Ok(())
    }

    /// Waits until every named service answers `$SRV.PING.<name>`.
    pub async fn wait_ready(
        &self,
        services: &[&str],
        within: Duration,
    ) -> Result<(), HarnessError> {
        let client = self.nats.client().await?;
        for name in services {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if serves_its_endpoints(&client, name, Duration::from_millis(250)).await? {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(HarnessError::NotReady {
                        what: (*name).to_string(),
                        within,
                        log: self.log_of(name),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Log file of a service, for error messages.
    pub fn log_of(&self, name: &str) -> String {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.log.display().to_string())
            .unwrap_or_else(|| format!("({name} was not started)"))
    }

    /// A command for the `berth` CLI pointed at this stack's NATS.
    pub fn berth(&self) -> Result<std::process::Command, HarnessError> {
        let mut command = std::process::Command::new(bin_path("berth")?);
        command.env("BERTH_NATS_URL", self.nats.url());
        Ok(command)
    }
}

/// Sends one request to `subject` and counts the replies that arrive within `wait`,
/// stopping early at the first one `enough` accepts (NATS gives every instance's reply).
async fn gather_replies(
    client: &Client,
    subject: String,
    wait: Duration,
    mut enough: impl FnMut(&async_nats::Message) -> bool,
) -> Result<(usize, bool), HarnessError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| HarnessError::Nats(format!("subscribe: {err}")))?;
    client
        .publish_with_reply(subject.clone(), inbox, bytes::Bytes::new())
        .await
        .map_err(|err| HarnessError::Nats(format!("publish {subject}: {err}")))?;
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        count += 1;
        if enough(&reply) {
            return Ok((count, true));
        }
    }
    Ok((count, false))
}

/// Whether an instance of `service` serves all its endpoints: it answers
/// `berth.v1.schema`, which each instance subscribes after its endpoints (`$SRV.PING`
/// answers as soon as the service exists, while its endpoints are still being added).
pub async fn serves_its_endpoints(
    client: &Client,
    service: &str,
    wait: Duration,
) -> Result<bool, HarnessError> {
    let (_, answered) = gather_replies(client, berth_proto::subjects::schema(), wait, |reply| {
        serde_json::from_slice::<serde_json::Value>(&reply.payload)
            .is_ok_and(|body| body["service"] == service)
    })
    .await?;
    Ok(answered)
}

/// How many instances of `service` answer `$SRV.PING.<service>` within `wait`.
pub async fn ping_count(
    client: &Client,
    service: &str,
    wait: Duration,
) -> Result<usize, HarnessError> {
    let (count, _) = gather_replies(client, micro::ping(service), wait, |_| false).await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_versions_parse() {
        assert_eq!(parse_nats_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_nats_version("garbage"), None);
        assert!(parse_nats_version("nats-server: v2.9.10").is_some_and(|v| v < (2, 10)));
    }
}

//! The scheduler's shared state and the placement path: resolve the image, choose a
//! node from the in-memory view, reserve on it with a compare-and-set, claim the record,
//! dispatch `create` + `start` to the node's executor.

use async_nats::jetstream::kv;
use async_nats::Client;
use berth_bus::{BusError, Handled};
use berth_proto::messages::exec::{
    ContainerCreateRequest, ContainerCreated, ContainerInspect, ContainerRef, ContainerStarted,
    NetworkMode, RestartPolicy,
};
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest, ImagePlatform};
use berth_proto::messages::node::Resources;
use berth_proto::messages::sched::{
    ContainerPhase, ContainerRecord, DesiredContainer, ObservedContainer, SchedRunReply,
    SchedRunRequest,
};
use berth_proto::subjects::{self, ExecVerb, ImageVerb};
use berth_proto::{Encoding, ErrorEnvelope};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use crate::placement::{self, Ask, Constraint};
use crate::store;
use crate::view::{now_ms, View};
use crate::Config;

const CREATE_DEADLINE: Duration = Duration::from_secs(900);
const START_DEADLINE: Duration = Duration::from_secs(150);
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long a resolved image reference is trusted.
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(5);

/// An image as placement needs it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub digest: String,
    pub layers: Vec<(String, u64)>,
    /// `None` when the config names no os and no architecture.
    pub platform: Option<ImagePlatform>,
}

/// How a placement attempt ended.
pub enum Placement {
    /// Reserved and claimed: the record as written.
    Placed(Box<ContainerRecord>),
    /// No node fits; why.
    NoRoom(String),
    /// The record changed under us (another instance placed or removed it).
    Taken,
}

/// One scheduler instance.
pub struct Scheduler {
    pub client: Client,
    pub nodes_kv: kv::Store,
    pub containers_kv: kv::Store,
    pub view: View,
    pub config: Config,
    node_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Containers this instance is placing or dispatching right now.
    active: Mutex<HashSet<String>>,
    images: Mutex<HashMap<String, (Instant, ResolvedImage)>>,
}

/// Marks a container as being worked on by this instance until dropped.
pub struct ActiveGuard<'a> {
    scheduler: &'a Scheduler,
    id: String,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.scheduler
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// 64 random hex digits, as Docker ids.
pub fn new_id() -> Handled<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| ErrorEnvelope::internal(format!("cannot read /dev/urandom: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One rule for the executor and the scheduler, kept in shared/proto.
pub use berth_proto::messages::exec::check_container_id as check_id;

/// One rule for the executor and the scheduler, kept in shared/proto.
pub use berth_proto::messages::exec::check_container_name as check_name;

/// The name of a container run without `--name`.
pub fn generated_name(id: &str) -> String {
    format!("berth_{}", id.get(..12).unwrap_or(id))
}

/// `berth_` and 12 lowercase hex digits: the shape `generated_name` gives.
fn looks_generated(name: &str) -> bool {
    name.strip_prefix("berth_").is_some_and(|rest| {
        rest.len() == 12 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Marks `record` as placed on `node` (once more, if it ran elsewhere before).
fn claim_for(record: &mut ContainerRecord, node: &str) {
    record.observed.phase = ContainerPhase::Scheduled;
    record.observed.node_id = Some(node.to_string());
    record.observed.placements += 1;
    record.observed.error = None;
    record.observed.exit_code = None;
    record.observed.ports.clear();
}

/// What a create request reserves: its CPU, memory and pids limits.
pub fn resources_of(create: &ContainerCreateRequest) -> Resources {
    Resources {
        cpu_millis: create.nano_cpus.unwrap_or(0) / 1_000_000,
        memory_bytes: create.memory_bytes.unwrap_or(0).max(0) as u64,
        pids: create.pids_limit.unwrap_or(0).max(0) as u64,
    }
}

/// A failed call to another service, as our caller's envelope.
pub fn upstream(what: &str, err: BusError) -> ErrorEnvelope {
    match err {
        BusError::Service(envelope) => {
            ErrorEnvelope::new(envelope.code, format!("{what}: {}", envelope.message))
        }
        BusError::NoResponders { .. } | BusError::TimedOut { .. } | BusError::Stalled { .. } => {
            ErrorEnvelope::unavailable(format!("{what}: {err}"))
        }
        other => ErrorEnvelope::internal(format!("{what}: {other}")),
    }
}

impl Scheduler {
    /// A scheduler over the two buckets and a view they feed.
    pub fn new(
        client: Client,
        nodes_kv: kv::Store,
        containers_kv: kv::Store,
        view: View,
        config: Config,
    ) -> Scheduler {
        Scheduler {
            client,
            nodes_kv,
            containers_kv,
            view,
            config,
            node_locks: Mutex::new(HashMap::new()),
            active: Mutex::new(HashSet::new()),
            images: Mutex::new(HashMap::new()),
        }
    }

    /// Claims `id` for this instance; `None` when it is being worked on already.
    pub fn activate(&self, id: &str) -> Option<ActiveGuard<'_>> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if !active.insert(id.to_string()) {
            return None;
        }
        Some(ActiveGuard {
            scheduler: self,
            id: id.to_string(),
        })
    }

    /// Whether this instance works on `id` now.
    pub fn is_active(&self, id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.node_locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(node.to_string()).or_default())
    }

    /// A request to one node's executor.
    pub async fn exec<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: &str,
        verb: ExecVerb,
        body: &Req,
        deadline: Duration,
    ) -> Result<Resp, BusError> {
        berth_bus::request(
            &self.client,
            &subjects::exec(node, verb),
            body,
            Encoding::Bincode,
            deadline,
        )
        .await
    }

    /// A user network must exist on some node, as Docker refuses `--network` naming none
    /// (one that exists only on a node that cannot take the container now makes it wait).
    /// A network just made may not have reached the view: a moment's grace first.
    async fn network_somewhere(&self, network: &str) -> Handled<()> {
        let deadline = Instant::now() + Duration::from_millis(1500);
        loop {
            let known = self.view.with_candidates(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.networks.iter().any(|x| x.answers_to(network)))
            });
            if known {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorEnvelope::not_found(format!(
                    "network {network} not found on any node"
                )));
            }
            self.view.changed(left).await;
        }
    }

    /// The image's digest and layers, from the image-store (cached for a few seconds).
    pub async fn resolve_image(&self, reference: &str) -> Handled<ResolvedImage> {
        if let Some((at, image)) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
        {
            if at.elapsed() < IMAGE_CACHE_TTL {
                return Ok(image.clone());
            }
        }
        let inspect: ImageInspect = berth_bus::request(
            &self.client,
            &subjects::image(ImageVerb::Inspect),
            &ImageInspectRequest {
                name: reference.to_string(),
            },
            Encoding::Bincode,
            CALL_DEADLINE,
        )
        .await
        .map_err(|err| upstream(&format!("resolving image {reference}"), err))?;
        let platform = inspect.platform;
        let image = ResolvedImage {
            platform: (!platform.os.is_empty() || !platform.architecture.is_empty())
                .then_some(platform),
            digest: inspect.digest,
            layers: inspect
                .layers
                .into_iter()
                .map(|l| (l.chain_id, l.uncompressed_size.unwrap_or(l.size)))
                .collect(),
        };
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.to_string(), (Instant::now(), image.clone()));
        Ok(image)
    }

    /// `run`
    pub async fn run(self: &Arc<Self>, request: SchedRunRequest) -> Handled<SchedRunReply> {
        let id = match request.id.as_deref() {
            Some(id) if !id.is_empty() => {
                check_id(id).map_err(ErrorEnvelope::invalid)?;
                id.to_string()
            }
            _ => new_id()?,
        };
        let span = tracing::info_span!("run", container_id = %id, image = %request.create.image);
        self.run_inner(id, request).instrument(span).await
    }

    async fn run_inner(
        self: &Arc<Self>,
        id: String,
        request: SchedRunRequest,
    ) -> Handled<SchedRunReply> {
        let mut create = request.create;
        if create.image.trim().is_empty() {
            return Err(ErrorEnvelope::invalid("an image is required"));
        }
        if create.auto_remove && create.restart != RestartPolicy::No {
            return Err(ErrorEnvelope::invalid(
                "auto-remove (--rm) and a restart policy cannot be combined",
            ));
        }
        for constraint in &request.constraints {
            Constraint::parse(constraint).map_err(ErrorEnvelope::invalid)?;
        }
        if let Some(pin) = &request.node {
            subjects::check_token("node id", pin).map_err(ErrorEnvelope::invalid)?;
        }
        let name = match create.name.as_deref() {
            Some(name) if !name.is_empty() => {
                let name = name.strip_prefix('/').unwrap_or(name).to_string();
                check_name(&name).map_err(ErrorEnvelope::invalid)?;
                name
            }
            _ => generated_name(&id),
        };
        if name != generated_name(&id) && looks_generated(&name) {
            return Err(ErrorEnvelope::invalid(format!(
                "the name {name} has the form of generated names (berth_ and 12 hex digits): choose another"
            )));
        }
        let wait = request
            .wait_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.config.pending_timeout());
        let deadline = Instant::now() + wait;
        // The same id again: answer with what became of the first request (one the view
        // has not seen yet is caught by the record's create below).
        if self.view.container(&id).is_some() {
            return self.await_outcome(&id, deadline).await;
        }
        let image = self.resolve_image(&create.image).await?;
        if let NetworkMode::Named(network) = &create.network {
            self.network_somewhere(network).await?;
        }
        // A generated name is unique with its id (and no chosen name may look like one),
        // so only a chosen name costs a reservation.
        let reserved_name = name != generated_name(&id);
        create.id = Some(id.clone());
        create.name = Some(name.clone());
        let now = now_ms();
        let record = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            created_ms: now,
            desired: DesiredContainer {
                resources: resources_of(&create),
                create,
                start: !request.no_start,
                constraints: request.constraints,
                pin: request.node,
                image_digest: image.digest,
                layers: image.layers,
                platform: image.platform,
                pending_deadline_ms: now.saturating_add(wait.as_millis() as u64),
                stopped: false,
            },
            observed: ObservedContainer {
                phase: ContainerPhase::Pending,
                node_id: None,
                exit_code: None,
                ports: Vec::new(),
                error: None,
                placements: 0,
                updated_ms: now,
                event_seq: 0,
            },
        };
        let Some(_active) = self.activate(&id) else {
            return self.await_outcome(&id, deadline).await;
        };
        // A node with room now: reserve there and write the record already placed, one
        // record write instead of a pending one and its claim. A scheduler dying between
        // the two leaves a reservation the reconcile loop frees as an orphan.
        // The name and the node are reserved at the same time: two KV round trips in
        // parallel rather than in a row.
        let name_reservation = async {
            if reserved_name {
                store::reserve_name(&self.containers_kv, &name, &id).await
            } else {
                Ok(())
            }
        };
        let (named, reserved) = tokio::join!(
            name_reservation,
            self.reserve_somewhere(&record, None, true)
        );
        if let Err(err) = named {
            if let Ok(Ok(node)) = &reserved {
                let _ = store::release(&self.nodes_kv, &self.view, node, &id).await;
            }
            return Err(err);
        }
        let reserved = match reserved {
            Ok(reserved) => reserved,
            Err(err) => {
                if reserved_name {
                    store::release_name(&self.containers_kv, &name, &id).await;
                }
                return Err(err);
            }
        };
        if let Ok(node) = reserved {
            let mut placed = record.clone();
            claim_for(&mut placed, &node);
            let created = store::create_record(&self.containers_kv, &self.view, &placed).await;
            if !matches!(created, Ok(true)) {
                let _ = store::release(&self.nodes_kv, &self.view, &node, &id).await;
            }
            return match created {
                Ok(true) => {
                    tracing::info!(node = %node, "placed");
                    self.dispatch(placed, true).await
                }
                Ok(false) => self.await_outcome(&id, deadline).await,
                Err(err) => {
                    if reserved_name {
                        store::release_name(&self.containers_kv, &name, &id).await;
                    }
                    Err(err)
                }
            };
        }
        match store::create_record(&self.containers_kv, &self.view, &record).await {
            Ok(true) => {}
            Ok(false) => return self.await_outcome(&id, deadline).await,
            Err(err) => {
                if reserved_name {
                    store::release_name(&self.containers_kv, &name, &id).await;
                }
                return Err(err);
            }
        }
        tracing::info!(name = %name, "container pending placement");
        loop {
            match self
                .place(&record, None, |r| {
                    r.observed.phase == ContainerPhase::Pending
                })
                .await?
            {
                Placement::Placed(placed) => {
                    return self.dispatch(*placed, true).await;
                }
                Placement::Taken => return self.await_outcome(&id, deadline).await,
                Placement::NoRoom(reason) => {
                    if Instant::now() >= deadline {
                        let dropped =
                            store::delete_record(&self.containers_kv, &self.view, &id, |r| {
                                r.observed.phase == ContainerPhase::Pending
                            })
                            .await?;
                        if dropped.is_none() {
                            return self.await_outcome(&id, deadline).await;
                        }
                        return Err(ErrorEnvelope::unavailable(format!(
                            "no node can take container {name} within {wait:?}: {reason}"
                        )));
                    }
                    let noted = self
                        .view
                        .container(&id)
                        .is_some_and(|(r, _)| r.observed.error.as_deref() == Some(reason.as_str()));
                    if !noted {
                        store::update_record(&self.containers_kv, &self.view, &id, |r| {
                            if r.observed.phase != ContainerPhase::Pending {
                                return false;
                            }
                            r.observed.error = Some(reason.clone());
                            true
                        })
                        .await?;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.view.changed(left.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// Chooses a node for `record` (never `exclude`) and reserves its resources there:
    /// `Ok(Err(reason))` when no node has room. `place_despite_ports` (a new `run`): when
    /// only a taken host port is in the way, place it anyway, so that its start fails as
    /// Docker's does instead of the request waiting (see `only_ports_in_the_way`).
    async fn reserve_somewhere(
        &self,
        record: &ContainerRecord,
        exclude: Option<&str>,
        place_despite_ports: bool,
    ) -> Handled<Result<String, String>> {
        let constraints: Vec<Constraint> = record
            .desired
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        let create = &record.desired.create;
        let volumes: Vec<String> = create
            .volumes
            .iter()
            .filter(|v| !v.name.is_empty())
            .map(|v| v.name.clone())
            .collect();
        let ask = Ask {
            resources: record.desired.resources,
            constraints: &constraints,
            pin: record.desired.pin.as_deref(),
            layers: &record.desired.layers,
            platform: record.desired.platform.as_ref(),
            network: match &create.network {
                NetworkMode::Named(name) => Some(name.as_str()),
                _ => None,
            },
            volumes: &volumes,
            ports: &create.ports,
        };
        let strategy = self.config.strategy;
        for _ in 0..16 {
            let chosen = self.view.with_candidates(|candidates| {
                let pick = |nodes: &[placement::Candidate<'_>]| {
                    let chosen = placement::choose(nodes, &ask, strategy).or_else(|| {
                        (place_despite_ports && placement::only_ports_in_the_way(nodes, &ask))
                            .then(|| {
                                let portless = Ask {
                                    ports: &[],
                                    ..ask.clone()
                                };
                                placement::choose(nodes, &portless, strategy)
                            })
                            .flatten()
                    });
                    chosen
                        .map(str::to_string)
                        .ok_or_else(|| placement::explain(nodes, &ask))
                };
                // Copying a thousand candidates per placement only when one is excluded.
                match exclude {
                    None => pick(candidates),
                    Some(excluded) => {
                        let usable: Vec<_> = candidates
                            .iter()
                            .filter(|c| c.node_id != excluded)
                            .cloned()
                            .collect();
                        pick(&usable)
                    }
                }
            });
            let node = match chosen {
                Ok(node) => node,
                Err(reason) => return Ok(Err(reason)),
            };
            let reserved = {
                let lock = self.node_lock(&node);
                let _held = lock.lock().await;
                store::reserve(&self.nodes_kv, &self.view, &node, &record.id, ask.resources).await?
            };
            if reserved {
                return Ok(Ok(node));
            }
        }
        Ok(Err(
            "nodes kept filling up while placing; try again".to_string()
        ))
    }

    /// Chooses a node for `record` (never `exclude`), reserves its resources there and
    /// claims the record for that node if `claimable` still holds for the current record.
    pub async fn place(
        &self,
        record: &ContainerRecord,
        exclude: Option<&str>,
        claimable: impl Fn(&ContainerRecord) -> bool,
    ) -> Handled<Placement> {
        let node = match self.reserve_somewhere(record, exclude, false).await? {
            Ok(node) => node,
            Err(reason) => return Ok(Placement::NoRoom(reason)),
        };
        let previous = record.observed.node_id.clone();
        let claimed = store::update_record(&self.containers_kv, &self.view, &record.id, |r| {
            if !claimable(r) {
                return false;
            }
            claim_for(r, &node);
            true
        })
        .await;
        match claimed {
            Ok(Some(placed)) => {
                tracing::info!(container_id = %record.id, node = %node, previous = ?previous, "placed");
                Ok(Placement::Placed(Box::new(placed)))
            }
            Ok(None) => {
                store::release(&self.nodes_kv, &self.view, &node, &record.id).await?;
                Ok(Placement::Taken)
            }
            Err(err) => {
                let _ = store::release(&self.nodes_kv, &self.view, &node, &record.id).await;
                Err(err)
            }
        }
    }

    /// Sends `create` (and `start`) for a placed record to its node. `first`: a `run` is
    /// waiting, and a failed create drops the record (the run fails); a re-placement that
    /// fails goes back to pending instead, to be tried on another node.
    pub async fn dispatch(&self, record: ContainerRecord, first: bool) -> Handled<SchedRunReply> {
        let id = record.id.clone();
        let Some(node) = record.observed.node_id.clone() else {
            return Err(ErrorEnvelope::internal(format!(
                "container {id} has no node to dispatch to"
            )));
        };
        let span = tracing::info_span!("dispatch", container_id = %id, node = %node);
        async {
            let created: Result<ContainerCreated, BusError> = self
                .exec(
                    &node,
                    ExecVerb::Create,
                    &record.desired.create,
                    CREATE_DEADLINE,
                )
                .await;
            let created = match created {
                Ok(created) => created,
                Err(err) => {
                    let envelope =
                        upstream(&format!("creating container {id} on node {node}"), err);
                    self.undo_placement(&record, &node, first, &envelope.message)
                        .await;
                    return Err(envelope);
                }
            };
            // Started next, the record goes from scheduled to running in one write.
            if !record.desired.start {
                store::update_record(&self.containers_kv, &self.view, &id, |r| {
                    if r.observed.node_id.as_deref() != Some(node.as_str())
                        || r.observed.phase != ContainerPhase::Scheduled
                    {
                        return false;
                    }
                    r.observed.phase = ContainerPhase::Created;
                    true
                })
                .await?;
            }
            let mut reply = SchedRunReply {
                id: id.clone(),
                name: created.name,
                node_id: node.clone(),
                image_digest: created.image_digest,
                pid: 0,
                ports: Vec::new(),
            };
            if !record.desired.start {
                return Ok(reply);
            }
            let started: Result<ContainerStarted, BusError> = self
                .exec(
                    &node,
                    ExecVerb::Start,
                    &ContainerRef { id: id.clone() },
                    START_DEADLINE,
                )
                .await;
            let started = match started {
                Ok(started) => started,
                Err(err) => {
                    let envelope =
                        upstream(&format!("starting container {id} on node {node}"), err);
                    let exit_code = self
                        .exec::<_, ContainerInspect>(
                            &node,
                            ExecVerb::Inspect,
                            &ContainerRef { id: id.clone() },
                            CALL_DEADLINE,
                        )
                        .await
                        .ok()
                        .and_then(|i| i.exit_code);
                    let message = envelope.message.clone();
                    store::update_record(&self.containers_kv, &self.view, &id, |r| {
                        if r.observed.node_id.as_deref() != Some(node.as_str()) {
                            return false;
                        }
                        r.observed.phase = ContainerPhase::Exited;
                        r.observed.exit_code = exit_code;
                        r.observed.error = Some(message.clone());
                        true
                    })
                    .await?;
                    return Err(envelope);
                }
            };
            reply.pid = started.pid;
            let create = &record.desired.create;
            if !create.ports.is_empty() || create.publish_all {
                if let Ok(inspect) = self
                    .exec::<_, ContainerInspect>(
                        &node,
                        ExecVerb::Inspect,
                        &ContainerRef { id: id.clone() },
                        CALL_DEADLINE,
                    )
                    .await
                {
                    reply.ports = inspect.network.ports;
                }
            }
            let ports = reply.ports.clone();
            store::update_record(&self.containers_kv, &self.view, &id, |r| {
                if r.observed.node_id.as_deref() != Some(node.as_str()) {
                    return false;
                }
                if matches!(
                    r.observed.phase,
                    ContainerPhase::Scheduled | ContainerPhase::Created
                ) {
                    r.observed.phase = ContainerPhase::Running;
                }
                r.observed.ports = ports.clone();
                true
            })
            .await?;
            tracing::info!(pid = started.pid, "container running");
            Ok(reply)
        }
        .instrument(span)
        .await
    }

    async fn undo_placement(&self, record: &ContainerRecord, node: &str, first: bool, why: &str) {
        let id = &record.id;
        if let Err(err) = store::release(&self.nodes_kv, &self.view, node, id).await {
            tracing::warn!(container_id = %id, node, error = %err.message, "cannot release reservation");
        }
        let outcome = if first {
            store::delete_record(&self.containers_kv, &self.view, id, |r| {
                r.observed.node_id.as_deref() == Some(node)
            })
            .await
            .map(|_| ())
        } else {
            let pending_for = self.config.pending_timeout().as_millis() as u64;
            store::update_record(&self.containers_kv, &self.view, id, |r| {
                if r.observed.node_id.as_deref() != Some(node) {
                    return false;
                }
                r.observed.phase = ContainerPhase::Pending;
                r.observed.node_id = None;
                r.observed.error = Some(why.to_string());
                r.desired.pending_deadline_ms = now_ms().saturating_add(pending_for);
                true
            })
            .await
            .map(|_| ())
        };
        if let Err(err) = outcome {
            tracing::warn!(container_id = %id, error = %err.message, "cannot undo a failed placement");
        }
    }

    /// Waits until another request's (or instance's) work on `id` shows a result.
    pub async fn await_outcome(&self, id: &str, deadline: Instant) -> Handled<SchedRunReply> {
        let deadline = deadline.max(Instant::now() + CREATE_DEADLINE);
        loop {
            let Some((record, _)) = self.view.container(id) else {
                return Err(ErrorEnvelope::not_found(format!(
                    "container {id} was removed before it ran"
                )));
            };
            let done = match record.observed.phase {
                ContainerPhase::Running | ContainerPhase::Exited => true,
                ContainerPhase::Created => !record.desired.start,
                ContainerPhase::Lost => {
                    return Err(ErrorEnvelope::unavailable(format!(
                        "container {id}: its node was lost"
                    )))
                }
                ContainerPhase::Pending | ContainerPhase::Scheduled => false,
            };
            if done {
                return Ok(SchedRunReply {
                    id: record.id,
                    name: record.name,
                    node_id: record.observed.node_id.unwrap_or_default(),
                    image_digest: record.desired.image_digest,
                    pid: 0,
                    ports: record.observed.ports,
                });
            }
            if Instant::now() >= deadline {
                return Err(ErrorEnvelope::unavailable(format!(
                    "container {id} is still {}",
                    record.observed.phase.as_str()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_checked() {
        assert!(check_id(&"a".repeat(64)).is_ok());
        assert!(check_id(&"A".repeat(64)).is_err());
        assert!(check_id("abc").is_err());
        assert!(check_name("web-1").is_ok());
        assert!(check_name("-web").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn generated_names_are_recognised() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(generated_name(&id), "berth_0123456789ab");
        assert!(looks_generated(&generated_name(&id)));
        assert!(!looks_generated("berth_0123456789AB"));
        assert!(!looks_generated("berth_0123456789a"));
        assert!(!looks_generated("web_0123456789ab"));
    }

    #[test]
    fn limits_become_the_reservation() {
        let create = ContainerCreateRequest {
            nano_cpus: Some(500_000_000),
            memory_bytes: Some(64 << 20),
            pids_limit: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            resources_of(&create),
            Resources {
                cpu_millis: 500,
                memory_bytes: 64 << 20,
                pids: 0
            }
        );
    }
}

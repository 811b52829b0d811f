//! `create`: image preparation on the node, overlay rootfs, user, runtime spec, records.

use super::*;

const PREPARE_DEADLINE: Duration = Duration::from_secs(600);
const INSPECT_DEADLINE: Duration = Duration::from_secs(30);
const DEFAULT_STOP_TIMEOUT: u32 = 10;

impl Executor {
    /// `create`
    pub async fn create(
        self: &Arc<Self>,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        let id = match request.id.as_deref() {
            Some(id) if !id.is_empty() => {
                check_client_id(id).map_err(ErrorEnvelope::invalid)?;
                id.to_string()
            }
            _ => new_id()?,
        };
        let span = tracing::info_span!("create", container_id = %id, image = %request.image, image_digest = tracing::field::Empty);
        async {
            if request.id.is_none() {
                return self.create_inner(id, request).await;
            }
            // A caller-chosen id makes create idempotent: a retried or re-dispatched
            // request finds the container the first one made.
            let lock = self.op_lock(&id);
            let _held = lock.lock().await;
            if let Ok(record) = state::read_record(&self.dir(&id)) {
                return Ok(ContainerCreated {
                    id: record.id,
                    name: record.name,
                    image_digest: record.image_digest,
                });
            }
            self.create_inner(id, request).await
        }
        .instrument(span)
        .await
    }

    pub(super) async fn create_inner(
        self: &Arc<Self>,
        id: String,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        if request.image.trim().is_empty() {
            return Err(ErrorEnvelope::invalid("an image is required"));
        }
        if request.auto_remove && request.restart != RestartPolicy::No {
            // Docker's rule: a container that removes itself cannot also be restarted.
            return Err(ErrorEnvelope::invalid(
                "auto-remove (--rm) and a restart policy cannot be combined",
            ));
        }
        if request.console_size.is_some() && !request.tty {
            return Err(ErrorEnvelope::invalid(
                "a console size needs a terminal (-t)",
            ));
        }
        crate::logfiles::Rotation::from_opts(&request.log_opts).map_err(ErrorEnvelope::invalid)?;
        for bind in &request.binds {
            if !bind.source.starts_with('/') || !bind.destination.starts_with('/') {
                return Err(ErrorEnvelope::invalid(format!(
                    "bind mount {}:{}: both paths must be absolute",
                    bind.source, bind.destination
                )));
            }
        }
        let name = match &request.name {
            Some(name) if !name.is_empty() => {
                let name = name.strip_prefix('/').unwrap_or(name).to_string();
                check_name(&name).map_err(ErrorEnvelope::invalid)?;
                name
            }
            _ => format!("berth_{}", &id[..12]),
        };
        // Reserve the name for the duration of the create.
        {
            let mut reserved = self
                .reserved_names
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if reserved.contains(&name) {
                return Err(ErrorEnvelope::conflict(format!(
                    "the container name {name} is already in use"
                )));
            }
            reserved.insert(name.clone());
        }
        let outcome = self.create_reserved(&id, &name, request).await;
        self.reserved_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        if outcome.is_err() {
            // The image's snapshots may already be pinned for this id (prepare pins them
            // as it finds them): a container that never came to be must not keep them
            // from `image prune`. Releasing an id that pinned nothing is a no-op.
            self.release_snapshots(&id).await;
        }
        outcome
    }

    pub(super) async fn create_reserved(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        let containers_dir = self.paths.containers_dir.clone();
        let taken_by = {
            let name = name.to_string();
            blocking(move || {
                Ok(Executor::records_in(&containers_dir)
                    .into_iter()
                    .find(|(r, _)| r.name == name)
                    .map(|(r, _)| r.id))
            })
            .await?
        };
        if let Some(other) = taken_by {
            return Err(ErrorEnvelope::conflict(format!(
                "the container name {name} is already in use by container {other}"
            )));
        }
        let prepared: PrepareReply = berth_bus::request(
            &self.client,
            &subjects::unpack(&self.node_id, UnpackVerb::Prepare),
            &PrepareRequest {
                image: request.image.clone(),
                user: Some(id.to_string()),
                progress: None,
            },
            Encoding::Bincode,
            PREPARE_DEADLINE,
        )
        .await
        .map_err(|err| {
            upstream(
                &format!("preparing image {} on node {}", request.image, self.node_id),
                err,
            )
        })?;
        tracing::Span::current().record("image_digest", prepared.image_digest.as_str());
        let image: ImageInspect = request_inspect(&self.client, &prepared.image_digest).await?;
        let image_config = runspec::parse_image_config(&image.config).map_err(|err| {
            ErrorEnvelope::invalid(format!("image {} ({}): {err}", request.image, image.digest))
        })?;
        // Volumes: anonymous ones get their name now; every one is reserved so that a
        // concurrent `volume rm` cannot take it before the record names it.
        let mut volumes = runspec::plan_volumes(&request, &image_config)
            .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
        let mut anonymous = Vec::new();
        for volume in volumes.iter_mut() {
            if volume.name.is_empty() {
                volume.name = new_id()?;
                anonymous.push(volume.name.clone());
            } else {
                crate::volumes::check_volume_name(&volume.name)
                    .map_err(crate::volumes_verbs::volume_error)?;
            }
        }
        let names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
        self.volumes.reserve(&names);
        let hostname = request
            .hostname
            .clone()
            .unwrap_or_else(|| id.chars().take(12).collect());
        let exposed: Vec<String> = image_config
            .exposed_ports
            .as_ref()
            .map(|ports| ports.keys().cloned().collect())
            .unwrap_or_default();
        let network = self
            .net
            .plan(&request, &exposed, name, &hostname)
            .map_err(|err| crate::network::in_context(err, &format!("container {id}")))?;
        let record_base = (
            id.to_string(),
            name.to_string(),
            self.node_id.clone(),
            prepared.image_digest.clone(),
        );
        let net = Arc::clone(&self.net);
        let dir = self.dir(id);
        let monitor_bin = self.paths.monitor_bin.clone();
        let lowerdirs = prepared.lowerdirs.clone();
        let req = request.clone();
        let this = Arc::clone(self);
        let built = blocking(move || {
            let mut made = Vec::new();
            let result = this
                .make_volumes(&volumes, &anonymous, &request.image, &mut made)
                .and_then(|()| {
                    build_container(
                        &dir,
                        (&monitor_bin, &lowerdirs),
                        &req,
                        &image_config,
                        (&this.volumes, &volumes),
                        record_base,
                        (&net, &network),
                    )
                });
            if result.is_err() {
                let _ = overlay::unmount(&dir.join(files::ROOTFS));
                let _ = berth_fstree::remove_tree(&dir);
                // Volumes this create made for itself go with it; named ones stay.
                for name in made {
                    let _ = this.volumes.remove(&name, Vec::new, true);
                }
            }
            result
        })
        .await;
        self.volumes.release(&names);
        let record = built?;
        tracing::info!(name = %record.name, "container created");
        self.publish_event(&record, "create", None, None).await;
        Ok(ContainerCreated {
            id: record.id,
            name: record.name,
            image_digest: record.image_digest,
        })
    }
}

impl Executor {
    /// Creates the volumes a container names that do not exist yet; `made` collects the
    /// anonymous ones created here.
    fn make_volumes(
        &self,
        volumes: &[VolumeMount],
        anonymous_names: &[String],
        image: &str,
        made: &mut Vec<String>,
    ) -> Handled<()> {
        for volume in volumes {
            let anonymous = anonymous_names.contains(&volume.name);
            let existed = self.volumes.get(&volume.name).is_ok();
            let labels =
                std::collections::BTreeMap::from([("berth.image".to_string(), image.to_string())]);
            self.volumes
                .create(
                    &volume.name,
                    if anonymous {
                        labels
                    } else {
                        Default::default()
                    },
                    anonymous,
                )
                .map_err(crate::volumes_verbs::volume_error)?;
            if anonymous && !existed {
                made.push(volume.name.clone());
            }
        }
        Ok(())
    }
}

async fn request_inspect(client: &async_nats::Client, name: &str) -> Handled<ImageInspect> {
    berth_bus::request(
        client,
        &subjects::image(ImageVerb::Inspect),
        &ImageInspectRequest {
            name: name.to_string(),
        },
        Encoding::Bincode,
        INSPECT_DEADLINE,
    )
    .await
    .map_err(|err| upstream(&format!("inspecting image {name}"), err))
}

/// The blocking part of create: directories, overlay mount, user, spec, records.
fn build_container(
    dir: &Path,
    (monitor_bin, lowerdirs): (&Path, &[String]),
    request: &ContainerCreateRequest,
    image: &ImageRunConfig,
    (store, volumes): (&crate::volumes::Volumes, &[VolumeMount]),
    (id, name, node_id, image_digest): (String, String, String, String),
    (networks, network): (
        &crate::network::Networks,
        &crate::network::store::ContainerNet,
    ),
) -> Handled<ContainerRecord> {
    let io = |what: &Path, err: std::io::Error| {
        internal(format!("container {id}: {}: {err}", what.display()))
    };
    std::fs::create_dir(dir).map_err(|err| io(dir, err))?;
    for sub in [files::UPPER, files::WORK, files::ROOTFS] {
        let path = dir.join(sub);
        std::fs::create_dir(&path).map_err(|err| io(&path, err))?;
    }
    let rootfs = dir.join(files::ROOTFS);
    let plan = overlay::plan(lowerdirs, &dir.join(files::UPPER), &dir.join(files::WORK))
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    overlay::mount(&plan, &rootfs, monitor_bin)
        .map_err(|err| internal(format!("container {id}: {err}")))?;
    let passwd = read_in_root(&rootfs, "etc/passwd");
    let group = read_in_root(&rootfs, "etc/group");
    let user_spec = runspec::user_spec(image, request);
    let user = users::resolve(&user_spec, passwd.as_deref(), group.as_deref())
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    let mut volume_binds = Vec::new();
    for volume in volumes {
        let data = store.data_path(&volume.name);
        copy_up(&rootfs, &volume.destination, &data)
            .map_err(|err| internal(format!("container {id}: volume {}: {err}", volume.name)))?;
        volume_binds.push(BindMount {
            source: data.display().to_string(),
            destination: volume.destination.clone(),
            read_only: volume.read_only,
        });
    }
    let host_devices = if request.privileged {
        runspec::scan_host_devices(Path::new("/dev"))
    } else {
        Vec::new()
    };
    let inputs = SpecInputs {
        id: &id,
        node_id: &node_id,
        rootfs: &rootfs,
        user: &user,
        volume_binds: &volume_binds,
        host_devices: &host_devices,
        host_bounding: runspec::host_bounding_set(),
    };
    let (plan, spec) = runspec::build(request, image, &inputs)
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    networks
        .write_container_files(dir, network)
        .map_err(|err| crate::network::in_context(err, &format!("container {id}")))?;
    let spec = networks
        .edit_spec(spec, &id, dir, network, request.read_only)
        .map_err(|err| internal(format!("container {id}: {err}")))?;
    let spec_path = dir.join(files::SPEC);
    spec.save(&spec_path)
        .map_err(|err| internal(format!("container {id}: {}: {err}", spec_path.display())))?;
    let record = ContainerRecord {
        id: id.clone(),
        name,
        image: request.image.clone(),
        image_digest,
        node_id,
        created: state::now_rfc3339(),
        config: request.clone(),
        command: plan.args,
        env: plan.env,
        workdir: plan.cwd,
        uid: user.uid,
        gid: user.gid,
        hostname: plan.hostname,
        stop_signal: plan.stop_signal,
        stop_timeout: request.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
        volumes: volumes.to_vec(),
    };
    state::write_state(dir, &ContainerState::created())
        .map_err(|err| internal(format!("container {id}: {err}")))?;
    // The record last: a directory with a record is a complete container.
    state::write_record(dir, &record).map_err(|err| internal(format!("container {id}: {err}")))?;
    Ok(record)
}

/// Docker's copy-up: an empty volume mounted where the image has a directory starts
/// with that directory's content. The path is resolved inside the rootfs only.
fn copy_up(rootfs: &Path, destination: &str, data: &Path) -> std::io::Result<()> {
    let empty = std::fs::read_dir(data)?.next().is_none();
    if !empty {
        return Ok(());
    }
    let root = std::fs::canonicalize(rootfs)?;
    let Ok(source) = std::fs::canonicalize(root.join(destination.trim_start_matches('/'))) else {
        return Ok(());
    };
    if !source.starts_with(&root) || !source.is_dir() {
        return Ok(());
    }
    crate::volumes::copy_tree(&source, data)
}

/// One rule for the executor and the scheduler, kept in shared/proto.
pub use berth_proto::messages::exec::check_container_id as check_client_id;

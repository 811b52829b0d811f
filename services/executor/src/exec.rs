//! `exec` and `stats`: a new process in a running container (its own exit code), and the
//! container's cgroup counters. The exec'd process is the executor's child: unlike the
//! container's main process it does not outlive an executor restart (as in Docker, where
//! exec sessions die with the daemon's shim connection).

use crate::lifecycle::{blocking, read_in_root, state_error, Executor};
use crate::monitor;
use crate::runspec;
use crate::state::{self, files};
use crate::stdio;
use crate::users;
use berth_proto::messages::exec::{
    ContainerRef, ContainerStats, ContainerStatus, ExecExit, ExecOutput, ExecRequest,
};
use berth_proto::{Encoding, ErrorEnvelope};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

type Handled<T> = Result<T, ErrorEnvelope>;

fn pipe() -> Handled<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|err| ErrorEnvelope::internal(format!("pipe: {err}")))
}

/// An exec's standard streams and the ends the executor keeps.
struct ExecStreams {
    stdio: berth_runtime::Stdio,
    /// Read ends of stdout and stderr (`true`: stderr).
    outputs: Vec<(OwnedFd, bool)>,
    /// `-i` without a terminal: the write end of its stdin.
    stdin_w: Option<OwnedFd>,
}

impl ExecStreams {
    fn new(tty: bool, open_stdin: bool) -> Handled<ExecStreams> {
        let null = || {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|err| ErrorEnvelope::internal(format!("/dev/null: {err}")))
        };
        if tty {
            // The runtime puts the terminal's slave on 0, 1 and 2.
            return Ok(ExecStreams {
                stdio: berth_runtime::Stdio {
                    stdin: Some(null()?),
                    stdout: Some(null()?),
                    stderr: Some(null()?),
                },
                outputs: Vec::new(),
                stdin_w: None,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin, stdin_w) = if open_stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (null()?, None)
        };
        Ok(ExecStreams {
            stdio: berth_runtime::Stdio {
                stdin: Some(stdin),
                stdout: Some(out_w),
                stderr: Some(err_w),
            },
            outputs: vec![(out_r, false), (err_r, true)],
            stdin_w,
        })
    }
}

/// Reads `fd` to EOF, sending pieces to `sink`.
fn pump(fd: OwnedFd, stderr: bool, sink: tokio::sync::mpsc::UnboundedSender<ExecOutput>) {
    let mut file = std::fs::File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let piece = ExecOutput {
                    stderr,
                    data: buf[..n].to_vec(),
                    eof: false,
                };
                if sink.send(piece).is_err() {
                    break;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

impl Executor {
    /// `exec`
    ///
    /// The output pieces go out in the request's encoding, so a JSON client reads JSON.
    pub async fn exec(
        self: &Arc<Self>,
        request: ExecRequest,
        encoding: Encoding,
    ) -> Handled<ExecExit> {
        let id = self.resolve(&request.id).await?;
        let span = tracing::info_span!("exec", container_id = %id);
        self.exec_resolved(id, request, encoding)
            .instrument(span)
            .await
    }

    async fn exec_resolved(
        self: &Arc<Self>,
        id: String,
        request: ExecRequest,
        encoding: Encoding,
    ) -> Handled<ExecExit> {
        if berth_proto::subjects::check_token("output subject", &request.output.replace('.', "_"))
            .is_err()
        {
            return Err(ErrorEnvelope::invalid(format!(
                "invalid output subject {:?}",
                request.output
            )));
        }
        let input_id = match (&request.exec_id, request.open_stdin || request.tty) {
            (Some(exec_id), true) => {
                berth_proto::subjects::check_token("exec id", exec_id)
                    .map_err(ErrorEnvelope::invalid)?;
                if self.exec_inputs.contains(exec_id) {
                    return Err(ErrorEnvelope::conflict(format!(
                        "exec session {exec_id} exists already"
                    )));
                }
                Some(exec_id.clone())
            }
            (None, true) => {
                return Err(ErrorEnvelope::invalid(
                    "exec with -i or -t needs an exec_id for its input",
                ))
            }
            (_, false) => None,
        };
        let dir = self.dir(&id);
        let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
        if st.status != ContainerStatus::Running {
            return Err(ErrorEnvelope::conflict(format!(
                "container {id} is not running"
            )));
        }
        let runtime_root = self.paths.runtime_root.clone();
        let init = self.paths.monitor_bin.clone();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let exec_id = id.clone();
        let exec_id_container = id.clone();
        let session = crate::lifecycle::new_id()?;
        let command = request.cmd.join(" ");
        let this = Arc::clone(self);
        let session_input = input_id.clone();
        let started = blocking(move || {
            let container = berth_runtime::Container::load(&runtime_root, &exec_id)
                .map_err(|err| ErrorEnvelope::conflict(format!("container {exec_id}: {err}")))?;
            let base = container.spec().process().clone().ok_or_else(|| {
                ErrorEnvelope::internal(format!("container {exec_id} has no process"))
            })?;
            let user = match &request.user {
                Some(spec) => {
                    let rootfs = dir.join(files::ROOTFS);
                    let passwd = read_in_root(&rootfs, "etc/passwd");
                    let group = read_in_root(&rootfs, "etc/group");
                    Some(
                        users::resolve(spec, passwd.as_deref(), group.as_deref())
                            .map_err(ErrorEnvelope::invalid)?,
                    )
                }
                None => None,
            };
            let mut process = runspec::exec_process(
                &base,
                &request.cmd,
                &request.env,
                request.workdir.as_deref(),
                user.as_ref(),
            )
            .map_err(ErrorEnvelope::invalid)?;
            if request.tty {
                process = runspec::with_terminal(process, request.console_size)
                    .map_err(ErrorEnvelope::invalid)?;
            }
            let streams = ExecStreams::new(request.tty, request.open_stdin)?;
            match container.exec(&process, streams.stdio, Some(&init)) {
                Ok(process) => {
                    let pid = process.pid;
                    // With a terminal its master is the one output and where input goes.
                    let (outputs, sink) = match (request.tty, process.console) {
                        (true, Some(master)) => {
                            let copy = master.try_clone().map_err(|err| {
                                ErrorEnvelope::internal(format!("pty master: {err}"))
                            })?;
                            (vec![(master, false)], Some(stdio::Sink::pty(copy)))
                        }
                        (true, None) => {
                            return Err(ErrorEnvelope::internal(
                                "the runtime gave no terminal for the exec",
                            ))
                        }
                        (false, _) => (streams.outputs, streams.stdin_w.map(stdio::Sink::pipe)),
                    };
                    if let (Some(exec_id), Some(sink)) = (&session_input, sink) {
                        this.exec_inputs.insert(exec_id, &exec_id_container, sink);
                    }
                    let readers: Vec<_> = outputs
                        .into_iter()
                        .map(|(fd, stderr)| {
                            let sender = sender.clone();
                            std::thread::spawn(move || pump(fd, stderr, sender))
                        })
                        .collect();
                    Ok(Ok((pid, readers)))
                }
                Err(err) => {
                    let message = err.to_string();
                    Ok(Err(ExecExit {
                        exit_code: monitor::start_failure_code(&message),
                        error: Some(message),
                    }))
                }
            }
        })
        .await?;
        let (pid, readers) = match started {
            Ok(started) => {
                self.publish_exec_event(&record, "exec_start", &session, &command, None)
                    .await;
                started
            }
            Err(failed) => {
                self.publish_exec_output(
                    &request.output,
                    encoding,
                    ExecOutput {
                        stderr: false,
                        data: Vec::new(),
                        eof: true,
                    },
                )
                .await;
                return Ok(failed);
            }
        };
        // The process is reaped and its output pumped by a task of its own, so a caller
        // that stops waiting (`timeout_ms`) leaves it running: the output still flows to
        // `output`, ending with `eof`, and the exit code arrives as the `exec_die` event.
        let timeout_ms = request.timeout_ms;
        let (session_for_error, id_for_error) = (session.clone(), id.clone());
        let this = Arc::clone(self);
        let finished = tokio::spawn(
            async move {
                this.finish_exec(
                    pid,
                    readers,
                    receiver,
                    (request.output, encoding),
                    input_id,
                    id,
                    record,
                    session,
                    command,
                )
                .await
            }
            .instrument(tracing::Span::current()),
        );
        let joined = match timeout_ms {
            None => finished.await,
            Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), finished).await {
                Ok(joined) => joined,
                Err(_) => {
                    return Err(ErrorEnvelope::unavailable(format!(
                        "exec {session_for_error} in container {id_for_error} still running after \
                         timeout_ms={ms}; its exit code comes as the exec_die event"
                    )))
                }
            },
        };
        joined.map_err(|err| ErrorEnvelope::internal(format!("exec wait task: {err}")))?
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_exec(
        self: Arc<Self>,
        pid: i32,
        readers: Vec<std::thread::JoinHandle<()>>,
        mut receiver: tokio::sync::mpsc::UnboundedReceiver<ExecOutput>,
        (output, encoding): (String, Encoding),
        input_id: Option<String>,
        id: String,
        record: state::ContainerRecord,
        session: String,
        command: String,
    ) -> Handled<ExecExit> {
        let waited = tokio::task::spawn_blocking(move || {
            let code = berth_runtime::container::wait_pid(pid);
            for reader in readers {
                let _ = reader.join();
            }
            code
        });
        while let Some(piece) = receiver.recv().await {
            self.publish_exec_output(&output, encoding, piece).await;
        }
        let code = waited
            .await
            .map_err(|err| ErrorEnvelope::internal(format!("exec wait task: {err}")));
        if let Some(exec_id) = &input_id {
            self.exec_inputs.remove(exec_id);
        }
        let code =
            code?.map_err(|err| ErrorEnvelope::internal(format!("container {id}: {err}")))?;
        self.publish_exec_output(
            &output,
            encoding,
            ExecOutput {
                stderr: false,
                data: Vec::new(),
                eof: true,
            },
        )
        .await;
        tracing::info!(exit_code = code, "exec finished");
        self.publish_exec_event(&record, "exec_die", &session, &command, Some(code))
            .await;
        Ok(ExecExit {
            exit_code: code,
            error: None,
        })
    }

    async fn publish_exec_event(
        &self,
        record: &state::ContainerRecord,
        action: &str,
        exec_id: &str,
        command: &str,
        exit_code: Option<i32>,
    ) {
        let event = berth_proto::messages::exec::ContainerEvent {
            action: action.to_string(),
            id: record.id.clone(),
            name: record.name.clone(),
            image: record.image.clone(),
            node_id: self.node_id.clone(),
            exit_code,
            signal: None,
            oom_killed: false,
            exec_id: Some(exec_id.to_string()),
            command: Some(command.to_string()),
            time: state::now_rfc3339(),
        };
        berth_bus::events::publish(
            &self.client,
            berth_proto::subjects::EventKind::Container,
            &record.id,
            action,
            &event,
        )
        .await;
    }

    async fn publish_exec_output(&self, subject: &str, encoding: Encoding, piece: ExecOutput) {
        match encoding.encode(&piece) {
            Ok(body) => {
                if let Err(err) = self.client.publish(subject.to_string(), body.into()).await {
                    tracing::warn!(error = %err, "cannot publish exec output");
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot encode exec output"),
        }
    }

    /// `stats`
    pub async fn stats(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerStats> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
        let runtime_root = self.paths.runtime_root.clone();
        blocking(move || {
            let read_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let online_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let mut stats = ContainerStats {
                id: record.id.clone(),
                name: record.name.clone(),
                read_ns,
                cpu_usage_ns: 0,
                online_cpus,
                memory_usage: 0,
                memory_limit: None,
                pids: 0,
            };
            if st.status == ContainerStatus::Running {
                if let Ok(container) = berth_runtime::Container::load(&runtime_root, &record.id) {
                    let counters = container.stats();
                    stats.cpu_usage_ns = counters.cpu_usage_ns;
                    stats.memory_usage = counters.memory_usage;
                    stats.memory_limit = counters.memory_limit;
                    stats.pids = counters.pids_current;
                }
            }
            Ok(stats)
        })
        .await
    }
}

//! `stdin`: input from attached clients. A container's goes into the FIFO its monitor
//! reads (so it outlives executor restarts); an exec session's goes straight into the
//! pipe or pty the executor holds for it, since the exec'd process is the executor's.

use crate::lifecycle::{blocking, state_error, Executor};
use crate::state::{self, files};
use crate::stdio::{self, Dedup, DeliverError, Frame, Sink};
use berth_proto::messages::exec::{
    ContainerStatus, StdinAck, StdinPayload, StdinRequest, MAX_STDIN_CHUNK,
};
use berth_proto::ErrorEnvelope;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Handled<T> = Result<T, ErrorEnvelope>;

/// How long one request waits for a process that does not read before the client is
/// told to try again: bounded, so a stuck reader holds no thread for long.
const FIFO_PATIENCE: Duration = Duration::from_secs(2);

/// The input side of one running exec session.
pub(crate) struct ExecInput {
    /// Full id of the container it runs in.
    pub(crate) container: String,
    state: Mutex<(Sink, Dedup)>,
}

/// Exec sessions that take input, by their client-chosen id.
#[derive(Default)]
pub(crate) struct ExecInputs {
    sessions: Mutex<HashMap<String, Arc<ExecInput>>>,
}

impl ExecInputs {
    /// Registers a session; `false` if the id is taken.
    pub(crate) fn insert(&self, exec_id: &str, container: &str, sink: Sink) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.contains_key(exec_id) {
            return false;
        }
        sessions.insert(
            exec_id.to_string(),
            Arc::new(ExecInput {
                container: container.to_string(),
                state: Mutex::new((sink, Dedup::default())),
            }),
        );
        true
    }

    pub(crate) fn contains(&self, exec_id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(exec_id)
    }

    /// The session ended: its input end closes when the last request using it is done.
    pub(crate) fn remove(&self, exec_id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
    }

    fn get(&self, exec_id: &str) -> Option<Arc<ExecInput>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
    }
}

/// Checks what a request carries before anything is touched.
fn check(request: &StdinRequest) -> Handled<()> {
    if let StdinPayload::Data(data) = &request.payload {
        if data.len() > MAX_STDIN_CHUNK {
            return Err(ErrorEnvelope::invalid(format!(
                "stdin chunk of {} bytes: at most {MAX_STDIN_CHUNK} per request",
                data.len()
            )));
        }
    }
    if let Some(exec_id) = &request.exec_id {
        berth_proto::subjects::check_token("exec id", exec_id).map_err(ErrorEnvelope::invalid)?;
    }
    Ok(())
}

impl Executor {
    /// `stdin`
    pub async fn stdin(self: &Arc<Self>, request: StdinRequest) -> Handled<StdinAck> {
        check(&request)?;
        let id = self.resolve(&request.id).await?;
        let seq = request.seq;
        match request.exec_id.clone() {
            Some(exec_id) => self.exec_stdin(&id, &exec_id, request).await?,
            None => self.container_stdin(&id, request).await?,
        }
        Ok(StdinAck { seq })
    }

    async fn container_stdin(&self, id: &str, request: StdinRequest) -> Handled<()> {
        let dir = self.dir(id);
        let record = state::read_record(&dir).map_err(|err| state_error(id, err))?;
        if !record.config.open_stdin && !record.config.tty {
            return Err(ErrorEnvelope::conflict(format!(
                "container {id} was created without -i: it takes no input"
            )));
        }
        let st = state::read_state(&dir).map_err(|err| state_error(id, err))?;
        if st.status != ContainerStatus::Running {
            return Err(ErrorEnvelope::conflict(format!(
                "container {id} is not running"
            )));
        }
        let fifo = dir.join(files::STDIN);
        let frame = Frame {
            client: request.client,
            seq: request.seq,
            payload: request.payload,
        };
        let id = id.to_string();
        blocking(move || {
            stdio::deliver(&fifo, &frame, FIFO_PATIENCE).map_err(|err| match err {
                DeliverError::NoStdin => ErrorEnvelope::conflict(format!("container {id}: {err}")),
                // The client sends the same request again later.
                DeliverError::Full => {
                    ErrorEnvelope::unavailable(format!("container {id}: {err}; try again"))
                }
                DeliverError::Frame(_) => ErrorEnvelope::invalid(format!("container {id}: {err}")),
                DeliverError::Io { .. } => {
                    ErrorEnvelope::internal(format!("container {id}: stdin: {err}"))
                }
            })
        })
        .await
    }

    async fn exec_stdin(&self, id: &str, exec_id: &str, request: StdinRequest) -> Handled<()> {
        let session = self
            .exec_inputs
            .get(exec_id)
            .filter(|s| s.container == id)
            .ok_or_else(|| {
                ErrorEnvelope::not_found(format!(
                    "no exec session {exec_id} taking input in container {id}"
                ))
            })?;
        let exec_id = exec_id.to_string();
        blocking(move || {
            let mut guard = session.state.lock().unwrap_or_else(|p| p.into_inner());
            let (sink, dedup) = &mut *guard;
            if !dedup.admit(request.client, request.seq) {
                return Ok(());
            }
            // Blocks while the process does not read; it ends when the process exits.
            sink.apply(&request.payload).map_err(|err| {
                ErrorEnvelope::internal(format!("exec session {exec_id}: stdin: {err}"))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_chunks_and_bad_exec_ids_are_invalid() {
        let mut request = StdinRequest {
            id: "c".into(),
            exec_id: None,
            client: 1,
            seq: 1,
            payload: StdinPayload::Data(vec![0; MAX_STDIN_CHUNK + 1]),
        };
        assert!(check(&request).is_err());
        request.payload = StdinPayload::Data(vec![0; MAX_STDIN_CHUNK]);
        assert!(check(&request).is_ok());
        request.exec_id = Some("a.b".into());
        assert!(check(&request).is_err());
    }

    #[test]
    fn sessions_are_unique_and_go_away() {
        let inputs = ExecInputs::default();
        let (_r, w) = nix::unistd::pipe().expect("pipe");
        assert!(inputs.insert("e1", "c1", Sink::pipe(w)));
        let (_r2, w2) = nix::unistd::pipe().expect("pipe");
        assert!(!inputs.insert("e1", "c1", Sink::pipe(w2)));
        assert!(inputs.contains("e1"));
        inputs.remove("e1");
        assert!(!inputs.contains("e1"));
    }
}

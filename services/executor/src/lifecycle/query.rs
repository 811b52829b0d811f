//! `wait`, `inspect`, `list` and `logs`.

use super::*;

/// Largest log payload in one reply or chunk: well below NATS' 1 MiB default.
pub const MAX_LOG_PAYLOAD: usize = 512 * 1024;

/// Reads whole CRI lines of the log from `start`, at most `max` bytes.
pub(super) fn read_log(path: &Path, start: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if start >= len {
        return Ok((Vec::new(), len));
    }
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(max as u64).read_to_end(&mut data)?;
    data.truncate(crilog::whole_lines(&data));
    Ok((data, len))
}

impl Executor {
    /// `wait`: blocks until the container is not running, then its exit.
    pub async fn wait(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerExit> {
        let id = self.resolve(&request.id).await?;
        // A created container that was never started: wait for it to start and exit.
        loop {
            let st = state::read_state(&self.dir(&id)).map_err(|err| state_error(&id, err))?;
            if st.status != ContainerStatus::Created {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !self.wait_exit(&id, Duration::from_secs(3600)).await {}
        let st = state::read_state(&self.dir(&id)).map_err(|err| state_error(&id, err))?;
        Ok(ContainerExit {
            id,
            exit_code: st.exit_code.unwrap_or(-1),
            oom_killed: st.oom_killed,
            error: st.error,
        })
    }

    /// `inspect`
    pub async fn inspect(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerInspect> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
        Ok(ContainerInspect {
            id: record.id,
            name: record.name,
            image: record.image,
            image_digest: record.image_digest,
            node_id: record.node_id,
            status: st.status,
            pid: if st.status == ContainerStatus::Running {
                st.pid
            } else {
                0
            },
            exit_code: st.exit_code,
            oom_killed: st.oom_killed,
            error: st.error,
            created: record.created,
            started_at: st.started_at,
            finished_at: st.finished_at,
            command: record.command,
            env: record.env,
            workdir: record.workdir,
            uid: record.uid,
            gid: record.gid,
            hostname: record.hostname,
            config: record.config,
            rootfs: dir.join(files::ROOTFS).display().to_string(),
            log_path: dir.join(files::LOG).display().to_string(),
            restart_count: st.restart_count,
        })
    }

    /// `list`
    pub async fn list(self: &Arc<Self>, all: bool) -> Handled<ContainerList> {
        let dir = self.paths.containers_dir.clone();
        let node_id = self.node_id.clone();
        blocking(move || {
            let mut containers: Vec<ContainerSummary> = Executor::records_in(&dir)
                .iter()
                .filter(|(_, st)| all || st.status == ContainerStatus::Running)
                .map(|(record, st)| summary(record, st))
                .collect();
            containers.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
            Ok(ContainerList {
                node_id,
                containers,
            })
        })
        .await
    }

    /// `logs`: one page of history.
    pub async fn logs(self: &Arc<Self>, request: LogsRequest) -> Handled<LogsPage> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let running = state::read_state(&dir)
            .map(|s| s.status == ContainerStatus::Running)
            .unwrap_or(false);
        let page_id = id.clone();
        blocking(move || {
            let path = dir.join(files::LOG);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let start = match (request.from_offset, request.tail) {
                (Some(offset), _) => offset.min(len),
                (None, Some(n)) => tail_offset(&path, len, n)
                    .map_err(|err| internal(format!("{}: {err}", path.display())))?,
                (None, None) => 0,
            };
            let (data, len) = read_log(&path, start, MAX_LOG_PAYLOAD)
                .map_err(|err| internal(format!("{}: {err}", path.display())))?;
            let end = start + data.len() as u64;
            Ok(LogsPage {
                id: page_id,
                start,
                end,
                more: end < len && !data.is_empty(),
                data,
                running,
            })
        })
        .await
    }
}

/// Start offset of the last `n` records of the log at `path` (of length `len`).
fn tail_offset(path: &Path, len: u64, n: u64) -> std::io::Result<u64> {
    // Records are at most ~16 KiB: the last n fit in n * 17 KiB, capped at 64 MiB.
    let window = n.saturating_mul(17 * 1024).min(64 << 20).min(len);
    let from = len - window;
    let (data, _) = {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        file.take(window).read_to_end(&mut data)?;
        (data, ())
    };
    let data = &data[..crilog::whole_lines(&data)];
    // When the window starts mid-record, the first (partial) line is not one of the n.
    let skip = if from == 0 {
        0
    } else {
        data.iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |i| i + 1)
    };
    Ok(from + (skip + crilog::tail_start(&data[skip..], n)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_pages_and_tails_are_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            b"t stdout F a\nt stdout F b\nt stderr F c\nt stdout P d",
        )
        .expect("write");
        let (data, len) = read_log(&path, 0, 20).expect("reads");
        assert_eq!(data, b"t stdout F a\n".to_vec());
        assert_eq!(len, 51);
        let (data, _) = read_log(&path, 13, 1000).expect("reads");
        assert_eq!(data, b"t stdout F b\nt stderr F c\n".to_vec());
        assert_eq!(tail_offset(&path, len, 1).expect("tail"), 26);
        assert_eq!(tail_offset(&path, len, 5).expect("tail"), 0);
        let (data, len) = read_log(&dir.path().join("missing"), 0, 10).expect("missing is empty");
        assert!(data.is_empty() && len == 0);
    }
}

//! `logs`: history pages and live chunks of a container's CRI log.

use super::*;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Keep following new output.
    #[arg(short = 'f', long)]
    pub(super) follow: bool,
    /// Only the last N lines ("all" for everything).
    #[arg(short = 'n', long, default_value = "all")]
    pub(super) tail: String,
    pub(super) container: String,
}

/// Prints CRI records: text to stdout or stderr, a newline unless the record is partial.
pub fn print_records(data: &[u8]) {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some((is_stderr, partial, text)) = parse_record(line) else {
            continue;
        };
        let sink: &mut dyn Write = if is_stderr { &mut err } else { &mut out };
        let _ = sink.write_all(text);
        if !partial {
            let _ = sink.write_all(b"\n");
        }
    }
    let _ = out.flush();
    let _ = err.flush();
}

/// `<ts> <stream> <F|P> <text>` → (stderr?, partial?, text).
pub fn parse_record(line: &[u8]) -> Option<(bool, bool, &[u8])> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let _ts = fields.next()?;
    let stream = fields.next()?;
    let tag = fields.next()?;
    let text = fields.next().unwrap_or(&[]);
    Some((stream == b"stderr", tag == b"P", text))
}

/// Follows a container's log from `next`: prints live chunks, fills gaps from history.
pub(super) struct Follower<'a> {
    pub(super) target: &'a Target,
    pub(super) id: String,
    pub(super) next: u64,
}

impl Follower<'_> {
    /// Prints pages from `next` until caught up (or up to `until`).
    pub(super) async fn catch_up(&mut self, until: Option<u64>) -> Result<bool, Failure> {
        loop {
            if until.is_some_and(|u| self.next >= u) {
                return Ok(true);
            }
            let page: LogsPage = self
                .target
                .call(
                    ExecVerb::Logs,
                    &LogsRequest {
                        id: self.id.clone(),
                        from_offset: Some(self.next),
                        tail: None,
                    },
                    None,
                )
                .await
                .map_err(failure)?;
            print_records(&page.data);
            self.next = page.end;
            if !page.more || page.data.is_empty() {
                return Ok(page.running);
            }
        }
    }

    /// Handles one live chunk; `true` at end of output.
    pub(super) async fn chunk(&mut self, chunk: LogChunk) -> Result<bool, Failure> {
        if chunk.offset > self.next {
            self.catch_up(Some(chunk.offset)).await?;
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if end > self.next && chunk.offset <= self.next {
            let skip = (self.next - chunk.offset) as usize;
            print_records(&chunk.data[skip..]);
            self.next = end;
        }
        Ok(chunk.eof)
    }
}

pub(super) async fn logs(
    args: LogsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let tail = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<u64>()
                .map_err(|_| Failure::berth(format!("invalid --tail {n:?}")))?,
        ),
    };
    // Full id first, so the live subject is right even when given a name.
    let inspect: ContainerInspect = target
        .call(
            ExecVerb::Inspect,
            &ContainerRef {
                id: args.container.clone(),
            },
            None,
        )
        .await
        .map_err(failure)?;
    let id = inspect.id;
    let mut live = if args.follow {
        Some(
            target
                .client
                .subscribe(subjects::logs(&id))
                .await
                .map_err(|err| Failure::berth(format!("cannot follow the logs of {id}: {err}")))?,
        )
    } else {
        None
    };
    let first: LogsPage = target
        .call(
            ExecVerb::Logs,
            &LogsRequest {
                id: id.clone(),
                from_offset: None,
                tail,
            },
            None,
        )
        .await
        .map_err(failure)?;
    print_records(&first.data);
    let mut follower = Follower {
        target: &target,
        id: id.clone(),
        next: first.end,
    };
    let running = if first.more {
        follower.catch_up(None).await?
    } else {
        first.running
    };
    let Some(live) = live.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    if !running {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(2), live.next()).await {
            Ok(Some(message)) => {
                if let Ok(chunk) = Encoding::Bincode.decode::<LogChunk>(&message.payload) {
                    if follower.chunk(chunk).await? {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            Ok(None) => return Ok(ExitCode::SUCCESS),
            // Quiet: an exit while the executor was restarting sends no end chunk.
            Err(_) => {
                if !follower.catch_up(None).await? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_records_parse() {
        assert_eq!(
            parse_record(b"2026-01-01T00:00:00Z stderr P a b"),
            Some((true, true, &b"a b"[..]))
        );
        assert_eq!(
            parse_record(b"2026-01-01T00:00:00Z stdout F "),
            Some((false, false, &b""[..]))
        );
        assert_eq!(parse_record(b"garbage"), None);
    }
}

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
    /// Only output since a time: RFC 3339, Unix seconds, or a duration ago (10m, 1h30m).
    #[arg(long)]
    pub(super) since: Option<String>,
    /// Only output before a time (same forms as --since).
    #[arg(long)]
    pub(super) until: Option<String>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short = 't', long)]
    pub(super) timestamps: bool,
    pub(super) container: String,
}

/// How records are printed: timestamps, a time window.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrintOptions {
    pub timestamps: bool,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
}

/// `2026-01-02T03:04:05.5Z`, Unix seconds (`1700000000.5`) or a duration before `now`
/// (`90s`, `10m`, `1h30m`, `2d`) → Unix nanoseconds.
pub fn parse_time(text: &str, now_ns: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return i64::try_from(at.unix_timestamp_nanos())
            .map_err(|_| format!("time {text:?} is out of range"));
    }
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1e9) as i64);
        }
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "invalid time {text:?}: use RFC 3339, Unix seconds or a duration such as 10m"
                ))
            }
        };
        let n: i64 = number
            .parse()
            .map_err(|_| format!("invalid time {text:?}: a unit needs a number before it"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!(
            "invalid time {text:?}: use RFC 3339, Unix seconds or a duration such as 10m"
        ));
    }
    Ok(now_ns.saturating_sub(total.saturating_mul(1_000_000_000)))
}

/// Unix nanoseconds of a record's RFC 3339 timestamp.
pub fn record_time_ns(ts: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(ts).ok()?;
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos()).ok()
}

thread_local! {
    /// Per stream (stdout, stderr): the last record printed was partial.
    static MID_LINE: std::cell::Cell<[bool; 2]> = const { std::cell::Cell::new([false; 2]) };
}

/// Prints CRI records: text to stdout or stderr, a newline unless the record is partial.
pub fn print_records(data: &[u8], options: &PrintOptions) {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some((is_stderr, partial, text)) = parse_record(line) else {
            continue;
        };
        if options.since_ns.is_some() || options.until_ns.is_some() {
            let ts = line.split(|b| *b == b' ').next().unwrap_or_default();
            let at = record_time_ns(ts).unwrap_or(0);
            if options.since_ns.is_some_and(|s| at < s) || options.until_ns.is_some_and(|u| at > u)
            {
                continue;
            }
        }
        let sink: &mut dyn Write = if is_stderr { &mut err } else { &mut out };
        // One timestamp per line: the records that continue a partial one get none.
        let mid_line = MID_LINE.with(|m| m.get()[usize::from(is_stderr)]);
        if options.timestamps && !mid_line {
            let ts = line.split(|b| *b == b' ').next().unwrap_or_default();
            write_or_end(sink, ts, is_stderr);
            write_or_end(sink, b" ", is_stderr);
        }
        MID_LINE.with(|m| {
            let mut both = m.get();
            both[usize::from(is_stderr)] = partial;
            m.set(both);
        });
        write_or_end(sink, text, is_stderr);
        if !partial {
            write_or_end(sink, b"\n", is_stderr);
        }
    }
    if let Err(error) = out.flush() {
        crate::output::handle_stdout_error(&error);
    }
    let _ = err.flush();
}

/// A closed stdout ends `logs`/`attach` as it ends any Unix tool (see `output`); stderr
/// errors are ignored, there being nowhere left to report them.
fn write_or_end(sink: &mut dyn Write, bytes: &[u8], is_stderr: bool) {
    if let Err(error) = sink.write_all(bytes) {
        if !is_stderr {
            crate::output::handle_stdout_error(&error);
        }
    }
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

/// How long a follower (`logs -f`, `attach`, `run`) rides out an executor that does not
/// answer, e.g. while it restarts.
pub(super) const OUTAGE_PATIENCE: Duration = Duration::from_secs(120);

/// Tells an executor outage (worth waiting out) from a real error.
pub(super) fn transient(err: &BusError) -> bool {
    matches!(
        err,
        BusError::NoResponders { .. } | BusError::TimedOut { .. }
    ) || err.kind() == Some(ErrorKind::Unavailable)
}

/// Prints live output until the container's output ends, riding out an executor that is
/// away: its monitor keeps writing the log, and the follower reads by offset, so what was
/// missed is read from history once it is back, with no line lost or repeated. `false`
/// when the user detached first.
pub(super) async fn follow_live(
    follower: &mut Follower<'_>,
    live: &mut async_nats::Subscriber,
    mut running: bool,
    mut session: Option<&mut super::interactive::Session>,
) -> Result<bool, Failure> {
    let mut outage: Option<std::time::Instant> = None;
    while running {
        let detached = async {
            match session.as_deref_mut() {
                Some(session) => session.detached().await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            () = detached => return Ok(false),
            next = tokio::time::timeout(Duration::from_secs(2), live.next()) => match next {
                Ok(Some(message)) => match Encoding::Bincode.decode::<LogChunk>(&message.payload) {
                    Ok(chunk) => follower.chunk(chunk).await.map(|eof| !eof),
                    Err(_) => Ok(true),
                },
                Ok(None) => Ok(false),
                // Quiet: an exit while the executor was away sends no end chunk.
                Err(_) => follower.catch_up(None).await,
            },
        };
        match step {
            Ok(still) => {
                running = still;
                outage = None;
            }
            // Failures here are requests for history: the executor is away.
            // Removed (auto-remove after its exit): nothing more to print.
            Err(_) if follower.gone => running = false,
            Err(err) => {
                if outage.get_or_insert_with(std::time::Instant::now).elapsed() > OUTAGE_PATIENCE {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(true)
}

/// Follows a container's log from `next`: prints live chunks, fills gaps from history.
pub(super) struct Follower<'a> {
    pub(super) target: &'a Target,
    pub(super) id: String,
    pub(super) next: u64,
    pub(super) print: PrintOptions,
    /// Set when the executor no longer knows the container (removed, e.g. by `--rm`).
    pub(super) gone: bool,
}

impl Follower<'_> {
    /// Prints pages from `next` until caught up (or up to `until`).
    pub(super) async fn catch_up(&mut self, until: Option<u64>) -> Result<bool, Failure> {
        loop {
            if until.is_some_and(|u| self.next >= u) {
                return Ok(true);
            }
            let page: Result<LogsPage, BusError> = self
                .target
                .call(
                    ExecVerb::Logs,
                    &LogsRequest {
                        id: self.id.clone(),
                        from_offset: Some(self.next),
                        tail: None,
                        since_ns: None,
                    },
                    None,
                )
                .await;
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    self.gone |= err.kind() == Some(ErrorKind::NotFound);
                    return Err(failure(err));
                }
            };
            print_records(&page.data, &self.print);
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
            print_records(&chunk.data[skip..], &self.print);
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
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let print = PrintOptions {
        timestamps: args.timestamps,
        since_ns: args
            .since
            .as_deref()
            .map(|t| parse_time(t, now_ns))
            .transpose()
            .map_err(|err| Failure::berth(format!("--since: {err}")))?,
        until_ns: args
            .until
            .as_deref()
            .map(|t| parse_time(t, now_ns))
            .transpose()
            .map_err(|err| Failure::berth(format!("--until: {err}")))?,
    };
    let (target, _) = Target::for_container(nats, &args.node, &args.container, timeout).await?;
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
                since_ns: print.since_ns,
            },
            None,
        )
        .await
        .map_err(failure)?;
    print_records(&first.data, &print);
    let mut follower = Follower {
        target: &target,
        id: id.clone(),
        next: first.end,
        print,
        gone: false,
    };
    let running = if first.more {
        follower.catch_up(None).await?
    } else {
        first.running
    };
    if let Some(live) = live.as_mut() {
        follow_live(&mut follower, live, running, None).await?;
    }
    Ok(ExitCode::SUCCESS)
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

    #[test]
    fn times_parse_as_rfc3339_unix_seconds_or_durations_ago() {
        let now = 1_700_000_000_000_000_000;
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_time("1700000000", now), Ok(now));
        assert_eq!(parse_time("10m", now), Ok(now - 600_000_000_000));
        assert_eq!(parse_time("1h30m", now), Ok(now - 5_400_000_000_000));
        assert!(parse_time("soon", now).is_err());
        assert!(parse_time("10", now).is_ok());
        assert!(parse_time("m", now).is_err());
        assert!(parse_time("", now).is_err());
        assert_eq!(
            record_time_ns(b"1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
    }
}

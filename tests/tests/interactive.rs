//! Interactive containers end to end, as root: `run -i` / `exec -i` / `attach` stdin
//! (EOF included), `-t` under a pty made by `script`, stdin across an executor SIGKILL,
//! and the streaming `stats` and Docker-worded `ps` columns.

use berth_tests::fixtures::{busybox_rootfs_tar, need, need_root};
use berth_tests::Stack;
use std::io::{BufRead, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const NODE: &str = "node-i";
const IMAGE: &str = "busybox:test";
const SERVICES: [&str; 4] = [
    "berth-image-store",
    "berth-layer-unpacker",
    "berth-scheduler",
    "berth-executor",
];
/// A guard against hanging forever, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

struct Env {
    stack: Stack,
    _scratch: tempfile::TempDir,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        need_root("containers need namespaces, cgroups and overlay mounts")?;
        let stack = Stack::start(&SERVICES, NODE).await?;
        let scratch = tempfile::tempdir()?;
        let tar = busybox_rootfs_tar(scratch.path(), "busybox", &[])?;
        let env = Env {
            stack,
            _scratch: scratch,
        };
        env.ok(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(env)
    }

    fn berth(&self) -> anyhow::Result<Command> {
        Ok(self.stack.berth()?)
    }

    /// Runs `berth args…` with `input` on its stdin.
    fn with_input(&self, args: &[&str], input: &[u8]) -> anyhow::Result<Output> {
        let mut child = self
            .berth()?
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let input = input.to_vec();
        // From a thread: the child may produce output while it is still being fed.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output()?;
        let _ = feeder.join();
        Ok(output)
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.berth()?.args(args).output()?;
        anyhow::ensure!(
            output.status.success(),
            "berth {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `berth run -d …`: the new container's id.
    fn detached(&self, options: &[&str], command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        Ok(self.ok(&args)?.trim().to_string())
    }

    /// Runs `berth line` under a pty of `rows`×`cols` made by `script`; its exit code
    /// and everything the terminal showed.
    fn under_pty(
        &self,
        rows: u16,
        cols: u16,
        line: &str,
        input: &[u8],
    ) -> anyhow::Result<(i32, String)> {
        self.pty_shell(&format!("stty rows {rows} cols {cols}; $B {line}"), input)
    }

    /// Runs a shell script under a pty made by `script`, with `$B` the CLI pointed at
    /// this stack; its exit code and everything the terminal showed.
    fn pty_shell(&self, shell: &str, input: &[u8]) -> anyhow::Result<(i32, String)> {
        need("script")?;
        let berth = berth_tests::bin_path("berth")?;
        let mut child = Command::new("script")
            .args(["-q", "-e", "-c", shell, "/dev/null"])
            .env("BERTH_NATS_URL", self.stack.nats.url())
            .env("B", &berth)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        stdin.write_all(input)?;
        // Kept open until the end: script would otherwise end the session at our EOF.
        let output = child.wait_with_output()?;
        drop(stdin);
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Ok(ids) = self.ok(&["ps", "-a", "-q"]) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.ok(&args);
        }
    }
}

/// A CLI process whose stdin the test writes to and whose stdout lines it reads.
struct Interactive {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Interactive {
    fn spawn(mut command: Command) -> anyhow::Result<Interactive> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Interactive {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("stdin closed"))?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the next stdout line.
    fn line(&self) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(PATIENCE)
            .map_err(|_| anyhow::anyhow!("no output line within {PATIENCE:?}"))
    }

    /// Closes stdin and waits for the exit code.
    fn finish(mut self) -> anyhow::Result<i32> {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("the CLI did not exit within {PATIENCE:?} of its stdin's end");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn run_i_forwards_stdin_in_order_and_eof_closes_it() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let out = env.with_input(&["run", "--rm", "-i", IMAGE, "cat"], b"hi\n")?;
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "hi\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.with_input(
        &["run", "--rm", "-i", IMAGE, "sh", "-c", "read x; exit $x"],
        b"7\n",
    )?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Many chunks: every byte arrives, in order (cat gives back exactly what it read).
    let big: String = (0..4000).map(|i| format!("line {i}\n")).collect();
    let out = env.with_input(&["run", "--rm", "-i", IMAGE, "cat"], big.as_bytes())?;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout) == big,
        "cat gave back {} bytes of {}",
        out.stdout.len(),
        big.len()
    );
    // Without -i the container's stdin is empty, whatever the CLI's is.
    let out = env.with_input(&["run", "--rm", IMAGE, "cat"], b"not for you\n")?;
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0));
    Ok(())
}

#[tokio::test]
async fn exec_i_forwards_stdin_and_eof() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let id = env.detached(&[], &["sleep", "600"])?;
    let out = env.with_input(&["exec", "-i", &id, "cat"], b"hi\n")?;
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "hi\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.with_input(&["exec", "-i", &id, "sh", "-c", "read x; exit $x"], b"7\n")?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.with_input(&["exec", &id, "cat"], b"not for you\n")?;
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0));
    Ok(())
}

const ECHO_LOOP: &str = "while read line; do echo \"got $line\"; done; exit 5";

#[tokio::test]
async fn attach_sends_input_and_sees_output() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let id = env.detached(&["-i"], &["sh", "-c", ECHO_LOOP])?;
    let mut attached = {
        let mut command = env.berth()?;
        command.args(["attach", &id]);
        Interactive::spawn(command)?
    };
    attached.send("one\n")?;
    assert_eq!(attached.line()?, "got one");
    attached.send("two\n")?;
    assert_eq!(attached.line()?, "got two");
    // EOF ends the loop; attach exits with the container's code.
    assert_eq!(attached.finish()?, 5);
    // Attaching needs a running container.
    let out = env.berth()?.args(["attach", &id]).output()?;
    assert!(!out.status.success());
    Ok(())
}

#[tokio::test]
async fn stdin_keeps_working_across_an_executor_sigkill() -> anyhow::Result<()> {
    let mut env = Env::start().await?;
    let id = env.detached(&["-i"], &["sh", "-c", ECHO_LOOP])?;
    let mut attached = {
        let mut command = env.berth()?;
        command.args(["attach", &id]);
        Interactive::spawn(command)?
    };
    attached.send("before\n")?;
    assert_eq!(attached.line()?, "got before");
    env.stack.kill_service("berth-executor").await?;
    // Sent while no executor runs: the CLI holds it until one answers again.
    attached.send("during\n")?;
    env.stack.start_service("berth-executor").await?;
    assert_eq!(attached.line()?, "got during");
    attached.send("after\n")?;
    assert_eq!(attached.line()?, "got after");
    assert_eq!(attached.finish()?, 5);
    let inspect: serde_json::Value =
        serde_json::from_str::<Vec<serde_json::Value>>(&env.ok(&["inspect", &id])?)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("inspect returned nothing"))?;
    assert_eq!(inspect["exit_code"], 5);
    Ok(())
}

#[tokio::test]
async fn tty_gives_a_pty_of_the_clients_size() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let script = format!("run --rm -t {IMAGE} sh -c 'tty; stty size; exit 3'");
    let (code, shown) = env.under_pty(33, 77, &script, b"")?;
    assert_eq!(code, 3, "{shown}");
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    assert!(shown.contains("33 77"), "{shown:?}");
    // -it: keys typed on the client's terminal reach the program on the container's.
    let script = format!("run --rm -it {IMAGE} sh -c 'read x; echo \"got:$x\"; exit 4'");
    let (code, shown) = env.under_pty(24, 80, &script, b"abc\r")?;
    assert_eq!(code, 4, "{shown:?}");
    assert!(shown.contains("got:abc"), "{shown:?}");

    // Raw mode while attached, the settings back after a normal exit and after SIGTERM
    // (the background CLI gets the terminal back as stdin: sh gives &-jobs /dev/null).
    let check = format!(
        r#"b=$(stty -g)
$B run --rm -it {IMAGE} true
[ "$(stty -g)" = "$b" ] && echo RESTORED-AT-EXIT
$B run -it {IMAGE} sleep 600 </dev/tty &
p=$!
i=0
while [ "$(stty -g)" = "$b" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
[ "$(stty -g)" != "$b" ] && echo RAW-WHILE-ATTACHED
kill $p
wait $p
echo "CLI-EXIT=$?"
[ "$(stty -g)" = "$b" ] && echo RESTORED-AFTER-SIGTERM"#
    );
    let (_, shown) = env.pty_shell(&check, b"")?;
    for mark in [
        "RESTORED-AT-EXIT",
        "RAW-WHILE-ATTACHED",
        "CLI-EXIT=143",
        "RESTORED-AFTER-SIGTERM",
    ] {
        assert!(shown.contains(mark), "no {mark} in {shown:?}");
    }

    let id = env.detached(&[], &["sleep", "600"])?;
    let script = format!("exec -t {id} sh -c 'tty; stty size'");
    let (code, shown) = env.under_pty(20, 50, &script, b"")?;
    assert_eq!(code, 0, "{shown:?}");
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    assert!(shown.contains("20 50"), "{shown:?}");
    let script = format!("exec -it {id} sh -c 'read x; echo \"got:$x\"; exit 6'");
    let (code, shown) = env.under_pty(24, 80, &script, b"xyz\r")?;
    assert_eq!(code, 6, "{shown:?}");
    assert!(shown.contains("got:xyz"), "{shown:?}");
    Ok(())
}

#[tokio::test]
async fn stats_streams_until_stopped_and_ps_reads_like_docker() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let id = env.detached(&[], &["sleep", "600"])?;
    let short = &id[..12];
    // --no-stream: one sample, then exit.
    let once = env.ok(&["stats", "--no-stream", &id])?;
    let lines: Vec<&str> = once.lines().collect();
    assert_eq!(lines.len(), 2, "{once}");
    assert!(lines[0].starts_with("CONTAINER ID"), "{once}");
    assert!(lines[1].starts_with(short), "{once}");
    // Default: samples keep coming until the CLI is stopped.
    let streaming = {
        let mut command = env.berth()?;
        command.args(["stats", &id]);
        Interactive::spawn(command)?
    };
    let mut headers = 0;
    let mut rows = 0;
    while headers < 3 {
        let line = streaming.line()?;
        if line.starts_with("CONTAINER ID") {
            headers += 1;
        } else if line.starts_with(short) {
            rows += 1;
        }
    }
    assert!(rows >= 2, "{rows} rows in 3 samples");
    let mut streaming = streaming;
    assert!(
        streaming.child.try_wait()?.is_none(),
        "stats exited by itself"
    );
    streaming.child.kill()?;

    let exited = env.detached(&[], &["sh", "-c", "exit 3"])?;
    env.ok(&["wait", &exited])?;
    let ps = env.ok(&["ps", "-a"])?;
    let row = |id: &str| {
        ps.lines()
            .find(|l| l.starts_with(&id[..12]))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{id} not in ps -a:\n{ps}"))
    };
    let running = row(&id)?;
    let header = ps.lines().next().unwrap_or_default();
    let column = |name: &str| header.find(name).unwrap_or(0);
    let (created_at, status_at, ports_at) = (column("CREATED"), column("STATUS"), column("PORTS"));
    let field =
        |row: &str, from: usize, to: usize| row.get(from..to).unwrap_or("").trim().to_string();
    let created = field(&running, created_at, status_at);
    assert!(created.ends_with(" ago"), "CREATED {created:?} in\n{ps}");
    let status = field(&running, status_at, ports_at);
    assert!(status.starts_with("Up "), "STATUS {status:?} in\n{ps}");
    assert!(!status.contains('T'), "STATUS {status:?} is a raw time");
    let stopped = row(&exited)?;
    let status = field(&stopped, status_at, ports_at);
    assert!(
        status.starts_with("Exited (3) ") && status.ends_with(" ago"),
        "STATUS {status:?} in\n{ps}"
    );
    Ok(())
}

/// Waits for a stdout line containing `mark`; the lines before it.
fn until(lines: &mpsc::Receiver<String>, mark: &str) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .map_err(|_| anyhow::anyhow!("no {mark:?} within {PATIENCE:?}; saw {seen:?}"))?;
        if line.contains(mark) {
            return Ok(seen);
        }
        seen.push(line);
    }
}

#[tokio::test]
async fn detach_keys_leave_the_container_running() -> anyhow::Result<()> {
    let env = Env::start().await?;
    need("script")?;
    // Each CLI runs in the background on the terminal; READY once it put it in raw mode
    // (input typed earlier would meet the terminal's own ^Q flow control).
    let shell = format!(
        r#"b=$(stty -g)
ready() {{ i=0; while [ "$(stty -g)" = "$b" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo READY; }}
$B run -it --name dk --detach-keys ctrl-x,y {IMAGE} sh -c 'read x; printf %s "$x" | od -An -tx1; sleep 600' </dev/tty &
p=$!
ready
wait $p
echo "RUN-EXIT=$?"
$B attach dk </dev/tty &
p=$!
ready
wait $p
echo "ATTACH-EXIT=$?""#
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .env("BERTH_NATS_URL", env.stack.nats.url())
        .env("B", berth_tests::bin_path("berth")?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut input = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let outcome = (|| -> anyhow::Result<()> {
        until(&lines, "READY")?;
        // ^X then z: a start of the sequence that diverges reaches the container whole.
        input.write_all(b"\x18z\r")?;
        input.flush()?;
        until(&lines, "18 7a")?;
        input.write_all(b"\x18y")?;
        input.flush()?;
        until(&lines, "RUN-EXIT=0")?;
        until(&lines, "READY")?;
        // Docker's default, ctrl-p ctrl-q, on attach.
        input.write_all(b"\x10\x11")?;
        input.flush()?;
        until(&lines, "ATTACH-EXIT=0")?;
        Ok(())
    })();
    drop(input);
    let _ = child.kill();
    let _ = child.wait();
    outcome?;
    let inspect: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&["inspect", "dk"])?)?;
    assert_eq!(inspect[0]["status"], "running", "{inspect:?}");
    // A bad sequence is refused before anything is created.
    let before = env.ok(&["ps", "-a", "-q"])?;
    let out = env.with_input(&["run", "--detach-keys", "ctrl-1", IMAGE, "true"], b"")?;
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid detach keys"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.ok(&["ps", "-a", "-q"])?, before);
    Ok(())
}

#[tokio::test]
async fn it_without_a_terminal_is_refused_like_docker() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let id = env.detached(&[], &["sleep", "600"])?;
    let before = env.ok(&["ps", "-a", "-q"])?;
    for args in [
        vec!["run", "-it", IMAGE, "true"],
        vec!["exec", "-it", &id, "true"],
    ] {
        let out = env.with_input(&args, b"")?;
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            (Some(1), "berth: the input device is not a TTY"),
            "{args:?}"
        );
    }
    assert_eq!(env.ok(&["ps", "-a", "-q"])?, before, "run -it created one");
    // -t alone is fine without a terminal.
    let out = env.with_input(&["run", "--rm", "-t", IMAGE, "sh", "-c", "exit 4"], b"")?;
    assert_eq!(out.status.code(), Some(4));
    let out = env.with_input(&["exec", "-t", &id, "sh", "-c", "exit 5"], b"")?;
    assert_eq!(out.status.code(), Some(5));
    Ok(())
}

const TRAP_TERM: &str =
    "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done";

#[tokio::test]
async fn attached_run_proxies_signals_unless_told_not_to() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let attached = {
        let mut command = env.berth()?;
        command.args(["run", "--name", "sp", IMAGE, "sh", "-c", TRAP_TERM]);
        Interactive::spawn(command)?
    };
    assert_eq!(attached.line()?, "ready");
    let pid = attached.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    anyhow::ensure!(killed.success(), "kill -TERM {pid}");
    assert_eq!(attached.line()?, "got TERM");
    assert_eq!(attached.finish()?, 7);

    // --sig-proxy=false: the CLI dies of it, the container runs on.
    let attached = {
        let mut command = env.berth()?;
        command.args([
            "run",
            "--sig-proxy=false",
            "--name",
            "nsp",
            IMAGE,
            "sh",
            "-c",
            TRAP_TERM,
        ]);
        Interactive::spawn(command)?
    };
    assert_eq!(attached.line()?, "ready");
    let pid = attached.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    anyhow::ensure!(killed.success(), "kill -TERM {pid}");
    assert_eq!(attached.finish()?, -1, "killed by SIGTERM");
    let inspect: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&["inspect", "nsp"])?)?;
    assert_eq!(inspect[0]["status"], "running", "{inspect:?}");
    Ok(())
}

#[tokio::test]
async fn attached_run_survives_an_executor_sigkill() -> anyhow::Result<()> {
    let mut env = Env::start().await?;
    let mut attached = {
        let mut command = env.berth()?;
        command.args([
            "run",
            "-i",
            IMAGE,
            "sh",
            "-c",
            "echo before; read x; echo \"got $x\"; exit 9",
        ]);
        Interactive::spawn(command)?
    };
    assert_eq!(attached.line()?, "before");
    env.stack.kill_service("berth-executor").await?;
    // Sent while no executor runs: the CLI holds it until one answers again.
    attached.send("during\n")?;
    env.stack.start_service("berth-executor").await?;
    assert_eq!(attached.line()?, "got during");
    assert_eq!(attached.finish()?, 9);
    Ok(())
}

#[tokio::test]
async fn rm_container_detached_from_is_removed_when_it_exits() -> anyhow::Result<()> {
    let env = Env::start().await?;
    need("script")?;
    // The container ends when told to through a bind mount, so it is surely still
    // running when the keys detach from it.
    let signal = tempfile::tempdir()?;
    let shell = format!(
        r#"b=$(stty -g)
ready() {{ i=0; while [ "$(stty -g)" = "$b" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo READY; }}
$B run --rm -it --name rmd -v {}:/sig {IMAGE} sh -c 'while [ ! -e /sig/go ]; do sleep 0.1; done; exit 0' </dev/tty &
p=$!
ready
wait $p
echo "RUN-EXIT=$?""#,
        signal.path().display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .env("BERTH_NATS_URL", env.stack.nats.url())
        .env("B", berth_tests::bin_path("berth")?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut input = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let outcome = (|| -> anyhow::Result<()> {
        until(&lines, "READY")?;
        input.write_all(b"\x10\x11")?;
        input.flush()?;
        until(&lines, "RUN-EXIT=0")?;
        Ok(())
    })();
    drop(input);
    let _ = child.kill();
    let _ = child.wait();
    outcome?;
    let inspect: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&["inspect", "rmd"])?)?;
    assert_eq!(inspect[0]["status"], "running", "{inspect:?}");
    let id = inspect[0]["id"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(!id.is_empty(), "inspect shows no id: {inspect:?}");
    std::fs::write(signal.path().join("go"), b"")?;
    // Nobody is attached any more: the executor removes it, and the scheduler's record
    // goes with its destroy event.
    let gone = berth_tests::cli::eventually(PATIENCE, || {
        env.ok(&["ps", "-a", "-q"])
            .is_ok_and(|listed| !listed.split_whitespace().any(|row| id.starts_with(row)))
    });
    assert!(gone, "ps -a still lists {id}: {:?}", env.ok(&["ps", "-a"]));
    let out = env.berth()?.args(["inspect", &id]).output()?;
    assert!(!out.status.success(), "inspect still finds {id}");
    Ok(())
}

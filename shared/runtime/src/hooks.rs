//! OCI hooks: run with the container state on stdin, fail the operation on non-zero exit
//! or timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Run `hooks` in order; `kind` names them in errors (e.g. "createRuntime").
pub fn run(hooks: &[Hook], state_json: &str, kind: &str) -> Result<()> {
    for h in hooks {
        let err = |message: String| Error::Hook {
            kind: kind.to_string(),
            path: h.path().clone(),
            message,
        };
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some(a0) = args.first() {
                cmd.arg0(a0);
            }
            cmd.args(args.iter().skip(1));
        }
        if let Some(env) = h.env() {
            cmd.env_clear();
            for kv in env {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| err(format!("spawn: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read stdin may close it early; that is not an error.
            let _ = stdin.write_all(state_json.as_bytes());
        }
        let deadline = h
            .timeout()
            .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
        loop {
            match child.try_wait().map_err(|e| err(format!("wait: {e}")))? {
                Some(st) if st.success() => break,
                Some(st) => return Err(err(format!("exited with {st}"))),
                None => {}
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err("timed out".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).expect("hook")
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failure_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let ok = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]}),
        );
        run(&[ok], "{\"id\":\"x\"}", "poststart").expect("ok");
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "{\"id\":\"x\"}"
        );
        let bad = hook(serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}));
        let e = run(&[bad], "{}", "prestart").expect_err("fails");
        assert!(e.to_string().contains("prestart hook /bin/sh"), "{e}");
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        assert!(run(&[slow], "{}", "poststop")
            .expect_err("timeout")
            .to_string()
            .contains("timed out"));
    }
}

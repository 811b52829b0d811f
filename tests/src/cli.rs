//! The `berth` CLI as the end-to-end tests drive it: a stack with a test image imported,
//! verbs that must succeed, `inspect`, polling, and every container removed when the
//! test ends (passed or not), so no overlay mount or cgroup outlives it.

use crate::Stack;
use anyhow::{anyhow, ensure};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct CliEnv {
    pub stack: Stack,
    pub image: String,
    _scratch: TempDir,
}

impl CliEnv {
    /// Imports the tarball `make_tar` builds in a scratch dir as `image`; `import_options`
    /// go to `berth import` (e.g. `-c "EXPOSE 80/tcp"`).
    pub fn import(
        stack: Stack,
        image: &str,
        import_options: &[&str],
        make_tar: impl FnOnce(&Path) -> anyhow::Result<PathBuf>,
    ) -> anyhow::Result<CliEnv> {
        let scratch = tempfile::tempdir()?;
        let tar = make_tar(scratch.path())?;
        let env = CliEnv {
            stack,
            image: image.to_string(),
            _scratch: scratch,
        };
        let tar = tar.display().to_string();
        let mut args = vec!["import", tar.as_str(), image];
        args.extend_from_slice(import_options);
        env.stdout(&args)?;
        Ok(env)
    }

    /// `berth args…`, whatever its exit status.
    pub fn berth(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.stack.berth()?.args(args).output()?)
    }

    /// Stdout of a verb that must succeed, as printed.
    pub fn stdout(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.berth(args)?;
        ensure!(
            output.status.success(),
            "berth {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stdout of a verb that must succeed, trimmed (an id, a name, one value).
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self.stdout(args)?.trim().to_string())
    }

    /// `berth run -d [options] IMAGE command…` → the container id.
    pub fn run_d(&self, options: &[&str], command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(options);
        args.push(&self.image);
        args.extend_from_slice(command);
        self.ok(&args)
    }

    /// `berth run --rm [options] IMAGE command…` → (exit code, stdout, stderr).
    pub fn run_rm(
        &self,
        options: &[&str],
        command: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(options);
        args.push(&self.image);
        args.extend_from_slice(command);
        let output = self.berth(&args)?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// `berth exec ID command…` → (exit code, stdout followed by stderr).
    pub fn exec(&self, id: &str, command: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut args = vec!["exec", id];
        args.extend_from_slice(command);
        let output = self.berth(&args)?;
        Ok((
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }

    pub fn inspect(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&self.stdout(&["inspect", id])?)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| anyhow!("inspect {id} returned nothing"))
    }

    /// `berth rm -f ids…`, for clean-up: its outcome does not matter.
    pub fn remove(&self, ids: &[&str]) {
        let mut args = vec!["rm", "-f"];
        args.extend_from_slice(ids);
        let _ = self.berth(&args);
    }
}

impl Drop for CliEnv {
    fn drop(&mut self) {
        let Ok(listed) = self.stdout(&["ps", "-a", "-q"]) else {
            return;
        };
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            self.remove(&ids);
        }
    }
}

/// Polls until `probe` holds or `within` passes (a guard against hanging, not a timing
/// assertion).
pub fn eventually(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    probe()
}

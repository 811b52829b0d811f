//! `--change` instructions for `berth import`, parsed like Docker's Dockerfile
//! instructions: CMD, ENTRYPOINT (JSON-array or shell form), ENV, LABEL (`k=v …` or
//! legacy `k v`), WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL. Variables are not
//! expanded (Docker expands `$VAR` in ENV/WORKDIR; berth keeps the text literally).

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A `--change` that could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --change {change:?}: {reason}")]
pub struct ChangeError {
    /// The instruction as given.
    pub change: String,
    /// Why.
    pub reason: String,
}

/// The runtime part of an image config (Docker's `config` object), as plain fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// USER.
    pub user: Option<String>,
    /// EXPOSE, as `port/proto`.
    pub exposed_ports: BTreeSet<String>,
    /// ENV, as `KEY=value`, in order of first definition.
    pub env: Vec<String>,
    /// ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    pub cmd: Option<Vec<String>>,
    /// VOLUME.
    pub volumes: BTreeSet<String>,
    /// WORKDIR.
    pub working_dir: Option<String>,
    /// LABEL.
    pub labels: BTreeMap<String, String>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
}

impl RunConfig {
    /// Applies one instruction.
    pub fn apply(&mut self, change: &str) -> Result<(), ChangeError> {
        let err = |reason: &str| ChangeError {
            change: change.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = change.trim();
        let (instr, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((i, r)) => (i, r.trim()),
            None => (trimmed, ""),
        };
        if instr.is_empty() {
            return Err(err("empty instruction"));
        }
        if rest.is_empty() {
            return Err(err("missing argument"));
        }
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => self.cmd = Some(command(rest)),
            "ENTRYPOINT" => self.entrypoint = Some(command(rest)),
            "ENV" => {
                for (k, v) in key_values(rest).map_err(|r| err(&r))? {
                    let prefix = format!("{k}=");
                    let entry = format!("{k}={v}");
                    match self.env.iter_mut().find(|e| e.starts_with(&prefix)) {
                        Some(existing) => *existing = entry,
                        None => self.env.push(entry),
                    }
                }
            }
            "LABEL" => {
                for (k, v) in key_values(rest).map_err(|r| err(&r))? {
                    self.labels.insert(k, v);
                }
            }
            "WORKDIR" => {
                let words = words(rest).map_err(|r| err(&r))?;
                let [dir] = words.as_slice() else {
                    return Err(err("WORKDIR takes exactly one path"));
                };
                // A relative WORKDIR is joined to the previous one, like Docker.
                let base = self.working_dir.as_deref().unwrap_or("/");
                self.working_dir = Some(clean_path(base, dir));
            }
            "USER" => {
                let words = words(rest).map_err(|r| err(&r))?;
                let [user] = words.as_slice() else {
                    return Err(err("USER takes exactly one user[:group]"));
                };
                self.user = Some(user.clone());
            }
            "EXPOSE" => {
                for w in words(rest).map_err(|r| err(&r))? {
                    for p in expose(&w).map_err(|r| err(&r))? {
                        self.exposed_ports.insert(p);
                    }
                }
            }
            "VOLUME" => {
                let vols = match json_array(rest) {
                    Some(v) => v,
                    None => words(rest).map_err(|r| err(&r))?,
                };
                for v in vols {
                    if v.is_empty() {
                        return Err(err("VOLUME paths must not be empty"));
                    }
                    self.volumes.insert(v);
                }
            }
            "STOPSIGNAL" => {
                let words = words(rest).map_err(|r| err(&r))?;
                let [sig] = words.as_slice() else {
                    return Err(err("STOPSIGNAL takes one signal"));
                };
                self.stop_signal = Some(sig.clone());
            }
            "ONBUILD" => return Err(err("ONBUILD is not supported by berth")),
            other => {
                return Err(err(&format!(
                    "unknown instruction {other} (allowed: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR)"
                )))
            }
        }
        Ok(())
    }

    /// Applies several instructions in order.
    pub fn apply_all<S: AsRef<str>>(&mut self, changes: &[S]) -> Result<(), ChangeError> {
        changes.iter().try_for_each(|c| self.apply(c.as_ref()))
    }

    /// Docker's JSON shape of the `config` object (PascalCase keys, sets as `{key: {}}`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(u) = &self.user {
            m.insert("User".into(), json!(u));
        }
        if !self.exposed_ports.is_empty() {
            let ports: Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            m.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.env.is_empty() {
            m.insert("Env".into(), json!(self.env));
        }
        if let Some(e) = &self.entrypoint {
            m.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            m.insert("Cmd".into(), json!(c));
        }
        if !self.volumes.is_empty() {
            let vols: Map<String, Value> = self
                .volumes
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            m.insert("Volumes".into(), Value::Object(vols));
        }
        if let Some(w) = &self.working_dir {
            m.insert("WorkingDir".into(), json!(w));
        }
        if !self.labels.is_empty() {
            m.insert("Labels".into(), json!(self.labels));
        }
        if let Some(s) = &self.stop_signal {
            m.insert("StopSignal".into(), json!(s));
        }
        Value::Object(m)
    }
}

/// A JSON array of strings, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// Exec form if `s` is a JSON string array, else shell form `/bin/sh -c s` (as Docker).
fn command(s: &str) -> Vec<String> {
    json_array(s).unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()])
}

/// Splits into words, honouring '…', "…" and backslash escapes (Docker's lexer without
/// variable expansion).
pub fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => cur.push(e),
                            Some(other) => {
                                cur.push('\\');
                                cur.push(other);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(e) => cur.push(e),
                    None => return Err("trailing backslash".to_string()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `k=v k2="v 2"` pairs, or the legacy single pair `k value with spaces`.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let ws = words(s)?;
    let Some(first) = ws.first() else {
        return Err("missing key".to_string());
    };
    if !first.contains('=') {
        // Legacy form: the rest of the line (unsplit, but unquoted) is the value.
        let value =
            s.trim_start()[s.trim_start().find(char::is_whitespace).unwrap_or(s.len())..].trim();
        if value.is_empty() {
            return Err(format!("{first} needs a value (use {first}=value)"));
        }
        let value = words(value)?.join(" ");
        return Ok(vec![(first.clone(), value)]);
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err("empty key".to_string()),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!("{w:?} is not key=value")),
        })
        .collect()
}

/// `80`, `80/tcp`, `53/udp`, `8000-8002` → `port/proto` entries.
fn expose(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("bad protocol in {spec:?}"));
    }
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("bad port in {spec:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("bad port range {spec:?}"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Joins `path` onto `base` (if relative) and cleans `.`/`..` lexically, staying under `/`.
fn clean_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(changes: &[&str]) -> RunConfig {
        let mut c = RunConfig::default();
        c.apply_all(changes).expect("valid changes");
        c
    }

    #[test]
    fn cmd_and_entrypoint_both_forms() {
        let c = apply(&[
            r#"CMD ["/bin/busybox", "sh"]"#,
            "ENTRYPOINT /bin/echo hi there",
        ]);
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/busybox".to_string(), "sh".to_string()])
        );
        assert_eq!(
            c.entrypoint,
            Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                "/bin/echo hi there".to_string()
            ])
        );
        // Broken JSON falls back to shell form, as in Docker.
        let c = apply(&["cmd [not json"]);
        assert_eq!(c.cmd.expect("cmd")[2], "[not json");
        let c = apply(&["ENTRYPOINT []"]);
        assert_eq!(c.entrypoint, Some(vec![]));
    }

    #[test]
    fn env_forms() {
        let c = apply(&[
            r#"ENV A=1 B="two words" C='x y' D=a\ b"#,
            "ENV LEGACY some value",
            "ENV A=override",
            "ENV PATH=/usr/bin:/bin",
        ]);
        assert_eq!(
            c.env,
            [
                "A=override",
                "B=two words",
                "C=x y",
                "D=a b",
                "LEGACY=some value",
                "PATH=/usr/bin:/bin"
            ]
        );
        let mut c = RunConfig::default();
        assert!(c.apply("ENV").is_err());
        assert!(c.apply("ENV ONLYKEY").is_err());
        assert!(c.apply("ENV =x").is_err());
        assert!(c.apply("ENV A=1 B").is_err());
        assert!(c.apply(r#"ENV A="unterminated"#).is_err());
    }

    #[test]
    fn workdir_user_expose_volume_label_stopsignal() {
        let c = apply(&[
            "WORKDIR /app",
            "WORKDIR sub/../data",
            "USER 1000:1000",
            "EXPOSE 80 53/udp 8000-8002",
            r#"VOLUME ["/data", "/logs"]"#,
            "VOLUME /cache",
            r#"LABEL org.opencontainers.image.title="my app" version=1"#,
            "STOPSIGNAL SIGTERM",
        ]);
        assert_eq!(c.working_dir.as_deref(), Some("/app/data"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        let ports: Vec<&str> = c.exposed_ports.iter().map(String::as_str).collect();
        assert_eq!(
            ports,
            ["53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
        );
        let vols: Vec<&str> = c.volumes.iter().map(String::as_str).collect();
        assert_eq!(vols, ["/cache", "/data", "/logs"]);
        assert_eq!(
            c.labels
                .get("org.opencontainers.image.title")
                .map(String::as_str),
            Some("my app")
        );
        assert_eq!(c.stop_signal.as_deref(), Some("SIGTERM"));
        let j = c.to_json();
        assert_eq!(j["ExposedPorts"]["80/tcp"], json!({}));
        assert_eq!(j["WorkingDir"], json!("/app/data"));
        assert_eq!(j["User"], json!("1000:1000"));
    }

    #[test]
    fn bad_changes() {
        for bad in [
            "",
            "CMD",
            "RUN echo hi",
            "FROM scratch",
            "ONBUILD RUN x",
            "EXPOSE 0",
            "EXPOSE 70000",
            "EXPOSE 80/icmp",
            "EXPOSE 90-80",
            "WORKDIR a b",
            "USER",
            "USER a b",
            "STOPSIGNAL",
        ] {
            let mut c = RunConfig::default();
            let err = c.apply(bad).expect_err(bad);
            assert_eq!(err.change, bad);
        }
    }

    #[test]
    fn word_splitting() {
        assert_eq!(
            words(r#"a "b c" 'd e' f\ g"#).expect("ok"),
            ["a", "b c", "d e", "f g"]
        );
        assert_eq!(words(r#""a\"b""#).expect("ok"), [r#"a"b"#]);
        assert_eq!(words(r#""""#).expect("ok"), [""]);
        assert!(words("'x").is_err());
        assert!(words("x\\").is_err());
    }
}

//! Times as `ps` shows them, in Docker's words: "5 seconds ago", "Up 3 seconds",
//! "Exited (3) 2 minutes ago".

use berth_proto::messages::exec::{ContainerStatus, ContainerSummary};

/// Docker's `units.HumanDuration`.
pub fn duration(seconds: i64) -> String {
    let hours_rounded = (seconds + 1800) / 3600;
    match seconds {
        s if s < 1 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_string(),
        s if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours_rounded == 1 => "About an hour".to_string(),
        _ if hours_rounded < 48 => format!("{hours_rounded} hours"),
        _ if hours_rounded < 24 * 7 * 2 => format!("{} days", hours_rounded / 24),
        _ if hours_rounded < 24 * 30 * 2 => format!("{} weeks", hours_rounded / 24 / 7),
        _ if hours_rounded < 24 * 365 * 2 => format!("{} months", hours_rounded / 24 / 30),
        s => format!("{} years", s / 3600 / 24 / 365),
    }
}

/// Unix seconds of an RFC 3339 time.
fn unix(rfc3339: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Seconds from `rfc3339` to `now` (Unix seconds); `None` if it does not parse.
fn since(rfc3339: Option<&str>, now: i64) -> Option<i64> {
    rfc3339.and_then(unix).map(|t| (now - t).max(0))
}

/// CREATED: "5 seconds ago" (the raw text if it is not a time).
pub fn created(rfc3339: &str, now: i64) -> String {
    match since(Some(rfc3339), now) {
        Some(s) => format!("{} ago", duration(s)),
        None => rfc3339.to_string(),
    }
}

/// STATUS: "Up 3 seconds", "Exited (3) 2 minutes ago", "Created", …
pub fn status(c: &ContainerSummary, now: i64) -> String {
    let ago = |at: Option<&str>| since(at, now).map(|s| format!(" {} ago", duration(s)));
    match c.status {
        ContainerStatus::Running => match since(c.started_at.as_deref(), now) {
            Some(s) => format!("Up {}", duration(s)),
            None => "Up".to_string(),
        },
        ContainerStatus::Exited => format!(
            "Exited ({}){}",
            c.exit_code.unwrap_or(0),
            ago(c.finished_at.as_deref()).unwrap_or_default()
        ),
        ContainerStatus::Restarting => format!(
            "Restarting ({}){}",
            c.exit_code.unwrap_or(0),
            ago(c.finished_at.as_deref()).unwrap_or_default()
        ),
        ContainerStatus::Created => "Created".to_string(),
        ContainerStatus::Paused => "Paused".to_string(),
        ContainerStatus::Dead => "Dead".to_string(),
    }
}

/// Columns as wide as their widest cell, three spaces apart (Docker's tabwriter): a
/// long STATUS such as "Exited (3) Less than a second ago" never runs into PORTS.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(duration(0), "Less than a second");
        assert_eq!(duration(1), "1 second");
        assert_eq!(duration(5), "5 seconds");
        assert_eq!(duration(65), "About a minute");
        assert_eq!(duration(150), "2 minutes");
        assert_eq!(duration(3600), "About an hour");
        assert_eq!(duration(5 * 3600), "5 hours");
        assert_eq!(duration(3 * 86_400), "3 days");
        assert_eq!(duration(20 * 86_400), "2 weeks");
        assert_eq!(duration(90 * 86_400), "3 months");
        assert_eq!(duration(800 * 86_400), "2 years");
    }

    #[test]
    fn table_columns_fit_their_widest_cell() {
        let rows = vec![
            vec![
                "a".to_string(),
                "Exited (3) Less than a second ago".to_string(),
                "x".to_string(),
            ],
            vec!["bb".to_string(), "Up 1 second".to_string(), String::new()],
        ];
        let text = table(&["ID", "STATUS", "PORTS"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines[0].find("PORTS").expect("header");
        assert_eq!(lines[0], format!("ID   STATUS{}PORTS", " ".repeat(at - 11)));
        assert_eq!(&lines[1][at..], "x");
        assert_eq!(lines[2].trim_end(), "bb   Up 1 second");
    }

    #[test]
    fn ps_columns_say_how_long_ago() {
        let at = "2026-01-01T00:00:00Z";
        let t0 = unix(at).expect("parses");
        let mut c = ContainerSummary {
            id: "x".into(),
            name: "x".into(),
            image: "i".into(),
            node_id: "n".into(),
            status: ContainerStatus::Running,
            exit_code: None,
            created: at.into(),
            command: vec![],
            labels: Default::default(),
            ports: vec![],
            started_at: Some(at.into()),
            finished_at: None,
        };
        assert_eq!(created(at, t0 + 5), "5 seconds ago");
        assert_eq!(status(&c, t0 + 3), "Up 3 seconds");
        c.status = ContainerStatus::Exited;
        c.exit_code = Some(3);
        c.finished_at = Some(at.into());
        assert_eq!(status(&c, t0 + 150), "Exited (3) 2 minutes ago");
        c.status = ContainerStatus::Created;
        assert_eq!(status(&c, t0), "Created");
    }
}

//! A container's log as a set of files, rotated by size (`--log-opt max-size`,
//! `max-file`): the current file `log` and rotated ones `log.<start>`, where `<start>` is
//! the logical offset of the rotated file's first byte (20 digits). Logical offsets count
//! every byte ever logged, so a reader's position (`logs -f`, live chunks) survives
//! rotation; the current file starts where the newest rotated one ends. With
//! `max-file=1` an empty `log.<start>` marks where the current file starts.
//!
//! Files hold whole CRI records only: the writer rotates between records and, when a
//! write fails (a full disk), cuts the file back to its last whole record, drops lines
//! until space returns, and says so once.

use crate::crilog;
use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The current file's name.
pub const CURRENT: &str = "log";

fn rotated_name(start: u64) -> String {
    format!("{CURRENT}.{start:020}")
}

fn parse_rotated(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("log.")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Rotated files in `dir`: (start, path), oldest first.
fn rotated(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((parse_rotated(&name)?, e.path()))
            })
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    out.sort();
    Ok(out)
}

/// `--log-opt` values, parsed: `max-size` in bytes (k, m, g suffixes) and `max-file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    pub max_size: Option<u64>,
    pub max_files: u32,
}

impl Rotation {
    /// From the request's `log_opts`; unknown keys and bad values are errors.
    pub fn from_opts(opts: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        let mut rotation = Rotation {
            max_size: None,
            max_files: 1,
        };
        for (key, value) in opts {
            match key.as_str() {
                "max-size" => rotation.max_size = Some(parse_size(value)?),
                "max-file" => {
                    rotation.max_files = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("--log-opt max-file={value}: must be 1 or more"))?
                }
                other => return Err(format!("unsupported --log-opt {other}")),
            }
        }
        Ok(rotation)
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n.saturating_mul(unit)),
        _ => Err(format!("--log-opt max-size={text}: not a positive size")),
    }
}

/// One file of the set, opened.
struct Segment {
    start: u64,
    len: u64,
    file: File,
}

/// A consistent snapshot of a container's log files, opened (a rotation after the
/// snapshot does not disturb reads through it).
pub struct LogSet {
    segments: Vec<Segment>,
}

impl LogSet {
    /// Opens the log in `dir` (empty if there is none yet).
    pub fn open(dir: &Path) -> std::io::Result<LogSet> {
        for _ in 0..100 {
            let current = match File::open(dir.join(CURRENT)) {
                Ok(f) => Some(f),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => return Err(err),
            };
            let mut segments = Vec::new();
            for (start, path) in rotated(dir)? {
                if let Ok(file) = File::open(&path) {
                    let len = file.metadata()?.len();
                    segments.push(Segment { start, len, file });
                }
            }
            // The current file must still be the one we opened, else a rotation ran
            // between the open and the listing: try again.
            let now = std::fs::metadata(dir.join(CURRENT)).ok().map(|m| m.ino());
            let opened = match &current {
                Some(f) => Some(f.metadata()?.ino()),
                None => None,
            };
            if now != opened {
                continue;
            }
            let start = segments.last().map_or(0, |s| s.start + s.len);
            if let Some(file) = current {
                let len = file.metadata()?.len();
                segments.push(Segment { start, len, file });
            }
            segments.retain(|s| s.len > 0 || s.start == start);
            return Ok(LogSet { segments });
        }
        Err(std::io::Error::other(format!(
            "{}: the log kept rotating while being opened",
            dir.display()
        )))
    }

    /// Logical offset of the oldest byte still kept.
    pub fn first(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.start)
    }

    /// Logical offset after the last byte.
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.start + s.len)
    }

    /// Whole records from `from` (moved up to the oldest kept byte), at most `max`
    /// bytes, within one file; returns (start actually read from, data).
    pub fn read(&self, from: u64, max: usize) -> std::io::Result<(u64, Vec<u8>)> {
        let from = from.max(self.first());
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| from >= s.start && from < s.start + s.len)
        else {
            return Ok((from.min(self.end()), Vec::new()));
        };
        let mut file = &segment.file;
        file.seek(SeekFrom::Start(from - segment.start))?;
        let mut data = Vec::new();
        file.take(max as u64).read_to_end(&mut data)?;
        data.truncate(crilog::whole_lines(&data));
        Ok((from, data))
    }

    /// Logical offset where the last `n` records begin.
    pub fn tail_offset(&self, n: u64) -> std::io::Result<u64> {
        let mut wanted = n;
        for segment in self.segments.iter().rev() {
            let mut file = &segment.file;
            file.seek(SeekFrom::Start(0))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            let data = &data[..crilog::whole_lines(&data)];
            let records = data.iter().filter(|b| **b == b'\n').count() as u64;
            if records >= wanted {
                return Ok(segment.start + crilog::tail_start(data, wanted) as u64);
            }
            wanted -= records;
        }
        Ok(self.first())
    }

    /// Logical offset of the first record stamped at or after `since_ns`.
    pub fn since_offset(&self, since_ns: i64) -> std::io::Result<u64> {
        for segment in &self.segments {
            let mut file = &segment.file;
            file.seek(SeekFrom::Start(0))?;
            let mut reader = std::io::BufReader::new(file);
            let mut offset = segment.start;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let ts = line.split(|b| *b == b' ').next().unwrap_or_default();
                if crilog::record_time_ns(ts).is_some_and(|t| t >= since_ns) {
                    return Ok(offset);
                }
                offset += n as u64;
            }
        }
        Ok(self.end())
    }
}

/// The monitor's side: appends records, rotates by size, survives a full disk.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    /// Logical offset of the current file's first byte, and its size.
    start: u64,
    size: u64,
    rotation: Rotation,
    /// Writing failed and lines are being dropped (reported once, until it works again).
    failing: bool,
    /// Where the one report of a failure goes (the monitor's stderr).
    report: Box<dyn FnMut(&str) + Send>,
}

impl LogWriter {
    /// Opens (appending) the log in `dir`.
    pub fn open(
        dir: &Path,
        rotation: Rotation,
        report: Box<dyn FnMut(&str) + Send>,
    ) -> std::io::Result<LogWriter> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CURRENT))?;
        let size = file.metadata()?.len();
        let start = rotated(dir)?.last().map_or(Ok(0), |(start, path)| {
            std::fs::metadata(path).map(|m| start + m.len())
        })?;
        Ok(LogWriter::from_parts(
            dir, file, start, size, rotation, report,
        ))
    }

    /// The open file and where it stands (logical start, size): with
    /// [`from_parts`](Self::from_parts), how the writer crosses the monitor's re-exec.
    pub fn into_parts(self) -> (File, u64, u64) {
        (self.file, self.start, self.size)
    }

    /// A writer over a file [`into_parts`](Self::into_parts) gave, which nothing has
    /// written to since.
    pub fn from_parts(
        dir: &Path,
        file: File,
        start: u64,
        size: u64,
        rotation: Rotation,
        report: Box<dyn FnMut(&str) + Send>,
    ) -> LogWriter {
        LogWriter {
            dir: dir.to_path_buf(),
            file,
            start,
            size,
            rotation,
            failing: false,
            report,
        }
    }

    /// Appends one whole record (rotating first if it would overflow `max-size`).
    pub fn write_record(&mut self, record: &[u8]) {
        if let Some(max) = self.rotation.max_size {
            if self.size > 0 && self.size + record.len() as u64 > max {
                if let Err(err) = self.rotate() {
                    self.failed(&format!("rotating the log failed: {err}"));
                }
            }
        }
        match self.file.write_all(record) {
            Ok(()) => {
                self.size += record.len() as u64;
                if self.failing {
                    self.failing = false;
                    (self.report)("writing the log works again: logging resumed");
                }
            }
            Err(err) => {
                // Cut a torn record off, so the file keeps whole records only.
                let _ = self.file.set_len(self.size);
                self.failed(&format!(
                    "writing the log {} failed (lines are dropped until it works again): {err}",
                    self.dir.join(CURRENT).display()
                ));
            }
        }
    }

    fn failed(&mut self, message: &str) {
        if !self.failing {
            self.failing = true;
            (self.report)(message);
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let current = self.dir.join(CURRENT);
        let old_start = self.start;
        let next_start = self.start + self.size;
        std::fs::rename(&current, self.dir.join(rotated_name(old_start)))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)?;
        self.file = file;
        self.start = next_start;
        self.size = 0;
        let keep = self.rotation.max_files.saturating_sub(1) as usize;
        if keep == 0 {
            // Only the current file is kept: an empty marker says where it starts.
            File::create(self.dir.join(rotated_name(next_start)))?;
        }
        let all = rotated(&self.dir)?;
        let keep = keep.max(1);
        if all.len() > keep {
            for (_, path) in &all[..all.len() - keep] {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// Flushes the log to disk (at exit, so a reader who sees "exited" sees every line).
    pub fn sync(&self) {
        let _ = self.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn record(i: usize) -> Vec<u8> {
        format!("2026-01-01T00:00:{:02}Z stdout F line {i:03}\n", i % 60).into_bytes()
    }

    #[test]
    fn rotation_keeps_max_files_and_logical_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rotation = Rotation::from_opts(
            &[
                ("max-size".into(), "100".into()),
                ("max-file".into(), "3".into()),
            ]
            .into(),
        )
        .expect("opts");
        let mut writer = LogWriter::open(dir.path(), rotation, Box::new(|_| {})).expect("open");
        let one = record(0).len(); // 40 bytes: two records per file
        for i in 0..10 {
            writer.write_record(&record(i));
        }
        let set = LogSet::open(dir.path()).expect("set");
        assert_eq!(set.end(), (10 * one) as u64);
        // Three files of two records each are kept: records 4..10.
        assert_eq!(set.first(), (4 * one) as u64);
        let files = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(files, 3);
        let (from, data) = set.read(0, 1 << 20).expect("read");
        assert_eq!(from, (4 * one) as u64);
        assert_eq!(data, [record(4), record(5)].concat());
        let (_, data) = set.read((9 * one) as u64, 1 << 20).expect("read");
        assert_eq!(data, record(9));
        assert_eq!(set.tail_offset(3).expect("tail"), (7 * one) as u64);
        assert_eq!(set.tail_offset(100).expect("tail"), (4 * one) as u64);
        assert_eq!(
            set.since_offset(crate::crilog::record_time_ns(b"2026-01-01T00:00:08Z").expect("ts"))
                .expect("since"),
            (8 * one) as u64
        );
        // A reopened writer continues at the same logical offset.
        drop(writer);
        let mut writer = LogWriter::open(dir.path(), rotation, Box::new(|_| {})).expect("open");
        writer.write_record(&record(10));
        assert_eq!(
            LogSet::open(dir.path()).expect("set").end(),
            (11 * one) as u64
        );
    }

    #[test]
    fn one_file_rotation_leaves_a_start_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rotation = Rotation {
            max_size: Some(50),
            max_files: 1,
        };
        let mut writer = LogWriter::open(dir.path(), rotation, Box::new(|_| {})).expect("open");
        for i in 0..5 {
            writer.write_record(&record(i));
        }
        let one = record(0).len() as u64;
        let set = LogSet::open(dir.path()).expect("set");
        assert_eq!((set.first(), set.end()), (4 * one, 5 * one));
        assert_eq!(set.read(0, 1000).expect("read").1, record(4));
    }

    #[test]
    fn a_failing_write_is_reported_once_and_leaves_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&reports);
        let mut writer = LogWriter::open(
            dir.path(),
            Rotation::default(),
            Box::new(move |m| sink.lock().expect("lock").push(m.to_string())),
        )
        .expect("open");
        writer.write_record(&record(1));
        // A read-only handle stands in for a full disk: every write fails.
        let good = std::mem::replace(
            &mut writer.file,
            File::open(dir.path().join(CURRENT)).expect("ro"),
        );
        writer.write_record(&record(2));
        writer.write_record(&record(3));
        writer.file = good;
        writer.write_record(&record(4));
        let reports = reports.lock().expect("lock").clone();
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports[0].contains("failed"), "{reports:?}");
        assert!(reports[1].contains("resumed"), "{reports:?}");
        let text = std::fs::read(dir.path().join(CURRENT)).expect("read");
        assert_eq!(text, [record(1), record(4)].concat());
    }

    #[test]
    fn log_opts_parse() {
        let ok = Rotation::from_opts(&[("max-size".into(), "10m".into())].into()).expect("ok");
        assert_eq!(ok.max_size, Some(10 << 20));
        assert_eq!(ok.max_files, 1);
        assert!(Rotation::from_opts(&[("max-file".into(), "0".into())].into()).is_err());
        assert!(Rotation::from_opts(&[("mode".into(), "x".into())].into()).is_err());
        assert_eq!(parse_rotated("log.00000000000000000042"), Some(42));
        assert_eq!(parse_rotated("log.1"), None);
    }
}

//! The CRI log format (`<RFC3339Nano> stdout|stderr F|P <text>\n`), as containerd and
//! CRI-O write it: one record per line of output; a line longer than the buffer is cut
//! into `P` (partial) records ended by an `F` record; output that ends without a newline
//! ends with a `P` record.

use std::time::SystemTime;

/// Longest text of one record; longer lines become partial records.
pub const MAX_RECORD_TEXT: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// RFC 3339 UTC with as many fraction digits as needed (Go's RFC3339Nano).
pub fn timestamp(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Unix nanoseconds of a record's RFC 3339 timestamp.
pub fn record_time_ns(ts: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(ts).ok()?;
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos()).ok()
}

/// One record, newline included. `text` must not contain the newline that ended it.
pub fn format_record(ts: &str, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ts.len() + text.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// Cuts a byte stream into records: whole lines become `F` records, a line that grows
/// past `max` is emitted as `P` records, and what is left at the end of the stream is a
/// last `P` record.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; calls `emit(text, partial)` for each finished record.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.append(&bytes[..i], emit);
                    emit(&self.buf, false);
                    self.buf.clear();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.append(bytes, emit);
                    bytes = &[];
                }
            }
        }
    }

    fn append(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while self.buf.len() + bytes.len() > self.max {
            let take = self.max - self.buf.len();
            self.buf.extend_from_slice(&bytes[..take]);
            emit(&self.buf, true);
            self.buf.clear();
            bytes = &bytes[take..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// End of stream: the unterminated rest, if any, as a partial record, so that a
    /// reader reproduces the output byte for byte (`printf abc` prints no newline).
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(&self.buf, true);
            self.buf.clear();
        }
    }
}

/// Byte offset in `log` where the last `n` records begin (0 if there are fewer).
pub fn tail_start(log: &[u8], n: u64) -> usize {
    if n == 0 {
        return log.len();
    }
    // Skip the final newline: it ends the last record rather than starting one.
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Length of the longest prefix of `data` that ends with a newline (whole records only).
pub fn whole_lines(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut splitter = LineSplitter::new(max);
        let mut emit = |text: &[u8], partial: bool| {
            out.push((String::from_utf8_lossy(text).into_owned(), partial))
        };
        for piece in pieces {
            splitter.push(piece, &mut emit);
        }
        splitter.finish(&mut emit);
        out
    }

    #[test]
    fn whole_lines_are_full_records_across_reads() {
        assert_eq!(
            split(100, &[b"hel", b"lo\nwor", b"ld\n\n"]),
            vec![
                ("hello".into(), false),
                ("world".into(), false),
                (String::new(), false)
            ]
        );
    }

    #[test]
    fn long_lines_and_an_unterminated_end_are_partial_records() {
        assert_eq!(
            split(4, &[b"abcdefghij\nxy"]),
            vec![
                ("abcd".into(), true),
                ("efgh".into(), true),
                ("ij".into(), false),
                ("xy".into(), true)
            ]
        );
    }

    #[test]
    fn records_have_the_cri_shape() {
        let ts = timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_500));
        assert_eq!(ts, "1970-01-01T00:00:00.0000015Z");
        let line = format_record(&ts, Stream::Stderr, true, b"oops");
        assert_eq!(
            line,
            b"1970-01-01T00:00:00.0000015Z stderr P oops\n".to_vec()
        );
        assert_eq!(
            format_record("T", Stream::Stdout, false, b""),
            b"T stdout F \n".to_vec()
        );
    }

    #[test]
    fn tail_finds_the_start_of_the_last_records() {
        let log = b"a\nb\nc\n";
        assert_eq!(tail_start(log, 1), 4);
        assert_eq!(tail_start(log, 2), 2);
        assert_eq!(tail_start(log, 3), 0);
        assert_eq!(tail_start(log, 10), 0);
        assert_eq!(tail_start(log, 0), 6);
        assert_eq!(whole_lines(b"a\nb"), 2);
        assert_eq!(whole_lines(b"ab"), 0);
    }
}

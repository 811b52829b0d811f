//! The one error envelope every endpoint answers with, and its stable codes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable error categories; part of the wire contract, so never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Invalid,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind, for exhaustive round-trip tests and help texts.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::Invalid,
        ErrorKind::Conflict,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The wire spelling, in the envelope's `code` and in the `Berth-Error` header.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// Parses the wire spelling; `None` for a code this version does not know.
    pub fn parse(code: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == code)
    }

    /// HTTP-like status carried in the NATS micro `Nats-Service-Error-Code` header,
    /// so that generic micro tooling shows a sensible number (the micro spec wants a
    /// number there; berth's own kind travels in `Berth-Error` and the body).
    pub fn status_code(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists => 409,
            ErrorKind::Invalid => 400,
            ErrorKind::Conflict => 409,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most bytes an error message may have on the wire. Errors often quote their input (a
/// name, a parser's complaint about a header), so without a bound a 300 kB name makes an
/// error reply over NATS' payload limit that never reaches the caller.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// `{code, message}`: the body of every error reply, in the request's encoding.
///
/// The message is always printable and bounded: [`ErrorEnvelope::new`] passes it through
/// [`quote_safe`], and the serving and receiving paths do it again with
/// [`ErrorEnvelope::sanitized`] for envelopes built field by field or sent by someone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, JsonSchema)]
#[error("{code}: {message}")]
pub struct ErrorEnvelope {
    pub code: ErrorKind,
    pub message: String,
}

impl ErrorEnvelope {
    /// Builds an envelope of the given kind; the message is escaped and bounded.
    pub fn new(code: ErrorKind, message: impl Into<String>) -> Self {
        ErrorEnvelope {
            code,
            message: quote_safe(&message.into()),
        }
    }

    /// The same envelope with its message escaped and bounded; a no-op for one made by
    /// [`ErrorEnvelope::new`].
    pub fn sanitized(self) -> Self {
        let message = quote_safe(&self.message);
        ErrorEnvelope {
            code: self.code,
            message,
        }
    }

    /// `not_found` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// `already_exists` with a message.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    /// `invalid` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// `conflict` with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// `unavailable` with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// `internal` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// Makes text safe to print on a terminal and to send as an error: control characters
/// (ESC, BEL, CR, LF…) and the bidirectional overrides are shown escaped (`\x1b`, `\n`,
/// `\u{202e}`), and the result is cut to [`MAX_ERROR_MESSAGE_BYTES`] with a note of how
/// much was left out. Backslashes are kept as they are so that applying it twice changes
/// nothing (an already escaped `\x1b` has no control character left).
pub fn quote_safe(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len().min(MAX_ERROR_MESSAGE_BYTES));
    for c in text.chars() {
        push_escaped(&mut escaped, c);
    }
    bound(escaped, MAX_ERROR_MESSAGE_BYTES)
}

/// Like [`quote_safe`] for input that may not be UTF-8: a byte that is not part of valid
/// UTF-8 is shown as `\xNN` rather than replaced, so the operator sees what was sent.
pub fn quote_bytes(bytes: &[u8]) -> String {
    // Escaping never shrinks text, so input past the limit could never be shown anyway.
    let head = &bytes[..bytes.len().min(MAX_ERROR_MESSAGE_BYTES)];
    let mut escaped = String::with_capacity(head.len());
    for chunk in head.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut escaped, c);
        }
        for byte in chunk.invalid() {
            escaped.push_str(&format!("\\x{byte:02x}"));
        }
    }
    let unseen = bytes.len() - head.len();
    if unseen == 0 {
        return bound(escaped, MAX_ERROR_MESSAGE_BYTES);
    }
    let total = escaped.len() + unseen;
    cut(&escaped, total, MAX_ERROR_MESSAGE_BYTES)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() && (c as u32) < 0x100 => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        // Bidirectional embeddings, overrides and isolates reorder what a terminal shows.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
        c => out.push(c),
    }
}

/// Cuts `text` on a character boundary so that it and the note `…(N bytes more)` fit in
/// `limit` bytes; text that fits is returned unchanged, so bounding twice is a no-op.
fn bound(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    cut(&text, text.len(), limit)
}

/// Room kept for the truncation note (`…(18446744073709551615 bytes more)` is 36 bytes).
const NOTE_ROOM: usize = 40;

/// The first bytes of `text` that leave room for the note, then the note counting the
/// `total - shown` bytes left out.
fn cut(text: &str, total: usize, limit: usize) -> String {
    let mut end = limit.saturating_sub(NOTE_ROOM).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes more)", &text[..end], total - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_spelling() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("kind serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(ErrorKind::parse("teapot"), None);
    }

    #[test]
    fn envelope_json_shape_is_code_and_message() {
        let envelope = ErrorEnvelope::invalid("bad body");
        let json = serde_json::to_value(&envelope).expect("envelope serializes");
        assert_eq!(
            json,
            serde_json::json!({"code": "invalid", "message": "bad body"})
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let envelope = ErrorEnvelope::invalid("bad header \x1b[31m\x07\r\nnext\ttab \u{202e}");
        assert_eq!(
            envelope.message,
            "bad header \\x1b[31m\\x07\\r\\nnext\\ttab \\u{202e}"
        );
        assert!(!envelope.message.chars().any(char::is_control));
        // Plain text and non-ASCII letters pass unchanged.
        assert_eq!(quote_safe("naïve café: not found"), "naïve café: not found");
    }

    #[test]
    fn non_utf8_bytes_are_shown_as_hex() {
        assert_eq!(quote_bytes(b"ok\xff\x1b\xc3\xa9"), "ok\\xff\\x1bé");
    }

    #[test]
    fn long_messages_are_bounded_with_a_note() {
        let long = "n".repeat(300_000);
        let message = ErrorEnvelope::not_found(format!("no image {long}")).message;
        assert!(
            message.len() <= MAX_ERROR_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        let shown = message.find('…').expect("has the note");
        let more = 300_009 - shown;
        assert!(
            message.ends_with(&format!("…({more} bytes more)")),
            "{message:.80}"
        );
        // Multi-byte characters are never cut in half.
        let wide = quote_safe(&"é".repeat(10_000));
        assert!(wide.len() <= MAX_ERROR_MESSAGE_BYTES);
        let bytes = quote_bytes(&vec![0x1bu8; 100_000]);
        assert!(bytes.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(bytes.starts_with("\\x1b\\x1b"), "{bytes:.20}");
    }

    #[test]
    fn sanitizing_twice_changes_nothing() {
        let raw = format!("\x1b{}", "é\n".repeat(5000));
        let once = ErrorEnvelope::invalid(raw);
        assert_eq!(once.clone().sanitized(), once);
        let field_by_field = ErrorEnvelope {
            code: ErrorKind::Internal,
            message: "\x07".into(),
        };
        assert_eq!(field_by_field.sanitized().message, "\\x07");
    }
}

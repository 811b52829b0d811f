//! Body encoding: bincode by default, JSON when the request says `Content-Type: application/json`.
//!
//! Internal traffic uses bincode (small, fast); an operator with any NATS client can speak
//! JSON. A reply always uses the encoding of the request it answers.

use serde::{de::DeserializeOwned, Serialize};

/// Header that selects the body encoding of a request (and of its reply).
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// The `Content-Type` value that selects JSON.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The `Content-Type` value berth sets on bincode bodies (absent means bincode too).
pub const BINCODE_CONTENT_TYPE: &str = "application/x-bincode";

/// Header carrying the description of an error reply: the envelope's message, on one
/// line (NATS micro convention).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying the numeric status of an error reply, e.g. `404` (NATS micro convention;
/// see [`crate::ErrorKind::status_code`]).
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// Header carrying berth's own error kind of an error reply (`not_found`, `invalid`…), the
/// same as the envelope's `code`, so a client can branch on it without decoding the body.
pub const BERTH_ERROR_HEADER: &str = "Berth-Error";

/// Upper bound on a decoded bincode body, so a hostile length prefix cannot make us
/// allocate gigabytes. NATS payloads are 1 MiB by default; 8 MiB leaves room for
/// servers configured with a larger max_payload.
const BINCODE_DECODE_LIMIT: usize = 8 * 1024 * 1024;

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Bincode,
    Json,
}

/// A body that could not be encoded or decoded; the text says why.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed bincode body: {0}")]
    BincodeDecode(String),
    #[error("malformed JSON body: {0}")]
    JsonDecode(String),
    #[error("cannot encode body: {0}")]
    Encode(String),
}

impl Encoding {
    /// Picks the encoding from a `Content-Type` header value (absent or unknown: bincode).
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(value) if is_json_mime(value) => Encoding::Json,
            _ => Encoding::Bincode,
        }
    }

    /// The `Content-Type` value to send with a body of this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Bincode => BINCODE_CONTENT_TYPE,
            Encoding::Json => JSON_CONTENT_TYPE,
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Encoding::Bincode => bincode::serde::encode_to_vec(value, bincode_config())
                .map_err(|err| CodecError::Encode(err.to_string())),
            Encoding::Json => {
                serde_json::to_vec(value).map_err(|err| CodecError::Encode(err.to_string()))
            }
        }
    }

    /// Decodes a value; trailing bytes after a bincode value are an error, as is any
    /// body that does not match the type exactly.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CodecError> {
        match self {
            Encoding::Bincode => {
                let (value, read) =
                    bincode::serde::decode_from_slice::<T, _>(body, bincode_config())
                        .map_err(|err| CodecError::BincodeDecode(err.to_string()))?;
                if read != body.len() {
                    return Err(CodecError::BincodeDecode(format!(
                        "{} trailing bytes after the message",
                        body.len() - read
                    )));
                }
                Ok(value)
            }
            Encoding::Json => {
                // An empty JSON body stands for "no arguments" so that `nats req subj ''`
                // works for verbs whose request has only optional fields.
                let body = if body.iter().all(u8::is_ascii_whitespace) {
                    b"{}".as_slice()
                } else {
                    body
                };
                serde_json::from_slice(body).map_err(|err| CodecError::JsonDecode(err.to_string()))
            }
        }
    }

    /// Decodes a request body. Like [`Encoding::decode`], but a JSON request must be an
    /// object: serde would otherwise take `[]` (or `[true]`) for a struct by position,
    /// which no caller means and which bypasses the unknown-field check.
    pub fn decode_request<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CodecError> {
        if self == Encoding::Json {
            if let Some(first) = body.iter().find(|byte| !byte.is_ascii_whitespace()) {
                if *first != b'{' {
                    return Err(CodecError::JsonDecode(
                        "a request must be a JSON object ({…}), not an array or a scalar"
                            .to_string(),
                    ));
                }
            }
        }
        self.decode(body)
    }
}

fn is_json_mime(value: &str) -> bool {
    value
        .split(';')
        .next()
        .map(|mime| mime.trim().eq_ignore_ascii_case(JSON_CONTENT_TYPE))
        .unwrap_or(false)
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        count: u32,
        tags: Vec<String>,
    }

    fn sample() -> Sample {
        Sample {
            name: "busybox".into(),
            count: 3,
            tags: vec!["latest".into()],
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let bytes = encoding.encode(&sample()).expect("encodes");
            let back: Sample = encoding.decode(&bytes).expect("decodes");
            assert_eq!(back, sample());
        }
    }

    #[test]
    fn content_type_selects_json_only_for_json() {
        assert_eq!(Encoding::from_content_type(None), Encoding::Bincode);
        assert_eq!(
            Encoding::from_content_type(Some("application/json")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("text/plain")),
            Encoding::Bincode
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let garbage = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let err = Encoding::Bincode
            .decode::<Sample>(&garbage)
            .expect_err("garbage must not decode");
        assert!(matches!(err, CodecError::BincodeDecode(_)), "{err}");
        let err = Encoding::Json
            .decode::<Sample>(b"{not json")
            .expect_err("broken JSON must not decode");
        assert!(matches!(err, CodecError::JsonDecode(_)), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Encoding::Bincode.encode(&sample()).expect("encodes");
        bytes.push(0);
        assert!(Encoding::Bincode.decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A varint length of ~2^60 for the string field.
        let hostile = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(Encoding::Bincode.decode::<Sample>(&hostile).is_err());
    }

    #[test]
    fn a_json_request_must_be_an_object() {
        #[derive(Debug, Deserialize, PartialEq, Default)]
        struct Optional {
            #[serde(default)]
            all: bool,
        }
        // serde alone takes an array for a struct by position.
        assert!(Encoding::Json.decode::<Optional>(b"[]").is_ok());
        for body in [&b"[]"[..], b" [true]", b"true", b"\"x\""] {
            let err = Encoding::Json
                .decode_request::<Optional>(body)
                .expect_err("not an object");
            assert!(err.to_string().contains("JSON object"), "{err}");
        }
        let ok: Optional = Encoding::Json
            .decode_request(b" {\"all\": true}")
            .expect("an object decodes");
        assert!(ok.all);
        let empty: Optional = Encoding::Json.decode_request(b"").expect("empty is {}");
        assert_eq!(empty, Optional::default());
    }

    #[test]
    fn empty_json_body_means_no_arguments() {
        #[derive(Debug, Deserialize, PartialEq, Default)]
        struct Optional {
            #[serde(default)]
            all: bool,
        }
        let decoded: Optional = Encoding::Json.decode(b"").expect("empty is {}");
        assert_eq!(decoded, Optional::default());
    }
}

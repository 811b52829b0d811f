//! Byte fields that travel as base64 strings in JSON and unchanged in bincode.
//!
//! Use as `#[serde(with = "crate::json_bytes")]` on a `Vec<u8>`. A foreign client reads
//! `"aGVsbG8K"` instead of an array of numbers, while bincode stays byte-for-byte what it
//! was, so old and new binaries keep talking. The choice rides on the serializer's
//! `is_human_readable`: true for serde_json, false for bincode.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

/// Serializes bytes: a standard base64 string (with padding) for JSON, the plain
/// sequence for bincode.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&STANDARD.encode(bytes))
    } else {
        bytes.serialize(serializer)
    }
}

/// Deserializes bytes: JSON must carry a base64 string (an array of numbers is refused,
/// so there is one JSON form); bincode the plain sequence.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|err| D::Error::custom(format!("bytes must be standard base64: {err}")))
    } else {
        Vec::<u8>::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use crate::Encoding;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tagged {
        #[serde(with = "super")]
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        data: Vec<u8>,
    }

    #[test]
    fn json_carries_base64_and_bincode_is_unchanged() {
        let tagged = Tagged {
            data: b"hello\n\x00\xff".to_vec(),
        };
        let json = Encoding::Json.encode(&tagged).expect("encodes");
        assert_eq!(json, br#"{"data":"aGVsbG8KAP8="}"#);
        assert_eq!(
            Encoding::Json.decode::<Tagged>(&json).expect("decodes"),
            tagged
        );
        let plain = Plain {
            data: tagged.data.clone(),
        };
        let bincode = Encoding::Bincode.encode(&tagged).expect("encodes");
        assert_eq!(bincode, Encoding::Bincode.encode(&plain).expect("encodes"));
        assert_eq!(
            Encoding::Bincode
                .decode::<Tagged>(&bincode)
                .expect("decodes"),
            tagged
        );
    }

    #[test]
    fn json_arrays_and_bad_base64_are_refused() {
        for body in [&br#"{"data":[104,105]}"#[..], br#"{"data":"not base64!"}"#] {
            let err = Encoding::Json
                .decode::<Tagged>(body)
                .expect_err("must not decode");
            assert!(err.to_string().contains("malformed JSON"), "{err}");
        }
    }
}

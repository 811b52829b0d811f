//! Serde form of byte fields: a base64 string (standard alphabet, padded) in JSON, the
//! raw bytes, as before, in bincode. Use with `#[serde(with = "crate::b64")]`.
//!
//! A JSON array of numbers is 3–4 bytes a byte and awkward in every language; base64 is
//! what JSON clients expect. bincode keeps serde's own `Vec<u8>` form, so its wire format
//! does not change.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&STANDARD.encode(bytes))
    } else {
        bytes.serialize(serializer)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|err| de::Error::custom(format!("bytes must be base64: {err}")))
    } else {
        Vec::<u8>::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use crate::Encoding;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Chunk {
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        data: Vec<u8>,
    }

    #[test]
    fn json_carries_base64_and_bincode_the_old_bytes() {
        let chunk = Chunk {
            data: b"hi\x00\xff".to_vec(),
        };
        let json = Encoding::Json.encode(&chunk).expect("encodes");
        assert_eq!(json, br#"{"data":"aGkA/w=="}"#);
        assert_eq!(
            Encoding::Json.decode::<Chunk>(&json).expect("decodes"),
            chunk
        );
        // bincode is byte for byte what a plain Vec<u8> gives, so old peers still agree.
        let bincode = Encoding::Bincode.encode(&chunk).expect("encodes");
        let plain = Plain {
            data: chunk.data.clone(),
        };
        assert_eq!(bincode, Encoding::Bincode.encode(&plain).expect("encodes"));
        assert_eq!(
            Encoding::Bincode
                .decode::<Chunk>(&bincode)
                .expect("decodes"),
            chunk
        );
    }

    #[test]
    fn bad_base64_is_a_decode_error_naming_base64() {
        let err = Encoding::Json
            .decode::<Chunk>(br#"{"data":"not base64!"}"#)
            .expect_err("refused");
        assert!(err.to_string().contains("base64"), "{err}");
        assert!(Encoding::Json
            .decode::<Chunk>(br#"{"data":[1,2]}"#)
            .is_err());
    }
}

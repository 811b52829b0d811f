//! Compression of a layer blob: declared by the media type, checked by magic bytes.

use std::io::{BufRead, BufReader, Read};

use super::LayerError;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// What the media type declares; `Ok(None)` when it does not say (empty
    /// string: the caller does not know), an error for something that is not a
    /// layer tar at all.
    pub fn from_media_type(media_type: &str) -> Result<Option<Compression>, LayerError> {
        let mt = media_type.trim();
        if mt.is_empty() {
            return Ok(None);
        }
        let c = match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            other => {
                return Err(LayerError::Compression(format!(
                    "unsupported layer media type {other:?}"
                )))
            }
        };
        Ok(Some(c))
    }

    /// What the first bytes say; `None` for anything else (an uncompressed tar
    /// starts with a file name, so it has no magic of its own).
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else if head.starts_with(ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Decides the compression from the media type and the first bytes.
///
/// The magic bytes win when they name a compression: registries exist that
/// label uncompressed layers `.tar.gzip` and vice versa, and the diff_id check
/// catches any wrong guess. A blob declared compressed without the matching
/// magic is refused, since decompressing it could only fail later and less clearly.
pub fn detect(media_type: &str, head: &[u8]) -> Result<Compression, LayerError> {
    let declared = Compression::from_media_type(media_type)?;
    match (declared, Compression::sniff(head)) {
        (_, Some(sniffed)) => Ok(sniffed),
        (None | Some(Compression::None), None) => Ok(Compression::None),
        (Some(d), None) => Err(LayerError::Compression(format!(
            "media type {media_type:?} declares {d:?} but the blob has no {d:?} magic bytes"
        ))),
    }
}

/// Wraps `blob` in the decompressor its media type and magic bytes call for.
pub fn decompressor<'a, R: Read + 'a>(
    media_type: &str,
    blob: R,
) -> Result<(Compression, Box<dyn Read + 'a>), LayerError> {
    let mut buffered = BufReader::with_capacity(128 << 10, blob);
    let head = buffered.fill_buf().map_err(LayerError::Stream)?;
    let compression = detect(media_type, head)?;
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(buffered),
        // Multi-member gzip is valid (pigz, concatenated layers).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| LayerError::Compression(format!("zstd: {e}")))?,
        ),
    };
    Ok((compression, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const OCI_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(
            Compression::from_media_type(OCI_GZ).expect("known"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd")
                .expect("known"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .expect("known"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("").expect("empty"), None);
        assert!(Compression::from_media_type("application/json").is_err());
    }

    #[test]
    fn magic_wins_and_missing_magic_is_refused() {
        assert_eq!(
            detect("application/vnd.oci.image.layer.v1.tar", &gz(b"x")).expect("gzip"),
            Compression::Gzip
        );
        assert!(detect(OCI_GZ, b"plain tar bytes").is_err());
        assert_eq!(
            detect("", b"plain tar bytes").expect("none"),
            Compression::None
        );
    }

    #[test]
    fn round_trips_gzip_zstd_and_plain() {
        let data = b"hello layer".repeat(1000);
        for (mt, blob) in [
            (OCI_GZ, gz(&data)),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                zstd::encode_all(&data[..], 3).expect("zstd"),
            ),
            ("application/vnd.oci.image.layer.v1.tar", data.clone()),
        ] {
            let (_, mut r) = decompressor(mt, &blob[..]).expect("decompressor");
            let mut out = Vec::new();
            r.read_to_end(&mut out).expect("read");
            assert_eq!(out, data, "{mt}");
        }
    }
}

//! Content digests: a validated `Digest` type, hashing readers/writers that verify
//! digest and size while streaming, and chainID helpers.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// Digest algorithms berth accepts (sha384 is allowed by the spec but unused in practice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm of every registry and tool in use today.
    Sha256,
    /// SHA-512, allowed by the OCI image spec.
    Sha512,
}

impl Algorithm {
    /// The name used in a digest string (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Number of lowercase hex characters in an encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Errors about digests, sizes and their verification.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The text is not `algorithm:hex` with a supported algorithm and the right length.
    #[error("invalid digest {input:?}: {reason}")]
    Invalid {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Content hashed to something other than what was promised.
    #[error("digest mismatch for {subject}: expected {expected}, got {actual}")]
    Mismatch {
        /// What was being verified (blob, image).
        subject: String,
        /// The digest that was promised.
        expected: Digest,
        /// The digest of the bytes actually seen.
        actual: Digest,
    },
    /// Content had a different length than promised (includes truncated blobs).
    #[error("size mismatch for {subject}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was being verified.
        subject: String,
        /// The promised size.
        expected: u64,
        /// The size seen (for an overlong blob: the size at which reading stopped).
        actual: u64,
    },
}

/// A validated content digest such as `sha256:<64 hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Builds a digest from parts, validating the hex string.
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Self, DigestError> {
        let invalid = |reason: String| DigestError::Invalid {
            input: format!("{}:{}", algorithm.name(), hex),
            reason,
        };
        if hex.len() != algorithm.hex_len() {
            return Err(invalid(format!(
                "{} needs {} hex characters, got {}",
                algorithm.name(),
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("not lowercase hex".to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded (hex) part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks that `bytes` have this digest; `subject` names them in the error.
    pub fn verify_bytes(&self, bytes: &[u8], subject: &str) -> Result<(), DigestError> {
        let actual = Self::of(self.algorithm, bytes);
        if &actual != self {
            return Err(DigestError::Mismatch {
                subject: subject.to_string(),
                expected: self.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| DigestError::Invalid {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("missing ':' between algorithm and hex"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(invalid("empty algorithm")),
            _ => return Err(invalid("unsupported algorithm (only sha256, sha512)")),
        };
        Digest::new(algorithm, hex).map_err(|e| match e {
            DigestError::Invalid { reason, .. } => DigestError::Invalid {
                input: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        // hex::encode of a fixed-size hash always has the right length and alphabet.
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A writer that hashes and counts what passes through to `inner`.
pub struct DigestingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> DigestingWriter<W> {
    /// Wraps `inner`, hashing with sha256.
    pub fn new(inner: W) -> Self {
        Self::with_algorithm(inner, Algorithm::Sha256)
    }

    /// Wraps `inner`, hashing with `algorithm`.
    pub fn with_algorithm(inner: W, algorithm: Algorithm) -> Self {
        DigestingWriter {
            inner,
            hasher: Hasher::new(algorithm),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Returns the inner writer, the digest and the size of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }

    /// Like `finish`, but fails unless digest and size are the expected ones.
    pub fn finish_verified(
        self,
        expected: &Digest,
        expected_size: Option<u64>,
        subject: &str,
    ) -> Result<W, DigestError> {
        let (inner, actual, size) = self.finish();
        check(subject, expected, expected_size, &actual, size)?;
        Ok(inner)
    }
}

impl<W: Write> Write for DigestingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Hash only what the inner writer accepted, so partial writes stay consistent.
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn check(
    subject: &str,
    expected: &Digest,
    expected_size: Option<u64>,
    actual: &Digest,
    size: u64,
) -> Result<(), DigestError> {
    if let Some(expected_size) = expected_size {
        if expected_size != size {
            return Err(DigestError::SizeMismatch {
                subject: subject.to_string(),
                expected: expected_size,
                actual: size,
            });
        }
    }
    if actual != expected {
        return Err(DigestError::Mismatch {
            subject: subject.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// The verification state shared by the sync and async verifying readers.
struct Verifier {
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: Option<u64>,
    read: u64,
    subject: String,
    verified: bool,
}

impl Verifier {
    fn new(expected: Digest, expected_size: Option<u64>, subject: String) -> Self {
        Verifier {
            hasher: Some(Hasher::new(expected.algorithm())),
            expected,
            expected_size,
            read: 0,
            subject,
            verified: false,
        }
    }

    fn fail(e: DigestError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Accounts for `data` just read; fails as soon as the size limit is passed.
    fn update(&mut self, data: &[u8]) -> io::Result<()> {
        self.read += data.len() as u64;
        if let Some(limit) = self.expected_size {
            if self.read > limit {
                self.hasher = None;
                return Err(Self::fail(DigestError::SizeMismatch {
                    subject: self.subject.clone(),
                    expected: limit,
                    actual: self.read,
                }));
            }
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        Ok(())
    }

    /// Called at end of stream: checks size and digest.
    fn finish(&mut self) -> io::Result<()> {
        if self.verified {
            return Ok(());
        }
        let Some(hasher) = self.hasher.take() else {
            // Already failed once; keep failing rather than pretend EOF is fine.
            return Err(Self::fail(DigestError::SizeMismatch {
                subject: self.subject.clone(),
                expected: self.expected_size.unwrap_or(0),
                actual: self.read,
            }));
        };
        let actual = hasher.finish();
        check(
            &self.subject,
            &self.expected,
            self.expected_size,
            &actual,
            self.read,
        )
        .map_err(Self::fail)?;
        self.verified = true;
        Ok(())
    }
}

/// A reader that verifies digest and size of the stream it passes through.
///
/// Reading past the expected size fails at once (so an endless or oversized
/// blob is not consumed); at end of stream the digest and size are checked
/// and a mismatch is returned as an `io::Error` of kind `InvalidData` whose
/// inner error is a [`DigestError`]. A consumer that reads to EOF (e.g.
/// `io::copy`) therefore never succeeds on wrong content.
pub struct VerifyingReader<R> {
    inner: R,
    v: Verifier,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`; `subject` names the blob in errors (e.g. "layer sha256:… of busybox:latest").
    pub fn new(
        inner: R,
        expected: Digest,
        expected_size: Option<u64>,
        subject: impl Into<String>,
    ) -> Self {
        VerifyingReader {
            inner,
            v: Verifier::new(expected, expected_size, subject.into()),
        }
    }

    /// Whether the stream was read to its end and verified.
    pub fn is_verified(&self) -> bool {
        self.v.verified
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.v.read
    }

    /// The digest being verified against.
    pub fn expected(&self) -> &Digest {
        &self.v.expected
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.v.finish()?;
            return Ok(0);
        }
        self.v.update(&buf[..n])?;
        Ok(n)
    }
}

/// The async twin of [`VerifyingReader`] (tokio `AsyncRead`), for streaming a blob from
/// a registry or archive into the object store while verifying it.
pub struct AsyncVerifyingReader<R> {
    inner: R,
    v: Verifier,
}

impl<R> AsyncVerifyingReader<R> {
    /// Wraps `inner`; `subject` names the blob in errors.
    pub fn new(
        inner: R,
        expected: Digest,
        expected_size: Option<u64>,
        subject: impl Into<String>,
    ) -> Self {
        AsyncVerifyingReader {
            inner,
            v: Verifier::new(expected, expected_size, subject.into()),
        }
    }

    /// Whether the stream was read to its end and verified.
    pub fn is_verified(&self) -> bool {
        self.v.verified
    }

    /// Bytes read so far (for progress reports).
    pub fn bytes_read(&self) -> u64 {
        self.v.read
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for AsyncVerifyingReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(this.v.finish());
                }
                Poll::Ready(this.v.update(new))
            }
        }
    }
}

/// Extracts the [`DigestError`] from an `io::Error` produced by a verifying reader, if it is one.
pub fn digest_error_of(e: &io::Error) -> Option<&DigestError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
}

/// Hashes a whole stream with sha256, returning digest and size.
pub fn sha256_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut w = DigestingWriter::new(io::sink());
    let n = io::copy(&mut r, &mut w)?;
    let (_, d, _) = w.finish();
    Ok((d, n))
}

/// The chainID of a layer stack: chainID(L0) = diffID(L0),
/// chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)) — as in the OCI image spec.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    chain_ids(diff_ids).pop()
}

/// The chainID of every prefix of `diff_ids` (element i is the chainID of layers 0..=i).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d: Digest = EMPTY.parse().expect("valid");
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn parses_sha512() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        let back: Digest = d.to_string().parse().expect("valid");
        assert_eq!(back, d);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550",
        ] {
            let err = bad.parse::<Digest>().expect_err(bad);
            assert!(
                matches!(&err, DigestError::Invalid { input, .. } if input == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn serde_roundtrip_and_rejection() {
        let d: Digest = EMPTY.parse().expect("valid");
        let j = serde_json::to_string(&d).expect("ser");
        assert_eq!(j, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&j).expect("de"), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }

    #[test]
    fn verifying_reader_accepts_good_content() {
        let data = b"hello world".to_vec();
        let d = Digest::sha256_of(&data);
        let mut r = VerifyingReader::new(&data[..], d, Some(11), "blob x");
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("verified");
        assert!(r.is_verified());
        assert_eq!(out, data);
    }

    #[test]
    fn verifying_reader_names_expected_and_actual_on_mismatch() {
        let d = Digest::sha256_of(b"hello world");
        let mut r =
            VerifyingReader::new(&b"hello worle"[..], d.clone(), Some(11), "layer L of img");
        let err = io::copy(&mut r, &mut io::sink()).expect_err("mismatch");
        let de = digest_error_of(&err).expect("digest error inside");
        match de {
            DigestError::Mismatch {
                subject,
                expected,
                actual,
            } => {
                assert_eq!(subject, "layer L of img");
                assert_eq!(expected, &d);
                assert_eq!(actual, &Digest::sha256_of(b"hello worle"));
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&d.to_string()) && msg.contains("layer L of img"),
            "{msg}"
        );
    }

    #[test]
    fn verifying_reader_detects_truncation_and_overlong() {
        let data = b"0123456789";
        let d = Digest::sha256_of(data);
        let mut r = VerifyingReader::new(&data[..5], d.clone(), Some(10), "truncated");
        let err = io::copy(&mut r, &mut io::sink()).expect_err("truncated");
        assert!(matches!(
            digest_error_of(&err),
            Some(DigestError::SizeMismatch {
                expected: 10,
                actual: 5,
                ..
            })
        ));
        let long = [0u8; 100];
        let mut r = VerifyingReader::new(&long[..], d, Some(10), "overlong");
        let err = io::copy(&mut r, &mut io::sink()).expect_err("overlong");
        assert!(matches!(
            digest_error_of(&err),
            Some(DigestError::SizeMismatch { expected: 10, .. })
        ));
    }

    #[tokio::test]
    async fn async_verifying_reader() {
        use tokio::io::AsyncReadExt;
        let data = vec![7u8; 100_000];
        let d = Digest::sha256_of(&data);
        let mut r = AsyncVerifyingReader::new(&data[..], d.clone(), Some(100_000), "async blob");
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("verified");
        assert!(r.is_verified());
        assert_eq!(r.bytes_read(), 100_000);
        let mut r =
            AsyncVerifyingReader::new(&data[..99_999], d.clone(), Some(100_000), "async blob");
        let err = r.read_to_end(&mut Vec::new()).await.expect_err("truncated");
        assert!(matches!(
            digest_error_of(&err),
            Some(DigestError::SizeMismatch { .. })
        ));
        let mut other = data.clone();
        other[5] = 8;
        let mut r = AsyncVerifyingReader::new(&other[..], d, None, "async blob");
        let err = r.read_to_end(&mut Vec::new()).await.expect_err("mismatch");
        assert!(err.to_string().contains("async blob"), "{err}");
    }

    #[test]
    fn digesting_writer_counts_and_verifies() {
        let mut w = DigestingWriter::new(Vec::new());
        w.write_all(b"abc").expect("write");
        assert_eq!(w.written(), 3);
        let expected = Digest::sha256_of(b"abc");
        let out = w.finish_verified(&expected, Some(3), "x").expect("ok");
        assert_eq!(out, b"abc");
        let mut w = DigestingWriter::new(Vec::new());
        w.write_all(b"abd").expect("write");
        assert!(matches!(
            w.finish_verified(&expected, Some(3), "x"),
            Err(DigestError::Mismatch { .. })
        ));
        let mut w = DigestingWriter::new(Vec::new());
        w.write_all(b"ab").expect("write");
        assert!(matches!(
            w.finish_verified(&expected, Some(3), "x"),
            Err(DigestError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let c = Digest::sha256_of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = Digest::sha256_of(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(ids[2], Digest::sha256_of(format!("{ab} {c}").as_bytes()));
        assert_eq!(chain_id(&[a.clone(), b, c]), Some(ids[2].clone()));
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a));
    }

    #[test]
    fn chain_id_matches_sha256sum() {
        // printf 'sha256:<sha256 of ""> sha256:<sha256 of "x">' | sha256sum
        let a = Digest::sha256_of(b"");
        let b = Digest::sha256_of(b"x");
        assert_eq!(
            chain_id(&[a, b]).expect("two layers").to_string(),
            "sha256:c8abc52cce3f8ec84ed9e29c80770946d96e0fc3d148ba971d71e9eaac1c4b14"
        );
    }
}

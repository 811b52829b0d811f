//! The registry client against a real registry (Debian's `docker-registry`, started
//! per test on a free loopback port) and, for failures a real registry will not
//! produce on demand (500, 429, a body that breaks off, a 5 MiB manifest, a bearer
//! token server), against tiny in-test HTTP servers.
//!
//! Needs `/usr/bin/docker-registry` (package `docker-registry`), `/bin/busybox`
//! (`busybox-static`), and for one test `skopeo` and `umoci`; a missing tool fails the
//! test with a message naming the package.

use anyhow::{bail, Context as _, Result};
use berth_image_store::formats::manifest::{media, Descriptor, Platform};
use berth_image_store::formats::{Digest, ImageToStore, PlatformSpec, Reference};
use berth_image_store::registry::{
    BlobPushOutcome, PushBlobOptions, RegistryClient, RegistryConfig, RegistryError,
};
use berth_proto::error::ErrorKind;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- harness

fn need_tool(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).exists() {
        bail!("{path} is missing: install the Debian package `{package}` (docker-compose-free-scripts/setup.sh does)");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A `docker-registry serve` child on 127.0.0.1:<port>, storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Result<Self> {
        Self::start_with_auth(None).await
    }

    async fn start_with_auth(htpasswd: Option<(&str, &str)>) -> Result<Self> {
        Self::start_opts(htpasswd, false).await
    }

    /// `htpasswd`: (user, password) for basic auth, hashed here with bcrypt; `tls`: a
    /// self-signed certificate for 127.0.0.1 made with openssl.
    async fn start_opts(htpasswd: Option<(&str, &str)>, tls: bool) -> Result<Self> {
        need_tool("/usr/bin/docker-registry", "docker-registry")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n",
            storage.display()
        );
        if tls {
            need_tool("/usr/bin/openssl", "openssl")?;
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("/usr/bin/openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()?;
            if !out.status.success() {
                bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
            }
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = htpasswd {
            let hash = bcrypt::hash(password, 4)?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let mut reg = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(reg);
            }
            if let Some(status) = reg.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", reg.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {port} within 15 s: {}",
                    reg.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn reference(&self, repo_and_tag: &str) -> Reference {
        Reference::parse(&format!("127.0.0.1:{}/{repo_and_tag}", self.port))
            .unwrap_or_else(|e| panic!("test reference: {e}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file holding a blob's bytes in the registry's filesystem storage.
    fn blob_file(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs")
            .join(d.algorithm().name())
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config() -> RegistryConfig {
    RegistryConfig {
        // Never the host's ~/.docker/config.json.
        docker_config: None,
        retries: 2,
        retry_delay: Duration::from_millis(20),
        max_retry_delay: Duration::from_millis(200),
        ..RegistryConfig::default()
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(client_config()).unwrap_or_else(|e| panic!("client: {e}"))
}

// ---------------------------------------------------------------- images

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
    media_type: &'static str,
}

impl Blob {
    fn new(bytes: Vec<u8>, media_type: &'static str) -> Self {
        Blob {
            digest: Digest::sha256_of(&bytes),
            bytes,
            media_type,
        }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type,
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// A gzip layer of these files and its diff_id.
fn layer(files: &[(&str, &[u8], u32)]) -> Result<(Blob, Digest)> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data)?;
    }
    let raw = tar.into_inner()?;
    let diff_id = Digest::sha256_of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw)?;
    Ok((Blob::new(gz.finish()?, media::OCI_LAYER_GZIP), diff_id))
}

struct TestImage {
    config: Blob,
    layers: Vec<Blob>,
    manifest: Blob,
    arch: String,
}

impl TestImage {
    fn build(arch: &str, layers: Vec<(Blob, Digest)>) -> Result<Self> {
        let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "berth test"})).collect::<Vec<_>>(),
        });
        let config = Blob::new(serde_json::to_vec(&config)?, media::OCI_CONFIG);
        let layers: Vec<Blob> = layers.into_iter().map(|(b, _)| b).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(serde_json::to_vec(&manifest)?, media::OCI_MANIFEST);
        Ok(TestImage {
            config,
            layers,
            manifest,
            arch: arch.to_string(),
        })
    }

    /// busybox plus a small second layer naming the architecture.
    fn busybox(arch: &str) -> Result<Self> {
        let busybox = std::fs::read("/bin/busybox")
            .context("/bin/busybox is missing: install the Debian package `busybox-static`")?;
        // The marker keeps the busybox layers of two platforms apart, as real
        // per-arch binaries would be.
        let l1 = layer(&[
            ("bin/busybox", &busybox, 0o755),
            (".berth-arch", arch.as_bytes(), 0o644),
        ])?;
        let l2 = layer(&[("etc/berth-arch", arch.as_bytes(), 0o644)])?;
        Self::build(arch, vec![l1, l2])
    }

    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    fn index_entry(&self) -> Descriptor {
        let mut d = self.manifest.descriptor();
        d.platform = Some(Platform {
            architecture: self.arch.clone(),
            os: "linux".to_string(),
            os_version: None,
            os_features: None,
            variant: None,
            features: None,
        });
        d
    }
}

async fn push_image(
    c: &RegistryClient,
    r: &Reference,
    img: &TestImage,
) -> Result<Vec<BlobPushOutcome>> {
    let mut outcomes = Vec::new();
    for b in img.blobs() {
        outcomes.push(
            c.push_blob(
                r,
                &b.digest,
                b.bytes.len() as u64,
                std::io::Cursor::new(b.bytes.clone()),
                &PushBlobOptions::default(),
            )
            .await?,
        );
    }
    let d = c
        .push_manifest(r, img.manifest.bytes.clone(), media::OCI_MANIFEST)
        .await?;
    assert_eq!(d, img.manifest.digest);
    Ok(outcomes)
}

fn amd64() -> PlatformSpec {
    PlatformSpec::new("linux", "amd64", None)
}

/// Fetches every layer of a resolved image concurrently and returns (digest, sha256 of bytes read).
async fn fetch_all(
    c: &RegistryClient,
    r: &Reference,
    blobs: &[Descriptor],
) -> Result<Vec<(Digest, Digest, u64)>, RegistryError> {
    let image = r.familiar();
    c.fetch_blobs(r, blobs, None, |d, mut reader| {
        let image = image.clone();
        async move {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| RegistryError::from_read_error(&image, "blob", e))?;
            assert!(reader.is_verified());
            Ok::<_, RegistryError>((d.digest, Digest::sha256_of(&bytes), bytes.len() as u64))
        }
    })
    .await
}

// ---------------------------------------------------------------- fake servers

#[derive(Debug, Clone)]
struct FakeRequest {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

enum FakeResponse {
    /// Status, headers, body; Content-Length added.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Written as is, then the connection is closed.
    Raw(Vec<u8>),
}

fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> FakeResponse {
    FakeResponse::Full(
        status,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body.into(),
    )
}

/// A one-response-per-connection HTTP/1.1 server on loopback; counts and records requests.
struct FakeServer {
    port: u16,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    async fn start<F>(handler: F) -> Result<Self>
    where
        F: Fn(&FakeRequest, u16) -> FakeResponse + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests: Arc<Mutex<Vec<FakeRequest>>> = Arc::default();
        let seen = requests.clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let handler = handler.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        // A TLS ClientHello (the client's HTTPS probe of a loopback
                        // registry): plain HTTP only here, so hang up at once.
                        if head.first() == Some(&0x16) {
                            return;
                        }
                    }
                    let end = head
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .unwrap_or(head.len());
                    let text = String::from_utf8_lossy(&head[..end]).to_string();
                    let mut lines = text.split("\r\n");
                    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
                    let headers: BTreeMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    // Small bodies only (token forms): read what Content-Length promises.
                    let want: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = head[(end + 4).min(head.len())..].to_vec();
                    while body.len() < want {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = FakeRequest {
                        method: first.first().unwrap_or(&"").to_string(),
                        target: first.get(1).unwrap_or(&"").to_string(),
                        headers,
                        body,
                    };
                    if let Ok(mut s) = seen.lock() {
                        s.push(req.clone());
                    }
                    let out = match handler(&req, port) {
                        FakeResponse::Full(status, headers, body) => {
                            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                            for (k, v) in headers {
                                out.push_str(&format!("{k}: {v}\r\n"));
                            }
                            out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                            let mut out = out.into_bytes();
                            if req.method != "HEAD" {
                                out.extend_from_slice(&body);
                            }
                            out
                        }
                        FakeResponse::Raw(b) => b,
                    };
                    let _ = sock.write_all(&out).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(FakeServer {
            port,
            requests,
            task,
        })
    }

    fn count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    fn reference(&self, s: &str) -> Reference {
        Reference::parse(&format!("127.0.0.1:{}/{s}", self.port))
            .unwrap_or_else(|e| panic!("test reference: {e}"))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn small_manifest() -> Result<TestImage> {
    TestImage::build("amd64", vec![layer(&[("hello", b"hi", 0o644)])?])
}

// ---------------------------------------------------------------- tests: real registry

#[tokio::test]
async fn registry_push_then_pull_back_digest_by_digest() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let r = reg.reference("berth/busybox:1");
    let img = TestImage::busybox("amd64")?;
    let outcomes = push_image(&c, &r, &img).await?;
    assert!(
        outcomes
            .iter()
            .all(|o| *o == BlobPushOutcome::Uploaded { chunks: 0 }),
        "{outcomes:?}"
    );

    let resolved = c.resolve(&r, &amd64()).await?;
    assert_eq!(resolved.manifest.digest, img.manifest.digest);
    assert_eq!(resolved.manifest.bytes, img.manifest.bytes);
    assert_eq!(resolved.manifest.media_type, media::OCI_MANIFEST);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.top_digest(), &img.manifest.digest);

    // Config in memory, then layers streamed concurrently with progress.
    let cfg = &resolved.parsed.config;
    let config = c
        .fetch_blob_bytes(&r, &cfg.digest, cfg.size, 8 << 20)
        .await?;
    let stored = ImageToStore::from_manifest_and_config(
        resolved.manifest.bytes.clone(),
        Some(&resolved.manifest.media_type),
        config,
        vec![r.clone()],
        &r.familiar(),
    )?;
    assert_eq!(stored.layers.len(), 2);
    let progress: Arc<Mutex<BTreeMap<Digest, (u64, u64)>>> = Arc::default();
    let p = progress.clone();
    let image = r.familiar();
    let fetched = c
        .fetch_blobs(
            &r,
            &resolved.parsed.layers,
            Some(Arc::new(move |d: &Digest, done, total| {
                if let Ok(mut m) = p.lock() {
                    m.insert(d.clone(), (done, total));
                }
            })),
            |d, mut reader| {
                let image = image.clone();
                async move {
                    let n = tokio::io::copy(&mut reader, &mut tokio::io::sink())
                        .await
                        .map_err(|e| RegistryError::from_read_error(&image, "blob", e))?;
                    Ok::<_, RegistryError>((d.digest, n, reader.is_verified()))
                }
            },
        )
        .await?;
    for (blob, (digest, n, verified)) in img.layers.iter().zip(&fetched) {
        assert_eq!(&blob.digest, digest);
        assert_eq!(blob.bytes.len() as u64, *n);
        assert!(verified);
    }
    let progress = progress.lock().map(|m| m.clone()).unwrap_or_default();
    for blob in &img.layers {
        let n = blob.bytes.len() as u64;
        assert_eq!(
            progress.get(&blob.digest),
            Some(&(n, n)),
            "final progress of {}",
            blob.digest
        );
    }

    // Pinned by digest: same manifest; the blobs are there (HEAD).
    let pinned = r.with_digest(img.manifest.digest.clone());
    assert_eq!(
        c.resolve(&pinned, &amd64()).await?.manifest.digest,
        img.manifest.digest
    );
    for b in img.blobs() {
        assert_eq!(
            c.blob_exists(&r, &b.digest).await?,
            Some(b.bytes.len() as u64)
        );
    }

    // A second push sends no blob: HEAD finds each one.
    let again = push_image(&c, &r, &img).await?;
    assert!(
        again.iter().all(|o| *o == BlobPushOutcome::AlreadyExists),
        "{again:?}"
    );
    Ok(())
}

#[tokio::test]
async fn registry_whole_image_push_and_resolve() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let img = TestImage::busybox("amd64")?;
    let blobs: Arc<BTreeMap<Digest, Vec<u8>>> = Arc::new(
        img.blobs()
            .map(|b| (b.digest.clone(), b.bytes.clone()))
            .collect(),
    );
    let opened = Arc::new(AtomicUsize::new(0));
    let open = |d: &Descriptor| {
        let bytes = blobs.get(&d.digest).cloned();
        let opened = opened.clone();
        let digest = d.digest.clone();
        async move {
            opened.fetch_add(1, Ordering::SeqCst);
            bytes
                .map(std::io::Cursor::new)
                .ok_or_else(|| RegistryError::Invalid {
                    image: "test".into(),
                    reason: format!("no blob {digest}"),
                })
        }
    };
    let first = reg.reference("whole/one:v1");
    let pushed = c
        .push_image(
            &first,
            &img.manifest.bytes,
            media::OCI_MANIFEST,
            &PushBlobOptions::default(),
            open,
        )
        .await?;
    assert_eq!(pushed.digest, img.manifest.digest);
    assert_eq!(pushed.blobs.len(), 3);
    assert!(pushed
        .blobs
        .iter()
        .all(|(_, o)| *o == BlobPushOutcome::Uploaded { chunks: 0 }));
    assert_eq!(opened.load(Ordering::SeqCst), 3);

    // Into a second repository with the first as mount source: nothing is opened.
    let second = reg.reference("whole/two:v2");
    let opts = PushBlobOptions {
        mount_from: Some(first.clone()),
        progress: None,
    };
    let pushed = c
        .push_image(
            &second,
            &img.manifest.bytes,
            media::OCI_MANIFEST,
            &opts,
            open,
        )
        .await?;
    assert!(
        pushed
            .blobs
            .iter()
            .all(|(_, o)| *o == BlobPushOutcome::Mounted),
        "{:?}",
        pushed.blobs
    );
    assert_eq!(
        opened.load(Ordering::SeqCst),
        3,
        "mounted blobs are never opened"
    );

    let resolved = c.resolve_image(&second, &amd64()).await?;
    assert_eq!(resolved.image.manifest_digest, img.manifest.digest);
    assert_eq!(resolved.image.config_digest, img.config.digest);
    assert_eq!(resolved.image.references, vec![second.clone()]);
    assert_eq!(resolved.image.platform, amd64());
    let want: Vec<&Digest> = img.layers.iter().map(|b| &b.digest).collect();
    let got: Vec<&Digest> = resolved.layers().iter().map(|d| &d.digest).collect();
    assert_eq!(got, want);
    let by_digest = Reference::parse(&format!("{}@{}", second.name(), img.manifest.digest))?;
    assert!(c
        .resolve_image(&by_digest, &amd64())
        .await?
        .image
        .references
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn registry_loopback_registry_with_tls_is_spoken_to_over_https() -> Result<()> {
    // Docker's rule for registries allowed plain HTTP: HTTPS when they speak it, with a
    // certificate nobody vouches for; this one answers plain HTTP with a 400.
    let reg = Registry::start_opts(None, true).await?;
    let c = client();
    let r = reg.reference("tls/img:1");
    let img = small_manifest()?;
    push_image(&c, &r, &img).await?;
    let resolved = c.resolve(&r, &amd64()).await?;
    assert_eq!(resolved.manifest.digest, img.manifest.digest);
    let fetched = fetch_all(&c, &r, &resolved.parsed.layers).await?;
    assert_eq!(fetched[0].1, img.layers[0].digest);
    Ok(())
}

#[tokio::test]
async fn registry_chunked_upload_in_patches() -> Result<()> {
    let reg = Registry::start().await?;
    let c = RegistryClient::new(RegistryConfig {
        monolithic_limit: 100 * 1024,
        chunk_size: 64 * 1024,
        ..client_config()
    })?;
    let r = reg.reference("berth/chunked:1");
    // 300 KiB that gzip cannot shrink: a sha256 chain.
    let mut data = Vec::new();
    let mut seed = Digest::sha256_of(b"berth");
    while data.len() < 300 * 1024 {
        data.extend_from_slice(seed.hex().as_bytes());
        seed = Digest::sha256_of(seed.hex().as_bytes());
    }
    data.truncate(300 * 1024);
    let (digest, outcome) = c
        .push_blob_bytes(&r, data.clone(), &PushBlobOptions::default())
        .await?;
    assert_eq!(outcome, BlobPushOutcome::Uploaded { chunks: 5 });
    let back = c
        .fetch_blob_bytes(&r, &digest, data.len() as u64, 1 << 20)
        .await?;
    assert_eq!(back, data);
    let patches = reg
        .log()
        .lines()
        .filter(|l| l.contains("PATCH") && l.contains("/v2/berth/chunked/blobs/uploads/"))
        .count();
    assert!(patches >= 5, "registry log shows {patches} PATCH requests");

    // A local source that does not match its digest is refused (chunked and monolithic),
    // and nothing lands in the repository.
    let wrong = Digest::sha256_of(b"something else");
    for size in [data.len() as u64, 1000] {
        let err = c
            .push_blob(
                &r,
                &wrong,
                size,
                std::io::Cursor::new(data[..size as usize].to_vec()),
                &PushBlobOptions::default(),
            )
            .await
            .err()
            .context("a blob pushed under the wrong digest")?;
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert_eq!(c.blob_exists(&r, &wrong).await?, None);
    }
    // The chunked attempt failed after its PATCHes (the digest is only known at the
    // end): its upload session was deleted rather than left to the registry's purge.
    let cancelled = reg
        .log()
        .lines()
        .filter(|l| {
            l.contains("\"DELETE /v2/berth/chunked/blobs/uploads/") && l.contains("\" 204 ")
        })
        .count();
    assert!(
        cancelled >= 1,
        "no upload session was cancelled:\n{}",
        reg.log()
    );
    Ok(())
}

#[tokio::test]
async fn registry_cross_repo_mount_and_head_skip() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let src = reg.reference("team/source:1");
    let dst = reg.reference("team/dest:1");
    let img = small_manifest()?;
    push_image(&c, &src, &img).await?;
    let layer = &img.layers[0];
    let opts = PushBlobOptions {
        mount_from: Some(src.clone()),
        progress: None,
    };
    // The reader must not be touched when mounting: give it nothing.
    let outcome = c
        .push_blob(
            &dst,
            &layer.digest,
            layer.bytes.len() as u64,
            std::io::Cursor::new(Vec::new()),
            &opts,
        )
        .await?;
    assert_eq!(outcome, BlobPushOutcome::Mounted);
    assert_eq!(
        c.blob_exists(&dst, &layer.digest).await?,
        Some(layer.bytes.len() as u64)
    );
    assert!(
        reg.log().contains("mount="),
        "the registry saw a mount request"
    );
    // Now it exists in dest: HEAD skips.
    let outcome = c
        .push_blob(
            &dst,
            &layer.digest,
            layer.bytes.len() as u64,
            std::io::Cursor::new(Vec::new()),
            &opts,
        )
        .await?;
    assert_eq!(outcome, BlobPushOutcome::AlreadyExists);
    // A blob the source does not have: the registry starts a normal upload instead.
    let (_, outcome) = c
        .push_blob_bytes(&dst, b"fresh bytes".to_vec(), &opts)
        .await?;
    assert_eq!(outcome, BlobPushOutcome::Uploaded { chunks: 0 });
    Ok(())
}

#[tokio::test]
async fn registry_basic_auth_with_and_without_credentials() -> Result<()> {
    let reg = Registry::start_with_auth(Some(("berth", "s3cret"))).await?;
    let r = reg.reference("secure/img:1");
    let img = small_manifest()?;

    let anonymous = client();
    let err = anonymous
        .resolve(&r, &amd64())
        .await
        .err()
        .context("anonymous resolve on an htpasswd registry")?;
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("secure/img"), "{err}");

    let mut creds = BTreeMap::new();
    creds.insert(
        r.domain().to_string(),
        berth_image_store::formats::auth::Credentials::Basic {
            username: "berth".into(),
            password: "wrong".into(),
        },
    );
    let wrong = RegistryClient::new(RegistryConfig {
        credentials: creds,
        ..client_config()
    })?;
    let err = wrong
        .push_blob_bytes(&r, b"x".to_vec(), &PushBlobOptions::default())
        .await
        .err()
        .context("push with a wrong password")?;
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

    // Credentials from a Docker config.json `auths` entry.
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YmVydGg6czNjcmV0"}}}}}}"#,
            r.domain()
        ),
    )?;
    let authed = RegistryClient::new(RegistryConfig {
        docker_config: Some(cfg),
        ..client_config()
    })?;
    push_image(&authed, &r, &img).await?;
    let resolved = authed.resolve(&r, &amd64()).await?;
    assert_eq!(resolved.manifest.digest, img.manifest.digest);
    let fetched = fetch_all(&authed, &r, &resolved.parsed.layers).await?;
    assert_eq!(fetched[0].1, img.layers[0].digest);
    Ok(())
}

#[tokio::test]
async fn registry_multi_arch_index_fetches_only_the_host_platform() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let r = reg.reference("multi/busybox:1");
    let amd = TestImage::busybox("amd64")?;
    let arm = TestImage::busybox("arm64")?;
    // Push each platform's manifest by digest, then the index under the tag.
    for img in [&amd, &arm] {
        for b in img.blobs() {
            c.push_blob(
                &r,
                &b.digest,
                b.bytes.len() as u64,
                std::io::Cursor::new(b.bytes.clone()),
                &PushBlobOptions::default(),
            )
            .await?;
        }
        let by_digest = Reference::parse(&format!("{}@{}", r.name(), img.manifest.digest))?;
        c.push_manifest(&by_digest, img.manifest.bytes.clone(), media::OCI_MANIFEST)
            .await?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [arm.index_entry(), amd.index_entry()],
    });
    let index = serde_json::to_vec(&index)?;
    let index_digest = c.push_manifest(&r, index.clone(), media::OCI_INDEX).await?;

    let resolved = c.resolve(&r, &amd64()).await?;
    assert_eq!(resolved.manifest.digest, amd.manifest.digest);
    let idx = resolved.index.as_ref().context("came through an index")?;
    assert_eq!(idx.digest, index_digest);
    assert_eq!(idx.bytes, index);
    assert_eq!(idx.media_type, media::OCI_INDEX);
    assert_eq!(resolved.top_digest(), &index_digest);
    let mut wanted = vec![resolved.parsed.config.clone()];
    wanted.extend(resolved.parsed.layers.iter().cloned());
    let fetched = fetch_all(&c, &r, &wanted).await?;
    assert_eq!(fetched.len(), 3);

    // The registry's log has every GET; none touches an arm64 manifest or blob.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = reg.log();
    let gets: Vec<&str> = log
        .lines()
        // The access-log form: `"GET /v2/<repo>/blobs/<digest> HTTP/1.1" 200 …`.
        .filter(|l| l.contains("\"GET /v2/multi/busybox/"))
        .collect();
    for b in amd.blobs() {
        assert!(
            gets.iter().any(|l| l.contains(&b.digest.to_string())),
            "amd64 blob {} fetched per the log",
            b.digest
        );
    }
    for d in std::iter::once(&arm.manifest.digest).chain(arm.blobs().map(|b| &b.digest)) {
        assert!(
            !gets.iter().any(|l| l.contains(&d.to_string())),
            "arm64 content {d} was fetched on amd64: {gets:#?}"
        );
    }

    // And the arm64 entry is what an arm64 host gets.
    let on_arm = c
        .resolve(&r, &PlatformSpec::new("linux", "arm64", None))
        .await?;
    assert_eq!(on_arm.manifest.digest, arm.manifest.digest);
    let err = c
        .resolve(&r, &PlatformSpec::new("linux", "s390x", None))
        .await
        .err()
        .context("no s390x entry")?;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    Ok(())
}

#[tokio::test]
async fn registry_unknown_manifest_and_blob_are_not_found() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let r = reg.reference("nothing/here:nope");
    let err = c.resolve(&r, &amd64()).await.err().context("no such tag")?;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("nothing/here:nope") && text.contains("manifest nope"),
        "{text}"
    );
    assert!(
        text.contains("UNKNOWN"),
        "the registry's code is kept: {text}"
    );
    let d = Digest::sha256_of(b"absent");
    let err = c
        .fetch_blob(&r, &d, 6)
        .await
        .err()
        .context("no such blob")?;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    assert_eq!(c.blob_exists(&r, &d).await?, None);
    Ok(())
}

#[tokio::test]
async fn registry_tampered_and_truncated_blobs_are_refused() -> Result<()> {
    let reg = Registry::start().await?;
    let c = client();
    let r = reg.reference("bad/blobs:1");
    let img = TestImage::busybox("amd64")?;
    push_image(&c, &r, &img).await?;
    let (tampered, truncated) = (&img.layers[0], &img.layers[1]);

    // Same length, different bytes: caught at the end of the stream.
    let path = reg.blob_file(&tampered.digest);
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    let err = fetch_all(&c, &r, &[tampered.descriptor()])
        .await
        .err()
        .context("tampered blob read to the end")?;
    assert!(matches!(err, RegistryError::Digest { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let text = err.to_string();
    assert!(
        text.contains("digest mismatch") && text.contains(&tampered.digest.to_string()),
        "{text}"
    );

    // Shorter file: the Content-Length already disagrees with the descriptor.
    let path = reg.blob_file(&truncated.digest);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = c
        .fetch_blob(&r, &truncated.digest, truncated.bytes.len() as u64)
        .await
        .err()
        .context("truncated blob")?;
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("size mismatch"), "{err}");
    Ok(())
}

#[tokio::test]
async fn registry_connection_refused_is_unavailable() -> Result<()> {
    let port = free_port()?;
    let r = Reference::parse(&format!("127.0.0.1:{port}/x/y:1"))?;
    let started = Instant::now();
    let err = client()
        .resolve(&r, &amd64())
        .await
        .err()
        .context("nothing listens")?;
    assert!(matches!(err, RegistryError::Unavailable { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retries are bounded"
    );
    Ok(())
}

#[tokio::test]
async fn registry_skopeo_copy_of_an_umoci_image_pulls_back() -> Result<()> {
    need_tool("/usr/bin/skopeo", "skopeo")?;
    need_tool("/usr/bin/umoci", "umoci")?;
    let reg = Registry::start().await?;
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("oci");
    let bundle = dir.path().join("bundle");
    let image = format!("{}:v1", layout.display());
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(args[0]).args(&args[1..]).output()?;
        if !out.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let layout_s = layout.display().to_string();
    let bundle_s = bundle.display().to_string();
    run(&["umoci", "init", "--layout", &layout_s])?;
    run(&["umoci", "new", "--image", &image])?;
    run(&[
        "umoci",
        "unpack",
        "--rootless",
        "--image",
        &image,
        &bundle_s,
    ])?;
    std::fs::create_dir_all(bundle.join("rootfs/bin"))?;
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox"))?;
    run(&["umoci", "repack", "--image", &image, &bundle_s])?;
    run(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/busybox",
    ])?;
    let r = reg.reference("umoci/busybox:v1");
    run(&[
        "skopeo",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{r}"),
    ])?;

    let c = client();
    let resolved = c.resolve(&r, &PlatformSpec::host()).await?;
    // skopeo keeps the OCI manifest as written by umoci: same bytes, same digest.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let want = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        })
        .and_then(|d| d["digest"].as_str())
        .context("v1 in the layout's index.json")?;
    assert_eq!(resolved.manifest.digest.to_string(), want);
    let cfg = &resolved.parsed.config;
    let config = c
        .fetch_blob_bytes(&r, &cfg.digest, cfg.size, 8 << 20)
        .await?;
    let stored = ImageToStore::from_manifest_and_config(
        resolved.manifest.bytes.clone(),
        Some(&resolved.manifest.media_type),
        config,
        vec![r.clone()],
        &r.familiar(),
    )?;
    let fetched = fetch_all(&c, &r, &resolved.parsed.layers).await?;
    assert_eq!(fetched.len(), stored.layers.len());
    for (d, actual, _) in &fetched {
        assert_eq!(d, actual);
        let local = std::fs::read(layout.join("blobs/sha256").join(d.hex()))?;
        assert_eq!(Digest::sha256_of(&local), *d, "layout holds the same blob");
    }
    Ok(())
}

// ---------------------------------------------------------------- tests: fake servers

#[tokio::test]
async fn registry_server_errors_and_rate_limits_are_retried_then_reported() -> Result<()> {
    // Always 500: 1 try + 2 retries, then a Server error.
    let s = FakeServer::start(|_, _| {
        full(
            500,
            &[],
            r#"{"errors":[{"code":"UNKNOWN","message":"boom"}]}"#,
        )
    })
    .await?;
    let err = client()
        .resolve(&s.reference("x/y:1"), &amd64())
        .await
        .err()
        .context("500")?;
    assert!(
        matches!(err, RegistryError::Server { status: 500, .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(s.count(), 3);

    // 429 with a short Retry-After: retried, then RateLimited carrying it.
    let s = FakeServer::start(|_, _| full(429, &[("Retry-After", "0")], "")).await?;
    let err = client()
        .resolve(&s.reference("x/y:1"), &amd64())
        .await
        .err()
        .context("429")?;
    assert!(
        matches!(err, RegistryError::RateLimited { retry_after: Some(d), .. } if d == Duration::ZERO),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(s.count(), 3);

    // A Retry-After longer than we wait: no retry at all.
    let s = FakeServer::start(|_, _| full(429, &[("Retry-After", "3600")], "")).await?;
    let err = client()
        .resolve(&s.reference("x/y:1"), &amd64())
        .await
        .err()
        .context("429")?;
    assert!(err.to_string().contains("retry after 3600s"), "{err}");
    assert_eq!(s.count(), 1);

    // Two 503s, then the manifest: the retry succeeds.
    let img = small_manifest()?;
    let body = img.manifest.bytes.clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let s = FakeServer::start(move |_, _| {
        if h.fetch_add(1, Ordering::SeqCst) < 2 {
            full(503, &[], "")
        } else {
            full(200, &[("Content-Type", media::OCI_MANIFEST)], body.clone())
        }
    })
    .await?;
    let resolved = client().resolve(&s.reference("x/y:1"), &amd64()).await?;
    assert_eq!(resolved.manifest.digest, img.manifest.digest);

    // A push (not idempotent) is not retried.
    let s = FakeServer::start(|req, _| {
        if req.method == "HEAD" {
            full(404, &[], "")
        } else {
            full(500, &[], "")
        }
    })
    .await?;
    let err = client()
        .push_blob_bytes(
            &s.reference("x/y:1"),
            b"x".to_vec(),
            &PushBlobOptions::default(),
        )
        .await
        .err()
        .context("push to a failing registry")?;
    assert!(matches!(err, RegistryError::Server { .. }), "{err}");
    let posts = s
        .requests
        .lock()
        .map(|r| r.iter().filter(|q| q.method == "POST").count())
        .unwrap_or(0);
    assert_eq!(posts, 1);
    Ok(())
}

#[tokio::test]
async fn registry_oversized_manifest_is_refused_while_streaming() -> Result<()> {
    let big = {
        let mut v = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
        v.resize(5 << 20, b'a');
        v.extend_from_slice(br#""}}"#);
        v
    };
    // No Content-Length (chunked): the count while reading stops it.
    let body = big.clone();
    let s = FakeServer::start(move |_, _| {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in body.chunks(64 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        FakeResponse::Raw(out)
    })
    .await?;
    let err = client()
        .resolve(&s.reference("x/y:1"), &amd64())
        .await
        .err()
        .context("5 MiB manifest")?;
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("4194304-byte limit"), "{err}");
    // With an honest Content-Length: refused before reading.
    let s = FakeServer::start(move |_, _| full(200, &[], big.clone())).await?;
    let err = client()
        .resolve(&s.reference("x/y:1"), &amd64())
        .await
        .err()
        .context("5 MiB manifest")?;
    assert!(err.to_string().contains("limit"), "{err}");
    Ok(())
}

#[tokio::test]
async fn registry_blob_bodies_that_break_off_resume_or_run_short() -> Result<()> {
    let data = b"0123456789abcdef".repeat(1000);
    let digest = Digest::sha256_of(&data);
    // Promises the full length, sends half, closes.
    let half = data[..data.len() / 2].to_vec();
    let len = data.len();
    let s = FakeServer::start(move |_, _| {
        let mut out =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                .into_bytes();
        out.extend_from_slice(&half);
        FakeResponse::Raw(out)
    })
    .await?;
    let r = s.reference("x/y:1");
    let err = fetch_all(
        &client(),
        &r,
        &[Descriptor::new(
            media::OCI_LAYER_GZIP,
            digest.clone(),
            len as u64,
        )],
    )
    .await
    .err()
    .context("body broke off")?;
    assert!(matches!(err, RegistryError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&digest.to_string()), "{err}");

    // No Content-Length, short body, clean end: the size check at EOF catches it.
    let half = data[..data.len() / 2].to_vec();
    let s = FakeServer::start(move |_, _| {
        let mut out = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        out.extend_from_slice(&half);
        FakeResponse::Raw(out)
    })
    .await?;
    let r = s.reference("x/y:1");
    let err = fetch_all(
        &client(),
        &r,
        &[Descriptor::new(
            media::OCI_LAYER_GZIP,
            digest.clone(),
            len as u64,
        )],
    )
    .await
    .err()
    .context("short body")?;
    assert!(matches!(err, RegistryError::Digest { .. }), "{err}");
    assert!(err.to_string().contains("size mismatch"), "{err}");

    // Breaks off once, then honours Range: the download resumes where it stopped.
    let served = data.clone();
    let s = FakeServer::start(move |req, _| match req.headers.get("range") {
        Some(range) => {
            let start: usize = range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap_or(0);
            let content_range = format!("bytes {start}-{}/{}", served.len() - 1, served.len());
            full(
                206,
                &[("Content-Range", content_range.as_str())],
                served[start..].to_vec(),
            )
        }
        None => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                    .into_bytes();
            out.extend_from_slice(&served[..served.len() / 3]);
            FakeResponse::Raw(out)
        }
    })
    .await?;
    let r = s.reference("x/y:1");
    let fetched = fetch_all(
        &client(),
        &r,
        &[Descriptor::new(
            media::OCI_LAYER_GZIP,
            digest.clone(),
            len as u64,
        )],
    )
    .await?;
    assert_eq!(fetched[0].1, digest);
    let ranges: Vec<String> = s
        .requests
        .lock()
        .map(|r| {
            r.iter()
                .filter_map(|q| q.headers.get("range").cloned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_ne!(ranges[0], "bytes=0-", "resumed past what was read");
    Ok(())
}

#[tokio::test]
async fn registry_bearer_token_flow_with_basic_credentials_and_cache() -> Result<()> {
    let img = small_manifest()?;
    let body = img.manifest.bytes.clone();
    let blobs: Vec<Blob> = (0..4u8)
        .map(|i| Blob::new(vec![i; 1000 + usize::from(i)], media::OCI_LAYER_GZIP))
        .collect();
    let descriptors: Vec<Descriptor> = blobs.iter().map(Blob::descriptor).collect();
    let token_hits = Arc::new(AtomicUsize::new(0));
    let th = token_hits.clone();
    let s = FakeServer::start(move |req, port| {
        if req.target.starts_with("/token") {
            th.fetch_add(1, Ordering::SeqCst);
            // "berth:pw" in base64.
            let ok = req.headers.get("authorization").map(String::as_str) == Some("Basic YmVydGg6cHc=");
            let scoped = req.target.contains("scope=repository%3Ax%2Fy%3Apull")
                && req.target.contains("service=fake-registry");
            return if ok && scoped {
                full(200, &[("Content-Type", "application/json")], r#"{"token":"tok-123","expires_in":300}"#)
            } else {
                full(401, &[], r#"{"details":"bad credentials"}"#)
            };
        }
        if req.headers.get("authorization").map(String::as_str) == Some("Bearer tok-123") {
            if let Some(blob) = blobs.iter().find(|b| req.target.ends_with(&b.digest.to_string())) {
                return full(200, &[], blob.bytes.clone());
            }
            return full(200, &[("Content-Type", media::OCI_MANIFEST)], body.clone());
        }
        let challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",scope="repository:x/y:pull""#
        );
        full(401, &[("WWW-Authenticate", challenge.as_str())], r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
    })
    .await?;
    let r = s.reference("x/y:1");

    let err = client()
        .resolve(&r, &amd64())
        .await
        .err()
        .context("no credentials")?;
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

    let mut creds = BTreeMap::new();
    creds.insert(
        r.domain().to_string(),
        berth_image_store::formats::auth::Credentials::Basic {
            username: "berth".into(),
            password: "pw".into(),
        },
    );
    let c = RegistryClient::new(RegistryConfig {
        credentials: creds,
        ..client_config()
    })?;
    token_hits.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        let resolved = c.resolve(&r, &amd64()).await?;
        assert_eq!(resolved.manifest.digest, img.manifest.digest);
    }
    assert_eq!(
        token_hits.load(Ordering::SeqCst),
        1,
        "one token, cached for its scope"
    );

    // A fresh client fetching 4 blobs at once: all are challenged, one token is fetched.
    let fresh = RegistryClient::new(c.config().clone())?;
    token_hits.store(0, Ordering::SeqCst);
    let fetched = fetch_all(&fresh, &r, &descriptors).await?;
    assert_eq!(fetched.len(), 4);
    assert_eq!(
        token_hits.load(Ordering::SeqCst),
        1,
        "concurrent challenges share one token fetch"
    );
    Ok(())
}

#[tokio::test]
async fn registry_bearer_token_from_an_identity_token() -> Result<()> {
    let img = small_manifest()?;
    let body = img.manifest.bytes.clone();
    let s = FakeServer::start(move |req, port| {
        if req.target.starts_with("/token") {
            let form = String::from_utf8_lossy(&req.body);
            let ok = req.method == "POST"
                && form.contains("grant_type=refresh_token")
                && form.contains("refresh_token=refresh-xyz")
                && form.contains("scope=repository%3Ax%2Fy%3Apull");
            return if ok {
                full(200, &[], r#"{"access_token":"oauth-tok"}"#)
            } else {
                full(400, &[], "bad form")
            };
        }
        if req.headers.get("authorization").map(String::as_str) == Some("Bearer oauth-tok") {
            return full(200, &[("Content-Type", media::OCI_MANIFEST)], body.clone());
        }
        let challenge = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
        full(401, &[("WWW-Authenticate", challenge.as_str())], "")
    })
    .await?;
    let r = s.reference("x/y:1");
    let mut creds = BTreeMap::new();
    creds.insert(
        r.domain().to_string(),
        berth_image_store::formats::auth::Credentials::IdentityToken("refresh-xyz".into()),
    );
    let c = RegistryClient::new(RegistryConfig {
        credentials: creds,
        ..client_config()
    })?;
    let resolved = c.resolve(&r, &amd64()).await?;
    assert_eq!(resolved.manifest.digest, img.manifest.digest);
    Ok(())
}

// ---------------------------------------------------------------- bench/pull.sh helpers

fn bench_reference() -> Result<Reference> {
    let r = std::env::var("BERTH_BENCH_REF").context("set BERTH_BENCH_REF (bench/pull.sh does)")?;
    Ok(Reference::parse(&r)?)
}

/// Not a test: pushes the ~100 MB, 4-layer gzip image that bench/pull.sh pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper of bench/pull.sh"]
async fn registry_bench_push_image() -> Result<()> {
    let r = bench_reference()?;
    let mut layers = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4 {
        // Incompressible content, so the gzip layers really weigh ~25 MB each.
        let mut data = vec![0u8; 25 << 20];
        for chunk in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let name = format!("data/layer{i}.bin");
        layers.push(layer(&[(name.as_str(), &data, 0o644)])?);
    }
    let img = TestImage::build("amd64", layers)?;
    let c = client();
    push_image(&c, &r, &img).await?;
    let total: usize = img.layers.iter().map(|b| b.bytes.len()).sum();
    println!("pushed {r}: {} layers, {total} bytes", img.layers.len());
    Ok(())
}

/// Not a test: the berth side of bench/pull.sh — resolve, then every blob to a sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper of bench/pull.sh"]
async fn registry_bench_pull() -> Result<()> {
    let r = bench_reference()?;
    let started = Instant::now();
    let c = client();
    let resolved = c.resolve(&r, &PlatformSpec::host()).await?;
    let mut blobs = vec![resolved.parsed.config.clone()];
    blobs.extend(resolved.parsed.layers.iter().cloned());
    let fetched = fetch_all_to_sink(&c, &r, &blobs).await?;
    println!(
        "BENCH berth-client {} bytes in {:.3} s",
        fetched,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn fetch_all_to_sink(
    c: &RegistryClient,
    r: &Reference,
    blobs: &[Descriptor],
) -> Result<u64, RegistryError> {
    let image = r.familiar();
    let sizes = c
        .fetch_blobs(r, blobs, None, |_, mut reader| {
            let image = image.clone();
            async move {
                tokio::io::copy(&mut reader, &mut tokio::io::sink())
                    .await
                    .map_err(|e| RegistryError::from_read_error(&image, "blob", e))
            }
        })
        .await?;
    Ok(sizes.iter().sum())
}

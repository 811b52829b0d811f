//! `berth pull` and `berth push`: long requests to the image-store that report per-blob
//! progress on a subject of ours. They fail only when neither progress nor the reply
//! arrives for `--timeout`, so a large pull takes as long as it needs.

use crate::exit::Failure;
use crate::images::NOT_FOUND;
use berth_bus::{connect_once, request_with_progress, BusError, NatsSettings};
use berth_proto::messages::image::{
    ImagePullReply, ImagePullRequest, ImagePushReply, ImagePushRequest, ImageTransferProgress,
};
use berth_proto::subjects::{self, ImageVerb};
use berth_proto::{Encoding, ErrorKind};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct PullArgs {
    /// Image to pull (`name[:tag]` or `name@sha256:…`).
    pub name: String,
    /// Platform to pick from a multi-platform image (`os/arch[/variant]`).
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image reference (no progress).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct PushArgs {
    /// Local image (name, digest or ID).
    pub name: String,
    /// Where to push (`registry/repo[:tag]`); default: NAME's own registry and tag.
    pub destination: Option<String>,
    /// Print only the pushed digest.
    #[arg(short, long)]
    pub quiet: bool,
}

fn failure(err: BusError) -> Failure {
    match err {
        BusError::Service(envelope) if envelope.code == ErrorKind::NotFound => Failure {
            code: NOT_FOUND,
            message: envelope.message,
        },
        BusError::Service(envelope) => Failure::berth(envelope.message),
        other => Failure::berth(other.to_string()),
    }
}

/// `berth pull [--platform P] [-q] NAME`
pub async fn pull(
    nats: &NatsSettings,
    timeout: Duration,
    a: PullArgs,
) -> Result<ExitCode, Failure> {
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let mut view = ProgressView::new(!a.quiet && std::io::stderr().is_terminal());
    let reply: ImagePullReply = request_with_progress(
        &client,
        &subjects::image(ImageVerb::Pull),
        |progress| ImagePullRequest {
            reference: a.name.clone(),
            platform: a.platform.clone(),
            progress: Some(progress),
        },
        Encoding::Bincode,
        timeout,
        |p: ImageTransferProgress| view.show(&p),
    )
    .await
    .map_err(failure)?;
    view.clear();
    let name = reply
        .image
        .references
        .first()
        .cloned()
        .unwrap_or_else(|| a.name.clone());
    if !a.quiet {
        outln!("Digest: {}", reply.registry_digest);
        if reply.image.blobs_written == 0 {
            outln!("Status: Image is up to date for {name}");
        } else {
            outln!("Status: Downloaded newer image for {name}");
        }
    }
    outln!("{name}");
    Ok(ExitCode::SUCCESS)
}

/// `berth push NAME [DEST]`
pub async fn push(
    nats: &NatsSettings,
    timeout: Duration,
    a: PushArgs,
) -> Result<ExitCode, Failure> {
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let mut view = ProgressView::new(!a.quiet && std::io::stderr().is_terminal());
    let reply: ImagePushReply = request_with_progress(
        &client,
        &subjects::image(ImageVerb::Push),
        |progress| ImagePushRequest {
            name: a.name.clone(),
            destination: a.destination.clone(),
            progress: Some(progress),
        },
        Encoding::Bincode,
        timeout,
        |p: ImageTransferProgress| view.show(&p),
    )
    .await
    .map_err(failure)?;
    view.clear();
    if a.quiet {
        outln!("{}", reply.digest);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("The push refers to {}", reply.destination);
    for blob in &reply.blobs {
        let what = match blob.outcome.as_str() {
            "exists" => "Layer already exists",
            "mounted" => "Mounted from another repository",
            _ => "Pushed",
        };
        outln!("{}: {what}", short(&blob.digest));
    }
    outln!("digest: {}", reply.digest);
    Ok(ExitCode::SUCCESS)
}

/// `sha256:0123456789ab…` → `0123456789ab`, as Docker shows layers.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// One line per blob on stderr, redrawn in place (only on a terminal).
struct ProgressView {
    enabled: bool,
    lines: usize,
    last: Option<ImageTransferProgress>,
}

impl ProgressView {
    fn new(enabled: bool) -> Self {
        ProgressView {
            enabled,
            lines: 0,
            last: None,
        }
    }

    fn show(&mut self, p: &ImageTransferProgress) {
        if !self.enabled || p.blobs.is_empty() {
            return;
        }
        self.last = Some(p.clone());
        let mut out = String::new();
        if self.lines > 0 {
            out.push_str(&format!("\x1b[{}A", self.lines));
        }
        for blob in &p.blobs {
            let state = match blob.status.as_str() {
                "downloading" | "uploading" => format!(
                    "{} {:>9}/{}",
                    if blob.status == "downloading" {
                        "Downloading"
                    } else {
                        "Pushing"
                    },
                    size(blob.done),
                    size(blob.total)
                ),
                "present" => "Already exists".to_string(),
                "exists" => "Layer already exists".to_string(),
                "mounted" => "Mounted".to_string(),
                "done" => "Complete".to_string(),
                "uploaded" => "Pushed".to_string(),
                _ => "Waiting".to_string(),
            };
            out.push_str(&format!("\x1b[2K{}: {state}\n", short(&blob.digest)));
        }
        self.lines = p.blobs.len();
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(out.as_bytes());
        let _ = stderr.flush();
    }

    /// After success: redraws blobs still in flight as finished (the reply can
    /// overtake the last progress message), leaves that on screen, stops redrawing.
    fn clear(&mut self) {
        if let Some(mut last) = self.last.take() {
            for blob in &mut last.blobs {
                if matches!(
                    blob.status.as_str(),
                    "downloading" | "uploading" | "waiting"
                ) {
                    blob.done = blob.total;
                    blob.status = "done".to_string();
                }
            }
            self.show(&last);
        }
        self.lines = 0;
    }
}

/// `pull` and `push` (flattened into `berth`).
#[derive(clap::Subcommand)]
pub enum TransferCommand {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PushArgs),
}

/// Runs `pull` or `push`.
pub async fn run(
    command: TransferCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    match command {
        TransferCommand::Pull(a) => pull(nats, timeout, a).await,
        TransferCommand::Push(a) => push(nats, timeout, a).await,
    }
}

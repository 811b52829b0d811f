//! Image verbs: `import`, `load`, `save`, `images`, `history`, `tag`, `rmi`, `image …`.
//!
//! Tarballs never ride a request: the CLI puts them in the `berth-blobs` Object Store
//! under a transfer name, sends the verb with that name, and the image-store deletes
//! the upload when done. `save` works the other way round.
//!
//! Exit codes follow Docker: 1 when an image does not exist ("No such image"), 125 for
//! every other berth error (bus unreachable, bad input, conflicts), 2 for bad usage.

use crate::exit::Failure;
use async_nats::jetstream;
use berth_bus::{connect_once, request, BusError, NatsSettings};
use berth_proto::messages::image::{
    HistoryEntry, ImageHistory, ImageImportReply, ImageImportRequest, ImageInspect,
    ImageInspectRequest, ImageList, ImageListRequest, ImageLoadReply, ImageLoadRequest,
    ImagePruneRequest, ImageRemoveReply, ImageRemoveRequest, ImageSaveReply, ImageSaveRequest,
    ImageTagReply, ImageTagRequest,
};
use berth_proto::subjects::{self, jetstream as names, transfer, ImageVerb};
use berth_proto::{Encoding, ErrorKind};
use clap::{Args, Subcommand};
use serde::{de::DeserializeOwned, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

/// Exit code for an image that does not exist (Docker's).
pub const NOT_FOUND: u8 = 1;

/// Verbs that move whole archives wait at least this long for their reply.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(1800);

/// Top-level image verbs (flattened into `berth`).
#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Import a root filesystem tarball (plain or gzip; `-` for stdin) as an image.
    Import(ImportArgs),
    /// Load images from a docker-archive or OCI layout tar (stdin by default).
    Load(LoadArgs),
    /// Save images to a docker-archive (stdout by default).
    Save(SaveArgs),
    /// List images.
    Images(ListArgs),
    /// Show the history of an image, newest first.
    History(HistoryArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Remove images: untag a name, delete an image by digest or ID.
    Rmi(RmiArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// `berth image …`
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Details of images (manifest, config, platform, layers).
    Inspect(InspectArgs),
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Remove images.
    Rm(RmiArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Remove untagged images and blobs nothing uses.
    Prune(PruneArgs),
    /// Import a root filesystem tarball.
    Import(ImportArgs),
    /// Load images from an archive.
    Load(LoadArgs),
    /// Save images to a docker-archive.
    Save(SaveArgs),
    /// Unpack an image's layers on a node ahead of use (prints the overlay lowerdirs).
    Unpack(UnpackArgs),
}

#[derive(Args)]
pub struct UnpackArgs {
    /// Image name or digest.
    pub name: String,
    /// Node whose layer-unpacker does the work (default: the only one on the bus).
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Drop the pin an earlier unpack took instead (the layers stay until `image prune`).
    /// Deleting the image drops it too.
    #[arg(long)]
    pub release: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Root filesystem tarball, or `-` for stdin.
    pub file: String,
    /// Name for the image (`name[:tag]`).
    pub reference: Option<String>,
    /// Dockerfile instruction to apply (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL).
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
    /// Commit message recorded in the history.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Platform to record (`os/arch[/variant]`).
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Archive to read instead of stdin.
    #[arg(short = 'i', long = "input")]
    pub input: Option<PathBuf>,
    /// Platform to pick from multi-platform OCI layouts.
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only errors.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct SaveArgs {
    /// Images (names, digests or IDs).
    #[arg(required = true)]
    pub names: Vec<String>,
    /// File to write instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only images whose repository starts with this.
    pub repository: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Show full digests.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print only digests.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Images (names, digests or IDs).
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Print JSON (the default form is JSON too, like `docker inspect`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct HistoryArgs {
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not shorten CREATED BY.
    #[arg(long)]
    pub no_trunc: bool,
    /// Sizes in bytes and times in RFC 3339.
    #[arg(short = 'H', long = "human", default_value_t = true, action = clap::ArgAction::Set)]
    pub human: bool,
}

#[derive(Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Args)]
pub struct RmiArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Remove every name of an image given by digest or ID.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask (accepted for Docker compatibility; berth never asks).
    #[arg(short, long)]
    pub force: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs an image verb.
pub async fn run(
    command: ImagesCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let ctx = Ctx::connect(nats, timeout).await?;
    match command {
        ImagesCommand::Import(a) => ctx.import(a).await,
        ImagesCommand::Load(a) => ctx.load(a).await,
        ImagesCommand::Save(a) => ctx.save(a).await,
        ImagesCommand::Images(a) => ctx.list(a).await,
        ImagesCommand::History(a) => ctx.history(a).await,
        ImagesCommand::Tag(a) => ctx.tag(a).await,
        ImagesCommand::Rmi(a) => ctx.rmi(a).await,
        ImagesCommand::Image { command } => match command {
            ImageCommand::Inspect(a) => ctx.inspect(a).await,
            ImageCommand::Ls(a) => ctx.list(a).await,
            ImageCommand::History(a) => ctx.history(a).await,
            ImageCommand::Rm(a) => ctx.rmi(a).await,
            ImageCommand::Tag(a) => ctx.tag(a).await,
            ImageCommand::Prune(a) => ctx.prune(a).await,
            ImageCommand::Import(a) => ctx.import(a).await,
            ImageCommand::Load(a) => ctx.load(a).await,
            ImageCommand::Save(a) => ctx.save(a).await,
            ImageCommand::Unpack(a) => {
                crate::snapshots::image_unpack(nats, timeout, a.name, a.node, a.json, a.release)
                    .await
            }
        },
    }
}

fn failure_of(err: BusError) -> Failure {
    match &err {
        BusError::Service(envelope) if envelope.code == ErrorKind::NotFound => Failure {
            code: NOT_FOUND,
            message: envelope.message.clone(),
        },
        BusError::Service(envelope) => Failure::berth(envelope.message.clone()),
        _ => Failure::berth(err.to_string()),
    }
}

struct Ctx {
    client: async_nats::Client,
    timeout: Duration,
}

impl Ctx {
    async fn connect(nats: &NatsSettings, timeout: Duration) -> Result<Ctx, Failure> {
        let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
            .await
            .map_err(|err| Failure::berth(err.to_string()))?;
        Ok(Ctx { client, timeout })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        verb: ImageVerb,
        body: &Req,
        deadline: Duration,
    ) -> Result<Resp, Failure> {
        request(
            &self.client,
            &subjects::image(verb),
            body,
            Encoding::Bincode,
            deadline,
        )
        .await
        .map_err(failure_of)
    }

    async fn blobs(&self) -> Result<jetstream::object_store::ObjectStore, Failure> {
        jetstream::new(self.client.clone())
            .get_object_store(names::BLOBS_BUCKET)
            .await
            .map_err(|err| {
                Failure::berth(format!(
                    "cannot open the blob store {} (is berth-image-store running?): {err}",
                    names::BLOBS_BUCKET
                ))
            })
    }

    fn transfer_id(&self) -> String {
        // The inbox is `_INBOX.<nuid>`: a unique token without another dependency.
        let inbox = self.client.new_inbox();
        inbox.rsplit('.').next().unwrap_or("x").to_string()
    }

    /// Uploads a file (or stdin) to a fresh transfer object and returns its name.
    async fn upload(&self, path: Option<&PathBuf>) -> Result<String, Failure> {
        let blobs = self.blobs().await?;
        let name = transfer::upload_object(&self.transfer_id());
        let stored = match path {
            Some(path) => {
                let mut file = tokio::fs::File::open(path).await.map_err(|err| {
                    Failure::berth(format!("cannot open {}: {err}", path.display()))
                })?;
                blobs.put(name.as_str(), &mut file).await
            }
            None => {
                let mut stdin = tokio::io::stdin();
                blobs.put(name.as_str(), &mut stdin).await
            }
        };
        stored.map_err(|err| Failure::berth(format!("cannot upload the archive: {err}")))?;
        Ok(name)
    }

    async fn forget(&self, name: &str) {
        if let Ok(blobs) = self.blobs().await {
            let _ = blobs.delete(name).await;
        }
    }

    fn transfer_deadline(&self) -> Duration {
        self.timeout.max(TRANSFER_DEADLINE)
    }

    async fn import(&self, a: ImportArgs) -> Result<ExitCode, Failure> {
        let path = (a.file != "-").then(|| PathBuf::from(&a.file));
        let upload = self.upload(path.as_ref()).await?;
        let body = ImageImportRequest {
            upload: upload.clone(),
            reference: a.reference,
            changes: a.changes,
            message: a.message,
            platform: a.platform,
            source_name: Some(a.file.clone()),
        };
        let reply: Result<ImageImportReply, Failure> = self
            .call(ImageVerb::Import, &body, self.transfer_deadline())
            .await;
        // The store deletes the upload; if it never answered, clean up here.
        if reply.is_err() {
            self.forget(&upload).await;
        }
        outln!("{}", reply?.image.digest);
        Ok(ExitCode::SUCCESS)
    }

    async fn load(&self, a: LoadArgs) -> Result<ExitCode, Failure> {
        if a.input.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(Failure::berth(
                "requested load from stdin, but stdin is a terminal: use -i FILE or a pipe",
            ));
        }
        let upload = self.upload(a.input.as_ref()).await?;
        let body = ImageLoadRequest {
            upload: upload.clone(),
            platform: a.platform,
            source_name: Some(
                a.input
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "-".to_string()),
            ),
        };
        let reply: Result<ImageLoadReply, Failure> = self
            .call(ImageVerb::Load, &body, self.transfer_deadline())
            .await;
        if reply.is_err() {
            self.forget(&upload).await;
        }
        if !a.quiet {
            for image in reply?.images {
                if image.references.is_empty() {
                    outln!("Loaded image ID: {}", image.digest);
                }
                for reference in image.references {
                    outln!("Loaded image: {reference}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn save(&self, a: SaveArgs) -> Result<ExitCode, Failure> {
        if a.output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return Err(Failure::berth(
                "refusing to write an archive to a terminal: use -o FILE or redirect stdout",
            ));
        }
        let download = transfer::download_object(&self.transfer_id());
        let body = ImageSaveRequest {
            names: a.names,
            download: download.clone(),
        };
        let reply: ImageSaveReply = self
            .call(ImageVerb::Save, &body, self.transfer_deadline())
            .await?;
        let outcome = self.fetch(&reply.download, a.output.as_ref()).await;
        self.forget(&reply.download).await;
        outcome?;
        Ok(ExitCode::SUCCESS)
    }

    async fn fetch(&self, name: &str, output: Option<&PathBuf>) -> Result<(), Failure> {
        let mut object = ObjectChunks::open(&self.client, name).await?;
        match output {
            Some(path) => {
                // Written beside the target and renamed, so a failed save leaves no
                // half archive under the requested name.
                let partial = path.with_extension("berth-partial");
                let mut file = tokio::fs::File::create(&partial).await.map_err(|err| {
                    Failure::berth(format!("cannot create {}: {err}", partial.display()))
                })?;
                let copied = async {
                    object.copy_to(&mut file).await?;
                    file.flush().await?;
                    file.sync_all().await
                }
                .await;
                if let Err(err) = copied {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(Failure::berth(format!(
                        "cannot write {}: {err}",
                        path.display()
                    )));
                }
                tokio::fs::rename(&partial, path).await.map_err(|err| {
                    Failure::berth(format!("cannot write {}: {err}", path.display()))
                })
            }
            None => {
                let mut stdout = tokio::io::stdout();
                object
                    .copy_to(&mut stdout)
                    .await
                    .map_err(|err| match err.kind() {
                        std::io::ErrorKind::BrokenPipe => crate::output::handle_stdout_error(&err),
                        _ => Failure::berth(format!("cannot write stdout: {err}")),
                    })?;
                stdout.flush().await.map_err(|err| match err.kind() {
                    std::io::ErrorKind::BrokenPipe => crate::output::handle_stdout_error(&err),
                    _ => Failure::berth(format!("cannot write stdout: {err}")),
                })
            }
        }
    }

    async fn list(&self, a: ListArgs) -> Result<ExitCode, Failure> {
        let list: ImageList = self
            .call(
                ImageVerb::List,
                &ImageListRequest {
                    repository_prefix: a.repository,
                },
                self.timeout,
            )
            .await?;
        if a.json {
            print_json(&list.images)?;
        } else if a.quiet {
            for image in &list.images {
                outln!("{}", short_digest(&image.digest, a.no_trunc));
            }
        } else {
            out!(
                "{}",
                images_table(&list, a.no_trunc, OffsetDateTime::now_utc())
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn inspect(&self, a: InspectArgs) -> Result<ExitCode, Failure> {
        let mut found: Vec<ImageInspect> = Vec::new();
        let mut failed = None;
        for name in &a.names {
            let reply: Result<ImageInspect, Failure> = self
                .call(
                    ImageVerb::Inspect,
                    &ImageInspectRequest { name: name.clone() },
                    self.timeout,
                )
                .await;
            match reply {
                Ok(image) => found.push(image),
                Err(failure) => {
                    eprintln!("berth: {}", failure.message);
                    failed = Some(failure.code);
                }
            }
        }
        print_json(&found)?;
        Ok(failed.map_or(ExitCode::SUCCESS, ExitCode::from))
    }

    async fn history(&self, a: HistoryArgs) -> Result<ExitCode, Failure> {
        let history: ImageHistory = self
            .call(
                ImageVerb::History,
                &ImageInspectRequest { name: a.name },
                self.timeout,
            )
            .await?;
        if a.json {
            print_json(&history.entries)?;
        } else {
            out!(
                "{}",
                history_table(
                    &history.entries,
                    a.no_trunc,
                    a.human,
                    OffsetDateTime::now_utc()
                )
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn tag(&self, a: TagArgs) -> Result<ExitCode, Failure> {
        let _: ImageTagReply = self
            .call(
                ImageVerb::Tag,
                &ImageTagRequest {
                    source: a.source,
                    target: a.target,
                },
                self.timeout,
            )
            .await?;
        Ok(ExitCode::SUCCESS)
    }

    async fn rmi(&self, a: RmiArgs) -> Result<ExitCode, Failure> {
        // Like Docker: every name is tried; the exit code is that of the last failure.
        let mut failed = None;
        for name in &a.names {
            let reply: Result<ImageRemoveReply, Failure> = self
                .call(
                    ImageVerb::Remove,
                    &ImageRemoveRequest {
                        name: name.clone(),
                        force: a.force,
                    },
                    self.timeout,
                )
                .await;
            match reply {
                Ok(reply) => {
                    for reference in &reply.untagged {
                        outln!("Untagged: {reference}");
                    }
                    for digest in &reply.deleted {
                        outln!("Deleted: {digest}");
                    }
                }
                Err(failure) => {
                    eprintln!("berth: {}", failure.message);
                    failed = Some(failure.code);
                }
            }
        }
        Ok(failed.map_or(ExitCode::SUCCESS, ExitCode::from))
    }

    async fn prune(&self, a: PruneArgs) -> Result<ExitCode, Failure> {
        let reply: ImageRemoveReply = self
            .call(
                ImageVerb::Prune,
                &ImagePruneRequest { all: false },
                self.timeout.max(Duration::from_secs(120)),
            )
            .await?;
        if a.json {
            print_json(&reply)?;
            return Ok(ExitCode::SUCCESS);
        }
        if !reply.deleted.is_empty() || !reply.blobs_deleted.is_empty() {
            outln!("Deleted Images:");
            for digest in &reply.deleted {
                outln!("deleted: {digest}");
            }
            for blob in &reply.blobs_deleted {
                outln!("deleted blob: {blob}");
            }
            outln!();
        }
        outln!(
            "Total reclaimed space: {}",
            human_size(reply.space_reclaimed)
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Opens a transfer object of `berth-blobs` through the chunk-wise reader of shared/bus
/// (size and digest checked at the end).
struct ObjectChunks {
    reader: berth_bus::objects::ChunkReader,
}

impl ObjectChunks {
    async fn open(client: &async_nats::Client, name: &str) -> Result<Self, Failure> {
        let js = jetstream::new(client.clone());
        let fail = |err: &dyn std::fmt::Display| {
            Failure::berth(format!("cannot fetch the archive {name}: {err}"))
        };
        let objects = berth_bus::objects::ObjectReader::new(&js, names::BLOBS_BUCKET)
            .await
            .map_err(|err| fail(&err))?;
        let reader = objects.open(name).await.map_err(|err| fail(&err))?;
        Ok(ObjectChunks { reader })
    }

    async fn copy_to(
        &mut self,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> std::io::Result<()> {
        tokio::io::copy(&mut self.reader, out).await.map(|_| ())
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Failure::berth(format!("cannot encode JSON: {err}")))?;
    outln!("{text}");
    Ok(())
}

/// `busybox:latest` → (`busybox`, `latest`); the tag follows the last `:` after the last `/`.
pub fn split_reference(reference: &str) -> (String, String) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            reference[slash + i + 1..].to_string(),
        ),
        None => (reference.to_string(), "<none>".to_string()),
    }
}

/// 12 hex characters of a digest, like Docker's short IDs.
pub fn short_digest(digest: &str, no_trunc: bool) -> String {
    if no_trunc {
        return digest.to_string();
    }
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

/// Docker's sizes: decimal units, three significant digits (`4.26MB`, `0B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    // %.3g: three significant digits, no trailing zeros.
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{}", UNITS[unit])
}

/// Docker's "2 hours ago" (go-units HumanDuration).
pub fn human_since(created: Option<&str>, now: OffsetDateTime) -> String {
    let Some(at) = created.and_then(|c| OffsetDateTime::parse(c, &Rfc3339).ok()) else {
        return "N/A".to_string();
    };
    let seconds = (now - at).whole_seconds();
    if seconds < 0 {
        return "Less than a second ago".to_string();
    }
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let text = if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_string()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    };
    format!("{text} ago")
}

fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `berth images`: REPOSITORY TAG DIGEST CREATED SIZE.
pub fn images_table(list: &ImageList, no_trunc: bool, now: OffsetDateTime) -> String {
    let mut rows = vec![["REPOSITORY", "TAG", "DIGEST", "CREATED", "SIZE"]
        .map(String::from)
        .to_vec()];
    for image in &list.images {
        let (repository, tag) = match &image.reference {
            Some(r) => split_reference(r),
            None => ("<none>".to_string(), "<none>".to_string()),
        };
        rows.push(vec![
            repository,
            tag,
            short_digest(&image.digest, no_trunc),
            human_since(image.created.as_deref(), now),
            human_size(image.size),
        ]);
    }
    table(rows)
}

/// `berth history`: CREATED CREATED BY SIZE COMMENT.
pub fn history_table(
    entries: &[HistoryEntry],
    no_trunc: bool,
    human: bool,
    now: OffsetDateTime,
) -> String {
    let mut rows = vec![["CREATED", "CREATED BY", "SIZE", "COMMENT"]
        .map(String::from)
        .to_vec()];
    for entry in entries {
        let created_by = entry.created_by.replace(['\n', '\t'], " ");
        let created_by = if !no_trunc && created_by.chars().count() > 45 {
            let cut: String = created_by.chars().take(44).collect();
            format!("{cut}…")
        } else {
            created_by
        };
        rows.push(vec![
            if human {
                human_since(entry.created.as_deref(), now)
            } else {
                entry.created.clone().unwrap_or_default()
            },
            created_by,
            if human {
                human_size(entry.size)
            } else {
                entry.size.to_string()
            },
            entry.comment.clone(),
        ]);
    }
    table(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::image::ImageSummary;
    use time::macros::datetime;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_000), "1kB");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(12_340_000), "12.3MB");
        assert_eq!(human_size(123_400_000), "123MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn ages_read_like_docker() {
        let now = datetime!(2026-01-10 12:00 UTC);
        let ago = |t: &str| human_since(Some(t), now);
        assert_eq!(ago("2026-01-10T11:59:30Z"), "30 seconds ago");
        assert_eq!(ago("2026-01-10T11:59:00Z"), "About a minute ago");
        assert_eq!(ago("2026-01-10T09:00:00Z"), "3 hours ago");
        assert_eq!(ago("2026-01-05T12:00:00Z"), "5 days ago");
        assert_eq!(ago("2025-12-01T12:00:00Z"), "5 weeks ago");
        assert_eq!(ago("2020-01-01T00:00:00Z"), "6 years ago");
        assert_eq!(human_since(None, now), "N/A");
    }

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        assert_eq!(
            split_reference("127.0.0.1:5000/x/y:1"),
            ("127.0.0.1:5000/x/y".to_string(), "1".to_string())
        );
        assert_eq!(
            split_reference("busybox:latest"),
            ("busybox".to_string(), "latest".to_string())
        );
    }

    #[test]
    fn images_table_has_docker_columns_and_none_for_dangling() {
        let list = ImageList {
            images: vec![
                ImageSummary {
                    reference: Some("busybox:latest".into()),
                    digest: format!("sha256:{}", "ab".repeat(32)),
                    created: Some("2026-01-10T11:00:00Z".into()),
                    size: 2_000_000,
                },
                ImageSummary {
                    reference: None,
                    digest: format!("sha256:{}", "cd".repeat(32)),
                    created: None,
                    size: 10,
                },
            ],
        };
        let text = images_table(&list, false, datetime!(2026-01-10 12:00 UTC));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("REPOSITORY"), "{text}");
        assert!(lines[1].contains("busybox") && lines[1].contains("abababababab "));
        assert!(lines[1].contains("About an hour ago") && lines[1].ends_with("2MB"));
        assert!(lines[2].starts_with("<none>"), "{text}");
    }
}

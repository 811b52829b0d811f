//! `save`: a docker-archive of one or more images, left in a download object.

use super::{blocking, check_transfer_name, invalid, Verbs};
use crate::bridge::fetch_to_file;
use crate::formats::{write_docker_archive, Digest, ImageToStore, Reference};
use crate::store::backend::Backend;
use crate::store::image_of_record;
use berth_proto::messages::image::{ImageSaveReply, ImageSaveRequest};
use berth_proto::ErrorEnvelope;
use std::io::{self, Read};

impl Verbs {
    /// Handles `save`.
    pub async fn save(&self, request: ImageSaveRequest) -> Result<ImageSaveReply, ErrorEnvelope> {
        check_transfer_name(&request.download)?;
        if request.names.is_empty() {
            return Err(ErrorEnvelope::invalid("save needs at least one image"));
        }
        let mut images: Vec<ImageToStore> = Vec::new();
        for name in &request.names {
            let resolved = self.store.resolve(name).await?;
            // Like `docker save`: a name keeps its tag in the archive, an ID saves none.
            let references = match &resolved.reference {
                Some(r) => vec![Reference::parse(r).map_err(invalid)?],
                None => Vec::new(),
            };
            match images
                .iter_mut()
                .find(|i| i.manifest_digest == resolved.record.digest)
            {
                Some(existing) => existing.references.extend(references),
                None => images.push(image_of_record(&resolved.record, references)),
            }
        }
        let work = self.work_dir()?;
        let out_path = work.path().join("archive.tar");
        let spool = work.path().to_path_buf();
        let backend = self.store.backend().clone();
        let handle = tokio::runtime::Handle::current();
        let digests: Vec<String> = images
            .iter()
            .map(|i| i.manifest_digest.to_string())
            .collect();
        let path = out_path.clone();
        blocking(move || {
            let out = std::fs::File::create(&path)
                .map_err(|err| ErrorEnvelope::internal(format!("cannot create archive: {err}")))?;
            let blob_dir = spool.join("blob");
            let mut open = |digest: &Digest| -> io::Result<Box<dyn Read>> {
                // Blobs are copied to a scratch file first: the archive writer is
                // blocking code, the object store is async.
                let found = handle
                    .block_on(fetch_to_file(&backend, &digest.to_string(), &blob_dir))
                    .map_err(io::Error::other)?;
                if !found {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("blob {digest} is missing from the store"),
                    ));
                }
                Ok(Box::new(io::BufReader::new(std::fs::File::open(
                    &blob_dir,
                )?)))
            };
            let refs: Vec<&ImageToStore> = images.iter().collect();
            let out = write_docker_archive(io::BufWriter::new(out), &refs, &mut open, &spool)
                .map_err(|err| ErrorEnvelope::internal(err.to_string()))?;
            out.into_inner()
                .map_err(|err| ErrorEnvelope::internal(format!("cannot write archive: {err}")))?;
            Ok(())
        })
        .await?;
        let mut file = tokio::fs::File::open(&out_path)
            .await
            .map_err(|err| ErrorEnvelope::internal(format!("cannot reopen archive: {err}")))?;
        let size = self
            .store
            .backend()
            .blob_put(&request.download, &mut file)
            .await
            .map_err(|err| {
                ErrorEnvelope::unavailable(format!("cannot store the archive: {err}"))
            })?;
        Ok(ImageSaveReply {
            download: request.download,
            size,
            digests,
        })
    }
}

//! Pins taken by `berth image unpack` (`image:<manifest digest>`) last as long as the
//! image: when the image-store deletes an image, every node's unpacker drops its pin, so
//! `image prune` can reclaim the layers. Deletions the unpacker did not see (it was down)
//! are caught by a sweep at start that asks the image-store about each pinned image.

use crate::endpoints::Unpacker;
use berth_bus::bootstrap::Shutdown;
use berth_bus::BusError;
use berth_proto::messages::image::{ImageEvent, ImageInspect, ImageInspectRequest};
use berth_proto::messages::unpack::{SnapshotReleaseRequest, IMAGE_PIN_PREFIX};
use berth_proto::subjects::{self, EventKind, ImageVerb};
use berth_proto::{Encoding, ErrorKind};
use futures::StreamExt;
use std::time::Duration;

const DELETE_ACTION: &str = "delete";
const INSPECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the start sweep waits for an image-store that is not up yet.
const SWEEP_ATTEMPTS: u32 = 30;

/// Follows image deletions until `shutdown`, after one sweep of pins whose image is gone.
pub async fn follow_image_deletions(unpacker: Unpacker, shutdown: Shutdown) {
    let client = unpacker.client.clone();
    let subject = subjects::event(EventKind::Image, "*", DELETE_ACTION);
    let mut deletions = match client.subscribe(subject.clone()).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(subject, error = %err, "cannot follow image deletions; image pins stay until released by hand");
            return;
        }
    };
    let sweep = sweep_pins_of_deleted_images(&unpacker);
    tokio::pin!(sweep);
    let mut swept = false;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = &mut sweep, if !swept => swept = true,
            next = deletions.next() => {
                let Some(message) = next else { return };
                match serde_json::from_slice::<ImageEvent>(&message.payload) {
                    Ok(event) if event.action == DELETE_ACTION => {
                        release_image_pin(&unpacker, &event.digest).await;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "ignoring a malformed image event"),
                }
            }
        }
    }
}

/// The image an `image:` user pins, if it is one.
pub fn pinned_image(user: &str) -> Option<&str> {
    user.strip_prefix(IMAGE_PIN_PREFIX)
        .filter(|image| !image.is_empty())
}

async fn release_image_pin(unpacker: &Unpacker, image: &str) {
    let user = format!("{IMAGE_PIN_PREFIX}{image}");
    match unpacker
        .release(SnapshotReleaseRequest { user: user.clone() })
        .await
    {
        Ok(reply) if reply.released > 0 => {
            tracing::info!(
                image,
                released = reply.released,
                "image deleted: its unpack pin released"
            )
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(image, error = %err, "cannot release the pin of a deleted image")
        }
    }
}

async fn sweep_pins_of_deleted_images(unpacker: &Unpacker) {
    let mut images: Vec<String> = unpacker
        .users()
        .iter()
        .filter_map(|user| pinned_image(user).map(str::to_string))
        .collect();
    images.sort();
    images.dedup();
    for image in images {
        for attempt in 0..SWEEP_ATTEMPTS {
            let found: Result<ImageInspect, BusError> = berth_bus::request(
                &unpacker.client,
                &subjects::image(ImageVerb::Inspect),
                &ImageInspectRequest {
                    name: image.clone(),
                },
                Encoding::Bincode,
                INSPECT_DEADLINE,
            )
            .await;
            match found {
                Ok(_) => break,
                Err(err) if err.kind() == Some(ErrorKind::NotFound) => {
                    release_image_pin(unpacker, &image).await;
                    break;
                }
                // Not answering yet (starting together with the image-store): try again.
                Err(err) => {
                    if attempt + 1 == SWEEP_ATTEMPTS {
                        tracing::warn!(image, error = %err, "cannot check whether a pinned image still exists");
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::unpack::image_pin;

    #[test]
    fn only_image_users_name_an_image() {
        assert_eq!(pinned_image(&image_pin("sha256:ab")), Some("sha256:ab"));
        assert_eq!(pinned_image("image:"), None);
        assert_eq!(pinned_image("0123456789abcdef"), None);
    }
}

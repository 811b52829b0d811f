//! Graceful shutdown on SIGTERM or SIGINT, as a cloneable future: the serving loop waits
//! on one clone while start-up steps (JetStream setup retried while NATS is down) wait on
//! others, so a signal during start-up stops the service too.

use futures::future::{BoxFuture, FutureExt, Shared};
use std::future::Future;
use tokio::signal::unix::{signal, SignalKind};

/// Resolves once, for every clone, when the service should stop.
#[derive(Clone)]
pub struct Shutdown(Shared<BoxFuture<'static, ()>>);

impl Shutdown {
    /// Shutdown when `trigger` resolves.
    pub fn new(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        Shutdown(trigger.boxed().shared())
    }

    /// Shutdown on the first SIGTERM or SIGINT.
    pub fn on_signal() -> Self {
        Shutdown::new(terminate_signal())
    }

    /// A future that resolves when shutdown is requested; independent of `self`'s lifetime.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone()
    }

    /// Whether shutdown has been requested already.
    pub fn is_requested(&self) -> bool {
        self.0.peek().is_some()
    }
}

/// Resolves on the first SIGTERM or SIGINT. If the handlers cannot be installed the
/// future never resolves: the process then stops only by SIGKILL, which is logged.
pub async fn terminate_signal() {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_one_trigger() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::new(async move {
            let _ = rx.await;
        });
        let waiter = tokio::spawn(shutdown.wait());
        let other = shutdown.clone();
        assert!(!other.is_requested());
        let _ = tx.send(());
        waiter.await.expect("waiter finishes");
        other.wait().await;
        assert!(shutdown.is_requested());
    }
}

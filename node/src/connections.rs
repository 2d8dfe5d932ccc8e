//! The connections a listener keeps open, at most `--max-connections`, for
//! every listener (HTTP, wire, gRPC): below the listeners, so each can
//! admit through it without importing another.

use std::net::SocketAddr;
use std::sync::Arc;

/// The connections one listener keeps open: at most `--max-connections`;
/// past it a new connection is closed as soon as it is accepted, so idle
/// connections cannot take every file descriptor (and Raft and `/readyz`
/// with them).
#[derive(Clone)]
pub struct OpenConnections {
    open: Arc<tokio::sync::Semaphore>,
    listener: &'static str,
    max: usize,
}

impl OpenConnections {
    /// At most `max` connections open on `listener` (named in the log).
    pub fn new(listener: &'static str, max: usize) -> Self {
        OpenConnections { open: Arc::new(tokio::sync::Semaphore::new(max)), listener, max }
    }

    /// A place for the connection just accepted from `addr`, held while it
    /// is open; `None` when all are taken: close it.
    pub fn admit(&self, addr: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let place = self.open.clone().try_acquire_owned().ok();
        if place.is_none() {
            tracing::debug!(%addr, listener = self.listener, max = self.max, "connection closed at once: too many open");
        }
        place
    }
}

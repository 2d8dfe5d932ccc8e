//! tollgate-client: how a Rust edge proxy asks a Tollgate cluster "may this
//! request pass?", with the least latency and no single point of failure.
//!
//! ```no_run
//! # async fn run() -> Result<(), tollgate_client::Error> {
//! use tollgate_client::{CheckRequest, Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig::new(["127.0.0.1:10081", "127.0.0.1:10082"], "tga_..."));
//! let decision = client
//!     .check(CheckRequest {
//!         api: "petstore".into(),
//!         stage: "prod".into(),
//!         method: "GET".into(),
//!         path: "/pets/7".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! if !decision.allowed {
//!     // answer the client with decision.status and decision.response_headers
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Client`] (this file): the public API — [`Client::check`], and what a
//!   proxy may ask about the nodes — with [`Error`]; [`ClientConfig`] and
//!   [`FailureMode`] are in `config`.
//! - `pool`: the nodes the client knows (the seeds, then every member the
//!   cluster names in its welcome), their health and latency, and the choice
//!   of node for each check: the healthy node with the lowest latency; on
//!   failure the next one, within the caller's deadline. A node that failed
//!   is left alone for a backoff that grows with each failure, then tried
//!   again. When none answers, fail open or closed as configured.
//! - `connection`: one TCP connection speaking the binary protocol
//!   ([`tollgate_proto::wire`]): checks are pipelined with ids and answered in
//!   any order; a reader task hands each answer to its caller. The checks of
//!   callers woken in the same scheduler tick go out in one write, by one of
//!   them; if it gives up half-way, a task finishes the write (within the
//!   attempt time-out, else the connection is dropped), so no frame is cut.
//! - `layer` (feature `tower`): a tower `Layer` that checks every request of
//!   an HTTP service and answers denials itself.
//! - `tls` (feature `tls`): TLS to the nodes, optionally with a client
//!   certificate that authenticates the proxy instead of a token.
//! - `admin` (feature `admin`): the one admin API client (the CLI, the test
//!   harness and the bench use it) — typed calls for keys, plans, usage
//!   (GetUsage/UpdateUsage) and the cluster, and `request` for any route —
//!   with failover between nodes.
//!
//! Dependencies point one way: `Client` → `pool` → `connection`.
//! The client holds no global state: every [`Client`] is independent.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "admin")]
pub mod admin;
mod config;
mod connection;
#[cfg(feature = "tower")]
pub mod layer;
mod pool;
#[cfg(feature = "tls")]
pub mod tls;

use std::sync::{Arc, Mutex};

pub use config::{ClientConfig, FailureMode};
#[cfg(feature = "tower")]
pub use layer::TollgateLayer;
pub use tollgate_proto::check::{CheckRequest, Decision, LimitState, Principal, ReasonCode};

use pool::Pool;

/// Why a check got no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the node names the field. Not retried: every
    /// node would refuse it. Also returned by `tls::ClientTls::new` (feature
    /// `tls`) for unusable PEM input.
    #[error("{field}: {message}")]
    Refused {
        /// The field at fault, as a path into the request (`path`,
        /// `headers.x-api-key`) or the configuration (`tls.ca`).
        field: String,
        /// What is wrong with it and how to fix it.
        message: String,
    },
    /// No node answered within the deadline (and the client fails closed);
    /// the text is the last attempt's failure, `addr: step: cause`.
    #[error("no Tollgate node answered: {0}")]
    Unavailable(String),
}

/// A poisoned lock is still used: every critical section leaves its data
/// consistent, so a panic elsewhere must not take the client down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cluster client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    /// The nodes, their connections and health, shared by every clone.
    pool: Arc<Pool>,
}

impl Client {
    /// A client that will connect to `config.seeds` on its first check; it
    /// opens no connection and starts no task now, so it needs no runtime
    /// until then.
    pub fn new(config: ClientConfig) -> Self {
        Client { pool: Arc::new(Pool::new(config)) }
    }

    /// The wire addresses this client knows (seeds and discovered members).
    pub fn known_nodes(&self) -> Vec<String> {
        self.pool.known_nodes()
    }

    /// The node the next check goes to first; `None` when no node is known
    /// (no seeds were given).
    pub fn preferred_node(&self) -> Option<String> {
        self.pool.preferred_node()
    }

    /// How many attempts failed and moved on to another node, since the
    /// client was made (shared by its clones).
    pub fn failovers(&self) -> usize {
        self.pool.failovers()
    }

    /// Decides one request: on the best node, or on the next if it fails,
    /// within the configured deadline.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] when the request is malformed (the node names the
    /// field); [`Error::Unavailable`] when no node answered within the
    /// deadline and the client fails closed ([`FailureMode::Closed`]). Failing
    /// open, an unanswered check is an allow decision instead.
    pub async fn check(&self, request: CheckRequest) -> Result<Decision, Error> {
        self.pool.check(request).await
    }
}

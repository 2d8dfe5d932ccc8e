//! How a [`Client`](crate::Client) reaches the cluster and what it does when
//! it cannot: [`ClientConfig`] and [`FailureMode`].

use std::time::Duration;

/// What to answer when no node can be reached within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through (availability over enforcement): the client
    /// returns an allow decision (status 200, reason `Allowed`) whose message
    /// starts with `fail-open:` and names the last failure.
    Open,
    /// Return [`Error::Unavailable`](crate::Error::Unavailable) (enforcement
    /// over availability). The default.
    Closed,
}

/// A [`Client`](crate::Client)'s nodes, credentials, time limits and
/// failure policy. [`ClientConfig::new`] gives the defaults noted on each
/// field; change fields before [`Client::new`](crate::Client::new).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Required. Wire addresses (`host:port`, a host name or an IP literal,
    /// IPv6 in brackets) to start from; more are discovered (see
    /// `discover`).
    pub seeds: Vec<String>,
    /// Required. A token with the `check` scope, sent in the hello; may be
    /// empty when a TLS client certificate authenticates the proxy.
    pub token: String,
    /// The whole time one check may take, retries on other nodes included.
    /// Default 500 ms.
    pub deadline: Duration,
    /// The longest one attempt on one node may take (connecting included,
    /// and capped by what is left of `deadline`); also the time a hello may
    /// wait for its welcome, and a write left unfinished by a caller that
    /// gave up may take before the connection is dropped. Default 250 ms.
    pub attempt_timeout: Duration,
    /// The longest a TCP connect may take, and then a TLS handshake.
    /// Default 200 ms.
    pub connect_timeout: Duration,
    /// Connections kept per node, opened on demand and used round-robin;
    /// 0 counts as 1. Default 2.
    pub connections_per_node: usize,
    /// Add the members a node names in its welcome to the seeds (the
    /// default). Off, the client uses only the seeds: a proxy pinned to the
    /// nodes it is given, say one beside it.
    pub discover: bool,
    /// What a check answers when no node answered within `deadline`.
    /// Default [`FailureMode::Closed`].
    pub failure_mode: FailureMode,
    /// Backoff after a node fails: starts at `min_backoff` (default 100 ms),
    /// doubles with each failure in a row, up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest a failed node is left alone before it is tried again
    /// (it is still tried sooner when no other node is left). Default 5 s.
    pub max_backoff: Duration,
    /// TLS to the nodes (feature `tls`), with a client certificate if the
    /// proxy authenticates with one. Default `None`: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ClientTls>,
}

impl ClientConfig {
    /// A configuration with the given seeds (wire addresses, `host:port`)
    /// and `check` token, and the defaults noted on each field.
    pub fn new<I, S>(seeds: I, token: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            token: token.into(),
            deadline: Duration::from_millis(500),
            attempt_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(200),
            connections_per_node: 2,
            discover: true,
            failure_mode: FailureMode::Closed,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

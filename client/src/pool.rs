//! The pool: which node a check goes to, and what happens when it fails.
//!
//! The pool knows the seeds and, unless discovery is off, every member a node
//! names in its welcome. Each check goes to the healthy node with the lowest
//! smoothed latency (a node not measured yet first, to measure it); if the
//! attempt fails, the next node, until the caller's deadline. A node that
//! failed backs off: `min_backoff`, doubled with each failure in a row, at
//! most `max_backoff`; a node backing off is tried only when no other is left.
//! When no node answered, the [`FailureMode`] decides: fail closed
//! ([`Error::Unavailable`]) or fail open (an allow decision).
//!
//! Connections per node are opened on demand, one at a time, up to
//! `connections_per_node`, and used round-robin. The pool never reads or
//! writes the wire itself: [`Connection`] does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_proto::check::{CheckRequest, Decision, ReasonCode};
use tollgate_proto::wire::ServerMessage;

use crate::connection::{AttemptFailed, Connection, Opened};
use crate::{lock, ClientConfig, Error, FailureMode};

/// What the client knows about one node.
struct Node {
    /// The node's wire address, `host:port`, as a seed or its welcome gave it.
    addr: Arc<str>,
    /// Open connections, at most `connections_per_node`; broken ones are
    /// dropped on the next look.
    connections: Vec<Arc<Connection>>,
    /// Held while a connection to this node is being opened, so concurrent
    /// checks wait for it instead of each opening their own.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Round-robin cursor over `connections`.
    next_connection: usize,
    /// Smoothed round-trip time, microseconds (0: not measured yet): an
    /// exponential moving average, each new sample weighing 1/8.
    latency_us: u64,
    /// Failures in a row since its last answer; sets the backoff.
    failures: u32,
    /// Backing off until then: tried only when no other node is left.
    down_until: Option<Instant>,
}

impl Node {
    fn new(addr: &str) -> Self {
        Node {
            addr: Arc::from(addr),
            connections: Vec::new(),
            opening: Arc::default(),
            next_connection: 0,
            latency_us: 0,
            failures: 0,
            down_until: None,
        }
    }
}

/// The nodes a [`Client`](crate::Client) knows and its connections to them:
/// shared by the client's clones.
pub(crate) struct Pool {
    /// The client's configuration, fixed at creation.
    config: ClientConfig,
    /// The seeds, then the members discovered, in the order learnt; never
    /// shrinks (a node that left is only backed off).
    nodes: Mutex<Vec<Node>>,
    /// The id of the next check, unique per pool across its connections.
    next_id: AtomicU64,
    /// Attempts that failed over to another node (for tests and metrics).
    failovers: AtomicUsize,
}

/// How an attempt on a node ended, for its health and latency.
enum Outcome {
    /// The node decided; `round_trip` is the time from the attempt's start
    /// (connecting included) to its answer.
    Answered { round_trip: Duration },
    /// The attempt failed: the node backs off.
    Failed,
}

impl Pool {
    /// A pool of the configured seeds, no connection open yet.
    pub(crate) fn new(config: ClientConfig) -> Self {
        let nodes = config.seeds.iter().map(|s| Node::new(s)).collect();
        Pool { config, nodes: Mutex::new(nodes), next_id: AtomicU64::new(1), failovers: AtomicUsize::new(0) }
    }

    /// The wire addresses this client knows (seeds and discovered members).
    pub(crate) fn known_nodes(&self) -> Vec<String> {
        lock(&self.nodes).iter().map(|n| n.addr.to_string()).collect()
    }

    /// The node the next check goes to first.
    pub(crate) fn preferred_node(&self) -> Option<String> {
        self.next_candidate(&[]).map(|a| a.to_string())
    }

    /// How many attempts failed and moved on to another node.
    pub(crate) fn failovers(&self) -> usize {
        self.failovers.load(Ordering::Relaxed)
    }

    /// The node to try next, of those not `tried`: one not backing off, the
    /// fastest (an unmeasured one first, to measure it); else one backing off.
    fn next_candidate(&self, tried: &[Arc<str>]) -> Option<Arc<str>> {
        let now = Instant::now();
        let nodes = lock(&self.nodes);
        nodes
            .iter()
            .filter(|n| !tried.contains(&n.addr))
            .min_by_key(|n| (n.down_until.is_some_and(|t| t > now), n.latency_us, &n.addr))
            .map(|n| n.addr.clone())
    }

    /// Updates `addr`'s health: an answer measures its latency and ends its
    /// backoff; a failure doubles its backoff and drops its broken connections.
    fn record(&self, addr: &str, outcome: Outcome) {
        let mut nodes = lock(&self.nodes);
        let Some(node) = nodes.iter_mut().find(|n| &*n.addr == addr) else { return };
        match outcome {
            Outcome::Answered { round_trip } => {
                let us = round_trip.as_micros() as u64;
                node.latency_us = if node.latency_us == 0 { us } else { (node.latency_us * 7 + us) / 8 };
                node.failures = 0;
                node.down_until = None;
            }
            Outcome::Failed => {
                node.failures = node.failures.saturating_add(1);
                let config = &self.config;
                let backoff = config.min_backoff.saturating_mul(1 << node.failures.min(16).saturating_sub(1));
                node.down_until = Some(Instant::now() + backoff.min(config.max_backoff));
                node.connections.retain(|c| !c.is_closed());
            }
        }
    }

    /// A pooled connection to `addr`, if the pool is full (or `any` and not empty).
    fn pooled(&self, addr: &str, any: bool) -> Option<Arc<Connection>> {
        let mut nodes = lock(&self.nodes);
        let node = nodes.iter_mut().find(|n| &*n.addr == addr)?;
        node.connections.retain(|c| !c.is_closed());
        let full = node.connections.len() >= self.config.connections_per_node.max(1);
        if node.connections.is_empty() || !(full || any) {
            return None;
        }
        node.next_connection = node.next_connection.wrapping_add(1);
        Some(node.connections[node.next_connection % node.connections.len()].clone())
    }

    /// A live connection to `addr`, opening one (one at a time) while the pool is not full.
    async fn connection(&self, addr: &str) -> Result<Arc<Connection>, AttemptFailed> {
        if let Some(c) = self.pooled(addr, false) {
            return Ok(c);
        }
        let opening = lock(&self.nodes).iter().find(|n| &*n.addr == addr).map(|n| n.opening.clone());
        let Some(opening) = opening else { return Err(AttemptFailed(format!("{addr}: unknown node"))) };
        let guard = match opening.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone is opening one: use an existing connection, or wait for theirs.
                if let Some(c) = self.pooled(addr, true) {
                    return Ok(c);
                }
                let guard = opening.lock().await;
                if let Some(c) = self.pooled(addr, true) {
                    return Ok(c);
                }
                guard
            }
        };
        let Opened { connection, members } = Connection::open(addr, &self.config).await?;
        let connection = Arc::new(connection);
        let mut nodes = lock(&self.nodes);
        for member in members.into_iter().filter(|_| self.config.discover) {
            if !nodes.iter().any(|n| *n.addr == *member) {
                nodes.push(Node::new(&member));
            }
        }
        if let Some(node) = nodes.iter_mut().find(|n| &*n.addr == addr) {
            node.connections.push(connection.clone());
        }
        drop(nodes);
        drop(guard);
        Ok(connection)
    }

    /// One attempt on `addr`, bounded by `timeout`: `Ok` when the node
    /// answered (a decision, or a refusal that no other node would answer
    /// differently), [`AttemptFailed`] when the next node should be tried.
    async fn attempt(
        &self,
        addr: &str,
        request: &CheckRequest,
        timeout: Duration,
    ) -> Result<Result<Decision, Error>, AttemptFailed> {
        let started = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let asked = async {
            let connection = self.connection(addr).await?;
            connection.ask(id, request).await
        };
        let answer = match tokio::time::timeout(timeout, asked).await {
            Ok(answer) => answer?,
            Err(_) => return Err(AttemptFailed(format!("{addr}: timed out"))),
        };
        match answer {
            ServerMessage::Decision { decision, .. } => {
                self.record(addr, Outcome::Answered { round_trip: started.elapsed() });
                Ok(Ok(decision))
            }
            ServerMessage::Refused { field, message, .. } => Ok(Err(Error::Refused { field, message })),
            other => Err(AttemptFailed(format!("{addr}: unexpected answer {other:?}"))),
        }
    }

    /// Decides one request: on the best node, or on the next if it fails,
    /// within the configured deadline; then as the failure mode says.
    pub(crate) async fn check(&self, request: CheckRequest) -> Result<Decision, Error> {
        let config = &self.config;
        let deadline = Instant::now() + config.deadline;
        let mut last_error = String::from("no node is known");
        // Allocated only on a failover.
        let mut tried: Vec<Arc<str>> = Vec::new();
        // Nodes discovered during an attempt are added to the list, so look again.
        while let Some(addr) = self.next_candidate(&tried) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last_error = "the deadline passed".into();
                break;
            }
            match self.attempt(&addr, &request, left.min(config.attempt_timeout)).await {
                Ok(answer) => return answer,
                Err(AttemptFailed(why)) => {
                    self.record(&addr, Outcome::Failed);
                    tried.push(addr);
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    last_error = why;
                }
            }
        }
        match config.failure_mode {
            FailureMode::Closed => Err(Error::Unavailable(last_error)),
            FailureMode::Open => Ok(Decision {
                allowed: true,
                status: 200,
                reason: ReasonCode::Allowed,
                message: format!("fail-open: no node answered ({last_error})"),
                principal: None,
                context: Default::default(),
                response_headers: Vec::new(),
                upstream_headers: Vec::new(),
                limit: None,
            }),
        }
    }
}

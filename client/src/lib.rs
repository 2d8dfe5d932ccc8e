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
//! - [`Client`]: the nodes it knows (the seeds, then every member the cluster
//!   names in its welcome), their health and latency, and the choice of node
//!   for each check: the healthy node with the lowest latency; on failure the
//!   next one, within the caller's deadline. A node that failed is left alone
//!   for a backoff that grows with each failure, then tried again.
//! - [`layer`] (feature `tower`): a tower `Layer` that checks every request of
//!   an HTTP service and answers denials itself.
//! - `tls` (feature `tls`): TLS to the nodes, optionally with a client
//!   certificate that authenticates the proxy instead of a token.
//! - `admin` (feature `admin`): typed admin API calls for tooling — keys,
//!   plans, usage (GetUsage/UpdateUsage) — with failover between nodes.
//! - `Connection`: one TCP connection speaking the binary protocol
//!   (`tollgate_proto::wire`): checks are pipelined with ids and answered in
//!   any order; a reader task hands each answer to its caller. The checks of
//!   callers woken in the same scheduler tick go out in one write, by one of
//!   them; if it gives up half-way, a task finishes the write (within the
//!   attempt time-out, else the connection is dropped), so no frame is cut.
//!
//! The client holds no global state: every [`Client`] is independent.
#![forbid(unsafe_code)]

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "tower")]
pub mod layer;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tower")]
pub use layer::TollgateLayer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
pub use tollgate_proto::check::{CheckRequest, Decision, LimitState, Principal, ReasonCode};
use tollgate_proto::wire::{self, ClientMessage, ServerMessage};

/// What to answer when no node can be reached within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through (availability over enforcement).
    Open,
    /// Return [`Error::Unavailable`] (enforcement over availability).
    Closed,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Wire addresses (`host:port`) to start from; more are discovered.
    pub seeds: Vec<String>,
    /// A token with the `check` scope.
    pub token: String,
    /// The whole time one check may take, retries included.
    pub deadline: Duration,
    /// The longest one attempt on one node may take.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Connections kept per node.
    pub connections_per_node: usize,
    /// Add the members a node names in its welcome to the seeds (the
    /// default). Off, the client uses only the seeds: a proxy pinned to the
    /// nodes it is given, say one beside it.
    pub discover: bool,
    pub failure_mode: FailureMode,
    /// Backoff after a node fails: starts here, doubles, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// TLS to the nodes (feature `tls`), with a client certificate if the
    /// proxy authenticates with one.
    #[cfg(feature = "tls")]
    pub tls: Option<tls::ClientTls>,
}

impl ClientConfig {
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the node names the field. Not retried.
    #[error("{field}: {message}")]
    Refused { field: String, message: String },
    /// No node answered within the deadline (and the client fails closed).
    #[error("no Tollgate node answered: {0}")]
    Unavailable(String),
}

/// Why one attempt on one node failed (the next node is tried).
#[derive(Debug)]
struct AttemptFailed(String);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>>;

/// One TCP connection with pipelined requests.
struct Connection {
    /// Requests not yet written, and whether a caller is writing now.
    outbox: Mutex<Outbox>,
    /// How long a flush left to a task may take before the connection is
    /// given up (the node stopped reading): the attempt time-out.
    flush_timeout: Duration,
    writer: tokio::sync::Mutex<Writer>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    /// The task reading answers: stopped when the connection is dropped or
    /// broken, which closes the socket (a split stream closes when both
    /// halves are gone).
    reader: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Default)]
struct Outbox {
    queued: Vec<u8>,
    /// Someone (a caller, or a task a caller left it to) is flushing.
    writing: bool,
}

/// The write half and the batch being written. What is left of the batch
/// stays here when a writer is dropped half-way, so the next one goes on
/// from the right byte: a frame is never cut.
struct Writer {
    half: tokio::io::WriteHalf<Box<dyn Stream>>,
    batch: Vec<u8>,
    written: usize,
}

/// Hands the flush to a task if the caller flushing gives up (its deadline
/// passed, or its request was dropped): the checks of others it had taken
/// on still go out, and the connection stays usable.
struct FlushGuard<'a>(Option<&'a Arc<Connection>>);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            connection.fail();
            return;
        };
        // Failed unless the flush ends, and in time: also when the task is
        // dropped unrun (the runtime shutting down).
        let unfinished = FailOnDrop(Some(connection.clone()));
        let connection = connection.clone();
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(connection.flush_timeout, connection.flush()).await {
                unfinished.disarm();
            }
        });
    }
}

/// Fails the connection it holds when dropped, unless disarmed.
struct FailOnDrop(Option<Arc<Connection>>);

impl FailOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            connection.fail();
        }
    }
}

/// Beyond this many bytes waiting to be written, the node is not reading:
/// a check goes to another node rather than pile up here.
const MAX_QUEUED: usize = 4 << 20;

/// Takes a caller's pending answer slot back when it stops waiting.
struct PendingGuard<'a>(&'a Pending, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<ServerMessage, String> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
    let len = wire::frame_len(prefix).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await.map_err(|e| e.to_string())?;
    wire::decode(&frame).map_err(|e| e.to_string())
}

impl Connection {
    /// Connects, says hello, and returns the connection and the members named in the welcome.
    async fn open(addr: &str, config: &ClientConfig) -> Result<(Connection, Vec<String>), AttemptFailed> {
        let fail = |what: &str, e: String| AttemptFailed(format!("{addr}: {what}: {e}"));
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| fail("connect", "timed out".into()))?
            .map_err(|e| fail("connect", e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream> = match Self::secure(addr, stream, config).await {
            Ok(s) => s,
            Err(e) => return Err(fail("TLS", e)),
        };
        Self::start(addr, stream, config).await
    }

    /// Says hello on `stream` and starts reading answers.
    async fn start(
        addr: &str,
        stream: Box<dyn Stream>,
        config: &ClientConfig,
    ) -> Result<(Connection, Vec<String>), AttemptFailed> {
        let fail = |what: &str, e: String| AttemptFailed(format!("{addr}: {what}: {e}"));
        let (mut reader, mut half) = tokio::io::split(stream);
        let hello = ClientMessage::Hello {
            versions: vec![wire::VERSION],
            token: config.token.clone(),
            client: format!("tollgate-client/{}", env!("CARGO_PKG_VERSION")),
        };
        let bytes = wire::encode(&hello).map_err(|e| fail("hello", e.to_string()))?;
        half.write_all(&bytes).await.map_err(|e| fail("hello", e.to_string()))?;
        let welcome = tokio::time::timeout(config.attempt_timeout, read_frame(&mut reader))
            .await
            .map_err(|_| fail("hello", "no answer".into()))?
            .map_err(|e| fail("hello", e))?;
        let members = match welcome {
            ServerMessage::Welcome { members, .. } => {
                members.into_iter().map(|m| m.wire).filter(|w| !w.is_empty()).collect()
            }
            ServerMessage::Error { code, message } => return Err(fail("refused", format!("{code:?}: {message}"))),
            other => return Err(fail("hello", format!("unexpected answer {other:?}"))),
        };

        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (reader_pending, reader_closed) = (pending.clone(), closed.clone());
        // Answers are read into a buffer (many frames per read) and decoded
        // in place.
        let reader_task = tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
            'reading: loop {
                match reader.read_buf(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let mut consumed = 0;
                loop {
                    let answer = match wire::next_frame::<ServerMessage>(&buffer[consumed..]) {
                        Ok(Some((len, answer))) => {
                            consumed += len;
                            answer
                        }
                        Ok(None) => break,
                        // A broken frame: the connection is done.
                        Err(_) => break 'reading,
                    };
                    let id = match &answer {
                        ServerMessage::Decision { id, .. }
                        | ServerMessage::Refused { id, .. }
                        | ServerMessage::Pong { id } => *id,
                        // An error from the node (it is shutting down, say): done.
                        _ => break 'reading,
                    };
                    if let Some(tx) = lock(&reader_pending).remove(&id) {
                        let _ = tx.send(answer);
                    }
                }
                buffer.drain(..consumed);
            }
            // Waiting callers see their answer dropped.
            reader_closed.store(true, Ordering::SeqCst);
            lock(&reader_pending).clear();
        });
        let connection = Connection {
            outbox: Mutex::new(Outbox::default()),
            flush_timeout: config.attempt_timeout,
            writer: tokio::sync::Mutex::new(Writer { half, batch: Vec::new(), written: 0 }),
            pending,
            closed,
            reader: reader_task.abort_handle(),
        };
        Ok((connection, members))
    }

    #[cfg(feature = "tls")]
    async fn secure(addr: &str, stream: TcpStream, config: &ClientConfig) -> Result<Box<dyn Stream>, String> {
        match &config.tls {
            None => Ok(Box::new(stream)),
            Some(tls) => {
                let connect = tls.connect(addr, stream);
                match tokio::time::timeout(config.connect_timeout, connect).await {
                    Ok(Ok(s)) => Ok(Box::new(s)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("handshake timed out".into()),
                }
            }
        }
    }

    #[cfg(not(feature = "tls"))]
    async fn secure(_addr: &str, stream: TcpStream, _config: &ClientConfig) -> Result<Box<dyn Stream>, String> {
        Ok(Box::new(stream))
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Marks the connection broken: no new checks, the reader stops (which
    /// closes the socket), and every waiting caller is told at once.
    fn fail(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.reader.abort();
        lock(&self.pending).clear();
    }

    /// Sends one check and waits for its answer (the caller bounds the wait).
    async fn ask(self: &Arc<Self>, id: u64, request: &CheckRequest) -> Result<ServerMessage, AttemptFailed> {
        if self.is_closed() {
            return Err(AttemptFailed("connection closed".into()));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let _slot = PendingGuard(&self.pending, id);
        // Closed since the first look: `fail` may have cleared the waiting
        // callers before this one joined them.
        if self.is_closed() {
            return Err(AttemptFailed("connection closed".into()));
        }
        self.send(id, request).await?;
        rx.await.map_err(|_| AttemptFailed("connection closed".into()))
    }

    /// Queues the check's frame; if no one is flushing, this caller flushes
    /// everything queued (its own and what others queue meanwhile). No
    /// writer task: a request costs no extra wake-up.
    async fn send(self: &Arc<Self>, id: u64, request: &CheckRequest) -> Result<(), AttemptFailed> {
        {
            let mut outbox = lock(&self.outbox);
            if outbox.queued.len() > MAX_QUEUED {
                return Err(AttemptFailed("connection backed up: the node is not reading".into()));
            }
            // Encoded straight into the queue: no frame of its own to copy.
            wire::encode_check_into(&mut outbox.queued, id, request).map_err(|e| AttemptFailed(e.to_string()))?;
            if outbox.writing {
                return Ok(());
            }
            outbox.writing = true;
        }
        let mut guard = FlushGuard(Some(self));
        // Let the other callers woken in this scheduler tick queue their
        // checks first: one write then carries them all.
        tokio::task::yield_now().await;
        let flushed = self.flush().await;
        guard.0 = None;
        flushed.map_err(|e| {
            self.fail();
            AttemptFailed(format!("connection closed: {e}"))
        })
    }

    /// Writes until nothing is queued, then clears `writing`. Cancel-safe:
    /// dropped at any await, the bytes not yet written stay in the writer.
    async fn flush(&self) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let Writer { half, batch, written } = &mut *writer;
        loop {
            if *written == batch.len() {
                batch.clear();
                *written = 0;
                std::mem::swap(batch, &mut lock(&self.outbox).queued);
                if batch.is_empty() {
                    // TLS may still hold records of what was written.
                    half.flush().await?;
                    let mut outbox = lock(&self.outbox);
                    if outbox.queued.is_empty() {
                        outbox.writing = false;
                        return Ok(());
                    }
                    continue;
                }
            }
            match half.write(&batch[*written..]).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => *written += n,
            }
        }
    }
}

/// What the client knows about one node.
struct Node {
    addr: Arc<str>,
    connections: Vec<Arc<Connection>>,
    /// Held while a connection to this node is being opened, so concurrent
    /// checks wait for it instead of each opening their own.
    opening: Arc<tokio::sync::Mutex<()>>,
    next_connection: usize,
    /// Smoothed round-trip time, microseconds (0: not measured yet).
    latency_us: u64,
    failures: u32,
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

struct Inner {
    config: ClientConfig,
    nodes: Mutex<Vec<Node>>,
    next_id: AtomicU64,
    /// Attempts that failed over to another node (for tests and metrics).
    failovers: AtomicUsize,
}

/// A cluster client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Self {
        let nodes = config.seeds.iter().map(|s| Node::new(s)).collect();
        Client {
            inner: Arc::new(Inner {
                config,
                nodes: Mutex::new(nodes),
                next_id: AtomicU64::new(1),
                failovers: AtomicUsize::new(0),
            }),
        }
    }

    /// The wire addresses this client knows (seeds and discovered members).
    pub fn known_nodes(&self) -> Vec<String> {
        lock(&self.inner.nodes).iter().map(|n| n.addr.to_string()).collect()
    }

    /// The node the next check goes to first.
    pub fn preferred_node(&self) -> Option<String> {
        self.next_candidate(&[]).map(|a| a.to_string())
    }

    /// How many attempts failed and moved on to another node.
    pub fn failovers(&self) -> usize {
        self.inner.failovers.load(Ordering::Relaxed)
    }

    /// The node to try next, of those not `tried`: one not backing off, the
    /// fastest (an unmeasured one first, to measure it); else one backing off.
    fn next_candidate(&self, tried: &[Arc<str>]) -> Option<Arc<str>> {
        let now = Instant::now();
        let nodes = lock(&self.inner.nodes);
        nodes
            .iter()
            .filter(|n| !tried.contains(&n.addr))
            .min_by_key(|n| (n.down_until.is_some_and(|t| t > now), n.latency_us, &n.addr))
            .map(|n| n.addr.clone())
    }

    fn record(&self, addr: &str, outcome: Result<Duration, ()>) {
        let mut nodes = lock(&self.inner.nodes);
        let Some(node) = nodes.iter_mut().find(|n| &*n.addr == addr) else { return };
        match outcome {
            Ok(rtt) => {
                let us = rtt.as_micros() as u64;
                node.latency_us = if node.latency_us == 0 { us } else { (node.latency_us * 7 + us) / 8 };
                node.failures = 0;
                node.down_until = None;
            }
            Err(()) => {
                node.failures = node.failures.saturating_add(1);
                let config = &self.inner.config;
                let backoff = config.min_backoff.saturating_mul(1 << node.failures.min(16).saturating_sub(1));
                node.down_until = Some(Instant::now() + backoff.min(config.max_backoff));
                node.connections.retain(|c| !c.is_closed());
            }
        }
    }

    /// A pooled connection to `addr`, if the pool is full (or `any` and not empty).
    fn pooled(&self, addr: &str, any: bool) -> Option<Arc<Connection>> {
        let mut nodes = lock(&self.inner.nodes);
        let node = nodes.iter_mut().find(|n| &*n.addr == addr)?;
        node.connections.retain(|c| !c.is_closed());
        let full = node.connections.len() >= self.inner.config.connections_per_node.max(1);
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
        let opening = lock(&self.inner.nodes).iter().find(|n| &*n.addr == addr).map(|n| n.opening.clone());
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
        let (connection, members) = Connection::open(addr, &self.inner.config).await?;
        let connection = Arc::new(connection);
        let mut nodes = lock(&self.inner.nodes);
        for member in members.into_iter().filter(|_| self.inner.config.discover) {
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

    async fn attempt(
        &self,
        addr: &str,
        request: &CheckRequest,
        timeout: Duration,
    ) -> Result<Result<Decision, Error>, AttemptFailed> {
        let started = Instant::now();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
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
                self.record(addr, Ok(started.elapsed()));
                Ok(Ok(decision))
            }
            ServerMessage::Refused { field, message, .. } => Ok(Err(Error::Refused { field, message })),
            other => Err(AttemptFailed(format!("{addr}: unexpected answer {other:?}"))),
        }
    }

    /// Decides one request: on the best node, or on the next if it fails,
    /// within the configured deadline.
    pub async fn check(&self, request: CheckRequest) -> Result<Decision, Error> {
        let config = &self.inner.config;
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
                    self.record(&addr, Err(()));
                    tried.push(addr);
                    self.inner.failovers.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Context;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads client frames from `stream` until `want` checks came; their ids and requests.
    async fn read_checks(stream: &mut tokio::io::DuplexStream, want: usize) -> Vec<(u64, CheckRequest)> {
        let (mut buffer, mut checks) = (Vec::new(), Vec::new());
        while checks.len() < want {
            assert!(stream.read_buf(&mut buffer).await.expect("read") > 0, "the client closed");
            while let Some((len, message)) = wire::next_frame::<ClientMessage>(&buffer).expect("a whole, valid frame") {
                buffer.drain(..len);
                if let ClientMessage::Check { id, request } = message {
                    checks.push((id, request));
                }
            }
        }
        checks
    }

    /// A connection over a pipe that holds 256 bytes (a large frame cannot
    /// be written at once), past its hello; the node's end of the pipe.
    async fn started(attempt_timeout: Duration) -> (Arc<Connection>, tokio::io::DuplexStream) {
        let (ours, mut node) = tokio::io::duplex(256);
        let mut config = ClientConfig::new(["test"], "token");
        config.attempt_timeout = attempt_timeout;
        let starting = tokio::spawn(async move { Connection::start("test", Box::new(ours), &config).await });
        let hello = read_checks_or_hello(&mut node).await;
        assert!(matches!(hello, ClientMessage::Hello { .. }));
        let welcome = ServerMessage::Welcome { version: wire::VERSION, node_id: 1, members: Vec::new() };
        node.write_all(&wire::encode(&welcome).expect("encode")).await.expect("welcome");
        let (connection, _) = starting.await.expect("task").map_err(|e| e.0).expect("started");
        (Arc::new(connection), node)
    }

    fn large_request() -> CheckRequest {
        CheckRequest {
            api: "a".into(),
            headers: [("x-large".to_string(), "x".repeat(10_000))].into(),
            ..Default::default()
        }
    }

    /// A node that stops reading: the flush left to a task gives up after
    /// the attempt time-out, and the connection is failed (its waiting
    /// callers told), not kept with frames piling up.
    #[tokio::test]
    async fn a_flush_left_to_a_task_gives_up_on_a_node_that_does_not_read() {
        let (connection, _node) = started(Duration::from_millis(100)).await;
        let large = large_request();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut writing = Box::pin(connection.ask(1, &large));
        assert!(writing.as_mut().poll(&mut cx).is_pending(), "queued, yielding");
        assert!(writing.as_mut().poll(&mut cx).is_pending(), "writing, the pipe full");
        let waiting = connection.clone();
        let waiting = tokio::spawn(async move { waiting.ask(2, &large_request()).await.map_err(|e| e.0) });
        tokio::task::yield_now().await;
        drop(writing);
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("told in time").expect("task");
        assert!(answer.is_err(), "no answer can come: {answer:?}");
        assert!(connection.is_closed(), "the connection was given up");
    }

    /// A caller dropped half-way through writing a frame (its own, large,
    /// and one it took on for another caller) hands the rest to a task: the
    /// node gets both frames whole, and the other caller its answer.
    #[tokio::test]
    async fn a_writer_dropped_mid_frame_leaves_the_rest_to_a_task_and_cuts_nothing() {
        let (connection, mut node) = started(Duration::from_secs(10)).await;

        let large = large_request();
        let small = CheckRequest { api: "b".into(), ..Default::default() };
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut writing = Box::pin(connection.ask(1, &large));
        assert!(writing.as_mut().poll(&mut cx).is_pending(), "queued, yielding");
        assert!(writing.as_mut().poll(&mut cx).is_pending(), "writing, the pipe full");
        assert!(connection.writer.try_lock().is_err(), "the caller is mid-write");
        let waiting = connection.clone();
        let waiting = tokio::spawn(async move { waiting.ask(2, &small).await.map_err(|e| e.0) });
        tokio::task::yield_now().await; // it queues behind the writer
        drop(writing);

        let patience = Duration::from_secs(10);
        let checks = tokio::time::timeout(patience, read_checks(&mut node, 2)).await.expect("both frames came");
        assert_eq!(checks[0].0, 1);
        assert_eq!(checks[0].1.headers.get("x-large").map(String::len), Some(10_000), "the large frame came whole");
        assert_eq!((checks[1].0, checks[1].1.api.as_str()), (2, "b"));
        let decision = Decision {
            allowed: true,
            status: 200,
            reason: ReasonCode::Allowed,
            message: String::new(),
            principal: None,
            context: Default::default(),
            response_headers: Vec::new(),
            upstream_headers: Vec::new(),
            limit: None,
        };
        node.write_all(&wire::encode(&ServerMessage::Decision { id: 2, decision }).expect("encode"))
            .await
            .expect("answer");
        match tokio::time::timeout(patience, waiting).await.expect("an answer in time").expect("task") {
            Ok(ServerMessage::Decision { id: 2, decision }) => assert!(decision.allowed),
            other => panic!("the waiting caller got {other:?}"),
        }
        assert!(!connection.is_closed(), "the connection is still in use");
    }

    async fn read_checks_or_hello(stream: &mut tokio::io::DuplexStream) -> ClientMessage {
        let mut buffer = Vec::new();
        loop {
            assert!(stream.read_buf(&mut buffer).await.expect("read") > 0, "the client closed");
            if let Some((_, message)) = wire::next_frame::<ClientMessage>(&buffer).expect("a valid frame") {
                return message;
            }
        }
    }
}

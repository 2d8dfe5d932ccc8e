//! One multiplexed connection to one node's wire listener: the binary
//! protocol of [`tollgate_proto::wire`] over TCP (or TLS over it).
//!
//! A connection opens with `Hello` (the protocol versions, the token, the
//! client's name) and expects `Welcome` (which also names the cluster's
//! members). Then checks are pipelined: each carries a request id from the
//! pool, and the node answers in any order. A reader task reads answers into
//! a buffer, many frames per read, and hands each one to the caller waiting
//! under its id.
//!
//! Writes take no task of their own: a caller queues its frame in the
//! [`Outbox`]; if no one is writing, it yields once (so the callers woken in
//! the same scheduler tick queue theirs) and writes the whole batch. If that
//! caller gives up half-way (its deadline passed, its request was dropped), a
//! task finishes the write within the attempt time-out, else the connection
//! is failed: a frame is never cut, and another caller's check is never lost
//! silently.
//!
//! This module never chooses a node and never retries: a failure is an
//! [`AttemptFailed`] for the pool to act on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tollgate_proto::check::CheckRequest;
use tollgate_proto::wire::{self, ClientMessage, ServerMessage};

use crate::{lock, ClientConfig};

/// Why one attempt on one node failed, as `addr: step: cause` where the
/// node is known: the pool then tries the next node, and reports the last of
/// these in [`Error::Unavailable`](crate::Error::Unavailable).
#[derive(Debug)]
pub(crate) struct AttemptFailed(pub(crate) String);

/// The callers waiting for an answer, by request id: the reader task hands
/// each answer to the sender under its id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>>;

/// A connection just opened, and what the node said in its welcome.
pub(crate) struct Opened {
    /// The connection, past its hello, its reader task running.
    pub(crate) connection: Connection,
    /// The wire addresses (`host:port`) of the cluster members the node
    /// named in its welcome; members without a wire listener are left out.
    pub(crate) members: Vec<String>,
}

/// One TCP connection with pipelined requests.
pub(crate) struct Connection {
    /// Requests not yet written, and whether a caller is writing now.
    outbox: Mutex<Outbox>,
    /// How long a flush left to a task may take before the connection is
    /// given up (the node stopped reading): the attempt time-out.
    flush_timeout: Duration,
    /// The write half, held by whoever flushes (a caller, or the task it
    /// left the flush to); an async lock, as it is held across writes.
    writer: tokio::sync::Mutex<Writer>,
    /// The callers waiting for an answer, shared with the reader task.
    pending: Pending,
    /// Set, never cleared, when the connection breaks: by the reader task
    /// when the node closes it or sends a broken frame or an error, and by
    /// [`Connection::fail`].
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

/// The frames callers queued and not yet handed to the [`Writer`].
#[derive(Default)]
struct Outbox {
    /// Encoded `Check` frames, back to back; no frame is added once this
    /// holds more than [`MAX_QUEUED`] bytes.
    queued: Vec<u8>,
    /// Someone (a caller, or a task a caller left it to) is flushing.
    writing: bool,
}

/// The write half and the batch being written. What is left of the batch
/// stays here when a writer is dropped half-way, so the next one goes on
/// from the right byte: a frame is never cut.
struct Writer {
    /// The write half of the connection's stream.
    half: tokio::io::WriteHalf<Box<dyn Stream>>,
    /// The frames taken from the [`Outbox`] for this write.
    batch: Vec<u8>,
    /// How many bytes of `batch` the stream has taken.
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
struct PendingGuard<'a> {
    /// The connection's waiting callers.
    pending: &'a Pending,
    /// The request id whose slot this guard removes.
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Reads one whole frame from `reader` (used for the welcome, before the
/// reader task takes the stream over).
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<ServerMessage, String> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
    let len = wire::frame_len(prefix).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await.map_err(|e| e.to_string())?;
    wire::decode(&frame).map_err(|e| e.to_string())
}

impl Connection {
    /// Connects (within `connect_timeout`, TLS if configured), says hello,
    /// and returns the connection and the members named in the welcome.
    pub(crate) async fn open(addr: &str, config: &ClientConfig) -> Result<Opened, AttemptFailed> {
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
    async fn start(addr: &str, stream: Box<dyn Stream>, config: &ClientConfig) -> Result<Opened, AttemptFailed> {
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
        Ok(Opened { connection, members })
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

    /// Whether the connection is broken (or the node closed it): no check
    /// can be sent on it any more.
    pub(crate) fn is_closed(&self) -> bool {
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
    pub(crate) async fn ask(self: &Arc<Self>, id: u64, request: &CheckRequest) -> Result<ServerMessage, AttemptFailed> {
        if self.is_closed() {
            return Err(AttemptFailed("connection closed".into()));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let _slot = PendingGuard { pending: &self.pending, id };
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Context;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use tollgate_proto::check::{Decision, ReasonCode};

    /// One check as the node read it off the pipe.
    struct SentCheck {
        id: u64,
        request: CheckRequest,
    }

    /// Reads client frames from `stream` until `want` checks came.
    async fn read_checks(stream: &mut tokio::io::DuplexStream, want: usize) -> Vec<SentCheck> {
        let (mut buffer, mut checks) = (Vec::new(), Vec::new());
        while checks.len() < want {
            assert!(stream.read_buf(&mut buffer).await.expect("read") > 0, "the client closed");
            while let Some((len, message)) = wire::next_frame::<ClientMessage>(&buffer).expect("a whole, valid frame") {
                buffer.drain(..len);
                if let ClientMessage::Check { id, request } = message {
                    checks.push(SentCheck { id, request });
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
        let opened = starting.await.expect("task").map_err(|e| e.0).expect("started");
        (Arc::new(opened.connection), node)
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
        assert_eq!(checks[0].id, 1);
        assert_eq!(
            checks[0].request.headers.get("x-large").map(String::len),
            Some(10_000),
            "the large frame came whole"
        );
        assert_eq!((checks[1].id, checks[1].request.api.as_str()), (2, "b"));
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

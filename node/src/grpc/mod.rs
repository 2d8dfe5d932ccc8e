//! The gRPC listener: Envoy's own APIs on the check pipeline, on a port of
//! its own (`--grpc`, default 127.0.0.1:11081; `tollgate dev`: 11081-11083).
//! It serves `envoy.service.auth.v3.Authorization` (Envoy's `ext_authz`
//! filter in gRPC mode, see [`ext_authz`]) and
//! `envoy.service.ratelimit.v3.RateLimitService` (Envoy's `ratelimit`
//! filters, see [`rls`]), built with tonic on the protos the `envoy-types`
//! crate generates, and `grpc.health.v1.Health`
//! (no token needed: it says only what `/readyz` says), `SERVING` while the
//! node is ready.
//!
//! # Who may call
//!
//! The asking proxy authenticates as on the wire port, by the one rule
//! [`App::may_check`]: `authorization: Bearer <token>` metadata naming a
//! token with the `check` (or `write`) scope, or the bootstrap admin token.
//! With TLS and `--tls-client-ca`, a client certificate that CA signed
//! authenticates the proxy instead (the handshake verified it). Any other
//! call is answered `UNAUTHENTICATED` before its message is even decoded,
//! and with nothing else: no hint of which tokens exist.
//!
//! # Transport
//!
//! TLS (the node's certificate, rustls with ring) whenever the node has TLS:
//! the same acceptor as the HTTP listener's, with handshakes bounded in time
//! and number ([`crate::tls::TlsListener`]). HTTP/2 only, with keep-alive
//! pings ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]), a bound on decoded
//! messages ([`MAX_MESSAGE_BYTES`]) and on header lists, streams per
//! connection ([`MAX_CONCURRENT_STREAMS`], also the requests decided at once
//! per connection), calls under way on the node ([`MAX_CALLS`]), small
//! flow-control windows ([`STREAM_WINDOW_BYTES`]) so stalled calls cannot
//! make a node buffer without bound, and a time limit per call
//! ([`CALL_TIMEOUT`]). On the
//! node's stop it accepts no more connections and lets calls in flight
//! finish for at most [`STOP_GRACE`].
//!
//! What this module must never do: log a token or a header, or decide a
//! request any other way than [`App::decide`] does for every listener.

pub mod ext_authz;
pub mod rls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tonic::transport::server::Connected;

use crate::app::App;
use crate::http::auth_failures::AuthFailures;
use crate::http::forwarded::TrustedProxies;

/// Largest request message decoded, in bytes (a `CheckRequest` with a few
/// hundred headers fits easily, as does a `RateLimitRequest` as Envoy's
/// route actions build it); past it the call fails with `INVALID_ARGUMENT` and nothing
/// is decided.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest HTTP/2 header list (the call's metadata) accepted, in bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams (calls) open at once on one connection; more wait in the
/// proxy. Also the calls decided at once per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Calls under way at once on this node, over every connection: past it a
/// call is refused at once (`RESOURCE_EXHAUSTED`), never queued. With the
/// windows below this bounds what stalled calls can make a node hold: about
/// `MAX_CALLS` messages, and each connection's window of unread data.
pub const MAX_CALLS: usize = 4096;
/// Calls under way at once from one client address: a caller that stalls
/// its calls (or only sends many) takes at most this many of
/// [`MAX_CALLS`], and every other address keeps being answered.
pub const MAX_CALLS_PER_ADDRESS: usize = 1024;
/// A call whose message stops arriving for this long is ended (its slot
/// freed): a proxy sends a whole message at once.
pub const MESSAGE_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 flow control: what a caller may send on one stream ahead of what
/// the node has read (a whole message fits), and on one connection (two).
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// See [`STREAM_WINDOW_BYTES`].
pub const CONNECTION_WINDOW_BYTES: u32 = 128 * 1024;
/// How often an idle connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one call may take (an HTTP authorizer is the slow step).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the health service (`grpc.health.v1.Health`) reads readiness.
pub const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// How long calls in flight may finish once the node stops.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the listener knows of a caller's connection; every call on it
/// carries a copy (tonic's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The address the connection came from.
    pub addr: Option<SocketAddr>,
    /// The caller showed a client certificate that `--tls-client-ca`
    /// verified during the handshake: it needs no token.
    pub certified: bool,
}

/// One accepted connection, plain or TLS, holding its place among the
/// listener's `--max-connections` until it is dropped.
/// The permit is held, never read: dropping the connection frees its place.
enum Connection {
    Plain(TcpStream, #[allow(dead_code)] OwnedSemaphorePermit),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, #[allow(dead_code)] OwnedSemaphorePermit),
}

impl Connected for Connection {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        match self {
            Connection::Plain(s, _) => Caller { addr: s.peer_addr().ok(), certified: false },
            Connection::Tls(s, _) => {
                let (tcp, session) = s.get_ref();
                let certified = session.peer_certificates().is_some_and(|c| !c.is_empty());
                Caller { addr: tcp.peer_addr().ok(), certified }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(s, _) => s.is_write_vectored(),
            Connection::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections `listener` accepts, over TLS when `tls` is given.
fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
) -> io::Result<BoxStream<'static, io::Result<Connection>>> {
    let open = crate::connections::OpenConnections::new("gRPC", max_connections);
    Ok(match tls {
        None => stream::unfold(listener, move |listener| {
            let open = open.clone();
            async move {
                loop {
                    match listener.accept().await {
                        Ok((tcp, addr)) => {
                            let Some(permit) = open.admit(addr) else { continue };
                            let _ = tcp.set_nodelay(true);
                            return Some((Ok(Connection::Plain(tcp, permit)), listener));
                        }
                        Err(e) => {
                            // Out of file descriptors, say: let some close.
                            tracing::warn!(error = %e, "gRPC accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        })
        .boxed(),
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)?;
            stream::unfold(listener, move |mut listener| {
                let open = open.clone();
                async move {
                    loop {
                        let (tls, addr) = axum::serve::Listener::accept(&mut listener).await;
                        let Some(permit) = open.admit(addr) else { continue };
                        return Some((Ok(Connection::Tls(Box::new(tls), permit)), listener));
                    }
                }
            })
            .boxed()
        }
    })
}

/// Whether a call may be answered: a verified client certificate, or a
/// bearer token [`App::may_check`] accepts. Refused calls get
/// `UNAUTHENTICATED` and a message that says only what to send, and count
/// against their source address's budget of failed authentications (the
/// admin API's, `--admin-auth-failures-per-minute`): a source past it gets
/// `RESOURCE_EXHAUSTED` before its token is looked at.
fn authenticate(app: &App, failures: &AuthFailures, request: &tonic::Request<()>) -> Result<(), tonic::Status> {
    let caller = request.extensions().get::<Caller>();
    if caller.is_some_and(|c| c.certified) {
        return Ok(());
    }
    let source = caller.and_then(|c| c.addr).map(|a| a.ip().to_canonical());
    let now = std::time::Instant::now();
    // Every `authorization` entry: one, or it is ambiguous and counts as none.
    let mut values = request.metadata().get_all("authorization").iter();
    let token = match (values.next(), values.next()) {
        (Some(one), None) => one.to_str().ok().and_then(crate::secret::bearer_token),
        _ => None,
    };
    // A proxy with a stored token is never locked out by guesses others at
    // its address made (a sidecar, a NAT): only guessing is budgeted.
    if token.is_some_and(|t| app.stored_check_token(t)) {
        return Ok(());
    }
    if let Some(Err(retry)) = source.map(|s| failures.check(s, now)) {
        return Err(tonic::Status::resource_exhausted(format!(
            "too many failed authentications from this address: retry in {retry} s"
        )));
    }
    match token {
        Some(token) if app.may_check(token) => Ok(()),
        _ => {
            if let Some(source) = source {
                failures.fail(source, now);
                tracing::warn!(%source, "gRPC call refused: no valid token");
            }
            Err(tonic::Status::unauthenticated(
                "send `authorization: Bearer <token>` with a token of the check scope (or a client certificate)",
            ))
        }
    }
}

/// The calls under way, on the node and per client address: a call past
/// either bound is answered `RESOURCE_EXHAUSTED` at once, so one caller
/// (stalling its calls, or only sending many) cannot hold every slot and
/// make the others wait, and no call waits for a slot holding its headers.
#[derive(Clone)]
struct CallSlots {
    under_way: Arc<std::sync::Mutex<SlotCounts>>,
    max: usize,
    per_address: usize,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    by_address: std::collections::HashMap<Option<std::net::IpAddr>, usize>,
}

impl CallSlots {
    fn new(max: usize, per_address: usize) -> Self {
        CallSlots { under_way: Arc::default(), max, per_address }
    }

    /// A slot for a call from `address`, if one is free.
    fn take(&self, address: Option<std::net::IpAddr>) -> Option<CallSlot> {
        let mut counts = self.under_way.lock().unwrap_or_else(|p| p.into_inner());
        let mine = counts.by_address.get(&address).copied().unwrap_or(0);
        if counts.total >= self.max || mine >= self.per_address {
            return None;
        }
        counts.total += 1;
        *counts.by_address.entry(address).or_insert(0) += 1;
        Some(CallSlot { under_way: self.under_way.clone(), address })
    }
}

/// A call's slot, given back when the call ends (its future is dropped).
struct CallSlot {
    under_way: Arc<std::sync::Mutex<SlotCounts>>,
    address: Option<std::net::IpAddr>,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut counts = self.under_way.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

impl<S> tower_layer::Layer<S> for CallSlots {
    type Service = SlottedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SlottedService { inner, slots: self.clone() }
    }
}

/// A service whose calls each hold a [`CallSlot`].
#[derive(Clone)]
struct SlottedService<S> {
    inner: S,
    slots: CallSlots,
}

impl<S, B> tower::Service<axum::http::Request<B>> for SlottedService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let address = request.extensions().get::<Caller>().and_then(|c| c.addr).map(|a| a.ip().to_canonical());
        let Some(slot) = self.slots.take(address) else {
            let refused = tonic::Status::resource_exhausted(
                "too many calls under way (from this address, or on this node): retry shortly",
            );
            return Box::pin(async move { Ok(refused.into_http()) });
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = call.await;
            drop(slot);
            answer
        })
    }
}

/// tonic answers a request message that does not decode (a string field
/// that is not UTF-8, a wrong wire type, or no protobuf at all) with
/// `INTERNAL`, as gRPC's status guide has it for a server's own parse
/// failures, and one larger than [`MAX_MESSAGE_BYTES`] with `OUT_OF_RANGE`.
/// Here the message is the caller's input, so both are `INVALID_ARGUMENT`,
/// saying which rule it broke. Only those errors are rewritten: such an
/// answer carries its status in its headers (trailers-only), before any
/// message.
fn undecodable_is_invalid_argument<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    use axum::http::HeaderValue;
    let headers = response.headers_mut();
    let status = headers.get("grpc-status").map(|v| v.as_bytes().to_vec());
    // The message is percent-encoded (gRPC over HTTP/2: spaces as `%20`).
    let said = |prefix: &str| {
        headers.get("grpc-message").is_some_and(|v| {
            let text = v.as_bytes();
            text.starts_with(prefix.replace(' ', "%20").as_bytes()) || text.starts_with(prefix.as_bytes())
        })
    };
    let rule = match status.as_deref() {
        Some(b"13") if said("failed to decode Protobuf") => {
            "request: not a valid request message (every string field must be UTF-8, every field of its type)"
        }
        Some(b"11") if said("Error, decoded message length too large") => {
            "request: larger than the 65536 bytes a message may have"
        }
        _ => return response,
    };
    let mut message = rule.replace(' ', "%20").into_bytes();
    if let Some(why) = headers.get("grpc-message") {
        message.extend_from_slice(b":%20");
        message.extend_from_slice(why.as_bytes());
    }
    headers.insert("grpc-status", HeaderValue::from_static("3"));
    if let Ok(message) = HeaderValue::from_bytes(&message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// Serves the gRPC services on `listener` (over TLS when `tls` is given)
/// until `stop`; then accepts no more and gives the calls in flight
/// [`STOP_GRACE`] to finish. `trusted` are the operator's trusted proxies
/// (`--trusted-proxies`), as forward-auth uses them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
    trusted: TrustedProxies,
    failures: Arc<AuthFailures>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let connections = match incoming(listener, tls, max_connections) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the gRPC listener cannot start");
            return;
        }
    };
    // grpc.health.v1: SERVING while the node is ready (as `/readyz`), for
    // the whole server ("") and for ext_authz; NOT_SERVING otherwise, so a
    // proxy's gRPC health check skips a node that runs but cannot decide.
    let (health, health_service) = tonic_health::server::health_reporter();
    let watched = app.clone();
    let mut stopping_health = stop.clone();
    tokio::spawn(async move {
        loop {
            let status = match watched.not_ready().await {
                None => tonic_health::ServingStatus::Serving,
                Some(_) => tonic_health::ServingStatus::NotServing,
            };
            for service in ["", ext_authz::SERVICE_NAME, rls::SERVICE_NAME] {
                health.set_service_status(service, status).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_EVERY) => {}
                _ = stopping_health.wait_for(|s| *s) => return,
            }
        }
    });
    let authenticating = app.clone();
    let interceptor =
        move |request: tonic::Request<()>| authenticate(&authenticating, &failures, &request).map(|()| request);
    let rls = rls::Rls::new(app.clone()).into_server().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let rls = tonic::service::interceptor::InterceptedService::new(rls, interceptor.clone());
    let ext_authz = ext_authz::ExtAuthz::new(app, trusted).into_server().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(ext_authz, interceptor);
    let mut stopping = stop.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let serving = tonic::transport::Server::builder()
        .accept_http1(false)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .timeout(CALL_TIMEOUT)
        .layer(tower::util::MapResponseLayer::new(undecodable_is_invalid_argument::<tonic::body::Body>))
        .layer(CallSlots::new(MAX_CALLS, MAX_CALLS_PER_ADDRESS))
        .layer(tower::util::MapRequestLayer::new(|request: axum::http::Request<tonic::body::Body>| {
            request
                .map(|body| tonic::body::Body::new(tower_http::timeout::TimeoutBody::new(MESSAGE_IDLE_TIMEOUT, body)))
        }))
        .add_service(service)
        .add_service(rls)
        .add_service(health_service)
        .serve_with_incoming_shutdown(connections, stopped);
    tokio::pin!(serving);
    // Past the grace period after the stop, calls still open are dropped.
    let grace_over = async {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        served = &mut serving => {
            if let Err(e) = served {
                tracing::error!(error = %e, "the gRPC listener failed");
            }
        }
        _ = grace_over => tracing::warn!("gRPC calls still open {} s after the stop; dropped", STOP_GRACE.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_takes_at_most_its_share_of_the_call_slots_and_ends_give_them_back() {
        let slots = CallSlots::new(3, 2);
        let (a, b, c) = (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()), None);
        let a1 = slots.take(a).expect("a's first");
        let a2 = slots.take(a).expect("a's second");
        assert!(slots.take(a).is_none(), "a has its two");
        let b1 = slots.take(b).expect("b still gets one");
        assert!(slots.take(c).is_none(), "the node has its three");
        drop(a1);
        let a3 = slots.take(a).expect("a's first slot came back");
        drop((a2, a3, b1));
        let counts = slots.under_way.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!((counts.total, counts.by_address.len()), (0, 0), "every slot given back, no address left");
    }

    #[test]
    fn an_undecodable_message_is_invalid_argument_and_nothing_else_changes() {
        let answer = |status: &'static str, message: &'static str| {
            let mut response = axum::http::Response::new(());
            response.headers_mut().insert("grpc-status", axum::http::HeaderValue::from_static(status));
            response.headers_mut().insert("grpc-message", axum::http::HeaderValue::from_static(message));
            let response = undecodable_is_invalid_argument(response);
            let text = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            (text("grpc-status"), text("grpc-message"))
        };
        // As tonic sends it (percent-encoded) and as the gRPC spec allows it (plain).
        for why in [
            "failed%20to%20decode%20Protobuf%20message:%20invalid%20string%20value:%20data%20is%20not%20UTF-8",
            "failed to decode Protobuf message: invalid string value: data is not UTF-8",
        ] {
            let (status, message) = answer("13", why);
            assert_eq!(status.as_deref(), Some("3"), "{why}");
            let message = message.unwrap_or_default();
            assert!(
                message.starts_with("request:%20not%20a%20valid%20request%20message") && message.ends_with("UTF-8")
            );
        }
        // Past the message bound (tonic's words, percent-encoded or not).
        for why in [
            "Error,%20decoded%20message%20length%20too%20large:%20found%20100015%20bytes,%20the%20limit%20is:%2065536%20bytes",
            "Error, decoded message length too large: found 100015 bytes, the limit is: 65536 bytes",
        ] {
            let (status, message) = answer("11", why);
            assert_eq!(status.as_deref(), Some("3"), "{why}");
            assert!(message.unwrap_or_default().starts_with("request:%20larger%20than%20the%2065536%20bytes"));
        }
        assert_eq!(answer("11", "something else").0.as_deref(), Some("11"));
        assert_eq!(answer("13", "something else").0.as_deref(), Some("13"));
        assert_eq!(answer("16", "failed to decode Protobuf message").0.as_deref(), Some("16"));
    }
}

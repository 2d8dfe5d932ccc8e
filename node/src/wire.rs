//! The wire listener: the binary check protocol (`tollgate_proto::wire`) for
//! `tollgate-client`, on its own port, serving the same pipeline as
//! `POST /v1/check`.
//!
//! With TLS configured (see `crate::tls`) every connection is TLS; a proxy
//! whose client certificate the CA verified needs no token in its hello.
//!
//! A connection starts with a hello (version and token, within
//! [`HELLO_TIMEOUT`]); then checks are decided concurrently, at most
//! [`MAX_IN_FLIGHT`] at a time per connection, and answered as they finish,
//! each with its request's id. A frame that is not of the protocol gets an
//! error and the connection is closed; other connections are not affected.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tollgate_proto::wire::{self, ClientMessage, ErrorCode, FrameError, Member, ServerMessage};

use crate::app::App;

/// How long a new connection has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Checks decided at once for one connection; more wait (back-pressure).
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a write of answers may wait for the proxy to read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers are gathered up to about this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;

/// Serves the binary protocol on `listener` until `stop`, with at most
/// `max_connections` open at once (past it a new one is closed at once).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) {
    let mut watcher = stop.clone();
    let stopping = async move {
        let _ = watcher.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let open = crate::connections::OpenConnections::new("wire", max_connections);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(permit) = open.admit(peer) else { continue };
                    let _ = stream.set_nodelay(true);
                    let (app, stop) = (app.clone(), stop.clone());
                    match tls.clone() {
                        None => {
                            tokio::spawn(async move {
                                connection(stream, false, app, stop).await;
                                drop(permit);
                            });
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                let _permit = permit;
                                match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        let certified = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                                        connection(tls, certified, app, stop).await
                                    }
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "wire TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "wire TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "wire accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut stopping => return,
        }
    }
}

enum ReadError {
    Closed,
    Frame(FrameError),
}

async fn read_message<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Result<ClientMessage, ReadError> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await.map_err(|_| ReadError::Closed)?;
    let len = wire::frame_len(prefix).map_err(ReadError::Frame)?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await.map_err(|_| ReadError::Closed)?;
    wire::decode(&frame).map_err(ReadError::Frame)
}

/// Appends an answer's frame to what goes out next. Our own messages always
/// encode; one that did not would only be missing, and its caller time out.
fn append(out: &mut Vec<u8>, message: &ServerMessage) {
    let _ = wire::encode_into(out, message);
}

fn frame(message: &ServerMessage) -> Vec<u8> {
    // Our own messages always encode; an empty frame would only close the peer.
    wire::encode(message).unwrap_or_default()
}

/// Serves one connection. `certified`: the proxy presented a client
/// certificate that the configured CA verified (it then needs no token).
async fn connection<S>(stream: S, certified: bool, app: Arc<App>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let refuse = |code: ErrorCode, message: String| frame(&ServerMessage::Error { code, message });

    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut reader)).await;
    let answer = match hello {
        Ok(Ok(ClientMessage::Hello { versions, token, client: _ })) => {
            if !versions.contains(&wire::VERSION) {
                Err(refuse(ErrorCode::UnsupportedVersion, format!("this node speaks version {}", wire::VERSION)))
            } else if !certified && !app.may_check(&token) {
                Err(refuse(
                    ErrorCode::Unauthorized,
                    "the token is not valid for checks (and no client certificate)".into(),
                ))
            } else {
                let (nodes, _) = app.leader.members();
                let members =
                    nodes.into_iter().map(|(id, addr)| Member { id, wire: addr.wire, http: addr.http }).collect();
                Ok(frame(&ServerMessage::Welcome { version: wire::VERSION, node_id: app.id, members }))
            }
        }
        Ok(Ok(_)) => Err(refuse(ErrorCode::Protocol, "the first message must be a hello".into())),
        Ok(Err(ReadError::Frame(e))) => Err(refuse(ErrorCode::Protocol, e.to_string())),
        Ok(Err(ReadError::Closed)) => return,
        Err(_) => Err(refuse(ErrorCode::Protocol, "no hello in time".into())),
    };
    match answer {
        Ok(welcome) => {
            if writer.write_all(&welcome).await.is_err() {
                return;
            }
        }
        Err(error) => {
            let _ = writer.write_all(&error).await;
            return;
        }
    }

    // One task per connection: frames are read into a buffer (a cancel-safe
    // read, so it can race the decisions), checks are decided concurrently
    // in place — most finish on their first poll, with no task spawned and
    // no thread woken — and every answer ready is written in one go.
    // Bytes the hello's reader already took in belong to the next frames.
    let mut buffer = Vec::with_capacity(WRITE_BATCH);
    buffer.extend_from_slice(reader.buffer());
    let mut reader = reader.into_inner();
    let mut deciding = FuturesUnordered::new();
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let mut closing: Option<Vec<u8>> = None;
    'serve: loop {
        // Decode every whole frame already read.
        let mut consumed = 0;
        while closing.is_none() && deciding.len() < MAX_IN_FLIGHT {
            match wire::next_frame::<ClientMessage>(&buffer[consumed..]) {
                Ok(None) => break,
                Ok(Some((len, message))) => {
                    consumed += len;
                    match message {
                        ClientMessage::Check { id, request } => {
                            let app = app.clone();
                            deciding.push(async move {
                                match app.decide(&request).await {
                                    Ok(decision) => ServerMessage::Decision { id, decision },
                                    Err(e) => ServerMessage::Refused { id, field: e.field, message: e.message },
                                }
                            });
                        }
                        ClientMessage::Ping { id } => append(&mut out, &ServerMessage::Pong { id }),
                        ClientMessage::Hello { .. } => {
                            closing = Some(refuse(ErrorCode::Protocol, "hello was already said".into()))
                        }
                    }
                }
                Err(e) => closing = Some(refuse(ErrorCode::Protocol, e.to_string())),
            }
        }
        buffer.drain(..consumed);
        // Answers of checks that are done, without waiting.
        while let Some(Some(answer)) = deciding.next().now_or_never() {
            append(&mut out, &answer);
            if out.len() >= WRITE_BATCH {
                break;
            }
        }
        if !out.is_empty() {
            // A proxy that stops reading its answers is let go: its
            // connection would otherwise hold this task and its checks.
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            out.clear();
        }
        if closing.is_some() && deciding.is_empty() {
            break;
        }
        let reading = closing.is_none() && deciding.len() < MAX_IN_FLIGHT;
        let stopping = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        let event = tokio::select! {
            read = reader.read_buf(&mut buffer), if reading => match read {
                Ok(0) | Err(_) => Event::Gone,
                Ok(_) => Event::Read,
            },
            Some(answer) = deciding.next(), if !deciding.is_empty() => Event::Answer(answer),
            _ = stopping, if closing.is_none() => Event::Stop,
        };
        match event {
            Event::Read => {}
            Event::Answer(answer) => append(&mut out, &answer),
            Event::Stop => closing = Some(refuse(ErrorCode::Unavailable, "the node is shutting down".into())),
            Event::Gone => {
                // The client is gone or done sending: finish what it asked.
                while let Some(answer) = deciding.next().await {
                    append(&mut out, &answer);
                }
                let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await;
                break 'serve;
            }
        }
    }
    if let Some(last) = closing {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&last)).await;
    }
    let _ = writer.shutdown().await;
}

/// What woke the connection's loop. One lives for one turn of the loop, so
/// the size of an answer in it costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Event {
    Read,
    Answer(ServerMessage),
    Stop,
    Gone,
}

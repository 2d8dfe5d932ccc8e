//! The binary check protocol between edge proxies (`tollgate-client`) and a
//! node's wire listener.
//!
//! A frame is a 4-byte big-endian length of what follows, a version byte, and
//! a bincode 2 payload. Many checks share one connection: each carries an id,
//! and answers come back in any order with the id of their question. The
//! client opens with [`ClientMessage::Hello`] (the versions it speaks and its
//! token); the node answers [`ServerMessage::Welcome`] (the version chosen and
//! the cluster's members, for discovery) or an error, and closes.
//!
//! Decoding is total and allocation-bounded: a length over [`MAX_FRAME`] is
//! refused before anything is read into memory, and bincode is limited to the
//! frame, so no input can make it allocate more or panic.

use serde::{Deserialize, Serialize};

use crate::check::{CheckRequest, Decision};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// The largest frame accepted, length prefix excluded.
pub const MAX_FRAME: usize = 1 << 20;

/// What a client sends: [`ClientMessage::Hello`] once, first; then any number
/// of checks and pings, each with an id the client chooses (unique among its
/// requests in flight on the connection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message on a connection.
    Hello {
        /// Versions the client speaks; the node picks the highest it shares.
        versions: Vec<u8>,
        /// A token with the `check` scope (or the bootstrap admin token).
        token: String,
        /// Free text naming the client, for logs.
        client: String,
    },
    /// One request to decide; answered by [`ServerMessage::Decision`] or
    /// [`ServerMessage::Refused`] with the same id.
    Check {
        /// Chosen by the client; the answer carries it back.
        id: u64,
        /// The request, as for `POST /v1/check`.
        request: CheckRequest,
    },
    /// A liveness probe; answered by [`ServerMessage::Pong`] with the same id.
    Ping {
        /// Chosen by the client; the pong carries it back.
        id: u64,
    },
}

/// What a node sends: [`ServerMessage::Welcome`] or [`ServerMessage::Error`]
/// to a hello; then one answer per check or ping, in any order;
/// [`ServerMessage::Error`] before it closes the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The hello is accepted: checks may follow.
    Welcome {
        /// The protocol version the connection speaks from now on.
        version: u8,
        /// The Raft node id of the node answering.
        node_id: u64,
        /// Every member of the cluster (voters and learners), for discovery.
        members: Vec<Member>,
    },
    /// The decision on a check.
    Decision {
        /// The id of the check decided.
        id: u64,
        /// The decision, as `POST /v1/check` returns it.
        decision: Decision,
    },
    /// A check the node could not decide (a malformed request: the field is named).
    Refused {
        /// The id of the check refused.
        id: u64,
        /// The field at fault, as a path into the request (`path`,
        /// `headers.x-api-key`, `query._method`).
        field: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// The answer to [`ClientMessage::Ping`].
    Pong {
        /// The id of the ping.
        id: u64,
    },
    /// The connection is being closed for this reason.
    Error {
        /// The kind of error, for a program to act on.
        code: ErrorCode,
        /// What went wrong, for logs.
        message: String,
    },
}

/// A member as clients need it: where its wire listener is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's Raft node id.
    pub id: u64,
    /// `host:port` of its binary check listener (this protocol); empty if it
    /// has none.
    pub wire: String,
    /// `host:port` of its HTTP listener (check, forward-auth, admin API).
    pub http: String,
}

/// Why a node refuses a hello or closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Not a frame of this protocol, or not the message expected.
    Protocol,
    /// The hello offered no version this node speaks ([`VERSION`]).
    UnsupportedVersion,
    /// The hello's token is not valid for checks (no `check` scope, and not the
    /// bootstrap admin token), and no client certificate authenticated the proxy.
    Unauthorized,
    /// The node is shutting down or overloaded; try another.
    Unavailable,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix (or an encoded message) over [`MAX_FRAME`] bytes; the
    /// length claimed.
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A frame of zero bytes, without even its version byte.
    #[error("empty frame")]
    Empty,
    /// A frame of another protocol version than [`VERSION`]; the version it has.
    #[error("protocol version {0} is not spoken here")]
    Version(u8),
    /// The payload is not a bincode 2 encoding of the expected message (or has
    /// bytes after it); also an encoding failure. The cause, for logs.
    #[error("undecodable frame: {0}")]
    Decode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message as a whole frame (length prefix included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    // Most frames (a check, a decision with its identity token) fit in 1 KiB.
    let mut out = Vec::with_capacity(1024);
    encode_into(&mut out, message)?;
    Ok(out)
}

/// Appends a message's whole frame to `out` (nothing, on error).
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, message: &T) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, VERSION]);
    let written = bincode::serde::encode_into_std_write(message, &mut *out, config());
    let len = out.len() - start - 4;
    if let Err(e) = written {
        out.truncate(start);
        return Err(FrameError::Decode(e.to_string()));
    }
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// [`ClientMessage`] with borrowed fields: the same variants in the same
/// order, so it encodes to the same bytes without copying the request.
#[derive(Serialize)]
enum ClientMessageRef<'a> {
    #[allow(dead_code)]
    Hello {
        versions: &'a [u8],
        token: &'a str,
        client: &'a str,
    },
    Check {
        id: u64,
        request: &'a CheckRequest,
    },
}

/// The frame of `ClientMessage::Check { id, request }`, without cloning the request.
pub fn encode_check(id: u64, request: &CheckRequest) -> Result<Vec<u8>, FrameError> {
    encode(&ClientMessageRef::Check { id, request })
}

/// [`encode_check`], appended to `out`.
pub fn encode_check_into(out: &mut Vec<u8>, id: u64, request: &CheckRequest) -> Result<(), FrameError> {
    encode_into(out, &ClientMessageRef::Check { id, request })
}

/// The first whole frame in `bytes`: its length with the prefix, and the
/// message; None until all of it has arrived.
pub fn next_frame<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<(usize, T)>, FrameError> {
    let Some(prefix) = bytes.get(..4) else { return Ok(None) };
    let len = frame_len([prefix[0], prefix[1], prefix[2], prefix[3]])?;
    match bytes.get(4..4 + len) {
        Some(frame) => Ok(Some((4 + len, decode(frame)?))),
        None => Ok(None),
    }
}

/// Checks a length prefix before the frame is read.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_FRAME => Err(FrameError::TooLarge(n)),
        n => Ok(n),
    }
}

/// Decodes a frame body (version byte and payload, without the length prefix).
pub fn decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Decode(format!("{} bytes after the message", payload.len() - used)));
    }
    Ok(value)
}

/// Decodes a whole buffer of frames (what a fuzzer or a test feeds in):
/// every complete frame, then the error that stopped it, if any.
pub fn decode_stream<T: serde::de::DeserializeOwned>(mut bytes: &[u8]) -> (Vec<T>, Option<FrameError>) {
    let mut messages = Vec::new();
    while bytes.len() >= 4 {
        let prefix = [bytes[0], bytes[1], bytes[2], bytes[3]];
        let len = match frame_len(prefix) {
            Ok(len) => len,
            Err(e) => return (messages, Some(e)),
        };
        let Some(frame) = bytes.get(4..4 + len) else { return (messages, None) };
        match decode(frame) {
            Ok(m) => messages.push(m),
            Err(e) => return (messages, Some(e)),
        }
        bytes = &bytes[4 + len..];
    }
    (messages, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_frames_concatenate() {
        let hello = ClientMessage::Hello { versions: vec![1], token: "t".into(), client: "test".into() };
        let check = ClientMessage::Check {
            id: 7,
            request: CheckRequest {
                api: "a".into(),
                stage: "s".into(),
                method: "GET".into(),
                path: "/".into(),
                ..Default::default()
            },
        };
        let mut bytes = encode(&hello).unwrap();
        bytes.extend(encode(&check).unwrap());
        // The borrowed encoding of a check is byte for byte the owned one.
        if let ClientMessage::Check { id, request } = &check {
            let mut r = request.clone();
            r.headers.insert("x-api-key".into(), "k".into());
            let owned = ClientMessage::Check { id: *id, request: r.clone() };
            assert_eq!(encode_check(*id, &r).unwrap(), encode(&owned).unwrap());
        }
        let (decoded, err) = decode_stream::<ClientMessage>(&bytes);
        assert_eq!((decoded, err), (vec![hello, check], None));
    }

    #[test]
    fn bad_frames_are_refused_not_panicked_on() {
        assert_eq!(frame_len([0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLarge(u32::MAX as usize)));
        assert_eq!(frame_len([0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(decode::<ClientMessage>(&[9, 0]), Err(FrameError::Version(9)));
        assert!(matches!(decode::<ClientMessage>(&[VERSION, 200, 1, 2]), Err(FrameError::Decode(_))));
        // A string claiming 2^60 bytes inside a small frame: refused, nothing allocated.
        let mut frame = vec![VERSION, 0];
        frame.extend([0xff, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode::<ClientMessage>(&frame).is_err());
        // Pseudo-random garbage of many lengths never panics.
        use rand::{RngCore as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        for len in 0..2000 {
            let mut bytes = vec![0u8; len % 300];
            rng.fill_bytes(&mut bytes);
            let _ = decode_stream::<ClientMessage>(&bytes);
            let _ = decode::<ServerMessage>(&bytes);
        }
    }
}

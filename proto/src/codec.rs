//! bincode 2 (serde mode) encoding shared by the log store, the state machine,
//! snapshots and the peer network.
//!
//! Decoding is bounded: a length prefix that claims more than [`MAX_DECODE_BYTES`]
//! is refused before anything is allocated for it.

use serde::{de::DeserializeOwned, Serialize};

/// The largest value we ever decode: a snapshot of a large model fits well
/// inside it, a corrupt or hostile length prefix does not.
pub const MAX_DECODE_BYTES: usize = 1 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, _read) = bincode::serde::decode_from_slice(bytes, config())?;
    Ok(value)
}

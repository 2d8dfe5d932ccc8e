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
    /// bincode cannot write the value: it uses a serde feature bincode does
    /// not support (such as a sequence or map of unknown length).
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not an encoding of the expected type: truncated, corrupt,
    /// from another version, or claiming more than [`MAX_DECODE_BYTES`].
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
}

/// Encodes `value` as bincode 2 (standard configuration, serde mode,
/// variable-length integers).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes a value of type `T` from the start of `bytes` (trailing bytes are
/// ignored).
///
/// # Errors
///
/// [`CodecError::Decode`] when `bytes` is not a valid encoding of `T` or
/// claims more than [`MAX_DECODE_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, _read) = bincode::serde::decode_from_slice(bytes, config())?;
    Ok(value)
}

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
    /// The value ended before the bytes did: `read` of `len` bytes make the
    /// value, the rest is not part of any. Refused, so that one value has
    /// one encoding (a frame or entry with something appended is not the
    /// same frame or entry).
    #[error("decode: {} bytes after the value (of {len})", len - read)]
    Trailing {
        /// Bytes the value took.
        read: usize,
        /// Bytes given.
        len: usize,
    },
}

/// Encodes `value` as bincode 2 (standard configuration, serde mode,
/// variable-length integers).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes a value of type `T` from `bytes`, all of them.
///
/// # Errors
///
/// [`CodecError::Decode`] when `bytes` is not a valid encoding of `T` or
/// claims more than [`MAX_DECODE_BYTES`]; [`CodecError::Trailing`] when
/// bytes are left after the value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())?;
    if read != bytes.len() {
        return Err(CodecError::Trailing { read, len: bytes.len() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_has_one_encoding_and_nothing_may_follow_it() {
        let bytes = encode(&("key", 7u64)).expect("encode");
        assert_eq!(decode::<(String, u64)>(&bytes).expect("decode"), ("key".to_string(), 7));
        for extra in [&[0u8][..], &[1, 2, 3], &bytes] {
            let longer = [bytes.as_slice(), extra].concat();
            let err = decode::<(String, u64)>(&longer).expect_err("trailing bytes");
            assert!(matches!(err, CodecError::Trailing { read, len } if read == bytes.len() && len == longer.len()));
        }
        assert!(matches!(decode::<(String, u64)>(&bytes[..bytes.len() - 1]), Err(CodecError::Decode(_))));
    }
}

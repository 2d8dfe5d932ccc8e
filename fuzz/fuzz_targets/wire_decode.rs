//! Any bytes a client or a node might send: decoding must return, never panic,
//! and never allocate beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proto::wire::{self, ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_stream::<ClientMessage>(data);
    let _ = wire::decode::<ClientMessage>(data);
    let _ = wire::decode::<ServerMessage>(data);
});

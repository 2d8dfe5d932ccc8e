//! Tollgate's shared vocabulary: the replicated model, the commands that travel
//! through the Raft log, and the codec that frames them.
//!
//! # Layout
//!
//! - [`model`]: what an operator configures — APIs with stages and routes, usage
//!   plans, API keys, policies, authorizers and admin tokens. The same types are
//!   stored in the state machine and shown (through views) by the admin API.
//! - [`validate`]: the rules a model value must satisfy on its own; every
//!   failure names the field and says how to fix it.
//! - [`canonical`]: the one canonical form of a request's path and client
//!   address, which every check decides on (and route patterns are written in).
//! - [`command`]: the payload of a Raft log entry and the answer the state
//!   machine gives for it. Business rejections (unknown id, conflict) travel in
//!   the answer, never as storage errors.
//! - [`metering`]: the replicated quota ledger (grants and consumption per
//!   key, plan and period) that keeps quotas exact across nodes.
//! - [`jwk`]: the key material of a JSON Web Key, decoded (base64url, RFC
//!   7518 §6) and size-checked once, for validation and for the verifier.
//! - [`check`]: the check — what an edge proxy asks about one request and
//!   the decision it gets back; `POST /v1/check`, forward-auth and the
//!   binary protocol are three encodings of these two types.
//! - [`usage`]: quota usage as the admin API reports it, and the change an
//!   operator makes to it.
//! - [`wire`]: the binary check protocol between `tollgate-client` and a
//!   node's wire listener (length-prefixed, versioned bincode frames).
//! - [`codec`]: bincode 2 encoding used on disk and between peers.
//!
//! This crate never does I/O and never depends on tokio: the node, the client
//! and tools can all link it.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod check;
pub mod codec;
pub mod command;
pub mod jwk;
pub mod metering;
pub mod model;
pub mod usage;
pub mod validate;
pub mod wire;

pub use command::{Command, CommandResult, Proposal, Rejection, RejectionKind};
pub use validate::FieldError;

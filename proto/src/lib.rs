//! Tollgate's shared vocabulary: the replicated model and the Raft commands
//! that change it, the quota ledger, the check a proxy asks and its decision,
//! and the two encodings they travel in (the peers' bincode codec and the
//! clients' framed wire protocol). The node, the client and tools all link it.
//!
//! # Layout
//!
//! - [`model`]: what an operator configures — APIs with stages and routes, usage
//!   plans, API keys, policies, authorizers and admin tokens. The same types are
//!   stored in the state machine and shown (through views) by the admin API.
//! - [`descriptors`]: how a request's descriptor finds its limit in a rate
//!   limit domain (envoyproxy/ratelimit's rules), and the count it is counted in.
//! - [`validate`]: the rules a model value must satisfy on its own; every
//!   failure is a [`FieldError`] that names the field and says how to fix it.
//! - [`canonical`]: the one canonical form of a request's path and client
//!   address (RFC 3986 dot segments and escapes; IPv4-mapped IPv6 as IPv4),
//!   which every check decides on and route patterns are written in.
//! - [`jwk`]: the key material of a JSON Web Key, decoded (base64url, RFC
//!   7518 §6) and size-checked once, for validation and for the verifier.
//! - [`command`]: the payload of a Raft log entry ([`Proposal`], [`Command`])
//!   and the answer the state machine gives for it ([`CommandResult`]).
//!   Business rejections (unknown id, conflict) travel in the answer as a
//!   [`Rejection`], never as storage errors.
//! - [`audit`]: the audit trail of admin changes (who, from where, what
//!   changed), recorded by the state machine with the change itself.
//! - [`metering`]: the replicated quota ledger (grants and consumption per
//!   key, plan and period) that keeps quotas exact across nodes.
//! - [`usage`]: quota usage as the admin API reports it (GetUsage), and the
//!   change an operator makes to it (UpdateUsage).
//! - [`check`]: the check — what an edge proxy asks about one request and
//!   the decision it gets back; `POST /v1/check`, forward-auth and the
//!   binary protocol are three encodings of these two types.
//! - [`ratelimit`]: a descriptor rate limit check (`ShouldRateLimit`) and
//!   its answer; Envoy's gRPC rate limit service and `POST /v1/ratelimit` are
//!   two encodings of these types.
//! - [`wire`]: the binary check protocol between `tollgate-client` and a
//!   node's wire listener (length-prefixed, versioned bincode frames).
//! - [`codec`]: bincode 2 encoding used on disk (log, state, snapshots) and
//!   between peers, with bounded decoding.
//!
//! This crate never does I/O and never depends on tokio: the node, the client
//! and tools can all link it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod canonical;
pub mod check;
pub mod codec;
pub mod command;
pub mod descriptors;
pub mod jwk;
pub mod metering;
pub mod model;
pub mod ratelimit;
pub mod usage;
pub mod validate;
pub mod wire;

pub use command::{Command, CommandResult, Proposal, Rejection, RejectionKind};
pub use validate::FieldError;

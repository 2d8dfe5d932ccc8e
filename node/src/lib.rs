//! tollgate-node: one member of a Tollgate cluster, and the `tollgate` binary.
//!
//! # Layout
//!
//! Data flows one way: listeners → (check pipeline, later) → cluster → state.
//!
//! - [`store`]: the storage trait of our own (`Kv`: get/put/batch/scan/flush)
//!   and its sled implementation. Nothing else names sled.
//! - [`cluster`]: openraft's type configuration, the log store and state
//!   machine on `Kv`, and the peer network (client in `network`, server routes
//!   in `peer`). Every durable change is a Raft log entry.
//! - [`state`]: the replicated model and the deterministic rules for applying a
//!   command to it. No I/O.
//! - [`app`]: a running node's handles, and how writes, read barriers and
//!   membership changes reach the leader.
//! - [`http`]: the axum listener — admin API, health, metrics, OpenAPI.
//! - [`disk`]: the free-space guard that refuses writes before the disk is
//!   full (507), cluster-wide.
//! - [`server`]: start a node from its [`config`] and stop it.
//! - [`cli`] and [`dev`]: the `tollgate` command line and `tollgate dev`.
//! - [`clock`]: where time comes from, and quota periods (below gateway and metering).
//! - [`secret`]: generated secrets and ids, digests, constant-time comparison.
//! - [`logging`]: log output whose failures are counted, never fatal.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod disk;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod metering;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod wire;

//! tollgate-node: one member of a Tollgate cluster, and the `tollgate` binary.
//!
//! # Layout
//!
//! Dependencies point one way, along the path of a request:
//!
//! ```text
//! listeners (http, wire, grpc, server) -> app -> gateway -> cluster -> metering -> state -> store
//! ```
//!
//! A lower layer gets what it needs through a handle passed down, never by
//! importing a layer above. The metering calls the cluster at run time
//! through its own port (`metering::Authority`), which `cluster::authority`
//! implements: so in imports the cluster sits above the metering. A test
//! (`layers.rs`) fails on any import cycle between these modules and on any
//! import up the path.
//!
//! - [`http`], [`wire`], [`grpc`]: the listeners — the axum router (check,
//!   forward-auth, `/v1/ratelimit`, admin API, health, metrics, OpenAPI),
//!   the binary check protocol for `tollgate-client`, and Envoy's gRPC
//!   ext_authz and rate limit service. [`server`] binds the listeners of a
//!   node's [`config`] (grouped by subsystem), starts its tasks and stops it
//!   within a bound; `server::start` also runs nodes inside a test process.
//! - [`app`]: a running node's handles, shared by the listeners — a plain
//!   bag (the leader handle, the gateway, the published model, metrics) —
//!   and `App::open`, the one place they are made and wired together.
//! - [`gateway`]: the check pipeline, step by step in the order a request
//!   meets them, and the descriptor rate limit check (`gateway::ratelimit`);
//!   reads the published model, never writes to the log.
//! - [`cluster`]: consensus — openraft's type configuration, the log store
//!   and state machine on `Kv`, the peer network (client in `network`, server
//!   routes in `peer`), leader routing and its one error type (`leader`), the
//!   metering's authority (`authority`), pre-vote elections and the
//!   cluster-wide free-space guard (`disk`, 507 before the disk is full).
//!   Every durable change is a Raft log entry.
//! - [`metering`]: exact quotas (leases on the replicated ledger) and
//!   cluster-wide throttles, decided from local memory; split by role
//!   (`lease`, `borrow`, `lender`, `authority`, `limits`).
//! - [`state`]: the replicated model, the deterministic rules for applying a
//!   command to it, and the read model every reader loads
//!   (`state::published`). No I/O.
//! - [`store`]: the storage trait of our own (`Kv`: get/put/batch/scan/flush)
//!   and its sled implementation. Nothing else names sled.
//!
//! Beside the path: [`metrics`] (Prometheus, bounded labels), [`tls`]
//! (rustls listeners and `tollgate certs`), [`secret`] (generated secrets and
//! ids, digests, constant-time comparison), [`connections`] (the cap on
//! each listener's open connections), [`clock`] (where time comes from,
//! and quota periods), [`logging`] (log output whose
//! failures are counted, never fatal), [`cli`] and [`dev`] (the
//! `tollgate` command line and `tollgate dev`), and [`launch`] (the one way
//! node processes are started and stopped: by `tollgate dev`, the test
//! harness and the bench).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod dev;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod launch;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod metering;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod wire;

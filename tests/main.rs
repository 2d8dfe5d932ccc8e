//! Tollgate's integration tests: real `tollgate` processes driven from
//! outside, all in one test binary (`cargo test -p tollgate-node --test
//! integration`), so CI compiles and links the harness and the tests once.
//! A module name filters: `cargo test -p tollgate-node --test integration
//! quotas::` runs the quota tests alone.
//!
//! # Layout
//!
//! `harness` starts, kills, restarts and partitions clusters of real node
//! processes on loopback; every test goes through it. `history` (the offline
//! checker of a history recorded under faults, unit-tested here) and `chaos`
//! (the seeded fault injector that records such a history) live in the
//! harness folder because `tollgate-bench` includes all three by `#[path]`
//! under these same names.
//!
//! `cluster`: replication, leader failure, full restarts, snapshot catch-up,
//! membership, partitions and a nearly full disk. `quotas`: exact quotas and
//! throttles across three nodes under kill -9, partitions, limit changes,
//! period rollover and the chaos run. `admin_api`: the admin API's bad input,
//! secrets, tokens and scopes. `check_api`: the check endpoints' malformed
//! requests and spellings that try to walk around routes. `client`:
//! tollgate-client and the binary protocol. `rate_limits`: rate limit
//! domains through the admin API, and `tollgate limits import` of
//! envoyproxy/ratelimit files. `proxies`: nginx and Caddy in
//! front of a real upstream, configured from `deploy/`. `grpc`: Envoy's ext_authz over gRPC (a tonic client
//! built from envoy-types) against forward-auth's decisions. `ratelimit`:
//! Envoy's rate limit service (`ShouldRateLimit`) and `POST /v1/ratelimit`
//! on a three-node TLS cluster. `tls`: TLS on every
//! listener, mutual TLS between peers, and `tollgate dev --tls`. `openapi`:
//! the OpenAPI document a node serves, against its router. `console`: the
//! web console's files and headers, and the admin routes it reads.
//! `operator`: the audit trail of admin changes, and backups saved,
//! restored onto new nodes and checked. `metering`: the metering scenarios
//! against a real cluster's authority, on nodes run in this process (the
//! one module that does not start node processes: it needs a node's own
//! handles). `cli`: the `tollgate` command line — a subcommand for every
//! admin route of the OpenAPI document, help text everywhere, completions,
//! table/JSON/YAML output, key reroll and update, exit codes. `logs`: a
//! node's log in a file (no colour codes) and as JSON lines.
//!
//! # One process
//!
//! Every test runs in this one process, in parallel with tests of every
//! other module, so no test may change process-wide state: no
//! `std::env::set_var` (a child gets its environment through `Command::env`),
//! no current directory, no global default (a rustls provider is passed to
//! each config). Ports come from the kernel (port 0, read back from what the
//! process bound), or, for programs that cannot report a port, from
//! [`harness::free_port`] (20000 and up) or `tls::dev_base_port` (below
//! 20000), each of which hands a port out once per process.

mod admin_api;
#[path = "harness/chaos.rs"]
mod chaos;
mod check_api;
mod cli;
mod client;
mod cluster;
mod console;
mod grpc;
mod harness;
#[path = "harness/history.rs"]
mod history;
mod logs;
mod metering;
mod openapi;
mod operator;
mod proxies;
mod quotas;
mod rate_limits;
mod ratelimit;
mod tls;

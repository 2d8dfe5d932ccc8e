//! `tollgate-bench`: measurements against a real three-node cluster that this
//! tool starts itself (from the `tollgate` binary given) on loopback. Every
//! node binds port 0 and reports what it bound, so a run never collides
//! with another process over a port; a restarted node comes back on its own.
//!
//! - `writes`: admin write latency (p50/p99) and throughput, creating keys.
//! - `failover`: time from `kill -9` of the leader until the survivors agree on
//!   a new leader, and until a write succeeds again.
//! - `cold-start`: time for a node holding N keys to load its state and
//!   become ready after a restart.
//! - `check`: latency and throughput of `POST /v1/check` and of the binary
//!   protocol, against one node.
//! - `keys`: checks of keys chosen at random from many (100k by default,
//!   each with a throttle and a quota, or `--keys-plan none`) against checks
//!   of one key, on one follower, in interleaved rounds over HTTP and the
//!   binary protocol: throughput, p50, p99, their ratios (the goal: many
//!   keys at 0.8x the one-key rate or better, p99 within 2x), a first pass
//!   over every key (a cold node), and the node's counters of checks that
//!   waited for the leader around each phase.
//! - `throttle`: how close the cluster-wide admitted rate of one key stays to
//!   its throttle under demand well above it, spread over the three nodes and
//!   then on one node only.
//! - `quota`: checks of a key with a quota, through leases (the nodes' flags
//!   as given) and through the leader on every request (`--quota-max-grant 1`),
//!   each on a fresh cluster.
//! - `http`: `POST /v1/check` and forward-auth against a bare axum server
//!   (`baseline`, a process of its own started by this tool) in the same
//!   run: closed-loop throughput and the ratios (the goal: 0.7x bare axum
//!   or better), then an open loop at a fixed rate (10k/s) with latency
//!   from each request's intended send time, and the p99 ratios (the goal:
//!   within 1.3x).
//! - `rls`: Envoy's rate limit service (`ShouldRateLimit` over gRPC, a
//!   tonic client on envoy-types) against `POST /v1/check` (a throttle and a
//!   quota) on the same node, in interleaved rounds: throughput, p50, p99,
//!   the ratio (the goal: RLS at 1.0x the HTTP check or better); then 100k
//!   distinct `remote_address` values against a per-minute limit: the rate,
//!   and any value refused wrongly (the run fails on one).
//! - `chaos`: a history of checks and admin writes recorded while a seeded
//!   injector kills -9, partitions and clock-shifts nodes, then checked
//!   offline (invariants Q and U, no acknowledged write lost, reads see
//!   acknowledged writes); exits non-zero on any violation. It runs its
//!   cluster through the test harness (`tests/harness`, for its partitioning
//!   proxies), which sets the nodes' flags and data folder itself: only
//!   `--bin` applies, and `--node-flags` or `--data-dir` is refused.
//!
//! Layout: `main` parses the arguments and hands each tool its run —
//! `writes` (writes, failover, cold start), `check`, `keys`, `http`, `rls`,
//! `throttle`, `quota`, `chaos_run` — over `cluster` (the bench's cluster
//! on port 0, on the node crate's launcher), `fixture` (the API, plan and
//! key checked against, one check), `load` (closed-loop workers, the
//! open-loop schedule, the report line) and `baseline` (the bare axum
//! server, run as `tollgate-bench baseline-server`).
//!
//! The binary holds the node too (it links `tollgate-node`): `tollgate-bench
//! serve ...` is `tollgate serve ...`, so `--bin` may name `tollgate-bench`
//! itself. The smoke test (`benches/tests/http.rs`) does, since `cargo test
//! -p tollgate-bench` builds no `tollgate` binary; real figures come from
//! `target/release/tollgate`, the default.
//!
//! Speed figures belong here, never in tests. Example:
//! `cargo run --release -p tollgate-bench -- --bin target/release/tollgate writes --count 5000`

// The integration tests' cluster harness, history checker and chaos run: one
// launcher and one checker for `cargo test` and for `tollgate-bench chaos`.
#[path = "../../tests/harness/chaos.rs"]
mod chaos;
#[path = "../../tests/harness/mod.rs"]
mod harness;
#[path = "../../tests/harness/history.rs"]
mod history;

// The bench's own parts: its cluster, what its runs share, then one module
// per tool.
mod baseline;
mod chaos_run;
mod check;
mod cluster;
mod fixture;
mod http;
mod keys;
mod load;
mod quota;
mod rls;
mod throttle;
mod writes;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::cluster::Cluster;

#[derive(Parser)]
struct Args {
    /// The tollgate binary to run (build with --release for real figures).
    #[arg(long, default_value = "target/release/tollgate")]
    bin: PathBuf,
    /// Extra flags for every node (e.g. "--election-min-ms 150 --election-max-ms 300");
    /// not with `chaos`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    node_flags: String,
    /// Keep the nodes' data and logs in this folder, new or empty (default: a
    /// temporary one); not with `chaos`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    Writes {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Send every write to a follower (forwarded) instead of the leader.
        #[arg(long)]
        via_follower: bool,
    },
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// POST /v1/check against one node: latency and throughput of the check path.
    Check {
        #[arg(long, default_value_t = 50_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Run only one path: `http` or `wire` (default: both).
        #[arg(long)]
        only: Option<String>,
        /// The client's connections to the node (its default is 2).
        #[arg(long, default_value_t = 2)]
        connections: usize,
    },
    /// Checks over many keys at random against checks of one key, on one
    /// follower, interleaved in rounds: throughput, p50, p99, the ratios,
    /// and how many checks waited for the leader.
    Keys {
        /// How many keys to create (the one key is one of them).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// The keys' plan: `limits` (a throttle and a quota that never
        /// refuse) or `none` (the key lookup alone).
        #[arg(long, value_enum, default_value_t = keys::KeysPlan::Limits)]
        keys_plan: keys::KeysPlan,
        /// Seconds of each phase.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// End each phase after this many checks, if that comes first.
        #[arg(long)]
        count: Option<usize>,
        /// Callers checking at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Keys created at once (admin writes through the leader).
        #[arg(long, default_value_t = 64)]
        create_concurrency: usize,
        /// Phases of each kind (one key, many keys) per path; the summary
        /// takes their medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Run only one path: `http` or `wire` (default: both).
        #[arg(long)]
        only: Option<String>,
        /// The binary client's connections to the node.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Skip the first pass over every key (minutes at 100k keys while
        /// each key's first check waits for the leader).
        #[arg(long)]
        no_first_pass: bool,
    },
    ColdStart {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// `POST /v1/check` and forward-auth against a bare axum server started
    /// beside the cluster: closed-loop throughput, open-loop latency at a
    /// fixed rate, in interleaved rounds; the ratios against their goals.
    Http {
        /// Nodes in the cluster: 3, or 1 (then the checks go to the leader).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Seconds of each phase (closed and open loop alike).
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Phases of each target in each loop; the summary takes their medians.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Closed loop: callers sending at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: requests per second (0: no open loop).
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Open loop: at most this many requests in flight (connections).
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// The servers on core 0 and the load on core 1 (`taskset`).
        #[arg(long)]
        pin: bool,
    },
    /// Envoy's ShouldRateLimit over gRPC against POST /v1/check on the same
    /// node, in interleaved rounds, and the ratio; then many distinct
    /// descriptor values against a per-minute limit.
    Rls {
        /// Nodes in the cluster: 3, or 1 (then the calls go to the leader).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Seconds of each phase.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Phases of each target; the summary takes their medians.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Callers sending at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections of the gRPC client.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Distinct remote_address values of the high-cardinality pass (0: none).
        #[arg(long, default_value_t = 100_000)]
        values: usize,
        /// Each of those values' limit per minute.
        #[arg(long, default_value_t = 10)]
        hc_limit: u32,
        /// Passes over those values, each from the start of a minute window.
        #[arg(long, default_value_t = 3)]
        hc_passes: usize,
    },
    /// The bare axum server of `http`, which starts it: binds
    /// 127.0.0.1:0, prints the address, serves until killed.
    #[command(hide = true)]
    BaselineServer {
        /// About how long the answer to a check is (the node's).
        #[arg(long, default_value_t = 600)]
        answer_bytes: usize,
    },
    /// Admitted rate of one throttled key under demand above its rate: over
    /// the three nodes round-robin, then all on one follower.
    Throttle {
        /// The plan's `throttle.rate_per_sec`.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// The plan's `throttle.burst`.
        #[arg(long, default_value_t = 20)]
        burst: u32,
        /// Demand, as a multiple of the rate.
        #[arg(long, default_value_t = 3.0)]
        demand: f64,
        /// Seconds of demand per run.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Callers sending at once; each is paced to its share of the demand.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Checks of a key with a quota, round-robin over the three nodes: with
    /// leases (the node flags given), then asking the leader for every unit
    /// (`--quota-max-grant 1`), each on a fresh cluster.
    Quota {
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Checks and admin writes under random kill -9, partitions and clock
    /// shifts for `secs`, then the history checked offline; exits non-zero
    /// on any violation.
    Chaos {
        #[arg(long, default_value_t = 120)]
        secs: u64,
        /// Fixes the fault schedule (and the clients' choices).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Each quota key's daily quota; a new key is the busy one every 10 s.
        #[arg(long, default_value_t = 2_000)]
        quota: u64,
        /// `--quota-max-grant` for the nodes.
        #[arg(long, default_value_t = 50)]
        max_grant: u64,
        #[arg(long, default_value_t = 8)]
        check_workers: u32,
        #[arg(long, default_value_t = 2)]
        admin_workers: u32,
    },
}

fn main() -> ExitCode {
    // `tollgate-bench serve ...` is the node (see the crate docs).
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        return tollgate_node::cli::main();
    }
    let args = Args::parse();
    // The node's runtime (`tollgate_node::cli`): a worker per core, which
    // the baseline server gets too.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let What::BaselineServer { answer_bytes } = args.what {
        return baseline::serve(answer_bytes).await;
    }
    if let What::Http { nodes, secs, rounds, concurrency, rate, connections, pin } = args.what {
        let cluster = Cluster::start_nodes(args.bin.clone(), &args.node_flags, args.data_dir.clone(), nodes).await?;
        let run = http::HttpRun { secs, rounds, concurrency, rate, connections, pin };
        return http::run(cluster, run).await;
    }
    if let What::Rls { nodes, secs, rounds, concurrency, connections, values, hc_limit, hc_passes } = args.what {
        let cluster = Cluster::start_nodes(args.bin.clone(), &args.node_flags, args.data_dir.clone(), nodes).await?;
        let run = rls::RlsRun { secs, rounds, concurrency, connections, values, hc_limit, hc_passes };
        return rls::run(cluster, run).await;
    }
    if let What::Chaos { secs, seed, quota, max_grant, check_workers, admin_workers } = args.what {
        // The harness decides both for the nodes it starts; say so rather
        // than run without what was asked for.
        if !args.node_flags.trim().is_empty() {
            bail!(
                "--node-flags does not apply to chaos: its cluster is the test harness's (tests/harness), which \
                 sets the nodes' flags itself; use chaos's own --max-grant, or run another tool"
            );
        }
        if let Some(dir) = &args.data_dir {
            bail!(
                "--data-dir {} does not apply to chaos: the test harness keeps its nodes' data in a temporary \
                 folder of its own, removed when the run ends",
                dir.display()
            );
        }
        let config = chaos::ChaosConfig {
            seed,
            run: Duration::from_secs(secs),
            key_slice: Duration::from_secs(10),
            quota,
            check_workers,
            admin_workers,
            lease_ms: 8_000,
            max_grant,
            bin: args.bin.clone(),
        };
        return chaos_run::run(&config).await;
    }
    let cluster = Cluster::start(args.bin.clone(), &args.node_flags, args.data_dir.clone()).await?;
    match args.what {
        What::Writes { count, concurrency, via_follower } => {
            writes::writes(cluster, count, concurrency, via_follower).await
        }
        What::Failover { rounds } => writes::failover(cluster, rounds).await,
        What::ColdStart { keys, concurrency } => writes::cold_start(cluster, keys, concurrency).await,
        What::Check { count, concurrency, only, connections } => {
            check::run(cluster, count, concurrency, only, connections).await
        }
        What::Keys {
            keys,
            keys_plan,
            secs,
            count,
            concurrency,
            create_concurrency,
            rounds,
            only,
            connections,
            no_first_pass,
        } => {
            let run = keys::KeysRun {
                keys,
                plan: keys_plan,
                secs,
                count,
                concurrency,
                create_concurrency,
                rounds,
                only,
                connections,
                first_pass: !no_first_pass,
            };
            keys::run(cluster, run).await
        }
        What::Throttle { rate, burst, demand, secs, concurrency } => {
            throttle::run(cluster, rate, burst, demand, secs, concurrency).await
        }
        What::Quota { count, concurrency } => quota::run(cluster, &args, count, concurrency).await,
        What::Chaos { .. } | What::Http { .. } | What::Rls { .. } | What::BaselineServer { .. } => {
            unreachable!("handled before the cluster starts")
        }
    }
}

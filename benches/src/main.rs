//! `tollgate-bench`: measurements against a real three-node cluster that this
//! tool starts itself (from the `tollgate` binary given) on loopback.
//!
//! - `writes`: admin write latency (p50/p99) and throughput, creating keys.
//! - `failover`: time from `kill -9` of the leader until the survivors agree on
//!   a new leader, and until a write succeeds again.
//! - `cold-start`: time for a node holding N keys to load its state and
//!   become ready after a restart.
//! - `check`: latency and throughput of `POST /v1/check` and of the binary
//!   protocol, against one node.
//! - `throttle`: how close the cluster-wide admitted rate of one key stays to
//!   its throttle under demand well above it, spread over the three nodes and
//!   then on one node only.
//! - `quota`: checks of a key with a quota, through leases (the nodes' flags
//!   as given) and through the leader on every request (`--quota-max-grant 1`),
//!   each on a fresh cluster.
//! - `chaos`: a history of checks and admin writes recorded while a seeded
//!   injector kills -9, partitions and clock-shifts nodes, then checked
//!   offline (invariants Q and U, no acknowledged write lost, reads see
//!   acknowledged writes); exits non-zero on any violation. It runs its
//!   cluster through the test harness (`tests/harness`, for its partitioning
//!   proxies), so only `--bin` applies to it.
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tollgate_client::admin::{AdminClient, ApiKeySpec, ClusterStatus, Method, UsageQuery};
use tollgate_node::launch::{Listen, NodeCommand, NodeProcess};

const TOKEN: &str = "tga_bench-token-0123456789abcdefghij";

#[derive(Parser)]
struct Args {
    /// The tollgate binary to run (build with --release for real figures).
    #[arg(long, default_value = "target/release/tollgate")]
    bin: PathBuf,
    /// Extra flags for every node (e.g. "--election-min-ms 150 --election-max-ms 300").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    node_flags: String,
    /// Keep the nodes' data and logs in this folder (default: a temporary one).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First port; the cluster uses P..P+2 (HTTP) and P+1000..P+1002 (peer).
    #[arg(long, default_value_t = 38081)]
    base_port: u16,
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
    ColdStart {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
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

/// Where the nodes keep data: a temporary folder, or one the user keeps.
enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Workdir {
    fn path(&self) -> &std::path::Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Kept(p) => p,
        }
    }
}

/// Three nodes on fixed ports (base P: HTTP P.., peer P+1000.., wire
/// P+2000..), all named in `--peers` from the start, with the Raft timings
/// the node flags give (not the test harness's), so failover figures are
/// the real ones.
struct Cluster {
    bin: PathBuf,
    flags: Vec<String>,
    base: u16,
    dir: Workdir,
    /// Node id - 1 -> its process while it runs; killed when dropped.
    nodes: Vec<Option<NodeProcess>>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(bin: PathBuf, flags: &str, base: u16, keep: Option<PathBuf>) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            bin,
            flags: flags.split_whitespace().map(str::to_string).collect(),
            base,
            dir: match keep {
                Some(p) => Workdir::Kept(p),
                None => Workdir::Temp(tempfile::tempdir()?),
            },
            nodes: vec![None, None, None],
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(256).build()?,
        };
        for id in 1..=3 {
            c.spawn(id)?;
        }
        for id in 1..=3 {
            c.wait_ready(id).await?;
        }
        Ok(c)
    }

    fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.base + id as u16 - 1)
    }

    /// Node `id`'s fixed ports.
    fn listen(&self, id: u64) -> Listen {
        let at = self.base + id as u16 - 1;
        Listen::loopback(at, at + 1000, at + 2000)
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let peers: Vec<String> = (1..=3u64)
            .map(|i| {
                let at = self.listen(i);
                format!("{i}={}/{}/{}", at.http, at.peer, at.wire)
            })
            .collect();
        let mut command = NodeCommand::new(&self.bin, self.dir.path().join(format!("node{id}"))).id(id);
        command.listen = Some(self.listen(id));
        command.peers = Some(peers.join(","));
        command.flags = self.flags.iter().map(Into::into).collect();
        command.admin_token = Some(TOKEN.into());
        // As in production: peers authenticate, and identity tokens are signed.
        command.cluster_token = Some("bench-cluster-token".into());
        // A bench stopped by a signal leaves no nodes behind on its ports.
        self.nodes[id as usize - 1] = Some(command.spawn_with(harness::die_with_parent)?);
        Ok(())
    }

    fn kill(&mut self, id: u64) {
        // Dropping the process kills it.
        self.nodes[id as usize - 1] = None;
    }

    fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].is_some()
    }

    /// Waits (at most 120 s) until node `id` is ready; how long that took.
    async fn wait_ready(&mut self, id: u64) -> anyhow::Result<Duration> {
        let url = self.url(id);
        let node = self.nodes[id as usize - 1].as_mut().with_context(|| format!("node {id} is not running"))?;
        Ok(node.wait_ready(&self.http, &url, Instant::now() + Duration::from_secs(120)).await?)
    }

    /// The admin client of node `id` alone, on the bench's HTTP client (its
    /// pool and timeout).
    fn admin(&self, id: u64) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::with_http([self.url(id)], TOKEN, self.http.clone())?)
    }

    async fn status(&self, id: u64) -> Option<ClusterStatus> {
        self.admin(id).ok()?.cluster_status().await.ok()
    }

    /// The leader all live nodes agree on.
    async fn leader(&self) -> anyhow::Result<u64> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let mut seen = vec![];
            for id in 1..=3u64 {
                if self.is_running(id) {
                    seen.push(self.status(id).await.and_then(|s| s.leader_id));
                }
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && self.is_running(*l) {
                    return Ok(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("no agreed leader")
    }

    async fn create_key(&self, id: u64, n: usize) -> anyhow::Result<()> {
        let spec = ApiKeySpec {
            name: format!("bench key {n}"),
            description: String::new(),
            customer_id: None,
            tags: [("n".to_string(), n.to_string())].into(),
            enabled: true,
            expires_at: None,
            plan_ids: Vec::new(),
        };
        self.admin(id)?.create_key(&spec).await.context("create key")?;
        Ok(())
    }
}

/// An API, a plan without limits and a key; returns the key's secret.
async fn check_fixture(cluster: &Cluster, node: u64) -> anyhow::Result<String> {
    let (_, secret) = plan_fixture(cluster, node, json!({"id": "free", "name": "free"})).await?;
    Ok(secret)
}

/// The API `bench` (`GET /items/*` needs a key), the plan given (covering
/// it) and a key in that plan, created through node `node`; returns the
/// key's id and secret.
async fn plan_fixture(cluster: &Cluster, node: u64, mut plan: Value) -> anyhow::Result<(String, String)> {
    let admin = cluster.admin(node)?;
    let post = |path: &'static str, body: Value| {
        let admin = admin.clone();
        async move {
            let (status, answer) = admin.request(Method::POST, path, Some(&body)).await?;
            if !(200..300).contains(&status) {
                bail!("POST {path}: {status} {answer}");
            }
            anyhow::Ok(answer)
        }
    };
    post(
        "/v1/admin/apis",
        json!({"id": "bench", "name": "bench", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]}),
    )
    .await?;
    plan["api_stages"] = json!([{"api_id": "bench", "stage": "prod"}]);
    let plan_id = plan["id"].clone();
    post("/v1/admin/plans", plan).await?;
    let key = post("/v1/admin/keys", json!({"name": "bench", "plan_ids": [plan_id]})).await?;
    match (key["id"].as_str(), key["secret"].as_str()) {
        (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
        _ => bail!("no key id or secret in {key}"),
    }
}

/// The body of a `POST /v1/check` for `GET /items/1` with the key given.
fn check_body(secret: &str) -> anyhow::Result<Arc<Vec<u8>>> {
    Ok(Arc::new(serde_json::to_vec(&json!({"api": "bench", "stage": "prod", "method": "GET",
        "path": "/items/1", "source_ip": "192.0.2.1", "headers": {"x-api-key": secret}}))?))
}

/// One `POST /v1/check` to node `node`; the decision.
async fn check(cluster: &Cluster, node: u64, body: &[u8]) -> anyhow::Result<Value> {
    let resp = cluster
        .http
        .post(format!("{}/v1/check", cluster.url(node)))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    Ok(resp.json().await?)
}

/// A decision's `reason` (`allowed`, `throttled`, ...).
fn reason(decision: &Value) -> String {
    decision["reason"].as_str().unwrap_or("no reason").to_string()
}

/// Waits until every node knows the key (answers something other than a
/// lookup failure for it): a new key reaches followers a little after the
/// leader.
async fn wait_key_known(cluster: &Cluster, body: &[u8]) -> anyhow::Result<()> {
    const NOT_YET: [&str; 5] = ["unknown_api", "unknown_stage", "no_route", "unknown_key", "key_not_in_plan"];
    for node in 1..=3 {
        let start = Instant::now();
        loop {
            let decision = check(cluster, node, body).await?;
            if !NOT_YET.contains(&reason(&decision).as_str()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("node {node} still answers {decision} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Runs `op(n)` for n in 0..count with `concurrency` workers; the latency
/// histogram (µs) and the wall time.
async fn run_load<F, Fut>(count: usize, concurrency: usize, op: F) -> anyhow::Result<(Histogram<u64>, Duration)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(h);
                }
                let t = Instant::now();
                op(n).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all, start.elapsed()))
}

async fn load_checks(
    cluster: &Arc<Cluster>,
    node: u64,
    secret: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let (cluster, body) = (cluster.clone(), check_body(secret)?);
    run_load(count, concurrency, move |_| {
        let (cluster, body) = (cluster.clone(), body.clone());
        async move {
            let decision = check(&cluster, node, &body).await?;
            if decision["allowed"] != true {
                bail!("check denied: {decision}");
            }
            Ok(())
        }
    })
    .await
}

async fn load_wire(
    client: &tollgate_client::Client,
    secret: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let request = tollgate_client::CheckRequest {
        api: "bench".into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: "/items/1".into(),
        source_ip: Some("192.0.2.1".into()),
        headers: [("x-api-key".to_string(), secret.to_string())].into(),
        ..Default::default()
    };
    let client = client.clone();
    run_load(count, concurrency, move |_| {
        let (client, request) = (client.clone(), request.clone());
        async move {
            let decision = client.check(request).await?;
            if !decision.allowed {
                bail!("check denied: {decision:?}");
            }
            Ok(())
        }
    })
    .await
}

/// What the checks of one paced run were answered, per node, and the
/// admissions in each second of the run.
struct Tally {
    /// Node → reason → checks (`transport_error` when no decision came back).
    by_node: BTreeMap<u64, BTreeMap<String, u64>>,
    /// Allowed checks by the whole second of the run they were sent in.
    allowed_per_sec: Vec<u64>,
    /// Latency of every check, µs.
    latency: Histogram<u64>,
    /// How long checks were sent for (the rate's denominator).
    window: Duration,
    /// Until the last answer came.
    elapsed: Duration,
}

impl Tally {
    /// Checks answered `reason` (every check if `None`) by `node` (every node if `None`).
    fn count(&self, node: Option<u64>, reason: Option<&str>) -> u64 {
        let nodes = self.by_node.iter().filter(|(n, _)| node.is_none_or(|want| **n == want));
        nodes
            .flat_map(|(_, reasons)| reasons)
            .filter(|(r, _)| reason.is_none_or(|want| r.as_str() == want))
            .map(|(_, c)| c)
            .sum()
    }
}

/// Sends checks of one key for `secs` seconds, `offered` per second in all,
/// from `callers` callers each paced to its share, to `nodes` in turn. A
/// caller whose answer comes late sends its next check at once, and never a
/// burst to catch up: the demand is at most `offered` (the tally says what
/// was really sent).
async fn paced_checks(
    cluster: &Arc<Cluster>,
    nodes: &[u64],
    body: &Arc<Vec<u8>>,
    offered: f64,
    callers: usize,
    secs: u64,
) -> anyhow::Result<Tally> {
    let period = Duration::from_secs_f64(callers as f64 / offered);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let nodes: Arc<[u64]> = nodes.into();
    let mut tasks = vec![];
    for caller in 0..callers {
        let (cluster, body, next, nodes) = (cluster.clone(), body.clone(), next.clone(), nodes.clone());
        // Callers start spread over one period, so the checks are too.
        let first = start + period.mul_f64(caller as f64 / callers as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen: BTreeMap<(u64, String), u64> = BTreeMap::new();
            let mut allowed_per_sec = vec![0u64; secs as usize + 1];
            let mut latency = Histogram::<u64>::new(3)?;
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end {
                    return anyhow::Ok((seen, allowed_per_sec, latency));
                }
                let node = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
                let second = (start.elapsed().as_secs() as usize).min(secs as usize);
                let t = Instant::now();
                let answer = match check(&cluster, node, &body).await {
                    Ok(decision) => reason(&decision),
                    Err(_) => "transport_error".to_string(),
                };
                latency.record(t.elapsed().as_micros() as u64)?;
                if answer == "allowed" {
                    allowed_per_sec[second] += 1;
                }
                *seen.entry((node, answer)).or_insert(0) += 1;
            }
        }));
    }
    let mut tally = Tally {
        by_node: BTreeMap::new(),
        allowed_per_sec: vec![0; secs as usize],
        latency: Histogram::<u64>::new(3)?,
        window: end - start,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (seen, allowed_per_sec, latency) = task.await??;
        tally.latency.add(latency)?;
        for ((node, answer), n) in seen {
            *tally.by_node.entry(node).or_default().entry(answer).or_insert(0) += n;
        }
        for (total, n) in tally.allowed_per_sec.iter_mut().zip(allowed_per_sec) {
            *total += n;
        }
    }
    tally.elapsed = start.elapsed();
    Ok(tally)
}

/// The admitted rate of a paced run against the throttle: what was allowed
/// beyond the one burst the bucket starts with, per second of the run.
fn report_throttle(what: &str, tally: &Tally, rate: f64, burst: u32) {
    let secs = tally.window.as_secs_f64();
    let (sent, allowed) = (tally.count(None, None), tally.count(None, Some("allowed")));
    let admitted = (allowed as f64 - burst as f64) / secs;
    println!(
        "{what}: sent for {secs:.0} s (last answer at {:.2} s): sent={sent} ({:.0}/s) allowed={allowed}; admitted (allowed-burst)/s={admitted:.1}/s = {:.3} of rate",
        tally.elapsed.as_secs_f64(),
        sent as f64 / secs,
        admitted / rate
    );
    println!(
        "  check latency: p50={:.2}ms p99={:.2}ms max={:.2}ms",
        tally.latency.value_at_quantile(0.5) as f64 / 1000.0,
        tally.latency.value_at_quantile(0.99) as f64 / 1000.0,
        tally.latency.max() as f64 / 1000.0
    );
    for (node, reasons) in &tally.by_node {
        let allowed = reasons.get("allowed").copied().unwrap_or(0);
        let others: Vec<String> =
            reasons.iter().filter(|(r, _)| r.as_str() != "allowed").map(|(r, n)| format!("{r}={n}")).collect();
        println!(
            "  node {node}: sent={} allowed={allowed} ({:.1}/s) {}",
            tally.count(Some(*node), None),
            allowed as f64 / secs,
            others.join(" ")
        );
    }
    // After the first second, which has the burst.
    let mut per_sec: Vec<u64> = tally.allowed_per_sec.get(1..).unwrap_or_default().to_vec();
    per_sec.sort_unstable();
    if let (Some(min), Some(max)) = (per_sec.first(), per_sec.last()) {
        let series: Vec<String> = tally.allowed_per_sec.iter().map(u64::to_string).collect();
        println!(
            "  allowed per second after the first: min={min} median={} max={max}; each second: {}",
            per_sec[per_sec.len() / 2],
            series.join(" ")
        );
    }
}

/// Checks round-robin over the three nodes: all latencies, each node's,
/// and the decisions' reasons.
struct RoundRobin {
    all: Histogram<u64>,
    elapsed: Duration,
    per_node: Vec<Histogram<u64>>,
    reasons: BTreeMap<String, u64>,
}

/// `count` checks of one key, check n to node n % 3 + 1, from `concurrency` callers.
async fn load_checks_round_robin(
    cluster: &Arc<Cluster>,
    body: &Arc<Vec<u8>>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<RoundRobin> {
    let per_node = Arc::new((0..3).map(|_| Histogram::<u64>::new(3).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?);
    let reasons = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let (cluster, body) = (cluster.clone(), body.clone());
    let (seen_per_node, seen_reasons) = (per_node.clone(), reasons.clone());
    let (all, elapsed) = run_load(count, concurrency, move |n| {
        let (cluster, body, per_node, reasons) = (cluster.clone(), body.clone(), per_node.clone(), reasons.clone());
        async move {
            let node = n as u64 % 3 + 1;
            let t = Instant::now();
            let decision = check(&cluster, node, &body).await?;
            let micros = t.elapsed().as_micros() as u64;
            per_node[node as usize - 1].lock().unwrap_or_else(|p| p.into_inner()).record(micros)?;
            *reasons.lock().unwrap_or_else(|p| p.into_inner()).entry(reason(&decision)).or_insert(0) += 1;
            Ok(())
        }
    })
    .await?;
    let per_node = seen_per_node.iter().map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
    let reasons = seen_reasons.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(RoundRobin { all, elapsed, per_node, reasons })
}

/// One side of the `quota` comparison on a cluster of its own: a key with a
/// quota it never reaches, warmed up, then `count` checks round-robin.
async fn quota_run(
    cluster: Cluster,
    what: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let leader = cluster.leader().await?;
    let plan = json!({"id": "metered", "name": "metered", "quota": {"limit": 1_000_000_000_000u64, "period": "month"}});
    let (key_id, secret) = plan_fixture(&cluster, leader, plan).await?;
    let body = check_body(&secret)?;
    wait_key_known(&cluster, &body).await?;
    let cluster = Arc::new(cluster);
    let warm = load_checks_round_robin(&cluster, &body, count.min(2000), concurrency).await?;
    let run = load_checks_round_robin(&cluster, &body, count, concurrency).await?;
    report(&format!("{what}, {concurrency} clients over 3 nodes"), &run.all, run.elapsed);
    let per_node: Vec<String> = run
        .per_node
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "node {}: {:.0}/s p50={:.2}ms p99={:.2}ms",
                i + 1,
                h.len() as f64 / run.elapsed.as_secs_f64(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0
            )
        })
        .collect();
    println!("  {}", per_node.join("; "));
    let reasons: Vec<String> = run.reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!("  decisions: {} (warm-up: {:?})", reasons.join(" "), warm.reasons);
    // Nodes report use every 200 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let query = UsageQuery { key_id: Some(key_id.clone()), ..UsageQuery::default() };
    let usage = cluster.admin(leader)?.get_usage("metered", &query).await?;
    let current = &usage.items.first().with_context(|| format!("no usage of key {key_id}"))?.current_period;
    println!(
        "  usage 1 s later: used={} held={} (allowed in warm-up and run: {}, plus 3 checks before)",
        current.used,
        current.held,
        warm.reasons.get("allowed").unwrap_or(&0) + run.reasons.get("allowed").unwrap_or(&0)
    );
    Ok((run.all, run.elapsed))
}

/// Creates `count` keys on node `target` with `concurrency` writers.
async fn load_keys(
    cluster: &Arc<Cluster>,
    target: u64,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let cluster = cluster.clone();
    run_load(count, concurrency, move |n| {
        let cluster = cluster.clone();
        async move { cluster.create_key(target, n).await }
    })
    .await
}

fn report(what: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{what}: n={} throughput={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        h.len(),
        h.len() as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// `chaos`: one run, its figures, and an error if the checker found anything.
async fn chaos_run(config: &chaos::ChaosConfig) -> anyhow::Result<()> {
    if !config.bin.exists() {
        bail!("{} does not exist: `cargo build --release` first, or pass --bin", config.bin.display());
    }
    println!(
        "chaos: seed {}, {} s of faults, {} check and {} admin workers, quota {} per key, --quota-max-grant {}, --quota-lease-ms {}",
        config.seed,
        config.run.as_secs(),
        config.check_workers,
        config.admin_workers,
        config.quota,
        config.max_grant,
        config.lease_ms
    );
    let outcome = chaos::run(config).await;
    println!(
        "ran {:.1} s in all (start, faults, heal, settle, read back); {} operations recorded; nodes at noon UTC (clock offset {} ms)",
        outcome.elapsed.as_secs_f64(),
        outcome.history.len(),
        outcome.base_offset_ms
    );
    for f in &outcome.faults {
        let shift = if f.kind == history::FaultKind::ClockShift {
            format!(" (clock {:+} ms)", f.clock_offset_ms - outcome.base_offset_ms)
        } else {
            String::new()
        };
        println!(
            "  {:>7.1} s  {} node {}{shift}, {:.1} s",
            f.span.invoked_us as f64 / 1e6,
            f.kind,
            f.node,
            (f.span.completed_us - f.span.invoked_us) as f64 / 1e6
        );
    }
    print!("{}", outcome.report);
    if !outcome.report.violations.is_empty() {
        bail!("{} violations (seed {})", outcome.report.violations.len(), config.seed);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let What::Chaos { secs, seed, quota, max_grant, check_workers, admin_workers } = args.what {
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
        return chaos_run(&config).await;
    }
    let mut cluster = Cluster::start(args.bin.clone(), &args.node_flags, args.base_port, args.data_dir.clone()).await?;
    match args.what {
        What::Writes { count, concurrency, via_follower } => {
            let leader = cluster.leader().await?;
            let target = if via_follower { (1..=3).find(|i| *i != leader).unwrap_or(1) } else { leader };
            let cluster = Arc::new(cluster);
            let (serial, elapsed) = load_keys(&cluster, target, count.min(1000), 1).await?;
            report("admin writes, 1 writer", &serial, elapsed);
            let (h, elapsed) = load_keys(&cluster, target, count, concurrency).await?;
            report(&format!("admin writes, {concurrency} writers"), &h, elapsed);
        }
        What::Failover { rounds } => {
            let mut elect = Histogram::<u64>::new(3)?;
            let mut write = Histogram::<u64>::new(3)?;
            for round in 0..rounds {
                let leader = cluster.leader().await?;
                let other = (1..=3).find(|i| *i != leader).unwrap_or(1);
                cluster.create_key(other, round).await?;
                let t = Instant::now();
                cluster.kill(leader);
                let new_leader = cluster.leader().await?;
                let elected = t.elapsed().as_millis() as u64;
                elect.record(elected)?;
                cluster.create_key(other, 1_000_000 + round).await?;
                let written = t.elapsed().as_millis() as u64;
                write.record(written)?;
                println!("round {round}: leader {leader} killed, {new_leader} agreed after {elected} ms, write ok after {written} ms");
                cluster.spawn(leader)?;
                cluster.wait_ready(leader).await?;
            }
            println!(
                "failover over {rounds} rounds: new leader agreed p50={}ms max={}ms; first write ok p50={}ms max={}ms",
                elect.value_at_quantile(0.5),
                elect.max(),
                write.value_at_quantile(0.5),
                write.max()
            );
        }
        What::Check { count, concurrency, only, connections } => {
            let (http, wire) = match only.as_deref() {
                None => (true, true),
                Some("http") => (true, false),
                Some("wire") => (false, true),
                Some(other) => bail!("--only: {other:?} is neither http nor wire"),
            };
            let node = cluster.leader().await?;
            let secret = check_fixture(&cluster, node).await?;
            let wire_addr = format!("127.0.0.1:{}", cluster.base + 2000 + node as u16 - 1);
            let cluster = Arc::new(cluster);
            if http {
                load_checks(&cluster, node, &secret, 2000, concurrency).await?; // warm up
                let (h, elapsed) = load_checks(&cluster, node, &secret, count.min(5000), 1).await?;
                report("POST /v1/check, 1 client", &h, elapsed);
                let (h, elapsed) = load_checks(&cluster, node, &secret, count, concurrency).await?;
                report(&format!("POST /v1/check, {concurrency} clients"), &h, elapsed);
            }
            if !wire {
                return Ok(());
            }
            // The same checks through tollgate-client's binary protocol, to the same node.
            let mut config = tollgate_client::ClientConfig::new([wire_addr], TOKEN);
            config.deadline = Duration::from_secs(5);
            config.attempt_timeout = Duration::from_secs(5);
            // The node the HTTP run used, and no other.
            config.discover = false;
            config.connections_per_node = connections;
            let client = tollgate_client::Client::new(config);
            load_wire(&client, &secret, 2000, concurrency).await?; // warm up
            let (h, elapsed) = load_wire(&client, &secret, count.min(5000), 1).await?;
            report("binary protocol, 1 client", &h, elapsed);
            let (h, elapsed) = load_wire(&client, &secret, count, concurrency).await?;
            report(&format!("binary protocol, {concurrency} callers"), &h, elapsed);
        }
        What::Throttle { rate, burst, demand, secs, concurrency } => {
            let leader = cluster.leader().await?;
            let plan = json!({"id": "throttled", "name": "throttled",
                "throttle": {"rate_per_sec": rate, "burst": burst}});
            let (_, secret) = plan_fixture(&cluster, leader, plan).await?;
            let body = check_body(&secret)?;
            wait_key_known(&cluster, &body).await?;
            let follower = (1..=3).find(|i| *i != leader).unwrap_or(1);
            let cluster = Arc::new(cluster);
            let offered = rate * demand;
            println!(
                "throttle rate={rate}/s burst={burst}; demand {offered:.0}/s ({demand}x) from {concurrency} paced callers, {secs} s per run; leader is node {leader}"
            );
            let runs = [
                ("3 nodes round-robin".to_string(), vec![1, 2, 3]),
                (format!("node {follower} only (follower)"), vec![follower]),
            ];
            for (what, nodes) in runs {
                // Tokens a node borrowed are dropped after 1 s unused, and the
                // leader's bucket refills: each run starts with one burst.
                tokio::time::sleep(Duration::from_secs_f64(2.0 + burst as f64 / rate)).await;
                let tally = paced_checks(&cluster, &nodes, &body, offered, concurrency, secs).await?;
                report_throttle(&what, &tally, rate, burst);
            }
        }
        What::Quota { count, concurrency } => {
            let (lease, lease_elapsed) = quota_run(cluster, "quota with leases", count, concurrency).await?;
            // A fresh cluster, on ports of its own (the first one's may linger).
            let flags = format!("{} --quota-max-grant 1", args.node_flags);
            let keep = args.data_dir.as_ref().map(|d| d.join("max-grant-1"));
            let baseline = Cluster::start(args.bin.clone(), &flags, args.base_port + 10, keep).await?;
            let what = "quota via the leader (--quota-max-grant 1)";
            let (base, base_elapsed) = quota_run(baseline, what, count, concurrency).await?;
            let rate = |h: &Histogram<u64>, elapsed: Duration| h.len() as f64 / elapsed.as_secs_f64();
            let ratio = |q: f64| lease.value_at_quantile(q) as f64 / base.value_at_quantile(q).max(1) as f64;
            println!(
                "leases vs leader on every request: throughput x{:.2}, p50 x{:.3}, p99 x{:.3}",
                rate(&lease, lease_elapsed) / rate(&base, base_elapsed),
                ratio(0.5),
                ratio(0.99)
            );
        }
        What::Chaos { .. } => unreachable!("handled before the cluster starts"),
        What::ColdStart { keys, concurrency } => {
            let leader = cluster.leader().await?;
            let cluster_arc = Arc::new(cluster);
            let (h, elapsed) = load_keys(&cluster_arc, leader, keys, concurrency).await?;
            report("loading keys", &h, elapsed);
            let mut cluster = Arc::try_unwrap(cluster_arc).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
            let victim = (1..=3).find(|i| *i != leader).unwrap_or(1);
            cluster.kill(victim);
            let t = Instant::now();
            cluster.spawn(victim)?;
            let ready = cluster.wait_ready(victim).await?;
            let log = std::fs::read_to_string(cluster.dir.path().join(format!("node{victim}/node.log")))?;
            let loaded = log.lines().rev().find(|l| l.contains("state loaded")).unwrap_or("").to_string();
            println!(
                "cold start of node {victim} with {keys} keys: ready after {} ms ({:?})",
                ready.as_millis(),
                t.elapsed()
            );
            println!("  {}", loaded.trim());
        }
    }
    Ok(())
}

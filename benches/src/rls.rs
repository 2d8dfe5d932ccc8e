//! `rls`: Envoy's rate limit service (`ShouldRateLimit` over gRPC, asked by
//! a tonic client built from `envoy-types`, as Envoy asks it) against the
//! HTTP check path (`POST /v1/check` with a throttle and a quota, as `check`
//! and `http` measure it) on the same node, in the same run; then many
//! distinct descriptor values against one per-minute limit.
//!
//! The goal it measures (issue 15): ShouldRateLimit/s at least the HTTP
//! check path's checks/s on the same node (ratio >= 1.0).
//!
//! The run: a cluster (three nodes, or `--nodes 1`), checks to one follower
//! (the leader when alone). Two rate limit domains:
//! - `bench`: `remote_address` per minute and `user` per hour, each
//!   4,000,000,000 a window, so that they never refuse; every request carries
//!   one descriptor of each (a count of a minute window, lent by the leader,
//!   and one of an hour, a lease on the replicated ledger), the same two
//!   values each time;
//! - `bench-hc`: `remote_address` per minute, `--hc-limit` a window.
//!
//! And the `http` run's fixture for the check path: a plan with a throttle
//! (1e6/s) and a daily quota (1e15) that never refuse, and a key in it.
//! Both targets are warmed up, then measured in interleaved rounds of a
//! closed loop (`--concurrency` callers, each sending its next request when
//! answered, for `--secs`), the order reversed every other round; medians
//! and the ratio. The gRPC calls go over `--connections` HTTP/2
//! connections (Envoy keeps a few per worker), the checks over reqwest's
//! pool (HTTP/1.1, a connection per caller).
//!
//! High cardinality: `--values` distinct `remote_address` values
//! (198.18.0.0/15, the benchmarking range), each asked once, as fast as
//! `--concurrency` callers go, against `bench-hc`: the rate, whether they
//! fit in a minute, and how many were refused — every refusal is wrong (one
//! hit of a limit of `--hc-limit`), and the run fails on any. Then the limit
//! is shown to hold: three fresh values, each asked `--hc-limit` + 5 times
//! within one window, must be refused past it. With `--hc-passes 3` (the
//! default) each further pass over the same values starts with the next
//! minute window, and the node's resident memory (and the leader's, which
//! lends the windows) after each pass says whether the counts of ended
//! windows are let go: a node forgets a count idle for a minute, so pass 2
//! still finds pass 1's; from pass 3 on, memory should level off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::fixture::{never_refusing_check, post_admin};
use crate::http::{cpu_of, median};
use crate::load::run_load_until;

/// The goal: ShouldRateLimit/s at this share of the HTTP check's, or more.
const THROUGHPUT_GOAL: f64 = 1.0;
/// Each limit of the `bench` domain: never reached in a run.
const NEVER_REACHED: u64 = 4_000_000_000;
/// The most `--values`: the addresses of 198.18.0.0/15.
const MAX_VALUES: usize = 1 << 17;

/// What `tollgate-bench rls` was asked for.
pub struct RlsRun {
    /// Seconds of each closed-loop phase.
    pub secs: f64,
    /// Phases of each target; the summary takes their medians.
    pub rounds: usize,
    /// Callers sending at once (both targets, and the high-cardinality pass).
    pub concurrency: usize,
    /// HTTP/2 connections of the gRPC client.
    pub connections: usize,
    /// Distinct `remote_address` values of the high-cardinality pass (0: none).
    pub values: usize,
    /// The per-minute limit of each of those values.
    pub hc_limit: u32,
    /// Passes over the values, each from the start of a minute window.
    pub hc_passes: usize,
}

/// The two things measured against each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rls,
    Check,
}

const KINDS: [Kind; 2] = [Kind::Rls, Kind::Check];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rls => "gRPC ShouldRateLimit",
            Kind::Check => "POST /v1/check",
        }
    }

    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// The gRPC client: `connections` channels (one HTTP/2 connection each) to
/// one node, and the check token as Envoy sends it.
#[derive(Clone)]
struct Rls {
    channels: Arc<Vec<Channel>>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl Rls {
    async fn connect(url: &str, connections: usize, token: &str) -> anyhow::Result<Rls> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Channel::from_shared(url.to_string())?
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            channels.push(channel);
        }
        let authorization = format!("Bearer {token}").parse().context("the token as metadata")?;
        Ok(Rls { channels: Arc::new(channels), authorization })
    }

    /// `req` over connection `n` (modulo their number).
    async fn ask(&self, n: usize, req: RateLimitRequest) -> anyhow::Result<RateLimitResponse> {
        let channel = self.channels[n % self.channels.len()].clone();
        let mut request = tonic::Request::new(req);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        let answer = RateLimitServiceClient::new(channel).should_rate_limit(request).await?;
        Ok(answer.into_inner())
    }
}

fn descriptor(key: &str, value: &str) -> RateLimitDescriptor {
    RateLimitDescriptor { entries: vec![Entry { key: key.into(), value: value.into() }], ..Default::default() }
}

/// The `n`th address of 198.18.0.0/15 (`n` below [`MAX_VALUES`]).
fn address(n: usize) -> String {
    format!("198.{}.{}.{}", 18 + (n >> 16), (n >> 8) & 255, n & 255)
}

/// One closed-loop phase: answers per second, p50 and p99 (ms), the
/// cluster's CPU time per answer (µs).
struct Closed {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: Option<f64>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The `rls` run on `cluster`.
pub async fn run(cluster: Cluster, run: RlsRun) -> anyhow::Result<()> {
    if run.rounds == 0 {
        bail!("--rounds: must be at least 1");
    }
    if !(run.secs.is_finite() && run.secs > 0.0) {
        bail!("--secs {}: must be a number of seconds above 0", run.secs);
    }
    if run.connections == 0 || run.concurrency == 0 {
        bail!("--connections and --concurrency: must be at least 1");
    }
    if run.values > MAX_VALUES {
        bail!("--values {}: at most {MAX_VALUES} (the addresses of 198.18.0.0/15)", run.values);
    }
    if run.hc_limit < 2 {
        bail!("--hc-limit {}: must be at least 2", run.hc_limit);
    }
    let leader = cluster.leader().await?;
    let node = cluster.ids().find(|i| *i != leader).unwrap_or(leader);

    // The check path's fixture, as the `http` run makes it.
    let (_, body) = never_refusing_check(&cluster, leader).await?;

    // The domains, and a token of the check scope for the gRPC calls.
    let post = |path: &'static str, body: Value| post_admin(&cluster, leader, path, body);
    post(
        "/v1/admin/ratelimits",
        json!({"domain": "bench", "descriptors": [
            {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": NEVER_REACHED}},
            {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": NEVER_REACHED}}]}),
    )
    .await?;
    post(
        "/v1/admin/ratelimits",
        json!({"domain": "bench-hc", "descriptors": [
            {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": run.hc_limit}}]}),
    )
    .await?;
    let token = post("/v1/admin/tokens", json!({"name": "envoy", "scopes": ["check"]})).await?;
    let token = token["secret"].as_str().context("no secret in the new token")?.to_string();

    let grpc_url = format!("http://{}", cluster.grpc_addr(node));
    let rls = Rls::connect(&grpc_url, run.connections, &token).await?;
    let bench_request = RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![descriptor("remote_address", "192.0.2.1"), descriptor("user", "bench")],
        hits_addend: 0,
    };
    wait_domain_known(&rls, &bench_request, 2).await?;
    wait_domain_known(&rls, &hc_request("192.0.2.1"), 1).await?;

    println!(
        "rls: {} node(s), calls to node {node} ({}); ShouldRateLimit of domain bench (a minute and an hour \
         limit, never reached) over {} HTTP/2 connection(s), against POST /v1/check (a throttle and a quota \
         that never refuse) over HTTP/1.1",
        cluster.ids().count(),
        if node == leader { "the leader" } else { "a follower" },
        run.connections
    );

    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(run.concurrency).build()?;
    let check_url = format!("{}/v1/check", cluster.url(node));
    let send = |kind: Kind| {
        let (rls, req, http, url, body) =
            (rls.clone(), bench_request.clone(), http.clone(), check_url.clone(), body.clone());
        move |n: usize| {
            let (rls, req, http, url, body) = (rls.clone(), req.clone(), http.clone(), url.clone(), body.clone());
            async move {
                match kind {
                    Kind::Rls => {
                        let answer = rls.ask(n, req).await?;
                        if answer.overall_code != Code::Ok as i32 {
                            bail!("ShouldRateLimit refused: {answer:?}");
                        }
                    }
                    Kind::Check => {
                        let response = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.to_vec())
                            .send()
                            .await?;
                        let decision: Value = response.json().await?;
                        if decision["allowed"] != true {
                            bail!("check denied: {decision}");
                        }
                    }
                }
                Ok(())
            }
        }
    };

    // Connections open, and both paths warm.
    for kind in KINDS {
        let until = Instant::now() + Duration::from_secs_f64(run.secs.min(1.0));
        run_load_until(usize::MAX, Some(until), run.concurrency, send(kind))
            .await
            .with_context(|| format!("warming up {}", kind.name()))?;
    }

    let secs = Duration::from_secs_f64(run.secs);
    let mut phases: Vec<Vec<Closed>> = KINDS.iter().map(|_| Vec::new()).collect();
    println!("closed loop: {} callers, {} rounds of {:.1} s per target", run.concurrency, run.rounds, run.secs);
    for round in 1..=run.rounds {
        let mut order = KINDS.to_vec();
        if round.is_multiple_of(2) {
            order.reverse();
        }
        for kind in order {
            let servers = cluster.pids();
            let cpu_before = cpu_of(&servers);
            let (h, elapsed) = run_load_until(usize::MAX, Some(Instant::now() + secs), run.concurrency, send(kind))
                .await
                .with_context(|| kind.name())?;
            let rate = h.len() as f64 / elapsed.as_secs_f64();
            let cpu_us = match (cpu_before, cpu_of(&servers)) {
                (Some(before), Some(after)) if !h.is_empty() => Some((after - before) * 1e6 / h.len() as f64),
                _ => None,
            };
            let phase = Closed { rate, p50: ms(&h, 0.5), p99: ms(&h, 0.99), cpu_us };
            println!(
                "  round {round}, {:<22} {:>8.0}/s p50={:.2}ms p99={:.2}ms cluster CPU {}",
                kind.name(),
                phase.rate,
                phase.p50,
                phase.p99,
                phase.cpu_us.map_or("unknown".into(), |us| format!("{us:.1} µs/request"))
            );
            phases[kind.index()].push(phase);
        }
    }
    summary(&run, &phases);

    if run.values > 0 {
        high_cardinality(&cluster, &rls, &run, node, leader).await?;
    }
    Ok(())
}

/// The medians of each target's rounds, and the ratio against the goal.
fn summary(run: &RlsRun, phases: &[Vec<Closed>]) {
    println!("summary, the median of each figure over {} rounds, {} callers:", run.rounds, run.concurrency);
    let rate = |kind: Kind| median(phases[kind.index()].iter().map(|p| p.rate).collect());
    for kind in KINDS {
        let of = &phases[kind.index()];
        let cpu: Vec<f64> = of.iter().filter_map(|p| p.cpu_us).collect();
        println!(
            "    {:<22} {:>8.0}/s p50={:.2}ms p99={:.2}ms cluster CPU {}",
            kind.name(),
            rate(kind),
            median(of.iter().map(|p| p.p50).collect()),
            median(of.iter().map(|p| p.p99).collect()),
            if cpu.is_empty() { "unknown".into() } else { format!("{:.1} µs/request", median(cpu)) }
        );
    }
    let ratio = rate(Kind::Rls) / rate(Kind::Check).max(f64::MIN_POSITIVE);
    println!(
        "    throughput rls/check: x{ratio:.2} (goal >= {THROUGHPUT_GOAL}: {})",
        if ratio >= THROUGHPUT_GOAL { "met" } else { "NOT met" }
    );
}

/// A `bench-hc` request for one address.
fn hc_request(address: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench-hc".into(),
        descriptors: vec![descriptor("remote_address", address)],
        hits_addend: 0,
    }
}

/// Waits until the node finds a limit for every one of the `descriptors`
/// of `req` (the domain reached it); at most 10 s.
async fn wait_domain_known(rls: &Rls, req: &RateLimitRequest, descriptors: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let answer = rls.ask(0, req.clone()).await?;
        if answer.statuses.iter().filter(|s| s.current_limit.is_some()).count() == descriptors {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("domain {}: still no limit after 10 s: {answer:?}", req.domain);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident memory of `pid` in MiB (`VmRSS` of /proc/PID/status).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn rss_line(cluster: &Cluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|id| {
            let rss = cluster.pid(*id).and_then(rss_mib).map_or("unknown".into(), |m| format!("{m:.0} MiB"));
            format!("node {id} {rss}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sleeps until at least `left` seconds of the current minute window are
/// left (into the next window if fewer are).
async fn within_one_minute(left: f64) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let rest = 60.0 - now % 60.0;
    if rest < left {
        tokio::time::sleep(Duration::from_secs_f64(rest + 0.1)).await;
    }
    Ok(())
}

/// The high-cardinality passes, then the limit shown to hold.
async fn high_cardinality(cluster: &Cluster, rls: &Rls, run: &RlsRun, node: u64, leader: u64) -> anyhow::Result<()> {
    let watched: Vec<u64> = if node == leader { vec![node] } else { vec![node, leader] };
    println!(
        "high cardinality: {} distinct remote_address values, each asked once per pass, {} callers, against a \
         limit of {} a minute each; {} pass(es), each from the start of a minute window; resident memory before: {}",
        run.values,
        run.concurrency,
        run.hc_limit,
        run.hc_passes,
        rss_line(cluster, &watched)
    );
    let mut refused_in_all = 0;
    for pass in 1..=run.hc_passes {
        // From the start of a window: the windows of the pass before have
        // ended, and whatever they held can be let go.
        if pass > 1 {
            within_one_minute(59.0).await?;
        }
        let refused = Arc::new(AtomicUsize::new(0));
        let first_refused = Arc::new(std::sync::Mutex::new(None::<String>));
        let (h, elapsed) = {
            let (rls, refused, first_refused) = (rls.clone(), refused.clone(), first_refused.clone());
            run_load_until(run.values, None, run.concurrency, move |n| {
                let (rls, refused, first_refused) = (rls.clone(), refused.clone(), first_refused.clone());
                async move {
                    let value = address(n);
                    let answer = rls.ask(n, hc_request(&value)).await?;
                    if answer.overall_code != Code::Ok as i32 {
                        refused.fetch_add(1, Ordering::Relaxed);
                        first_refused.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(value);
                    }
                    Ok(())
                }
            })
            .await?
        };
        let refused = refused.load(Ordering::Relaxed);
        refused_in_all += refused;
        let secs = elapsed.as_secs_f64();
        println!(
            "  pass {pass}: {} values in {secs:.1} s ({}): {:.0}/s p50={:.2}ms p99={:.2}ms; refused wrongly: \
             {refused}{}; resident memory after: {}",
            h.len(),
            if secs <= 60.0 { "within a minute" } else { "NOT within a minute" },
            h.len() as f64 / secs,
            ms(&h, 0.5),
            ms(&h, 0.99),
            first_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|v| format!(" (the first: {v})"))
                .unwrap_or_default(),
            rss_line(cluster, &watched)
        );
    }

    // The limit still holds per value: three fresh values, each asked past
    // it within one minute window.
    within_one_minute(10.0).await?;
    let asked = run.hc_limit as usize + 5;
    let mut admitted = Vec::new();
    for value in ["192.0.2.10", "192.0.2.11", "192.0.2.12"] {
        let mut ok = 0;
        for n in 0..asked {
            ok += usize::from(rls.ask(n, hc_request(value)).await?.overall_code == Code::Ok as i32);
        }
        admitted.push(ok);
    }
    let holds = admitted.iter().all(|&ok| ok <= run.hc_limit as usize && ok < asked);
    println!(
        "  the limit holds: three fresh values each asked {asked} times in one window, admitted {admitted:?} \
         (limit {}): {}",
        run.hc_limit,
        if holds { "yes" } else { "NO" }
    );
    if refused_in_all > 0 {
        bail!("{refused_in_all} values were refused on their first request of a pass");
    }
    if !holds {
        bail!("a value was admitted past its limit of {} a minute: {admitted:?}", run.hc_limit);
    }
    Ok(())
}

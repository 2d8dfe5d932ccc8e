//! `keys`: the check path over many keys against one key, on one follower.
//!
//! The goal it measures (the realistic load is many keys each with modest
//! traffic, not one hot key): checks of keys chosen uniformly at random from
//! 100k, each key in a plan with a throttle and a quota, reach at least 0.8x
//! the one-key throughput on the same node, with a p99 within 2x.
//!
//! The run: one API, one plan (a throttle and a quota neither of which ever
//! refuses, or no limits at all) and N keys in it, created through the
//! leader many at a time. Then against one follower only: a first pass that
//! checks every key once (what a node that has never seen the keys meets,
//! reported as such; `--no-first-pass` skips it), and rounds of one-key and many-key phases interleaved
//! (one, many, one, many, ...), over HTTP and then over the binary
//! protocol; the medians of the rounds and their ratios. Around each phase
//! the node's `/metrics` counters of checks that waited for the leader and
//! of quota grant requests show how much of the phase went through Raft.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use tollgate_client::admin::ApiKeySpec;

use crate::cluster::{Cluster, TOKEN};
use crate::fixture::{check, check_body, check_request, plan_fixture, reason, wait_key_known};
use crate::load::{run_load, run_load_until};

/// The counters read from `/metrics` around each phase (every series of each).
const COUNTERS: [&str; 2] = ["tollgate_check_leader_round_trips_total", "tollgate_quota_grant_requests_total"];

/// The limits of the keys' plan (`--keys-plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysPlan {
    /// A throttle (1e6/s, burst 1e6) and a daily quota of 1e15: both are
    /// checked on every request, neither ever refuses.
    Limits,
    /// A plan without limits: the key lookup alone.
    None,
}

/// What `tollgate-bench keys` was asked for.
pub struct KeysRun {
    /// How many keys (one of them also the one key).
    pub keys: usize,
    pub plan: KeysPlan,
    /// Each phase lasts this long...
    pub secs: u64,
    /// ...or this many checks, if fewer.
    pub count: Option<usize>,
    /// Callers checking at once.
    pub concurrency: usize,
    /// Admin writes at once while creating the keys.
    pub create_concurrency: usize,
    /// One-key and many-key phases of each path: this many of each.
    pub rounds: usize,
    /// `http` or `wire` (default: both).
    pub only: Option<String>,
    /// The binary client's connections to the node.
    pub connections: usize,
    /// Check every key once before the rounds (and report that pass).
    pub first_pass: bool,
}

/// The `keys` run on `cluster`.
pub async fn run(cluster: Cluster, run: KeysRun) -> anyhow::Result<()> {
    let (http, wire) = match run.only.as_deref() {
        None => (true, true),
        Some("http") => (true, false),
        Some("wire") => (false, true),
        Some(other) => bail!("--only: {other:?} is neither http nor wire"),
    };
    if run.keys == 0 {
        bail!("--keys: must be at least 1");
    }
    if run.rounds == 0 {
        bail!("--rounds: must be at least 1");
    }
    let leader = cluster.leader().await?;
    let node = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let plan = match run.plan {
        KeysPlan::Limits => json!({"id": "keys", "name": "keys",
            "throttle": {"rate_per_sec": 1e6, "burst": 1_000_000},
            "quota": {"limit": 1_000_000_000_000_000u64, "period": "day"}}),
        KeysPlan::None => json!({"id": "keys", "name": "keys"}),
    };
    println!(
        "keys: {} keys in a plan with {}; checks to node {node} (a follower; the leader is node {leader}), \
         {} callers, {} per phase, rounds of each: {}",
        run.keys,
        match run.plan {
            KeysPlan::Limits => "a throttle (1e6/s, burst 1e6) and a daily quota (1e15) that never refuse",
            KeysPlan::None => "no limits",
        },
        run.concurrency,
        match run.count {
            Some(count) => format!("{} s or {count} checks", run.secs),
            None => format!("{} s", run.secs),
        },
        run.rounds
    );
    let (first_id, first_secret) = plan_fixture(&cluster, leader, plan).await?;
    let cluster = Arc::new(cluster);
    let mut secrets = vec![first_secret];
    let mut last_id = first_id;
    if run.keys > 1 {
        let (more, id) = create_keys(&cluster, leader, run.keys - 1, run.create_concurrency).await?;
        secrets.extend(more);
        last_id = id;
    }
    // A linearizable read on the follower: it has applied every key
    // created before. Then until its check path knows the last one.
    cluster.admin(node)?.get_key(&last_id).await.with_context(|| format!("reading key {last_id} on node {node}"))?;
    wait_key_known(&cluster, &check_body(secrets.last().context("no keys")?)?).await?;

    let metrics = Metrics { cluster: cluster.clone(), node };
    let mut targets = Vec::new();
    if http {
        let bodies = secrets.iter().map(|s| check_body(s)).collect::<anyhow::Result<Vec<_>>>()?;
        targets.push(Target::Http { cluster: cluster.clone(), node, bodies: Arc::new(bodies) });
    }
    if wire {
        let mut config = tollgate_client::ClientConfig::new([cluster.wire_addr(node)], TOKEN);
        config.deadline = Duration::from_secs(5);
        config.attempt_timeout = Duration::from_secs(5);
        // This node and no other.
        config.discover = false;
        config.connections_per_node = run.connections;
        let client = tollgate_client::Client::new(config);
        let requests = secrets.iter().map(|s| check_request(s)).collect();
        targets.push(Target::Wire { client, requests: Arc::new(requests) });
    }

    // Every key once, in order: the node meets each for the first time.
    let first = &targets[0];
    if run.first_pass {
        let before = metrics.read().await;
        let pass = phase(first, Pick::Each, run.keys, None, run.concurrency).await?;
        println!("first pass (warm-up), every key checked once, {}:", first.name());
        pass.report("  cold keys");
        metrics.report(&before, &metrics.read().await, pass.checks());
    } else {
        println!("no first pass (--no-first-pass): the node has not checked any key before the rounds");
    }

    for target in &targets {
        // Connections opened, and key 0's state on the node warm.
        let warm = phase(target, Pick::One, 2000, None, run.concurrency).await?;
        println!("{}: warm-up of 2000 checks of the one key done ({:.0}/s)", target.name(), warm.rate());
        let mut one = Vec::new();
        let mut many = Vec::new();
        for round in 1..=run.rounds {
            for (pick, what, results) in
                [(Pick::One, "one key".to_string(), &mut one), (Pick::Random, format!("{} keys", run.keys), &mut many)]
            {
                let before = metrics.read().await;
                let until = Instant::now() + Duration::from_secs(run.secs);
                let result = phase(target, pick, run.count.unwrap_or(usize::MAX), Some(until), run.concurrency).await?;
                result.report(&format!("  round {round}, {what}"));
                metrics.report(&before, &metrics.read().await, result.checks());
                results.push(result);
            }
        }
        summary(target, run.keys, &one, &many);
    }
    Ok(())
}

/// Creates `count` keys in the plan `keys` through node `node`, `concurrency`
/// at a time, with a progress line every 5 s; their secrets in order, and
/// the id of one of them.
async fn create_keys(
    cluster: &Arc<Cluster>,
    node: u64,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<String>, String)> {
    let admin = cluster.admin(node)?;
    let secrets = Arc::new(Mutex::new(vec![String::new(); count]));
    let last_id = Arc::new(Mutex::new(String::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_secs(5));
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                println!("  created {n}/{count} keys ({:.0}/s)", n as f64 / start.elapsed().as_secs_f64());
            }
        })
    };
    // Through the bulk import: a thousand keys per request and Raft entry.
    let batch = tollgate_client::admin::MAX_IMPORT;
    let batches = count.div_ceil(batch);
    let (saved, last, counted) = (secrets.clone(), last_id.clone(), done.clone());
    let created = run_load(batches, concurrency.min(8), move |b| {
        let (admin, saved, last, counted) = (admin.clone(), saved.clone(), last.clone(), counted.clone());
        async move {
            let first = b * batch;
            let specs: Vec<ApiKeySpec> = (first..(first + batch).min(count))
                .map(|n| ApiKeySpec {
                    name: format!("bench key {}", n + 1),
                    description: String::new(),
                    customer_id: None,
                    tags: BTreeMap::new(),
                    enabled: true,
                    expires_at: None,
                    plan_ids: vec!["keys".to_string()],
                })
                .collect();
            let keys = admin.import_keys(&specs).await.with_context(|| format!("importing keys from {}", first + 1))?;
            let mut saved = saved.lock().unwrap_or_else(|p| p.into_inner());
            for (i, key) in keys.into_iter().enumerate() {
                if let Some(slot) = saved.get_mut(first + i) {
                    *slot = key.secret;
                }
                if first + i + 1 == count {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = key.key.id;
                }
            }
            counted.fetch_add(specs.len(), Ordering::Relaxed);
            Ok(())
        }
    })
    .await;
    progress.abort();
    let (h, elapsed) = created?;
    println!(
        "  created {count} keys in {:.1} s: {:.0} keys/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    crate::load::report(
        &format!("import requests of up to {batch} keys, {} at a time", concurrency.min(8)),
        &h,
        elapsed,
    );
    let secrets = std::mem::take(&mut *secrets.lock().unwrap_or_else(|p| p.into_inner()));
    let last_id = last_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((secrets, last_id))
}

/// Where a phase sends its checks: one node, over one path, with the check
/// of each key made in advance.
#[derive(Clone)]
enum Target {
    /// `POST /v1/check`; the body of each key's check.
    Http { cluster: Arc<Cluster>, node: u64, bodies: Arc<Vec<Arc<Vec<u8>>>> },
    /// The binary protocol (`tollgate-client`); each key's check.
    Wire { client: tollgate_client::Client, requests: Arc<Vec<tollgate_client::CheckRequest>> },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Http { .. } => "POST /v1/check",
            Target::Wire { .. } => "binary protocol",
        }
    }

    fn keys(&self) -> usize {
        match self {
            Target::Http { bodies, .. } => bodies.len(),
            Target::Wire { requests, .. } => requests.len(),
        }
    }

    /// One check of key `i`: the decision's reason.
    async fn check(&self, i: usize) -> anyhow::Result<String> {
        match self {
            Target::Http { cluster, node, bodies } => Ok(reason(&check(cluster, *node, &bodies[i]).await?)),
            Target::Wire { client, requests } => Ok(client.check(requests[i].clone()).await?.reason.as_str().into()),
        }
    }
}

/// Which key check `n` of a phase is of.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// Key 0, always.
    One,
    /// Key `n`: every key once, in order.
    Each,
    /// A key chosen uniformly at random.
    Random,
}

impl Pick {
    fn key(self, n: usize, keys: usize, seed: u64) -> usize {
        match self {
            Pick::One => 0,
            Pick::Each => n % keys,
            Pick::Random => (splitmix64(seed ^ n as u64) % keys as u64) as usize,
        }
    }
}

/// SplitMix64: a well-mixed 64-bit value from `x`, so check `n` of a phase
/// picks its key with no generator shared between callers.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One phase: its latencies (µs), its wall time and its decisions.
struct Phase {
    latency: Histogram<u64>,
    elapsed: Duration,
    /// Reason -> checks (`allowed` for most).
    reasons: BTreeMap<String, u64>,
}

impl Phase {
    fn checks(&self) -> u64 {
        self.latency.len()
    }

    fn rate(&self) -> f64 {
        self.checks() as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn report(&self, what: &str) {
        let reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!(
            "{what}: n={} in {:.1} s, {:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms; {}",
            self.checks(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.latency.max() as f64 / 1000.0,
            reasons.join(" ")
        );
    }
}

/// Up to `count` checks of the keys `pick` chooses, from `concurrency`
/// callers, none started after `until`.
async fn phase(
    target: &Target,
    pick: Pick,
    count: usize,
    until: Option<Instant>,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    static PHASES: AtomicU64 = AtomicU64::new(0);
    // Each phase its own sequence of keys.
    let seed = splitmix64(PHASES.fetch_add(1, Ordering::Relaxed));
    let keys = target.keys();
    let allowed = Arc::new(AtomicU64::new(0));
    let others = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let (target, counted, refused) = (target.clone(), allowed.clone(), others.clone());
    let (latency, elapsed) = run_load_until(count, until, concurrency, move |n| {
        let (target, counted, refused) = (target.clone(), counted.clone(), refused.clone());
        async move {
            let reason = target.check(pick.key(n, keys, seed)).await?;
            if reason == "allowed" {
                counted.fetch_add(1, Ordering::Relaxed);
            } else {
                *refused.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_insert(0) += 1;
            }
            Ok(())
        }
    })
    .await?;
    let mut reasons = std::mem::take(&mut *others.lock().unwrap_or_else(|p| p.into_inner()));
    reasons.insert("allowed".into(), allowed.load(Ordering::Relaxed));
    Ok(Phase { latency, elapsed, reasons })
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The medians of one path's rounds, and many keys against one.
fn summary(target: &Target, keys: usize, one: &[Phase], many: &[Phase]) {
    let medians = |phases: &[Phase]| {
        (
            median(phases.iter().map(Phase::rate).collect()),
            median(phases.iter().map(|p| p.ms(0.5)).collect()),
            median(phases.iter().map(|p| p.ms(0.99)).collect()),
        )
    };
    let (one_rate, one_p50, one_p99) = medians(one);
    let (many_rate, many_p50, many_p99) = medians(many);
    println!("{}, the median of each figure over {} rounds:", target.name(), one.len());
    let line = |what: &str, rate: f64, p50: f64, p99: f64| {
        println!("  {what:<22} {rate:>8.0}/s p50={p50:.2}ms p99={p99:.2}ms");
    };
    line("one key:", one_rate, one_p50, one_p99);
    line(&format!("{keys} keys at random:"), many_rate, many_p50, many_p99);
    let (rate_ratio, p99_ratio) = (many_rate / one_rate.max(f64::MIN_POSITIVE), many_p99 / one_p99.max(0.001));
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "  many/one: throughput x{rate_ratio:.2} (goal >= 0.8: {}), p99 x{p99_ratio:.2} (goal <= 2: {})",
        verdict(rate_ratio >= 0.8),
        verdict(p99_ratio <= 2.0)
    );
}

/// The counters of one node's `/metrics` (with `TOLLGATE_METRICS_TOKEN`
/// from the environment, as the nodes get it, if set).
struct Metrics {
    cluster: Arc<Cluster>,
    node: u64,
}

impl Metrics {
    /// Each series of [`COUNTERS`] (`name{labels}` -> value); why not, if
    /// they could not be read.
    async fn read(&self) -> Result<BTreeMap<String, f64>, String> {
        let mut request = self.cluster.http.get(format!("{}/metrics", self.cluster.url(self.node)));
        if let Ok(token) = std::env::var("TOLLGATE_METRICS_TOKEN") {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("GET /metrics answered {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok(text
            .lines()
            .filter(|line| COUNTERS.iter().any(|c| line.starts_with(c)))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// A line per series: before -> after, and the change as a share of
    /// the phase's `checks`.
    fn report(
        &self,
        before: &Result<BTreeMap<String, f64>, String>,
        after: &Result<BTreeMap<String, f64>, String>,
        checks: u64,
    ) {
        let (before, after) = match (before, after) {
            (Ok(before), Ok(after)) => (before, after),
            (Err(e), _) | (_, Err(e)) => {
                println!("    node {} counters: not read ({e})", self.node);
                return;
            }
        };
        if after.is_empty() {
            println!("    node {} counters: none of {} yet", self.node, COUNTERS.join(", "));
            return;
        }
        for (series, now) in after {
            let was = before.get(series).copied().unwrap_or(0.0);
            let change = now - was;
            println!(
                "    {series}: {was} -> {now} (+{change}, {:.2} per 100 checks)",
                100.0 * change / checks.max(1) as f64
            );
        }
    }
}

//! `throttle`: how close the cluster-wide admitted rate of one key stays to
//! its throttle under demand well above it, over the three nodes
//! round-robin and then on one follower only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::cluster::Cluster;
use crate::fixture::{check, check_body, plan_fixture, reason, wait_key_known};

/// The `throttle` run: a plan of `rate`/s with `burst`, demand `demand`
/// times the rate from `concurrency` paced callers for `secs` per run.
pub async fn run(
    cluster: Cluster,
    rate: f64,
    burst: u32,
    demand: f64,
    secs: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
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
    Ok(())
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

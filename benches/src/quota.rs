//! `quota`: checks of a key with a quota, round-robin over the three nodes:
//! with leases (the node flags given), then asking the leader for every unit
//! (`--quota-max-grant 1`), each on a fresh cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tollgate_client::admin::UsageQuery;

use crate::cluster::Cluster;
use crate::fixture::{check, check_body, plan_fixture, reason, wait_key_known};
use crate::load::{report, run_load};

/// The `quota` run: on `cluster`, then on a fresh cluster with
/// `--quota-max-grant 1` added to `node_flags` (its data in
/// `data_dir/max-grant-1` if kept).
pub async fn run(cluster: Cluster, args: &crate::Args, count: usize, concurrency: usize) -> anyhow::Result<()> {
    let (lease, lease_elapsed) = quota_run(cluster, "quota with leases", count, concurrency).await?;
    // A fresh cluster, on ports of its own.
    let flags = format!("{} --quota-max-grant 1", args.node_flags);
    let keep = args.data_dir.as_ref().map(|d| d.join("max-grant-1"));
    let baseline = Cluster::start(args.bin.clone(), &flags, keep).await?;
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
    Ok(())
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

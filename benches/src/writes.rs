//! `writes`, `failover` and `cold-start`: the admin write path (creating
//! keys) measured alone, across a leader's death, and as the state a
//! restarted node must load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cluster::Cluster;
use crate::load::{report, run_load};

/// `writes`: `count` keys created on the leader (or a follower, which
/// forwards), first by one writer, then by `concurrency`.
pub async fn writes(cluster: Cluster, count: usize, concurrency: usize, via_follower: bool) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let target = if via_follower { (1..=3).find(|i| *i != leader).unwrap_or(1) } else { leader };
    let cluster = Arc::new(cluster);
    let (serial, elapsed) = load_keys(&cluster, target, count.min(1000), 1).await?;
    report("admin writes, 1 writer", &serial, elapsed);
    let (h, elapsed) = load_keys(&cluster, target, count, concurrency).await?;
    report(&format!("admin writes, {concurrency} writers"), &h, elapsed);
    Ok(())
}

/// `failover`: `rounds` times, kill -9 the leader and time until the
/// others agree on a new one and until a write succeeds again.
pub async fn failover(mut cluster: Cluster, rounds: usize) -> anyhow::Result<()> {
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
    Ok(())
}

/// `cold-start`: `keys` keys loaded, then a follower killed and started
/// again; how long until it is ready.
pub async fn cold_start(cluster: Cluster, keys: usize, concurrency: usize) -> anyhow::Result<()> {
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
    let log = std::fs::read_to_string(cluster.log(victim))?;
    let loaded = log.lines().rev().find(|l| l.contains("state loaded")).unwrap_or("").to_string();
    println!("cold start of node {victim} with {keys} keys: ready after {} ms ({:?})", ready.as_millis(), t.elapsed());
    println!("  {}", loaded.trim());
    Ok(())
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

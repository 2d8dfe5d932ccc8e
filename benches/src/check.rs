//! `check`: latency and throughput of `POST /v1/check` and of the binary
//! protocol (`tollgate-client`), against one node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::cluster::{Cluster, TOKEN};
use crate::fixture::{check, check_body, check_fixture, check_request};
use crate::load::{report, run_load};

/// The `check` run; `only`: `http` or `wire` (default both).
pub async fn run(
    cluster: Cluster,
    count: usize,
    concurrency: usize,
    only: Option<String>,
    connections: usize,
) -> anyhow::Result<()> {
    let (http, wire) = match only.as_deref() {
        None => (true, true),
        Some("http") => (true, false),
        Some("wire") => (false, true),
        Some(other) => bail!("--only: {other:?} is neither http nor wire"),
    };
    let node = cluster.leader().await?;
    let secret = check_fixture(&cluster, node).await?;
    let wire_addr = cluster.wire_addr(node);
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
    Ok(())
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
    let request = check_request(secret);
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

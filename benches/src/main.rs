//! `tollgate-bench`: measurements against a real three-node cluster that this
//! tool starts itself (from the `tollgate` binary given) on loopback.
//!
//! - `writes`: admin write latency (p50/p99) and throughput, creating keys.
//! - `failover`: time from `kill -9` of the leader until the survivors agree on
//!   a new leader, and until a write succeeds again.
//! - `cold-start`: time for a node holding N keys to load its state and
//!   become ready after a restart.
//!
//! Speed figures belong here, never in tests. Example:
//! `cargo run --release -p tollgate-bench -- --bin target/release/tollgate writes --count 5000`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const TOKEN: &str = "tga_bench-token-0123456789";

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
    },
    ColdStart {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
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

struct Cluster {
    bin: PathBuf,
    flags: Vec<String>,
    base: u16,
    dir: Workdir,
    children: Vec<Option<Child>>,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
            children: vec![None, None, None],
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

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let peers: Vec<String> = (1..=3u16)
            .map(|i| {
                let (http, peer, wire) = (self.base + i - 1, self.base + 1000 + i - 1, self.base + 2000 + i - 1);
                format!("{i}=127.0.0.1:{http}/127.0.0.1:{peer}/127.0.0.1:{wire}")
            })
            .collect();
        let dir = self.dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log"))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--http", &format!("127.0.0.1:{}", self.base + id as u16 - 1)])
            .args(["--peer", &format!("127.0.0.1:{}", self.base + 1000 + id as u16 - 1)])
            .args(["--wire", &format!("127.0.0.1:{}", self.base + 2000 + id as u16 - 1)])
            .args(["--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(&dir)
            .args(&self.flags)
            .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
            // As in production: peers authenticate, and identity tokens are signed.
            .env("TOLLGATE_CLUSTER_TOKEN", "bench-cluster-token")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.children[id as usize - 1] = Some(child);
        Ok(())
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&self, id: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url(id))).send().await {
                if r.status().is_success() {
                    return Ok(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("node {id} not ready after 120 s")
    }

    async fn status(&self, id: u64) -> Option<Value> {
        let r = self.http.get(format!("{}/v1/admin/cluster", self.url(id))).bearer_auth(TOKEN).send().await.ok()?;
        r.json().await.ok()
    }

    /// The leader all live nodes agree on.
    async fn leader(&self) -> anyhow::Result<u64> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let mut seen = vec![];
            for id in 1..=3u64 {
                if self.children[id as usize - 1].is_some() {
                    seen.push(self.status(id).await.and_then(|s| s["leader_id"].as_u64()));
                }
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && self.children[*l as usize - 1].is_some() {
                    return Ok(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("no agreed leader")
    }

    async fn create_key(&self, id: u64, n: usize) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/v1/admin/keys", self.url(id)))
            .bearer_auth(TOKEN)
            .json(&json!({"name": format!("bench key {n}"), "tags": {"n": n.to_string()}}))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("create key: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }
}

/// An API, a plan without limits and a key; returns the key's secret.
async fn check_fixture(cluster: &Cluster, node: u64) -> anyhow::Result<String> {
    let post = |path: &str, body: Value| {
        cluster.http.post(format!("{}{path}", cluster.url(node))).bearer_auth(TOKEN).json(&body).send()
    };
    post(
        "/v1/admin/apis",
        json!({"id": "bench", "name": "bench", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]}),
    )
    .await?;
    post(
        "/v1/admin/plans",
        json!({"id": "free", "name": "free", "api_stages": [{"api_id": "bench", "stage": "prod"}]}),
    )
    .await?;
    let key: Value = post("/v1/admin/keys", json!({"name": "bench", "plan_ids": ["free"]})).await?.json().await?;
    key["secret"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no key secret: {key}"))
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
    let body = Arc::new(serde_json::to_vec(&json!({"api": "bench", "stage": "prod", "method": "GET",
        "path": "/items/1", "source_ip": "192.0.2.1", "headers": {"x-api-key": secret}}))?);
    let (cluster, url) = (cluster.clone(), format!("{}/v1/check", cluster.url(node)));
    run_load(count, concurrency, move |_| {
        let (cluster, url, body) = (cluster.clone(), url.clone(), body.clone());
        async move {
            let resp = cluster
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .send()
                .await?;
            let decision: Value = resp.json().await?;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
        What::Check { count, concurrency, only } => {
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
            let client = tollgate_client::Client::new(config);
            load_wire(&client, &secret, 2000, concurrency).await?; // warm up
            let (h, elapsed) = load_wire(&client, &secret, count.min(5000), 1).await?;
            report("binary protocol, 1 client", &h, elapsed);
            let (h, elapsed) = load_wire(&client, &secret, count, concurrency).await?;
            report(&format!("binary protocol, {concurrency} callers"), &h, elapsed);
        }
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

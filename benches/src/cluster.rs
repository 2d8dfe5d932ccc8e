//! The bench's own three-node cluster: fixed ports (base P: HTTP P..,
//! peer P+1000.., wire P+2000..), all nodes named in `--peers` from the
//! start, the node flags as given. Started and stopped through the node
//! crate's launcher (`tollgate_node::launch`); spoken to through the one
//! admin client (`tollgate_client::admin`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tollgate_client::admin::{AdminClient, ApiKeySpec, ClusterStatus};
use tollgate_node::launch::{Listen, NodeCommand, NodeProcess};

/// The bootstrap admin token of every bench cluster.
pub const TOKEN: &str = "tga_bench-token-0123456789abcdefghij";

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
pub struct Cluster {
    bin: PathBuf,
    flags: Vec<String>,
    base: u16,
    dir: Workdir,
    /// Node id - 1 -> its process while it runs; killed when dropped.
    nodes: Vec<Option<NodeProcess>>,
    /// Every HTTP call of the bench: a pool big enough for its workers.
    pub http: reqwest::Client,
}

impl Cluster {
    pub async fn start(bin: PathBuf, flags: &str, base: u16, keep: Option<PathBuf>) -> anyhow::Result<Cluster> {
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

    pub fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.base + id as u16 - 1)
    }

    /// Node `id`'s binary check listener, `127.0.0.1:PORT`.
    pub fn wire_addr(&self, id: u64) -> String {
        self.listen(id).wire
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}/node.log"))
    }

    /// Node `id`'s fixed ports.
    fn listen(&self, id: u64) -> Listen {
        let at = self.base + id as u16 - 1;
        Listen::loopback(at, at + 1000, at + 2000)
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
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
        self.nodes[id as usize - 1] = Some(command.spawn_with(crate::harness::die_with_parent)?);
        Ok(())
    }

    pub fn kill(&mut self, id: u64) {
        // Dropping the process kills it.
        self.nodes[id as usize - 1] = None;
    }

    fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].is_some()
    }

    /// Waits (at most 120 s) until node `id` is ready; how long that took.
    pub async fn wait_ready(&mut self, id: u64) -> anyhow::Result<Duration> {
        let url = self.url(id);
        let node = self.nodes[id as usize - 1].as_mut().with_context(|| format!("node {id} is not running"))?;
        Ok(node.wait_ready(&self.http, &url, Instant::now() + Duration::from_secs(120)).await?)
    }

    /// The admin client of node `id` alone, on the bench's HTTP client (its
    /// pool and timeout).
    pub fn admin(&self, id: u64) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::with_http([self.url(id)], TOKEN, self.http.clone())?)
    }

    async fn status(&self, id: u64) -> Option<ClusterStatus> {
        self.admin(id).ok()?.cluster_status().await.ok()
    }

    /// The leader all live nodes agree on.
    pub async fn leader(&self) -> anyhow::Result<u64> {
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

    pub async fn create_key(&self, id: u64, n: usize) -> anyhow::Result<()> {
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

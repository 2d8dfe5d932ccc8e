//! The bench's own cluster on loopback (three nodes, or one for the `http`
//! run when asked), every listener on port
//! 0: no port is ever checked free and bound later, where another process
//! could take it in between. Node 1 starts a new cluster (`--init`); the
//! others start empty and are added through node 1's admin API, as an
//! operator grows a cluster (and as the test harness, `tests/harness`,
//! does). Each node's ports are read from the `node.json` it writes once
//! bound. A killed node's ports stay held (bound, not listening) until it
//! is started again on those same ports, which it must get back: the other
//! members know it by them.
//!
//! The nodes get the node flags as given and no Raft timings of the bench's
//! own (unlike the harness's), so failover figures are the real ones. They
//! are started and stopped through the node crate's launcher
//! (`tollgate_node::launch`) and spoken to through the one admin client
//! (`tollgate_client::admin`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tollgate_client::admin::{AdminClient, ApiKeySpec, ClusterMember, ClusterStatus};
use tollgate_node::launch::{Bound, Listen, NodeCommand, NodeProcess};

/// The bootstrap admin token of every bench cluster.
pub const TOKEN: &str = "tga_bench-token-0123456789abcdefghij";

/// How long a node may take to bind its ports, and to become ready.
const START_PATIENCE: Duration = Duration::from_secs(120);

/// Where the nodes keep data: a temporary folder, or one the user keeps.
enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Workdir {
    fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Kept(p) => p,
        }
    }
}

/// One member of the bench cluster.
struct Member {
    /// The ports it bound at its first start, which every later start asks
    /// for again (the other members dial it there).
    ports: Bound,
    /// Its process while it runs; killed when dropped.
    process: Option<NodeProcess>,
    /// While it is down: its ports, bound and not listening, so that no
    /// other process takes them before it starts again (connections to
    /// them are refused meanwhile, as for any dead process).
    held: Vec<socket2::Socket>,
}

/// Nodes that form one cluster (three, unless started with fewer), on
/// ports the kernel chose.
pub struct Cluster {
    bin: PathBuf,
    flags: Vec<String>,
    dir: Workdir,
    /// Node id - 1 -> the member.
    nodes: Vec<Member>,
    /// Every HTTP call of the bench: a pool big enough for its workers.
    pub http: reqwest::Client,
}

impl Cluster {
    /// Starts the three nodes, node 1 with `--init`, and adds nodes 2 and 3
    /// as voters; returns once all three are ready. `keep`: the nodes' data
    /// and logs go there (it must not hold an earlier run's cluster), else
    /// in a temporary folder.
    pub async fn start(bin: PathBuf, flags: &str, keep: Option<PathBuf>) -> anyhow::Result<Cluster> {
        Cluster::start_nodes(bin, flags, keep, 3).await
    }

    /// As [`Cluster::start`], with `count` nodes (1 to 3; node 1 alone is
    /// its own leader).
    pub async fn start_nodes(bin: PathBuf, flags: &str, keep: Option<PathBuf>, count: u64) -> anyhow::Result<Cluster> {
        if !(1..=3).contains(&count) {
            bail!("--nodes {count}: a bench cluster has 1 to 3 nodes");
        }
        let dir = match keep {
            Some(p) => {
                if p.join("node1").exists() {
                    bail!(
                        "--data-dir {}: holds the nodes of an earlier run (node1/); each run starts a new \
                         cluster, so give a new or empty folder",
                        p.display()
                    );
                }
                Workdir::Kept(p)
            }
            None => Workdir::Temp(tempfile::tempdir()?),
        };
        let flags: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
        // All at once: nodes 2 and 3 wait, unready, to be added.
        let mut processes = Vec::new();
        for id in 1..=count {
            let listen = Listen::loopback(0, 0, 0, 0);
            processes.push(spawn_node(&bin, &flags, dir.path(), id, listen)?);
        }
        let mut nodes = Vec::new();
        for mut process in processes {
            let ports = process.wait_bound(Instant::now() + START_PATIENCE).await?;
            nodes.push(Member { ports, process: Some(process), held: Vec::new() });
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(256).build()?;
        let mut cluster = Cluster { bin, flags, dir, nodes, http };
        cluster.wait_ready(1).await?;
        for id in 2..=count {
            let ports = cluster.nodes[id as usize - 1].ports;
            let member = ClusterMember {
                id,
                http_addr: ports.http.to_string(),
                peer_addr: ports.peer.to_string(),
                wire_addr: ports.wire.to_string(),
                voter: true,
            };
            cluster.admin(1)?.add_node(&member).await.with_context(|| format!("adding node {id}"))?;
            cluster.wait_ready(id).await?;
        }
        Ok(cluster)
    }

    /// The ids of the members, `1..=3` (or fewer).
    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.nodes.len() as u64
    }

    /// The process ids of the nodes running now.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|m| m.process.as_ref().map(NodeProcess::pid)).collect()
    }

    fn member(&self, id: u64) -> &Member {
        &self.nodes[id as usize - 1]
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        &mut self.nodes[id as usize - 1]
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.member(id).ports.http)
    }

    /// Node `id`'s binary check listener, `127.0.0.1:PORT`.
    pub fn wire_addr(&self, id: u64) -> String {
        self.member(id).ports.wire.to_string()
    }

    /// Node `id`'s gRPC listener (Envoy's APIs), `127.0.0.1:PORT`.
    pub fn grpc_addr(&self, id: u64) -> String {
        self.member(id).ports.grpc.to_string()
    }

    /// Node `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.member(id).process.as_ref().map(NodeProcess::pid)
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}/node.log"))
    }

    /// Starts node `id` again (after [`Cluster::kill`]) on the ports it had;
    /// [`Cluster::wait_ready`] then waits for it.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        if self.is_running(id) {
            bail!("node {id} is already running");
        }
        let ports = self.member(id).ports;
        let listen = Listen::loopback(ports.http.port(), ports.peer.port(), ports.wire.port(), ports.grpc.port());
        // Let the ports go only now, as the node is about to bind them.
        self.member_mut(id).held.clear();
        let process = spawn_node(&self.bin, &self.flags, self.dir.path(), id, listen)?;
        self.member_mut(id).process = Some(process);
        Ok(())
    }

    /// kill -9. Its ports stay held for its restart.
    pub fn kill(&mut self, id: u64) {
        let member = self.member_mut(id);
        if let Some(process) = member.process.take() {
            // Dropping the process kills and reaps it.
            drop(process);
            // A port another process took in the instant since is not held;
            // the restart then fails naming it, in the node's log.
            let ports = [member.ports.http, member.ports.peer, member.ports.wire, member.ports.grpc];
            member.held = ports.iter().filter_map(|addr| hold(*addr).ok()).collect();
        }
    }

    fn is_running(&self, id: u64) -> bool {
        self.member(id).process.is_some()
    }

    /// Waits (at most 120 s each) until node `id` has bound its ports (the
    /// ones it had, or it fails) and is ready; how long that took.
    pub async fn wait_ready(&mut self, id: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (url, http) = (self.url(id), self.http.clone());
        let member = self.member_mut(id);
        let want = member.ports;
        let process = member.process.as_mut().with_context(|| format!("node {id} is not running"))?;
        let bound = process.wait_bound(started + START_PATIENCE).await?;
        if bound != want {
            bail!("node {id} bound {bound:?} instead of its ports {want:?}");
        }
        process.wait_ready(&http, &url, Instant::now() + START_PATIENCE).await?;
        Ok(started.elapsed())
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
            for id in self.ids() {
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

/// Starts node `id` of `bin` in `DIR/nodeID` on `listen` (port 0: any),
/// with `--init` for node 1 (ignored once its cluster exists) and `flags`.
fn spawn_node(bin: &Path, flags: &[String], dir: &Path, id: u64, listen: Listen) -> anyhow::Result<NodeProcess> {
    let mut command = NodeCommand::new(bin, dir.join(format!("node{id}"))).id(id);
    command.listen = Some(listen);
    command.init = id == 1;
    command.flags = flags.iter().map(Into::into).collect();
    command.admin_token = Some(TOKEN.into());
    // As in production: peers authenticate, and identity tokens are signed.
    command.cluster_token = Some("bench-cluster-token".into());
    // A bench stopped by a signal leaves no nodes behind.
    Ok(command.spawn_with(crate::harness::die_with_parent)?)
}

/// Keeps `addr` taken without listening on it: connections to it are
/// refused, and no other socket can bind it. With `SO_REUSEADDR`, as the
/// node's own listeners, so it binds over the killed node's TIME_WAIT
/// connections, and the node binds again once this is dropped.
fn hold(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

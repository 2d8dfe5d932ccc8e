//! A harness that runs real `tollgate` node processes on loopback.
//!
//! No port is ever checked free and bound later (another process could take
//! it in between): each node binds port 0 for its HTTP, peer, wire and gRPC
//! listeners and reports what it bound in `DATA_DIR/node.json`, and every
//! listener of the harness itself binds port 0 and keeps its socket. While a
//! killed node is down the harness holds its ports with sockets that are
//! bound but not listening (so connections are refused, as for any dead
//! process, and no other process can take them); a restart lets them go just
//! before the node binds them again. Node 1 starts a new cluster with
//! `--init` and the harness adds the others through the admin API, as an
//! operator grows a cluster.
//!
//! Each node has its own temporary data directory and a log file. Nodes are
//! started, waited for and stopped through the node crate's launcher
//! (`tollgate_node::launch`, shared with `tollgate dev` and the bench): every
//! child is killed when its [`Node`] is dropped — also when a test panics —
//! and, through `PR_SET_PDEATHSIG` ([`die_with_parent`]), when the test
//! process itself dies.
//!
//! A cluster started with [`Options::partitionable`] sends each peer link
//! through a TCP proxy of its own inside the test process, so a test can cut a
//! node off from the others ([`Cluster::cut`]) and let it back
//! ([`Cluster::heal`]) while every process keeps running.
//!
//! `tollgate-bench` includes this file too (`#[path]`), so its chaos run
//! starts, kills and partitions clusters through this one launcher; it names
//! its own `tollgate` binary in [`Options::bin`].

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tollgate_client::admin::{AdminClient, ClusterMember};
use tollgate_node::launch::{self, Listen, NodeCommand, NodeProcess};

pub const TOKEN: &str = "tga_test-bootstrap-token-0123456789abcdef";

/// How long any harness wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The `tollgate` binary Cargo built for the integration tests; outside them
/// (`tollgate-bench`), the release build's path, unless [`Options::bin`] says
/// otherwise.
pub fn default_bin() -> PathBuf {
    PathBuf::from(option_env!("CARGO_BIN_EXE_tollgate").unwrap_or("target/release/tollgate"))
}

/// `tollgate certs --out DIR`: a development CA, a node certificate
/// (localhost, 127.0.0.1) and a proxy client certificate; returns DIR.
pub fn make_certs(dir: &Path) -> PathBuf {
    let status = Command::new(default_bin())
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("tollgate certs");
    assert!(status.success(), "tollgate certs failed");
    dir.to_path_buf()
}

/// A port nobody else in this process has been given, and that is free now,
/// from a range outside the kernel's ephemeral ports (so no `bind(0)` or
/// outgoing connection takes it). Only for programs that cannot bind port 0
/// and report the port (nginx, Caddy); nodes and the harness's own listeners
/// never use it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start somewhere that depends on the process, so separate test processes
    // running at once (nextest) are unlikely to start at the same place.
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 500) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Options for every node of a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub snapshot_logs: u64,
    pub keep_logs: u64,
    pub log_level: &'static str,
    /// Route every peer link through a proxy of the harness, so that
    /// [`Cluster::cut`] can partition a node from the others.
    pub partitionable: bool,
    /// More flags for every node (on restarts too), e.g.
    /// `["--quota-lease-ms", "3000"]`. Only flags the harness does not set
    /// itself: a flag given twice is an error.
    pub extra_args: Vec<String>,
    /// TLS on every listener, with mutual TLS between peers: certificates
    /// from `tollgate certs` in the cluster's folder ([`Cluster::certs`]);
    /// the harness's own HTTP client trusts their CA.
    pub tls: bool,
    /// Where each node's standard output and error go instead of its
    /// `node.log` (say `/dev/full`, to see a node survive failing log writes).
    pub log_to: Option<PathBuf>,
    /// `TOLLGATE_METRICS_TOKEN` for every node.
    pub metrics_token: Option<String>,
    /// Each node's data dir is a tmpfs of this many MiB of its own (to fill
    /// up), unmounted when the cluster is dropped. Needs root: check
    /// [`tmpfs_available`] first.
    pub tmpfs_mib: Option<u64>,
    /// The `tollgate` binary to run ([`default_bin`]).
    pub bin: PathBuf,
    /// `--clock-offset-ms` for every node, unless a restart gives the node
    /// one of its own ([`Cluster::restart_with_clock`]). Zero: not passed.
    pub clock_offset_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            log_level: "info",
            partitionable: false,
            extra_args: Vec::new(),
            tls: false,
            log_to: None,
            metrics_token: None,
            tmpfs_mib: None,
            bin: default_bin(),
            clock_offset_ms: 0,
        }
    }
}

pub struct Node {
    pub id: u64,
    /// The ports the node bound (read from its `node.json`); a restart binds
    /// them again.
    pub http_port: u16,
    pub peer_port: u16,
    pub wire_port: u16,
    /// Envoy's ext_authz over gRPC.
    pub grpc_port: u16,
    pub dir: PathBuf,
    /// Its HTTP listener speaks TLS.
    pub https: bool,
    /// It starts a new cluster (`--init`): node 1 of every cluster.
    init: bool,
    /// Flags of this node alone (its `--advertise-peer` and `--peer-via` in
    /// a partitionable cluster), kept so a restart gets them again.
    args: Vec<String>,
    /// Its own `--clock-offset-ms`, set by [`Cluster::restart_with_clock`];
    /// otherwise [`Options::clock_offset_ms`].
    clock_offset_ms: Option<i64>,
    child: Option<NodeProcess>,
    /// While the node is down: its ports, bound and not listening.
    held: Vec<socket2::Socket>,
}

impl Node {
    fn new(id: u64, dir: PathBuf, https: bool, init: bool, args: Vec<String>) -> Node {
        Node {
            id,
            http_port: 0,
            peer_port: 0,
            wire_port: 0,
            grpc_port: 0,
            dir,
            https,
            init,
            args,
            clock_offset_ms: None,
            child: None,
            held: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    pub fn wire_addr(&self) -> String {
        format!("127.0.0.1:{}", self.wire_port)
    }

    /// The gRPC listener's URL (`https://` when the node speaks TLS).
    pub fn grpc_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(NodeProcess::try_wait)
    }

    fn process(&mut self) -> &mut NodeProcess {
        let id = self.id;
        self.child.as_mut().unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Sends SIGTERM and waits for the process to end; returns how long that
    /// took and how it ended. Its ports stay reserved for its restart.
    pub async fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        self.process().terminate().unwrap_or_else(|e| panic!("{e}"));
        let status = self.wait_exit().await;
        (started.elapsed(), status)
    }

    /// Waits (at most [`PATIENCE`]) for the process to end by itself and
    /// returns how it ended. Its ports stay reserved for its restart.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.process().wait_exit(Instant::now() + PATIENCE).await.unwrap_or_else(|e| panic!("{e}"));
        self.kill();
        status
    }

    /// kill -9. Its ports stay reserved for its restart.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            // Dropping the process kills and reaps it.
            drop(child);
            self.held =
                [self.http_port, self.peer_port, self.wire_port, self.grpc_port].into_iter().map(hold).collect();
        }
    }

    /// The node's `serve` command: on the ports it had if it ran before,
    /// else on port 0, with Raft timings fit for tests.
    fn command(&self, options: &Options) -> NodeCommand {
        let mut command = NodeCommand::new(&options.bin, &self.dir).id(self.id);
        command.listen = Some(Listen::loopback(self.http_port, self.peer_port, self.wire_port, self.grpc_port));
        command.init = self.init;
        command.admin_token = Some(TOKEN.into());
        command.cluster_token = Some("test-cluster-token".into());
        command.env.push(("TOLLGATE_LOG".into(), options.log_level.into()));
        command.env.extend(options.metrics_token.iter().map(|t| ("TOLLGATE_METRICS_TOKEN".into(), t.clone())));
        command.log = options.log_to.clone();
        let flags = ["--heartbeat-ms", "50", "--election-min-ms", "300", "--election-max-ms", "600"].map(String::from);
        command.flags.extend(flags.into_iter().map(Into::into));
        command.flags.extend(["--snapshot-logs".into(), options.snapshot_logs.to_string().into()]);
        command.flags.extend(["--keep-logs".into(), options.keep_logs.to_string().into()]);
        // Unused grants go back after a second (30 s by default), so tests
        // that wait for usage to settle (nothing held) do not wait long.
        command.flags.extend(["--quota-quiet-ms".into(), "1000".into()]);
        command.flags.extend(options.extra_args.iter().chain(&self.args).map(Into::into));
        let clock_offset_ms = self.clock_offset_ms.unwrap_or(options.clock_offset_ms);
        if clock_offset_ms != 0 {
            command.flags.push(format!("--clock-offset-ms={clock_offset_ms}").into());
        }
        command
    }

    /// Starts the process: on the ports it had if it ran before, else on
    /// port 0. Then [`Node::wait_bound`] reads what it bound.
    fn spawn(&mut self, options: &Options) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let command = self.command(options);
        // Let the ports go only now, as the node is about to bind them.
        self.held.clear();
        self.child = Some(command.spawn_with(die_with_parent).unwrap_or_else(|e| panic!("{e}")));
    }

    /// Waits for the `node.json` the node writes once its listeners are bound
    /// and takes its ports from it.
    async fn wait_bound(&mut self) {
        let bound = self.process().wait_bound(Instant::now() + PATIENCE).await.unwrap_or_else(|e| panic!("{e}"));
        let (http, peer, wire, grpc) = (bound.http.port(), bound.peer.port(), bound.wire.port(), bound.grpc.port());
        if self.http_port != 0 {
            let had = (self.http_port, self.peer_port, self.wire_port, self.grpc_port);
            assert_eq!((http, peer, wire, grpc), had, "ports changed");
        }
        (self.http_port, self.peer_port, self.wire_port, self.grpc_port) = (http, peer, wire, grpc);
    }

    fn log(&self) -> String {
        self.dir.join("node.log").display().to_string()
    }
}

/// Keeps `port` on 127.0.0.1 taken without listening on it: connections to it
/// are refused, and no other socket can bind it.
fn hold(port: u16) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    // As the node's own listener does: a restart binds over the TIME_WAIT
    // connections the killed process left.
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.bind(&addr.into()).unwrap_or_else(|e| panic!("cannot hold port {port} of a killed node: {e}"));
    socket
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Has the kernel kill the child (SIGKILL) when the thread that started it
/// ends — with the test, or with the whole test process when it dies without
/// unwinding (no `Drop` runs then) — so no child outlives its test.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
    // this child if the thread that spawned it goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    options: Options,
    /// The proxied peer links (none unless [`Options::partitionable`]); they
    /// stop when the cluster is dropped.
    links: PeerLinks,
    pub http: reqwest::Client,
    /// The nodes' tmpfs data dirs ([`Options::tmpfs_mib`]): after `nodes`,
    /// so the processes are gone when they are unmounted.
    _mounts: Vec<Tmpfs>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes that form one cluster: node 1 alone with `--init`,
    /// then each other node added through the admin API as a voter.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, Options::default()).await
    }

    pub async fn start_with(n: u64, options: Options) -> Cluster {
        Self::start_seeded(n, options, None).await
    }

    /// Starts `n` nodes as [`Cluster::start_with`] does, but node 1 from a
    /// backup: `tollgate snapshot restore BACKUP --data-dir … --id 1` seeds
    /// its data dir, and it starts without `--init` as the only voter of a
    /// new cluster; the others join it through the admin API.
    pub async fn start_restored(n: u64, options: Options, backup: &Path) -> Cluster {
        Self::start_seeded(n, options, Some(backup)).await
    }

    async fn start_seeded(n: u64, mut options: Options, backup: Option<&Path>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if options.tls {
            let certs = make_certs(&dir.path().join("certs"));
            for (flag, file) in
                [("--tls-cert", "node.pem"), ("--tls-key", "node-key.pem"), ("--tls-client-ca", "ca.pem")]
            {
                options.extra_args.extend([flag.to_string(), certs.join(file).display().to_string()]);
            }
            let ca = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate"));
        }
        let ids: Vec<u64> = (1..=n).collect();
        let links = if options.partitionable { PeerLinks::start(&ids).await } else { PeerLinks::default() };
        let mut nodes: Vec<Node> = ids
            .iter()
            .map(|&id| {
                let init = id == 1 && backup.is_none();
                Node::new(id, dir.path().join(format!("node{id}")), options.tls, init, links.args_of(id))
            })
            .collect();
        if let Some(backup) = backup {
            let out = Command::new(&options.bin)
                .args(["snapshot", "restore"])
                .arg(backup)
                .arg("--data-dir")
                .arg(&nodes[0].dir)
                .args(["--id", "1"])
                .output()
                .expect("run tollgate snapshot restore");
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "tollgate snapshot restore failed: {said}");
        }
        let mut mounts = Vec::new();
        if let Some(mib) = options.tmpfs_mib {
            for node in &nodes {
                mounts.push(Tmpfs::mount(&node.dir, mib).unwrap_or_else(|e| panic!("node {}: {e}", node.id)));
            }
        }
        for node in &mut nodes {
            node.spawn(&options);
        }
        for node in &mut nodes {
            node.wait_bound().await;
            links.target(node.id, node.peer_port);
        }
        let http = http.build().expect("client");
        let cluster = Cluster { nodes, options, links, http, _mounts: mounts, _dir: dir };
        cluster.wait_ready(1).await;
        for id in ids.into_iter().skip(1) {
            cluster.join(id, true).await;
            cluster.wait_ready(id).await;
        }
        cluster
    }

    /// Adds node `id` (running, not yet a member) through node 1's admin API,
    /// at the peer address the others dial it by.
    pub async fn join(&self, id: u64, voter: bool) {
        let node = self.node(id);
        let member = ClusterMember {
            id,
            http_addr: format!("127.0.0.1:{}", node.http_port),
            peer_addr: self.links.advertised(id).unwrap_or_else(|| format!("127.0.0.1:{}", node.peer_port)),
            wire_addr: node.wire_addr(),
            voter,
        };
        self.admin(1).add_node(&member).await.unwrap_or_else(|e| panic!("adding node {id}: {e}"));
    }

    /// Adds a node process that is not yet a member (it waits to be added).
    /// Its peer links are direct, also in a partitionable cluster.
    pub async fn spawn_extra(&mut self, id: u64) -> &Node {
        let mut node = Node::new(id, self._dir.path().join(format!("node{id}")), self.options.tls, false, Vec::new());
        node.spawn(&self.options);
        node.wait_bound().await;
        self.nodes.push(node);
        self.node(id)
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node")
    }

    /// Starts a stopped node's process again without waiting for it to bind
    /// (it may be expected to fail: [`Node::wait_exit`]).
    pub fn spawn_again(&mut self, id: u64) {
        let options = self.options.clone();
        self.node_mut(id).spawn(&options);
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("no such node")
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url()
    }

    /// The folder of the certificates ([`Options::tls`]): `ca.pem`,
    /// `node.pem`, `client.pem` and their keys.
    pub fn certs(&self) -> PathBuf {
        self._dir.path().join("certs")
    }

    pub fn data_dirs(&self) -> Vec<&Path> {
        self.nodes.iter().map(|n| n.dir.as_path()).collect()
    }

    pub fn kill(&mut self, id: u64) {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node").kill();
    }

    /// Starts a killed node again, on the ports it had.
    pub async fn restart(&mut self, id: u64) {
        let options = self.options.clone();
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("no such node");
        node.spawn(&options);
        node.wait_bound().await;
        self.wait_ready(id).await;
    }

    /// Starts the killed nodes `ids` again, all at once, and waits until each
    /// is ready (a node alone is not: it needs a quorum to be in touch with).
    pub async fn restart_all(&mut self, ids: &[u64]) {
        let options = self.options.clone();
        for &id in ids {
            let node = self.nodes.iter_mut().find(|n| n.id == id).expect("no such node");
            node.spawn(&options);
        }
        for &id in ids {
            self.nodes.iter_mut().find(|n| n.id == id).expect("no such node").wait_bound().await;
        }
        for &id in ids {
            self.wait_ready(id).await;
        }
    }

    /// Starts a killed node again with its wall clock shifted by
    /// `offset_ms` (`--clock-offset-ms`), which it keeps on later restarts.
    pub async fn restart_with_clock(&mut self, id: u64, offset_ms: i64) {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node").clock_offset_ms = Some(offset_ms);
        self.restart(id).await;
    }

    /// Waits until the node answers `/readyz` with 200.
    pub async fn wait_ready(&self, id: u64) {
        let url = self.url(id);
        wait_until(&format!("node {id} ready"), || launch::is_ready(&self.http, &url)).await;
    }

    /// The leader that every running node agrees on.
    pub async fn leader(&self) -> u64 {
        let running: Vec<u64> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect();
        self.leader_among(&running).await
    }

    /// The leader that the nodes `ids` agree on, one of them (say, the side of
    /// a partition that has a majority).
    pub async fn leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut seen = Vec::new();
            for &id in ids {
                let (_, status) = self.get(id, "/v1/admin/cluster").await;
                seen.push(status["leader_id"].as_u64());
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && ids.contains(l) {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "nodes {ids:?} never agreed on a leader among them: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts node `id` off from every other node, both ways: its links refuse
    /// new connections and drop the ones they carry (pooled keep-alive
    /// connections included). The process keeps running and answers its own
    /// HTTP clients. Needs [`Options::partitionable`].
    pub async fn cut(&self, id: u64) {
        self.links.set_cut(id, Some(Cut::Reset)).await;
    }

    /// Cuts `id` off as a firewall that drops packets does (iptables `DROP`):
    /// nothing is refused, nothing arrives. Connections it has stay open and
    /// carry nothing more; new ones are accepted and never answered. Callers
    /// see timeouts, never errors. Healing closes them all.
    pub async fn cut_silently(&self, id: u64) {
        self.links.set_cut(id, Some(Cut::Silent)).await;
    }

    /// Undoes [`Cluster::cut`] for `id`; links to nodes that are still cut
    /// stay cut.
    pub async fn heal(&self, id: u64) {
        self.links.set_cut(id, None).await;
    }

    /// Some running node other than `not`.
    pub fn other_than(&self, not: u64) -> u64 {
        self.nodes.iter().find(|n| n.id != not && n.is_running()).expect("another running node").id
    }

    /// The admin client of node `id` alone (the one admin client of
    /// `tollgate_client::admin`), through the harness's HTTP client: its CA
    /// and its 20 s timeout.
    pub fn admin(&self, id: u64) -> AdminClient {
        AdminClient::with_http([self.url(id)], TOKEN, self.http.clone()).expect("a node URL")
    }

    /// One admin call: status and JSON body (Null when empty); status 0 and
    /// the reason as a JSON string when the node could not be reached.
    pub async fn call(&self, id: u64, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.admin(id).request(method, path, body.as_ref()).await {
            Ok(answer) => answer,
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    pub async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        self.call(id, reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, id: u64, path: &str, body: Value) -> (u16, Value) {
        self.call(id, reqwest::Method::POST, path, Some(body)).await
    }

    /// Every object of a collection, following pages.
    pub async fn list_all(&self, id: u64, collection: &str, stale: bool) -> Vec<Value> {
        self.admin(id)
            .list_all(collection, stale)
            .await
            .unwrap_or_else(|e| panic!("listing {collection} on node {id}: {e}"))
    }

    /// The ids of every object of a collection on a node.
    pub async fn ids(&self, id: u64, collection: &str, stale: bool) -> Vec<String> {
        self.list_all(id, collection, stale)
            .await
            .iter()
            .map(|o| o["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// All node logs, concatenated.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default()).collect()
    }
}

/// The peer links of a partitionable cluster. Each node has an entry (a TCP
/// proxy to its peer port that is never cut), whose address is the peer
/// address it advertises; and each ordered pair of nodes has a link (a proxy
/// that can be cut). Node `from` dials `to` through their link: its
/// `--peer-via` maps `to`'s entry address to the link's port. Every proxy
/// binds port 0 once and keeps its listener for the cluster's life; a proxy
/// learns its target's port once the node has reported it.
#[derive(Default)]
struct PeerLinks {
    /// Node id -> its entry proxy.
    entries: Vec<(u64, Link)>,
    links: Vec<Link>,
    /// Node id -> its peer port (0 until known); shared with the proxies.
    targets: Vec<(u64, Arc<AtomicU16>)>,
    /// The nodes cut off now, and how; a link is open when neither end is
    /// cut (and cut as its first cut end says otherwise).
    cut: Mutex<BTreeMap<u64, Cut>>,
}

/// How a cut link fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Connections are reset, as by a host that is unreachable.
    Reset,
    /// Nothing gets through and nothing is refused (a packet filter's DROP).
    Silent,
}

/// Open the link (`None`) or cut it; answered once that is done.
type LinkCommand = (Option<Cut>, oneshot::Sender<()>);

struct Link {
    from: u64,
    to: u64,
    port: u16,
    control: mpsc::UnboundedSender<LinkCommand>,
    /// The proxy; aborted (with every connection it carries) on drop.
    proxy: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

impl Link {
    async fn start(from: u64, to: u64, target: Arc<AtomicU16>) -> Link {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind a peer link proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (control, commands) = mpsc::unbounded_channel();
        let proxy = tokio::spawn(proxy(listener, target, commands));
        Link { from, to, port, control, proxy }
    }
}

impl PeerLinks {
    /// Starts an entry per node and a link per ordered pair of `ids`.
    async fn start(ids: &[u64]) -> PeerLinks {
        let targets: Vec<(u64, Arc<AtomicU16>)> = ids.iter().map(|&id| (id, Arc::default())).collect();
        let target = |id: u64| targets.iter().find(|(t, _)| *t == id).map(|(_, p)| p.clone()).expect("target");
        let mut entries = Vec::new();
        let mut links = Vec::new();
        for &to in ids {
            entries.push((to, Link::start(0, to, target(to)).await));
            for &from in ids.iter().filter(|from| **from != to) {
                links.push(Link::start(from, to, target(to)).await);
            }
        }
        PeerLinks { entries, links, targets, cut: Mutex::default() }
    }

    /// The peer address node `id` advertises (its entry), if proxied.
    fn advertised(&self, id: u64) -> Option<String> {
        self.entries.iter().find(|(e, _)| *e == id).map(|(_, link)| format!("127.0.0.1:{}", link.port))
    }

    /// Node `id`'s own flags: the peer address it advertises, and where it
    /// dials each other node.
    fn args_of(&self, id: u64) -> Vec<String> {
        let Some(advertised) = self.advertised(id) else { return Vec::new() };
        let via: Vec<String> = self
            .links
            .iter()
            .filter(|l| l.from == id)
            .map(|l| format!("{}=127.0.0.1:{}", self.advertised(l.to).expect("entry"), l.port))
            .collect();
        vec!["--advertise-peer".into(), advertised, "--peer-via".into(), via.join(",")]
    }

    /// Node `id` listens for peers on `port`.
    fn target(&self, id: u64, port: u16) {
        if let Some((_, target)) = self.targets.iter().find(|(t, _)| *t == id) {
            target.store(port, Ordering::SeqCst);
        }
    }

    /// Marks `id` cut (or not) and waits until every link reflects it.
    async fn set_cut(&self, id: u64, cut: Option<Cut>) {
        assert!(
            self.links.iter().any(|l| l.from == id),
            "node {id} has no proxied peer links: start the cluster with `partitionable: true`"
        );
        let mut answers = Vec::new();
        {
            let mut cut_off = self.cut.lock().expect("cut set");
            match cut {
                Some(how) => cut_off.insert(id, how),
                None => cut_off.remove(&id),
            };
            for link in self.links.iter().filter(|l| l.from == id || l.to == id) {
                let state = cut_off.get(&link.from).or(cut_off.get(&link.to)).copied();
                let (done, answer) = oneshot::channel();
                link.control.send((state, done)).expect("peer link proxy stopped");
                answers.push((link.from, link.to, answer));
            }
        }
        for (from, to, answer) in answers {
            answer.await.unwrap_or_else(|_| panic!("the peer link proxy {from}->{to} stopped"));
        }
    }
}

/// One peer link: accepts on `listener` and forwards each connection to
/// `target` on loopback. Cut with [`Cut::Reset`], it drops every connection
/// it carries and resets each new one at once; cut with [`Cut::Silent`], its
/// connections stop carrying anything and new ones are held unanswered,
/// until the link is open again (then they are closed). The listener stays
/// bound, so the port is never free for another process to take. Ends when
/// its controller is dropped.
async fn proxy(
    listener: tokio::net::TcpListener,
    target: Arc<AtomicU16>,
    mut commands: mpsc::UnboundedReceiver<LinkCommand>,
) {
    let (state_tx, state) = tokio::sync::watch::channel(None::<Cut>);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((now, done)) = command else { return };
                state_tx.send_replace(now);
                if now == Some(Cut::Reset) {
                    connections.shutdown().await;
                }
                let _ = done.send(());
            }
            Ok((inbound, _)) = listener.accept() => {
                let port = target.load(Ordering::SeqCst);
                match *state.borrow() {
                    None if port != 0 => {
                        connections.spawn(forward(inbound, port, state.clone()));
                    }
                    Some(Cut::Silent) => {
                        let mut state = state.clone();
                        connections.spawn(async move {
                            let _ = state.wait_for(Option::is_none).await;
                            drop(inbound);
                        });
                    }
                    _ => {
                        // A reset, as from a host that is unreachable.
                        let _ = inbound.set_zero_linger();
                        drop(inbound);
                    }
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Copies bytes both ways between `inbound` and a new connection to `target`
/// until either side closes. If `target` is down, `inbound` is just closed.
/// A silent cut freezes the copy: both sockets stay open, carrying nothing,
/// until the link is open again; then both are closed.
async fn forward(
    mut inbound: tokio::net::TcpStream,
    target: u16,
    mut state: tokio::sync::watch::Receiver<Option<Cut>>,
) {
    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let silenced = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = state.wait_for(|s| *s == Some(Cut::Silent)) => true,
    };
    if silenced {
        let _ = state.wait_for(Option::is_none).await;
    }
}

/// A tmpfs mounted on a directory; unmounted (lazily, so a process that
/// still has a file open cannot keep it) when dropped, also in a panic.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a `mib` MiB tmpfs on `dir` (created if missing).
    pub fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).stdin(Stdio::null()).status();
    }
}

/// Whether this process may mount a tmpfs (it runs as root and mounting
/// works here); if not, why not.
pub fn tmpfs_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root, so no tmpfs can be mounted".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    Tmpfs::mount(&dir.path().join("probe"), 1).map(drop)
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`
/// (as `df` shows them).
pub fn available_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: statvfs(3) fills the struct we pass; `path` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs {}: {}", dir.display(), std::io::Error::last_os_error());
    stat.f_bavail.saturating_mul(stat.f_frsize)
}

/// Writes `DIR/filler` until only about `leave` bytes stay available on the
/// filesystem of `dir` (0: until it is full); returns its path.
pub fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("filler");
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        let available = available_bytes(dir);
        if available <= leave {
            break;
        }
        let n = usize::try_from(available - leave).unwrap_or(usize::MAX).min(chunk.len());
        match file.write_all(&chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("writing {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    path
}

/// Polls `check` until it holds; panics after [`PATIENCE`]. This is a bound on
/// a wait for an event, not a timing assertion: a correct system passes it
/// long before.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proxy tests' API, `pets` (stage `prod`): key-protected routes
/// (`/pets/*`, `/admin/*`), open ones (`/public`, `/open/*`), `/ipzone/*`
/// that only 203.0.113.0/24 may use, `/authz/*` behind an HTTP authorizer
/// nobody answers (503), CORS for `https://app.example.com`, and a WAF rule
/// blocking `union` in the query; plan `gold` with a burst of 3; key
/// `alice` in it. Returns (key id, key secret) once every node has them.
pub async fn pets_api(cluster: &Cluster) -> (String, String) {
    let leader = cluster.leader().await;
    // An HTTP authorizer nobody answers for: its route is a 503.
    let down = serde_json::json!({"id": "down", "name": "down", "kind": {"http": {"url": "http://127.0.0.1:1/authorize",
        "identity_sources": ["header:authorization"], "timeout_ms": 500}}});
    assert_eq!(cluster.post(leader, "/v1/admin/authorizers", down).await.0, 201);
    let api = serde_json::json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": true}, {"method": "GET", "path": "/public"},
            {"method": "*", "path": "/admin/*", "api_key_required": true}, {"method": "GET", "path": "/ipzone/*"},
            {"method": "GET", "path": "/open/*"},
            {"method": "GET", "path": "/authz/*", "authorizer_id": "down"}],
        "cors": {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "DELETE"], "allow_headers": ["x-api-key"]},
        "waf": [{"name": "sqli", "action": "block", "condition": {"query_matches": "(?i)union"}}]});
    assert_eq!(cluster.post(leader, "/v1/admin/apis", api).await.0, 201);
    let plan = serde_json::json!({"id": "gold", "name": "Gold", "throttle": {"rate_per_sec": 0.2, "burst": 3},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    assert_eq!(cluster.post(leader, "/v1/admin/plans", plan).await.0, 201);
    // Only 203.0.113.0/24 may use /ipzone/*.
    let policy = serde_json::json!({"name": "ipzone", "api_id": "pets", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*"]},
        {"effect": "Deny", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*/GET/ipzone/*"],
         "conditions": [{"operator": "NotIpAddress", "key": "source_ip", "values": ["203.0.113.0/24"]}]}]});
    assert_eq!(cluster.post(leader, "/v1/admin/policies", policy).await.0, 201);
    let (status, key) =
        cluster.post(leader, "/v1/admin/keys", serde_json::json!({"name": "alice", "plan_ids": ["gold"]})).await;
    assert_eq!(status, 201, "{key}");
    // Every node must have the model before the proxy asks any of them.
    for node in [1, 2, 3] {
        wait_until("model replicated", || async {
            cluster.get(node, "/v1/admin/keys?stale=true").await.1["items"].as_array().is_some_and(|k| k.len() == 1)
                && cluster.get(node, "/v1/admin/policies?stale=true").await.1["items"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1)
        })
        .await;
    }
    (key["id"].as_str().unwrap_or_default().to_string(), key["secret"].as_str().unwrap_or_default().to_string())
}

/// A plan body with the given id.
pub fn plan(id: &str) -> Value {
    serde_json::json!({"id": id, "name": format!("plan {id}"), "throttle": {"rate_per_sec": 10.0, "burst": 20}})
}

/// Any child process (nginx, Caddy) that is killed when dropped, or when the
/// test process dies.
pub struct Process {
    child: Option<Child>,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Process {
        let log = std::fs::File::create(log).expect("log file");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log file")).stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {name} ({e}); .ci/run installs it"));
        Process { child: Some(child), name: name.to_string() }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something answers HTTP on `url`.
pub async fn wait_http(http: &reqwest::Client, url: &str) {
    wait_until(&format!("{url} answers"), || async { http.get(url).send().await.is_ok() }).await;
}

/// POSTs headers announcing a `length`-byte body (and no body) over a raw
/// socket and returns the status the server answers with. An oversized body
/// must be refused from its `Content-Length` alone; sending the body too would
/// race the server closing the connection.
pub async fn post_announcing(http_port: u16, path: &str, length: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer)).await.expect("answer in time").expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text}"))
}

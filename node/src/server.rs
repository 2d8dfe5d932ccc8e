//! Starting and stopping one node: bind the listeners, open its storage and
//! handles ([`App::open`]), start the background tasks, initialise the
//! cluster if asked, serve until shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{App, Node};
use crate::cluster::authority::ClusterAuthority;
use crate::cluster::{typ, NodeAddr};
use crate::config::NodeConfig;
use crate::http::{HttpState, Settings};
use crate::store::{Kv, SledKv};

/// What a started node reports about itself (also written to
/// `DATA_DIR/node.json` so tools and tests find the bound ports).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    pub id: u64,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub wire: SocketAddr,
    /// The `--grpc` listener (Envoy's ext_authz).
    pub grpc: SocketAddr,
    /// The `--metrics-addr` listener, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

/// The longest a stop may take, from SIGTERM (or Raft stopping) to the
/// process exiting: past it, the process exits with status 1 whatever it was
/// waiting for (a Raft core stuck in storage, a sled flush on a full disk).
pub const STOP_LIMIT: Duration = Duration::from_secs(8);
/// How long Raft may take to stop.
const RAFT_STOP: Duration = Duration::from_secs(3);
/// How long the last storage flush may take.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Why a node stopped serving (what [`Started::serve`] answers).
#[derive(Debug)]
pub enum Stop {
    /// Asked to (SIGTERM, Ctrl-C): exit 0.
    Asked,
    /// Raft stopped on its own (a storage error such as a full disk): exit
    /// non-zero so the supervisor (systemd, `tollgate dev`) starts the node
    /// again, which then opens its storage afresh and catches up.
    RaftStopped(String),
    /// The node could not initialise the cluster or write `node.json`: exit
    /// non-zero with the reason.
    Failed(String),
}

/// Runs a node until `shutdown` completes (`Ok`), or until Raft stops on an
/// error (`Err`, so the process exits non-zero and its supervisor restarts
/// it: sled keeps failing after an I/O error, so Raft cannot be restarted in
/// this process). Either way the stop is bounded by [`STOP_LIMIT`].
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let node = start(config).await?;
    let stop = node.serve(shutdown).await;
    arm_stop_limit();
    node.stop(stop).await
}

/// A node started in this process by [`start`]: the handles its listeners
/// share, where it listens, and what it needs to stop. [`run`] serves one
/// for the process; tests run several in one process to reach a real node's
/// own handles (its metering authority, its model).
pub struct Started {
    /// The handles the listeners share.
    pub app: Arc<App>,
    /// The node's quota and throttle authority: quota grants and usage
    /// reports as Raft writes (forwarded to the leader), throttle tokens lent
    /// by the leader.
    pub authority: Arc<ClusterAuthority>,
    /// The addresses the listeners bound (also in `DATA_DIR/node.json`).
    pub endpoints: Endpoints,
    config: NodeConfig,
    /// What the other members are told to dial.
    addr: NodeAddr,
    kv: Arc<SledKv>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    elections_task: tokio::task::JoinHandle<()>,
    listener_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds the node's listeners, opens its storage and handles
/// ([`App::open`]), starts Raft's elections and the metering's reports, and
/// serves every listener; the cluster is initialised (if asked) and
/// `node.json` written by [`Started::serve`].
///
/// Errors: a listener cannot bind, the TLS files cannot be read, the data
/// dir cannot be made or opened, or Raft does not start.
pub async fn start(config: NodeConfig) -> anyhow::Result<Started> {
    let outbound_roots = match &config.tls.outbound_ca {
        Some(path) => crate::tls::outbound_roots(path)?,
        None => Vec::new(),
    };
    let tls = Tls::of(&config, &outbound_roots)?;
    let http_listener = TcpListener::bind(&config.listen.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", config.listen.http))?;
    let peer_listener = TcpListener::bind(&config.listen.peer)
        .await
        .with_context(|| format!("cannot listen on --peer {}", config.listen.peer))?;
    let wire_listener = TcpListener::bind(&config.listen.wire)
        .await
        .with_context(|| format!("cannot listen on --wire {}", config.listen.wire))?;
    let grpc_listener = TcpListener::bind(&config.listen.grpc)
        .await
        .with_context(|| format!("cannot listen on --grpc {}", config.listen.grpc))?;
    let metrics_listener = match &config.metrics.addr {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --metrics-addr {addr}"))?)
        }
        None => None,
    };
    if config.cluster.token.is_none() {
        tracing::warn!("--insecure-peer-auth-off: the peer port accepts anyone; never run a cluster like this");
    }
    let endpoints = Endpoints {
        id: config.id,
        http: http_listener.local_addr()?,
        peer: peer_listener.local_addr()?,
        wire: wire_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    let addr = NodeAddr {
        http: config.listen.advertise_http.clone().unwrap_or_else(|| endpoints.http.to_string()),
        peer: config.listen.advertise_peer.clone().unwrap_or_else(|| endpoints.peer.to_string()),
        wire: config.listen.advertise_wire.clone().unwrap_or_else(|| endpoints.wire.to_string()),
    };

    let Node { app, peer: peer_state, kv, disk_gauges: gauges } =
        App::open(&config, addr.clone(), tls.peer_client.clone(), &outbound_roots).await?;
    let authority = peer_state.authority.clone();
    let http = HttpState { app: app.clone(), settings: Arc::new(Settings::of(&config)) };
    let failures = http.settings.admin_auth_failures.clone();
    let max = config.listen.max_connections;
    app.gateway.metering.start_reporting();
    let elections_task = tokio::spawn(app.elections.clone().run());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut listener_tasks = vec![
        ended(serve(http_listener, tls.http.clone(), crate::http::router(http.clone()), max, stop_rx.clone())?),
        ended(serve(peer_listener, tls.peer, crate::cluster::peer::router(peer_state), max, stop_rx.clone())?),
    ];
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "metrics on their own listener");
        let router = crate::http::ops::metrics_router(http);
        listener_tasks.push(ended(serve(listener, tls.http.clone(), router, max, stop_rx.clone())?));
    }
    let trusted = crate::http::forwarded::TrustedProxies(config.trust.trusted_proxies.clone());
    let grpc = crate::grpc::serve(grpc_listener, tls.grpc, app.clone(), trusted, failures, max, stop_rx.clone());
    listener_tasks.push(tokio::spawn(grpc));
    let wire_tls = tls.wire.map(tokio_rustls::TlsAcceptor::from);
    listener_tasks.push(tokio::spawn(crate::wire::serve(wire_listener, wire_tls, app.clone(), max, stop_rx.clone())));
    let (disk, leader, data_dir) = (app.disk.clone(), app.leader.clone(), config.storage.data_dir.clone());
    listener_tasks.push(tokio::spawn(crate::cluster::disk::watch(disk, leader, data_dir, gauges, stop_rx)));
    Ok(Started { app, authority, endpoints, config, addr, kv, stop_tx, elections_task, listener_tasks })
}

/// A listener's task, its result dropped: a listener that fails has said why
/// in the log, and the node stops the same way whatever each one answered.
fn ended(task: tokio::task::JoinHandle<std::io::Result<()>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = task.await;
    })
}

impl Started {
    /// Initialises the cluster if asked, writes `node.json`, then serves
    /// until `shutdown` completes ([`Stop::Asked`]) or Raft stops on its own
    /// ([`Stop::RaftStopped`]); [`Stop::Failed`] if it cannot start.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Stop {
        let raft = &self.app.raft;
        let stopped = raft_stopped(raft.clone());
        tokio::pin!(stopped);
        tokio::select! {
            reason = &mut stopped => Stop::RaftStopped(reason),
            started = announce(raft, &self.config, &self.addr, &self.endpoints) => {
                if let Err(e) = started {
                    return Stop::Failed(format!("{e:#}"));
                }
                tokio::select! {
                    _ = shutdown => Stop::Asked,
                    reason = &mut stopped => Stop::RaftStopped(reason),
                    _ = keep_own_address(raft.clone(), self.config.id, self.addr.clone()) => {
                        Stop::Failed("the own-address task ended".into())
                    }
                }
            }
        }
    }

    /// Stops the node for `stop`: hands back the quota it holds (when asked
    /// to stop), stops Raft, lets each listener's connections finish (at most
    /// 5 s) and flushes storage. Errs for [`Stop::RaftStopped`] and
    /// [`Stop::Failed`], or when storage does not flush in time.
    pub async fn stop(self, stop: Stop) -> anyhow::Result<()> {
        match &stop {
            Stop::Asked => tracing::info!("shutting down"),
            Stop::RaftStopped(reason) => {
                tracing::error!(%reason, "raft stopped; exiting so that the node is started again from its storage")
            }
            Stop::Failed(reason) => tracing::error!(%reason, "the node could not start"),
        }
        let app = &self.app;
        // Hand back the quota this node holds, so other nodes can use it now.
        if matches!(stop, Stop::Asked) {
            let flush = app.gateway.metering.flush(app.clock.now_ms(), true);
            let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        }
        let _ = self.stop_tx.send(true);
        if tokio::time::timeout(RAFT_STOP, app.raft.shutdown()).await.is_err() {
            tracing::warn!("raft did not stop in {} s; going on", RAFT_STOP.as_secs());
        }
        self.elections_task.abort();
        // Each listener lets its connections finish for at most 5 s.
        for task in self.listener_tasks {
            let _ = task.await;
        }
        let flushed = tokio::time::timeout(FLUSH_LIMIT, self.kv.flush()).await;
        match stop {
            Stop::RaftStopped(reason) => anyhow::bail!("raft stopped: {reason}"),
            Stop::Failed(reason) => anyhow::bail!("{reason}"),
            Stop::Asked => match flushed {
                Ok(result) => Ok(result?),
                Err(_) => anyhow::bail!("storage did not flush in {} s", FLUSH_LIMIT.as_secs()),
            },
        }
    }
}

/// Initialises the cluster if asked, then says where the node listens.
async fn announce(raft: &typ::Raft, config: &NodeConfig, addr: &NodeAddr, endpoints: &Endpoints) -> anyhow::Result<()> {
    initialise(raft, config, addr).await?;
    write_endpoints(config, endpoints)?;
    tracing::info!(id = config.id, http = %endpoints.http, peer = %endpoints.peer, wire = %endpoints.wire, grpc = %endpoints.grpc, "node started");
    Ok(())
}

/// Keeps this node's addresses in the membership true: when it leads and the
/// membership records other addresses for it (a node restored from a backup
/// records none, see `cluster::backup`; one started again on other ports), it
/// sets its own entry with openraft's `SetNodes`, for this node only: the
/// voters do not change. A follower's stale entry waits until it leads.
/// Never completes.
async fn keep_own_address(raft: typ::Raft, id: u64, addr: NodeAddr) {
    let mut metrics = raft.metrics();
    loop {
        let stale = {
            let m = metrics.borrow_and_update();
            m.current_leader == Some(id)
                && m.membership_config.membership().get_node(&id).is_some_and(|recorded| *recorded != addr)
        };
        if stale {
            let change = openraft::ChangeMembers::SetNodes([(id, addr.clone())].into());
            match raft.change_membership(change, false).await {
                Ok(_) => tracing::info!(%addr, "this node's addresses updated in the membership"),
                Err(e) => {
                    // Another membership change in progress, or leadership
                    // lost: look again in a moment.
                    tracing::warn!(error = %e, "could not update this node's addresses in the membership");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Completes with the reason once this node's Raft has stopped on its own
/// (openraft reports it in its metrics, `running_state`).
async fn raft_stopped(raft: typ::Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the raft core ended".to_string();
        }
    }
}

/// Makes sure the process ends within [`STOP_LIMIT`] from now: a thread of
/// its own, outside the runtime, exits with status 1 if it still runs then.
fn arm_stop_limit() {
    let armed = std::thread::Builder::new().name("stop-limit".into()).spawn(|| {
        std::thread::sleep(STOP_LIMIT);
        tracing::error!(limit_s = STOP_LIMIT.as_secs(), "the node did not stop in time; exiting now");
        std::process::exit(1);
    });
    if let Err(e) = armed {
        tracing::warn!(error = %e, "cannot bound the stop time");
    }
}

/// The TLS set-up of each listener and of calls to peers (see `crate::tls`).
struct Tls {
    http: Option<Arc<rustls::ServerConfig>>,
    peer: Option<Arc<rustls::ServerConfig>>,
    /// The wire and gRPC listeners': a client certificate the cluster CA
    /// signed authenticates a proxy, or it presents a token.
    wire: Option<Arc<rustls::ServerConfig>>,
    /// The wire listener's, offering HTTP/2 by ALPN (gRPC clients insist on it).
    grpc: Option<Arc<rustls::ServerConfig>>,
    peer_client: Option<crate::tls::PeerTls>,
}

impl Tls {
    fn of(config: &NodeConfig, outbound_roots: &[reqwest::Certificate]) -> anyhow::Result<Tls> {
        use crate::tls::{server_config, ClientAuth, PeerTls};
        let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
            return Ok(Tls { http: None, peer: None, wire: None, grpc: None, peer_client: None });
        };
        let ca = config.tls.client_ca.as_deref();
        if ca.is_none() {
            tracing::warn!(
                "TLS without --tls-client-ca: peers show no certificate, and verify each other's against the \
                 public web roots and --outbound-ca only"
            );
        }
        let wire = server_config(cert, key, ca.map_or(ClientAuth::None, ClientAuth::Optional))?;
        let mut grpc = (*wire).clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            http: Some(server_config(cert, key, ClientAuth::None)?),
            peer: Some(server_config(cert, key, ca.map_or(ClientAuth::None, ClientAuth::Required))?),
            wire: Some(wire),
            grpc: Some(Arc::new(grpc)),
            peer_client: Some(PeerTls::new(cert, key, ca, outbound_roots)?),
        })
    }
}

/// Header lines a request may have: the check takes up to
/// [`crate::gateway::MAX_FIELDS`] of the original request's, and a proxy
/// adds its own. (hyper's default, 100, answered 431 below that, which nginx
/// turns into a 500.)
pub const MAX_REQUEST_HEADERS: usize = crate::gateway::MAX_FIELDS + 64;

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `stop`, with at most `max_connections` open at once.
fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    max_connections: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    Ok(match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            tokio::spawn(serve_connections(listener, router, max_connections, stop))
        }
        None => tokio::spawn(serve_connections(listener, router, max_connections, stop)),
    })
}

/// Accepts connections (at most `max_connections` open, see
/// [`crate::connections::OpenConnections`]) and serves each with hyper (HTTP/1.1 and HTTP/2),
/// the peer's address given to handlers as `ConnectInfo`. On `stop`, accepts
/// no more and lets the connections in flight finish (at most 5 s).
async fn serve_connections<L>(
    mut listener: L,
    router: axum::Router,
    max_connections: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower_layer::Layer as _;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).max_headers(MAX_REQUEST_HEADERS);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = crate::connections::OpenConnections::new("HTTP", max_connections);
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => {
                let Some(permit) = open.admit(addr) else { continue };
                let service = axum::Extension(axum::extract::ConnectInfo(addr)).layer(router.clone());
                let service = hyper_util::service::TowerToHyperService::new(service);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Initialises a new cluster once: with `--init`, this node alone; with
/// `--peers`, all of them, done by the member with the lowest id.
async fn initialise(raft: &typ::Raft, config: &NodeConfig, addr: &NodeAddr) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    let members: std::collections::BTreeMap<_, _> = if config.cluster.init {
        [(config.id, addr.clone())].into()
    } else if config.cluster.peers.iter().map(|(id, _)| *id).min() == Some(config.id) {
        config.cluster.peers.iter().cloned().collect()
    } else {
        return Ok(());
    };
    tracing::info!(members = members.len(), "initialising a new cluster");
    raft.initialize(members).await.context("initialising the cluster")?;
    Ok(())
}

fn write_endpoints(config: &NodeConfig, endpoints: &Endpoints) -> anyhow::Result<()> {
    let path = config.storage.data_dir.join("node.json");
    let tmp = config.storage.data_dir.join("node.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(endpoints)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

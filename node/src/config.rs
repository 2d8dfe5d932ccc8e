//! `tollgate serve` configuration: every option is a flag, an environment
//! variable (`TOLLGATE_*`) and a key in the TOML file given by `--config`.
//! Precedence: flag, then environment, then file, then the default here.
//!
//! One part per subsystem, each in three pieces side by side: its defaults
//! (`DEFAULT_*`), its flags (`*Args`, flattened into [`ServeArgs`]: the
//! flags, environment variables and file keys stay flat, the `--help`
//! groups them under the subsystem's heading) and its resolved settings
//! (`*Config`, a part of [`NodeConfig`]). Secrets come only from the
//! environment, never from flags or the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::cluster::{NodeAddr, NodeId};
use crate::logging::LogFormat;

/// The flags of `tollgate serve`. Unset ones fall back to the file, then defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct ServeArgs {
    /// TOML file with any of these options (keys as the long flag, with `_`).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id: a whole number above 0, unique in the cluster.
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    pub id: Option<NodeId>,
    #[command(flatten, next_help_heading = "Listeners")]
    #[serde(flatten)]
    pub listen: ListenArgs,
    #[command(flatten, next_help_heading = "Cluster")]
    #[serde(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten, next_help_heading = "Raft")]
    #[serde(flatten)]
    pub raft: RaftArgs,
    #[command(flatten, next_help_heading = "Storage")]
    #[serde(flatten)]
    pub storage: StorageArgs,
    #[command(flatten, next_help_heading = "Quota leases")]
    #[serde(flatten)]
    pub quota: QuotaArgs,
    #[command(flatten, next_help_heading = "TLS")]
    #[serde(flatten)]
    pub tls: TlsArgs,
    #[command(flatten, next_help_heading = "Trust")]
    #[serde(flatten)]
    pub trust: TrustArgs,
    #[command(flatten, next_help_heading = "Admin authentication")]
    #[serde(flatten)]
    pub admin: AdminAuthArgs,
    #[command(flatten, next_help_heading = "Metrics")]
    #[serde(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten, next_help_heading = "Logging")]
    #[serde(flatten)]
    pub log: LogArgs,
    /// Keys of the file that are no option: refused (serde's
    /// `deny_unknown_fields` does not work with `flatten`). Last: it gets
    /// what the parts above left.
    #[arg(skip)]
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A fully resolved node configuration, one part per subsystem.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id: above 0, unique in the cluster. Required (`--id`).
    pub id: NodeId,
    pub listen: Listeners,
    pub cluster: ClusterConfig,
    pub raft: RaftConfig,
    pub storage: StorageConfig,
    pub quota: QuotaConfig,
    pub tls: TlsConfig,
    pub trust: TrustConfig,
    pub admin: AdminAuthConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

// --- Listeners -------------------------------------------------------------

pub const DEFAULT_HTTP: &str = "127.0.0.1:8081";
pub const DEFAULT_PEER: &str = "127.0.0.1:9081";
pub const DEFAULT_WIRE: &str = "127.0.0.1:10081";
pub const DEFAULT_GRPC: &str = "127.0.0.1:11081";
/// Connections one client-facing listener keeps open at once: well under
/// the file descriptors a node is given, so a flood of idle connections
/// leaves the other listeners (the peer port: Raft) working.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct ListenArgs {
    /// Address of the HTTP listener (check, admin, metrics).
    #[arg(long, env = "TOLLGATE_HTTP_ADDR")]
    pub http: Option<String>,
    /// Address of the peer listener (Raft).
    #[arg(long, env = "TOLLGATE_PEER_ADDR")]
    pub peer: Option<String>,
    /// Address of the binary check listener (tollgate-client).
    #[arg(long, env = "TOLLGATE_WIRE_ADDR")]
    pub wire: Option<String>,
    /// Address of the gRPC listener (Envoy's ext_authz v3).
    #[arg(long, env = "TOLLGATE_GRPC")]
    pub grpc: Option<String>,
    /// Connections each client-facing listener (HTTP, wire, gRPC) keeps
    /// open at once; past it a new one is closed as soon as it is accepted
    /// (default 4096).
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// Address clients use to reach the wire listener (default: --wire).
    #[arg(long, env = "TOLLGATE_ADVERTISE_WIRE")]
    pub advertise_wire: Option<String>,
    /// Address other nodes use to reach this one's HTTP listener (default: --http).
    #[arg(long, env = "TOLLGATE_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// Address other nodes use to reach this one's peer listener (default: --peer).
    #[arg(long, env = "TOLLGATE_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
}

/// Where the node listens, and the addresses others reach it at.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// HTTP listener: check, forward-auth, admin, health, metrics. Default [`DEFAULT_HTTP`].
    pub http: String,
    /// Peer listener: Raft and the requests followers forward. Default [`DEFAULT_PEER`].
    pub peer: String,
    /// Binary check listener (tollgate-client). Default [`DEFAULT_WIRE`].
    pub wire: String,
    /// gRPC listener: Envoy's `envoy.service.auth.v3.Authorization` (ext_authz).
    /// Default [`DEFAULT_GRPC`].
    pub grpc: String,
    /// Connections each of the HTTP, wire and gRPC listeners keeps open at
    /// once. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Address other nodes use for the HTTP listener. Optional: the bound one.
    pub advertise_http: Option<String>,
    /// Address other nodes use for the peer listener. Optional: the bound one.
    pub advertise_peer: Option<String>,
    /// Address clients use for the wire listener. Optional: the bound one.
    pub advertise_wire: Option<String>,
}

impl ListenArgs {
    fn resolve(self, file: ListenArgs) -> Listeners {
        Listeners {
            http: self.http.or(file.http).unwrap_or_else(|| DEFAULT_HTTP.into()),
            peer: self.peer.or(file.peer).unwrap_or_else(|| DEFAULT_PEER.into()),
            wire: self.wire.or(file.wire).unwrap_or_else(|| DEFAULT_WIRE.into()),
            grpc: self.grpc.or(file.grpc).unwrap_or_else(|| DEFAULT_GRPC.into()),
            max_connections: self.max_connections.or(file.max_connections).map_or(DEFAULT_MAX_CONNECTIONS, |n| {
                usize::try_from(n.clamp(1, 1_000_000)).unwrap_or(DEFAULT_MAX_CONNECTIONS)
            }),
            advertise_http: self.advertise_http.or(file.advertise_http),
            advertise_peer: self.advertise_peer.or(file.advertise_peer),
            advertise_wire: self.advertise_wire.or(file.advertise_wire),
        }
    }
}

// --- Cluster membership and peer authentication ----------------------------

/// Shortest cluster token accepted (`TOLLGATE_CLUSTER_TOKEN`).
pub const MIN_CLUSTER_TOKEN_CHARS: usize = 16;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct ClusterArgs {
    /// Initialise a new single-node cluster with this node (once; ignored
    /// later). `--init` alone means `--init true`.
    #[arg(long, env = "TOLLGATE_INIT", num_args = 0..=1, default_missing_value = "true")]
    pub init: Option<bool>,
    /// The initial members, `ID=HTTP_ADDR/PEER_ADDR[/WIRE_ADDR]` separated by
    /// commas (the wire address lets tollgate-client find the binary port); the
    /// member with the lowest id initialises the cluster on first start.
    #[arg(long, env = "TOLLGATE_PEERS")]
    pub peers: Option<String>,
    /// Where to dial peers whose advertised peer address is not reachable as
    /// is (behind NAT, or through a proxy): `ADVERTISED=DIAL` pairs separated
    /// by commas, e.g. `10.0.0.2:9081=192.168.1.2:19081`.
    #[arg(long, env = "TOLLGATE_PEER_VIA")]
    pub peer_via: Option<String>,
    /// Run with no peer authentication at all (no `TOLLGATE_CLUSTER_TOKEN`):
    /// anyone who can reach the peer port can then append to the log. Only
    /// for a throwaway node on a machine of your own.
    #[arg(long, env = "TOLLGATE_INSECURE_PEER_AUTH_OFF")]
    #[serde(default)]
    pub insecure_peer_auth_off: bool,
}

/// Which cluster the node starts or joins, how it reaches its peers, and
/// how peers prove they are members.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Initialise a new single-node cluster (`--init`). Default false.
    pub init: bool,
    /// The initial members (`--peers`); the lowest id initialises. Default none.
    pub peers: Vec<(NodeId, NodeAddr)>,
    /// Advertised peer address -> the address this node dials instead. Default none.
    pub peer_via: HashMap<String, String>,
    /// Token every peer must present (`TOLLGATE_CLUSTER_TOKEN`, at least
    /// [`MIN_CLUSTER_TOKEN_CHARS`]). Required unless `insecure_peer_auth_off`.
    pub token: Option<String>,
    /// No peer authentication (`--insecure-peer-auth-off`). Default false.
    pub insecure_peer_auth_off: bool,
}

impl ClusterArgs {
    fn resolve(self, file: ClusterArgs, token: Option<String>) -> Result<ClusterConfig, ConfigError> {
        let peers = match self.peers.or(file.peers) {
            Some(text) => parse_peers(&text)?,
            None => Vec::new(),
        };
        Ok(ClusterConfig {
            init: self.init.or(file.init).unwrap_or(false),
            peers,
            peer_via: match self.peer_via.or(file.peer_via) {
                Some(text) => parse_peer_via(&text)?,
                None => HashMap::new(),
            },
            token,
            insecure_peer_auth_off: self.insecure_peer_auth_off || file.insecure_peer_auth_off,
        })
    }
}

// --- Raft timing and snapshots ---------------------------------------------

pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 400;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 800;
/// Build a snapshot after this many entries since the last one.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 10_000;
/// Entries kept in the log behind a snapshot (lets a briefly absent follower
/// catch up without a snapshot transfer).
pub const DEFAULT_KEEP_LOGS: u64 = 1_000;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct RaftArgs {
    /// Milliseconds between the leader's heartbeats (default 100).
    #[arg(long, env = "TOLLGATE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Shortest election timeout, ms (default 400; above twice the heartbeat).
    #[arg(long, env = "TOLLGATE_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Longest election timeout, ms (default 800; above the shortest).
    #[arg(long, env = "TOLLGATE_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Entries between snapshots.
    #[arg(long, env = "TOLLGATE_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Entries kept behind a snapshot.
    #[arg(long, env = "TOLLGATE_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
}

/// Raft's timing and log compaction. Must hold
/// `heartbeat_ms * 2 < election_min_ms < election_max_ms`.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Leader heartbeat, ms. Default [`DEFAULT_HEARTBEAT_MS`].
    pub heartbeat_ms: u64,
    /// Shortest election timeout, ms. Default [`DEFAULT_ELECTION_MIN_MS`].
    pub election_min_ms: u64,
    /// Longest election timeout, ms. Default [`DEFAULT_ELECTION_MAX_MS`].
    pub election_max_ms: u64,
    /// Entries between snapshots. Default [`DEFAULT_SNAPSHOT_LOGS`].
    pub snapshot_logs: u64,
    /// Entries kept behind a snapshot. Default [`DEFAULT_KEEP_LOGS`].
    pub keep_logs: u64,
}

impl RaftArgs {
    fn resolve(self, file: RaftArgs) -> RaftConfig {
        RaftConfig {
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(DEFAULT_HEARTBEAT_MS),
            election_min_ms: self.election_min_ms.or(file.election_min_ms).unwrap_or(DEFAULT_ELECTION_MIN_MS),
            election_max_ms: self.election_max_ms.or(file.election_max_ms).unwrap_or(DEFAULT_ELECTION_MAX_MS),
            snapshot_logs: self.snapshot_logs.or(file.snapshot_logs).unwrap_or(DEFAULT_SNAPSHOT_LOGS),
            keep_logs: self.keep_logs.or(file.keep_logs).unwrap_or(DEFAULT_KEEP_LOGS),
        }
    }
}

// --- Storage and the disk guard --------------------------------------------

pub const DEFAULT_CACHE_MB: u64 = 64;
/// Free space (MiB) the data dir's filesystem must keep: below it, writes are
/// refused with 507 (see `disk`). Room for the metering ledger, snapshots and
/// sled's own segment rewriting while an operator frees space.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 256;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct StorageArgs {
    /// Directory for this node's data.
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sled page cache in MiB.
    #[arg(long, env = "TOLLGATE_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// MiB that must stay free on the data dir's filesystem: below it, the
    /// whole cluster refuses admin writes with 507 Insufficient Storage (checks
    /// are still answered), until a tenth more is free again. 0 turns the
    /// guard off. Default 256.
    #[arg(long, env = "TOLLGATE_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
}

/// Where the node keeps its data, and the free space it guards.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The node's data (sled, `node.json`). Default `tollgate-data-ID`.
    pub data_dir: PathBuf,
    /// sled page cache, MiB. Default [`DEFAULT_CACHE_MB`].
    pub cache_mb: u64,
    /// MiB that must stay free for the data dir, below 2^44; 0: no guard.
    /// Default [`DEFAULT_MIN_FREE_DISK_MB`].
    pub min_free_disk_mb: u64,
}

impl StorageArgs {
    fn resolve(self, file: StorageArgs, id: NodeId) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("tollgate-data-{id}"))),
            cache_mb: self.cache_mb.or(file.cache_mb).unwrap_or(DEFAULT_CACHE_MB),
            min_free_disk_mb: self.min_free_disk_mb.or(file.min_free_disk_mb).unwrap_or(DEFAULT_MIN_FREE_DISK_MB),
        }
    }
}

// --- Quota leases and the clock --------------------------------------------

/// How long a quota grant held by a node stays valid (see `metering`).
pub const DEFAULT_QUOTA_LEASE_MS: u64 = crate::metering::DEFAULT_LEASE_MS;
/// The most quota units one grant may hand a node.
pub const DEFAULT_QUOTA_MAX_GRANT: u64 = crate::metering::DEFAULT_MAX_GRANT;
/// How long a node keeps an unused grant.
pub const DEFAULT_QUOTA_QUIET_MS: u64 = crate::metering::DEFAULT_QUIET_MS as u64;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct QuotaArgs {
    /// How long a quota grant stays valid on the node that holds it, in ms.
    /// A node that dies holding a grant over-counts usage by at most that
    /// grant, once the lease ends.
    #[arg(long, env = "TOLLGATE_QUOTA_LEASE_MS")]
    pub quota_lease_ms: Option<u64>,
    /// The most quota units one grant hands a node; 1 decides every request
    /// through the leader (a baseline for benchmarks).
    #[arg(long, env = "TOLLGATE_QUOTA_MAX_GRANT")]
    pub quota_max_grant: Option<u64>,
    /// How long a node keeps a key's quota grant, or throttle tokens,
    /// unused before handing them back, in ms (default 120000). A grant kept
    /// costs the cluster no writes (the node's lease session keeps all of
    /// them); this bounds the node's memory and what a crash of it
    /// over-counts.
    #[arg(long, env = "TOLLGATE_QUOTA_QUIET_MS")]
    pub quota_quiet_ms: Option<u64>,
    /// Shifts this node's wall clock (quota periods, key expiry) by this many
    /// ms. For tests of period rollover; leave unset in production.
    #[arg(long, env = "TOLLGATE_CLOCK_OFFSET_MS", allow_hyphen_values = true)]
    pub clock_offset_ms: Option<i64>,
}

/// Quota leases, and the clock quota periods are counted in.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// Lifetime of a grant on the node holding it, ms, 1000 to 600000.
    /// Default [`DEFAULT_QUOTA_LEASE_MS`].
    pub lease_ms: u64,
    /// Most units in one grant, at least 1. Default [`DEFAULT_QUOTA_MAX_GRANT`].
    pub max_grant: u64,
    /// How long an unused grant is kept, ms, 200 to 3600000. Default
    /// [`DEFAULT_QUOTA_QUIET_MS`].
    pub quiet_ms: u64,
    /// Shift of this node's wall clock, ms (tests of period rollover). Default 0.
    pub clock_offset_ms: i64,
}

impl QuotaArgs {
    fn resolve(self, file: QuotaArgs) -> QuotaConfig {
        QuotaConfig {
            lease_ms: self.quota_lease_ms.or(file.quota_lease_ms).unwrap_or(DEFAULT_QUOTA_LEASE_MS),
            max_grant: self.quota_max_grant.or(file.quota_max_grant).unwrap_or(DEFAULT_QUOTA_MAX_GRANT),
            quiet_ms: self.quota_quiet_ms.or(file.quota_quiet_ms).unwrap_or(DEFAULT_QUOTA_QUIET_MS),
            clock_offset_ms: self.clock_offset_ms.or(file.clock_offset_ms).unwrap_or(0),
        }
    }
}

// --- TLS -------------------------------------------------------------------

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct TlsArgs {
    /// PEM certificate chain: every listener (HTTP, peer, wire, gRPC) speaks TLS only.
    #[arg(long, env = "TOLLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long, env = "TOLLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's PEM CA certificates: peers must show a certificate one
    /// of them signed (mutual TLS between nodes), and proxies may
    /// authenticate on the wire and gRPC listeners with one instead of a token.
    #[arg(long, env = "TOLLGATE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates trusted for this node's outbound HTTPS calls (JWKS
    /// of JWT authorizers, HTTP authorizers) besides the public web roots:
    /// for services behind a private CA.
    #[arg(long, env = "TOLLGATE_OUTBOUND_CA")]
    pub outbound_ca: Option<PathBuf>,
}

/// TLS on the listeners, between the nodes and on outbound calls. All
/// optional, none by default.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM certificate chain of every listener; only with `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// CAs that peers' (and, optionally, proxies') client certificates chain
    /// to; needs `cert` and a cluster token.
    pub client_ca: Option<PathBuf>,
    /// Extra CAs for outbound HTTPS (JWKS, HTTP authorizers).
    pub outbound_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn resolve(self, file: TlsArgs) -> TlsConfig {
        TlsConfig {
            cert: self.tls_cert.or(file.tls_cert),
            key: self.tls_key.or(file.tls_key),
            client_ca: self.tls_client_ca.or(file.tls_client_ca),
            outbound_ca: self.outbound_ca.or(file.outbound_ca),
        }
    }
}

// --- Trust -----------------------------------------------------------------

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct TrustArgs {
    /// Networks of proxies in front of the forward-auth proxy (a CDN, a load
    /// balancer), CIDRs separated by commas: their entries in
    /// `X-Forwarded-For` are skipped when looking for the client address,
    /// from the right. Default none: the address the asking proxy saw is the
    /// client's.
    #[arg(long, env = "TOLLGATE_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
}

/// Whom the node believes about a request's client address.
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    /// Proxies in front of the forward-auth proxy, skipped in
    /// `X-Forwarded-For` from the right. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl TrustArgs {
    fn resolve(self, file: TrustArgs) -> Result<TrustConfig, ConfigError> {
        let trusted_proxies = match self.trusted_proxies.or(file.trusted_proxies) {
            Some(text) => parse_trusted_proxies(&text)?,
            None => Vec::new(),
        };
        Ok(TrustConfig { trusted_proxies })
    }
}

// --- Admin authentication --------------------------------------------------

/// Shortest bootstrap admin token accepted (`TOLLGATE_ADMIN_TOKEN`).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// Failed admin authentications a source address may make in a row, and per
/// minute after that (see `http::auth_failures`).
pub const DEFAULT_ADMIN_AUTH_FAILURES_PER_MINUTE: u32 = 10;

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct AdminAuthArgs {
    /// Failed admin authentications (wrong tokens) allowed per source address:
    /// this many in a row, then this many a minute; past that, 429.
    #[arg(long, env = "TOLLGATE_ADMIN_AUTH_FAILURES_PER_MINUTE")]
    pub admin_auth_failures_per_minute: Option<u32>,
}

/// How admin callers authenticate.
#[derive(Debug, Clone)]
pub struct AdminAuthConfig {
    /// Bootstrap admin token (`TOLLGATE_ADMIN_TOKEN`, at least
    /// [`MIN_ADMIN_TOKEN_CHARS`]); held only as a digest. Optional.
    pub token: Option<String>,
    /// Failed authentications a source may make, in a row and per minute.
    /// Default [`DEFAULT_ADMIN_AUTH_FAILURES_PER_MINUTE`].
    pub failures_per_minute: u32,
}

impl AdminAuthArgs {
    fn resolve(self, file: AdminAuthArgs, token: Option<String>) -> AdminAuthConfig {
        AdminAuthConfig {
            token,
            failures_per_minute: self
                .admin_auth_failures_per_minute
                .or(file.admin_auth_failures_per_minute)
                .unwrap_or(DEFAULT_ADMIN_AUTH_FAILURES_PER_MINUTE),
        }
    }
}

// --- Metrics ---------------------------------------------------------------

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct MetricsArgs {
    /// Serve `/metrics` on this address only (not on `--http`).
    #[arg(long, env = "TOLLGATE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

/// Where `/metrics` is served and who may read it.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// A listener of its own for `/metrics`. Optional: on the HTTP listener.
    pub addr: Option<String>,
    /// Bearer token `/metrics` requires (`TOLLGATE_METRICS_TOKEN`, at least
    /// [`MIN_CLUSTER_TOKEN_CHARS`]). Optional: none.
    pub token: Option<String>,
}

impl MetricsArgs {
    fn resolve(self, file: MetricsArgs, token: Option<String>) -> MetricsConfig {
        MetricsConfig { addr: self.metrics_addr.or(file.metrics_addr), token }
    }
}

// --- Logging ---------------------------------------------------------------

#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct LogArgs {
    /// How log lines are written to standard error: `text` (coloured only
    /// on a terminal, never with NO_COLOR set) or `json` (one object per
    /// line, for a log shipper). Which lines: TOLLGATE_LOG (default
    /// `info,openraft=warn,sled=warn`).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How the node writes its log (`crate::logging`).
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// Text or JSON lines. Optional: text.
    pub format: LogFormat,
}

impl LogArgs {
    fn resolve(self, file: LogArgs) -> LogConfig {
        LogConfig { format: self.log_format.or(file.log_format).unwrap_or_default() }
    }
}

// --- Resolving -------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { field, message: message.into() }
}

/// Parses `1=127.0.0.1:8081/127.0.0.1:9081[/127.0.0.1:10081],2=…`
/// (HTTP, peer, and optionally wire address of each member).
pub fn parse_peers(text: &str) -> Result<Vec<(NodeId, NodeAddr)>, ConfigError> {
    let mut peers = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) =
            part.split_once('=').ok_or_else(|| bad("peers", format!("{part:?}: expected ID=HTTP/PEER")))?;
        let id: NodeId = id.trim().parse().map_err(|_| bad("peers", format!("{id:?} is not a node id")))?;
        let mut parts = addrs.split('/').map(str::trim);
        let (Some(http), Some(peer), wire, None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad("peers", format!("{part:?}: expected ID=HTTP_ADDR/PEER_ADDR[/WIRE_ADDR]")));
        };
        if peers.iter().any(|(other, _)| *other == id) {
            return Err(bad("peers", format!("node {id} appears twice")));
        }
        let wire = wire.unwrap_or_default().to_string();
        peers.push((id, NodeAddr { http: http.to_string(), peer: peer.to_string(), wire }));
    }
    Ok(peers)
}

/// Parses `ADVERTISED=DIAL[,ADVERTISED=DIAL…]`, both `HOST:PORT`.
pub fn parse_peer_via(text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut via = HashMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let expected = || bad("peer_via", format!("{part:?}: expected ADVERTISED=DIAL, both HOST:PORT"));
        let (advertised, dial) = part.split_once('=').ok_or_else(expected)?;
        let (advertised, dial) = (advertised.trim(), dial.trim());
        let is_addr = |addr: &str| {
            addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if !is_addr(advertised) || !is_addr(dial) {
            return Err(expected());
        }
        if via.insert(advertised.to_string(), dial.to_string()).is_some() {
            return Err(bad("peer_via", format!("{advertised} appears twice")));
        }
    }
    Ok(via)
}

/// Parses `CIDR[,CIDR…]`; a bare address is a /32 or /128.
pub fn parse_trusted_proxies(text: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| bad("trusted_proxies", format!("{part:?} is not a CIDR such as 10.0.0.0/8")))
        })
        .collect()
}

impl NodeConfig {
    /// Secrets strong enough, and peers that must authenticate: a node never
    /// opens its peer port to anyone unless told so in as many words.
    fn check_secrets(&self) -> Result<(), ConfigError> {
        if self.cluster.token.is_none() && !self.cluster.insecure_peer_auth_off {
            return Err(bad(
                "cluster_token",
                "set TOLLGATE_CLUSTER_TOKEN (the same secret on every node, e.g. `openssl rand -base64 32`) so \
                 that peers authenticate; --insecure-peer-auth-off runs without, letting anyone who reaches \
                 the peer port write to the cluster",
            ));
        }
        for (field, env, token, min) in [
            ("cluster_token", "TOLLGATE_CLUSTER_TOKEN", &self.cluster.token, MIN_CLUSTER_TOKEN_CHARS),
            ("admin_token", "TOLLGATE_ADMIN_TOKEN", &self.admin.token, MIN_ADMIN_TOKEN_CHARS),
            ("metrics_token", "TOLLGATE_METRICS_TOKEN", &self.metrics.token, MIN_CLUSTER_TOKEN_CHARS),
        ] {
            if let Some(t) = token {
                // A bearer token travels in a header: no spaces or controls
                // (32 spaces once passed as a 32-character secret).
                if t.chars().count() < min || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(
                        field,
                        format!(
                            "{env} must be at least {min} characters, with no spaces or control characters \
                             (e.g. `openssl rand -base64 32`)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ServeArgs {
    fn from_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let in_file = |message: String| bad("config", format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| in_file(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| in_file(e.to_string()))?;
        let file = toml::Value::Table(table.clone()).try_into::<ServeArgs>().map_err(|e| {
            // Through `flatten` serde's error no longer names the key: the
            // first key that fails on its own is the one.
            let alone = |(key, value): (&String, &toml::Value)| {
                let one = toml::Table::from_iter([(key.clone(), value.clone())]);
                toml::Value::Table(one).try_into::<ServeArgs>().is_err()
            };
            match table.iter().find(|entry| alone(*entry)) {
                Some((key, _)) => in_file(format!("`{key}`: {}", e.message())),
                None => in_file(e.to_string()),
            }
        })?;
        if let Some(key) = file.unknown.keys().next() {
            return Err(in_file(format!("unknown option `{key}`")));
        }
        Ok(file)
    }

    /// Resolves flags over the file over defaults; secrets from the process
    /// environment.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    /// [`ServeArgs::resolve`] with the secrets (`TOLLGATE_ADMIN_TOKEN`,
    /// `TOLLGATE_CLUSTER_TOKEN`, `TOLLGATE_METRICS_TOKEN`) read from `env`.
    pub fn resolve_with(self, env: &dyn Fn(&str) -> Option<String>) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => ServeArgs::from_file(path)?,
            None => ServeArgs::default(),
        };
        let id = self.id.or(file.id).ok_or_else(|| bad("id", "set --id (or TOLLGATE_NODE_ID) to a number above 0"))?;
        if id == 0 {
            return Err(bad("id", "must be above 0"));
        }
        let secret = |name: &str| env(name).filter(|t| !t.is_empty());
        let config = NodeConfig {
            id,
            listen: self.listen.resolve(file.listen),
            cluster: self.cluster.resolve(file.cluster, secret("TOLLGATE_CLUSTER_TOKEN"))?,
            raft: self.raft.resolve(file.raft),
            storage: self.storage.resolve(file.storage, id),
            quota: self.quota.resolve(file.quota),
            tls: self.tls.resolve(file.tls),
            trust: self.trust.resolve(file.trust)?,
            admin: self.admin.resolve(file.admin, secret("TOLLGATE_ADMIN_TOKEN")),
            metrics: self.metrics.resolve(file.metrics, secret("TOLLGATE_METRICS_TOKEN")),
            log: self.log.resolve(file.log),
        };
        let raft = &config.raft;
        if raft.election_min_ms <= raft.heartbeat_ms * 2 || raft.election_max_ms <= raft.election_min_ms {
            return Err(bad("election_min_ms", "need heartbeat_ms * 2 < election_min_ms < election_max_ms"));
        }
        if config.quota.lease_ms < 1_000 || config.quota.lease_ms > 600_000 {
            return Err(bad("quota_lease_ms", "must be between 1000 and 600000"));
        }
        let tls = &config.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(bad("tls_key", "give tls_cert and tls_key together"));
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return Err(bad("tls_client_ca", "client certificates need TLS: set tls_cert and tls_key too"));
        }
        if tls.client_ca.is_some() && config.cluster.token.is_none() {
            // Proxies' certificates come from the same CA as the nodes': the
            // certificate alone does not tell a peer from a proxy.
            return Err(bad(
                "tls_client_ca",
                "set TOLLGATE_CLUSTER_TOKEN too: proxy certificates from this CA would otherwise pass as peers",
            ));
        }
        config.check_secrets()?;
        if config.storage.min_free_disk_mb.checked_mul(1 << 20).is_none() {
            return Err(bad("min_free_disk_mb", "must be a number of MiB below 2^44 (0 turns the guard off)"));
        }
        if config.quota.quiet_ms < 200 || config.quota.quiet_ms > 3_600_000 {
            return Err(bad("quota_quiet_ms", "must be between 200 and 3600000"));
        }
        if config.quota.max_grant == 0 {
            return Err(bad("quota_max_grant", "must be at least 1"));
        }
        let cluster = &config.cluster;
        if cluster.init && !cluster.peers.is_empty() {
            return Err(bad("init", "use either --init (single-node start) or --peers, not both"));
        }
        if !cluster.peers.is_empty() && !cluster.peers.iter().any(|(p, _)| *p == id) {
            return Err(bad("peers", format!("must include this node ({id})")));
        }
        Ok(config)
    }
}

/// The secrets a test node has: both tokens, long enough.
#[cfg(test)]
fn with_secrets(name: &str) -> Option<String> {
    match name {
        "TOLLGATE_ADMIN_TOKEN" => Some("tga_a-test-admin-token-of-enough-length".into()),
        "TOLLGATE_CLUSTER_TOKEN" => Some("a-test-cluster-token".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--init` alone initialises, as the docs and errors spell it; an
    /// explicit value still works, and no flag leaves it to the file.
    #[test]
    fn init_may_be_given_without_a_value() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let parse = |argv: &[&str]| {
            <Serve as clap::Parser>::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
                .map(|s| s.args.cluster.init)
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&["--init", "--id", "1"]), Ok(Some(true)));
        assert_eq!(parse(&["--id", "1", "--init"]), Ok(Some(true)));
        assert_eq!(parse(&["--init", "false"]), Ok(Some(false)));
        assert_eq!(parse(&["--init", "true"]), Ok(Some(true)));
        assert_eq!(parse(&["--id", "1"]), Ok(None));
        assert!(parse(&["--init", "maybe"]).is_err());
    }

    #[test]
    fn peers_must_authenticate_and_secrets_be_long_enough() {
        let args = || ServeArgs { id: Some(1), ..Default::default() };
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let err = args().resolve_with(&env(&[])).unwrap_err();
        assert_eq!(err.field, "cluster_token", "no cluster token and no explicit opt-out");
        assert!(err.message.contains("--insecure-peer-auth-off"), "{err}");
        let insecure =
            ServeArgs { cluster: ClusterArgs { insecure_peer_auth_off: true, ..Default::default() }, ..args() };
        assert!(insecure.resolve_with(&env(&[])).is_ok());
        let short = env(&[("TOLLGATE_CLUSTER_TOKEN", "short")]);
        assert_eq!(args().resolve_with(&short).unwrap_err().field, "cluster_token");
        let weak_admin =
            env(&[("TOLLGATE_CLUSTER_TOKEN", "a-good-cluster-token"), ("TOLLGATE_ADMIN_TOKEN", "tga_0123456789")]);
        assert_eq!(args().resolve_with(&weak_admin).unwrap_err().field, "admin_token");
        let weak_metrics = env(&[("TOLLGATE_CLUSTER_TOKEN", "a-good-cluster-token"), ("TOLLGATE_METRICS_TOKEN", "m")]);
        assert_eq!(args().resolve_with(&weak_metrics).unwrap_err().field, "metrics_token");
        // Long enough but blank, or with spaces or controls inside: refused.
        for spaced in [
            "                                ",
            "tga_0123456789 0123456789abcdefghijk",
            "tga_0123456789\t0123456789abcdefghijk",
        ] {
            let token: &'static str = Box::leak(spaced.to_string().into_boxed_str());
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(
                vec![("TOLLGATE_CLUSTER_TOKEN", "a-good-cluster-token"), ("TOLLGATE_ADMIN_TOKEN", token)]
                    .into_boxed_slice(),
            );
            assert_eq!(args().resolve_with(&env(pairs)).unwrap_err().field, "admin_token", "{spaced:?}");
        }
        assert!(args().resolve_with(&with_secrets).is_ok());
    }

    #[test]
    fn peers_parse_and_name_the_problem() {
        let peers = parse_peers("1=127.0.0.1:8081/127.0.0.1:9081, 2=h:1/h:2").unwrap();
        assert_eq!(peers[1], (2, NodeAddr { http: "h:1".into(), peer: "h:2".into(), wire: String::new() }));
        let with_wire = parse_peers("3=h:1/h:2/h:3").unwrap();
        assert_eq!(with_wire[0].1.wire, "h:3");
        assert!(parse_peers("3=h:1/h:2/h:3/h:4").is_err());
        assert_eq!(parse_peers("1=a:1").unwrap_err().field, "peers");
        assert!(parse_peers("1=a:1/b:2,1=c:3/d:4").is_err());
    }

    #[test]
    fn peer_via_maps_advertised_to_dialled_and_names_the_problem() {
        let via = parse_peer_via("10.0.0.2:9081=127.0.0.1:19081, 10.0.0.3:9081 = h:2").unwrap();
        assert_eq!(via.len(), 2);
        assert_eq!(via["10.0.0.2:9081"], "127.0.0.1:19081");
        assert_eq!(via["10.0.0.3:9081"], "h:2");
        assert!(parse_peer_via("").unwrap().is_empty());
        for wrong in ["10.0.0.2:9081", "a:1=", "=a:1", "a:1=b", "a:1=b:port", "a:1=b:2,a:1=c:3"] {
            assert_eq!(parse_peer_via(wrong).unwrap_err().field, "peer_via", "{wrong}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 1\npeer_via = \"a:1=b:2\"\n").unwrap();
        let config =
            ServeArgs { config: Some(path.clone()), ..Default::default() }.resolve_with(&with_secrets).unwrap();
        assert_eq!(config.cluster.peer_via["a:1"], "b:2");
        std::fs::write(&path, "id = 1\npeer_via = \"a:1\"\n").unwrap();
        let err = ServeArgs { config: Some(path), ..Default::default() }.resolve_with(&with_secrets).unwrap_err();
        assert_eq!(err.field, "peer_via");
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let nets = parse_trusted_proxies("10.0.0.0/8, 2001:db8::/32,192.0.2.1").unwrap();
        assert_eq!(nets.len(), 3);
        assert_eq!(nets[2].to_string(), "192.0.2.1/32");
        for wrong in ["10.0.0.0/33", "ten", "10.0.0.0/8,x"] {
            assert_eq!(parse_trusted_proxies(wrong).unwrap_err().field, "trusted_proxies", "{wrong}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 7\nhttp = \"0.0.0.0:1\"\nheartbeat_ms = 50\n").unwrap();
        let listen = ListenArgs { http: Some("127.0.0.1:2".into()), ..Default::default() };
        let args = ServeArgs { config: Some(path.clone()), listen, ..Default::default() };
        let config = args.resolve_with(&with_secrets).unwrap();
        assert_eq!((config.id, config.listen.http.as_str(), config.raft.heartbeat_ms), (7, "127.0.0.1:2", 50));
        assert_eq!(config.storage.min_free_disk_mb, DEFAULT_MIN_FREE_DISK_MB);
        std::fs::write(&path, "id = 7\nmin_free_disk_mb = 64\n").unwrap();
        let from_file = ServeArgs { config: Some(path.clone()), ..Default::default() };
        assert_eq!(from_file.clone().resolve_with(&with_secrets).unwrap().storage.min_free_disk_mb, 64);
        let flag = ServeArgs { storage: StorageArgs { min_free_disk_mb: Some(0), ..Default::default() }, ..from_file };
        assert_eq!(
            flag.resolve_with(&with_secrets).unwrap().storage.min_free_disk_mb,
            0,
            "the flag wins; 0 is no guard"
        );
        let storage = StorageArgs { min_free_disk_mb: Some(u64::MAX), ..Default::default() };
        let huge = ServeArgs { id: Some(1), storage, ..Default::default() };
        assert_eq!(huge.resolve_with(&with_secrets).unwrap_err().field, "min_free_disk_mb");
        std::fs::write(&path, "idd = 7\n").unwrap();
        let err =
            ServeArgs { config: Some(path.clone()), ..Default::default() }.resolve_with(&with_secrets).unwrap_err();
        assert_eq!(err.field, "config");
        assert!(err.message.ends_with("unknown option `idd`"), "{err}");
        // A key of any subsystem, of the wrong type, is named.
        std::fs::write(&path, "id = 7\ncache_mb = 1\nheartbeat_ms = \"fast\"\n").unwrap();
        let err = ServeArgs { config: Some(path), ..Default::default() }.resolve_with(&with_secrets).unwrap_err();
        assert_eq!(err.field, "config");
        assert!(err.message.contains("`heartbeat_ms`: invalid type: string \"fast\""), "{err}");
    }

    #[test]
    fn every_file_key_lands_in_its_subsystem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let text = r#"
            id = 4
            http = "h:1"
            peer = "h:2"
            wire = "h:3"
            grpc = "h:4"
            advertise_http = "a:1"
            advertise_peer = "a:2"
            advertise_wire = "a:3"
            init = true
            peer_via = "a:2=b:2"
            insecure_peer_auth_off = true
            heartbeat_ms = 50
            election_min_ms = 300
            election_max_ms = 600
            snapshot_logs = 5
            keep_logs = 6
            data_dir = "/srv/tollgate"
            cache_mb = 7
            min_free_disk_mb = 8
            quota_lease_ms = 2000
            quota_max_grant = 9
            quota_quiet_ms = 12000
            clock_offset_ms = -10
            tls_cert = "c.pem"
            tls_key = "k.pem"
            tls_client_ca = "ca.pem"
            outbound_ca = "o.pem"
            trusted_proxies = "10.0.0.0/8"
            admin_auth_failures_per_minute = 11
            metrics_addr = "m:1"
            log_format = "json"
        "#;
        std::fs::write(&path, text).unwrap();
        let c = ServeArgs { config: Some(path), ..Default::default() }.resolve_with(&with_secrets).unwrap();
        let l = &c.listen;
        assert_eq!((c.id, l.http.as_str(), l.peer.as_str(), l.wire.as_str()), (4, "h:1", "h:2", "h:3"));
        assert_eq!(l.grpc, "h:4");
        assert_eq!(
            (l.advertise_http.as_deref(), l.advertise_peer.as_deref(), l.advertise_wire.as_deref()),
            (Some("a:1"), Some("a:2"), Some("a:3"))
        );
        assert!(c.cluster.init && c.cluster.insecure_peer_auth_off && c.cluster.peers.is_empty());
        assert_eq!(c.cluster.peer_via["a:2"], "b:2");
        assert_eq!(c.cluster.token.as_deref(), Some("a-test-cluster-token"));
        let r = &c.raft;
        assert_eq!(
            (r.heartbeat_ms, r.election_min_ms, r.election_max_ms, r.snapshot_logs, r.keep_logs),
            (50, 300, 600, 5, 6)
        );
        assert_eq!(c.storage.data_dir, PathBuf::from("/srv/tollgate"));
        assert_eq!((c.storage.cache_mb, c.storage.min_free_disk_mb), (7, 8));
        assert_eq!((c.quota.lease_ms, c.quota.max_grant, c.quota.clock_offset_ms), (2000, 9, -10));
        assert_eq!(c.quota.quiet_ms, 12_000);
        let t = &c.tls;
        assert_eq!(
            [&t.cert, &t.key, &t.client_ca, &t.outbound_ca].map(|p| p.as_ref().unwrap().display().to_string()),
            ["c.pem", "k.pem", "ca.pem", "o.pem"]
        );
        assert_eq!(c.trust.trusted_proxies[0].to_string(), "10.0.0.0/8");
        assert_eq!(c.admin.failures_per_minute, 11);
        assert!(c.admin.token.is_some());
        assert_eq!((c.metrics.addr.as_deref(), c.metrics.token.as_deref()), (Some("m:1"), None));
        assert_eq!(c.log.format, LogFormat::Json);
    }
}

#[cfg(test)]
mod deploy_examples {
    use super::*;

    /// The example configurations in `deploy/` stay valid.
    #[test]
    fn deploy_configs_resolve() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
        for id in 1..=3u64 {
            let path = dir.join(format!("node{id}.toml"));
            let config = ServeArgs { config: Some(path.clone()), ..Default::default() }
                .resolve_with(&with_secrets)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config.id, id);
            assert_eq!(config.cluster.peers.len(), 3);
            assert_eq!(config.listen.advertise_peer.as_deref(), Some(format!("10.0.0.{id}:9081").as_str()));
        }
    }
}

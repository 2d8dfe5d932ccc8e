//! A running node's handles, shared by the listeners (HTTP, binary, peer):
//! a plain bag, as in openraft's examples. What each handle does lives in
//! its own layer — the way to the leader in [`crate::cluster::leader`], the
//! check pipeline in [`crate::gateway`] — and nothing here is called back
//! from below.
//!
//! [`App::open`] makes them from a node's configuration: storage, Raft, the
//! metering and the gateway, wired together, but no listener bound and no
//! background task started (that is `crate::server`'s). So a test gets a
//! real node in-process from a temp dir.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tollgate_proto::check::{CheckRequest, Decision};
use tollgate_proto::model::Scope;
use tollgate_proto::FieldError;

use anyhow::Context;
use arc_swap::ArcSwap;
use openraft::{Config, SnapshotPolicy};

use crate::clock::Clock;
use crate::cluster::authority::ClusterAuthority;
use crate::cluster::disk::{DiskGauges, DiskGuard};
use crate::cluster::leader::{Leader, Removal};
use crate::cluster::log_store::LogStore;
use crate::cluster::network::{PeerClient, PeerNetwork};
use crate::cluster::peer::PeerState;
use crate::cluster::pre_vote::{Elections, Timing};
use crate::cluster::state_machine::StateMachine;
use crate::cluster::{typ, NodeAddr, NodeId};
use crate::config::NodeConfig;
use crate::gateway::Gateway;
use crate::metering::{Metering, MeteringConfig};
use crate::metrics::Metrics;
use crate::secret::Digest;
use crate::state::published::{Published, SharedModel};
use crate::store::{SledKv, SledOptions};

pub struct App {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub raft: typ::Raft,
    /// Writes, read barriers and membership changes, at the leader.
    pub leader: Leader,
    /// Pre-votes and elections; also whether this node is in touch with a
    /// leader (for `/readyz`).
    pub elections: crate::cluster::pre_vote::Elections,
    /// The model as last applied; readers load it without locking.
    pub model: SharedModel,
    /// Digest of the bootstrap admin token (`TOLLGATE_ADMIN_TOKEN`), if set.
    pub bootstrap_token: Option<Digest>,
    /// The check pipeline.
    pub gateway: Gateway,
    /// Highest committed log index this node knows (from the log store).
    pub committed: Arc<AtomicU64>,
    pub metrics: Metrics,
    /// The wall clock (shifted by `--clock-offset-ms` if set).
    pub clock: Arc<dyn Clock>,
    /// Whether the leader said this node was removed from the cluster.
    pub removal: Arc<Removal>,
    /// The free-space guard: this node's, and on the leader what the members
    /// reported (see [`crate::cluster::disk`]).
    pub disk: Arc<DiskGuard>,
}

/// What [`App::open`] makes: the node's handles, and the parts its
/// listeners and background tasks need besides.
pub struct Node {
    pub app: Arc<App>,
    /// What the peer listener serves from.
    pub peer: Arc<PeerState>,
    /// The storage, flushed last when the node stops.
    pub kv: Arc<SledKv>,
    /// The gauges the disk watcher sets.
    pub disk_gauges: DiskGauges,
}

impl App {
    /// Opens a node's storage in `config`'s data dir and makes its handles:
    /// Raft (not initialised, its elections not running), the way to the
    /// leader, the metering (not reporting) and the gateway. `addr` is how
    /// other members reach this node; `peer_tls` how it calls them;
    /// `outbound_roots` the extra CAs of its outbound HTTPS calls.
    pub async fn open(
        config: &NodeConfig,
        addr: NodeAddr,
        peer_tls: Option<crate::tls::PeerTls>,
        outbound_roots: &[reqwest::Certificate],
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.storage.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.storage.data_dir.display()))?;
        let kv = Arc::new(SledKv::open(
            &config.storage.data_dir.join("db"),
            &SledOptions { cache_bytes: config.storage.cache_mb << 20 },
        )?);
        let raft_config = Config {
            cluster_name: "tollgate".into(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_min_ms,
            election_timeout_max: config.raft.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_logs),
            max_in_snapshot_log_to_keep: config.raft.keep_logs,
            // Elections start only after a pre-vote (see `cluster::pre_vote`).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;

        let published = Arc::new(ArcSwap::from_pointee(Default::default()));
        let committed = Arc::new(AtomicU64::new(0));
        let started = std::time::Instant::now();
        let state_machine = StateMachine::open(kv.clone(), published.clone())?;
        let objects = published.load().model.all().count();
        tracing::info!(objects, elapsed_ms = started.elapsed().as_millis() as u64, "state loaded");
        let log_store = LogStore::new(kv.clone(), committed.clone());
        let peers = PeerClient::new(config.cluster.token.clone(), config.cluster.peer_via.clone(), peer_tls)
            .context("peer client")?;
        let network = PeerNetwork { client: peers.clone() };
        let raft = typ::Raft::new(config.id, Arc::new(raft_config), network, log_store.clone(), state_machine)
            .await
            .context("starting raft")?;
        let timing = Timing {
            heartbeat_ms: config.raft.heartbeat_ms,
            election_min_ms: config.raft.election_min_ms,
            election_max_ms: config.raft.election_max_ms,
        };
        let elections = Elections::new(config.id, raft.clone(), log_store, peers.clone(), timing);

        let metrics = Metrics::new();
        let clock: Arc<dyn Clock> = match config.quota.clock_offset_ms {
            0 => Arc::new(crate::clock::SystemClock),
            offset => Arc::new(crate::clock::OffsetClock(offset)),
        };
        let metering_config = MeteringConfig {
            lease_ms: config.quota.lease_ms as i64,
            max_grant: config.quota.max_grant,
            quiet_ms: config.quota.quiet_ms as i64,
        };
        let disk = Arc::new(DiskGuard::new(config.id, config.storage.min_free_disk_mb));
        let removal = Arc::new(Removal::open(&config.storage.data_dir));
        let leader = Leader::new(config.id, raft.clone(), peers, disk.clone(), metrics.forwarded.clone());
        let authority = Arc::new(ClusterAuthority::new(leader.clone(), clock.clone(), published.clone()));
        let metering = Metering::new(authority.clone(), clock.clone(), metering_config, metrics.metering.clone());
        metering.watch_limits(published.clone());
        let gateway = Gateway::with_metering(
            published.clone(),
            clock.clone(),
            metrics.gateway.clone(),
            config.cluster.token.as_deref(),
            metering,
        )
        .trusting(outbound_roots);
        let disk_gauges =
            DiskGauges { available_bytes: metrics.disk_available_bytes.clone(), guard: metrics.disk_guard.clone() };
        let peer = Arc::new(PeerState {
            raft: raft.clone(),
            elections: elections.clone(),
            leader: leader.clone(),
            authority,
            disk: disk.clone(),
            removal: removal.clone(),
            cluster_token: config.cluster.token.as_deref().map(Digest::of),
        });
        let app = Arc::new(App {
            id: config.id,
            addr,
            raft,
            leader,
            elections,
            model: published,
            bootstrap_token: config.admin.token.as_deref().map(Digest::of),
            gateway,
            committed,
            metrics,
            clock,
            removal,
            disk,
        });
        Ok(Node { app, peer, kv, disk_gauges })
    }

    pub fn published(&self) -> Arc<Published> {
        self.model.load_full()
    }

    /// Decides one check — the same for every encoding (JSON, forward-auth,
    /// binary) — records it in metrics and echoes or assigns `X-Request-Id`.
    pub async fn decide(&self, req: &CheckRequest) -> Result<Decision, FieldError> {
        let started = std::time::Instant::now();
        let mut decision = self.gateway.check(req).await?;
        self.metrics.record_decision(&self.published().model, req, &decision, started.elapsed());
        let request_id = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        decision.response_headers.push(("x-request-id".into(), request_id));
        Ok(decision)
    }

    /// Whether `token` lets a proxy ask for checks on the wire and gRPC
    /// listeners: the bootstrap admin token (compared in constant time), or a
    /// stored token with the `check` or `write` scope (looked up by its
    /// SHA-256 digest). One rule for every listener that asks for a token.
    pub fn may_check(&self, token: &str) -> bool {
        if self.bootstrap_token.as_ref().is_some_and(|d| d.matches(token)) {
            return true;
        }
        self.stored_check_token(token)
    }

    /// Whether `token` is a stored token with the `check` or `write` scope:
    /// one the node made (`tga_` and 32 random bytes), so no budget of
    /// failed guesses needs to stand in its way (a guess succeeds with odds
    /// of 2^-256). The budget still stops guesses at the bootstrap token,
    /// which an operator chose.
    pub fn stored_check_token(&self, token: &str) -> bool {
        let published = self.published();
        let stored = published.model.token_by_digest(&crate::secret::sha256(token));
        stored.is_some_and(|t| t.scopes.iter().any(|s| matches!(s, Scope::Check | Scope::Write)))
    }

    /// Why this node is not ready, or `None` when it is: a member of a
    /// cluster that has a known leader, whose Raft runs and whose free-space
    /// guard is off (`/readyz`, and the gRPC listener's health service).
    pub async fn not_ready(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let member = m.membership_config.membership().nodes().any(|(id, _)| *id == self.id);
        if let Err(fatal) = &m.running_state {
            Some(format!("raft stopped: {fatal}; the node exits so that its supervisor starts it again"))
        } else if self.is_removed() {
            Some("removed from the cluster by its leader".to_string())
        } else if !member {
            Some("not a member of a cluster (yet)".to_string())
        } else if let Some(low) = self.disk.own() {
            Some(format!("disk space low: {low}"))
        } else if m.current_leader.is_none() {
            Some("no leader is known".to_string())
        } else {
            self.elections.out_of_touch().await
        }
    }

    /// Whether the leader said this node was removed.
    pub fn is_removed(&self) -> bool {
        self.removal.is_removed()
    }

    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

//! A running node's handles, shared by every listener: the Raft instance, the
//! published model, the peer client; and the three ways in which a request
//! reaches the leader — writes, linearizable read barriers and membership
//! changes — forwarded over the peer network when this node is not the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tollgate_proto::check::{CheckRequest, Decision};
use tollgate_proto::{Command, CommandResult, FieldError, Proposal};

use crate::cluster::network::{CallError, PeerClient};
use crate::cluster::peer::{self, ClusterToken, ForwardError};
use crate::cluster::typ;
use crate::cluster::{NodeAddr, NodeId};
use crate::metering::{Authority, BoxFuture, LendRequest, Lent, Unavailable};
use crate::metrics::Metrics;
use crate::secret::Digest;
use crate::state::published::{Published, SharedModel};

/// How long a write or read barrier may wait for a leader before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

pub struct App {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub raft: typ::Raft,
    /// Answers and runs pre-votes (openraft's own election timer is off).
    pub elections: crate::cluster::pre_vote::Elections,
    /// The model as last applied; readers load it without locking.
    pub model: SharedModel,
    pub peers: PeerClient,
    /// Digest of the bootstrap admin token (`TOLLGATE_ADMIN_TOKEN`), if set.
    pub bootstrap_token: Option<Digest>,
    /// Digest of the token peers must present, if the cluster has one.
    pub cluster_token: Option<ClusterToken>,
    /// The check pipeline.
    pub gateway: crate::gateway::Gateway,
    /// Highest committed log index this node knows (from the log store).
    pub committed: Arc<AtomicU64>,
    pub metrics: Metrics,
    /// The wall clock (shifted by `--clock-offset-ms` if set).
    pub clock: Arc<dyn crate::metering::limits::Clock>,
    /// Proxies whose entries in `X-Forwarded-For` are skipped when
    /// forward-auth looks for the client address (`--trusted-proxies`).
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,
    /// Digest of the token `/metrics` requires (`TOLLGATE_METRICS_TOKEN`).
    pub metrics_token: Option<Digest>,
    /// `/metrics` is served on the HTTP listener (no `--metrics-addr`).
    pub metrics_on_http: bool,
    /// Failed admin authentications by source address.
    pub admin_auth_failures: crate::http::auth_failures::AuthFailures,
    /// The leader said this node was removed from the cluster (kept in
    /// `DATA_DIR/removed`, so a restart still knows).
    pub removed: std::sync::atomic::AtomicBool,
    pub data_dir: std::path::PathBuf,
    /// The free-space guard: this node's, and on the leader what the members
    /// reported (see [`crate::disk`]).
    pub disk: crate::disk::DiskGuard,
}

/// A membership change, carried out by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Add a node as learner (caught up before this returns), then as voter if asked.
    Add { id: NodeId, addr: NodeAddr, voter: bool },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a voter or learner from the cluster.
    Remove { id: NodeId },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(NodeId, NodeAddr)> },
    #[error("no leader is known; the cluster may be electing one or lack a quorum")]
    NoLeader,
    #[error("{0}")]
    Refused(String),
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A member is short of disk space (see [`crate::disk`]); HTTP 507.
    #[error("{0}")]
    InsufficientStorage(crate::disk::LowDisk),
}

/// What a ForwardToLeader from openraft means for the caller.
fn not_leader(f: &openraft::error::ForwardToLeader<NodeId, NodeAddr>) -> ClusterError {
    match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => ClusterError::NotLeader { leader: Some((id, node.clone())) },
        _ => ClusterError::NoLeader,
    }
}

impl App {
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

    /// Proposes a command, forwarding it to the leader when needed, and
    /// returns the state machine's answer once it is committed and applied.
    /// Retries (here, or by a client with the same `request_id`) are answered
    /// from the state machine's memory of the request and take effect once.
    pub async fn write(&self, request_id: u128, command: Command) -> Result<CommandResult, ClusterError> {
        self.write_by(request_id, command, tokio::time::Instant::now() + LEADER_WAIT).await
    }

    /// [`App::write`], giving up at `deadline`.
    pub async fn write_by(
        &self,
        request_id: u128,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<CommandResult, ClusterError> {
        // Refused here at once if this node is short of space (the leader
        // refuses too, for any member, but may not have heard yet).
        if !crate::disk::passes_guard(&command) {
            if let Some(low) = self.disk.own() {
                return Err(ClusterError::InsufficientStorage(low));
            }
        }
        let proposal = Proposal { request_id, command };
        let write = self.at_leader(deadline, peer::WRITE, &proposal, || self.write_here(proposal.clone()));
        match tokio::time::timeout_at(deadline, write).await {
            Ok(answer) => answer,
            Err(_) => Err(ClusterError::Unavailable("no answer from the leader in time".into())),
        }
    }

    /// Lends throttle tokens from the leader's buckets (see `metering`), by
    /// the leader's clock.
    pub async fn lend(&self, request: LendRequest, deadline: tokio::time::Instant) -> Result<Lent, ClusterError> {
        let here = || async { self.lend_here(&request) };
        let lend = self.at_leader(deadline, peer::LEND, &request, here);
        match tokio::time::timeout_at(deadline, lend).await {
            Ok(answer) => answer,
            Err(_) => Err(ClusterError::Unavailable("no answer from the leader in time".into())),
        }
    }

    /// Lends tokens if this node is the leader.
    pub fn lend_here(&self, request: &LendRequest) -> Result<Lent, ClusterError> {
        match self.raft.metrics().borrow().current_leader {
            Some(leader) if leader == self.id => Ok(self.gateway.metering.lender.lend(request, self.clock.now_ms())),
            _ => Err(self.leader_hint()),
        }
    }

    /// Who this node thinks leads, as a `NotLeader` error.
    pub fn leader_hint(&self) -> ClusterError {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(id) => match metrics.membership_config.membership().get_node(&id) {
                Some(node) => ClusterError::NotLeader { leader: Some((id, node.clone())) },
                None => ClusterError::NoLeader,
            },
            None => ClusterError::NoLeader,
        }
    }

    /// Runs `here` on this node if it is the leader, else sends `request` to
    /// the leader's `path`; while no leader is known, waits for one (until
    /// `deadline`) and tries again.
    async fn at_leader<Req, Resp, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        path: &str,
        request: &Req,
        here: F,
    ) -> Result<Resp, ClusterError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Resp, ClusterError>>,
    {
        loop {
            let attempt = match here().await {
                Err(ClusterError::NotLeader { leader: Some((id, node)) }) if id != self.id => {
                    self.forward::<_, Resp>(&node, path, request).await
                }
                other => other,
            };
            match attempt {
                Err(ClusterError::NotLeader { .. } | ClusterError::NoLeader)
                    if tokio::time::Instant::now() < deadline =>
                {
                    self.await_leader_change(deadline).await;
                }
                other => return other,
            }
        }
    }

    /// Proposes a command on this node only; fails if it is not the leader,
    /// or if a member is short of disk space and the command does not pass
    /// the guard ([`crate::disk::passes_guard`]).
    pub async fn write_here(&self, proposal: Proposal) -> Result<CommandResult, ClusterError> {
        if !crate::disk::passes_guard(&proposal.command) {
            let members: Vec<NodeId> = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                if metrics.current_leader != Some(self.id) {
                    drop(metrics);
                    return Err(self.leader_hint());
                }
                metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect()
            };
            if let Some(low) = self.disk.refusing(members, std::time::Instant::now()) {
                return Err(ClusterError::InsufficientStorage(low));
            }
        }
        match self.raft.client_write(proposal).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    /// Waits until this node has applied everything the leader had committed
    /// when it was asked: a read of the local model after this is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let index = self.at_leader(deadline, peer::READ_INDEX, &(), || self.read_index_here()).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(remaining.max(Duration::from_millis(100))))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Unavailable(format!("this node did not catch up in time: {e}")))
    }

    /// The leader's read index, if this node is the leader (leadership is
    /// confirmed by a quorum before it answers).
    pub async fn read_index_here(&self) -> Result<u64, ClusterError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(typ::CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    pub async fn change_membership(&self, op: MembershipOp) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        self.at_leader(deadline, peer::MEMBERSHIP, &op, || self.change_membership_here(op.clone())).await
    }

    pub async fn change_membership_here(&self, op: MembershipOp) -> Result<(), ClusterError> {
        let result = match op {
            MembershipOp::Add { id, addr, voter } => {
                let added = self.raft.add_learner(id, addr, true).await;
                match added {
                    Ok(_) if voter => {
                        self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
                    }
                    other => other,
                }
            }
            MembershipOp::Promote { id } => {
                self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
            }
            MembershipOp::Remove { id } => {
                let metrics = self.raft.metrics().borrow().clone();
                let addr = metrics.membership_config.membership().get_node(&id).cloned();
                let is_voter = metrics.membership_config.membership().voter_ids().any(|v| v == id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                let result = self.raft.change_membership(change, false).await;
                if let (Ok(_), Some(addr)) = (&result, addr) {
                    // Best effort: a node that is down learns nothing, and
                    // says so only if it comes back (it then has no leader).
                    let told: Result<Result<(), String>, _> =
                        self.peers.call(&addr.peer, crate::cluster::peer::REMOVED, &true, LEADER_WAIT).await;
                    if let Err(e) = told {
                        tracing::warn!(node = id, error = %e, "could not tell the removed node");
                    }
                }
                result
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ClusterError::Refused(e.to_string()))
            }
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    /// Records what the leader said: this node was removed (or added back).
    pub fn set_removed(&self, removed: bool) -> std::io::Result<()> {
        let marker = self.data_dir.join("removed");
        if removed {
            std::fs::write(&marker, b"removed from the cluster by its leader\n")?;
        } else if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        self.removed.store(removed, std::sync::atomic::Ordering::SeqCst);
        if removed {
            tracing::warn!("this node was removed from the cluster");
        }
        Ok(())
    }

    /// Whether the leader said this node was removed.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn forward<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: &NodeAddr,
        path: &str,
        request: &Req,
    ) -> Result<Resp, ClusterError> {
        self.metrics.forwarded.inc();
        let answer: Result<Result<Resp, ForwardError>, CallError> =
            self.peers.call(&leader.peer, path, request, LEADER_WAIT).await;
        match answer {
            Ok(inner) => inner.map_err(ClusterError::from),
            // The leader may have just died; let the caller wait for a new one.
            Err(CallError::Unreachable { .. }) => Err(ClusterError::NoLeader),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    /// Sleeps until the known leader changes, a short while passes, or the deadline.
    async fn await_leader_change(&self, deadline: tokio::time::Instant) {
        let before = self.raft.metrics().borrow().current_leader;
        let pause = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout_at(pause, async {
            loop {
                if metrics.changed().await.is_err() {
                    return;
                }
                let now = metrics.borrow().current_leader;
                if now.is_some() && now != before {
                    return;
                }
            }
        })
        .await;
    }

    /// Measures the free space of the data dir's filesystem every
    /// [`crate::disk::DISK_POLL`] (off the request path, on a blocking
    /// thread) until `stop`; while this node's guard is on, and once as it
    /// clears, tells the leader. Does nothing if the guard is off
    /// (`--min-free-disk-mb 0`).
    pub async fn watch_disk(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.disk.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(crate::disk::DISK_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let dir = self.data_dir.clone();
            let measured = tokio::task::spawn_blocking(move || fs2::available_space(&dir)).await;
            let available = match measured {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    tracing::warn!(dir = %self.data_dir.display(), error = %e, "cannot measure free disk space");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the free-space measurement failed");
                    continue;
                }
            };
            self.metrics.disk_available_bytes.set(i64::try_from(available).unwrap_or(i64::MAX));
            let (was_low, low) = self.disk.observe(available);
            self.metrics.disk_guard.set(i64::from(low));
            match (was_low, low) {
                (false, true) => {
                    if let Some(low) = self.disk.own() {
                        tracing::error!(%low, "disk space low: the cluster refuses writes until space is freed");
                    }
                }
                (true, false) => {
                    tracing::warn!(free_mb = available >> 20, "disk space back: writes are accepted again")
                }
                _ => {}
            }
            if low || was_low {
                self.report_disk().await;
            }
        }
    }

    /// Tells the leader this node's guard state (unless this node leads).
    async fn report_disk(&self) {
        let leader = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            match metrics.current_leader {
                Some(id) if id != self.id => metrics.membership_config.membership().get_node(&id).cloned(),
                _ => None,
            }
        };
        let Some(leader) = leader else { return };
        let report = crate::disk::DiskReport { node: self.id, low: self.disk.own() };
        let told: Result<(), CallError> =
            self.peers.call(&leader.peer, peer::DISK, &report, crate::disk::DISK_POLL).await;
        if let Err(e) = told {
            tracing::debug!(error = %e, "could not tell the leader this node's disk state");
        }
    }

    /// Why this node's Raft stopped, if it has (a storage error, say): it
    /// then takes part in nothing until the process is started again.
    pub fn raft_stopped(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        }
    }

    /// The voters and learners with their addresses.
    pub fn members(&self) -> (BTreeMap<NodeId, NodeAddr>, BTreeSet<NodeId>) {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters = membership.voter_ids().collect();
        (nodes, voters)
    }

    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

/// The metering authority of a real node: grants and reports are Raft
/// writes (forwarded to the leader), tokens come from the leader's buckets.
pub struct ClusterAuthority {
    app: std::sync::Weak<App>,
    node_id: NodeId,
}

impl ClusterAuthority {
    pub fn new(app: std::sync::Weak<App>, node_id: NodeId) -> Self {
        ClusterAuthority { app, node_id }
    }

    fn app(&self) -> Result<Arc<App>, Unavailable> {
        self.app.upgrade().ok_or_else(|| Unavailable("the node is shutting down".into()))
    }
}

fn unavailable(e: ClusterError) -> Unavailable {
    Unavailable(e.to_string())
}

impl Authority for ClusterAuthority {
    fn grant(
        &self,
        period: tollgate_proto::command::QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(u64, tollgate_proto::metering::QuotaLedger), Unavailable>> {
        Box::pin(async move {
            let app = self.app()?;
            let command = Command::QuotaGrant { period, holder, want, lease_until_ms, now_ms };
            let deadline = tokio::time::Instant::now() + crate::metering::FETCH_WAIT;
            match app.write_by(rand::random(), command, deadline).await.map_err(unavailable)? {
                Ok(tollgate_proto::command::Applied::Quota { granted, ledger }) => Ok((granted, ledger)),
                Ok(other) => Err(Unavailable(format!("unexpected answer to a grant: {other:?}"))),
                Err(rejection) => Err(Unavailable(format!("grant refused: {rejection}"))),
            }
        })
    }

    fn report(
        &self,
        request_id: u128,
        usage: Vec<tollgate_proto::command::QuotaUsage>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async move {
            let app = self.app()?;
            let deadline = tokio::time::Instant::now() + crate::metering::FETCH_WAIT;
            let command = Command::QuotaReport { usage, now_ms };
            app.write_by(request_id, command, deadline)
                .await
                .map_err(unavailable)?
                .map(|_| ())
                .map_err(|r| Unavailable(r.to_string()))
        })
    }

    /// Tokens by the leader's clock (`_now_ms` is this node's).
    fn lend(&self, request: LendRequest, _now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
        Box::pin(async move {
            let app = self.app()?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            app.lend(request, deadline).await.map_err(unavailable)
        })
    }

    fn members(&self) -> u32 {
        match self.app.upgrade() {
            Some(app) => app.members().1.len().max(1) as u32,
            None => 1,
        }
    }

    fn node_id(&self) -> u64 {
        self.node_id
    }
}

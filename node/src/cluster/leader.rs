//! Leader routing: the three ways a request reaches the leader — writes,
//! linearizable read barriers and membership changes — carried out here when
//! this node leads and forwarded over the peer network when it does not, and
//! the one error type ([`ClusterError`]) they fail with, here and on the wire.
//!
//! [`Leader`] is a cheap handle (clone it): the HTTP admin API calls it
//! through `App`, the peer routes ([`super::peer`]) call its `*_here`
//! methods for a follower, and the quota authority ([`super::authority`])
//! writes through it. It never calls back up into the layers that hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tollgate_proto::{Command, CommandResult, Proposal};

use super::disk::{self, DiskGuard, LowDisk};
use super::network::{CallError, PeerClient};
use super::{peer, typ, NodeAddr, NodeId};

/// How long a write or read barrier may wait for a leader before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Why a request did not reach, or was not carried out by, the leader.
///
/// The same type travels between peers (a forwarded request's answer), so
/// variants are only ever appended: bincode encodes the variant's position.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// That node is not (or no longer) the leader; here is who it thinks is.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(NodeId, NodeAddr)> },
    /// Carried out nowhere, for a reason the caller should pass on (a
    /// membership change openraft refused).
    #[error("{0}")]
    Refused(String),
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A member is short of disk space (see [`super::disk`]); HTTP 507.
    #[error("{0}")]
    InsufficientStorage(LowDisk),
    /// Never sent by a peer (see [`ClusterError::for_peer`]).
    #[error("no leader is known; the cluster may be electing one or lack a quorum")]
    NoLeader,
}

impl ClusterError {
    /// The answer a forwarded request gets: a leader that lost its
    /// leadership and knows no successor says the cluster is unavailable,
    /// so the follower that forwarded gives up rather than waits on it.
    pub fn for_peer(self) -> Self {
        match self {
            ClusterError::NoLeader => ClusterError::Unavailable(ClusterError::NoLeader.to_string()),
            other => other,
        }
    }
}

/// What a ForwardToLeader from openraft means for the caller.
fn not_leader(f: &openraft::error::ForwardToLeader<NodeId, NodeAddr>) -> ClusterError {
    match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => ClusterError::NotLeader { leader: Some((id, node.clone())) },
        _ => ClusterError::NoLeader,
    }
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

/// The way to the leader from this node.
#[derive(Clone)]
pub struct Leader {
    id: NodeId,
    raft: typ::Raft,
    /// Forwards to the leader, and tells a removed node.
    peers: PeerClient,
    /// Refuses writes while a member is short of space (the leader decides).
    disk: Arc<DiskGuard>,
    /// Counts requests this node forwarded (`tollgate_forwarded_requests_total`).
    forwarded: IntCounter,
}

impl Leader {
    pub fn new(id: NodeId, raft: typ::Raft, peers: PeerClient, disk: Arc<DiskGuard>, forwarded: IntCounter) -> Self {
        Leader { id, raft, peers, disk, forwarded }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Whether this node leads now (as its Raft metrics say).
    pub fn is_here(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader's address, unless this node leads or none is known.
    pub fn elsewhere(&self) -> Option<NodeAddr> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            Some(id) if id != self.id => metrics.membership_config.membership().get_node(&id).cloned(),
            _ => None,
        }
    }

    /// Proposes a command, forwarding it to the leader when needed, and
    /// returns the state machine's answer once it is committed and applied.
    /// Retries (here, or by a client with the same `request_id`) are answered
    /// from the state machine's memory of the request and take effect once.
    pub async fn write(&self, request_id: u128, command: Command) -> Result<CommandResult, ClusterError> {
        self.write_by(request_id, command, tokio::time::Instant::now() + LEADER_WAIT).await
    }

    /// [`Leader::write`], giving up at `deadline`.
    pub async fn write_by(
        &self,
        request_id: u128,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<CommandResult, ClusterError> {
        // Refused here at once if this node is short of space (the leader
        // refuses too, for any member, but may not have heard yet).
        if !disk::passes_guard(&command) {
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
    pub async fn at_leader<Req, Resp, F, Fut>(
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
    /// the guard ([`disk::passes_guard`]).
    pub async fn write_here(&self, proposal: Proposal) -> Result<CommandResult, ClusterError> {
        if !disk::passes_guard(&proposal.command) {
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
                    if let Err(e) = self.tell_removed(&addr.peer, true, LEADER_WAIT).await {
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

    /// Tells the node at `peer_addr` it was removed from (`true`) or added
    /// back to (`false`) the cluster (see [`Removal`]).
    pub async fn tell_removed(
        &self,
        peer_addr: &str,
        removed: bool,
        wait: Duration,
    ) -> Result<Result<(), String>, CallError> {
        self.peers.call(peer_addr, peer::REMOVED, &removed, wait).await
    }

    /// Sends `request` to `path` on the leader, if one is known and it is
    /// not this node.
    pub async fn send_to_leader<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        wait: Duration,
    ) -> Option<Result<Resp, CallError>> {
        let leader = self.elsewhere()?;
        Some(self.peers.call(&leader.peer, path, request, wait).await)
    }

    async fn forward<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: &NodeAddr,
        path: &str,
        request: &Req,
    ) -> Result<Resp, ClusterError> {
        self.forwarded.inc();
        let answer: Result<Result<Resp, ClusterError>, CallError> =
            self.peers.call(&leader.peer, path, request, LEADER_WAIT).await;
        match answer {
            Ok(inner) => inner,
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

    /// The voters and learners with their addresses.
    pub fn members(&self) -> (BTreeMap<NodeId, NodeAddr>, BTreeSet<NodeId>) {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters = membership.voter_ids().collect();
        (nodes, voters)
    }
}

/// Whether the leader said this node was removed from the cluster, kept in
/// `DATA_DIR/removed` so that a restart still knows: a removed node hears no
/// more from the leader, so it could not tell otherwise.
pub struct Removal {
    marker: PathBuf,
    removed: AtomicBool,
}

impl Removal {
    /// Reads the marker in `data_dir`.
    pub fn open(data_dir: &std::path::Path) -> Self {
        let marker = data_dir.join("removed");
        let removed = AtomicBool::new(marker.exists());
        Removal { marker, removed }
    }

    /// Records what the leader said: this node was removed (or added back).
    pub fn set(&self, removed: bool) -> std::io::Result<()> {
        if removed {
            std::fs::write(&self.marker, b"removed from the cluster by its leader\n")?;
        } else if self.marker.exists() {
            std::fs::remove_file(&self.marker)?;
        }
        self.removed.store(removed, Ordering::SeqCst);
        if removed {
            tracing::warn!("this node was removed from the cluster");
        }
        Ok(())
    }

    /// Whether the leader said this node was removed.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }
}

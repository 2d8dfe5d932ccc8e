//! The peer network, server side: the routes other members call on our peer
//! port — Raft RPCs, and the requests a follower forwards to the leader
//! (writes, read-index, membership changes).
//!
//! A forwarded request is executed here only if this node is the leader; it is
//! never forwarded again, so a stale leader hint cannot make a loop.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::{codec, Proposal};

use super::authority::ClusterAuthority;
use super::disk::{DiskGuard, DiskReport};
use super::leader::{ClusterError, Leader, MembershipOp, Removal};
use super::pre_vote::{Elections, PreVoteRequest};
use super::{typ, NodeId, TypeConfig};
use crate::metering::LendRequest;
use crate::secret::Digest;

pub const APPEND: &str = "/raft/append";
/// The leader tells a node it was removed from (`true`) or added back to
/// (`false`) the cluster: a removed node hears no more from the leader, so it
/// could not tell otherwise.
pub const REMOVED: &str = "/raft/removed";
pub const VOTE: &str = "/raft/vote";
/// Would the receiver vote for the sender now (see `super::pre_vote`).
pub const PRE_VOTE: &str = "/raft/pre-vote";
pub const SNAPSHOT: &str = "/raft/snapshot";
pub const WRITE: &str = "/cluster/write";
pub const READ_INDEX: &str = "/cluster/read-index";
pub const MEMBERSHIP: &str = "/cluster/membership";
pub const LEND: &str = "/cluster/lend";
/// A member tells the leader its free-space guard state (see `super::disk`).
pub const DISK: &str = "/cluster/disk";

/// Largest peer request: snapshot chunks and append batches stay well below.
const MAX_PEER_BODY: usize = 64 << 20;

/// What the peer routes need: this node's Raft and elections, the way to
/// the leader, the throttle lender, the disk guard and the removal marker.
/// Handles only: the routes never reach the layers above the cluster.
pub struct PeerState {
    pub raft: typ::Raft,
    /// Answers pre-votes (openraft's own election timer is off).
    pub elections: Elections,
    /// Carries out forwarded writes, read-index requests and membership
    /// changes, if this node leads.
    pub leader: Leader,
    /// Lends throttle tokens, if this node leads.
    pub authority: Arc<ClusterAuthority>,
    /// Keeps the members' reports of their free-space guards.
    pub disk: Arc<DiskGuard>,
    pub removal: Arc<Removal>,
    /// Digest of the token peers must present, if the cluster has one.
    pub cluster_token: Option<ClusterToken>,
}

pub fn router(state: Arc<PeerState>) -> Router {
    Router::new()
        .route(APPEND, post(append))
        .route(VOTE, post(vote))
        .route(PRE_VOTE, post(pre_vote))
        .route(SNAPSHOT, post(snapshot))
        .route(WRITE, post(write))
        .route(READ_INDEX, post(read_index))
        .route(MEMBERSHIP, post(membership))
        .route(LEND, post(lend))
        .route(REMOVED, post(removed))
        .route(DISK, post(disk))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_PEER_BODY))
        .with_state(state)
}

/// A request from a peer: the cluster token checked (when the cluster has
/// one), then the body decoded. The one guard of every peer route.
///
/// Refused with 401 `cluster token missing or wrong` (the token is read as
/// every bearer token is, [`crate::secret::bearer`]) from the headers alone,
/// before a byte of the body is read: a caller without the token cannot make
/// a node buffer up to [`MAX_PEER_BODY`]. Then 413 over that size, or 400
/// naming why the body does not decode.
pub struct PeerRequest<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<PeerState>> for PeerRequest<T> {
    type Rejection = Response;

    async fn from_request(request: Request, node: &Arc<PeerState>) -> Result<Self, Response> {
        let admitted = node.cluster_token.as_ref().is_none_or(|expected| expected.presented_in(request.headers()));
        if !admitted {
            return Err((StatusCode::UNAUTHORIZED, "cluster token missing or wrong").into_response());
        }
        let body = Bytes::from_request(request, node).await.map_err(IntoResponse::into_response)?;
        codec::decode(&body)
            .map(PeerRequest)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable peer request: {e}")).into_response())
    }
}

fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(
    State(node): State<Arc<PeerState>>,
    PeerRequest(req): PeerRequest<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    reply(&node.raft.append_entries(req).await)
}

async fn vote(State(node): State<Arc<PeerState>>, PeerRequest(req): PeerRequest<VoteRequest<NodeId>>) -> Response {
    reply(&node.raft.vote(req).await)
}

async fn pre_vote(State(node): State<Arc<PeerState>>, PeerRequest(req): PeerRequest<PreVoteRequest>) -> Response {
    reply(&node.elections.answer(&req).await)
}

async fn snapshot(
    State(node): State<Arc<PeerState>>,
    PeerRequest(req): PeerRequest<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    reply(&node.raft.install_snapshot(req).await)
}

async fn write(State(node): State<Arc<PeerState>>, PeerRequest(proposal): PeerRequest<Proposal>) -> Response {
    reply(&node.leader.write_here(proposal).await.map_err(ClusterError::for_peer))
}

async fn read_index(State(node): State<Arc<PeerState>>, PeerRequest(()): PeerRequest<()>) -> Response {
    reply(&node.leader.read_index_here().await.map_err(ClusterError::for_peer))
}

/// Throttle tokens from this node's buckets, if it leads (see `metering`).
async fn lend(State(node): State<Arc<PeerState>>, PeerRequest(requests): PeerRequest<Vec<LendRequest>>) -> Response {
    reply(&node.authority.lend_here(&requests).map_err(ClusterError::for_peer))
}

async fn removed(State(node): State<Arc<PeerState>>, PeerRequest(removed): PeerRequest<bool>) -> Response {
    reply(&node.removal.set(removed).map_err(|e| e.to_string()))
}

/// A member's free-space guard state, kept by the leader for its writes.
async fn disk(State(node): State<Arc<PeerState>>, PeerRequest(report): PeerRequest<DiskReport>) -> Response {
    node.disk.record(report, std::time::Instant::now());
    reply(&())
}

async fn membership(State(node): State<Arc<PeerState>>, PeerRequest(op): PeerRequest<MembershipOp>) -> Response {
    reply(&node.leader.change_membership_here(op).await.map_err(ClusterError::for_peer))
}

/// A digest kept in place of a shared token.
pub type ClusterToken = Digest;

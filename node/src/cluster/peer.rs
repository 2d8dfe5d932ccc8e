//! The peer network, server side: the routes other members call on our peer
//! port — Raft RPCs, and the requests a follower forwards to the leader
//! (writes, read-index, membership changes).
//!
//! A forwarded request is executed here only if this node is the leader; it is
//! never forwarded again, so a stale leader hint cannot make a loop.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_proto::{codec, Proposal};

use super::{NodeAddr, NodeId, TypeConfig};
use crate::app::{App, ClusterError, MembershipOp};
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
/// A member tells the leader its free-space guard state (see `crate::disk`).
pub const DISK: &str = "/cluster/disk";

/// Largest peer request: snapshot chunks and append batches stay well below.
const MAX_PEER_BODY: usize = 64 << 20;

/// Why a forwarded request was not carried out on the node it was sent to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// That node is not (or no longer) the leader; here is who it thinks is.
    NotLeader {
        leader: Option<(NodeId, NodeAddr)>,
    },
    /// Carried out nowhere, for a reason the caller should pass on.
    Refused(String),
    Unavailable(String),
    /// A member is short of disk space: the write is refused cluster-wide.
    InsufficientStorage(crate::disk::LowDisk),
}

pub fn router(app: Arc<App>) -> Router {
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
        .with_state(app)
}

/// Decodes a peer request after checking the cluster token.
fn accept<T: DeserializeOwned>(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<T, Response> {
    if let Some(expected) = &app.cluster_token {
        let given = crate::secret::bearer(headers);
        if !given.is_some_and(|g| expected.matches(g)) {
            return Err((StatusCode::UNAUTHORIZED, "cluster token missing or wrong").into_response());
        }
    }
    codec::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable peer request: {e}")).into_response())
}

fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.raft.append_entries(req).await)
}

async fn vote(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.raft.vote(req).await)
}

async fn pre_vote(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: super::pre_vote::PreVoteRequest = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.elections.answer(&req).await)
}

async fn snapshot(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.raft.install_snapshot(req).await)
}

async fn write(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let proposal: Proposal = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.write_here(proposal).await.map_err(ForwardError::from))
}

async fn read_index(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = accept::<()>(&app, &headers, &body) {
        return resp;
    }
    reply(&app.read_index_here().await.map_err(ForwardError::from))
}

/// Throttle tokens from this node's buckets, if it leads (see `metering`).
async fn lend(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: crate::metering::LendRequest = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.lend_here(&request).map_err(ForwardError::from))
}

async fn removed(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let removed: bool = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.set_removed(removed).map_err(|e| e.to_string()))
}

/// A member's free-space guard state, kept by the leader for its writes.
async fn disk(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let report: crate::disk::DiskReport = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    app.disk.record(report, std::time::Instant::now());
    reply(&())
}

async fn membership(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let op: MembershipOp = match accept(&app, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    reply(&app.change_membership_here(op).await.map_err(ForwardError::from))
}

impl From<ClusterError> for ForwardError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NotLeader { leader } => ForwardError::NotLeader { leader },
            ClusterError::Refused(m) => ForwardError::Refused(m),
            ClusterError::InsufficientStorage(low) => ForwardError::InsufficientStorage(low),
            other => ForwardError::Unavailable(other.to_string()),
        }
    }
}

impl From<ForwardError> for ClusterError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader { leader } => ClusterError::NotLeader { leader },
            ForwardError::Refused(m) => ClusterError::Refused(m),
            ForwardError::Unavailable(m) => ClusterError::Unavailable(m),
            ForwardError::InsufficientStorage(low) => ClusterError::InsufficientStorage(low),
        }
    }
}

/// A digest kept in place of a shared token.
pub type ClusterToken = Digest;

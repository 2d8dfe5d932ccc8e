//! Cluster administration: status, adding a node (learner, then voter),
//! promoting a learner, removing a node. Changes are carried out by the leader.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use tollgate_proto::audit::{AuditAction, AuditContext};
use tollgate_proto::Command;

use super::auth::{AdminCaller, Audit};
use super::error::ApiError;
use super::extract::JsonBody;
use super::HttpState;
use crate::app::App;
use crate::cluster::backup;
use crate::cluster::leader::MembershipOp;
use crate::cluster::{NodeAddr, NodeId};

pub fn routes(router: Router<HttpState>) -> Router<HttpState> {
    router
        .route("/v1/admin/cluster", get(status))
        .route("/v1/admin/cluster/nodes", post(add_node))
        .route("/v1/admin/cluster/nodes/{id}/promote", post(promote))
        .route("/v1/admin/cluster/nodes/{id}", delete(remove))
        .route("/v1/admin/snapshot", post(snapshot))
}

async fn status(State(app): State<Arc<App>>, caller: AdminCaller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may(&app.published().model, "cluster:read", &cluster_resource())?;
    let m = app.raft.metrics().borrow().clone();
    let (nodes, voters) = app.leader.members();
    let removed = app.is_removed();
    // Only a leader knows how far each member's log matches its own
    // (openraft reports it to the leader alone): elsewhere it is null.
    let leads = !removed && m.current_leader == Some(app.id);
    let matched = |id: &NodeId| -> Option<u64> {
        if !leads {
            return None;
        }
        if *id == app.id {
            return m.last_log_index;
        }
        m.replication.as_ref()?.get(id).copied().flatten().map(|l| l.index)
    };
    let members: Vec<_> = nodes
        .iter()
        .map(|(id, addr)| {
            json!({"id": id, "http_addr": addr.http, "peer_addr": addr.peer, "wire_addr": addr.wire,
                "voter": voters.contains(id), "matched_index": matched(id)})
        })
        .collect();
    Ok(Json(json!({
        "node_id": app.id,
        // A removed node hears from no leader: it must not report the last one.
        "removed": removed,
        "state": if removed { "Removed".to_string() } else { format!("{:?}", m.state) },
        "leader_id": if removed { None } else { m.current_leader },
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "commit_index": app.committed_index(),
        "applied_index": m.last_applied.map(|l| l.index),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        // On a leader: how long since a quorum last answered it (null elsewhere).
        "millis_since_quorum_ack": if leads { m.millis_since_quorum_ack } else { None },
        "members": members,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    id: NodeId,
    http_addr: String,
    peer_addr: String,
    /// The binary check listener, for client discovery (optional).
    #[serde(default)]
    wire_addr: String,
    #[serde(default = "yes")]
    voter: bool,
}

fn yes() -> bool {
    true
}

fn check_addr(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > 261 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::field(field, "must be host:port: at most 255 characters of host, no spaces or controls"));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        _ => Err(ApiError::field(field, "must be host:port with a port from 1 to 65535")),
    }
}

fn node_id(raw: &str) -> Result<NodeId, ApiError> {
    match raw.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::field("id", "must be a whole number above 0")),
    }
}

async fn add_node(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Audit(audit): Audit,
    JsonBody(req): JsonBody<AddNode>,
) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "cluster:update", &cluster_resource())?;
    if req.id == 0 {
        return Err(ApiError::field("id", "must be a whole number above 0"));
    }
    check_addr("http_addr", &req.http_addr)?;
    check_addr("peer_addr", &req.peer_addr)?;
    if !req.wire_addr.is_empty() {
        check_addr("wire_addr", &req.wire_addr)?;
    }
    if app.leader.members().0.contains_key(&req.id) {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("node {} is already a member", req.id)));
    }
    let addr = NodeAddr { http: req.http_addr, peer: req.peer_addr, wire: req.wire_addr };
    let peer_addr = addr.peer.clone();
    let note = format!("{addr}, voter: {}", req.voter);
    let op = MembershipOp::Add { id: req.id, addr, voter: req.voter };
    change_and_record(&app, op, audit, AuditAction::AddNode, req.id, Some(note)).await?;
    // A node added back after a removal stops saying it was removed.
    let _ = app.leader.tell_removed(&peer_addr, false, std::time::Duration::from_secs(2)).await;
    Ok((StatusCode::CREATED, Json(json!({"id": req.id, "voter": req.voter}))).into_response())
}

async fn promote(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Audit(audit): Audit,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "cluster:update", &cluster_resource())?;
    let id = node_id(&id)?;
    let (nodes, voters) = app.leader.members();
    if !nodes.contains_key(&id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("node {id} is not a member")));
    }
    if voters.contains(&id) {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("node {id} is already a voter")));
    }
    change_and_record(&app, MembershipOp::Promote { id }, audit, AuditAction::PromoteNode, id, None).await?;
    Ok(Json(json!({"id": id, "voter": true})).into_response())
}

async fn remove(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Audit(audit): Audit,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "cluster:update", &cluster_resource())?;
    let id = node_id(&id)?;
    let (nodes, voters) = app.leader.members();
    if !nodes.contains_key(&id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("node {id} is not a member")));
    }
    if voters.contains(&id) && voters.len() == 1 {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "cannot remove the last voter"));
    }
    change_and_record(&app, MembershipOp::Remove { id }, audit, AuditAction::RemoveNode, id, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/admin/snapshot`: a backup of the whole replicated state (see
/// [`crate::cluster::backup`]), consistent with every write acknowledged
/// before the request (a read barrier first). The answer is the file,
/// `application/octet-stream`; `X-Tollgate-Applied-Index` says how far it
/// reaches. A `POST` because it needs the `write` scope: the file holds
/// every key's digest.
async fn snapshot(State(app): State<Arc<App>>, caller: AdminCaller) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "snapshot:create", &["snapshot".to_string()])?;
    app.leader.read_barrier().await?;
    let published = app.published();
    let index = published.applied.map_or(0, |l| l.index);
    let node = app.id;
    // Encoding a large model takes a while: off the request threads.
    let file = tokio::task::spawn_blocking(move || backup::save(&published, node))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let disposition = format!("attachment; filename=\"tollgate-{index}.snapshot\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::HeaderName::from_static("x-tollgate-applied-index"), index.to_string()),
        ],
        file,
    )
        .into_response())
}

/// Makes a membership change and records it in the audit trail, in a task
/// of its own: a client that goes away midway cancels neither. A change
/// that failed is recorded too when it may have taken effect (the cluster
/// was unavailable midway), with the failure in the note.
async fn change_and_record(
    app: &Arc<App>,
    op: MembershipOp,
    audit: AuditContext,
    action: AuditAction,
    id: NodeId,
    note: Option<String>,
) -> Result<(), ApiError> {
    let app = app.clone();
    let task = tokio::spawn(async move {
        let result = app.leader.change_membership(op).await;
        let note = match (&result, note) {
            (Ok(()), note) => note,
            (Err(crate::cluster::leader::ClusterError::Unavailable(why)), note) => {
                let failed = format!("the call failed and may have taken effect: {why}");
                Some(note.map_or(failed.clone(), |n| format!("{n}; {failed}")))
            }
            (Err(_), _) => return result,
        };
        record(&app, audit, action, id, note).await;
        result
    });
    task.await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(())
}

/// Records a membership change in the audit trail once it took effect.
/// Membership lives in Raft's own entries, not in the model, so its record
/// is a second write: if that one fails (no leader for a moment, a disk
/// short of space) the change stands and the failure is logged.
async fn record(app: &App, context: AuditContext, action: AuditAction, id: NodeId, note: Option<String>) {
    let command = Command::AuditNote { context, action, id: Some(id.to_string()), note };
    match app.leader.write(rand::random(), command).await {
        Ok(Ok(_)) => {}
        Ok(Err(rejection)) => {
            tracing::warn!(%rejection, node = id, "membership change not recorded in the audit trail")
        }
        Err(e) => tracing::warn!(error = %e, node = id, "membership change not recorded in the audit trail"),
    }
}

/// What membership and status requests touch, for admin statements.
fn cluster_resource() -> [String; 1] {
    ["cluster".to_string()]
}

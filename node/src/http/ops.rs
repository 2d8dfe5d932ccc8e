//! Unauthenticated operational endpoints: liveness, readiness, metrics and the
//! OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(super::openapi::document()) }))
}

/// Ready: a member of a cluster that has a known leader.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let m = app.raft.metrics().borrow().clone();
    let member = m.membership_config.membership().nodes().any(|(id, _)| *id == app.id);
    let body = json!({"member": member, "leader_id": m.current_leader});
    if member && m.current_leader.is_some() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let raft = app.raft.metrics().borrow().clone();
    let text = app.metrics.render(&raft, app.committed_index());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

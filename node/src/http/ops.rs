//! Operational endpoints: liveness, readiness and the OpenAPI document
//! (public), and Prometheus metrics: on the HTTP listener or on their own
//! (`--metrics-addr`), behind a bearer token when `TOLLGATE_METRICS_TOKEN` is
//! set (the metrics name every API and stage).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::auth::MetricsCaller;
use super::HttpState;
use crate::app::App;

/// The public operational routes, with `/metrics` unless it has a listener
/// of its own.
pub fn routes(with_metrics: bool) -> Router<HttpState> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { Json(super::openapi::document()) }));
    if with_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    }
}

/// The router of the `--metrics-addr` listener: `/metrics` (and `/healthz`).
pub fn metrics_router(state: HttpState) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok" })).with_state(state)
}

/// Ready: a member of a cluster that has a known leader, whose Raft runs and
/// whose free-space guard is off. Otherwise 503, with `reason` saying why.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let m = app.raft.metrics().borrow().clone();
    let member = m.membership_config.membership().nodes().any(|(id, _)| *id == app.id);
    let removed = app.is_removed();
    let reason = app.not_ready().await;
    let status = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        json!({"member": member && !removed, "removed": removed, "leader_id": m.current_leader, "reason": reason});
    (status, Json(body)).into_response()
}

/// Prometheus text, for a caller with the metrics token if one is set.
async fn metrics(State(app): State<Arc<App>>, _: MetricsCaller) -> Response {
    let raft = app.raft.metrics().borrow().clone();
    let text = app.metrics.render(&raft, app.committed_index());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

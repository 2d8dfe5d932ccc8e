//! `GET /v1/admin/decisions`: this node's check decisions by reason, counted
//! since it started — the numbers `tollgate_check_decisions_total` carries,
//! summed over APIs and stages, as JSON for a reader that is not Prometheus.
//! The console samples it every few seconds and charts the differences as
//! rates.
//!
//! The counts are this node's own (each node decides the checks sent to it;
//! nothing here asks the others) and cumulative: a reader takes the
//! difference of two samples. `uptime_ms` says how long the counters have
//! been counting, so a sample that shows less uptime than the one before
//! comes from a restarted node whose counts began again at zero.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::AdminCaller;
use super::error::ApiError;
use crate::app::App;

/// `GET /v1/admin/decisions`: for a token that admin statements govern,
/// `decisions:read` on the resource `decisions`.
pub async fn decisions(State(app): State<Arc<App>>, caller: AdminCaller) -> Result<Json<Value>, ApiError> {
    caller.may(&app.published().model, "decisions:read", &["decisions".to_string()])?;
    let reasons = app.metrics.decisions_by_reason();
    let total: u64 = reasons.values().sum();
    let uptime_ms = u64::try_from(app.metrics.uptime().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(json!({
        "node_id": app.id,
        "uptime_ms": uptime_ms,
        "total": total,
        "reasons": reasons,
    })))
}

//! `GET /v1/admin/audit`: the audit trail of admin changes (see
//! [`tollgate_proto::audit`]), oldest first, paged by sequence number.
//!
//! Parameters (each optional; anything else is a 400 naming it):
//! - `since`: an RFC 3339 time; only changes asked for at or after it;
//! - `kind`: a collection name (`keys`, `plans`, …); only changes to it;
//! - `action`: `create`, `replace`, `delete`, `import`, `reroll`,
//!   `rotate_identity_key`, `adjust_usage`, `add_node`, `promote_node`,
//!   `remove_node`;
//! - `limit` (1 to 1000, default 100), `after` (a page's `next_after`: a
//!   sequence number), `stale` (as every admin read).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tollgate_proto::audit::{AuditAction, AuditEntry, FieldChange};
use tollgate_proto::model::{EntityKind, Timestamp};

use super::auth::AdminCaller;
use super::error::ApiError;
use super::extract::{QueryMap, ReadOptions};
use crate::app::App;

/// The parameters this route takes beside the read options.
const FILTERS: &[&str] = &["since", "kind", "action"];

/// A recorded value as the API shows it: the JSON it was (a long one is the
/// string `"<N bytes>"`).
fn value(text: &Option<String>) -> Value {
    text.as_deref().map_or(Value::Null, |t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())))
}

fn change(c: &FieldChange) -> Value {
    json!({"field": c.field, "before": value(&c.before), "after": value(&c.after)})
}

/// One entry as the admin API shows it.
pub fn view(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": e.at(),
        "at_ms": e.at_ms,
        "actor": {"token_id": e.actor.token_id, "token_name": e.actor.token_name, "source": e.actor.source},
        "request": e.request,
        "action": e.action.name(),
        "kind": e.kind.map(EntityKind::collection),
        "id": e.id,
        "changes": e.changes.iter().map(change).collect::<Vec<_>>(),
        "note": e.note,
    })
}

/// `GET /v1/admin/audit`.
pub async fn list(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    QueryMap(query): QueryMap,
) -> Result<Response, ApiError> {
    let options = ReadOptions::parse_with(&query, FILTERS)?;
    caller.may(&app.published().model, "audit:read", &["audit".to_string()])?;
    let after = match options.after.as_deref() {
        None => 0,
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| ApiError::field("after", "must be a sequence number (a page's next_after)"))?,
    };
    let since_ms = match query.get("since") {
        None => i64::MIN,
        Some(raw) => Timestamp::parse(raw).map_err(|e| ApiError::field("since", e))?.0.saturating_mul(1000),
    };
    let kind = match query.get("kind") {
        None => None,
        Some(raw) => Some(EntityKind::ALL.into_iter().find(|k| k.collection() == raw).ok_or_else(|| {
            let known: Vec<&str> = EntityKind::ALL.iter().map(|k| k.collection()).collect();
            ApiError::field("kind", format!("must be one of: {}", known.join(", ")))
        })?),
    };
    let action = match query.get("action") {
        None => None,
        Some(raw) => Some(AuditAction::ALL.into_iter().find(|a| a.name() == raw).ok_or_else(|| {
            let known: Vec<&str> = AuditAction::ALL.iter().map(|a| a.name()).collect();
            ApiError::field("action", format!("must be one of: {}", known.join(", ")))
        })?),
    };
    if !options.stale {
        app.leader.read_barrier().await?;
    }
    let published = app.published();
    let mut page: Vec<&AuditEntry> = published
        .model
        .audit
        .after(after)
        .filter(|e| e.at_ms >= since_ms)
        .filter(|e| kind.is_none_or(|k| e.kind == Some(k)))
        .filter(|e| action.is_none_or(|a| e.action == a))
        .take(options.limit + 1)
        .collect();
    let next = if page.len() > options.limit {
        page.truncate(options.limit);
        page.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    let items: Vec<Value> = page.into_iter().map(view).collect();
    Ok(Json(json!({"items": items, "next_after": next})).into_response())
}

//! Usage of a plan's quota (the GetUsage / UpdateUsage roles):
//!
//! - `GET /v1/admin/plans/{id}/usage?start_date=&end_date=[&key_id=][&stale=true]`:
//!   per key, units used per UTC day in the range, and the current period's
//!   limit, use, grants held by nodes, and what remains. Linearizable unless
//!   `stale=true`. Without `key_id`, a page of keys (`limit`, `after`).
//! - `POST /v1/admin/plans/{id}/usage/{key_id}` with `{"delta": N}`: adds N to
//!   what the key may still use this period (negative takes away; taking more
//!   than is left leaves nothing). N is a non-zero whole number of at most
//!   [`MAX_DELTA`] (10^12) either way, and the period's limit stays at most
//!   2^53 - 1; anything else is a 400 naming `delta`. Every
//!   node drops the grants it holds for the plan's keys and asks again, so the
//!   change holds everywhere at once.
//!
//! Usage counts what nodes reported and grants that expired unreported (see
//! `tollgate_proto::metering`): exact when no node crashed; after a crash it
//! may count up to one lease more than was admitted, never less.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use time::{Date, OffsetDateTime};
use tollgate_proto::command::{Applied, QuotaPeriod};
use tollgate_proto::metering::{holder_node, QuotaLedger, DAY_MS};
use tollgate_proto::model::{EntityKind, Quota, UsagePlan};
use tollgate_proto::usage::{DayUsage, KeyUsage, PeriodUsage, UsageReport, UsageUpdate};
use tollgate_proto::{Command, Rejection};

use super::auth::{AdminCaller, Audit};
use super::error::ApiError;
use super::extract::{JsonBody, QueryMap, ReadOptions, RequestId};
use crate::app::App;
use crate::clock::period_bounds;
use crate::state::SessionView;

/// The longest date range one usage request may cover.
pub const MAX_DAYS: i64 = 366;
/// The largest adjustment one request may make, either way.
pub const MAX_DELTA: i64 = tollgate_proto::metering::MAX_ADJUST_DELTA;

fn date(text: &str, field: &str) -> Result<Date, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, format).map_err(|_| ApiError::field(field, format!("{text:?} is not a date like 2026-11-23")))
}

fn day_of(ms: i64) -> Date {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).map(|t| t.date()).unwrap_or(Date::MIN)
}

fn day_number(d: Date) -> i64 {
    d.midnight().assume_utc().unix_timestamp().div_euclid(86_400)
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn plan_with_quota(app: &App, plan_id: &str) -> Result<(UsagePlan, Quota), ApiError> {
    match app.published().model.plan(plan_id) {
        Some(p) => match p.quota {
            Some(q) => Ok((p.clone(), q)),
            None => Err(ApiError::field("plan_id", format!("plan {plan_id:?} has no quota"))),
        },
        _ => Err(Rejection::not_found(EntityKind::Plan, plan_id).into()),
    }
}

/// A ledger as of `now_ms`: grants that ran out (by themselves or with
/// their lease session in `sessions`) count as used.
fn as_of(ledger: Option<&QuotaLedger>, now_ms: i64, sessions: &imbl::OrdMap<u64, i64>) -> QuotaLedger {
    let mut view = ledger.cloned().unwrap_or_default();
    view.expire(now_ms, &SessionView(sessions));
    view
}

fn period_usage(ledger: &QuotaLedger, quota: &Quota, start_ms: i64, end_ms: i64) -> PeriodUsage {
    let mut held_by_node = BTreeMap::new();
    for (holder, g) in &ledger.grants {
        *held_by_node.entry(holder_node(*holder)).or_insert(0) += g.units;
    }
    PeriodUsage {
        start: rfc3339(start_ms),
        end: rfc3339(end_ms),
        limit: ledger.limit(quota.limit),
        used: ledger.consumed,
        held: ledger.outstanding(),
        held_by_node,
        remaining: ledger.remaining(quota.limit),
    }
}

/// `GET /v1/admin/plans/{id}/usage`.
pub async fn get_usage(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path(plan_id): Path<String>,
    QueryMap(query): QueryMap,
) -> Result<Response, ApiError> {
    let options = ReadOptions::parse_with(&query, &["start_date", "end_date", "key_id"])?;
    caller.may(&app.published().model, "usage:read", &[format!("plan/{plan_id}")])?;
    let now_ms = app.clock.now_ms();
    let today = day_of(now_ms);
    let start = query.get("start_date").map(|s| date(s, "start_date")).transpose()?.unwrap_or(today);
    let end = query.get("end_date").map(|s| date(s, "end_date")).transpose()?.unwrap_or(today);
    if end < start {
        return Err(ApiError::field("end_date", "must not be before start_date"));
    }
    if (end - start).whole_days() >= MAX_DAYS {
        return Err(ApiError::field("end_date", format!("a range covers at most {MAX_DAYS} days")));
    }
    if !options.stale {
        app.leader.read_barrier().await?;
    }
    let (plan, quota) = plan_with_quota(&app, &plan_id)?;
    let published = app.published();
    let model = &published.model;
    let (first_day, last_day) = (day_number(start), day_number(end));
    let (period_start, period_end) = period_bounds(now_ms, quota.period, quota.offset);

    // The keys to report: the one asked for, or every key with a ledger for this plan.
    let key_ids: Vec<String> = match query.get("key_id") {
        Some(key_id) => match model.key(key_id) {
            Some(k) if k.plan_ids.contains(&plan.id) => vec![key_id.clone()],
            Some(_) => return Err(ApiError::field("key_id", format!("key {key_id:?} is not in plan {plan_id:?}"))),
            None => return Err(Rejection::not_found(EntityKind::Key, key_id).into()),
        },
        None => {
            // A page (and one more, to know if another follows) of the keys
            // with a ledger for this plan. Ledgers are ordered by key id first,
            // so the ids come sorted, each key's ledgers together.
            let mut ids: Vec<String> = Vec::new();
            let matching = model
                .ledgers()
                .map(|(p, _)| p)
                .filter(|p| p.plan_id == plan.id && options.after.as_deref().is_none_or(|a| p.key_id.as_str() > a));
            for p in matching {
                if ids.last() != Some(&p.key_id) {
                    if ids.len() > options.limit {
                        break;
                    }
                    ids.push(p.key_id.clone());
                }
            }
            ids
        }
    };
    let next_after = (key_ids.len() > options.limit).then(|| key_ids[options.limit - 1].clone());
    let key_ids = &key_ids[..key_ids.len().min(options.limit)];
    let mut items = Vec::with_capacity(key_ids.len());
    for key_id in key_ids.iter().cloned() {
        let mut per_day: BTreeMap<i64, u64> = BTreeMap::new();
        let from = QuotaPeriod { key_id: key_id.clone(), plan_id: plan.id.clone(), start_ms: i64::MIN };
        for (period, ledger) in model.ledgers_from(&from) {
            if period.key_id != key_id || period.plan_id != plan.id {
                break;
            }
            for (day, used) in as_of(Some(ledger), now_ms, &model.sessions).daily.range(first_day..=last_day) {
                *per_day.entry(*day).or_insert(0) += used;
            }
        }
        let days = (first_day..=last_day)
            .map(|d| DayUsage { date: day_of(d * DAY_MS).to_string(), used: per_day.get(&d).copied().unwrap_or(0) })
            .collect();
        let current = QuotaPeriod { key_id: key_id.clone(), plan_id: plan.id.clone(), start_ms: period_start };
        let ledger = as_of(model.ledger(&current), now_ms, &model.sessions);
        items.push(KeyUsage { key_id, days, current_period: period_usage(&ledger, &quota, period_start, period_end) });
    }
    let report = UsageReport { plan_id, start_date: start.to_string(), end_date: end.to_string(), items, next_after };
    Ok(Json(report).into_response())
}

/// `POST /v1/admin/plans/{id}/usage/{key_id}`.
pub async fn update_usage(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path((plan_id, key_id)): Path<(String, String)>,
    RequestId(request): RequestId,
    Audit(audit): Audit,
    JsonBody(update): JsonBody<UsageUpdate>,
) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "usage:update", &[format!("plan/{plan_id}")])?;
    // `unsigned_abs`: `abs` of i64::MIN overflows (it once wrapped to a
    // negative number and slipped through).
    if update.delta == 0 || update.delta.unsigned_abs() > MAX_DELTA.unsigned_abs() {
        return Err(ApiError::field(
            "delta",
            format!("must be a non-zero whole number of at most {MAX_DELTA} either way"),
        ));
    }
    let (_, quota) = plan_with_quota(&app, &plan_id)?;
    let now_ms = app.clock.now_ms();
    let (start_ms, end_ms) = period_bounds(now_ms, quota.period, quota.offset);
    let period = QuotaPeriod { key_id, plan_id, start_ms };
    let command = Command::QuotaAdjust { period, delta: update.delta, now_ms }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::Quota { ledger, .. } => {
            let sessions = app.published().model.sessions.clone();
            Ok(Json(period_usage(&as_of(Some(&ledger), now_ms, &sessions), &quota, start_ms, end_ms)).into_response())
        }
        other => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected answer {other:?}"),
        )),
    }
}

//! Quota usage as the admin API reports it (GetUsage) and the change an
//! operator makes to it (UpdateUsage). Shared by the node and the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One page of a usage plan's quota usage per key and day (GetUsage, the
/// `GET /v1/admin/plans/{id}/usage` answer; AWS API Gateway's `Usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// The usage plan reported on.
    pub plan_id: String,
    /// The first day covered, inclusive (`YYYY-MM-DD`, UTC).
    pub start_date: String,
    /// The last day covered, inclusive (`YYYY-MM-DD`, UTC).
    pub end_date: String,
    /// One entry per key of the plan on this page, in key id order.
    pub items: Vec<KeyUsage>,
    /// More keys follow: pass as `after` for the next page.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// One key's usage under the plan: per day over the range, and in the quota
/// period in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyUsage {
    /// The API key's id (not its secret or prefix).
    pub key_id: String,
    /// Every day of the range, oldest first.
    pub days: Vec<DayUsage>,
    /// The quota period in progress now, with what nodes hold of it.
    pub current_period: PeriodUsage,
}

/// Requests admitted (quota units consumed) on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DayUsage {
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Units consumed that day: reported by nodes, or held by a grant that
    /// expired that day (counted whole; see `metering`).
    pub used: u64,
}

/// A key's quota in one period (day, week or month of the plan's quota):
/// the limit, what is used and what nodes hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeriodUsage {
    /// RFC 3339, UTC.
    pub start: String,
    /// RFC 3339, UTC; exclusive: the next period starts here.
    pub end: String,
    /// The plan's limit with this period's adjustments.
    pub limit: u64,
    /// Units consumed in the period (reported, or held by a grant that expired).
    pub used: u64,
    /// Units nodes hold now (granted, not yet reported as used).
    pub held: u64,
    /// Held units by node id.
    pub held_by_node: BTreeMap<u64, u64>,
    /// `limit - used`: what the key may still use if held units are handed back.
    pub remaining: u64,
}

/// The change an operator makes to a key's quota for the current period
/// (UpdateUsage, `POST /v1/admin/plans/{id}/usage/{key_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageUpdate {
    /// Added to what the key may still use this period; negative takes away.
    pub delta: i64,
}

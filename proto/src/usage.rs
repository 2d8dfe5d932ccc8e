//! Quota usage as the admin API reports it (GetUsage) and the change an
//! operator makes to it (UpdateUsage). Shared by the node and the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub plan_id: String,
    pub start_date: String,
    pub end_date: String,
    pub items: Vec<KeyUsage>,
    /// More keys follow: pass as `after` for the next page.
    #[serde(default)]
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    /// Every day of the range, oldest first.
    pub days: Vec<DayUsage>,
    pub current_period: PeriodUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DayUsage {
    pub date: String,
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeriodUsage {
    /// RFC 3339, UTC.
    pub start: String,
    pub end: String,
    /// The plan's limit with this period's adjustments.
    pub limit: u64,
    pub used: u64,
    /// Units nodes hold now (granted, not yet reported as used).
    pub held: u64,
    /// Held units by node id.
    pub held_by_node: BTreeMap<u64, u64>,
    /// `limit - used`: what the key may still use if held units are handed back.
    pub remaining: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageUpdate {
    /// Added to what the key may still use this period; negative takes away.
    pub delta: i64,
}

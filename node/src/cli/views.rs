//! The columns each kind of object shows in a table (`-o table`): what an
//! operator scans a list for. A single object (`get`, `create`) shows these
//! first and then every other field; `-o json` and `-o yaml` show all.

use serde_json::Value;

use super::output::{text, Column};

/// A column showing the top-level field `name` as it is.
macro_rules! field {
    ($header:literal, $name:literal) => {
        Column { header: $header, fields: &[$name], cell: |v| text(&v[$name]) }
    };
}

pub const KEYS: &[Column] = &[
    field!("ID", "id"),
    field!("NAME", "name"),
    field!("PREFIX", "prefix"),
    field!("ENABLED", "enabled"),
    field!("PLANS", "plan_ids"),
    field!("CUSTOMER", "customer_id"),
    field!("EXPIRES", "expires_at"),
];

pub const PLANS: &[Column] = &[
    field!("ID", "id"),
    field!("NAME", "name"),
    Column { header: "THROTTLE", fields: &["throttle"], cell: throttle },
    Column { header: "QUOTA", fields: &["quota"], cell: quota },
    Column { header: "STAGES", fields: &["api_stages"], cell: plan_stages },
];

pub const APIS: &[Column] = &[
    field!("ID", "id"),
    field!("NAME", "name"),
    Column { header: "STAGES", fields: &["stages"], cell: |v| names(&v["stages"], "name") },
    Column { header: "ROUTES", fields: &["routes"], cell: |v| count(&v["routes"]) },
    Column { header: "KEY SOURCE", fields: &["key_source"], cell: |v| text(&v["key_source"]["from"]) },
];

pub const POLICIES: &[Column] = &[
    field!("ID", "id"),
    field!("NAME", "name"),
    field!("API", "api_id"),
    Column { header: "STATEMENTS", fields: &["statements"], cell: |v| count(&v["statements"]) },
];

pub const AUTHORIZERS: &[Column] = &[
    field!("ID", "id"),
    field!("NAME", "name"),
    Column { header: "KIND", fields: &["kind"], cell: authorizer_kind },
    Column { header: "ISSUER / URL", fields: &[], cell: authorizer_target },
];

pub const TOKENS: &[Column] =
    &[field!("ID", "id"), field!("NAME", "name"), field!("SCOPES", "scopes"), field!("PREFIX", "prefix")];

pub const RATE_LIMITS: &[Column] = &[
    field!("ID", "id"),
    field!("DOMAIN", "domain"),
    Column { header: "RULES", fields: &["descriptors"], cell: |v| rule_count(&v["descriptors"]).to_string() },
    field!("UPDATED", "updated_at"),
];

/// `tollgate limits import`: what was done to each domain.
pub const IMPORTED_LIMITS: &[Column] = &[
    field!("DOMAIN", "domain"),
    field!("ID", "id"),
    field!("RESULT", "result"),
    field!("RULES", "rules"),
    field!("FROM", "source"),
];

/// A plan's usage report: a row per key, its current period and the days asked.
pub const USAGE: &[Column] = &[
    field!("KEY", "key_id"),
    Column {
        header: "PERIOD",
        fields: &[],
        cell: |v| format!("{} .. {}", text(&v["current_period"]["start"]), text(&v["current_period"]["end"])),
    },
    Column { header: "LIMIT", fields: &[], cell: |v| text(&v["current_period"]["limit"]) },
    Column { header: "USED", fields: &[], cell: |v| text(&v["current_period"]["used"]) },
    Column { header: "HELD", fields: &[], cell: |v| text(&v["current_period"]["held"]) },
    Column { header: "REMAINING", fields: &[], cell: |v| text(&v["current_period"]["remaining"]) },
    Column {
        header: "USED IN DAYS ASKED",
        fields: &["days"],
        cell: |v| {
            v["days"].as_array().map_or(0, |d| d.iter().filter_map(|d| d["used"].as_u64()).sum::<u64>()).to_string()
        },
    },
];

/// One key's period after an adjustment (UpdateUsage's answer).
pub const PERIOD: &[Column] = &[
    field!("START", "start"),
    field!("END", "end"),
    field!("LIMIT", "limit"),
    field!("USED", "used"),
    field!("HELD", "held"),
    field!("REMAINING", "remaining"),
];

pub const IDENTITY_KEY: &[Column] = &[
    field!("VERSION", "version"),
    field!("KID", "kid"),
    field!("ROTATED", "rotated_at"),
    field!("SIGNING", "signing"),
];

/// A node's check decisions (`cluster decisions`); `reasons` follows.
pub const DECISIONS: &[Column] =
    &[field!("NODE", "node_id"), field!("UPTIME MS", "uptime_ms"), field!("TOTAL", "total")];

/// A membership change's answer.
pub const MEMBER_CHANGE: &[Column] = &[field!("ID", "id"), field!("VOTER", "voter")];

/// The cluster's status (a row per field; the members follow as [`MEMBERS`]).
pub const CLUSTER: &[Column] = &[
    field!("NODE", "node_id"),
    field!("STATE", "state"),
    field!("LEADER", "leader_id"),
    field!("TERM", "term"),
    field!("LAST LOG", "last_log_index"),
    field!("COMMITTED", "commit_index"),
    field!("APPLIED", "applied_index"),
    field!("SNAPSHOT", "snapshot_index"),
    field!("PURGED", "purged_index"),
    field!("REMOVED", "removed"),
    Column { header: "MEMBERS", fields: &["members"], cell: |v| count(&v["members"]) },
];

pub const MEMBERS: &[Column] = &[
    field!("ID", "id"),
    field!("HTTP", "http_addr"),
    field!("PEER", "peer_addr"),
    field!("WIRE", "wire_addr"),
    field!("VOTER", "voter"),
];

/// `10/s, burst 20`, or `-`.
fn throttle(plan: &Value) -> String {
    let t = &plan["throttle"];
    if t.is_null() {
        return "-".into();
    }
    // Rust's `10` for 10.0, `0.2` for 0.2.
    let rate = t["rate_per_sec"].as_f64().map_or_else(|| text(&t["rate_per_sec"]), |r| r.to_string());
    format!("{rate}/s, burst {}", text(&t["burst"]))
}

/// `10000/month`, with the offset when there is one; or `-`.
fn quota(plan: &Value) -> String {
    let q = &plan["quota"];
    if q.is_null() {
        return "-".into();
    }
    let offset = q["offset"].as_u64().filter(|o| *o > 0).map(|o| format!(" (offset {o})")).unwrap_or_default();
    format!("{}/{}{offset}", text(&q["limit"]), text(&q["period"]))
}

/// `petstore/prod,shop/beta`.
fn plan_stages(plan: &Value) -> String {
    let stages: Vec<String> = plan["api_stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}/{}", text(&s["api_id"]), text(&s["stage"])))
        .collect();
    if stages.is_empty() {
        "-".into()
    } else {
        stages.join(",")
    }
}

/// The `field` of each object in the list `list`, joined by `,`.
fn names(list: &Value, field: &str) -> String {
    let names: Vec<String> = list.as_array().into_iter().flatten().map(|item| text(&item[field])).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

fn count(list: &Value) -> String {
    list.as_array().map_or(0, Vec::len).to_string()
}

fn rule_count(rules: &Value) -> usize {
    rules.as_array().into_iter().flatten().map(|r| 1 + rule_count(&r["descriptors"])).sum()
}

/// `jwt` or `http`.
fn authorizer_kind(authorizer: &Value) -> String {
    authorizer["kind"].as_object().and_then(|k| k.keys().next().cloned()).unwrap_or_else(|| "-".into())
}

/// A JWT authorizer's issuer, an HTTP authorizer's URL.
fn authorizer_target(authorizer: &Value) -> String {
    let kind = &authorizer["kind"];
    if kind["jwt"].is_object() {
        text(&kind["jwt"]["issuer"])
    } else {
        text(&kind["http"]["url"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_show_their_limits_in_words() {
        let plan = json!({"id": "gold", "name": "Gold", "throttle": {"rate_per_sec": 10.0, "burst": 20},
            "quota": {"limit": 10000, "period": "month", "offset": 0},
            "api_stages": [{"api_id": "pets", "stage": "prod"}]});
        let cells: Vec<String> = PLANS.iter().map(|c| (c.cell)(&plan)).collect();
        assert_eq!(cells, ["gold", "Gold", "10/s, burst 20", "10000/month", "pets/prod"]);
        let bare = json!({"id": "free", "name": "Free", "throttle": null, "quota": null, "api_stages": []});
        assert_eq!(PLANS.iter().map(|c| (c.cell)(&bare)).collect::<Vec<_>>(), ["free", "Free", "-", "-", "-"]);
    }

    #[test]
    fn authorizers_show_their_kind_and_where_they_ask() {
        let jwt = json!({"id": "a", "name": "A", "kind": {"jwt": {"issuer": "https://idp"}}});
        let http = json!({"id": "b", "name": "B", "kind": {"http": {"url": "http://authz"}}});
        assert_eq!((authorizer_kind(&jwt), authorizer_target(&jwt)), ("jwt".into(), "https://idp".into()));
        assert_eq!((authorizer_kind(&http), authorizer_target(&http)), ("http".into(), "http://authz".into()));
        let domain = json!({"descriptors": [{"key": "a", "descriptors": [{"key": "b"}]}, {"key": "c"}]});
        assert_eq!(rule_count(&domain["descriptors"]), 3);
    }
}

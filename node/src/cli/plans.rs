//! `tollgate plans`: usage plans through `/v1/admin/plans`, and their
//! usage (GetUsage, UpdateUsage) through `/v1/admin/plans/{id}/usage`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_client::admin::Method;

use super::api::{query_value, segment, Api, ListArgs};
use super::output::{self, View};
use super::views;

#[derive(Subcommand)]
pub enum PlanCmd {
    /// Create a usage plan: a throttle and a quota for every key in it, on
    /// the API stages it covers.
    Create {
        /// A label for people (1 to 128 characters).
        #[arg(long)]
        name: String,
        /// The plan's id (default: the node makes one, `plan_…`).
        #[arg(long)]
        id: Option<String>,
        /// Free text for people.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        limits: Limits,
        /// An API stage the plan covers, API_ID/STAGE (repeatable).
        #[arg(long = "stage", value_parser = api_stage)]
        stages: Vec<(String, String)>,
    },
    /// List usage plans in id order.
    List(ListArgs),
    /// Show one usage plan.
    Get {
        /// The plan's id.
        id: String,
    },
    /// Change a plan; what is not given stays. Keys in it get the new
    /// limits on every node at once.
    Update {
        /// The plan's id.
        id: String,
        /// A new label.
        #[arg(long)]
        name: Option<String>,
        /// New free text.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        limits: Limits,
        /// Remove the throttle.
        #[arg(long, conflicts_with_all = ["rate", "burst"])]
        no_throttle: bool,
        /// Remove the quota.
        #[arg(long, conflicts_with_all = ["quota", "period", "offset"])]
        no_quota: bool,
        /// Cover this API stage too, API_ID/STAGE (repeatable).
        #[arg(long = "add-stage", value_parser = api_stage)]
        add_stages: Vec<(String, String)>,
        /// Stop covering this API stage, API_ID/STAGE (repeatable).
        #[arg(long = "remove-stage", value_parser = api_stage)]
        remove_stages: Vec<(String, String)>,
    },
    /// Delete a usage plan (refused, 409, while keys are in it).
    Delete {
        /// The plan's id.
        id: String,
    },
    /// Quota usage of the plan's keys: per key, the current period (limit,
    /// used, held by nodes, remaining) and the units used per UTC day asked.
    Usage {
        /// The plan's id (a plan with a quota).
        id: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// First day, YYYY-MM-DD (default today, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default today, UTC).
        #[arg(long)]
        to: Option<String>,
        /// Read the node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Add to (or, negative, take from) what a key may still use this
    /// period; every node drops its grants for the key and asks again.
    AdjustUsage {
        /// The plan's id.
        id: String,
        /// The key whose remaining quota changes.
        #[arg(long)]
        key: String,
        /// Units to add (negative: to take away), non-zero, at most 10^12 either way.
        #[arg(long, allow_hyphen_values = true)]
        delta: i64,
    },
}

/// A plan's throttle and quota flags, shared by create and update.
#[derive(Args)]
pub struct Limits {
    /// Throttle: steady rate per key, requests per second (with --burst).
    #[arg(long, requires = "burst")]
    rate: Option<f64>,
    /// Throttle: requests a key may make at once (with --rate).
    #[arg(long, requires = "rate")]
    burst: Option<u32>,
    /// Quota: requests per key per period.
    #[arg(long)]
    quota: Option<u64>,
    /// Quota period: day, week or month (default month).
    #[arg(long, value_parser = ["day", "week", "month"])]
    period: Option<String>,
    /// Quota: where a period starts (weekday 0-6 from Monday, or day of month - 1).
    #[arg(long)]
    offset: Option<u32>,
}

impl Limits {
    /// Sets the throttle and quota given on `plan` (the quota's other
    /// fields kept from what `plan` has).
    fn apply(self, plan: &mut Value) {
        if let (Some(rate), Some(burst)) = (self.rate, self.burst) {
            plan["throttle"] = json!({"rate_per_sec": rate, "burst": burst});
        }
        if self.quota.is_some() || self.period.is_some() || self.offset.is_some() {
            let had = plan["quota"].clone();
            let limit = self.quota.map(Value::from).or_else(|| had.get("limit").cloned()).unwrap_or(Value::Null);
            let period = self.period.map(Value::from).or_else(|| had.get("period").cloned()).unwrap_or(json!("month"));
            let offset = self.offset.map(Value::from).or_else(|| had.get("offset").cloned()).unwrap_or(json!(0));
            plan["quota"] = json!({"limit": limit, "period": period, "offset": offset});
        }
    }
}

/// `API_ID/STAGE`, for `--stage`.
fn api_stage(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((api, stage)) if !api.is_empty() && !stage.is_empty() => Ok((api.to_string(), stage.to_string())),
        _ => Err(format!("{text:?} is not API_ID/STAGE")),
    }
}

fn stage_json((api, stage): &(String, String)) -> Value {
    json!({"api_id": api, "stage": stage})
}

pub async fn run(api: &Api, cmd: PlanCmd) -> anyhow::Result<()> {
    let item = |id: &str| format!("/v1/admin/plans/{}", segment(id));
    let one = View::One(views::PLANS);
    match cmd {
        PlanCmd::Create { name, id, description, limits, stages } => {
            let mut plan = json!({"id": id.unwrap_or_default(), "name": name, "description": description,
                "api_stages": stages.iter().map(stage_json).collect::<Vec<_>>()});
            limits.apply(&mut plan);
            api.show(Method::POST, "/v1/admin/plans", Some(plan), one).await
        }
        PlanCmd::List(args) => api.show_list("/v1/admin/plans", &args, views::PLANS).await,
        PlanCmd::Get { id } => api.show(Method::GET, &item(&id), None, one).await,
        PlanCmd::Update { id, name, description, limits, no_throttle, no_quota, add_stages, remove_stages } => {
            let mut plan = api.call(Method::GET, &item(&id), None).await?;
            if let Some(name) = name {
                plan["name"] = json!(name);
            }
            if let Some(description) = description {
                plan["description"] = json!(description);
            }
            if no_throttle {
                plan["throttle"] = Value::Null;
            }
            if no_quota {
                plan["quota"] = Value::Null;
            }
            limits.apply(&mut plan);
            // A stage is named by its API and stage; what else it holds
            // (per-method throttles) stays.
            let mut stages: Vec<Value> = plan["api_stages"].as_array().cloned().unwrap_or_default();
            let named = |s: &Value, (api, stage): &(String, String)| s["api_id"] == **api && s["stage"] == **stage;
            stages.retain(|s| !remove_stages.iter().any(|r| named(s, r)));
            for add in &add_stages {
                if !stages.iter().any(|s| named(s, add)) {
                    stages.push(stage_json(add));
                }
            }
            plan["api_stages"] = json!(stages);
            // Set by the node; the replacement leaves them out.
            if let Value::Object(map) = &mut plan {
                map.remove("created_at");
                map.remove("updated_at");
            }
            api.show(Method::PUT, &item(&id), Some(plan), one).await
        }
        PlanCmd::Delete { id } => {
            api.call(Method::DELETE, &item(&id), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("deleted plan {id}")))
        }
        PlanCmd::Usage { id, key, from, to, stale } => {
            let mut query: Vec<String> = [("key_id", key), ("start_date", from), ("end_date", to)]
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| format!("{name}={}", query_value(&v))))
                .collect();
            if stale {
                query.push("stale=true".into());
            }
            let path = |after: Option<&str>| {
                let mut query = query.clone();
                query.extend(after.map(|a| format!("after={}", query_value(a))));
                format!("{}/usage?{}", item(&id), query.join("&"))
            };
            // Without --key the report is a page of keys: read every page.
            let mut report = api.call(Method::GET, &path(None), None).await?;
            while let Some(after) = report["next_after"].as_str().map(str::to_string) {
                let next = api.call(Method::GET, &path(Some(&after)), None).await?;
                let more = next["items"].as_array().cloned().unwrap_or_default();
                if let Some(items) = report["items"].as_array_mut() {
                    items.extend(more);
                }
                report["next_after"] = next["next_after"].clone();
            }
            output::print(api.format, &report, View::Rows(views::USAGE))
        }
        PlanCmd::AdjustUsage { id, key, delta } => {
            let path = format!("{}/usage/{}", item(&id), segment(&key));
            api.show(Method::POST, &path, Some(json!({"delta": delta})), View::One(views::PERIOD)).await
        }
    }
}

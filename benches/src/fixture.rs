//! What the check, throttle and quota runs check against: the API `bench`,
//! a plan, a key, and one `POST /v1/check`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use tollgate_client::admin::Method;

use crate::cluster::Cluster;

/// An API, a plan without limits and a key; returns the key's secret.
pub async fn check_fixture(cluster: &Cluster, node: u64) -> anyhow::Result<String> {
    let (_, secret) = plan_fixture(cluster, node, json!({"id": "free", "name": "free"})).await?;
    Ok(secret)
}

/// The API `bench` (`GET /items/*` needs a key), the plan given (covering
/// it) and a key in that plan, created through node `node`; returns the
/// key's id and secret.
pub async fn plan_fixture(cluster: &Cluster, node: u64, mut plan: Value) -> anyhow::Result<(String, String)> {
    let post = |path: &'static str, body: Value| post_admin(cluster, node, path, body);
    post(
        "/v1/admin/apis",
        json!({"id": "bench", "name": "bench", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]}),
    )
    .await?;
    plan["api_stages"] = json!([{"api_id": "bench", "stage": "prod"}]);
    let plan_id = plan["id"].clone();
    post("/v1/admin/plans", plan).await?;
    let key = post("/v1/admin/keys", json!({"name": "bench", "plan_ids": [plan_id]})).await?;
    match (key["id"].as_str(), key["secret"].as_str()) {
        (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
        _ => bail!("no key id or secret in {key}"),
    }
}

/// The body of a `POST /v1/check` for `GET /items/1` with the key given.
/// One admin `POST` through node `node`: the answer, or an error naming the
/// path and status when it is not a 2xx.
pub async fn post_admin(cluster: &Cluster, node: u64, path: &str, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = cluster.admin(node)?.request(Method::POST, path, Some(&body)).await?;
    if !(200..300).contains(&status) {
        bail!("POST {path}: {status} {answer}");
    }
    Ok(answer)
}

/// The check path's fixture of the `http` and `rls` runs (a plan with a
/// throttle and a quota that never refuse, one key), made through node
/// `node` and known to every node: the key's secret and the
/// `POST /v1/check` body for it.
pub async fn never_refusing_check(cluster: &Cluster, node: u64) -> anyhow::Result<(String, Arc<Vec<u8>>)> {
    let plan = json!({"id": "http", "name": "http",
        "throttle": {"rate_per_sec": 1e6, "burst": 1_000_000},
        "quota": {"limit": 1_000_000_000_000_000u64, "period": "day"}});
    let (_, secret) = plan_fixture(cluster, node, plan).await?;
    let body = check_body(&secret)?;
    wait_key_known(cluster, &body).await?;
    Ok((secret, body))
}

pub fn check_body(secret: &str) -> anyhow::Result<Arc<Vec<u8>>> {
    Ok(Arc::new(serde_json::to_vec(&json!({"api": "bench", "stage": "prod", "method": "GET",
        "path": "/items/1", "source_ip": "192.0.2.1", "headers": {"x-api-key": secret}}))?))
}

/// One `POST /v1/check` to node `node`; the decision.
pub async fn check(cluster: &Cluster, node: u64, body: &[u8]) -> anyhow::Result<Value> {
    let resp = cluster
        .http
        .post(format!("{}/v1/check", cluster.url(node)))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    Ok(resp.json().await?)
}

/// A decision's `reason` (`allowed`, `throttled`, ...).
pub fn reason(decision: &Value) -> String {
    decision["reason"].as_str().unwrap_or("no reason").to_string()
}

/// Waits until every node knows the key (answers something other than a
/// lookup failure for it): a new key reaches followers a little after the
/// leader.
pub async fn wait_key_known(cluster: &Cluster, body: &[u8]) -> anyhow::Result<()> {
    const NOT_YET: [&str; 5] = ["unknown_api", "unknown_stage", "no_route", "unknown_key", "key_not_in_plan"];
    for node in cluster.ids() {
        let start = Instant::now();
        loop {
            let decision = check(cluster, node, body).await?;
            if !NOT_YET.contains(&reason(&decision).as_str()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("node {node} still answers {decision} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// `GET /items/1` of the API `bench` with the key given, for the binary
/// protocol: the check [`check_body`] sends over HTTP.
pub fn check_request(secret: &str) -> tollgate_client::CheckRequest {
    tollgate_client::CheckRequest {
        api: "bench".into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: "/items/1".into(),
        source_ip: Some("192.0.2.1".into()),
        headers: [("x-api-key".to_string(), secret.to_string())].into(),
        ..Default::default()
    }
}

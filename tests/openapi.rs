//! The OpenAPI document a real node serves, read as a tool would: every
//! reference resolves, every path parameter is declared and typed, the admin
//! token is required exactly on admin routes, and the document and the router
//! agree on every route and method. (`.ci/run` then drives a node with it
//! through schemathesis.)

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{self, Cluster};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn served_document(cluster: &Cluster) -> Value {
    let response =
        cluster.http.get(format!("{}/openapi.json", cluster.url(1))).send().await.expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "the document is public");
    response.json().await.expect("the document is JSON")
}

/// Every `$ref` under `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(target)) => out.push((at.clone(), target)),
                    _ => refs(v, format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The `{name}`s of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string())).collect()
}

fn operations(doc: &Value) -> Vec<(String, &'static str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.clone(), method, op));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_is_a_complete_and_consistent_contract() {
    let cluster = Cluster::start(1).await;
    let doc = served_document(&cluster).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
    assert!(doc.get("security").is_none(), "no document-wide token: public routes are public");

    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(!found.is_empty());
    for (at, target) in &found {
        let resolved = target.strip_prefix('#').and_then(|pointer| doc.pointer(pointer));
        assert!(resolved.is_some(), "{at}: $ref {target} does not resolve");
    }
    for name in ["CheckRequest", "Decision", "Principal", "LimitState", "ReasonCode", "Error"] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name} is not defined");
    }

    let ops = operations(&doc);
    assert!(ops.len() >= 60, "only {} operations", ops.len());
    for (path, method, op) in &ops {
        let what = format!("{method} {path}");
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let mut declared = BTreeSet::new();
        for p in &params {
            let name = p["name"].as_str().unwrap_or_else(|| panic!("{what}: a parameter without a name"));
            assert!(p["schema"].is_object(), "{what}: parameter {name} has no schema");
            assert!(p["schema"].get("type").is_some(), "{what}: parameter {name} has no type");
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{what}: path parameter {name} must be required");
                declared.insert(name.to_string());
            }
        }
        assert_eq!(declared, template_params(path), "{what}: path parameters declared vs in the template");

        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{what}: no success response");
        if !params.is_empty() || op.get("requestBody").is_some() {
            assert!(responses.contains_key("400"), "{what} takes input but documents no 400");
        }
        for (status, r) in responses {
            assert!(r["description"].is_string(), "{what} {status}: no description");
            for (media, content) in r["content"].as_object().into_iter().flatten() {
                assert!(content["schema"].is_object(), "{what} {status} {media}: no schema");
            }
        }
        if let Some(body) = op.get("requestBody") {
            assert!(body["content"]["application/json"]["schema"].is_object(), "{what}: body without a schema");
        }

        // Admin routes need an admin token; /v1/ratelimit a proxy's (check
        // scope); every other route is public.
        let admin = path.starts_with("/v1/admin/");
        let scheme = op["security"][0].as_object().and_then(|s| s.keys().next().cloned());
        let expected = match (admin, path.as_str()) {
            (true, _) => Some("admin_token"),
            (false, "/v1/ratelimit") => Some("check_token"),
            _ => None,
        };
        assert_eq!(scheme.as_deref(), expected, "{what}: its token");
        if let Some(name) = expected {
            assert!(doc["components"]["securitySchemes"][name].is_object(), "{what}: {name} is not defined");
            assert!(responses.contains_key("401"), "{what}: no 401");
        }
        if admin {
            for status in ["401", "403", "503"] {
                assert!(responses.contains_key(status), "{what}: no {status}");
            }
        }
    }
}

/// A value for each path parameter that routes (it need not name anything).
fn sample_path(path: &str) -> String {
    path.replace("{id}", if path.contains("/cluster/nodes/") { "7" } else { "no-such-id" })
        .replace("{key_id}", "no-such-key")
        .replace("{api}", "no-such-api")
        .replace("{stage}", "prod")
        .replace("{rest}", "pets/1")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_router_serves_every_documented_operation_and_refuses_every_other_method() {
    let cluster = Cluster::start(1).await;
    let doc = served_document(&cluster).await;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let url = format!("{}{}", cluster.url(1), sample_path(path));
        for method in METHODS {
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let mut request = cluster.http.request(m, &url).bearer_auth(harness::TOKEN);
            if matches!(method, "post" | "put") && path != "/v1/admin/identity-key/rotate" {
                // Invalid on purpose: nothing is created, the route still answers.
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let fallback = status == 404 && body["error"]["message"] == "no such route";
            if item.get(method).is_some() {
                assert!(!fallback && status != 405, "{method} {path} is documented but not served: {status} {body}");
            } else if !(method == "head" && item.get("get").is_some()) {
                // HEAD is served wherever GET is (axum), as HTTP requires.
                assert_eq!(status, 405, "{method} {path} is served but not documented: {body}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_names_one_request_not_whatever_came_first_with_it() {
    let cluster = Cluster::start(1).await;
    let send = |method: Method, path: &str, body: Option<Value>| {
        let mut request = cluster
            .http
            .request(method, format!("{}{path}", cluster.url(1)))
            .bearer_auth(harness::TOKEN)
            .header("Idempotency-Key", "k-1");
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("request");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, rotated) = send(Method::POST, "/v1/admin/identity-key/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    // The same key on another route is another request, not the rotation's answer.
    let (status, api) = send(Method::POST, "/v1/admin/apis", Some(json!({"name": "pets"}))).await;
    assert_eq!(status, 201, "{api}");
    let (status, body) = send(Method::DELETE, "/v1/admin/apis/no-such-api", None).await;
    assert_eq!(status, 404, "a delete of a missing id is not answered by an earlier create: {body}");
    // A retry of the same request still takes effect once.
    let (status, again) = send(Method::POST, "/v1/admin/apis", Some(json!({"name": "pets"}))).await;
    assert_eq!((status, &again["id"]), (201, &api["id"]), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_number_may_be_written_with_a_zero_fraction() {
    let cluster = Cluster::start(1).await;
    let plan =
        json!({"name": "p", "throttle": {"rate_per_sec": 2, "burst": 5.0}, "quota": {"limit": 1e3, "period": "day"}});
    let (status, body) = cluster.post(1, "/v1/admin/plans", plan).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["throttle"]["burst"].as_u64(), body["quota"]["limit"].as_u64()), (Some(5), Some(1000)));
    let plan = json!({"name": "p", "throttle": {"rate_per_sec": 2, "burst": 5.5}});
    let (status, body) = cluster.post(1, "/v1/admin/plans", plan).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("throttle.burst")), "{body}");
}

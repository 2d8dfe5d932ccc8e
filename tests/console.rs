//! The web console on a real node: `/console` and each of its files served
//! with their types and security headers, nothing else under `/console`,
//! no inline script and nothing loaded from elsewhere; and the admin API
//! additions it reads — decision counts by reason, the key search, and the
//! leader's view of each member's replication. (The browser itself is
//! driven by `tests/python/console_test.py`.)

use std::collections::BTreeSet;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::harness::{self, Cluster};

/// Every file of the console and the type it must be served with.
const FILES: [(&str, &str); 4] = [
    ("/console", "text/html; charset=utf-8"),
    ("/console/console.js", "text/javascript; charset=utf-8"),
    ("/console/console.css", "text/css; charset=utf-8"),
    ("/console/icon.svg", "image/svg+xml"),
];

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

/// The security headers every console file carries.
fn assert_strict(path: &str, headers: &HeaderMap) {
    let csp = header(headers, "content-security-policy");
    let directives: BTreeSet<&str> = csp.split(';').map(str::trim).collect();
    for wanted in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(directives.contains(wanted), "{path}: CSP {csp:?} lacks {wanted:?}");
    }
    for loose in ["'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"] {
        assert!(!csp.split_whitespace().any(|word| word == loose), "{path}: CSP {csp:?} allows {loose}");
    }
    assert_eq!(header(headers, "x-content-type-options"), "nosniff", "{path}");
    assert_eq!(header(headers, "referrer-policy"), "no-referrer", "{path}");
    assert_eq!(header(headers, "x-frame-options"), "DENY", "{path}");
    assert_eq!(header(headers, "cache-control"), "no-cache", "{path}");
}

/// The values of `attribute="..."` in an HTML text.
fn attribute_values<'t>(html: &'t str, attribute: &str) -> Vec<&'t str> {
    let needle = format!(" {attribute}=\"");
    html.match_indices(&needle)
        .filter_map(|(at, _)| html[at + needle.len()..].split_once('"').map(|(value, _)| value))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_with_its_types_and_strict_security_headers() {
    let cluster = Cluster::start(1).await;
    let mut bodies = Vec::new();
    for (path, content_type) in FILES {
        let response = cluster.http.get(format!("{}{path}", cluster.url(1))).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path} is public: no token needed");
        assert_eq!(header(response.headers(), "content-type"), content_type, "{path}");
        assert_strict(path, response.headers());
        let text = response.text().await.expect("body");
        assert!(!text.is_empty(), "{path} is empty");
        bodies.push((path, text));
    }
    let html = &bodies[0].1;
    let script = &bodies[1].1;

    // No inline script: every <script> names a file of ours and holds nothing.
    let scripts: Vec<&str> = html.match_indices("<script").map(|(at, _)| &html[at..]).collect();
    assert_eq!(scripts.len(), 1, "one script, the console's");
    for tag in scripts {
        assert!(tag.starts_with("<script src=\"/console/console.js\""), "{tag:.60}");
        let inner = tag.split_once('>').map(|(_, rest)| rest).unwrap_or_default();
        assert!(inner.starts_with("</script>"), "a script with content: {tag:.80}");
    }
    for inline in [" onclick=", " onload=", " onerror=", " onsubmit=", "javascript:", " style=", "<style"] {
        assert!(!html.to_lowercase().contains(inline), "the page has inline code or style: {inline}");
    }
    // Everything it loads is one of these files: nothing from elsewhere.
    let served: BTreeSet<&str> = FILES.iter().map(|(path, _)| *path).collect();
    for url in attribute_values(html, "src").into_iter().chain(attribute_values(html, "href")) {
        if url.starts_with('#') || url == "/openapi.json" {
            continue;
        }
        assert!(served.contains(url), "the page loads {url}, which is not a console file");
    }
    for (path, text) in &bodies {
        let external = text.replace("http://www.w3.org/2000/svg", "");
        assert!(!external.contains("http://") && !external.contains("https://"), "{path} names another site");
        assert!(!external.contains("@import"), "{path} imports a style sheet");
    }
    // The script puts API data on the page as text, keeps the token in
    // session storage only, and evaluates no strings.
    for banned in
        [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage."]
    {
        assert!(!script.contains(banned), "console.js uses {banned}");
    }
    assert!(script.contains("sessionStorage.setItem"), "the token is kept in session storage");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_console_files_are_served_under_console() {
    let cluster = Cluster::start(1).await;
    for path in [
        "/console/",
        "/console/index.html",
        "/console/nope.js",
        "/console/console.js.map",
        "/console/../openapi.json/x",
        "/console/%2e%2e/Cargo.toml",
        "/console/node.json",
        "/consolex",
    ] {
        let response = cluster.http.get(format!("{}{path}", cluster.url(1))).send().await.expect("GET");
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response =
            cluster.http.request(method.clone(), format!("{}/console", cluster.url(1))).send().await.expect("request");
        assert_eq!(response.status(), 405, "{method} /console");
    }
    let head = cluster.http.head(format!("{}/console/console.css", cluster.url(1))).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_strict("HEAD /console/console.css", head.headers());
}

/// One `POST /v1/check` of `GET /pets/1` on node 1 with `key` as the API key.
async fn check(cluster: &Cluster, api: &str, key: &str) -> Value {
    let body = json!({"api": api, "stage": "prod", "method": "GET", "path": "/pets/1", "source_ip": "203.0.113.9",
        "headers": {"x-api-key": key}});
    let response = cluster.http.post(format!("{}/v1/check", cluster.url(1))).json(&body).send().await.expect("check");
    response.json().await.expect("a decision")
}

async fn decisions(cluster: &Cluster, token: Option<&str>) -> (u16, HeaderMap, Value) {
    let mut request = cluster.http.get(format!("{}/v1/admin/decisions", cluster.url(1)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /v1/admin/decisions");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn decision_counts_by_reason_need_an_admin_token_and_count_every_check_once() {
    let cluster = Cluster::start(1).await;
    for token in [None, Some("tga_not-the-token-at-all")] {
        let (status, headers, body) = decisions(&cluster, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    }
    let api = json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": true}]});
    assert_eq!(cluster.post(1, "/v1/admin/apis", api).await.0, 201);
    let plan = json!({"id": "open", "name": "Open", "throttle": {"rate_per_sec": 1000, "burst": 1000},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    assert_eq!(cluster.post(1, "/v1/admin/plans", plan).await.0, 201);
    let (status, key) = cluster.post(1, "/v1/admin/keys", json!({"name": "alice", "plan_ids": ["open"]})).await;
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().expect("the secret");

    let (status, _, before) = decisions(&cluster, Some(harness::TOKEN)).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["node_id"], 1);
    for _ in 0..3 {
        assert_eq!(check(&cluster, "pets", secret).await["reason"], "allowed");
    }
    for _ in 0..2 {
        assert_eq!(check(&cluster, "pets", "tgk_no-such-key").await["reason"], "unknown_key");
    }
    assert_eq!(check(&cluster, "no-such-api", secret).await["reason"], "unknown_api");

    let (status, _, after) = decisions(&cluster, Some(harness::TOKEN)).await;
    assert_eq!(status, 200, "{after}");
    let count = |body: &Value, reason: &str| body["reasons"][reason].as_u64().unwrap_or(0);
    for (reason, more) in [("allowed", 3), ("unknown_key", 2), ("unknown_api", 1), ("throttled", 0)] {
        assert_eq!(count(&after, reason) - count(&before, reason), more, "{reason}: {before} then {after}");
    }
    let total = after["total"].as_u64().expect("total");
    assert_eq!(total - before["total"].as_u64().expect("total"), 6);
    let summed: u64 = after["reasons"].as_object().expect("reasons").values().filter_map(Value::as_u64).sum();
    assert_eq!(summed, total, "total is the sum of the reasons");
    assert!(after["reasons"].as_object().expect("reasons").values().all(|v| v.as_u64() > Some(0)), "{after}");
    assert!(after["uptime_ms"].as_u64() >= before["uptime_ms"].as_u64(), "{before} then {after}");

    // A read token may read them; a proxy's check token may not.
    let (_, reader) = cluster.post(1, "/v1/admin/tokens", json!({"name": "console", "scopes": ["read"]})).await;
    let (status, _, body) = decisions(&cluster, reader["secret"].as_str()).await;
    assert_eq!(status, 200, "{body}");
    let (_, proxy) = cluster.post(1, "/v1/admin/tokens", json!({"name": "envoy", "scopes": ["check"]})).await;
    let (status, _, body) = decisions(&cluster, proxy["secret"].as_str()).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_found_by_id_name_customer_or_prefix_and_a_search_is_paged() {
    let cluster = Cluster::start(1).await;
    let mut keys = Vec::new();
    for (name, customer) in [("alice", "acme"), ("bob", "globex"), ("carol", "acme"), ("dave", "initech")] {
        let (status, key) = cluster.post(1, "/v1/admin/keys", json!({"name": name, "customer_id": customer})).await;
        assert_eq!(status, 201, "{key}");
        keys.push(key);
    }
    let names = |body: &Value| -> Vec<String> {
        body["items"].as_array().expect("items").iter().map(|k| k["name"].as_str().unwrap_or("?").to_string()).collect()
    };
    let node = &cluster;
    let search = |q: String| async move { node.get(1, &format!("/v1/admin/keys?search={q}")).await };

    let (status, body) = search("ALI".into()).await;
    assert_eq!((status, names(&body)), (200, vec!["alice".to_string()]), "by name, ignoring case: {body}");
    let (_, body) = search("acme".into()).await;
    let mut found = names(&body);
    found.sort();
    assert_eq!(found, ["alice", "carol"], "by customer: {body}");
    let dave = &keys[3];
    let (_, body) = search(dave["id"].as_str().expect("id").to_string()).await;
    assert_eq!(names(&body), ["dave"], "by id: {body}");
    let prefix = dave["prefix"].as_str().expect("prefix");
    let (_, body) = search(prefix.to_string()).await;
    assert_eq!(names(&body), ["dave"], "by the secret's visible prefix: {body}");
    let (_, body) = search("zzz-nobody".into()).await;
    assert_eq!(names(&body), Vec::<String>::new(), "{body}");
    // The whole secret finds nothing: a search never tests secrets.
    let (_, body) = search(dave["secret"].as_str().expect("secret").to_string()).await;
    assert_eq!(names(&body), Vec::<String>::new(), "{body}");
    // Empty: every key.
    let (_, body) = search(String::new()).await;
    assert_eq!(names(&body).len(), 4, "{body}");

    // Paged like the whole list.
    let (_, first) = cluster.get(1, "/v1/admin/keys?search=acme&limit=1").await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(1), "{first}");
    let after = first["next_after"].as_str().expect("another page follows");
    let (_, second) = cluster.get(1, &format!("/v1/admin/keys?search=acme&limit=1&after={after}")).await;
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1), "{second}");
    assert_eq!(second["next_after"], Value::Null, "{second}");
    let mut both = [names(&first), names(&second)].concat();
    both.sort();
    assert_eq!(both, ["alice", "carol"]);
    // Other lists take no `search`.
    let (status, body) = cluster.get(1, "/v1/admin/plans?search=x").await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("search")), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_reports_how_far_each_member_has_replicated_and_followers_do_not() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    assert_eq!(cluster.post(leader, "/v1/admin/plans", harness::plan("p")).await.0, 201);
    harness::wait_until("every member in sync, as the leader reports", || async {
        let (_, status) = cluster.get(leader, "/v1/admin/cluster").await;
        let last = status["last_log_index"].as_u64();
        let members = status["members"].as_array().cloned().unwrap_or_default();
        members.len() == 3 && members.iter().all(|m| m["matched_index"].as_u64() == last && last.is_some())
    })
    .await;
    let (_, status) = cluster.get(leader, "/v1/admin/cluster").await;
    assert!(status["millis_since_quorum_ack"].as_u64().is_some(), "{status}");
    let follower = cluster.other_than(leader);
    let (_, status) = cluster.get(follower, "/v1/admin/cluster").await;
    let members = status["members"].as_array().expect("members");
    assert!(members.iter().all(|m| m["matched_index"].is_null()), "only the leader knows: {status}");
    assert_eq!(status["millis_since_quorum_ack"], Value::Null, "{status}");
}

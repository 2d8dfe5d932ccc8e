//! The admin API from outside: bad input, secrets, tokens and scopes.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{self, Cluster, Options};

fn assert_clear_4xx(what: &str, status: u16, body: &Value) {
    assert!((400..500).contains(&status), "{what}: expected a 4xx, got {status}: {body}");
    if status != 405 {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: no error message in {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_every_admin_route_is_a_4xx_that_changes_nothing() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let node = 1;

    let collections = ["apis", "plans", "keys", "policies", "authorizers", "tokens", "ratelimits"];
    let bodies: Vec<(&str, String)> = vec![
        ("empty body", String::new()),
        ("not JSON", "{nope".into()),
        ("an array", "[1,2]".into()),
        ("wrong types", r#"{"name": 5, "id": [], "scopes": "all", "statements": 3, "kind": 1}"#.into()),
        ("trailing garbage", r#"{"name": "x"} x"#.into()),
        ("non-UTF-8", String::from_utf8_lossy(&[0x7b, 0xff, 0xfe, 0x7d]).into_owned()),
        ("empty object", "{}".into()),
    ];
    for collection in collections {
        for (what, body) in &bodies {
            let resp = cluster
                .http
                .post(format!("{}/v1/admin/{collection}", cluster.url(node)))
                .bearer_auth(harness::TOKEN)
                .body(body.clone())
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_clear_4xx(&format!("POST {collection} with {what}"), status, &body);
        }
        for (method, what) in [(Method::GET, "get"), (Method::DELETE, "delete")] {
            let (status, body) = cluster.call(node, method, &format!("/v1/admin/{collection}/no-such-id"), None).await;
            assert_eq!(status, 404, "{what} unknown {collection}: {body}");
            assert_clear_4xx(what, status, &body);
        }
        let (status, body) =
            cluster.call(node, Method::PUT, &format!("/v1/admin/{collection}/no-such-id"), Some(json!({"x": 1}))).await;
        assert_clear_4xx(&format!("PUT unknown {collection}"), status, &body);
        for query in ["limit=0", "limit=abc", "limit=100000", "stale=maybe"] {
            let (status, body) = cluster.get(node, &format!("/v1/admin/{collection}?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            let field = body["error"]["field"].as_str().unwrap_or_default();
            assert!(query.starts_with(field) && !field.is_empty(), "{query} should name its field: {body}");
        }
    }

    // Field-level validation names the field.
    let cases = [
        ("plans", json!({"name": "p", "throttle": {"rate_per_sec": 0, "burst": 1}}), "throttle.rate_per_sec"),
        ("plans", json!({"name": "p", "quota": {"limit": 5, "period": "week", "offset": 9}}), "quota.offset"),
        ("plans", json!({"name": "p", "quota": {"limit": 5, "period": "year"}}), "quota.period"),
        ("plans", json!({"name": "p", "api_stages": [{"api_id": "nope", "stage": "prod"}]}), "api_stages[0].api_id"),
        ("apis", json!({"id": "a b", "name": "x"}), "id"),
        ("apis", json!({"name": "x", "routes": [{"method": "FETCH", "path": "/"}]}), "routes[0].method"),
        (
            "apis",
            json!({"name": "x", "routes": [{"method": "GET", "path": "/", "authorizer_id": "missing"}]}),
            "routes[0].authorizer_id",
        ),
        (
            "apis",
            json!({"name": "x", "waf": [{"name": "r", "condition": {"path_matches": "(unclosed"}}]}),
            "waf[0].condition.path_matches",
        ),
        (
            "apis",
            json!({"name": "x", "waf": [{"name": "r", "condition": {"path_matches": "a{1000}{1000}"}}]}),
            "waf[0].condition.path_matches",
        ),
        (
            "apis",
            json!({"name": "x", "waf": [{"name": "r", "condition": {"rate_per_ip": {"limit": 0, "window_secs": 1}}}]}),
            "waf[0].condition.rate_per_ip.limit",
        ),
        (
            "apis",
            json!({"name": "x", "cors": {"allow_origins": ["*"], "allow_credentials": true}}),
            "cors.allow_credentials",
        ),
        ("keys", json!({"name": "k", "plan_ids": ["missing"]}), "plan_ids[0]"),
        ("keys", json!({"name": "k", "expires_at": "tomorrow"}), "expires_at"),
        ("keys", json!({"name": ""}), "name"),
        ("tokens", json!({"name": "t", "scopes": []}), "scopes"),
        ("tokens", json!({"name": "t", "scopes": ["admin"]}), "scopes[0]"),
        (
            "policies",
            json!({"name": "p", "statements": [{"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"],
                "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["300.1.1.1/8"]}]}]}),
            "statements[0].conditions[0].values[0]",
        ),
        (
            "authorizers",
            json!({"name": "j", "kind": {"jwt": {"issuer": "https://i", "audiences": ["a"], "algorithms": ["none"], "jwks_url": "https://i/jwks"}}}),
            "kind.jwt.algorithms[0]",
        ),
        (
            "authorizers",
            json!({"name": "h", "kind": {"http": {"url": "https://auth", "identity_sources": ["header:authorization"], "cache_ttl_secs": 7200}}}),
            "kind.http.cache_ttl_secs",
        ),
    ];
    for (collection, body, field) in cases {
        let (status, answer) = cluster.post(node, &format!("/v1/admin/{collection}"), body.clone()).await;
        assert_eq!(status, 400, "{collection} {body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{collection} {body}: {answer}");
    }

    // Cluster routes.
    for (body, field) in [
        (json!({"id": 0, "http_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2"}), "id"),
        (json!({"id": 9, "http_addr": "nowhere", "peer_addr": "127.0.0.1:2"}), "http_addr"),
        (json!({"id": 9, "http_addr": "127.0.0.1:1", "peer_addr": "h:70000"}), "peer_addr"),
        (json!({"id": "nine"}), "id"),
    ] {
        let (status, answer) = cluster.post(node, "/v1/admin/cluster/nodes", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    assert_eq!(cluster.call(node, Method::POST, "/v1/admin/cluster/nodes/abc/promote", None).await.0, 400);
    assert_eq!(cluster.call(node, Method::POST, "/v1/admin/cluster/nodes/77/promote", None).await.0, 404);
    assert_eq!(cluster.call(node, Method::DELETE, "/v1/admin/cluster/nodes/1", None).await.0, 409, "last voter");

    // Too large a body.
    assert_eq!(harness::post_announcing(cluster.node(node).http_port, "/v1/admin/keys", 2 << 20).await, 413);

    // Nothing was stored by any of it, and the node is still serving.
    for collection in collections {
        assert!(cluster.list_all(node, collection, false).await.is_empty(), "{collection} changed");
    }
    assert_eq!(
        cluster.http.get(format!("{}/healthz", cluster.url(node))).send().await.map(|r| r.status().as_u16()).ok(),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_secret_never_appears_in_logs_responses_or_storage() {
    // Debug logging, so even verbose logs are checked.
    let options = Options { log_level: "debug", ..Default::default() };
    let mut cluster = Cluster::start_with(3, options).await;
    cluster.leader().await;

    let (status, created) =
        cluster.post(2, "/v1/admin/keys", json!({"name": "secretive", "tags": {"team": "a"}})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret shown once at creation").to_string();
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap_or("?")));
    let (status, token) = cluster.post(1, "/v1/admin/tokens", json!({"name": "ops", "scopes": ["read"]})).await;
    assert_eq!(status, 201, "{token}");
    let token_secret = token["secret"].as_str().expect("token secret").to_string();

    // Reads show neither the secret nor its digest.
    for node in [1, 2, 3] {
        for path in [format!("/v1/admin/keys/{id}"), "/v1/admin/keys".into(), "/v1/admin/tokens".into()] {
            let (_, body) = cluster.get(node, &path).await;
            let text = body.to_string();
            assert!(!text.contains(&secret) && !text.contains(&token_secret), "{path} on node {node}: {text}");
            assert!(!text.contains("sha256") && !text.contains("\"secret\""), "{path} shows a digest: {text}");
        }
    }
    // An update keeps the secret (the key's digest) as it was.
    let (status, _) =
        cluster.call(3, Method::PUT, &format!("/v1/admin/keys/{id}"), Some(json!({"name": "renamed"}))).await;
    assert_eq!(status, 200);

    for node in [1, 2, 3] {
        cluster.kill(node);
    }
    assert!(!cluster.logs().contains(&secret), "the key secret was logged");
    assert!(!cluster.logs().contains(&token_secret), "the token secret was logged");
    let prefix = created["prefix"].as_str().unwrap_or_default().to_string();
    let mut prefix_found = false;
    for dir in cluster.data_dirs() {
        for file in walk(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            prefix_found |= bytes.windows(prefix.len()).any(|w| w == prefix.as_bytes());
            for s in [&secret, &token_secret] {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "secret stored in plain text in {}",
                    file.display()
                );
            }
        }
    }
    // The scan does see stored data: the key's visible prefix is there.
    assert!(prefix_found, "the key prefix {prefix} was not found in any data file; the scan proves nothing");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_tokens_are_checked_and_scoped() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let url = cluster.url(1);
    let (_, token) = cluster.post(1, "/v1/admin/tokens", json!({"name": "reader", "scopes": ["read"]})).await;
    let reader = token["secret"].as_str().expect("secret").to_string();

    let anonymous = cluster.http.get(format!("{url}/v1/admin/plans")).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong =
        cluster.http.get(format!("{url}/v1/admin/plans")).bearer_auth("tga_wrong").send().await.expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    let read = cluster.http.get(format!("{url}/v1/admin/plans")).bearer_auth(&reader).send().await.expect("request");
    assert_eq!(read.status().as_u16(), 200);
    let write = cluster
        .http
        .post(format!("{url}/v1/admin/plans"))
        .bearer_auth(&reader)
        .json(&harness::plan("p"))
        .send()
        .await
        .expect("request");
    assert_eq!(write.status().as_u16(), 403);

    let id = token["id"].as_str().unwrap_or_default();
    assert_eq!(cluster.call(1, Method::DELETE, &format!("/v1/admin/tokens/{id}"), None).await.0, 204);
    let after = cluster.http.get(format!("{url}/v1/admin/plans")).bearer_auth(&reader).send().await.expect("request");
    assert_eq!(after.status().as_u16(), 401, "a deleted token no longer works");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_retried_with_the_same_idempotency_key_takes_effect_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.other_than(leader);
    let post = |node: u64, key: &'static str, body: Value| {
        let request = cluster
            .http
            .post(format!("{}/v1/admin/plans", cluster.url(node)))
            .bearer_auth(harness::TOKEN)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let resp = request.send().await.expect("request");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (first, created) = post(follower, "create-gold-1", harness::plan("gold")).await;
    assert_eq!(first, 201, "{created}");
    // The same request again, on another node: the same answer, not a conflict.
    let (again, repeated) = post(leader, "create-gold-1", harness::plan("gold")).await;
    assert_eq!(again, 201, "{repeated}");
    assert_eq!(repeated, created);
    // Without the key, a second create is a conflict, as it should be.
    assert_eq!(cluster.post(leader, "/v1/admin/plans", harness::plan("gold")).await.0, 409);

    // A replace retried after a later write must not undo that later write.
    let put = |name: &str, key: &'static str| {
        let request = cluster
            .http
            .put(format!("{}/v1/admin/plans/gold", cluster.url(leader)))
            .bearer_auth(harness::TOKEN)
            .header("Idempotency-Key", key)
            .json(&json!({"name": name}));
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(put("first", "rename-1").await, 200);
    assert_eq!(put("second", "rename-2").await, 200);
    assert_eq!(put("first", "rename-1").await, 200, "the retry is answered as before");
    for node in [1, 2, 3] {
        let (_, plan) = cluster.get(node, "/v1/admin/plans/gold").await;
        assert_eq!(plan["name"], "second", "node {node}: the retried rename took effect twice");
    }

    // A retried key create cannot show a second secret for the same key.
    let key_post = || {
        cluster
            .http
            .post(format!("{}/v1/admin/keys", cluster.url(follower)))
            .bearer_auth(harness::TOKEN)
            .header("Idempotency-Key", "key-create-1")
            .json(&json!({"name": "once"}))
            .send()
    };
    assert_eq!(key_post().await.expect("request").status().as_u16(), 201);
    let retry = key_post().await.expect("request");
    assert_eq!(retry.status().as_u16(), 409);
    let body: Value = retry.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "already_created", "{body}");
    assert_eq!(cluster.list_all(leader, "keys", false).await.len(), 1);

    // The same key with another body (to the same route) is refused with
    // 422, on any node, and changes nothing: never answered with the first
    // body's result.
    let (status, answer) = post(leader, "create-gold-1", harness::plan("silver")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("idempotency_key_reused")), "{answer}");
    assert_eq!(cluster.get(follower, "/v1/admin/plans/silver").await.0, 404, "nothing was created");
    // A write the state machine refused (a stage that does not exist) is not
    // remembered: the same key with the body fixed takes effect.
    let missing_stage = json!({"id": "bronze", "name": "Bronze", "api_stages": [{"api_id": "nope", "stage": "x"}]});
    let (status, answer) = post(follower, "fix-then-retry", missing_stage).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("api_stages[0].api_id")), "{answer}");
    let (status, answer) = post(leader, "fix-then-retry", json!({"id": "bronze", "name": "Bronze"})).await;
    assert_eq!(status, 201, "the fixed body with the same key: {answer}");
    let (status, answer) = post(leader, "fix-then-retry", json!({"id": "bronze", "name": "Bronze"})).await;
    assert_eq!((status, &answer["name"]), (201, &json!("Bronze")), "and a retry of it is answered as before");
}

/// The edges every number is tried at: both ends of i64 and u64, around
/// zero, a fraction, and the largest float JSON carries (serde_json refuses
/// NaN and infinities).
fn edges() -> Vec<Value> {
    vec![json!(i64::MIN), json!(-1), json!(0), json!(1), json!(0.5), json!(i64::MAX), json!(u64::MAX), json!(1e308)]
}

/// Accepted by a bound `lo..=hi` (whole numbers only when `whole`).
fn within(v: &Value, lo: f64, hi: f64, whole: bool) -> bool {
    let x = v.as_f64().unwrap_or(f64::NAN);
    (!whole || v.is_i64() || v.is_u64()) && lo <= x && x <= hi
}

fn with(mut body: Value, pointer: &str, value: &Value) -> Value {
    *body.pointer_mut(pointer).unwrap_or_else(|| panic!("fixture has no {pointer}")) = value.clone();
    body
}

fn assert_named(what: &str, status: u16, answer: &Value, field: &str) {
    assert_eq!(status, 400, "{what}: expected 400, got {answer}");
    assert_eq!(answer["error"]["code"], "invalid_field", "{what}: {answer}");
    assert_eq!(answer["error"]["field"], field, "{what}: {answer}");
}

/// Every numeric field of the admin API's bodies and of the check, at the
/// edges of i64/u64 and 1e308: a 400 naming the field, or accepted with
/// the value stored as sent. Nothing refused changes state; nothing panics.
#[tokio::test(flavor = "multi_thread")]
async fn every_number_a_client_sends_is_bounded_and_named() {
    let cluster = Cluster::start(3).await;
    let node = cluster.leader().await;
    let (status, api) =
        cluster.post(node, "/v1/admin/apis", json!({"id": "edge", "name": "edge", "stages": [{"name": "prod"}]})).await;
    assert_eq!(status, 201, "{api}");
    let plan = json!({"id": "edge-plan", "name": "p", "quota": {"limit": 100, "period": "day"},
        "api_stages": [{"api_id": "edge", "stage": "prod"}]});
    assert_eq!(cluster.post(node, "/v1/admin/plans", plan).await.0, 201);
    let (status, key) = cluster.post(node, "/v1/admin/keys", json!({"name": "k", "plan_ids": ["edge-plan"]})).await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap_or_default().to_string();

    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    let api_body = |extra: Value| {
        let mut body = json!({"name": "n", "stages": [{"name": "prod", "throttle": {"rate_per_sec": 1, "burst": 1}}],
            "cors": {"allow_origins": ["*"], "max_age_secs": 1}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    let waf = |condition: Value| api_body(json!({"waf": [{"name": "w", "condition": condition}]}));
    let plan_body = json!({"name": "n", "throttle": {"rate_per_sec": 1, "burst": 1},
        "quota": {"limit": 1, "period": "week", "offset": 0},
        "api_stages": [{"api_id": "edge", "stage": "prod", "method_throttles":
            [{"method": "GET", "path": "/x", "throttle": {"rate_per_sec": 1, "burst": 1}}]}]});
    let jwt = json!({"name": "j", "kind": {"jwt": {"issuer": "https://issuer.example", "audiences": ["a"],
        "algorithms": ["RS256"], "jwks_url": "https://issuer.example/jwks.json", "leeway_secs": 0}}});
    let http = json!({"name": "h", "kind": {"http": {"url": "https://auth.example/authorize",
        "identity_sources": ["header:authorization"], "cache_ttl_secs": 0, "timeout_ms": 1}}});
    // (collection, body, JSON pointer, field named in errors, lowest, highest, whole numbers only)
    let fields: Vec<(&str, Value, &str, &str, f64, f64, bool)> = vec![
        (
            "apis",
            api_body(json!({})),
            "/stages/0/throttle/rate_per_sec",
            "stages[0].throttle.rate_per_sec",
            1e-6,
            1e9,
            false,
        ),
        ("apis", api_body(json!({})), "/stages/0/throttle/burst", "stages[0].throttle.burst", 1.0, 1e9, true),
        ("apis", api_body(json!({})), "/cors/max_age_secs", "cors.max_age_secs", 0.0, 86_400.0, true),
        (
            "apis",
            waf(json!({"max_body_bytes": 1})),
            "/waf/0/condition/max_body_bytes",
            "waf[0].condition.max_body_bytes",
            1.0,
            MAX_SAFE,
            true,
        ),
        (
            "apis",
            waf(json!({"max_header_bytes": 1})),
            "/waf/0/condition/max_header_bytes",
            "waf[0].condition.max_header_bytes",
            1.0,
            MAX_SAFE,
            true,
        ),
        (
            "apis",
            waf(json!({"rate_per_ip": {"limit": 1, "window_secs": 1}})),
            "/waf/0/condition/rate_per_ip/limit",
            "waf[0].condition.rate_per_ip.limit",
            1.0,
            1e9,
            true,
        ),
        (
            "apis",
            waf(json!({"rate_per_ip": {"limit": 1, "window_secs": 1}})),
            "/waf/0/condition/rate_per_ip/window_secs",
            "waf[0].condition.rate_per_ip.window_secs",
            1.0,
            86_400.0,
            true,
        ),
        ("plans", plan_body.clone(), "/throttle/rate_per_sec", "throttle.rate_per_sec", 1e-6, 1e9, false),
        ("plans", plan_body.clone(), "/throttle/burst", "throttle.burst", 1.0, 1e9, true),
        ("plans", plan_body.clone(), "/quota/limit", "quota.limit", 1.0, MAX_SAFE, true),
        ("plans", plan_body.clone(), "/quota/offset", "quota.offset", 0.0, 6.0, true),
        (
            "plans",
            plan_body.clone(),
            "/api_stages/0/method_throttles/0/throttle/rate_per_sec",
            "api_stages[0].method_throttles[0].throttle.rate_per_sec",
            1e-6,
            1e9,
            false,
        ),
        (
            "plans",
            plan_body.clone(),
            "/api_stages/0/method_throttles/0/throttle/burst",
            "api_stages[0].method_throttles[0].throttle.burst",
            1.0,
            1e9,
            true,
        ),
        ("authorizers", jwt, "/kind/jwt/leeway_secs", "kind.jwt.leeway_secs", 0.0, 300.0, true),
        ("authorizers", http.clone(), "/kind/http/cache_ttl_secs", "kind.http.cache_ttl_secs", 0.0, 3600.0, true),
        ("authorizers", http, "/kind/http/timeout_ms", "kind.http.timeout_ms", 1.0, 30_000.0, true),
    ];
    let mut created: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (collection, body, pointer, field, lo, hi, whole) in fields {
        for value in edges() {
            let what = format!("{collection} {field} = {value}");
            let (status, answer) =
                cluster.post(node, &format!("/v1/admin/{collection}"), with(body.clone(), pointer, &value)).await;
            if within(&value, lo, hi, whole) {
                assert_eq!(status, 201, "{what}: expected it accepted: {answer}");
                assert_eq!(answer.pointer(pointer).and_then(Value::as_f64), value.as_f64(), "{what}: stored {answer}");
                *created.entry(collection).or_default() += 1;
            } else {
                assert_named(&what, status, &answer, field);
            }
        }
    }

    // Times: from 1970 to the end of year 9999; the `@seconds` form included.
    for (text, ok) in [
        ("@-9223372036854775808", false),
        ("@-1", false),
        ("@0", true),
        ("9999-12-31T23:59:59Z", true),
        ("@253402300800", false),
        ("@9223372036854775807", false),
    ] {
        let (status, answer) = cluster.post(node, "/v1/admin/keys", json!({"name": "t", "expires_at": text})).await;
        if ok {
            assert_eq!(status, 201, "expires_at {text}: {answer}");
            *created.entry("keys").or_default() += 1;
        } else {
            assert_named(&format!("expires_at {text}"), status, &answer, "expires_at");
        }
    }
    // Server-set times are not taken from the body, whatever it says.
    let (status, answer) =
        cluster.post(node, "/v1/admin/apis", json!({"name": "t", "created_at": "@-9223372036854775808"})).await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer["created_at"].as_str().is_some_and(|t| t.starts_with("20")), "{answer}");
    *created.entry("apis").or_default() += 1;

    // Reroll overlap: 0 to 30 days.
    for value in edges() {
        let path = format!("/v1/admin/keys/{key_id}/reroll");
        let (status, answer) = cluster.post(node, &path, json!({"overlap_secs": value})).await;
        if within(&value, 0.0, 2_592_000.0, true) {
            assert_eq!(status, 200, "overlap_secs {value}: {answer}");
        } else {
            assert_named(&format!("overlap_secs {value}"), status, &answer, "overlap_secs");
        }
    }

    // UpdateUsage: a non-zero delta of at most 10^12 either way. i64::MIN
    // once passed the check and pinned the key's limit at 0 for good.
    let usage = format!("/v1/admin/plans/edge-plan/usage/{key_id}");
    for value in edges().into_iter().chain([json!(-1_000_000_000_001i64), json!(1_000_000_000_001i64)]) {
        let (status, answer) = cluster.post(node, &usage, json!({"delta": value})).await;
        let ok = value.as_i64().is_some_and(|d| d != 0 && d.unsigned_abs() <= 1_000_000_000_000);
        if ok {
            assert_eq!(status, 200, "delta {value}: {answer}");
        } else {
            assert_named(&format!("delta {value}"), status, &answer, "delta");
        }
    }
    // Accepted so far: -1 then +1. Taking away more than is left leaves nothing, and +5 gives 5 back.
    let (_, answer) = cluster.post(node, &usage, json!({"delta": -1_000_000_000_000i64})).await;
    assert_eq!((answer["limit"].as_u64(), answer["remaining"].as_u64()), (Some(0), Some(0)), "{answer}");
    let (status, answer) = cluster.post(node, &usage, json!({"delta": 5})).await;
    assert_eq!((status, answer["remaining"].as_u64()), (200, Some(5)), "{answer}");

    // Paging: `limit` is 1 to 1000.
    for value in ["-9223372036854775808", "-1", "0", "9223372036854775807", "18446744073709551615", "1e308", "0.5"] {
        let (status, answer) = cluster.get(node, &format!("/v1/admin/plans?limit={value}")).await;
        assert_named(&format!("limit={value}"), status, &answer, "limit");
    }
    assert_eq!(cluster.get(node, "/v1/admin/plans?limit=1000").await.0, 200);

    // A node id: above 0, any u64 (the address is checked next, and refused here).
    for value in edges() {
        let body = json!({"id": value, "http_addr": "nowhere", "peer_addr": "127.0.0.1:2"});
        let (status, answer) = cluster.post(node, "/v1/admin/cluster/nodes", body).await;
        let field = if within(&value, 1.0, u64::MAX as f64, true) { "http_addr" } else { "id" };
        assert_named(&format!("node id {value}"), status, &answer, field);
    }

    // The check: body_size is any u64 (it is only compared with WAF sizes).
    for value in edges() {
        let check = json!({"api": "edge", "stage": "prod", "method": "GET", "path": "/", "body_size": value});
        let (status, answer) = cluster.post(node, "/v1/check", check).await;
        if within(&value, 0.0, u64::MAX as f64, true) {
            assert_eq!(status, 200, "body_size {value}: {answer}");
            assert_eq!(answer["reason"], "allowed", "{answer}");
        } else {
            assert_named(&format!("body_size {value}"), status, &answer, "body_size");
        }
    }

    // Nothing refused was stored, on any node; every node still serves.
    for (collection, fixtures) in [("apis", 1), ("plans", 1), ("keys", 1), ("authorizers", 0)] {
        let expected = fixtures + created.get(collection).copied().unwrap_or(0);
        for n in [1, 2, 3] {
            harness::wait_until(&format!("{collection} on node {n}"), || async {
                cluster.list_all(n, collection, true).await.len() == expected
            })
            .await;
        }
    }
}

/// JWK members are base64url without padding (RFC 7518 §6): the 43-character
/// form of a 32-byte HMAC key is accepted; key material that could never
/// verify a token is a 400 naming the member when the authorizer is written.
#[tokio::test(flavor = "multi_thread")]
async fn jwk_members_are_base64url_and_bad_key_material_is_refused_when_written() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let authorizer = |algorithm: &str, jwk: Value| {
        json!({"name": "j", "kind": {"jwt": {"issuer": "https://issuer.example", "audiences": ["a"],
            "algorithms": [algorithm], "jwks": [jwk]}}})
    };
    // 32 bytes whose base64url form has '-' and '_' and no padding.
    let k = "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_s";
    assert_eq!(k.len(), 43);
    let (status, answer) =
        cluster.post(1, "/v1/admin/authorizers", authorizer("HS256", json!({"kty": "oct", "k": k}))).await;
    assert_eq!(status, 201, "{answer}");
    let cases = [
        ("HS256", json!({"kty": "oct", "k": "c2VjcmV0"}), "kind.jwt.jwks[0].k"),
        ("HS256", json!({"kty": "oct", "k": "not base64!"}), "kind.jwt.jwks[0].k"),
        ("HS512", json!({"kty": "oct", "k": k}), "kind.jwt.jwks[0].k"),
        ("RS256", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}), "kind.jwt.jwks[0].n"),
        ("RS256", json!({"kty": "RSA", "e": "AQAB"}), "kind.jwt.jwks[0].n"),
        ("ES256", json!({"kty": "EC", "crv": "P-256", "x": k, "y": k}), "kind.jwt.jwks[0].x"),
        ("ES256", json!({"kty": "EC", "crv": "P-999", "x": k, "y": k}), "kind.jwt.jwks[0].crv"),
        ("EdDSA", json!({"kty": "OKP", "crv": "Ed25519", "x": "AQAB"}), "kind.jwt.jwks[0].x"),
    ];
    for (algorithm, jwk, field) in cases {
        let (status, answer) = cluster.post(1, "/v1/admin/authorizers", authorizer(algorithm, jwk.clone())).await;
        assert_named(&format!("{algorithm} {jwk}"), status, &answer, field);
    }
    assert_eq!(cluster.list_all(1, "authorizers", false).await.len(), 1, "only the good key was stored");
}

/// An API whose key source is the authorizer needs, on every route that
/// requires a key, an HTTP authorizer to supply it.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_source_from_the_authorizer_needs_an_http_authorizer_on_keyed_routes() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let jwt = json!({"id": "jwt", "name": "j", "kind": {"jwt": {"issuer": "https://issuer.example",
        "audiences": ["a"], "algorithms": ["RS256"], "jwks_url": "https://issuer.example/jwks.json"}}});
    let http = json!({"id": "lambda", "name": "h", "kind": {"http": {"url": "https://auth.example/authorize",
        "identity_sources": ["header:authorization"]}}});
    for body in [jwt, http] {
        assert_eq!(cluster.post(1, "/v1/admin/authorizers", body).await.0, 201);
    }
    let api = |authorizer: Option<&str>| {
        json!({"name": "a", "key_source": {"from": "authorizer"}, "stages": [{"name": "prod"}],
            "routes": [{"method": "GET", "path": "/", "api_key_required": true, "authorizer_id": authorizer}]})
    };
    let (status, answer) = cluster.post(1, "/v1/admin/apis", api(None)).await;
    assert_named("no authorizer", status, &answer, "routes[0].authorizer_id");
    let (status, answer) = cluster.post(1, "/v1/admin/apis", api(Some("jwt"))).await;
    assert_named("a JWT authorizer", status, &answer, "routes[0].authorizer_id");
    let (status, answer) = cluster.post(1, "/v1/admin/apis", api(Some("lambda"))).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["key_source"]["from"], "authorizer", "{answer}");
    let (status, answer) =
        cluster.post(1, "/v1/admin/apis", json!({"name": "b", "key_source": {"from": "cookie"}})).await;
    assert_named("unknown source", status, &answer, "key_source.from");
}

/// `tollgate keys import` on a three-node cluster, through a follower: a CSV
/// file of 2,500 keys in three batches, each secret written once to a new
/// file and passing a check; a file with a bad line stops at that batch,
/// names the line, exits non-zero and creates nothing of that batch.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_imports_keys_from_a_file_in_batches_and_names_a_bad_line() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    for (path, body) in [
        (
            "/v1/admin/apis",
            json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
            "routes": [{"method": "GET", "path": "/pets"}]}),
        ),
        ("/v1/admin/plans", json!({"id": "gold", "name": "Gold", "api_stages": [{"api_id": "pets", "stage": "prod"}]})),
    ] {
        let (status, body) = cluster.post(leader, path, body).await;
        assert_eq!(status, 201, "{body}");
    }
    let dir = tempfile::tempdir().expect("dir");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--url", &cluster.url(follower), "--token", harness::TOKEN, "keys", "import"])
            .args(args)
            .output()
            .expect("tollgate keys import")
    };
    let mut csv = String::from("name,plan_ids,tags\n");
    for i in 0..2_500 {
        csv.push_str(&format!("customer {i},gold,tier={}\n", i % 3));
    }
    let file = dir.path().join("keys.csv");
    std::fs::write(&file, &csv).expect("write");
    let secrets = dir.path().join("secrets.jsonl");
    let out = cli(&[file.to_str().unwrap_or_default(), "--secrets-out", secrets.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Vec<Value> = std::fs::read_to_string(&secrets)
        .expect("secrets")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(written.len(), 2_500);
    assert_eq!((written[0]["line"].as_u64(), written[2_499]["line"].as_u64()), (Some(2), Some(2_501)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secrets).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the secrets file is its owner's only");
    }
    // A secrets file is never overwritten.
    let again = cli(&[file.to_str().unwrap_or_default(), "--secrets-out", secrets.to_str().unwrap_or_default()]);
    assert!(!again.status.success());
    let all = cluster.admin(leader).list_all("keys", false).await.expect("keys");
    assert_eq!(all.len(), 2_500, "the refused run created nothing");
    for w in [&written[0], &written[1_700]] {
        let check = json!({"api": "pets", "stage": "prod", "method": "GET", "path": "/pets",
            "headers": {"x-api-key": w["secret"]}});
        let (status, decision) = cluster.post(follower, "/v1/check", check).await;
        assert_eq!((status, decision["allowed"].as_bool()), (200, Some(true)), "{decision}");
    }
    // JSON lines with a bad plan on line 4 (the second batch of two): the
    // first batch is created, the error names line 4, the exit is non-zero.
    let jsonl = "{\"name\": \"a\", \"plan_ids\": [\"gold\"]}\n{\"name\": \"b\"}\n\n{\"name\": \"c\", \"plan_ids\": [\"nope\"]}\n{\"name\": \"d\"}\n";
    let bad = dir.path().join("keys.jsonl");
    std::fs::write(&bad, jsonl).expect("write");
    let out = cli(&[bad.to_str().unwrap_or_default(), "--batch", "2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4: plan_ids") && stderr.contains("2 keys were created"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2, "the first batch's secrets, once");
    let all = cluster.admin(leader).list_all("keys", false).await.expect("keys");
    assert_eq!(all.len(), 2_502);
}

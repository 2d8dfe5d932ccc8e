//! The check endpoints on a real node: malformed requests, key reroll end to
//! end, and requests spelled to walk around routes and network rules.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{self, Cluster};

async fn setup(cluster: &Cluster) -> (String, String) {
    let api = json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": true}]});
    assert_eq!(cluster.post(1, "/v1/admin/apis", api).await.0, 201);
    let plan = json!({"id": "gold", "name": "Gold", "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    assert_eq!(cluster.post(1, "/v1/admin/plans", plan).await.0, 201);
    let (_, key) = cluster.post(1, "/v1/admin/keys", json!({"name": "alice", "plan_ids": ["gold"]})).await;
    (key["id"].as_str().unwrap_or_default().to_string(), key["secret"].as_str().unwrap_or_default().to_string())
}

async fn check_with_key(cluster: &Cluster, key: &str) -> Value {
    let req = json!({"api": "pets", "stage": "prod", "method": "GET", "path": "/pets/1",
        "source_ip": "192.0.2.7", "headers": {"x-api-key": key, "x-request-id": "req-42"}});
    let (status, decision) = cluster.post(1, "/v1/check", req).await;
    assert_eq!(status, 200, "{decision}");
    decision
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_check_requests_get_a_4xx_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    setup(&cluster).await;
    let url = format!("{}/v1/check", cluster.url(1));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("wrong types", br#"{"api": 1, "stage": [], "method": {}, "path": null}"#.to_vec()),
        (
            "invalid IP",
            br#"{"api":"pets","stage":"prod","method":"GET","path":"/pets/1","source_ip":"999.1.1.1"}"#.to_vec(),
        ),
        ("bad method", br#"{"api":"pets","stage":"prod","method":"get","path":"/pets/1"}"#.to_vec()),
        ("non-UTF-8", b"{\"api\":\"pe\xfftz\",\"stage\":\"prod\",\"method\":\"GET\",\"path\":\"/\"}".to_vec()),
        (
            "header over 16 KiB",
            format!(
                r#"{{"api":"pets","stage":"prod","method":"GET","path":"/","headers":{{"x":"{}"}}}}"#,
                "a".repeat(20_000)
            )
            .into_bytes(),
        ),
        ("empty", Vec::new()),
    ];
    for (what, body) in bodies {
        let resp = cluster.http.post(&url).body(body).send().await.expect("request");
        let status = resp.status().as_u16();
        assert!((400..500).contains(&status), "{what}: got {status}");
    }
    assert_eq!(harness::post_announcing(cluster.node(1).http_port, "/v1/check", 2 << 20).await, 413, "body over 1 MiB");
    // Forward-auth with a non-UTF-8 header value (legal obs-text): decided,
    // not refused (nginx would turn a 400 from its auth request into a 500).
    let resp = cluster
        .http
        .get(format!("{}/v1/forward-auth/pets/prod?mode=traefik", cluster.url(1)))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/pets/1")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-api-key", reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").expect("header"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 403, "decided (an unknown key), not refused");
    assert_eq!(resp.headers().get("x-tollgate-reason").and_then(|v| v.to_str().ok()), Some("unknown_key"));
    assert_eq!(
        cluster.http.get(format!("{}/healthz", cluster.url(1))).send().await.map(|r| r.status().as_u16()).ok(),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerolled_key_keeps_its_old_secret_for_the_overlap_window_only() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let (id, old) = setup(&cluster).await;
    let decision = check_with_key(&cluster, &old).await;
    assert_eq!(decision["reason"], "allowed", "{decision}");
    assert!(decision["response_headers"].to_string().contains("req-42"), "X-Request-Id is echoed: {decision}");

    let (status, rerolled) = cluster
        .call(1, Method::POST, &format!("/v1/admin/keys/{id}/reroll"), Some(json!({"overlap_secs": 3600})))
        .await;
    assert_eq!(status, 200, "{rerolled}");
    let new = rerolled["secret"].as_str().expect("new secret").to_string();
    assert_ne!(new, old);
    assert_eq!(check_with_key(&cluster, &new).await["reason"], "allowed");
    assert_eq!(check_with_key(&cluster, &old).await["reason"], "allowed", "old secret inside the overlap window");

    // A reroll without overlap ends the old secret at once.
    let (status, again) = cluster.call(1, Method::POST, &format!("/v1/admin/keys/{id}/reroll"), None).await;
    assert_eq!(status, 200, "{again}");
    let newest = again["secret"].as_str().expect("secret").to_string();
    assert_eq!(check_with_key(&cluster, &new).await["reason"], "unknown_key");
    assert_eq!(check_with_key(&cluster, &old).await["reason"], "unknown_key");
    assert_eq!(check_with_key(&cluster, &newest).await["reason"], "allowed");

    let (status, err) = cluster
        .call(1, Method::POST, &format!("/v1/admin/keys/{id}/reroll"), Some(json!({"overlap_secs": 99999999})))
        .await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("overlap_secs")));
    assert_eq!(cluster.call(1, Method::POST, "/v1/admin/keys/nope/reroll", None).await.0, 404);
}

/// `POST /v1/check` on `node`: a GET of `path` on `api`/prod from `source_ip`, without a key.
async fn check_anonymous(cluster: &Cluster, node: u64, api: &str, path: &str, source_ip: &str) -> (u16, Value) {
    let req = json!({"api": api, "stage": "prod", "method": "GET", "path": path, "source_ip": source_ip});
    cluster.post(node, "/v1/check", req).await
}

/// Issue 11 §2: each node decides on the canonical path and address, so the
/// spellings that used to pass a keyed route, an IP set and a network Deny
/// get the decision of their canonical form, and what has no safe form is a
/// 400 naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn spellings_that_walked_around_routes_and_networks_get_the_canonical_decision() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let site = json!({"id": "site", "name": "Site", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/public/*"},
                   {"method": "GET", "path": "/admin/*", "api_key_required": true}]});
    let edge = json!({"id": "edge", "name": "Edge", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/public/*"}],
        "waf": [{"name": "bad-net", "condition": {"ip_set": ["198.51.100.0/24"]}}]});
    let deny = json!({"id": "site-edge", "name": "site-edge", "api_id": "site", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"]},
        {"effect": "Deny", "principals": ["*"], "actions": ["*"], "resources": ["*"],
         "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["198.51.100.0/24"]}]}]});
    for (path, body) in [("/v1/admin/apis", site), ("/v1/admin/apis", edge), ("/v1/admin/policies", deny)] {
        let (status, answer) = cluster.post(leader, path, body).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }
    for node in [1, 2, 3] {
        harness::wait_until("the APIs and the policy reached every node", || async {
            cluster.get(node, "/v1/admin/apis/edge?stale=true").await.0 == 200
                && cluster.get(node, "/v1/admin/policies/site-edge?stale=true").await.0 == 200
        })
        .await;
    }
    for node in [1, 2, 3] {
        let (status, d) = check_anonymous(&cluster, node, "site", "/public/x", "192.0.2.7").await;
        assert_eq!((status, d["reason"].as_str()), (200, Some("allowed")), "node {node}: {d}");
        // The keyed route, reached through the open one: denied as /admin/users is.
        for path in
            ["/admin/users", "/public/../admin/users", "/public/%2e%2e/admin/users", "/public/%2E%2E/admin/users"]
        {
            let (status, d) = check_anonymous(&cluster, node, "site", path, "192.0.2.7").await;
            assert_eq!(status, 200, "node {node} {path}: {d}");
            assert_eq!(
                (d["allowed"].as_bool(), d["status"].as_u64(), d["reason"].as_str()),
                (Some(false), Some(403), Some("missing_key")),
                "node {node} {path}: {d}"
            );
        }
        // An IPv4 client in its IPv4-mapped IPv6 spelling meets the rules on its network.
        for ip in ["198.51.100.7", "::ffff:198.51.100.7"] {
            let (_, d) = check_anonymous(&cluster, node, "edge", "/public/x", ip).await;
            assert_eq!((d["status"].as_u64(), d["reason"].as_str()), (Some(403), Some("waf_blocked")), "{ip}: {d}");
            let (_, d) = check_anonymous(&cluster, node, "site", "/public/x", ip).await;
            assert_eq!(
                (d["status"].as_u64(), d["reason"].as_str()),
                (Some(403), Some("resource_policy_denied")),
                "{ip}: {d}"
            );
        }
        // No safe form: refused, naming the field.
        for (path, ip, field) in [
            ("/admin%2fusers", "192.0.2.7", "path"),
            ("/public/../../admin/users", "192.0.2.7", "path"),
            ("/admin\\users", "192.0.2.7", "path"),
            ("/public/x", "fe80::1%eth0", "source_ip"),
        ] {
            let (status, err) = check_anonymous(&cluster, node, "site", path, ip).await;
            assert_eq!(
                (status, err["error"]["code"].as_str(), err["error"]["field"].as_str()),
                (400, Some("invalid_field"), Some(field)),
                "node {node} {path} {ip}: {err}"
            );
        }
    }
}

/// Envoy's ext_authz sends the original path after the forward-auth prefix:
/// it is decided on as sent, not after a first decoding, so `..%2F` (one
/// segment to the backend) cannot become a dot segment, nor `%252e` a dot.
#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_for_envoy_canonicalises_the_path_as_envoy_sent_it() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let site = json!({"id": "site", "name": "Site", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/public/*"},
                   {"method": "GET", "path": "/admin/*", "api_key_required": true}]});
    assert_eq!(cluster.post(1, "/v1/admin/apis", site).await.0, 201);
    let envoy = |path: &str| {
        cluster
            .http
            .get(format!("{}/v1/forward-auth/site/prod{path}", cluster.url(1)))
            .header("x-forwarded-for", "192.0.2.7")
            .send()
    };
    let reason =
        |r: &reqwest::Response| r.headers().get("x-tollgate-reason").and_then(|v| v.to_str().ok()).map(str::to_string);
    let cases = [
        ("/public/x", 200, Some("allowed")),
        ("/public/../admin/users", 403, Some("missing_key")),
        ("/%61dmin/users", 403, Some("missing_key")),
        ("/admin/..%2Fpublic/x", 400, None),
        ("/public/%252e%252e/admin/users", 400, None),
    ];
    for (path, status, expected) in cases {
        let resp = envoy(path).await.expect("request");
        assert_eq!((resp.status().as_u16(), reason(&resp).as_deref()), (status, expected), "{path}");
    }
}

/// Verifies an identity token against a node's published keys.
async fn verify_identity(cluster: &Cluster, node: u64, token: &str) -> Result<Value, String> {
    let jwks: jsonwebtoken::jwk::JwkSet = cluster
        .http
        .get(format!("{}/.well-known/jwks.json", cluster.url(node)))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let kid = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?.kid.unwrap_or_default();
    let jwk = jwks.find(&kid).ok_or(format!("kid {kid} is not published"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&["tollgate"]);
    validation.set_audience(&["pets"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
}

fn identity_of(decision: &Value) -> String {
    decision["upstream_headers"]
        .as_array()
        .and_then(|h| h.iter().find(|p| p[0] == "x-tollgate-identity"))
        .and_then(|p| p[1].as_str())
        .unwrap_or_else(|| panic!("no identity in {decision}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_tokens_verify_on_every_node_and_survive_a_key_rotation() {
    let cluster = Cluster::start(3).await;
    cluster.leader().await;
    let (key_id, secret) = setup(&cluster).await;
    let before = identity_of(&check_with_key(&cluster, &secret).await);
    for node in [1, 2, 3] {
        harness::wait_until("the key reached every node", || async {
            cluster.get(node, &format!("/v1/admin/keys/{key_id}?stale=true")).await.0 == 200
        })
        .await;
    }
    // Issued by node 1, verified with the keys any node publishes.
    for node in [1, 2, 3] {
        let claims = verify_identity(&cluster, node, &before).await.unwrap_or_else(|e| panic!("node {node}: {e}"));
        assert_eq!(claims["key_id"], key_id);
        assert_eq!(claims["plan_id"], "gold");
    }
    assert!(verify_identity(&cluster, 1, &format!("{before}x")).await.is_err(), "a tampered token fails");

    let (status, rotated) = cluster.call(2, Method::POST, "/v1/admin/identity-key/rotate", None).await;
    assert_eq!((status, rotated["kid"].as_str()), (200, Some("tollgate-2")), "{rotated}");
    let after = identity_of(&check_with_key(&cluster, &secret).await);
    assert_eq!(jsonwebtoken::decode_header(&after).ok().and_then(|h| h.kid).as_deref(), Some("tollgate-2"));
    // Node 3 may not have applied the rotation yet: its keys verify the new token anyway.
    assert!(verify_identity(&cluster, 3, &after).await.is_ok(), "the next key is published ahead");
    assert!(verify_identity(&cluster, 3, &before).await.is_ok(), "the previous key is still published");
}

/// One forward-auth request: the route's tail (after `/v1/forward-auth/pets/prod`),
/// the method it is sent with, and its headers.
struct Asked {
    tail: &'static str,
    method: Method,
    headers: Vec<(&'static str, String)>,
}

fn asked(tail: &'static str, method: Method, headers: &[(&'static str, &str)]) -> Asked {
    Asked { tail, method, headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect() }
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_reads_each_fact_from_the_one_header_its_proxy_sets() {
    let options =
        harness::Options { extra_args: vec!["--trusted-proxies".into(), "10.0.0.0/8".into()], ..Default::default() };
    let cluster = Cluster::start_with(1, options).await;
    cluster.leader().await;
    let (key_id, secret) = setup(&cluster).await;
    let admin = json!({"id": "vault", "name": "Vault", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/public/*"}, {"method": "*", "path": "/admin/*", "api_key_required": true},
                   {"method": "POST", "path": "/forms/*"}],
        "cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "DELETE"]},
        "waf": [{"name": "sqli", "action": "block", "condition": {"query_matches": "(?i)union"}},
                {"name": "evil", "action": "block", "condition": {"header_matches": {"name": "x-evil", "regex": "bad"}}}]});
    assert_eq!(cluster.post(1, "/v1/admin/apis", admin).await.0, 201);
    let plan = json!({"id": "vault-plan", "name": "V", "api_stages": [{"api_id": "vault", "stage": "prod"}]});
    assert_eq!(cluster.post(1, "/v1/admin/plans", plan).await.0, 201);
    // Only 203.0.113.0/24 gets in at all; 198.51.100.66 is denied outright.
    let policy = json!({"name": "net", "api_id": "vault", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"],
         "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["203.0.113.0/24"]}]}]});
    assert_eq!(cluster.post(1, "/v1/admin/policies", policy).await.0, 201);
    let deny_one = json!({"name": "block", "api_id": "pets", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"]},
        {"effect": "Deny", "principals": ["*"], "actions": ["invoke"], "resources": ["*"],
         "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["198.51.100.66"]}]}]});
    assert_eq!(cluster.post(1, "/v1/admin/policies", deny_one).await.0, 201);
    let base = cluster.url(1);
    let ask = |api: &str, mode: &str, a: &Asked| {
        let mut req =
            cluster.http.request(a.method.clone(), format!("{base}/v1/forward-auth/{api}/prod{}{mode}", a.tail));
        for (n, v) in &a.headers {
            req = req.header(*n, v);
        }
        req.send()
    };
    let outcome = |r: reqwest::Response| {
        let reason = r.headers().get("x-tollgate-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (r.status().as_u16(), reason)
    };
    let good = "203.0.113.9";
    let m = Method::GET;

    // Each proxy's own headers, as it sends them: decided on those alone.
    let mut cases: Vec<(&str, &str, Asked, u16, &str)> = vec![
        // Traefik and Caddy: X-Forwarded-Method/-Uri, the client from the right of X-Forwarded-For.
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x?a=1"), ("x-forwarded-for", good)],
            ),
            200,
            "allowed",
        ),
        (
            "vault",
            "?mode=caddy",
            asked(
                "",
                m.clone(),
                &[("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/admin/users"), ("x-forwarded-for", good)],
            ),
            403,
            "missing_key",
        ),
        // A trusted proxy (10.0.0.0/8) is skipped; the entry left of it is the client.
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "203.0.113.9, 10.1.2.3"),
                ],
            ),
            200,
            "allowed",
        ),
        // The issue's forgery: the client wrote the left entry, the proxy appended the right one.
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "203.0.113.9, 198.51.100.7"),
                ],
            ),
            403,
            "resource_policy_denied",
        ),
        // All X-Forwarded-For lines are one list.
        (
            "vault",
            "?mode=caddy",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
            ),
            403,
            "resource_policy_denied",
        ),
        // X-Real-IP and Forwarded are not read in X-Forwarded-For mode.
        (
            "vault",
            "?mode=caddy",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-real-ip", good),
                    ("forwarded", "for=203.0.113.9"),
                ],
            ),
            403,
            "resource_policy_denied",
        ),
        // ...unless the operator's URL names Forwarded as the source.
        (
            "vault",
            "?mode=caddy&address=forwarded",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "198.51.100.7"),
                    ("forwarded", "for=203.0.113.9"),
                ],
            ),
            200,
            "allowed",
        ),
        // nginx: X-Original-Method/-URI.
        (
            "vault",
            "?mode=nginx",
            asked(
                "",
                m.clone(),
                &[("x-original-method", "GET"), ("x-original-uri", "/public/x"), ("x-forwarded-for", good)],
            ),
            200,
            "allowed",
        ),
        // The issue's nginx forgery: client-sent X-Forwarded-* next to nginx's own: refused (nginx sees 403, status 400).
        (
            "vault",
            "?mode=nginx",
            asked(
                "",
                m.clone(),
                &[
                    ("x-original-method", "DELETE"),
                    ("x-original-uri", "/admin/users"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-for", good),
                ],
            ),
            403,
            "invalid_request",
        ),
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "DELETE"),
                    ("x-forwarded-uri", "/admin/users"),
                    ("x-original-uri", "/public/x"),
                    ("x-forwarded-for", good),
                ],
            ),
            400,
            "",
        ),
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "DELETE"),
                    ("x-forwarded-uri", "/admin/users"),
                    ("x-original-url", "/public/x"),
                    ("x-forwarded-for", good),
                ],
            ),
            400,
            "",
        ),
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/admin/users"),
                    ("x-http-method-override", "DELETE"),
                    ("x-forwarded-for", good),
                ],
            ),
            400,
            "",
        ),
        // Two lines of a single fact: which one the proxy meant is unknown.
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-uri", "/admin/users"),
                    ("x-forwarded-for", good),
                ],
            ),
            400,
            "",
        ),
        // A missing fact, a missing or unknown mode, a bad chain: 400, never a guess.
        (
            "vault",
            "?mode=traefik",
            asked("", m.clone(), &[("x-forwarded-uri", "/public/x"), ("x-forwarded-for", good)]),
            400,
            "",
        ),
        (
            "vault",
            "?mode=traefik",
            asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x")]),
            400,
            "",
        ),
        (
            "vault",
            "",
            asked(
                "",
                m.clone(),
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x"), ("x-forwarded-for", good)],
            ),
            400,
            "",
        ),
        (
            "vault",
            "?mode=haproxy",
            asked(
                "",
                m.clone(),
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x"), ("x-forwarded-for", good)],
            ),
            400,
            "",
        ),
        (
            "vault",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-for", "203.0.113.9, evil"),
                ],
            ),
            400,
            "",
        ),
        // Envoy: this request's method and the path after the prefix.
        ("vault", "", asked("/public/x", m.clone(), &[("x-forwarded-for", good)]), 200, "allowed"),
        ("vault", "", asked("/admin/users", Method::DELETE, &[("x-forwarded-for", good)]), 403, "missing_key"),
        // The query after the prefix is the client's: `mode` there changes nothing.
        (
            "vault",
            "",
            asked(
                "/admin/users?mode=nginx",
                Method::DELETE,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/admin/users?mode=nginx"),
                    ("x-forwarded-for", good),
                ],
            ),
            400,
            "",
        ),
        (
            "vault",
            "",
            asked("/admin/users?mode=traefik", Method::DELETE, &[("x-forwarded-for", good)]),
            403,
            "missing_key",
        ),
        (
            "vault",
            "",
            asked("/public/x", m.clone(), &[("x-forwarded-for", good), ("x-envoy-external-address", "198.51.100.1")]),
            200,
            "allowed",
        ),
        (
            "vault",
            "",
            asked("/public/x", m.clone(), &[("x-forwarded-for", "198.51.100.1"), ("x-envoy-external-address", good)]),
            403,
            "resource_policy_denied",
        ),
        // The key and the identity on an allowed request.
        (
            "pets",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/pets/1?color=red"),
                    ("x-forwarded-for", "198.51.100.7, 10.0.0.1"),
                    ("x-api-key", &secret),
                ],
            ),
            200,
            "allowed",
        ),
        (
            "pets",
            "?mode=traefik",
            asked(
                "",
                m.clone(),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/pets/1"),
                    ("x-forwarded-for", "198.51.100.66, 10.0.0.1"),
                    ("x-api-key", &secret),
                ],
            ),
            403,
            "resource_policy_denied",
        ),
        (
            "pets",
            "",
            asked("/pets/1", Method::DELETE, &[("x-forwarded-for", good), ("x-api-key", &secret)]),
            404,
            "no_route",
        ),
    ];
    #[rustfmt::skip]
    cases.extend([
        // `//` with `..`: merged-first and RFC 3986 resolution disagree: refused.
        ("vault", "?mode=caddy", asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/admin//../public/x"), ("x-forwarded-for", good)]), 400, ""),
        // Envoy asking about `/` gets a decision, not the router's 404.
        ("vault", "", asked("/", m.clone(), &[("x-forwarded-for", good)]), 404, "no_route"),
        // A value given twice is seen whole: either spelling of a rule's match is caught.
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x?q=union&q=safe"), ("x-forwarded-for", good)]), 403, "waf_blocked"),
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x?q=safe&q=%75nion"), ("x-forwarded-for", good)]), 403, "waf_blocked"),
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x"), ("x-forwarded-for", good), ("x-evil", "bad"), ("x-evil", "ok")]), 403, "waf_blocked"),
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/x"), ("x-forwarded-for", good), ("x-evil", "ok"), ("x-evil", "bad")]), 403, "waf_blocked"),
        // A method override in the query (Laravel, Symfony, express) must name the method.
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "POST"), ("x-forwarded-uri", "/forms/1?_method=DELETE"), ("x-forwarded-for", good)]), 400, ""),
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "POST"), ("x-forwarded-uri", "/forms/1?_method=post"), ("x-forwarded-for", good)]), 200, "allowed"),
        // A CORS preflight is never a 2xx outside nginx mode: Caddy, Traefik
        // and Envoy would pass it on to the upstream unchecked.
        ("vault", "?mode=traefik", asked("", m.clone(), &[("x-forwarded-method", "OPTIONS"), ("x-forwarded-uri", "/admin/users"), ("x-forwarded-for", good), ("origin", "https://app.example"), ("access-control-request-method", "DELETE")]), 403, "cors_preflight"),
        ("vault", "", asked("/admin/users", Method::OPTIONS, &[("x-forwarded-for", good), ("origin", "https://app.example"), ("access-control-request-method", "DELETE")]), 403, "cors_preflight"),
        // nginx answers the preflight itself, from X-Tollgate-Status.
        ("vault", "?mode=nginx", asked("", m.clone(), &[("x-original-method", "OPTIONS"), ("x-original-uri", "/admin/users"), ("x-forwarded-for", good), ("origin", "https://app.example"), ("access-control-request-method", "DELETE")]), 403, "cors_preflight"),
    ]);
    for (api, mode, a, status, reason) in &cases {
        let got = outcome(ask(api, mode, a).await.expect("request"));
        let want = (*status, reason.to_string());
        let shown = (got.0, if reason.is_empty() { String::new() } else { got.1.clone() });
        assert_eq!(shown, want, "{api}{mode} {} {} {:?}", a.method, a.tail, a.headers);
    }
    // Up to the check's own limit of header lines, forward-auth decides
    // (hyper alone would answer 431 past 100); past it, a 400 names them.
    for (count, status) in [(240, 200), (300, 400)] {
        let mut req = cluster
            .http
            .get(format!("{base}/v1/forward-auth/vault/prod?mode=traefik"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/public/x")
            .header("x-forwarded-for", good);
        for i in 0..count {
            req = req.header(format!("x-h{i}"), "v");
        }
        assert_eq!(req.send().await.expect("request").status().as_u16(), status, "{count} headers");
    }
    // POST /v1/check: a misspelt field is refused, not ignored; without the
    // client address an API whose rules need it is refused, not decided.
    let check = |body: Value| {
        let cluster = &cluster;
        async move { cluster.post(1, "/v1/check", body).await }
    };
    let (status, answer) =
        check(json!({"api": "vault", "stage": "prod", "method": "GET", "path": "/public/x", "sourceIp": good})).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = check(json!({"api": "vault", "stage": "prod", "method": "GET", "path": "/public/x"})).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("source_ip")), "{answer}");
    let (status, answer) =
        check(json!({"api": "vault", "stage": "prod", "method": "GET", "path": "/public/x", "source_ip": good})).await;
    assert_eq!((status, answer["reason"].as_str()), (200, Some("allowed")), "{answer}");
    // A name given twice in `query` or `headers` (or in two cases) is seen
    // whole, never last-wins: raw JSON, as serde_json::json! cannot repeat a key.
    for body in [
        r#"{"api":"vault","stage":"prod","method":"GET","path":"/public/x","source_ip":"203.0.113.9","query":{"q":"union","q":"safe"}}"#,
        r#"{"api":"vault","stage":"prod","method":"GET","path":"/public/x","source_ip":"203.0.113.9","headers":{"x-evil":"bad","x-evil":"ok"}}"#,
        r#"{"api":"vault","stage":"prod","method":"GET","path":"/public/x","source_ip":"203.0.113.9","headers":{"X-Evil":"bad","x-evil":"ok"}}"#,
    ] {
        let resp = cluster.http.post(format!("{base}/v1/check")).body(body).send().await.expect("request");
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(answer["reason"], "waf_blocked", "{body}: {answer}");
    }
    let body = r#"{"api":"vault","stage":"prod","method":"POST","path":"/forms/1","source_ip":"203.0.113.9","query":{"_method":"POST","_method":"DELETE"}}"#;
    let resp = cluster.http.post(format!("{base}/v1/check")).body(body).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 400, "a second _method is not hidden");

    // An allowed request carries the principal and identity for the proxy to copy.
    let ok = ask("pets", "?mode=traefik", &cases[24].2).await.expect("request");
    let header = |n: &str| ok.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("x-tollgate-principal"), Some(format!("key:{key_id}")));
    assert_eq!(header("x-tollgate-key-id"), Some(key_id.clone()));
    assert!(header("x-tollgate-identity").is_some());
    assert!(
        header("x-tollgate-customer-id").is_some(),
        "present (empty without a customer): no proxy passes a client's"
    );
}

/// Every query of the Grafana dashboard in `deploy/grafana/` names metrics
/// and labels a node really exports, once each kind of traffic has run:
/// checks (keys, quota and throttle, an HTTP authorizer, a WAF count rule)
/// and admin writes forwarded from a follower.
#[tokio::test(flavor = "multi_thread")]
async fn the_grafana_dashboard_queries_only_metrics_the_nodes_export() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");

    let authorizer = axum::Router::new()
        .route("/authorize", axum::routing::post(|| async { axum::Json(json!({"allow": true, "principal_id": "u"})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, authorizer).await });

    // Written through the follower, so some are forwarded to the leader.
    let objects = [
        (
            "/v1/admin/authorizers",
            json!({"id": "lambda", "name": "lambda", "kind": {"http": {"url": url,
            "identity_sources": ["header:authorization"], "cache_ttl_secs": 60, "timeout_ms": 2000}}}),
        ),
        (
            "/v1/admin/apis",
            json!({"id": "dash", "name": "Dash", "stages": [{"name": "prod"}],
            "routes": [{"method": "GET", "path": "/keyed/*", "api_key_required": true},
                       {"method": "GET", "path": "/authz/*", "authorizer_id": "lambda"}],
            "waf": [{"name": "count-debug", "action": "count", "condition": {"query_matches": "debug=1"}}]}),
        ),
        (
            "/v1/admin/plans",
            json!({"id": "metered", "name": "Metered", "throttle": {"rate_per_sec": 100, "burst": 100},
            "quota": {"limit": 1000, "period": "day"}, "api_stages": [{"api_id": "dash", "stage": "prod"}]}),
        ),
    ];
    for (path, body) in objects {
        let (status, answer) = cluster.post(follower, path, body).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }
    let (_, key) = cluster.post(follower, "/v1/admin/keys", json!({"name": "k", "plan_ids": ["metered"]})).await;
    let secret = key["secret"].as_str().unwrap_or_default().to_string();
    harness::wait_until("the model on the leader", || async {
        cluster.get(leader, "/v1/admin/keys?stale=true").await.1["items"].as_array().is_some_and(|k| k.len() == 1)
    })
    .await;
    let check = |path: &str, headers: Value| {
        json!({"api": "dash", "stage": "prod", "method": "GET", "path": path, "headers": headers,
            "query": {"debug": "1"}})
    };
    for _ in 0..3 {
        let (_, d) = cluster.post(leader, "/v1/check", check("/keyed/1", json!({"x-api-key": secret}))).await;
        assert_eq!(d["reason"], "allowed", "{d}");
        let (_, d) = cluster.post(leader, "/v1/check", check("/authz/1", json!({"authorization": "t"}))).await;
        assert_eq!(d["reason"], "allowed", "{d}");
    }

    let metrics = cluster.http.get(format!("{}/metrics", cluster.url(leader))).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    let samples: Vec<&str> = metrics.lines().filter(|l| l.starts_with("tollgate_")).collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/tollgate.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).expect("dashboard")).expect("dashboard JSON");
    let names = regex::Regex::new(r"tollgate_[a-z_]+").expect("regex");
    let grouped = regex::Regex::new(r"by \(([a-z_, ]+)\)").expect("regex");
    let selected = regex::Regex::new(r"\{([a-z_]+)(!=|=)").expect("regex");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            let metrics_used: Vec<&str> = names.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!metrics_used.is_empty(), "{expr}: no tollgate metric");
            let labels = grouped
                .captures_iter(expr)
                .flat_map(|c| c[1].split(',').map(|l| l.trim().to_string()).collect::<Vec<_>>())
                .chain(selected.captures_iter(expr).map(|c| c[1].to_string()))
                // Added by Prometheus when it scrapes, or part of every bucket.
                .filter(|l| !["instance", "job", "le"].contains(&l.as_str()))
                .collect::<Vec<_>>();
            for metric in metrics_used {
                let lines: Vec<&&str> = samples
                    .iter()
                    .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
                    .collect();
                assert!(!lines.is_empty(), "{expr}: the node exports no {metric}");
                for label in &labels {
                    assert!(
                        lines.iter().any(|l| l.contains(&format!("{label}=\""))),
                        "{expr}: {metric} has no label {label}"
                    );
                }
            }
        }
    }
    assert!(queries >= 15, "the dashboard has its panels");
}

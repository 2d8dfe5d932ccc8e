//! The HTTP listener in-process: its router called with
//! `tower::ServiceExt::oneshot`, no socket, for the rules that need no
//! cluster — who may call the admin API, how a bad body or query is refused,
//! the shape of 404 and 405, the `/metrics` token, the OpenAPI document and
//! the size limit — and the cluster token on the peer routes.
//!
//! The node behind the router is a real one: [`App::open`] on a temp dir,
//! its Raft initialised with itself as the only voter, so it leads at once
//! and admin writes commit locally. No listener, no peer, no second process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{HttpState, Settings, MAX_BODY};
use crate::app::{App, Node};
use crate::cluster::NodeAddr;
use crate::config::{ServeArgs, StorageArgs};

const ADMIN_TOKEN: &str = "tga_in-process-admin-token-0123456789";
const CLUSTER_TOKEN: &str = "in-process-cluster-token";
const METRICS_TOKEN: &str = "in-process-metrics-token";
/// Where test requests come from, unless a test says otherwise.
const SOURCE: ([u8; 4], u16) = ([192, 0, 2, 1], 40_000);

/// A single-node node, leading, and the routers of its HTTP and peer listeners.
struct TestNode {
    http: Router,
    peer: Router,
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

async fn node() -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = StorageArgs { data_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let args = ServeArgs { id: Some(1), storage, ..Default::default() };
    let config = args
        .resolve_with(&|name| match name {
            "TOLLGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
            "TOLLGATE_CLUSTER_TOKEN" => Some(CLUSTER_TOKEN.into()),
            "TOLLGATE_METRICS_TOKEN" => Some(METRICS_TOKEN.into()),
            _ => None,
        })
        .expect("config");
    let addr = NodeAddr { http: "127.0.0.1:1".into(), peer: "127.0.0.1:2".into(), wire: "127.0.0.1:3".into() };
    let Node { app, peer, .. } = App::open(&config, addr.clone(), None, &[]).await.expect("open the node");
    app.raft.initialize(BTreeMap::from([(1, addr)])).await.expect("initialise");
    app.raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leads alone").await.expect("a leader");
    let state = HttpState { app: app.clone(), settings: Arc::new(Settings::of(&config)) };
    TestNode { http: super::router(state), peer: crate::cluster::peer::router(peer), app, _dir: dir }
}

/// What came back: status, headers, and the body as JSON (`Value::String`
/// if it is not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The `{"error": …}` body's code, field and message.
    fn error(&self) -> (&str, Option<&str>, &str) {
        let e = &self.body["error"];
        (e["code"].as_str().unwrap_or("-"), e["field"].as_str(), e["message"].as_str().unwrap_or("-"))
    }
}

async fn call(router: &Router, mut request: Request<Body>) -> Answer {
    if request.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(SOURCE)));
    }
    let response = router.clone().oneshot(request).await.expect("the router answers");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer { status: parts.status, headers: parts.headers, body }
}

fn request(method: Method, uri: &str, authorization: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    if !body.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    builder.body(Body::from(body.to_string())).expect("request")
}

fn admin(method: Method, uri: &str, body: &str) -> Request<Body> {
    request(method, uri, Some(&format!("Bearer {ADMIN_TOKEN}")), body)
}

fn from(source: [u8; 4], mut request: Request<Body>) -> Request<Body> {
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from((source, 50_000))));
    request
}

#[tokio::test]
async fn an_admin_route_without_a_bearer_token_is_401_and_not_counted_as_a_guess() {
    let node = node().await;
    let required = "an admin token is required: Authorization: Bearer <token>";
    for authorization in [None, Some(""), Some("Bearer"), Some("Bearer "), Some("Bearer   "), Some("Basic dXNlcjpw")] {
        // More than the failures a source may make: none of them is one.
        for _ in 0..crate::http::auth_failures::DEFAULT_PER_MINUTE + 1 {
            let answer = call(&node.http, request(Method::GET, "/v1/admin/plans", authorization, "")).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(answer.error(), ("unauthorized", None, required), "{authorization:?}");
            assert_eq!(answer.body["error"]["field"], Value::Null);
            let challenge = answer.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
            assert_eq!(challenge, Some("Bearer"), "RFC 9110 §11.6.1: a 401 says how to authenticate");
        }
    }
}

/// Two `Authorization` headers: which one would count is ambiguous, so
/// neither does, in either order (the first used to win).
#[tokio::test]
async fn two_authorization_headers_are_refused_in_either_order() {
    let node = node().await;
    let good = format!("Bearer {ADMIN_TOKEN}");
    for pair in [[good.as_str(), "Bearer wrong"], ["Bearer wrong", good.as_str()], [good.as_str(), good.as_str()]] {
        let mut req = request(Method::GET, "/v1/admin/plans", None, "");
        for value in pair {
            req.headers_mut().append(header::AUTHORIZATION, value.parse().expect("header"));
        }
        let answer = call(&node.http, req).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{pair:?}");
        assert_eq!(answer.error(), ("unauthorized", None, "send one Authorization header, not several"));
    }
    let mut peer = Request::builder().method(Method::POST).uri(crate::cluster::peer::READ_INDEX);
    for value in [format!("Bearer {CLUSTER_TOKEN}"), "Bearer wrong".to_string()] {
        peer = peer.header(header::AUTHORIZATION, value);
    }
    let empty = tollgate_proto::codec::encode(&()).expect("encode");
    let answer = call(&node.peer, peer.body(Body::from(empty)).expect("request")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "peer routes too");
}

#[tokio::test]
async fn wrong_admin_tokens_are_401_then_the_source_is_slowed_down_with_429() {
    let node = node().await;
    let wrong = Some("Bearer tga_a-guess-that-is-not-a-token-at-all");
    for _ in 0..crate::http::auth_failures::DEFAULT_PER_MINUTE {
        let answer = call(&node.http, request(Method::GET, "/v1/admin/plans", wrong, "")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.error(), ("unauthorized", None, "the admin token is not valid"));
    }
    // Out of failures: refused before the token is looked at, the right one too.
    for authorization in [wrong, Some(&format!("Bearer {ADMIN_TOKEN}"))] {
        let answer = call(&node.http, request(Method::GET, "/v1/admin/plans", authorization, "")).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        let (code, field, message) = answer.error();
        assert_eq!((code, field), ("too_many_failures", None));
        assert!(message.starts_with("too many failed admin authentications from 192.0.2.1; retry in "), "{message}");
        assert_eq!(answer.headers[header::RETRY_AFTER], "6");
    }
    // Another source is not affected.
    let answer = call(&node.http, from([192, 0, 2, 2], admin(Method::GET, "/v1/admin/plans", ""))).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case_with_any_spacing() {
    let node = node().await;
    for scheme in ["Bearer ", "bearer ", "BEARER ", "bEaReR   "] {
        let authorization = format!("{scheme}{ADMIN_TOKEN} ");
        let answer = call(&node.http, request(Method::GET, "/v1/admin/plans", Some(&authorization), "")).await;
        assert_eq!(answer.status, StatusCode::OK, "{authorization:?}: {}", answer.body);
        assert_eq!(answer.body, json!({"items": [], "next_after": null}));
    }
}

#[tokio::test]
async fn a_read_token_may_read_but_not_write() {
    let node = node().await;
    let created =
        call(&node.http, admin(Method::POST, "/v1/admin/tokens", r#"{"name": "dashboards", "scopes": ["read"]}"#))
            .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let reader = format!("Bearer {}", created.body["secret"].as_str().expect("the secret, shown once"));
    let read = call(&node.http, request(Method::GET, "/v1/admin/tokens", Some(&reader), "")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["items"][0]["name"], "dashboards");
    for (method, uri, body) in [
        (Method::POST, "/v1/admin/plans", r#"{"name": "p"}"#),
        (Method::PUT, "/v1/admin/plans/plan_1", r#"{"name": "p"}"#),
        (Method::DELETE, "/v1/admin/tokens/tok_1", ""),
        (Method::POST, "/v1/admin/identity-key/rotate", ""),
        (Method::PATCH, "/v1/admin/plans/plan_1", r#"{"name": "p"}"#),
    ] {
        let answer = call(&node.http, request(method.clone(), uri, Some(&reader), body)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert_eq!(answer.error(), ("forbidden", None, "this admin token may only read"), "{method} {uri}");
    }
    // A method no admin route has is 405 for any token: the scope does not
    // pretend it could be allowed.
    let bootstrap = format!("Bearer {ADMIN_TOKEN}");
    for method in [Method::OPTIONS, Method::TRACE, Method::from_bytes(b"PROPFIND").expect("method")] {
        for token in [&reader, &bootstrap] {
            let answer = call(&node.http, request(method.clone(), "/v1/admin/plans", Some(token), "")).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        }
    }
    let plans = call(&node.http, admin(Method::GET, "/v1/admin/plans", "")).await;
    assert_eq!(plans.body["items"], json!([]), "nothing was written");
    // The bootstrap token writes.
    let plan = call(&node.http, admin(Method::POST, "/v1/admin/plans", r#"{"name": "p"}"#)).await;
    assert_eq!(plan.status, StatusCode::CREATED, "{}", plan.body);
}

#[tokio::test]
async fn a_bad_json_body_is_400_naming_the_field() {
    let node = node().await;
    let cases = [
        ("/v1/admin/plans", "", "body"),
        ("/v1/admin/plans", "  \n", "body"),
        // Cut off inside the object: serde_path_to_error names no field but `?`.
        ("/v1/admin/plans", "{", "?"),
        ("/v1/admin/plans", r#""a plan""#, "body"),
        ("/v1/admin/plans", r#"{"name": "p"} {}"#, "body"),
        (
            "/v1/admin/plans",
            r#"{"name": "p", "throttle": {"rate_per_sec": "fast", "burst": 1}}"#,
            "throttle.rate_per_sec",
        ),
        ("/v1/admin/plans", r#"{"name": "p", "api_stages": [{"api_id": "a", "stage": 5}]}"#, "api_stages[0].stage"),
        ("/v1/admin/tokens", r#"{"name": "t", "scopes": ["root"]}"#, "scopes[0]"),
        ("/v1/admin/keys/key_1/reroll", r#"{"overlap_secs": -1}"#, "overlap_secs"),
        ("/v1/admin/plans/plan_1/usage/key_1", r#"{"delta": "1"}"#, "delta"),
        ("/v1/admin/cluster/nodes", r#"{"id": 2}"#, "body"),
        ("/v1/check", r#"{"api": "a", "stage": "s", "method": "GET", "path": 1}"#, "path"),
    ];
    for (uri, body, field) in cases {
        let answer = call(&node.http, admin(Method::POST, uri, body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri} {body:?}: {}", answer.body);
        let (code, named, message) = answer.error();
        assert_eq!((code, named), ("invalid_field", Some(field)), "{uri} {body:?}: {message}");
    }
    // A whole number may be written with a zero fraction.
    let plan = r#"{"name": "p", "throttle": {"rate_per_sec": 5, "burst": 10.0}}"#;
    assert_eq!(call(&node.http, admin(Method::POST, "/v1/admin/plans", plan)).await.status, StatusCode::CREATED);
    // A reroll's body may be left out: it is the key that is missing here.
    let reroll = call(&node.http, admin(Method::POST, "/v1/admin/keys/key_1/reroll", "")).await;
    assert_eq!(reroll.status, StatusCode::NOT_FOUND, "{}", reroll.body);
}

#[tokio::test]
async fn a_bad_query_or_request_id_is_400_naming_the_parameter() {
    let node = node().await;
    let cases = [
        (Method::GET, "/v1/admin/plans?limit=0", "limit"),
        (Method::GET, "/v1/admin/plans?limit=1001", "limit"),
        (Method::GET, "/v1/admin/keys/key_1?stale=maybe", "stale"),
        (Method::GET, "/v1/admin/identity-key?stale=2", "stale"),
        (Method::GET, "/v1/admin/plans/plan_1/usage?start_date=yesterday", "start_date"),
        (Method::GET, "/v1/admin/plans/plan_1/usage?start_date=2026-01-02&end_date=2026-01-01", "end_date"),
        // A parameter given twice, in any spelling of the second one.
        (Method::GET, "/v1/admin/plans?limit=5&limit=1000", "limit"),
        (Method::GET, "/v1/admin/plans?limit=5&%6cimit=1000", "limit"),
        (Method::GET, "/v1/admin/keys?after=a&stale=true&after=b", "after"),
        (Method::GET, "/v1/admin/plans/plan_1/usage?key_id=a&key_id=b", "key_id"),
        // A parameter the route does not take (a typo is not "not given").
        (Method::GET, "/v1/admin/plans?limt=5", "limt"),
        (Method::GET, "/v1/admin/keys/key_1?stael=true", "stael"),
        (Method::GET, "/v1/admin/plans/plan_1/usage?keyid=a", "keyid"),
    ];
    for (method, uri, field) in cases {
        let answer = call(&node.http, admin(method, uri, "")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}: {}", answer.body);
        assert_eq!((answer.error().0, answer.error().1), ("invalid_field", Some(field)), "{uri}");
    }
    let mut long_key = admin(Method::DELETE, "/v1/admin/plans/plan_1", "");
    long_key.headers_mut().insert("idempotency-key", "k".repeat(256).parse().unwrap());
    let answer = call(&node.http, long_key).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), ("invalid_field", Some("Idempotency-Key"), "must be 1 to 255 characters"));
}

#[tokio::test]
async fn unknown_routes_are_404_and_unknown_methods_405() {
    let node = node().await;
    for uri in ["/nope", "/v1/admin", "/v1/admin/widgets"] {
        let answer = call(&node.http, admin(Method::GET, uri, "")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(answer.body, json!({"error": {"code": "not_found", "field": null, "message": "no such route"}}));
    }
    let missing = call(&node.http, admin(Method::GET, "/v1/admin/plans/plan_nope", "")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error().0, "not_found");
    for (method, uri) in [(Method::PATCH, "/v1/admin/plans"), (Method::GET, "/v1/check"), (Method::PUT, "/healthz")] {
        let answer = call(&node.http, admin(method.clone(), uri, "")).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(answer.body, Value::String(String::new()), "{method} {uri}");
        assert!(answer.headers.contains_key(header::ALLOW), "{method} {uri}");
    }
}

#[tokio::test]
async fn metrics_need_the_metrics_token() {
    let node = node().await;
    for authorization in
        [None, Some("Bearer wrong-metrics-token"), Some("Basic x"), Some(&format!("Bearer {ADMIN_TOKEN}"))]
    {
        let answer = call(&node.http, request(Method::GET, "/metrics", authorization, "")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(answer.body, "metrics need the metrics token: Authorization: Bearer ...");
    }
    for authorization in [format!("Bearer {METRICS_TOKEN}"), format!("bearer  {METRICS_TOKEN}")] {
        let answer = call(&node.http, request(Method::GET, "/metrics", Some(&authorization), "")).await;
        assert_eq!(answer.status, StatusCode::OK, "{authorization:?}");
        assert_eq!(answer.headers[header::CONTENT_TYPE], "text/plain; version=0.0.4");
        assert!(answer.body.as_str().is_some_and(|text| text.contains("tollgate_")), "Prometheus text");
    }
}

#[tokio::test]
async fn the_openapi_document_is_public_and_describes_the_api() {
    let node = node().await;
    let answer = call(&node.http, request(Method::GET, "/openapi.json", None, "")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body, super::openapi::document());
    assert!(answer.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(answer.body["paths"]["/v1/admin/plans"]["post"].is_object());
    assert_eq!(call(&node.http, request(Method::GET, "/healthz", None, "")).await.body, "ok");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_announced_or_not() {
    let node = node().await;
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(MAX_BODY));
    let announced = call(&node.http, admin(Method::POST, "/v1/admin/plans", &big)).await;
    assert_eq!((announced.status, announced.error().0), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    // The same with an Idempotency-Key (its body is read to tell retries apart).
    let mut keyed = admin(Method::POST, "/v1/admin/plans", &big);
    keyed.headers_mut().insert("idempotency-key", "big-1".parse().expect("header"));
    let answer = call(&node.http, keyed).await;
    assert_eq!((answer.status, answer.error().0), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", answer.body);
    // Sent in chunks, with no length: cut off while it is read.
    let chunks = futures_util::stream::iter(
        big.into_bytes().chunks(64 << 10).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let mut streamed = admin(Method::POST, "/v1/admin/plans", "");
    *streamed.body_mut() = Body::from_stream(chunks);
    let answer = call(&node.http, streamed).await;
    assert_eq!((answer.status, answer.error().0), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", answer.body);
    // Just under it is read (and then judged on its content).
    let under = format!("{{\"name\": \"{}\"}}", "x".repeat(MAX_BODY - 100));
    let answer = call(&node.http, admin(Method::POST, "/v1/admin/plans", &under)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.error().1, Some("name"));
}

#[tokio::test]
async fn peer_routes_need_the_cluster_token() {
    let node = node().await;
    let empty = tollgate_proto::codec::encode(&()).expect("encode");
    let peer = |authorization: Option<&str>| {
        let mut builder = Request::builder().method(Method::POST).uri(crate::cluster::peer::READ_INDEX);
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::from(empty.clone())).expect("request")
    };
    for authorization in [None, Some("Bearer wrong-cluster-token"), Some(&format!("Bearer {ADMIN_TOKEN}"))] {
        let answer = call(&node.peer, peer(authorization)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(answer.body, "cluster token missing or wrong");
    }
    for authorization in [format!("Bearer {CLUSTER_TOKEN}"), format!("bearer {CLUSTER_TOKEN}")] {
        let answer = call(&node.peer, peer(Some(&authorization))).await;
        assert_eq!(answer.status, StatusCode::OK, "{authorization:?}: {}", answer.body);
    }
    let mut garbled = peer(Some(&format!("Bearer {CLUSTER_TOKEN}")));
    *garbled.body_mut() = Body::from(vec![0xff; 3]);
    *garbled.uri_mut() = crate::cluster::peer::WRITE.parse().unwrap();
    let answer = call(&node.peer, garbled).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.as_str().is_some_and(|b| b.starts_with("undecodable peer request: ")), "{}", answer.body);
    assert!(node.app.leader.members().0.contains_key(&1), "the node is still itself");
    // Without the token the answer comes from the headers alone: a body
    // announced as 60 MB that never arrives is not waited for, nor buffered.
    for path in [crate::cluster::peer::APPEND, crate::cluster::peer::WRITE, crate::cluster::peer::SNAPSHOT] {
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_LENGTH, "60000000")
            .body(Body::from_stream(never))
            .expect("request");
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), call(&node.peer, request)).await;
        let answer =
            answer.unwrap_or_else(|_| panic!("{path}: the node waited for the body of an unauthenticated peer"));
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

/// A misspelt or unknown field in any admin body, at any depth, is a 400
/// naming it, and nothing changes: a typo must never be taken as "not set"
/// (`overlap_sec` for `overlap_secs` used to revoke a live key at once).
#[tokio::test]
async fn an_unknown_field_in_any_admin_body_is_400_and_changes_nothing() {
    let node = node().await;
    let plan = call(&node.http, admin(Method::POST, "/v1/admin/plans", r#"{"id": "gold", "name": "Gold"}"#)).await;
    assert_eq!(plan.status, StatusCode::CREATED, "{}", plan.body);
    let key = call(&node.http, admin(Method::POST, "/v1/admin/keys", r#"{"name": "k", "plan_ids": ["gold"]}"#)).await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
    let key_id = key.body["id"].as_str().expect("id").to_string();
    let reroll = format!("/v1/admin/keys/{key_id}/reroll");
    let cases: &[(Method, &str, &str, &str)] = &[
        (Method::POST, "/v1/admin/keys", r#"{"plan_id": ["gold"], "name": "k2"}"#, "plan_id"),
        (Method::POST, "/v1/admin/keys", r#"{"nmae": "k2"}"#, "nmae"),
        (Method::PUT, &format!("/v1/admin/keys/{key_id}"), r#"{"enabeld": false, "name": "k"}"#, "enabeld"),
        (Method::POST, &reroll, r#"{"overlap_sec": 3600}"#, "overlap_sec"),
        (
            Method::POST,
            "/v1/admin/plans",
            r#"{"throttle": {"rate_per_second": 5, "burst": 1}, "name": "p"}"#,
            "rate_per_second",
        ),
        (
            Method::POST,
            "/v1/admin/plans",
            r#"{"quota": {"offest": 1, "limit": 5, "period": "day"}, "name": "p"}"#,
            "offest",
        ),
        (Method::PUT, "/v1/admin/plans/gold", r#"{"quotas": {"limit": 1, "period": "day"}, "name": "Gold"}"#, "quotas"),
        (Method::POST, "/v1/admin/apis", r#"{"stages": [{"nam": "prod"}], "name": "a"}"#, "nam"),
        (Method::POST, "/v1/admin/apis", r#"{"routes": [{"methd": "GET", "path": "/x"}], "name": "a"}"#, "methd"),
        (Method::POST, "/v1/admin/policies", r#"{"statement": [], "name": "p"}"#, "statement"),
        (Method::POST, "/v1/admin/authorizers", r#"{"kindd": {}, "name": "a"}"#, "kindd"),
        (Method::POST, "/v1/admin/tokens", r#"{"scope": ["read"], "name": "t"}"#, "scope"),
        (Method::POST, "/v1/admin/cluster/nodes", r#"{"http": "127.0.0.1:1", "id": 9}"#, "http"),
    ];
    let before: Vec<Answer> = futures_util::future::join_all(
        ["/v1/admin/keys", "/v1/admin/plans", "/v1/admin/apis", "/v1/admin/policies", "/v1/admin/authorizers"]
            .map(|uri| call(&node.http, admin(Method::GET, uri, ""))),
    )
    .await;
    for (method, uri, body, field) in cases {
        let answer = call(&node.http, admin(method.clone(), uri, body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {uri} {body}: {}", answer.body);
        let (_, _, message) = answer.error();
        assert!(message.contains(&format!("unknown field `{field}`")), "{method} {uri} {body}: {message}");
    }
    let after: Vec<Answer> = futures_util::future::join_all(
        ["/v1/admin/keys", "/v1/admin/plans", "/v1/admin/apis", "/v1/admin/policies", "/v1/admin/authorizers"]
            .map(|uri| call(&node.http, admin(Method::GET, uri, ""))),
    )
    .await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.body, a.body, "nothing changed");
    }
    let key_now = call(&node.http, admin(Method::GET, &format!("/v1/admin/keys/{key_id}"), "")).await;
    assert_eq!(key_now.body["previous_valid_until"], Value::Null, "no reroll happened: {}", key_now.body);
    assert_eq!(key_now.body["prefix"], key.body["prefix"], "the secret is the same");
}

#[tokio::test]
async fn a_key_import_creates_every_key_or_none_and_shows_each_secret_once() {
    let node = node().await;
    for (uri, body) in [
        (
            "/v1/admin/apis",
            r#"{"id": "pets", "name": "Pets", "stages": [{"name": "prod"}], "routes": [{"method": "GET", "path": "/pets"}]}"#,
        ),
        ("/v1/admin/plans", r#"{"id": "gold", "name": "Gold", "api_stages": [{"api_id": "pets", "stage": "prod"}]}"#),
    ] {
        let answer = call(&node.http, admin(Method::POST, uri, body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let keys = |n: usize| {
        let items: Vec<Value> = (0..n).map(|i| json!({"name": format!("k{i}"), "plan_ids": ["gold"]})).collect();
        json!({ "items": items }).to_string()
    };
    let count = || async {
        call(&node.http, admin(Method::GET, "/v1/admin/keys?limit=1000", "")).await.body["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    // A bad item anywhere: 400 naming it, nothing created.
    let mut bad: Value = serde_json::from_str(&keys(5)).expect("json");
    bad["items"][3]["plan_ids"] = json!(["nope"]);
    let cases = [
        (bad.to_string(), "items[3].plan_ids"),
        (r#"{"items": [{"name": "ok"}, {"name": ""}]}"#.to_string(), "items[1].name"),
        (r#"{"items": []}"#.to_string(), "items"),
        (keys(1001), "items"),
        (r#"{"items": [{"name": "ok", "plan_id": "gold"}]}"#.to_string(), "items[0]"),
    ];
    for (body, field) in cases {
        let answer = call(&node.http, admin(Method::POST, "/v1/admin/keys/import", &body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{field}: {}", answer.body);
        let (_, named, message) = answer.error();
        assert!(named.is_some_and(|n| n.starts_with(field)) || message.contains("plan_id"), "{field}: {}", answer.body);
    }
    assert_eq!(count().await, 0, "a refused import creates nothing");
    // 300 keys: created, in order, each with its own secret that passes a check.
    let answer = call(&node.http, admin(Method::POST, "/v1/admin/keys/import", &keys(300))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let items = answer.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 300);
    let secrets: std::collections::HashSet<&str> = items.iter().filter_map(|k| k["secret"].as_str()).collect();
    assert_eq!(secrets.len(), 300, "a secret per key, none twice");
    assert!(items.iter().enumerate().all(|(i, k)| k["name"] == format!("k{i}").as_str()), "in the order given");
    assert_eq!(count().await, 300);
    for k in [&items[0], &items[299]] {
        let check = json!({"api": "pets", "stage": "prod", "method": "GET", "path": "/pets",
            "headers": {"x-api-key": k["secret"]}});
        let decision = call(&node.http, request(Method::POST, "/v1/check", None, &check.to_string())).await;
        assert_eq!(decision.body["allowed"], true, "{}", decision.body);
        let stored =
            call(&node.http, admin(Method::GET, &format!("/v1/admin/keys/{}", k["id"].as_str().unwrap_or("")), ""))
                .await;
        assert!(stored.body.get("secret").is_none(), "never shown again: {}", stored.body);
        assert_eq!(stored.body["created_at"], k["created_at"], "the answer shows the key as stored");
    }
    // The same Idempotency-Key again: the keys are not made twice, nor their secrets shown.
    let with_key = |body: String| {
        let mut r = admin(Method::POST, "/v1/admin/keys/import", &body);
        r.headers_mut().insert("idempotency-key", "import-1".parse().expect("header"));
        r
    };
    assert_eq!(call(&node.http, with_key(keys(2))).await.status, StatusCode::CREATED);
    let again = call(&node.http, with_key(keys(2))).await;
    assert_eq!((again.status, again.error().0), (StatusCode::CONFLICT, "already_created"), "{}", again.body);
    assert_eq!(count().await, 302);
}

//! Envoy's ext_authz over gRPC against a real three-node TLS cluster, asked
//! through a tonic client built from `envoy-types` (the protos Envoy
//! itself sends), with the proxy's check token: every decision class with
//! its HTTP status, callers without the token, bad input, the same requests
//! asked through forward-auth deciding the same, and a node killed under
//! the client.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{Address as EnvoyAddress, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::harness::{self, Cluster, Options};

/// What an ext_authz request says about the request Envoy holds.
struct Held<'a> {
    method: &'a str,
    path: &'a str,
    source: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

fn held<'a>(path: &'a str, source: &'a str, headers: &[(&'a str, &'a str)]) -> Held<'a> {
    Held { method: "GET", path, source, headers: headers.to_vec() }
}

/// The `CheckRequest` Envoy sends for `held`, on a route whose
/// `context_extensions` name the API and stage.
fn check_request(api: &str, held: &Held<'_>) -> pb::CheckRequest {
    let http = HttpRequest {
        method: held.method.into(),
        path: held.path.into(),
        host: "api.example".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        size: -1,
        headers: held.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let socket = SocketAddress { address: held.source.into(), ..Default::default() };
    pb::CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(EnvoyAddress { address: Some(Address::SocketAddress(socket)) }),
                ..Default::default()
            }),
            request: Some(Request { time: None, http: Some(http) }),
            context_extensions: [
                ("tollgate_api".to_string(), api.to_string()),
                ("tollgate_stage".into(), "prod".into()),
            ]
            .into(),
            ..Default::default()
        }),
    }
}

fn ca(cluster: &Cluster) -> Vec<u8> {
    std::fs::read(cluster.certs().join("ca.pem")).expect("ca.pem")
}

/// A TLS channel to node `id`'s gRPC listener, with the client certificate
/// of `tollgate certs` if `with_certificate`.
async fn channel(cluster: &Cluster, id: u64, with_certificate: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca(cluster))).domain_name("localhost");
    if with_certificate {
        let read = |f: &str| std::fs::read(cluster.certs().join(f)).expect("client certificate");
        tls = tls.identity(Identity::from_pem(read("client.pem"), read("client-key.pem")));
    }
    Channel::from_shared(cluster.node(id).grpc_url()).expect("url").tls_config(tls)?.connect().await
}

async fn ask(
    channel: &Channel,
    token: Option<&str>,
    check: pb::CheckRequest,
) -> Result<pb::CheckResponse, tonic::Status> {
    let mut client = AuthorizationClient::new(channel.clone());
    let mut request = tonic::Request::new(check);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    }
    client.check(request).await.map(|r| r.into_inner())
}

/// An answer as the client sees it: HTTP status, headers (to the upstream
/// on allow, to the client on deny), headers to remove, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    removed: Vec<String>,
    body: String,
}

impl Answer {
    fn of(response: &pb::CheckResponse) -> Answer {
        let pairs = |options: &[pb::HeaderValueOption]| -> Vec<(String, String)> {
            options.iter().filter_map(|o| o.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect()
        };
        let code = response.status.as_ref().map(|s| s.code).unwrap_or(-1);
        match &response.http_response {
            Some(pb::HttpResponse::OkResponse(ok)) => {
                assert_eq!(code, 0, "an OK response has status OK");
                Answer {
                    status: 200,
                    headers: pairs(&ok.headers),
                    removed: ok.headers_to_remove.clone(),
                    body: String::new(),
                }
            }
            Some(pb::HttpResponse::DeniedResponse(denied)) => {
                assert_ne!(code, 0, "a denied response has a status other than OK");
                let status = denied.status.as_ref().map(|s| s.code).unwrap_or_default();
                Answer {
                    status: u16::try_from(status).expect("an HTTP status"),
                    headers: pairs(&denied.headers),
                    removed: Vec::new(),
                    body: denied.body.clone(),
                }
            }
            other => panic!("no HTTP response in {other:?}"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> &str {
        self.header("x-tollgate-reason").unwrap_or_default()
    }
}

/// The proxy tests' API ([`harness::pets_api`]) and a check token for
/// Envoy. Returns (key id, key secret, check token).
async fn configure(cluster: &Cluster) -> (String, String, String) {
    let (key_id, secret) = harness::pets_api(cluster).await;
    let leader = cluster.leader().await;
    let (status, token) = cluster.post(leader, "/v1/admin/tokens", json!({"name": "envoy", "scopes": ["check"]})).await;
    assert_eq!(status, 201, "{token}");
    for node in [1, 2, 3] {
        harness::wait_until("the token replicated", || async {
            cluster.get(node, "/v1/admin/tokens?stale=true").await.1["items"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await;
    }
    (key_id, secret, token["secret"].as_str().unwrap_or_default().to_string())
}

fn tls_cluster() -> Options {
    Options { tls: true, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_over_tls_answers_every_decision_class_with_its_status() {
    let cluster = Cluster::start_with(3, tls_cluster()).await;
    let (key_id, secret, token) = configure(&cluster).await;
    let node = channel(&cluster, 2, false).await.expect("TLS channel");
    let good = "203.0.113.9";
    let decide = |api: &'static str, held: Held<'static>| {
        let (node, token) = (node.clone(), token.clone());
        async move { Answer::of(&ask(&node, Some(&token), check_request(api, &held)).await.expect("a decision")) }
    };
    let secret: &'static str = Box::leak(secret.into_boxed_str());

    // Allowed: the identity goes upstream, a client's copy of an absent one is removed.
    let allowed = decide("pets", held("/pets/1", good, &[("x-api-key", secret)])).await;
    assert_eq!((allowed.status, allowed.reason()), (200, "allowed"), "{allowed:?}");
    assert_eq!(allowed.header("x-tollgate-key-id"), Some(key_id.as_str()));
    assert_eq!(allowed.header("x-tollgate-plan-id"), Some("gold"));
    assert!(allowed.header("x-tollgate-identity").is_some_and(|t| t.split('.').count() == 3), "{allowed:?}");
    assert!(allowed.header("ratelimit-remaining").is_some(), "{allowed:?}");
    assert!(allowed.removed.iter().any(|n| n == "x-tollgate-customer-id"), "{allowed:?}");

    // Each kind of denial, with the status API Gateway would use.
    let cases: &[(&str, Held<'static>, u16, &str)] = &[
        ("unknown key", held("/pets/1", good, &[("x-api-key", "tgk_not-a-key")]), 403, "unknown_key"),
        ("missing key", held("/pets/1", good, &[]), 403, "missing_key"),
        ("policy", held("/ipzone/1", "198.51.100.7", &[]), 403, "resource_policy_denied"),
        ("waf", held("/open/1?q=UNION%20select", good, &[]), 403, "waf_blocked"),
        ("unknown route", held("/nowhere", good, &[]), 404, "no_route"),
        ("authorizer down", held("/authz/1", good, &[("authorization", "Bearer x")]), 503, "authorizer_error"),
    ];
    for (what, held, status, reason) in cases {
        let denied = decide("pets", Held { headers: held.headers.clone(), ..*held }).await;
        assert_eq!(denied.status, *status, "{what}: {denied:?}");
        if denied.reason() != "authorizer_timeout" {
            assert_eq!(denied.reason(), *reason, "{what}: {denied:?}");
        }
        let body: serde_json::Value = serde_json::from_str(&denied.body).expect("a JSON body");
        assert_eq!(body["reason"].as_str(), Some(denied.reason()), "{what}");
    }
    let unknown_api = decide("nope", held("/pets/1", good, &[])).await;
    assert_eq!((unknown_api.status, unknown_api.reason()), (404, "unknown_api"));

    // A CORS preflight is answered by Envoy itself, with the CORS headers.
    let preflight = Held {
        method: "OPTIONS",
        path: "/pets/1",
        source: good,
        headers: vec![("origin", "https://app.example.com"), ("access-control-request-method", "GET")],
    };
    let preflight = decide("pets", preflight).await;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example.com"));

    // Past the burst: 429 with Retry-After and the rate-limit headers.
    let mut throttled = None;
    for _ in 0..10 {
        let answer = decide("pets", held("/pets/2", good, &[("x-api-key", secret)])).await;
        if answer.status == 429 {
            throttled = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let throttled = throttled.expect("a 429 past the burst of 3");
    assert_eq!(throttled.reason(), "throttled");
    assert!(throttled.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some(), "{throttled:?}");
    assert!(throttled.header("ratelimit-limit").is_some(), "{throttled:?}");

    // Callers without the check token get UNAUTHENTICATED and nothing else.
    let open = || check_request("pets", &held("/open/1", good, &[]));
    for bad in [None, Some("tga_wrong-token-0123456789abcdef0123456789"), Some("")] {
        let refused = ask(&node, bad, open()).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{bad:?}: {refused:?}");
    }
    let mut lower = AuthorizationClient::new(node.clone());
    let mut basic = tonic::Request::new(open());
    basic.metadata_mut().insert("authorization", format!("Basic {token}").parse().expect("metadata"));
    assert_eq!(lower.check(basic).await.expect_err("refused").code(), tonic::Code::Unauthenticated);
    // An admin token of the read scope is no check token either.
    let (_, reader) = cluster.post(1, "/v1/admin/tokens", json!({"name": "reader", "scopes": ["read"]})).await;
    let reader = reader["secret"].as_str().expect("secret").to_string();
    harness::wait_until("token replicated", || async {
        cluster.get(2, "/v1/admin/tokens?stale=true").await.1["items"].as_array().is_some_and(|t| t.len() == 2)
    })
    .await;
    assert_eq!(ask(&node, Some(&reader), open()).await.expect_err("refused").code(), tonic::Code::Unauthenticated);
    // A client certificate the cluster CA signed needs no token.
    let certified = channel(&cluster, 3, true).await.expect("mutual TLS channel");
    assert_eq!(Answer::of(&ask(&certified, None, open()).await.expect("decided")).status, 200);
    // Plain text to a TLS listener is no call at all.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", cluster.node(2).grpc_port)).expect("url");
    if let Ok(plain) = plain.connect().await {
        assert!(ask(&plain, Some(&token), open()).await.is_err());
    }

    // Bad input: INVALID_ARGUMENT naming the field, nothing decided.
    let mut no_stage = open();
    if let Some(a) = no_stage.attributes.as_mut() {
        a.context_extensions.remove("tollgate_stage");
    }
    let mut no_source = open();
    if let Some(a) = no_source.attributes.as_mut() {
        a.source = None;
    }
    let mut huge = open();
    if let Some(http) = huge.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.insert("x-big".into(), "a".repeat(20_000));
    }
    let bad: Vec<(&str, pb::CheckRequest, &str)> = vec![
        ("no attributes", pb::CheckRequest { attributes: None }, "attributes:"),
        ("no stage", no_stage, "attributes.context_extensions.tollgate_stage"),
        ("no source", no_source, "attributes.source.address"),
        ("bad source", check_request("pets", &held("/open/1", "not-an-ip", &[])), "attributes.source.address"),
        ("relative path", check_request("pets", &held("open/1", good, &[])), "attributes.request.http.path"),
        ("encoded slash", check_request("pets", &held("/open/a%2fb", good, &[])), "path"),
        (
            "another url",
            check_request("pets", &held("/open/1", good, &[("x-original-url", "/admin/x")])),
            "x-original-url",
        ),
        ("huge header", huge, "x-big"),
    ];
    for (what, request, field) in bad {
        let refused = ask(&node, Some(&token), request).await.expect_err(what);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{what}: {refused:?}");
        assert!(refused.message().contains(field), "{what}: {}", refused.message());
    }
    let mut oversized = open();
    if let Some(http) = oversized.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.body = "a".repeat(100_000);
    }
    let refused = ask(&node, Some(&token), oversized).await.expect_err("over the message limit");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("65536 bytes"), "{}", refused.message());

    // Decisions are counted with every other check path's.
    let (_, metrics) = cluster_metrics(&cluster, 2).await;
    assert!(metrics.contains("tollgate_check_decisions_total{api=\"pets\",reason=\"throttled\",stage=\"prod\"}"));

    // Guessing tokens costs the same budget as on the admin API (10 failed
    // authentications a minute per address, shared): past it, a guess, or
    // the bootstrap token, is refused until it refills, on both. A stored
    // proxy token (256 random bits: no guess finds one) still works, so a
    // neighbour at the proxy's address (a sidecar, a NAT) cannot lock it out.
    let mut exhausted = None;
    for _ in 0..12 {
        let refused = ask(&node, Some("tga_guess-0123456789abcdef0123456789abcd"), open()).await.expect_err("refused");
        if refused.code() == tonic::Code::ResourceExhausted {
            exhausted = Some(refused);
            break;
        }
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let exhausted = exhausted.expect("RESOURCE_EXHAUSTED within 12 wrong tokens");
    assert!(exhausted.message().contains("retry in"), "{exhausted:?}");
    let answer = ask(&node, Some(&token), open()).await.expect("a stored token, past the budget");
    assert_eq!(Answer::of(&answer).status, 200);
    let refused = ask(&node, Some(harness::TOKEN), open()).await.expect_err("the bootstrap token, past the budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    // The admin API of that node (the same address, 127.0.0.1) is locked out too.
    let admin = cluster.get(2, "/v1/admin/cluster").await;
    assert_eq!(admin.0, 429, "{admin:?}");
}

async fn cluster_metrics(cluster: &Cluster, id: u64) -> (u16, String) {
    let resp = cluster.http.get(format!("{}/metrics", cluster.url(id))).send().await.expect("metrics");
    (resp.status().as_u16(), resp.text().await.expect("metrics text"))
}

/// One forward-auth request in Envoy's HTTP form, written byte for byte
/// (an HTTP client library would resolve the dot segments the check must
/// see), over TLS; its status and `x-tollgate-reason`.
async fn forward_auth(cluster: &Cluster, id: u64, held: &Held<'_>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca(cluster)) {
        roots.add(cert.expect("CA certificate")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cluster.node(id).http_port)).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let mut head = format!(
        "{} /v1/forward-auth/pets/prod{} HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-For: {}\r\nConnection: close\r\n",
        held.method, held.path, held.source
    );
    for (name, value) in &held.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let reason = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("x-tollgate-reason")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, reason)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_spelling_decides_through_ext_authz_exactly_as_through_forward_auth() {
    let cluster = Cluster::start_with(3, tls_cluster()).await;
    let (_, _, token) = configure(&cluster).await;
    let node = channel(&cluster, 1, false).await.expect("TLS channel");
    let good = "203.0.113.9";
    // Keyless requests only: no throttle is spent, so both answers depend on the request alone.
    let table: Vec<Held<'_>> = vec![
        held("/open/a", good, &[]),
        held("/open/%61", good, &[]),
        held("/open/a?x=1&x=2", good, &[]),
        held("/open//a", good, &[]),
        held("/open/./a", good, &[]),
        held("/open/%2e%2e/admin/users", good, &[]),
        held("/open/%2E%2E/admin/users", good, &[]),
        held("/open/.%2e/admin/users", good, &[]),
        held("/open/a/../../admin/users", good, &[]),
        held("/../admin/users", good, &[]),
        held("/open/a%2fb", good, &[]),
        held("/open/a%5cb", good, &[]),
        held("/open/a%00b", good, &[]),
        held("/open/%252e%252e/admin", good, &[]),
        held("/open/a;x=1", good, &[]),
        held("/open/a?q=UNION%20select", good, &[]),
        held("/OPEN/a", good, &[]),
        held("/nowhere", good, &[]),
        held("/ipzone/a", good, &[]),
        held("/ipzone/a", "198.51.100.7", &[]),
        held("/ipzone/a", "::ffff:203.0.113.9", &[]),
        held("/ipzone/a", "::ffff:198.51.100.7", &[]),
        held("/open/a", good, &[("x-original-url", "/admin/users")]),
        held("/open/a", good, &[("x-original-url", "/open/a")]),
        held("/open/a", good, &[("x-rewrite-url", "/admin/users")]),
        held("/open/a", good, &[("x-forwarded-uri", "/admin/users")]),
        held("/open/a", good, &[("x-original-method", "DELETE")]),
        held("/open/a", good, &[("x-http-method-override", "DELETE")]),
        held("/open/a?_method=DELETE", good, &[]),
        held("/admin/users", good, &[("x-api-key", "tgk_nope")]),
        held("/pets/1", good, &[]),
        // Spellings a backend reads as another request (CGI's `_` for `-`,
        // `;` query separators, bytes that are not UTF-8): refused on both.
        held("/open/a", good, &[("x_http_method_override", "DELETE")]),
        held("/open/a", good, &[("x_original_url", "/admin/users")]),
        held("/open/a", good, &[("x_tollgate_principal", "key:admin")]),
        held("/open/a?x=1;_method=DELETE", good, &[]),
        held("/open/a?_method%3DDELETE", good, &[]),
        held("/open/a?_method[]=DELETE", good, &[]),
        held("/open/%ff", good, &[]),
        held("/open/%c0%ae%c0%ae/admin/users", good, &[]),
        held("/open/caf%c3%a9", good, &[]),
    ];
    for asked in &table {
        let http = forward_auth(&cluster, 1, asked).await;
        let grpc = match ask(&node, Some(&token), check_request("pets", asked)).await {
            Ok(response) => {
                let answer = Answer::of(&response);
                (answer.status, answer.reason().to_string())
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}: {status:?}", asked.path);
                (400, String::new())
            }
        };
        // forward-auth's 400 carries no reason header; compare the class.
        let http = if http.0 == 400 { (400, String::new()) } else { http };
        assert_eq!(grpc, http, "{} {:?} from {}: ext_authz vs forward-auth", asked.path, asked.headers, asked.source);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_other_nodes_answer_when_the_node_the_client_uses_is_killed() {
    let mut cluster = Cluster::start_with(3, tls_cluster()).await;
    let (_, _, token) = configure(&cluster).await;
    let victim = cluster.leader().await;
    let used = channel(&cluster, victim, false).await.expect("TLS channel");
    let request = || check_request("pets", &held("/open/1", "203.0.113.9", &[]));
    assert_eq!(Answer::of(&ask(&used, Some(&token), request()).await.expect("decided")).status, 200);
    cluster.kill(victim);
    assert!(ask(&used, Some(&token), request()).await.is_err(), "a killed node answers nothing");
    for other in (1..=3).filter(|id| *id != victim) {
        let channel = channel(&cluster, other, false).await.expect("TLS channel");
        harness::wait_until("a surviving node decides", || async {
            ask(&channel, Some(&token), request()).await.is_ok_and(|r| Answer::of(&r).status == 200)
        })
        .await;
        // Its gRPC health service says SERVING (no token needed), for the
        // server and for ext_authz.
        harness::wait_until("a surviving node's health says SERVING", || async {
            health(&channel, "").await == Some(SERVING) && health(&channel, EXT_AUTHZ).await == Some(SERVING)
        })
        .await;
    }
    // With a second node gone the last one has no quorum, so no leader:
    // not ready, and its health says NOT_SERVING (a proxy skips it).
    let second = cluster.leader().await;
    cluster.kill(second);
    let last = (1..=3).find(|id| *id != victim && *id != second).expect("a third node");
    let channel = channel(&cluster, last, false).await.expect("TLS channel");
    harness::wait_until("the last node's health says NOT_SERVING", || async {
        health(&channel, EXT_AUTHZ).await == Some(NOT_SERVING)
    })
    .await;
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
const EXT_AUTHZ: &str = "envoy.service.auth.v3.Authorization";

/// The status `grpc.health.v1.Health/Check` answers for `service`, if it answers.
async fn health(channel: &Channel, service: &str) -> Option<i32> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
    client.check(request).await.ok().map(|r| r.into_inner().status)
}

//! Envoy's rate limit service (`ShouldRateLimit`) against a real three-node
//! TLS cluster, asked through a tonic client built from `envoy-types`:
//! an hourly limit spread over three nodes admits exactly its limit, a
//! minute window stays within 5% of it, a request over one limit is charged
//! to none, a node killed under its client, bad input, and the same check
//! over JSON (`POST /v1/ratelimit`).

use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::harness::{self, Cluster, Options};

/// The domain every test here configures (envoyproxy/ratelimit's shape).
fn edge_domain() -> serde_json::Value {
    json!({"domain": "edge", "descriptors": [
        {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": 50}},
        {"key": "tenant", "rate_limit": {"unit": "minute", "requests_per_unit": 300}},
        {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 100},
         "descriptors": [{"key": "path", "value": "/login", "rate_limit": {"unit": "hour", "requests_per_unit": 10}}]},
        {"key": "victim", "rate_limit": {"unit": "day", "requests_per_unit": 40}}
    ]})
}

/// A TLS cluster with the `edge` domain and a proxy token of the check
/// scope, replicated to every node.
async fn configured() -> (Cluster, String) {
    let cluster = Cluster::start_with(3, Options { tls: true, ..Default::default() }).await;
    let leader = cluster.leader().await;
    let (status, body) = cluster.post(leader, "/v1/admin/ratelimits", edge_domain()).await;
    assert_eq!(status, 201, "{body}");
    let (status, token) = cluster.post(leader, "/v1/admin/tokens", json!({"name": "envoy", "scopes": ["check"]})).await;
    assert_eq!(status, 201, "{token}");
    for node in [1, 2, 3] {
        harness::wait_until("the domain and token replicated", || async {
            let domains = cluster.get(node, "/v1/admin/ratelimits?stale=true").await.1;
            let tokens = cluster.get(node, "/v1/admin/tokens?stale=true").await.1;
            domains["items"].as_array().is_some_and(|d| d.len() == 1)
                && tokens["items"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await;
    }
    (cluster, token["secret"].as_str().unwrap_or_default().to_string())
}

async fn channel(cluster: &Cluster, id: u64) -> Channel {
    let ca = std::fs::read(cluster.certs().join("ca.pem")).expect("ca.pem");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    Channel::from_shared(cluster.node(id).grpc_url())
        .expect("url")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("a TLS channel")
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: "edge".into(), descriptors, hits_addend: 0 }
}

async fn ask(
    channel: &Channel,
    token: Option<&str>,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut client = RateLimitServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(req);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    }
    client.should_rate_limit(request).await.map(|r| r.into_inner())
}

/// Whether the request was admitted (`OK`); a failed call panics.
async fn ok(channel: &Channel, token: &str, req: RateLimitRequest) -> bool {
    let answer = ask(channel, Some(token), req).await.expect("an answer");
    answer.overall_code == Code::Ok as i32
}

/// Sends `n` requests from each node at once; how many were admitted.
async fn from_every_node(cluster: &Cluster, token: &str, n: usize, req: fn() -> RateLimitRequest) -> usize {
    let mut tasks = Vec::new();
    for id in [1, 2, 3] {
        let channel = channel(cluster, id).await;
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..n {
                admitted += usize::from(ok(&channel, &token, req()).await);
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("a sender");
    }
    admitted
}

/// Waits, if needed, until at least `left_secs` of the current `window_secs`
/// window are left, so that a burst of requests falls in one window (the
/// windows are the wall clock's, as envoyproxy/ratelimit's are).
async fn within_one_window(window_secs: u64, left_secs: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let left = window_secs - now % window_secs;
    if left < left_secs {
        tokio::time::sleep(std::time::Duration::from_secs(left)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hourly_limit_over_three_nodes_admits_exactly_its_limit_and_a_minute_one_within_5_percent() {
    let (cluster, token) = configured().await;
    within_one_window(3_600, 60).await;
    // 3 x 40 requests at once for a limit of 50 an hour: never more than 50.
    let admitted = from_every_node(&cluster, &token, 40, || request(vec![descriptor(&[("user", "u1")])])).await;
    assert!(admitted <= 50, "{admitted} admitted of 50");
    // Units a node held when its sender stopped are handed back: asked on,
    // the cluster admits exactly the rest, whichever node is asked.
    let channels = [channel(&cluster, 1).await, channel(&cluster, 2).await, channel(&cluster, 3).await];
    let total = std::cell::Cell::new(admitted);
    let mut turn = 0;
    harness::wait_until("every one of the 50 admitted", || {
        turn += 1;
        let channel = channels[turn % 3].clone();
        let (token, total) = (&token, &total);
        async move {
            if ok(&channel, token, request(vec![descriptor(&[("user", "u1")])])).await {
                total.set(total.get() + 1);
            }
            assert!(total.get() <= 50, "{} admitted of 50", total.get());
            total.get() == 50
        }
    })
    .await;
    for channel in &channels {
        assert!(!ok(channel, &token, request(vec![descriptor(&[("user", "u1")])])).await, "spent on every node");
    }

    // A minute window of 300, 3 x 150 requests at once: within 5% below it,
    // never above.
    within_one_window(60, 25).await;
    let admitted = from_every_node(&cluster, &token, 150, || request(vec![descriptor(&[("tenant", "t1")])])).await;
    assert!((285..=300).contains(&admitted), "{admitted} admitted of 300 a minute");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_one_limit_is_charged_to_none_and_bad_input_is_invalid_argument() {
    let (cluster, token) = configured().await;
    within_one_window(60, 25).await;
    // Per address 100 a minute, per address and /login 10 an hour: the
    // login limit refuses, and the address's count is not charged for it.
    let login = || {
        request(vec![
            descriptor(&[("remote_address", "192.0.2.7")]),
            descriptor(&[("remote_address", "192.0.2.7"), ("path", "/login")]),
        ])
    };
    let admitted = from_every_node(&cluster, &token, 10, login).await;
    assert!(admitted <= 10, "{admitted} logins of 10");
    let node = channel(&cluster, 2).await;
    let refused = ask(&node, Some(&token), login()).await.expect("an answer");
    if refused.overall_code == Code::OverLimit as i32 {
        let codes: Vec<i32> = refused.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    }
    let address = ask(&node, Some(&token), request(vec![descriptor(&[("remote_address", "192.0.2.7")])])).await;
    let status = address.expect("an answer").statuses[0].clone();
    assert_eq!(status.current_limit.as_ref().map(|l| l.requests_per_unit), Some(100));
    assert!(status.duration_until_reset.as_ref().is_some_and(|d| (1..=60).contains(&d.seconds)));
    // The address alone then gets the rest of its 100 (within 5%, shares
    // other nodes hold unused when the window ends are not admitted): had
    // the 20 refused logins been charged, 20 fewer.
    let rest =
        from_every_node(&cluster, &token, 50, || request(vec![descriptor(&[("remote_address", "192.0.2.7")])])).await;
    let expected = 100 - 1 - admitted;
    assert!(rest <= expected && rest + 5 >= expected, "{rest} admitted of the {expected} left");

    // Bad input: INVALID_ARGUMENT naming the field, never a crash.
    let many = request((0..10_000).map(|_| descriptor(&[("user", "x")])).collect());
    let too_many = request((0..65).map(|_| descriptor(&[("user", "x")])).collect());
    let mut empty_domain = request(vec![descriptor(&[("user", "x")])]);
    empty_domain.domain = String::new();
    let huge = request(vec![descriptor(&[("user", &"v".repeat(2_000))])]);
    let over_message = request(vec![descriptor(&[("user", &"v".repeat(100_000))])]);
    let mut negative = request(vec![descriptor(&[("user", "x")])]);
    negative.descriptors[0].is_negative_hits = true;
    let mut unknown_unit = request(vec![descriptor(&[("user", "x")])]);
    unknown_unit.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 5, unit: 0 });
    let cases = [
        (many, "65536 bytes"),
        (too_many, "descriptors"),
        (empty_domain, "domain"),
        (huge, "descriptors[0].entries[0].value"),
        (over_message, "65536 bytes"),
        (negative, "descriptors[0].is_negative_hits"),
        (unknown_unit, "descriptors[0].limit.unit"),
        (request(vec![descriptor(&[])]), "descriptors[0].entries"),
    ];
    for (req, field) in cases {
        let refused = ask(&node, Some(&token), req).await.expect_err(field);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}: {refused:?}");
        assert!(refused.message().contains(field), "{field}: {}", refused.message());
    }
    // Without the proxy's token: UNAUTHENTICATED.
    let refused = ask(&node, None, request(vec![descriptor(&[("user", "x")])])).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The same check over JSON, with the same token; none: 401.
    let url = format!("{}/v1/ratelimit", cluster.url(3));
    let body = json!({"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "json"}]}],
        "response_headers": true});
    let answer = cluster.http.post(&url).bearer_auth(&token).json(&body).send().await.expect("a response");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers().get("x-ratelimit-limit").map(|v| v.to_str().unwrap_or_default()),
        Some("50, 50;w=3600")
    );
    let answer: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(answer["overall_code"], "OK", "{answer}");
    assert_eq!(answer["statuses"][0]["limit_remaining"], 49, "{answer}");
    let anonymous = cluster.http.post(&url).json(&body).send().await.expect("a response");
    assert_eq!(anonymous.status(), 401);
    let mut bad = body.clone();
    bad["descriptors"][0]["entries"][0]["key"] = json!("");
    let refused = cluster.http.post(&url).bearer_auth(&token).json(&bad).send().await.expect("a response");
    assert_eq!(refused.status(), 400);
    let refused: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(refused["error"]["field"], "descriptors[0].entries[0].key", "{refused}");
    // Guesses from this address use up its budget: then a guess (or the
    // bootstrap token) is a 429, but the stored proxy token still passes.
    let mut locked = false;
    for _ in 0..12 {
        let guess = cluster.http.post(&url).bearer_auth("tga_guess").json(&body).send().await.expect("a response");
        if guess.status() == 429 {
            locked = true;
            break;
        }
        assert_eq!(guess.status(), 401);
    }
    assert!(locked, "429 within 12 wrong tokens");
    let bootstrap = cluster.http.post(&url).bearer_auth(harness::TOKEN).json(&body).send().await.expect("a response");
    assert_eq!(bootstrap.status(), 429);
    let proxy = cluster.http.post(&url).bearer_auth(&token).json(&body).send().await.expect("a response");
    assert_eq!(proxy.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_limit_holds_when_the_node_a_client_uses_is_killed() {
    let (mut cluster, token) = configured().await;
    within_one_window(86_400, 120).await;
    let victim = cluster.leader().await;
    let used = channel(&cluster, victim).await;
    let daily = || request(vec![descriptor(&[("victim", "v1")])]);
    let mut before = 0;
    for _ in 0..15 {
        before += usize::from(ok(&used, &token, daily()).await);
    }
    assert_eq!(before, 15, "15 of 40 admitted on the first node");
    cluster.kill(victim);
    assert!(ask(&used, Some(&token), daily()).await.is_err(), "a killed node answers nothing");
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    let mut after = 0;
    for id in &survivors {
        let channel = channel(&cluster, *id).await;
        harness::wait_until("a surviving node answers", || async {
            ask(&channel, Some(&token), daily()).await.is_ok()
        })
        .await;
        // Its gRPC health says SERVING for the rate limit service too (what
        // Envoy's health check of the cluster asks).
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let asked =
            tonic_health::pb::HealthCheckRequest { service: "envoy.service.ratelimit.v3.RateLimitService".into() };
        let status = health.check(asked).await.expect("health answers").into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        for _ in 0..30 {
            after += usize::from(ok(&channel, &token, daily()).await);
        }
    }
    // What the killed node held but never used is charged whole (never
    // admitted twice): the two survivors admit at most the rest.
    assert!(after >= 1, "the survivors decide");
    assert!(before + after <= 40, "{before} + {after} admitted of 40");
}

/// The example configuration (`deploy/ratelimit/example.yaml`, envoyproxy/ratelimit's
/// format), imported with the CLI, decides as its comments say.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_configuration_imported_with_the_cli_decides_as_its_comments_say() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ratelimit/example.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--url", &cluster.url(leader), "--token", harness::TOKEN, "limits", "import"])
        .arg(&example)
        .output()
        .expect("tollgate limits import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = cluster.other_than(leader);
    harness::wait_until("the domain replicated", || async {
        cluster.get(node, "/v1/admin/ratelimits?domain=storefront&stale=true").await.1["items"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    let channel = Channel::from_shared(cluster.node(node).grpc_url()).expect("url").connect().await.expect("channel");
    let token = harness::TOKEN;
    let ask_one = |entries: Vec<Vec<(&'static str, &'static str)>>| {
        let descriptors = entries.iter().map(|e| descriptor(e)).collect();
        RateLimitRequest { domain: "storefront".into(), descriptors, hits_addend: 0 }
    };
    let count_ok = |channel: Channel, req: RateLimitRequest, n: usize| async move {
        let mut admitted = 0;
        for _ in 0..n {
            admitted += usize::from(ok(&channel, token, req.clone()).await);
        }
        admitted
    };

    // "Each client address, 20 requests a second": 25 in one second, 20 pass.
    // At the start of a second (25 calls take far less than one).
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(1_000 - ms % 1_000 + 10)).await;
    let one_address = ask_one(vec![vec![("remote_address", "203.0.113.5")]]);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let admitted = count_ok(channel.clone(), one_address, 25).await;
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    if started == ended {
        assert_eq!(admitted, 20, "20 a second for one address");
    }
    // "The load balancer's health checker is never limited."
    let checker = ask_one(vec![vec![("remote_address", "192.0.2.10")]]);
    assert_eq!(count_ok(channel.clone(), checker.clone(), 40).await, 40);
    let answer = ask(&channel, Some(token), checker).await.expect("an answer");
    assert_eq!((answer.statuses[0].limit_remaining, answer.statuses[0].current_limit.clone()), (u32::MAX, None));

    within_one_window(60, 15).await;
    // "(api_key, K), (path, P): search paths, 30 a minute per key and path."
    let search = ask_one(vec![vec![("api_key", "k1"), ("path", "/search?q=shoes")]]);
    assert_eq!(count_ok(channel.clone(), search, 35).await, 30);
    let other_path = ask_one(vec![vec![("api_key", "k1"), ("path", "/search/boots")]]);
    assert_eq!(count_ok(channel.clone(), other_path, 2).await, 2, "another path, another count");
    // "Exports: every path under /exports/ shares one count per key" (5 a minute).
    let a = ask_one(vec![vec![("api_key", "k1"), ("path", "/exports/a.csv")]]);
    let b = ask_one(vec![vec![("api_key", "k1"), ("path", "/exports/b.csv")]]);
    assert_eq!(count_ok(channel.clone(), a, 3).await + count_ok(channel.clone(), b, 3).await, 5);
    // "Each API key: 1,000 requests an hour", named key_hourly; a partner's
    // descriptor "replaces" it with 20,000.
    let key = ask(&channel, Some(token), ask_one(vec![vec![("api_key", "k2")]])).await.expect("an answer");
    let limit = key.statuses[0].current_limit.clone().expect("a limit");
    assert_eq!((limit.requests_per_unit, limit.name.as_str()), (1000, "key_hourly"));
    let partner = ask_one(vec![vec![("api_key", "k3")], vec![("plan", "partner"), ("api_key", "k3")]]);
    let answer = ask(&channel, Some(token), partner).await.expect("an answer");
    assert_eq!(answer.statuses[0].current_limit, None, "key_hourly is replaced");
    assert_eq!(answer.statuses[1].current_limit.as_ref().map(|l| l.requests_per_unit), Some(20_000));
    // "Counted, and reported in the answer's statuses, but never refusing" (10 a minute).
    let checkout = ask_one(vec![vec![("path", "/checkout")]]);
    assert_eq!(count_ok(channel.clone(), checkout.clone(), 15).await, 15);
    let answer = ask(&channel, Some(token), checkout).await.expect("an answer");
    assert_eq!((answer.statuses[0].code, answer.statuses[0].limit_remaining), (Code::Ok as i32, 0));
}

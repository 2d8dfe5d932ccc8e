//! tollgate-client and the binary protocol against real node processes.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_client::{CheckRequest, Client, ClientConfig, Error, FailureMode};
use tollgate_proto::wire::{self, ClientMessage, ErrorCode, ServerMessage};

use crate::harness::{self, Cluster};

/// An API, a plan, a key and a token with the `check` scope.
async fn setup(cluster: &Cluster) -> (String, String) {
    let leader = cluster.leader().await;
    let api = json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": true}]});
    assert_eq!(cluster.post(leader, "/v1/admin/apis", api).await.0, 201);
    let plan = json!({"id": "gold", "name": "Gold", "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    assert_eq!(cluster.post(leader, "/v1/admin/plans", plan).await.0, 201);
    let (_, key) = cluster.post(leader, "/v1/admin/keys", json!({"name": "edge", "plan_ids": ["gold"]})).await;
    let (_, token) = cluster.post(leader, "/v1/admin/tokens", json!({"name": "proxy", "scopes": ["check"]})).await;
    for node in [1, 2, 3] {
        harness::wait_until("model replicated", || async {
            cluster.get(node, "/v1/admin/tokens?stale=true").await.1["items"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await;
    }
    (key["secret"].as_str().unwrap_or_default().to_string(), token["secret"].as_str().unwrap_or_default().to_string())
}

fn request(key: &str, i: usize) -> CheckRequest {
    CheckRequest {
        api: "pets".into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: format!("/pets/{i}"),
        headers: [("x-api-key".to_string(), key.to_string()), ("x-request-id".to_string(), format!("req-{i}"))].into(),
        ..Default::default()
    }
}

fn request_id(decision: &tollgate_client::Decision) -> Option<&str> {
    decision.response_headers.iter().find(|(n, _)| n == "x-request-id").map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_fail_over_when_the_node_in_use_is_killed_and_come_back_to_it() {
    let mut cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    // Only node 1 is given; the others are learned from its welcome.
    let client = Client::new(ClientConfig::new([cluster.node(1).wire_addr()], token));
    let decision = client.check(request(&key, 1)).await.expect("check");
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(client.known_nodes().len(), 3, "members discovered: {:?}", client.known_nodes());

    // Kill -9 the node the client is using.
    for i in 0..5 {
        client.check(request(&key, i)).await.expect("check");
    }
    let in_use = client.preferred_node().expect("a node in use");
    let victim = (1..=3).find(|n| cluster.node(*n).wire_addr() == in_use).expect("a cluster node");
    cluster.kill(victim);
    for i in 0..20 {
        let decision = client.check(request(&key, i)).await.unwrap_or_else(|e| panic!("check {i} after kill -9: {e}"));
        assert!(decision.allowed);
    }
    assert!(client.failovers() >= 1, "the client moved off the dead node");

    // The node comes back; with the other two gone it must be used again.
    cluster.restart(victim).await;
    for other in (1..=3).filter(|n| *n != victim) {
        cluster.kill(other);
    }
    let mut answered = false;
    for i in 0..50 {
        if let Ok(d) = client.check(request(&key, i)).await {
            answered = d.allowed;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // node 1 may still be in its backoff
    }
    assert!(answered, "the restarted node was not used again");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_checks_on_one_connection_come_back_to_their_callers() {
    let cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    let mut config = ClientConfig::new([cluster.node(2).wire_addr()], token);
    config.connections_per_node = 1;
    // One node only: a broken connection shows as an error, not a failover.
    config.discover = false;
    config.deadline = Duration::from_secs(10);
    config.attempt_timeout = Duration::from_secs(10);
    let client = Client::new(config);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (client, key) = (client.clone(), key.clone());
        tasks.push(tokio::spawn(async move { (i, client.check(request(&key, i)).await) }));
    }
    for task in tasks {
        let (i, answer) = task.await.expect("task");
        let decision = answer.unwrap_or_else(|e| panic!("check {i}: {e}"));
        assert_eq!(request_id(&decision), Some(format!("req-{i}").as_str()), "answer matched to the wrong caller");
    }

    // A caller that gives up while it writes for others (its request dropped
    // by the proxy, say) hands the writing on: the check it had taken on
    // still goes out, and the connection stays in use.
    let noop = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&noop);
    for i in 0..20 {
        let mut writing = Box::pin(client.check(request(&key, 1000 + i)));
        assert!(writing.as_mut().poll(&mut cx).is_pending(), "the first caller is writing");
        let mut waiting = Box::pin(client.check(request(&key, 2000 + i)));
        assert!(waiting.as_mut().poll(&mut cx).is_pending(), "the second caller queued behind it");
        drop(writing);
        let decision = waiting.await.unwrap_or_else(|e| panic!("check queued behind a dropped writer: {e}"));
        assert_eq!(request_id(&decision), Some(format!("req-{}", 2000 + i).as_str()));
    }

    // A malformed request is refused with its field, not retried elsewhere.
    let mut bad = request(&key, 0);
    bad.source_ip = Some("not-an-ip".into());
    assert!(matches!(client.check(bad).await, Err(Error::Refused { field, .. }) if field == "source_ip"));
    assert_eq!(client.failovers(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_node_down_the_client_fails_open_or_closed_as_configured() {
    let mut cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    let seeds: Vec<String> = (1..=3).map(|n| cluster.node(n).wire_addr()).collect();

    // A client pinned to its seeds (no discovery) has no other node to go to.
    let mut pinned = ClientConfig::new([seeds[0].clone()], token.clone());
    pinned.discover = false;
    let pinned = Client::new(pinned);
    assert!(pinned.check(request(&key, 1)).await.expect("check").allowed);
    assert_eq!(pinned.known_nodes(), vec![seeds[0].clone()], "only the seed is known");
    cluster.kill(1);
    assert!(matches!(pinned.check(request(&key, 2)).await, Err(Error::Unavailable(_))));

    for node in [2, 3] {
        cluster.kill(node);
    }
    let mut closed = ClientConfig::new(seeds.clone(), token.clone());
    closed.failure_mode = FailureMode::Closed;
    assert!(matches!(Client::new(closed).check(request(&key, 1)).await, Err(Error::Unavailable(_))));
    let mut open = ClientConfig::new(seeds, token);
    open.failure_mode = FailureMode::Open;
    let decision = Client::new(open).check(request(&key, 1)).await.expect("fail-open answers");
    assert!(decision.allowed && decision.message.starts_with("fail-open"), "{decision:?}");
}

async fn raw(port: u16, bytes: &[u8]) -> Vec<ServerMessage> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(harness::PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the node did not close the connection");
    wire::decode_stream::<ServerMessage>(&answer).0
}

fn protocol_error(answers: &[ServerMessage]) -> bool {
    matches!(answers.last(), Some(ServerMessage::Error { code: ErrorCode::Protocol, .. }))
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_truncated_and_oversized_frames_close_only_their_connection() {
    let cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    let port = cluster.node(1).wire_port;
    let hello = wire::encode(&ClientMessage::Hello { versions: vec![1], token: token.clone(), client: "raw".into() })
        .expect("encode");

    assert!(protocol_error(&raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await), "garbage");
    assert!(protocol_error(&raw(port, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await), "oversized length");
    let mut after_hello = hello.clone();
    after_hello.extend([0, 0, 0, 5, wire::VERSION, 0xff, 0xff, 0xff, 0xff]);
    let answers = raw(port, &after_hello).await;
    assert!(matches!(answers.first(), Some(ServerMessage::Welcome { .. })), "{answers:?}");
    assert!(protocol_error(&answers), "undecodable frame after the hello: {answers:?}");
    // Truncated: a length of 100 and 10 bytes, then the connection closes.
    let mut truncated = hello.clone();
    truncated.extend([0, 0, 0, 100, wire::VERSION, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let answers = raw(port, &truncated).await;
    assert!(matches!(answers.as_slice(), [ServerMessage::Welcome { .. }]), "{answers:?}");
    let bad_token =
        wire::encode(&ClientMessage::Hello { versions: vec![1], token: "tga_wrong".into(), client: "raw".into() })
            .expect("encode");
    assert!(matches!(
        raw(port, &bad_token).await.as_slice(),
        [ServerMessage::Error { code: ErrorCode::Unauthorized, .. }]
    ));
    let bad_version =
        wire::encode(&ClientMessage::Hello { versions: vec![99], token, client: "raw".into() }).expect("encode");
    assert!(matches!(
        raw(port, &bad_version).await.as_slice(),
        [ServerMessage::Error { code: ErrorCode::UnsupportedVersion, .. }]
    ));

    // The node kept serving everyone else.
    let client = Client::new(ClientConfig::new([cluster.node(1).wire_addr()], harness::TOKEN));
    assert!(client.check(request(&key, 1)).await.expect("check").allowed);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tower_layer_answers_denials_itself_and_passes_identity_on() {
    use axum::routing::get;
    let mut cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    let client = Client::new(ClientConfig::new([cluster.node(1).wire_addr()], token));
    let app = axum::Router::new()
        .route(
            "/pets/{id}",
            get(|headers: axum::http::HeaderMap| async move {
                let identity = headers.contains_key("x-tollgate-identity");
                let principal =
                    headers.get("x-tollgate-principal").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                axum::Json(json!({"identity": identity, "principal": principal}))
            }),
        )
        .layer(tollgate_client::TollgateLayer::new(client, "pets", "prod"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = cluster.http.clone();
    let get = |key: Option<&str>| {
        let mut req = http.get(format!("{base}/pets/1"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };

    let ok = get(Some(&key)).await.expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.headers().contains_key("x-request-id"), "the decision's headers are on the response");
    let body: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(body["identity"], true, "{body}");
    assert!(body["principal"].as_str().is_some_and(|p| p.starts_with("key:")), "{body}");

    // A client's own identity headers never reach the backend.
    let forged = http
        .get(format!("{base}/pets/1"))
        .header("x-api-key", &key)
        .header("x-tollgate-principal", "key:key_admin")
        .header("x-tollgate-key-id", "key_admin")
        .send()
        .await
        .expect("request");
    let body: serde_json::Value = forged.json().await.expect("json");
    assert!(body["principal"].as_str().is_some_and(|p| p.starts_with("key:") && p != "key:key_admin"), "{body}");

    let denied = get(Some("tgk_bogus")).await.expect("request");
    assert_eq!(denied.status().as_u16(), 403);
    let body: serde_json::Value = denied.json().await.expect("json");
    assert_eq!(body["reason"], "unknown_key");
    assert_eq!(get(None).await.expect("request").status().as_u16(), 403);

    // No node at all: the layer fails closed with 503 and Retry-After.
    for node in [1, 2, 3] {
        cluster.kill(node);
    }
    let unavailable = get(Some(&key)).await.expect("request");
    assert_eq!(unavailable.status().as_u16(), 503);
    assert!(unavailable.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_client_manages_keys_plans_and_usage_with_failover() {
    use tollgate_client::admin::{AdminClient, AdminError, UsageQuery};
    let mut cluster = Cluster::start(3).await;
    let (_, token) = setup(&cluster).await;
    let leader = cluster.leader().await;
    // The first address given is a node that is down: calls go on to the next.
    let down = cluster.other_than(leader);
    cluster.kill(down);
    let nodes: Vec<String> = [down, 1, 2, 3].iter().map(|n| cluster.url(*n)).collect();
    let admin = AdminClient::new(nodes, harness::TOKEN).expect("admin client");

    let mut plan = admin.get_plan("gold").await.expect("plan");
    plan.quota = Some(serde_json::from_value(json!({"limit": 3, "period": "day"})).expect("quota"));
    assert_eq!(admin.update_plan(&plan).await.expect("update").quota.map(|q| q.limit), Some(3));
    let spec = serde_json::from_value(json!({"name": "tool", "plan_ids": ["gold"]})).expect("spec");
    let created = admin.create_key(&spec).await.expect("create key");
    assert!(created.secret.starts_with("tgk_"));
    assert_eq!(admin.get_key(&created.key.id).await.expect("get").name, "tool");
    let page = admin.list_keys(None, 100).await.expect("list");
    assert!(page.items.iter().any(|k| k.id == created.key.id));

    // Use the quota through the check path, then read and change the usage.
    let client = Client::new(ClientConfig::new([cluster.node(leader).wire_addr()], token));
    for i in 0..3 {
        let d = client.check(request(&created.secret, i)).await.expect("check");
        assert!(d.allowed, "{d:?}");
    }
    assert!(!client.check(request(&created.secret, 3)).await.expect("check").allowed);
    let query = UsageQuery { key_id: Some(created.key.id.clone()), ..Default::default() };
    harness::wait_until("usage reported", || async {
        admin.get_usage("gold", &query).await.is_ok_and(|u| u.items[0].current_period.used == 3)
    })
    .await;
    let after = admin.update_usage("gold", &created.key.id, 2).await.expect("update usage");
    assert_eq!((after.limit, after.remaining), (5, 2));
    // The node the client uses may apply the adjustment a moment after the leader.
    harness::wait_until("the adjustment lets the key in again", || async {
        client.check(request(&created.secret, 4)).await.is_ok_and(|d| d.allowed)
    })
    .await;

    let rerolled = admin.reroll_key(&created.key.id, 0).await.expect("reroll");
    assert_ne!(rerolled.secret, created.secret);
    // The cluster's own errors come back typed, naming the field, not retried elsewhere.
    match admin.update_usage("gold", &created.key.id, 0).await {
        Err(AdminError::Api { status: 400, field: Some(field), .. }) => assert_eq!(field, "delta"),
        other => panic!("expected a 400 naming delta, got {other:?}"),
    }
    assert!(matches!(admin.get_key("nope").await, Err(AdminError::Api { status: 404, .. })));
    assert!(matches!(admin.get_key("../x").await, Err(AdminError::Api { status: 400, .. })));
    admin.delete_key(&created.key.id).await.expect("delete");
    assert!(matches!(admin.get_key(&created.key.id).await, Err(AdminError::Api { status: 404, .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_a_proxy_authenticates_with_its_client_certificate_or_a_token() {
    use tollgate_client::tls::ClientTls;
    // TLS on every listener, certificates from `tollgate certs` (the harness's).
    let cluster = Cluster::start_with(3, harness::Options { tls: true, ..Default::default() }).await;
    let ours = cluster.certs();
    let dir = tempfile::tempdir().expect("dir");
    let rogue = harness::make_certs(&dir.path().join("rogue"));
    let (key, token) = setup(&cluster).await;
    let read = |d: &std::path::Path, name: &str| std::fs::read(d.join(name)).expect("pem");
    let ca = read(&ours, "ca.pem");
    let client_with = |tls: ClientTls, token: &str| {
        let mut config = ClientConfig::new([cluster.node(1).wire_addr()], token);
        config.tls = Some(tls);
        config.deadline = Duration::from_millis(800);
        Client::new(config)
    };

    // A client certificate from the cluster's CA: no token needed.
    let certified =
        ClientTls::new(&ca, Some((&read(&ours, "client.pem"), &read(&ours, "client-key.pem")))).expect("tls");
    let decision = client_with(certified, "").check(request(&key, 1)).await.expect("check with a certificate");
    assert!(decision.allowed, "{decision:?}");
    // No certificate: a token still works, and nothing at all is refused.
    let anonymous = ClientTls::new(&ca, None).expect("tls");
    assert!(client_with(anonymous.clone(), &token).check(request(&key, 2)).await.expect("check with a token").allowed);
    match client_with(anonymous, "").check(request(&key, 3)).await {
        Err(Error::Unavailable(why)) => assert!(why.contains("Unauthorized"), "{why}"),
        other => panic!("no certificate and no token must be refused, got {other:?}"),
    }
    // A certificate from another CA fails the handshake; so does plain TCP.
    let rogue_tls =
        ClientTls::new(&ca, Some((&read(&rogue, "client.pem"), &read(&rogue, "client-key.pem")))).expect("tls");
    assert!(client_with(rogue_tls, "").check(request(&key, 4)).await.is_err(), "a foreign certificate");
    let mut plain = ClientConfig::new([cluster.node(1).wire_addr()], token.clone());
    plain.deadline = Duration::from_millis(800);
    assert!(Client::new(plain).check(request(&key, 5)).await.is_err(), "plain TCP to a TLS listener");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_stops_reading_its_answers_is_let_go() {
    let cluster = Cluster::start(3).await;
    let (key, token) = setup(&cluster).await;
    let port = cluster.node(1).wire_port;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let hello = wire::encode(&ClientMessage::Hello { versions: vec![1], token: token.clone(), client: "raw".into() })
        .expect("encode");
    stream.write_all(&hello).await.expect("hello");
    // Checks, and never a read: the answers fill the socket buffers, the
    // node's write waits, and after its write time-out the node lets go.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(wire::encode_check(i, &request(&key, i as usize)).expect("encode"));
    }
    let writing = async {
        loop {
            if stream.write_all(&batch).await.is_err() {
                return;
            }
        }
    };
    let let_go = tokio::time::timeout(harness::PATIENCE, writing).await;
    assert!(let_go.is_ok(), "the node kept a connection whose proxy reads nothing");
    // Others are served all along.
    let client = Client::new(ClientConfig::new([cluster.node(1).wire_addr()], token));
    assert!(client.check(request(&key, 1)).await.expect("check").allowed);
}

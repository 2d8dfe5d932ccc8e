//! The check endpoints on a real node: malformed requests, key reroll end to end.

mod harness;

use harness::Cluster;
use reqwest::Method;
use serde_json::{json, Value};

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
    // Forward-auth with a non-UTF-8 header value.
    let resp = cluster
        .http
        .get(format!("{}/v1/forward-auth/pets/prod", cluster.url(1)))
        .header("x-api-key", reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").expect("header"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
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

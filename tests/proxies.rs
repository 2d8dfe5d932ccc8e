//! Real proxies in front of a real upstream, asking a three-node cluster:
//! nginx with `auth_request` and Caddy with `forward_auth`, each configured
//! from the example in `deploy/` (only ports substituted; with TLS, the
//! example's commented TLS lines turned on).

use std::path::Path;
use std::process::Command;

use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::harness::{self, free_port, wait_http, Cluster, Process};

/// A backend that verifies the signed identity the gateway sent, against the
/// keys a cluster node publishes, and echoes what it learned.
async fn start_upstream(jwks_url: String, http: reqwest::Client) -> u16 {
    let app = Router::new().fallback(get(move |headers: HeaderMap| {
        let (jwks_url, http) = (jwks_url.clone(), http.clone());
        async move {
            let principal = headers.get("x-tollgate-principal").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let customer = headers.get("x-tollgate-customer-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let principals = headers.get_all("x-tollgate-principal").iter().count();
            let token = headers.get("x-tollgate-identity").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let verified_sub = verify(&http, &jwks_url, &token).await.unwrap_or_else(|e| format!("unverified: {e}"));
            Json(json!({"principal": principal, "principals": principals, "customer": customer, "verified_sub": verified_sub}))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn verify(http: &reqwest::Client, jwks_url: &str, token: &str) -> Result<String, String> {
    let jwks: jsonwebtoken::jwk::JwkSet =
        http.get(jwks_url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
    let kid = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?.kid.unwrap_or_default();
    let jwk = jwks.find(&kid).ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["pets"]);
    validation.set_issuer(&["tollgate"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| e.to_string())?.claims;
    Ok(claims["sub"].as_str().unwrap_or_default().to_string())
}

fn node_ports(cluster: &Cluster) -> Vec<u16> {
    (1..=3).map(|id| cluster.node(id).http_port).collect()
}

fn render(template: &str, cluster: &Cluster, listen: &str, upstream: u16) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(template))
        .unwrap_or_else(|e| panic!("{template}: {e}"));
    // The listen directive exactly (nginx, Caddy), before any port or path
    // is put in that could hold "8080".
    let mut text =
        text.replace("listen 8080;", &format!("listen {listen};")).replace(":8080 {", &format!(":{listen} {{"));
    for (i, port) in node_ports(cluster).iter().enumerate() {
        text = text.replace(&format!("127.0.0.1:{}", 8081 + i), &format!("127.0.0.1:{port}"));
    }
    if cluster.node(1).https {
        // The example's TLS lines, as its comments say to turn them on.
        let ca = cluster.certs().join("ca.pem");
        text = text
            .replace("proxy_pass http://tollgate/", "proxy_pass https://tollgate/")
            .replace("# proxy_ssl_", "proxy_ssl_")
            .replace("# transport http {", "transport http {")
            .replace("# \ttls_trusted_ca_certs", "\ttls_trusted_ca_certs")
            .replace("\t\t\t# }", "\t\t\t}")
            .replace("/etc/tollgate/certs/ca.pem", &ca.display().to_string());
    }
    text.replace("127.0.0.1:3000", &format!("127.0.0.1:{upstream}"))
}

fn start_nginx(cluster: &Cluster, upstream: u16, port: u16, dir: &Path) -> Process {
    let server = render("deploy/nginx/tollgate.conf", cluster, &format!("127.0.0.1:{port}"), upstream);
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).arg("-c").arg(&path);
    Process::spawn("nginx", cmd, &dir.join("nginx.out"))
}

fn start_caddy(cluster: &Cluster, upstream: u16, port: u16, dir: &Path) -> Process {
    let site = render("deploy/caddy/Caddyfile", cluster, &port.to_string(), upstream);
    let conf =
        format!("{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {}\n}}\n{site}", dir.join("data").display());
    let path = dir.join("Caddyfile");
    std::fs::write(&path, conf).expect("Caddyfile");
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir);
    Process::spawn("caddy", cmd, &dir.join("caddy.out"))
}

/// `cors`: whether the proxy can give the client the check's CORS headers and
/// answer preflights from it (nginx can; Caddy's forward_auth copies headers
/// only onto the upstream request).
async fn proxy_protects_the_upstream(start: fn(&Cluster, u16, u16, &Path) -> Process, cors: bool, tls: bool) {
    let cluster = Cluster::start_with(3, harness::Options { tls, ..Default::default() }).await;
    let (key_id, secret) = harness::pets_api(&cluster).await;
    let upstream = start_upstream(format!("{}/.well-known/jwks.json", cluster.url(3)), cluster.http.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _proxy = start(&cluster, upstream, port, dir.path());
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&cluster.http, &format!("{base}/public")).await;
    let get = |path: &str, key: Option<&str>| {
        let mut req = cluster.http.get(format!("{base}{path}"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };

    // An open route passes without a key.
    assert_eq!(get("/public", None).await.expect("request").status().as_u16(), 200);
    // A valid key reaches the upstream, which learns who called.
    let ok = get("/pets/1", Some(&secret)).await.expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    let body: Value = ok.json().await.unwrap_or(Value::Null);
    assert_eq!(body["principal"], format!("key:{key_id}"), "{body}");
    assert_eq!(body["verified_sub"], format!("key:{key_id}"), "the signed identity verifies: {body}");
    // A bad key, and no key, are refused before the upstream.
    let bad = get("/pets/1", Some("tgk_not-a-key")).await.expect("request");
    assert_eq!(bad.status().as_u16(), 403);
    assert_eq!(bad.headers().get("x-tollgate-reason").and_then(|v| v.to_str().ok()), Some("unknown_key"));
    assert_eq!(get("/pets/1", None).await.expect("request").status().as_u16(), 403);
    // No route: 404 from the gateway, not from the upstream.
    assert_eq!(get("/nowhere", Some(&secret)).await.expect("request").status().as_u16(), 404);
    // CORS: an allowed origin gets its header on a normal response...
    let with_origin = cluster
        .http
        .get(format!("{base}/pets/3"))
        .header("x-api-key", &secret)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(with_origin.status().as_u16(), 200);
    // ...and a preflight is answered at the edge, never reaching the upstream.
    if cors {
        let origin = with_origin.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok());
        assert_eq!(origin, Some("https://app.example.com"));
        let preflight = cluster
            .http
            .request(reqwest::Method::OPTIONS, format!("{base}/pets/3"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .send()
            .await
            .expect("request");
        assert_eq!(preflight.status().as_u16(), 204);
        let h = |n: &str| preflight.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(h("access-control-allow-origin").as_deref(), Some("https://app.example.com"));
        assert_eq!(h("access-control-allow-headers").as_deref(), Some("x-api-key"));
        let refused = cluster
            .http
            .request(reqwest::Method::OPTIONS, format!("{base}/pets/3"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .expect("request");
        assert_eq!(refused.status().as_u16(), 403);
        assert!(refused.headers().get("access-control-allow-origin").is_none());
    }
    client_headers_decide_nothing(&cluster, &base, &secret).await;

    // Past the throttle: 429 with Retry-After.
    let mut throttled = 0;
    for _ in 0..15 {
        let resp = get("/pets/2", Some(&secret)).await.expect("request");
        match resp.status().as_u16() {
            200 => {}
            429 => {
                throttled += 1;
                let retry =
                    resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                assert!(retry.is_some_and(|r| r >= 1), "429 without Retry-After: {:?}", resp.headers());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(throttled > 0, "no request was throttled");
}

/// The status of `GET {target}` sent as written, over a raw socket.
async fn raw_get(port: u16, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let head = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(harness::PATIENCE, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an answer: {text}"))
}

/// Every header a client could write to lie about its request, each with the
/// value that would get the request through if it were believed.
const FORGED: &[(&str, &str)] = &[
    ("x-forwarded-method", "GET"),
    ("x-forwarded-uri", "/public"),
    ("x-original-method", "GET"),
    ("x-original-uri", "/public"),
    ("x-original-url", "/public"),
    ("x-rewrite-url", "/public"),
    ("x-http-method-override", "GET"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-real-ip", "203.0.113.9"),
    ("forwarded", "for=203.0.113.9"),
    ("x-envoy-external-address", "203.0.113.9"),
    ("x-forwarded-host", "api.example.com"),
    ("x-forwarded-proto", "https"),
    ("x-tollgate-principal", "key:forged"),
    ("x-tollgate-key-id", "forged"),
    ("x-tollgate-identity", "forged.token.value"),
    ("x-tollgate-customer-id", "victim-corp"),
];

/// Through the proxy, a client that sends every forwarded header itself is
/// decided on the request it really made, from the address it really has;
/// and every status class reaches it with its headers.
async fn client_headers_decide_nothing(cluster: &Cluster, base: &str, secret: &str) {
    let send = |method: reqwest::Method, path: &str, forged: &[(&str, &str)]| {
        let mut req = cluster.http.request(method, format!("{base}{path}"));
        for (name, value) in forged {
            req = req.header(*name, *value);
        }
        req.send()
    };
    let reason = |r: &reqwest::Response| {
        r.headers().get("x-tollgate-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    };
    // A key-protected DELETE dressed up as an open GET, one forgery at a
    // time and all at once: never reaches the upstream.
    for forged in FORGED.iter().map(std::slice::from_ref).chain([FORGED]) {
        let resp = send(reqwest::Method::DELETE, "/admin/users", forged).await.expect("request");
        let status = resp.status().as_u16();
        assert!(matches!(status, 400 | 403), "DELETE /admin/users with {forged:?}: {status} {}", reason(&resp));
    }
    // The address a client claims is never its address.
    let address_forgeries = &FORGED[7..11];
    for forged in address_forgeries.iter().map(std::slice::from_ref).chain([address_forgeries]) {
        let resp = send(reqwest::Method::GET, "/ipzone/x", forged).await.expect("request");
        assert_eq!(
            (resp.status().as_u16(), reason(&resp).as_str()),
            (403, "resource_policy_denied"),
            "GET /ipzone/x with {forged:?}"
        );
    }
    // A client's identity headers never reach the upstream.
    let resp = send(reqwest::Method::GET, "/public", &FORGED[13..]).await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(body["principal"], "", "{body}");
    assert_eq!(body["customer"], "", "{body}");
    // The identity the upstream verifies is the one the check signed (no
    // subject on an open route), not the client's.
    assert_eq!(body["verified_sub"], "", "{body}");
    // A spelling that disagrees with the proxy's is refused: 400, restored
    // through nginx as well.
    let resp = send(reqwest::Method::GET, "/public", &[("x-http-method-override", "DELETE")]).await.expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    // A header value with bytes past ASCII (legal obs-text) is decided, not
    // an error the proxy would turn into a 500.
    let utf8 = reqwest::header::HeaderValue::from_bytes("café".as_bytes()).expect("obs-text");
    let resp = cluster.http.get(format!("{base}/public")).header("x-note", utf8).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    // A request with many headers (more than hyper's default 100) is decided,
    // not answered 431, which nginx turned into a 500. (Caddy hands a 431 on
    // as it is; this test's own upstream still has hyper's limit.)
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    let mut req = cluster.http.get(format!("{base}/public"));
    for (name, value) in &many {
        req = req.header(name, value);
    }
    let status = req.send().await.expect("request").status().as_u16();
    assert_ne!(status, 500, "150 headers");
    // Every spelling of a key-protected path is decided as that path: none
    // reaches the upstream without a key (sent raw: an HTTP client library
    // would resolve the dots itself).
    let port: u16 = base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("proxy port");
    // `/open/*` needs no key; each spelling below, matched as written,
    // would be an open path that the upstream serves as `/pets/1`.
    for spelling in [
        "/open/../pets/1",
        "/open/%2e%2e/pets/1",
        "/open/.%2E/pets/1",
        "/open/%2E./pets/1",
        "/open/x/../../pets/1",
        "/open/..%2fpets/1",
        "/open/%252e%252e/pets/1",
        "/open/..;/pets/1",
    ] {
        let status = raw_get(port, spelling).await;
        assert!(matches!(status, 400 | 403), "{spelling} got {status}");
    }
    assert_eq!(raw_get(port, "/open/x").await, 200, "the open route itself is open");
    // A 401 arrives with its reason (nginx passes 401 on without headers of
    // its own: the config adds them).
    let resp = send(reqwest::Method::GET, "/authz/x", &[]).await.expect("request");
    assert_eq!((resp.status().as_u16(), reason(&resp).as_str()), (401, "missing_token"));
    // A 503 (the authorizer is down) arrives as 503 with Retry-After.
    let resp = send(reqwest::Method::GET, "/authz/x", &[("authorization", "Bearer t")]).await.expect("request");
    assert_eq!(resp.status().as_u16(), 503, "{}", reason(&resp));
    assert!(resp.headers().get("retry-after").is_some(), "503 without Retry-After: {:?}", resp.headers());
    // With a key, the identity headers are the check's alone.
    let resp = send(reqwest::Method::GET, "/pets/8", &[&[("x-api-key", secret)], &FORGED[13..]].concat())
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(body["principal"].as_str().is_some_and(|p| p.starts_with("key:") && p != "key:forged"), "{body}");
    assert_eq!((body["principals"].as_u64(), body["customer"].as_str()), (Some(1), Some("")), "{body}");
    // A query parameter given twice: a rule matching either value sees it.
    for query in ["q=union&q=safe", "q=safe&q=union", "q=safe&q=%75nion"] {
        let resp = send(reqwest::Method::GET, &format!("/public?{query}"), &[]).await.expect("request");
        assert_eq!((resp.status().as_u16(), reason(&resp).as_str()), (403, "waf_blocked"), "{query}");
    }
    // A CORS preflight with a body, for a key-protected DELETE, never reaches
    // the upstream: nginx answers it (204), Caddy is told no (403).
    let preflight = cluster
        .http
        .request(reqwest::Method::OPTIONS, format!("{base}/admin/users"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "DELETE")
        .body("x")
        .send()
        .await
        .expect("request");
    assert!(matches!(preflight.status().as_u16(), 204 | 403), "{}", preflight.status());
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_protects_an_upstream() {
    proxy_protects_the_upstream(start_nginx, true, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_protects_an_upstream_asking_over_tls() {
    proxy_protects_the_upstream(start_nginx, true, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_protects_an_upstream() {
    // Caddy forwards on a 2xx from forward_auth and copies headers onto the
    // upstream request, so CORS stays with Caddy or the upstream (README).
    proxy_protects_the_upstream(start_caddy, false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_protects_an_upstream_asking_over_tls() {
    proxy_protects_the_upstream(start_caddy, false, true).await;
}

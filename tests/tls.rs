//! TLS on real node processes: every listener, mutual TLS between peers, and
//! the node's own outbound HTTPS calls (HTTP authorizers) with a private CA.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tollgate_client::tls::ClientTls;
use tollgate_client::{CheckRequest, Client, ClientConfig};
use tollgate_node::tls::{server_config, ClientAuth, TlsListener};

use crate::harness::{self, make_certs as certs, Cluster, Options, TOKEN};

/// An HTTP authorizer over HTTPS, with the certificate in `certs`, that
/// allows every request.
async fn https_authorizer(certs: &Path) -> String {
    let tls = server_config(&certs.join("node.pem"), &certs.join("node-key.pem"), ClientAuth::None).expect("tls");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://127.0.0.1:{}/authorize", tcp.local_addr().expect("addr").port());
    let listener = TlsListener::new(tcp, tls).expect("listener");
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(|| async { axum::Json(json!({"allow": true, "principal_id": "over-tls"})) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_every_listener_is_encrypted_and_peers_must_show_the_cluster_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = certs(&dir.path().join("upstream"));
    let rogue = certs(&dir.path().join("rogue"));
    let options = Options {
        tls: true,
        extra_args: vec!["--outbound-ca".into(), upstream.join("ca.pem").display().to_string()],
        ..Default::default()
    };
    let cluster = Cluster::start_with(3, options).await;
    let ca = std::fs::read(cluster.certs().join("ca.pem")).expect("ca.pem");

    // The cluster formed over mutual TLS, and a write on a follower is
    // forwarded to the leader and replicated to every node.
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    assert!(cluster.url(follower).starts_with("https://"));
    let api = json!({"id": "shop", "name": "Shop", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/orders/*", "authorizer_id": "trusted"},
                   {"method": "GET", "path": "/rogue/*", "authorizer_id": "untrusted"}]});
    for (id, url) in [("trusted", https_authorizer(&upstream).await), ("untrusted", https_authorizer(&rogue).await)] {
        let authorizer = json!({"id": id, "name": id, "kind": {"http": {"url": url,
            "identity_sources": ["header:authorization"], "cache_ttl_secs": 0, "timeout_ms": 2000}}});
        let (status, body) = cluster.post(follower, "/v1/admin/authorizers", authorizer).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = cluster.post(follower, "/v1/admin/apis", api).await;
    assert_eq!(status, 201, "{body}");
    for node in [1, 2, 3] {
        harness::wait_until("the API replicated", || async {
            cluster.get(node, "/v1/admin/apis/shop?stale=true").await.0 == 200
        })
        .await;
    }

    // Checks over HTTPS; the node calls the authorizer over HTTPS, trusting
    // the CA given with --outbound-ca and no other private one.
    let check = |path: &str| {
        json!({"api": "shop", "stage": "prod", "method": "GET", "path": path,
            "headers": {"authorization": "Bearer anything"}})
    };
    let (status, decision) = cluster.post(follower, "/v1/check", check("/orders/1")).await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["reason"], "allowed", "{decision}");
    assert_eq!(decision["principal"]["id"], "over-tls", "{decision}");
    let (_, decision) = cluster.post(follower, "/v1/check", check("/rogue/1")).await;
    assert_eq!(decision["reason"], "authorizer_error", "a certificate from an untrusted CA: {decision}");

    // Plain HTTP to the HTTP port gets no answer.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let http_port = cluster.node(follower).http_port;
    assert!(plain.get(format!("http://127.0.0.1:{http_port}/readyz")).send().await.is_err());

    // The peer port: without a client certificate, or with one another CA
    // signed, the TLS handshake is refused before any route is reached.
    let peer_url = format!("https://127.0.0.1:{}/raft/vote", cluster.node(leader).peer_port);
    let ca_cert = reqwest::Certificate::from_pem(&ca).expect("ca");
    let peer_client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder().add_root_certificate(ca_cert.clone()).timeout(Duration::from_secs(5));
        if let Some(identity) = identity {
            b = b.identity(identity);
        }
        b.build().expect("client")
    };
    let identity = |certs: &Path| {
        let mut pem = std::fs::read(certs.join("node.pem")).expect("cert");
        pem.extend(std::fs::read(certs.join("node-key.pem")).expect("key"));
        reqwest::Identity::from_pem(&pem).expect("identity")
    };
    for (what, client) in [("no", peer_client(None)), ("another CA's", peer_client(Some(identity(&rogue))))] {
        let answer = client.post(&peer_url).body(Vec::new()).send().await;
        assert!(answer.is_err(), "peer port with {what} certificate answered: {answer:?}");
    }
    // The cluster's own certificate gets through TLS (the route then wants
    // the peer's request, which this is not).
    let answer = peer_client(Some(identity(&cluster.certs()))).post(&peer_url).body(Vec::new()).send().await;
    let status = answer.map(|r| r.status().as_u16()).map_err(|e| e.to_string());
    assert_eq!(status, Ok(401), "a node certificate reaches the peer route, which then asks for the cluster token");

    // The CLI and the admin client trust the cluster's CA when told to.
    let cli = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["--url", &cluster.url(follower), "--token", TOKEN]);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.args(["cluster", "status"]).env_remove("TOLLGATE_CA").output().expect("tollgate cluster status")
    };
    let out = cli(Some(&cluster.certs().join("ca.pem")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader"));
    assert!(!cli(None).status.success(), "without --ca the CLI must not trust the private CA");
    let admin = tollgate_client::admin::AdminClient::new([cluster.url(follower)], TOKEN)
        .and_then(|a| a.trusting(&ca))
        .expect("admin client");
    let plan = tollgate_client::admin::AdminClient::new([cluster.url(follower)], TOKEN).expect("admin client");
    assert!(admin
        .get_plan("nope")
        .await
        .is_err_and(|e| matches!(e, tollgate_client::admin::AdminError::Api { status: 404, .. })));
    assert!(matches!(plan.get_plan("nope").await, Err(tollgate_client::admin::AdminError::Unavailable(_))));

    // The wire port is TLS too: plain TCP gets nowhere, a proxy with its
    // certificate checks there.
    let mut plain = ClientConfig::new([cluster.node(follower).wire_addr()], TOKEN);
    plain.deadline = Duration::from_millis(800);
    assert!(Client::new(plain).check(CheckRequest::default()).await.is_err(), "plain TCP on the wire port");
    let read = |name: &str| std::fs::read(cluster.certs().join(name)).expect("pem");
    let mut config = ClientConfig::new([cluster.node(follower).wire_addr()], "");
    config.tls = Some(ClientTls::new(&ca, Some((&read("client.pem"), &read("client-key.pem")))).expect("tls"));
    let decision = Client::new(config)
        .check(CheckRequest {
            api: "shop".into(),
            stage: "prod".into(),
            method: "GET".into(),
            path: "/orders/2".into(),
            headers: [("authorization".to_string(), "Bearer anything".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("check over the TLS wire port");
    assert!(decision.allowed, "{decision:?}");
}

/// The cluster CA also signs proxies' certificates, so a certificate alone
/// cannot tell a peer: a node with one and no cluster token refuses to start.
#[test]
fn a_cluster_ca_without_a_cluster_token_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let certs = certs(&dir.path().join("certs"));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "serve",
            "--id",
            "1",
            "--init",
            "true",
            "--http",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
            "--wire",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(certs.join("node.pem"))
        .arg("--tls-key")
        .arg(certs.join("node-key.pem"))
        .arg("--tls-client-ca")
        .arg(certs.join("ca.pem"))
        .env_remove("TOLLGATE_CLUSTER_TOKEN")
        .output()
        .expect("tollgate serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_client_ca") && stderr.contains("TOLLGATE_CLUSTER_TOKEN"), "{stderr}");
}

/// `tollgate dev`, stopped with SIGTERM (as Ctrl-C) so it stops its nodes,
/// also when the test fails or its process dies.
pub(crate) struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Nine ports P..P+2, P+1000.., P+2000.. below the harness's range (20000
/// and up) and above `tollgate dev`'s default, free now.
pub(crate) fn dev_base_port() -> u16 {
    // Tests run at once: no two calls in this process get overlapping ports.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let start = 10_200 + (std::process::id() % 3_000) as u16;
    let base = (start..16_900)
        .find(|p| {
            given.iter().all(|g| p.abs_diff(*g) > 2)
                && [0, 1, 2, 1000, 1001, 1002, 2000, 2001, 2002, 3000, 3001, 3002]
                    .iter()
                    .all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
        })
        .expect("free ports for tollgate dev");
    given.push(base);
    base
}

/// `tollgate dev` with `extra` flags, its data in DIR/dev, its output in
/// DIR/dev.out and DIR/dev.err; returned once it says it is up, with its base port.
pub(crate) async fn start_dev(dir: &std::path::Path, extra: &[&str]) -> (Dev, u16) {
    use std::os::unix::process::CommandExt;
    let out = dir.join("dev.out");
    let base = dev_base_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("dev")
        .args(extra)
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.join("dev"))
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(dir.join("dev.err")).expect("err"));
    // SAFETY: prctl is async-signal-safe; SIGTERM lets dev stop its nodes.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let dev = Dev(cmd.spawn().expect("tollgate dev"));
    harness::wait_until("tollgate dev is up", || async {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("Ctrl-C stops"))
    })
    .await;
    (dev, base)
}

#[tokio::test(flavor = "multi_thread")]
async fn tollgate_dev_with_tls_starts_a_tls_cluster_the_cli_can_talk_to() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("dev.out");
    let (_dev, _) = start_dev(dir.path(), &["--tls"]).await;
    let printed = std::fs::read_to_string(&out).expect("out");
    let export = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("export {name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in: {printed}"))
    };
    let (url, token, ca) = (export("TOLLGATE_URL"), export("TOLLGATE_ADMIN_TOKEN"), export("TOLLGATE_CA"));
    assert!(url.starts_with("https://"), "{url}");
    // What it printed is what a newcomer sets: the CLI talks to the cluster.
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["cluster", "status"])
        .env("TOLLGATE_URL", &url)
        .env("TOLLGATE_ADMIN_TOKEN", &token)
        .env("TOLLGATE_CA", &ca)
        .output()
        .expect("tollgate cluster status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stdout).contains("leader_id"));
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    assert!(plain.get(url.replace("https://", "http://") + "/readyz").send().await.is_err(), "plain HTTP answered");
}

/// `tollgate dev` starts a node again after it dies (kill -9), and the node's
/// configuration is in its data dir.
#[tokio::test(flavor = "multi_thread")]
async fn tollgate_dev_starts_a_killed_node_again() {
    let dir = tempfile::tempdir().expect("dir");
    let err = dir.path().join("dev.err");
    let (_dev, base) = start_dev(dir.path(), &[]).await;
    let config = dir.path().join("dev/node2/tollgate.toml");
    let text = std::fs::read_to_string(&config).expect("node 2's configuration");
    assert!(text.contains("id = 2") && text.contains("peers = "), "{text}");
    assert!(!text.contains("tga_") && !text.contains("tgc_"), "no secret in the file: {text}");

    let killed = Command::new("pkill").args(["-9", "-f"]).arg(config.display().to_string()).status().expect("pkill");
    assert!(killed.success(), "node 2 was not running");
    harness::wait_until("dev says it restarts node 2", || async {
        std::fs::read_to_string(&err).is_ok_and(|t| t.contains("node 2 exited") && t.contains("node 2 started again"))
    })
    .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let ready = format!("http://127.0.0.1:{}/readyz", base + 1);
    harness::wait_until("node 2 is ready again", || async {
        http.get(&ready).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// However `tollgate dev` is told to stop — Ctrl-C (SIGINT), SIGTERM, or its
/// terminal closing (SIGHUP) — it stops its three nodes: none is left running.
#[tokio::test(flavor = "multi_thread")]
async fn tollgate_dev_stops_its_nodes_on_every_stop_signal() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let mut devs = Vec::new();
    for dir in &dirs {
        devs.push(start_dev(dir.path(), &[]).await.0);
    }
    for ((dev, signal), dir) in devs.iter_mut().zip(signals).zip(&dirs) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(dev.0.id() as libc::pid_t, signal);
        }
        let status = dev.0.wait().expect("dev exits");
        assert!(status.code().is_some(), "signal {signal}: dev died of it instead of stopping its nodes: {status}");
        let data = dir.path().join("dev").display().to_string();
        let left = Command::new("pgrep").args(["-f", &data]).output().expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "signal {signal}: nodes left running: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}

/// One client's idle sockets cannot hold every TLS handshake slot: past
/// `MAX_HANDSHAKES_PER_ADDRESS` handshakes under way from one address, a new
/// connection from it is closed at once, and clients at other addresses get
/// their handshakes done meanwhile. (Found by a hostile run: 520 idle
/// sockets kept every new TLS connection waiting, over and over.)
#[tokio::test(flavor = "multi_thread")]
async fn idle_sockets_from_one_address_cannot_hold_every_tls_handshake() {
    let cluster = Cluster::start_with(1, Options { tls: true, ..Default::default() }).await;
    let port = cluster.node(1).http_port;
    let mut idle = Vec::new();
    for _ in 0..tollgate_node::tls::MAX_HANDSHAKES_PER_ADDRESS {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect"));
    }
    let ca = std::fs::read(cluster.certs().join("ca.pem")).expect("ca.pem");
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
            .local_address(std::net::IpAddr::from(address))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    };
    let url = format!("https://127.0.0.1:{port}/readyz");
    // From the same address, a new connection is closed before its handshake.
    let refused = from([127, 0, 0, 1]).get(&url).send().await;
    assert!(refused.is_err(), "a 17th handshake from one address was served: {refused:?}");
    // Another address (all of 127/8 is loopback) is served meanwhile.
    let ready = from([127, 0, 0, 2]).get(&url).send().await.expect("served over TLS");
    assert_eq!(ready.status().as_u16(), 200);
    drop(idle);
    harness::wait_until("this address is served again", || async { cluster.get(1, "/readyz").await.0 == 200 }).await;
}

//! No spelling of a request gets a different decision from its canonical form
//! (`tollgate_proto::canonical`): tables of the known tricks, and properties
//! over random spellings, all through the real [`Gateway`].

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::*;
use tollgate_proto::canonical;

const CLIENT: &str = "192.0.2.10";

/// `/public/*` open, `/admin/*` behind a key, `GET /*` open; a WAF rule on the
/// path `^/internal` and an IP set on 203.0.113.0/24; a resource policy that
/// allows everyone but denies 198.51.100.0/24 and the resources under `private`.
/// No throttle or quota: a decision depends on the request alone, so two
/// spellings can be compared one after the other.
fn site() -> Fixture {
    Fixture::new()
        .with(Entity::Api(entity(json!({"id": "site", "name": "Site", "stages": [{"name": "prod"}],
        "routes": [
            {"method": "*", "path": "/public/*"},
            {"method": "*", "path": "/admin/*", "api_key_required": true},
            {"method": "GET", "path": "/*"}
        ],
        "waf": [
            {"name": "no-internal", "condition": {"path_matches": "^/internal(/|$)"}},
            {"name": "bad-net", "condition": {"ip_set": ["203.0.113.0/24"]}}
        ]}))))
        .with(Entity::Plan(entity(json!({"id": "basic", "name": "Basic",
            "api_stages": [{"api_id": "site", "stage": "prod"}]}))))
        .with(key("carol", "tgk_carol", &["basic"], json!({})))
        .with(policy(
            "site-edge",
            Some("site"),
            json!([
                {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"]},
                {"effect": "Deny", "principals": ["*"], "actions": ["*"], "resources": ["*"],
                 "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["198.51.100.0/24"]}]},
                {"effect": "Deny", "principals": ["*"], "actions": ["invoke"],
                 "resources": ["site/*/*/private", "site/*/*/private/*"]}
            ]),
        ))
}

fn site_request(path: &str, source_ip: &str, with_key: bool) -> CheckRequest {
    let mut headers = BTreeMap::new();
    if with_key {
        headers.insert("x-api-key".to_string(), "tgk_carol".to_string());
    }
    CheckRequest {
        api: "site".into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: path.into(),
        source_ip: Some(source_ip.into()),
        headers,
        ..Default::default()
    }
}

/// The decision, or the field a refusal names.
async fn outcome(g: &Gateway, req: &CheckRequest) -> Result<Decision, String> {
    g.check(req).await.map_err(|e| e.field)
}

#[tokio::test]
async fn every_spelling_of_a_path_gets_the_decision_of_its_canonical_form() {
    use ReasonCode::*;
    let g = site().gateway();
    let refused = Err("path");
    let cases: &[(&str, Result<ReasonCode, &str>)] = &[
        ("/admin/users", Ok(MissingKey)),
        ("/public/../admin/users", Ok(MissingKey)),
        ("/public/%2e%2e/admin/users", Ok(MissingKey)),
        ("/public/%2E%2E/admin/users", Ok(MissingKey)),
        ("/public/.%2E/admin/users", Ok(MissingKey)),
        ("/public//../admin/users", Err("path")),
        ("/public/x/../../admin/users", Ok(MissingKey)),
        ("/%61dmin/users", Ok(MissingKey)),
        // `A` is not `a`: paths are case-sensitive, and /Admin/users is the open `GET /*`.
        ("/%41dmin/users", Ok(Allowed)),
        ("/admin/./users", Ok(MissingKey)),
        ("/admin/%2e/users", Ok(MissingKey)),
        ("//admin/users", Ok(MissingKey)),
        ("/admin//users", Ok(MissingKey)),
        ("/pub%6cic/x", Ok(Allowed)),
        ("/pub%6Cic/x", Ok(Allowed)),
        ("/public/caf%c3%a9", Ok(Allowed)),
        ("/public/café", Ok(Allowed)),
        ("/%69nternal/x", Ok(WafBlocked)),
        ("/public/../internal", Ok(WafBlocked)),
        ("/public/../private/x", Ok(ResourcePolicyDenied)),
        ("/pr%69vate", Ok(ResourcePolicyDenied)),
        ("/%2e%2e/admin", refused),
        ("/..", refused),
        ("/public/../../admin/users", refused),
        ("/admin%2fusers", refused),
        ("/admin%2Fusers", refused),
        ("/public%2f..%2fadmin/users", refused),
        ("/admin\\users", refused),
        ("/public\\..\\admin\\users", refused),
        ("/admin%5cusers", refused),
        ("/a/%00", refused),
        ("/a/\0", refused),
        ("/a/%zz", refused),
        ("/a/%", refused),
        ("/admin;x=y/users", refused),
        ("/public;/../admin/users", refused),
        ("/admin/users?debug=1", refused),
        ("/%252e%252e/admin", refused),
        ("admin/users", refused),
    ];
    for (path, expected) in cases {
        let req = site_request(path, CLIENT, false);
        let got = outcome(&g, &req).await;
        assert_eq!(got.as_ref().map(|d| d.reason).map_err(String::as_str), *expected, "path {path:?}");
        if let Ok(canonical) = canonical::path(path) {
            let canonical_req = site_request(&canonical, CLIENT, false);
            assert_eq!(got, outcome(&g, &canonical_req).await, "{path:?} against its canonical form {canonical:?}");
        }
    }
    // The refusal names the path and says why.
    let err = g.check(&site_request("/admin%2fusers", CLIENT, false)).await.expect_err("refused");
    assert_eq!(err.field, "path");
    assert!(err.message.contains("%2F"), "{}", err.message);
}

#[tokio::test]
async fn every_spelling_of_an_address_gets_the_decision_of_its_canonical_form() {
    use ReasonCode::*;
    let g = site().gateway();
    let cases: &[(&str, Result<ReasonCode, &str>)] = &[
        ("198.51.100.7", Ok(ResourcePolicyDenied)),
        ("::ffff:198.51.100.7", Ok(ResourcePolicyDenied)),
        ("::FFFF:c633:6407", Ok(ResourcePolicyDenied)),
        (" 0:0:0:0:0:ffff:198.51.100.7 ", Ok(ResourcePolicyDenied)),
        ("203.0.113.9", Ok(WafBlocked)),
        ("::ffff:203.0.113.9", Ok(WafBlocked)),
        ("192.0.2.10", Ok(Allowed)),
        ("::ffff:192.0.2.10", Ok(Allowed)),
        ("64:ff9b::198.51.100.7", Ok(Allowed)),
        ("::198.51.100.7", Err("source_ip")),
        ("fe80::1%eth0", Err("source_ip")),
        ("198.51.100.7:443", Err("source_ip")),
        ("3325256711", Err("source_ip")),
    ];
    for (ip, expected) in cases {
        let got = outcome(&g, &site_request("/public/x", ip, false)).await;
        assert_eq!(got.as_ref().map(|d| d.reason).map_err(String::as_str), *expected, "source_ip {ip:?}");
    }
}

#[tokio::test]
async fn a_method_override_and_a_per_ip_rule_count_every_spelling_as_one() {
    // The override on GET /admin/reports/* allows one request: the second,
    // spelled otherwise, is the same bucket.
    let g = site()
        .with(Entity::Plan(entity(json!({"id": "basic", "name": "Basic",
            "api_stages": [{"api_id": "site", "stage": "prod",
                "method_throttles": [{"method": "GET", "path": "/admin/reports/*",
                                      "throttle": {"rate_per_sec": 0.001, "burst": 1}}]}]}))))
        .gateway();
    let first = decide(&g, &site_request("/admin/reports/1", CLIENT, true)).await;
    assert_eq!(first.reason, ReasonCode::Allowed, "{}", first.message);
    let again = decide(&g, &site_request("/admin/x/../%72eports/2", CLIENT, true)).await;
    assert_eq!(again.reason, ReasonCode::Throttled, "{}", again.message);

    // A per-address WAF rate: the IPv4 and the IPv4-mapped spellings share a count.
    let api = Entity::Api(entity(json!({"id": "site", "name": "Site", "stages": [{"name": "prod"}],
        "waf": [{"name": "per-ip", "condition": {"rate_per_ip": {"limit": 2, "window_secs": 60}}}]})));
    let g = site().with(api).gateway();
    let from = |ip: &str| site_request("/anything", ip, false);
    assert_eq!(reason(&g, &from("198.18.0.1")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &from("::ffff:198.18.0.1")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &from("::ffff:c612:1")).await, ReasonCode::WafRateLimited);
    assert_eq!(reason(&g, &from("198.18.0.2")).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn rules_written_with_mapped_addresses_match_the_ipv4_client() {
    let api = Entity::Api(entity(json!({"id": "site", "name": "Site", "stages": [{"name": "prod"}],
        "waf": [{"name": "mapped-set", "condition": {"ip_set": ["::ffff:203.0.113.0/120"]}}]})));
    let g = site().with(api).gateway();
    assert_eq!(reason(&g, &site_request("/x", "203.0.113.9", false)).await, ReasonCode::WafBlocked);
    assert_eq!(reason(&g, &site_request("/x", "::ffff:203.0.113.9", false)).await, ReasonCode::WafBlocked);
    assert_eq!(reason(&g, &site_request("/x", "203.0.114.9", false)).await, ReasonCode::Allowed);
}

/// A custom authorizer in request mode that keeps the last body it was sent.
async fn start_recording_authorizer() -> (String, Arc<Mutex<Option<serde_json::Value>>>) {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let record = record.clone();
            async move {
                if let Ok(mut last) = record.lock() {
                    *last = Some(body);
                }
                axum::Json(json!({"allow": true, "principal_id": "u"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn an_http_authorizer_is_asked_about_the_canonical_path_and_address() {
    let (url, seen) = start_recording_authorizer().await;
    let authorizer = Entity::Authorizer(entity(json!({"id": "lambda", "name": "lambda", "kind": {"http": {
        "url": url, "mode": "request", "identity_sources": ["header:authorization"], "cache_ttl_secs": 0}}})));
    let g = Fixture::new().with(authorizer).with(shop_api("lambda")).gateway();
    let mut req = bearer("GET", "/x/../%6Frders/1", None);
    req.headers.insert("authorization".into(), "t".into());
    req.source_ip = Some("::ffff:198.51.100.7".into());
    let d = decide(&g, &req).await;
    assert_eq!(d.reason, ReasonCode::Allowed, "{}", d.message);
    let body = seen.lock().ok().and_then(|b| b.clone()).expect("the authorizer was called");
    assert_eq!(body["path"], "/orders/1");
    assert_eq!(body["source_ip"], "198.51.100.7");
    assert_eq!(body["method_arn"], "shop/prod/GET/orders/1");
}

// ---------------------------------------------------------------------------
// Properties

/// `text` spelled character by character: as is, or each UTF-8 octet
/// percent-encoded with lower- or upper-case hex.
fn spelled(text: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(0..3u8, text.chars().count()).prop_map(move |choices| {
        let mut out = String::new();
        for (c, choice) in text.chars().zip(choices) {
            if choice == 0 {
                out.push(c);
                continue;
            }
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&if choice == 1 { format!("%{b:02x}") } else { format!("%{b:02X}") });
            }
        }
        out
    })
}

/// One path segment: a word the routes, rules and policy care about, a dot
/// segment or an empty one, each in a random spelling; now and then a form
/// that must be refused.
fn segment() -> impl Strategy<Value = String> {
    // Repeats make the words that change a decision, and dot segments, likelier.
    let word = prop::sample::select(vec![
        "public", "public", "admin", "admin", "admin", "users", "internal", "private", "x", "1", ".", "..", "..", "..",
        "", "é", "a b", "~me",
    ])
    .prop_flat_map(spelled);
    let refused = prop::sample::select(vec!["%2f", "%2F", "\\", "%5c", ";v=1", "%00", "%zz", "%", "?q=1", "%252e"])
        .prop_map(str::to_string);
    prop_oneof![12 => word, 1 => refused]
}

/// A path: segments joined by `/` or `//`, maybe with a trailing `/`.
fn spelled_path() -> impl Strategy<Value = String> {
    (proptest::collection::vec((segment(), prop::bool::weighted(0.15)), 0..6), any::<bool>()).prop_map(
        |(segments, trailing)| {
            let mut path = String::new();
            for (segment, doubled) in segments {
                path.push_str(if doubled { "//" } else { "/" });
                path.push_str(&segment);
            }
            if trailing || path.is_empty() {
                path.push('/');
            }
            path
        },
    )
}

/// Runs `property` for each case of `strategy` on one runtime; panics with
/// the smallest failing case.
fn check_property<S: Strategy>(cases: u32, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{failure}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn no_spelling_of_a_path_gets_another_decision_than_its_canonical_form() {
    let rt = runtime();
    let g = site().gateway();
    check_property(2000, (spelled_path(), any::<bool>()), |(path, with_key)| {
        let got = rt.block_on(outcome(&g, &site_request(&path, CLIENT, with_key)));
        match canonical::path(&path) {
            Err(_) => {
                let refused = got.err();
                prop_assert_eq!(refused.as_deref(), Some("path"), "{:?} must be refused", path);
            }
            Ok(canonical) => {
                let again = canonical::path(&canonical);
                prop_assert_eq!(again.as_ref(), Ok(&canonical), "idempotent");
                let of_canonical = rt.block_on(outcome(&g, &site_request(&canonical, CLIENT, with_key)));
                prop_assert!(of_canonical.is_ok(), "the canonical form {:?} is accepted", canonical);
                prop_assert_eq!(got, of_canonical, "{:?} and its canonical form {:?}", path, canonical);
            }
        }
        Ok(())
    });
}

#[test]
fn no_spelling_of_an_ipv4_address_gets_another_decision_than_the_address() {
    let rt = runtime();
    let g = site().gateway();
    // Inside the denied /24, inside the WAF's IP set, or anywhere.
    let ipv4 = prop_oneof![
        any::<u8>().prop_map(|d| [198, 51, 100, d]),
        any::<u8>().prop_map(|d| [203, 0, 113, d]),
        any::<[u8; 4]>(),
    ];
    let spelling = 0..5u8;
    check_property(1000, (ipv4, spelling, spelled_path()), |(ip, spelling, path)| {
        let [a, b, c, d] = ip;
        let plain = format!("{a}.{b}.{c}.{d}");
        let (high, low) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        let spelled = match spelling {
            0 => format!("::ffff:{plain}"),
            1 => format!("::FFFF:{plain}"),
            2 => format!("::ffff:{high:x}:{low:X}"),
            3 => format!("0:0:0:0:0:ffff:{plain}"),
            _ => format!("  {plain}\t"),
        };
        let expected = rt.block_on(outcome(&g, &site_request(&path, &plain, false)));
        let got = rt.block_on(outcome(&g, &site_request(&path, &spelled, false)));
        prop_assert_eq!(got, expected, "{} and {}", spelled, plain);
        Ok(())
    });
}

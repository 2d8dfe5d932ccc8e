//! One focused test per mechanism and reason code of the check pipeline,
//! against an in-memory model and a clock moved by hand.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::json;
use tollgate_proto::check::{CheckRequest, Decision, ReasonCode};
use tollgate_proto::model::*;

use super::Gateway;
use crate::clock::ManualClock;
use crate::secret::sha256;
use crate::state::published::{LimitsEpochs, Published};
use crate::state::Model;

mod canonical;
mod ratelimit;

/// Wednesday 2026-11-25 12:00:00 UTC.
const NOW_MS: i64 = 1_795_608_000_000;

fn entity<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn key(id: &str, secret: &str, plans: &[&str], extra: serde_json::Value) -> Entity {
    let mut spec = json!({"name": id, "plan_ids": plans});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let spec: ApiKeySpec = entity(spec);
    let digest = SecretDigest { prefix: secret[..6].to_string(), sha256: sha256(secret) };
    Entity::Key(ApiKey::from_spec(id.into(), spec, digest, Timestamp(0)))
}

struct Fixture {
    model: Model,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Self {
        let mut model = Model::default();
        model.load(Entity::Api(entity(json!({
            "id": "pets", "name": "Pets",
            "stages": [{"name": "prod"}, {"name": "beta", "throttle": {"rate_per_sec": 1.0, "burst": 2}}],
            "routes": [
                {"method": "GET", "path": "/pets/*", "api_key_required": true},
                {"method": "DELETE", "path": "/pets/*", "api_key_required": true},
                {"method": "GET", "path": "/public"}
            ],
            "cors": {"allow_origins": ["https://app.example.com", "https://*.partner.example"],
                     "allow_methods": ["GET", "DELETE"], "allow_headers": ["x-api-key"], "max_age_secs": 300}
        }))));
        model.load(Entity::Plan(entity(json!({
            "id": "gold", "name": "Gold",
            "throttle": {"rate_per_sec": 10.0, "burst": 5},
            "quota": {"limit": 100, "period": "week", "offset": 1},
            "api_stages": [{"api_id": "pets", "stage": "prod",
                            "method_throttles": [{"method": "DELETE", "path": "/pets/*", "throttle": {"rate_per_sec": 1.0, "burst": 1}}]},
                           {"api_id": "pets", "stage": "beta"}]
        }))));
        model.load(Entity::Plan(entity(json!({"id": "other", "name": "Other", "api_stages": []}))));
        model.load(key("alice", "tgk_alice", &["gold"], json!({"customer_id": "acme", "tags": {"team": "mobile"}})));
        model.load(key("bob", "tgk_bob", &["gold"], json!({"tags": {"team": "web"}})));
        model.load(key("off", "tgk_off", &["gold"], json!({"enabled": false})));
        model.load(key("old", "tgk_old", &["gold"], json!({"expires_at": "2026-01-01T00:00:00Z"})));
        model.load(key("stray", "tgk_stray", &["other"], json!({})));
        Fixture { model, clock: Arc::new(ManualClock::at(NOW_MS)) }
    }

    fn with(mut self, e: Entity) -> Self {
        self.model.load(e);
        self
    }

    fn gateway(&self) -> Gateway {
        let published = Published { model: self.model.clone(), applied: None, limits: Default::default() };
        Gateway::new(Arc::new(ArcSwap::from_pointee(published)), self.clock.clone())
    }
}

fn request(method: &str, path: &str, api_key: Option<&str>) -> CheckRequest {
    let mut headers = BTreeMap::new();
    if let Some(k) = api_key {
        headers.insert("X-Api-Key".to_string(), k.to_string());
    }
    CheckRequest {
        api: "pets".into(),
        stage: "prod".into(),
        method: method.into(),
        path: path.into(),
        source_ip: Some("10.1.2.3".into()),
        headers,
        ..Default::default()
    }
}

async fn decide(g: &Gateway, req: &CheckRequest) -> Decision {
    g.check(req).await.unwrap_or_else(|e| panic!("check refused: {e}"))
}

async fn reason(g: &Gateway, req: &CheckRequest) -> ReasonCode {
    decide(g, req).await.reason
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.response_headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn unknown_api_stage_and_route_are_404_decisions() {
    let g = Fixture::new().gateway();
    let mut req = request("GET", "/pets/1", Some("tgk_alice"));
    req.api = "nope".into();
    assert_eq!(decide(&g, &req).await.status, 404);
    assert_eq!(reason(&g, &req).await, ReasonCode::UnknownApi);
    req.api = "pets".into();
    req.stage = "nope".into();
    assert_eq!(reason(&g, &req).await, ReasonCode::UnknownStage);
    assert_eq!(reason(&g, &request("POST", "/pets/1", Some("tgk_alice"))).await, ReasonCode::NoRoute);
    assert_eq!(reason(&g, &request("GET", "/public", None)).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn api_keys_each_failure_has_its_own_reason() {
    let g = Fixture::new().gateway();
    let cases = [
        (None, ReasonCode::MissingKey),
        (Some("tgk_nobody"), ReasonCode::UnknownKey),
        (Some("tgk_off"), ReasonCode::DisabledKey),
        (Some("tgk_old"), ReasonCode::ExpiredKey),
        (Some("tgk_stray"), ReasonCode::KeyNotInPlan),
        (Some("tgk_alice"), ReasonCode::Allowed),
    ];
    for (k, expected) in cases {
        let d = decide(&g, &request("GET", "/pets/1", k)).await;
        assert_eq!(d.reason, expected, "key {k:?}");
        assert_eq!(d.status, if expected == ReasonCode::Allowed { 200 } else { 403 }, "key {k:?}");
    }
    // The key may also come from the query parameter the API names.
    let f = Fixture::new();
    let mut api = match f.model.get(EntityKind::Api, "pets") {
        Some(Entity::Api(a)) => a.clone(),
        _ => panic!("fixture api"),
    };
    api.key_source.query_param = Some("api_key".into());
    let g = f.with(Entity::Api(api)).gateway();
    let mut req = request("GET", "/pets/1", None);
    req.query.insert("api_key".into(), "tgk_bob".into());
    let d = decide(&g, &req).await;
    assert_eq!((d.reason, d.principal.map(|p| p.id)), (ReasonCode::Allowed, Some("key:bob".to_string())));
}

#[tokio::test]
async fn an_allowed_request_names_its_principal_plan_and_limits() {
    let g = Fixture::new().gateway();
    let d = decide(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await;
    assert!(d.allowed);
    let p = d.principal.clone().expect("principal");
    assert_eq!(
        (p.key_id.as_deref(), p.plan_id.as_deref(), p.customer_id.as_deref()),
        (Some("alice"), Some("gold"), Some("acme"))
    );
    assert_eq!(d.context.get("tag.team").map(String::as_str), Some("mobile"));
    // The tightest limit: the throttle (burst 5) has fewer left than the quota (100).
    assert_eq!(header(&d, "ratelimit-limit"), Some("5"));
    assert_eq!(header(&d, "ratelimit-remaining"), Some("4"));
}

#[tokio::test]
async fn a_rerolled_key_works_with_its_old_secret_only_inside_the_overlap_window() {
    let f = Fixture::new();
    let Some(Entity::Key(mut k)) = f.model.get(EntityKind::Key, "alice").cloned() else { panic!("alice") };
    k.previous_secret = Some(PreviousSecret { secret: k.secret.clone(), valid_until: Timestamp(NOW_MS / 1000 + 60) });
    k.secret = SecretDigest { prefix: "tgk_al".into(), sha256: sha256("tgk_alice_new") };
    let f = f.with(Entity::Key(k.clone()));
    let mut m = f.model.clone();
    // The digest index must know both secrets (as the state machine keeps it).
    m.load(Entity::Key(k));
    let g = Fixture { model: m, clock: f.clock.clone() }.gateway();
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice_new"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await, ReasonCode::Allowed);
    f.clock.advance_ms(60_000);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await, ReasonCode::UnknownKey);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice_new"))).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn throttle_gives_the_burst_then_the_steady_rate_with_retry_after() {
    let f = Fixture::new();
    let g = f.gateway();
    let req = request("GET", "/pets/1", Some("tgk_alice"));
    for _ in 0..5 {
        assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    }
    let d = decide(&g, &req).await;
    assert_eq!((d.reason, d.status), (ReasonCode::Throttled, 429));
    assert_eq!(header(&d, "retry-after"), Some("1"));
    f.clock.advance_ms(100); // 10/s
    assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &req).await, ReasonCode::Throttled);
    // Another key has its own bucket.
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_bob"))).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn a_request_denied_by_one_limit_is_charged_to_none() {
    // Throttle 1/s with burst 1, and a quota of 3.
    let f = Fixture::new().with(Entity::Plan(entity(json!({
        "id": "gold", "name": "Gold",
        "throttle": {"rate_per_sec": 1.0, "burst": 1},
        "quota": {"limit": 3, "period": "week", "offset": 1},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]
    }))));
    let g = f.gateway();
    let req = request("GET", "/pets/1", Some("tgk_alice"));
    assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &req).await, ReasonCode::Throttled);
    // The throttled request used no quota: two more seconds, two more requests.
    for _ in 0..2 {
        f.clock.advance_ms(1000);
        assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    }
    f.clock.advance_ms(1000);
    let d = decide(&g, &req).await;
    assert_eq!((d.reason, header(&d, "ratelimit-remaining")), (ReasonCode::QuotaExceeded, Some("0")));
    // The quota denial took no token: with the quota raised, the token is there.
    let raised: UsagePlan = entity(json!({
        "id": "gold", "name": "Gold", "throttle": {"rate_per_sec": 1.0, "burst": 1},
        "quota": {"limit": 4, "period": "week", "offset": 1},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]
    }));
    let mut model = f.model.clone();
    model.load(Entity::Plan(raised));
    let mut limits = LimitsEpochs::default();
    limits.bump(Some("gold"));
    g.model.store(Arc::new(Published { model, applied: None, limits }));
    assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn a_method_override_and_a_stage_limit_apply_on_their_own() {
    let f = Fixture::new();
    let g = f.gateway();
    // DELETE /pets/* is limited to burst 1 for the key, GET is not affected.
    assert_eq!(reason(&g, &request("DELETE", "/pets/1", Some("tgk_alice"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("DELETE", "/pets/2", Some("tgk_alice"))).await, ReasonCode::Throttled);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await, ReasonCode::Allowed);
    // The beta stage allows 2 in a burst for all keys together.
    let beta = |k: &str| {
        let mut r = request("GET", "/pets/1", Some(k));
        r.stage = "beta".into();
        r
    };
    assert_eq!(reason(&g, &beta("tgk_alice")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &beta("tgk_bob")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &beta("tgk_bob")).await, ReasonCode::StageThrottled);
}

#[tokio::test]
async fn quota_resets_at_the_period_boundary_with_its_offset() {
    // Weekly quota of 3, weeks starting on Monday (offset 1).
    let f = Fixture::new().with(Entity::Plan(entity(json!({
        "id": "gold", "name": "Gold",
        "quota": {"limit": 3, "period": "week", "offset": 1},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]
    }))));
    // Sunday 2026-11-29 23:59:59 UTC: the last second of the week.
    f.clock.set_ms(1_795_996_799_000);
    let g = f.gateway();
    let req = request("GET", "/pets/1", Some("tgk_alice"));
    for _ in 0..3 {
        assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    }
    let d = decide(&g, &req).await;
    assert_eq!((d.reason, header(&d, "retry-after")), (ReasonCode::QuotaExceeded, Some("1")));
    f.clock.advance_ms(1000); // Monday 00:00:00: a new week.
    let d = decide(&g, &req).await;
    assert_eq!((d.reason, header(&d, "ratelimit-remaining")), (ReasonCode::Allowed, Some("2")));
}

#[tokio::test]
async fn a_lowered_quota_applies_to_the_running_period() {
    let f = Fixture::new();
    let g = f.gateway();
    let req = request("GET", "/pets/1", Some("tgk_alice"));
    for _ in 0..3 {
        assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
    }
    let lowered: UsagePlan = entity(json!({
        "id": "gold", "name": "Gold", "quota": {"limit": 3, "period": "week", "offset": 1},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]
    }));
    let mut model = f.model.clone();
    model.load(Entity::Plan(lowered));
    let mut limits = LimitsEpochs::default();
    limits.bump(Some("gold"));
    g.model.store(Arc::new(Published { model, applied: None, limits }));
    assert_eq!(reason(&g, &req).await, ReasonCode::QuotaExceeded);
}

fn policy(id: &str, api: Option<&str>, statements: serde_json::Value) -> Entity {
    Entity::Policy(entity(json!({"id": id, "name": id, "api_id": api, "statements": statements})))
}

#[tokio::test]
async fn a_resource_policy_allows_only_its_networks_v4_and_v6() {
    let g = Fixture::new()
        .with(policy(
            "nets",
            Some("pets"),
            json!([
                {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"],
                 "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["10.0.0.0/8", "2001:db8::/32"]}]},
                {"effect": "Deny", "principals": ["*"], "actions": ["*"], "resources": ["*"],
                 "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["10.9.0.0/16"]}]}
            ]),
        ))
        .gateway();
    let from = |ip: &str| {
        let mut r = request("GET", "/public", None);
        r.source_ip = Some(ip.into());
        r
    };
    assert_eq!(reason(&g, &from("10.1.2.3")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &from("2001:db8::42")).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &from("2001:db9::1")).await, ReasonCode::ResourcePolicyDenied);
    assert_eq!(reason(&g, &from("192.0.2.1")).await, ReasonCode::ResourcePolicyDenied);
    // The explicit deny wins over the allow of the wider network, before any key is looked at.
    let mut blocked = request("GET", "/pets/1", Some("tgk_nobody"));
    blocked.source_ip = Some("10.9.1.1".into());
    assert_eq!(reason(&g, &blocked).await, ReasonCode::ResourcePolicyDenied);
}

#[tokio::test]
async fn a_resource_policy_can_require_the_calling_proxy() {
    let g = Fixture::new()
        .with(policy(
            "edge-only",
            Some("pets"),
            json!([
                {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["*"]},
                {"effect": "Deny", "principals": ["*"], "actions": ["*"], "resources": ["*"],
                 "conditions": [{"operator": "StringNotEquals", "key": "proxy_id", "values": ["edge-1"]}]}
            ]),
        ))
        .gateway();
    let mut req = request("GET", "/public", None);
    assert_eq!(reason(&g, &req).await, ReasonCode::ResourcePolicyDenied, "no proxy identity");
    req.proxy_id = Some("edge-2".into());
    assert_eq!(reason(&g, &req).await, ReasonCode::ResourcePolicyDenied);
    req.proxy_id = Some("edge-1".into());
    assert_eq!(reason(&g, &req).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn explicit_deny_beats_allow_and_wildcards_match_resources() {
    let g = Fixture::new()
        .with(policy(
            "alice",
            None,
            json!([
                {"effect": "Allow", "principals": ["key:alice"], "actions": ["invoke"], "resources": ["pets/*/GET/*", "pets/prod/DELETE/*"]},
                {"effect": "Deny", "principals": ["key:alice"], "actions": ["invoke"], "resources": ["pets/prod/DELETE/pets/1*"]}
            ]),
        ))
        .gateway();
    assert_eq!(reason(&g, &request("GET", "/pets/7", Some("tgk_alice"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("DELETE", "/pets/7", Some("tgk_alice"))).await, ReasonCode::Allowed);
    let d = decide(&g, &request("DELETE", "/pets/12", Some("tgk_alice"))).await;
    assert_eq!((d.reason, d.status), (ReasonCode::PolicyDenied, 403));
    // bob is named by no policy: policies do not govern him.
    assert_eq!(reason(&g, &request("DELETE", "/pets/12", Some("tgk_bob"))).await, ReasonCode::Allowed);
}

#[tokio::test]
async fn a_principal_named_by_a_policy_is_implicitly_denied_elsewhere() {
    let g = Fixture::new()
        .with(policy(
            "bob-reads",
            None,
            json!([{"effect": "Allow", "principals": ["key:bob"], "actions": ["invoke"], "resources": ["pets/prod/GET/*"]}]),
        ))
        .gateway();
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_bob"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("DELETE", "/pets/1", Some("tgk_bob"))).await, ReasonCode::ImplicitDeny);
}

#[tokio::test]
async fn conditions_on_key_tags_give_attribute_based_control() {
    let g = Fixture::new()
        .with(policy(
            "mobile-team",
            Some("pets"),
            json!([{"effect": "Allow", "principals": ["key:*"], "actions": ["invoke"], "resources": ["pets/*/*/pets/*"],
                    "conditions": [{"operator": "StringEquals", "key": "tag:team", "values": ["mobile"]}]}]),
        ))
        .gateway();
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_bob"))).await, ReasonCode::ResourcePolicyDenied);
}

#[tokio::test]
async fn cors_preflight_is_answered_and_a_disallowed_origin_refused() {
    let g = Fixture::new().gateway();
    let preflight = |origin: &str, method: &str| {
        let mut r = request("OPTIONS", "/pets/1", None);
        r.headers.insert("Origin".into(), origin.into());
        r.headers.insert("Access-Control-Request-Method".into(), method.into());
        r.headers.insert("Access-Control-Request-Headers".into(), "X-Api-Key".into());
        r
    };
    let d = decide(&g, &preflight("https://app.example.com", "DELETE")).await;
    assert_eq!((d.reason, d.status, d.allowed), (ReasonCode::CorsPreflight, 204, false));
    assert_eq!(header(&d, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&d, "access-control-allow-methods"), Some("GET, DELETE"));
    assert_eq!(header(&d, "access-control-max-age"), Some("300"));
    let d = decide(&g, &preflight("https://a.partner.example", "GET")).await;
    assert_eq!(d.reason, ReasonCode::CorsPreflight, "wildcard subdomain origin");
    let d = decide(&g, &preflight("https://evil.example", "GET")).await;
    assert_eq!((d.reason, d.status), (ReasonCode::CorsOriginDenied, 403));
    assert_eq!(reason(&g, &preflight("https://app.example.com", "PUT")).await, ReasonCode::CorsOriginDenied);
    // CORS headers on an ordinary decision, allowed or not.
    let mut req = request("GET", "/pets/1", None);
    req.headers.insert("Origin".into(), "https://app.example.com".into());
    let d = decide(&g, &req).await;
    assert_eq!(
        (d.reason, header(&d, "access-control-allow-origin")),
        (ReasonCode::MissingKey, Some("https://app.example.com"))
    );
}

#[tokio::test]
async fn malformed_check_requests_are_refused_naming_the_field() {
    let g = Fixture::new().gateway();
    let mut cases: Vec<(CheckRequest, &str)> = Vec::new();
    let mut r = request("GET", "/pets/1", None);
    r.source_ip = Some("10.0.0.300".into());
    cases.push((r, "source_ip"));
    cases.push((request("get", "/pets/1", None), "method"));
    cases.push((request("GET", "pets/1", None), "path"));
    let mut r = request("GET", "/pets/1", None);
    r.headers.insert("x-big".into(), "x".repeat(20_000));
    cases.push((r, "headers.x-big"));
    let mut r = request("GET", "/pets/1", None);
    r.api = String::new();
    cases.push((r, "api"));
    for (req, field) in cases {
        let err = g.check(&req).await.expect_err("must be refused");
        assert_eq!(err.field, field);
    }
}

// ---------------------------------------------------------------------------
// Authorizers and WAF

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 key pair: the signing key and its public JWK.
fn es256_key(kid: &str) -> (EncodingKey, serde_json::Value) {
    let pair = rcgen::KeyPair::generate().expect("key pair");
    let raw = pair.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    (EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"), jwk)
}

fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let now = NOW_MS / 1000;
    let mut c = json!({"sub": "user-1", "iss": "https://issuer.example", "aud": "pets-api",
        "exp": (jsonwebtoken::get_current_timestamp() + 3600), "iat": now, "scope": "orders:read profile",
        "cognito:groups": ["admins"]});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn shop_api(authorizer: &str) -> Entity {
    Entity::Api(entity(json!({"id": "shop", "name": "Shop", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/orders/*", "authorizer_id": authorizer, "scopes": ["orders:read"]},
                   {"method": "DELETE", "path": "/orders/*", "authorizer_id": authorizer}]})))
}

fn jwt_authorizer(id: &str, jwks: serde_json::Value, jwks_url: Option<String>) -> Entity {
    Entity::Authorizer(entity(json!({"id": id, "name": id, "kind": {"jwt": {
        "issuer": "https://issuer.example", "audiences": ["pets-api"], "algorithms": ["ES256"],
        "jwks": jwks, "jwks_url": jwks_url, "leeway_secs": 30}}})))
}

fn bearer(method: &str, path: &str, token: Option<&str>) -> CheckRequest {
    let mut r = request(method, path, None);
    r.api = "shop".into();
    if let Some(t) = token {
        r.headers.insert("Authorization".into(), format!("Bearer {t}"));
    }
    r
}

#[tokio::test]
async fn jwt_authorizer_accepts_only_valid_tokens_with_their_scopes() {
    let (key, jwk) = es256_key("k1");
    let (other_key, _) = es256_key("k1");
    let g = Fixture::new().with(jwt_authorizer("jwt", json!([jwk]), None)).with(shop_api("jwt")).gateway();

    let good = token(&key, "k1", claims(json!({})));
    let d = decide(&g, &bearer("GET", "/orders/1", Some(&good))).await;
    assert_eq!(d.reason, ReasonCode::Allowed, "{}", d.message);
    assert_eq!(d.principal.map(|p| p.id), Some("sub:user-1".into()));

    let expired = claims(json!({"exp": jsonwebtoken::get_current_timestamp() - 120}));
    let hmac = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(jwk.to_string().as_bytes()),
    )
    .expect("sign");
    let cases = [
        (None, ReasonCode::MissingToken, 401),
        (Some(token(&key, "k1", claims(json!({"aud": "someone-else"})))), ReasonCode::InvalidToken, 401),
        (Some(token(&key, "k1", claims(json!({"iss": "https://evil.example"})))), ReasonCode::InvalidToken, 401),
        (Some(token(&key, "k1", expired)), ReasonCode::TokenExpired, 401),
        (Some(token(&key, "k2", claims(json!({})))), ReasonCode::InvalidToken, 401),
        (Some(token(&other_key, "k1", claims(json!({})))), ReasonCode::InvalidToken, 401),
        // An HS256 token made with the public key as the HMAC secret: the alg is not accepted.
        (Some(hmac), ReasonCode::InvalidToken, 401),
        (Some("not.a.jwt".to_string()), ReasonCode::InvalidToken, 401),
        (Some(token(&key, "k1", claims(json!({"scope": "profile"})))), ReasonCode::InsufficientScope, 403),
    ];
    for (t, reason, status) in cases {
        let d = decide(&g, &bearer("GET", "/orders/1", t.as_deref())).await;
        assert_eq!((d.reason, d.status), (reason, status), "token {t:?}: {}", d.message);
    }
    // DELETE needs no scope; a claim-based policy denies non-admins.
    assert_eq!(reason(&g, &bearer("DELETE", "/orders/1", Some(&good))).await, ReasonCode::Allowed);
    let g = Fixture::new()
        .with(jwt_authorizer("jwt", json!([jwk]), None))
        .with(shop_api("jwt"))
        .with(policy(
            "admins-delete",
            None,
            json!([{"effect": "Deny", "principals": ["*"], "actions": ["invoke"], "resources": ["shop/*/DELETE/*"],
                    "conditions": [{"operator": "StringNotEquals", "key": "claim:cognito:groups", "values": ["admins"]}]}]),
        ))
        .gateway();
    assert_eq!(reason(&g, &bearer("DELETE", "/orders/1", Some(&good))).await, ReasonCode::Allowed);
    let outsider = token(&key, "k1", claims(json!({"cognito:groups": ["staff"]})));
    assert_eq!(reason(&g, &bearer("DELETE", "/orders/1", Some(&outsider))).await, ReasonCode::PolicyDenied);
}

#[tokio::test]
async fn jwks_are_fetched_cached_and_refreshed_on_an_unknown_kid() {
    let (k1, jwk1) = es256_key("k1");
    let (k2, jwk2) = es256_key("k2");
    let served = Arc::new(Mutex::new(vec![jwk1]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = {
        let (served, fetches) = (served.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                let keys = served.lock().map(|k| k.clone()).unwrap_or_default();
                axum::Json(json!({"keys": keys}))
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut g = Fixture::new().with(jwt_authorizer("jwt", json!([]), Some(url))).with(shop_api("jwt")).gateway();
    g.jwt.timing.min_refresh = std::time::Duration::ZERO;
    let first = token(&k1, "k1", claims(json!({})));
    assert_eq!(reason(&g, &bearer("GET", "/orders/1", Some(&first))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &bearer("GET", "/orders/2", Some(&first))).await, ReasonCode::Allowed);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the second check used the cached keys");

    // The issuer rotates in a new key: a token naming it triggers a refetch.
    if let Ok(mut keys) = served.lock() {
        keys.push(jwk2);
    }
    let rotated = token(&k2, "k2", claims(json!({})));
    assert_eq!(reason(&g, &bearer("GET", "/orders/1", Some(&rotated))).await, ReasonCode::Allowed);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

/// JWKS behind HTTPS whose certificate a private CA signed: fetched once the
/// gateway trusts that CA, refused (keys unavailable) while it does not.
#[tokio::test]
async fn jwks_over_https_are_fetched_with_the_ca_trusted_and_only_then() {
    let dir = tempfile::tempdir().expect("dir");
    crate::tls::generate(dir.path(), &[]).expect("certs");
    let p = |name: &str| dir.path().join(name);
    let tls = crate::tls::server_config(&p("node.pem"), &p("node-key.pem"), crate::tls::ClientAuth::None).expect("tls");
    let (k1, jwk1) = es256_key("k1");
    let app = axum::Router::new()
        .route("/jwks.json", axum::routing::get(move || async move { axum::Json(json!({"keys": [jwk1]})) }));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}/jwks.json", tcp.local_addr().expect("addr"));
    let listener = crate::tls::TlsListener::new(tcp, tls).expect("listener");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fixture = Fixture::new().with(jwt_authorizer("jwt", json!([]), Some(url))).with(shop_api("jwt"));
    let signed = token(&k1, "k1", claims(json!({})));
    let untrusting = fixture.gateway();
    assert_eq!(reason(&untrusting, &bearer("GET", "/orders/1", Some(&signed))).await, ReasonCode::AuthorizerError);
    let roots = crate::tls::outbound_roots(&p("ca.pem")).expect("roots");
    let trusting = fixture.gateway().trusting(&roots);
    assert_eq!(reason(&trusting, &bearer("GET", "/orders/1", Some(&signed))).await, ReasonCode::Allowed);
}

/// A custom authorizer that answers by token and counts its calls.
async fn start_authorizer() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let token = body["authorization_token"].as_str().unwrap_or("").to_string();
                match token.as_str() {
                    "allow-me" => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"allow": true, "principal_id": "user-7", "context": {"tier": "gold"}})),
                    ),
                    "reads-only" => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"principalId": "reader",
                        "policyDocument": {"Statement": [{"Effect": "Allow", "Resource": "shop/*/GET/*"}]}})),
                    ),
                    "slow" => {
                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                        (axum::http::StatusCode::OK, axum::Json(json!({"allow": true})))
                    }
                    "broken" => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({}))),
                    _ => (axum::http::StatusCode::OK, axum::Json(json!({"allow": false}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

#[tokio::test]
async fn http_authorizer_answers_are_cached_and_failures_have_their_own_reasons() {
    let (url, calls) = start_authorizer().await;
    let authorizer = Entity::Authorizer(entity(json!({"id": "lambda", "name": "lambda", "kind": {"http": {
        "url": url, "identity_sources": ["header:authorization"], "cache_ttl_secs": 300, "timeout_ms": 1000}}})));
    let g = Fixture::new().with(authorizer).with(shop_api("lambda")).gateway();
    let with = |method: &str, t: Option<&str>| {
        let mut r = bearer(method, "/orders/1", None);
        if let Some(t) = t {
            r.headers.insert("authorization".into(), t.into());
        }
        r
    };

    let d = decide(&g, &with("GET", Some("allow-me"))).await;
    assert_eq!(d.reason, ReasonCode::Allowed, "{}", d.message);
    assert_eq!(d.principal.map(|p| p.id), Some("user-7".into()));
    assert_eq!(d.context.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(reason(&g, &with("GET", Some("allow-me"))).await, ReasonCode::Allowed);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second check was answered from the cache");
    assert_eq!(g.stats.authorizer_cache.with_label_values(&["hit"]).get(), 1);

    assert_eq!(decide(&g, &with("GET", Some("deny-me"))).await.status, 403);
    assert_eq!(reason(&g, &with("GET", Some("deny-me"))).await, ReasonCode::AuthorizerDenied);
    assert_eq!(reason(&g, &with("GET", None)).await, ReasonCode::MissingToken);
    // A policy document is evaluated per request, also from the cache.
    assert_eq!(reason(&g, &with("GET", Some("reads-only"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &with("DELETE", Some("reads-only"))).await, ReasonCode::AuthorizerDenied);

    let started = std::time::Instant::now();
    let d = decide(&g, &with("GET", Some("slow"))).await;
    assert_eq!((d.reason, d.status), (ReasonCode::AuthorizerTimeout, 503));
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "the check did not wait for the slow authorizer");
    assert_eq!(reason(&g, &with("GET", Some("broken"))).await, ReasonCode::AuthorizerError);
}

#[tokio::test]
async fn waf_rules_block_by_network_size_pattern_and_rate() {
    let api = Entity::Api(entity(json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
    "waf": [
        {"name": "bad-net", "condition": {"ip_set": ["203.0.113.0/24", "2001:db8:bad::/48"]}},
        {"name": "big-body", "condition": {"max_body_bytes": 1000}},
        {"name": "big-headers", "condition": {"max_header_bytes": 4096}},
        {"name": "no-admin", "condition": {"path_matches": "(?i)^/admin"}},
        {"name": "scanner", "condition": {"header_matches": {"name": "user-agent", "regex": "sqlmap|nikto"}}},
        {"name": "debug", "action": "count", "condition": {"query_matches": "debug=1"}},
        {"name": "per-ip", "condition": {"rate_per_ip": {"limit": 3, "window_secs": 60}}}
    ]})));
    let g = Fixture::new().with(api).gateway();
    let req = |ip: &str| {
        let mut r = request("GET", "/anything", None);
        r.source_ip = Some(ip.into());
        r
    };
    assert_eq!(reason(&g, &req("203.0.113.50")).await, ReasonCode::WafBlocked);
    assert_eq!(reason(&g, &req("2001:db8:bad::1")).await, ReasonCode::WafBlocked);
    let mut big = req("198.51.100.1");
    big.body_size = Some(5000);
    assert_eq!(reason(&g, &big).await, ReasonCode::WafBlocked);
    let mut heavy = req("198.51.100.1");
    heavy.headers.insert("cookie".into(), "x".repeat(5000));
    assert_eq!(reason(&g, &heavy).await, ReasonCode::WafBlocked);
    let mut admin = req("198.51.100.1");
    admin.path = "/ADMIN/users".into();
    assert_eq!(reason(&g, &admin).await, ReasonCode::WafBlocked);
    let mut scanner = req("198.51.100.1");
    scanner.headers.insert("User-Agent".into(), "sqlmap/1.7".into());
    assert_eq!(reason(&g, &scanner).await, ReasonCode::WafBlocked);
    // A count rule only counts.
    let mut debug = req("198.51.100.2");
    debug.query.insert("debug".into(), "1".into());
    assert_eq!(reason(&g, &debug).await, ReasonCode::Allowed);
    assert_eq!(g.stats.waf_counted.with_label_values(&["debug"]).get(), 1);
    // 3 per minute per address (the blocked requests above came from other rules first).
    for _ in 0..2 {
        assert_eq!(reason(&g, &req("198.51.100.2")).await, ReasonCode::Allowed);
    }
    let d = decide(&g, &req("198.51.100.2")).await;
    assert_eq!((d.reason, d.status), (ReasonCode::WafRateLimited, 429));
    assert!(header(&d, "retry-after").is_some());
    assert_eq!(reason(&g, &req("198.51.100.3")).await, ReasonCode::Allowed, "another address has its own count");
}

#[tokio::test]
async fn an_allowed_request_carries_a_signed_identity_for_the_backend() {
    let f = Fixture::new();
    let published = Published { model: f.model.clone(), applied: None, limits: Default::default() };
    let g = Gateway::with_stats(
        Arc::new(arc_swap::ArcSwap::from_pointee(published)),
        f.clock.clone(),
        super::GatewayStats::default(),
        Some("cluster-secret"),
    );
    let d = decide(&g, &request("GET", "/pets/1", Some("tgk_alice"))).await;
    let token =
        d.upstream_headers.iter().find(|(n, _)| n == "x-tollgate-identity").map(|(_, v)| v.clone()).expect("identity");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(g.identity.jwks(1)["keys"][0].clone()).expect("jwk");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["pets"]);
    validation.validate_exp = false; // the fixture clock is not the system clock
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key"),
        &validation,
    )
    .expect("the identity verifies against the published key")
    .claims;
    assert_eq!((claims["sub"].as_str(), claims["plan_id"].as_str()), (Some("key:alice"), Some("gold")));
    assert_eq!(claims["ctx"]["tag.team"], "mobile");
    assert_eq!(claims["exp"].as_i64(), Some(NOW_MS / 1000 + super::identity::TOKEN_LIFETIME_SECS));
    // A denial carries none.
    let d = decide(&g, &request("GET", "/pets/1", Some("tgk_nobody"))).await;
    assert!(d.upstream_headers.is_empty());
}

#[tokio::test]
async fn a_deny_on_key_tags_waits_for_the_key_before_it_applies() {
    // The README's example: only keys tagged team=mobile may delete.
    let g = Fixture::new()
        .with(policy(
            "deletes",
            Some("pets"),
            json!([
                {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*"]},
                {"effect": "Deny", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*/DELETE/*"],
                 "conditions": [{"operator": "StringNotEquals", "key": "tag:team", "values": ["mobile"]}]}
            ]),
        ))
        .gateway();
    assert_eq!(reason(&g, &request("DELETE", "/pets/1", Some("tgk_alice"))).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &request("DELETE", "/pets/1", Some("tgk_bob"))).await, ReasonCode::ResourcePolicyDenied);
    assert_eq!(reason(&g, &request("GET", "/pets/1", Some("tgk_bob"))).await, ReasonCode::Allowed);
}

/// API key source AUTHORIZER: the route's HTTP authorizer names the key
/// (`usageIdentifierKey`), which is then looked up, checked and metered
/// exactly as a key from the header; the header is not read.
#[tokio::test]
async fn an_authorizer_can_name_the_api_key_a_request_is_metered_under() {
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(|axum::Json(body): axum::Json<serde_json::Value>| async move {
            let key = match body["authorization_token"].as_str().unwrap_or("") {
                "carol-token" => json!("tgk_carol"),
                "stranger" => json!("tgk_nobody"),
                "off" => json!("tgk_off"),
                _ => serde_json::Value::Null,
            };
            axum::Json(json!({"allow": true, "principal_id": "user-9", "usageIdentifierKey": key}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let g = Fixture::new()
        .with(Entity::Authorizer(entity(json!({"id": "lambda", "name": "lambda", "kind": {"http": {
            "url": url, "identity_sources": ["header:authorization"], "cache_ttl_secs": 300}}}))))
        .with(Entity::Api(entity(json!({"id": "metered", "name": "Metered", "stages": [{"name": "prod"}],
            "key_source": {"from": "authorizer"},
            "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true, "authorizer_id": "lambda"}]}))))
        .with(Entity::Plan(entity(json!({"id": "metered-plan", "name": "Metered",
            "quota": {"limit": 2, "period": "day"}, "api_stages": [{"api_id": "metered", "stage": "prod"}]}))))
        .with(key("carol", "tgk_carol", &["metered-plan"], json!({})))
        .gateway();
    let req = |token: &str, api_key: Option<&str>| {
        let mut r = request("GET", "/items/1", api_key);
        r.api = "metered".into();
        r.headers.insert("authorization".into(), token.into());
        r
    };
    let d = decide(&g, &req("carol-token", None)).await;
    assert_eq!(d.reason, ReasonCode::Allowed, "{}", d.message);
    let p = d.principal.clone().expect("principal");
    assert_eq!((p.key_id.as_deref(), p.plan_id.as_deref()), (Some("carol"), Some("metered-plan")));
    assert_eq!(header(&d, "ratelimit-limit"), Some("2"));
    // Metered as a header key is: the quota of 2 holds.
    assert_eq!(reason(&g, &req("carol-token", None)).await, ReasonCode::Allowed);
    assert_eq!(reason(&g, &req("carol-token", None)).await, ReasonCode::QuotaExceeded);
    // Checked as a header key is; and a key in the header is not read.
    assert_eq!(reason(&g, &req("stranger", None)).await, ReasonCode::UnknownKey);
    assert_eq!(reason(&g, &req("off", None)).await, ReasonCode::DisabledKey);
    assert_eq!(reason(&g, &req("no-key", Some("tgk_carol"))).await, ReasonCode::MissingKey);
}

/// Every spelling a framework behind the gateway could read as a method
/// override, or as a header the check decides on, is held to the same rule
/// as the plain one: the override must name the request's own method, and
/// an underscore spelling of a sensitive header is refused. Each row:
/// method, query (decoded, as the listeners hand it over), headers, and
/// the field a refusal names (`None`: valid).
#[test]
fn every_spelling_of_a_method_override_or_a_sensitive_header_is_held_to_its_rule() {
    type Row = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("POST", &[("_method", "POST")], &[], None),
        ("POST", &[("_method", " post ")], &[], None),
        ("POST", &[("_method", "DELETE")], &[], Some("query._method")),
        ("POST", &[("_METHOD", "DELETE")], &[], Some("query._METHOD")),
        ("POST", &[("_method[]", "DELETE")], &[], Some("query._method[]")),
        ("POST", &[("_method[0]", "POST")], &[], None),
        ("POST", &[("a", "1;_method=DELETE")], &[], Some("query.a")),
        ("POST", &[("a", "1&_method=DELETE")], &[], Some("query.a")),
        ("POST", &[("a;_method", "DELETE")], &[], Some("query.a;_method")),
        ("POST", &[("_method=DELETE", "")], &[], Some("query._method=DELETE")),
        ("POST", &[("x", "1;_method=POST")], &[], None),
        ("POST", &[("q", "a;b=c")], &[], None),
        ("POST", &[("method", "DELETE")], &[], None),
        ("POST", &[], &[("x-http-method-override", "DELETE")], Some("headers.x-http-method-override")),
        ("POST", &[], &[("X-HTTP-Method-Override", "POST")], None),
        ("POST", &[], &[("x_http_method_override", "DELETE")], Some("headers.x_http_method_override")),
        ("POST", &[], &[("x_http_method_override", "POST")], Some("headers.x_http_method_override")),
        ("GET", &[], &[("x_method_override", "GET")], Some("headers.x_method_override")),
        ("GET", &[], &[("x_original_url", "/admin/x")], Some("headers.x_original_url")),
        ("GET", &[], &[("X_Forwarded_For", "203.0.113.1")], Some("headers.X_Forwarded_For")),
        ("GET", &[], &[("x_tollgate_principal", "key:admin")], Some("headers.x_tollgate_principal")),
        ("GET", &[], &[("x_real_ip", "203.0.113.1")], Some("headers.x_real_ip")),
        ("GET", &[], &[("x_api_key", "tgk_x")], Some("headers.x_api_key")),
        ("GET", &[], &[("x_custom_thing", "fine")], None),
        ("GET", &[], &[("user_agent", "fine")], None),
    ];
    for (method, query, headers, refused) in rows {
        let req = CheckRequest {
            api: "pets".into(),
            stage: "prod".into(),
            method: (*method).into(),
            path: "/pets/1".into(),
            source_ip: Some("10.1.2.3".into()),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            query: query.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let got = super::validate(&req).err().map(|e| e.field);
        assert_eq!(got.as_deref(), *refused, "{method} query {query:?} headers {headers:?}");
    }
}

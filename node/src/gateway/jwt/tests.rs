//! The verifier's outbound calls are bounded: one fetch per back-off step
//! however many checks need it, keys held through a failed refresh, a flood
//! of unknown key ids costing no flood of fetches; and key material read as
//! RFC 7518 says (base64url).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tollgate_proto::model::{Authorizer, AuthorizerKind, Jwk, JwtAuthorizer, Timestamp};

use super::{Failure, JwtVerifier};

/// An ES256 key pair: the signing key and its public JWK.
fn es256_key(kid: &str) -> (EncodingKey, Jwk) {
    let pair = rcgen::KeyPair::generate().expect("key pair");
    let raw = pair.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
    (EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"), serde_json::from_value(jwk).expect("jwk"))
}

fn claims() -> serde_json::Value {
    json!({"sub": "user-1", "iss": "https://issuer.example", "aud": "pets-api",
        "exp": jsonwebtoken::get_current_timestamp() + 3600})
}

fn sign(key: &EncodingKey, alg: jsonwebtoken::Algorithm, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims(), key).expect("sign")
}

fn config(algorithms: &[&str], jwks: Vec<Jwk>, jwks_url: Option<String>) -> JwtAuthorizer {
    JwtAuthorizer {
        issuer: "https://issuer.example".into(),
        audiences: vec!["pets-api".into()],
        jwks_url,
        jwks,
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        required_scopes: vec![],
        leeway_secs: 30,
    }
}

/// A JWKS endpoint that counts its fetches and fails (500) while `failing`.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn jwks_server(keys: Vec<Jwk>) -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (count, fail) = (fetches.clone(), failing.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (count, fail, keys) = (count.clone(), fail.clone(), keys.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({})));
                }
                (axum::http::StatusCode::OK, axum::Json(json!({"keys": keys})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer { url, fetches, failing }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_on_a_failing_jwks_make_one_fetch_per_backoff_step() {
    let (key, _) = es256_key("k1");
    let (_, other) = es256_key("k2");
    let server = jwks_server(vec![other]).await;
    server.failing.store(true, Ordering::SeqCst);
    let verifier = Arc::new(JwtVerifier::default());
    let config = Arc::new(config(&["ES256"], vec![], Some(server.url.clone())));
    let token = Arc::new(sign(&key, jsonwebtoken::Algorithm::ES256, Some("k1")));

    // 50 checks at once that all need the keys: one fetch between them.
    let checks = (0..50).map(|_| {
        let (verifier, config, token) = (verifier.clone(), config.clone(), token.clone());
        tokio::spawn(async move { verifier.verify(&config, &token, &[]).await.map(|_| ()) })
    });
    for check in futures_util::future::join_all(checks).await {
        let outcome = check.expect("task");
        assert!(matches!(outcome, Err(Failure::KeysUnavailable(_))), "{outcome:?}");
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1, "50 concurrent checks shared one fetch");

    // The case: 20 checks in 2 s. The back-off (1 s, then 2 s) lets
    // one more fetch through, at 1 s; not 20.
    let started = Instant::now();
    for _ in 0..20 {
        let outcome = verifier.verify(&config, &token, &[]).await;
        assert!(matches!(outcome, Err(Failure::KeysUnavailable(_))), "{outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "checks were not answered quickly while backing off: {elapsed:?}");
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2, "one fetch at the start, one after the first 1 s back-off");

    // A success resets the back-off: once the endpoint is back, keys flow again.
    server.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = verifier.verify(&config, &token, &[]).await;
    assert!(matches!(outcome, Err(Failure::Invalid(_))), "the keys came back (none is k1): {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_held_survive_a_failed_refresh_and_still_verify() {
    let (key, jwk) = es256_key("k1");
    let server = jwks_server(vec![jwk]).await;
    let mut verifier = JwtVerifier::default();
    // Every check finds the keys stale and refreshes when the back-off allows.
    verifier.timing.ttl = Duration::ZERO;
    verifier.timing.min_refresh = Duration::ZERO;
    verifier.timing.max_stale = Duration::from_millis(800);
    let config = config(&["ES256"], vec![], Some(server.url.clone()));
    let token = sign(&key, jsonwebtoken::Algorithm::ES256, Some("k1"));

    assert!(verifier.verify(&config, &token, &[]).await.is_ok());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    server.failing.store(true, Ordering::SeqCst);
    // The refresh fails; the key held still verifies the token.
    let outcome = verifier.verify(&config, &token, &[]).await;
    assert!(outcome.is_ok(), "a failed refresh threw the held keys away: {outcome:?}");
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    // Backing off now: no fetch, still verified from what is held.
    for _ in 0..10 {
        assert!(verifier.verify(&config, &token, &[]).await.is_ok());
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    // Held keys are bounded in age: past max_stale they are no longer used.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let outcome = verifier.verify(&config, &token, &[]).await;
    assert!(matches!(outcome, Err(Failure::KeysUnavailable(ref why)) if why.contains("500")), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_makes_bounded_fetches() {
    let (key, jwk) = es256_key("k1");
    let server = jwks_server(vec![jwk]).await;
    let config = Arc::new(config(&["ES256"], vec![], Some(server.url.clone())));
    let good = sign(&key, jsonwebtoken::Algorithm::ES256, Some("k1"));
    let flood: Vec<String> = (0..200)
        .map(|i| sign(&key, jsonwebtoken::Algorithm::ES256, Some(&format!("rnd-{i}-{}", rand::random::<u64>()))))
        .collect();

    // Random key ids within MIN_REFRESH (10 s) of the fetch: no fetch at all.
    let verifier = JwtVerifier::default();
    assert!(verifier.verify(&config, &good, &[]).await.is_ok());
    for token in &flood {
        let refused = verifier.verify(&config, token, &[]).await.err();
        assert_eq!(refused, Some(Failure::Invalid("unknown key id (kid)".into())));
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // With a short minimum refresh, a concurrent flood makes at most one fetch
    // per refresh interval it lasts.
    let mut verifier = JwtVerifier::default();
    verifier.timing.min_refresh = Duration::from_millis(200);
    let verifier = Arc::new(verifier);
    assert!(verifier.verify(&config, &good, &[]).await.is_ok());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = Instant::now();
    let checks = flood.into_iter().map(|token| {
        let (verifier, config) = (verifier.clone(), config.clone());
        tokio::spawn(async move { verifier.verify(&config, &token, &[]).await.is_err() })
    });
    for refused in futures_util::future::join_all(checks).await {
        assert!(refused.expect("task"));
    }
    let intervals = started.elapsed().as_millis() / 200 + 1;
    let fetched = server.fetches.load(Ordering::SeqCst) - 2;
    assert!((1..=intervals as usize).contains(&fetched), "{fetched} fetches for {intervals} refresh intervals");
    assert!(verifier.verify(&config, &good, &[]).await.is_ok());
}

#[tokio::test]
async fn an_hs256_key_of_43_base64url_characters_verifies_end_to_end() {
    // 32 random bytes whose base64url form uses '-' and '_' (standard base64
    // would read neither, and needs padding besides).
    let mut secret: [u8; 32] = rand::random();
    secret[0] = 0xfb;
    secret[1] = 0xff;
    let k = URL_SAFE_NO_PAD.encode(secret);
    assert_eq!(k.len(), 43);
    assert!(k.starts_with("-_"), "{k}");
    let jwk: Jwk = serde_json::from_value(json!({"kty": "oct", "kid": "h1", "k": k})).expect("jwk");
    let authorizer = Authorizer {
        id: "hmac".into(),
        name: "hmac".into(),
        description: String::new(),
        kind: AuthorizerKind::Jwt(config(&["HS256"], vec![jwk], None)),
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    };
    super::validate_authorizer(&authorizer).expect("the key is accepted when written");
    let AuthorizerKind::Jwt(config) = &authorizer.kind else { panic!("jwt") };
    let token = sign(&EncodingKey::from_secret(&secret), jsonwebtoken::Algorithm::HS256, Some("h1"));
    let verified = JwtVerifier::default().verify(config, &token, &[]).await;
    assert_eq!(verified.map(|v| v.subject), Ok(Some("user-1".to_string())));
    let forged = sign(
        &EncodingKey::from_secret(b"another secret of 32 bytes......"),
        jsonwebtoken::Algorithm::HS256,
        Some("h1"),
    );
    assert_eq!(
        JwtVerifier::default().verify(config, &forged, &[]).await.err(),
        Some(Failure::Invalid("bad signature".into()))
    );
}

#[test]
fn bad_key_material_is_refused_when_written_naming_the_member() {
    let (_, good) = es256_key("k1");
    let authorizer = |algorithms: &[&str], jwk: Jwk| Authorizer {
        id: "a".into(),
        name: "a".into(),
        description: String::new(),
        kind: AuthorizerKind::Jwt(config(algorithms, vec![jwk], None)),
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    };
    assert!(super::validate_authorizer(&authorizer(&["ES256"], good.clone())).is_ok());
    let off_curve = Jwk { y: good.x.clone(), ..good.clone() };
    let cases = [
        (authorizer(&["ES256"], off_curve), "kind.jwt.jwks[0].x"),
        (authorizer(&["ES256"], Jwk { y: Some("AAAA".into()), ..good.clone() }), "kind.jwt.jwks[0].x"),
        (authorizer(&["ES256"], Jwk { x: Some("***".into()), ..good.clone() }), "kind.jwt.jwks[0].x"),
        (authorizer(&["ES256"], Jwk { crv: Some("P-521".into()), ..good.clone() }), "kind.jwt.jwks[0].crv"),
        (
            authorizer(&["HS256"], Jwk { kty: "oct".into(), k: Some("c2VjcmV0".into()), ..good.clone() }),
            "kind.jwt.jwks[0].k",
        ),
        (
            authorizer(&["RS256"], Jwk { kty: "RSA".into(), n: Some("AQAB".into()), e: Some("AQAB".into()), ..good }),
            "kind.jwt.jwks[0].n",
        ),
    ];
    for (a, field) in cases {
        let err = super::validate_authorizer(&a).expect_err("refused");
        assert_eq!(err.field, field, "{err}");
    }
}

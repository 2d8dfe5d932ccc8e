//! The answer cache holds everything an answer depends on: a bare answer is
//! reused only for its method ARN, a policy for its identity; checked against
//! fresh answers over random request sequences.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use tollgate_proto::check::CheckRequest;
use tollgate_proto::model::{HttpAuthorizer, HttpAuthorizerMode};

use super::{HttpAuthorizers, Outcome, UsageKey};

const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const PATHS: [&str; 3] = ["/pets/1", "/pets/2", "/orders/1"];
const TOKENS: [&str; 7] = ["t0", "t1", "t2", "t3", "p0", "p1", "x"];

/// The answer for a token and method ARN (`api/stage/METHOD/path`): tokens
/// `t*` get a bare answer that depends on the method (and a principal,
/// context and usage key); `p*` a policy document (the same for every
/// request, as a policy answer is per identity); `x` a 403.
fn answer(token: &str, arn: &str) -> (axum::http::StatusCode, serde_json::Value) {
    let method = arn.split('/').nth(2).unwrap_or("");
    let m = METHODS.iter().position(|x| *x == method).unwrap_or(9);
    let ok = axum::http::StatusCode::OK;
    match token {
        "p0" => (
            ok,
            json!({"principalId": "p0", "policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": "shop/*/GET/*"}]}}),
        ),
        "p1" => (
            ok,
            json!({"principalId": "p1", "usageIdentifierKey": "tgk_p1", "policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": ["shop/prod/*/pets/*"]},
            {"Effect": "Deny", "Resource": "shop/*/DELETE/*"}]}}),
        ),
        "x" => (axum::http::StatusCode::FORBIDDEN, json!({})),
        t => {
            let n: usize = t.trim_start_matches('t').parse().unwrap_or(0);
            let allow = (n + m) & 1 == 0 && !(n == 3 && method == "DELETE");
            (
                ok,
                json!({"allow": allow, "principal_id": format!("{t}-{method}"), "context": {"m": method},
                "usageIdentifierKey": format!("tgk_{t}")}),
            )
        }
    }
}

/// An authorizer (TOKEN mode) answering by [`answer`], counting its calls.
async fn start() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let token = body["authorization_token"].as_str().unwrap_or("");
                let (status, json) = answer(token, body["method_arn"].as_str().unwrap_or(""));
                (status, axum::Json(json))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

fn config(url: &str, cache_ttl_secs: u32) -> HttpAuthorizer {
    HttpAuthorizer {
        url: url.into(),
        mode: HttpAuthorizerMode::Token,
        identity_sources: vec!["header:authorization".into()],
        cache_ttl_secs,
        timeout_ms: 2000,
    }
}

async fn ask(a: &HttpAuthorizers, config: &HttpAuthorizer, method: &str, path: &str, token: &str) -> Outcome {
    let req = CheckRequest {
        api: "shop".into(),
        stage: "prod".into(),
        method: method.into(),
        path: path.into(),
        headers: BTreeMap::from([("authorization".to_string(), token.to_string())]),
        ..Default::default()
    };
    let checked = crate::gateway::validate(&req).unwrap_or_else(|e| panic!("{e:?}"));
    let resource = format!("shop/prod/{method}/{}", &path[1..]);
    a.authorize("lambda", config, &checked, &resource).await.unwrap_or_else(|e| panic!("{e:?}"))
}

#[tokio::test]
async fn a_bare_allow_holds_only_for_the_method_it_was_given_for() {
    let (url, calls) = start().await;
    let cached = config(&url, 300);
    let a = HttpAuthorizers::default();
    // t0 is allowed GET (m = 0) and refused POST (m = 1), on the same path.
    let get = ask(&a, &cached, "GET", "/pets/1", "t0").await;
    assert!(get.allowed && !get.cache_hit);
    let post = ask(&a, &cached, "POST", "/pets/1", "t0").await;
    assert!(!post.allowed, "the GET's bare allow was reused for a POST");
    assert!(!post.cache_hit);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Each is reused for its own method ARN, with its principal and usage key.
    let again = ask(&a, &cached, "GET", "/pets/1", "t0").await;
    assert!(again.allowed && again.cache_hit);
    assert_eq!(again.principal_id.as_deref(), Some("t0-GET"));
    assert_eq!(again.usage_key, Some(UsageKey("tgk_t0".into())));
    assert!(!ask(&a, &cached, "POST", "/pets/1", "t0").await.allowed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A policy answer is kept per identity and evaluated per request.
    assert!(ask(&a, &cached, "GET", "/orders/1", "p0").await.allowed);
    let post = ask(&a, &cached, "POST", "/orders/1", "p0").await;
    assert!(!post.allowed && post.cache_hit);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_full_cache_drops_its_oldest_answers_not_all_of_them() {
    let (url, calls) = start().await;
    let cached = config(&url, 300);
    let a = HttpAuthorizers { max_cached: 3, ..HttpAuthorizers::default() };
    for token in ["t0", "t1", "t2", "t3"] {
        ask(&a, &cached, "GET", "/pets/1", token).await;
    }
    assert_eq!(a.cached(), 3, "bounded");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // The three newest are still there; the oldest (t0) was dropped.
    for token in ["t1", "t2", "t3"] {
        assert!(ask(&a, &cached, "GET", "/pets/1", token).await.cache_hit, "{token}");
    }
    assert!(!ask(&a, &cached, "GET", "/pets/1", "t0").await.cache_hit);
    // Answering the same key again and again does not grow the bookkeeping.
    let mut cache = super::AnswerCache::default();
    let now = std::time::Instant::now();
    let later = now + std::time::Duration::from_secs(60);
    let deny = super::Answer {
        verdict: super::Verdict::Allow(false),
        principal_id: None,
        context: BTreeMap::new(),
        usage_key: None,
    };
    for i in 0..50u8 {
        cache.insert([i % 2; 32], deny.clone(), later, now, 3);
    }
    assert_eq!(cache.map.len(), 2);
    assert!(cache.order.len() <= 2 * 3 + 1, "{} lines for 2 answers", cache.order.len());
    // Expired answers at the front go as new ones come.
    cache.insert([7; 32], deny.clone(), later + std::time::Duration::from_secs(60), later, 3);
    assert_eq!(cache.map.len(), 1);
}

/// Over random sequences of (method, path, token), the cached authorizer
/// answers exactly as a fresh one with caching off: allowed, principal,
/// context and usage key.
#[test]
fn a_cached_answer_never_differs_from_a_fresh_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (url, _) = runtime.block_on(start());
    let step = (0..METHODS.len(), 0..PATHS.len(), 0..TOKENS.len());
    let sequences = proptest::collection::vec(step, 1..40);
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&sequences, |sequence| {
        runtime.block_on(async {
            let cached = HttpAuthorizers::default();
            let fresh = HttpAuthorizers::default();
            for (m, p, t) in sequence {
                let (method, path, token) = (METHODS[m], PATHS[p], TOKENS[t]);
                let mut from_cache = ask(&cached, &config(&url, 300), method, path, token).await;
                let answered = ask(&fresh, &config(&url, 0), method, path, token).await;
                assert!(!answered.cache_hit);
                from_cache.cache_hit = false;
                if from_cache != answered {
                    return Err(TestCaseError::fail(format!(
                        "{method} {path} with {token}: cached {from_cache:?}, fresh {answered:?}"
                    )));
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

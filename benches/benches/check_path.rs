//! Micro-benchmarks of the check path's steps in one process: the binary
//! protocol's codec, and the gateway's decision for an API-key request —
//! on a plan without limits, and on one with a throttle and a quota (held
//! here, as a node holds them between grants); and signed identity for one
//! key against 100k keys asked at random (signing must not scale with keys).
//! Beside them, `peers/…`: the `limitador` crate's in-memory limiter and
//! `governor` on the throttle-and-quota scenario, in the same run, for the
//! ratio (issue 14, goal 5).
//!
//! `cargo bench -p tollgate-bench --bench check_path`

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tollgate_node::clock::SystemClock;
use tollgate_node::gateway::Gateway;
use tollgate_node::state::published::Published;
use tollgate_node::state::Model;
use tollgate_proto::check::{CheckRequest, Decision, ReasonCode};
use tollgate_proto::model::{ApiKey, ApiKeySpec, Entity, SecretDigest, Timestamp};
use tollgate_proto::wire::{self, ClientMessage, ServerMessage};

const SECRET: &str = "tgk_bench-secret-0123456789abcdef";
const LIMITED: &str = "tgk_bench-limited-0123456789abcdef";

fn entity<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("fixture")
}

fn key(id: &str, secret: &str, plan: &str) -> Entity {
    let spec: ApiKeySpec = entity(json!({"name": id, "plan_ids": [plan]}));
    let digest = SecretDigest { prefix: secret[..6].to_string(), sha256: tollgate_node::secret::sha256(secret) };
    Entity::Key(ApiKey::from_spec(id.into(), spec, digest, Timestamp(0)))
}

/// Two APIs (one per plan), a plan without limits, one with a throttle
/// and a quota too large to run out, and a key in each. With a cluster
/// token, allowed checks carry a signed identity for the backend.
fn gateway(cluster_token: Option<&str>) -> Gateway {
    gateway_with_keys(cluster_token, 0)
}

/// Keys `key_0` … on the plan without limits, secret `tgk_many-N-…`.
const MANY_KEYS: usize = 100_000;

fn many_secret(n: usize) -> String {
    format!("tgk_many-{n:06}-0123456789abcdef")
}

/// [`gateway`] with `extra` more keys on the plan without limits.
fn gateway_with_keys(cluster_token: Option<&str>, extra: usize) -> Gateway {
    let mut model = Model::default();
    for n in 0..extra {
        model.load(key(&format!("key_{n}"), &many_secret(n), "free"));
    }
    for api in ["free", "metered"] {
        model.load(Entity::Api(entity(json!({"id": api, "name": api, "stages": [{"name": "prod"}],
            "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]}))));
    }
    model.load(Entity::Plan(entity(json!({"id": "free", "name": "free",
        "api_stages": [{"api_id": "free", "stage": "prod"}]}))));
    model.load(Entity::Plan(entity(json!({"id": "metered", "name": "metered",
        "throttle": {"rate_per_sec": 1e9, "burst": 1_000_000_000u64},
        "quota": {"limit": 1_000_000_000_000u64, "period": "month"},
        "api_stages": [{"api_id": "metered", "stage": "prod"}]}))));
    model.load(key("key_free", SECRET, "free"));
    model.load(key("key_metered", LIMITED, "metered"));
    let published = Published { model, ..Default::default() };
    let model = Arc::new(ArcSwap::from_pointee(published));
    Gateway::with_stats(model, Arc::new(SystemClock), Default::default(), cluster_token)
}

fn request(api: &str, secret: &str) -> CheckRequest {
    CheckRequest {
        api: api.into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: "/items/1".into(),
        source_ip: Some("192.0.2.1".into()),
        headers: [
            ("x-api-key".to_string(), secret.to_string()),
            ("user-agent".to_string(), "bench/1.0".to_string()),
            ("accept".to_string(), "application/json".to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

fn codec(c: &mut Criterion) {
    let req = request("free", SECRET);
    let mut out = Vec::with_capacity(1024);
    c.bench_function("wire/encode check", |b| {
        b.iter(|| {
            out.clear();
            wire::encode_check_into(&mut out, 7, black_box(&req)).expect("encode");
        })
    });
    let frame = wire::encode_check(7, &req).expect("encode");
    c.bench_function("wire/decode check", |b| {
        b.iter(|| wire::next_frame::<ClientMessage>(black_box(&frame)).expect("decode"))
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let decision: Decision = runtime.block_on(gateway(None).check(&req)).expect("check");
    let answer = ServerMessage::Decision { id: 7, decision };
    c.bench_function("wire/encode decision", |b| {
        b.iter(|| {
            out.clear();
            wire::encode_into(&mut out, black_box(&answer)).expect("encode");
        })
    });
    let frame = wire::encode(&answer).expect("encode");
    c.bench_function("wire/decode decision", |b| {
        b.iter(|| wire::next_frame::<ServerMessage>(black_box(&frame)).expect("decode"))
    });
}

fn decide(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (plain, signing) = (gateway(None), gateway(Some("bench-cluster-token")));
    for (name, gateway, req) in [
        ("gateway/check, key on a plan without limits", &plain, request("free", SECRET)),
        ("gateway/check, key with throttle and quota", &plain, request("metered", LIMITED)),
        ("gateway/check, unknown key", &plain, request("free", "tgk_not-a-key-0123456789abcdef")),
        ("gateway/check, key, signed identity (as nodes run)", &signing, request("free", SECRET)),
    ] {
        let first = runtime.block_on(gateway.check(&req)).expect("check");
        let expected = if name.contains("unknown") { ReasonCode::UnknownKey } else { ReasonCode::Allowed };
        assert_eq!(first.reason, expected, "{name}: {}", first.message);
        let signed = first.upstream_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-tollgate-identity"));
        assert_eq!(signed, name.contains("signed"), "{name}: identity header");
        c.bench_function(name, |b| b.iter(|| runtime.block_on(gateway.check(black_box(&req)))));
    }
    // The same signed check over 100k keys in a random order: each key's
    // identity token is its own (reused only for the same claims).
    let many = gateway_with_keys(Some("bench-cluster-token"), MANY_KEYS);
    let mut order: Vec<usize> = (0..MANY_KEYS).collect();
    rand::seq::SliceRandom::shuffle(
        order.as_mut_slice(),
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
    );
    let requests: Vec<CheckRequest> = order.iter().map(|n| request("free", &many_secret(*n))).collect();
    // One pass over every key first, as a node serving them all has done:
    // the bench then measures the steady state, each key asked again well
    // within the time its token is reused.
    for req in &requests {
        let first = runtime.block_on(many.check(req)).expect("check");
        assert_eq!(first.reason, ReasonCode::Allowed, "{}", first.message);
    }
    let mut next = 0;
    c.bench_function("gateway/check, key, signed identity, 100k keys at random", |b| {
        b.iter(|| {
            next = (next + 1) % requests.len();
            runtime.block_on(many.check(black_box(&requests[next])))
        })
    });
}

/// The scenario of `gateway/check, key with throttle and quota` (one key,
/// a throttle of 1e9/s with a burst of 1e9, a quota of 1e12 that never
/// refuses) in the two Rust limiters nearest in purpose. Each answers only
/// the limiting question: no key lookup, route or identity, so the ratio
/// says what the rest of Tollgate's pipeline costs beside the counting.
fn peers(c: &mut Criterion) {
    use limitador::limit::{Context, Expression, Limit, Namespace};
    use std::collections::HashMap;
    use std::num::NonZeroU32;
    use std::time::Duration;

    let mut group = c.benchmark_group("peers");

    // limitador, in-memory storage: a per-second limit and a per-day limit
    // (limitador's periods are windows of seconds; no month), each counted
    // per value of the variable `key`. The context (the request's values)
    // is built once here; per call, limitador copies the namespace's limits
    // out of its lock, evaluates `key` (a CEL expression) for each limit,
    // builds a counter per limit (with a map of its variables) and finds or
    // creates each counter in its cache.
    let namespace: Namespace = "bench".into();
    let key = || [Expression::parse("key").expect("CEL expression")];
    let limiter = limitador::RateLimiter::new(10_000);
    limiter.add_limit(Limit::new(namespace.clone(), 1_000_000_000, 1, [], key()));
    limiter.add_limit(Limit::new(namespace.clone(), 1_000_000_000_000, 86_400, [], key()));
    let ctx = Context::from(HashMap::from([("key".to_string(), "key_metered".to_string())]));
    let first = limiter.check_rate_limited_and_update(&namespace, &ctx, 1).expect("limitador check");
    assert!(!first.limited && first.counters.len() == 2, "limitador: both limits apply and admit");
    group.bench_function("limitador, key with per-second and per-day limits", |b| {
        b.iter(|| limiter.check_rate_limited_and_update(black_box(&namespace), black_box(&ctx), 1))
    });

    // governor: a keyed GCRA of 1e9/s with a burst of 1e9 for the throttle,
    // and a second one for the quota. Governor has no quota periods (no
    // day or month that resets) and its burst is a u32, so the "daily
    // quota" is a GCRA that refills u32::MAX cells evenly over a day: the
    // same cost per check as a quota would have, not the same rule.
    let throttle_rate = NonZeroU32::new(1_000_000_000).expect("nonzero");
    let throttle = governor::RateLimiter::keyed(governor::Quota::per_second(throttle_rate).allow_burst(throttle_rate));
    let daily = governor::Quota::with_period(Duration::from_secs(86_400) / u32::MAX)
        .expect("nonzero period")
        .allow_burst(NonZeroU32::MAX);
    let daily: governor::DefaultKeyedRateLimiter<String> = governor::RateLimiter::keyed(daily);
    let key = "key_metered".to_string();
    assert!(throttle.check_key(&key).is_ok() && daily.check_key(&key).is_ok(), "governor admits");
    group.bench_function("governor, key with throttle and daily GCRA", |b| {
        b.iter(|| {
            let key = black_box(&key);
            throttle.check_key(key).and_then(|()| daily.check_key(key))
        })
    });
    group.finish();
}

criterion_group!(benches, codec, decide, peers);
criterion_main!(benches);

//! `ShouldRateLimit` on one node's gateway (in-memory authority, manual
//! clock): envoyproxy/ratelimit's meaning, all-or-none counting, hits,
//! modes, windows, and refused input.

use serde_json::json;
use tollgate_proto::model::{Entity, RateLimitDomain};
use tollgate_proto::ratelimit::{RateLimitCode, RateLimitRequest, RateLimitResponse};

use super::{entity, Fixture, NOW_MS};
use crate::gateway::ratelimit::RateLimitError;
use crate::gateway::Gateway;

/// A domain in envoyproxy/ratelimit's shape, as JSON.
fn edge() -> Entity {
    let d: RateLimitDomain = entity(json!({
        "id": "rld_edge", "domain": "edge",
        "descriptors": [
            {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 5},
             "descriptors": [{"key": "path", "value": "/login", "rate_limit": {"unit": "minute", "requests_per_unit": 2}}]},
            {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": 4}},
            {"key": "tenant", "rate_limit": {"unit": "second", "requests_per_unit": 2}},
            {"key": "shadow", "shadow_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 1}},
            {"key": "free", "rate_limit": {"unlimited": true}},
            {"key": "plan", "value": "basic", "rate_limit": {"unit": "minute", "requests_per_unit": 3, "name": "basic"}},
            {"key": "plan_override", "rate_limit": {"unit": "minute", "requests_per_unit": 100, "replaces": [{"name": "basic"}]}},
            {"key": "q1", "quota_mode": true, "rate_limit": {"unit": "hour", "requests_per_unit": 1}},
            {"key": "q2", "quota_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
            {"key": "files", "value": "/files/*", "share_threshold": true, "rate_limit": {"unit": "minute", "requests_per_unit": 2}}
        ]
    }));
    Entity::RateLimit(d)
}

fn gateway() -> (Gateway, Fixture) {
    let f = Fixture::new().with(edge());
    (f.gateway(), f)
}

/// A request of descriptors, each a list of `(key, value)`.
fn ask(descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    let descriptors = descriptors
        .iter()
        .map(|entries| {
            let entries: Vec<_> = entries.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
            json!({"entries": entries})
        })
        .collect::<Vec<_>>();
    entity(json!({"domain": "edge", "descriptors": descriptors}))
}

async fn answer(g: &Gateway, req: &RateLimitRequest) -> RateLimitResponse {
    g.should_rate_limit(req).await.unwrap_or_else(|e| panic!("refused: {e}"))
}

/// How many of `n` requests are `OK`.
async fn admitted(g: &Gateway, req: &RateLimitRequest, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if answer(g, req).await.overall_code == RateLimitCode::Ok {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn each_window_admits_exactly_its_limit_and_starts_again_in_the_next() {
    let (g, f) = gateway();
    let cases: &[(&[(&str, &str)], usize)] = &[
        (&[("remote_address", "10.0.0.1")], 5),
        (&[("remote_address", "10.0.0.1"), ("path", "/login")], 2),
        (&[("user", "alice")], 4),
        (&[("tenant", "t1")], 2),
    ];
    for (entries, limit) in cases {
        assert_eq!(admitted(&g, &ask(&[entries]), limit + 3).await, *limit, "{entries:?}");
    }
    // Another value is another count.
    assert_eq!(admitted(&g, &ask(&[&[("remote_address", "10.0.0.2")]]), 9).await, 5);
    // The next second, minute and hour start again (the hour's at 13:00).
    f.clock.set_ms(NOW_MS + 1_000);
    assert_eq!(admitted(&g, &ask(&[&[("tenant", "t1")]]), 5).await, 2);
    assert_eq!(admitted(&g, &ask(&[&[("remote_address", "10.0.0.1")]]), 5).await, 0, "same minute");
    f.clock.set_ms(NOW_MS + 60_000);
    assert_eq!(admitted(&g, &ask(&[&[("remote_address", "10.0.0.1")]]), 9).await, 5);
    assert_eq!(admitted(&g, &ask(&[&[("user", "alice")]]), 5).await, 0, "same hour");
    f.clock.set_ms(NOW_MS + 3_600_000);
    assert_eq!(admitted(&g, &ask(&[&[("user", "alice")]]), 9).await, 4);
}

#[tokio::test]
async fn a_request_over_one_limit_is_charged_to_none() {
    let (g, _f) = gateway();
    // 5 per address, 2 per address and /login: the third login is refused
    // by the login limit and takes nothing from the address's 5.
    let login = ask(&[&[("remote_address", "10.0.0.9")], &[("remote_address", "10.0.0.9"), ("path", "/login")]]);
    assert_eq!(admitted(&g, &login, 6).await, 2);
    let refused = answer(&g, &login).await;
    assert_eq!(refused.overall_code, RateLimitCode::OverLimit);
    let codes: Vec<_> = refused.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [RateLimitCode::Ok, RateLimitCode::OverLimit]);
    assert_eq!(admitted(&g, &ask(&[&[("remote_address", "10.0.0.9")]]), 9).await, 3, "5 less the 2 admitted");
    // An hour count beside a refused minute count is not charged either.
    let both = ask(&[&[("user", "bob")], &[("tenant", "t9")]]);
    assert_eq!(admitted(&g, &both, 5).await, 2);
    assert_eq!(admitted(&g, &ask(&[&[("user", "bob")]]), 9).await, 2, "4 less the 2 admitted");
}

#[tokio::test]
async fn hits_are_charged_per_request_or_per_descriptor() {
    let (g, _f) = gateway();
    let mut req = ask(&[&[("user", "carol")]]);
    req.hits_addend = 3;
    assert_eq!(admitted(&g, &req, 3).await, 1, "3 of 4, then 3 more would pass 4");
    req.hits_addend = 1;
    assert_eq!(admitted(&g, &req, 3).await, 1, "the last 1");
    // A descriptor's own hits win over the request's.
    let mut req: RateLimitRequest = ask(&[&[("remote_address", "10.0.0.3")]]);
    req.hits_addend = 4;
    req.descriptors[0].hits_addend = Some(2);
    assert_eq!(admitted(&g, &req, 4).await, 2, "2 + 2 of 5");
    // More than the limit at once is never admitted.
    req.descriptors[0].hits_addend = Some(6);
    req.descriptors[0].entries[0].value = "10.0.0.4".into();
    assert_eq!(admitted(&g, &req, 1).await, 0, "6 > 5");
    req.descriptors[0].hits_addend = Some(5);
    assert_eq!(admitted(&g, &req, 2).await, 1, "all 5 at once");
    // Hits of one count add up past 32 bits: 5 x 10^9 is more than a
    // window of 2^32 - 1 holds, for a minute window as for an hour.
    for unit in ["minute", "hour"] {
        let mut big: RateLimitRequest = entity(json!({"domain": "edge", "descriptors": [{
            "entries": [{"key": "huge", "value": unit}], "hits_addend": 1_000_000_000_u64,
            "limit": {"requests_per_unit": u32::MAX, "unit": unit}}]}));
        big.descriptors = vec![big.descriptors[0].clone(); 5];
        assert_eq!(admitted(&g, &big, 1).await, 0, "{unit}: 5 x 10^9 > 2^32 - 1");
        big.descriptors.truncate(4);
        assert_eq!(admitted(&g, &big, 1).await, 1, "{unit}: 4 x 10^9 fits");
    }
}

#[tokio::test]
async fn shadow_mode_counts_but_never_refuses_and_unlimited_is_never_counted() {
    let (g, _f) = gateway();
    let shadow = ask(&[&[("shadow", "x")]]);
    assert_eq!(admitted(&g, &shadow, 5).await, 5);
    let last = answer(&g, &shadow).await;
    assert_eq!(last.statuses[0].code, RateLimitCode::Ok);
    assert_eq!(last.statuses[0].limit_remaining, 0, "the shadow count is spent");
    let free = answer(&g, &ask(&[&[("free", "x")]])).await;
    assert_eq!((free.statuses[0].limit_remaining, free.statuses[0].current_limit.clone()), (u32::MAX, None));
}

#[tokio::test]
async fn a_limit_named_in_another_matched_limits_replaces_is_skipped() {
    let (g, _f) = gateway();
    let basic = ask(&[&[("plan", "basic")]]);
    assert_eq!(admitted(&g, &basic, 5).await, 3);
    let replaced = ask(&[&[("plan", "basic")], &[("plan_override", "x")]]);
    let a = answer(&g, &replaced).await;
    assert_eq!(a.overall_code, RateLimitCode::Ok, "basic is replaced, so its spent count does not refuse");
    assert_eq!(a.statuses[0].current_limit, None);
    assert_eq!(a.statuses[1].current_limit.as_ref().map(|l| l.requests_per_unit), Some(100));
}

#[tokio::test]
async fn quota_mode_limits_refuse_only_when_all_are_over() {
    let (g, _f) = gateway();
    let both = ask(&[&[("q1", "a")], &[("q2", "a")]]);
    let first = answer(&g, &both).await;
    assert_eq!(first.overall_code, RateLimitCode::Ok);
    // q1 (1 an hour) is now over; q2 (2 a minute) still has one.
    let second = answer(&g, &both).await;
    assert_eq!(second.overall_code, RateLimitCode::Ok);
    assert_eq!(
        second.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
        [RateLimitCode::OverLimit, RateLimitCode::Ok]
    );
    let third = answer(&g, &both).await;
    assert_eq!(third.overall_code, RateLimitCode::OverLimit, "both are over");
}

#[tokio::test]
async fn a_shared_pattern_counts_every_value_together_and_others_apart() {
    let (g, _f) = gateway();
    assert_eq!(admitted(&g, &ask(&[&[("files", "/files/a")]]), 1).await, 1);
    assert_eq!(admitted(&g, &ask(&[&[("files", "/files/b")]]), 3).await, 1, "one count of 2 for /files/*");
}

#[tokio::test]
async fn an_unknown_domain_or_descriptor_is_ok_without_a_limit() {
    let (g, _f) = gateway();
    let mut req = ask(&[&[("nothing", "x")]]);
    let a = answer(&g, &req).await;
    assert_eq!((a.overall_code, a.statuses[0].current_limit.clone()), (RateLimitCode::Ok, None));
    req.domain = "elsewhere".into();
    assert_eq!(answer(&g, &req).await.overall_code, RateLimitCode::Ok);
}

#[tokio::test]
async fn the_headers_name_the_tightest_limit_when_asked() {
    let (g, _f) = gateway();
    let mut req = ask(&[&[("remote_address", "10.0.0.7")], &[("remote_address", "10.0.0.7"), ("path", "/login")]]);
    assert!(answer(&g, &req).await.response_headers.is_empty(), "not asked");
    req.response_headers = true;
    let a = answer(&g, &req).await;
    let h: Vec<(&str, &str)> = a.response_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(h, [("x-ratelimit-limit", "2, 2;w=60"), ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "60")]);
    assert_eq!(a.statuses[0].limit_remaining, 3);
    assert_eq!(a.statuses[1].duration_until_reset_secs, Some(60));
}

#[tokio::test]
async fn bad_input_names_the_field_and_counts_nothing() {
    let (g, _f) = gateway();
    let ok = ask(&[&[("remote_address", "10.0.0.8")]]);
    let many: Vec<&[(&str, &str)]> = vec![&[("remote_address", "10.0.0.8")]; 65];
    let deep: Vec<(&str, &str)> = vec![("remote_address", "10.0.0.8"); 17];
    let long_key = "k".repeat(256);
    let long_value = "v".repeat(1025);
    let mut cases: Vec<(RateLimitRequest, &str)> = Vec::new();
    let mut r = ok.clone();
    r.domain = String::new();
    cases.push((r, "domain"));
    cases.push((ask(&many), "descriptors"));
    cases.push((ask(&[]), "descriptors"));
    cases.push((ask(&[&[]]), "descriptors[0].entries"));
    cases.push((ask(&[&deep]), "descriptors[0].entries"));
    cases.push((ask(&[&[("remote_address", "10.0.0.8")], &[(&long_key, "x")]]), "descriptors[1].entries[0].key"));
    cases.push((ask(&[&[("", "x")]]), "descriptors[0].entries[0].key"));
    cases.push((ask(&[&[("remote_address", &long_value)]]), "descriptors[0].entries[0].value"));
    let mut r = ok.clone();
    r.hits_addend = 1_000_000_001;
    cases.push((r, "hits_addend"));
    let mut r = ok.clone();
    r.descriptors[0].hits_addend = Some(u64::MAX);
    cases.push((r, "descriptors[0].hits_addend"));
    let refused = cases.len() as u64;
    for (req, field) in cases {
        match g.should_rate_limit(&req).await {
            Err(RateLimitError::Invalid(e)) => assert_eq!(e.field, field, "{}", e.message),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(admitted(&g, &ok, 9).await, 5, "nothing was counted");
    let counted = |answer: &str| g.stats.ratelimit.with_label_values(&[answer]).get();
    assert_eq!((counted("invalid"), counted("ok"), counted("over_limit")), (refused, 5, 4));
}

// (descriptor entries, its count's name, limit, window in ms)
type Shape = &'static [(&'static [(&'static str, &'static str)], &'static str, u64, i64)];
const SHAPES: [Shape; 6] = [
    &[(&[("a", "v1")], "a:v1", 7, 60_000)],
    &[(&[("a", "v1"), ("x", "y")], "a:v1/x", 4, 60_000), (&[("a", "v1")], "a:v1", 7, 60_000)],
    &[(&[("b", "u1")], "b:u1", 5, 3_600_000)],
    &[(&[("b", "u1")], "b:u1", 5, 3_600_000), (&[("c", "t1")], "c:t1", 3, 1_000)],
    &[(&[("c", "t1")], "c:t1", 3, 1_000), (&[("c", "t1")], "c:t1", 3, 1_000)],
    &[(&[("a", "v2")], "a:v2", 7, 60_000), (&[("b", "u1")], "b:u1", 5, 3_600_000)],
];
const STEPS_MS: [i64; 5] = [0, 300, 1_100, 61_000, 3_600_000];

/// Over random histories of requests (several descriptors each, random
/// hits, the clock moving across second, minute and hour windows), one
/// node admits a request exactly when every count it names has room for
/// its hits, and then charges each of them, as a plain model of fixed
/// windows does: all or none, never past a limit, never refusing room.
///
/// Exactly, while the node's lease session lives: here no background task
/// renews it, so a history is run twice, with sessions longer than any
/// history (the node must decide as the model does), and with the default
/// 10 s ones, which lapse when the clock jumps a minute: then what the node
/// held is charged whole until it reports, so it may refuse room the model
/// sees, but must never admit what the model refuses.
#[test]
fn random_histories_are_decided_as_a_model_of_fixed_windows_decides_them() {
    use proptest::test_runner::{Config, TestRunner};

    let domain: RateLimitDomain = entity(json!({"id": "rld_p", "domain": "edge", "descriptors": [
        {"key": "a", "rate_limit": {"unit": "minute", "requests_per_unit": 7},
         "descriptors": [{"key": "x", "rate_limit": {"unit": "minute", "requests_per_unit": 4}}]},
        {"key": "b", "rate_limit": {"unit": "hour", "requests_per_unit": 5}},
        {"key": "c", "rate_limit": {"unit": "second", "requests_per_unit": 3}}
    ]}));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let step = (0..SHAPES.len(), 1..4u64, 0..STEPS_MS.len());
    let histories = proptest::collection::vec(step, 1..60);
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    let result = runner.run(&histories, |history| {
        runtime.block_on(async {
            for exact in [true, false] {
                history_as_the_model(&domain, &history, exact).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runs one history on a fresh node against the model; `exact`: sessions
/// never lapse, and the node must decide as the model does.
async fn history_as_the_model(
    domain: &RateLimitDomain,
    history: &[(usize, u64, usize)],
    exact: bool,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::test_runner::TestCaseError;

    use crate::metering::{LocalAuthority, Metering, MeteringConfig};

    let f = Fixture::new().with(Entity::RateLimit(domain.clone()));
    let published =
        crate::state::published::Published { model: f.model.clone(), applied: None, limits: Default::default() };
    let model = Arc::new(arc_swap::ArcSwap::from_pointee(published));
    let mut config = MeteringConfig::default();
    if exact {
        config.lease_ms = 1_000 * 86_400_000;
    }
    let authority = Arc::new(LocalAuthority::new(model.clone()));
    let metering = Metering::new(authority, f.clock.clone(), config, Default::default());
    let g = Gateway::with_metering(model, f.clock.clone(), Default::default(), None, metering);
    let mut now = NOW_MS;
    // Used per (count, window start).
    let mut used: HashMap<(&str, i64), u64> = HashMap::new();
    for (i, &(shape, hits, step)) in history.iter().enumerate() {
        now += STEPS_MS[step];
        f.clock.set_ms(now);
        let shape = SHAPES[shape];
        let mut req = ask(&shape.iter().map(|(entries, ..)| *entries).collect::<Vec<_>>());
        req.hits_addend = hits;
        // The model: each count's hits added up, all must fit.
        let mut wanted: HashMap<(&str, i64), (u64, u64)> = HashMap::new();
        for (_, count, limit, window) in shape {
            let key = (*count, now - now.rem_euclid(*window));
            wanted.entry(key).or_insert((0, *limit)).0 += hits;
        }
        let fits = wanted.iter().all(|(k, (n, limit))| used.get(k).copied().unwrap_or(0) + n <= *limit);
        let answer = g.should_rate_limit(&req).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let admitted = answer.overall_code == RateLimitCode::Ok;
        if admitted && !fits || exact && admitted != fits {
            return Err(TestCaseError::fail(format!(
                        "step {i} (exact: {exact}): {shape:?} x{hits} at +{} ms: admitted {admitted}, the model {fits} ({used:?})",
                        now - NOW_MS
                    )));
        }
        if admitted {
            for (k, (n, _)) in wanted {
                *used.entry(k).or_insert(0) += n;
            }
        }
    }
    Ok(())
}

//! Scenarios of metering on the in-memory authority and on test doubles.

use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tollgate_proto::model::{Entity, Period, UsagePlan};

use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::check::ReasonCode;
use tollgate_proto::command::{QuotaPeriod, QuotaUsage};
use tollgate_proto::metering::QuotaLedger;
use tollgate_proto::model::{Quota, Throttle};

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::cluster::state_machine::Published;
use crate::state::Model;

const T0: i64 = 1_800_000_000_000;

fn quota_limits(limit: u64) -> (Limits, QuotaPeriod, crate::cluster::state_machine::SharedModel) {
    let mut model = Model::default();
    let plan: UsagePlan = serde_json::from_value(serde_json::json!({
        "id": "gold", "name": "Gold", "quota": {"limit": limit, "period": "day"}, "api_stages": []
    }))
    .expect("plan");
    model.load(Entity::Plan(plan));
    let period = QuotaPeriod { key_id: "k".into(), plan_id: "gold".into(), start_ms: 0 };
    let quota = Quota { limit, period: Period::Day, offset: 0 };
    let quota = QuotaLimit { period: period.clone(), quota, ends_ms: T0 + 86_400_000 };
    let limits = Limits { quota: Some(quota), ..Default::default() };
    let shared = Arc::new(ArcSwap::from_pointee(Published { model, applied: None, limits: Default::default() }));
    (limits, period, shared)
}

#[tokio::test]
async fn use_is_reported_exactly_and_an_idle_grant_handed_back() {
    let (limits, period, model) = quota_limits(1_000);
    let authority = Arc::new(LocalAuthority::new(model));
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
    for _ in 0..7 {
        assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
    }
    // Background refills may still be on their way; let them land.
    tokio::task::yield_now().await;
    m.flush(clock.now_ms(), false).await;
    let ledger = authority.ledger(&period);
    assert_eq!(ledger.consumed, 7, "{ledger:?}");
    assert!(ledger.outstanding() > 0, "the node still holds the rest of its grant");
    clock.advance_ms(2_000); // the idle time after which a lease goes back
    m.flush(clock.now_ms(), false).await;
    let ledger = authority.ledger(&period);
    assert_eq!((ledger.consumed, ledger.outstanding()), (7, 0), "idle: the rest went back");
}

fn throttle_limits(rate_per_sec: f64, burst: u32) -> Limits {
    let id = BucketId::Key { key: "k".into(), plan: "p".into(), method_override: None };
    Limits { key: Some(ThrottleLimit { bucket: id, throttle: Throttle { rate_per_sec, burst } }), ..Default::default() }
}

#[tokio::test]
async fn a_booked_token_the_client_never_came_back_for_goes_back_to_the_bucket() {
    // The case: 0.25/s, burst 1; a 429 at t=0.1 s books the next
    // token; the client comes back only after Retry-After + 2 s.
    let limits = throttle_limits(0.25, 1);
    let (_, _, model) = quota_limits(1);
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
    assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
    clock.advance_ms(100);
    let Refusal { reason, state } = m.admit(&limits, clock.now_ms(), 0).await.expect_err("throttled");
    assert_eq!((reason, state.retry_after_secs), (ReasonCode::Throttled, Some(4)));
    for round in 0..5 {
        clock.advance_ms((4 + 2) * 1000);
        let answer = m.admit(&limits, clock.now_ms(), 0).await;
        assert!(answer.is_ok(), "round {round}: waiting past Retry-After was refused: {answer:?}");
    }
}

/// A small deterministic generator.
fn generator(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound.max(1)
    }
}

/// Random clients against random buckets: one that waits what
/// `Retry-After` says after a refusal, or spaces its requests more than
/// 1/rate apart, is always admitted; refusals take nothing, so the
/// bucket's whole rate stays usable.
#[tokio::test]
async fn a_client_that_waits_what_the_headers_say_is_admitted() {
    let mut next = generator(0x5851_f42d_4c95_7f2d);
    for history in 0..60 {
        let rate = [0.25, 0.5, 1.0, 3.5, 10.0, 40.0][next(6) as usize];
        let burst = 1 + next(5) as u32;
        let limits = throttle_limits(rate, burst);
        let (_, _, model) = quota_limits(1);
        let clock = Arc::new(ManualClock::at(T0));
        let authority = Arc::new(LocalAuthority::new(model));
        let m = Metering::new(authority, clock.clone(), Default::default(), Default::default());
        let spacing_ms = (1000.0 / rate).ceil() as i64 + 1;
        let mut must_pass = false;
        for step in 0..40 {
            let answer = m.admit(&limits, clock.now_ms(), 0).await;
            if must_pass {
                assert!(answer.is_ok(), "history {history} step {step} ({rate}/s burst {burst}): {answer:?}");
            }
            if next(4) == 0 {
                // Now and then the abandoned-token case: give back what ran out.
                m.give_back_unused(clock.now_ms()).await;
            }
            must_pass = match (answer, next(3)) {
                // Refused: wait exactly Retry-After.
                (Err(Refusal { state, .. }), _) => {
                    clock.advance_ms(state.retry_after_secs.unwrap_or(1) as i64 * 1000);
                    true
                }
                // Admitted: a burst (no promise), or a polite spacing.
                (Ok(_), 0) => false,
                (Ok(_), 1) => {
                    clock.advance_ms(spacing_ms + next(1000) as i64);
                    true
                }
                (Ok(_), _) => {
                    clock.advance_ms(next(spacing_ms as u64) as i64);
                    false
                }
            };
        }
    }
}

#[tokio::test]
async fn a_spent_quota_says_to_come_back_when_the_period_ends() {
    let (limits, _, model) = quota_limits(1);
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
    assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
    m.flush(clock.now_ms(), false).await;
    let Refusal { reason, state } = m.admit(&limits, clock.now_ms(), 0).await.expect_err("spent");
    let to_period_end = (86_400_000u64).div_ceil(1000);
    assert_eq!(
        (reason, state.retry_after_secs, state.reset_secs),
        (ReasonCode::QuotaExceeded, Some(to_period_end), to_period_end)
    );
}

#[tokio::test]
async fn headers_show_the_tightest_limit_and_a_throttle_resets_when_full() {
    // A throttle of 1/s, burst 5, under a large quota: the fifth request
    // has no token left, and says so.
    let (mut limits, _, model) = quota_limits(1_000_000);
    limits.key = throttle_limits(1.0, 5).key;
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
    let mut last = None;
    for _ in 0..5 {
        last = m.admit(&limits, clock.now_ms(), 0).await.expect("within the burst");
    }
    let state = last.expect("a limit state");
    assert_eq!((state.limit, state.remaining, state.reset_secs), (5, 0, 5));
    assert!(m.admit(&limits, clock.now_ms(), 0).await.is_err());
    // 0.25/s with burst 1: the bucket is full again in 4 s, not 1.
    let (_, _, model) = quota_limits(1);
    let m = Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
    let limits = throttle_limits(0.25, 1);
    let state = m.admit(&limits, clock.now_ms(), 0).await.expect("a token").expect("a limit state");
    assert_eq!((state.remaining, state.reset_secs), (0, 4));
}

/// An in-memory authority whose grants wait until the test lets them through.
struct Gated {
    inner: LocalAuthority,
    open: tokio::sync::Semaphore,
}

impl Authority for Gated {
    fn grant(
        &self,
        period: QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>> {
        Box::pin(async move {
            let _pass = self.open.acquire().await.map_err(|e| Unavailable(e.to_string()))?;
            self.inner.grant(period, holder, want, lease_until_ms, now_ms).await
        })
    }
    fn report(&self, id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        self.inner.report(id, usage, now_ms)
    }
    fn lend(&self, request: LendRequest, now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
        self.inner.lend(request, now_ms)
    }
    fn members(&self) -> u32 {
        1
    }
    fn node_id(&self) -> u64 {
        1
    }
}

#[tokio::test]
async fn a_check_given_up_while_it_fetches_does_not_wedge_the_lease() {
    let (limits, _, model) = quota_limits(1_000);
    let authority = Arc::new(Gated { inner: LocalAuthority::new(model), open: tokio::sync::Semaphore::new(0) });
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
    // The first check starts a grant and is dropped while it waits (its client went away).
    let given_up = tokio::time::timeout(Duration::from_millis(20), m.admit(&limits, T0, 0)).await;
    assert!(given_up.is_err(), "the grant is held back, so the check cannot finish");
    // The grant goes through: the next check is admitted from it.
    authority.open.add_permits(100);
    let next = tokio::time::timeout(Duration::from_millis(500), m.admit(&limits, T0, 0)).await;
    assert!(matches!(next, Ok(Ok(_))), "the lease was left waiting for a fetch no one runs: {next:?}");
}

/// An authority that is never reachable, counting how often it is asked.
#[derive(Default)]
struct Unreachable(AtomicUsize);

impl Authority for Unreachable {
    fn grant(
        &self,
        _: QuotaPeriod,
        _: u64,
        _: u64,
        _: i64,
        _: i64,
    ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn report(&self, _: u128, _: Vec<QuotaUsage>, _: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn lend(&self, _: LendRequest, _: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn members(&self) -> u32 {
        3
    }
    fn node_id(&self) -> u64 {
        1
    }
}

#[tokio::test]
async fn without_the_leader_a_node_refuses_quota_it_does_not_hold_and_shares_throttles() {
    let (limits, _, _) = quota_limits(1_000);
    let authority = Arc::new(Unreachable::default());
    let clock = Arc::new(ManualClock::at(T0));
    let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
    for _ in 0..3 {
        let Refusal { reason, .. } = m.admit(&limits, clock.now_ms(), 0).await.expect_err("no grant held");
        assert_eq!(reason, ReasonCode::QuotaUnavailable);
    }
    assert_eq!(authority.0.load(Ordering::SeqCst), 1, "asked once, then refused from memory");
    // A throttle falls back to this node's share: a third of the burst.
    let throttle = Throttle { rate_per_sec: 30.0, burst: 9 };
    let id = BucketId::Stage { api: "a".into(), stage: "s".into() };
    let limits = Limits { stage: Some(ThrottleLimit { bucket: id, throttle }), ..Default::default() };
    let mut admitted = 0;
    for _ in 0..9 {
        if m.admit(&limits, clock.now_ms(), 0).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

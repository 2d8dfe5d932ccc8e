//! Metering scenarios any [`Authority`] must pass, as Limitador runs every
//! test on every storage: the same scenarios prove the in-memory authority
//! (unit tests, [`InMemory`]) and the cluster's (an integration test
//! implementing [`Backend`] over a real cluster and calling [`run_all`]).
//!
//! Each scenario builds its own [`Metering`] on a fresh authority from the
//! backend ([`Backend::subject`]: an authority and a key), with a plan of
//! its own (named after the scenario), so scenarios can share one cluster. Scenarios panic, naming what failed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tollgate_proto::check::ReasonCode;
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::metering::QuotaLedger;
use tollgate_proto::model::{Entity, Period, Throttle, UsagePlan};

use super::{
    lock, Authority, BoxFuture, BucketId, Limits, LocalAuthority, Metering, MeteringConfig, QuotaLimit, Refusal,
    ThrottleLimit,
};
use crate::clock::{period_bounds, Clock, ManualClock};
use crate::state::published::Published;

/// Where the scenarios run: fresh authorities, a clock, and a way to read
/// the ledger back.
pub trait Backend: Send + Sync {
    /// A fresh authority whose model holds plan `plan_id` with a daily quota
    /// of `limit` requests, and a key on that plan (scenarios use a new plan
    /// id each). A cluster backend creates both through its admin API and
    /// answers an authority of one of its nodes with the key's id.
    fn subject<'a>(&'a self, plan_id: &'a str, limit: u64) -> BoxFuture<'a, Subject>;
    /// The ledger of `period` as the subject's authority holds it now (a
    /// cluster backend reads it after the last report is applied).
    fn ledger<'a>(&'a self, subject: &'a Subject, period: &'a QuotaPeriod) -> BoxFuture<'a, QuotaLedger>;
    /// The clock the node's metering runs on.
    fn clock(&self) -> Arc<dyn Clock>;
    /// Lets `ms` milliseconds pass (a manual clock moves; a real one is slept on).
    fn pass(&self, ms: i64) -> BoxFuture<'_, ()>;
    /// Whether the authority's throttle buckets follow [`Self::clock`] exactly
    /// (the in-memory one does; a cluster's leader lends by its own clock).
    /// Scenarios that count exact seconds of `Retry-After` need it.
    fn exact_time(&self) -> bool;
}

/// What a scenario runs against: an authority, and the key whose quota it counts.
#[derive(Clone)]
pub struct Subject {
    pub authority: Arc<dyn Authority>,
    /// A key on the scenario's plan (the cluster's ledger refuses others).
    pub key_id: String,
}

/// One scenario: its name, whether it needs [`Backend::exact_time`], and how to run it.
pub struct Scenario {
    pub name: &'static str,
    pub needs_exact_time: bool,
    pub run: for<'a> fn(&'a dyn Backend) -> BoxFuture<'a, ()>,
}

macro_rules! scenarios {
    ($($name:ident: $exact:expr),* $(,)?) => {
        /// Every scenario, in the order [`run_all`] runs them.
        pub const SCENARIOS: &[Scenario] = &[$(Scenario {
            name: stringify!($name),
            needs_exact_time: $exact,
            run: |backend| Box::pin($name(backend)),
        }),*];
    };
}

scenarios! {
    use_is_reported_exactly_and_an_idle_grant_handed_back: false,
    a_quiet_nodes_standing_share_is_recalled_for_a_busy_one: false,
    a_quiet_key_is_decided_from_memory_after_its_first_check: false,
    a_tightened_throttle_spends_nothing_lent_under_the_old_one: false,
    a_spent_quota_says_to_come_back_when_the_period_ends: false,
    a_check_given_up_while_it_fetches_does_not_wedge_the_lease: false,
    a_booked_token_the_client_never_came_back_for_goes_back_to_the_bucket: true,
    a_client_that_waits_what_the_headers_say_is_admitted: true,
    headers_show_the_tightest_limit_and_a_throttle_resets_when_full: true,
}

/// Runs every scenario the backend can run (those needing exact time only
/// if it has it); answers the names run. Panics on the first that fails.
pub async fn run_all(backend: &dyn Backend) -> Vec<&'static str> {
    let mut ran = Vec::new();
    for scenario in SCENARIOS {
        if scenario.needs_exact_time && !backend.exact_time() {
            continue;
        }
        (scenario.run)(backend).await;
        ran.push(scenario.name);
    }
    ran
}

/// The in-memory backend: a [`LocalAuthority`] per scenario, on a
/// [`ManualClock`] standing at 2027-01-15 (a Friday), moved by [`Backend::pass`].
pub struct InMemory {
    clock: Arc<ManualClock>,
    /// The authority made for each plan, to read its ledger back.
    made: std::sync::Mutex<std::collections::HashMap<String, Arc<LocalAuthority>>>,
}

/// Where the in-memory clock starts, in ms since the Unix epoch.
pub const T0: i64 = 1_800_000_000_000;

impl InMemory {
    /// A backend whose clock stands at [`T0`].
    pub fn new() -> Self {
        InMemory { clock: Arc::new(ManualClock::at(T0)), made: Default::default() }
    }
}

impl Default for InMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A model holding one plan, `plan_id`, with a daily quota of `limit`.
pub fn model_with_plan(plan_id: &str, limit: u64) -> crate::state::published::SharedModel {
    let mut model = crate::state::Model::default();
    let plan: UsagePlan = serde_json::from_value(serde_json::json!({
        "id": plan_id, "name": plan_id, "quota": {"limit": limit, "period": "day"}, "api_stages": []
    }))
    .unwrap_or_else(|e| panic!("plan {plan_id}: {e}"));
    model.load(Entity::Plan(plan));
    Arc::new(ArcSwap::from_pointee(Published { model, applied: None, limits: Default::default() }))
}

impl Backend for InMemory {
    fn subject<'a>(&'a self, plan_id: &'a str, limit: u64) -> BoxFuture<'a, Subject> {
        let authority = Arc::new(LocalAuthority::new(model_with_plan(plan_id, limit)));
        lock(&self.made).insert(plan_id.to_string(), authority.clone());
        Box::pin(async move { Subject { authority, key_id: "k".into() } })
    }

    fn ledger<'a>(&'a self, _: &'a Subject, period: &'a QuotaPeriod) -> BoxFuture<'a, QuotaLedger> {
        let ledger = match lock(&self.made).get(&period.plan_id) {
            Some(local) => local.ledger(period),
            None => panic!("no authority was made for plan {:?}", period.plan_id),
        };
        Box::pin(async move { ledger })
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn pass(&self, ms: i64) -> BoxFuture<'_, ()> {
        self.clock.advance_ms(ms);
        Box::pin(async {})
    }

    fn exact_time(&self) -> bool {
        true
    }
}

/// Metering with the default tuning on `authority` and the backend's clock.
fn metering(backend: &dyn Backend, subject: &Subject) -> Arc<Metering> {
    Metering::new(subject.authority.clone(), backend.clock(), MeteringConfig::default(), Default::default())
}

/// Limits with only the plan's daily quota, for the subject's key in the current period.
fn quota_limits(backend: &dyn Backend, subject: &Subject, plan_id: &str, limit: u64) -> Limits {
    let (start_ms, ends_ms) = period_bounds(backend.clock().now_ms(), Period::Day, 0);
    let period = QuotaPeriod { key_id: subject.key_id.clone(), plan_id: plan_id.into(), start_ms };
    let quota = QuotaLimit { period, limit, ends_ms, epoch: 0, cost: 1 };
    Limits { quotas: [quota].into_iter().collect(), ..Default::default() }
}

/// Limits with only a key throttle.
fn throttle_limits(subject: &Subject, plan_id: &str, rate_per_sec: f64, burst: u32) -> Limits {
    let bucket = BucketId::Key { key: subject.key_id.clone(), plan: plan_id.into(), method_override: None };
    let throttle = ThrottleLimit::one(bucket, Throttle { rate_per_sec, burst }, ReasonCode::Throttled);
    Limits { throttles: [throttle].into_iter().collect(), ..Default::default() }
}

fn now(backend: &dyn Backend) -> i64 {
    backend.clock().now_ms()
}

/// Admitted units are reported exactly; a grant merely quiet stays (its
/// session keeps it), one unused for `quiet_ms` goes back.
pub async fn use_is_reported_exactly_and_an_idle_grant_handed_back(backend: &dyn Backend) {
    let plan = "scenario-reported-exactly";
    let subject = backend.subject(plan, 1_000).await;
    let limits = quota_limits(backend, &subject, plan, 1_000);
    let Some(QuotaLimit { period, .. }) = limits.quotas.first() else { unreachable!("a quota") };
    let quiet_ms = 3_000;
    let config = MeteringConfig { quiet_ms, ..Default::default() };
    let m = Metering::new(subject.authority.clone(), backend.clock(), config, Default::default());
    for _ in 0..7 {
        assert!(m.admit(&limits, now(backend)).await.is_ok());
    }
    // Background refills may still be on their way; let them land.
    tokio::task::yield_now().await;
    m.flush(now(backend), false).await;
    let ledger = backend.ledger(&subject, period).await;
    assert_eq!(ledger.consumed, 7, "{ledger:?}");
    assert!(ledger.outstanding() > 0, "the node still holds the rest of its grant");
    backend.pass(quiet_ms / 2).await;
    m.flush(now(backend), false).await;
    let ledger = backend.ledger(&subject, period).await;
    assert!(ledger.outstanding() > 0, "quiet for a while, the grant stays: {ledger:?}");
    backend.pass(quiet_ms / 2).await;
    m.flush(now(backend), false).await;
    let ledger = backend.ledger(&subject, period).await;
    assert_eq!((ledger.consumed, ledger.outstanding()), (7, 0), "unused for quiet_ms: the rest went back");
}

/// A node that took a standing share of a key's quota and went quiet
/// hands it back when the ledger recalls it: another node using the key up
/// to its limit gets every unit, exactly (the quota is not cut short by a
/// share sitting unused elsewhere).
pub async fn a_quiet_nodes_standing_share_is_recalled_for_a_busy_one(backend: &dyn Backend) {
    let plan = "scenario-recalled";
    let limit = 4_000; // a standing share of 4 units
    let subject = backend.subject(plan, limit).await;
    let limits = quota_limits(backend, &subject, plan, limit);
    let Some(QuotaLimit { period, .. }) = limits.quotas.first() else { unreachable!("a quota") };
    let quiet = metering(backend, &subject);
    let busy = metering(backend, &subject);
    assert!(quiet.admit(&limits, now(backend)).await.is_ok());
    quiet.flush(now(backend), false).await;
    let held = backend.ledger(&subject, period).await.outstanding();
    assert!(held >= 3, "the quiet node holds its standing share: {held}");
    let mut admitted = 0u64;
    let mut refusals = 0;
    while admitted < limit && refusals < 50 {
        match busy.admit(&limits, now(backend)).await {
            Ok(_) => admitted += 1,
            Err(_) => {
                // Held elsewhere: the quiet node sees the recall at its next flush.
                refusals += 1;
                backend.pass(250).await;
                quiet.flush(now(backend), false).await;
            }
        }
    }
    busy.flush(now(backend), false).await;
    assert_eq!(admitted, limit - 1, "every unit but the quiet node's one use went to the busy node");
    let ledger = backend.ledger(&subject, period).await;
    assert_eq!(ledger.consumed + ledger.outstanding(), limit, "{ledger:?}");
}

/// A key checked now and then, with a quota and a throttle far from their
/// limits, is decided from the standing shares the node holds: one grant
/// and one loan for eight checks, where a grant or loan sized by the key's
/// rate alone would take one per check.
pub async fn a_quiet_key_is_decided_from_memory_after_its_first_check(backend: &dyn Backend) {
    let plan = "scenario-quiet-key";
    let subject = backend.subject(plan, 100_000).await;
    let counting = Arc::new(super::doubles::Counting::new(subject.authority.clone()));
    let m = metering(backend, &Subject { authority: counting.clone(), key_id: subject.key_id.clone() });
    let mut limits = quota_limits(backend, &subject, plan, 100_000);
    limits.throttles = throttle_limits(&subject, plan, 10.0, 240).throttles;
    for i in 0..8 {
        assert!(m.admit(&limits, now(backend)).await.is_ok(), "check {i}");
        // Background fetches, if any, land before the next check comes.
        tokio::task::yield_now().await;
        backend.pass(300).await;
    }
    let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((count(&counting.asks), count(&counting.lends)), (1, 1), "one grant and one loan for eight checks");
}

/// Tokens a node holds under a throttle (its standing share) are not spent
/// once the throttle is tightened: the new burst is all that passes.
pub async fn a_tightened_throttle_spends_nothing_lent_under_the_old_one(backend: &dyn Backend) {
    let plan = "scenario-tightened";
    let subject = backend.subject(plan, 1_000_000).await;
    let m = metering(backend, &subject);
    let loose = throttle_limits(&subject, plan, 1.0, 40);
    assert!(m.admit(&loose, now(backend)).await.is_ok(), "a token under the old throttle");
    let tight = throttle_limits(&subject, plan, 0.01, 2);
    let mut admitted = 0;
    for _ in 0..10 {
        if m.admit(&tight, now(backend)).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "the new burst, and nothing lent under the old one");
}

/// A spent quota answers 429 with `Retry-After` at the period's end.
pub async fn a_spent_quota_says_to_come_back_when_the_period_ends(backend: &dyn Backend) {
    let plan = "scenario-spent-quota";
    let subject = backend.subject(plan, 1).await;
    let m = metering(backend, &subject);
    let limits = quota_limits(backend, &subject, plan, 1);
    let ends_ms = limits.quotas.first().map_or(0, |q| q.ends_ms);
    assert!(m.admit(&limits, now(backend)).await.is_ok());
    m.flush(now(backend), false).await;
    let asked_ms = now(backend);
    let Refusal { reason, state, .. } = m.admit(&limits, asked_ms).await.expect_err("spent");
    let to_period_end = ((ends_ms - asked_ms) as u64).div_ceil(1000);
    assert_eq!(
        (reason, state.retry_after_secs, state.reset_secs),
        (ReasonCode::QuotaExceeded, Some(to_period_end), to_period_end)
    );
}

/// A check dropped while its grant is on the way leaves the lease usable.
pub async fn a_check_given_up_while_it_fetches_does_not_wedge_the_lease(backend: &dyn Backend) {
    let plan = "scenario-given-up";
    let subject = backend.subject(plan, 1_000).await;
    let gated = Arc::new(super::doubles::Gated::new(subject.authority.clone()));
    let m = metering(backend, &Subject { authority: gated.clone(), key_id: subject.key_id.clone() });
    let limits = quota_limits(backend, &subject, plan, 1_000);
    // The first check starts a grant and is dropped while it waits (its client went away).
    let given_up = tokio::time::timeout(Duration::from_millis(20), m.admit(&limits, now(backend))).await;
    assert!(given_up.is_err(), "the grant is held back, so the check cannot finish");
    // The grant goes through: the next check is admitted from it.
    gated.open(100);
    let next = tokio::time::timeout(Duration::from_millis(1_500), m.admit(&limits, now(backend))).await;
    assert!(matches!(next, Ok(Ok(_))), "the lease was left waiting for a fetch no one runs: {next:?}");
}

/// The case: 0.25/s, burst 1; a 429 at t=0.1 s books the next
/// token; the client comes back only after `Retry-After` + 2 s.
pub async fn a_booked_token_the_client_never_came_back_for_goes_back_to_the_bucket(backend: &dyn Backend) {
    let plan = "scenario-booked-token";
    let subject = backend.subject(plan, 1).await;
    let m = metering(backend, &subject);
    let limits = throttle_limits(&subject, plan, 0.25, 1);
    assert!(m.admit(&limits, now(backend)).await.is_ok());
    backend.pass(100).await;
    let Refusal { reason, state, .. } = m.admit(&limits, now(backend)).await.expect_err("throttled");
    assert_eq!((reason, state.retry_after_secs), (ReasonCode::Throttled, Some(4)));
    for round in 0..5 {
        backend.pass((4 + 2) * 1000).await;
        let answer = m.admit(&limits, now(backend)).await;
        assert!(answer.is_ok(), "round {round}: waiting past Retry-After was refused: {answer:?}");
    }
}

/// A small deterministic generator.
fn generator(seed: u64) -> impl FnMut(u64) -> u64 {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    move |bound: u64| rng.gen_range(0..bound.max(1))
}

/// Random clients against random buckets: one that waits what
/// `Retry-After` says after a refusal, or spaces its requests more than
/// 1/rate apart, is always admitted; refusals take nothing, so the
/// bucket's whole rate stays usable.
pub async fn a_client_that_waits_what_the_headers_say_is_admitted(backend: &dyn Backend) {
    let mut next = generator(0x5851_f42d_4c95_7f2d);
    for history in 0..60 {
        let plan = format!("scenario-waits-{history}");
        let rate = [0.25, 0.5, 1.0, 3.5, 10.0, 40.0][next(6) as usize];
        let burst = 1 + next(5) as u32;
        let subject = backend.subject(&plan, 1).await;
        let limits = throttle_limits(&subject, &plan, rate, burst);
        let m = metering(backend, &subject);
        let spacing_ms = (1000.0 / rate).ceil() as i64 + 1;
        let mut must_pass = false;
        for step in 0..40 {
            let answer = m.admit(&limits, now(backend)).await;
            if must_pass {
                assert!(answer.is_ok(), "history {history} step {step} ({rate}/s burst {burst}): {answer:?}");
            }
            if next(4) == 0 {
                // Now and then the abandoned-token case: give back what ran out.
                m.give_back_unused(now(backend)).await;
            }
            must_pass = match (answer, next(3)) {
                // Refused: wait exactly Retry-After.
                (Err(Refusal { state, .. }), _) => {
                    backend.pass(state.retry_after_secs.unwrap_or(1) as i64 * 1000).await;
                    true
                }
                // Admitted: a burst (no promise), or a polite spacing.
                (Ok(_), 0) => false,
                (Ok(_), 1) => {
                    backend.pass(spacing_ms + next(1000) as i64).await;
                    true
                }
                (Ok(_), _) => {
                    backend.pass(next(spacing_ms as u64) as i64).await;
                    false
                }
            };
        }
    }
}

/// Rate-limit headers show the tightest limit; a throttle resets when its
/// bucket is full again, at its rate.
pub async fn headers_show_the_tightest_limit_and_a_throttle_resets_when_full(backend: &dyn Backend) {
    // A throttle of 1/s, burst 5, under a large quota: the fifth request
    // has no token left, and says so.
    let plan = "scenario-tightest";
    let subject = backend.subject(plan, 1_000_000).await;
    let m = metering(backend, &subject);
    let mut limits = quota_limits(backend, &subject, plan, 1_000_000);
    limits.throttles = throttle_limits(&subject, plan, 1.0, 5).throttles;
    let mut last = None;
    for _ in 0..5 {
        last = m.admit(&limits, now(backend)).await.expect("within the burst").tightest();
    }
    let state = last.expect("a limit state");
    assert_eq!((state.limit, state.remaining, state.reset_secs), (5, 0, 5));
    assert!(m.admit(&limits, now(backend)).await.is_err());
    // 0.25/s with burst 1: the bucket is full again in 4 s, not 1.
    let plan = "scenario-tightest-slow";
    let subject = backend.subject(plan, 1).await;
    let m = metering(backend, &subject);
    let limits = throttle_limits(&subject, plan, 0.25, 1);
    let state = m.admit(&limits, now(backend)).await.expect("a token").tightest().expect("a limit state");
    assert_eq!((state.remaining, state.reset_secs), (0, 4));
}

//! Every metering scenario on the in-memory authority, one test each; and
//! what metering does when the authority is gone.

use std::sync::Arc;

use tollgate_proto::check::ReasonCode;
use tollgate_proto::model::Throttle;

use super::doubles::Unreachable;
use super::scenarios::{self, InMemory, SCENARIOS};
use super::*;
use crate::clock::{Clock, ManualClock};

/// One test per scenario, and a check that none is left out.
macro_rules! in_memory {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                scenarios::$name(&InMemory::new()).await;
            }
        )*

        #[test]
        fn every_scenario_runs_on_the_in_memory_authority() {
            let here: &[&str] = &[$(stringify!($name)),*];
            let listed: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            assert_eq!(here, listed.as_slice());
        }
    };
}

in_memory! {
    use_is_reported_exactly_and_an_idle_grant_handed_back,
    a_quiet_nodes_standing_share_is_recalled_for_a_busy_one,
    a_quiet_key_is_decided_from_memory_after_its_first_check,
    a_tightened_throttle_spends_nothing_lent_under_the_old_one,
    a_spent_quota_says_to_come_back_when_the_period_ends,
    a_check_given_up_while_it_fetches_does_not_wedge_the_lease,
    a_booked_token_the_client_never_came_back_for_goes_back_to_the_bucket,
    a_client_that_waits_what_the_headers_say_is_admitted,
    headers_show_the_tightest_limit_and_a_throttle_resets_when_full,
}

#[tokio::test]
async fn run_all_runs_every_scenario_on_a_backend_with_exact_time() {
    let ran = scenarios::run_all(&InMemory::new()).await;
    assert_eq!(ran.len(), SCENARIOS.len());
}

#[tokio::test]
async fn without_the_leader_a_node_refuses_quota_it_does_not_hold_and_shares_throttles() {
    let authority = Arc::new(Unreachable::default());
    let clock = Arc::new(ManualClock::at(scenarios::T0));
    let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
    let period = QuotaPeriod { key_id: "k".into(), plan_id: "gold".into(), start_ms: 0 };
    let quota = QuotaLimit { period, limit: 1_000, ends_ms: scenarios::T0 + 86_400_000, epoch: 0, cost: 1 };
    let limits = Limits { quotas: [quota].into_iter().collect(), ..Default::default() };
    for _ in 0..3 {
        let Refusal { reason, .. } = m.admit(&limits, clock.now_ms()).await.expect_err("no grant held");
        assert_eq!(reason, ReasonCode::QuotaUnavailable);
    }
    assert_eq!(authority.asked(), 1, "asked once, then refused from memory");
    // A throttle falls back to this node's share: a third of the burst.
    let throttle = Throttle { rate_per_sec: 30.0, burst: 9 };
    let bucket = BucketId::Stage { api: "a".into(), stage: "s".into() };
    let throttle = ThrottleLimit::one(bucket, throttle, ReasonCode::StageThrottled);
    let limits = Limits { throttles: [throttle].into_iter().collect(), ..Default::default() };
    let mut admitted = 0;
    for _ in 0..9 {
        if m.admit(&limits, clock.now_ms()).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

/// Metering over the in-memory authority of a model with plan `gold`
/// (daily quota `limit`), on a manual clock.
fn local_metering(limit: u64) -> (Arc<Metering>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::at(scenarios::T0));
    let authority = Arc::new(LocalAuthority::new(scenarios::model_with_plan("gold", limit)));
    (Metering::new(authority, clock.clone(), MeteringConfig::default(), Default::default()), clock)
}

fn window(name: &str, limit: u32, cost: u64) -> ThrottleLimit {
    let bucket = BucketId::Stage { api: name.into(), stage: "window".into() };
    ThrottleLimit::fixed_window(bucket, limit, cost)
}

fn quota(limit: u64, cost: u64) -> QuotaLimit {
    let period = QuotaPeriod { key_id: "k".into(), plan_id: "gold".into(), start_ms: 0 };
    QuotaLimit { period, limit, ends_ms: scenarios::T0 + 86_400_000, epoch: 0, cost }
}

#[tokio::test]
async fn two_throttles_running_low_at_once_each_start_their_own_lend_round_trip() {
    // Two identical buckets are lent the same loans and run low on the same
    // check: each queued loan is counted in `lending`, so each needs its own
    // sender, or the count never comes back down and, once it is stuck at
    // the most in flight, no loan is ever sent again.
    let (m, _clock) = local_metering(1);
    let throttle = Throttle { rate_per_sec: 1.0, burst: 400 };
    let stage = ThrottleLimit::one(
        BucketId::Stage { api: "a".into(), stage: "s".into() },
        throttle,
        ReasonCode::StageThrottled,
    );
    let key = BucketId::Key { key: "k".into(), plan: "gold".into(), method_override: None };
    let limits = Limits {
        throttles: [stage, ThrottleLimit::one(key, throttle, ReasonCode::Throttled)].into_iter().collect(),
        ..Default::default()
    };
    for i in 0..300 {
        assert!(m.admit(&limits, scenarios::T0).await.is_ok(), "check {i}");
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let local = lock(&m.local);
    assert_eq!((local.lending, local.lends.len()), (0, 0), "every lend sender ended");
}

#[tokio::test]
async fn a_request_takes_its_cost_from_every_limit_or_from_none() {
    let (m, _clock) = local_metering(10);
    let costly =
        Limits { throttles: [window("a", 10, 3), window("b", 5, 3)].into_iter().collect(), ..Default::default() };
    let admitted = m.admit(&costly, scenarios::T0).await.expect("3 of 10 and 3 of 5");
    assert_eq!(admitted.states.iter().map(|s| s.remaining).collect::<Vec<_>>(), [7, 2]);
    let refusal = m.admit(&costly, scenarios::T0).await.expect_err("b has 2 left, not 3");
    assert_eq!(refusal.at, Some(LimitAt::Throttle(1)));
    // Nothing was taken from `a` for the refused request: its 7 are all there.
    let a_only = Limits { throttles: [window("a", 10, 7)].into_iter().collect(), ..Default::default() };
    let admitted = m.admit(&a_only, scenarios::T0).await.expect("a still has 7");
    assert_eq!(admitted.states[0].remaining, 0);
    // More than a window ever holds is refused at once.
    let too_big = Limits { throttles: [window("c", 5, 6)].into_iter().collect(), ..Default::default() };
    assert_eq!(m.admit(&too_big, scenarios::T0).await.expect_err("6 > 5").at, Some(LimitAt::Throttle(0)));

    // A quota of 10 gives 4 + 4, refuses a third 4, and still gives 2.
    let take = |cost| Limits { quotas: [quota(10, cost)].into_iter().collect(), ..Default::default() };
    for _ in 0..2 {
        m.admit(&take(4), scenarios::T0).await.expect("4 of 10");
    }
    let refusal = m.admit(&take(4), scenarios::T0).await.expect_err("2 left");
    assert_eq!((refusal.reason, refusal.at), (ReasonCode::QuotaExceeded, Some(LimitAt::Quota(0))));
    m.admit(&take(2), scenarios::T0).await.expect("the last 2");
    assert!(m.admit(&take(1), scenarios::T0).await.is_err(), "all 10 used");
    m.flush(scenarios::T0, true).await;
}

#[tokio::test]
async fn a_refused_quota_takes_nothing_from_the_throttles_beside_it() {
    let (m, _clock) = local_metering(2);
    let both = |cost| Limits {
        throttles: [window("w", 100, cost)].into_iter().collect(),
        quotas: [quota(2, cost)].into_iter().collect(),
    };
    m.admit(&both(2), scenarios::T0).await.expect("2 of 2, 2 of 100");
    assert!(m.admit(&both(1), scenarios::T0).await.is_err(), "the quota is spent");
    let window_only = Limits { throttles: [window("w", 100, 98)].into_iter().collect(), ..Default::default() };
    m.admit(&window_only, scenarios::T0).await.expect("the window still has its 98");
}

/// With many keys far from their limits, each flush reports at most
/// `REPORTS_PER_FLUSH` leases, those used first; none waits more than
/// `REPORT_WITHIN_MS`; a lease near its limit reports at once whatever the
/// backlog; and in the end the ledgers count exactly what was admitted.
#[tokio::test]
async fn far_from_their_limits_many_keys_report_within_a_budget_and_a_bound() {
    use lease::{REPORTS_PER_FLUSH, REPORT_WITHIN_MS};
    let clock = Arc::new(ManualClock::at(scenarios::T0));
    // Plan `gold` with a quota of a million, `tin` with one of 8.
    let model = scenarios::model_with_plan("gold", 1_000_000);
    let tin = scenarios::model_with_plan("tin", 8);
    let mut both = (**model.load()).clone();
    both.model.load(tollgate_proto::model::Entity::Plan(tin.load().model.plan("tin").expect("tin").clone()));
    model.store(Arc::new(both));
    let authority = Arc::new(LocalAuthority::new(model));
    let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
    let period_of =
        |key: usize, plan: &str| QuotaPeriod { key_id: format!("k{key}"), plan_id: plan.into(), start_ms: 0 };
    let period = |key: usize| period_of(key, "gold");
    let limits = |key: usize, plan: &str, limit: u64| {
        let ends_ms = scenarios::T0 + 86_400_000;
        let quota = QuotaLimit { period: period_of(key, plan), limit, ends_ms, epoch: 0, cost: 1 };
        Limits { quotas: [quota].into_iter().collect(), ..Default::default() }
    };
    let consumed = |key: usize| authority.ledger(&period(key)).consumed;
    // Each flush interval, more new keys are checked once than a flush may
    // report: the backlog grows, and the bound must still hold.
    let per_tick = REPORTS_PER_FLUSH + 44;
    let mut admitted_at: Vec<i64> = Vec::new();
    let mut unreported: Vec<usize> = Vec::new();
    let ticks = (REPORT_WITHIN_MS / FLUSH_EVERY.as_millis() as i64) as usize + 20;
    for tick in 0..ticks {
        for _ in 0..per_tick {
            let key = admitted_at.len();
            m.admit(&limits(key, "gold", 1_000_000), clock.now_ms()).await.expect("far from the limit");
            admitted_at.push(clock.now_ms());
            unreported.push(key);
        }
        m.flush(clock.now_ms(), false).await;
        let now = clock.now_ms();
        let (newly, waiting): (Vec<usize>, Vec<usize>) = unreported.iter().partition(|k| consumed(**k) == 1);
        unreported = waiting;
        assert!(newly.len() <= REPORTS_PER_FLUSH, "tick {tick}: {} reports in one flush", newly.len());
        if tick == 0 {
            assert_eq!(newly.len(), REPORTS_PER_FLUSH, "the first flush reports a full budget");
        }
        // The longest waiting first...
        let last_reported = newly.iter().map(|k| admitted_at[*k]).max().unwrap_or(i64::MIN);
        let first_waiting = unreported.iter().map(|k| admitted_at[*k]).min().unwrap_or(i64::MAX);
        assert!(last_reported <= first_waiting, "tick {tick}: a key used later was reported first");
        // ...and none used REPORT_WITHIN_MS ago or more is left waiting.
        assert!(now - first_waiting < REPORT_WITHIN_MS || unreported.is_empty(), "tick {tick}: over the bound");
        clock.advance_ms(FLUSH_EVERY.as_millis() as i64);
    }
    // A key near its limit (a quota of 8: grants come short) reports at the
    // next flush, before the backlog.
    let near = admitted_at.len();
    for _ in 0..3 {
        m.admit(&limits(near, "tin", 8), clock.now_ms()).await.expect("3 of 8");
    }
    m.flush(clock.now_ms(), false).await;
    assert_eq!(authority.ledger(&period_of(near, "tin")).consumed, 3, "reported at once, near the limit");
    // At shutdown everything is reported: the ledgers count exactly what was admitted.
    m.flush(clock.now_ms(), true).await;
    assert!((0..admitted_at.len()).all(|k| consumed(k) == 1));
}

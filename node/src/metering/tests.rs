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
    let quota = tollgate_proto::model::Quota { limit: 1_000, period: tollgate_proto::model::Period::Day, offset: 0 };
    let limits =
        Limits { quota: Some(QuotaLimit { period, quota, ends_ms: scenarios::T0 + 86_400_000 }), ..Default::default() };
    for _ in 0..3 {
        let Refusal { reason, .. } = m.admit(&limits, clock.now_ms(), 0).await.expect_err("no grant held");
        assert_eq!(reason, ReasonCode::QuotaUnavailable);
    }
    assert_eq!(authority.asked(), 1, "asked once, then refused from memory");
    // A throttle falls back to this node's share: a third of the burst.
    let throttle = Throttle { rate_per_sec: 30.0, burst: 9 };
    let bucket = BucketId::Stage { api: "a".into(), stage: "s".into() };
    let limits = Limits { stage: Some(ThrottleLimit { bucket, throttle }), ..Default::default() };
    let mut admitted = 0;
    for _ in 0..9 {
        if m.admit(&limits, clock.now_ms(), 0).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
}

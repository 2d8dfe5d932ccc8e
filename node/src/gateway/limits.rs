//! Per-node counts, and the limit types the gateway builds for metering.
//!
//! Throttles are token buckets (rate per second, burst) per key and plan (or
//! per method override), and per API stage for all keys together. Quotas count
//! requests per key, plan and period. Which of them a request takes from is
//! decided by the gateway ([`Limits`]); taking, across the cluster, is the job
//! of `crate::metering`. The [`Limiter`] here counts what is per node by
//! design: WAF rate rules per source address.
//!
//! The clock, the calendar periods and the limit types live below the gateway
//! (`crate::clock`, `crate::metering::limits`); they are re-exported here so
//! older paths keep working.

use std::collections::HashMap;
use std::sync::Mutex;

use tollgate_proto::model::Throttle;

pub use crate::clock::{period_bounds, Clock, ManualClock, OffsetClock, SystemClock};
pub use crate::metering::limits::{Bucket, BucketId, Limits, QuotaLimit, ThrottleLimit};

#[derive(Default)]
struct State {
    buckets: HashMap<BucketId, Bucket>,
    last_sweep_ms: i64,
}

/// How often idle state is dropped.
const SWEEP_EVERY_MS: i64 = 60_000;

/// Token buckets kept on this node alone (WAF rate rules per source address).
#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
}

impl Limiter {
    /// Takes one token from a single bucket (WAF rate rules count every
    /// request they see); `Err(retry_after_secs)` when it is empty.
    pub fn take(&self, id: BucketId, t: Throttle, now_ms: i64) -> Result<(), u64> {
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now_ms - guard.last_sweep_ms > SWEEP_EVERY_MS {
            sweep(&mut guard, now_ms);
        }
        let b = guard.buckets.entry(id).or_insert_with(|| Bucket::full(&t, now_ms));
        b.refill(&t, now_ms);
        if b.tokens < 1.0 {
            return Err(b.retry_after_secs(&t));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

/// Drops buckets idle long enough to be full again.
fn sweep(state: &mut State, now_ms: i64) {
    state.last_sweep_ms = now_ms;
    state.buckets.retain(|_, b| b.idle_ms(now_ms) < SWEEP_EVERY_MS * 10);
}

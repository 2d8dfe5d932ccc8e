//! The limits a request must pass, the clock, quota periods, and token
//! buckets.
//!
//! Throttles are token buckets (rate per second, burst) per key and plan (or
//! per method override), and per API stage for all keys together. Quotas count
//! requests per key, plan and period. Which of them a request takes from is
//! decided here ([`Limits`]); taking, across the cluster, is the job of the
//! rest of [`crate::metering`]. The [`Limiter`] here counts what is per node
//! by design: WAF rate rules per source address.
//!
//! It sits under `metering`, not `gateway`, because the metering needs its
//! buckets and clock and must not import the gateway that calls it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime};
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::model::{Period, Quota, Throttle};

/// Where time comes from: the system clock, or a hand-moved one in tests.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The system clock moved by a fixed offset (`--clock-offset-ms`, for tests
/// of period rollover against real processes).
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms().saturating_add(self.0)
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The period (UTC) that `now_ms` falls in: start and end, in ms.
pub fn period_bounds(now_ms: i64, period: Period, offset: u32) -> (i64, i64) {
    let now = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let today = now.date();
    let (start, end) = match period {
        Period::Day => (today, today.next_day().unwrap_or(today)),
        Period::Week => {
            let weekday = today.weekday().number_days_from_sunday() as i64;
            let back = (weekday - offset as i64).rem_euclid(7);
            let start = today - Duration::days(back);
            (start, start + Duration::days(7))
        }
        Period::Month => {
            let day = offset.saturating_add(1).min(28) as u8;
            let this_month = Date::from_calendar_date(today.year(), today.month(), day).unwrap_or(today);
            let start = if today >= this_month { this_month } else { shift_month(this_month, -1) };
            (start, shift_month(start, 1))
        }
    };
    let ms = |d: Date| d.midnight().assume_utc().unix_timestamp() * 1000;
    (ms(start), ms(end))
}

/// The same day of the month (at most 28, so it always exists) `by` months away.
fn shift_month(date: Date, by: i32) -> Date {
    let index = date.year() * 12 + (date.month() as i32 - 1) + by;
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12));
    let month = Month::try_from(month0 as u8 + 1).unwrap_or(Month::January);
    Date::from_calendar_date(year, month, date.day()).unwrap_or(date)
}

/// Which bucket: a key's (per plan, or per method override of the plan), or a stage's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BucketId {
    Key {
        key: String,
        plan: String,
        method_override: Option<usize>,
    },
    Stage {
        api: String,
        stage: String,
    },
    /// A WAF rate rule's count for one source address.
    WafIp {
        api: String,
        rule: usize,
        ip: std::net::IpAddr,
    },
}

/// The limits one request must pass.
#[derive(Debug, Default)]
pub struct Limits {
    pub stage: Option<(BucketId, Throttle)>,
    pub key: Option<(BucketId, Throttle)>,
    /// The key's quota: which period, the plan's quota, when the period ends (ms).
    pub quota: Option<(QuotaPeriod, Quota, i64)>,
}

impl Limits {
    /// The throttles in the order they are checked: the stage's (slot 0), then the key's (slot 1).
    pub fn throttle(&self, slot: usize) -> Option<&(BucketId, Throttle)> {
        if slot == 0 { &self.stage } else { &self.key }.as_ref()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub tokens: f64,
    updated_ms: i64,
}

impl Bucket {
    pub fn full(t: &Throttle, now_ms: i64) -> Self {
        Bucket { tokens: t.burst as f64, updated_ms: now_ms }
    }

    pub fn idle_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.updated_ms
    }

    pub fn refill(&mut self, t: &Throttle, now_ms: i64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        // A plan change may lower the burst: never hold more than it allows.
        self.tokens = (self.tokens + elapsed * t.rate_per_sec).min(t.burst as f64);
        self.updated_ms = now_ms.max(self.updated_ms);
    }

    /// Milliseconds until one token is back.
    pub fn wait_ms(&self, t: &Throttle) -> u64 {
        ((1.0 - self.tokens).max(0.0) * 1000.0 / t.rate_per_sec).ceil().max(1.0) as u64
    }

    pub fn retry_after_secs(&self, t: &Throttle) -> u64 {
        ((1.0 - self.tokens).max(0.0) / t.rate_per_sec).ceil().max(1.0) as u64
    }

    pub fn state(&self, t: &Throttle) -> LimitState {
        let missing = (t.burst as f64 - self.tokens).max(0.0);
        LimitState {
            limit: t.burst as u64,
            remaining: self.tokens.floor().max(0.0) as u64,
            reset_secs: (missing / t.rate_per_sec).ceil() as u64,
            retry_after_secs: None,
        }
    }
}

#[derive(Default)]
struct State {
    buckets: HashMap<BucketId, Bucket>,
    last_sweep_ms: i64,
}

/// How often idle state is dropped.
const SWEEP_EVERY_MS: i64 = 60_000;

#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
}

/// A denial by a limit: which, and its state (with `retry_after_secs`).
pub type Denied = (ReasonCode, LimitState);

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
    state.buckets.retain(|_, b| now_ms - b.updated_ms < SWEEP_EVERY_MS * 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp() * 1000)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn periods_start_at_their_offset_in_utc() {
        // 2026-11-25 is a Wednesday.
        let now = ms("2026-11-25T13:00:00Z");
        assert_eq!(period_bounds(now, Period::Day, 0), (ms("2026-11-25T00:00:00Z"), ms("2026-11-26T00:00:00Z")));
        // Weeks starting on Sunday (0) and on Monday (1).
        assert_eq!(period_bounds(now, Period::Week, 0).0, ms("2026-11-22T00:00:00Z"));
        assert_eq!(period_bounds(now, Period::Week, 1).0, ms("2026-11-23T00:00:00Z"));
        assert_eq!(period_bounds(now, Period::Week, 3), (ms("2026-11-25T00:00:00Z"), ms("2026-12-02T00:00:00Z")));
        assert_eq!(period_bounds(now, Period::Week, 4).0, ms("2026-11-19T00:00:00Z"));
        // Months starting on the 1st and on the 28th, across a year end.
        assert_eq!(period_bounds(now, Period::Month, 0), (ms("2026-11-01T00:00:00Z"), ms("2026-12-01T00:00:00Z")));
        assert_eq!(period_bounds(now, Period::Month, 27), (ms("2026-10-28T00:00:00Z"), ms("2026-11-28T00:00:00Z")));
        let new_year = ms("2027-01-10T00:00:00Z");
        assert_eq!(
            period_bounds(new_year, Period::Month, 14),
            (ms("2026-12-15T00:00:00Z"), ms("2027-01-15T00:00:00Z"))
        );
    }
}

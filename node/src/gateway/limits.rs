//! Throttles and quotas on one node.
//!
//! Throttles are token buckets (rate per second, burst) per key and plan (or
//! per method override), and per API stage for all keys together. Quotas count
//! requests per key, plan and period. A request takes from every limit that
//! applies only if all of them have room: a denied request is charged nowhere.
//! The check and the charge happen under one short lock that is never held
//! across an `.await`.
//!
//! Counting here is exact for this node; making quotas exact across the
//! cluster (leases from the replicated ledger) is the metering module's job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use time::{Date, Duration, Month, OffsetDateTime};
use tollgate_proto::check::{LimitState, ReasonCode};
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
            let day = (offset + 1).min(28) as u8;
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaId {
    pub key: String,
    pub plan: String,
    pub period_start_ms: i64,
}

/// The limits one request must pass.
#[derive(Debug, Default)]
pub struct Limits {
    pub stage: Option<(BucketId, Throttle)>,
    pub key: Option<(BucketId, Throttle)>,
    pub quota: Option<(QuotaId, Quota, i64)>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

impl Bucket {
    fn full(t: &Throttle, now_ms: i64) -> Self {
        Bucket { tokens: t.burst as f64, updated_ms: now_ms }
    }

    fn refill(&mut self, t: &Throttle, now_ms: i64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        // A plan change may lower the burst: never hold more than it allows.
        self.tokens = (self.tokens + elapsed * t.rate_per_sec).min(t.burst as f64);
        self.updated_ms = now_ms.max(self.updated_ms);
    }

    fn retry_after_secs(&self, t: &Throttle) -> u64 {
        ((1.0 - self.tokens).max(0.0) / t.rate_per_sec).ceil().max(1.0) as u64
    }

    fn state(&self, t: &Throttle) -> LimitState {
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
    used: HashMap<QuotaId, u64>,
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
    /// Charges one request to every limit, or to none if any is exhausted.
    /// On success returns the state of the tightest limit, for headers.
    pub fn admit(&self, limits: &Limits, now_ms: i64) -> Result<Option<LimitState>, Denied> {
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut *guard;
        if now_ms - state.last_sweep_ms > SWEEP_EVERY_MS {
            sweep(state, now_ms);
        }
        // The buckets that apply, refilled, each with the reason it denies with.
        let buckets = [(&limits.stage, ReasonCode::StageThrottled), (&limits.key, ReasonCode::Throttled)];
        let mut refilled: [Option<(&BucketId, &Throttle, Bucket)>; 2] = [None, None];
        for (slot, (limit, reason)) in refilled.iter_mut().zip(buckets) {
            let Some((id, t)) = limit else { continue };
            let mut b = state.buckets.get(id).copied().unwrap_or_else(|| Bucket::full(t, now_ms));
            b.refill(t, now_ms);
            if b.tokens < 1.0 {
                let retry = b.retry_after_secs(t);
                return Err((reason, LimitState { retry_after_secs: Some(retry), ..b.state(t) }));
            }
            *slot = Some((id, t, b));
        }
        if let Some((id, q, end_ms)) = &limits.quota {
            let used = state.used.get(id).copied().unwrap_or(0);
            if used >= q.limit {
                let reset = ((end_ms - now_ms).max(0) as u64).div_ceil(1000);
                let denied =
                    LimitState { limit: q.limit, remaining: 0, reset_secs: reset, retry_after_secs: Some(reset) };
                return Err((ReasonCode::QuotaExceeded, denied));
            }
        }
        // Every limit has room: charge them all. The key's bucket (last) or
        // the quota is the tightest limit reported.
        let mut tightest = None;
        for (id, t, mut b) in refilled.into_iter().flatten() {
            b.tokens -= 1.0;
            state.buckets.insert(id.clone(), b);
            tightest = Some(b.state(t));
        }
        if let Some((id, q, end_ms)) = &limits.quota {
            let used = state.used.entry(id.clone()).or_insert(0);
            *used += 1;
            let reset = ((end_ms - now_ms).max(0) as u64).div_ceil(1000);
            tightest = Some(LimitState {
                limit: q.limit,
                remaining: q.limit - *used,
                reset_secs: reset,
                retry_after_secs: None,
            });
        }
        Ok(tightest)
    }

    /// Takes one token from a single bucket (WAF rate rules count every
    /// request they see); `Err(retry_after_secs)` when it is empty.
    pub fn take(&self, id: BucketId, t: Throttle, now_ms: i64) -> Result<(), u64> {
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let b = guard.buckets.entry(id).or_insert_with(|| Bucket::full(&t, now_ms));
        b.refill(&t, now_ms);
        if b.tokens < 1.0 {
            return Err(b.retry_after_secs(&t));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Requests counted for a key, plan and period on this node.
    pub fn used(&self, id: &QuotaId) -> u64 {
        let guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.used.get(id).copied().unwrap_or(0)
    }
}

/// Drops buckets idle long enough to be full again and counts of past periods.
fn sweep(state: &mut State, now_ms: i64) {
    state.last_sweep_ms = now_ms;
    state.buckets.retain(|_, b| now_ms - b.updated_ms < SWEEP_EVERY_MS * 10);
    // A count is kept until its period is certainly over (periods are at most 31 days).
    state.used.retain(|id, _| now_ms - id.period_start_ms < 32 * 86_400_000);
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

    fn key_bucket(t: Throttle) -> Limits {
        Limits {
            key: Some((BucketId::Key { key: "k".into(), plan: "p".into(), method_override: None }, t)),
            ..Default::default()
        }
    }

    #[test]
    fn throttle_allows_the_burst_then_the_steady_rate() {
        let limiter = Limiter::default();
        let limits = key_bucket(Throttle { rate_per_sec: 10.0, burst: 5 });
        let t0 = 1_000_000;
        for i in 0..5 {
            assert!(limiter.admit(&limits, t0).is_ok(), "burst request {i}");
        }
        let (reason, state) = limiter.admit(&limits, t0).unwrap_err();
        assert_eq!((reason, state.retry_after_secs), (ReasonCode::Throttled, Some(1)));
        // 10/s: one more every 100 ms, and not before.
        assert!(limiter.admit(&limits, t0 + 99).is_err());
        assert!(limiter.admit(&limits, t0 + 100).is_ok());
        assert!(limiter.admit(&limits, t0 + 100).is_err());
        let mut admitted = 0;
        for step in 1..=100 {
            if limiter.admit(&limits, t0 + 100 + step * 10).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "one second at 10/s after the burst");
    }

    #[test]
    fn a_denied_request_is_charged_to_no_limit() {
        let limiter = Limiter::default();
        let quota = Quota { limit: 3, period: Period::Day, offset: 0 };
        let id = QuotaId { key: "k".into(), plan: "p".into(), period_start_ms: 0 };
        let mut limits = key_bucket(Throttle { rate_per_sec: 1.0, burst: 1 });
        limits.quota = Some((id.clone(), quota, 86_400_000));
        assert!(limiter.admit(&limits, 1000).is_ok());
        assert_eq!(limiter.admit(&limits, 1000).unwrap_err().0, ReasonCode::Throttled);
        assert_eq!(limiter.used(&id), 1, "the throttled request did not use quota");
        assert!(limiter.admit(&limits, 2000).is_ok());
        assert!(limiter.admit(&limits, 3000).is_ok());
        let (reason, state) = limiter.admit(&limits, 4000).unwrap_err();
        assert_eq!((reason, state.remaining), (ReasonCode::QuotaExceeded, 0));
        // The quota denial did not take a token either.
        limits.quota = None;
        assert!(limiter.admit(&limits, 4000).is_ok());
    }
}

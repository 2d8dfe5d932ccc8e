//! Where time comes from, and the calendar periods quotas count in.
//!
//! This module sits below `metering` and `gateway` (both read the clock) and
//! imports neither: it knows milliseconds and UTC dates, nothing of requests.

use std::sync::atomic::{AtomicI64, Ordering};

use time::{Date, Duration, Month, OffsetDateTime};
use tollgate_proto::model::Period;

/// Where time comes from: the system clock, or a hand-moved one in tests.
///
/// Implementations must be cheap and thread-safe: the check path reads the
/// clock on every request.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The operating system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The system clock moved by a fixed offset in milliseconds
/// (`--clock-offset-ms`, for tests of period rollover against real processes).
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms().saturating_add(self.0)
    }
}

/// A clock that moves only when told to (tests).
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `ms` since the Unix epoch.
    pub fn at(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    /// Moves the clock forward by `ms` milliseconds (backwards if negative).
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock to `ms` since the Unix epoch.
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The period (UTC) that `now_ms` falls in: `(start, end)` in ms since the
/// Unix epoch, end exclusive. `offset` is the first day of the period: days
/// after Sunday for a week, days after the 1st (at most 27) for a month;
/// ignored for a day.
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

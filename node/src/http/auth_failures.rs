//! Failed admin authentication, per source address: logged (the source and
//! the route, never the token) and limited, so guessing admin tokens from one
//! address runs at a few attempts a minute.
//!
//! Each source has a bucket of `per_minute` failures (default
//! [`DEFAULT_PER_MINUTE`], `--admin-auth-failures-per-minute`) refilling at
//! that rate; a source whose bucket is empty is answered 429 with
//! `Retry-After` before its token is even looked at. Successes cost nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Failures a source may make in a row, and per minute after that.
pub const DEFAULT_PER_MINUTE: u32 = crate::config::DEFAULT_ADMIN_AUTH_FAILURES_PER_MINUTE;
/// Sources remembered at most; past this, the ones whose buckets are full
/// again are forgotten first.
const MAX_SOURCES: usize = 10_000;

pub struct AuthFailures {
    sources: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Failures in a row, and per minute.
    burst: f64,
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self::per_minute(DEFAULT_PER_MINUTE)
    }
}

impl AuthFailures {
    /// Allows `n` failures in a row per source, then `n` a minute (at least 1).
    pub fn per_minute(n: u32) -> Self {
        AuthFailures { sources: Mutex::default(), burst: n.max(1) as f64 }
    }

    fn refilled(&self, left: f64, at: Instant, now: Instant) -> f64 {
        (left + now.saturating_duration_since(at).as_secs_f64() * self.burst / 60.0).min(self.burst)
    }

    /// `Err(retry_after_secs)` when `source` has used up its failures.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), u64> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        match sources.get(&source) {
            Some(&(left, at)) => {
                let left = self.refilled(left, at, now);
                if left < 1.0 {
                    Err(((1.0 - left) * 60.0 / self.burst).ceil().max(1.0) as u64)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failure from `source`.
    pub fn fail(&self, source: IpAddr, now: Instant) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            let burst = self.burst;
            sources.retain(|_, (left, at)| self.refilled(*left, *at, now) < burst);
            if sources.len() >= MAX_SOURCES {
                // Still full of sources failing right now: forget one.
                if let Some(any) = sources.keys().next().copied() {
                    sources.remove(&any);
                }
            }
        }
        let entry = sources.entry(source).or_insert((self.burst, now));
        let left = self.refilled(entry.0, entry.1, now);
        *entry = ((left - 1.0).max(0.0), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_one_failure_per_refill() {
        let limiter = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..DEFAULT_PER_MINUTE {
            assert_eq!(limiter.check(a, t0), Ok(()));
            limiter.fail(a, t0);
        }
        assert_eq!(limiter.check(a, t0), Err(6));
        assert_eq!(limiter.check(b, t0), Ok(()), "other sources are not affected");
        let later = t0 + Duration::from_secs(6);
        assert_eq!(limiter.check(a, later), Ok(()));
        limiter.fail(a, later);
        assert!(limiter.check(a, later).is_err());
    }
}

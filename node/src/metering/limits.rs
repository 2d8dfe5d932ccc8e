//! The limits one request must pass, and the token bucket they are counted in.
//!
//! The gateway decides which limits apply ([`Limits`]); metering takes from
//! them. Buckets are plain arithmetic on a count of tokens: the lender, the
//! fallback buckets and the gateway's per-address WAF counts all use them.

use serde::{Deserialize, Serialize};
use tollgate_proto::check::LimitState;
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::model::{Quota, Throttle};

/// Which bucket: a key's (per plan, or per method override of the plan), or a stage's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BucketId {
    /// A key's bucket on one plan; `method_override` is the index of the
    /// plan's method throttle that matched, if one did.
    Key { key: String, plan: String, method_override: Option<usize> },
    /// An API stage's bucket, shared by every caller.
    Stage { api: String, stage: String },
    /// A WAF rate rule's count for one source address.
    WafIp { api: String, rule: usize, ip: std::net::IpAddr },
}

/// A throttle that applies to a request: which bucket, at which rate and burst.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleLimit {
    pub bucket: BucketId,
    pub throttle: Throttle,
}

/// A quota that applies to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaLimit {
    /// The ledger entry counted: key, plan and the period's start.
    pub period: QuotaPeriod,
    /// The plan's quota (limit and period kind).
    pub quota: Quota,
    /// When the period ends, in ms since the Unix epoch (exclusive).
    pub ends_ms: i64,
}

/// The limits one request must pass.
#[derive(Debug, Default)]
pub struct Limits {
    /// The API stage's throttle, for all keys together.
    pub stage: Option<ThrottleLimit>,
    /// The key's plan throttle (or the plan's method override that matched).
    pub key: Option<ThrottleLimit>,
    /// The key's quota for the current period.
    pub quota: Option<QuotaLimit>,
}

impl Limits {
    /// The throttles in the order they are checked: the stage's (slot 0), then the key's (slot 1).
    pub fn throttle(&self, slot: usize) -> Option<&ThrottleLimit> {
        if slot == 0 { &self.stage } else { &self.key }.as_ref()
    }
}

/// A token bucket: `tokens` (fractional) refilled at the throttle's rate up
/// to its burst.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Tokens in the bucket now; a request takes one whole token.
    pub tokens: f64,
    updated_ms: i64,
}

impl Bucket {
    /// A bucket holding the throttle's whole burst at `now_ms`.
    pub fn full(t: &Throttle, now_ms: i64) -> Self {
        Bucket { tokens: t.burst as f64, updated_ms: now_ms }
    }

    /// Milliseconds since the bucket was last refilled.
    pub fn idle_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.updated_ms
    }

    /// Adds the tokens earned since the last refill, never beyond the burst.
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

    /// Whole seconds until one token is back (at least 1): `Retry-After`.
    pub fn retry_after_secs(&self, t: &Throttle) -> u64 {
        ((1.0 - self.tokens).max(0.0) / t.rate_per_sec).ceil().max(1.0) as u64
    }

    /// The bucket as rate-limit headers show it.
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

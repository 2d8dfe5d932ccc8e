//! The limits one request must pass, and the token bucket they are counted in.
//!
//! The gateway decides which limits apply ([`Limits`]); metering takes from
//! them. Buckets are plain arithmetic on a count of tokens: the lender, the
//! fallback buckets and the gateway's per-address WAF counts all use them.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::descriptors::CounterKey;
use tollgate_proto::model::Throttle;

/// Which bucket: a key's (per plan, or per method override of the plan), a
/// stage's, a WAF rule's per address, or one window of a descriptor count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BucketId {
    /// A key's bucket on one plan; `method_override` is the index of the
    /// plan's method throttle that matched, if one did.
    Key { key: String, plan: String, method_override: Option<usize> },
    /// An API stage's bucket, shared by every caller.
    Stage { api: String, stage: String },
    /// A WAF rate rule's count for one source address.
    WafIp { api: String, rule: usize, ip: std::net::IpAddr },
    /// One fixed window (starting at `start_ms`) of a descriptor count with
    /// a window shorter than an hour: a bucket that starts full and never
    /// refills ([`ThrottleLimit::fixed_window`]); the next window is
    /// another bucket.
    Window { domain: String, counter: CounterKey, start_ms: i64 },
}

/// A throttle that applies to a request: which bucket, at which rate and
/// burst, what taking from it costs, and the reason it refuses with.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleLimit {
    pub bucket: BucketId,
    pub throttle: Throttle,
    /// Tokens one request takes: 1 for a check, `hits_addend` for a
    /// descriptor (summed, never saturated at the burst's width); more
    /// than the burst is refused at once.
    pub cost: u64,
    /// `StageThrottled` or `Throttled` (also for a descriptor window).
    pub reason: ReasonCode,
}

/// The rate of a fixed window's bucket: about one token per 31 years, so it
/// never earns a whole token back within the window (at most a minute).
pub const FIXED_WINDOW_RATE: f64 = 1e-9;

impl ThrottleLimit {
    /// A throttle taking one token, refusing with `reason`.
    pub fn one(bucket: BucketId, throttle: Throttle, reason: ReasonCode) -> Self {
        ThrottleLimit { bucket, throttle, cost: 1, reason }
    }

    /// A fixed window of `limit` requests, counted as a bucket of `limit`
    /// tokens that does not refill ([`FIXED_WINDOW_RATE`]); `bucket` names
    /// the window.
    pub fn fixed_window(bucket: BucketId, limit: u32, cost: u64) -> Self {
        let throttle = Throttle { rate_per_sec: FIXED_WINDOW_RATE, burst: limit };
        ThrottleLimit { bucket, throttle, cost, reason: ReasonCode::Throttled }
    }
}

/// A quota that applies to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaLimit {
    /// The ledger entry counted: key, plan and the period's start (or a
    /// descriptor count's window).
    pub period: QuotaPeriod,
    /// The period's limit (the ledger's own, adjusted, bounds grants).
    pub limit: u64,
    /// When the period ends, in ms since the Unix epoch (exclusive).
    pub ends_ms: i64,
    /// The limits epoch of the period's plan (or domain) in the applied
    /// model: a lease made under an older one is handed back.
    pub epoch: u64,
    /// Units one request takes: 1 for a check, `hits_addend` for a descriptor.
    pub cost: u64,
}

/// The limits one request must pass: it takes from every one or from none.
#[derive(Debug, Default)]
pub struct Limits {
    /// Throttles in the order checked: for a check, the API stage's (for
    /// all keys together), then the key's plan throttle (or the plan's
    /// method override that matched).
    pub throttles: SmallVec<[ThrottleLimit; 2]>,
    /// Quotas: for a check, the key's quota for the current period.
    pub quotas: SmallVec<[QuotaLimit; 1]>,
}

/// Which limit of a [`Limits`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAt {
    /// `throttles[i]`.
    Throttle(usize),
    /// `quotas[i]`.
    Quota(usize),
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

//! The leader's token lender: the cluster's throttle buckets, lent out a few
//! tokens at a time to the nodes that admit requests.
//!
//! Only whole tokens the bucket has now are lent; nothing is booked ahead.
//! A new leader starts with full buckets: at most one extra burst.
//!
//! Every token admitted was taken from the bucket, so over any stretch of
//! time the cluster admits at most one burst plus the rate: the sustained
//! rate is exact. Tokens a node holds may be spent later than they were
//! lent (they lapse after a while unused), so a short burst may pass
//! the burst by what nodes hold then: their standing shares (at most a
//! quarter of the burst in all) and about 50 ms of the rate each.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tollgate_proto::model::Throttle;

use super::limits::{Bucket, BucketId};
use super::lock;

/// A request for throttle tokens, sent to the authority.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LendRequest {
    /// Whose bucket.
    pub bucket: BucketId,
    /// The bucket's rate and burst, as the asking node knows them.
    pub throttle: Throttle,
    /// Tokens wanted now (0: only giving back).
    pub want: u32,
    /// Tokens lent earlier and never used (their time ran out): back into
    /// the bucket, so a refused or abandoned request destroys no capacity.
    #[serde(default)]
    pub returned: u32,
}

/// The authority's answer: tokens lent (usable at once; `after_ms` is 0);
/// or, when `granted` is 0, how long until the bucket has the next token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lent {
    /// Tokens lent now.
    pub granted: u32,
    /// With none lent: milliseconds until the bucket has the next token.
    pub after_ms: u64,
    /// Whole tokens left in the authority's bucket (for `RateLimit-Remaining`).
    pub left: u64,
}

/// The most lend requests one round trip to the lender carries.
pub const MAX_LENDS: usize = 4096;

/// Buckets idle this long are full again: forgetting them changes nothing.
const FORGET_IDLE_MS: i64 = 60_000;
/// How often idle buckets are looked for.
const SWEEP_EVERY_MS: i64 = 10_000;

/// The token buckets the leader keeps for the whole cluster.
#[derive(Default)]
pub struct TokenLender {
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_id: super::FastMap<BucketId, Bucket>,
    last_sweep_ms: i64,
}

impl TokenLender {
    /// Answers each request in order, by [`Self::lend`].
    pub fn lend_all(&self, requests: &[LendRequest], now_ms: i64) -> Vec<Lent> {
        requests.iter().map(|r| self.lend(r, now_ms)).collect()
    }

    /// Takes back `request.returned`, then lends up to `request.want` whole
    /// tokens from the bucket as it is at `now_ms` (the lender's clock).
    pub fn lend(&self, request: &LendRequest, now_ms: i64) -> Lent {
        let t = &request.throttle;
        let mut guard = lock(&self.buckets);
        let buckets = &mut *guard;
        if now_ms - buckets.last_sweep_ms > SWEEP_EVERY_MS {
            buckets.last_sweep_ms = now_ms;
            buckets.by_id.retain(|_, b| b.idle_ms(now_ms) < FORGET_IDLE_MS);
        }
        let b = match buckets.by_id.get_mut(&request.bucket) {
            Some(b) => b,
            None => buckets.by_id.entry(request.bucket.clone()).or_insert_with(|| Bucket::full(t, now_ms)),
        };
        b.refill(t, now_ms);
        if request.returned > 0 {
            b.tokens = (b.tokens + request.returned as f64).min(t.burst as f64);
        }
        if request.want == 0 {
            return Lent { granted: 0, after_ms: 0, left: b.tokens.floor().max(0.0) as u64 };
        }
        // Only whole tokens the bucket has now: a node that finds none is
        // told when the next one is due and refuses until then, booking
        // nothing, so a retry then gets it on whichever node it lands. (A
        // token booked for the node that refused would sit there while the
        // retry went elsewhere.) Tokens not lent stay in the bucket; nothing
        // is lost while the nodes wait.
        let lendable = b.tokens.floor().max(0.0) as u64;
        let granted = lendable.min(request.want as u64) as u32;
        b.tokens -= granted as f64;
        let after_ms =
            if granted == 0 { ((1.0 - b.tokens) * 1000.0 / t.rate_per_sec).ceil().max(1.0) as u64 } else { 0 };
        Lent { granted, after_ms, left: b.tokens.floor().max(0.0) as u64 }
    }
}

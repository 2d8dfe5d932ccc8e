//! Throttle tokens borrowed from the authority (the leader's lender), and
//! this node's share of a throttle while the authority cannot be reached.
//!
//! A node borrows a few tokens at a time (about [`BORROW_FOR_MS`] of the
//! bucket's rate) and admits from them; when the authority has none it says
//! how long to wait, and the node refuses locally until then. Tokens whose
//! time runs out unused are given back, so no capacity is destroyed.

use std::sync::Arc;

use tokio::sync::watch;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::model::Throttle;

use super::lender::LendRequest;
use super::limits::{Bucket, BucketId, Limits};
use super::{lock, Local, Metering, Need, Refusal, Take, UNAVAILABLE_MS};

/// Borrowed tokens cover this long at the bucket's rate.
const BORROW_FOR_MS: f64 = 50.0;
/// Borrowed tokens not used within this are forgotten (the authority's
/// bucket has long refilled them).
const BORROWED_VALID_MS: i64 = 1_000;
/// How long to wait for tokens from the authority before falling back.
const LEND_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Borrowed tokens and fallback buckets unused this long are forgotten.
const FORGET_IDLE_MS: i64 = 60_000;

/// Throttle tokens borrowed from the authority for one bucket.
pub(super) struct Borrowed {
    tokens: u32,
    /// Tokens whose time ran out unused: given back to the authority with
    /// the next loan, or by the next flush.
    unused: u32,
    valid_until_ms: i64,
    denied_until_ms: i64,
    unavailable_until_ms: i64,
    /// The authority's bucket after the last loan, for headers.
    left: u64,
    /// The bucket's throttle at the last loan (to give tokens back).
    throttle: Option<Throttle>,
    fetching: bool,
    fetched: watch::Sender<u64>,
    last_used_ms: i64,
}

impl Borrowed {
    fn new(now_ms: i64) -> Self {
        Borrowed {
            tokens: 0,
            unused: 0,
            valid_until_ms: now_ms,
            denied_until_ms: 0,
            unavailable_until_ms: 0,
            left: 0,
            throttle: None,
            fetching: false,
            fetched: watch::channel(0).0,
            last_used_ms: now_ms,
        }
    }
}

/// Where a throttle's token comes from.
#[derive(Clone, Copy)]
pub(super) enum Source {
    Borrowed,
    Fallback,
}

/// Where each throttle of a request takes its token from, by slot (stage, key).
pub(super) type Sources = [Option<Source>; 2];

impl Metering {
    /// Forgets borrowed tokens and fallback buckets idle for a minute.
    pub(super) fn forget_idle_buckets(local: &mut Local, now_ms: i64) {
        local.borrowed.retain(|_, b| b.fetching || now_ms - b.last_used_ms < FORGET_IDLE_MS);
        local.fallback.retain(|_, b| b.idle_ms(now_ms) < FORGET_IDLE_MS);
    }

    /// For each throttle, where a token is (borrowed, or this node's share
    /// while the authority is away); or what to do first: refuse, borrow,
    /// wait for a loan under way.
    pub(super) fn find_tokens(&self, local: &mut Local, limits: &Limits, now_ms: i64) -> Result<Sources, Take> {
        let reasons = [ReasonCode::StageThrottled, ReasonCode::Throttled];
        let mut sources = [None, None];
        for (slot, reason) in reasons.into_iter().enumerate() {
            let Some(limit) = limits.throttle(slot) else { continue };
            let (id, t) = (&limit.bucket, &limit.throttle);
            let b = match local.borrowed.get_mut(id) {
                Some(b) => b,
                None => local.borrowed.entry(id.clone()).or_insert_with(|| Borrowed::new(now_ms)),
            };
            if now_ms >= b.valid_until_ms {
                b.unused = b.unused.saturating_add(b.tokens);
                b.tokens = 0;
            }
            if b.tokens > 0 {
                sources[slot] = Some(Source::Borrowed);
                continue;
            }
            if now_ms < b.denied_until_ms {
                let wait = (b.denied_until_ms - now_ms) as u64;
                return Err(Take::Refused(Refusal { reason, state: throttled_state(t, wait) }));
            }
            if now_ms < b.unavailable_until_ms {
                let share = self.authority.members().max(1) as f64;
                let local_t =
                    Throttle { rate_per_sec: t.rate_per_sec / share, burst: (t.burst as f64 / share).ceil() as u32 };
                let fb = match local.fallback.get_mut(id) {
                    Some(fb) => fb,
                    None => local.fallback.entry(id.clone()).or_insert_with(|| Bucket::full(&local_t, now_ms)),
                };
                fb.refill(&local_t, now_ms);
                if fb.tokens < 1.0 {
                    let state = throttled_state(&local_t, fb.wait_ms(&local_t));
                    return Err(Take::Refused(Refusal { reason, state }));
                }
                sources[slot] = Some(Source::Fallback);
                continue;
            }
            if b.fetching {
                return Err(Take::Wait(Need::Wait(b.fetched.subscribe())));
            }
            b.fetching = true;
            return Err(Take::Wait(Need::Tokens { slot, fetched: b.fetched.subscribe() }));
        }
        Ok(sources)
    }

    /// Takes the tokens [`Self::find_tokens`] found; answers each
    /// throttle's state for headers, in slot order.
    pub(super) fn take_tokens(
        local: &mut Local,
        limits: &Limits,
        sources: Sources,
        now_ms: i64,
    ) -> impl Iterator<Item = LimitState> {
        let mut states = [None, None];
        for (slot, source) in sources.into_iter().enumerate() {
            let (Some(source), Some(limit)) = (source, limits.throttle(slot)) else {
                continue;
            };
            let (id, t) = (&limit.bucket, &limit.throttle);
            let remaining = match source {
                Source::Borrowed => {
                    let Some(b) = local.borrowed.get_mut(id) else { continue };
                    b.tokens -= 1;
                    b.last_used_ms = now_ms;
                    b.left.saturating_add(b.tokens as u64).min(t.burst as u64)
                }
                Source::Fallback => {
                    let Some(fb) = local.fallback.get_mut(id) else { continue };
                    fb.tokens -= 1.0;
                    fb.tokens.max(0.0) as u64
                }
            };
            states[slot] = Some(bucket_state(t, remaining));
        }
        states.into_iter().flatten()
    }

    /// Borrows tokens for bucket `id` (giving back its unused ones); wakes
    /// the checks waiting for them.
    pub(super) async fn borrow_tokens(self: Arc<Self>, id: BucketId, t: Throttle) {
        let asked_ms = self.clock.now_ms();
        let want = (t.rate_per_sec * BORROW_FOR_MS / 1000.0).ceil().clamp(1.0, (t.burst.max(1)) as f64) as u32;
        let returned = lock(&self.local).borrowed.get_mut(&id).map(|b| std::mem::take(&mut b.unused)).unwrap_or(0);
        let request = LendRequest { bucket: id.clone(), throttle: t, want, returned };
        let answer = tokio::time::timeout(LEND_WAIT, self.authority.lend(request, asked_ms)).await;
        let now_ms = self.clock.now_ms().max(asked_ms);
        let mut local = lock(&self.local);
        let Some(b) = local.borrowed.get_mut(&id) else { return };
        b.throttle = Some(t);
        match answer {
            Ok(Ok(lent)) => {
                // Times count from the asking: the answer's round trip is not
                // added to the wait.
                b.left = lent.left;
                // The wait comes from the throttle's rate: bounded by
                // validation, and saturating here all the same.
                let after_ms = |ms: u64| asked_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
                if lent.granted > 0 {
                    // Lent tokens are usable at once (the authority books
                    // nothing ahead).
                    b.tokens = b.tokens.saturating_add(lent.granted);
                    b.valid_until_ms = now_ms.saturating_add(BORROWED_VALID_MS);
                } else {
                    b.denied_until_ms = after_ms(lent.after_ms.max(1));
                }
            }
            Ok(Err(_)) | Err(_) => b.unavailable_until_ms = now_ms + UNAVAILABLE_MS,
        }
        b.fetching = false;
        b.fetched.send_modify(|n| *n += 1);
    }

    /// Gives the authority back every borrowed token whose time ran out
    /// unused (a request refused by another limit, a client that did not come
    /// back for its booked token), so no capacity is destroyed. A give-back
    /// that fails is dropped: fewer tokens, never more.
    pub async fn give_back_unused(&self, now_ms: i64) {
        let returns: Vec<LendRequest> = {
            let mut local = lock(&self.local);
            local
                .borrowed
                .iter_mut()
                .filter(|(_, b)| !b.fetching)
                .filter_map(|(id, b)| {
                    if now_ms >= b.valid_until_ms {
                        b.unused = b.unused.saturating_add(std::mem::take(&mut b.tokens));
                    }
                    let throttle = b.throttle?;
                    let returned = std::mem::take(&mut b.unused);
                    (returned > 0).then(|| LendRequest { bucket: id.clone(), throttle, want: 0, returned })
                })
                .collect()
        };
        for request in returns {
            let _ = tokio::time::timeout(LEND_WAIT, self.authority.lend(request, now_ms)).await;
        }
    }
}

/// A bucket with `remaining` whole tokens: it resets (is full again) when the
/// missing tokens have come back at the bucket's rate.
fn bucket_state(t: &Throttle, remaining: u64) -> LimitState {
    let missing = (t.burst as u64).saturating_sub(remaining) as f64;
    let reset_secs = (missing / t.rate_per_sec).ceil().max(1.0) as u64;
    LimitState { limit: t.burst as u64, remaining, reset_secs, retry_after_secs: None }
}

/// A throttle with no token for `wait_ms`: `Retry-After` in whole seconds.
fn throttled_state(t: &Throttle, wait_ms: u64) -> LimitState {
    let secs = wait_ms.div_ceil(1000).max(1);
    LimitState { limit: t.burst as u64, remaining: 0, reset_secs: secs, retry_after_secs: Some(secs) }
}

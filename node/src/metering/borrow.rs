//! Throttle tokens borrowed from the authority (the leader's lender), and
//! this node's share of a throttle while the authority cannot be reached.
//!
//! A node borrows a few tokens at a time (about [`BORROW_FOR_MS`] of the
//! bucket's rate, and at least its standing share of the burst, so a quiet
//! key is admitted without asking) and admits from them, asking for more in
//! the background when they run low. Tokens unused for the metering's
//! `quiet_ms` (as quota grants) lapse and go back. Loans wanted are queued and sent together, one round trip
//! to the authority for any number of buckets. When the authority has none
//! it says how long to wait, and the node refuses locally until then.
//! Tokens whose time runs out unused are given back, so no capacity is
//! destroyed.

use std::sync::Arc;

use tokio::sync::watch;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::model::Throttle;

use super::lender::{LendRequest, MAX_LENDS};
use super::limits::{Bucket, BucketId, Limits};
use super::{lock, one_more, Local, Metering, Need, Refusal, Take, UNAVAILABLE_MS};

/// Borrowed tokens cover this long at the bucket's rate.
const BORROW_FOR_MS: f64 = 50.0;
/// A node's standing share of a throttle's burst is the burst over this
/// times the members: all of them together hold at most a quarter of it.
pub const STANDING_BURST_DIVISOR: u32 = 4;
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
    /// Tokens the last loan brought: more are asked for below half of it.
    last_loan: u32,
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
            last_loan: 0,
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
    /// Forgets borrowed tokens idle for `quiet_ms` (their time ran out, and
    /// they were given back), and fallback buckets idle for a minute.
    pub(super) fn forget_idle_buckets(&self, local: &mut Local, now_ms: i64) {
        let quiet_ms = self.config.quiet_ms.max(FORGET_IDLE_MS);
        local.borrowed.retain(|_, b| b.fetching || b.unused > 0 || now_ms - b.last_used_ms < quiet_ms);
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
            if b.tokens > 0 && b.throttle.is_some_and(|lent| lent != *t) {
                // The throttle changed since these were lent: they are not
                // spent under the new one (an operator tightening a
                // throttle must not see the old burst pass first); they go
                // back, and the next loan is under the new rate and burst.
                b.unused = b.unused.saturating_add(std::mem::take(&mut b.tokens));
                b.denied_until_ms = 0;
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
            let fetched = b.fetched.subscribe();
            local.lends.push((id.clone(), *t));
            let start = one_more(&mut local.lending);
            return Err(Take::Wait(Need::Tokens { start, start_asking: false, fetched }));
        }
        Ok(sources)
    }

    /// Takes the tokens [`Self::find_tokens`] found; answers each
    /// throttle's state for headers, in slot order, and whether a lend
    /// round trip must be started for tokens now running low (none is under
    /// way to take them).
    pub(super) fn take_tokens(
        &self,
        local: &mut Local,
        limits: &Limits,
        sources: Sources,
        now_ms: i64,
    ) -> ([Option<LimitState>; 2], bool) {
        let mut states = [None, None];
        let mut start_lending = false;
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
                    // Tokens in use stay usable: they lapse only unused.
                    b.valid_until_ms = now_ms.saturating_add(self.config.quiet_ms);
                    // Ask for more before these run out, while some are
                    // left: a node that has spent its last token borrows
                    // when a request needs one, never ahead (a token
                    // borrowed ahead could sit here while another node
                    // refuses for lack of it).
                    let low = b.tokens > 0 && b.tokens <= b.last_loan / 2;
                    let may = now_ms >= b.denied_until_ms && now_ms >= b.unavailable_until_ms;
                    if low && may && !b.fetching {
                        b.fetching = true;
                        local.lends.push((id.clone(), *t));
                        start_lending |= one_more(&mut local.lending);
                    }
                    let Some(b) = local.borrowed.get(id) else { continue };
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
        (states, start_lending)
    }

    /// Sends the queued loans (giving back each bucket's unused tokens), at
    /// most [`MAX_LENDS`] per round trip, until none is queued; a few run
    /// at once (`Local::lending`). Wakes the checks waiting for each.
    pub(super) async fn send_lends(self: Arc<Self>) {
        let members = self.authority.members().max(1);
        loop {
            let (requests, asked_ms) = {
                let mut local = lock(&self.local);
                if local.lends.is_empty() {
                    local.lending -= 1;
                    return;
                }
                let n = local.lends.len().min(MAX_LENDS);
                let queued: Vec<(BucketId, Throttle)> = local.lends.drain(..n).collect();
                let requests: Vec<LendRequest> = queued
                    .into_iter()
                    .map(|(bucket, throttle)| {
                        // Topped up to the loan's size: what a node holds
                        // stays within it, however often it renews.
                        let (returned, held) = match local.borrowed.get_mut(&bucket) {
                            Some(b) => (std::mem::take(&mut b.unused), b.tokens),
                            None => (0, 0),
                        };
                        let want = loan_size(&throttle, members).saturating_sub(held).max(1);
                        LendRequest { bucket, throttle, want, returned }
                    })
                    .collect();
                (requests, self.clock.now_ms())
            };
            let answer = tokio::time::timeout(LEND_WAIT, self.authority.lend(requests.clone(), asked_ms)).await;
            let now_ms = self.clock.now_ms().max(asked_ms);
            let mut local = lock(&self.local);
            let answers = match answer {
                Ok(Ok(lent)) if lent.len() == requests.len() => lent.into_iter().map(Some).collect(),
                _ => vec![None; requests.len()],
            };
            for (request, lent) in requests.into_iter().zip(answers) {
                let Some(b) = local.borrowed.get_mut(&request.bucket) else { continue };
                b.throttle = Some(request.throttle);
                match lent {
                    Some(lent) => {
                        // Times count from the asking: the answer's round trip
                        // is not added to the wait.
                        b.left = lent.left;
                        // The wait comes from the throttle's rate: bounded by
                        // validation, and saturating here all the same.
                        let after_ms = |ms: u64| asked_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
                        if lent.granted > 0 {
                            // Lent tokens are usable at once (the authority
                            // books nothing ahead); those held are renewed.
                            if now_ms >= b.valid_until_ms {
                                b.unused = b.unused.saturating_add(std::mem::take(&mut b.tokens));
                            }
                            b.tokens = b.tokens.saturating_add(lent.granted);
                            b.last_loan = lent.granted;
                            b.valid_until_ms = now_ms.saturating_add(self.config.quiet_ms);
                        } else {
                            // None left now: what is held is spent first,
                            // then the node refuses until the next is due.
                            b.denied_until_ms = after_ms(lent.after_ms.max(1));
                        }
                    }
                    None => b.unavailable_until_ms = now_ms + UNAVAILABLE_MS,
                }
                b.fetching = false;
                b.fetched.send_modify(|n| *n += 1);
            }
        }
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
        for batch in returns.chunks(MAX_LENDS) {
            let _ = tokio::time::timeout(LEND_WAIT, self.authority.lend(batch.to_vec(), now_ms)).await;
        }
    }
}

/// Tokens to ask for: about [`BORROW_FOR_MS`] at the rate, and at least this
/// node's standing share of the burst, so a quiet key is admitted from
/// memory for a while; within 1 and the burst.
fn loan_size(t: &Throttle, members: u32) -> u32 {
    let rate_based = (t.rate_per_sec * BORROW_FOR_MS / 1000.0).ceil();
    let standing = f64::from(t.burst / STANDING_BURST_DIVISOR.saturating_mul(members));
    rate_based.max(standing).clamp(1.0, f64::from(t.burst.max(1))) as u32
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

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
use tollgate_proto::check::LimitState;
use tollgate_proto::model::Throttle;

use super::lender::{LendRequest, MAX_LENDS};
use super::limits::{Bucket, BucketId, LimitAt, Limits};
use super::{lock, one_more, Local, Metering, Need, Refusal, Stop, FLUSH_EVERY, UNAVAILABLE_MS};

/// Borrowed tokens cover this long at the bucket's rate.
const BORROW_FOR_MS: f64 = 50.0;
/// A node's standing share of a throttle's burst is the burst over this
/// times the members: all of them together hold at most a quarter of it.
pub const STANDING_BURST_DIVISOR: u32 = 4;
/// A node's standing share of a fixed window is the window's limit over
/// this times the members: the other nodes together hold less than 5% of it.
pub const STANDING_WINDOW_DIVISOR: u32 = 20;
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

/// Where each throttle of a request takes its tokens from, in the order of
/// `Limits::throttles`.
pub(super) type Sources = smallvec::SmallVec<[Source; 2]>;

impl Metering {
    /// Forgets borrowed tokens idle for `quiet_ms` (their time ran out, and
    /// they were given back), and fallback buckets idle for a minute.
    pub(super) fn forget_idle_buckets(&self, local: &mut Local, now_ms: i64) {
        let quiet_ms = self.config.quiet_ms.max(FORGET_IDLE_MS);
        local.borrowed.retain(|_, b| b.fetching || b.unused > 0 || now_ms - b.last_used_ms < quiet_ms);
        local.fallback.retain(|_, b| b.idle_ms(now_ms) < FORGET_IDLE_MS);
    }

    /// For each throttle, where its tokens are (borrowed, or this node's
    /// share while the authority is away); or what to do first: refuse,
    /// borrow, wait for a loan under way.
    pub(super) fn find_tokens(&self, local: &mut Local, limits: &Limits, now_ms: i64) -> Result<Sources, Stop> {
        let mut sources = Sources::new();
        for (i, limit) in limits.throttles.iter().enumerate() {
            let (id, t, cost, reason) = (&limit.bucket, &limit.throttle, limit.cost, limit.reason);
            let at = Some(LimitAt::Throttle(i));
            if cost > u64::from(t.burst) {
                // More than the bucket ever holds: never admitted.
                return Err(Stop::Refused(Refusal { reason, state: throttled_state(t, 1000), at }));
            }
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
            if u64::from(b.tokens) >= cost {
                sources.push(Source::Borrowed);
                continue;
            }
            if now_ms < b.denied_until_ms {
                let wait = (b.denied_until_ms - now_ms) as u64;
                return Err(Stop::Refused(Refusal { reason, state: throttled_state(t, wait), at }));
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
                if fb.tokens < cost as f64 {
                    let state = throttled_state(&local_t, fb.wait_ms(&local_t));
                    return Err(Stop::Refused(Refusal { reason, state, at }));
                }
                sources.push(Source::Fallback);
                continue;
            }
            if b.fetching {
                return Err(Stop::Wait(Need::Wait(b.fetched.subscribe())));
            }
            b.fetching = true;
            let fetched = b.fetched.subscribe();
            // At most the burst (checked above), so it fits the loan's width.
            local.lends.push((id.clone(), *t, u32::try_from(cost).unwrap_or(u32::MAX)));
            let start = one_more(&mut local.lending);
            return Err(Stop::Wait(Need::Tokens { start, fetched }));
        }
        Ok(sources)
    }

    /// Takes the tokens [`Self::find_tokens`] found; pushes each
    /// throttle's state (for headers) onto `states`, in order, and answers
    /// how many lend round trips must be started for tokens now running
    /// low (each start is counted in `Local::lending`: one sender each).
    pub(super) fn take_tokens(
        &self,
        local: &mut Local,
        limits: &Limits,
        sources: Sources,
        now_ms: i64,
        states: &mut smallvec::SmallVec<[LimitState; 3]>,
    ) -> usize {
        let mut start_lending = 0;
        for (source, limit) in sources.into_iter().zip(&limits.throttles) {
            let (id, t, cost) = (&limit.bucket, &limit.throttle, limit.cost);
            let remaining = match source {
                Source::Borrowed => {
                    let Some(b) = local.borrowed.get_mut(id) else { continue };
                    b.tokens = b.tokens.saturating_sub(u32::try_from(cost).unwrap_or(u32::MAX));
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
                        local.lends.push((id.clone(), *t, 1));
                        start_lending += usize::from(one_more(&mut local.lending));
                    }
                    let Some(b) = local.borrowed.get(id) else { continue };
                    b.left.saturating_add(b.tokens as u64).min(t.burst as u64)
                }
                Source::Fallback => {
                    let Some(fb) = local.fallback.get_mut(id) else { continue };
                    fb.tokens -= cost as f64;
                    fb.tokens.max(0.0) as u64
                }
            };
            states.push(bucket_state(t, remaining));
        }
        start_lending
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
                let queued: Vec<(BucketId, Throttle, u32)> = local.lends.drain(..n).collect();
                let requests: Vec<LendRequest> = queued
                    .into_iter()
                    .map(|(bucket, throttle, need)| {
                        // Topped up to the loan's size: what a node holds
                        // stays within it, however often it renews; and at
                        // least what the request waiting needs.
                        let (returned, held) = match local.borrowed.get_mut(&bucket) {
                            Some(b) => (std::mem::take(&mut b.unused), b.tokens),
                            None => (0, 0),
                        };
                        let size = loan_size(&bucket, &throttle, members);
                        let want = size.saturating_sub(held).max(need.saturating_sub(held)).max(1);
                        LendRequest { bucket, throttle, want, returned }
                    })
                    .collect();
                (requests, self.clock.now_ms())
            };
            let answer = tokio::time::timeout(LEND_WAIT, self.authority.lend(requests.clone(), asked_ms)).await;
            let now_ms = self.clock.now_ms().max(asked_ms);
            let mut local = lock(&self.local);
            let local = &mut *local;
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
                            local.next_give_back_ms = local.next_give_back_ms.min(b.valid_until_ms);
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
            if now_ms < local.next_give_back_ms {
                // Nothing has run out since the last walk: with many keys
                // held, walking them all every flush would hold the lock
                // checks take for milliseconds.
                return;
            }
            let mut next = i64::MAX;
            let returns = local
                .borrowed
                .iter_mut()
                .filter_map(|(id, b)| {
                    if b.fetching {
                        // Looked at again once its loan is in.
                        next = next.min(now_ms.saturating_add(FLUSH_EVERY.as_millis() as i64));
                        return None;
                    }
                    if now_ms >= b.valid_until_ms {
                        b.unused = b.unused.saturating_add(std::mem::take(&mut b.tokens));
                    }
                    if b.tokens > 0 {
                        next = next.min(b.valid_until_ms);
                    }
                    let throttle = b.throttle?;
                    let returned = std::mem::take(&mut b.unused);
                    (returned > 0).then(|| LendRequest { bucket: id.clone(), throttle, want: 0, returned })
                })
                .collect();
            local.next_give_back_ms = next;
            returns
        };
        for batch in returns.chunks(MAX_LENDS) {
            let _ = tokio::time::timeout(LEND_WAIT, self.authority.lend(batch.to_vec(), now_ms)).await;
        }
    }
}

/// Tokens to ask for: about [`BORROW_FOR_MS`] at the rate, and at least this
/// node's standing share of the burst, so a quiet key is admitted from
/// memory for a while; within 1 and the burst. A fixed window's share is
/// smaller ([`STANDING_WINDOW_DIVISOR`]): what other nodes hold unused
/// when a window ends is never admitted, and must stay within 5% of it.
fn loan_size(bucket: &BucketId, t: &Throttle, members: u32) -> u32 {
    let rate_based = (t.rate_per_sec * BORROW_FOR_MS / 1000.0).ceil();
    let divisor = match bucket {
        BucketId::Window { .. } => STANDING_WINDOW_DIVISOR,
        _ => STANDING_BURST_DIVISOR,
    };
    let standing = f64::from(t.burst / divisor.saturating_mul(members));
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

//! Exact quotas and cluster-wide throttles, decided from local memory.
//!
//! **Quotas** are leases on the replicated ledger (`tollgate_proto::metering`).
//! A node admits a request from a grant it holds — a decrement under a short
//! lock, no network — and asks the ledger (a Raft write on the leader) for
//! the next grant before the current one runs out, sized from the key's recent
//! rate. Near the limit the ledger hands out ever smaller grants, down to
//! single units, so the last requests of a quota are decided one by one. Used
//! units are reported in batches ([`Metering::flush`]); a grant idle for a
//! while is handed back. A node that cannot reach the leader admits only from
//! what it holds, and only until its lease ends.
//!
//! Each lease has a holder id of its own: the node id in the high bits, a
//! random number in the low ones. A restarted node, or a lease dropped after a
//! limit changed, never shares a grant with its predecessor, whose unreported
//! use the ledger counts when that grant expires.
//!
//! **Throttles** are token buckets kept by one authority, the Raft leader
//! ([`TokenLender`]). A node borrows a few tokens at a time (about 50 ms of the
//! bucket's rate) and admits from them; when the authority has none it says
//! how long to wait, and the node refuses locally until then. If the leader
//! cannot be reached the node falls back to a local bucket with its share of
//! the rate. A new leader starts with full buckets: at most one extra burst.
//!
//! A request takes from every limit that applies, or from none: what it needs
//! is fetched first (without the lock), then taken in one step under the lock,
//! which is never held across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::command::{QuotaPeriod, QuotaUsage};
use tollgate_proto::metering::QuotaLedger;
use tollgate_proto::model::{Quota, Throttle};

use crate::gateway::limits::{Bucket, BucketId, Clock, Limits};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The authority could not be asked (no leader, a partition, a time-out), or
/// refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A request for throttle tokens, sent to the authority.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LendRequest {
    pub bucket: BucketId,
    pub throttle: Throttle,
    pub want: u32,
}

/// The authority's answer: tokens lent, usable `after_ms` from when they
/// were asked for; or, when `granted` is 0, how long until asking again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lent {
    pub granted: u32,
    pub after_ms: u64,
    /// Whole tokens left in the authority's bucket (for `RateLimit-Remaining`).
    pub left: u64,
}

/// Where grants, reports and tokens come from: the cluster (through Raft and
/// the leader), or, in tests of the check pipeline, memory.
pub trait Authority: Send + Sync + 'static {
    /// Proposes a grant; answers the units granted and the ledger after it.
    fn grant(
        &self,
        period: QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>>;
    /// Records used units. A retry with the same `request_id` counts once.
    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>>;
    fn lend(&self, request: LendRequest, now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>>;
    /// Nodes that share a throttle's rate when the authority is unreachable.
    fn members(&self) -> u32;
    /// This node's id (the high bits of its holder ids).
    fn node_id(&self) -> u64;
}

/// The token buckets the leader keeps for the whole cluster.
#[derive(Default)]
pub struct TokenLender {
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_id: HashMap<BucketId, Bucket>,
    last_sweep_ms: i64,
}

impl TokenLender {
    pub fn lend(&self, request: &LendRequest, now_ms: i64) -> Lent {
        let t = &request.throttle;
        let mut guard = lock(&self.buckets);
        let buckets = &mut *guard;
        if now_ms - buckets.last_sweep_ms > 10_000 {
            // Buckets idle for a minute are full again: forgetting them changes nothing.
            buckets.last_sweep_ms = now_ms;
            buckets.by_id.retain(|_, b| b.idle_ms(now_ms) < 60_000);
        }
        let b = match buckets.by_id.get_mut(&request.bucket) {
            Some(b) => b,
            None => buckets.by_id.entry(request.bucket.clone()).or_insert_with(|| Bucket::full(t, now_ms)),
        };
        b.refill(t, now_ms);
        // The bucket may go into debt by a little (RESERVE_MS of its rate):
        // tokens lent from the debt become usable only once the bucket would
        // have had them. So a node asking while the bucket is empty books the
        // next tokens instead of racing the others for them, and no token
        // goes unused while every node waits to ask again.
        let debt = (t.rate_per_sec * RESERVE_MS / 1000.0).max(1.0);
        let lendable = (b.tokens + debt).floor().max(0.0) as u64;
        let granted = lendable.min(request.want as u64) as u32;
        b.tokens -= granted as f64;
        let after_ms = if granted == 0 {
            ((1.0 - (b.tokens + debt)) * 1000.0 / t.rate_per_sec).ceil().max(1.0) as u64
        } else if b.tokens < 0.0 {
            (-b.tokens * 1000.0 / t.rate_per_sec).ceil() as u64
        } else {
            0
        };
        Lent { granted, after_ms, left: b.tokens.floor().max(0.0) as u64 }
    }
}

/// Tuning, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct MeteringConfig {
    /// How long a grant stays valid.
    pub lease_ms: i64,
    /// The most units one grant may bring.
    pub max_grant: u64,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            lease_ms: crate::config::DEFAULT_QUOTA_LEASE_MS as i64,
            max_grant: crate::config::DEFAULT_QUOTA_MAX_GRANT,
        }
    }
}

/// A grant is enough for this long at the key's recent rate.
const GRANT_FOR_MS: i64 = 1_000;
/// Borrowed tokens cover this long at the bucket's rate.
const BORROW_FOR_MS: f64 = 50.0;
/// How far ahead the authority books tokens when its bucket is empty.
const RESERVE_MS: f64 = 100.0;
/// Borrowed tokens not used within this are forgotten (the authority's
/// bucket has long refilled them).
const BORROWED_VALID_MS: i64 = 1_000;
/// Used units are reported this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A lease unused this long is handed back.
const IDLE_MS: i64 = 2_000;
/// After the authority could not be reached, how long to decide without it.
const UNAVAILABLE_MS: i64 = 1_000;
/// How long a check may wait for a grant or tokens.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for tokens from the authority before falling back.
const LEND_WAIT: Duration = Duration::from_millis(500);
/// When the quota is spent but other nodes hold grants, ask again after this.
const EXHAUSTED_RETRY_MS: i64 = 250;

/// Counters for `/metrics` (no per-key labels).
#[derive(Clone)]
pub struct MeteringStats {
    /// Grant requests by result: `granted`, `empty` (nothing left), `unavailable`.
    pub grants: prometheus::IntCounterVec,
    /// Quota units by what happened to them on this node: `granted`,
    /// `returned` (handed back unused), `expired` (lease ran out unused).
    pub units: prometheus::IntCounterVec,
    /// Checks that waited for the leader, by what for: `quota`, `throttle`.
    pub round_trips: prometheus::IntCounterVec,
}

impl Default for MeteringStats {
    fn default() -> Self {
        let vec = |name: &str, help: &str, label: &str| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        MeteringStats {
            grants: vec("tollgate_quota_grant_requests_total", "Quota grant requests by result.", "result"),
            units: vec(
                "tollgate_quota_units_total",
                "Quota units granted to, returned or expired on this node.",
                "kind",
            ),
            round_trips: vec(
                "tollgate_check_leader_round_trips_total",
                "Checks that waited for the leader, by what for.",
                "for",
            ),
        }
    }
}

/// A quota lease on this node.
struct Lease {
    holder: u64,
    /// Units this node may still admit.
    units: u64,
    /// Admit only before this (the ledger's lease end, less a margin for clock skew).
    valid_until_ms: i64,
    /// Admitted and not yet reported.
    unreported: u64,
    /// The plan's limits epoch when the lease was made: a later one drops the lease.
    epoch: u64,
    /// Admissions since `window_start_ms`: the key's recent rate on this node.
    admitted: u64,
    window_start_ms: i64,
    last_used_ms: i64,
    /// Checks waiting for the grant in flight.
    waiting: u64,
    /// The last grant's size; the next is asked for below half of it.
    last_grant: u64,
    /// Whether any grant brought units (the ledger may hold some for us).
    granted: bool,
    /// The last grant brought less than asked: the quota is nearly spent,
    /// so units are fetched when needed, never ahead (a unit fetched ahead
    /// could sit here while another node refuses for lack of it).
    short: bool,
    fetching: bool,
    /// Bumped when a fetch ends; waiters watch it.
    fetched: watch::Sender<u64>,
    exhausted_until_ms: i64,
    unavailable_until_ms: i64,
    /// For headers: the period's limit and what was left of it at the last grant.
    limit: u64,
    remaining: u64,
}

impl Lease {
    fn new(holder: u64, epoch: u64, now_ms: i64, limit: u64) -> Self {
        Lease {
            holder,
            units: 0,
            valid_until_ms: now_ms,
            unreported: 0,
            epoch,
            admitted: 0,
            window_start_ms: now_ms,
            last_used_ms: now_ms,
            waiting: 0,
            last_grant: 0,
            granted: false,
            short: false,
            fetching: false,
            fetched: watch::channel(0).0,
            exhausted_until_ms: 0,
            unavailable_until_ms: 0,
            limit,
            remaining: limit,
        }
    }

    /// Units to ask for: about [`GRANT_FOR_MS`] at the recent rate, and at
    /// least enough for the checks waiting now.
    fn want(&mut self, now_ms: i64, max: u64) -> u64 {
        let elapsed = (now_ms - self.window_start_ms).max(100) as u64;
        let rate_based = self.admitted.saturating_mul(GRANT_FOR_MS as u64) / elapsed;
        if elapsed > GRANT_FOR_MS as u64 {
            self.admitted = 0;
            self.window_start_ms = now_ms;
        }
        rate_based.max(self.waiting + 1).clamp(1, max)
    }
}

/// Throttle tokens borrowed from the authority.
struct Borrowed {
    tokens: u32,
    /// The tokens held may be used from this time on (booked ahead).
    usable_from_ms: i64,
    valid_until_ms: i64,
    denied_until_ms: i64,
    unavailable_until_ms: i64,
    /// The authority's bucket after the last loan, for headers.
    left: u64,
    fetching: bool,
    fetched: watch::Sender<u64>,
    last_used_ms: i64,
}

impl Borrowed {
    fn new(now_ms: i64) -> Self {
        Borrowed {
            tokens: 0,
            usable_from_ms: 0,
            valid_until_ms: now_ms,
            denied_until_ms: 0,
            unavailable_until_ms: 0,
            left: 0,
            fetching: false,
            fetched: watch::channel(0).0,
            last_used_ms: now_ms,
        }
    }
}

#[derive(Default)]
struct Local {
    leases: HashMap<QuotaPeriod, Lease>,
    borrowed: HashMap<BucketId, Borrowed>,
    /// Buckets with this node's share of the rate, while the authority is away.
    fallback: HashMap<BucketId, Bucket>,
    /// Usage of leases dropped (limit changed): reported with their release.
    retired: Vec<QuotaUsage>,
    last_sweep_ms: i64,
}

/// What a check must wait for before it can take.
enum Need {
    /// Start the fetch (this check marked it started), then wait for it...
    Tokens {
        slot: usize,
        fetched: watch::Receiver<u64>,
    },
    Quota {
        want: u64,
        holder: u64,
        fetched: watch::Receiver<u64>,
    },
    /// ...or wait for the fetch another check started.
    Wait(watch::Receiver<u64>),
}

/// Where a throttle's token comes from.
#[derive(Clone, Copy)]
enum Source {
    Borrowed,
    Fallback,
}

pub type Denied = (ReasonCode, LimitState);

pub struct Metering {
    local: Mutex<Local>,
    authority: Arc<dyn Authority>,
    clock: Arc<dyn Clock>,
    /// Used when this node is the leader (the throttle authority).
    pub lender: TokenLender,
    config: MeteringConfig,
    stats: MeteringStats,
    /// The report being sent, kept until the ledger has it (same request id).
    pending: tokio::sync::Mutex<Option<(u128, Vec<QuotaUsage>, i64)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metering {
    pub fn new(
        authority: Arc<dyn Authority>,
        clock: Arc<dyn Clock>,
        config: MeteringConfig,
        stats: MeteringStats,
    ) -> Arc<Self> {
        Arc::new(Metering {
            local: Mutex::new(Local::default()),
            authority,
            clock,
            lender: TokenLender::default(),
            config,
            stats,
            pending: tokio::sync::Mutex::new(None),
        })
    }

    /// Reports used units every [`FLUSH_EVERY`] until the metering is dropped.
    pub fn start_reporting(self: &Arc<Self>) {
        let weak: Weak<Metering> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(metering) = weak.upgrade() else { return };
                metering.flush(metering.clock.now_ms(), false).await;
            }
        });
    }

    fn holder(&self) -> u64 {
        (self.authority.node_id() << 32) | rand::random::<u32>() as u64
    }

    /// Takes one unit from every limit, or from none; on success, the state
    /// of the tightest limit (for `RateLimit-*` headers).
    pub async fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        now_ms: i64,
        epoch: u64,
    ) -> Result<Option<LimitState>, Denied> {
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        let mut waited_for_quota = false;
        let mut now_ms = now_ms;
        loop {
            let need = {
                let mut local = lock(&self.local);
                match self.try_take(&mut local, limits, now_ms, epoch) {
                    Ok(taken) => return taken,
                    Err(need) => need,
                }
            };
            // A fetch runs in a task of its own: if this check is dropped
            // (its client went away), the fetch still ends and wakes the others.
            let mut fetched = match need {
                Need::Wait(fetched) => fetched,
                Need::Tokens { slot, fetched } => {
                    self.stats.round_trips.with_label_values(&["throttle"]).inc();
                    if let Some((id, t)) = limits.throttle(slot) {
                        tokio::spawn(self.clone().borrow_tokens(id.clone(), *t));
                    }
                    fetched
                }
                Need::Quota { want, holder, fetched } => {
                    if !waited_for_quota {
                        self.stats.round_trips.with_label_values(&["quota"]).inc();
                        waited_for_quota = true;
                    }
                    if let Some((period, quota, end_ms)) = &limits.quota {
                        tokio::spawn(self.clone().fetch_grant(period.clone(), holder, *quota, *end_ms, want));
                    }
                    fetched
                }
            };
            if tokio::time::timeout_at(deadline, fetched.changed()).await.is_err() {
                return Err(unavailable());
            }
            // Time passed while waiting (the clock may be a test's, never moving).
            now_ms = now_ms.max(self.clock.now_ms());
        }
    }

    /// Takes from every limit if each has a unit here; otherwise says what to
    /// fetch (or a denial, when a limit is known to be spent).
    fn try_take(
        self: &Arc<Self>,
        local: &mut Local,
        limits: &Limits,
        now_ms: i64,
        epoch: u64,
    ) -> Result<Result<Option<LimitState>, Denied>, Need> {
        if now_ms - local.last_sweep_ms > 10_000 {
            local.last_sweep_ms = now_ms;
            local.borrowed.retain(|_, b| b.fetching || now_ms - b.last_used_ms < 60_000);
            local.fallback.retain(|_, b| b.idle_ms(now_ms) < 60_000);
        }
        // 1. Throttles: borrowed tokens, or this node's share while the authority is away.
        let throttles = [(&limits.stage, ReasonCode::StageThrottled), (&limits.key, ReasonCode::Throttled)];
        let mut sources = [None, None];
        for (slot, (limit, reason)) in throttles.into_iter().enumerate() {
            let Some((id, t)) = limit else { continue };
            let b = match local.borrowed.get_mut(id) {
                Some(b) => b,
                None => local.borrowed.entry(id.clone()).or_insert_with(|| Borrowed::new(now_ms)),
            };
            if now_ms >= b.valid_until_ms {
                b.tokens = 0;
            }
            if b.tokens > 0 {
                if now_ms < b.usable_from_ms {
                    // Booked for later: the cluster's rate is spent until then.
                    let wait = (b.usable_from_ms - now_ms) as u64;
                    return Ok(Err((reason, throttled_state(t, wait))));
                }
                sources[slot] = Some(Source::Borrowed);
                continue;
            }
            if now_ms < b.denied_until_ms {
                let wait = (b.denied_until_ms - now_ms) as u64;
                return Ok(Err((reason, throttled_state(t, wait))));
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
                    return Ok(Err((reason, throttled_state(&local_t, fb.wait_ms(&local_t)))));
                }
                sources[slot] = Some(Source::Fallback);
                continue;
            }
            if b.fetching {
                return Err(Need::Wait(b.fetched.subscribe()));
            }
            b.fetching = true;
            return Err(Need::Tokens { slot, fetched: b.fetched.subscribe() });
        }
        // 2. The quota: a unit of a grant this node holds.
        let mut refill = None;
        if let Some((period, quota, end_ms)) = &limits.quota {
            let lease = match local.leases.get_mut(period) {
                Some(lease) => lease,
                None => {
                    let holder = self.holder();
                    local.leases.entry(period.clone()).or_insert_with(|| Lease::new(holder, epoch, now_ms, quota.limit))
                }
            };
            if epoch > lease.epoch {
                // The plan's limits changed: hand this grant back, start a new lease.
                self.retire(lease, &mut local.retired, period, epoch, now_ms, quota.limit, "returned");
                return self.try_take(local, limits, now_ms, epoch);
            }
            if now_ms >= lease.valid_until_ms && lease.units > 0 {
                if lease.fetching {
                    // A renewal is on its way: wait for it rather than use units past their end.
                    lease.waiting += 1;
                    return Err(Need::Wait(lease.fetched.subscribe()));
                }
                // The lease ran out before it was renewed: hand back what is
                // left under this holder (if the ledger has not expired it
                // yet) and go on with a new one, so no unit of the old grant
                // is mixed with a new grant.
                let lease_epoch = lease.epoch;
                self.retire(lease, &mut local.retired, period, lease_epoch, now_ms, quota.limit, "expired");
                return self.try_take(local, limits, now_ms, epoch);
            }
            if lease.units == 0 {
                if now_ms < lease.exhausted_until_ms {
                    let reset = ((end_ms - now_ms).max(0) as u64).div_ceil(1000);
                    let retry = ((lease.exhausted_until_ms - now_ms) as u64).div_ceil(1000).max(1).min(reset.max(1));
                    let state = LimitState {
                        limit: lease.limit,
                        remaining: 0,
                        reset_secs: reset,
                        retry_after_secs: Some(retry),
                    };
                    return Ok(Err((ReasonCode::QuotaExceeded, state)));
                }
                if now_ms < lease.unavailable_until_ms {
                    return Ok(Err(unavailable()));
                }
                lease.waiting += 1;
                if lease.fetching {
                    return Err(Need::Wait(lease.fetched.subscribe()));
                }
                lease.fetching = true;
                let want = lease.want(now_ms, self.config.max_grant);
                return Err(Need::Quota { want, holder: lease.holder, fetched: lease.fetched.subscribe() });
            }
        }
        // 3. Every limit has a unit here: take them all.
        let mut tightest = None;
        for (slot, source) in sources.into_iter().enumerate() {
            let (Some(source), Some((id, t))) = (source, limits.throttle(slot)) else {
                continue;
            };
            tightest = Some(match source {
                Source::Borrowed => {
                    let Some(b) = local.borrowed.get_mut(id) else { continue };
                    b.tokens -= 1;
                    b.last_used_ms = now_ms;
                    LimitState {
                        limit: t.burst as u64,
                        remaining: b.left + b.tokens as u64,
                        reset_secs: 1,
                        retry_after_secs: None,
                    }
                }
                Source::Fallback => {
                    let Some(fb) = local.fallback.get_mut(id) else { continue };
                    fb.tokens -= 1.0;
                    LimitState {
                        limit: t.burst as u64,
                        remaining: fb.tokens.max(0.0) as u64,
                        reset_secs: 1,
                        retry_after_secs: None,
                    }
                }
            });
        }
        if let Some((period, _, end_ms)) = &limits.quota {
            if let Some(lease) = local.leases.get_mut(period) {
                lease.units -= 1;
                lease.unreported += 1;
                lease.admitted += 1;
                lease.last_used_ms = now_ms;
                lease.remaining = lease.remaining.saturating_sub(1);
                tightest = Some(LimitState {
                    limit: lease.limit,
                    remaining: lease.remaining,
                    reset_secs: ((end_ms - now_ms).max(0) as u64).div_ceil(1000),
                    retry_after_secs: None,
                });
                // Ask for the next grant before this one runs out, or ends.
                // Near the end of the quota (`short`), only extend the lease.
                let low = lease.units <= lease.last_grant / 2 && !lease.short;
                let ending = lease.valid_until_ms - now_ms < self.config.lease_ms / 2;
                if (low || ending) && !lease.fetching && now_ms >= lease.unavailable_until_ms {
                    lease.fetching = true;
                    let want = if lease.short { 0 } else { lease.want(now_ms, self.config.max_grant) };
                    refill = Some((period.clone(), lease.holder, want));
                }
            }
        }
        if let (Some((period, holder, want)), Some((_, quota, end_ms))) = (refill, &limits.quota) {
            tokio::spawn(self.clone().fetch_grant(period, holder, *quota, *end_ms, want));
        }
        Ok(Ok(tightest))
    }

    /// Replaces `lease` with a new one (a new holder), and queues the old
    /// holder's use with the release of what it still holds. `units_were`:
    /// how the units it had left are counted (`returned`, `expired`).
    #[allow(clippy::too_many_arguments)]
    fn retire(
        &self,
        lease: &mut Lease,
        retired: &mut Vec<QuotaUsage>,
        period: &QuotaPeriod,
        epoch: u64,
        now_ms: i64,
        limit: u64,
        units_were: &str,
    ) {
        let old = std::mem::replace(lease, Lease::new(self.holder(), epoch, now_ms, limit));
        self.stats.units.with_label_values(&[units_were]).inc_by(old.units);
        if old.granted || old.unreported > 0 {
            retired.push(QuotaUsage {
                period: period.clone(),
                holder: old.holder,
                used: old.unreported,
                release: true,
            });
        }
    }

    /// Asks the ledger for a grant and records the answer; wakes the waiters.
    async fn fetch_grant(self: Arc<Self>, period: QuotaPeriod, holder: u64, quota: Quota, end_ms: i64, want: u64) {
        let asked_ms = self.clock.now_ms();
        let lease_until_ms = asked_ms + self.config.lease_ms;
        let answer = self.authority.grant(period.clone(), holder, want, lease_until_ms, asked_ms).await;
        let now_ms = self.clock.now_ms().max(asked_ms);
        let mut local = lock(&self.local);
        let local = &mut *local;
        let Some(lease) = local.leases.get_mut(&period).filter(|l| l.holder == holder) else {
            // The lease was dropped meanwhile: hand back what came (or may
            // have: a grant that timed out here may still have been made).
            match answer {
                Ok((0, _)) => {}
                Ok((granted, _)) => {
                    self.stats.units.with_label_values(&["returned"]).inc_by(granted);
                    local.retired.push(QuotaUsage { period, holder, used: 0, release: true });
                }
                Err(_) => local.retired.push(QuotaUsage { period, holder, used: 0, release: true }),
            }
            return;
        };
        match answer {
            Ok((granted, ledger)) => {
                let limit = ledger.limit(quota.limit);
                lease.limit = limit;
                lease.remaining = ledger.remaining(quota.limit);
                lease.units += granted;
                lease.last_grant = granted;
                lease.granted |= granted > 0;
                if want > 0 {
                    lease.short = granted < want;
                }
                if let Some(g) = ledger.grants.get(&holder) {
                    // Stop a little before the ledger does: clocks differ.
                    let margin = (self.config.lease_ms / 10).min(1_000);
                    lease.valid_until_ms = g.expires_at_ms - margin;
                }
                let result = if granted > 0 { "granted" } else { "empty" };
                self.stats.grants.with_label_values(&[result]).inc();
                self.stats.units.with_label_values(&["granted"]).inc_by(granted);
                if lease.units == 0 {
                    // Spent. Others may still hand units back; if none hold
                    // any, nothing changes before the period ends or a limit
                    // changes (which starts a new lease).
                    let others = ledger.grants.iter().any(|(h, g)| *h != holder && g.units > 0);
                    lease.exhausted_until_ms = if others { now_ms + EXHAUSTED_RETRY_MS } else { end_ms };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "quota grant failed; deciding from held grants only");
                self.stats.grants.with_label_values(&["unavailable"]).inc();
                lease.unavailable_until_ms = now_ms + UNAVAILABLE_MS;
                // The grant may have been made all the same (the answer was
                // lost): make sure this holder's release is sent.
                lease.granted = true;
            }
        }
        lease.fetching = false;
        lease.waiting = 0;
        lease.fetched.send_modify(|n| *n += 1);
    }

    async fn borrow_tokens(self: Arc<Self>, id: BucketId, t: Throttle) {
        let asked_ms = self.clock.now_ms();
        let want = (t.rate_per_sec * BORROW_FOR_MS / 1000.0).ceil().clamp(1.0, (t.burst.max(1)) as f64) as u32;
        let request = LendRequest { bucket: id.clone(), throttle: t, want };
        let answer = tokio::time::timeout(LEND_WAIT, self.authority.lend(request, asked_ms)).await;
        let now_ms = self.clock.now_ms().max(asked_ms);
        let mut local = lock(&self.local);
        let Some(b) = local.borrowed.get_mut(&id) else { return };
        match answer {
            Ok(Ok(lent)) => {
                // Times count from the asking: the answer's round trip is not
                // added to the wait.
                b.left = lent.left;
                // The wait comes from the throttle's rate: bounded by
                // validation, and saturating here all the same.
                let after_ms = |ms: u64| asked_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
                if lent.granted > 0 {
                    b.tokens = b.tokens.saturating_add(lent.granted);
                    b.usable_from_ms = after_ms(lent.after_ms);
                    b.valid_until_ms = b.usable_from_ms.max(now_ms).saturating_add(BORROWED_VALID_MS);
                } else {
                    b.denied_until_ms = after_ms(lent.after_ms.max(1));
                }
            }
            Ok(Err(_)) | Err(_) => b.unavailable_until_ms = now_ms + UNAVAILABLE_MS,
        }
        b.fetching = false;
        b.fetched.send_modify(|n| *n += 1);
    }

    /// Reports what was used since the last report, and hands back leases
    /// idle for a while (all of them with `release_all`, at shutdown). A
    /// report that fails is sent again, unchanged, next time.
    pub async fn flush(&self, now_ms: i64, release_all: bool) {
        let mut pending = self.pending.lock().await;
        if pending.is_none() {
            let mut usage = Vec::new();
            {
                let mut local = lock(&self.local);
                let local = &mut *local;
                usage.append(&mut local.retired);
                local.leases.retain(|period, lease| {
                    let idle = lease.waiting == 0 && !lease.fetching && now_ms - lease.last_used_ms >= IDLE_MS;
                    let release = release_all || idle;
                    if lease.unreported > 0 || (release && lease.granted) {
                        usage.push(QuotaUsage {
                            period: period.clone(),
                            holder: lease.holder,
                            used: lease.unreported,
                            release,
                        });
                        lease.unreported = 0;
                    }
                    if release {
                        self.stats.units.with_label_values(&["returned"]).inc_by(lease.units);
                    }
                    !release
                });
            }
            if !usage.is_empty() {
                *pending = Some((rand::random(), usage, now_ms));
            }
        }
        let Some((request_id, usage, at_ms)) = pending.as_ref() else { return };
        match self.authority.report(*request_id, usage.clone(), *at_ms).await {
            Ok(()) => *pending = None,
            Err(e) => tracing::warn!(error = %e, entries = usage.len(), "usage report failed; will retry"),
        }
    }
}

fn throttled_state(t: &Throttle, wait_ms: u64) -> LimitState {
    let secs = wait_ms.div_ceil(1000).max(1);
    LimitState { limit: t.burst as u64, remaining: 0, reset_secs: secs, retry_after_secs: Some(secs) }
}

fn unavailable() -> Denied {
    let state = LimitState { limit: 0, remaining: 0, reset_secs: 1, retry_after_secs: Some(1) };
    (ReasonCode::QuotaUnavailable, state)
}

/// An authority in memory, over a model: for tests of the check pipeline
/// and of this module (the cluster's is `crate::app::ClusterAuthority`).
pub struct LocalAuthority {
    model: crate::cluster::state_machine::SharedModel,
    ledgers: Mutex<HashMap<QuotaPeriod, QuotaLedger>>,
    lender: TokenLender,
    reported: Mutex<std::collections::HashSet<u128>>,
}

impl LocalAuthority {
    pub fn new(model: crate::cluster::state_machine::SharedModel) -> Self {
        LocalAuthority { model, ledgers: Mutex::default(), lender: TokenLender::default(), reported: Mutex::default() }
    }

    pub fn ledger(&self, period: &QuotaPeriod) -> QuotaLedger {
        lock(&self.ledgers).get(period).cloned().unwrap_or_default()
    }

    /// An UpdateUsage on the in-memory ledger (see `QuotaLedger::adjust`).
    pub fn adjust(&self, period: &QuotaPeriod, delta: i64) -> Result<(), String> {
        let limit = self.plan_limit(period).ok_or_else(|| format!("plan {:?} has no quota", period.plan_id))?;
        lock(&self.ledgers).entry(period.clone()).or_default().adjust(limit, delta)
    }

    fn plan_limit(&self, period: &QuotaPeriod) -> Option<u64> {
        match self.model.load().model.get(tollgate_proto::model::EntityKind::Plan, &period.plan_id) {
            Some(tollgate_proto::model::Entity::Plan(p)) => p.quota.map(|q| q.limit),
            _ => None,
        }
    }
}

impl Authority for LocalAuthority {
    fn grant(
        &self,
        period: QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>> {
        let answer = match self.plan_limit(&period) {
            None => Err(Unavailable(format!("plan {:?} has no quota", period.plan_id))),
            Some(limit) => {
                let mut ledgers = lock(&self.ledgers);
                let ledger = ledgers.entry(period).or_default();
                let (granted, _) = ledger.grant(limit, holder, want, lease_until_ms, now_ms);
                Ok((granted, ledger.clone()))
            }
        };
        Box::pin(async move { answer })
    }

    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        if lock(&self.reported).insert(request_id) {
            let mut ledgers = lock(&self.ledgers);
            for u in usage {
                ledgers.entry(u.period).or_default().report(u.holder, u.used, u.release, now_ms);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn lend(&self, request: LendRequest, now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
        let lent = self.lender.lend(&request, now_ms);
        Box::pin(async move { Ok(lent) })
    }

    fn members(&self) -> u32 {
        1
    }

    fn node_id(&self) -> u64 {
        1
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arc_swap::ArcSwap;
    use tollgate_proto::model::{Entity, Period, UsagePlan};

    use super::*;
    use crate::cluster::state_machine::Published;
    use crate::gateway::limits::ManualClock;
    use crate::state::Model;

    const T0: i64 = 1_800_000_000_000;

    fn quota_limits(limit: u64) -> (Limits, QuotaPeriod, crate::cluster::state_machine::SharedModel) {
        let mut model = Model::default();
        let plan: UsagePlan = serde_json::from_value(serde_json::json!({
            "id": "gold", "name": "Gold", "quota": {"limit": limit, "period": "day"}, "api_stages": []
        }))
        .expect("plan");
        model.load(Entity::Plan(plan));
        let period = QuotaPeriod { key_id: "k".into(), plan_id: "gold".into(), start_ms: 0 };
        let quota = Quota { limit, period: Period::Day, offset: 0 };
        let limits = Limits { quota: Some((period.clone(), quota, T0 + 86_400_000)), ..Default::default() };
        let shared = Arc::new(ArcSwap::from_pointee(Published { model, applied: None, limits: Default::default() }));
        (limits, period, shared)
    }

    #[tokio::test]
    async fn use_is_reported_exactly_and_an_idle_grant_handed_back() {
        let (limits, period, model) = quota_limits(1_000);
        let authority = Arc::new(LocalAuthority::new(model));
        let clock = Arc::new(ManualClock::at(T0));
        let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
        for _ in 0..7 {
            assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
        }
        // Background refills may still be on their way; let them land.
        tokio::task::yield_now().await;
        m.flush(clock.now_ms(), false).await;
        let ledger = authority.ledger(&period);
        assert_eq!(ledger.consumed, 7, "{ledger:?}");
        assert!(ledger.outstanding() > 0, "the node still holds the rest of its grant");
        clock.advance_ms(IDLE_MS);
        m.flush(clock.now_ms(), false).await;
        let ledger = authority.ledger(&period);
        assert_eq!((ledger.consumed, ledger.outstanding()), (7, 0), "idle: the rest went back");
    }

    /// An in-memory authority whose grants wait until the test lets them through.
    struct Gated {
        inner: LocalAuthority,
        open: tokio::sync::Semaphore,
    }

    impl Authority for Gated {
        fn grant(
            &self,
            period: QuotaPeriod,
            holder: u64,
            want: u64,
            lease_until_ms: i64,
            now_ms: i64,
        ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>> {
            Box::pin(async move {
                let _pass = self.open.acquire().await.map_err(|e| Unavailable(e.to_string()))?;
                self.inner.grant(period, holder, want, lease_until_ms, now_ms).await
            })
        }
        fn report(&self, id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
            self.inner.report(id, usage, now_ms)
        }
        fn lend(&self, request: LendRequest, now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
            self.inner.lend(request, now_ms)
        }
        fn members(&self) -> u32 {
            1
        }
        fn node_id(&self) -> u64 {
            1
        }
    }

    #[tokio::test]
    async fn a_check_given_up_while_it_fetches_does_not_wedge_the_lease() {
        let (limits, _, model) = quota_limits(1_000);
        let authority = Arc::new(Gated { inner: LocalAuthority::new(model), open: tokio::sync::Semaphore::new(0) });
        let clock = Arc::new(ManualClock::at(T0));
        let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
        // The first check starts a grant and is dropped while it waits (its client went away).
        let given_up = tokio::time::timeout(Duration::from_millis(20), m.admit(&limits, T0, 0)).await;
        assert!(given_up.is_err(), "the grant is held back, so the check cannot finish");
        // The grant goes through: the next check is admitted from it.
        authority.open.add_permits(100);
        let next = tokio::time::timeout(Duration::from_millis(500), m.admit(&limits, T0, 0)).await;
        assert!(matches!(next, Ok(Ok(_))), "the lease was left waiting for a fetch no one runs: {next:?}");
    }

    /// An authority that is never reachable, counting how often it is asked.
    #[derive(Default)]
    struct Unreachable(AtomicUsize);

    impl Authority for Unreachable {
        fn grant(
            &self,
            _: QuotaPeriod,
            _: u64,
            _: u64,
            _: i64,
            _: i64,
        ) -> BoxFuture<'_, Result<(u64, QuotaLedger), Unavailable>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(Unavailable("no leader".into())) })
        }
        fn report(&self, _: u128, _: Vec<QuotaUsage>, _: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
            Box::pin(async { Err(Unavailable("no leader".into())) })
        }
        fn lend(&self, _: LendRequest, _: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(Unavailable("no leader".into())) })
        }
        fn members(&self) -> u32 {
            3
        }
        fn node_id(&self) -> u64 {
            1
        }
    }

    #[tokio::test]
    async fn without_the_leader_a_node_refuses_quota_it_does_not_hold_and_shares_throttles() {
        let (limits, _, _) = quota_limits(1_000);
        let authority = Arc::new(Unreachable::default());
        let clock = Arc::new(ManualClock::at(T0));
        let m = Metering::new(authority.clone(), clock.clone(), MeteringConfig::default(), Default::default());
        for _ in 0..3 {
            let (reason, _) = m.admit(&limits, clock.now_ms(), 0).await.expect_err("no grant held");
            assert_eq!(reason, ReasonCode::QuotaUnavailable);
        }
        assert_eq!(authority.0.load(Ordering::SeqCst), 1, "asked once, then refused from memory");
        // A throttle falls back to this node's share: a third of the burst.
        let throttle = Throttle { rate_per_sec: 30.0, burst: 9 };
        let id = BucketId::Stage { api: "a".into(), stage: "s".into() };
        let limits = Limits { stage: Some((id, throttle)), ..Default::default() };
        let mut admitted = 0;
        for _ in 0..9 {
            if m.admit(&limits, clock.now_ms(), 0).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
    }
}

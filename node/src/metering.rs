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

pub mod limits;
use limits::{Bucket, BucketId, Clock, Limits};

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

/// How long a quota grant held by a node stays valid, unless configured.
pub const DEFAULT_LEASE_MS: u64 = 10_000;
/// The most quota units one grant may hand a node, unless configured.
pub const DEFAULT_MAX_GRANT: u64 = 10_000;

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
        MeteringConfig { lease_ms: DEFAULT_LEASE_MS as i64, max_grant: DEFAULT_MAX_GRANT }
    }
}

/// A grant is enough for this long at the key's recent rate.
const GRANT_FOR_MS: i64 = 1_000;
/// Borrowed tokens cover this long at the bucket's rate.
const BORROW_FOR_MS: f64 = 50.0;
/// Borrowed tokens not used within this are forgotten (the authority's
/// bucket has long refilled them).
const BORROWED_VALID_MS: i64 = 1_000;
/// Used units are reported this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A lease unused this long is handed back.
const IDLE_MS: i64 = 2_000;
/// ...and this long, near the end of its quota.
const SHORT_IDLE_MS: i64 = FLUSH_EVERY.as_millis() as i64;
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
    /// The ledger's number for the grant this lease admits from (and its
    /// unreported use came from); 0 before the first.
    generation: u64,
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
    /// At the last grant, other holders had units: the quota is not spent,
    /// only held elsewhere, and they hand back what they do not use.
    held_elsewhere: bool,
    unavailable_until_ms: i64,
    /// For headers: the period's limit, and what is surely left of it (this
    /// node's units and the ledger's free ones at the last grant, less what
    /// was admitted here since).
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
            generation: 0,
            last_grant: 0,
            granted: false,
            short: false,
            fetching: false,
            fetched: watch::channel(0).0,
            exhausted_until_ms: 0,
            held_elsewhere: false,
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
    /// Ask again at this time (the quota's last units are held by other
    /// nodes, which hand back what they do not use); past the check's
    /// deadline, answer `otherwise`.
    Until {
        at_ms: i64,
        otherwise: Denied,
    },
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
    config: MeteringConfig,
    stats: MeteringStats,
    /// The report being sent, kept until the ledger has it (same request id).
    pending: tokio::sync::Mutex<Option<(u128, Vec<QuotaUsage>, i64)>>,
    /// The applied model, whose limits epochs say which leases a limit
    /// change made stale: those are handed back at the next flush, not only
    /// when a check for the key comes by, so other nodes can have the units.
    limits_model: std::sync::OnceLock<crate::state::published::SharedModel>,
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
            config,
            stats,
            pending: tokio::sync::Mutex::new(None),
            limits_model: std::sync::OnceLock::new(),
        })
    }

    /// Hands back, at each flush, the leases of plans whose limits changed
    /// in `model` (set once, when the node starts).
    pub fn watch_limits(&self, model: crate::state::published::SharedModel) {
        let _ = self.limits_model.set(model);
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
                metering.give_back_unused(metering.clock.now_ms()).await;
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
        // Set once the quota's last units were found held elsewhere: what to
        // answer if none come back before the deadline.
        let mut held_elsewhere: Option<Denied> = None;
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
                Need::Until { at_ms, otherwise } => {
                    let wait = Duration::from_millis((at_ms - now_ms).clamp(1, EXHAUSTED_RETRY_MS) as u64);
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(otherwise);
                    }
                    held_elsewhere = Some(otherwise);
                    tokio::time::sleep(wait).await;
                    now_ms = now_ms.max(self.clock.now_ms()).max(at_ms);
                    continue;
                }
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
                return Err(held_elsewhere.unwrap_or_else(unavailable));
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
        // 0. A quota known to be spent refuses before any throttle token is
        // fetched: a refusal takes nothing from any limit.
        if let Some((period, _, end_ms)) = &limits.quota {
            if let Some(lease) = local.leases.get(period) {
                let spent = lease.epoch >= epoch && lease.units == 0 && !lease.held_elsewhere;
                if spent && now_ms < lease.exhausted_until_ms {
                    return Ok(Err(quota_exceeded(lease, now_ms, *end_ms)));
                }
            }
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
                b.unused = b.unused.saturating_add(b.tokens);
                b.tokens = 0;
            }
            if b.tokens > 0 {
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
                // The plan's limits changed: hand this grant back (now, so
                // the new lease can have its units), start a new lease.
                self.retire(lease, &mut local.retired, period, epoch, now_ms, quota.limit, "returned");
                self.flush_soon();
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
                self.flush_soon();
                return self.try_take(local, limits, now_ms, epoch);
            }
            if lease.units == 0 {
                if now_ms < lease.exhausted_until_ms {
                    let denied = quota_exceeded(lease, now_ms, *end_ms);
                    if lease.held_elsewhere {
                        // Not spent: wait for the holders to hand units back.
                        return Err(Need::Until { at_ms: lease.exhausted_until_ms, otherwise: denied });
                    }
                    return Ok(Err(denied));
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
        // 3. Every limit has a unit here: take them all. The headers show
        // the tightest: the limit with the fewest requests left.
        let mut tightest: Option<LimitState> = None;
        let mut consider = |state: LimitState| {
            let tighter = match tightest {
                Some(t) => (state.remaining, state.limit) < (t.remaining, t.limit),
                None => true,
            };
            if tighter {
                tightest = Some(state);
            }
        };
        for (slot, source) in sources.into_iter().enumerate() {
            let (Some(source), Some((id, t))) = (source, limits.throttle(slot)) else {
                continue;
            };
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
            consider(bucket_state(t, remaining));
        }
        if let Some((period, _, end_ms)) = &limits.quota {
            if let Some(lease) = local.leases.get_mut(period) {
                lease.units -= 1;
                lease.unreported += 1;
                lease.admitted += 1;
                lease.last_used_ms = now_ms;
                lease.remaining = lease.remaining.saturating_sub(1);
                consider(LimitState {
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
                generation: old.generation,
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
                Ok((granted, ledger)) => {
                    self.stats.units.with_label_values(&["returned"]).inc_by(granted);
                    let generation = ledger.grants.get(&holder).map_or(0, |g| g.generation);
                    local.retired.push(QuotaUsage { period, holder, generation, used: 0, release: true });
                }
                Err(_) => local.retired.push(QuotaUsage { period, holder, generation: 0, release: true, used: 0 }),
            }
            return;
        };
        match answer {
            Ok((granted, ledger)) => {
                let limit = ledger.limit(quota.limit);
                lease.limit = limit;
                let generation = ledger.grants.get(&holder).map_or(0, |g| g.generation);
                if lease.generation != 0 && generation != 0 && generation != lease.generation {
                    // The grant this lease held expired at the ledger (counted
                    // whole) and this is a new one: nothing more is admitted
                    // from the old one, so its use is closed with a release,
                    // which turns the ledger's whole-grant charge into that use.
                    self.stats.units.with_label_values(&["expired"]).inc_by(lease.units);
                    local.retired.push(QuotaUsage {
                        period: period.clone(),
                        holder,
                        generation: lease.generation,
                        used: lease.unreported,
                        release: true,
                    });
                    lease.units = 0;
                    lease.unreported = 0;
                }
                if generation != 0 {
                    lease.generation = generation;
                }
                lease.units += granted;
                // What this node can promise: its own units and the ledger's
                // free ones. Units other nodes hold may be spent already, so
                // they are not counted (RateLimit-Remaining never says more
                // than is left).
                lease.remaining = ledger.available(quota.limit).saturating_add(lease.units);
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
                    lease.held_elsewhere = others;
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

    /// Reports and releases in a task of its own, now rather than at the
    /// next tick (a retired lease's units are wanted by its successor).
    fn flush_soon(self: &Arc<Self>) {
        let metering = self.clone();
        tokio::spawn(async move { metering.flush(metering.clock.now_ms(), false).await });
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

    /// Reports what was used since the last report, and hands back leases
    /// idle for a while (all of them with `release_all`, at shutdown). A
    /// report that fails is sent again, unchanged, next time.
    pub async fn flush(&self, now_ms: i64, release_all: bool) {
        let mut pending = self.pending.lock().await;
        if pending.is_none() {
            let mut usage = Vec::new();
            let published = self.limits_model.get().map(|m| m.load_full());
            {
                let mut local = lock(&self.local);
                let local = &mut *local;
                usage.append(&mut local.retired);
                local.leases.retain(|period, lease| {
                    // Near the end of a quota (the last grant came short) other
                    // nodes may be waiting for the units this one holds.
                    let idle_after = if lease.short { SHORT_IDLE_MS } else { IDLE_MS };
                    let idle = lease.waiting == 0 && !lease.fetching && now_ms - lease.last_used_ms >= idle_after;
                    let stale = !lease.fetching
                        && published.as_ref().is_some_and(|p| p.limits.of(&period.plan_id) > lease.epoch);
                    let release = release_all || idle || stale;
                    if lease.unreported > 0 || (release && lease.granted) {
                        usage.push(QuotaUsage {
                            period: period.clone(),
                            holder: lease.holder,
                            generation: lease.generation,
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

/// The refusal of a spent quota: `Retry-After` when units may come back
/// (other holders hand back what they do not use: soon), else the period's
/// end, when the count starts again.
fn quota_exceeded(lease: &Lease, now_ms: i64, end_ms: i64) -> Denied {
    let reset = ((end_ms - now_ms).max(0) as u64).div_ceil(1000).max(1);
    let retry = if lease.held_elsewhere { 1 } else { reset };
    let state = LimitState { limit: lease.limit, remaining: 0, reset_secs: reset, retry_after_secs: Some(retry) };
    (ReasonCode::QuotaExceeded, state)
}

/// A bucket with `remaining` whole tokens: it resets (is full again) when the
/// missing tokens have come back at the bucket's rate.
fn bucket_state(t: &Throttle, remaining: u64) -> LimitState {
    let missing = (t.burst as u64).saturating_sub(remaining) as f64;
    let reset_secs = (missing / t.rate_per_sec).ceil().max(1.0) as u64;
    LimitState { limit: t.burst as u64, remaining, reset_secs, retry_after_secs: None }
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
/// and of this module (the cluster's is `crate::cluster::authority::ClusterAuthority`).
pub struct LocalAuthority {
    model: crate::state::published::SharedModel,
    ledgers: Mutex<HashMap<QuotaPeriod, QuotaLedger>>,
    lender: TokenLender,
    reported: Mutex<std::collections::HashSet<u128>>,
}

impl LocalAuthority {
    pub fn new(model: crate::state::published::SharedModel) -> Self {
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
                ledgers.entry(u.period).or_default().report(u.holder, u.generation, u.used, u.release, now_ms);
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

    use super::limits::ManualClock;
    use super::*;
    use crate::state::published::Published;
    use crate::state::Model;

    const T0: i64 = 1_800_000_000_000;

    fn quota_limits(limit: u64) -> (Limits, QuotaPeriod, crate::state::published::SharedModel) {
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

    fn throttle_limits(rate_per_sec: f64, burst: u32) -> Limits {
        let id = BucketId::Key { key: "k".into(), plan: "p".into(), method_override: None };
        Limits { key: Some((id, Throttle { rate_per_sec, burst })), ..Default::default() }
    }

    #[tokio::test]
    async fn a_booked_token_the_client_never_came_back_for_goes_back_to_the_bucket() {
        // The case: 0.25/s, burst 1; a 429 at t=0.1 s books the next
        // token; the client comes back only after Retry-After + 2 s.
        let limits = throttle_limits(0.25, 1);
        let (_, _, model) = quota_limits(1);
        let clock = Arc::new(ManualClock::at(T0));
        let m =
            Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
        assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
        clock.advance_ms(100);
        let (reason, state) = m.admit(&limits, clock.now_ms(), 0).await.expect_err("throttled");
        assert_eq!((reason, state.retry_after_secs), (ReasonCode::Throttled, Some(4)));
        for round in 0..5 {
            clock.advance_ms((4 + 2) * 1000);
            let answer = m.admit(&limits, clock.now_ms(), 0).await;
            assert!(answer.is_ok(), "round {round}: waiting past Retry-After was refused: {answer:?}");
        }
    }

    /// A small deterministic generator.
    fn generator(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed;
        move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound.max(1)
        }
    }

    /// Random clients against random buckets: one that waits what
    /// `Retry-After` says after a refusal, or spaces its requests more than
    /// 1/rate apart, is always admitted; refusals take nothing, so the
    /// bucket's whole rate stays usable.
    #[tokio::test]
    async fn a_client_that_waits_what_the_headers_say_is_admitted() {
        let mut next = generator(0x5851_f42d_4c95_7f2d);
        for history in 0..60 {
            let rate = [0.25, 0.5, 1.0, 3.5, 10.0, 40.0][next(6) as usize];
            let burst = 1 + next(5) as u32;
            let limits = throttle_limits(rate, burst);
            let (_, _, model) = quota_limits(1);
            let clock = Arc::new(ManualClock::at(T0));
            let authority = Arc::new(LocalAuthority::new(model));
            let m = Metering::new(authority, clock.clone(), Default::default(), Default::default());
            let spacing_ms = (1000.0 / rate).ceil() as i64 + 1;
            let mut must_pass = false;
            for step in 0..40 {
                let answer = m.admit(&limits, clock.now_ms(), 0).await;
                if must_pass {
                    assert!(answer.is_ok(), "history {history} step {step} ({rate}/s burst {burst}): {answer:?}");
                }
                if next(4) == 0 {
                    // Now and then the abandoned-token case: give back what ran out.
                    m.give_back_unused(clock.now_ms()).await;
                }
                must_pass = match (answer, next(3)) {
                    // Refused: wait exactly Retry-After.
                    (Err((_, state)), _) => {
                        clock.advance_ms(state.retry_after_secs.unwrap_or(1) as i64 * 1000);
                        true
                    }
                    // Admitted: a burst (no promise), or a polite spacing.
                    (Ok(_), 0) => false,
                    (Ok(_), 1) => {
                        clock.advance_ms(spacing_ms + next(1000) as i64);
                        true
                    }
                    (Ok(_), _) => {
                        clock.advance_ms(next(spacing_ms as u64) as i64);
                        false
                    }
                };
            }
        }
    }

    #[tokio::test]
    async fn a_spent_quota_says_to_come_back_when_the_period_ends() {
        let (limits, _, model) = quota_limits(1);
        let clock = Arc::new(ManualClock::at(T0));
        let m =
            Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
        assert!(m.admit(&limits, clock.now_ms(), 0).await.is_ok());
        m.flush(clock.now_ms(), false).await;
        let (reason, state) = m.admit(&limits, clock.now_ms(), 0).await.expect_err("spent");
        let to_period_end = (86_400_000u64).div_ceil(1000);
        assert_eq!(
            (reason, state.retry_after_secs, state.reset_secs),
            (ReasonCode::QuotaExceeded, Some(to_period_end), to_period_end)
        );
    }

    #[tokio::test]
    async fn headers_show_the_tightest_limit_and_a_throttle_resets_when_full() {
        // A throttle of 1/s, burst 5, under a large quota: the fifth request
        // has no token left, and says so.
        let (mut limits, _, model) = quota_limits(1_000_000);
        limits.key = throttle_limits(1.0, 5).key;
        let clock = Arc::new(ManualClock::at(T0));
        let m =
            Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
        let mut last = None;
        for _ in 0..5 {
            last = m.admit(&limits, clock.now_ms(), 0).await.expect("within the burst");
        }
        let state = last.expect("a limit state");
        assert_eq!((state.limit, state.remaining, state.reset_secs), (5, 0, 5));
        assert!(m.admit(&limits, clock.now_ms(), 0).await.is_err());
        // 0.25/s with burst 1: the bucket is full again in 4 s, not 1.
        let (_, _, model) = quota_limits(1);
        let m =
            Metering::new(Arc::new(LocalAuthority::new(model)), clock.clone(), Default::default(), Default::default());
        let limits = throttle_limits(0.25, 1);
        let state = m.admit(&limits, clock.now_ms(), 0).await.expect("a token").expect("a limit state");
        assert_eq!((state.remaining, state.reset_secs), (0, 4));
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

//! Exact quotas and cluster-wide throttles, decided from local memory.
//!
//! **Quotas** are leases on the replicated ledger (`tollgate_proto::metering`).
//! A node admits a request from a grant it holds — a decrement under a short
//! lock, no network — and asks the ledger for more before the grant runs
//! out: about a second's worth at the key's recent rate, and at least the
//! key's standing share, so a key checked now and then is admitted from
//! memory too. Near the limit the ledger hands out ever smaller grants, down
//! to single units, and recalls units a quiet node holds, so the last
//! requests of a quota are decided one by one. Every grant lives as long as
//! the node's lease session, renewed for all keys in one Raft entry that also
//! carries the grants asked for since the last one (`lease`). Used units are
//! reported in batches ([`Metering::flush`]); a grant unused for a while is
//! handed back. A node that cannot reach the leader admits only from what it
//! holds, and only until its session ends.
//!
//! Each lease has a holder id of its own: the node id in the high bits, a
//! random number in the low ones. A restarted node, a new session, or a lease
//! dropped after a limit changed, never shares a grant with its predecessor,
//! whose unreported use the ledger counts when that grant expires.
//!
//! **Throttles** are token buckets kept by one authority, the Raft leader
//! ([`TokenLender`]). A node borrows a few tokens at a time (about 50 ms of
//! the bucket's rate, and at least its standing share of the burst), in one
//! round trip for all the buckets it needs, and admits from them; when the
//! authority has none it says how long to wait, and the node refuses locally
//! until then. If the leader cannot be reached the node falls back to a
//! local bucket with its share of the rate. A new leader starts with full
//! buckets: at most one extra burst.
//!
//! A request takes from every limit that applies, or from none: what it needs
//! is fetched first (without the lock), then taken in one step under the lock,
//! which is never held across an `.await`.

//! # Layout
//!
//! - [`limits`]: the limits a request must pass ([`Limits`]) and the token
//!   bucket arithmetic.
//! - [`authority`]: the [`Authority`] trait (grants, reports, tokens) and
//!   the in-memory [`LocalAuthority`].
//! - `lease`: quota leases — the node's lease session, admitting from a
//!   grant, asking for more (queued, sent in one lease command), recalls.
//! - `borrow`: throttle tokens borrowed from the authority (queued, sent in
//!   one round trip), and the fallback share while it is away.
//! - [`lender`]: the leader's token buckets ([`TokenLender`]).
//! - [`scenarios`]: metering scenarios any authority must pass, with the
//!   in-memory backend; `tests` runs each on it, an integration test can
//!   run them all on a cluster ([`scenarios::run_all`]).
//! - [`doubles`]: authorities that hold grants back, are never reachable, or
//!   count what they are asked for.
//!
//! This module never imports the gateway: the gateway builds [`Limits`] and
//! calls [`Metering::admit`].

pub mod authority;
mod borrow;
pub mod doubles;
mod lease;
pub mod lender;
pub mod limits;
pub mod scenarios;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::command::{QuotaPeriod, QuotaUsage};

pub use authority::{Authority, BoxFuture, Grant, LeaseAnswer, LeaseRequest, LocalAuthority, Unavailable};
pub use lender::{LendRequest, Lent, TokenLender};
pub use limits::{Bucket, BucketId, LimitAt, Limits, QuotaLimit, ThrottleLimit};

use crate::clock::Clock;
use crate::state::published::SharedModel;
use borrow::Borrowed;
use lease::{Lease, Queued, Session};

/// Tuning, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct MeteringConfig {
    /// How long a grant stays valid, in ms.
    pub lease_ms: i64,
    /// The most units one grant may bring.
    pub max_grant: u64,
    /// A lease, or borrowed throttle tokens, unused this long are handed
    /// back, in ms. While its session lives a quiet lease costs the ledger
    /// nothing: this bounds what a node keeps, not what it writes.
    pub quiet_ms: i64,
}

/// How long a quota grant held by a node stays valid, unless configured.
pub const DEFAULT_LEASE_MS: u64 = 10_000;
/// The most quota units one grant may hand a node, unless configured.
pub const DEFAULT_MAX_GRANT: u64 = 10_000;

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig { lease_ms: DEFAULT_LEASE_MS as i64, max_grant: DEFAULT_MAX_GRANT, quiet_ms: DEFAULT_QUIET_MS }
    }
}

/// How long a lease may go unused before it is handed back, unless configured.
pub const DEFAULT_QUIET_MS: i64 = 120_000;

/// Used units are reported this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// After the authority could not be reached, how long to decide without it.
const UNAVAILABLE_MS: i64 = 1_000;
/// Lease commands (and, apart, lend round trips) a node keeps on their way
/// at once: while one waits for its Raft entry, the next carries what was
/// asked meanwhile, and the leader writes them in one batch.
const IN_FLIGHT: usize = 4;

/// Counts one more sender in `running` if fewer than [`IN_FLIGHT`] run:
/// whether to start it.
fn one_more(running: &mut usize) -> bool {
    let start = *running < IN_FLIGHT;
    if start {
        *running += 1;
    }
    start
}

/// How long a check may wait for a grant or tokens.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);
/// When the quota is spent but other nodes hold grants, ask again after this.
const EXHAUSTED_RETRY_MS: i64 = 250;
/// How often idle borrowed tokens and fallback buckets are looked for.
const SWEEP_EVERY_MS: i64 = 10_000;

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

/// A limit refused the request: which reason (throttled, over quota, quota
/// unreachable), the limit's state for headers (with `retry_after_secs`),
/// and which limit it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    /// `StageThrottled`, `Throttled`, `QuotaExceeded` or `QuotaUnavailable`.
    pub reason: ReasonCode,
    /// The refusing limit's state; `retry_after_secs` is always set.
    pub state: LimitState,
    /// The limit that refused (`None`: the authority could not be reached
    /// to renew the lease session, whatever the limit).
    pub at: Option<LimitAt>,
}

impl Refusal {
    /// No grant could be had from the authority: retry in a second.
    fn unavailable(at: Option<LimitAt>) -> Self {
        let state = LimitState { limit: 0, remaining: 0, reset_secs: 1, retry_after_secs: Some(1) };
        Refusal { reason: ReasonCode::QuotaUnavailable, state, at }
    }
}

/// A request was admitted: the state of each limit after it, throttles
/// first, then quotas, in the order of [`Limits`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admitted {
    /// One state per limit (`throttles`, then `quotas`).
    pub states: smallvec::SmallVec<[LimitState; 3]>,
}

impl Admitted {
    /// The tightest limit's state (the fewest requests left, then the
    /// lowest limit), for `RateLimit-*` headers.
    pub fn tightest(&self) -> Option<LimitState> {
        self.states.iter().copied().min_by_key(|s| (s.remaining, s.limit))
    }
}

/// The maps a check looks up per key: hashed with aHash, keyed at random per
/// process (SipHash over their string keys was a tenth of a decision's
/// instructions).
pub(crate) type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// What this node holds, under one lock never held across an `.await`.
struct Local {
    /// The lease session every grant held here was made under.
    session: Session,
    leases: FastMap<QuotaPeriod, Lease>,
    /// Grants wanted, for the next lease command.
    asks: Vec<Queued>,
    /// Lease commands under way (each takes the asks queued by its turn),
    /// at most [`IN_FLIGHT`].
    asking: usize,
    /// Bumped when a lease command ends: checks waiting for the session's
    /// renewal watch it.
    leased: watch::Sender<u64>,
    /// The number of the next recall to look at.
    recall_seq: u64,
    borrowed: FastMap<BucketId, Borrowed>,
    /// Loans wanted, for the next round trip to the lender.
    /// (bucket, its throttle, tokens the waiting request needs).
    lends: Vec<(BucketId, tollgate_proto::model::Throttle, u32)>,
    /// Lend round trips under way, at most [`IN_FLIGHT`].
    lending: usize,
    /// Buckets with this node's share of the rate, while the authority is away.
    fallback: FastMap<BucketId, Bucket>,
    /// Usage of leases dropped (limit changed): reported with their release.
    retired: Vec<QuotaUsage>,
    /// Leases every flush looks at: used since their last report, near the
    /// end of their quota, or recalled (see `Metering::collect_usage`).
    /// May list a lease twice, or one gone: `Lease::hot` says.
    hot: Vec<QuotaPeriod>,
    /// When every lease is next looked at (idle ones handed back).
    next_scan_ms: i64,
    /// The limits epoch of the last walk over every lease.
    scanned_limits: u64,
    /// No borrowed token runs out before this (the earliest
    /// `valid_until_ms` of a bucket holding tokens at the last walk, or of a
    /// loan since): `give_back_unused` walks the buckets only from then.
    next_give_back_ms: i64,
    last_sweep_ms: i64,
}

/// The outcome of one attempt to take from every limit, under the lock.
enum Take {
    /// Taken from every limit: the state of each.
    Taken(Admitted),
    /// A limit refuses; nothing was taken.
    Refused(Refusal),
    /// Something must be fetched or waited for before trying again.
    Wait(Need),
}

/// Why one part of an attempt could not take: a limit refuses, or
/// something must be fetched first.
enum Stop {
    /// A limit refuses; nothing was taken.
    Refused(Refusal),
    /// Something must be fetched or waited for before trying again.
    Wait(Need),
}

impl From<Stop> for Take {
    fn from(stop: Stop) -> Take {
        match stop {
            Stop::Refused(refusal) => Take::Refused(refusal),
            Stop::Wait(need) => Take::Wait(need),
        }
    }
}

/// What a check must wait for before it can take.
enum Need {
    /// Tokens are queued for the next lend round trip (which this check
    /// starts, with `start`); wait for them...
    Tokens { start: bool, fetched: watch::Receiver<u64> },
    /// A grant is queued for the next lease command (which this check
    /// starts, with `start`); wait for it...
    Ask { start: bool, fetched: watch::Receiver<u64> },
    /// ...or wait for the fetch another check started.
    Wait(watch::Receiver<u64>),
    /// Ask again at this time (the quota's last units are held by other
    /// nodes, which hand back what they do not use); past the check's
    /// deadline, answer `otherwise`.
    Until { at_ms: i64, otherwise: Refusal },
}

/// A usage report being sent, kept until the ledger has it.
struct PendingReport {
    /// The same id on every retry, so the ledger counts it once.
    request_id: u128,
    usage: Vec<QuotaUsage>,
    at_ms: i64,
}

/// Quotas and throttles for this node's checks (see the module doc).
pub struct Metering {
    local: Mutex<Local>,
    authority: Arc<dyn Authority>,
    clock: Arc<dyn Clock>,
    /// Used when this node is the leader (the throttle authority).
    pub lender: TokenLender,
    config: MeteringConfig,
    stats: MeteringStats,
    /// The report being sent, kept until the ledger has it (same request id).
    pending: tokio::sync::Mutex<Option<PendingReport>>,
    /// The applied model, whose limits epochs say which leases a limit
    /// change made stale: those are handed back at the next flush, not only
    /// when a check for the key comes by, so other nodes can have the units.
    limits_model: std::sync::OnceLock<SharedModel>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metering {
    /// Metering that asks `authority` for grants and tokens, on `clock`.
    pub fn new(
        authority: Arc<dyn Authority>,
        clock: Arc<dyn Clock>,
        config: MeteringConfig,
        stats: MeteringStats,
    ) -> Arc<Self> {
        let local = Local {
            session: Session::new(authority.node_id()),
            leases: FastMap::default(),
            asks: Vec::new(),
            asking: 0,
            leased: watch::channel(0).0,
            recall_seq: 0,
            borrowed: FastMap::default(),
            lends: Vec::new(),
            lending: 0,
            fallback: FastMap::default(),
            retired: Vec::new(),
            hot: Vec::new(),
            next_scan_ms: 0,
            scanned_limits: 0,
            next_give_back_ms: 0,
            last_sweep_ms: 0,
        };
        Arc::new(Metering {
            local: Mutex::new(local),
            authority,
            clock,
            lender: TokenLender::default(),
            config,
            stats,
            pending: tokio::sync::Mutex::new(None),
            limits_model: std::sync::OnceLock::new(),
        })
    }

    /// Hands back, at each flush, the leases of plans whose limits changed
    /// in `model` (set once, when the node starts).
    pub fn watch_limits(&self, model: SharedModel) {
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
                metering.renew_if_due(metering.clock.now_ms());
                metering.give_back_unused(metering.clock.now_ms()).await;
                metering.flush(metering.clock.now_ms(), false).await;
            }
        });
    }

    /// Takes each limit's cost from every limit, or from none; on success,
    /// the state of each limit after it.
    ///
    /// Waits at most [`FETCH_WAIT`] for a grant or tokens from the authority.
    ///
    /// # Errors
    /// A [`Refusal`] when a limit has no room (nothing is taken), or the
    /// quota's authority could not be reached in time.
    pub async fn admit(self: &Arc<Self>, limits: &Limits, now_ms: i64) -> Result<Admitted, Refusal> {
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        let mut waited_for_quota = false;
        // Set once the quota's last units were found held elsewhere: what to
        // answer if none come back before the deadline.
        let mut held_elsewhere: Option<Refusal> = None;
        let mut now_ms = now_ms;
        loop {
            let need = match self.try_take(&mut lock(&self.local), limits, now_ms) {
                Take::Taken(state) => return Ok(state),
                Take::Refused(refusal) => return Err(refusal),
                Take::Wait(need) => need,
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
                Need::Tokens { start, fetched } => {
                    self.stats.round_trips.with_label_values(&["throttle"]).inc();
                    if start {
                        tokio::spawn(self.clone().send_lends());
                    }
                    fetched
                }
                Need::Ask { start, fetched } => {
                    if !waited_for_quota {
                        self.stats.round_trips.with_label_values(&["quota"]).inc();
                        waited_for_quota = true;
                    }
                    if start {
                        tokio::spawn(self.clone().send_leases());
                    }
                    fetched
                }
            };
            if tokio::time::timeout_at(deadline, fetched.changed()).await.is_err() {
                return Err(held_elsewhere.unwrap_or_else(|| Refusal::unavailable(None)));
            }
            // Time passed while waiting (the clock may be a test's, never moving).
            now_ms = now_ms.max(self.clock.now_ms());
        }
    }

    /// One attempt, under the lock: takes from every limit if each has a
    /// unit here; otherwise says what to fetch, or refuses when a limit is
    /// known to be spent. The parts, in order:
    fn try_take(self: &Arc<Self>, local: &mut Local, limits: &Limits, now_ms: i64) -> Take {
        if now_ms - local.last_sweep_ms > SWEEP_EVERY_MS {
            local.last_sweep_ms = now_ms;
            self.forget_idle_buckets(local, now_ms);
        }
        // 0. A quota known to be spent refuses before any token is fetched.
        if let Some(refusal) = Self::quota_known_spent(local, limits, now_ms) {
            return Take::Refused(refusal);
        }
        // 1. Throttles: their tokens, borrowed or this node's share.
        let sources = match self.find_tokens(local, limits, now_ms) {
            Ok(sources) => sources,
            Err(Stop::Wait(Need::Tokens { start, fetched })) => {
                // While the tokens come, so do the quotas' grants (each
                // lease command started is counted in `asking`: one sender
                // per start).
                for q in &limits.quotas {
                    if self.prefetch_quota(local, q, now_ms) {
                        tokio::spawn(self.clone().send_leases());
                    }
                }
                return Take::Wait(Need::Tokens { start, fetched });
            }
            Err(stop) => return stop.into(),
        };
        // 2. Quotas: units of grants this node holds.
        for (i, q) in limits.quotas.iter().enumerate() {
            if let Err(stop) = self.find_quota_unit(local, q, i, now_ms) {
                return stop.into();
            }
        }
        // 3. Every limit has its cost here: take them all.
        self.take_all(local, limits, sources, now_ms)
    }

    /// Takes what the parts before found; the state of every limit after it.
    fn take_all(self: &Arc<Self>, local: &mut Local, limits: &Limits, sources: borrow::Sources, now_ms: i64) -> Take {
        let mut admitted = Admitted::default();
        for _ in 0..self.take_tokens(local, limits, sources, now_ms, &mut admitted.states) {
            tokio::spawn(self.clone().send_lends());
        }
        for q in &limits.quotas {
            if let Some(lease::TakenUnit { state, start_asking }) = self.take_quota_unit(local, q, now_ms) {
                admitted.states.push(state);
                if start_asking {
                    tokio::spawn(self.clone().send_leases());
                }
            }
        }
        Take::Taken(admitted)
    }

    /// Reports and releases in a task of its own, now rather than at the
    /// next tick (a retired lease's units are wanted by its successor).
    fn flush_soon(self: &Arc<Self>) {
        let metering = self.clone();
        tokio::spawn(async move { metering.flush(metering.clock.now_ms(), false).await });
    }

    /// Reports what was used since the last report, and hands back leases
    /// idle for a while (all of them with `release_all`, at shutdown). A
    /// report that fails is sent again, unchanged, next time.
    pub async fn flush(&self, now_ms: i64, release_all: bool) {
        let mut pending = self.pending.lock().await;
        if pending.is_none() {
            let mut usage = Vec::new();
            let published = self.limits_model.get().map(|m| m.load_full());
            let mut local = lock(&self.local);
            self.apply_recalls(&mut local, now_ms);
            self.collect_usage(&mut local, &mut usage, published.as_deref(), now_ms, release_all);
            drop(local);
            if !usage.is_empty() {
                *pending = Some(PendingReport { request_id: rand::random(), usage, at_ms: now_ms });
            }
        }
        let Some(report) = pending.as_ref() else { return };
        match self.authority.report(report.request_id, report.usage.clone(), report.at_ms).await {
            Ok(()) => *pending = None,
            Err(e) => tracing::warn!(error = %e, entries = report.usage.len(), "usage report failed; will retry"),
        }
    }
}

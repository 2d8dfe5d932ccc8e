//! Quota leases: the grants this node holds, admitting from them, and
//! asking the ledger for more.
//!
//! Every grant a node holds is made under its **lease session**: one session
//! per node at a time, renewed with one command for all the keys the node
//! holds (`Command::QuotaLease`), so a quiet key's grant stays without any
//! write of its own. Grants wanted are queued and sent together, one lease
//! command per round trip to the leader, whatever the number of keys.
//!
//! A lease admits from its grant (a decrement under the metering lock), asks
//! for more before the grant runs out (below half of the last), and is
//! retired — handed back under its holder id and replaced by a new holder —
//! when its plan's limits change or its session ends. A key far from its
//! limit gets a standing share ([`STANDING_SHARE_DIVISOR`]), so a quiet key
//! is still admitted from memory; the ledger's grants shrink near the limit,
//! and a quiet node holding units that a busy one needs is recalled.
//! What a lease used is reported by `Metering::flush`.

use std::sync::Arc;

use tokio::sync::watch;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::command::{LeaseAsk, QuotaPeriod, QuotaUsage, MAX_LEASE_ASKS};
use tollgate_proto::metering::holder_node;

use super::authority::{Grant, LeaseAnswer, LeaseRequest, Unavailable};
use super::limits::{LimitAt, Limits, QuotaLimit};
use super::{lock, one_more, Local, Metering, Need, Refusal, Stop, EXHAUSTED_RETRY_MS, FLUSH_EVERY, UNAVAILABLE_MS};
use crate::state::published::Published;

/// A grant is enough for this long at the key's recent rate.
const GRANT_FOR_MS: i64 = 1_000;
/// A key far from its limit is granted at least its quota over this (and at
/// most `max_grant`): its standing share, so a key checked now and then is
/// admitted from memory. Near the limit the ledger grants less.
pub const STANDING_SHARE_DIVISOR: u64 = 1_000;
/// ...and this long, near the end of its quota or when recalled.
const SHORT_IDLE_MS: i64 = FLUSH_EVERY.as_millis() as i64;

/// This node's lease session (see the module docs).
pub(super) struct Session {
    /// Its id: the node id in the high 32 bits, random low bits.
    pub(super) id: u64,
    /// When the ledger ends it (0: not opened yet), ms.
    ends_ms: i64,
    /// Admit from its grants only before this: its end less a margin for
    /// clock skew.
    valid_until_ms: i64,
    /// After a failed renewal, do not try again before this.
    retry_at_ms: i64,
}

impl Session {
    pub(super) fn new(node_id: u64) -> Self {
        Session { id: (node_id << 32) | rand::random::<u32>() as u64, ends_ms: 0, valid_until_ms: 0, retry_at_ms: 0 }
    }
}

/// A quota lease on this node.
pub(super) struct Lease {
    holder: u64,
    /// Units this node may still admit.
    units: u64,
    /// The session its units were granted under (0: none yet).
    session: u64,
    /// Admitted and not yet reported.
    unreported: u64,
    /// When the oldest of those was admitted (meaningful while `unreported > 0`).
    unreported_since_ms: i64,
    /// Listed in `Local::hot`: looked at by every flush.
    hot: bool,
    /// The plan's limits epoch when the lease was made: a later one drops the lease.
    epoch: u64,
    /// Admissions since `window_start_ms`: the key's recent rate on this node.
    admitted: u64,
    window_start_ms: i64,
    last_used_ms: i64,
    /// Checks waiting for the grant in flight.
    waiting: u64,
    /// The most units one waiting request needs (its cost, less the units
    /// here): a grant that leaves fewer spends the quota for it.
    need: u64,
    /// The ledger's number for the grant this lease admits from (and its
    /// unreported use came from); 0 before the first.
    generation: u64,
    /// The last grant's size; the next is asked for below half of it.
    last_grant: u64,
    /// Whether any grant brought units (the ledger may hold some for us).
    granted: bool,
    /// The last grant brought less than asked, or the ledger recalled the
    /// units: the quota is nearly spent, so units are fetched when needed,
    /// never ahead, and handed back soon when unused (a unit fetched ahead
    /// could sit here while another node refuses for lack of it).
    short: bool,
    /// Recalled while unused: handed back at the next flush.
    recalled: bool,
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

/// A quota unit taken from a lease.
pub(super) struct TakenUnit {
    /// The quota's state after it, for the rate-limit headers.
    pub(super) state: LimitState,
    /// Whether a lease command must be started for the grant this unit's
    /// lease now asks for (none is under way).
    pub(super) start_asking: bool,
}

/// A grant waiting for the next lease command.
pub(super) struct Queued {
    limit: QuotaLimit,
    holder: u64,
    want: u64,
}

impl Lease {
    fn new(holder: u64, epoch: u64, now_ms: i64, limit: u64) -> Self {
        Lease {
            holder,
            units: 0,
            session: 0,
            unreported: 0,
            unreported_since_ms: now_ms,
            hot: false,
            epoch,
            admitted: 0,
            window_start_ms: now_ms,
            last_used_ms: now_ms,
            waiting: 0,
            need: 0,
            generation: 0,
            last_grant: 0,
            granted: false,
            short: false,
            recalled: false,
            fetching: false,
            fetched: watch::channel(0).0,
            exhausted_until_ms: 0,
            held_elsewhere: false,
            unavailable_until_ms: 0,
            limit,
            remaining: limit,
        }
    }

    /// Units to ask for: about [`GRANT_FOR_MS`] at the recent rate, at least
    /// enough for the checks waiting now (and for the costliest of them),
    /// and, far from the limit, at least the standing share of `quota_limit`.
    fn want(&mut self, now_ms: i64, max: u64, quota_limit: u64) -> u64 {
        let elapsed = (now_ms - self.window_start_ms).max(100) as u64;
        let rate_based = self.admitted.saturating_mul(GRANT_FOR_MS as u64) / elapsed;
        if elapsed > GRANT_FOR_MS as u64 {
            self.admitted = 0;
            self.window_start_ms = now_ms;
        }
        let standing = if self.short { 0 } else { quota_limit / STANDING_SHARE_DIVISOR };
        let need = self.need.saturating_sub(self.units);
        rate_based.max(self.waiting + 1).max(standing).clamp(1, max).max(need)
    }

    /// The lease's quota as rate-limit headers show it.
    fn state(&self, now_ms: i64, ends_ms: i64) -> LimitState {
        LimitState {
            limit: self.limit,
            remaining: self.remaining,
            reset_secs: ((ends_ms - now_ms).max(0) as u64).div_ceil(1000),
            retry_after_secs: None,
        }
    }
}

impl Metering {
    /// A new holder id: this node's id in the high bits, random low bits.
    pub(super) fn holder(&self) -> u64 {
        (self.authority.node_id() << 32) | rand::random::<u32>() as u64
    }

    /// A quota known to be spent refuses before any throttle token is
    /// fetched: a refusal takes nothing from any limit.
    pub(super) fn quota_known_spent(local: &Local, limits: &Limits, now_ms: i64) -> Option<Refusal> {
        limits.quotas.iter().enumerate().find_map(|(i, q)| {
            let lease = local.leases.get(&q.period)?;
            let spent = lease.epoch >= q.epoch && lease.units < q.cost && !lease.held_elsewhere;
            (spent && now_ms < lease.exhausted_until_ms).then(|| quota_exceeded(lease, now_ms, q.ends_ms, i))
        })
    }

    /// Whether the units `q` costs, of a grant this node holds, are here
    /// (`Ok`), or what to do first: refuse, ask for a grant, wait for one.
    /// `index`: the quota's place in `Limits::quotas`.
    pub(super) fn find_quota_unit(
        self: &Arc<Self>,
        local: &mut Local,
        q: &QuotaLimit,
        index: usize,
        now_ms: i64,
    ) -> Result<(), Stop> {
        let (epoch, at) = (q.epoch, Some(LimitAt::Quota(index)));
        loop {
            let lease = match local.leases.get_mut(&q.period) {
                Some(lease) => lease,
                None => {
                    let holder = self.holder();
                    local.leases.entry(q.period.clone()).or_insert_with(|| Lease::new(holder, epoch, now_ms, q.limit))
                }
            };
            if epoch > lease.epoch {
                // The plan's limits changed: hand this grant back (now, so
                // the new lease can have its units), start a new lease.
                self.retire(lease, &mut local.retired, &q.period, epoch, now_ms, q.limit, "returned");
                self.flush_soon();
                continue;
            }
            if lease.units > 0 && lease.session != local.session.id {
                // Granted under a session that ended: hand back what is left
                // under this holder and go on with a new one, so no unit of
                // the old grant is mixed with a new grant.
                let lease_epoch = lease.epoch;
                self.retire(lease, &mut local.retired, &q.period, lease_epoch, now_ms, q.limit, "expired");
                self.flush_soon();
                continue;
            }
            if lease.units > 0 && now_ms >= local.session.valid_until_ms {
                // The session was not renewed in time: wait for the renewal
                // (with a lease command of its own if none is under way).
                if now_ms < local.session.retry_at_ms {
                    return Err(Stop::Refused(Refusal::unavailable(at)));
                }
                let start = local.asking == 0 && one_more(&mut local.asking);
                return Err(Stop::Wait(Need::Ask { start, fetched: local.leased.subscribe() }));
            }
            if lease.units >= q.cost {
                return Ok(());
            }
            if now_ms < lease.exhausted_until_ms {
                let refusal = quota_exceeded(lease, now_ms, q.ends_ms, index);
                if lease.held_elsewhere {
                    // Not spent: wait for the holders to hand units back.
                    return Err(Stop::Wait(Need::Until { at_ms: lease.exhausted_until_ms, otherwise: refusal }));
                }
                return Err(Stop::Refused(refusal));
            }
            if now_ms < lease.unavailable_until_ms {
                return Err(Stop::Refused(Refusal::unavailable(at)));
            }
            lease.waiting += 1;
            lease.need = lease.need.max(q.cost);
            if lease.fetching {
                return Err(Stop::Wait(Need::Wait(lease.fetched.subscribe())));
            }
            let fetched = lease.fetched.subscribe();
            let start = self.queue_ask(local, q, now_ms);
            return Err(Stop::Wait(Need::Ask { start, fetched }));
        }
    }

    /// Asks for a grant of `q` ahead, while the check waits for something
    /// else (throttle tokens), if its lease has none and none is on its way:
    /// the two round trips then overlap. Whether a lease command must be
    /// started. Takes nothing.
    pub(super) fn prefetch_quota(&self, local: &mut Local, q: &QuotaLimit, now_ms: i64) -> bool {
        let epoch = q.epoch;
        let wanted = match local.leases.get(&q.period) {
            None => true,
            Some(l) => {
                l.epoch >= epoch
                    && l.units < q.cost
                    && !l.fetching
                    && now_ms >= l.exhausted_until_ms
                    && now_ms >= l.unavailable_until_ms
            }
        };
        if !wanted {
            return false;
        }
        if !local.leases.contains_key(&q.period) {
            let lease = Lease::new(self.holder(), epoch, now_ms, q.limit);
            local.leases.insert(q.period.clone(), lease);
        }
        self.queue_ask(local, q, now_ms)
    }

    /// Queues the next grant of `q`'s lease for the next lease command and
    /// marks the lease fetching; whether a lease command must be started
    /// (none is under way to pick the ask up).
    fn queue_ask(&self, local: &mut Local, q: &QuotaLimit, now_ms: i64) -> bool {
        let Some(lease) = local.leases.get_mut(&q.period) else { return false };
        lease.fetching = true;
        lease.need = lease.need.max(q.cost);
        let want = lease.want(now_ms, self.config.max_grant, q.limit);
        local.asks.push(Queued { limit: q.clone(), holder: lease.holder, want });
        one_more(&mut local.asking)
    }

    /// Takes the unit [`Self::find_quota_unit`] found.
    pub(super) fn take_quota_unit(&self, local: &mut Local, q: &QuotaLimit, now_ms: i64) -> Option<TakenUnit> {
        let lease = local.leases.get_mut(&q.period)?;
        lease.units = lease.units.saturating_sub(q.cost);
        if lease.unreported == 0 {
            lease.unreported_since_ms = now_ms;
        }
        lease.unreported = lease.unreported.saturating_add(q.cost);
        if !lease.hot {
            lease.hot = true;
            local.hot.push(q.period.clone());
        }
        lease.admitted = lease.admitted.saturating_add(q.cost);
        lease.last_used_ms = now_ms;
        lease.recalled = false;
        lease.remaining = lease.remaining.saturating_sub(q.cost);
        let state = lease.state(now_ms, q.ends_ms);
        // Ask for the next grant before this one runs out; near the end of
        // the quota (`short`), only when it has run out.
        let low = lease.units <= lease.last_grant / 2 && !lease.short;
        let mut start_asking = false;
        if low && !lease.fetching && now_ms >= lease.unavailable_until_ms {
            start_asking = self.queue_ask(local, q, now_ms);
        }
        Some(TakenUnit { state, start_asking })
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
        // Checks waiting for the old lease's fetch look again.
        old.fetched.send_modify(|n| *n += 1);
    }

    /// Whether the session should be renewed now: some lease holds units
    /// under it and half of the lease time is gone.
    pub(super) fn renewal_due(&self, local: &Local, now_ms: i64) -> bool {
        let half = self.config.lease_ms / 2;
        now_ms >= local.session.retry_at_ms
            && now_ms >= local.session.ends_ms.saturating_sub(half)
            && local.leases.values().any(|l| l.units > 0 && l.session == local.session.id)
    }

    /// Starts a lease command if the session is due for renewal and none is
    /// under way (every [`FLUSH_EVERY`]).
    pub(super) fn renew_if_due(self: &Arc<Self>, now_ms: i64) {
        let start = {
            let mut local = lock(&self.local);
            self.renewal_due(&local, now_ms) && local.asking == 0 && one_more(&mut local.asking)
        };
        if start {
            tokio::spawn(self.clone().send_leases());
        }
    }

    /// Sends lease commands — the queued asks, at most
    /// [`MAX_LEASE_ASKS`] at a time, and the session's renewal — until
    /// nothing is queued or due; a few run at once (`Local::asking`), and
    /// asks queued while they are on their way go with the next.
    pub(super) async fn send_leases(self: Arc<Self>) {
        loop {
            let (request, queued) = {
                let mut local = lock(&self.local);
                let now_ms = self.clock.now_ms();
                // One sender renews; the others only carry asks.
                let renew = local.asking == 1 && self.renewal_due(&local, now_ms);
                if local.asks.is_empty() && !renew {
                    local.asking -= 1;
                    return;
                }
                let n = local.asks.len().min(MAX_LEASE_ASKS);
                let queued: Vec<Queued> = local.asks.drain(..n).collect();
                let asks = queued
                    .iter()
                    .map(|a| LeaseAsk { period: a.limit.period.clone(), holder: a.holder, want: a.want })
                    .collect();
                let until_ms = now_ms.saturating_add(self.config.lease_ms);
                (LeaseRequest { session: local.session.id, until_ms, asks, now_ms }, queued)
            };
            let session = request.session;
            let asked_ms = request.now_ms;
            let answer = self.authority.lease(request).await;
            let now_ms = self.clock.now_ms().max(asked_ms);
            let mut local = lock(&self.local);
            let local = &mut *local;
            match answer {
                Ok(LeaseAnswer::Renewed { until_ms, grants }) => {
                    if session == local.session.id {
                        // Stop a little before the ledger does: clocks differ.
                        let margin = (self.config.lease_ms / 10).min(1_000);
                        local.session.ends_ms = until_ms;
                        local.session.valid_until_ms = until_ms - margin;
                    }
                    let mut grants = grants.into_iter();
                    for q in queued {
                        let answer = grants.next().unwrap_or_else(|| Err(Unavailable("no answer to an ask".into())));
                        self.record_grant(local, q, session, answer, now_ms);
                    }
                }
                Ok(LeaseAnswer::Ended) => {
                    // The ledger ended the session (this node was cut off
                    // for longer than a lease): open a new one and retire
                    // every lease of the old one; the asks it carried are
                    // made again by the checks that wait for them.
                    tracing::warn!(session, "quota lease session ended; opening a new one");
                    if session == local.session.id {
                        local.session = Session::new(self.authority.node_id());
                        // No holder crosses sessions: every lease starts
                        // again under a new holder (the old ones' use is
                        // reported with their release).
                        for (period, lease) in local.leases.iter_mut() {
                            let (epoch, limit) = (lease.epoch, lease.limit);
                            self.retire(lease, &mut local.retired, period, epoch, now_ms, limit, "expired");
                        }
                    }
                    drop(queued);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "quota lease failed; deciding from held grants only");
                    local.session.retry_at_ms = now_ms + UNAVAILABLE_MS;
                    for q in queued {
                        self.record_grant(local, q, session, Err(e.clone()), now_ms);
                    }
                }
            }
            local.leased.send_modify(|n| *n += 1);
        }
    }

    /// Records the ledger's answer to one ask; wakes the checks waiting for it.
    fn record_grant(
        &self,
        local: &mut Local,
        q: Queued,
        session: u64,
        answer: Result<Grant, Unavailable>,
        now_ms: i64,
    ) {
        let Queued { limit: QuotaLimit { period, limit: quota_limit, ends_ms, .. }, holder, want } = q;
        let Some(lease) = local.leases.get_mut(&period).filter(|l| l.holder == holder) else {
            // The lease was dropped meanwhile: hand back what came (or may
            // have: a grant that timed out here may still have been made).
            match answer {
                Ok(Grant { units: 0, .. }) => {}
                Ok(Grant { units, ledger }) => {
                    self.stats.units.with_label_values(&["returned"]).inc_by(units);
                    let generation = ledger.grants.get(&holder).map_or(0, |g| g.generation);
                    local.retired.push(QuotaUsage { period, holder, generation, used: 0, release: true });
                }
                Err(_) => local.retired.push(QuotaUsage { period, holder, generation: 0, release: true, used: 0 }),
            }
            return;
        };
        match answer {
            Ok(Grant { units: granted, ledger }) => {
                let limit = ledger.limit(quota_limit);
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
                if granted > 0 {
                    lease.session = session;
                }
                lease.units += granted;
                // What this node can promise: its own units and the ledger's
                // free ones. Units other nodes hold may be spent already, so
                // they are not counted (RateLimit-Remaining never says more
                // than is left).
                lease.remaining = ledger.available(quota_limit).saturating_add(lease.units);
                lease.last_grant = granted;
                lease.granted |= granted > 0;
                if want > 0 {
                    lease.short = granted < want;
                }
                if lease.short && !lease.hot {
                    // Watched by every flush: handed back soon once unused.
                    lease.hot = true;
                    local.hot.push(period.clone());
                }
                let result = if granted > 0 { "granted" } else { "empty" };
                self.stats.grants.with_label_values(&[result]).inc();
                self.stats.units.with_label_values(&["granted"]).inc_by(granted);
                // Grants near the limit are small (a quarter of what is
                // left): a costly request may need a few, and the quota is
                // spent for it only when the ledger has none left.
                let spent = granted == 0 || ledger.available(quota_limit) == 0;
                if lease.units < lease.need.max(1) && spent {
                    // Spent (for the costliest request waiting: cheaper ones
                    // still take what is here). Others may still hand units
                    // back; if none hold any, nothing changes before the
                    // period ends or a limit changes (which starts a new lease).
                    let others = ledger.grants.iter().any(|(h, g)| *h != holder && g.units > 0);
                    lease.held_elsewhere = others;
                    lease.exhausted_until_ms = if others { now_ms + EXHAUSTED_RETRY_MS } else { ends_ms };
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "quota grant failed");
                self.stats.grants.with_label_values(&["unavailable"]).inc();
                lease.unavailable_until_ms = now_ms + UNAVAILABLE_MS;
                // The grant may have been made all the same (the answer was
                // lost): make sure this holder's release is sent.
                lease.granted = true;
            }
        }
        lease.fetching = false;
        lease.waiting = 0;
        lease.need = 0;
        lease.fetched.send_modify(|n| *n += 1);
    }

    /// Marks the leases the ledger recalled (their units are wanted by
    /// another node): handed back at this flush if unused since the last
    /// one, else made short (handed back soon after their use stops).
    pub(super) fn apply_recalls(&self, local: &mut Local, now_ms: i64) {
        let (next, recalls) = self.authority.recalls(local.recall_seq);
        local.recall_seq = next;
        let me = self.authority.node_id();
        for (holder, period) in recalls.into_iter().filter(|(h, _)| holder_node(*h) == me) {
            if let Some(lease) = local.leases.get_mut(&period).filter(|l| l.holder == holder) {
                lease.short = true;
                lease.recalled = now_ms - lease.last_used_ms >= SHORT_IDLE_MS;
                if !lease.hot {
                    lease.hot = true;
                    local.hot.push(period.clone());
                }
            }
        }
    }

    /// Moves into `usage` what leases used since the last report, and drops
    /// (with a release) leases idle for a while, made stale by a limit change
    /// in `published`, or all of them with `release_all`.
    ///
    /// Only the leases in `Local::hot` (used since their last report, near
    /// the end of their quota, or recalled) are looked at by every flush:
    /// with a million keys held, walking them all every 200 ms would hold
    /// the lock checks take for milliseconds. The others are walked every
    /// [`Metering::scan_every_ms`], and at once when a plan's limits move.
    ///
    /// Usage near the limit (a short or recalled lease) is reported at once.
    /// Far from it, the ledger's count needs no hurry (the grant already
    /// holds the units: invariant Q does not wait for reports), so at most
    /// [`REPORTS_PER_FLUSH`] such leases report per flush, the longest
    /// waiting first, and none waits more than [`REPORT_WITHIN_MS`]: with
    /// traffic spread over many keys every check would otherwise be a ledger
    /// write on every node.
    pub(super) fn collect_usage(
        &self,
        local: &mut Local,
        usage: &mut Vec<QuotaUsage>,
        published: Option<&Published>,
        now_ms: i64,
        release_all: bool,
    ) {
        usage.append(&mut local.retired);
        let limits_moved = published.is_some_and(|p| p.limits.last() != local.scanned_limits);
        if release_all || limits_moved || now_ms >= local.next_scan_ms {
            local.next_scan_ms = now_ms.saturating_add(self.scan_every_ms());
            if let Some(p) = published {
                local.scanned_limits = p.limits.last();
            }
            let session = local.session.id;
            local.leases.retain(|period, lease| {
                let release = release_all || self.releases(lease, period, session, published, now_ms);
                if release {
                    self.release(lease, period, usage);
                }
                !release
            });
        }
        let session = local.session.id;
        let mut deferred: Vec<(i64, QuotaPeriod)> = Vec::new();
        let mut reported = 0;
        for period in std::mem::take(&mut local.hot) {
            let Some(lease) = local.leases.get_mut(&period) else { continue };
            if !lease.hot {
                // Listed twice (retired and listed again): looked at once.
                continue;
            }
            lease.hot = false;
            if self.releases(lease, &period, session, published, now_ms) {
                self.release(lease, &period, usage);
                local.leases.remove(&period);
                continue;
            }
            let near = lease.short || lease.recalled;
            if lease.unreported > 0 {
                if near || now_ms - lease.unreported_since_ms >= REPORT_WITHIN_MS {
                    usage.push(report(lease, &period, false));
                    reported += 1;
                } else {
                    deferred.push((lease.unreported_since_ms, period));
                    continue;
                }
            }
            if near {
                // Watched until handed back.
                lease.hot = true;
                local.hot.push(period);
            }
        }
        let budget = REPORTS_PER_FLUSH.saturating_sub(reported);
        if deferred.len() > budget && budget > 0 {
            deferred.select_nth_unstable_by_key(budget - 1, |(since, _)| *since);
        }
        for (i, (_, period)) in deferred.into_iter().enumerate() {
            let Some(lease) = local.leases.get_mut(&period) else { continue };
            if i < budget {
                usage.push(report(lease, &period, false));
            } else {
                lease.hot = true;
                local.hot.push(period);
            }
        }
    }

    /// How often every lease is looked at (for idle ones to hand back): a
    /// quarter of the quiet time, within [`FLUSH_EVERY`] and 30 s.
    pub(super) fn scan_every_ms(&self) -> i64 {
        (self.config.quiet_ms / 4).clamp(FLUSH_EVERY.as_millis() as i64, 30_000)
    }

    /// Whether `lease` is handed back now: idle for a while (a short while
    /// near the end of its quota, or recalled), granted under a session
    /// that ended, or made stale by a change of its plan's limits.
    fn releases(
        &self,
        lease: &Lease,
        period: &QuotaPeriod,
        session: u64,
        published: Option<&Published>,
        now_ms: i64,
    ) -> bool {
        // Granted under a session that ended: those units are gone.
        let ended = lease.units > 0 && lease.session != session;
        // Near the end of a quota (the last grant came short) other
        // nodes may be waiting for the units this one holds.
        let idle_after = if lease.short { SHORT_IDLE_MS } else { self.config.quiet_ms };
        let quiet = lease.waiting == 0 && !lease.fetching;
        let idle = quiet && (lease.recalled || now_ms - lease.last_used_ms >= idle_after);
        let stale = !lease.fetching && published.is_some_and(|p| p.limits.of(&period.plan_id) > lease.epoch);
        idle || stale || ended
    }

    /// Queues `lease`'s closing report (what it used, and the release of
    /// the rest) if the ledger may hold anything for it.
    fn release(&self, lease: &mut Lease, period: &QuotaPeriod, usage: &mut Vec<QuotaUsage>) {
        if lease.unreported > 0 || lease.granted {
            usage.push(report(lease, period, true));
        }
        self.stats.units.with_label_values(&["returned"]).inc_by(lease.units);
    }
}

/// `lease`'s use since its last report (now reported), with `release`.
fn report(lease: &mut Lease, period: &QuotaPeriod, release: bool) -> QuotaUsage {
    let used = std::mem::take(&mut lease.unreported);
    QuotaUsage { period: period.clone(), holder: lease.holder, generation: lease.generation, used, release }
}

/// Far from their limit, at most this many leases report their use per
/// flush (1,280 a second)...
pub(super) const REPORTS_PER_FLUSH: usize = 256;
/// ...and none waits longer than this to report, in ms.
pub(super) const REPORT_WITHIN_MS: i64 = 30_000;

/// The refusal of a spent quota: `Retry-After` when units may come back
/// (other holders hand back what they do not use: soon), else the period's
/// end, when the count starts again.
fn quota_exceeded(lease: &Lease, now_ms: i64, ends_ms: i64, index: usize) -> Refusal {
    let reset = ((ends_ms - now_ms).max(0) as u64).div_ceil(1000).max(1);
    let retry = if lease.held_elsewhere { 1 } else { reset };
    let state = LimitState { limit: lease.limit, remaining: 0, reset_secs: reset, retry_after_secs: Some(retry) };
    Refusal { reason: ReasonCode::QuotaExceeded, state, at: Some(LimitAt::Quota(index)) }
}

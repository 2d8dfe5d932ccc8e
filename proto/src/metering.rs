//! The replicated quota ledger: what makes quotas exact across the cluster.
//!
//! Per key, plan and period the ledger holds what was `consumed` (reported by
//! nodes, or counted when a grant expired) and the `grants` nodes hold now.
//! A node admits requests only from a grant it holds, so the invariant
//!
//! > consumed + sum(grants) <= limit
//!
//! (limit: the plan's quota plus operator adjustments) bounds what can ever be
//! admitted. [`QuotaLedger::grant`] refuses to break it, by construction: it
//! grants at most what is left. Every method is deterministic: time comes from
//! the command, never from a clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds in a UTC day: usage is also kept per day.
pub const DAY_MS: i64 = 86_400_000;

/// Units a lease holder has, until when (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Units (requests) the holder may still admit from this grant.
    pub units: u64,
    /// When the grant lapses unless renewed, in ms since the Unix epoch (the
    /// time of the command that granted it plus the lease): then its units
    /// count as consumed.
    pub expires_at_ms: i64,
    /// Which grant this is, for its holder: a new number each time the
    /// ledger opens a grant (renewals keep it). A report names the grant its
    /// use came from, so use held back while that grant expired (and was
    /// counted whole) is never charged again to the holder's next grant.
    pub generation: u64,
    /// The lease session the grant was made under (0: none). While the
    /// session is known, the grant lapses when the session does, whatever
    /// `expires_at_ms` says: one renewal of the session keeps every grant of
    /// its node, however many keys it holds (see [`Sessions`]).
    pub session: u64,
}

impl Grant {
    /// When the grant lapses: its session's end while the session is
    /// known, else its own `expires_at_ms`.
    pub fn ends_ms(&self, sessions: &dyn Sessions) -> i64 {
        match self.session {
            0 => self.expires_at_ms,
            s => sessions.session_ends_ms(s).unwrap_or(self.expires_at_ms),
        }
    }
}

/// Lease sessions: a node process holds one at a time, renews it in one
/// command, and every grant made under it lives as long as it does. A
/// session that ended is never renewed again ([`renew_session`]): its
/// grants were counted whole as they lapsed, and its node starts a new one.
pub trait Sessions {
    /// When `session` ends (ms since the epoch), if it is known.
    fn session_ends_ms(&self, session: u64) -> Option<i64>;
}

/// No sessions at all: every grant lapses at its own `expires_at_ms`.
pub struct NoSessions;

impl Sessions for NoSessions {
    fn session_ends_ms(&self, _: u64) -> Option<i64> {
        None
    }
}

impl<S: std::hash::BuildHasher> Sessions for std::collections::HashMap<u64, i64, S> {
    fn session_ends_ms(&self, session: u64) -> Option<i64> {
        self.get(&session).copied()
    }
}

impl Sessions for BTreeMap<u64, i64> {
    fn session_ends_ms(&self, session: u64) -> Option<i64> {
        self.get(&session).copied()
    }
}

/// The end of a session after a renewal to `until_ms` at `now_ms`, from its
/// end before (`None`: a session never seen, opened now). Deterministic.
///
/// # Errors
/// The session ended at or before `now_ms` (its grants may have been counted
/// whole since: the holder must open a new session), or `until_ms` is not
/// after `now_ms`.
pub fn renew_session(ends_ms: Option<i64>, until_ms: i64, now_ms: i64) -> Result<i64, String> {
    if until_ms <= now_ms {
        return Err(format!("until_ms {until_ms} is not after now_ms {now_ms}"));
    }
    match ends_ms {
        None => Ok(until_ms),
        Some(end) if end > now_ms => Ok(end.max(until_ms)),
        Some(end) => Err(format!("the session ended at {end} ms; open a new one")),
    }
}

/// What a holder asks the ledger for: up to `want` more units, under its
/// node's `session` (0: none), held until `lease_until_ms` (the session's
/// end, or the grant's own without a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantAsk {
    /// The lease holder asking ([`holder_node`]).
    pub holder: u64,
    /// Its node's lease session, or 0.
    pub session: u64,
    /// Units wanted (0: only extend the lease).
    pub want: u64,
    /// When the grant lapses unless renewed, ms since the epoch.
    pub lease_until_ms: i64,
}

/// A lease holder: one node process. The node id is in the high 32 bits (so
/// usage can say which node holds what), a number drawn at process start in
/// the low ones, so a restarted node never inherits the grant of the process
/// it replaces: that grant may have been used, and is counted when it expires.
pub fn holder_node(holder: u64) -> u64 {
    holder >> 32
}

/// What one key has used and what nodes hold, for one usage plan and one
/// quota period: the replicated record that keeps the quota exact (see the
/// module docs for the invariant it keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLedger {
    /// Units used: reported by holders, or held by a grant that expired.
    pub consumed: u64,
    /// Operator adjustments to the limit for this period (UpdateUsage).
    pub adjustment: i64,
    /// Outstanding grants by holder.
    pub grants: BTreeMap<u64, Grant>,
    /// `consumed` split by UTC day (days since the epoch): when it was
    /// reported, or when the grant it came from expired.
    pub daily: BTreeMap<i64, u64>,
    /// Grants opened so far (the last [`Grant::generation`] given).
    pub generations: u64,
    /// Grants that expired with units unreported, oldest first (at most
    /// [`MAX_EXPIRED_KEPT`]): their holder may have been cut off, not dead,
    /// and its closing report turns the whole-grant charge back into use.
    pub expired: Vec<ExpiredGrant>,
}

/// A grant that expired with `charged` units unreported, all counted as
/// consumed then. Its holder's reports of it arrive later if the holder was
/// only cut off (or its clock ran late); the closing one (`release`) hands
/// back what it did not use, so usage after a partition is exact. A holder
/// that died never reports: its grant stays counted whole (invariant U).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredGrant {
    /// The lease holder it was granted to (see [`holder_node`]).
    pub holder: u64,
    /// Which of that holder's grants it was ([`Grant::generation`]).
    pub generation: u64,
    /// Units counted as consumed at expiry.
    pub charged: u64,
    /// Of those, the use its holder has reported since (at most `charged`).
    pub reported: u64,
    /// When it expired (ms since the epoch): the day its units count in.
    pub expired_at_ms: i64,
}

/// Expired grants a ledger remembers for late reports; beyond this the
/// oldest is forgotten and stays counted whole (as a crashed holder's).
pub const MAX_EXPIRED_KEPT: usize = 8;

impl QuotaLedger {
    /// Units granted to holders and not yet reported or expired: the sum of
    /// every grant (saturating at `u64::MAX`).
    pub fn outstanding(&self) -> u64 {
        self.grants.values().fold(0u64, |sum, g| sum.saturating_add(g.units))
    }

    /// The period's limit with adjustments (never below zero).
    pub fn limit(&self, plan_limit: u64) -> u64 {
        (plan_limit as i128 + self.adjustment as i128).clamp(0, u64::MAX as i128) as u64
    }

    /// Units that may still be granted.
    pub fn available(&self, plan_limit: u64) -> u64 {
        self.limit(plan_limit).saturating_sub(self.consumed.saturating_add(self.outstanding()))
    }

    /// What the key may still use this period, if every grant held now is
    /// used or handed back: the limit less what is consumed.
    pub fn remaining(&self, plan_limit: u64) -> u64 {
        self.limit(plan_limit).saturating_sub(self.consumed)
    }

    fn consume(&mut self, units: u64, at_ms: i64) {
        if units > 0 {
            self.consumed = self.consumed.saturating_add(units);
            let day = self.daily.entry(at_ms.div_euclid(DAY_MS)).or_insert(0);
            *day = day.saturating_add(units);
        }
    }

    /// Takes back `units` counted on the day of `at_ms` (a closing report of
    /// an expired grant: units it was charged for and did not use).
    fn unconsume(&mut self, units: u64, at_ms: i64) {
        self.consumed = self.consumed.saturating_sub(units);
        let day = at_ms.div_euclid(DAY_MS);
        if let Some(n) = self.daily.get_mut(&day) {
            *n = n.saturating_sub(units);
            if *n == 0 {
                self.daily.remove(&day);
            }
        }
    }

    /// Grants that ran out count as consumed: a holder that stopped reporting
    /// may have used them all (over-count at most one lease, never
    /// under-count), until its closing report says what it did use.
    pub fn expire(&mut self, now_ms: i64, sessions: &dyn Sessions) {
        while let Some((&holder, &g)) = self.grants.iter().find(|(_, g)| g.ends_ms(sessions) <= now_ms) {
            let ended_ms = g.ends_ms(sessions);
            self.grants.remove(&holder);
            self.consume(g.units, ended_ms);
            if g.units > 0 {
                if self.expired.len() >= MAX_EXPIRED_KEPT {
                    self.expired.remove(0);
                }
                self.expired.push(ExpiredGrant {
                    holder,
                    generation: g.generation,
                    charged: g.units,
                    reported: 0,
                    expired_at_ms: ended_ms,
                });
            }
        }
    }

    /// Gives `ask.holder` up to `ask.want` more units and extends its lease
    /// to `ask.lease_until_ms`. Returns the units granted now (0 when nothing
    /// is left) and the holder's whole grant afterwards: it may admit from it
    /// only until that grant's [`Grant::ends_ms`].
    ///
    /// Near the limit grants shrink: no grant takes more than a quarter of
    /// what is left (at least one unit), so the last units go out one by one
    /// to whichever node asks, instead of sitting with one of them.
    pub fn grant(
        &mut self,
        plan_limit: u64,
        ask: GrantAsk,
        now_ms: i64,
        sessions: &dyn Sessions,
    ) -> (u64, Option<Grant>) {
        let GrantAsk { holder, session, want, lease_until_ms } = ask;
        self.expire(now_ms, sessions);
        let available = self.available(plan_limit);
        let units = want.min(available.div_ceil(4)).min(available);
        if units > 0 {
            let next = self.generations.saturating_add(1);
            let g = self.grants.entry(holder).or_insert(Grant {
                units: 0,
                expires_at_ms: lease_until_ms,
                generation: next,
                session,
            });
            if g.generation == next {
                self.generations = next;
            }
            g.units = g.units.saturating_add(units);
        }
        if let Some(g) = self.grants.get_mut(&holder) {
            g.expires_at_ms = g.expires_at_ms.max(lease_until_ms);
        }
        (units, self.grants.get(&holder).copied())
    }

    /// `holder` used `used` units of its grant `generation`; with `release`,
    /// it hands the rest back and will admit no more from that grant. Only
    /// what the ledger still holds for that very grant is moved to consumed.
    /// A grant that expired was counted whole when it expired: reports of it
    /// are added up, and its closing report (`release`) takes back the units
    /// charged and never used, so nothing is charged twice and a holder that
    /// was only cut off leaves usage exact. A report for any other grant
    /// changes nothing, and no release touches the holder's newer grant.
    /// Generation 0 stands for the current one.
    pub fn report(
        &mut self,
        holder: u64,
        generation: u64,
        used: u64,
        release: bool,
        now_ms: i64,
        sessions: &dyn Sessions,
    ) {
        let current = self.grants.get(&holder).is_some_and(|g| generation == 0 || g.generation == generation);
        if !current {
            let late =
                self.expired.iter().position(|e| generation != 0 && e.holder == holder && e.generation == generation);
            if let Some(i) = late {
                let e = &mut self.expired[i];
                e.reported = e.reported.saturating_add(used).min(e.charged);
                if release {
                    let e = self.expired.remove(i);
                    self.unconsume(e.charged - e.reported, e.expired_at_ms);
                }
            }
            self.expire(now_ms, sessions);
            return;
        }
        let held = self.grants.get(&holder).map(|g| g.units).unwrap_or(0);
        let from_grant = used.min(held);
        self.consume(from_grant, now_ms);
        if let Some(g) = self.grants.get_mut(&holder) {
            g.units -= from_grant;
            if release || g.units == 0 {
                self.grants.remove(&holder);
            }
        }
        self.expire(now_ms, sessions);
    }

    /// An operator adjustment (UpdateUsage): the key may use `delta` units
    /// more this period (negative: fewer), counted from what it may still use
    /// now. Taking away more than is left leaves nothing: the limit falls to
    /// what is consumed, never below, so a later `+N` gives exactly `N` units
    /// again. (An adjustment that could push the limit below zero once pinned
    /// a key at zero for good.)
    ///
    /// Refused, with nothing changed, when `delta` is 0 or beyond
    /// [`MAX_ADJUST_DELTA`] either way, or when the limit would pass
    /// [`MAX_SAFE_INTEGER`](crate::validate::MAX_SAFE_INTEGER). All the
    /// arithmetic is checked; the result depends only on the arguments.
    pub fn adjust(&mut self, plan_limit: u64, delta: i64) -> Result<(), String> {
        if delta == 0 || delta.unsigned_abs() > MAX_ADJUST_DELTA.unsigned_abs() {
            return Err(format!("must be a non-zero whole number of at most {MAX_ADJUST_DELTA} either way"));
        }
        let limit = i128::from(plan_limit) + i128::from(self.adjustment);
        let consumed = i128::from(self.consumed);
        let delta = i128::from(delta);
        let adjusted = if delta < 0 { (limit + delta).max(limit.min(consumed)) } else { limit.max(consumed) + delta };
        let max = i128::from(crate::validate::MAX_SAFE_INTEGER);
        if adjusted > max {
            return Err(format!("the period's limit would pass {max} (2^53 - 1)"));
        }
        self.adjustment = i64::try_from(adjusted - i128::from(plan_limit))
            .map_err(|_| "the adjusted limit is out of range for this plan's quota".to_string())?;
        Ok(())
    }
}

/// The largest adjustment one UpdateUsage may make, either way.
pub const MAX_ADJUST_DELTA: i64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// An ask without a session.
    fn ask(holder: u64, want: u64, lease_until_ms: i64) -> GrantAsk {
        GrantAsk { holder, session: 0, want, lease_until_ms }
    }

    /// A small deterministic generator: the same histories on every run.
    fn generator(seed: u64) -> impl FnMut(u64) -> u64 {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        move |bound: u64| rng.gen_range(0..bound.max(1))
    }

    /// Random histories of grants, admissions, batched reports, releases and
    /// expiries, with node clocks running up to `skew` ms late (so a node may
    /// admit from a grant the ledger has already expired). Checked at every
    /// step: nothing admitted beyond what the ledger counts or holds (Q); and
    /// at the end, once every node has reported: usage never under-counted.
    fn histories(skew: u64, seed: u64) {
        let mut next = generator(seed);
        for _history in 0..500 {
            let limit = 1 + next(200);
            let mut ledger = QuotaLedger::default();
            // Per node: units it may admit from, until when (its own view),
            // and admitted units not yet reported.
            let mut held: BTreeMap<u64, (u64, i64, u64)> = BTreeMap::new();
            let mut admitted = 0u64;
            let mut now = 1_000i64;
            for _step in 0..200 {
                now += next(5) as i64;
                let node = next(3);
                let late = next(skew + 1) as i64;
                let h = held.entry(node).or_insert((0, now, 0));
                if now - late >= h.1 {
                    h.0 = 0; // the node's lease ran out (by its own clock)
                }
                match next(5) {
                    0 | 1 => {
                        let (got, whole) = ledger.grant(limit, ask(node, 1 + next(20), now + 10), now, &NoSessions);
                        h.0 += got;
                        // The lease end is the ledger's, not the one asked for.
                        h.1 = whole.map(|g| g.expires_at_ms).unwrap_or(now);
                    }
                    2 => {
                        let used = next(h.0 + 1);
                        h.0 -= used;
                        h.2 += used;
                        admitted += used;
                    }
                    3 => {
                        let release = next(2) == 0;
                        ledger.report(node, 0, h.2, release, now, &NoSessions);
                        h.2 = 0;
                        if release {
                            h.0 = 0;
                        }
                    }
                    _ => ledger.expire(now, &NoSessions),
                }
                let total = ledger.consumed + ledger.outstanding();
                assert!(total <= limit, "invariant Q broken: {ledger:?} limit {limit}");
                assert!(admitted <= total, "admitted {admitted} beyond what the ledger knows: {ledger:?}");
            }
            for (node, h) in held.iter_mut() {
                ledger.report(*node, 0, h.2, true, now, &NoSessions);
            }
            assert!(admitted <= ledger.consumed, "usage under-counted: admitted {admitted}, ledger {ledger:?}");
            assert_eq!(ledger.outstanding(), 0);
            assert_eq!(ledger.daily.values().sum::<u64>(), ledger.consumed, "days add up to the period");
        }
    }

    #[test]
    fn no_history_admits_past_the_limit_or_under_counts() {
        histories(0, 0x9e37_79b9_7f4a_7c15);
    }

    #[test]
    fn clock_skew_costs_exactness_of_usage_never_the_limit() {
        histories(8, 0x2545_f491_4f6c_dd1d);
    }

    /// One node in [`session_histories`]: its session, the holder of its
    /// one lease, what it may admit and until when (by its own clock), and
    /// what it admitted and has not reported.
    struct SessionNode {
        session: u64,
        holder: u64,
        units: u64,
        valid_until: i64,
        unreported: u64,
        /// The grant its units came from.
        generation: u64,
    }

    impl SessionNode {
        /// Node `n`'s `drawn`-th session, with a holder of the same number.
        fn new(n: u64, drawn: u64) -> Self {
            let id = n << 32 | drawn;
            SessionNode { session: id, holder: id, units: 0, valid_until: 0, unreported: 0, generation: 0 }
        }
    }

    /// Random histories of grants under lease sessions: sessions renewed
    /// (with or without asks), lapsing while a node is quiet or cut off,
    /// refused once ended (the node then opens a new session with a new
    /// holder and closes the old holder's grant with a late report), and
    /// node clocks up to `skew` ms late. Checked at every step: Q (nothing
    /// admitted beyond what the ledger counts or holds, and the ledger within
    /// the limit); at the end, once every node has reported: usage never
    /// under-counted, and exact when no clock ran late.
    fn session_histories(skew: u64, seed: u64) {
        let mut next = generator(seed);
        for _history in 0..400 {
            let limit = 1 + next(300);
            let mut ledger = QuotaLedger::default();
            let mut sessions: BTreeMap<u64, i64> = BTreeMap::new();
            let mut drawn = 3u64;
            let mut nodes: Vec<SessionNode> = (1..=3u64).map(|n| SessionNode::new(n, n)).collect();
            let mut admitted = 0u64;
            let mut now = 1_000i64;
            for _step in 0..250 {
                now += next(6) as i64;
                let i = next(3) as usize;
                let late = next(skew + 1) as i64;
                let node = &mut nodes[i];
                if now - late >= node.valid_until {
                    node.units = 0; // the session ran out, by the node's own clock
                }
                match next(6) {
                    0..=2 => {
                        let want = if next(2) == 0 { 0 } else { 1 + next(40) };
                        match renew_session(sessions.get(&node.session).copied(), now + 15, now) {
                            Err(_) => {
                                // Ended: close the old holder's grant, open anew.
                                ledger.report(node.holder, node.generation, node.unreported, true, now, &sessions);
                                drawn += 1;
                                *node = SessionNode::new(holder_node(node.holder), drawn);
                            }
                            Ok(ends) => {
                                sessions.insert(node.session, ends);
                                let ask =
                                    GrantAsk { holder: node.holder, session: node.session, want, lease_until_ms: ends };
                                let (got, whole) = ledger.grant(limit, ask, now, &sessions);
                                if let Some(g) = whole {
                                    if node.generation != 0 && g.generation != node.generation {
                                        // The old grant lapsed at the ledger: close it.
                                        let old = node.generation;
                                        ledger.report(node.holder, old, node.unreported, true, now, &sessions);
                                        node.units = 0;
                                        node.unreported = 0;
                                    }
                                    node.generation = g.generation;
                                }
                                node.units += got;
                                node.valid_until = ends - 1;
                            }
                        }
                    }
                    3 => {
                        let used = next(node.units + 1);
                        node.units -= used;
                        node.unreported += used;
                        admitted += used;
                    }
                    4 => {
                        let release = next(3) == 0;
                        ledger.report(node.holder, node.generation, node.unreported, release, now, &sessions);
                        node.unreported = 0;
                        if release {
                            node.units = 0;
                            node.generation = 0;
                        }
                    }
                    _ => ledger.expire(now, &sessions),
                }
                let total = ledger.consumed + ledger.outstanding();
                assert!(total <= limit, "invariant Q broken: {ledger:?} limit {limit}");
                assert!(admitted <= total, "admitted {admitted} beyond what the ledger knows: {ledger:?}");
            }
            for node in &nodes {
                ledger.report(node.holder, node.generation, node.unreported, true, now, &sessions);
            }
            assert!(admitted <= ledger.consumed, "usage under-counted: admitted {admitted}, ledger {ledger:?}");
            if skew == 0 {
                assert_eq!(admitted, ledger.consumed, "usage exact without crashes or late clocks: {ledger:?}");
            }
            assert_eq!(ledger.outstanding(), 0);
            assert_eq!(ledger.daily.values().sum::<u64>(), ledger.consumed, "days add up to the period");
        }
    }

    #[test]
    fn grants_under_sessions_never_admit_past_the_limit_and_count_exactly() {
        session_histories(0, 0x5eed_0001);
    }

    #[test]
    fn grants_under_sessions_with_late_clocks_never_admit_past_the_limit() {
        session_histories(10, 0x5eed_0002);
    }

    #[test]
    fn a_session_that_ended_is_never_renewed_and_its_grants_lapse_with_it() {
        assert_eq!(renew_session(None, 100, 50), Ok(100), "opened");
        assert_eq!(renew_session(Some(100), 120, 60), Ok(120), "renewed");
        assert_eq!(renew_session(Some(100), 90, 60), Ok(100), "never shortened");
        assert!(renew_session(Some(100), 200, 100).is_err(), "ended at 100");
        assert!(renew_session(None, 50, 50).is_err(), "an end not after now");
        let sessions: BTreeMap<u64, i64> = [(7, 1_000)].into();
        let mut l = QuotaLedger::default();
        let under = |want| GrantAsk { holder: 1, session: 7, want, lease_until_ms: 100 };
        assert_eq!(l.grant(100, under(8), 0, &sessions).0, 8);
        l.expire(500, &sessions);
        assert_eq!(l.outstanding(), 8, "past its own expires_at_ms, the session keeps it");
        l.expire(1_000, &sessions);
        assert_eq!((l.outstanding(), l.consumed), (0, 8), "lapsed with its session, counted whole");
        assert_eq!(l.expired[0].expired_at_ms, 1_000);
        l.report(1, 1, 3, true, 1_100, &sessions);
        assert_eq!(l.consumed, 3, "the closing report turns the whole-grant charge into use");
    }

    #[test]
    fn without_expiries_usage_is_exact() {
        let mut l = QuotaLedger::default();
        let (a, b) = (1 << 32 | 7, 2 << 32 | 9);
        assert_eq!(l.grant(100, ask(a, 10, 1_000), 0, &NoSessions).0, 10);
        assert_eq!(l.grant(100, ask(b, 10, 1_000), 0, &NoSessions).0, 10);
        l.report(a, 0, 4, false, 10, &NoSessions);
        l.report(a, 0, 3, true, 20, &NoSessions);
        l.report(b, 0, 10, false, 30, &NoSessions);
        assert_eq!((l.consumed, l.outstanding(), l.remaining(100)), (17, 0, 83));
        assert_eq!(holder_node(b), 2);
    }

    #[test]
    fn near_the_limit_grants_shrink_to_single_units() {
        let mut l = QuotaLedger::default();
        assert_eq!(l.grant(40, ask(1, 100, 100), 0, &NoSessions).0, 10, "a quarter of 40");
        assert_eq!(l.grant(40, ask(2, 100, 100), 0, &NoSessions).0, 8, "a quarter of 30, rounded up");
        let mut sizes = Vec::new();
        while let (units @ 1.., _) = l.grant(40, ask(3, 100, 100), 0, &NoSessions) {
            sizes.push(units);
        }
        assert_eq!(sizes, [6, 4, 3, 3, 2, 1, 1, 1, 1]);
        assert_eq!(l.available(40), 0);
        l.report(2, 0, 1, true, 1, &NoSessions);
        assert_eq!((l.consumed, l.outstanding()), (1, 10 + 22));
        assert_eq!(l.grant(40, ask(3, 5, 100), 1, &NoSessions).0, 2, "from what node 2 handed back");
        // Nodes 1 and 3 stop reporting: at expiry their whole grants count as used.
        l.expire(100, &NoSessions);
        assert_eq!((l.consumed, l.outstanding()), (1 + 10 + 24, 0));
        // An operator gives 8 more for this period.
        l.adjust(40, 8).expect("adjust");
        assert_eq!(l.remaining(40), 13);
        assert_eq!(l.grant(40, ask(3, 9, 200), 100, &NoSessions).0, 4);
    }

    #[test]
    fn a_grant_extends_the_lease_even_when_nothing_is_left() {
        let mut l = QuotaLedger::default();
        l.grant(4, ask(1, 4, 100), 0, &NoSessions);
        l.grant(4, ask(2, 4, 100), 0, &NoSessions);
        assert_eq!(l.grant(4, ask(1, 4, 500), 50, &NoSessions).1.map(|g| g.expires_at_ms), Some(500));
    }

    #[test]
    fn taking_away_more_than_is_left_leaves_nothing_and_never_pins_the_limit() {
        let mut l = QuotaLedger::default();
        assert_eq!(l.grant(100, ask(1, 30, 1_000), 0, &NoSessions).0, 25);
        l.report(1, 0, 25, true, 10, &NoSessions);
        assert_eq!(l.remaining(100), 75);
        // i64::MIN once slipped past a bound check; it is refused here too.
        for delta in [i64::MIN, i64::MAX, 0, MAX_ADJUST_DELTA + 1, -MAX_ADJUST_DELTA - 1] {
            assert!(l.adjust(100, delta).is_err(), "{delta}");
        }
        assert_eq!(l.adjustment, 0, "a refused adjustment changes nothing");
        l.adjust(100, -MAX_ADJUST_DELTA).expect("take everything");
        assert_eq!((l.remaining(100), l.available(100)), (0, 0));
        l.adjust(100, 5).expect("give five");
        assert_eq!(l.remaining(100), 5, "exactly the five given, not five less than a huge debt");
        // A ledger pinned by an old adjustment recovers with one positive delta.
        let mut pinned = QuotaLedger { consumed: 3, adjustment: i64::MIN, ..Default::default() };
        pinned.adjust(100, 7).expect("recover");
        assert_eq!(pinned.remaining(100), 7);
        // The limit never passes 2^53 - 1.
        let mut big = QuotaLedger::default();
        let max = crate::validate::MAX_SAFE_INTEGER;
        assert!(big.adjust(max, 1).is_err());
        assert_eq!(big.adjustment, 0);
    }

    /// The partition case: a holder's use of a grant is held back while the
    /// grant expires (counted whole), the holder gets a new grant under the
    /// same id, then the held-back report arrives. It must not be charged
    /// again, nor may its release end the new grant.
    #[test]
    fn use_held_back_past_its_grants_expiry_is_never_charged_twice() {
        let mut l = QuotaLedger::default();
        let holder = 1 << 32 | 5;
        let (got, first) = l.grant(100, ask(holder, 10, 1_000), 0, &NoSessions);
        assert_eq!(got, 10);
        let first = first.map(|g| g.generation).unwrap_or(0);
        // 7 admitted, the report held back; the grant expires: counted whole.
        l.expire(1_000, &NoSessions);
        assert_eq!(l.consumed, 10);
        let (got, second) = l.grant(100, ask(holder, 10, 2_000), 1_000, &NoSessions);
        assert_eq!(got, 10);
        let second = second.map(|g| g.generation).unwrap_or(0);
        assert_ne!(first, second);
        // The held-back report of the first grant, closing it: its 7 are
        // charged once (the 3 unused come back), the new grant untouched.
        l.report(holder, first, 7, true, 1_100, &NoSessions);
        assert_eq!((l.consumed, l.outstanding()), (7, 10), "charged once, the new grant untouched");
        // The new grant's own use counts.
        l.report(holder, second, 4, true, 1_200, &NoSessions);
        assert_eq!((l.consumed, l.outstanding()), (11, 0));
        // A renewal keeps the generation.
        let (_, a) = l.grant(100, ask(holder, 5, 3_000), 1_300, &NoSessions);
        let (_, b) = l.grant(100, ask(holder, 5, 3_000), 1_300, &NoSessions);
        assert_eq!(a.map(|g| g.generation), b.map(|g| g.generation));
    }

    /// One node process in [`partitions_and_crashes_leave_usage_exact_or_over_by_what_crashed_holders_held`].
    #[derive(Default)]
    struct Node {
        /// Units it may admit from, until when by its own clock.
        units: u64,
        until: i64,
        /// Admitted from the current grant, not yet put in a report.
        unreported: u64,
        generation: u64,
        /// Reports not yet delivered, in order: (generation, used, release).
        outbox: std::collections::VecDeque<(u64, u64, bool)>,
        cut: bool,
        crashed: bool,
        /// Per generation: units granted and units admitted.
        per_generation: BTreeMap<u64, (u64, u64)>,
        /// Generations closed by a delivered release.
        closed: std::collections::BTreeSet<u64>,
    }

    /// Random histories of what nodes do, as `node::metering` does it:
    /// reports are delivered in order, one node at a time, and held back
    /// while the node is cut off; a node that learns its grant expired (a new
    /// generation) closes the old one with a release of its use; clocks run
    /// late by up to 3 ms; nodes crash (their unsent reports die with them).
    /// Checked at every step: Q (what was admitted is within what the ledger
    /// counts or holds, which is within the limit). At the end, once every
    /// live node has delivered and closed: usage equals what was admitted,
    /// plus at most what crashed holders were granted and did not admit.
    #[test]
    fn partitions_and_crashes_leave_usage_exact_or_over_by_what_crashed_holders_held() {
        let mut next = generator(0x1f83_d9ab_fb41_bd6b);
        let (mut with_crashes, mut with_late_closes) = (0, 0);
        for history in 0..1_000 {
            let limit = 1 + next(300);
            let mut ledger = QuotaLedger::default();
            let mut nodes: BTreeMap<u64, Node> = (0..3).map(|n| (n, Node::default())).collect();
            let mut admitted = 0u64;
            let mut now = 1_000i64;
            for _step in 0..300 {
                now += next(4) as i64;
                let id = next(nodes.len() as u64);
                let late = next(4) as i64;
                let n = nodes.get_mut(&id).expect("node");
                if n.crashed {
                    continue;
                }
                if now - late >= n.until {
                    n.units = 0; // its lease ran out, by its own clock
                }
                match next(9) {
                    0 | 1 if !n.cut && n.outbox.is_empty() => {
                        let (got, whole) = ledger.grant(limit, ask(id, 1 + next(20), now + 10), now, &NoSessions);
                        if let Some(g) = whole {
                            if n.generation != 0 && g.generation != n.generation {
                                // The old grant expired at the ledger: close it.
                                let used = std::mem::take(&mut n.unreported);
                                n.outbox.push_back((n.generation, used, true));
                                n.units = 0;
                            }
                            n.generation = g.generation;
                            n.until = g.expires_at_ms;
                            n.per_generation.entry(g.generation).or_default().0 += got;
                        }
                        n.units += got;
                    }
                    2 | 3 => {
                        let used = next(n.units + 1);
                        n.units -= used;
                        n.unreported += used;
                        admitted += used;
                        if used > 0 {
                            n.per_generation.entry(n.generation).or_default().1 += used;
                        }
                    }
                    4 => {
                        let release = next(3) == 0;
                        let used = std::mem::take(&mut n.unreported);
                        if used > 0 || release {
                            n.outbox.push_back((n.generation, used, release));
                        }
                        if release {
                            n.units = 0;
                            n.generation = 0;
                        }
                    }
                    5 => n.cut = !n.cut,
                    6 if next(20) == 0 => {
                        // kill -9: the process and what it had not sent are gone;
                        // a new process takes its place under a new holder id.
                        n.crashed = true;
                        n.outbox.clear();
                        nodes.insert(nodes.len() as u64, Node::default());
                    }
                    7 => ledger.expire(now, &NoSessions),
                    _ => {}
                }
                // Deliver the oldest report of a connected node.
                let id = next(nodes.len() as u64);
                let n = nodes.get_mut(&id).expect("node");
                if !n.cut {
                    if let Some((generation, used, release)) = n.outbox.pop_front() {
                        if release && ledger.grants.get(&id).is_none_or(|g| g.generation != generation) {
                            with_late_closes += 1;
                        }
                        ledger.report(id, generation, used, release, now, &NoSessions);
                        if release {
                            n.closed.insert(generation);
                        }
                    }
                }
                let total = ledger.consumed + ledger.outstanding();
                assert!(total <= limit, "history {history}: Q broken: {ledger:?} limit {limit}");
                assert!(admitted <= total, "history {history}: admitted {admitted} beyond what the ledger knows");
            }
            // Heal: every live node delivers what it holds back and closes.
            for (id, n) in nodes.iter_mut().filter(|(_, n)| !n.crashed) {
                let used = std::mem::take(&mut n.unreported);
                n.outbox.push_back((n.generation, used, true));
                while let Some((generation, used, release)) = n.outbox.pop_front() {
                    ledger.report(*id, generation, used, release, now, &NoSessions);
                }
            }
            // What crashed holders were granted and never admitted, in
            // grants they never closed: U's allowance.
            let mut allowance = 0u64;
            for n in nodes.values().filter(|n| n.crashed) {
                with_crashes += 1;
                for (generation, (granted, used)) in &n.per_generation {
                    if !n.closed.contains(generation) {
                        allowance += granted - used;
                    }
                }
            }
            ledger.expire(now + 1_000, &NoSessions);
            assert!(admitted <= ledger.consumed, "history {history}: under-counted: admitted {admitted}, {ledger:?}");
            assert!(
                ledger.consumed <= admitted + allowance,
                "history {history}: over-counted: consumed {} > admitted {admitted} + crashed holders' unused {allowance}",
                ledger.consumed
            );
            assert_eq!(ledger.daily.values().sum::<u64>(), ledger.consumed, "days add up to the period");
        }
        assert!(
            with_crashes > 50 && with_late_closes > 50,
            "the histories exercise both: {with_crashes} {with_late_closes}"
        );
    }

    /// A grant that expired while its holder was cut off counts whole until
    /// the holder's closing report, which turns the charge into its use.
    #[test]
    fn a_late_closing_report_takes_back_what_was_charged_and_unused() {
        let mut l = QuotaLedger::default();
        let holder = 1 << 32 | 5;
        let (_, first) = l.grant(100, ask(holder, 20, 1_000), 0, &NoSessions);
        let first = first.map(|g| g.generation).unwrap_or(0);
        l.report(holder, first, 5, false, 100, &NoSessions);
        l.expire(1_000, &NoSessions);
        assert_eq!(l.consumed, 20, "counted whole at expiry");
        l.report(holder, first, 3, false, 1_100, &NoSessions);
        assert_eq!(l.consumed, 20, "a late report that does not close changes nothing yet");
        l.report(holder, first, 4, true, 1_200, &NoSessions);
        assert_eq!(l.consumed, 12, "5 reported in time, 7 late");
        assert!(l.expired.is_empty());
        l.report(holder, first, 4, true, 1_300, &NoSessions);
        assert_eq!(l.consumed, 12, "a second close changes nothing");
        // A holder that never closes (it crashed) stays counted whole, and
        // only the last few expired grants are remembered.
        for h in 0..MAX_EXPIRED_KEPT as u64 + 2 {
            l.grant(100, ask(h, 1, 2_000), 1_500, &NoSessions);
        }
        l.expire(2_000, &NoSessions);
        assert_eq!(l.expired.len(), MAX_EXPIRED_KEPT);
        assert_eq!(l.consumed, 12 + MAX_EXPIRED_KEPT as u64 + 2);
    }
}

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

use crate::model::Timestamp;

/// Units a node holds, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub units: u64,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLedger {
    /// Units used: reported by nodes, or held by a grant that expired.
    pub consumed: u64,
    /// Operator adjustments to the limit for this period (UpdateUsage).
    pub adjustment: i64,
    /// Outstanding grants by node id.
    pub grants: BTreeMap<u64, Grant>,
}

impl QuotaLedger {
    pub fn outstanding(&self) -> u64 {
        self.grants.values().map(|g| g.units).sum()
    }

    /// The period's limit with adjustments (never below zero).
    pub fn limit(&self, plan_limit: u64) -> u64 {
        (plan_limit as i128 + self.adjustment as i128).clamp(0, u64::MAX as i128) as u64
    }

    /// Units that may still be granted.
    pub fn available(&self, plan_limit: u64) -> u64 {
        self.limit(plan_limit).saturating_sub(self.consumed.saturating_add(self.outstanding()))
    }

    /// Grants that ran out count as consumed: a node that stopped reporting may
    /// have used them all (over-count at most one lease, never under-count).
    pub fn expire(&mut self, now: Timestamp) {
        let expired: Vec<u64> = self.grants.iter().filter(|(_, g)| g.expires_at <= now).map(|(n, _)| *n).collect();
        for node in expired {
            if let Some(g) = self.grants.remove(&node) {
                self.consumed = self.consumed.saturating_add(g.units);
            }
        }
    }

    /// Gives `node` up to `want` more units until `lease_until`. Returns the
    /// units granted now (0 when the quota is spent) and the node's whole grant
    /// afterwards: the node may admit from it only until its `expires_at`.
    pub fn grant(
        &mut self,
        plan_limit: u64,
        node: u64,
        want: u64,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> (u64, Option<Grant>) {
        self.expire(now);
        let units = want.min(self.available(plan_limit));
        if units > 0 {
            let g = self.grants.entry(node).or_insert(Grant { units: 0, expires_at: lease_until });
            g.units += units;
            g.expires_at = g.expires_at.max(lease_until);
        }
        (units, self.grants.get(&node).copied())
    }

    /// `node` used `used` units of its grant; with `release`, the rest goes back.
    /// Reporting more than the grant holds counts it all as consumed (a node
    /// may have admitted from a grant that was expired meanwhile).
    pub fn report(&mut self, node: u64, used: u64, release: bool, now: Timestamp) {
        let held = self.grants.get(&node).map(|g| g.units).unwrap_or(0);
        let from_grant = used.min(held);
        self.consumed = self.consumed.saturating_add(used);
        if let Some(g) = self.grants.get_mut(&node) {
            g.units -= from_grant;
            if release || g.units == 0 {
                self.grants.remove(&node);
            }
        }
        self.expire(now);
    }

    /// An operator adjustment to this period's limit.
    pub fn adjust(&mut self, delta: i64) {
        self.adjustment = self.adjustment.saturating_add(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sequence_of_grants_reports_and_expiries_exceeds_the_limit() {
        // A small deterministic generator drives many random histories.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound.max(1)
        };
        for _history in 0..500 {
            let limit = 1 + next(200);
            let mut ledger = QuotaLedger::default();
            // What each node may still admit from, and until when (its own view).
            let mut held: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
            let mut admitted = 0u64;
            let mut now = 1_000i64;
            for _step in 0..200 {
                now += next(5) as i64;
                let node = next(3);
                // A node never admits from a lease that has run out.
                for (units, until) in held.values_mut() {
                    if now >= *until {
                        *units = 0;
                    }
                }
                match next(4) {
                    0 | 1 => {
                        let (got, whole) = ledger.grant(limit, node, 1 + next(20), Timestamp(now + 10), Timestamp(now));
                        let h = held.entry(node).or_insert((0, now));
                        h.0 += got;
                        // The lease end is the ledger's, not the one asked for.
                        h.1 = whole.map(|g| g.expires_at.0).unwrap_or(now);
                    }
                    2 => {
                        // The node admits some requests from what it holds and reports them.
                        let h = held.entry(node).or_insert((0, now));
                        let used = next(h.0 + 1);
                        let on_ledger = ledger.grants.get(&node).map(|g| g.units).unwrap_or(0);
                        assert!(used <= on_ledger, "node {node} uses {used} but the ledger holds {on_ledger} for it: {ledger:?} view {h:?} now {now}");
                        h.0 -= used;
                        admitted += used;
                        let release = next(2) == 0;
                        ledger.report(node, used, release, Timestamp(now));
                        if release {
                            h.0 = 0;
                        }
                    }
                    _ => ledger.expire(Timestamp(now)),
                }
                assert!(
                    ledger.consumed + ledger.outstanding() <= limit,
                    "invariant Q broken: {ledger:?} limit {limit}"
                );
                assert!(admitted <= ledger.consumed, "usage under-counted: admitted {admitted}, ledger {ledger:?}");
                assert!(admitted <= limit);
            }
        }
    }

    #[test]
    fn near_the_limit_grants_shrink_to_what_is_left() {
        let mut l = QuotaLedger::default();
        assert_eq!(l.grant(10, 1, 8, Timestamp(100), Timestamp(0)).0, 8);
        assert_eq!(l.grant(10, 2, 8, Timestamp(100), Timestamp(0)).0, 2);
        assert_eq!(l.grant(10, 3, 1, Timestamp(100), Timestamp(0)), (0, None));
        l.report(2, 1, true, Timestamp(1));
        assert_eq!((l.consumed, l.outstanding()), (1, 8));
        assert_eq!(l.grant(10, 3, 5, Timestamp(100), Timestamp(1)).0, 1);
        // Node 1 stops reporting: at expiry its whole grant counts as used.
        l.expire(Timestamp(100));
        assert_eq!((l.consumed, l.outstanding()), (10, 0));
        // An operator gives 5 more for this period.
        l.adjust(5);
        assert_eq!(l.grant(10, 3, 9, Timestamp(200), Timestamp(100)).0, 5);
    }
}

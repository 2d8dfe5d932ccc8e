//! Where grants, reports and tokens come from: the [`Authority`] trait, and
//! the in-memory authority ([`LocalAuthority`]) used by tests and by a
//! gateway built without a cluster.
//!
//! The cluster's authority (through Raft and the leader) implements the same
//! trait outside this module; metering never knows which one it talks to.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use tollgate_proto::command::{LeaseAsk, QuotaPeriod, QuotaUsage};
use tollgate_proto::metering::{renew_session, GrantAsk, QuotaLedger};

use super::lender::{LendRequest, Lent, TokenLender};
use super::lock;
use crate::state::published::SharedModel;

/// A boxed, sendable future: what [`Authority`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The authority could not be asked (no leader, a partition, a time-out), or
/// refused. The text says why, for logs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// The answer to a grant request: the units this holder got, and the ledger
/// after the grant (other holders' grants, the free units, its limit).
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Units granted now (0: none are free).
    pub units: u64,
    /// The period's ledger after the grant.
    pub ledger: QuotaLedger,
}

/// One lease command: renew (or open) this node's lease `session` until
/// `until_ms`, and ask for the grants in `asks` under it (see
/// `tollgate_proto::command::Command::QuotaLease`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRequest {
    /// The node's session id (its node id in the high 32 bits).
    pub session: u64,
    /// The session's new end, ms since the epoch.
    pub until_ms: i64,
    /// Grants wanted, at most `tollgate_proto::command::MAX_LEASE_ASKS`.
    pub asks: Vec<LeaseAsk>,
    /// The asking node's clock, ms since the epoch.
    pub now_ms: i64,
}

/// The authority's answer to a [`LeaseRequest`].
#[derive(Debug, Clone)]
pub enum LeaseAnswer {
    /// The session now ends at `until_ms` (every grant made under it lives
    /// as long); one answer per ask, in the order asked.
    Renewed {
        /// The session's end, ms since the epoch.
        until_ms: i64,
        /// Per ask: the grant, or why it was refused (a key or plan gone).
        grants: Vec<Result<Grant, Unavailable>>,
    },
    /// The session had already ended (its grants lapse, counted whole until
    /// their holders' closing reports): nothing was granted; the node must
    /// open a new session.
    Ended,
}

/// Where grants, reports and tokens come from: the cluster (through Raft and
/// the leader), or, in tests of the check pipeline, memory.
///
/// Calls may be made from many tasks at once and must not block the thread;
/// a call that cannot reach the authority answers [`Unavailable`] rather
/// than waiting without bound.
pub trait Authority: Send + Sync + 'static {
    /// Renews the node's lease session and makes the grants asked under it,
    /// in one step (one Raft entry for a cluster).
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>>;
    /// Grants the ledger wants back (see `crate::state::Recalls`), numbered
    /// from `since`: the number to ask from next time, and `(holder, period)`
    /// of each recall still remembered.
    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>);
    /// Records used units. A retry with the same `request_id` counts once.
    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>>;
    /// Lends throttle tokens from the authority's buckets (and takes back
    /// each request's `returned` unused ones): one answer per request, in
    /// order, in one round trip.
    fn lend(&self, requests: Vec<LendRequest>, now_ms: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>>;
    /// Nodes that share a throttle's rate when the authority is unreachable.
    fn members(&self) -> u32;
    /// This node's id (the high bits of its holder ids).
    fn node_id(&self) -> u64;
}

/// An authority in memory, over a model: for tests of the check pipeline
/// and of metering (the cluster's is `crate::cluster::authority::ClusterAuthority`).
pub struct LocalAuthority {
    model: SharedModel,
    /// Lease sessions by id: when each ends. Locked before `ledgers`.
    sessions: Mutex<HashMap<u64, i64>>,
    ledgers: Mutex<HashMap<QuotaPeriod, QuotaLedger>>,
    /// Recalls, as the cluster's model keeps them: `(holder, period)` by number.
    recalls: Mutex<Vec<(u64, QuotaPeriod)>>,
    lender: TokenLender,
    reported: Mutex<HashSet<u128>>,
}

impl LocalAuthority {
    /// An authority whose quota limits are the plans of `model`.
    pub fn new(model: SharedModel) -> Self {
        LocalAuthority {
            model,
            sessions: Mutex::default(),
            ledgers: Mutex::default(),
            recalls: Mutex::default(),
            lender: TokenLender::default(),
            reported: Mutex::default(),
        }
    }

    /// The ledger of `period` (empty if never granted from).
    pub fn ledger(&self, period: &QuotaPeriod) -> QuotaLedger {
        lock(&self.ledgers).get(period).cloned().unwrap_or_default()
    }

    /// An UpdateUsage on the in-memory ledger (see `QuotaLedger::adjust`).
    ///
    /// # Errors
    /// The plan has no quota, or the ledger refuses the delta (its message).
    pub fn adjust(&self, period: &QuotaPeriod, delta: i64) -> Result<(), String> {
        let limit = self.plan_limit(period).ok_or_else(|| format!("plan {:?} has no quota", period.plan_id))?;
        lock(&self.ledgers).entry(period.clone()).or_default().adjust(limit, delta)
    }

    /// The limit of `period`'s ledger: its plan's quota (the key need not
    /// be in the plan: scenarios meter made-up keys), or a descriptor
    /// count's limit as the state machine finds it.
    fn plan_limit(&self, period: &QuotaPeriod) -> Option<u64> {
        let published = self.model.load();
        if tollgate_proto::descriptors::CounterKey::of_period(period).is_some() {
            return published.model.ledger_limit(period).ok();
        }
        published.model.plan(&period.plan_id).and_then(|p| p.quota).map(|q| q.limit)
    }
}

impl Authority for LocalAuthority {
    /// The same rules as the cluster's state machine (`Model::lease`).
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>> {
        let LeaseRequest { session, until_ms, asks, now_ms } = request;
        let mut sessions = lock(&self.sessions);
        let answer = match renew_session(sessions.get(&session).copied(), until_ms, now_ms) {
            Err(_) => LeaseAnswer::Ended,
            Ok(ends) => {
                sessions.insert(session, ends);
                let mut ledgers = lock(&self.ledgers);
                let mut grants = Vec::with_capacity(asks.len());
                for LeaseAsk { period, holder, want } in asks {
                    let Some(limit) = self.plan_limit(&period) else {
                        grants.push(Err(Unavailable(format!("plan {:?} has no quota", period.plan_id))));
                        continue;
                    };
                    let ledger = ledgers.entry(period.clone()).or_default();
                    let ask = GrantAsk { holder, session, want, lease_until_ms: ends };
                    let (units, _) = ledger.grant(limit, ask, now_ms, &*sessions);
                    if units < want {
                        let mut recalls = lock(&self.recalls);
                        for (other, _) in ledger.grants.iter().filter(|(h, g)| **h != holder && g.units > 0) {
                            recalls.push((*other, period.clone()));
                        }
                    }
                    grants.push(Ok(Grant { units, ledger: ledger.clone() }));
                }
                LeaseAnswer::Renewed { until_ms: ends, grants }
            }
        };
        Box::pin(async move { Ok(answer) })
    }

    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>) {
        let recalls = lock(&self.recalls);
        let from = usize::try_from(since).unwrap_or(usize::MAX).min(recalls.len());
        (recalls.len() as u64, recalls[from..].to_vec())
    }

    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        if lock(&self.reported).insert(request_id) {
            let sessions = lock(&self.sessions);
            let mut ledgers = lock(&self.ledgers);
            for u in usage {
                let ledger = ledgers.entry(u.period).or_default();
                ledger.report(u.holder, u.generation, u.used, u.release, now_ms, &*sessions);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn lend(&self, requests: Vec<LendRequest>, now_ms: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>> {
        let lent = self.lender.lend_all(&requests, now_ms);
        Box::pin(async move { Ok(lent) })
    }

    fn members(&self) -> u32 {
        1
    }

    fn node_id(&self) -> u64 {
        1
    }
}

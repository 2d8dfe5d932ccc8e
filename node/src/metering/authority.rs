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

use tollgate_proto::command::{QuotaPeriod, QuotaUsage};
use tollgate_proto::metering::QuotaLedger;

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

/// Where grants, reports and tokens come from: the cluster (through Raft and
/// the leader), or, in tests of the check pipeline, memory.
///
/// Calls may be made from many tasks at once and must not block the thread;
/// a call that cannot reach the authority answers [`Unavailable`] rather
/// than waiting without bound.
pub trait Authority: Send + Sync + 'static {
    /// Proposes a grant of `want` units of `period` to `holder`, valid until
    /// `lease_until_ms`; answers the units granted and the ledger after it.
    fn grant(
        &self,
        period: QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Grant, Unavailable>>;
    /// Records used units. A retry with the same `request_id` counts once.
    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>>;
    /// Lends throttle tokens from the authority's bucket (and takes back
    /// `request.returned` unused ones).
    fn lend(&self, request: LendRequest, now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>>;
    /// Nodes that share a throttle's rate when the authority is unreachable.
    fn members(&self) -> u32;
    /// This node's id (the high bits of its holder ids).
    fn node_id(&self) -> u64;
}

/// An authority in memory, over a model: for tests of the check pipeline
/// and of metering (the cluster's is `crate::cluster::authority::ClusterAuthority`).
pub struct LocalAuthority {
    model: SharedModel,
    ledgers: Mutex<HashMap<QuotaPeriod, QuotaLedger>>,
    lender: TokenLender,
    reported: Mutex<HashSet<u128>>,
}

impl LocalAuthority {
    /// An authority whose quota limits are the plans of `model`.
    pub fn new(model: SharedModel) -> Self {
        LocalAuthority { model, ledgers: Mutex::default(), lender: TokenLender::default(), reported: Mutex::default() }
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

    fn plan_limit(&self, period: &QuotaPeriod) -> Option<u64> {
        self.model.load().model.plan(&period.plan_id).and_then(|p| p.quota).map(|q| q.limit)
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
    ) -> BoxFuture<'_, Result<Grant, Unavailable>> {
        let answer = match self.plan_limit(&period) {
            None => Err(Unavailable(format!("plan {:?} has no quota", period.plan_id))),
            Some(limit) => {
                let mut ledgers = lock(&self.ledgers);
                let ledger = ledgers.entry(period).or_default();
                let (units, _) = ledger.grant(limit, holder, want, lease_until_ms, now_ms);
                Ok(Grant { units, ledger: ledger.clone() })
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

//! The metering authority of a real node: quota grants and usage reports are
//! Raft writes (forwarded to the leader), throttle tokens come from the
//! leader's buckets.
//!
//! The metering defines what it needs ([`Authority`]) and is handed this
//! implementation when the node starts: the metering never imports the
//! cluster, and this module reaches the leader only through its [`Leader`]
//! handle, never through the layers above.

use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::command::{Applied, QuotaPeriod, QuotaUsage};
use tollgate_proto::{Command, RejectionKind};

use super::leader::{ClusterError, Leader};
use super::peer;
use crate::clock::Clock;
use crate::metering::lender::MAX_LENDS;
use crate::metering::{
    Authority, BoxFuture, Grant, LeaseAnswer, LeaseRequest, LendRequest, Lent, TokenLender, Unavailable, FETCH_WAIT,
};
use crate::state::published::SharedModel;

/// How long a throttle lend may wait for the leader.
const LEND_WAIT: Duration = Duration::from_millis(500);

pub struct ClusterAuthority {
    leader: Leader,
    /// The throttle buckets, used while this node leads (the throttle
    /// authority); followers borrow from the leader's.
    lender: TokenLender,
    /// The clock the buckets run on (this node's, so the leader's when lending).
    clock: Arc<dyn Clock>,
    /// This node's applied model: the ledger's recalls are read from it.
    published: SharedModel,
}

impl ClusterAuthority {
    pub fn new(leader: Leader, clock: Arc<dyn Clock>, published: SharedModel) -> Self {
        ClusterAuthority { leader, lender: TokenLender::default(), clock, published }
    }

    /// Lends tokens if this node is the leader (the peer route `/cluster/lend`):
    /// one answer per request, in order.
    pub fn lend_here(&self, requests: &[LendRequest]) -> Result<Vec<Lent>, ClusterError> {
        if requests.len() > MAX_LENDS {
            return Err(ClusterError::Unavailable(format!("at most {MAX_LENDS} lend requests at once")));
        }
        if self.leader.is_here() {
            Ok(self.lender.lend_all(requests, self.clock.now_ms()))
        } else {
            Err(self.leader.leader_hint())
        }
    }

    /// Lends throttle tokens from the leader's buckets, by the leader's clock.
    async fn lend_at_leader(
        &self,
        requests: Vec<LendRequest>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Lent>, ClusterError> {
        let here = || async { self.lend_here(&requests) };
        let lend = self.leader.at_leader(deadline, peer::LEND, &requests, here);
        match tokio::time::timeout_at(deadline, lend).await {
            Ok(answer) => answer,
            Err(_) => Err(ClusterError::Unavailable("no answer from the leader in time".into())),
        }
    }
}

fn unavailable(e: ClusterError) -> Unavailable {
    Unavailable(e.to_string())
}

impl Authority for ClusterAuthority {
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>> {
        Box::pin(async move {
            let LeaseRequest { session, until_ms, asks, now_ms } = request;
            let command = Command::QuotaLease { session, until_ms, asks, now_ms };
            let deadline = tokio::time::Instant::now() + FETCH_WAIT;
            match self.leader.write_by(rand::random(), command, deadline).await.map_err(unavailable)? {
                Ok(Applied::Lease { until_ms, grants }) => {
                    let grants = grants
                        .into_iter()
                        .map(|answer| match answer {
                            Ok(Applied::Quota { granted, ledger }) => Ok(Grant { units: granted, ledger }),
                            Ok(other) => Err(Unavailable(format!("unexpected answer to an ask: {other:?}"))),
                            Err(rejection) => Err(Unavailable(format!("grant refused: {rejection}"))),
                        })
                        .collect();
                    Ok(LeaseAnswer::Renewed { until_ms, grants })
                }
                Ok(other) => Err(Unavailable(format!("unexpected answer to a lease: {other:?}"))),
                Err(rejection) if rejection.kind == RejectionKind::Conflict => Ok(LeaseAnswer::Ended),
                Err(rejection) => Err(Unavailable(format!("lease refused: {rejection}"))),
            }
        })
    }

    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>) {
        let published = self.published.load();
        let recalls = &published.model.recalls;
        (recalls.next(), recalls.since(since).map(|(holder, period)| (holder, period.clone())).collect())
    }

    fn report(&self, request_id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + FETCH_WAIT;
            let command = Command::QuotaReport { usage, now_ms };
            self.leader
                .write_by(request_id, command, deadline)
                .await
                .map_err(unavailable)?
                .map(|_| ())
                .map_err(|r| Unavailable(r.to_string()))
        })
    }

    /// Tokens by the leader's clock (`_now_ms` is this node's).
    fn lend(&self, requests: Vec<LendRequest>, _now_ms: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + LEND_WAIT;
            self.lend_at_leader(requests, deadline).await.map_err(unavailable)
        })
    }

    fn members(&self) -> u32 {
        self.leader.members().1.len().max(1) as u32
    }

    fn node_id(&self) -> u64 {
        self.leader.id()
    }
}

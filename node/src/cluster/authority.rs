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

use tollgate_proto::Command;

use super::leader::{ClusterError, Leader};
use super::peer;
use crate::clock::Clock;
use crate::metering::{Authority, BoxFuture, Grant, LendRequest, Lent, TokenLender, Unavailable, FETCH_WAIT};

/// How long a throttle lend may wait for the leader.
const LEND_WAIT: Duration = Duration::from_millis(500);

pub struct ClusterAuthority {
    leader: Leader,
    /// The throttle buckets, used while this node leads (the throttle
    /// authority); followers borrow from the leader's.
    lender: TokenLender,
    /// The clock the buckets run on (this node's, so the leader's when lending).
    clock: Arc<dyn Clock>,
}

impl ClusterAuthority {
    pub fn new(leader: Leader, clock: Arc<dyn Clock>) -> Self {
        ClusterAuthority { leader, lender: TokenLender::default(), clock }
    }

    /// Lends tokens if this node is the leader (the peer route `/cluster/lend`).
    pub fn lend_here(&self, request: &LendRequest) -> Result<Lent, ClusterError> {
        if self.leader.is_here() {
            Ok(self.lender.lend(request, self.clock.now_ms()))
        } else {
            Err(self.leader.leader_hint())
        }
    }

    /// Lends throttle tokens from the leader's buckets, by the leader's clock.
    async fn lend_at_leader(&self, request: LendRequest, deadline: tokio::time::Instant) -> Result<Lent, ClusterError> {
        let here = || async { self.lend_here(&request) };
        let lend = self.leader.at_leader(deadline, peer::LEND, &request, here);
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
    fn grant(
        &self,
        period: QuotaPeriod,
        holder: u64,
        want: u64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Grant, Unavailable>> {
        Box::pin(async move {
            let command = Command::QuotaGrant { period, holder, want, lease_until_ms, now_ms };
            let deadline = tokio::time::Instant::now() + FETCH_WAIT;
            match self.leader.write_by(rand::random(), command, deadline).await.map_err(unavailable)? {
                Ok(Applied::Quota { granted, ledger }) => Ok(Grant { units: granted, ledger }),
                Ok(other) => Err(Unavailable(format!("unexpected answer to a grant: {other:?}"))),
                Err(rejection) => Err(Unavailable(format!("grant refused: {rejection}"))),
            }
        })
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
    fn lend(&self, request: LendRequest, _now_ms: i64) -> BoxFuture<'_, Result<Lent, Unavailable>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + LEND_WAIT;
            self.lend_at_leader(request, deadline).await.map_err(unavailable)
        })
    }

    fn members(&self) -> u32 {
        self.leader.members().1.len().max(1) as u32
    }

    fn node_id(&self) -> u64 {
        self.leader.id()
    }
}

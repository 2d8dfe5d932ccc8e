//! Pre-vote: a voter asks the others whether they would elect it before it
//! starts an election (Raft thesis §9.6, "Preventing disruptions when a
//! server rejoins the cluster").
//!
//! openraft 0.9 has no pre-vote. Without one, a follower cut off from the
//! leader starts an election after every timeout, raising its term each time;
//! when it rejoins, its higher term makes the healthy leader step down and the
//! cluster refuses writes until a new election ends. So Tollgate turns
//! openraft's own election timer off (`Config::enable_elect = false`) and runs
//! [`Elections`] instead: a voter that has heard from no leader for its
//! randomised election timeout first sends a [`PreVoteRequest`] to the other
//! voters, and calls `raft.trigger().elect()` only once a quorum (of every
//! configuration, during a joint change) has granted it. A pre-vote changes
//! no state anywhere: a node that cannot reach a quorum never raises its term.
//!
//! A voter grants a pre-vote on the same terms as openraft grants a vote, less
//! the term: the candidate is a voter, the granting node has not heard from a
//! leader within the leader lease (openraft's lease is `election_timeout_max`),
//! a leader has lost its quorum for as long, and the candidate's log is at
//! least as up to date (`last_log_id`, compared as openraft compares it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::ServerState;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::log_store::LogStore;
use super::network::PeerClient;
use super::typ::LogId;
use super::{typ, NodeId};
use crate::store::SledKv;

/// What a would-be candidate sends each voter (peer route
/// [`super::peer::PRE_VOTE`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's last log entry, `None` for an empty log.
    pub last_log_id: Option<LogId>,
}

/// A voter's answer: would it vote for the candidate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreVoteResponse {
    Granted,
    Refused(Refusal),
}

/// Why a pre-vote was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The candidate is not a voter in this node's membership (a node with
    /// no membership yet refuses no one for this).
    NotAVoter,
    /// This node heard from a leader within the leader lease.
    LeaderAlive,
    /// This node leads and a quorum acknowledged it within the lease.
    Leading,
    /// The candidate's log is behind this node's.
    LogBehind,
    /// This node's Raft has stopped.
    Stopped,
}

/// What a voter knows when it answers a pre-vote.
#[derive(Debug, Clone)]
pub struct VoterView {
    pub voters: BTreeSet<NodeId>,
    pub leading: bool,
    /// For a leader: time since a quorum last acknowledged it.
    pub since_quorum_ack: Option<Duration>,
    /// The vote is committed (a leader was elected with it).
    pub vote_committed: bool,
    /// Time since the vote was last confirmed by a leader (or changed).
    pub since_vote_touched: Option<Duration>,
    pub last_log_id: Option<LogId>,
}

/// The pre-vote rule, as a pure function of what the voter knows.
pub fn decide(view: &VoterView, request: &PreVoteRequest, lease: Duration) -> PreVoteResponse {
    use PreVoteResponse::*;
    // A node not yet initialised knows no membership: like openraft's vote,
    // its pre-vote goes by the log alone (a cluster initialised with
    // several voters elects its first leader through such nodes).
    if !view.voters.is_empty() && !view.voters.contains(&request.candidate) {
        return Refused(Refusal::NotAVoter);
    }
    if view.leading {
        if view.since_quorum_ack.is_some_and(|d| d < lease) {
            return Refused(Refusal::Leading);
        }
    } else if view.vote_committed && view.since_vote_touched.is_some_and(|d| d < lease) {
        return Refused(Refusal::LeaderAlive);
    }
    if request.last_log_id.as_ref() < view.last_log_id.as_ref() {
        return Refused(Refusal::LogBehind);
    }
    Granted
}

/// True if `granted` holds a majority of every configuration in `joint`
/// (one during normal operation, two during a membership change).
pub fn is_quorum(joint: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !joint.is_empty() && joint.iter().all(|config| config.intersection(granted).count() * 2 > config.len())
}

/// Election timing, from the node's Raft configuration (ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Timing {
    /// openraft's leader lease: a voter that heard from a leader this
    /// recently refuses to vote for anyone else.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    fn random_timeout(&self) -> Duration {
        Duration::from_millis(
            rand::thread_rng().gen_range(self.election_min_ms..self.election_max_ms.max(self.election_min_ms + 1)),
        )
    }
}

/// This node's elections: answers pre-votes and, when no leader is heard,
/// runs them. Cheap to clone.
#[derive(Clone)]
pub struct Elections {
    id: NodeId,
    raft: typ::Raft,
    log: LogStore<SledKv>,
    peers: PeerClient,
    timing: Timing,
}

impl Elections {
    pub fn new(id: NodeId, raft: typ::Raft, log: LogStore<SledKv>, peers: PeerClient, timing: Timing) -> Self {
        Elections { id, raft, log, peers, timing }
    }

    /// What this node knows now, and its membership, or `None` once its
    /// Raft has stopped. The last log id (a storage read) is read only
    /// `with_log`: the election timer and `/readyz` do not need it.
    async fn view(&self, with_log: bool) -> Option<(VoterView, Arc<typ::StoredMembership>)> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.running_state.as_ref().ok()?;
        let (vote_committed, touched) =
            self.raft.with_raft_state(|st| (st.vote_ref().is_committed(), st.vote_last_modified())).await.ok()?;
        let last_log_id = if with_log { self.log.clone().get_log_state().await.ok()?.last_log_id } else { None };
        let view = VoterView {
            voters: metrics.membership_config.membership().voter_ids().collect(),
            leading: metrics.state == ServerState::Leader,
            since_quorum_ack: metrics.millis_since_quorum_ack.map(Duration::from_millis),
            vote_committed,
            since_vote_touched: touched.map(|t| t.elapsed()),
            last_log_id,
        };
        Some((view, metrics.membership_config))
    }

    /// Why this node is out of touch, if it is: a voter that leads but no
    /// quorum acknowledged it, or follows but heard from no leader, for
    /// twice the leader lease (its view of the cluster may be stale; a
    /// partition cut it off). `None` when in touch, or the only voter.
    pub async fn out_of_touch(&self) -> Option<String> {
        let (view, _) = self.view(false).await?;
        let limit = self.timing.lease() * 2;
        if view.voters.len() <= 1 || !view.voters.contains(&self.id) {
            return None;
        }
        let ms = |d: Duration| d.as_millis();
        if view.leading {
            match view.since_quorum_ack {
                Some(d) if d < limit => None,
                Some(d) => Some(format!("leading, but no quorum acknowledged it for {} ms", ms(d))),
                None => Some("leading, but no quorum acknowledged it yet".to_string()),
            }
        } else {
            match view.since_vote_touched {
                Some(d) if d >= limit => Some(format!("heard from no leader for {} ms", ms(d))),
                _ => None,
            }
        }
    }

    /// Answers a pre-vote from another voter.
    pub async fn answer(&self, request: &PreVoteRequest) -> PreVoteResponse {
        let Some((view, _)) = self.view(true).await else {
            return PreVoteResponse::Refused(Refusal::Stopped);
        };
        let answer = decide(&view, request, self.timing.lease());
        tracing::debug!(candidate = request.candidate, ?answer, "pre-vote");
        answer
    }

    /// Runs elections until this node's Raft stops: every heartbeat
    /// interval, a voter that is not leading and has heard from no leader
    /// for its election timeout (plus the lease, if it had a leader) runs a
    /// pre-vote, and starts an election only if a quorum grants it.
    pub async fn run(self) {
        let tick = Duration::from_millis(self.timing.heartbeat_ms.max(10));
        let mut timeout = self.timing.random_timeout();
        let mut last_attempt: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(tick).await;
            let Some((view, membership)) = self.view(false).await else {
                return;
            };
            if view.leading || !view.voters.contains(&self.id) {
                continue;
            }
            let alone = view.voters.len() == 1;
            let quiet_for = view.since_vote_touched.unwrap_or(Duration::MAX);
            let wait = if view.vote_committed { self.timing.lease() + timeout } else { timeout };
            // The only voter has no one to wait for (as openraft's own timer).
            if !alone && (quiet_for < wait || last_attempt.is_some_and(|t| t.elapsed() < timeout)) {
                continue;
            }
            last_attempt = Some(tokio::time::Instant::now());
            timeout = self.timing.random_timeout();
            let Ok(log) = self.log.clone().get_log_state().await else {
                continue;
            };
            let request = PreVoteRequest { candidate: self.id, last_log_id: log.last_log_id };
            let membership = membership.membership();
            let joint = membership.get_joint_config();
            let peers = membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.peer.clone())))
                .collect();
            let granted = self.canvass(&request, joint, peers).await;
            if is_quorum(joint, &granted) {
                tracing::info!(granted = ?granted, "pre-vote won; starting an election");
                if self.raft.trigger().elect().await.is_err() {
                    return;
                }
            } else {
                tracing::debug!(granted = ?granted, "pre-vote lost; not starting an election");
            }
        }
    }

    /// Asks every other voter at once; returns who granted (with this node),
    /// as soon as the grants make a quorum or every answer is in.
    async fn canvass(
        &self,
        request: &PreVoteRequest,
        joint: &[BTreeSet<NodeId>],
        peers: Vec<(NodeId, String)>,
    ) -> BTreeSet<NodeId> {
        let mut granted = BTreeSet::from([self.id]);
        let mut asks = tokio::task::JoinSet::new();
        let deadline = Duration::from_millis(self.timing.election_min_ms);
        for (id, addr) in peers {
            let (client, request) = (self.peers.clone(), request.clone());
            asks.spawn(async move {
                let answer = client.call::<_, PreVoteResponse>(&addr, super::peer::PRE_VOTE, &request, deadline).await;
                (id, answer)
            });
        }
        while !is_quorum(joint, &granted) {
            match asks.join_next().await {
                Some(Ok((id, Ok(PreVoteResponse::Granted)))) => {
                    granted.insert(id);
                }
                Some(Ok((id, answer))) => tracing::debug!(peer = id, ?answer, "pre-vote not granted"),
                Some(Err(_)) => {}
                None => break,
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    fn follower() -> VoterView {
        VoterView {
            voters: BTreeSet::from([1, 2, 3]),
            leading: false,
            since_quorum_ack: None,
            vote_committed: true,
            since_vote_touched: Some(Duration::from_secs(5)),
            last_log_id: log_id(2, 10),
        }
    }

    const LEASE: Duration = Duration::from_millis(800);

    #[test]
    fn a_voter_that_heard_no_leader_within_the_lease_grants_an_up_to_date_candidate() {
        let request = PreVoteRequest { candidate: 2, last_log_id: log_id(2, 10) };
        assert_eq!(decide(&follower(), &request, LEASE), PreVoteResponse::Granted);
        let ahead = PreVoteRequest { candidate: 2, last_log_id: log_id(3, 1) };
        assert_eq!(decide(&follower(), &ahead, LEASE), PreVoteResponse::Granted);
        // A candidate (uncommitted vote) grants whatever its last touch.
        let candidate = VoterView { vote_committed: false, since_vote_touched: Some(Duration::ZERO), ..follower() };
        assert_eq!(decide(&candidate, &request, LEASE), PreVoteResponse::Granted);
    }

    #[test]
    fn each_reason_to_refuse_refuses() {
        let request = PreVoteRequest { candidate: 2, last_log_id: log_id(2, 10) };
        let heard = VoterView { since_vote_touched: Some(Duration::from_millis(100)), ..follower() };
        assert_eq!(decide(&heard, &request, LEASE), PreVoteResponse::Refused(Refusal::LeaderAlive));
        let leading = VoterView { leading: true, since_quorum_ack: Some(Duration::from_millis(50)), ..follower() };
        assert_eq!(decide(&leading, &request, LEASE), PreVoteResponse::Refused(Refusal::Leading));
        let stranger = PreVoteRequest { candidate: 9, ..request.clone() };
        assert_eq!(decide(&follower(), &stranger, LEASE), PreVoteResponse::Refused(Refusal::NotAVoter));
        let uninitialised = VoterView { voters: BTreeSet::new(), last_log_id: None, ..follower() };
        assert_eq!(decide(&uninitialised, &stranger, LEASE), PreVoteResponse::Granted);
        for behind in [log_id(2, 9), log_id(1, 50), None] {
            let request = PreVoteRequest { candidate: 2, last_log_id: behind };
            assert_eq!(decide(&follower(), &request, LEASE), PreVoteResponse::Refused(Refusal::LogBehind));
        }
    }

    #[test]
    fn a_leader_that_lost_its_quorum_for_the_lease_grants() {
        let request = PreVoteRequest { candidate: 2, last_log_id: log_id(2, 10) };
        for since in [Some(Duration::from_secs(2)), None] {
            let lost = VoterView { leading: true, since_quorum_ack: since, ..follower() };
            assert_eq!(decide(&lost, &request, LEASE), PreVoteResponse::Granted);
        }
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let three = BTreeSet::from([1, 2, 3]);
        assert!(is_quorum(std::slice::from_ref(&three), &BTreeSet::from([1, 2])));
        assert!(!is_quorum(std::slice::from_ref(&three), &BTreeSet::from([1])));
        assert!(!is_quorum(std::slice::from_ref(&three), &BTreeSet::from([1, 4, 5])));
        assert!(is_quorum(&[BTreeSet::from([1])], &BTreeSet::from([1])));
        let four = BTreeSet::from([1, 2, 3, 4]);
        assert!(!is_quorum(std::slice::from_ref(&four), &BTreeSet::from([1, 2])));
        // Joint: {1,2,3} and {3,4,5}: {1,2} is not enough, {1,3,4} is.
        let joint = [three, BTreeSet::from([3, 4, 5])];
        assert!(!is_quorum(&joint, &BTreeSet::from([1, 2])));
        assert!(is_quorum(&joint, &BTreeSet::from([1, 3, 4])));
        assert!(!is_quorum(&[], &BTreeSet::from([1])));
    }
}

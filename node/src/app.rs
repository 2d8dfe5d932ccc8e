//! A running node's handles, shared by the listeners (HTTP, binary, peer):
//! a plain bag, as in openraft's examples. What each handle does lives in
//! its own layer — the way to the leader in [`crate::cluster::leader`], the
//! check pipeline in [`crate::gateway`] — and nothing here is called back
//! from below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tollgate_proto::check::{CheckRequest, Decision};
use tollgate_proto::FieldError;

use crate::clock::Clock;
use crate::cluster::disk::DiskGuard;
use crate::cluster::leader::{Leader, Removal};
use crate::cluster::{typ, NodeAddr, NodeId};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::secret::Digest;
use crate::state::published::{Published, SharedModel};

pub struct App {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub raft: typ::Raft,
    /// Writes, read barriers and membership changes, at the leader.
    pub leader: Leader,
    /// Pre-votes and elections; also whether this node is in touch with a
    /// leader (for `/readyz`).
    pub elections: crate::cluster::pre_vote::Elections,
    /// The model as last applied; readers load it without locking.
    pub model: SharedModel,
    /// Digest of the bootstrap admin token (`TOLLGATE_ADMIN_TOKEN`), if set.
    pub bootstrap_token: Option<Digest>,
    /// The check pipeline.
    pub gateway: Gateway,
    /// Highest committed log index this node knows (from the log store).
    pub committed: Arc<AtomicU64>,
    pub metrics: Metrics,
    /// The wall clock (shifted by `--clock-offset-ms` if set).
    pub clock: Arc<dyn Clock>,
    /// Whether the leader said this node was removed from the cluster.
    pub removal: Arc<Removal>,
    /// The free-space guard: this node's, and on the leader what the members
    /// reported (see [`crate::cluster::disk`]).
    pub disk: Arc<DiskGuard>,
}

impl App {
    pub fn published(&self) -> Arc<Published> {
        self.model.load_full()
    }

    /// Decides one check — the same for every encoding (JSON, forward-auth,
    /// binary) — records it in metrics and echoes or assigns `X-Request-Id`.
    pub async fn decide(&self, req: &CheckRequest) -> Result<Decision, FieldError> {
        let started = std::time::Instant::now();
        let mut decision = self.gateway.check(req).await?;
        self.metrics.record_decision(&self.published().model, req, &decision, started.elapsed());
        let request_id = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        decision.response_headers.push(("x-request-id".into(), request_id));
        Ok(decision)
    }

    /// Whether the leader said this node was removed.
    pub fn is_removed(&self) -> bool {
        self.removal.is_removed()
    }

    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

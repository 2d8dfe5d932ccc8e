//! Consensus: openraft's type configuration, the log store and state machine on
//! our [`Kv`](crate::store::Kv) storage, the peer network (client in
//! [`network`], server routes in [`peer`]), and what the node needs of the
//! leader: [`leader`] routes writes, read barriers and membership changes to
//! it, [`authority`] serves the metering from it, [`disk`] refuses writes
//! cluster-wide before a member's disk is full, [`pre_vote`] decides when to
//! hold an election.
//!
//! Every durable change to the model is a Raft log entry. This module never
//! interprets a command itself: applying one is [`crate::state`]'s job. It
//! never imports the listeners, `app` or the gateway: what it needs is
//! handed to it when the node starts.

// openraft's trait signatures fix the error type (`StorageError`, ~200 bytes);
// our helpers return the same type rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

pub mod authority;
pub mod backup;
pub mod disk;
pub mod leader;
pub mod log_store;
pub mod network;
pub mod peer;
pub mod pre_vote;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use tollgate_proto::{CommandResult, Proposal};

/// A node's two addresses, as every member records them in the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the HTTP listener (check, admin, metrics).
    pub http: String,
    /// `host:port` of the peer listener (Raft RPCs, forwarded writes).
    pub peer: String,
    /// `host:port` of the binary check listener (empty if none): clients
    /// discover it through the membership.
    pub wire: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={} peer={} wire={}", self.http, self.peer, self.wire)
    }
}

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tollgate's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeAddr,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Short names for openraft's long generic types.
pub mod typ {
    use super::{NodeAddr, NodeId, TypeConfig};

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<NodeId>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type RPCError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, NodeAddr, RaftError<E>>;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeAddr>;
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeAddr>;
    pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
    pub type Metrics = openraft::RaftMetrics<NodeId, NodeAddr>;
}

/// Maps any displayable failure to a storage error that names what was being done.
pub(crate) fn storage_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    err: impl fmt::Display,
) -> typ::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(err.to_string())).into()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::typ::StorageError;
    use super::TypeConfig;
    use crate::store::{SledKv, SledOptions};

    struct SledStores;

    impl StoreBuilder<TypeConfig, LogStore<SledKv>, StateMachine<SledKv>, tempfile::TempDir> for SledStores {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore<SledKv>, StateMachine<SledKv>), StorageError> {
            let dir = tempfile::tempdir()
                .map_err(|e| super::storage_err(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e))?;
            let kv = Arc::new(
                SledKv::open(dir.path(), &SledOptions::default())
                    .map_err(|e| super::storage_err(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e))?,
            );
            let log = LogStore::new(kv.clone(), Arc::new(AtomicU64::new(0)));
            let sm = StateMachine::open(kv, Arc::new(ArcSwap::from_pointee(Default::default())))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn storage_passes_openraft_conformance_suite() -> Result<(), StorageError> {
        Suite::test_all(SledStores)
    }
}

#[cfg(test)]
mod ledger_tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};
    use tollgate_proto::command::{LeaseAsk, PutMode, QuotaPeriod, QuotaUsage};
    use tollgate_proto::model::{Entity, Timestamp};
    use tollgate_proto::{Command, Proposal};

    use super::state_machine::StateMachine;
    use super::typ::Entry;
    use crate::store::{SledKv, SledOptions};

    fn entry(index: u64, command: Command) -> Entry {
        let proposal = Proposal { request_id: index as u128, command };
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(proposal) }
    }

    fn entity(value: serde_json::Value) -> Entity {
        serde_json::from_value(value).expect("fixture")
    }

    /// The lease session of the test's grant.
    const SESSION: u64 = 2 << 32 | 77;

    #[tokio::test]
    async fn quota_ledgers_survive_a_restart_and_travel_in_snapshots() {
        let dir = tempfile::tempdir().expect("dir");
        let open = |path: &std::path::Path| {
            let kv = Arc::new(SledKv::open(path, &SledOptions::default()).expect("kv"));
            StateMachine::open(kv, Arc::new(ArcSwap::from_pointee(Default::default()))).expect("sm")
        };
        let period = QuotaPeriod { key_id: "k1".into(), plan_id: "gold".into(), start_ms: 0 };
        let put = |e: Entity| Command::Put { entity: e, mode: PutMode::Create, now: Timestamp(1) };
        let key = tollgate_proto::model::ApiKey::from_spec(
            "k1".into(),
            serde_json::from_value(serde_json::json!({"name": "k1", "plan_ids": ["gold"]})).expect("spec"),
            Default::default(),
            Timestamp(1),
        );
        {
            let mut sm = open(dir.path());
            let entries = vec![
                entry(
                    1,
                    put(entity(serde_json::json!({"Plan": {"id": "gold", "name": "Gold",
                    "quota": {"limit": 100, "period": "day"}}}))),
                ),
                entry(2, put(Entity::Key(key))),
                entry(
                    3,
                    Command::QuotaLease {
                        session: SESSION,
                        until_ms: 50_000,
                        asks: vec![LeaseAsk { period: period.clone(), holder: 2, want: 30 }],
                        now_ms: 1_000,
                    },
                ),
            ];
            let answers = sm.apply(entries).await.expect("apply");
            assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
        }
        // Reopened from storage: the ledger is there.
        let shared = Arc::new(ArcSwap::from_pointee(Default::default()));
        let kv = Arc::new(crate::store::reopen(dir.path()).await);
        let mut sm = StateMachine::open(kv, shared.clone()).expect("sm");
        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.expect("snapshot");
        let published = |sm_model: &Arc<ArcSwap<crate::state::published::Published>>| {
            sm_model.load().model.ledger(&period).map(|l| (l.consumed, l.outstanding()))
        };
        let session_end = |sm_model: &Arc<ArcSwap<crate::state::published::Published>>| {
            sm_model.load().model.sessions.get(&SESSION).copied()
        };
        assert_eq!(session_end(&shared), Some(50_000), "the lease session was loaded from storage");
        let reopened = Arc::new(ArcSwap::from_pointee(Default::default()));
        let kv = Arc::new(SledKv::open(&dir.path().join("other"), &SledOptions::default()).expect("kv"));
        let mut fresh = StateMachine::open(kv, reopened.clone()).expect("sm");
        fresh.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(
            published(&reopened),
            Some((0, 25)),
            "the ledger travelled in the snapshot (a grant takes at most a quarter)"
        );
        assert_eq!(session_end(&reopened), Some(50_000), "and the lease session with it");
        let again = sm
            .apply(vec![entry(
                4,
                Command::QuotaReport {
                    usage: vec![QuotaUsage {
                        period: period.clone(),
                        holder: 2,
                        generation: 0,
                        used: 10,
                        release: true,
                    }],
                    now_ms: 2_000,
                },
            )])
            .await
            .expect("apply");
        assert!(again[0].is_ok(), "{again:?}");
        let ledger = shared.load().model.ledger(&period).cloned().unwrap_or_default();
        assert_eq!((ledger.consumed, ledger.outstanding()), (10, 0), "reported and released");
    }
}

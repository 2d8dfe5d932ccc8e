//! Consensus: openraft's type configuration, the log store and state machine on
//! our [`Kv`](crate::store::Kv) storage, and the peer network.
//!
//! Every durable change to the model is a Raft log entry. This module never
//! interprets a command itself: applying one is [`crate::state`]'s job.

// openraft's trait signatures fix the error type (`StorageError`, ~200 bytes);
// our helpers return the same type rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod peer;
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

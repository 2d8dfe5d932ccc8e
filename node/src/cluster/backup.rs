//! Backups of the replicated state, as etcd's `snapshot save` and
//! `snapshot restore` make them.
//!
//! **Save** ([`save`]): the node that takes `POST /v1/admin/snapshot` first
//! waits for a read barrier (the leader's commit index, confirmed by a
//! quorum), then writes the model it has applied, at least that far: every
//! write acknowledged before the request is in the backup. The model is a
//! persistent map, so the image is a point-in-time copy however long the
//! encoding takes.
//!
//! **Restore** ([`restore`]): offline, into a new data dir, for a node
//! that then starts as the only voter of a new cluster (other nodes join it
//! with `tollgate cluster add`, and receive the state as a Raft snapshot).
//! The state is installed as that node's snapshot at the backup's log
//! index, with a membership of this node alone; its addresses are filled in
//! by the node itself once it leads (see `server`'s own-address refresh).
//!
//! The file: the 8 bytes [`MAGIC`], the SHA-256 of the rest, then a
//! [`Backup`] in the node's bincode codec. It holds every object (keys and
//! admin tokens as SHA-256 digests, never their secrets), the quota ledgers,
//! lease sessions, the identity key version and the audit trail. Keep it as
//! private as the data dir: `tollgate snapshot save` writes it mode 0600.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, LogId, Membership};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_proto::codec;
use tollgate_proto::model::Timestamp;

use super::state_machine::{SnapshotImage, StateMachine};
use super::typ::{SnapshotMeta, StoredMembership};
use super::{NodeAddr, NodeId};
use crate::state::published::Published;
use crate::store::{SledKv, SledOptions};

/// The first bytes of a backup file (`TGSNAP`, a zero, format version 1).
pub const MAGIC: &[u8; 8] = b"TGSNAP\x00\x01";

/// What a backup file carries after its magic and digest.
#[derive(Debug, Serialize, Deserialize)]
pub struct Backup {
    /// The log index the state was applied to.
    pub applied_index: u64,
    /// The term of that entry.
    pub applied_term: u64,
    /// When the backup was taken (the saving node's clock).
    pub taken_at: Timestamp,
    /// The node that wrote it.
    pub node: NodeId,
    /// The state: a Raft snapshot's data ([`SnapshotImage`]).
    pub image: Vec<u8>,
}

/// What a backup holds, as `tollgate snapshot save`/`restore` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The log index the state was applied to.
    pub applied_index: u64,
    /// When the backup was taken.
    pub taken_at: Timestamp,
    /// Objects (APIs, plans, keys, policies, authorizers, tokens, rate limit
    /// domains).
    pub objects: usize,
    /// Quota ledgers.
    pub ledgers: usize,
    /// Audit entries.
    pub audit_entries: usize,
    /// The file's size in bytes.
    pub bytes: usize,
}

/// The backup file of `published`: its model at its applied index, written
/// by `node`. Errors only if the model cannot be encoded.
pub fn save(published: &Published, node: NodeId) -> Result<Vec<u8>, codec::CodecError> {
    let image = codec::encode(&SnapshotImage::of(&published.model, Vec::new()))?;
    let backup = Backup {
        applied_index: published.applied.map_or(0, |l| l.index),
        applied_term: published.applied.map_or(0, |l| l.leader_id.term),
        taken_at: Timestamp::now(),
        node,
        image,
    };
    let body = codec::encode(&backup)?;
    let mut file = Vec::with_capacity(MAGIC.len() + 32 + body.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&Sha256::digest(&body));
    file.extend_from_slice(&body);
    Ok(file)
}

/// Reads a backup file: the backup and its decoded state.
///
/// # Errors
/// Not a backup (no magic), another format version, a digest that does not
/// match (truncated or changed), or a body that does not decode.
pub fn read(file: &[u8]) -> anyhow::Result<(Backup, SnapshotImage, Summary)> {
    let Some(rest) = file.strip_prefix(&MAGIC[..6]) else {
        bail!("not a Tollgate snapshot (it does not start with TGSNAP)");
    };
    if rest.get(..2) != Some(&MAGIC[6..]) {
        bail!("a Tollgate snapshot of another format version; this tollgate reads version {}", MAGIC[7]);
    }
    let rest = &rest[2..];
    if rest.len() < 32 {
        bail!("the snapshot is truncated");
    }
    let (digest, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        bail!("the snapshot's SHA-256 does not match its contents: it is truncated or was changed");
    }
    let backup: Backup = codec::decode(body).context("the snapshot's body does not decode")?;
    let image = SnapshotImage::decode(&backup.image).context("the snapshot's state does not decode")?;
    let summary = Summary {
        applied_index: backup.applied_index,
        taken_at: backup.taken_at,
        objects: image.objects.len(),
        ledgers: image.ledgers.len(),
        audit_entries: image.audit.len(),
        bytes: file.len(),
    };
    Ok((backup, image, summary))
}

/// Seeds `data_dir` from a backup file for node `id`, the only voter of a
/// new cluster (see the module docs).
///
/// # Errors
/// The file is not a valid backup ([`read`]), `data_dir` already holds a
/// node's data, or the store cannot be written.
pub async fn restore(file: &[u8], data_dir: &Path, id: NodeId) -> anyhow::Result<Summary> {
    if id == 0 {
        bail!("--id must be a whole number above 0");
    }
    let (backup, _, summary) = read(file)?;
    let db = data_dir.join("db");
    if db.exists() {
        bail!("{} already holds a node's data: restore into a new data dir", data_dir.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let kv = Arc::new(SledKv::open(&db, &SledOptions::default())?);
    let published = Arc::new(ArcSwap::from_pointee(Published::default()));
    let mut state_machine = StateMachine::open(kv, published)?;
    // Term 0: the new cluster's first election is for term 1, and every
    // entry it writes then sorts after this one.
    let log_id = LogId::new(CommittedLeaderId::new(0, id), backup.applied_index.max(1));
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, NodeAddr::default())]));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restored-{}-{}", backup.applied_index, backup.taken_at.0),
    };
    state_machine.install_snapshot(&meta, Box::new(Cursor::new(backup.image))).await?;
    Ok(summary)
}

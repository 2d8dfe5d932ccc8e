//! The Raft state machine: applies committed entries to the [`Model`], writes
//! the result to [`Space::State`] in one atomic batch per apply call, and
//! publishes the new model for readers.
//!
//! Snapshots are point-in-time by construction: the model is a persistent map,
//! so the snapshot builder takes an O(1) clone at the exact applied index (sled
//! 0.34 has no point-in-time view, and this way apply never has to wait while a
//! snapshot is serialised). A snapshot is the list of every object; installing
//! one replaces the stored model in a single batch.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tollgate_proto::audit::AuditEntry;
use tollgate_proto::command::Applied;
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::descriptors::ledger_plan_id;
use tollgate_proto::metering::QuotaLedger;
use tollgate_proto::model::{Entity, EntityKind, IdentityKeyState};
use tollgate_proto::{codec, Command, CommandResult, Rejection, RejectionKind};

use super::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use super::{storage_err, TypeConfig};
use crate::state::audit::{audit_key, AUDIT_PREFIX};
use crate::state::published::{LimitsEpochs, Published, SharedModel};
use crate::state::requests::{self, RecentRequests, Remembered, Seen};
use crate::state::{
    ledger_key, object_key, session_key, Model, IDENTITY_KEY, LEDGER_PREFIX, OBJECT_PREFIX, SESSION_PREFIX,
};
use crate::store::{Kv, Op, Space};

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const CURRENT_SNAPSHOT: &[u8] = b"current";

/// A snapshot's data: the whole model at its log index. Also the body of a
/// backup (`tollgate snapshot save`, see [`crate::state`]'s users).
#[derive(Serialize, Deserialize)]
pub struct SnapshotImage {
    pub objects: Vec<Entity>,
    pub requests: Vec<Remembered>,
    pub identity: IdentityKeyState,
    pub ledgers: Vec<(QuotaPeriod, QuotaLedger)>,
    pub sessions: Vec<(u64, i64)>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
}

/// A snapshot made before the audit trail existed: read, never written.
#[derive(Deserialize)]
struct SnapshotImageBeforeAudit {
    objects: Vec<Entity>,
    requests: Vec<Remembered>,
    identity: IdentityKeyState,
    ledgers: Vec<(QuotaPeriod, QuotaLedger)>,
    sessions: Vec<(u64, i64)>,
}

impl SnapshotImage {
    /// Decodes a snapshot's data, of this version or the one before it.
    pub fn decode(data: &[u8]) -> Result<SnapshotImage, codec::CodecError> {
        codec::decode::<SnapshotImage>(data).or_else(|e| match codec::decode::<SnapshotImageBeforeAudit>(data) {
            Ok(old) => Ok(SnapshotImage {
                objects: old.objects,
                requests: old.requests,
                identity: old.identity,
                ledgers: old.ledgers,
                sessions: old.sessions,
                audit: Vec::new(),
            }),
            Err(_) => Err(e),
        })
    }

    /// The image of `model` (and the request ids remembered with it).
    pub fn of(model: &Model, requests: Vec<Remembered>) -> SnapshotImage {
        SnapshotImage {
            objects: model.all().cloned().collect(),
            requests,
            identity: model.identity,
            ledgers: model.ledgers().map(|(p, l)| (p.clone(), l.clone())).collect(),
            sessions: model.sessions.iter().map(|(s, end)| (*s, *end)).collect(),
            audit: model.audit.iter().cloned().collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

pub struct StateMachine<K: Kv> {
    kv: Arc<K>,
    model: Model,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Recently applied request ids (replicated state; see `state::requests`).
    requests: RecentRequests,
    published: SharedModel,
    limits: LimitsEpochs,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::Snapshot(None), verb, e)
}

impl<K: Kv> StateMachine<K> {
    /// Loads the applied model from storage and publishes it.
    pub fn open(kv: Arc<K>, published: SharedModel) -> Result<Self, StorageError> {
        let mut model = Model::default();
        for bytes in scan_prefix(&*kv, OBJECT_PREFIX)? {
            model.load(codec::decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?);
        }
        let remembered = scan_prefix(&*kv, requests::PREFIX)?
            .iter()
            .map(|bytes| codec::decode(bytes).map_err(|e| sm_err(ErrorVerb::Read, e)))
            .collect::<Result<Vec<Remembered>, _>>()?;
        let requests = RecentRequests::from_entries(remembered);
        for bytes in scan_prefix(&*kv, LEDGER_PREFIX)? {
            let (period, ledger): (QuotaPeriod, QuotaLedger) =
                codec::decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            model.insert_ledger(period, ledger);
        }
        for bytes in scan_prefix(&*kv, AUDIT_PREFIX)? {
            model.audit.load(codec::decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?);
        }
        for (key, bytes) in scan_pairs(&*kv, SESSION_PREFIX)? {
            let id = key.strip_prefix(SESSION_PREFIX).unwrap_or_default();
            let id: [u8; 8] = id.try_into().map_err(|_| sm_err(ErrorVerb::Read, "a session key is not 8 bytes"))?;
            model
                .sessions
                .insert(u64::from_be_bytes(id), codec::decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?);
        }
        if let Some(bytes) = kv.get(Space::State, IDENTITY_KEY).map_err(|e| sm_err(ErrorVerb::Read, e))? {
            model.identity = codec::decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        }
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
            kv.get(Space::State, key).map_err(|e| sm_err(ErrorVerb::Read, e))
        };
        let applied = match read(APPLIED)? {
            Some(b) => codec::decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => None,
        };
        let membership = match read(MEMBERSHIP)? {
            Some(b) => codec::decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        let sm = StateMachine { kv, model, applied, membership, requests, published, limits: LimitsEpochs::default() };
        sm.publish();
        Ok(sm)
    }

    fn publish(&self) {
        self.published.store(Arc::new(Published {
            model: self.model.clone(),
            applied: self.applied,
            limits: self.limits.clone(),
        }));
    }

    fn meta_ops(&self) -> Result<Vec<Op>, StorageError> {
        Ok(vec![
            Op::Put(APPLIED.to_vec(), codec::encode(&self.applied).map_err(|e| sm_err(ErrorVerb::Write, e))?),
            Op::Put(MEMBERSHIP.to_vec(), codec::encode(&self.membership).map_err(|e| sm_err(ErrorVerb::Write, e))?),
        ])
    }
}

/// The plan whose quota limits a command may change.
fn limits_changed(model: &Model, command: &Command) -> Option<String> {
    // A rate limit domain's counts are leased under `#ratelimit/<domain>`.
    match command {
        Command::Put { entity, .. } if entity.kind() == EntityKind::Plan => Some(entity.id().to_string()),
        Command::Put { entity: Entity::RateLimit(d), .. } => Some(ledger_plan_id(&d.domain)),
        Command::Delete { kind: EntityKind::Plan, id } => Some(id.clone()),
        Command::Delete { kind: EntityKind::RateLimit, id } => match model.get(EntityKind::RateLimit, id) {
            Some(Entity::RateLimit(d)) => Some(ledger_plan_id(&d.domain)),
            _ => None,
        },
        Command::QuotaAdjust { period, .. } => Some(period.plan_id.clone()),
        _ => None,
    }
}

impl<K: Kv> RaftStateMachine<TypeConfig> for StateMachine<K> {
    type SnapshotBuilder = SnapshotBuilder<K>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut answers = Vec::new();
        let mut ops = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => answers.push(Ok(Applied::Nothing)),
                EntryPayload::Normal(proposal) => {
                    match self.requests.seen(proposal.request_id) {
                        Seen::New => {}
                        Seen::Answered(answer) => {
                            // A retry of a request already applied: same answer, no effect.
                            answers.push(answer.clone());
                            continue;
                        }
                        Seen::OtherBody => {
                            answers.push(Err(Rejection {
                                kind: RejectionKind::IdempotencyKeyReused,
                                field: Some("Idempotency-Key".into()),
                                message: "this key was already used for this route with another body; \
                                          send the same body to retry, or use a new key"
                                    .into(),
                            }));
                            continue;
                        }
                    }
                    let (context, command) = match proposal.command {
                        Command::Audited { context, command } => (Some(context), *command),
                        command => (None, command),
                    };
                    if let Some(plan_id) = limits_changed(&self.model, &command) {
                        self.limits.bump(Some(&plan_id));
                    }
                    if let Command::CreateMany { entities, .. } = &command {
                        for plan in entities.iter().filter(|e| e.kind() == EntityKind::Plan) {
                            self.limits.bump(Some(plan.id()));
                        }
                    }
                    let seq = entry.log_id.index;
                    let (answer, writes) = match (context, command) {
                        (Some(context), command) => self.model.apply_audited(context, command, seq),
                        (None, Command::AuditNote { context, action, id, note }) => {
                            self.model.note(context, action, id, note, seq)
                        }
                        (None, command) => self.model.apply(command),
                    };
                    ops.extend(writes);
                    // Only what took effect is remembered: a refused write
                    // changed nothing, so its retry (a body fixed after the
                    // 4xx, with the same Idempotency-Key) is applied afresh,
                    // as Stripe does for requests that fail validation.
                    if answer.is_ok() {
                        let remembered = self.requests.remember(proposal.request_id, entry.log_id.index, &answer);
                        ops.extend(remembered.map_err(|e| sm_err(ErrorVerb::Write, e))?);
                    }
                    answers.push(answer);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    answers.push(Ok(Applied::Nothing));
                }
            }
        }
        ops.extend(self.meta_ops()?);
        self.kv.batch(Space::State, ops).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.publish();
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            kv: self.kv.clone(),
            model: self.model.clone(),
            requests: self.requests.entries(),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image = SnapshotImage::decode(&data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let mut model = Model::default();
        let mut ops: Vec<Op> = self
            .kv
            .scan(Space::State, ..)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .into_iter()
            .map(|(k, _)| Op::Delete(k))
            .collect();
        for object in image.objects {
            let bytes = codec::encode(&object).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            ops.push(Op::Put(object_key(object.kind(), object.id()), bytes));
            model.load(object);
        }
        model.identity = image.identity;
        for (period, ledger) in image.ledgers {
            let bytes = codec::encode(&(&period, &ledger)).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            ops.push(Op::Put(ledger_key(&period), bytes));
            model.insert_ledger(period, ledger);
        }
        for entry in image.audit {
            ops.push(Op::Put(audit_key(entry.seq), codec::encode(&entry).map_err(|e| snap_err(ErrorVerb::Write, e))?));
            model.audit.load(entry);
        }
        for (session, ends) in image.sessions {
            ops.push(Op::Put(session_key(session), codec::encode(&ends).map_err(|e| snap_err(ErrorVerb::Write, e))?));
            model.sessions.insert(session, ends);
        }
        ops.push(Op::Put(
            IDENTITY_KEY.to_vec(),
            codec::encode(&image.identity).map_err(|e| snap_err(ErrorVerb::Write, e))?,
        ));
        self.requests = RecentRequests::from_entries(image.requests);
        ops.extend(self.requests.puts().map_err(|e| snap_err(ErrorVerb::Write, e))?);
        self.model = model;
        self.limits.bump(None);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        ops.extend(self.meta_ops()?);
        // One batch: the old model is replaced whole or not at all.
        self.kv.batch(Space::State, ops).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let stored =
            codec::encode(&StoredSnapshot { meta: meta.clone(), data }).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.kv.put(Space::Snapshot, CURRENT_SNAPSHOT, &stored).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.kv.flush().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.kv.get(Space::Snapshot, CURRENT_SNAPSHOT).map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

/// The values stored under `prefix` in the state space.
/// A stored key and its value.
type Pair = (Vec<u8>, Vec<u8>);

fn scan_prefix<K: Kv>(kv: &K, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
    Ok(scan_pairs(kv, prefix)?.into_iter().map(|(_, v)| v).collect())
}

/// Every pair whose key starts with `prefix` (which ends below 0xff, as
/// every prefix here ends in `/`): keys from the prefix up to the prefix
/// with its last byte one higher.
fn scan_pairs<K: Kv>(kv: &K, prefix: &[u8]) -> Result<Vec<Pair>, StorageError> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    kv.scan(Space::State, prefix.to_vec()..end).map_err(|e| sm_err(ErrorVerb::Read, e))
}

/// A snapshot in the making: a point-in-time clone of the model.
pub struct SnapshotBuilder<K: Kv> {
    kv: Arc<K>,
    model: Model,
    requests: Vec<Remembered>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl<K: Kv> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<K> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let image = SnapshotImage::of(&self.model, self.requests.clone());
        let data = codec::encode(&image).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let snapshot_id = match self.applied {
            Some(id) => format!("{}-{}-{unique}", id.leader_id.term, id.index),
            None => format!("0-0-{unique}"),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        let stored = codec::encode(&StoredSnapshot { meta: meta.clone(), data: data.clone() })
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.kv.put(Space::Snapshot, CURRENT_SNAPSHOT, &stored).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // Flushing also makes every applied state write durable: the log may be
        // purged up to this snapshot as soon as we return.
        self.kv.flush().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

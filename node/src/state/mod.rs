//! The replicated model: every object an operator configured, applied
//! deterministically from the Raft log.
//!
//! [`Model`] is a persistent (structurally shared) map per kind of object, so a
//! clone is O(1): the state machine publishes a clone after every applied batch
//! and readers (admin reads, the check path) use it without any lock. Applying a
//! command checks the rules that need the rest of the model (references exist,
//! one plan per API stage per key, nothing deleted while in use) and returns the
//! storage writes that make the change durable.
//!
//! This module never does I/O: the state machine writes what it returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::{HashMap, OrdMap};
use tollgate_proto::command::{Applied, LeaseAsk, PutMode, QuotaPeriod, MAX_CREATE_MANY, MAX_LEASE_ASKS};
use tollgate_proto::descriptors::CounterKey;
use tollgate_proto::metering::{renew_session, GrantAsk, QuotaLedger, Sessions};
use tollgate_proto::model::{
    ApiKey, AuthorizerKind, Entity, EntityKind, IdentityKeyState, KeyFrom, PreviousSecret, SecretDigest, Timestamp,
    UsagePlan,
};
use tollgate_proto::{codec, Command, CommandResult, Rejection};

use crate::store::Op;

/// Objects by the SHA-256 of a secret they hold.
type DigestIndex = HashMap<[u8; 32], Arc<Entity>>;

/// The applied model as of some log index.
#[derive(Clone, Default)]
pub struct Model {
    /// Objects by id, one table per kind. Each object sits behind an `Arc`:
    /// a write copies the path of tree nodes it changes, and with it up to
    /// 64 objects per node, which should be pointers, not deep copies.
    tables: [OrdMap<String, Arc<Entity>>; 7],
    /// API keys by SHA-256 of their secret (the current and, during a
    /// reroll's overlap, the previous one): the check path's one lookup.
    key_by_digest: DigestIndex,
    /// Admin tokens by SHA-256 of their secret.
    token_by_digest: DigestIndex,
    /// Rate limit domains by their `domain` (unique): `ShouldRateLimit`'s lookup.
    rate_limit_by_domain: HashMap<String, Arc<Entity>>,
    /// Descriptor counts' ledgers by the end of their window, to forget
    /// them once it is long past (see [`DESCRIPTOR_LEDGER_GRACE_MS`]).
    descriptor_ledger_ends: imbl::OrdSet<(i64, Arc<QuotaPeriod>)>,
    /// The identity signing key version.
    pub identity: IdentityKeyState,
    /// Quota ledgers by key, plan and period (see `tollgate_proto::metering`).
    /// Periods and ledgers sit behind `Arc`s, as objects do: every usage
    /// report writes ledgers, and each write copies the tree nodes on its
    /// path with up to 64 entries each, which should be pointers, not deep
    /// copies of two strings and three collections (with 100k keys at random
    /// those copies and their drops were most of every node's CPU).
    ledgers: OrdMap<Arc<QuotaPeriod>, Arc<QuotaLedger>>,
    /// Lease sessions by id: when each ends, ms since the epoch (see
    /// `tollgate_proto::metering::Sessions`).
    pub sessions: OrdMap<u64, i64>,
    /// Grants the ledger wants back, newest last (see [`Recalls`]).
    pub recalls: Recalls,
    /// The audit trail of admin changes (see [`audit`]).
    pub audit: audit::AuditLog,
}

/// The sessions of a model, as the ledger reads them.
pub struct SessionView<'a>(pub &'a OrdMap<u64, i64>);

impl Sessions for SessionView<'_> {
    fn session_ends_ms(&self, session: u64) -> Option<i64> {
        self.0.get(&session).copied()
    }
}

/// Grants the ledger wants back: when a grant came short and other holders
/// hold units of the same quota, each of those holders is asked to hand its
/// units back if it is not using them (a quiet node may hold a standing
/// share that a busy one needs near the limit). Every node applies the same
/// entries, so each sees the recalls of its own holders in its own model.
///
/// A hint, not state: derived from the log deterministically, kept for the
/// last [`MAX_RECALLS`] only, and not stored (after a restart the node's
/// leases are new anyway). A recall missed is a grant handed back when it
/// goes quiet instead of at once.
#[derive(Clone, Default)]
pub struct Recalls {
    /// The sequence number of the next recall.
    next: u64,
    /// `(sequence, holder, period)`, oldest first.
    recent: imbl::Vector<(u64, u64, QuotaPeriod)>,
}

/// Recalls a model remembers.
pub const MAX_RECALLS: usize = 4096;

impl Recalls {
    fn push(&mut self, holder: u64, period: QuotaPeriod) {
        if self.recent.len() >= MAX_RECALLS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.next, holder, period));
        self.next += 1;
    }

    /// The sequence number the next recall will have: read recalls up to
    /// here, ask [`Self::since`] it next time.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The recalls numbered `seq` or later that are still remembered, as
    /// `(holder, period)`.
    pub fn since(&self, seq: u64) -> impl Iterator<Item = (u64, &QuotaPeriod)> {
        let skip = self.recent.len().saturating_sub((self.next.saturating_sub(seq)) as usize);
        self.recent.iter().skip(skip).map(|(_, holder, period)| (*holder, period))
    }
}

/// How long a key's usage is kept: ledgers of periods that began this long
/// before a newer one are dropped when that newer one starts.
pub const LEDGER_RETENTION_MS: i64 = 400 * tollgate_proto::metering::DAY_MS;

/// A descriptor count's ledger is forgotten this long after its window ended
/// (grants live seconds; a report that comes later finds no ledger, and a
/// new one for a past window is forgotten again).
pub const DESCRIPTOR_LEDGER_GRACE_MS: i64 = 10 * 60 * 1000;
/// The most descriptor counts of an hour and longer the cluster keeps at
/// once (each a ledger on every node, until 10 minutes after its window):
/// past it a new one is refused (`ShouldRateLimit` answers `UNAVAILABLE`),
/// and the counts already kept go on. Values clients choose (addresses,
/// ids) belong in windows under an hour, which the leader counts in memory.
pub const MAX_DESCRIPTOR_LEDGERS: usize = 100_000;
/// The most descriptor ledgers one metering command forgets.
const FORGET_PER_COMMAND: usize = 1024;

/// Prefix under which quota ledgers are stored; the value holds the period too.
pub const LEDGER_PREFIX: &[u8] = b"q/";

/// Storage key of a ledger: the prefix and the encoded period (length-prefixed
/// strings, so no two periods share a key).
pub fn ledger_key(period: &QuotaPeriod) -> Vec<u8> {
    let mut key = LEDGER_PREFIX.to_vec();
    key.extend(codec::encode(period).unwrap_or_default());
    key
}

/// Prefix under which lease sessions are stored: the id, big-endian.
pub const SESSION_PREFIX: &[u8] = b"t/";

/// Storage key of a lease session.
pub fn session_key(session: u64) -> Vec<u8> {
    let mut key = SESSION_PREFIX.to_vec();
    key.extend(session.to_be_bytes());
    key
}

/// Sessions that ended this long ago are forgotten. Any grant still naming
/// one then lapses at its own `expires_at_ms`, long past.
pub const SESSION_RETENTION_MS: i64 = 7 * tollgate_proto::metering::DAY_MS;

/// Storage key of the identity key state in the state space.
pub const IDENTITY_KEY: &[u8] = b"s/identity";

fn slot(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Api => 0,
        EntityKind::Plan => 1,
        EntityKind::Key => 2,
        EntityKind::Policy => 3,
        EntityKind::Authorizer => 4,
        EntityKind::Token => 5,
        EntityKind::RateLimit => 6,
    }
}

/// Storage key of an object in [`Space::State`](crate::store::Space::State).
pub fn object_key(kind: EntityKind, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 4);
    key.extend_from_slice(b"o/");
    key.push(slot(kind) as u8);
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// Prefix under which every object is stored.
pub const OBJECT_PREFIX: &[u8] = b"o/";

impl Model {
    pub fn get(&self, kind: EntityKind, id: &str) -> Option<&Entity> {
        self.tables[slot(kind)].get(id).map(|e| &**e)
    }

    pub fn len(&self, kind: EntityKind) -> usize {
        self.tables[slot(kind)].len()
    }

    /// Up to `limit` objects of a kind with ids after `after`, in id order.
    pub fn page(&self, kind: EntityKind, after: Option<&str>, limit: usize) -> Vec<&Entity> {
        let table = &self.tables[slot(kind)];
        match after {
            Some(after) => table
                .range::<_, str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .map(|(_, v)| &**v)
                .take(limit)
                .collect(),
            None => table.values().map(|v| &**v).take(limit).collect(),
        }
    }

    /// Every object of one kind, in id order.
    pub fn iter(&self, kind: EntityKind) -> impl Iterator<Item = &Entity> {
        self.tables[slot(kind)].values().map(|v| &**v)
    }

    pub fn all(&self) -> impl Iterator<Item = &Entity> {
        self.tables.iter().flat_map(|t| t.values().map(|v| &**v))
    }

    pub fn key_by_digest(&self, digest: &[u8; 32]) -> Option<&ApiKey> {
        match &**self.key_by_digest.get(digest)? {
            Entity::Key(k) => Some(k),
            _ => None,
        }
    }

    pub fn token_by_digest(&self, digest: &[u8; 32]) -> Option<&tollgate_proto::model::AdminToken> {
        match &**self.token_by_digest.get(digest)? {
            Entity::Token(t) => Some(t),
            _ => None,
        }
    }

    /// The API `id`, if the model has one.
    pub fn api(&self, id: &str) -> Option<&tollgate_proto::model::Api> {
        match self.get(EntityKind::Api, id)? {
            Entity::Api(a) => Some(a),
            _ => None,
        }
    }

    /// The usage plan `id`, if the model has one.
    pub fn plan(&self, id: &str) -> Option<&UsagePlan> {
        match self.get(EntityKind::Plan, id)? {
            Entity::Plan(p) => Some(p),
            _ => None,
        }
    }

    /// The API key `id` (by id, not by secret: see [`Self::key_by_digest`]).
    pub fn key(&self, id: &str) -> Option<&ApiKey> {
        match self.get(EntityKind::Key, id)? {
            Entity::Key(k) => Some(k),
            _ => None,
        }
    }

    /// The rate limit domain named `domain` (not its id), if the model has one.
    pub fn rate_limit_domain(&self, domain: &str) -> Option<&tollgate_proto::model::RateLimitDomain> {
        match &**self.rate_limit_by_domain.get(domain)? {
            Entity::RateLimit(d) => Some(d),
            _ => None,
        }
    }

    /// Adds or replaces a quota ledger (also loading from storage or a snapshot).
    pub fn insert_ledger(&mut self, period: QuotaPeriod, ledger: QuotaLedger) {
        self.put_ledger(Arc::new(period), Arc::new(ledger));
    }

    fn put_ledger(&mut self, period: Arc<QuotaPeriod>, ledger: Arc<QuotaLedger>) {
        if let Some(Ok((_, key))) = CounterKey::of_period(&period) {
            if !self.ledgers.contains_key(&*period) {
                self.descriptor_ledger_ends.insert((key.window_end_ms(period.start_ms), period.clone()));
            }
        }
        self.ledgers.insert(period, ledger);
    }

    fn remove_ledger(&mut self, period: &QuotaPeriod) {
        if let Some((period, _)) = self.ledgers.remove_with_key(period) {
            if let Some(Ok((_, key))) = CounterKey::of_period(&period) {
                self.descriptor_ledger_ends.remove(&(key.window_end_ms(period.start_ms), period));
            }
        }
    }

    /// The ledger of `period`, if it has one.
    pub fn ledger(&self, period: &QuotaPeriod) -> Option<&QuotaLedger> {
        self.ledgers.get(period).map(|l| &**l)
    }

    /// Every quota ledger, ordered by key id, plan id, then period start.
    pub fn ledgers(&self) -> impl Iterator<Item = (&QuotaPeriod, &QuotaLedger)> {
        self.ledgers.iter().map(|(p, l)| (&**p, &**l))
    }

    /// The ledgers from `from` on, in the order of [`Self::ledgers`].
    pub fn ledgers_from(&self, from: &QuotaPeriod) -> impl Iterator<Item = (&QuotaPeriod, &QuotaLedger)> {
        self.ledgers
            .range::<_, QuotaPeriod>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .map(|(p, l)| (&**p, &**l))
    }

    /// How many quota ledgers the model holds.
    pub fn ledger_count(&self) -> usize {
        self.ledgers.len()
    }

    /// Forgets (a bounded number of) descriptor ledgers whose window ended
    /// more than [`DESCRIPTOR_LEDGER_GRACE_MS`] before `now_ms`.
    fn forget_past_descriptor_ledgers(&mut self, now_ms: i64, ops: &mut Vec<Op>) {
        let cutoff = now_ms.saturating_sub(DESCRIPTOR_LEDGER_GRACE_MS);
        let past: Vec<Arc<QuotaPeriod>> = self
            .descriptor_ledger_ends
            .iter()
            .take_while(|(end, _)| *end < cutoff)
            .take(FORGET_PER_COMMAND)
            .map(|(_, p)| p.clone())
            .collect();
        for period in past {
            ops.push(Op::Delete(ledger_key(&period)));
            self.remove_ledger(&period);
        }
    }

    /// The limit that bounds the grants of `period`'s ledger: the plan's
    /// quota (the key must be in the plan), or a descriptor count's limit.
    pub fn ledger_limit(&self, period: &QuotaPeriod) -> Result<u64, Rejection> {
        if let Some(counter) = CounterKey::of_period(period) {
            let (domain, key) = counter.map_err(|message| Rejection::invalid("key_id", message))?;
            let Some(config) = self.rate_limit_domain(domain) else {
                return Err(Rejection::invalid("plan_id", format!("no rate limit domain {domain:?}")));
            };
            return key.ledger_limit(config).map_err(|message| Rejection::invalid("key_id", message));
        }
        let Some(plan) = self.plan(&period.plan_id) else {
            return Err(Rejection::not_found(EntityKind::Plan, &period.plan_id));
        };
        let Some(quota) = plan.quota else {
            return Err(Rejection::invalid("plan_id", format!("plan {:?} has no quota", period.plan_id)));
        };
        match self.get(EntityKind::Key, &period.key_id) {
            Some(Entity::Key(k)) if k.plan_ids.contains(&period.plan_id) => Ok(quota.limit),
            Some(_) => Err(Rejection::invalid(
                "key_id",
                format!("key {:?} is not in plan {:?}", period.key_id, period.plan_id),
            )),
            None => Err(Rejection::not_found(EntityKind::Key, &period.key_id)),
        }
    }

    /// The authorizer `id`, if the model has one.
    /// Every policy, in id order: the check's and the admin statements'.
    pub fn policies(&self) -> impl Iterator<Item = &tollgate_proto::model::Policy> {
        self.iter(EntityKind::Policy).filter_map(|e| match e {
            Entity::Policy(p) => Some(p),
            _ => None,
        })
    }

    pub fn authorizer(&self, id: &str) -> Option<&tollgate_proto::model::Authorizer> {
        match self.get(EntityKind::Authorizer, id)? {
            Entity::Authorizer(a) => Some(a),
            _ => None,
        }
    }

    /// Inserts an object without any checks: loading from storage or a snapshot.
    pub fn load(&mut self, entity: Entity) {
        let entity = Arc::new(entity);
        self.index(&entity);
        self.tables[slot(entity.kind())].insert(entity.id().to_string(), entity);
    }

    /// The secret digests `entity` is found by, and the index that holds them.
    fn digests(&mut self, entity: &Entity) -> Option<(&mut DigestIndex, [Option<[u8; 32]>; 2])> {
        match entity {
            Entity::Key(k) => {
                let previous = k.previous_secret.as_ref().map(|p| p.secret.sha256);
                Some((&mut self.key_by_digest, [Some(k.secret.sha256), previous]))
            }
            Entity::Token(t) => Some((&mut self.token_by_digest, [Some(t.secret.sha256), None])),
            _ => None,
        }
    }

    fn index(&mut self, entity: &Arc<Entity>) {
        if let Entity::RateLimit(d) = &**entity {
            self.rate_limit_by_domain.insert(d.domain.clone(), entity.clone());
        }
        if let Some((map, digests)) = self.digests(entity) {
            for digest in digests.into_iter().flatten() {
                map.insert(digest, entity.clone());
            }
        }
    }

    fn unindex(&mut self, entity: &Entity) {
        if let Entity::RateLimit(d) = entity {
            self.rate_limit_by_domain.remove(&d.domain);
        }
        if let Some((map, digests)) = self.digests(entity) {
            for digest in digests.into_iter().flatten() {
                map.remove(&digest);
            }
        }
    }

    /// Applies one command: the answer, and the writes that persist it (empty
    /// when the command was rejected).
    pub fn apply(&mut self, command: Command) -> (CommandResult, Vec<Op>) {
        let outcome = match command {
            Command::Put { entity, mode, now } => self.put(entity, mode, now),
            Command::CreateMany { entities, now } => self.create_many(entities, now),
            Command::Delete { kind, id } => self.delete(kind, &id),
            Command::RerollKey { id, secret, overlap_until, now } => self.reroll(&id, secret, overlap_until, now),
            Command::QuotaGrant { period, holder, want, lease_until_ms, now_ms } => {
                // Nodes ask with `QuotaLease` now; older log entries still apply.
                let sessions = self.sessions.clone();
                let ask = GrantAsk { holder, session: 0, want, lease_until_ms };
                self.meter(period, |ledger, limit| Ok(ledger.grant(limit, ask, now_ms, &SessionView(&sessions)).0))
            }
            Command::QuotaLease { session, until_ms, asks, now_ms } => self.lease(session, until_ms, asks, now_ms),
            Command::QuotaReport { usage, now_ms } => {
                // Each entry stands alone: a key deleted meanwhile drops its
                // entry, not the batch.
                let sessions = self.sessions.clone();
                let sessions = SessionView(&sessions);
                let mut ops = Vec::new();
                for u in usage {
                    if let Ok((_, _, writes)) = self.meter_ledger(u.period, |ledger, _| {
                        ledger.report(u.holder, u.generation, u.used, u.release, now_ms, &sessions);
                        Ok(0)
                    }) {
                        ops.extend(writes);
                    }
                }
                self.forget_past_descriptor_ledgers(now_ms, &mut ops);
                Ok((Applied::Nothing, ops))
            }
            Command::QuotaAdjust { period, delta, now_ms } => {
                let sessions = self.sessions.clone();
                self.meter(period, |ledger, limit| {
                    ledger.adjust(limit, delta).map_err(|message| Rejection::invalid("delta", message))?;
                    ledger.expire(now_ms, &SessionView(&sessions));
                    Ok(0)
                })
            }
            Command::Audited { .. } | Command::AuditNote { .. } => {
                // The state machine takes these apart (`apply_audited`, `note`):
                // one inside another is not a change.
                Err(Rejection::invalid("command", "an audited command holds one admin change"))
            }
            Command::RotateIdentityKey { now } => {
                let version = self.identity.version.saturating_add(1);
                self.identity = IdentityKeyState { version, rotated_at: now };
                codec::encode(&self.identity)
                    .map(|bytes| (Applied::IdentityKey(self.identity), vec![Op::Put(IDENTITY_KEY.to_vec(), bytes)]))
                    .map_err(|e| Rejection::invalid("identity", e.to_string()))
            }
        };
        match outcome {
            Err(rejection) => (Err(rejection), Vec::new()),
            Ok((applied, ops)) => (Ok(applied), ops),
        }
    }

    fn put(&mut self, mut entity: Entity, mode: PutMode, now: Timestamp) -> Outcome {
        let kind = entity.kind();
        let id = entity.id().to_string();
        let existing = self.get(kind, &id).cloned();
        match (mode, &existing) {
            (PutMode::Create, Some(_)) => {
                return Err(Rejection::conflict(Some("id"), format!("a {} with id {id:?} already exists", kind.noun())))
            }
            (PutMode::Replace, None) => return Err(Rejection::not_found(kind, &id)),
            (PutMode::Create, None) => entity.stamp(Some(now), now),
            (PutMode::Replace, Some(old)) => {
                entity.stamp(Some(old.created_at()), now);
                // Secrets never change through an update.
                match (&mut entity, old) {
                    (Entity::Key(new), Entity::Key(old)) => {
                        new.secret = old.secret.clone();
                        new.previous_secret = old.previous_secret.clone();
                    }
                    (Entity::Token(new), Entity::Token(old)) => new.secret = old.secret.clone(),
                    _ => {}
                }
            }
        }
        self.check_references(&entity, existing.as_ref())?;
        if mode == PutMode::Create {
            self.check_unique_secret(&entity)?;
        }
        let bytes = codec::encode(&entity).map_err(|e| Rejection::invalid("body", e.to_string()))?;
        if let Some(old) = &existing {
            self.unindex(old);
        }
        self.load(entity.clone());
        Ok((Applied::Put(entity), vec![Op::Put(object_key(kind, &id), bytes)]))
    }

    /// Creates every object or none (a bulk import): each is checked as a
    /// single create against the model with the ones before it, on a copy
    /// (a persistent map: O(1)) that replaces the model only if all pass.
    fn create_many(&mut self, entities: Vec<Entity>, now: Timestamp) -> Outcome {
        if entities.len() > MAX_CREATE_MANY {
            return Err(Rejection::invalid("items", format!("at most {MAX_CREATE_MANY} objects at once")));
        }
        let count = entities.len() as u64;
        let first_id = entities.first().map(|e| e.id().to_string());
        let mut next = self.clone();
        let mut ops = Vec::with_capacity(entities.len());
        for (i, entity) in entities.into_iter().enumerate() {
            match next.put(entity, PutMode::Create, now) {
                Ok((Applied::Put(_), writes)) => ops.extend(writes),
                Ok((other, _)) => {
                    return Err(Rejection::invalid(&format!("items[{i}]"), format!("unexpected answer {other:?}")))
                }
                Err(mut rejection) => {
                    let field = rejection.field.take();
                    rejection.field = Some(match field {
                        Some(f) => format!("items[{i}].{f}"),
                        None => format!("items[{i}]"),
                    });
                    return Err(rejection);
                }
            }
        }
        *self = next;
        Ok((Applied::CreatedMany { count, first_id }, ops))
    }

    /// Applies a metering change to the ledger of `period`. The key must be in
    /// the plan, and the plan must have a quota (its limit bounds every grant).
    /// A change that refuses leaves the model as it was.
    fn meter(
        &mut self,
        period: QuotaPeriod,
        change: impl FnOnce(&mut QuotaLedger, u64) -> Result<u64, Rejection>,
    ) -> Outcome {
        let (granted, ledger, ops) = self.meter_ledger(period, change)?;
        Ok((Applied::Quota { granted, ledger: (*ledger).clone() }, ops))
    }

    /// [`Self::meter`], answering the ledger as stored (no copy for a caller
    /// that only needs the writes: usage reports).
    fn meter_ledger(
        &mut self,
        period: QuotaPeriod,
        change: impl FnOnce(&mut QuotaLedger, u64) -> Result<u64, Rejection>,
    ) -> Result<(u64, Arc<QuotaLedger>, Vec<Op>), Rejection> {
        let limit = self.ledger_limit(&period)?;
        let full = self.descriptor_ledger_ends.len() >= MAX_DESCRIPTOR_LEDGERS;
        if full && !self.ledgers.contains_key(&period) && CounterKey::of_period(&period).is_some() {
            return Err(Rejection::conflict(
                Some("key_id"),
                format!(
                    "the cluster keeps {MAX_DESCRIPTOR_LEDGERS} descriptor counts of an hour or longer already; \
                     a new one starts when older windows end"
                ),
            ));
        }
        let mut ops = Vec::new();
        let (period, mut ledger, old) = match self.ledgers.get_key_value(&period) {
            // The stored period is kept (one allocation shared by every
            // version of the map), the ledger copied to be changed.
            Some((stored, ledger)) => (stored.clone(), (**ledger).clone(), Vec::new()),
            None => {
                // A new period for this key and plan: forget its periods that
                // began more than the retention ago (usage is kept that long).
                let from = QuotaPeriod { start_ms: i64::MIN, ..period.clone() };
                let cutoff = period.start_ms.saturating_sub(LEDGER_RETENTION_MS);
                let old: Vec<QuotaPeriod> = self
                    .ledgers_from(&from)
                    .take_while(|(p, _)| p.key_id == period.key_id && p.plan_id == period.plan_id)
                    .filter(|(p, _)| p.start_ms < cutoff)
                    .map(|(p, _)| p.clone())
                    .collect();
                (Arc::new(period), QuotaLedger::default(), old)
            }
        };
        let granted = change(&mut ledger, limit)?;
        let bytes = codec::encode(&(&*period, &ledger)).map_err(|e| Rejection::invalid("period", e.to_string()))?;
        for p in old {
            ops.push(Op::Delete(ledger_key(&p)));
            self.remove_ledger(&p);
        }
        ops.push(Op::Put(ledger_key(&period), bytes));
        let ledger = Arc::new(ledger);
        self.put_ledger(period, ledger.clone());
        Ok((granted, ledger, ops))
    }

    /// Renews (or opens) `session` until `until_ms`, then makes each grant
    /// asked under it. Refused whole, with nothing changed, when the session
    /// already ended or there are too many asks; an ask for a key or plan
    /// that is gone is refused alone.
    fn lease(&mut self, session: u64, until_ms: i64, asks: Vec<LeaseAsk>, now_ms: i64) -> Outcome {
        if asks.len() > MAX_LEASE_ASKS {
            return Err(Rejection::invalid("asks", format!("at most {MAX_LEASE_ASKS} asks per lease command")));
        }
        let ends = renew_session(self.sessions.get(&session).copied(), until_ms, now_ms)
            .map_err(|message| Rejection::conflict(Some("session"), message))?;
        let mut ops = Vec::new();
        let cutoff = now_ms.saturating_sub(SESSION_RETENTION_MS);
        let forgotten: Vec<u64> = self.sessions.iter().filter(|(_, end)| **end < cutoff).map(|(id, _)| *id).collect();
        for id in forgotten {
            self.sessions.remove(&id);
            ops.push(Op::Delete(session_key(id)));
        }
        self.sessions.insert(session, ends);
        let bytes = codec::encode(&ends).map_err(|e| Rejection::invalid("until_ms", e.to_string()))?;
        ops.push(Op::Put(session_key(session), bytes));
        let sessions = self.sessions.clone();
        let mut grants = Vec::with_capacity(asks.len());
        for LeaseAsk { period, holder, want } in asks {
            let ask = GrantAsk { holder, session, want, lease_until_ms: ends };
            let answer = self
                .meter(period.clone(), |ledger, limit| Ok(ledger.grant(limit, ask, now_ms, &SessionView(&sessions)).0));
            match answer {
                Ok((applied, writes)) => {
                    if let Applied::Quota { granted, ledger } = &applied {
                        if *granted < want {
                            // Short: whoever else holds units is asked for them back.
                            for (other, _) in ledger.grants.iter().filter(|(h, g)| **h != holder && g.units > 0) {
                                self.recalls.push(*other, period.clone());
                            }
                        }
                    }
                    ops.extend(writes);
                    grants.push(Ok(applied));
                }
                Err(rejection) => grants.push(Err(rejection)),
            }
        }
        self.forget_past_descriptor_ledgers(now_ms, &mut ops);
        Ok((Applied::Lease { until_ms: ends, grants }, ops))
    }

    fn reroll(&mut self, id: &str, secret: SecretDigest, overlap_until: Timestamp, now: Timestamp) -> Outcome {
        let Some(Entity::Key(old)) = self.get(EntityKind::Key, id).cloned() else {
            return Err(Rejection::not_found(EntityKind::Key, id));
        };
        if self.key_by_digest.contains_key(&secret.sha256) {
            return Err(Rejection::conflict(Some("secret"), "secret collision; reroll again"));
        }
        let mut key = old.clone();
        key.previous_secret =
            (overlap_until > now).then(|| PreviousSecret { secret: old.secret.clone(), valid_until: overlap_until });
        key.secret = secret;
        key.updated_at = now;
        let entity = Entity::Key(key);
        let bytes = codec::encode(&entity).map_err(|e| Rejection::invalid("body", e.to_string()))?;
        self.unindex(&Entity::Key(old));
        self.load(entity.clone());
        Ok((Applied::Put(entity), vec![Op::Put(object_key(EntityKind::Key, id), bytes)]))
    }

    fn delete(&mut self, kind: EntityKind, id: &str) -> Outcome {
        let Some(existing) = self.get(kind, id).cloned() else {
            return Err(Rejection::not_found(kind, id));
        };
        if let Some(user) = self.users_of(kind, id).first() {
            return Err(Rejection::conflict(
                None,
                format!("{} {id:?} is still used by {user}; remove that reference first", kind.noun()),
            ));
        }
        self.unindex(&existing);
        self.tables[slot(kind)].remove(id);
        Ok((Applied::Deleted, vec![Op::Delete(object_key(kind, id))]))
    }

    /// Objects that refer to `kind`/`id`, described for a message. Only the
    /// tables that can hold such a reference are scanned.
    fn users_of(&self, kind: EntityKind, id: &str) -> Vec<String> {
        let referrers: &[EntityKind] = match kind {
            EntityKind::Api => &[EntityKind::Plan, EntityKind::Policy],
            EntityKind::Plan => &[EntityKind::Key],
            EntityKind::Authorizer => &[EntityKind::Api],
            EntityKind::Key | EntityKind::Policy | EntityKind::Token | EntityKind::RateLimit => &[],
        };
        let mut users = Vec::new();
        for entity in referrers.iter().flat_map(|k| self.tables[slot(*k)].values()) {
            let uses = match &**entity {
                Entity::Plan(p) => p.api_stages.iter().any(|s| s.api_id == id),
                Entity::Policy(p) => p.api_id.as_deref() == Some(id),
                Entity::Key(k) => k.plan_ids.iter().any(|p| p == id),
                Entity::Api(a) => a.routes.iter().any(|r| r.authorizer_id.as_deref() == Some(id)),
                Entity::Authorizer(_) | Entity::Token(_) | Entity::RateLimit(_) => false,
            };
            if uses {
                users.push(format!("{} {:?}", entity.kind().noun(), entity.id()));
            }
        }
        users
    }

    fn check_references(&self, entity: &Entity, existing: Option<&Entity>) -> Result<(), Rejection> {
        match entity {
            Entity::Api(api) => {
                for (i, r) in api.routes.iter().enumerate() {
                    if let Some(a) = &r.authorizer_id {
                        let Some(Entity::Authorizer(authorizer)) = self.get(EntityKind::Authorizer, a) else {
                            return Err(Rejection::invalid(
                                &format!("routes[{i}].authorizer_id"),
                                format!("no authorizer with id {a:?}"),
                            ));
                        };
                        let http = matches!(authorizer.kind, AuthorizerKind::Http(_));
                        if api.key_source.from == KeyFrom::Authorizer && r.api_key_required && !http {
                            return Err(Rejection::invalid(
                                &format!("routes[{i}].authorizer_id"),
                                format!(
                                    "key_source.from is authorizer, but {a:?} is a JWT authorizer; only an HTTP authorizer answers with a usageIdentifierKey"
                                ),
                            ));
                        }
                    }
                }
                if existing.is_some() {
                    // A stage that plans still cover cannot disappear.
                    for entity in self.tables[slot(EntityKind::Plan)].values() {
                        let Entity::Plan(plan) = &**entity else { continue };
                        for s in plan.api_stages.iter().filter(|s| s.api_id == api.id) {
                            if !api.stages.iter().any(|st| st.name == s.stage) {
                                return Err(Rejection::conflict(
                                    Some("stages"),
                                    format!("stage {:?} is still covered by plan {:?}", s.stage, plan.id),
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
            Entity::Plan(plan) => {
                for (i, s) in plan.api_stages.iter().enumerate() {
                    let Some(Entity::Api(api)) = self.get(EntityKind::Api, &s.api_id) else {
                        return Err(Rejection::invalid(
                            &format!("api_stages[{i}].api_id"),
                            format!("no api with id {:?}", s.api_id),
                        ));
                    };
                    if !api.stages.iter().any(|st| st.name == s.stage) {
                        return Err(Rejection::invalid(
                            &format!("api_stages[{i}].stage"),
                            format!("api {:?} has no stage {:?}", s.api_id, s.stage),
                        ));
                    }
                }
                if existing.is_some() {
                    // Keys in this plan must still have at most one plan per stage.
                    for entity in self.tables[slot(EntityKind::Key)].values() {
                        let Entity::Key(key) = &**entity else { continue };
                        if key.plan_ids.contains(&plan.id) {
                            self.check_one_plan_per_stage(key, Some(plan))?;
                        }
                    }
                }
                Ok(())
            }
            Entity::Key(key) => {
                for (i, p) in key.plan_ids.iter().enumerate() {
                    if self.plan(p).is_none() {
                        return Err(Rejection::invalid(&format!("plan_ids[{i}]"), format!("no plan with id {p:?}")));
                    }
                }
                self.check_one_plan_per_stage(key, None)
            }
            Entity::Policy(policy) => match &policy.api_id {
                Some(api) if self.get(EntityKind::Api, api).is_none() => {
                    Err(Rejection::invalid("api_id", format!("no api with id {api:?}")))
                }
                _ => Ok(()),
            },
            Entity::Authorizer(_) | Entity::Token(_) => Ok(()),
            Entity::RateLimit(d) => match self.rate_limit_by_domain.get(&d.domain) {
                Some(other) if other.id() != d.id => Err(Rejection::conflict(
                    Some("domain"),
                    format!("domain {:?} is already configured by {:?}", d.domain, other.id()),
                )),
                _ => Ok(()),
            },
        }
    }

    /// A key may be in at most one plan per API stage (as in API Gateway).
    /// `replacing` stands in for the stored plan of the same id.
    fn check_one_plan_per_stage(&self, key: &ApiKey, replacing: Option<&UsagePlan>) -> Result<(), Rejection> {
        let mut owner: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for plan_id in &key.plan_ids {
            let plan = match replacing {
                Some(p) if &p.id == plan_id => Some(p),
                _ => self.plan(plan_id),
            };
            let Some(plan) = plan else { continue };
            for s in &plan.api_stages {
                if let Some(other) = owner.insert((&s.api_id, &s.stage), &plan.id) {
                    return Err(Rejection::conflict(
                        Some("plan_ids"),
                        format!(
                            "key {:?} would be in two plans ({other:?} and {:?}) for {}/{}; a key may be in one plan per API stage",
                            key.id, plan.id, s.api_id, s.stage
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_unique_secret(&self, entity: &Entity) -> Result<(), Rejection> {
        let taken = match entity {
            Entity::Key(k) => self.key_by_digest.contains_key(&k.secret.sha256),
            Entity::Token(t) => self.token_by_digest.contains_key(&t.secret.sha256),
            _ => false,
        };
        if taken {
            return Err(Rejection::conflict(Some("secret"), "secret collision; create the object again"));
        }
        Ok(())
    }
}

type Outcome = Result<(Applied, Vec<Op>), Rejection>;
pub mod audit;
pub mod published;
pub mod requests;

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::command::QuotaPeriod;
    use tollgate_proto::model::*;
    use tollgate_proto::RejectionKind;

    fn api(id: &str, stages: &[&str]) -> Entity {
        Entity::Api(Api {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            key_source: KeySource::default(),
            stages: stages
                .iter()
                .map(|s| Stage { name: s.to_string(), throttle: None, variables: Default::default() })
                .collect(),
            routes: vec![],
            cors: None,
            waf: vec![],
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        })
    }

    fn plan(id: &str, stages: &[(&str, &str)]) -> Entity {
        Entity::Plan(UsagePlan {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            throttle: None,
            quota: None,
            api_stages: stages
                .iter()
                .map(|(a, s)| PlanStage { api_id: a.to_string(), stage: s.to_string(), method_throttles: vec![] })
                .collect(),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        })
    }

    fn key(id: &str, plans: &[&str], digest: u8) -> Entity {
        let spec = ApiKeySpec {
            name: id.into(),
            description: String::new(),
            customer_id: None,
            tags: Default::default(),
            enabled: true,
            expires_at: None,
            plan_ids: plans.iter().map(|p| p.to_string()).collect(),
        };
        Entity::Key(ApiKey::from_spec(
            id.into(),
            spec,
            SecretDigest { prefix: "tgk_x".into(), sha256: [digest; 32] },
            Timestamp(0),
        ))
    }

    fn put(model: &mut Model, entity: Entity, mode: PutMode, now: i64) -> CommandResult {
        model.apply(Command::Put { entity, mode, now: Timestamp(now) }).0
    }

    fn rejection(result: CommandResult) -> RejectionKind {
        result.expect_err("expected a rejection").kind
    }

    #[test]
    fn references_must_exist_and_block_deletes() {
        let mut m = Model::default();
        assert_eq!(
            rejection(put(&mut m, plan("gold", &[("pets", "prod")]), PutMode::Create, 1)),
            RejectionKind::Invalid
        );
        put(&mut m, api("pets", &["prod", "beta"]), PutMode::Create, 1).unwrap();
        put(&mut m, plan("gold", &[("pets", "prod")]), PutMode::Create, 1).unwrap();
        put(&mut m, key("k1", &["gold"], 1), PutMode::Create, 1).unwrap();

        let (answer, ops) = m.apply(Command::Delete { kind: EntityKind::Plan, id: "gold".into() });
        assert_eq!(rejection(answer), RejectionKind::Conflict);
        assert!(ops.is_empty(), "a rejected command writes nothing");
        assert_eq!(
            rejection(m.apply(Command::Delete { kind: EntityKind::Api, id: "pets".into() }).0),
            RejectionKind::Conflict
        );
        // Removing the covered stage from the API is refused too.
        assert_eq!(rejection(put(&mut m, api("pets", &["beta"]), PutMode::Replace, 2)), RejectionKind::Conflict);
    }

    #[test]
    fn a_key_gets_at_most_one_plan_per_api_stage_even_when_a_plan_changes() {
        let mut m = Model::default();
        put(&mut m, api("pets", &["prod", "beta"]), PutMode::Create, 1).unwrap();
        put(&mut m, plan("gold", &[("pets", "prod")]), PutMode::Create, 1).unwrap();
        put(&mut m, plan("beta", &[("pets", "beta")]), PutMode::Create, 1).unwrap();
        put(&mut m, key("k1", &["gold", "beta"], 1), PutMode::Create, 1).unwrap();
        // Making "beta" cover prod too would put k1 in two plans for pets/prod.
        let answer = put(&mut m, plan("beta", &[("pets", "beta"), ("pets", "prod")]), PutMode::Replace, 2);
        assert_eq!(rejection(answer), RejectionKind::Conflict);
    }

    #[test]
    fn descriptor_counts_of_an_hour_stop_at_the_cap_and_are_forgotten_after_their_window() {
        use tollgate_proto::descriptors::{CounterKey, CounterPath, CounterStep};
        let mut m = Model::default();
        let domain: RateLimitDomain = serde_json::from_value(serde_json::json!({"id": "rld_1", "domain": "edge",
            "descriptors": [{"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": 5}}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        put(&mut m, Entity::RateLimit(domain), PutMode::Create, 1).unwrap();
        let period = |i: usize| {
            let step = CounterStep { key: "user".into(), rule_value: None, value: format!("u{i}") };
            let key = CounterKey { path: CounterPath(vec![step]), unit: RateLimitUnit::Hour, override_limit: None };
            key.period("edge", 0)
        };
        let session = 1 << 32 | 7;
        let mut asked = 0;
        while asked < MAX_DESCRIPTOR_LEDGERS {
            let n = MAX_LEASE_ASKS.min(MAX_DESCRIPTOR_LEDGERS - asked);
            let asks = (asked..asked + n).map(|i| LeaseAsk { period: period(i), holder: session, want: 1 }).collect();
            let (answer, _) = m.apply(Command::QuotaLease { session, until_ms: 10_000, asks, now_ms: 1_000 });
            let Ok(Applied::Lease { grants, .. }) = answer else { panic!("{answer:?}") };
            assert!(grants.iter().all(|g| matches!(g, Ok(Applied::Quota { granted: 1, .. }))));
            asked += n;
        }
        // Full: a new count is refused, one kept goes on.
        let asks = vec![
            LeaseAsk { period: period(asked), holder: session, want: 1 },
            LeaseAsk { period: period(0), holder: session, want: 1 },
        ];
        let (answer, _) = m.apply(Command::QuotaLease { session, until_ms: 10_000, asks, now_ms: 2_000 });
        let Ok(Applied::Lease { grants, .. }) = answer else { panic!("{answer:?}") };
        assert_eq!(grants[0].clone().expect_err("full").field.as_deref(), Some("key_id"));
        assert!(matches!(grants[1], Ok(Applied::Quota { granted: 1, .. })), "{:?}", grants[1]);
        // Ten minutes after the hour, each command forgets a batch of them.
        let later = 3_600_000 + DESCRIPTOR_LEDGER_GRACE_MS + 1;
        let (_, ops) = m.apply(Command::QuotaLease {
            session: 2 << 32 | 1,
            until_ms: later + 10_000,
            asks: vec![],
            now_ms: later,
        });
        assert_eq!(ops.iter().filter(|op| matches!(op, Op::Delete(_))).count(), FORGET_PER_COMMAND);
        assert_eq!(m.ledger_count(), MAX_DESCRIPTOR_LEDGERS - FORGET_PER_COMMAND);
        let asks = vec![LeaseAsk { period: period(asked).clone(), holder: session, want: 1 }];
        let (answer, _) =
            m.apply(Command::QuotaLease { session: 2 << 32 | 1, until_ms: later + 10_000, asks, now_ms: later });
        let Ok(Applied::Lease { grants, .. }) = answer else { panic!("{answer:?}") };
        assert!(grants[0].is_ok(), "room again: {:?}", grants[0]);
    }

    #[test]
    fn a_lease_command_renews_its_session_grants_under_it_and_recalls_idle_shares() {
        let mut m = Model::default();
        put(&mut m, api("pets", &["prod"]), PutMode::Create, 1).unwrap();
        let mut gold = plan("gold", &[("pets", "prod")]);
        if let Entity::Plan(p) = &mut gold {
            p.quota = Some(Quota { limit: 40, period: Period::Day, offset: 0 });
        }
        put(&mut m, gold, PutMode::Create, 1).unwrap();
        put(&mut m, key("k1", &["gold"], 1), PutMode::Create, 1).unwrap();
        let period = QuotaPeriod { key_id: "k1".into(), plan_id: "gold".into(), start_ms: 0 };
        let (a, b) = (1 << 32 | 5, 2 << 32 | 6);
        let ask = |holder, want| LeaseAsk { period: period.clone(), holder, want };
        let gone = LeaseAsk { period: QuotaPeriod { key_id: "nobody".into(), ..period.clone() }, holder: a, want: 1 };
        let lease = |m: &mut Model, session, until_ms, asks, now_ms| {
            m.apply(Command::QuotaLease { session, until_ms, asks, now_ms })
        };
        // Opened with two asks, one for a key that does not exist: refused alone.
        let (answer, ops) = lease(&mut m, a, 1_000, vec![ask(a, 10), gone], 10);
        let Ok(Applied::Lease { until_ms: 1_000, grants }) = answer else { panic!("{answer:?}") };
        assert!(matches!(grants[0], Ok(Applied::Quota { granted: 10, .. })), "{grants:?}");
        assert_eq!(grants[1].clone().expect_err("no such key").kind, RejectionKind::NotFound);
        assert!(ops.contains(&Op::Put(session_key(a), codec::encode(&1_000i64).unwrap())), "the session is stored");
        assert_eq!(m.sessions.get(&a), Some(&1_000));
        // Renewed without asks, the grant lives past its first end.
        assert!(lease(&mut m, a, 2_000, vec![], 900).0.is_ok());
        let ledger = |m: &Model| m.ledger(&period).cloned().unwrap_or_default();
        let mut view = ledger(&m);
        view.expire(1_500, &SessionView(&m.sessions));
        assert_eq!(view.outstanding(), 10, "the renewal kept the grant");
        // Node 2 takes what is left; its last ask comes short while node 1
        // holds units: node 1's holder is recalled, once per short ask.
        let recalled_before = m.recalls.next();
        for _ in 0..20 {
            let _ = lease(&mut m, b, 2_000, vec![ask(b, 30)], 1_000);
        }
        assert!(ledger(&m).available(40) == 0);
        let recalls: Vec<_> = m.recalls.since(recalled_before).collect();
        assert!(!recalls.is_empty() && recalls.iter().all(|(h, p)| *h == a && **p == period), "{recalls:?}");
        // Ended, the session is never renewed: refused whole, nothing written.
        let before = ledger(&m);
        let (answer, ops) = lease(&mut m, a, 9_000, vec![ask(a, 1)], 2_000);
        assert_eq!(answer.expect_err("ended").field.as_deref(), Some("session"));
        assert!(ops.is_empty());
        assert_eq!(ledger(&m), before);
        // Too many asks: refused whole.
        let many = vec![ask(b, 1); MAX_LEASE_ASKS + 1];
        let (answer, ops) = lease(&mut m, b, 3_000, many, 1_500);
        assert_eq!(answer.expect_err("too many").field.as_deref(), Some("asks"));
        assert!(ops.is_empty());
        // Sessions long ended are forgotten by the next lease command.
        let later = 2_000 + SESSION_RETENTION_MS + 1;
        let (answer, ops) = lease(&mut m, 3 << 32, later + 10, vec![], later);
        assert!(answer.is_ok());
        assert!(ops.contains(&Op::Delete(session_key(a))) && !m.sessions.contains_key(&a));
    }

    #[test]
    fn recalls_are_read_from_where_the_reader_left_off_and_stay_bounded() {
        let mut r = Recalls::default();
        let p = QuotaPeriod { key_id: "k".into(), plan_id: "p".into(), start_ms: 0 };
        for holder in 0..3 {
            r.push(holder, p.clone());
        }
        assert_eq!(r.since(1).map(|(h, _)| h).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(r.since(r.next()).count(), 0);
        for holder in 3..(MAX_RECALLS as u64 + 10) {
            r.push(holder, p.clone());
        }
        assert_eq!(r.since(0).count(), MAX_RECALLS, "only the last ones are remembered");
        assert_eq!(r.since(0).next().map(|(h, _)| h), Some(10));
        assert_eq!(r.since(r.next() - 1).map(|(h, _)| h).collect::<Vec<_>>(), vec![MAX_RECALLS as u64 + 9]);
    }

    #[test]
    fn quota_grants_are_bounded_by_the_plan_and_need_the_key_in_it() {
        let mut m = Model::default();
        put(&mut m, api("pets", &["prod"]), PutMode::Create, 1).unwrap();
        let mut gold = plan("gold", &[("pets", "prod")]);
        if let Entity::Plan(p) = &mut gold {
            p.quota = Some(Quota { limit: 10, period: Period::Day, offset: 0 });
        }
        put(&mut m, gold, PutMode::Create, 1).unwrap();
        put(&mut m, plan("free", &[]), PutMode::Create, 1).unwrap();
        put(&mut m, key("k1", &["gold"], 1), PutMode::Create, 1).unwrap();
        let period = |plan: &str| QuotaPeriod { key_id: "k1".into(), plan_id: plan.into(), start_ms: 0 };
        let grant = |m: &mut Model, holder, want| {
            m.apply(Command::QuotaGrant { period: period("gold"), holder, want, lease_until_ms: 100, now_ms: 1 })
        };
        let (answer, ops) = grant(&mut m, 1, 3);
        assert!(matches!(answer, Ok(Applied::Quota { granted: 3, .. })));
        assert_eq!(ops.len(), 1, "the ledger is stored");
        // 7 left: a grant takes at most a quarter of it, then the rest shrinks to nothing.
        assert!(matches!(grant(&mut m, 2, 8).0, Ok(Applied::Quota { granted: 2, .. })));
        let mut total = 5;
        while let (Ok(Applied::Quota { granted: units @ 1.., .. }), _) = grant(&mut m, 3, 8) {
            total += units;
        }
        assert_eq!(total, 10, "never more than the plan's limit");
        let no_quota =
            m.apply(Command::QuotaGrant { period: period("free"), holder: 1, want: 1, lease_until_ms: 9, now_ms: 1 });
        assert_eq!(rejection(no_quota.0), RejectionKind::Invalid);
        let adjust = m.apply(Command::QuotaAdjust { period: period("gold"), delta: 5, now_ms: 2 });
        assert!(matches!(adjust.0, Ok(Applied::Quota { ledger, .. }) if ledger.available(10) == 5));
        // An adjustment out of bounds is refused whole: no write, no change.
        let before = m.ledger(&period("gold")).cloned();
        for delta in [i64::MIN, i64::MAX, 0] {
            let (answer, ops) = m.apply(Command::QuotaAdjust { period: period("gold"), delta, now_ms: 2 });
            assert_eq!(answer.expect_err("refused").field.as_deref(), Some("delta"));
            assert!(ops.is_empty());
        }
        assert_eq!(m.ledger(&period("gold")).cloned(), before);
        // Refused in a new period: the old periods' ledgers are not dropped either.
        let far = QuotaPeriod { start_ms: LEDGER_RETENTION_MS + 1, ..period("gold") };
        let (answer, ops) = m.apply(Command::QuotaAdjust { period: far, delta: i64::MIN, now_ms: 3 });
        assert!(answer.is_err() && ops.is_empty());
        assert!(m.ledger(&period("gold")).is_some());
        // A period that starts past the retention drops the ledger of the first.
        let later = QuotaPeriod { start_ms: LEDGER_RETENTION_MS + 1, ..period("gold") };
        let (answer, ops) = m.apply(Command::QuotaAdjust { period: later, delta: 1, now_ms: 3 });
        assert!(answer.is_ok());
        assert_eq!(ops.len(), 2, "the old ledger deleted, the new one stored");
        assert!(m.ledger(&period("gold")).is_none());
    }

    #[test]
    fn replace_keeps_creation_time_and_secret_and_create_refuses_taken_ids() {
        let mut m = Model::default();
        put(&mut m, key("k1", &[], 7), PutMode::Create, 100).unwrap();
        assert_eq!(rejection(put(&mut m, key("k1", &[], 8), PutMode::Create, 101)), RejectionKind::Conflict);
        assert_eq!(
            rejection(put(&mut m, key("k2", &[], 7), PutMode::Create, 101)),
            RejectionKind::Conflict,
            "same secret"
        );
        put(&mut m, key("k1", &[], 0), PutMode::Replace, 200).unwrap();
        let Some(Entity::Key(k)) = m.get(EntityKind::Key, "k1") else { panic!("k1 is gone") };
        assert_eq!((k.created_at, k.updated_at, k.secret.sha256), (Timestamp(100), Timestamp(200), [7; 32]));
        assert!(m.key_by_digest(&[7; 32]).is_some());
        m.apply(Command::Delete { kind: EntityKind::Key, id: "k1".into() }).0.unwrap();
        assert!(m.key_by_digest(&[7; 32]).is_none(), "the digest index forgets a deleted key");
        assert_eq!(rejection(put(&mut m, key("k9", &[], 1), PutMode::Replace, 1)), RejectionKind::NotFound);
    }
}

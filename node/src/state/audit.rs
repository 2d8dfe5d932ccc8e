//! The audit trail in the model: an admin change and its record are applied
//! together ([`Model::apply_audited`]), so every node keeps the same trail
//! and no change is ever made without its entry (see
//! [`tollgate_proto::audit`] for what an entry holds).

use std::sync::Arc;

use imbl::OrdMap;
use serde_json::Value;
use tollgate_proto::audit::{
    diff, AuditAction, AuditContext, AuditEntry, AUDIT_RETENTION_MS, MAX_AUDIT_ENTRIES, MAX_LISTED_IDS,
};
use tollgate_proto::command::{Applied, PutMode};
use tollgate_proto::model::{Entity, EntityKind};
use tollgate_proto::policy::{evaluate_admin, is_admin_statement, AdminRequest, AdminVerdict, ADMIN_PRINCIPAL};
use tollgate_proto::{codec, Command, CommandResult, Rejection};

use super::Model;
use crate::store::Op;

/// Prefix under which audit entries are stored, by sequence number (big
/// endian, so a scan reads them in order).
pub const AUDIT_PREFIX: &[u8] = b"a/";

/// Storage key of the entry with sequence number `seq`.
pub fn audit_key(seq: u64) -> Vec<u8> {
    let mut key = AUDIT_PREFIX.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The entries kept, by sequence number (a persistent map: cloning the model
/// stays O(1)).
#[derive(Clone, Default)]
pub struct AuditLog {
    entries: OrdMap<u64, Arc<AuditEntry>>,
}

impl AuditLog {
    /// Adds an entry read from storage or a snapshot.
    pub fn load(&mut self, entry: AuditEntry) {
        self.entries.insert(entry.seq, Arc::new(entry));
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries with a sequence number above `after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &AuditEntry> {
        self.entries.range(after.saturating_add(1)..).map(|(_, e)| &**e)
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &AuditEntry> {
        self.entries.values().map(|e| &**e)
    }

    /// Records `entry` and drops what retention no longer keeps: the oldest
    /// past [`MAX_AUDIT_ENTRIES`], and those older than
    /// [`AUDIT_RETENTION_MS`] before the newer of this entry and the last. Decided from the
    /// entries alone, so every node keeps the same ones.
    fn record(&mut self, entry: AuditEntry, ops: &mut Vec<Op>) {
        // Encoding a plain struct does not fail; were it to, every node
        // would skip the same record.
        let Ok(bytes) = codec::encode(&entry) else { return };
        ops.push(Op::Put(audit_key(entry.seq), bytes));
        let newest = self.entries.get_max().map_or(i64::MIN, |(_, e)| e.at_ms).max(entry.at_ms);
        self.entries.insert(entry.seq, Arc::new(entry));
        let horizon = newest.saturating_sub(AUDIT_RETENTION_MS);
        while let Some((seq, oldest)) = self.entries.get_min() {
            let seq = *seq;
            if self.entries.len() <= MAX_AUDIT_ENTRIES && oldest.at_ms >= horizon {
                break;
            }
            self.entries.remove(&seq);
            ops.push(Op::Delete(audit_key(seq)));
        }
    }
}

/// Whether `entity` is about who may manage what: an admin token, or a
/// policy with admin statements (naming `token:` principals). A token that
/// admin statements govern may never change one: it could give itself
/// more, or free itself.
pub fn grants_admin(entity: &Entity) -> bool {
    match entity {
        Entity::Token(_) => true,
        Entity::Policy(p) => p.statements.iter().any(is_admin_statement),
        _ => false,
    }
}

/// An object's admin resource by its kind alone (`api/ID`, `key/ID`): what
/// [`Model::admin_resources`] names for any object but a key with plans.
pub fn admin_resource(kind: EntityKind, id: &str) -> String {
    let singular = match kind {
        EntityKind::Api => "api",
        EntityKind::Plan => "plan",
        EntityKind::Key => "key",
        EntityKind::Policy => "policy",
        EntityKind::Authorizer => "authorizer",
        EntityKind::Token => "token",
        EntityKind::RateLimit => "ratelimit",
    };
    format!("{singular}/{id}")
}

impl Model {
    /// What an admin request on `entity` touches, as admin statements name
    /// it: `api/ID`, `plan/ID`, `policy/ID`, `authorizer/ID`, `token/ID`,
    /// `ratelimit/ID`; for a key, `api/API/STAGE/key/ID` for every API stage
    /// its plans cover (so `api/petstore/*` is every key that reaches
    /// petstore, and only such a key), or `key/ID` when they cover none.
    pub fn admin_resources(&self, entity: &Entity) -> Vec<String> {
        let Entity::Key(key) = entity else { return vec![admin_resource(entity.kind(), entity.id())] };
        let mut out: Vec<String> = key
            .plan_ids
            .iter()
            .filter_map(|p| self.plan(p))
            .flat_map(|plan| &plan.api_stages)
            .map(|s| format!("api/{}/{}/key/{}", s.api_id, s.stage, key.id))
            .collect();
        out.sort();
        out.dedup();
        if out.is_empty() {
            out.push(format!("key/{}", key.id));
        }
        out
    }

    /// The admin statements' word on `command` asked by `context`'s token,
    /// as this model stands (the one every node applies it to): the last
    /// say, after the node that took the request checked the same on the
    /// model it had. The bootstrap token is never governed.
    fn authorize(&self, context: &AuditContext, command: &Command) -> Result<(), Rejection> {
        let Some(token) = &context.actor.token_id else { return Ok(()) };
        let principal = format!("{ADMIN_PRINCIPAL}{token}");
        let source_ip = context.actor.source.parse().ok();
        let probe = AdminRequest { principal: &principal, action: "", resources: &[], source_ip };
        if evaluate_admin(self.policies(), &probe) == AdminVerdict::NotGoverned {
            return Ok(());
        }
        let stored = |kind: EntityKind, id: &str| self.get(kind, id).cloned();
        let (action, entities): (String, Vec<Entity>) = match command {
            Command::Put { entity, mode, .. } => {
                let verb = if *mode == PutMode::Create { "create" } else { "update" };
                let before = stored(entity.kind(), entity.id());
                (format!("{}:{verb}", entity.kind().collection()), before.into_iter().chain([entity.clone()]).collect())
            }
            Command::Delete { kind, id } => {
                (format!("{}:delete", kind.collection()), stored(*kind, id).into_iter().collect())
            }
            Command::RerollKey { id, .. } => ("keys:reroll".into(), stored(EntityKind::Key, id).into_iter().collect()),
            Command::CreateMany { entities, .. } => ("keys:create".into(), entities.clone()),
            Command::RotateIdentityKey { .. } => {
                return self.decide(&principal, "identity:rotate", &["identity".into()], source_ip)
            }
            Command::QuotaAdjust { period, .. } => {
                return self.decide(&principal, "usage:update", &[format!("plan/{}", period.plan_id)], source_ip)
            }
            _ => return Ok(()),
        };
        if entities.iter().any(grants_admin) {
            return Err(Rejection::forbidden(
                "a token that policies govern may not change admin tokens or policies that name them",
            ));
        }
        if entities.is_empty() {
            // Nothing there: the command is refused as not found anyway.
            return Ok(());
        }
        let resources: Vec<String> = entities.iter().flat_map(|e| self.admin_resources(e)).collect();
        self.decide(&principal, &action, &resources, source_ip)
    }

    fn decide(
        &self,
        principal: &str,
        action: &str,
        resources: &[String],
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<(), Rejection> {
        let request = AdminRequest { principal, action, resources, source_ip };
        match evaluate_admin(self.policies(), &request) {
            AdminVerdict::NotGoverned | AdminVerdict::Allow => Ok(()),
            AdminVerdict::Deny => Err(Rejection::forbidden(format!("a policy denies this token {action}"))),
            AdminVerdict::ImplicitDeny => Err(Rejection::forbidden(format!("no policy allows this token {action}"))),
        }
    }
}

/// What is known of a change before it is applied.
struct Pending {
    action: AuditAction,
    kind: Option<EntityKind>,
    id: Option<String>,
    /// The object's admin view before (`Null`: it did not exist).
    before: Value,
    note: Option<String>,
}

impl Pending {
    fn of(model: &Model, command: &Command) -> Result<Pending, Rejection> {
        let view = |kind: EntityKind, id: &str| model.get(kind, id).map_or(Value::Null, |e| e.to_view_json());
        let one = |action, kind: EntityKind, id: &str| Pending {
            action,
            kind: Some(kind),
            id: Some(id.to_string()),
            before: view(kind, id),
            note: None,
        };
        Ok(match command {
            Command::Put { entity, mode, .. } => {
                let action = if *mode == PutMode::Create { AuditAction::Create } else { AuditAction::Replace };
                one(action, entity.kind(), entity.id())
            }
            Command::Delete { kind, id } => one(AuditAction::Delete, *kind, id),
            Command::RerollKey { id, .. } => one(AuditAction::Reroll, EntityKind::Key, id),
            Command::CreateMany { entities, .. } => {
                let kind = entities.first().map(|e| e.kind());
                let listed: Vec<&str> = entities.iter().take(MAX_LISTED_IDS).map(|e| e.id()).collect();
                let more = entities.len().saturating_sub(listed.len());
                let mut note = format!("created {}: {}", entities.len(), listed.join(", "));
                if more > 0 {
                    note.push_str(&format!(" and {more} more"));
                }
                Pending {
                    action: AuditAction::Import,
                    kind,
                    id: entities.first().map(|e| e.id().to_string()),
                    before: Value::Null,
                    note: Some(note),
                }
            }
            Command::RotateIdentityKey { .. } => Pending {
                action: AuditAction::RotateIdentityKey,
                kind: None,
                id: None,
                before: Value::Null,
                note: None,
            },
            Command::QuotaAdjust { period, delta, .. } => Pending {
                action: AuditAction::AdjustUsage,
                kind: Some(EntityKind::Plan),
                id: Some(period.plan_id.clone()),
                before: Value::Null,
                note: Some(format!("key {} in the period from {} ms: {delta:+} units", period.key_id, period.start_ms)),
            },
            Command::QuotaGrant { .. }
            | Command::QuotaLease { .. }
            | Command::QuotaReport { .. }
            | Command::Audited { .. }
            | Command::AuditNote { .. } => {
                return Err(Rejection::invalid("command", "only an admin change is recorded in the audit trail"))
            }
        })
    }

    fn entry(self, seq: u64, context: AuditContext, applied: &Applied) -> AuditEntry {
        let after = match applied {
            Applied::Put(stored) => stored.to_view_json(),
            _ => Value::Null,
        };
        let (changes, more) = diff(&self.before, &after);
        let mut note = self.note;
        if let Applied::IdentityKey(state) = applied {
            note = Some(format!("signing key version {}", state.version));
        }
        if more > 0 {
            let more = format!("{more} more fields changed");
            note = Some(match note {
                Some(n) => format!("{n}; {more}"),
                None => more,
            });
        }
        AuditEntry {
            seq,
            at_ms: context.at_ms,
            actor: context.actor,
            request: context.request,
            action: self.action,
            kind: self.kind,
            id: self.id,
            changes,
            note,
        }
    }
}

impl Model {
    /// Applies an admin change ([`Command::Audited`], taken apart by the
    /// caller) at log index `seq`: refused (403) if the admin statements
    /// that govern the asking token do not allow it on this model; else the
    /// answer is the change's own, and when it took effect its audit entry
    /// is recorded in the same writes. A refused change records nothing.
    pub fn apply_audited(&mut self, context: AuditContext, command: Command, seq: u64) -> (CommandResult, Vec<Op>) {
        let pending = match Pending::of(self, &command).and_then(|p| self.authorize(&context, &command).map(|()| p)) {
            Ok(p) => p,
            Err(rejection) => return (Err(rejection), Vec::new()),
        };
        let (answer, mut ops) = self.apply(command);
        if let Ok(applied) = &answer {
            self.audit.record(pending.entry(seq, context, applied), &mut ops);
        }
        (answer, ops)
    }

    /// Records a change made outside the model ([`Command::AuditNote`]: a
    /// membership change) at log index `seq`.
    pub fn note(
        &mut self,
        context: AuditContext,
        action: AuditAction,
        id: Option<String>,
        note: Option<String>,
        seq: u64,
    ) -> (CommandResult, Vec<Op>) {
        let mut ops = Vec::new();
        let entry = AuditEntry {
            seq,
            at_ms: context.at_ms,
            actor: context.actor,
            request: context.request,
            action,
            kind: None,
            id,
            changes: Vec::new(),
            note,
        };
        self.audit.record(entry, &mut ops);
        (Ok(Applied::Nothing), ops)
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::audit::AuditActor;
    use tollgate_proto::model::Timestamp;

    use super::*;

    fn context(at_ms: i64) -> AuditContext {
        AuditContext {
            actor: AuditActor { token_id: Some("tok_1".into()), token_name: "ops".into(), source: "10.0.0.1".into() },
            request: "POST /v1/admin/plans".into(),
            at_ms,
        }
    }

    fn plan(id: &str, name: &str) -> tollgate_proto::model::Entity {
        let plan = serde_json::json!({"id": id, "name": name});
        tollgate_proto::model::Entity::Plan(serde_json::from_value(plan).unwrap_or_else(|e| panic!("plan: {e}")))
    }

    #[test]
    fn a_change_and_its_entry_are_applied_together_and_a_refused_one_records_nothing() {
        let mut m = Model::default();
        let put = |e, mode| Command::Put { entity: e, mode, now: Timestamp(1) };
        let (answer, ops) = m.apply_audited(context(1_000), put(plan("gold", "Gold"), PutMode::Create), 7);
        assert!(answer.is_ok());
        assert!(ops.iter().any(|op| matches!(op, Op::Put(k, _) if k == &audit_key(7))));
        let entry = m.audit.iter().next().cloned().unwrap_or_else(|| panic!("no entry"));
        assert_eq!((entry.seq, entry.action, entry.kind), (7, AuditAction::Create, Some(EntityKind::Plan)));
        assert!(entry.changes.iter().any(|c| c.field == "name" && c.after.as_deref() == Some("\"Gold\"")));

        // A second create of the same id is refused: no entry, no writes.
        let (answer, ops) = m.apply_audited(context(2_000), put(plan("gold", "Again"), PutMode::Create), 8);
        assert!(answer.is_err() && ops.is_empty());
        assert_eq!(m.audit.len(), 1);

        // A replace records only what changed.
        let (answer, _) = m.apply_audited(context(3_000), put(plan("gold", "Golden"), PutMode::Replace), 9);
        assert!(answer.is_ok());
        let entry = m.audit.after(8).next().cloned().unwrap_or_else(|| panic!("no entry"));
        let fields: Vec<&str> = entry.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!((entry.action, fields), (AuditAction::Replace, vec!["name"]));

        // Metering is never audited.
        let report = Command::QuotaReport { usage: Vec::new(), now_ms: 0 };
        assert!(m.apply_audited(context(4_000), report, 10).0.is_err());
    }

    fn entity(kind: &str, value: serde_json::Value) -> tollgate_proto::model::Entity {
        use tollgate_proto::model::Entity;
        let parsed = match kind {
            "api" => serde_json::from_value(value).map(Entity::Api),
            "plan" => serde_json::from_value(value).map(Entity::Plan),
            _ => serde_json::from_value(value).map(Entity::Policy),
        };
        parsed.unwrap_or_else(|e| panic!("{kind}: {e}"))
    }

    #[test]
    fn the_state_machine_has_the_last_word_on_a_governed_token() {
        let mut m = Model::default();
        let put = |e| Command::Put { entity: e, mode: PutMode::Create, now: Timestamp(1) };
        for api in ["petstore", "bank"] {
            let a = serde_json::json!({"id": api, "name": api, "stages": [{"name": "prod"}], "routes": []});
            assert!(m.apply(put(entity("api", a))).0.is_ok());
            let p = serde_json::json!({"id": format!("{api}-plan"), "name": "p",
                "api_stages": [{"api_id": api, "stage": "prod"}]});
            assert!(m.apply(put(entity("plan", p))).0.is_ok());
            let spec = serde_json::json!({"name": "k", "plan_ids": [format!("{api}-plan")]});
            let spec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("spec: {e}"));
            let digest = tollgate_proto::model::SecretDigest { prefix: "tgk_x".into(), sha256: [api.len() as u8; 32] };
            let key = tollgate_proto::model::ApiKey::from_spec(format!("{api}-key"), spec, digest, Timestamp(1));
            assert!(m.apply(put(tollgate_proto::model::Entity::Key(key))).0.is_ok(), "key");
        }
        let policy = serde_json::json!({"id": "ops", "name": "ops", "statements": [
            {"effect": "Allow", "principals": ["token:tok_1"], "actions": ["keys:*"], "resources": ["api/petstore/*"]}]});
        assert!(m.apply(put(entity("policy", policy))).0.is_ok());
        let delete = |id: &str| Command::Delete { kind: EntityKind::Key, id: id.into() };
        // Asked through a node whose model lagged: here, it is refused.
        let (answer, ops) = m.apply_audited(context(1), delete("bank-key"), 20);
        let rejection = answer.err().unwrap_or_else(|| panic!("deleted a key the token may not touch"));
        assert_eq!(rejection.kind, tollgate_proto::RejectionKind::Forbidden);
        assert!(ops.is_empty() && m.get(EntityKind::Key, "bank-key").is_some());
        assert!(m.apply_audited(context(2), delete("petstore-key"), 21).0.is_ok());
        // Nor may it change the policy that governs it, whatever it allows.
        let freed = Command::Delete { kind: EntityKind::Policy, id: "ops".into() };
        assert!(m.apply_audited(context(3), freed, 22).0.is_err());
        // The bootstrap token is never governed.
        let mut root = context(4);
        root.actor.token_id = None;
        assert!(m.apply_audited(root, delete("bank-key"), 23).0.is_ok());
    }

    #[test]
    fn retention_keeps_the_newest_entries_by_count_and_by_age() {
        let mut m = Model::default();
        let mut ops = Vec::new();
        let total = MAX_AUDIT_ENTRIES as u64 + 5;
        for seq in 1..=total {
            m.note(context(seq as i64), AuditAction::AddNode, None, None, seq).1.into_iter().for_each(|o| ops.push(o));
        }
        assert_eq!(m.audit.len(), MAX_AUDIT_ENTRIES);
        assert_eq!(m.audit.iter().next().map(|e| e.seq), Some(6));
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete(_))).count();
        assert_eq!(deletes, 5);
        // An entry 90 days and a moment later leaves only itself.
        let late = context(total as i64 + AUDIT_RETENTION_MS + 1);
        assert!(m.note(late, AuditAction::AddNode, None, None, total + 1).0.is_ok());
        assert_eq!(m.audit.len(), 1);
    }
}

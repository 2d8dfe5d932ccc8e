//! The audit trail: who changed what in the replicated model, and when.
//!
//! Every admin write is proposed wrapped in [`crate::Command::Audited`] with
//! an [`AuditContext`] (the admin token by id and name, the source address
//! the node saw on the connection, the route, the proposer's clock). The
//! state machine applies the wrapped command and, when it takes effect,
//! records an [`AuditEntry`] in the same batch: a change and its record are
//! made together or not at all, on every node alike. Refused writes change
//! nothing and leave no entry.
//!
//! What an entry says changed is computed on apply from the object's admin
//! view before and after (the view never holds a secret's digest); a key's
//! secret prefixes are named but never recorded. Values are JSON text cut at
//! [`MAX_VALUE_BYTES`], at most [`MAX_CHANGES`] fields per entry.
//!
//! Retention is bounded and deterministic, decided from the entries
//! themselves: at most [`MAX_AUDIT_ENTRIES`], none older than
//! [`AUDIT_RETENTION_MS`] before the newest.

use serde::{Deserialize, Serialize};

use crate::model::{EntityKind, Timestamp};

/// The most entries the cluster keeps; the oldest go first.
pub const MAX_AUDIT_ENTRIES: usize = 10_000;
/// How long an entry is kept: 90 days before the newest entry's time.
pub const AUDIT_RETENTION_MS: i64 = 90 * 86_400_000;
/// The longest value recorded for one field, in bytes of JSON text; a longer
/// one is recorded as its size (`"<4096 bytes>"`).
pub const MAX_VALUE_BYTES: usize = 512;
/// The most fields one entry records; past it the entry says how many more.
pub const MAX_CHANGES: usize = 64;
/// The most bytes of values one entry records (so the kept trail stays
/// under [`MAX_AUDIT_ENTRIES`] × 8 KiB of values); fields past it are named
/// without their values.
pub const MAX_ENTRY_VALUE_BYTES: usize = 8 * 1024;
/// The most ids one bulk import's entry lists (it always gives the count).
pub const MAX_LISTED_IDS: usize = 100;
/// Fields of an object's admin view that are never recorded, only named:
/// the visible start of a key's current and previous secret.
pub const REDACTED_FIELDS: &[&str] = &["prefix", "previous_prefix"];

/// Who asked for a change: the admin token and the connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditActor {
    /// The admin token's id (`tok_…`); `None` for the bootstrap token, which
    /// is configured on the nodes, not stored.
    pub token_id: Option<String>,
    /// The token's name (`bootstrap` for the bootstrap token).
    pub token_name: String,
    /// The client address of the admin request's connection (never a
    /// forwarded header), IPv4-mapped IPv6 shown as IPv4.
    pub source: String,
}

/// What the node that took an admin request adds to its command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    /// Who asked.
    pub actor: AuditActor,
    /// The request's method and route (`POST /v1/admin/keys/{id}/reroll`).
    pub request: String,
    /// The proposer's clock, ms since the Unix epoch.
    pub at_ms: i64,
}

/// What kind of change an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// An object was created.
    Create,
    /// An object was replaced (updated).
    Replace,
    /// An object was deleted.
    Delete,
    /// Objects were created in one bulk import.
    Import,
    /// A key got a new secret.
    Reroll,
    /// The identity signing key moved to its next version.
    RotateIdentityKey,
    /// A key's remaining quota was changed (UpdateUsage).
    AdjustUsage,
    /// A node joined the cluster (as a learner).
    AddNode,
    /// A learner became a voter.
    PromoteNode,
    /// A node left the cluster.
    RemoveNode,
}

impl AuditAction {
    /// Every action, for filters and documentation.
    pub const ALL: [AuditAction; 10] = [
        AuditAction::Create,
        AuditAction::Replace,
        AuditAction::Delete,
        AuditAction::Import,
        AuditAction::Reroll,
        AuditAction::RotateIdentityKey,
        AuditAction::AdjustUsage,
        AuditAction::AddNode,
        AuditAction::PromoteNode,
        AuditAction::RemoveNode,
    ];

    /// The name the admin API shows (`rotate_identity_key`).
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Replace => "replace",
            AuditAction::Delete => "delete",
            AuditAction::Import => "import",
            AuditAction::Reroll => "reroll",
            AuditAction::RotateIdentityKey => "rotate_identity_key",
            AuditAction::AdjustUsage => "adjust_usage",
            AuditAction::AddNode => "add_node",
            AuditAction::PromoteNode => "promote_node",
            AuditAction::RemoveNode => "remove_node",
        }
    }
}

/// One field that changed: its JSON value before and after (`None`: absent,
/// or not recorded because it is a secret's prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field of the object's admin view (`throttle`, `plan_ids`).
    pub field: String,
    /// The value before, as JSON text (cut to its size when long).
    pub before: Option<String>,
    /// The value after, as JSON text (cut to its size when long).
    pub after: Option<String>,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The Raft log index of the change: unique, increasing, and the order
    /// in which changes took effect.
    pub seq: u64,
    /// When it was asked for (the proposer's clock), ms since the Unix epoch.
    pub at_ms: i64,
    /// Who asked.
    pub actor: AuditActor,
    /// The request's method and route.
    pub request: String,
    /// What kind of change.
    pub action: AuditAction,
    /// The kind of object changed, when the change is to one kind.
    pub kind: Option<EntityKind>,
    /// The object changed (the node id for membership changes; the first id
    /// of an import).
    pub id: Option<String>,
    /// The fields that changed (all set fields on create, none on delete).
    pub changes: Vec<FieldChange>,
    /// Anything else worth knowing: how many objects an import created and
    /// their ids, how many fields were left out, a usage delta.
    pub note: Option<String>,
}

impl AuditEntry {
    /// When it was asked for, in whole seconds.
    pub fn at(&self) -> Timestamp {
        Timestamp(self.at_ms.div_euclid(1000))
    }
}

/// A JSON value as recorded: its text, or its size when longer than
/// [`MAX_VALUE_BYTES`].
pub fn recorded_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.len() > MAX_VALUE_BYTES {
        format!("\"<{} bytes>\"", text.len())
    } else {
        text
    }
}

/// The fields that differ between two admin views (JSON objects; `Null`
/// for an object that did not exist), in field order, with
/// [`REDACTED_FIELDS`] named but never recorded, `updated_at` left out (the
/// entry has its own time), at most [`MAX_ENTRY_VALUE_BYTES`] of values
/// (later fields are named without them), and at most [`MAX_CHANGES`]
/// fields: the answer's second value is how many more changed.
pub fn diff(before: &serde_json::Value, after: &serde_json::Value) -> (Vec<FieldChange>, usize) {
    let empty = serde_json::Map::new();
    let old = before.as_object().unwrap_or(&empty);
    let new = after.as_object().unwrap_or(&empty);
    let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
    fields.sort();
    fields.dedup();
    let mut changes = Vec::new();
    let mut more = 0;
    let mut budget = MAX_ENTRY_VALUE_BYTES;
    for field in fields {
        let (b, a) = (old.get(field.as_str()), new.get(field.as_str()));
        if b == a || field == "updated_at" || (b.is_none_or(|v| v.is_null()) && a.is_none_or(|v| v.is_null())) {
            continue;
        }
        if changes.len() == MAX_CHANGES {
            more += 1;
            continue;
        }
        let secret = REDACTED_FIELDS.contains(&field.as_str());
        let mut shown = |v: Option<&serde_json::Value>| {
            let text = v.filter(|v| !v.is_null() && !secret).map(recorded_value)?;
            // Past the entry's budget a value is left out (the field is named).
            budget = budget.checked_sub(text.len())?;
            Some(text)
        };
        let (before, after) = (shown(b), shown(a));
        changes.push(FieldChange { field: field.clone(), before, after });
    }
    (changes, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_field_once_and_never_records_a_prefix() {
        let before = json!({"id": "k", "name": "a", "prefix": "tgk_AAAA", "tags": {"t": "1"}, "updated_at": 1});
        let after = json!({"id": "k", "name": "b", "prefix": "tgk_BBBB", "enabled": false, "updated_at": 2});
        let (changes, more) = diff(&before, &after);
        assert_eq!(more, 0);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["enabled", "name", "prefix", "tags"]);
        let prefix = &changes[2];
        assert_eq!((prefix.before.as_deref(), prefix.after.as_deref()), (None, None));
        assert_eq!(changes[1].before.as_deref(), Some("\"a\""));
        assert_eq!(changes[1].after.as_deref(), Some("\"b\""));
        assert_eq!(changes[3].after, None);
        let text = serde_json::to_string(&changes).unwrap_or_default();
        assert!(!text.contains("AAAA") && !text.contains("BBBB"), "{text}");
    }

    #[test]
    fn long_values_are_recorded_as_their_size_and_many_fields_are_counted() {
        let long = "x".repeat(MAX_VALUE_BYTES + 10);
        let (changes, _) = diff(&serde_json::Value::Null, &json!({ "description": long }));
        assert_eq!(changes[0].after.as_deref(), Some(format!("\"<{} bytes>\"", MAX_VALUE_BYTES + 12).as_str()));
        let many: serde_json::Map<String, serde_json::Value> =
            (0..MAX_CHANGES + 5).map(|i| (format!("f{i:03}"), json!(i))).collect();
        let (changes, more) = diff(&json!({}), &serde_json::Value::Object(many));
        assert_eq!((changes.len(), more), (MAX_CHANGES, 5));
        // Many long values: the entry keeps to its budget, naming the rest.
        let long = "y".repeat(MAX_VALUE_BYTES - 10);
        let wide: serde_json::Map<String, serde_json::Value> =
            (0..40).map(|i| (format!("f{i:02}"), json!(long))).collect();
        let (changes, _) = diff(&json!({}), &serde_json::Value::Object(wide));
        let bytes: usize = changes.iter().filter_map(|c| c.after.as_ref()).map(String::len).sum();
        assert!(bytes <= MAX_ENTRY_VALUE_BYTES, "{bytes}");
        assert_eq!(changes.len(), 40);
        assert!(changes.last().is_some_and(|c| c.after.is_none()));
    }
}

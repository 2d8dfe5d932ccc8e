//! The payload of a Raft log entry, and the state machine's answer to it.
//!
//! Everything a command needs to be applied deterministically travels inside
//! it: ids and secret digests are made by the node that proposes, the time is
//! the proposer's clock. Applying the same log on any node gives the same state.

use serde::{Deserialize, Serialize};

use crate::model::{Entity, EntityKind, IdentityKeyState, SecretDigest, Timestamp};

/// What a Raft log entry carries: a command and the id of the request that
/// proposed it. The state machine answers a request id it has seen recently
/// with the answer it gave then, without applying the command again, so a
/// proposal retried after a leader change (or a client retry with the same
/// `Idempotency-Key`) takes effect at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: u128,
    pub command: Command,
}

/// A change to the replicated model.
// One command is made per admin write; moving a few hundred bytes is nothing
// next to the Raft round trip, and boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create an object (refused if the id exists) or replace one (refused if it
    /// does not). On replace the state machine keeps `created_at` and, for keys
    /// and tokens, the secret digest of the stored object.
    Put { entity: Entity, mode: PutMode, now: Timestamp },
    /// Remove an object; refused while other objects refer to it.
    Delete { kind: EntityKind, id: String },
    /// Give a key a new secret; the current one keeps working until
    /// `overlap_until` (not at all if that is not after `now`).
    RerollKey { id: String, secret: SecretDigest, overlap_until: Timestamp, now: Timestamp },
    /// Move identity signing to the next key version (the previous one stays
    /// in the JWKS so tokens already issued still verify).
    RotateIdentityKey { now: Timestamp },
    /// Metering (see `QuotaLedger`): a lease holder (a node process) asks
    /// for up to `want` units of a key's quota for a period, held until
    /// `lease_until_ms`. Times are the proposer's clock, in ms.
    QuotaGrant { period: QuotaPeriod, holder: u64, want: u64, lease_until_ms: i64, now_ms: i64 },
    /// A node reports what its lease holders used, in one batch for many
    /// keys; with `release` a holder hands the rest of its grant back.
    QuotaReport { usage: Vec<QuotaUsage>, now_ms: i64 },
    /// An operator adds to (positive) or takes from (negative) what the key may
    /// still use this period (UpdateUsage).
    QuotaAdjust { period: QuotaPeriod, delta: i64, now_ms: i64 },
}

/// One key's quota in one plan for one period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaPeriod {
    pub key_id: String,
    pub plan_id: String,
    /// Start of the period, ms since the epoch (UTC).
    pub start_ms: i64,
}

/// One entry of a [`Command::QuotaReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    pub period: QuotaPeriod,
    pub holder: u64,
    /// The grant the use came from ([`crate::metering::Grant::generation`];
    /// 0: whichever the holder has now).
    pub generation: u64,
    pub used: u64,
    pub release: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    Create,
    Replace,
}

/// What applying a command gave: the stored object, or a business rejection.
pub type CommandResult = Result<Applied, Rejection>;

#[allow(clippy::large_enum_variant)] // see `Command`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    Put(Entity),
    Deleted,
    IdentityKey(IdentityKeyState),
    /// The ledger after a metering command, and the units granted by it.
    Quota {
        granted: u64,
        ledger: crate::metering::QuotaLedger,
    },
    /// Entries that carry no command (blank entries, membership changes).
    Nothing,
}

/// Why the state machine refused a command. This is an answer, not a failure:
/// the log entry is applied (as a no-op) and the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    /// Unknown id: the admin API answers 404.
    NotFound,
    /// The change clashes with the current state: 409.
    Conflict,
    /// A reference to something that does not exist, or a bad value: 400.
    Invalid,
}

impl Rejection {
    pub fn not_found(kind: EntityKind, id: &str) -> Self {
        Rejection { kind: RejectionKind::NotFound, field: None, message: format!("no {} with id {id:?}", kind.noun()) }
    }

    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Conflict, field: field.map(str::to_string), message: message.into() }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Invalid, field: Some(field.to_string()), message: message.into() }
    }
}

//! The payload of a Raft log entry, and the state machine's answer to it.
//!
//! Everything a command needs to be applied deterministically travels inside
//! it: ids and secret digests are made by the node that proposes, the time is
//! the proposer's clock. Applying the same log on any node gives the same state.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditAction, AuditContext};
use crate::model::{Entity, EntityKind, IdentityKeyState, SecretDigest, Timestamp};

/// What a Raft log entry carries: a command and the id of the request that
/// proposed it. The state machine answers a request id it has seen recently
/// with the answer it gave then, without applying the command again, so a
/// proposal retried after a leader change (or a client retry with the same
/// `Idempotency-Key`) takes effect at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The id of the admin request (with an `Idempotency-Key`: made from the
    /// SHA-256 of the key, its method and path, and that of its body; else
    /// random)
    /// or of the node's own metering request: the key the state machine
    /// remembers answers by.
    pub request_id: u128,
    /// The change to apply.
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
    Put {
        /// The object, whole, as the admin API validated it.
        entity: Entity,
        /// Create or replace.
        mode: PutMode,
        /// The proposer's clock: `created_at` (on create) and `updated_at`.
        now: Timestamp,
    },
    /// Create many objects at once (a bulk import), all or none: refused
    /// whole, naming the item (`items[3].plan_ids`), if any one would be
    /// refused as a [`Command::Put`] create. At most [`MAX_CREATE_MANY`].
    CreateMany {
        /// The objects, whole, as the admin API validated them.
        entities: Vec<Entity>,
        /// The proposer's clock: every object's `created_at` and `updated_at`.
        now: Timestamp,
    },
    /// Remove an object; refused while other objects refer to it.
    Delete {
        /// Which kind of object.
        kind: EntityKind,
        /// Its id.
        id: String,
    },
    /// Give a key a new secret; the current one keeps working until
    /// `overlap_until` (not at all if that is not after `now`).
    RerollKey {
        /// The key's id.
        id: String,
        /// The SHA-256 digest of the new secret (the secret itself is never
        /// in the log).
        secret: SecretDigest,
        /// Until when the current secret keeps working.
        overlap_until: Timestamp,
        /// The proposer's clock: the key's `updated_at`.
        now: Timestamp,
    },
    /// Move identity signing to the next key version (the previous one stays
    /// in the JWKS so tokens already issued still verify).
    RotateIdentityKey {
        /// The proposer's clock: the new key's `rotated_at`.
        now: Timestamp,
    },
    /// Metering (see `QuotaLedger`): a lease holder (a node process) asks
    /// for up to `want` units of a key's quota for a period, held until
    /// `lease_until_ms`. Times are the proposer's clock, in ms.
    QuotaGrant {
        /// Whose quota, in which period.
        period: QuotaPeriod,
        /// The lease holder asking ([`crate::metering::holder_node`]).
        holder: u64,
        /// Units asked for; fewer (or none) are granted near the limit.
        want: u64,
        /// When the grant lapses unless renewed, ms since the Unix epoch.
        lease_until_ms: i64,
        /// The proposer's clock, ms since the Unix epoch: grants that ran
        /// out by then are expired first.
        now_ms: i64,
    },
    /// Metering, many keys at once: a node renews (or opens) its lease
    /// session until `until_ms` and asks for grants under it, in one entry.
    /// Every grant made under a session lives as long as the session does
    /// (`tollgate_proto::metering::Sessions`), so a node renews what it
    /// holds for any number of keys with one command, even with no asks.
    /// A session that ended is never renewed: the whole command is refused
    /// and the node opens a new session.
    QuotaLease {
        /// The node's session id: its node id in the high 32 bits, random
        /// low bits, drawn anew whenever a session ends.
        session: u64,
        /// The session's new end, ms since the Unix epoch.
        until_ms: i64,
        /// Grants wanted, each for one (key, plan, period) and lease holder;
        /// at most [`MAX_LEASE_ASKS`].
        asks: Vec<LeaseAsk>,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: i64,
    },
    /// A node reports what its lease holders used, in one batch for many
    /// keys; with `release` a holder hands the rest of its grant back.
    QuotaReport {
        /// One entry per (key, plan, period, holder) with use to report.
        usage: Vec<QuotaUsage>,
        /// The proposer's clock, ms since the Unix epoch: the day the use
        /// counts in.
        now_ms: i64,
    },
    /// An operator adds to (positive) or takes from (negative) what the key may
    /// still use this period (UpdateUsage).
    QuotaAdjust {
        /// Whose quota, in which period.
        period: QuotaPeriod,
        /// Units added to the period's limit (negative: taken away); not 0,
        /// at most [`crate::metering::MAX_ADJUST_DELTA`] either way.
        delta: i64,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: i64,
    },
    /// An admin change with who asked for it (see [`crate::audit`]): the
    /// state machine applies `command` as if it came alone and, when it takes
    /// effect, records an audit entry in the same batch. `command` is never
    /// itself `Audited` or an `AuditNote` (refused as invalid if it is).
    Audited {
        /// Who asked, from where, through which route, when.
        context: AuditContext,
        /// The change.
        command: Box<Command>,
    },
    /// An admin change made outside the model (a membership change), recorded
    /// once it took effect: only an audit entry is written.
    AuditNote {
        /// Who asked, from where, through which route, when.
        context: AuditContext,
        /// What was done.
        action: AuditAction,
        /// What it was done to (a node id).
        id: Option<String>,
        /// Anything else worth knowing (a node's addresses).
        note: Option<String>,
    },
}

impl Command {
    /// `command` wrapped with who asked for it ([`Command::Audited`]).
    pub fn audited(self, context: AuditContext) -> Command {
        Command::Audited { context, command: Box::new(self) }
    }
}

/// One key's quota in one plan for one period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaPeriod {
    /// The API key's id.
    pub key_id: String,
    /// The usage plan whose quota this is.
    pub plan_id: String,
    /// Start of the period, ms since the epoch (UTC).
    pub start_ms: i64,
}

/// The most objects one [`Command::CreateMany`] creates.
pub const MAX_CREATE_MANY: usize = 1000;

/// The most asks one [`Command::QuotaLease`] carries.
pub const MAX_LEASE_ASKS: usize = 4096;

/// One grant asked for in a [`Command::QuotaLease`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    /// Whose quota, in which period.
    pub period: QuotaPeriod,
    /// The lease holder asking ([`crate::metering::holder_node`]).
    pub holder: u64,
    /// Units asked for; fewer (or none) are granted near the limit.
    pub want: u64,
}

/// One entry of a [`Command::QuotaReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// Whose quota, in which period.
    pub period: QuotaPeriod,
    /// The lease holder that used it ([`crate::metering::holder_node`]).
    pub holder: u64,
    /// The grant the use came from ([`crate::metering::Grant::generation`];
    /// 0: whichever the holder has now).
    pub generation: u64,
    /// Units admitted from that grant since the holder's last report.
    pub used: u64,
    /// The holder's closing report on that grant: it hands back the units it
    /// did not use and admits no more from it.
    pub release: bool,
}

/// Whether a [`Command::Put`] creates an object or replaces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    /// Create: refused with a conflict if the id is taken.
    Create,
    /// Replace: refused as not found if there is no object with the id.
    Replace,
}

/// What applying a command gave: the stored object, or a business rejection.
pub type CommandResult = Result<Applied, Rejection>;

/// What a command did, when the state machine accepted it.
#[allow(clippy::large_enum_variant)] // see `Command`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// The object as stored (with its timestamps and, for keys and tokens, the
    /// stored secret digest).
    Put(Entity),
    /// A [`Command::CreateMany`] created its objects, as proposed (stamped
    /// with the command's `now`). Only their number and the first id are
    /// kept, so the answer remembered for retries stays small; the first id
    /// tells a retry of this very request from another one.
    CreatedMany {
        /// Objects created.
        count: u64,
        /// The id of the first, if any.
        first_id: Option<String>,
    },
    /// The object was removed.
    Deleted,
    /// The identity signing key after a rotation.
    IdentityKey(IdentityKeyState),
    /// The ledger after a metering command, and the units granted by it.
    Quota {
        /// Units granted by a [`Command::QuotaGrant`] (0 when none are left,
        /// and for other commands).
        granted: u64,
        /// The ledger of the command's (key, plan, period) afterwards.
        ledger: crate::metering::QuotaLedger,
    },
    /// A [`Command::QuotaLease`] applied: the session's end and, per ask in
    /// order, its answer (an [`Applied::Quota`], or why it was refused: a key
    /// deleted, a plan without a quota).
    Lease {
        /// When the session now ends, ms since the Unix epoch.
        until_ms: i64,
        /// One answer per ask, in the order asked.
        grants: Vec<CommandResult>,
    },
    /// Entries that carry no command (blank entries, membership changes).
    Nothing,
}

/// Why the state machine refused a command. This is an answer, not a failure:
/// the log entry is applied (as a no-op) and the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Which kind of refusal: sets the admin API's status.
    pub kind: RejectionKind,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong and how to fix it, for the operator.
    pub message: String,
}

/// The kind of a [`Rejection`], each mapped to one HTTP status by the admin
/// API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    /// Unknown id: the admin API answers 404.
    NotFound,
    /// The change clashes with the current state: 409.
    Conflict,
    /// A reference to something that does not exist, or a bad value: 400.
    Invalid,
    /// An `Idempotency-Key` already used for another request (another
    /// body to the same route): 422, and nothing is done.
    IdempotencyKeyReused,
}

impl Rejection {
    /// `no {kind} with id {id}`: no object of `kind` has this id (404).
    pub fn not_found(kind: EntityKind, id: &str) -> Self {
        Rejection { kind: RejectionKind::NotFound, field: None, message: format!("no {} with id {id:?}", kind.noun()) }
    }

    /// A clash with the current state (409), naming `field` when one is at fault.
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Conflict, field: field.map(str::to_string), message: message.into() }
    }

    /// A bad value or a reference to something that does not exist (400),
    /// naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Invalid, field: Some(field.to_string()), message: message.into() }
    }
}

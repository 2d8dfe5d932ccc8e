//! The free-space guard: writes are refused (507 Insufficient Storage)
//! *before* the data dir's filesystem is full, because a full disk makes sled
//! fail a Raft append, and openraft stops for good on a storage error.
//!
//! A background task ([`watch`]) measures the free
//! space of the data dir's filesystem (statvfs, via `fs2`) every
//! [`DISK_POLL`], never on a request, and feeds it to [`DiskGuard::observe`].
//! The guard turns on below `--min-free-disk-mb` and off again only once
//! [`resume_free_mb`] is free (hysteresis: a disk hovering at the line does
//! not flap).
//!
//! The guard is cluster-wide, as etcd's NOSPACE alarm: every entry reaches
//! every member, so a follower whose disk is nearly full is as endangered as
//! the leader. A node whose guard is on tells the leader (peer route
//! `/cluster/disk`) on every poll; the leader refuses client writes while its
//! own guard, or any member's fresh report ([`REPORT_TTL`]), says so. The
//! state is not replicated through the log (that would need disk space on
//! the very node that has none, and a node that died low would hold the
//! cluster until an operator cleared it): a new leader learns it from the
//! next report, within one poll.
//!
//! What passes the guard ([`passes_guard`]): the metering ledger entries
//! (quota grants and usage reports). They are small and bounded by the
//! number of keys in use, the space kept free is there for them, and they
//! are what keeps quota keys being admitted exactly (invariant Q holds either
//! way: the state machine refuses any grant past the limit). Membership
//! changes pass too: adding a node with room, or removing a broken one, may
//! be the way out. Everything an admin writes (objects, key rerolls, identity
//! key rotation, usage adjustments) is refused.
//!
//! The guard does no I/O itself; it never blocks and holds its lock only
//! for a map update. [`watch`] measures on a blocking thread, off the
//! request path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tollgate_proto::Command;

use super::leader::Leader;
use super::network::CallError;
use super::{peer, NodeId};

/// How often the free space of the data dir is measured.
pub const DISK_POLL: Duration = Duration::from_millis(500);
/// How long the leader trusts a member's report that its guard is on: a
/// member that stops reporting (dead, or cleared) stops holding writes.
pub const REPORT_TTL: Duration = Duration::from_secs(3);
/// Bytes in a MiB.
const MIB: u64 = 1 << 20;

/// Free MiB at which a guard that is on turns off again: the minimum plus a
/// tenth of it (at least 1 MiB), so a disk at the line does not flap.
pub fn resume_free_mb(min_free_mb: u64) -> u64 {
    min_free_mb.saturating_add((min_free_mb / 10).max(1))
}

/// Whether the guard is on after measuring `free_mb`, given whether it was
/// on before: on below `min_free_mb`, off at [`resume_free_mb`] or more, as
/// it was in between. A minimum of 0 turns the guard off for good.
pub fn next_low(was_low: bool, free_mb: u64, min_free_mb: u64) -> bool {
    if min_free_mb == 0 {
        false
    } else if free_mb < min_free_mb {
        true
    } else if free_mb >= resume_free_mb(min_free_mb) {
        false
    } else {
        was_low
    }
}

/// Whether a command may be written while the guard is on (see the module
/// docs): only the metering ledger's own entries.
pub fn passes_guard(command: &Command) -> bool {
    match command {
        Command::QuotaGrant { .. } | Command::QuotaLease { .. } | Command::QuotaReport { .. } => true,
        Command::Put { .. }
        | Command::CreateMany { .. }
        | Command::Delete { .. }
        | Command::RerollKey { .. }
        | Command::RotateIdentityKey { .. }
        | Command::QuotaAdjust { .. }
        | Command::AuditNote { .. } => false,
        Command::Audited { command, .. } => passes_guard(command),
    }
}

/// A node that is short of disk space: why writes are refused. Sent between
/// nodes (a member's report to the leader, and the leader's refusal of a
/// forwarded write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowDisk {
    /// The node that is short of space.
    pub node: NodeId,
    /// MiB free for that node's data (available to it, as `df` shows).
    pub free_mb: u64,
    /// Its `--min-free-disk-mb`.
    pub min_free_mb: u64,
}

impl std::fmt::Display for LowDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} has {} MiB free on its data dir's filesystem, below its minimum of {} MiB \
             (--min-free-disk-mb): writes are refused until it has {} MiB free; checks are still answered",
            self.node,
            self.free_mb,
            self.min_free_mb,
            resume_free_mb(self.min_free_mb)
        )
    }
}

/// A member's guard state, as it last reported it to this node (the leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskReport {
    pub node: NodeId,
    /// `Some` while its guard is on.
    pub low: Option<LowDisk>,
}

/// This node's guard, and (on the leader) what the members reported.
pub struct DiskGuard {
    node: NodeId,
    /// `--min-free-disk-mb`; 0: no guard.
    min_free_mb: u64,
    /// The guard is on here.
    low: AtomicBool,
    /// Free MiB at the last measurement (`u64::MAX` before the first).
    free_mb: AtomicU64,
    /// Members whose guard is on, by the time their report came in.
    reports: Mutex<HashMap<NodeId, (LowDisk, Instant)>>,
}

impl DiskGuard {
    /// A guard for `node` that turns on below `min_free_mb` MiB (0: never).
    pub fn new(node: NodeId, min_free_mb: u64) -> Self {
        DiskGuard {
            node,
            min_free_mb,
            low: AtomicBool::new(false),
            free_mb: AtomicU64::new(u64::MAX),
            reports: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the guard measures anything at all.
    pub fn enabled(&self) -> bool {
        self.min_free_mb > 0
    }

    /// Takes a measurement of the bytes available to this node's data;
    /// returns the guard's state before and after (on: `true`).
    pub fn observe(&self, available_bytes: u64) -> (bool, bool) {
        let free_mb = available_bytes / MIB;
        self.free_mb.store(free_mb, Ordering::Relaxed);
        let before = self.low.load(Ordering::Relaxed);
        let after = next_low(before, free_mb, self.min_free_mb);
        self.low.store(after, Ordering::Relaxed);
        (before, after)
    }

    /// This node's own guard, if it is on.
    pub fn own(&self) -> Option<LowDisk> {
        self.low.load(Ordering::Relaxed).then(|| LowDisk {
            node: self.node,
            free_mb: self.free_mb.load(Ordering::Relaxed),
            min_free_mb: self.min_free_mb,
        })
    }

    /// Records a member's report (on the leader; kept by any node, harmless).
    pub fn record(&self, report: DiskReport, now: Instant) {
        let mut reports = self.reports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match report.low {
            Some(low) => {
                reports.insert(report.node, (low, now));
            }
            None => {
                reports.remove(&report.node);
            }
        }
    }

    /// Why client writes must be refused now, if they must: this node's
    /// guard, or a fresh report of one of `members`.
    pub fn refusing(&self, members: impl IntoIterator<Item = NodeId>, now: Instant) -> Option<LowDisk> {
        if let Some(own) = self.own() {
            return Some(own);
        }
        let reports = self.reports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        members.into_iter().filter(|id| *id != self.node).find_map(|id| {
            reports
                .get(&id)
                .filter(|(_, at)| now.saturating_duration_since(*at) <= REPORT_TTL)
                .map(|(low, _)| low.clone())
        })
    }
}

/// Where [`watch`] shows what it measured (see `crate::metrics`).
pub struct DiskGauges {
    /// Bytes available to this node on its data dir's filesystem.
    pub available_bytes: IntGauge,
    /// 1 while this node's guard is on.
    pub guard: IntGauge,
}

/// Measures the free space of `data_dir`'s filesystem every [`DISK_POLL`]
/// (off the request path, on a blocking thread) until `stop`; while this
/// node's guard is on, and once as it clears, tells the leader. Does nothing
/// if the guard is off (`--min-free-disk-mb 0`).
pub async fn watch(
    guard: Arc<DiskGuard>,
    leader: Leader,
    data_dir: PathBuf,
    gauges: DiskGauges,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !guard.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(DISK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let dir = data_dir.clone();
        let measured = tokio::task::spawn_blocking(move || fs2::available_space(&dir)).await;
        let available = match measured {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::warn!(dir = %data_dir.display(), error = %e, "cannot measure free disk space");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the free-space measurement failed");
                continue;
            }
        };
        gauges.available_bytes.set(i64::try_from(available).unwrap_or(i64::MAX));
        let (was_low, low) = guard.observe(available);
        gauges.guard.set(i64::from(low));
        match (was_low, low) {
            (false, true) => {
                if let Some(low) = guard.own() {
                    tracing::error!(%low, "disk space low: the cluster refuses writes until space is freed");
                }
            }
            (true, false) => {
                tracing::warn!(free_mb = available >> 20, "disk space back: writes are accepted again")
            }
            _ => {}
        }
        if low || was_low {
            report(&guard, &leader).await;
        }
    }
}

/// Tells the leader this node's guard state (unless this node leads).
async fn report(guard: &DiskGuard, leader: &Leader) {
    let report = DiskReport { node: guard.node, low: guard.own() };
    let told: Option<Result<(), CallError>> = leader.send_to_leader(peer::DISK, &report, DISK_POLL).await;
    if let Some(Err(e)) = told {
        tracing::debug!(error = %e, "could not tell the leader this node's disk state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_turns_on_below_the_minimum_and_off_only_with_room_to_spare() {
        // Minimum 100 MiB: on below 100, off again at 110.
        assert_eq!(resume_free_mb(100), 110);
        assert!(!next_low(false, 100, 100), "at the minimum: still off");
        assert!(next_low(false, 99, 100), "below: on");
        assert!(next_low(true, 100, 100), "back at the minimum: stays on");
        assert!(next_low(true, 109, 100), "short of the resume line: stays on");
        assert!(!next_low(true, 110, 100), "at the resume line: off");
        assert!(!next_low(false, 105, 100), "between, coming from off: stays off");
        // A small minimum still has a margin; 0 is no guard.
        assert_eq!(resume_free_mb(5), 6);
        assert!(!next_low(true, 0, 0));
        assert_eq!(resume_free_mb(u64::MAX), u64::MAX, "no overflow");

        let guard = DiskGuard::new(2, 8);
        assert_eq!(guard.observe(u64::MAX), (false, false));
        assert_eq!(guard.observe(7 * MIB + MIB / 2), (false, true), "7.5 MiB is below 8");
        assert_eq!(guard.own(), Some(LowDisk { node: 2, free_mb: 7, min_free_mb: 8 }));
        assert_eq!(guard.observe(8 * MIB), (true, true));
        assert_eq!(guard.observe(9 * MIB), (true, false));
        assert_eq!(guard.own(), None);
    }

    #[test]
    fn the_leader_refuses_while_a_member_reports_low_and_forgets_a_silent_one() {
        let leader = DiskGuard::new(1, 8);
        leader.observe(100 * MIB);
        let start = Instant::now();
        assert_eq!(leader.refusing([1, 2, 3], start), None);
        let low = LowDisk { node: 3, free_mb: 4, min_free_mb: 8 };
        leader.record(DiskReport { node: 3, low: Some(low.clone()) }, start);
        assert_eq!(leader.refusing([1, 2, 3], start), Some(low.clone()));
        assert_eq!(leader.refusing([1, 2], start), None, "not a member (any more)");
        assert_eq!(leader.refusing([1, 2, 3], start + REPORT_TTL + Duration::from_millis(1)), None, "silent");
        leader.record(DiskReport { node: 3, low: None }, start);
        assert_eq!(leader.refusing([1, 2, 3], start), None, "cleared");
        assert!(low.to_string().contains("node 3 has 4 MiB free") && low.to_string().contains("minimum of 8 MiB"));
    }

    #[test]
    fn only_ledger_entries_pass_the_guard() {
        let report = Command::QuotaReport { usage: Vec::new(), now_ms: 0 };
        assert!(passes_guard(&report));
        let rotate = Command::RotateIdentityKey { now: tollgate_proto::model::Timestamp(0) };
        assert!(!passes_guard(&rotate));
    }
}

//! Histories of a cluster under faults, and the checker that judges them.
//!
//! A history is every operation a client sent, with when it was sent and
//! answered (µs on the client's monotonic clock, so node clock shifts never
//! touch it) and what came back: a check's decision, an admin write's
//! acknowledgement, an admin read's value, a key's usage. The checker is a
//! pure function of the history, the fault log and the run's parameters; it
//! does no I/O, so it is unit-tested below on hand-made histories that break
//! each property (a checker that cannot fail proves nothing).
//!
//! The properties (README, "Guarantees and how they are tested"):
//! - **Q**: per key, checks answered `allowed` <= the key's quota.
//! - **U**: per key, settled usage >= checks answered `allowed`, and
//!   <= allowed + unanswered checks (each may have been admitted) + the
//!   over-count crashes allow ([`Params::overcount_per_crash`] for each
//!   kill -9, clock shifts included; a partition allows none: the cut
//!   node's closing reports make usage exact once it heals).
//! - **No acknowledged write lost**: after the run every node, read
//!   linearizably, shows each acknowledged object at its last value.
//! - **Reads see acknowledged writes**: a linearizable read sent after a
//!   write was acknowledged sees that write or a later one.
//!
//! Nothing here knows about processes or HTTP: `chaos.rs` records histories
//! against real nodes, and this file also holds the seeded fault schedule so a
//! seed always gives the same faults in the same order.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;

/// When an operation was sent and when its answer (or its failure) came, in
/// µs since the run started. An operation never answered ends at `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub invoked_us: u64,
    pub completed_us: u64,
}

/// What a check got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckAnswer {
    Allowed,
    /// Refused, with the decision's reason (`quota_exceeded`, ...).
    Denied(String),
    /// No decision came (connection refused or cut, timeout): the node may
    /// or may not have admitted it.
    Unknown(String),
}

/// What an admin write got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// 2xx: the write is committed.
    Ok,
    /// 4xx: refused before it changed anything.
    Failed(String),
    /// 5xx or no answer: it may or may not have been committed.
    Unknown(String),
}

/// What a linearizable admin read of an object got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadAnswer {
    Value(String),
    /// 404: the object does not exist.
    Missing,
    /// No answer, or an error status: says nothing.
    Unknown(String),
}

/// Whether an operation ran while faults were injected or in the final
/// verification after everything was healed and restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Run,
    Final,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /v1/check` with quota key number `key`.
    Check { worker: u32, node: u64, key: usize, span: Span, answer: CheckAnswer },
    /// An admin write that sets `object` (a key id) to `value` (its unique
    /// name); the key's creation is its first write.
    Write { worker: u32, node: u64, object: String, value: String, span: Span, ack: Ack },
    /// A linearizable admin read of `object`.
    Read { worker: u32, node: u64, object: String, span: Span, answer: ReadAnswer, phase: Phase },
    /// Quota key `key`'s usage this period, read once no grant is held.
    Usage { node: u64, key: usize, span: Span, used: u64 },
}

/// What a fault did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9, restarted later.
    Kill,
    /// Every peer link of the node cut both ways, healed later.
    Partition,
    /// kill -9 and a restart with another `--clock-offset-ms`.
    ClockShift,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill -9",
            FaultKind::Partition => "partition",
            FaultKind::ClockShift => "clock shift",
        })
    }
}

/// A fault as injected: which node, from when until it was undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub node: u64,
    pub span: Span,
    /// For a clock shift, the node's new offset.
    pub clock_offset_ms: i64,
}

/// A fault the schedule asks for: after `gap_ms` of calm, `kind` on `node`
/// for `hold_ms`, then undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    pub gap_ms: u64,
    pub kind: FaultKind,
    pub node: u64,
    pub hold_ms: u64,
    /// For a clock shift: the change to the node's clock, within
    /// ±[`MAX_CLOCK_SHIFT_MS`].
    pub shift_ms: i64,
}

/// The largest clock shift a fault applies (the quota period must not roll
/// meanwhile: the run keeps node clocks near noon).
pub const MAX_CLOCK_SHIFT_MS: i64 = 3_000;

/// A seeded generator for fault plans and client histories: the same seed,
/// the same numbers (rand's `StdRng`, fixed by Cargo.lock).
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        rand::Rng::gen_range(&mut self.0, 0..bound.max(1))
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// The faults of a run of `run_ms` over nodes `1..=nodes`, one at a time, a
/// pure function of `seed`: calm of 0.5-2 s, then a kill, partition or clock
/// shift of one node for 1-3 s. Kinds come in rounds of three, each kind
/// once per round in a random order, so even a short run has every kind.
/// The plan covers the run; the injector stops starting faults once the run
/// is over.
pub fn fault_schedule(seed: u64, run_ms: u64, nodes: u64) -> Vec<PlannedFault> {
    let mut rng = Rng::new(seed);
    let mut plan = Vec::new();
    let mut round = Vec::new();
    let mut at = 0;
    while at < run_ms {
        let gap_ms = rng.between(500, 2_000);
        if round.is_empty() {
            round = vec![FaultKind::Kill, FaultKind::Partition, FaultKind::ClockShift];
        }
        let kind = round.swap_remove(rng.below(round.len() as u64) as usize);
        let node = 1 + rng.below(nodes);
        let hold_ms = rng.between(1_000, 3_000);
        let shift_ms = rng.between(0, 2 * MAX_CLOCK_SHIFT_MS as u64) as i64 - MAX_CLOCK_SHIFT_MS;
        plan.push(PlannedFault { gap_ms, kind, node, hold_ms, shift_ms });
        at += gap_ms + hold_ms;
    }
    plan
}

/// What the checker needs to know besides the history.
#[derive(Clone, Debug)]
pub struct Params {
    /// Each quota key's limit for the period (it never changes in a run).
    pub limits: Vec<u64>,
    /// The most one fault may add to a key's usage beyond what was admitted
    /// (units of grants stranded by it: see `chaos.rs` for the derivation).
    pub overcount_per_crash: u64,
    /// Nodes whose final reads must show every acknowledged write.
    pub nodes: Vec<u64>,
}

/// Which property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    /// More admitted than the quota.
    Q,
    /// Usage below what was admitted.
    UnderCount,
    /// Usage above what was admitted by more than unknowns and faults allow.
    OverCount,
    /// Usage never read back for a key, or nodes disagreeing on it.
    UsageUnread,
    /// An acknowledged write missing after the run.
    LostWrite,
    /// A read older than a write acknowledged before it was sent, or a value
    /// nobody wrote.
    StaleRead,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Property::Q => "Q (admitted <= quota)",
            Property::UnderCount => "U (usage >= admitted)",
            Property::OverCount => "U (usage <= admitted + unknown + crashed holders' grants)",
            Property::UsageUnread => "usage read back on every node, equal",
            Property::LostWrite => "no acknowledged write lost",
            Property::StaleRead => "reads see acknowledged writes",
        })
    }
}

/// One broken property, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: Property,
    pub detail: String,
}

/// Per quota key: what the checks got and what usage said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFigures {
    pub limit: u64,
    pub allowed: u64,
    pub denied: u64,
    pub unknown: u64,
    /// Settled usage, as every node read it (equal, or a violation).
    pub used: Option<u64>,
}

/// The checker's verdict and the run's figures.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub keys: Vec<KeyFigures>,
    /// Denied checks by reason.
    pub denied_by_reason: BTreeMap<String, u64>,
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub writes_unknown: u64,
    /// Reads that answered (and so were checked), during the run and after.
    pub reads_checked: u64,
    pub final_reads_checked: u64,
    pub reads_unanswered: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    /// Over-count allowed per key: crashes x [`Params::overcount_per_crash`].
    pub overcount_allowed: u64,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn checks(&self) -> (u64, u64, u64) {
        self.keys.iter().fold((0, 0, 0), |(a, d, u), k| (a + k.allowed, d + k.denied, u + k.unknown))
    }

    /// Violations of one property.
    pub fn count(&self, property: Property) -> usize {
        self.violations.iter().filter(|v| v.property == property).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let total: u64 = self.faults.values().sum();
        writeln!(f, "faults injected: {total} ({})", faults.join(", "))?;
        let (allowed, denied, unknown) = self.checks();
        let reasons: Vec<String> = self.denied_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(
            f,
            "checks recorded: {} (allowed {allowed}, denied {denied} [{}], unknown {unknown})",
            allowed + denied + unknown,
            reasons.join(", ")
        )?;
        for (i, k) in self.keys.iter().enumerate() {
            let used = k.used.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "  key {i}: quota {}, allowed {}, unknown {}, settled usage {used} (over-count allowed {})",
                k.limit, k.allowed, k.unknown, self.overcount_allowed
            )?;
        }
        writeln!(
            f,
            "admin writes: {} (acked {}, failed {}, unknown {})",
            self.writes_acked + self.writes_failed + self.writes_unknown,
            self.writes_acked,
            self.writes_failed,
            self.writes_unknown
        )?;
        writeln!(
            f,
            "reads checked: {} during the run ({} unanswered), {} after it",
            self.reads_checked, self.reads_unanswered, self.final_reads_checked
        )?;
        for property in [
            Property::Q,
            Property::UnderCount,
            Property::OverCount,
            Property::UsageUnread,
            Property::LostWrite,
            Property::StaleRead,
        ] {
            writeln!(f, "violations of {property}: {}", self.count(property))?;
        }
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {}: {}", v.property, v.detail)?;
        }
        Ok(())
    }
}

/// Judges a history: the figures, and every violation of Q, U, lost writes
/// and stale reads.
pub fn check(history: &[Op], faults: &[FaultRecord], params: &Params) -> Report {
    let mut report = Report::default();
    for fault in faults {
        *report.faults.entry(fault.kind).or_insert(0) += 1;
    }
    let crashes = faults.iter().filter(|f| f.kind != FaultKind::Partition).count() as u64;
    report.overcount_allowed = crashes * params.overcount_per_crash;
    check_quotas(history, params, &mut report);
    check_registers(history, params, &mut report);
    report
}

/// Q and U, per quota key.
fn check_quotas(history: &[Op], params: &Params, report: &mut Report) {
    report.keys = params.limits.iter().map(|&limit| KeyFigures { limit, ..KeyFigures::default() }).collect();
    let mut usage: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); params.limits.len()];
    for op in history {
        match op {
            Op::Check { key, answer, .. } => {
                let Some(k) = report.keys.get_mut(*key) else { continue };
                match answer {
                    CheckAnswer::Allowed => k.allowed += 1,
                    CheckAnswer::Denied(reason) => {
                        k.denied += 1;
                        *report.denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
                    }
                    CheckAnswer::Unknown(_) => k.unknown += 1,
                }
            }
            Op::Usage { node, key, used, .. } => {
                if let Some(u) = usage.get_mut(*key) {
                    u.insert(*node, *used);
                }
            }
            _ => {}
        }
    }
    for (i, (k, seen)) in report.keys.iter_mut().zip(&usage).enumerate() {
        if k.allowed > k.limit {
            report.violations.push(Violation {
                property: Property::Q,
                detail: format!("key {i}: {} checks answered allowed, quota {}", k.allowed, k.limit),
            });
        }
        let missing: Vec<u64> = params.nodes.iter().copied().filter(|n| !seen.contains_key(n)).collect();
        let mut values: Vec<u64> = seen.values().copied().collect();
        values.sort_unstable();
        values.dedup();
        if !missing.is_empty() || values.len() != 1 {
            report.violations.push(Violation {
                property: Property::UsageUnread,
                detail: format!("key {i}: settled usage by node {seen:?}, none from nodes {missing:?}"),
            });
        }
        let Some(&used) = values.iter().min() else { continue };
        k.used = Some(used);
        let most = values.iter().copied().max().unwrap_or(used);
        if used < k.allowed {
            report.violations.push(Violation {
                property: Property::UnderCount,
                detail: format!("key {i}: usage {used} < {} checks answered allowed", k.allowed),
            });
        }
        let bound = k.allowed + k.unknown + report.overcount_allowed;
        if most > bound {
            report.violations.push(Violation {
                property: Property::OverCount,
                detail: format!(
                    "key {i}: usage {most} > allowed {} + unknown {} + crashed holders' grants {}",
                    k.allowed, k.unknown, report.overcount_allowed
                ),
            });
        }
    }
}

/// One write as the register check sees it.
struct WriteView<'a> {
    value: &'a str,
    span: Span,
    ack: &'a Ack,
}

/// Lost writes and stale reads: every object is a register written with
/// unique values (a key's name), so a value read names the write it came
/// from.
///
/// A read `r` seeing the value of write `w` is stale when some other write
/// `w2` was acknowledged before `r` was sent and `w` had completed before
/// `w2` was sent: `w` is then ordered before `w2`, and `w2` was visible when
/// `r` began. A read seeing a value no write (acknowledged or in doubt) set,
/// or a value whose write was sent after the read was answered, is wrong
/// too; a read seeing nothing is stale once a creation was acknowledged
/// before it was sent. Final reads (after the run, on every node) are judged
/// the same way and must exist for every acknowledged object.
fn check_registers(history: &[Op], params: &Params, report: &mut Report) {
    let mut writes: BTreeMap<&str, Vec<WriteView<'_>>> = BTreeMap::new();
    for op in history {
        if let Op::Write { object, value, span, ack, .. } = op {
            match ack {
                Ack::Ok => report.writes_acked += 1,
                Ack::Failed(_) => report.writes_failed += 1,
                Ack::Unknown(_) => report.writes_unknown += 1,
            }
            writes.entry(object.as_str()).or_default().push(WriteView { value, span: *span, ack });
        }
    }
    let mut read_back: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for op in history {
        let Op::Read { node, object, span, answer, phase, .. } = op else { continue };
        let property = match phase {
            Phase::Run => Property::StaleRead,
            Phase::Final => Property::LostWrite,
        };
        let known = writes.get(object.as_str()).map(Vec::as_slice).unwrap_or_default();
        let acked_before = |w: &&WriteView<'_>| *w.ack == Ack::Ok && w.span.completed_us < span.invoked_us;
        let problem = match answer {
            ReadAnswer::Unknown(_) => {
                report.reads_unanswered += 1;
                continue;
            }
            ReadAnswer::Missing => {
                known.iter().find(acked_before).map(|w| format!("object missing; {:?} acknowledged before", w.value))
            }
            ReadAnswer::Value(v) => match known.iter().find(|w| w.value == v) {
                None => Some(format!("value {v:?} was never written to it")),
                Some(w) if matches!(w.ack, Ack::Failed(_)) => Some(format!("value {v:?} of a refused write")),
                Some(w) if w.span.invoked_us > span.completed_us => {
                    Some(format!("value {v:?} written only after the read ended"))
                }
                Some(w) => {
                    let newer = known
                        .iter()
                        .filter(acked_before)
                        .find(|w2| w2.value != w.value && w.span.completed_us < w2.span.invoked_us);
                    newer.map(|w2| {
                        format!(
                            "saw {v:?} (written {}..{} µs) after {:?} was acknowledged ({}..{} µs)",
                            w.span.invoked_us, w.span.completed_us, w2.value, w2.span.invoked_us, w2.span.completed_us
                        )
                    })
                }
            },
        };
        match phase {
            Phase::Run => report.reads_checked += 1,
            Phase::Final => {
                report.final_reads_checked += 1;
                read_back.entry(object.as_str()).or_default().push(*node);
            }
        }
        if let Some(problem) = problem {
            report.violations.push(Violation {
                property,
                detail: format!(
                    "read of {object} on node {node} ({}..{} µs): {problem}",
                    span.invoked_us, span.completed_us
                ),
            });
        }
    }
    for (object, ws) in &writes {
        if !ws.iter().any(|w| *w.ack == Ack::Ok) {
            continue;
        }
        let seen = read_back.get(object).map(Vec::as_slice).unwrap_or_default();
        let unread: Vec<u64> = params.nodes.iter().copied().filter(|n| !seen.contains(n)).collect();
        if !unread.is_empty() {
            report.violations.push(Violation {
                property: Property::LostWrite,
                detail: format!("acknowledged object {object} never read back on nodes {unread:?}"),
            });
        }
    }
}

#[cfg(test)]
mod checker_tests {
    //! The checker on hand-made histories: each property, broken once, is
    //! caught; a clean history passes.

    use super::*;

    fn span(invoked_us: u64, completed_us: u64) -> Span {
        Span { invoked_us, completed_us }
    }

    fn params() -> Params {
        Params { limits: vec![3], overcount_per_crash: 10, nodes: vec![1, 2] }
    }

    fn check_op(t: u64, answer: CheckAnswer) -> Op {
        Op::Check { worker: 0, node: 1, key: 0, span: span(t, t + 1), answer }
    }

    fn usage(used: u64) -> Vec<Op> {
        [1, 2].map(|node| Op::Usage { node, key: 0, span: span(1_000, 1_001), used }).to_vec()
    }

    fn write(object: &str, value: &str, invoked: u64, completed: u64, ack: Ack) -> Op {
        Op::Write {
            worker: 0,
            node: 1,
            object: object.into(),
            value: value.into(),
            span: span(invoked, completed),
            ack,
        }
    }

    fn read(object: &str, invoked: u64, completed: u64, answer: ReadAnswer, phase: Phase) -> Op {
        Op::Read { worker: 1, node: 2, object: object.into(), span: span(invoked, completed), answer, phase }
    }

    fn value(v: &str) -> ReadAnswer {
        ReadAnswer::Value(v.into())
    }

    fn final_reads(object: &str, v: &str) -> Vec<Op> {
        [1, 2]
            .map(|node| Op::Read {
                worker: 9,
                node,
                object: object.into(),
                span: span(2_000, 2_001),
                answer: value(v),
                phase: Phase::Final,
            })
            .to_vec()
    }

    /// A history that breaks nothing: three admitted, one in doubt, usage 4
    /// after one fault; a register written twice, read in between and after.
    fn clean() -> Vec<Op> {
        let mut h = vec![
            check_op(1, CheckAnswer::Allowed),
            check_op(2, CheckAnswer::Allowed),
            check_op(3, CheckAnswer::Unknown("connection refused".into())),
            check_op(4, CheckAnswer::Allowed),
            check_op(5, CheckAnswer::Denied("quota_exceeded".into())),
            write("k1", "a", 10, 20, Ack::Ok),
            read("k1", 15, 16, ReadAnswer::Missing, Phase::Run),
            read("k1", 21, 25, value("a"), Phase::Run),
            write("k1", "b", 30, 40, Ack::Ok),
            // Concurrent with the write of b: either value is fine.
            read("k1", 35, 36, value("a"), Phase::Run),
            read("k1", 36, 37, value("b"), Phase::Run),
            read("k1", 41, 42, value("b"), Phase::Run),
            // A write in doubt may show up, or not.
            write("k1", "c", 50, u64::MAX, Ack::Unknown("timeout".into())),
            read("k1", 60, 61, value("b"), Phase::Run),
            read("k1", 62, 63, value("c"), Phase::Run),
            write("k1", "d", 70, 71, Ack::Failed("400".into())),
        ];
        h.extend(usage(4));
        h.extend(final_reads("k1", "c"));
        h
    }

    fn one_fault() -> Vec<FaultRecord> {
        vec![FaultRecord { kind: FaultKind::Kill, node: 1, span: span(0, 100), clock_offset_ms: 0 }]
    }

    fn properties(history: &[Op], faults: &[FaultRecord]) -> Vec<Property> {
        check(history, faults, &params()).violations.iter().map(|v| v.property).collect()
    }

    #[test]
    fn a_clean_history_passes_with_its_figures() {
        let report = check(&clean(), &one_fault(), &params());
        assert!(report.violations.is_empty(), "{report}");
        assert_eq!(report.checks(), (3, 1, 1));
        assert_eq!((report.writes_acked, report.writes_failed, report.writes_unknown), (2, 1, 1));
        assert_eq!((report.reads_checked, report.final_reads_checked), (7, 2));
        assert_eq!(report.keys[0].used, Some(4));
    }

    #[test]
    fn admitting_past_the_quota_breaks_q() {
        let mut h = clean();
        h.push(check_op(6, CheckAnswer::Allowed));
        // Usage follows the admits, so only Q breaks.
        h.retain(|op| !matches!(op, Op::Usage { .. }));
        h.extend(usage(5));
        assert_eq!(properties(&h, &one_fault()), [Property::Q]);
    }

    #[test]
    fn usage_below_the_admitted_breaks_u() {
        let mut h = clean();
        h.retain(|op| !matches!(op, Op::Usage { .. }));
        h.extend(usage(2));
        assert_eq!(properties(&h, &one_fault()), [Property::UnderCount]);
    }

    #[test]
    fn usage_over_what_unknowns_and_faults_allow_breaks_u() {
        let mut h = clean();
        h.retain(|op| !matches!(op, Op::Usage { .. }));
        // 3 admitted + 1 unknown + 10 for the one fault = 14 at most.
        h.extend(usage(14));
        assert!(properties(&h, &one_fault()).is_empty());
        h.retain(|op| !matches!(op, Op::Usage { .. }));
        h.extend(usage(15));
        assert_eq!(properties(&h, &one_fault()), [Property::OverCount]);
        // Without the fault only the unknown check may add.
        h.retain(|op| !matches!(op, Op::Usage { .. }));
        h.extend(usage(5));
        assert_eq!(properties(&h, &[]), [Property::OverCount]);
        // Nor may a partition: the cut node closes its grants once healed.
        let cut = [FaultRecord { kind: FaultKind::Partition, node: 1, span: span(0, 100), clock_offset_ms: 0 }];
        assert_eq!(properties(&h, &cut), [Property::OverCount]);
        let shifted = [FaultRecord { kind: FaultKind::ClockShift, ..cut[0].clone() }];
        assert!(properties(&h, &shifted).is_empty(), "a clock shift is a kill -9 and a restart");
    }

    #[test]
    fn usage_missing_or_disagreeing_between_nodes_is_caught() {
        let mut h = clean();
        h.retain(|op| !matches!(op, Op::Usage { node: 2, .. }));
        assert_eq!(properties(&h, &one_fault()), [Property::UsageUnread]);
        h.push(Op::Usage { node: 2, key: 0, span: span(1_000, 1_001), used: 5 });
        assert_eq!(properties(&h, &one_fault()), [Property::UsageUnread]);
    }

    #[test]
    fn a_read_older_than_an_acknowledged_write_is_stale() {
        let mut h = clean();
        // b was acknowledged at 40; a read sent at 45 that sees a is stale.
        h.push(read("k1", 45, 46, value("a"), Phase::Run));
        assert_eq!(properties(&h, &one_fault()), [Property::StaleRead]);
    }

    #[test]
    fn a_read_missing_an_acknowledged_creation_is_stale() {
        let mut h = clean();
        h.push(read("k1", 21, 22, ReadAnswer::Missing, Phase::Run));
        assert_eq!(properties(&h, &one_fault()), [Property::StaleRead]);
    }

    #[test]
    fn a_value_nobody_wrote_or_a_refused_write_is_caught() {
        for v in ["zz", "d"] {
            let mut h = clean();
            h.push(read("k1", 72, 73, value(v), Phase::Run));
            assert_eq!(properties(&h, &one_fault()), [Property::StaleRead], "{v}");
        }
        // A value whose write was sent only after the read was answered.
        let mut h = clean();
        h.push(read("k1", 5, 8, value("a"), Phase::Run));
        assert_eq!(properties(&h, &one_fault()), [Property::StaleRead]);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // The final reads show b's predecessor a: b was acknowledged.
        let mut h: Vec<Op> =
            clean().into_iter().filter(|op| !matches!(op, Op::Read { phase: Phase::Final, .. })).collect();
        h.extend(final_reads("k1", "a"));
        assert_eq!(properties(&h, &one_fault()), [Property::LostWrite, Property::LostWrite]);
        // Gone altogether on one node.
        let mut h: Vec<Op> =
            clean().into_iter().filter(|op| !matches!(op, Op::Read { phase: Phase::Final, .. })).collect();
        h.push(Op::Read {
            worker: 9,
            node: 1,
            object: "k1".into(),
            span: span(2_000, 2_001),
            answer: ReadAnswer::Missing,
            phase: Phase::Final,
        });
        let found = properties(&h, &one_fault());
        // Node 1 saw nothing, node 2 was never read.
        assert_eq!(found, [Property::LostWrite, Property::LostWrite]);
    }

    #[test]
    fn a_fault_schedule_is_a_function_of_its_seed() {
        let a = fault_schedule(7, 60_000, 3);
        assert_eq!(a, fault_schedule(7, 60_000, 3));
        assert_ne!(a, fault_schedule(8, 60_000, 3));
        assert!(a.iter().all(|f| (1..=3).contains(&f.node) && f.shift_ms.abs() <= MAX_CLOCK_SHIFT_MS));
        for round in a.chunks_exact(3) {
            let kinds: std::collections::BTreeSet<FaultKind> = round.iter().map(|f| f.kind).collect();
            assert_eq!(kinds.len(), 3, "every round has every kind: {a:?}");
        }
    }
}

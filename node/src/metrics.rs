//! Prometheus metrics. Label sets are bounded: routes are the matched route
//! templates, never raw paths, and nothing is labelled per key or per IP.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tollgate_proto::check::{CheckRequest, Decision};

use crate::state::Model;

use crate::cluster::typ;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Admin API requests by route template, method and status.
    pub admin_requests: IntCounterVec,
    /// Requests this node forwarded to the leader.
    pub forwarded: IntCounter,
    /// Check decisions by API, stage and reason (configured APIs and stages
    /// only: anything else is counted as `_unknown`).
    decisions: IntCounterVec,
    check_seconds: Histogram,
    /// Counters the gateway updates itself (authorizer cache, WAF counts).
    pub gateway: crate::gateway::GatewayStats,
    /// Quota grants and throttle round trips.
    pub metering: crate::metering::MeteringStats,
    term: IntGauge,
    leader: IntGauge,
    is_leader: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    last_log: IntGauge,
    snapshot: IntGauge,
    purged: IntGauge,
    /// Bytes available to this node on its data dir's filesystem, as last measured.
    pub disk_available_bytes: IntGauge,
    /// 1 while this node's free-space guard is on (see `disk`).
    pub disk_guard: IntGauge,
    /// 1 once this node's Raft has stopped (it exits to be restarted).
    raft_stopped: IntGauge,
    /// When these counters started from zero (the process start, in
    /// practice): a reader that samples [`Self::decisions_by_reason`] tells
    /// a restart, whose counters start again, from a quiet minute by it.
    started: Instant,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registering a fresh registry's own, distinct names cannot collide.
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let admin_requests = IntCounterVec::new(
            Opts::new("tollgate_admin_requests_total", "Admin API requests by route, method and status."),
            &["route", "method", "status"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(admin_requests.clone()));
        // The process-wide count of dropped log lines (see `crate::logging`).
        let _ = registry.register(Box::new(crate::logging::write_errors().clone()));
        let forwarded = IntCounter::new("tollgate_forwarded_requests_total", "Requests forwarded to the leader.")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(forwarded.clone()));
        let decisions = IntCounterVec::new(
            Opts::new("tollgate_check_decisions_total", "Check decisions by API, stage and reason."),
            &["api", "stage", "reason"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(decisions.clone()));
        let check_seconds = Histogram::with_opts(
            HistogramOpts::new("tollgate_check_duration_seconds", "Time to decide one check.")
                .buckets(vec![0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0]),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(check_seconds.clone()));
        let gateway = crate::gateway::GatewayStats::default();
        let _ = registry.register(Box::new(gateway.authorizer_cache.clone()));
        let _ = registry.register(Box::new(gateway.ratelimit.clone()));
        let _ = registry.register(Box::new(gateway.waf_counted.clone()));
        let metering = crate::metering::MeteringStats::default();
        let _ = registry.register(Box::new(metering.grants.clone()));
        let _ = registry.register(Box::new(metering.units.clone()));
        let _ = registry.register(Box::new(metering.round_trips.clone()));
        Metrics {
            admin_requests,
            forwarded,
            decisions,
            check_seconds,
            gateway,
            metering,
            term: gauge(&registry, "tollgate_raft_term", "Current Raft term."),
            leader: gauge(&registry, "tollgate_raft_leader_id", "Id of the known leader, 0 if none."),
            is_leader: gauge(&registry, "tollgate_raft_is_leader", "1 if this node is the leader."),
            committed: gauge(&registry, "tollgate_raft_commit_index", "Highest committed log index known here."),
            applied: gauge(&registry, "tollgate_raft_applied_index", "Last log index applied to the state machine."),
            last_log: gauge(&registry, "tollgate_raft_last_log_index", "Last log index in the local log."),
            snapshot: gauge(&registry, "tollgate_raft_snapshot_index", "Last log index in the current snapshot."),
            purged: gauge(&registry, "tollgate_raft_purged_index", "Last purged log index."),
            disk_available_bytes: gauge(
                &registry,
                "tollgate_disk_available_bytes",
                "Bytes available on the data dir's filesystem, as last measured.",
            ),
            disk_guard: gauge(
                &registry,
                "tollgate_disk_guard",
                "1 while writes are refused for want of disk space here.",
            ),
            raft_stopped: gauge(&registry, "tollgate_raft_stopped", "1 once Raft has stopped on an error."),
            registry,
            started: Instant::now(),
        }
    }

    /// Counts one decision. Labels come from the model, never from the
    /// request alone, so their number stays bounded.
    pub fn record_decision(&self, model: &Model, req: &CheckRequest, decision: &Decision, took: Duration) {
        let (api, stage) = match model.api(&req.api) {
            Some(a) if a.stages.iter().any(|s| s.name == req.stage) => (req.api.as_str(), req.stage.as_str()),
            Some(_) => (req.api.as_str(), "_unknown"),
            None => ("_unknown", "_unknown"),
        };
        self.decisions.with_label_values(&[api, stage, decision.reason.as_str()]).inc();
        self.check_seconds.observe(took.as_secs_f64());
    }

    /// This node's check decisions since [`Self::uptime`] began, by reason
    /// (summed over APIs and stages): what `tollgate_check_decisions_total`
    /// says, read without rendering the whole exposition. Only reasons
    /// that occurred are present.
    pub fn decisions_by_reason(&self) -> BTreeMap<String, u64> {
        let mut by_reason = BTreeMap::new();
        for family in self.decisions.collect() {
            for metric in family.get_metric() {
                let reason = metric.get_label().iter().find(|l| l.name() == "reason");
                if let Some(reason) = reason {
                    // Counters only count whole decisions: the f64 is an integer.
                    *by_reason.entry(reason.value().to_string()).or_insert(0) +=
                        metric.get_counter().get_value() as u64;
                }
            }
        }
        by_reason
    }

    /// How long these counters have been counting.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The text exposition, with Raft gauges refreshed from `raft`.
    pub fn render(&self, raft: &typ::Metrics, committed: u64) -> String {
        let index = |l: Option<typ::LogId>| l.map(|l| l.index as i64).unwrap_or(0);
        self.term.set(raft.current_term as i64);
        self.leader.set(raft.current_leader.map(|l| l as i64).unwrap_or(0));
        self.is_leader.set(i64::from(raft.current_leader == Some(raft.id)));
        self.committed.set(committed as i64);
        self.applied.set(index(raft.last_applied));
        self.last_log.set(raft.last_log_index.map(|i| i as i64).unwrap_or(0));
        self.snapshot.set(index(raft.snapshot));
        self.purged.set(index(raft.purged));
        self.raft_stopped.set(i64::from(raft.running_state.is_err()));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

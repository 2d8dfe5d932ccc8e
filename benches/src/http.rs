//! `http`: the node's HTTP check and forward-auth against a bare axum
//! server ([`crate::baseline`]) in the same run, on the same machine, from
//! the same client.
//!
//! The goals it measures (issue 14): `POST /v1/check` and forward-auth each
//! at 0.7x the throughput of a bare axum handler or better (closed loop),
//! and an open-loop p99 at 10k requests/s within 1.3x bare axum's.
//!
//! The run: a cluster (three nodes, or `--nodes 1`), a plan with a
//! throttle and a quota that never refuse and one key in it, checked on one
//! follower (the leader when alone); the baseline process beside it. Then
//! four targets — bare axum's check shape, Tollgate's check, bare axum's
//! forward-auth shape, Tollgate's forward-auth (the Envoy form) — each
//! warmed up, then measured in interleaved rounds: closed loop (`--concurrency`
//! callers, each sending its next request when answered, for `--secs`),
//! then open loop (`--rate` requests/s on a fixed schedule, latency from
//! each request's intended send time, for `--secs`). The order of the
//! targets is reversed every other round, so a drift of the machine's speed
//! over the run does not favour one. Medians over the rounds, and the
//! ratios beside their goals.
//!
//! Every request goes through one `reqwest` client, and its answer is read
//! and checked (an allowed decision, or a 200) the same way for both
//! servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::Value;

use crate::baseline::BaselineProcess;
use crate::cluster::Cluster;
use crate::fixture::never_refusing_check;
use crate::load::{run_load_until, run_open_loop, OpenLoop};

/// The closed-loop goal: Tollgate at this share of bare axum's throughput, or more.
const THROUGHPUT_GOAL: f64 = 0.7;
/// The open-loop goal: Tollgate's p99 at most this multiple of bare axum's.
const P99_GOAL: f64 = 1.3;

/// What `tollgate-bench http` was asked for.
pub struct HttpRun {
    /// Seconds of each phase, closed and open loop.
    pub secs: f64,
    /// Phases of each target, each loop; the summary takes their medians.
    pub rounds: usize,
    /// Closed loop: callers sending at once.
    pub concurrency: usize,
    /// Open loop: requests per second (0: no open loop).
    pub rate: f64,
    /// Open loop: at most this many requests in flight.
    pub connections: usize,
    /// Servers on core 0, the load generator on core 1 (`taskset`).
    pub pin: bool,
}

/// One of the four things measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    AxumCheck,
    TollgateCheck,
    AxumForwardAuth,
    TollgateForwardAuth,
}

const KINDS: [Kind; 4] = [Kind::AxumCheck, Kind::TollgateCheck, Kind::AxumForwardAuth, Kind::TollgateForwardAuth];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AxumCheck => "bare axum, POST (check shape)",
            Kind::TollgateCheck => "tollgate POST /v1/check",
            Kind::AxumForwardAuth => "bare axum, forward-auth shape",
            Kind::TollgateForwardAuth => "tollgate forward-auth (envoy)",
        }
    }

    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A request of one kind, made in advance; sent and its answer checked by
/// [`Target::send`].
struct Target {
    kind: Kind,
    http: reqwest::Client,
    url: String,
    /// The check body (POSTs); forward-auth sends headers only.
    body: Option<Arc<Vec<u8>>>,
    secret: String,
}

impl Target {
    async fn send(&self) -> anyhow::Result<()> {
        match &self.body {
            Some(body) => {
                let response = self
                    .http
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(body.to_vec())
                    .send()
                    .await?;
                let status = response.status();
                let decision: Value = response.json().await.with_context(|| format!("{}: {status}", self.url))?;
                if decision["allowed"] != true {
                    bail!("{}: {status}, not allowed: {decision}", self.kind.name());
                }
            }
            None => {
                let response = self
                    .http
                    .get(&self.url)
                    .header("x-api-key", &self.secret)
                    .header("x-forwarded-for", "192.0.2.1")
                    .send()
                    .await?;
                let status = response.status();
                // Read to the end, as a proxy does before reusing the connection.
                let body = response.bytes().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("{}: {status} {}", self.kind.name(), String::from_utf8_lossy(&body));
                }
            }
        }
        Ok(())
    }
}

/// One closed-loop phase: answers per second, p50 and p99 (ms), and the
/// server's CPU time per answer (µs; `None` where `/proc` is not readable).
struct Closed {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: Option<f64>,
}

/// CPU time (user + system) `pid` has used so far, in seconds, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks; proc(5)).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: read after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()?.checked_add(fields.get(12)?.parse::<u64>().ok()?)?;
    // SAFETY: sysconf only reads a system constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks as f64 / per_sec as f64)
}

/// The CPU time of every process in `pids` together, in seconds.
pub fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// The `http` run on `cluster`.
pub async fn run(cluster: Cluster, run: HttpRun) -> anyhow::Result<()> {
    if run.rounds == 0 {
        bail!("--rounds: must be at least 1");
    }
    if !(run.secs.is_finite() && run.secs > 0.0) {
        bail!("--secs {}: must be a number of seconds above 0", run.secs);
    }
    if !(run.rate.is_finite() && run.rate >= 0.0) {
        bail!("--rate {}: must be requests per second, 0 for no open loop", run.rate);
    }
    let leader = cluster.leader().await?;
    let node = cluster.ids().find(|i| *i != leader).unwrap_or(leader);
    let (secret, body) = never_refusing_check(&cluster, leader).await?;

    // The node's answer to this check, for the baseline's to match in size.
    let answer = cluster
        .http
        .post(format!("{}/v1/check", cluster.url(node)))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?
        .bytes()
        .await?;
    let baseline = BaselineProcess::start(answer.len()).await?;
    if run.pin {
        pin(&cluster, &baseline)?;
    }
    println!(
        "http: {} node(s), checks to node {node} ({}), a plan with a throttle and a quota that never refuse; \
         bare axum in process {} beside it; check answers of {} bytes{}",
        cluster.ids().count(),
        if node == leader { "the leader" } else { "a follower" },
        baseline.pid(),
        answer.len(),
        if run.pin { "; servers pinned to core 0, load to core 1" } else { "" }
    );

    // One client for every request: a pool big enough for the open loop.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(run.connections.max(run.concurrency))
        .build()?;
    let tollgate = cluster.url(node);
    let fa_path = "/v1/forward-auth/bench/prod/items/1";
    let targets: Vec<Arc<Target>> = KINDS
        .iter()
        .map(|&kind| {
            let (base, path, body) = match kind {
                Kind::AxumCheck => (&baseline.url, "/v1/check", Some(body.clone())),
                Kind::TollgateCheck => (&tollgate, "/v1/check", Some(body.clone())),
                Kind::AxumForwardAuth => (&baseline.url, fa_path, None),
                Kind::TollgateForwardAuth => (&tollgate, fa_path, None),
            };
            Arc::new(Target { kind, http: http.clone(), url: format!("{base}{path}"), body, secret: secret.clone() })
        })
        .collect();

    // Connections open, and every path warm.
    for target in &targets {
        let until = Instant::now() + Duration::from_secs_f64(run.secs.min(1.0));
        closed(target, until, run.concurrency).await.with_context(|| format!("warming up {}", target.kind.name()))?;
    }

    let secs = Duration::from_secs_f64(run.secs);
    let mut closed_phases: Vec<Vec<Closed>> = KINDS.iter().map(|_| Vec::new()).collect();
    println!("closed loop: {} callers, {} rounds of {:.1} s per target", run.concurrency, run.rounds, run.secs);
    for round in 1..=run.rounds {
        for target in in_round_order(&targets, round) {
            // The server's CPU: every node of the cluster (the follower
            // asked and what it asks of the others), or the baseline.
            let servers = match target.kind {
                Kind::AxumCheck | Kind::AxumForwardAuth => vec![baseline.pid()],
                Kind::TollgateCheck | Kind::TollgateForwardAuth => cluster.pids(),
            };
            let cpu_before = cpu_of(&servers);
            let mut phase = closed(target, Instant::now() + secs, run.concurrency).await?;
            let answers = phase.rate * secs.as_secs_f64();
            phase.cpu_us = match (cpu_before, cpu_of(&servers)) {
                (Some(before), Some(after)) if answers > 0.0 => Some((after - before) * 1e6 / answers),
                _ => None,
            };
            println!(
                "  round {round}, {:<30} {:>8.0}/s p50={:.2}ms p99={:.2}ms server CPU {}",
                target.kind.name(),
                phase.rate,
                phase.p50,
                phase.p99,
                phase.cpu_us.map_or("unknown".into(), |us| format!("{us:.1} µs/request"))
            );
            closed_phases[target.kind.index()].push(phase);
        }
    }

    let mut open_phases: Vec<Vec<OpenLoop>> = KINDS.iter().map(|_| Vec::new()).collect();
    if run.rate > 0.0 {
        println!(
            "open loop: {:.0} requests/s for {:.1} s per target, {} rounds, at most {} in flight; latency from each \
             request's intended send time",
            run.rate, run.secs, run.rounds, run.connections
        );
        for round in 1..=run.rounds {
            for target in in_round_order(&targets, round) {
                let sender = target.clone();
                let phase = run_open_loop(run.rate, secs, run.connections, move || {
                    let sender = sender.clone();
                    async move { sender.send().await }
                })
                .await
                .with_context(|| format!("open loop of {}", target.kind.name()))?;
                println!("  round {round}, {:<30} {}", target.kind.name(), open_line(&phase, run.rate));
                open_phases[target.kind.index()].push(phase);
            }
        }
    }

    summary(&run, &closed_phases, &open_phases);
    Ok(())
}

/// The targets in the order of round `round`: as listed in odd rounds,
/// reversed in even ones.
fn in_round_order(targets: &[Arc<Target>], round: usize) -> Vec<&Arc<Target>> {
    let mut order: Vec<_> = targets.iter().collect();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

/// `concurrency` callers sending to `target` until `until`.
async fn closed(target: &Arc<Target>, until: Instant, concurrency: usize) -> anyhow::Result<Closed> {
    let target = target.clone();
    let (h, elapsed) = run_load_until(usize::MAX, Some(until), concurrency, move |_| {
        let target = target.clone();
        async move { target.send().await }
    })
    .await?;
    Ok(Closed { rate: h.len() as f64 / elapsed.as_secs_f64(), p50: ms(&h, 0.5), p99: ms(&h, 0.99), cpu_us: None })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// An open-loop phase in one line, saying whether it kept its schedule.
fn open_line(phase: &OpenLoop, rate: f64) -> String {
    let h = &phase.latency;
    format!(
        "{:>6.0}/s p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms (scheduler lag p50 {:.2}ms){}",
        phase.rate(),
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0,
        ms(&phase.dispatch_lag, 0.5),
        shortfall(phase, rate).map(|why| format!("; {why}")).unwrap_or_default()
    )
}

/// Where the phase fell short of its schedule, if it did: answers below
/// 95% of the rate asked (the target rate not reached), or requests due
/// while every connection was busy (sent late; their latency still counts
/// from the time they were due).
fn shortfall(phase: &OpenLoop, rate: f64) -> Option<String> {
    let mut why = Vec::new();
    if phase.rate() < 0.95 * rate {
        why.push(format!("TARGET RATE NOT REACHED, {:.0}/s of {rate:.0}/s", phase.rate()));
    }
    if phase.waited > 0 {
        why.push(format!("{} of {} requests waited for a free connection", phase.waited, phase.scheduled));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The medians of each target's rounds and the ratios against bare axum.
fn summary(run: &HttpRun, closed: &[Vec<Closed>], open: &[Vec<OpenLoop>]) {
    println!("summary, the median of each figure over {} rounds:", run.rounds);
    let closed_rate = |kind: Kind| median(closed[kind.index()].iter().map(|p| p.rate).collect());
    println!("  closed loop, {} callers:", run.concurrency);
    for kind in KINDS {
        let phases = &closed[kind.index()];
        println!(
            "    {:<30} {:>8.0}/s p50={:.2}ms p99={:.2}ms",
            kind.name(),
            closed_rate(kind),
            median(phases.iter().map(|p| p.p50).collect()),
            median(phases.iter().map(|p| p.p99).collect())
        );
    }
    for (what, tollgate, axum) in [
        ("check/axum", Kind::TollgateCheck, Kind::AxumCheck),
        ("forward-auth/axum", Kind::TollgateForwardAuth, Kind::AxumForwardAuth),
    ] {
        let ratio = closed_rate(tollgate) / closed_rate(axum).max(f64::MIN_POSITIVE);
        println!(
            "    throughput {what}: x{ratio:.2} (goal >= {THROUGHPUT_GOAL}: {})",
            verdict(ratio >= THROUGHPUT_GOAL)
        );
    }
    // When the load generator, not the server, is the limit (one core of
    // client against one of server), throughput ratios tend to 1 whatever
    // the server costs: its CPU per request says what it would reach.
    let cpu = |kind: Kind| {
        let known: Vec<f64> = closed[kind.index()].iter().filter_map(|p| p.cpu_us).collect();
        (!known.is_empty()).then(|| median(known))
    };
    for (what, tollgate, axum) in [
        ("check/axum", Kind::TollgateCheck, Kind::AxumCheck),
        ("forward-auth/axum", Kind::TollgateForwardAuth, Kind::AxumForwardAuth),
    ] {
        if let (Some(t), Some(a)) = (cpu(tollgate), cpu(axum)) {
            let ratio = a / t.max(f64::MIN_POSITIVE);
            println!(
                "    server CPU per request {what}: {t:.1} µs vs {a:.1} µs, as throughput x{ratio:.2} \
                 (goal >= {THROUGHPUT_GOAL}: {})",
                verdict(ratio >= THROUGHPUT_GOAL)
            );
        }
    }
    if run.rate <= 0.0 {
        println!("  no open loop (--rate 0)");
        return;
    }
    let p = |kind: Kind, q: f64| median(open[kind.index()].iter().map(|o| ms(&o.latency, q)).collect());
    println!("  open loop, {:.0} requests/s:", run.rate);
    for kind in KINDS {
        let phases = &open[kind.index()];
        let slow = phases.iter().filter(|o| o.rate() < 0.95 * run.rate).count();
        let waited = phases.iter().filter(|o| o.waited > 0).count();
        println!(
            "    {:<30} {:>6.0}/s p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms{}",
            kind.name(),
            median(phases.iter().map(OpenLoop::rate).collect()),
            p(kind, 0.5),
            p(kind, 0.99),
            p(kind, 0.999),
            median(phases.iter().map(|o| o.latency.max() as f64 / 1000.0).collect()),
            match (slow, waited) {
                (0, 0) => String::new(),
                (0, w) => format!(" (requests waited for a connection in {w} of {} rounds)", phases.len()),
                (s, _) => format!(" (target rate NOT reached in {s} of {} rounds)", phases.len()),
            }
        );
    }
    for (what, tollgate, axum) in [
        ("check/axum", Kind::TollgateCheck, Kind::AxumCheck),
        ("forward-auth/axum", Kind::TollgateForwardAuth, Kind::AxumForwardAuth),
    ] {
        let ratio = p(tollgate, 0.99) / p(axum, 0.99).max(0.001);
        println!("    p99 {what}: x{ratio:.2} (goal <= {P99_GOAL}: {})", verdict(ratio <= P99_GOAL));
    }
}

/// With `--pin`: every thread of the nodes and the baseline on core 0,
/// every thread of this process (the load) on core 1, through `taskset`.
fn pin(cluster: &Cluster, baseline: &BaselineProcess) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        bail!("--pin: needs 2 cores, this machine offers {cores}");
    }
    let mut servers = cluster.pids();
    servers.push(baseline.pid());
    for (pid, core) in servers.into_iter().map(|p| (p, 0)).chain([(std::process::id(), 1)]) {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("--pin: running taskset (util-linux); install it or run without --pin")?;
        if !status.success() {
            bail!("--pin: taskset -a -p -c {core} {pid} failed ({status})");
        }
    }
    Ok(())
}

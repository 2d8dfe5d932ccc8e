//! A chaos run: clients record a history against a real three-node cluster
//! while a seeded injector kills, partitions and clock-shifts its nodes; then
//! everything is healed and restarted, the final state is read back, and
//! [`history::check`](crate::history::check) judges the whole.
//!
//! Used by `tests/quotas.rs` (a short seed-fixed run) and by
//! `tollgate-bench chaos --secs N` (a long one), both through the harness's
//! [`Cluster`], so both run the same faults on the same launcher.
//!
//! The workload:
//! - check workers send `POST /v1/check` to a random node with one of the
//!   quota keys: the key of the current time slice mostly (so each key is
//!   driven to its quota while faults happen), an older one sometimes, and
//!   a quarter of the time the open key, whose quota is never spent (so an
//!   over-count of its usage is not hidden by the quota's cap);
//! - admin workers create keys (a unique name each), rename them (PUT, a
//!   unique name each time) and read them linearizably from random nodes.
//!
//! At most one fault is active at a time, so a majority is always up and
//! connected: a failure is never expected, only a fault's own unavailability.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_until, Cluster, Options, TOKEN};
use crate::history::{
    self, Ack, CheckAnswer, FaultKind, FaultRecord, Op, Params, Phase, PlannedFault, ReadAnswer, Report, Rng, Span,
};

/// Milliseconds in a day: quota keys have a daily quota.
const DAY_MS: i64 = 86_400_000;

/// How long a client waits for one answer before it counts it unknown.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// A chaos run's shape.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Seeds the fault schedule (reproducible) and the workers' choices.
    pub seed: u64,
    /// How long faults are injected and clients record.
    pub run: Duration,
    /// Each quota key is the busy one for this long; a run has
    /// `run / key_slice` keys (at least one).
    pub key_slice: Duration,
    /// Every quota key's daily quota.
    pub quota: u64,
    pub check_workers: u32,
    pub admin_workers: u32,
    /// `--quota-lease-ms` for the nodes.
    pub lease_ms: u64,
    /// `--quota-max-grant` for the nodes.
    pub max_grant: u64,
    /// The `tollgate` binary.
    pub bin: PathBuf,
}

/// What a run recorded, and the verdict.
pub struct ChaosOutcome {
    pub report: Report,
    pub history: Vec<Op>,
    pub faults: Vec<FaultRecord>,
    /// The faults the seed planned (the run may stop before the last ones).
    pub planned: Vec<PlannedFault>,
    /// From the cluster's start to the verdict.
    pub elapsed: Duration,
    /// The nodes' base clock offset (their clocks read noon UTC).
    pub base_offset_ms: i64,
}

/// The most one crash (kill -9) can add to a key's usage beyond what was
/// admitted: the grants of the process that died, which count whole when
/// they expire. That is its current grant and at most one that expired
/// before it could close it. A node asks for more when it holds at most half
/// its last grant (or its lease is half over) and gets at most `max_grant`
/// more, so one grant holds at most `2 * max_grant` units. A partition, or a
/// leader's death seen from the survivors, adds nothing: a grant that lapsed
/// while its holder could not report is closed by the holder's report later.
pub fn overcount_per_crash(max_grant: u64) -> u64 {
    2 * 2 * max_grant
}

/// The nodes' clock offset that puts them at noon UTC today, so that a day
/// quota's period never rolls during a run (±3 s shifts included).
fn noon_offset_ms() -> i64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    now_ms.div_euclid(DAY_MS) * DAY_MS + DAY_MS / 2 - now_ms
}

/// Shared by the workers: the history so far and the run's clock.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
}

/// Runs the whole thing: cluster, workload and faults, heal, read back, check.
pub async fn run(config: &ChaosConfig) -> ChaosOutcome {
    let started = Instant::now();
    let base_offset_ms = noon_offset_ms();
    let options = Options {
        partitionable: true,
        bin: config.bin.clone(),
        clock_offset_ms: base_offset_ms,
        log_level: "warn",
        extra_args: vec![
            "--quota-lease-ms".into(),
            config.lease_ms.to_string(),
            "--quota-max-grant".into(),
            config.max_grant.to_string(),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, options).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let keys = (config.run.as_millis() / config.key_slice.as_millis().max(1)).max(1) as usize;
    // The quota keys, then the open key (last): its quota is never spent,
    // so any over-count of its usage shows.
    let secrets = setup(&cluster, leader, keys, config.quota).await;

    let recorder = Recorder { start: Instant::now(), ops: Arc::default() };
    let deadline = recorder.start + config.run;
    let urls: Vec<String> = (1..=3).map(|id| cluster.url(id)).collect();
    let http = reqwest::Client::builder().timeout(ANSWER_TIMEOUT).build().expect("HTTP client");
    let objects: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..config.check_workers {
        let worker = CheckWorker {
            id: w,
            rng: Rng::new(config.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::from(w) + 1))),
            http: http.clone(),
            urls: urls.clone(),
            secrets: secrets.clone(),
            quota_keys: keys,
            slice: config.key_slice,
            recorder: recorder.clone(),
        };
        workers.push(tokio::spawn(worker.run(deadline)));
    }
    for w in 0..config.admin_workers {
        let worker = AdminWorker {
            id: 1_000 + w,
            rng: Rng::new(config.seed ^ (0xc2b2_ae3d_27d4_eb4fu64.wrapping_mul(u64::from(w) + 1))),
            http: http.clone(),
            urls: urls.clone(),
            objects: objects.clone(),
            recorder: recorder.clone(),
            written: 0,
        };
        workers.push(tokio::spawn(worker.run(deadline)));
    }
    let planned = history::fault_schedule(config.seed, config.run.as_millis() as u64, 3);
    let faults = inject(&mut cluster, &planned, &recorder, deadline, base_offset_ms).await;
    for w in workers {
        w.await.expect("a chaos worker panicked");
    }

    // Everything healed and running (the injector undoes each fault); wait
    // until no grant is held, then read the final state on every node.
    for id in 1..=3 {
        cluster.wait_ready(id).await;
    }
    for (key, (id, _)) in secrets.iter().enumerate() {
        let path = format!("/v1/admin/plans/{}/usage?key_id={id}", plan_of(key, keys));
        // Usage is read as of each node's clock (a grant past its lease
        // counts as used), and the clocks were shifted apart: settled means
        // no grant held as every node sees it.
        for node in 1..=3 {
            wait_until(&format!("quota key {key} settled on node {node} (no grant held)"), || async {
                cluster.get(node, &path).await.1["items"][0]["current_period"]["held"] == 0
            })
            .await;
        }
    }
    read_back(&cluster, &secrets, keys, &objects, &recorder).await;

    let history = std::mem::take(&mut *recorder.ops.lock().unwrap_or_else(|p| p.into_inner()));
    let params = Params {
        limits: (0..=keys).map(|k| if k < keys { config.quota } else { OPEN_QUOTA }).collect(),
        overcount_per_crash: overcount_per_crash(config.max_grant),
        nodes: vec![1, 2, 3],
    };
    let report = history::check(&history, &faults, &params);
    ChaosOutcome { report, history, faults, planned, elapsed: started.elapsed(), base_offset_ms }
}

/// The open key's daily quota: never spent in a run.
const OPEN_QUOTA: u64 = 1_000_000_000;

/// The plan of key `key` of `quota_keys` quota keys and the open key.
fn plan_of(key: usize, quota_keys: usize) -> &'static str {
    if key < quota_keys {
        "gold"
    } else {
        "open"
    }
}

/// The API `pets`, the plan `gold` with a daily `quota` and `keys` keys in
/// it, and the plan `open` with one key whose quota is never spent (known to
/// every node); their ids and secrets, the open key last.
async fn setup(cluster: &Cluster, node: u64, keys: usize, quota: u64) -> Vec<(String, String)> {
    let api = json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": true}]});
    let (status, body) = cluster.post(node, "/v1/admin/apis", api).await;
    assert_eq!(status, 201, "creating the API: {body}");
    let plan = json!({"id": "gold", "name": "Gold", "quota": {"limit": quota, "period": "day"},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    let (status, body) = cluster.post(node, "/v1/admin/plans", plan).await;
    assert_eq!(status, 201, "creating the plan: {body}");
    let open = json!({"id": "open", "name": "Open", "quota": {"limit": OPEN_QUOTA, "period": "day"},
        "api_stages": [{"api_id": "pets", "stage": "prod"}]});
    let (status, body) = cluster.post(node, "/v1/admin/plans", open).await;
    assert_eq!(status, 201, "creating the open plan: {body}");
    let mut secrets = Vec::new();
    for k in 0..=keys {
        let (status, key) = cluster
            .post(node, "/v1/admin/keys", json!({"name": format!("quota-{k}"), "plan_ids": [plan_of(k, keys)]}))
            .await;
        assert_eq!(status, 201, "creating quota key {k}: {key}");
        let field = |name: &str| key[name].as_str().expect("a new key has an id and a secret").to_string();
        secrets.push((field("id"), field("secret")));
    }
    for n in 1..=3 {
        let path = format!("/v1/admin/keys/{}?stale=true", secrets[keys].0);
        wait_until(&format!("node {n} has the quota keys"), || async { cluster.get(n, &path).await.0 == 200 }).await;
    }
    secrets
}

/// Applies the planned faults one at a time until `deadline`, undoing each
/// before the next; the log of what was done.
async fn inject(
    cluster: &mut Cluster,
    planned: &[PlannedFault],
    recorder: &Recorder,
    deadline: Instant,
    base_offset_ms: i64,
) -> Vec<FaultRecord> {
    let mut log = Vec::new();
    for fault in planned {
        tokio::time::sleep(Duration::from_millis(fault.gap_ms)).await;
        if Instant::now() >= deadline {
            break;
        }
        let invoked_us = recorder.now_us();
        let hold = Duration::from_millis(fault.hold_ms);
        let mut clock_offset_ms = 0;
        match fault.kind {
            FaultKind::Kill => {
                cluster.kill(fault.node);
                tokio::time::sleep(hold).await;
                cluster.restart(fault.node).await;
            }
            FaultKind::Partition => {
                // Every other cut drops packets instead of resetting.
                if log.len() % 2 == 0 {
                    cluster.cut(fault.node).await;
                } else {
                    cluster.cut_silently(fault.node).await;
                }
                tokio::time::sleep(hold).await;
                cluster.heal(fault.node).await;
            }
            FaultKind::ClockShift => {
                cluster.kill(fault.node);
                clock_offset_ms = base_offset_ms + fault.shift_ms;
                tokio::time::sleep(hold).await;
                cluster.restart_with_clock(fault.node, clock_offset_ms).await;
            }
        }
        let span = Span { invoked_us, completed_us: recorder.now_us() };
        log.push(FaultRecord { kind: fault.kind, node: fault.node, span, clock_offset_ms });
    }
    log
}

/// Sends checks until the deadline.
struct CheckWorker {
    id: u32,
    rng: Rng,
    http: reqwest::Client,
    urls: Vec<String>,
    /// The quota keys, then the open key.
    secrets: Vec<(String, String)>,
    quota_keys: usize,
    slice: Duration,
    recorder: Recorder,
}

impl CheckWorker {
    async fn run(mut self, deadline: Instant) {
        while Instant::now() < deadline {
            let slice = (self.recorder.start.elapsed().as_millis() / self.slice.as_millis().max(1)) as u64;
            let current = slice.min(self.quota_keys as u64 - 1);
            let key = match self.rng.below(8) {
                0 | 1 => self.quota_keys,
                2 => self.rng.below(current + 1) as usize,
                _ => current as usize,
            };
            let node = 1 + self.rng.below(3);
            let invoked_us = self.recorder.now_us();
            let answer = self.check(node, &self.secrets[key].1).await;
            let span = Span { invoked_us, completed_us: self.recorder.now_us() };
            self.recorder.record(Op::Check { worker: self.id, node, key, span, answer });
        }
    }

    async fn check(&self, node: u64, secret: &str) -> CheckAnswer {
        let body = json!({"api": "pets", "stage": "prod", "method": "GET", "path": "/pets/1",
            "headers": {"x-api-key": secret}});
        let url = format!("{}/v1/check", self.urls[node as usize - 1]);
        let resp = match self.http.post(url).json(&body).send().await {
            Ok(resp) => resp,
            // Never connected (a killed node's port refuses): not admitted.
            Err(e) if e.is_connect() => return CheckAnswer::Denied("unreachable".into()),
            Err(e) => return CheckAnswer::Unknown(e.to_string()),
        };
        let status = resp.status().as_u16();
        let decision: Value = match resp.json().await {
            Ok(d) => d,
            Err(e) => return CheckAnswer::Unknown(format!("{status}: {e}")),
        };
        match (status, decision["allowed"].as_bool(), decision["reason"].as_str()) {
            (200, Some(true), _) => CheckAnswer::Allowed,
            (200, Some(false), Some(reason)) => CheckAnswer::Denied(reason.to_string()),
            _ => CheckAnswer::Unknown(format!("{status}: {decision}")),
        }
    }
}

/// Creates, renames and reads keys until the deadline.
struct AdminWorker {
    id: u32,
    rng: Rng,
    http: reqwest::Client,
    urls: Vec<String>,
    /// Keys whose creation was acknowledged, by any admin worker.
    objects: Arc<Mutex<Vec<String>>>,
    recorder: Recorder,
    /// Values this worker wrote so far (each value is unique).
    written: u64,
}

impl AdminWorker {
    async fn run(mut self, deadline: Instant) {
        while Instant::now() < deadline {
            let object = {
                let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
                let pick = self.rng.below(objects.len() as u64) as usize;
                objects.get(pick).cloned()
            };
            let node = 1 + self.rng.below(3);
            let dice = self.rng.below(10);
            match object {
                Some(object) if dice >= 5 => self.read(node, object).await,
                Some(object) if dice >= 1 => self.rename(node, object).await,
                _ => self.create(node).await,
            }
        }
    }

    fn next_value(&mut self) -> String {
        self.written += 1;
        format!("w{}-{}", self.id, self.written)
    }

    async fn create(&mut self, node: u64) {
        let value = self.next_value();
        let url = format!("{}/v1/admin/keys", self.urls[node as usize - 1]);
        let invoked_us = self.recorder.now_us();
        let sent = self.http.post(url).bearer_auth(TOKEN).json(&json!({"name": value})).send().await;
        let (ack, answer) = acknowledgement(sent).await;
        let span = Span { invoked_us, completed_us: self.recorder.now_us() };
        // A creation in doubt has no id to follow: it gets a name of its own.
        let object = match (&ack, answer["id"].as_str()) {
            (Ack::Ok, Some(id)) => id.to_string(),
            _ => format!("unacknowledged {value}"),
        };
        self.recorder.record(Op::Write {
            worker: self.id,
            node,
            object: object.clone(),
            value,
            span,
            ack: ack.clone(),
        });
        if ack == Ack::Ok {
            self.objects.lock().unwrap_or_else(|p| p.into_inner()).push(object);
        }
    }

    async fn rename(&mut self, node: u64, object: String) {
        let value = self.next_value();
        let enabled = self.rng.below(2) == 0;
        let url = format!("{}/v1/admin/keys/{object}", self.urls[node as usize - 1]);
        let invoked_us = self.recorder.now_us();
        let sent = self.http.put(url).bearer_auth(TOKEN).json(&json!({"name": value, "enabled": enabled})).send().await;
        let (ack, _) = acknowledgement(sent).await;
        let span = Span { invoked_us, completed_us: self.recorder.now_us() };
        self.recorder.record(Op::Write { worker: self.id, node, object, value, span, ack });
    }

    async fn read(&mut self, node: u64, object: String) {
        let url = format!("{}/v1/admin/keys/{object}", self.urls[node as usize - 1]);
        let invoked_us = self.recorder.now_us();
        let answer = match self.http.get(url).bearer_auth(TOKEN).send().await {
            Ok(resp) if resp.status().as_u16() == 404 => ReadAnswer::Missing,
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(key) => match key["name"].as_str() {
                    Some(name) => ReadAnswer::Value(name.to_string()),
                    None => ReadAnswer::Unknown(format!("no name in {key}")),
                },
                Err(e) => ReadAnswer::Unknown(e.to_string()),
            },
            Ok(resp) => ReadAnswer::Unknown(resp.status().to_string()),
            Err(e) => ReadAnswer::Unknown(e.to_string()),
        };
        let span = Span { invoked_us, completed_us: self.recorder.now_us() };
        self.recorder.record(Op::Read { worker: self.id, node, object, span, answer, phase: Phase::Run });
    }
}

/// An admin write's acknowledgement (2xx), refusal (4xx) or doubt (5xx, no
/// answer), with the answer's body.
async fn acknowledgement(sent: reqwest::Result<reqwest::Response>) -> (Ack, Value) {
    let resp = match sent {
        Ok(resp) => resp,
        // Never connected (a killed node's port refuses): nothing was written.
        Err(e) if e.is_connect() => return (Ack::Failed("unreachable".into()), Value::Null),
        Err(e) => return (Ack::Unknown(e.to_string()), Value::Null),
    };
    let status = resp.status();
    match resp.json::<Value>().await {
        Ok(body) if status.is_success() => (Ack::Ok, body),
        // Acknowledged, but the body was lost: committed all the same.
        Err(_) if status.is_success() => (Ack::Ok, Value::Null),
        Ok(body) if status.is_client_error() => (Ack::Failed(format!("{status}: {body}")), body),
        Ok(body) => (Ack::Unknown(format!("{status}: {body}")), body),
        Err(e) => (Ack::Unknown(format!("{status}: {e}")), Value::Null),
    }
}

/// After the run: every quota key's usage and every key's name, on every
/// node, each read linearizably and recorded as a final operation.
async fn read_back(
    cluster: &Cluster,
    secrets: &[(String, String)],
    quota_keys: usize,
    objects: &Mutex<Vec<String>>,
    recorder: &Recorder,
) {
    let acked: BTreeSet<String> = objects.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    for node in 1..=3 {
        for (key, (id, _)) in secrets.iter().enumerate() {
            let invoked_us = recorder.now_us();
            let plan = plan_of(key, quota_keys);
            let (status, body) = cluster.get(node, &format!("/v1/admin/plans/{plan}/usage?key_id={id}")).await;
            let current = &body["items"][0]["current_period"];
            assert_eq!(status, 200, "usage of quota key {key} on node {node}: {body}");
            let span = Span { invoked_us, completed_us: recorder.now_us() };
            let used = current["used"].as_u64().expect("usage has `used`");
            recorder.record(Op::Usage { node, key, span, used });
        }
        let invoked_us = recorder.now_us();
        let names: BTreeMap<String, String> = cluster
            .list_all(node, "keys", false)
            .await
            .iter()
            .map(|k| (k["id"].as_str().unwrap_or_default().to_string(), k["name"].as_str().unwrap_or_default().into()))
            .collect();
        let span = Span { invoked_us, completed_us: recorder.now_us() };
        for object in &acked {
            let answer = names.get(object).map(|n| ReadAnswer::Value(n.clone())).unwrap_or(ReadAnswer::Missing);
            recorder.record(Op::Read {
                worker: u32::MAX,
                node,
                object: object.clone(),
                span,
                answer,
                phase: Phase::Final,
            });
        }
    }
}

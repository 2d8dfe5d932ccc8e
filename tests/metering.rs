//! The metering scenarios (`tollgate_node::metering::scenarios`) against a
//! real cluster's authority, as the unit tests run them against the
//! in-memory one: Limitador runs every test on every storage, and so do we.
//!
//! The nodes run in this process ([`tollgate_node::server::start`]), three
//! of them on loopback with their own data dirs, so a scenario can hold the
//! [`ClusterAuthority`] of one node: quota grants and usage reports are Raft
//! writes (forwarded to the leader from a follower), throttle tokens come
//! from the leader's buckets over the peer route. Each test starts its own
//! cluster and stops it at the end.
//!
//! Scenarios that count exact seconds of `Retry-After` need a clock the
//! authority follows exactly; a cluster's leader lends by its own clock, so
//! those run only in memory ([`Backend::exact_time`] is false here).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_node::app::App;
use tollgate_node::clock::Clock;
use tollgate_node::cluster::authority::ClusterAuthority;
use tollgate_node::cluster::leader::MembershipOp;
use tollgate_node::config::ServeArgs;
use tollgate_node::metering::scenarios::{self, Backend, Subject, SCENARIOS};
use tollgate_node::metering::BoxFuture;
use tollgate_proto::command::QuotaPeriod;
use tollgate_proto::metering::QuotaLedger;

use crate::harness::wait_until;

const ADMIN_TOKEN: &str = "tga_metering-scenarios-admin-token-0123456789";
const CLUSTER_TOKEN: &str = "tgc_metering-scenarios-cluster";

/// One node of the in-process cluster.
struct Member {
    app: Arc<App>,
    authority: Arc<ClusterAuthority>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Three nodes in this process; dropped, they stop with the test's runtime.
struct InProcess {
    members: Vec<Member>,
    http: reqwest::Client,
    /// Which member the scenarios run on.
    on: usize,
    _dirs: tempfile::TempDir,
}

impl InProcess {
    /// Node 1 initialises a cluster; nodes 2 and 3 join it as voters.
    async fn start() -> InProcess {
        let dirs = tempfile::tempdir().expect("a temp dir");
        let mut members = Vec::new();
        for id in 1..=3u64 {
            let mut args = ServeArgs { id: Some(id), ..Default::default() };
            args.listen.http = Some("127.0.0.1:0".into());
            args.listen.peer = Some("127.0.0.1:0".into());
            args.listen.wire = Some("127.0.0.1:0".into());
            args.listen.grpc = Some("127.0.0.1:0".into());
            args.storage.data_dir = Some(dirs.path().join(format!("node{id}")));
            args.cluster.init = Some(id == 1);
            let env = |name: &str| match name {
                "TOLLGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
                "TOLLGATE_CLUSTER_TOKEN" => Some(CLUSTER_TOKEN.to_string()),
                _ => None,
            };
            let config = args.resolve_with(&env).expect("a valid configuration");
            let node = tollgate_node::server::start(config).await.expect("the node starts");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (app, authority) = (node.app.clone(), node.authority.clone());
            let url = format!("http://{}", node.endpoints.http);
            let task = tokio::spawn(async move {
                let stop = node
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
                node.stop(stop).await
            });
            members.push(Member { app, authority, url, stop: Some(stop), task });
            if id == 1 {
                let raft = members[0].app.raft.clone();
                wait_until("node 1 leads", || async { raft.current_leader().await == Some(1) }).await;
            } else {
                let addr = members[id as usize - 1].app.addr.clone();
                let joined = members[0].app.leader.change_membership(MembershipOp::Add { id, addr, voter: true }).await;
                assert!(joined.is_ok(), "node {id} joins: {joined:?}");
            }
        }
        InProcess { members, http: reqwest::Client::new(), on: 0, _dirs: dirs }
    }

    /// The scenarios run on a follower's authority from now on.
    async fn on_a_follower(mut self) -> InProcess {
        let leader = self.members[0].app.raft.current_leader().await;
        self.on = self.members.iter().position(|m| Some(m.app.id) != leader).expect("a follower");
        self
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.members[self.on].url);
        let resp = self.http.post(&url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.expect("the node answers");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(status, 201, "POST {path}: {body}");
        body
    }

    /// Stops every node (SIGTERM's path: quota handed back, storage flushed).
    async fn stop(mut self) {
        for member in &mut self.members {
            if let Some(stop) = member.stop.take() {
                let _ = stop.send(());
            }
        }
        for member in self.members {
            let stopped = member.task.await.expect("the node task ends");
            assert!(stopped.is_ok(), "node {} stops cleanly: {stopped:?}", member.app.id);
        }
    }
}

impl Backend for InProcess {
    /// A plan with a daily quota and a key on it, made through the admin API
    /// of the member the scenarios run on, and known to that member.
    fn subject<'a>(&'a self, plan_id: &'a str, limit: u64) -> BoxFuture<'a, Subject> {
        Box::pin(async move {
            let plan = json!({"id": plan_id, "name": plan_id, "quota": {"limit": limit, "period": "day"},
                "api_stages": []});
            self.post("/v1/admin/plans", plan).await;
            let key = self.post("/v1/admin/keys", json!({"name": plan_id, "plan_ids": [plan_id]})).await;
            let key_id = key["id"].as_str().expect("a key id").to_string();
            let member = &self.members[self.on];
            wait_until(&format!("node {} has key {key_id}", member.app.id), || async {
                member.app.published().model.key(&key_id).is_some()
            })
            .await;
            Subject { authority: member.authority.clone(), key_id }
        })
    }

    /// The ledger as the member holds it once it has applied everything the
    /// leader had committed when asked.
    fn ledger<'a>(&'a self, _: &'a Subject, period: &'a QuotaPeriod) -> BoxFuture<'a, QuotaLedger> {
        Box::pin(async move {
            let app = &self.members[self.on].app;
            app.leader.read_barrier().await.expect("a read barrier");
            app.published().model.ledger(period).cloned().unwrap_or_default()
        })
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.members[self.on].app.clock.clone()
    }

    fn pass(&self, ms: i64) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)))
    }

    fn exact_time(&self) -> bool {
        false
    }
}

/// The scenarios a cluster runs: every one that does not need exact time.
fn expected() -> Vec<&'static str> {
    SCENARIOS.iter().filter(|s| !s.needs_exact_time).map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metering_scenario_holds_on_the_leaders_authority() {
    let cluster = InProcess::start().await;
    let ran = scenarios::run_all(&cluster).await;
    assert_eq!(ran, expected());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metering_scenario_holds_on_a_followers_authority() {
    let cluster = InProcess::start().await.on_a_follower().await;
    let ran = scenarios::run_all(&cluster).await;
    assert_eq!(ran, expected());
    cluster.stop().await;
}

//! What an operator relies on beyond the model: the audit trail (every admin
//! change recorded with who, from where and what changed, never a secret)
//! and backups (`tollgate snapshot save`, a destroyed cluster, `tollgate
//! snapshot restore` onto new nodes, everything there and exact).

use std::collections::BTreeSet;
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use tollgate_client::admin::AdminClient;

use crate::harness::{self, wait_until, Cluster, Options};

/// A client of node `id` with `token` instead of the bootstrap token.
fn as_token(cluster: &Cluster, id: u64, token: &str) -> AdminClient {
    AdminClient::with_http([cluster.url(id)], token, cluster.http.clone()).expect("a node URL")
}

async fn call(client: &AdminClient, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    client.request(method, path, body.as_ref()).await.unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every audit entry, following pages of `limit`, read on node `id`.
async fn audit(cluster: &Cluster, id: u64, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/admin/audit?limit={limit}{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, page) = cluster.get(id, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return items,
        }
    }
}

/// Waits until node `node` has admin token `id` (a token is checked on the
/// node it reaches, from what that node applied).
async fn has_token(cluster: &Cluster, node: u64, id: &str) {
    let path = format!("/v1/admin/tokens/{id}?stale=true");
    wait_until(&format!("node {node} has token {id}"), || async { cluster.get(node, &path).await.0 == 200 }).await;
}

/// One admin write of the table: its route as the OpenAPI document spells
/// it, the path and body sent, and the entry it must leave.
struct Write {
    method: Method,
    route: &'static str,
    path: String,
    body: Option<Value>,
    action: &'static str,
    kind: Option<&'static str>,
    id: Option<String>,
}

fn write(method: Method, route: &'static str, path: impl Into<String>, body: Option<Value>) -> Write {
    Write { method, route, path: path.into(), body, action: "", kind: None, id: None }
}

impl Write {
    fn records(mut self, action: &'static str, kind: Option<&'static str>, id: Option<&str>) -> Write {
        self.action = action;
        self.kind = kind;
        self.id = id.map(str::to_string);
        self
    }
}

/// Admin routes that change nothing and so leave no entry.
const NOT_CHANGES: &[(&str, &str)] = &[("post", "/v1/admin/snapshot")];

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_write_route_leaves_one_entry_naming_who_and_what_and_never_a_secret() {
    let mut cluster = Cluster::start(3).await;
    // The operator's own token, made with the bootstrap token (that write
    // is the trail's first entry).
    let (status, ops) = cluster.post(1, "/v1/admin/tokens", json!({"name": "ops-alice", "scopes": ["write"]})).await;
    assert_eq!(status, 201, "{ops}");
    let ops_id = ops["id"].as_str().unwrap_or_default().to_string();
    let ops_secret = ops["secret"].as_str().unwrap_or_default().to_string();
    let client = as_token(&cluster, 2, &ops_secret);
    let mut secrets = vec![ops_secret.clone()];

    // Admin answers (a new secret among them) are never cached.
    let response = cluster
        .http
        .get(format!("{}/v1/admin/tokens", cluster.url(1)))
        .bearer_auth(&ops_secret)
        .send()
        .await
        .expect("list tokens");
    let cache = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(cache.as_deref(), Some("no-store"));

    // A node to add, promote and remove.
    let extra = cluster.spawn_extra(4).await;
    let (extra_http, extra_peer) = (format!("127.0.0.1:{}", extra.http_port), format!("127.0.0.1:{}", extra.peer_port));

    let api = json!({"id": "shop", "name": "Shop", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]});
    let plan = json!({"id": "basic", "name": "Basic", "quota": {"limit": 100, "period": "day"},
        "api_stages": [{"api_id": "shop", "stage": "prod"}]});
    let policy = json!({"id": "office", "name": "office", "api_id": "shop", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["shop/*"]}]});
    let authorizer = json!({"id": "jwt", "name": "jwt", "kind": {"http": {"url": "http://127.0.0.1:1/a",
        "identity_sources": ["header:authorization"], "timeout_ms": 500}}});
    let domain = json!({"id": "edge", "domain": "edge", "descriptors": [{"key": "remote_address",
        "rate_limit": {"requests_per_unit": 5, "unit": "second"}}]});

    // Creates first (their answers carry ids and secrets the rest uses).
    let mut table = Vec::new();
    let mut run = |w: Write| table.push(w);
    run(write(Method::POST, "/v1/admin/apis", "/v1/admin/apis", Some(api.clone())).records(
        "create",
        Some("apis"),
        Some("shop"),
    ));
    let mut renamed = api.clone();
    renamed["name"] = json!("Shop (renamed)");
    run(write(Method::PUT, "/v1/admin/apis/{id}", "/v1/admin/apis/shop", Some(renamed)).records(
        "replace",
        Some("apis"),
        Some("shop"),
    ));
    run(write(Method::POST, "/v1/admin/plans", "/v1/admin/plans", Some(plan.clone())).records(
        "create",
        Some("plans"),
        Some("basic"),
    ));
    let mut bigger = plan.clone();
    bigger["quota"]["limit"] = json!(200);
    run(write(Method::PUT, "/v1/admin/plans/{id}", "/v1/admin/plans/basic", Some(bigger)).records(
        "replace",
        Some("plans"),
        Some("basic"),
    ));
    run(write(Method::POST, "/v1/admin/policies", "/v1/admin/policies", Some(policy.clone())).records(
        "create",
        Some("policies"),
        Some("office"),
    ));
    run(write(Method::PUT, "/v1/admin/policies/{id}", "/v1/admin/policies/office", Some(policy)).records(
        "replace",
        Some("policies"),
        Some("office"),
    ));
    run(write(Method::DELETE, "/v1/admin/policies/{id}", "/v1/admin/policies/office", None).records(
        "delete",
        Some("policies"),
        Some("office"),
    ));
    run(write(Method::POST, "/v1/admin/authorizers", "/v1/admin/authorizers", Some(authorizer.clone())).records(
        "create",
        Some("authorizers"),
        Some("jwt"),
    ));
    run(write(Method::PUT, "/v1/admin/authorizers/{id}", "/v1/admin/authorizers/jwt", Some(authorizer)).records(
        "replace",
        Some("authorizers"),
        Some("jwt"),
    ));
    run(write(Method::DELETE, "/v1/admin/authorizers/{id}", "/v1/admin/authorizers/jwt", None).records(
        "delete",
        Some("authorizers"),
        Some("jwt"),
    ));
    run(write(Method::POST, "/v1/admin/ratelimits", "/v1/admin/ratelimits", Some(domain.clone())).records(
        "create",
        Some("ratelimits"),
        Some("edge"),
    ));
    run(write(Method::PUT, "/v1/admin/ratelimits/{id}", "/v1/admin/ratelimits/edge", Some(domain)).records(
        "replace",
        Some("ratelimits"),
        Some("edge"),
    ));
    run(write(Method::DELETE, "/v1/admin/ratelimits/{id}", "/v1/admin/ratelimits/edge", None).records(
        "delete",
        Some("ratelimits"),
        Some("edge"),
    ));
    run(write(Method::POST, "/v1/admin/identity-key/rotate", "/v1/admin/identity-key/rotate", None).records(
        "rotate_identity_key",
        None,
        None,
    ));
    let mut done = Vec::new();
    for w in table.drain(..) {
        let (status, answer) = call(&client, w.method.clone(), &w.path, w.body.clone()).await;
        assert!((200..300).contains(&status), "{} {}: {status} {answer}", w.method, w.path);
        done.push(w);
    }

    // Keys: create, replace, reroll, import, usage, delete (secrets kept
    // to look for in the trail).
    let (status, key) = call(
        &client,
        Method::POST,
        "/v1/admin/keys",
        Some(json!({"name": "bob", "plan_ids": ["basic"], "tags": {"team": "web"}})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap_or_default().to_string();
    secrets.push(key["secret"].as_str().unwrap_or_default().to_string());
    done.push(write(Method::POST, "/v1/admin/keys", "/v1/admin/keys", None).records(
        "create",
        Some("keys"),
        Some(&key_id),
    ));
    let (status, answer) = call(
        &client,
        Method::PUT,
        &format!("/v1/admin/keys/{key_id}"),
        Some(json!({"name": "bob", "plan_ids": ["basic"], "enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    done.push(write(Method::PUT, "/v1/admin/keys/{id}", "", None).records("replace", Some("keys"), Some(&key_id)));
    let (status, rerolled) =
        call(&client, Method::POST, &format!("/v1/admin/keys/{key_id}/reroll"), Some(json!({"overlap_secs": 60})))
            .await;
    assert_eq!(status, 200, "{rerolled}");
    secrets.push(rerolled["secret"].as_str().unwrap_or_default().to_string());
    done.push(write(Method::POST, "/v1/admin/keys/{id}/reroll", "", None).records(
        "reroll",
        Some("keys"),
        Some(&key_id),
    ));
    let (status, imported) = call(
        &client,
        Method::POST,
        "/v1/admin/keys/import",
        Some(json!({"items": [{"name": "c1", "plan_ids": ["basic"]}, {"name": "c2"}]})),
    )
    .await;
    assert_eq!(status, 201, "{imported}");
    let imported: Vec<Value> = imported["items"].as_array().cloned().unwrap_or_default();
    secrets.extend(imported.iter().map(|k| k["secret"].as_str().unwrap_or_default().to_string()));
    let first_import = imported[0]["id"].as_str().unwrap_or_default().to_string();
    done.push(write(Method::POST, "/v1/admin/keys/import", "", None).records(
        "import",
        Some("keys"),
        Some(&first_import),
    ));
    let (status, answer) =
        call(&client, Method::POST, &format!("/v1/admin/plans/basic/usage/{key_id}"), Some(json!({"delta": 5}))).await;
    assert_eq!(status, 200, "{answer}");
    done.push(write(Method::POST, "/v1/admin/plans/{id}/usage/{key_id}", "", None).records(
        "adjust_usage",
        Some("plans"),
        Some("basic"),
    ));
    let (status, answer) = call(&client, Method::DELETE, &format!("/v1/admin/keys/{key_id}"), None).await;
    assert_eq!(status, 204, "{answer}");
    done.push(write(Method::DELETE, "/v1/admin/keys/{id}", "", None).records("delete", Some("keys"), Some(&key_id)));

    // Tokens: create (its secret looked for too), replace, delete.
    let (status, token) =
        call(&client, Method::POST, "/v1/admin/tokens", Some(json!({"name": "ci", "scopes": ["read"]}))).await;
    assert_eq!(status, 201, "{token}");
    let token_id = token["id"].as_str().unwrap_or_default().to_string();
    secrets.push(token["secret"].as_str().unwrap_or_default().to_string());
    done.push(write(Method::POST, "/v1/admin/tokens", "", None).records("create", Some("tokens"), Some(&token_id)));
    let reader = token["secret"].as_str().unwrap_or_default().to_string();
    let (status, answer) = call(
        &client,
        Method::PUT,
        &format!("/v1/admin/tokens/{token_id}"),
        Some(json!({"name": "ci-reader", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    done.push(write(Method::PUT, "/v1/admin/tokens/{id}", "", None).records(
        "replace",
        Some("tokens"),
        Some(&token_id),
    ));

    // A read-only token reads the trail; a check-only one may not (on
    // node 3, once it has them: a token is checked on the node it reaches).
    has_token(&cluster, 3, &token_id).await;
    let (status, page) = call(&as_token(&cluster, 3, &reader), Method::GET, "/v1/admin/audit", None).await;
    assert_eq!(status, 200, "{page}");
    let (status, checker) =
        call(&client, Method::POST, "/v1/admin/tokens", Some(json!({"name": "envoy", "scopes": ["check"]}))).await;
    assert_eq!(status, 201, "{checker}");
    let checker_id = checker["id"].as_str().unwrap_or_default().to_string();
    let checker_secret = checker["secret"].as_str().unwrap_or_default().to_string();
    secrets.push(checker_secret.clone());
    has_token(&cluster, 3, &checker_id).await;
    done.push(write(Method::POST, "/v1/admin/tokens", "", None).records("create", Some("tokens"), Some(&checker_id)));
    let (status, _) = call(&as_token(&cluster, 3, &checker_secret), Method::GET, "/v1/admin/audit", None).await;
    assert_eq!(status, 403);
    let (status, answer) = call(&client, Method::DELETE, &format!("/v1/admin/tokens/{token_id}"), None).await;
    assert_eq!(status, 204, "{answer}");
    done.push(write(Method::DELETE, "/v1/admin/tokens/{id}", "", None).records(
        "delete",
        Some("tokens"),
        Some(&token_id),
    ));

    // Membership: add node 4 as a learner, promote it, remove it.
    let member = json!({"id": 4, "http_addr": extra_http, "peer_addr": extra_peer, "voter": false});
    let (status, answer) = call(&client, Method::POST, "/v1/admin/cluster/nodes", Some(member)).await;
    assert_eq!(status, 201, "{answer}");
    done.push(write(Method::POST, "/v1/admin/cluster/nodes", "", None).records("add_node", None, Some("4")));
    let (status, answer) = call(&client, Method::POST, "/v1/admin/cluster/nodes/4/promote", None).await;
    assert_eq!(status, 200, "{answer}");
    done.push(write(Method::POST, "/v1/admin/cluster/nodes/{id}/promote", "", None).records(
        "promote_node",
        None,
        Some("4"),
    ));
    let (status, answer) = call(&client, Method::DELETE, "/v1/admin/cluster/nodes/4", None).await;
    assert_eq!(status, 204, "{answer}");
    done.push(write(Method::DELETE, "/v1/admin/cluster/nodes/{id}", "", None).records("remove_node", None, Some("4")));
    cluster.kill(4);

    // Refused writes change nothing and leave nothing.
    let before = audit(&cluster, 3, "", 1000).await.len();
    for (method, path, body) in [
        (Method::POST, "/v1/admin/plans", json!({"id": "basic", "name": "again"})),
        (Method::POST, "/v1/admin/plans", json!({"name": "x", "throttle": {"rate_per_sec": -1, "burst": 1}})),
        (Method::PUT, "/v1/admin/apis/nope", json!({"id": "nope", "name": "n", "stages": [{"name": "p"}]})),
        (Method::DELETE, "/v1/admin/apis/shop", Value::Null),
        (Method::POST, "/v1/admin/keys/key_nope/reroll", Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = call(&client, method.clone(), path, body).await;
        assert!((400..500).contains(&status), "{method} {path}: {status} {answer}");
    }
    let (status, _) = call(&client, Method::POST, "/v1/admin/snapshot", None).await;
    assert_eq!(status, 200);
    let after_refusals = audit(&cluster, 3, "", 1000).await.len();
    assert_eq!(after_refusals, before, "refused writes and the snapshot left entries");

    // Deleting what is left: the imported key in the plan, the plan, the API.
    let c1 = imported[0]["id"].as_str().unwrap_or_default().to_string();
    for (route, path, kind, id) in [
        ("/v1/admin/keys/{id}", format!("/v1/admin/keys/{c1}"), "keys", c1.clone()),
        ("/v1/admin/plans/{id}", "/v1/admin/plans/basic".to_string(), "plans", "basic".to_string()),
        ("/v1/admin/apis/{id}", "/v1/admin/apis/shop".to_string(), "apis", "shop".to_string()),
    ] {
        let (status, answer) = call(&client, Method::DELETE, &path, None).await;
        assert_eq!(status, 204, "{path}: {answer}");
        done.push(write(Method::DELETE, route, path, None).records("delete", Some(kind), Some(&id)));
    }

    // Every admin write route of the OpenAPI document is in this table (or
    // changes nothing): a new route without its audit entry fails here.
    let (_, document) = cluster.get(1, "/openapi.json").await;
    let mut writes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if method != "get" && op["security"].to_string().contains("admin_token") {
                writes.insert((method.clone(), path.clone()));
            }
        }
    }
    let covered: BTreeSet<(String, String)> = done
        .iter()
        .map(|w| (w.method.as_str().to_lowercase(), w.route.to_string()))
        .chain(NOT_CHANGES.iter().map(|(m, p)| (m.to_string(), p.to_string())))
        .collect();
    let missing: Vec<_> = writes.difference(&covered).collect();
    assert!(missing.is_empty(), "admin write routes this test does not make: {missing:?}");

    // The trail, read on another node than the one written to: the
    // cluster's forming (nodes 2 and 3 added with the bootstrap token), the
    // token write (bootstrap too), then the table in order.
    let all = audit(&cluster, 3, "", 1000).await;
    let formed: Vec<(&Value, &Value)> = all[..2].iter().map(|e| (&e["action"], &e["id"])).collect();
    assert_eq!(formed, [(&json!("add_node"), &json!("2")), (&json!("add_node"), &json!("3"))]);
    let entries = all[2..].to_vec();
    assert_eq!(entries.len(), done.len() + 1, "{entries:#?}");
    assert_eq!((&entries[0]["action"], &entries[0]["id"]), (&json!("create"), &json!(ops_id)));
    assert_eq!(entries[0]["actor"]["token_name"], "bootstrap");
    assert_eq!(entries[0]["actor"]["token_id"], Value::Null);
    let mut last_seq = 0;
    for (entry, w) in entries[1..].iter().zip(&done) {
        let said = format!("{entry}");
        assert_eq!(entry["actor"]["token_id"], json!(ops_id), "{said}");
        assert_eq!(entry["actor"]["token_name"], "ops-alice", "{said}");
        assert_eq!(entry["actor"]["source"], "127.0.0.1", "{said}");
        assert_eq!(entry["request"], json!(format!("{} {}", w.method, w.route)), "{said}");
        assert_eq!(entry["action"], w.action, "{said}");
        assert_eq!(entry["kind"], json!(w.kind), "{said}");
        assert_eq!(entry["id"], json!(w.id), "{said}");
        let seq = entry["seq"].as_u64().unwrap_or_default();
        assert!(seq > last_seq, "sequence numbers increase: {said}");
        last_seq = seq;
    }
    // What changed: a replace names only the changed fields, with values.
    let renamed = &entries[2];
    assert_eq!(renamed["changes"], json!([{"field": "name", "before": "Shop", "after": "Shop (renamed)"}]));
    let reroll = entries.iter().find(|e| e["action"] == "reroll").cloned().unwrap_or_default();
    let fields: Vec<&str> =
        reroll["changes"].as_array().into_iter().flatten().filter_map(|c| c["field"].as_str()).collect();
    assert!(fields.contains(&"prefix") && fields.contains(&"previous_prefix"), "{reroll}");

    // Never a secret, nor the part of one the admin API shows.
    let text = serde_json::to_string(&entries).unwrap_or_default();
    for secret in &secrets {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret.as_str()), "a secret is in the trail");
        let prefix = &secret[..secret.len().min(12)];
        assert!(!text.contains(prefix), "a secret's prefix {prefix} is in the trail");
    }

    // Filters and pages.
    let keys = audit(&cluster, 1, "&kind=keys", 2).await;
    assert_eq!(keys.len(), done.iter().filter(|w| w.kind == Some("keys")).count());
    assert!(keys.iter().all(|e| e["kind"] == "keys"));
    assert_eq!(audit(&cluster, 1, "&action=reroll", 1000).await.len(), 1);
    assert_eq!(audit(&cluster, 1, "&since=2999-01-01T00:00:00Z", 1000).await.len(), 0);
    assert_eq!(audit(&cluster, 1, "&since=2000-01-01T00:00:00Z", 3).await, all);
    for (query, field) in [
        ("kind=nope", "kind"),
        ("action=drop", "action"),
        ("since=yesterday", "since"),
        ("after=x", "after"),
        ("limit=0", "limit"),
        ("sincee=2026-01-01T00:00:00Z", "sincee"),
    ] {
        let (status, answer) = cluster.get(1, &format!("/v1/admin/audit?{query}")).await;
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some(field)), "{query}: {answer}");
    }

    // The CLI shows the same trail: a row per entry in a table, the
    // API's JSON for scripts.
    let out = Command::new(harness::default_bin())
        .args(["audit", "--kind", "keys", "-o", "table", "--url", &cluster.url(2), "--token", &ops_secret])
        .output()
        .expect("run tollgate audit");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        printed.lines().any(|l| l.contains("ops-alice") && l.contains("reroll") && l.contains(&key_id)),
        "{printed}"
    );
    let out = Command::new(harness::default_bin())
        .args(["audit", "--kind", "keys", "--url", &cluster.url(2), "--token", &ops_secret])
        .output()
        .expect("run tollgate audit");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(keys.len()), "{listed}");
    let printed = format!("{printed}{listed}");
    assert!(!secrets.iter().any(|s| printed.contains(s.as_str())));
}

/// The reason a node gives for one check of the shop's route with `secret`.
async fn check(cluster: &Cluster, id: u64, secret: &str) -> String {
    let req = json!({"api": "shop", "stage": "prod", "method": "GET", "path": "/items/1",
        "headers": {"x-api-key": secret}});
    let response = cluster.http.post(format!("{}/v1/check", cluster.url(id))).json(&req).send().await;
    let decision: Value = match response {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(e) => panic!("check on node {id}: {e}"),
    };
    decision["reason"].as_str().unwrap_or_default().to_string()
}

/// The objects of every collection, without what a restore may change.
async fn everything(cluster: &Cluster, id: u64) -> Value {
    let mut all = serde_json::Map::new();
    for collection in ["apis", "plans", "keys", "policies", "authorizers", "tokens", "ratelimits"] {
        all.insert(collection.into(), Value::Array(cluster.list_all(id, collection, false).await));
    }
    Value::Object(all)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restored_onto_new_nodes_has_every_object_ledger_and_entry_and_its_keys_still_verify() {
    const LIMIT: u64 = 10;
    const USED: u64 = 7;
    let old = Cluster::start(3).await;
    let api = json!({"id": "shop", "name": "Shop", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/items/*", "api_key_required": true}]});
    assert_eq!(old.post(1, "/v1/admin/apis", api).await.0, 201);
    let plan = json!({"id": "basic", "name": "Basic", "quota": {"limit": LIMIT, "period": "day"},
        "api_stages": [{"api_id": "shop", "stage": "prod"}]});
    assert_eq!(old.post(1, "/v1/admin/plans", plan).await.0, 201);
    let policy = json!({"id": "all", "name": "all", "api_id": "shop", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["shop/*"]}]});
    assert_eq!(old.post(1, "/v1/admin/policies", policy).await.0, 201);
    let domain = json!({"id": "edge", "domain": "edge", "descriptors": [{"key": "remote_address",
        "rate_limit": {"requests_per_unit": 5, "unit": "second"}}]});
    assert_eq!(old.post(1, "/v1/admin/ratelimits", domain).await.0, 201);
    let (status, token) = old.post(1, "/v1/admin/tokens", json!({"name": "ops", "scopes": ["write"]})).await;
    assert_eq!(status, 201, "{token}");
    let ops_secret = token["secret"].as_str().unwrap_or_default().to_string();
    let (status, key) = old.post(1, "/v1/admin/keys", json!({"name": "alice", "plan_ids": ["basic"]})).await;
    assert_eq!(status, 201, "{key}");
    let (key_id, secret) = (key["id"].as_str().unwrap_or_default(), key["secret"].as_str().unwrap_or_default());
    wait_until("node 2 has the key", || async {
        old.get(2, &format!("/v1/admin/keys/{key_id}?stale=true")).await.0 == 200
    })
    .await;
    for _ in 0..USED {
        assert_eq!(check(&old, 2, secret).await, "allowed");
    }
    // Settled: every use reported and nothing held, so the backup's ledger
    // says exactly what was used.
    let usage_path = format!("/v1/admin/plans/basic/usage?key_id={key_id}");
    wait_until("usage settled", || async {
        let period = &old.get(1, &usage_path).await.1["items"][0]["current_period"];
        period["used"] == USED && period["held"] == 0
    })
    .await;
    let objects = everything(&old, 1).await;
    let trail = audit(&old, 1, "", 1000).await;
    let created = trail.iter().filter(|e| e["action"] == "create").count();
    assert_eq!(created, 6, "{trail:#?}");

    // Saved through the CLI with a token of the cluster, then the old
    // cluster is gone, data dirs and all.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.snapshot");
    let out = Command::new(harness::default_bin())
        .args(["snapshot", "save"])
        .arg(&file)
        .args(["--url", &old.url(3), "--token", &ops_secret])
        .output()
        .expect("run tollgate snapshot save");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("6 objects") || said.contains("objects"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o777).unwrap_or_default();
    assert_eq!(mode, 0o600, "the backup holds key digests: private to its owner");
    let bytes = std::fs::read(&file).unwrap_or_default();
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a key's secret is in the backup");
    drop(old);

    // A damaged file is refused before anything is written.
    let damaged = dir.path().join("damaged.snapshot");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&damaged, &flipped).unwrap_or_default();
    let seed = dir.path().join("seed");
    let out = Command::new(harness::default_bin())
        .args(["snapshot", "restore"])
        .arg(&damaged)
        .arg("--data-dir")
        .arg(&seed)
        .output()
        .expect("run tollgate snapshot restore");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!seed.join("db").exists(), "a refused restore wrote a store");

    // Restored onto three new nodes: node 1 from the file, 2 and 3 joined.
    let new = Cluster::start_restored(3, Options::default(), &file).await;
    for id in [1, 2, 3] {
        wait_until(&format!("node {id} has the state"), || async {
            new.get(id, &format!("/v1/admin/keys/{key_id}?stale=true")).await.0 == 200
        })
        .await;
    }
    assert_eq!(everything(&new, 2).await, objects, "every object as it was");
    // The trail as it was, then the new cluster's own forming.
    let restored = audit(&new, 3, "", 1000).await;
    assert_eq!(restored[..trail.len()], trail[..], "the audit trail as it was");
    let formed: Vec<&Value> = restored[trail.len()..].iter().map(|e| &e["action"]).collect();
    assert_eq!(formed, [&json!("add_node"), &json!("add_node")]);
    // Node 1 set its own addresses once it led (the backup has none).
    let (_, status) = new.get(2, "/v1/admin/cluster").await;
    let member = status["members"].as_array().into_iter().flatten().find(|m| m["id"] == 1).cloned().unwrap_or_default();
    assert_eq!(member["http_addr"], json!(format!("127.0.0.1:{}", new.node(1).http_port)), "{status}");
    // The key verifies, and the quota goes on from where it was: exactly
    // LIMIT - USED more, on any node.
    let period = &new.get(2, &usage_path).await.1["items"][0]["current_period"];
    assert_eq!((period["used"].as_u64(), period["limit"].as_u64()), (Some(USED), Some(LIMIT)), "{period}");
    let mut allowed = 0;
    for i in 0..(LIMIT - USED + 3) {
        match check(&new, 1 + i % 3, secret).await.as_str() {
            "allowed" => allowed += 1,
            "quota_exceeded" => {}
            other => panic!("check {i}: {other}"),
        }
    }
    assert_eq!(allowed, LIMIT - USED);
    // The bootstrap token and a restored admin token both work.
    let (status, _) = call(&as_token(&new, 3, &ops_secret), Method::GET, "/v1/admin/keys", None).await;
    assert_eq!(status, 200);
}

/// The admin action each admin route needs: the table operators write
/// policies from (the README has it too). Checked against the document:
/// every admin operation is here.
const ROUTE_ACTIONS: &[(&str, &str, &str)] = &[
    ("get", "/v1/admin/apis", "apis:read"),
    ("post", "/v1/admin/apis", "apis:create"),
    ("get", "/v1/admin/apis/{id}", "apis:read"),
    ("put", "/v1/admin/apis/{id}", "apis:update"),
    ("delete", "/v1/admin/apis/{id}", "apis:delete"),
    ("get", "/v1/admin/plans", "plans:read"),
    ("post", "/v1/admin/plans", "plans:create"),
    ("get", "/v1/admin/plans/{id}", "plans:read"),
    ("put", "/v1/admin/plans/{id}", "plans:update"),
    ("delete", "/v1/admin/plans/{id}", "plans:delete"),
    ("get", "/v1/admin/keys", "keys:read"),
    ("post", "/v1/admin/keys", "keys:create"),
    ("get", "/v1/admin/keys/{id}", "keys:read"),
    ("put", "/v1/admin/keys/{id}", "keys:update"),
    ("delete", "/v1/admin/keys/{id}", "keys:delete"),
    ("post", "/v1/admin/keys/{id}/reroll", "keys:reroll"),
    ("post", "/v1/admin/keys/import", "keys:create"),
    ("get", "/v1/admin/policies", "policies:read"),
    ("post", "/v1/admin/policies", "policies:create"),
    ("get", "/v1/admin/policies/{id}", "policies:read"),
    ("put", "/v1/admin/policies/{id}", "policies:update"),
    ("delete", "/v1/admin/policies/{id}", "policies:delete"),
    ("get", "/v1/admin/authorizers", "authorizers:read"),
    ("post", "/v1/admin/authorizers", "authorizers:create"),
    ("get", "/v1/admin/authorizers/{id}", "authorizers:read"),
    ("put", "/v1/admin/authorizers/{id}", "authorizers:update"),
    ("delete", "/v1/admin/authorizers/{id}", "authorizers:delete"),
    ("get", "/v1/admin/tokens", "tokens:read"),
    ("post", "/v1/admin/tokens", "tokens:create"),
    ("get", "/v1/admin/tokens/{id}", "tokens:read"),
    ("put", "/v1/admin/tokens/{id}", "tokens:update"),
    ("delete", "/v1/admin/tokens/{id}", "tokens:delete"),
    ("get", "/v1/admin/ratelimits", "ratelimits:read"),
    ("post", "/v1/admin/ratelimits", "ratelimits:create"),
    ("get", "/v1/admin/ratelimits/{id}", "ratelimits:read"),
    ("put", "/v1/admin/ratelimits/{id}", "ratelimits:update"),
    ("delete", "/v1/admin/ratelimits/{id}", "ratelimits:delete"),
    ("get", "/v1/admin/plans/{id}/usage", "usage:read"),
    ("post", "/v1/admin/plans/{id}/usage/{key_id}", "usage:update"),
    ("get", "/v1/admin/identity-key", "identity:read"),
    ("post", "/v1/admin/identity-key/rotate", "identity:rotate"),
    ("get", "/v1/admin/cluster", "cluster:read"),
    ("post", "/v1/admin/cluster/nodes", "cluster:update"),
    ("post", "/v1/admin/cluster/nodes/{id}/promote", "cluster:update"),
    ("delete", "/v1/admin/cluster/nodes/{id}", "cluster:update"),
    ("get", "/v1/admin/decisions", "decisions:read"),
    ("get", "/v1/admin/audit", "audit:read"),
    ("post", "/v1/admin/snapshot", "snapshot:create"),
];

/// A token of `scopes`, and an identity policy naming it with `statements`
/// (each `(effect, actions, resources, conditions)`); waits until node 1
/// has both. Returns the token's secret.
async fn governed_token(cluster: &Cluster, name: &str, scopes: Value, statements: Vec<Value>) -> String {
    let (status, token) = cluster.post(1, "/v1/admin/tokens", json!({"name": name, "scopes": scopes})).await;
    assert_eq!(status, 201, "{token}");
    let id = token["id"].as_str().unwrap_or_default().to_string();
    let statements: Vec<Value> = statements
        .into_iter()
        .map(|mut s| {
            s["principals"] = json!([format!("token:{id}")]);
            s
        })
        .collect();
    let (status, policy) = cluster
        .post(1, "/v1/admin/policies", json!({"name": format!("{name} policy"), "statements": statements}))
        .await;
    assert_eq!(status, 201, "{policy}");
    has_token(cluster, 1, &id).await;
    token["secret"].as_str().unwrap_or_default().to_string()
}

fn allow(actions: Value, resources: Value) -> Value {
    json!({"effect": "Allow", "actions": actions, "resources": resources})
}

fn deny(actions: Value, resources: Value) -> Value {
    json!({"effect": "Deny", "actions": actions, "resources": resources})
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_statements_decide_what_a_token_may_manage_route_by_route() {
    let cluster = Cluster::start(1).await;
    for api in ["petstore", "billing"] {
        let body = json!({"id": api, "name": api, "stages": [{"name": "prod"}],
            "routes": [{"method": "GET", "path": "/x/*", "api_key_required": true}]});
        assert_eq!(cluster.post(1, "/v1/admin/apis", body).await.0, 201);
    }
    for (plan, api) in [("gold", "petstore"), ("silver", "billing")] {
        let body = json!({"id": plan, "name": plan, "quota": {"limit": 100, "period": "day"},
            "api_stages": [{"api_id": api, "stage": "prod"}]});
        assert_eq!(cluster.post(1, "/v1/admin/plans", body).await.0, 201);
    }
    let key = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
    let pet_key = key(&cluster.post(1, "/v1/admin/keys", json!({"name": "pet", "plan_ids": ["gold"]})).await.1);
    let bill_key = key(&cluster.post(1, "/v1/admin/keys", json!({"name": "bill", "plan_ids": ["silver"]})).await.1);
    let authorizer = json!({"id": "jwt", "name": "jwt", "kind": {"http": {"url": "http://127.0.0.1:1/a",
        "identity_sources": ["header:authorization"], "timeout_ms": 500}}});
    assert_eq!(cluster.post(1, "/v1/admin/authorizers", authorizer).await.0, 201);
    let domain = json!({"id": "edge", "domain": "edge", "descriptors": [{"key": "k",
        "rate_limit": {"requests_per_unit": 5, "unit": "second"}}]});
    assert_eq!(cluster.post(1, "/v1/admin/ratelimits", domain).await.0, 201);

    // Bad admin statements are refused, naming the field.
    for (statement, field) in [
        (
            json!({"effect": "Allow", "principals": ["token:x"], "actions": ["invoke"], "resources": ["*"]}),
            "actions[0]",
        ),
        (
            json!({"effect": "Allow", "principals": ["token:x"], "actions": ["keys:fly"], "resources": ["*"]}),
            "actions[0]",
        ),
        (
            json!({"effect": "Allow", "principals": ["token:x", "key:y"], "actions": ["*"], "resources": ["*"]}),
            "principals",
        ),
    ] {
        let (status, answer) =
            cluster.post(1, "/v1/admin/policies", json!({"name": "bad", "statements": [statement]})).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], json!(format!("statements[0].{field}")), "{answer}");
    }
    let header = json!({"name": "bad", "statements": [{"effect": "Deny", "principals": ["token:x"], "actions": ["*"],
        "resources": ["*"], "conditions": [{"operator": "StringEquals", "key": "header:x-office", "values": ["yes"]}]}]});
    let (status, answer) = cluster.post(1, "/v1/admin/policies", header).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("statements[0].conditions[0].key")), "{answer}");
    let on_api = json!({"name": "bad", "api_id": "petstore", "statements": [
        {"effect": "Allow", "principals": ["token:x"], "actions": ["*"], "resources": ["*"]}]});
    assert_eq!(cluster.post(1, "/v1/admin/policies", on_api).await.0, 400);

    // A petstore key manager: every key action on keys that reach petstore,
    // usage of gold, plans to read; never a key deleted.
    let pet = governed_token(
        &cluster,
        "pet-admin",
        json!(["write"]),
        vec![
            allow(json!(["keys:*"]), json!(["api/petstore/*"])),
            allow(json!(["usage:read"]), json!(["plan/gold"])),
            allow(json!(["plans:read"]), json!(["plan/*"])),
            deny(json!(["keys:delete"]), json!(["*"])),
        ],
    )
    .await;
    let pet = as_token(&cluster, 1, &pet);
    let (status, made) =
        call(&pet, Method::POST, "/v1/admin/keys", Some(json!({"name": "p2", "plan_ids": ["gold"]}))).await;
    assert_eq!(status, 201, "{made}");
    let (status, answer) =
        call(&pet, Method::POST, "/v1/admin/keys", Some(json!({"name": "b2", "plan_ids": ["silver"]}))).await;
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("keys:create") && message.contains("api/billing/prod/key/"), "{message}");
    assert_eq!(call(&pet, Method::POST, "/v1/admin/keys", Some(json!({"name": "none"}))).await.0, 403);
    let moved = json!({"name": "pet", "plan_ids": ["silver"]});
    assert_eq!(call(&pet, Method::PUT, &format!("/v1/admin/keys/{pet_key}"), Some(moved)).await.0, 403);
    let renamed = json!({"name": "pet2", "plan_ids": ["gold"]});
    assert_eq!(call(&pet, Method::PUT, &format!("/v1/admin/keys/{pet_key}"), Some(renamed)).await.0, 200);
    let (status, answer) = call(&pet, Method::DELETE, &format!("/v1/admin/keys/{pet_key}"), None).await;
    assert_eq!(status, 403, "an explicit deny beats keys:*");
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("denies"), "{answer}");
    assert_eq!(call(&pet, Method::POST, &format!("/v1/admin/keys/{pet_key}/reroll"), None).await.0, 200);
    assert_eq!(call(&pet, Method::POST, &format!("/v1/admin/keys/{bill_key}/reroll"), None).await.0, 403);
    assert_eq!(call(&pet, Method::GET, &format!("/v1/admin/keys/{bill_key}"), None).await.0, 403);
    let (status, page) = call(&pet, Method::GET, "/v1/admin/keys", None).await;
    assert_eq!(status, 200);
    let listed: BTreeSet<String> = page["items"].as_array().into_iter().flatten().map(key).collect();
    assert_eq!(listed, BTreeSet::from([pet_key.clone(), key(&made)]), "only keys that reach petstore");
    assert_eq!(call(&pet, Method::GET, "/v1/admin/plans/gold/usage", None).await.0, 200);
    assert_eq!(call(&pet, Method::GET, "/v1/admin/plans/silver/usage", None).await.0, 403);
    let (_, plans) = call(&pet, Method::GET, "/v1/admin/plans", None).await;
    assert_eq!(plans["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(call(&pet, Method::GET, "/v1/admin/apis", None).await.0, 403);

    // Allowed everything, a governed token still may not touch admin tokens
    // or the policies that govern it (it could give itself more, or free
    // itself), and its scope still bounds it.
    let broad = governed_token(&cluster, "broad", json!(["write"]), vec![allow(json!(["*"]), json!(["*"]))]).await;
    let broad = as_token(&cluster, 1, &broad);
    let body = json!({"id": "shop", "name": "shop", "stages": [{"name": "prod"}], "routes": []});
    assert_eq!(call(&broad, Method::POST, "/v1/admin/apis", Some(body)).await.0, 201);
    let (status, _) =
        call(&broad, Method::POST, "/v1/admin/tokens", Some(json!({"name": "x", "scopes": ["write"]}))).await;
    assert_eq!(status, 403);
    let (_, policies) = cluster.get(1, "/v1/admin/policies").await;
    for policy in policies["items"].as_array().into_iter().flatten() {
        let path = format!("/v1/admin/policies/{}", key(policy));
        assert_eq!(call(&broad, Method::DELETE, &path, None).await.0, 403, "{path}");
    }
    let sneaky = json!({"name": "sneaky", "statements": [
        {"effect": "Allow", "principals": ["token:*"], "actions": ["*"], "resources": ["*"]}]});
    assert_eq!(call(&broad, Method::POST, "/v1/admin/policies", Some(sneaky)).await.0, 403);
    let reader = governed_token(&cluster, "reader", json!(["read"]), vec![allow(json!(["*"]), json!(["*"]))]).await;
    let body = json!({"id": "shop2", "name": "shop", "stages": [{"name": "prod"}], "routes": []});
    assert_eq!(call(&as_token(&cluster, 1, &reader), Method::POST, "/v1/admin/apis", Some(body)).await.0, 403);

    // Conditions: only from 10.0.0.0/8 (the tests call from 127.0.0.1).
    let office = governed_token(
        &cluster,
        "office",
        json!(["write"]),
        vec![json!({"effect": "Allow",
        "actions": ["*"], "resources": ["*"],
        "conditions": [{"operator": "IpAddress", "key": "source_ip", "values": ["10.0.0.0/8"]}]})],
    )
    .await;
    assert_eq!(call(&as_token(&cluster, 1, &office), Method::GET, "/v1/admin/cluster", None).await.0, 403);

    // The trail shows a governed token the changes to what it may read.
    let key_auditor = governed_token(
        &cluster,
        "key-auditor",
        json!(["read"]),
        vec![allow(json!(["audit:read"]), json!(["audit"])), allow(json!(["keys:read"]), json!(["api/petstore/*"]))],
    )
    .await;
    let (status, page) =
        call(&as_token(&cluster, 1, &key_auditor), Method::GET, "/v1/admin/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{page}");
    let seen: BTreeSet<String> =
        page["items"].as_array().into_iter().flatten().map(|e| key(&json!({"id": e["id"]}))).collect();
    assert!(seen.contains(&pet_key) && seen.contains(&key(&made)), "{seen:?}");
    assert!(!seen.contains(&bill_key) && !seen.contains("gold") && !seen.contains("petstore"), "{seen:?}");

    // Route by route: a token allowed only audit:read gets a 403 naming
    // each route's action, before any body is read; the audit route works.
    let audit_only =
        governed_token(&cluster, "auditor", json!(["write"]), vec![allow(json!(["audit:read"]), json!(["audit"]))])
            .await;
    let auditor = as_token(&cluster, 1, &audit_only);
    let (_, document) = cluster.get(1, "/openapi.json").await;
    let mut admin_ops = BTreeSet::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if op["security"].to_string().contains("admin_token") {
                admin_ops.insert((method.clone(), path.clone()));
            }
        }
    }
    let table: BTreeSet<(String, String)> =
        ROUTE_ACTIONS.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(admin_ops, table, "every admin operation has its action in ROUTE_ACTIONS");
    for (method, route, action) in ROUTE_ACTIONS {
        let path = route.replace("{id}", "gold").replace("{key_id}", &pet_key);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap_or(Method::GET);
        let (status, answer) = call(&auditor, method.clone(), &path, None).await;
        if *action == "audit:read" {
            assert_eq!(status, 200, "{method} {path}: {answer}");
            continue;
        }
        assert_eq!(status, 403, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(action), "{method} {path}: {message} should name {action}");
    }
}

//! The admin API for tooling (feature `admin`): keys, plans, usage and the
//! cluster, typed; any other route untyped ([`AdminClient::request`], which
//! the typed calls are built on).
//!
//! [`AdminClient`] is built from the HTTP addresses of some nodes and an
//! admin token. Any node serves any call (writes are forwarded to the
//! leader); a node that cannot be reached, or answers 503 because the cluster
//! is electing a leader, is skipped for the next one. Answers the cluster
//! gives — 400 naming a field, 404, 409 — are returned as [`AdminError::Api`]
//! and never retried.
//!
//! Writes carry an `Idempotency-Key`, the same on every node tried, so a
//! write retried after a node failed midway takes effect once.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
pub use tollgate_proto::model::{ApiKeySpec, ApiKeyView, UsagePlan};
pub use tollgate_proto::usage::{PeriodUsage, UsageReport};

/// Why an admin call failed: the cluster said no, or no node answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The cluster answered with an error: the status, its code, the field
    /// at fault if there is one, and the message.
    #[error("{status} {code}: {}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Api {
        /// The HTTP status (400, 401, 403, 404, 409, ...); 0 when the call
        /// was refused before it was sent (a body that cannot be encoded).
        status: u16,
        /// The stable error code from the body's `error.code`
        /// (`invalid_field`, `not_found`, `conflict`, `already_created`,
        /// ...); `error` when the body has none, `undecodable` when a 2xx
        /// answer was not the expected JSON.
        code: String,
        /// The field at fault, `error.field` (`limit`, `id`, `throttle.rate_per_sec`).
        field: Option<String>,
        /// What went wrong and how to fix it (`error.message`, else the body).
        message: String,
    },
    /// No node answered.
    #[error("no Tollgate node answered: {0}")]
    Unavailable(String),
}

/// A key just made (or rerolled), with its secret: shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key as the admin API shows it (no secret, its visible prefix).
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The key's secret, for the caller to hand over now: the cluster
    /// stores only its SHA-256 hash and can never show it again.
    pub secret: String,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page, in id order; at most the `limit` asked for.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; None on the last.
    pub next_after: Option<String>,
}

/// Which days a usage report covers (UTC, `YYYY-MM-DD`; default today).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// Only this key's usage; `None`: every key of the plan.
    pub key_id: Option<String>,
    /// The first day reported, inclusive (`YYYY-MM-DD`, UTC); `None`: today.
    pub start_date: Option<String>,
    /// The last day reported, inclusive (`YYYY-MM-DD`, UTC); `None`: today.
    pub end_date: Option<String>,
}

/// Typed calls to the admin API of a cluster, tried on each node in turn
/// (see the module docs). Holds one HTTP connection pool; build one and
/// share it.
pub struct AdminClient {
    nodes: Vec<String>,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `nodes`: base URLs such as `http://10.0.0.1:8081`.
    pub fn new<I, S>(nodes: I, token: impl Into<String>) -> Result<Self, AdminError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_http(nodes, token, Self::http(None)?)
    }

    /// Also trusts the PEM CA certificate `ca_pem` for `https://` nodes (a
    /// cluster whose certificates a private CA signed, as `tollgate certs`
    /// makes); the public web roots are always trusted.
    pub fn trusting(mut self, ca_pem: &[u8]) -> Result<Self, AdminError> {
        let ca = reqwest::Certificate::from_pem(ca_pem)
            .map_err(|e| AdminError::Unavailable(format!("not a PEM CA certificate: {e}")))?;
        self.http = Self::http(Some(ca))?;
        Ok(self)
    }

    fn http(ca: Option<reqwest::Certificate>) -> Result<reqwest::Client, AdminError> {
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(15));
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca);
        }
        builder.build().map_err(|e| AdminError::Unavailable(e.to_string()))
    }

    /// One call, tried on each node in turn until one answers.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, AdminError> {
        let (status, value) = self.request(method, path, body).await?;
        if status == 503 {
            // Every node that answered was electing a leader (or out of space).
            return Err(AdminError::Unavailable(value.to_string()));
        }
        if !(200..300).contains(&status) {
            let text = |name: &str| value["error"][name].as_str().map(str::to_string);
            let message = text("message").unwrap_or_else(|| match &value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            });
            return Err(AdminError::Api {
                status,
                code: text("code").unwrap_or_else(|| "error".into()),
                field: text("field"),
                message,
            });
        }
        serde_json::from_value(value).map_err(|e| AdminError::Api {
            status,
            code: "undecodable".into(),
            field: None,
            message: e.to_string(),
        })
    }

    /// Creates a key (`POST /v1/admin/keys`); the answer carries its secret,
    /// shown this once. A retry with the same idempotency key after the key
    /// was made is a 409 `already_created`.
    pub async fn create_key(&self, spec: &ApiKeySpec) -> Result<CreatedKey, AdminError> {
        self.call(reqwest::Method::POST, "/v1/admin/keys", Some(&to_value(spec)?)).await
    }

    /// Creates up to [`MAX_IMPORT`] keys at once (`POST
    /// /v1/admin/keys/import`), all or none, in one replicated write; the
    /// answer holds each key with its secret, shown this once, in the order
    /// given. A bad spec is a 400 naming it (`items[3].plan_ids`), and
    /// nothing is created. A retry with the same idempotency key after the
    /// keys were made is a 409 `already_created`.
    pub async fn import_keys(&self, specs: &[ApiKeySpec]) -> Result<Vec<CreatedKey>, AdminError> {
        let body = json!({ "items": specs.iter().map(to_value).collect::<Result<Vec<_>, _>>()? });
        let imported: Imported = self.call(reqwest::Method::POST, "/v1/admin/keys/import", Some(&body)).await?;
        Ok(imported.items)
    }

    /// The key `id` (`GET /v1/admin/keys/{id}`); 404 when there is none.
    pub async fn get_key(&self, id: &str) -> Result<ApiKeyView, AdminError> {
        self.call(reqwest::Method::GET, &format!("/v1/admin/keys/{}", segment(id)?), None).await
    }

    /// One page of keys in id order (`GET /v1/admin/keys`): those after the
    /// id `after` (`None`: from the first), at most `limit` (1 to 1000, else
    /// a 400 naming `limit`).
    pub async fn list_keys(&self, after: Option<&str>, limit: usize) -> Result<Page<ApiKeyView>, AdminError> {
        let mut path = format!("/v1/admin/keys?limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={}", segment(after)?));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// Replaces the key `id`'s settings with `spec` (`PUT
    /// /v1/admin/keys/{id}`); its secret is kept. 404 when there is none.
    pub async fn update_key(&self, id: &str, spec: &ApiKeySpec) -> Result<ApiKeyView, AdminError> {
        self.call(reqwest::Method::PUT, &format!("/v1/admin/keys/{}", segment(id)?), Some(&to_value(spec)?)).await
    }

    /// Deletes the key `id` (`DELETE /v1/admin/keys/{id}`); checks stop
    /// accepting its secret once the deletion is applied.
    pub async fn delete_key(&self, id: &str) -> Result<(), AdminError> {
        let _: Value = self.call(reqwest::Method::DELETE, &format!("/v1/admin/keys/{}", segment(id)?), None).await?;
        Ok(())
    }

    /// A new secret for the key; the old one keeps working for `overlap_secs`.
    pub async fn reroll_key(&self, id: &str, overlap_secs: u64) -> Result<CreatedKey, AdminError> {
        let path = format!("/v1/admin/keys/{}/reroll", segment(id)?);
        self.call(reqwest::Method::POST, &path, Some(&json!({"overlap_secs": overlap_secs}))).await
    }

    /// Creates a usage plan (`POST /v1/admin/plans`) under `plan.id`, or a
    /// new id when it is empty; returns the plan as stored. 409 `conflict`
    /// when the id is taken.
    pub async fn create_plan(&self, plan: &UsagePlan) -> Result<UsagePlan, AdminError> {
        self.call(reqwest::Method::POST, "/v1/admin/plans", Some(&to_value(plan)?)).await
    }

    /// The usage plan `id` (`GET /v1/admin/plans/{id}`); 404 when there is none.
    pub async fn get_plan(&self, id: &str) -> Result<UsagePlan, AdminError> {
        self.call(reqwest::Method::GET, &format!("/v1/admin/plans/{}", segment(id)?), None).await
    }

    /// Replaces the usage plan named by `plan.id` (`PUT
    /// /v1/admin/plans/{id}`); returns it as stored. 404 when there is none.
    pub async fn update_plan(&self, plan: &UsagePlan) -> Result<UsagePlan, AdminError> {
        let path = format!("/v1/admin/plans/{}", segment(&plan.id)?);
        self.call(reqwest::Method::PUT, &path, Some(&to_value(plan)?)).await
    }

    /// Deletes the usage plan `id` (`DELETE /v1/admin/plans/{id}`).
    pub async fn delete_plan(&self, id: &str) -> Result<(), AdminError> {
        let _: Value = self.call(reqwest::Method::DELETE, &format!("/v1/admin/plans/{}", segment(id)?), None).await?;
        Ok(())
    }

    /// Quota usage of a plan's keys per day (GetUsage), read linearizably.
    pub async fn get_usage(&self, plan_id: &str, query: &UsageQuery) -> Result<UsageReport, AdminError> {
        let mut params = Vec::new();
        for (name, value) in
            [("key_id", &query.key_id), ("start_date", &query.start_date), ("end_date", &query.end_date)]
        {
            if let Some(v) = value {
                params.push(format!("{name}={}", segment(v)?));
            }
        }
        let path = format!("/v1/admin/plans/{}/usage?{}", segment(plan_id)?, params.join("&"));
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// Adds `delta` to what the key may still use this period (negative
    /// takes away): UpdateUsage.
    pub async fn update_usage(&self, plan_id: &str, key_id: &str, delta: i64) -> Result<PeriodUsage, AdminError> {
        let path = format!("/v1/admin/plans/{}/usage/{}", segment(plan_id)?, segment(key_id)?);
        self.call(reqwest::Method::POST, &path, Some(&json!({"delta": delta}))).await
    }
}

fn to_value<T: Serialize>(value: &T) -> Result<Value, AdminError> {
    serde_json::to_value(value).map_err(|e| AdminError::Api {
        status: 0,
        code: "unencodable".into(),
        field: None,
        message: e.to_string(),
    })
}

/// An id as one path segment or query value: ids are plain (letters, digits,
/// `-`, `_`, `.`), anything else is refused before it is sent.
fn segment(id: &str) -> Result<&str, AdminError> {
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(id)
    } else {
        Err(AdminError::Api {
            status: 400,
            code: "invalid_field".into(),
            field: Some("id".into()),
            message: format!("{id:?} is not a plain id (letters, digits, '-', '_', '.')"),
        })
    }
}

/// The HTTP method of an [`AdminClient::request`] (reqwest's, re-exported so
/// callers need no reqwest of their own).
pub use reqwest::Method;

/// A node's view of the cluster (`GET /v1/admin/cluster`), the fields
/// tooling waits on; the answer has more (log indexes), which are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// Its Raft role: `Leader`, `Follower`, `Candidate`, `Learner`, or
    /// `Removed` once it was taken out of the cluster.
    pub state: String,
    /// The leader it follows; None while there is none (an election) or
    /// after it was removed.
    pub leader_id: Option<u64>,
    /// The Raft term it is in.
    pub term: u64,
    /// The members it knows of, voters and learners.
    pub members: Vec<ClusterMember>,
}

/// One member of the cluster, as [`ClusterStatus`] lists it and as
/// [`AdminClient::add_node`] adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Its node id (above 0).
    pub id: u64,
    /// `host:port` of its HTTP listener (check and admin API).
    pub http_addr: String,
    /// `host:port` the other nodes reach its peer listener at.
    pub peer_addr: String,
    /// `host:port` of its binary check listener, for client discovery;
    /// empty if it has none.
    #[serde(default)]
    pub wire_addr: String,
    /// A voter (true) or a learner, which serves checks but does not vote.
    pub voter: bool,
}

impl Clone for AdminClient {
    /// The same nodes and token; the connection pool is shared.
    fn clone(&self) -> Self {
        AdminClient { nodes: self.nodes.clone(), token: self.token.clone(), http: self.http.clone() }
    }
}

impl AdminClient {
    /// Like [`AdminClient::new`], but sends through `http` as it is
    /// configured (timeouts, trusted CAs, pool size), for a caller that
    /// already has a client it wants every call to share; cheap (nothing is
    /// built), so a client per node or per call costs nothing. Fails as
    /// `new` does when `nodes` is empty.
    pub fn with_http<I, S>(nodes: I, token: impl Into<String>, http: reqwest::Client) -> Result<Self, AdminError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.into().trim_end_matches('/').to_string()).collect();
        if nodes.is_empty() {
            return Err(AdminError::Unavailable("no node addresses given".into()));
        }
        Ok(AdminClient { nodes, token: token.into(), http })
    }

    /// Any admin route, untyped, for routes without a method here and for
    /// callers that must see the status as it is (tests, a CLI that prints
    /// what it gets).
    ///
    /// `path` starts with `/` and may carry a query (`/v1/admin/keys?limit=5`);
    /// it is sent as given. `body` is sent as JSON. Writes carry an
    /// `Idempotency-Key`, as in the typed methods.
    ///
    /// Returns the status and the body: parsed JSON, `Null` when empty, a
    /// JSON string holding the text when it is not JSON. Every status is an
    /// `Ok` here, 4xx and 5xx included; nodes are tried in turn while a node
    /// cannot be reached or answers 503, and if every node that answered
    /// said 503 the last 503 is returned. Errors: [`AdminError::Unavailable`]
    /// when no node answered at all (its message has each cause in turn).
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), AdminError> {
        let idempotency_key = format!("{:032x}", rand::random::<u128>());
        let mut unavailable: Option<(u16, Value)> = None;
        let mut last = String::new();
        for node in &self.nodes {
            let mut request = self.http.request(method.clone(), format!("{node}{path}")).bearer_auth(&self.token);
            if method != Method::GET && method != Method::HEAD {
                request = request.header("idempotency-key", &idempotency_key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.text().await.map(|text| (status, text))
                }
                Err(e) => Err(e),
            };
            let (status, text) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    last = format!("{node}: {}", error_chain(&e));
                    continue;
                }
            };
            let value =
                if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
            if status == 503 {
                unavailable = Some((status, value));
                continue;
            }
            return Ok((status, value));
        }
        unavailable.ok_or(AdminError::Unavailable(last))
    }

    /// A backup of the whole replicated state (`POST /v1/admin/snapshot`):
    /// the file `tollgate snapshot restore` reads, consistent with every
    /// write acknowledged before the call. Needs a `write` token. Taken on
    /// the first node that answers (each does a read barrier through the
    /// leader first); errors as for the typed methods.
    pub async fn snapshot(&self) -> Result<Vec<u8>, AdminError> {
        let mut last = String::new();
        for node in &self.nodes {
            let request = self.http.post(format!("{node}/v1/admin/snapshot")).bearer_auth(&self.token);
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    last = format!("{node}: {}", error_chain(&e));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last = format!("{node}: {}", error_chain(&e));
                    continue;
                }
            };
            if (200..300).contains(&status) {
                return Ok(body.to_vec());
            }
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status == 503 {
                last = format!("{node}: {value}");
                continue;
            }
            let text = |name: &str| value["error"][name].as_str().map(str::to_string);
            return Err(AdminError::Api {
                status,
                code: text("code").unwrap_or_else(|| "error".into()),
                field: text("field"),
                message: text("message").unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            });
        }
        Err(AdminError::Unavailable(last))
    }

    /// The answering node's view of the cluster: its role, the leader it
    /// follows and the members. Read on the first node that answers, so
    /// for "who leads?" ask each node (one client per node) and compare.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, AdminError> {
        self.call(reqwest::Method::GET, "/v1/admin/cluster", None).await
    }

    /// Adds `member` to the cluster (as a voter if `member.voter`, after it
    /// caught up as a learner). The node must be running and not yet a
    /// member. Errors: 400 naming a bad address, 409 if the id is taken.
    pub async fn add_node(&self, member: &ClusterMember) -> Result<(), AdminError> {
        let _: Value = self.call(reqwest::Method::POST, "/v1/admin/cluster/nodes", Some(&to_value(member)?)).await?;
        Ok(())
    }

    /// Every item of a collection (`keys`, `plans`, `apis`, `policies`,
    /// `authorizers`, `tokens`), following pages of up to 1000, as JSON.
    /// `stale`: read the answering node's local copy instead of a
    /// linearizable read. Errors as for the typed methods, per page.
    pub async fn list_all(&self, collection: &str, stale: bool) -> Result<Vec<Value>, AdminError> {
        let collection = segment(collection)?;
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/admin/{collection}?limit=1000&stale={stale}");
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", query_value(after)));
            }
            let page: Page<Value> = self.call(reqwest::Method::GET, &path, None).await?;
            items.extend(page.items);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }
}

/// `value` percent-encoded for a query string: every byte but the
/// unreserved ones (RFC 3986) encoded, so an id never splits the query.
fn query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// An error with its causes, `a: b: c`, so "cannot connect" says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod request_tests {
    use super::*;

    /// A fake node answering every request with `status` and a JSON body
    /// naming the node; its base URL.
    async fn node(name: &'static str, status: u16) -> String {
        use axum::http::StatusCode;
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| async move {
            let idempotent = request.headers().contains_key("idempotency-key");
            let status = StatusCode::from_u16(status).expect("status");
            (status, axum::Json(json!({"node": name, "idempotency_key": idempotent})))
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// A base URL where nothing listens (a port bound, then let go).
    fn nobody() -> String {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    }

    #[tokio::test]
    async fn a_request_returns_any_status_and_skips_nodes_that_are_down_or_electing() {
        let (electing, refusing) = (node("electing", 503).await, node("refusing", 404).await);
        let client = AdminClient::new([nobody(), electing, refusing], "t").expect("client");
        let (status, body) = client.request(Method::POST, "/v1/admin/x", Some(&json!({}))).await.expect("answer");
        assert_eq!((status, body["node"].as_str()), (404, Some("refusing")));
        assert_eq!(body["idempotency_key"], true, "a write carries an Idempotency-Key");
        let (_, body) = client.request(Method::GET, "/v1/admin/x", None).await.expect("answer");
        assert_eq!(body["idempotency_key"], false, "a read does not");
    }

    #[tokio::test]
    async fn a_request_returns_the_last_503_and_is_unavailable_only_when_nobody_answers() {
        let client = AdminClient::new([node("electing", 503).await, nobody()], "t").expect("client");
        let (status, body) = client.request(Method::GET, "/readyz", None).await.expect("answer");
        assert_eq!((status, body["node"].as_str()), (503, Some("electing")));
        let client = AdminClient::new([nobody()], "t").expect("client");
        match client.request(Method::GET, "/readyz", None).await {
            Err(AdminError::Unavailable(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(query_value("plan-1_a.b~"), "plan-1_a.b~");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

/// The most keys [`AdminClient::import_keys`] takes at once.
pub const MAX_IMPORT: usize = 1000;

/// The answer to a key import.
#[derive(serde::Deserialize)]
struct Imported {
    items: Vec<CreatedKey>,
}

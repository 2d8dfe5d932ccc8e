//! Custom HTTP authorizers (the Lambda-authorizer role): the node POSTs the
//! request's identity to a configured URL and gets back allow/deny, a
//! principal and context — or a policy document, evaluated against the
//! request's resource as IAM would. A call that times out or fails denies
//! with its own reason; it never hangs the check.
//!
//! Request body: `{"type": "TOKEN", "authorization_token": …, "method_arn": …}`
//! or, in request mode, `{"type": "REQUEST", "method_arn", "method", "path",
//! "headers", "query", "source_ip", "identity"}`, where `path`, `source_ip`
//! and the `method_arn` are the canonical ones the gateway decided on (so the
//! authorizer judges the request the backend will serve). Answer (at most
//! [`MAX_ANSWER_BYTES`]): `{"allow": bool, "principal_id": …, "context":
//! {…}}` or `{"principalId": …, "policyDocument": {"Statement": [{"Effect",
//! "Resource"}]}, "context": {…}}`; either may carry `usageIdentifierKey`,
//! the API key to meter the request under when the API's key source is the
//! authorizer (API Gateway's API key source AUTHORIZER). 401 and 403 answers
//! deny.
//!
//! # The answer cache
//!
//! Answers are reused for the authorizer's `cache_ttl_secs`, under a key that
//! holds everything the answer can depend on: the authorizer (id, URL, mode)
//! and the values of its identity sources, and
//! - for a bare allow/deny answer, also the method ARN (`api/stage/METHOD/path`)
//!   it was given for: as in API Gateway, a bare answer applies only to the
//!   method it was asked about, so `GET /pets/1` allowed never lets
//!   `DELETE /pets/1` through;
//! - a policy document is kept per identity and evaluated against the
//!   resource of each request.
//!
//! At most [`MAX_CACHED`] answers are kept; past that the oldest go first, one
//! for each new answer (expired ones at the front of the line go as they are
//! reached), so a full cache never empties at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_proto::model::{HttpAuthorizer, HttpAuthorizerMode};

use super::pattern::glob_matches;
use super::ValidRequest;

/// Most answers kept (see the module doc for what goes when it is reached).
pub const MAX_CACHED: usize = 100_000;
/// The largest answer read from an authorizer, in bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest `usageIdentifierKey` accepted, in characters.
pub const MAX_USAGE_KEY: usize = 1024;

#[derive(Debug, Clone)]
enum Verdict {
    Allow(bool),
    /// (allow?, resource patterns) per statement.
    Policy(Vec<(bool, Vec<String>)>),
}

/// An API key secret named by an authorizer; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct UsageKey(pub String);

impl fmt::Debug for UsageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UsageKey(…)")
    }
}

#[derive(Debug, Clone)]
struct Answer {
    verdict: Verdict,
    principal_id: Option<String>,
    context: BTreeMap<String, String>,
    usage_key: Option<UsageKey>,
}

/// The authorizer's answer for one request.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    pub principal_id: Option<String>,
    pub context: BTreeMap<String, String>,
    /// The answer's `usageIdentifierKey`: the API key secret to meter the
    /// request under, when the API takes its key from the authorizer.
    pub usage_key: Option<UsageKey>,
    pub cache_hit: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// An identity source is missing from the request (401).
    MissingIdentity(String),
    TimedOut,
    Error(String),
}

/// SHA-256 over the parts that key one cached answer.
type CacheKey = [u8; 32];

struct Cached {
    answer: Answer,
    expires: Instant,
    /// Which insertion this is: the line in `order` that is current.
    seq: u64,
}

/// Answers by key, and the order they came in (oldest first) for eviction.
#[derive(Default)]
struct AnswerCache {
    map: HashMap<CacheKey, Cached>,
    /// (key, seq) per insertion; an entry whose seq is no longer the map's
    /// (the key was answered again since) is skipped.
    order: VecDeque<(CacheKey, u64)>,
    next_seq: u64,
}

impl AnswerCache {
    fn get(&self, key: &CacheKey, now: Instant) -> Option<Answer> {
        self.map.get(key).filter(|c| c.expires > now).map(|c| c.answer.clone())
    }

    fn insert(&mut self, key: CacheKey, answer: Answer, expires: Instant, now: Instant, max: usize) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.map.insert(key, Cached { answer, expires, seq });
        self.order.push_back((key, seq));
        // From the front: lines for answers replaced since, expired answers,
        // and the oldest answers while there are too many.
        while let Some(&(front, front_seq)) = self.order.front() {
            match self.map.get(&front) {
                Some(c) if c.seq == front_seq => {
                    if c.expires > now && self.map.len() <= max {
                        break;
                    }
                    self.map.remove(&front);
                }
                _ => {}
            }
            self.order.pop_front();
        }
        // Lines for keys answered again pile up behind the front: drop them
        // when they outnumber the answers.
        if self.order.len() > 2 * max.max(1) {
            let map = &self.map;
            self.order.retain(|(k, s)| map.get(k).is_some_and(|c| c.seq == *s));
        }
    }
}

pub struct HttpAuthorizers {
    http: reqwest::Client,
    cache: Mutex<AnswerCache>,
    /// [`MAX_CACHED`], or less in tests.
    pub(crate) max_cached: usize,
}

impl Default for HttpAuthorizers {
    fn default() -> Self {
        Self::trusting(&[])
    }
}

impl HttpAuthorizers {
    /// Calls authorizers over HTTPS trusting the public web roots and `roots`.
    pub fn trusting(roots: &[reqwest::Certificate]) -> Self {
        let builder = crate::tls::http_trusting(roots).connect_timeout(Duration::from_millis(500));
        let http = builder.build().unwrap_or_default();
        HttpAuthorizers { http, cache: Mutex::new(AnswerCache::default()), max_cached: MAX_CACHED }
    }

    /// Answers held now (expired ones included until they are dropped).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }
}

fn parse_answer(body: &Value) -> Result<Answer, String> {
    let context = body
        .get("context")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let principal_id = ["principal_id", "principalId"].iter().find_map(|k| body.get(*k)?.as_str()).map(str::to_string);
    let usage_key = match ["usageIdentifierKey", "usage_identifier_key"].iter().find_map(|k| body.get(*k)) {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.len() <= MAX_USAGE_KEY => Some(UsageKey(k.clone())),
        Some(_) => return Err(format!("usageIdentifierKey must be a string of at most {MAX_USAGE_KEY} characters")),
    };
    let verdict = if let Some(allow) = body.get("allow").and_then(Value::as_bool) {
        Verdict::Allow(allow)
    } else {
        let missing = || "the authorizer's answer has no allow or policyDocument".to_string();
        let statements = body.get("policyDocument").and_then(|p| p.get("Statement")?.as_array()).ok_or_else(missing)?;
        let mut parsed = Vec::new();
        for s in statements {
            let allow = s.get("Effect").and_then(Value::as_str).ok_or_else(missing)? == "Allow";
            let resources = match s.get("Resource") {
                Some(Value::String(r)) => vec![r.clone()],
                Some(Value::Array(rs)) => rs.iter().filter_map(|r| r.as_str().map(str::to_string)).collect(),
                _ => return Err(missing()),
            };
            parsed.push((allow, resources));
        }
        Verdict::Policy(parsed)
    };
    Ok(Answer { verdict, principal_id, context, usage_key })
}

fn allows(verdict: &Verdict, resource: &str) -> bool {
    match verdict {
        Verdict::Allow(a) => *a,
        Verdict::Policy(statements) => {
            let matching = |want: bool| {
                statements.iter().any(|(allow, rs)| *allow == want && rs.iter().any(|r| glob_matches(r, resource)))
            };
            !matching(false) && matching(true)
        }
    }
}

/// SHA-256 over length-prefixed parts, so no two lists of parts collide.
fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> CacheKey {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

fn outcome(answer: Answer, resource: &str, cache_hit: bool) -> Outcome {
    Outcome {
        allowed: allows(&answer.verdict, resource),
        principal_id: answer.principal_id,
        context: answer.context,
        usage_key: answer.usage_key,
        cache_hit,
    }
}

impl HttpAuthorizers {
    /// Asks the authorizer `id` (or its cached answer) about this request;
    /// `resource` is the method ARN, `api/stage/METHOD/path` (canonical).
    pub(super) async fn authorize(
        &self,
        id: &str,
        config: &HttpAuthorizer,
        c: &ValidRequest<'_>,
        resource: &str,
    ) -> Result<Outcome, Failure> {
        let headers = &c.headers;
        let mut identity = BTreeMap::new();
        for source in &config.identity_sources {
            let value = if let Some(name) = source.strip_prefix("header:") {
                headers.get(name)
            } else if let Some(name) = source.strip_prefix("query:") {
                c.query.get(name)
            } else {
                None
            };
            match value.filter(|v| !v.is_empty()) {
                Some(v) => identity.insert(source.clone(), v.clone()),
                None => return Err(Failure::MissingIdentity(source.clone())),
            };
        }
        let mode = match config.mode {
            HttpAuthorizerMode::Token => "token",
            HttpAuthorizerMode::Request => "request",
        };
        let who = [id, config.url.as_str(), mode].into_iter().chain(identity.iter().flat_map(|(k, v)| [k.as_str(), v]));
        let per_identity = digest(who.clone().chain(["policy"]));
        let per_resource = digest(who.chain(["resource", resource]));
        let ttl = Duration::from_secs(u64::from(config.cache_ttl_secs));
        if !ttl.is_zero() {
            let now = Instant::now();
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(answer) = cache.get(&per_identity, now).or_else(|| cache.get(&per_resource, now)) {
                return Ok(outcome(answer, resource, true));
            }
        }
        let body = match config.mode {
            HttpAuthorizerMode::Token => json!({
                "type": "TOKEN",
                "authorization_token": identity.values().next(),
                "method_arn": resource,
            }),
            HttpAuthorizerMode::Request => json!({
                "type": "REQUEST",
                "method_arn": resource,
                "method": c.method,
                "path": c.path,
                "headers": headers,
                "query": c.query,
                "source_ip": c.source_ip.map(|ip| ip.to_string()),
                "identity": identity,
            }),
        };
        let answer = self.call(config, &body).await?;
        if !ttl.is_zero() {
            let now = Instant::now();
            if let Some(expires) = now.checked_add(ttl) {
                // A bare answer holds for its method ARN only; a policy for the identity.
                let key = match answer.verdict {
                    Verdict::Allow(_) => per_resource,
                    Verdict::Policy(_) => per_identity,
                };
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(key, answer.clone(), expires, now, self.max_cached);
            }
        }
        Ok(outcome(answer, resource, false))
    }

    /// One call: the answer, read up to [`MAX_ANSWER_BYTES`] within the timeout.
    async fn call(&self, config: &HttpAuthorizer, body: &Value) -> Result<Answer, Failure> {
        let timeout = Duration::from_millis(u64::from(config.timeout_ms));
        let read = async {
            let mut response = match self.http.post(&config.url).json(body).send().await {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(Failure::TimedOut),
                Err(e) => return Err(Failure::Error(format!("authorizer unreachable: {e}"))),
            };
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                let deny = Verdict::Allow(false);
                return Ok(Answer { verdict: deny, principal_id: None, context: BTreeMap::new(), usage_key: None });
            }
            if !status.is_success() {
                return Err(Failure::Error(format!("the authorizer answered HTTP {status}")));
            }
            let too_large =
                || Failure::Error(format!("the authorizer's answer is larger than {MAX_ANSWER_BYTES} bytes"));
            if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
                return Err(too_large());
            }
            let mut bytes = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_ANSWER_BYTES => return Err(too_large()),
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) if e.is_timeout() => return Err(Failure::TimedOut),
                    Err(e) => return Err(Failure::Error(format!("reading the authorizer's answer: {e}"))),
                }
            }
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|_| Failure::Error("the authorizer's answer is not JSON".into()))?;
            parse_answer(&value).map_err(Failure::Error)
        };
        tokio::time::timeout(timeout, read).await.unwrap_or(Err(Failure::TimedOut))
    }
}

#[cfg(test)]
mod tests;

//! Custom HTTP authorizers (the Lambda-authorizer role): the node POSTs the
//! request's identity to a configured URL and gets back allow/deny, a
//! principal and context — or a policy document, evaluated against the
//! request's resource as IAM would. Answers are cached per identity for the
//! authorizer's TTL, so repeated requests cost no call. A call that times out
//! or fails denies with its own reason; it never hangs the check.
//!
//! Request body: `{"type": "TOKEN", "authorization_token": …, "method_arn": …}`
//! or, in request mode, `{"type": "REQUEST", "method_arn", "method", "path",
//! "headers", "query", "source_ip", "identity"}`, where `path`, `source_ip`
//! and the `method_arn` are the canonical ones the gateway decided on (so the
//! authorizer judges the request the backend will serve). Answer: `{"allow": bool,
//! "principal_id": …, "context": {…}}` or `{"principalId": …,
//! "policyDocument": {"Statement": [{"Effect", "Resource"}]}, "context": {…}}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_proto::model::{HttpAuthorizer, HttpAuthorizerMode};

use super::pattern::glob_matches;
use super::Checked;
use crate::secret::sha256;

/// Most answers kept; past this, expired ones are dropped (and all, if need be).
const MAX_CACHED: usize = 100_000;

#[derive(Debug, Clone)]
enum Verdict {
    Allow(bool),
    /// (allow?, resource patterns) per statement.
    Policy(Vec<(bool, Vec<String>)>),
}

#[derive(Debug, Clone)]
struct Answer {
    verdict: Verdict,
    principal_id: Option<String>,
    context: BTreeMap<String, String>,
}

/// The authorizer's answer for one request.
#[derive(Debug)]
pub struct Outcome {
    pub allowed: bool,
    pub principal_id: Option<String>,
    pub context: BTreeMap<String, String>,
    pub cache_hit: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// An identity source is missing from the request (401).
    MissingIdentity(String),
    TimedOut,
    Error(String),
}

/// (authorizer id, SHA-256 of the identity values): the cache key.
type CacheKey = (String, [u8; 32]);

pub struct HttpAuthorizers {
    http: reqwest::Client,
    /// Answers and when they expire.
    cache: Mutex<HashMap<CacheKey, (Answer, Instant)>>,
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
        HttpAuthorizers { http, cache: Mutex::new(HashMap::new()) }
    }
}

fn parse_answer(body: &Value) -> Option<Answer> {
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
    let verdict = if let Some(allow) = body.get("allow").and_then(Value::as_bool) {
        Verdict::Allow(allow)
    } else {
        let statements = body.get("policyDocument")?.get("Statement")?.as_array()?;
        let mut parsed = Vec::new();
        for s in statements {
            let allow = s.get("Effect")?.as_str()? == "Allow";
            let resources = match s.get("Resource")? {
                Value::String(r) => vec![r.clone()],
                Value::Array(rs) => rs.iter().filter_map(|r| r.as_str().map(str::to_string)).collect(),
                _ => return None,
            };
            parsed.push((allow, resources));
        }
        Verdict::Policy(parsed)
    };
    Some(Answer { verdict, principal_id, context })
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

impl HttpAuthorizers {
    /// Asks the authorizer `id` (or its cached answer) about this request.
    pub(super) async fn authorize(
        &self,
        id: &str,
        config: &HttpAuthorizer,
        c: &Checked<'_>,
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
        let joined: Vec<&str> = identity.iter().flat_map(|(k, v)| [k.as_str(), "\u{0}", v.as_str(), "\u{0}"]).collect();
        let cache_key = (id.to_string(), sha256(&joined.concat()));
        let ttl = Duration::from_secs(config.cache_ttl_secs as u64);
        if !ttl.is_zero() {
            let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key).cloned();
            if let Some((answer, _)) = cached.filter(|(_, expires)| *expires > Instant::now()) {
                return Ok(Outcome {
                    allowed: allows(&answer.verdict, resource),
                    principal_id: answer.principal_id,
                    context: answer.context,
                    cache_hit: true,
                });
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
        let call = self
            .http
            .post(&config.url)
            .timeout(Duration::from_millis(config.timeout_ms as u64))
            .json(&body)
            .send()
            .await;
        let response = match call {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(Failure::TimedOut),
            Err(e) => return Err(Failure::Error(format!("authorizer unreachable: {e}"))),
        };
        let status = response.status();
        let answer = if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            Answer { verdict: Verdict::Allow(false), principal_id: None, context: BTreeMap::new() }
        } else if status.is_success() {
            let value: Value = match response.json().await {
                Ok(v) => v,
                Err(e) if e.is_timeout() => return Err(Failure::TimedOut),
                Err(_) => return Err(Failure::Error("the authorizer's answer is not JSON".into())),
            };
            parse_answer(&value)
                .ok_or_else(|| Failure::Error("the authorizer's answer has no allow or policyDocument".into()))?
        } else {
            return Err(Failure::Error(format!("the authorizer answered HTTP {status}")));
        };
        if !ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHED {
                let now = Instant::now();
                cache.retain(|_, (_, expires)| *expires > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(cache_key, (answer.clone(), Instant::now() + ttl));
        }
        Ok(Outcome {
            allowed: allows(&answer.verdict, resource),
            principal_id: answer.principal_id,
            context: answer.context,
            cache_hit: false,
        })
    }
}

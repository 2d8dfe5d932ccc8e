//! The check: what an edge proxy asks about one incoming request, and the
//! decision it gets back. `POST /v1/check` (JSON), the forward-auth endpoint
//! and the binary protocol are three encodings of these two types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One incoming request at the edge, as the proxy saw it. Unknown fields are
/// refused (a misspelt `sourceIp` would otherwise leave out the address).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// API id.
    pub api: String,
    /// Stage name.
    pub stage: String,
    /// HTTP method in capitals.
    pub method: String,
    /// Request path, starting with `/`, without the query string (a `?` is
    /// refused). The check decides on its canonical form
    /// ([`crate::canonical::path`]: unreserved escapes decoded, `//` merged,
    /// dot segments resolved; encoded `/`, `\`, NUL, `;` refused).
    pub path: String,
    /// The client's address (IPv4 or IPv6), as the proxy saw it, without port
    /// or zone id. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is decided on as the
    /// IPv4 address ([`crate::canonical::address`]).
    #[serde(default)]
    pub source_ip: Option<String>,
    /// Request headers; names are matched case-insensitively. Several lines
    /// of one header are one value, joined by `, ` (RFC 9110 §5.3); a name
    /// given twice in the JSON object is joined the same way (never
    /// last-wins, which would hide a value from the rules).
    #[serde(default, deserialize_with = "joined_headers")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters, percent-decoded; a name given more than once has
    /// its values joined by `,` (forward-auth and the tower layer do so), so
    /// a rule sees every value. `_method` must name `method` if present.
    #[serde(default, deserialize_with = "joined_query")]
    pub query: BTreeMap<String, String>,
    /// Identity of the calling proxy (the VPC-endpoint role), if it has one.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// Subject of the client certificate, if the proxy terminated mTLS.
    #[serde(default)]
    pub client_cert_subject: Option<String>,
    /// Size of the request body in bytes, if known: any whole number from 0
    /// to 2^64 - 1 (it is only compared with WAF size rules); anything else
    /// is a 400 naming `body_size`.
    #[serde(default)]
    pub body_size: Option<u64>,
}

/// A map whose repeated keys are joined by `join`, not overwritten.
struct JoinedMap(fn(&mut BTreeMap<String, String>, String, String));

impl<'de> serde::de::Visitor<'de> for JoinedMap {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = BTreeMap::new();
        while let Some((name, value)) = access.next_entry::<String, String>()? {
            (self.0)(&mut map, name, value);
        }
        Ok(map)
    }
}

fn joined_headers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(JoinedMap(|map, name, value| add_header_line(map, &name, value)))
}

fn joined_query<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(JoinedMap(add_query_param))
}

/// A header value's bytes as text: UTF-8 when they are, else each byte as
/// ISO-8859-1 (RFC 9110 §5.5: `obs-text` is opaque; this keeps every byte
/// distinct, so no spelling of a value collapses into another).
pub fn header_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.iter().map(|b| char::from(*b)).collect(),
    }
}

/// Adds one header line to `headers` (names lower-case): lines of one name
/// are one value joined by `, ` (RFC 9110 §5.3; `; ` for `cookie`, RFC 6265
/// §5.4), so a rule sees every line whichever one the upstream reads.
pub fn add_header_line(headers: &mut BTreeMap<String, String>, name: &str, value: String) {
    match headers.get_mut(name) {
        Some(joined) => {
            joined.push_str(if name == "cookie" { "; " } else { ", " });
            joined.push_str(&value);
        }
        None => {
            headers.insert(name.to_string(), value);
        }
    }
}

/// Adds one decoded query parameter to `query`: a name given again has its
/// values joined by `,` (frameworks differ on which one they read).
pub fn add_query_param(query: &mut BTreeMap<String, String>, name: String, value: String) {
    match query.get_mut(&name) {
        Some(joined) => {
            joined.push(',');
            joined.push_str(&value);
        }
        None => {
            query.insert(name, value);
        }
    }
}

/// Whether the request may pass, and what to tell the client and the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// Whether the request may go on to the backend. A CORS preflight is `false`
    /// with status 204: the proxy answers it itself.
    pub allowed: bool,
    /// The status the proxy should answer with when not allowed (the one API
    /// Gateway uses), or 200 when allowed. A CORS preflight is answered 204.
    pub status: u16,
    /// Why: the step of the check that decided (`Allowed` when none refused).
    pub reason: ReasonCode,
    /// A short human explanation; never contains a secret.
    pub message: String,
    /// Who is calling, once authenticated.
    pub principal: Option<Principal>,
    /// Values for the backend (from the key, the token or the authorizer).
    pub context: BTreeMap<String, String>,
    /// Headers for the response to the client (CORS, rate limits, Retry-After).
    pub response_headers: Vec<(String, String)>,
    /// Headers for the request to the backend, on allow: the signed identity
    /// (`x-tollgate-identity`) and who called.
    pub upstream_headers: Vec<(String, String)>,
    /// The tightest limit that applied: for `RateLimit-*` headers.
    pub limit: Option<LimitState>,
}

/// Who made the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Principal {
    /// `key:ID`, `sub:SUBJECT` or the authorizer's principal id.
    pub id: String,
    /// The API key used, if any.
    pub key_id: Option<String>,
    /// The usage plan that applied, if any.
    pub plan_id: Option<String>,
    /// The key's customer id (an operator's label, AWS API Gateway's
    /// `customerId`), if the key has one.
    pub customer_id: Option<String>,
}

/// One limit's state after this request, as `RateLimit-*` headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitState {
    /// The limit's size, sent as `RateLimit-Limit` (the IETF httpapi
    /// draft's header): a quota's units per period, or a throttle's burst.
    pub limit: u64,
    /// Requests still allowed now under this limit (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Seconds until the limit resets (quota period end, or a full bucket).
    pub reset_secs: u64,
    /// Seconds to wait before retrying, when denied by this limit.
    pub retry_after_secs: Option<u64>,
}

/// Why a decision came out as it did. Stable: proxies and dashboards match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Every step passed: the request may go on (200).
    Allowed,
    /// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`),
    /// answered by the gateway with the CORS headers (204).
    CorsPreflight,
    /// No API with the request's `api` id (404).
    UnknownApi,
    /// The API has no stage named by the request's `stage` (404).
    UnknownStage,
    /// No route of the API matches the method and canonical path (404).
    NoRoute,
    /// The request itself is malformed (400): the forward-auth endpoint's reason
    /// through nginx, whose `auth_request` passes only 401 and 403 on. The binary
    /// protocol and `POST /v1/check` refuse such a request naming the field
    /// instead of deciding it.
    InvalidRequest,
    /// A WAF rule blocked it: an IP set, a size limit or a header, path or query
    /// match (403).
    WafBlocked,
    /// A WAF per-address rate rule: this client address sent too many requests
    /// (429).
    WafRateLimited,
    /// The API's resource policy denies this source address or proxy identity
    /// (403).
    ResourcePolicyDenied,
    /// The `Origin` is not one the API's CORS settings allow (403).
    CorsOriginDenied,
    /// The route's authorizer needs a credential the request lacks: the bearer
    /// token of a JWT authorizer, an identity source of an HTTP one (401).
    MissingToken,
    /// The JWT is malformed, badly signed, or has the wrong issuer or audience
    /// (401).
    InvalidToken,
    /// The JWT's `exp` has passed, beyond the authorizer's leeway (401).
    TokenExpired,
    /// The JWT lacks a scope the route requires (403).
    InsufficientScope,
    /// The custom HTTP authorizer denied the request (403).
    AuthorizerDenied,
    /// The custom HTTP authorizer did not answer within its time-out (503).
    AuthorizerTimeout,
    /// The authorizer could not be used: its answer was unusable, its JWKS could
    /// not be fetched, or it does not exist (503).
    AuthorizerError,
    /// The route requires an API key and the request carries none (403, as AWS
    /// API Gateway answers).
    MissingKey,
    /// No key has this secret (403).
    UnknownKey,
    /// The key exists but is disabled (403).
    DisabledKey,
    /// The key's `expires_at` has passed (403).
    ExpiredKey,
    /// The key is in no usage plan for this API stage (403).
    KeyNotInPlan,
    /// An IAM-style policy statement explicitly denies the request (403); an
    /// explicit deny wins over any allow.
    PolicyDenied,
    /// Policies apply to the principal and none allows the request (403).
    ImplicitDeny,
    /// The key's throttle (rate and burst of its plan, or a per-method override)
    /// is exhausted (429, with `Retry-After`).
    Throttled,
    /// The stage's own throttle, shared by every caller, is exhausted (429).
    StageThrottled,
    /// The key's quota for the current period is used up (429, with
    /// `Retry-After` until the period ends).
    QuotaExceeded,
    /// The key's quota could not be checked: this node holds no grant for
    /// it and cannot reach the leader for one.
    QuotaUnavailable,
}

impl ReasonCode {
    /// The HTTP status API Gateway answers with for this reason.
    pub fn status(self) -> u16 {
        match self {
            ReasonCode::Allowed => 200,
            ReasonCode::CorsPreflight => 204,
            ReasonCode::UnknownApi | ReasonCode::UnknownStage | ReasonCode::NoRoute => 404,
            ReasonCode::InvalidRequest => 400,
            ReasonCode::MissingToken | ReasonCode::InvalidToken | ReasonCode::TokenExpired => 401,
            ReasonCode::AuthorizerTimeout | ReasonCode::AuthorizerError | ReasonCode::QuotaUnavailable => 503,
            ReasonCode::WafBlocked
            | ReasonCode::InsufficientScope
            | ReasonCode::AuthorizerDenied
            | ReasonCode::ResourcePolicyDenied
            | ReasonCode::CorsOriginDenied
            | ReasonCode::MissingKey
            | ReasonCode::UnknownKey
            | ReasonCode::DisabledKey
            | ReasonCode::ExpiredKey
            | ReasonCode::KeyNotInPlan
            | ReasonCode::PolicyDenied
            | ReasonCode::ImplicitDeny => 403,
            ReasonCode::WafRateLimited
            | ReasonCode::Throttled
            | ReasonCode::StageThrottled
            | ReasonCode::QuotaExceeded => 429,
        }
    }

    /// The stable snake_case name (`quota_exceeded`), the same as its JSON form:
    /// the `reason` proxies and dashboards match on and the
    /// `X-Tollgate-Reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Allowed => "allowed",
            ReasonCode::CorsPreflight => "cors_preflight",
            ReasonCode::UnknownApi => "unknown_api",
            ReasonCode::UnknownStage => "unknown_stage",
            ReasonCode::NoRoute => "no_route",
            ReasonCode::InvalidRequest => "invalid_request",
            ReasonCode::WafBlocked => "waf_blocked",
            ReasonCode::WafRateLimited => "waf_rate_limited",
            ReasonCode::MissingToken => "missing_token",
            ReasonCode::InvalidToken => "invalid_token",
            ReasonCode::TokenExpired => "token_expired",
            ReasonCode::InsufficientScope => "insufficient_scope",
            ReasonCode::AuthorizerDenied => "authorizer_denied",
            ReasonCode::AuthorizerTimeout => "authorizer_timeout",
            ReasonCode::AuthorizerError => "authorizer_error",
            ReasonCode::ResourcePolicyDenied => "resource_policy_denied",
            ReasonCode::CorsOriginDenied => "cors_origin_denied",
            ReasonCode::MissingKey => "missing_key",
            ReasonCode::UnknownKey => "unknown_key",
            ReasonCode::DisabledKey => "disabled_key",
            ReasonCode::ExpiredKey => "expired_key",
            ReasonCode::KeyNotInPlan => "key_not_in_plan",
            ReasonCode::PolicyDenied => "policy_denied",
            ReasonCode::ImplicitDeny => "implicit_deny",
            ReasonCode::Throttled => "throttled",
            ReasonCode::StageThrottled => "stage_throttled",
            ReasonCode::QuotaExceeded => "quota_exceeded",
            ReasonCode::QuotaUnavailable => "quota_unavailable",
        }
    }
}

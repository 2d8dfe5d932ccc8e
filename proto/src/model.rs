//! The replicated model: everything an operator configures.
//!
//! One type per domain object. The same struct is stored in the state machine,
//! carried in Raft log entries and (for everything but secrets) shown by the
//! admin API. Fields that a client may leave out on create (`id`, timestamps)
//! default, and the node fills them in before proposing.
//!
//! Encoding note: these types go through bincode as well as JSON, so they use
//! neither `skip_serializing_if`, `flatten` nor internally tagged enums (bincode
//! cannot read those back).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time, whole seconds since the Unix epoch (UTC). Shown as RFC 3339.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc().unix_timestamp())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Timestamp(t.unix_timestamp()))
            .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-31T00:00:00Z ({e})"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0).ok().and_then(|t| t.format(&Rfc3339).ok()) {
            Some(text) => f.write_str(&text),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time, UTC"))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(raw) = text.strip_prefix('@') {
            return raw.parse().map(Timestamp).map_err(serde::de::Error::custom);
        }
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What the replicated state keeps of a generated secret (API key or admin
/// token): a short visible prefix to recognise it in logs and lists, and its
/// SHA-256. The secret itself is shown once, at creation, and never stored.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDigest {
    pub prefix: String,
    pub sha256: [u8; 32],
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretDigest({}…)", self.prefix)
    }
}

// ---------------------------------------------------------------------------
// APIs

/// An API: the unit an edge proxy names in a check, with its stages and routes.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Api {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the check looks for the API key of a request.
    #[serde(default)]
    pub key_source: KeySource,
    #[serde(default)]
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Cross-origin settings; without them no CORS headers are added.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// WAF-style rules, checked in order before anything else.
    #[serde(default)]
    pub waf: Vec<WafRule>,
    #[serde(default)]
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// A WAF-style rule: a condition on the request and what to do on a match.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WafRule {
    pub name: String,
    #[serde(default)]
    pub action: WafAction,
    pub condition: WafCondition,
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WafAction {
    /// Deny the request (403; 429 for rate rules).
    #[default]
    Block,
    /// Only count matches (metrics), to try a rule before it blocks.
    Count,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WafCondition {
    /// The source address is in one of these networks (v4 or v6).
    IpSet(Vec<String>),
    /// The body is larger than this many bytes (1 to 2^53 - 1).
    MaxBodyBytes(u64),
    /// The headers (names and values together) are larger than this many
    /// bytes (1 to 2^53 - 1).
    MaxHeaderBytes(u64),
    /// The path matches this regular expression.
    PathMatches(String),
    /// The raw query (`a=1&b=2`, keys sorted) matches this regular expression.
    QueryMatches(String),
    /// A header is present and its value matches the regular expression.
    HeaderMatches { name: String, regex: String },
    /// More than `limit` requests (1 to 10^9) from one source address in
    /// `window_secs` (1 to 86400).
    RatePerIp { limit: u32, window_secs: u32 },
}

/// CORS settings of an API: preflights are answered by the check, and every
/// decision for an allowed origin carries the CORS response headers.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), `https://*.example.com`, or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (lower case); `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer: 0 to 86400 s (default 600).
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u32,
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].iter().map(|m| m.to_string()).collect()
}

fn default_cors_max_age() -> u32 {
    600
}

/// Where an API key is read from: by default a header (always) and optionally
/// a query parameter; or the answer of the route's HTTP authorizer.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySource {
    #[serde(default = "default_key_header")]
    pub header: String,
    #[serde(default)]
    pub query_param: Option<String>,
    /// `request` (default): the key is the one the request carries in
    /// `header` or `query_param`. `authorizer`: the key is the
    /// `usageIdentifierKey` the route's HTTP authorizer answers with (API
    /// Gateway's API key source AUTHORIZER); `header` and `query_param` are
    /// then not read.
    #[serde(default)]
    pub from: KeyFrom,
}

/// Who supplies the API key a request is metered under.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFrom {
    /// The request itself, in the key source's header or query parameter.
    #[default]
    Request,
    /// The route's HTTP authorizer, as `usageIdentifierKey` in its answer.
    Authorizer,
}

fn default_key_header() -> String {
    "x-api-key".to_string()
}

impl Default for KeySource {
    fn default() -> Self {
        KeySource { header: default_key_header(), query_param: None, from: KeyFrom::Request }
    }
}

/// A deployment stage of an API (`prod`, `beta`), with its own limits.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    /// Stage-wide throttle, applied to all keys together.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// A method and path pattern of an API, and how requests to it authenticate.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// An HTTP method in capitals, or `*` for any.
    pub method: String,
    /// A path starting with `/`; `*` matches one segment, a trailing `/*` any rest.
    pub path: String,
    #[serde(default)]
    pub api_key_required: bool,
    /// A JWT or HTTP authorizer that must allow the request.
    #[serde(default)]
    pub authorizer_id: Option<String>,
    /// Scopes a JWT must carry for this route.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A token bucket: a steady rate and the burst it may save up.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    /// Requests per second, 10^-6 to 10^9 (slower limits are a quota's job).
    pub rate_per_sec: f64,
    /// Requests that may come at once, 1 to 10^9.
    pub burst: u32,
}

// ---------------------------------------------------------------------------
// Usage plans

/// A usage plan: throttle and quota that apply to every key in it, on the API
/// stages it covers.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePlan {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub throttle: Option<Throttle>,
    #[serde(default)]
    pub quota: Option<Quota>,
    #[serde(default)]
    pub api_stages: Vec<PlanStage>,
    #[serde(default)]
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// One API stage a plan covers, with per-method throttle overrides.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStage {
    pub api_id: String,
    pub stage: String,
    #[serde(default)]
    pub method_throttles: Vec<MethodThrottle>,
}

/// A throttle that replaces the plan's for one method and path pattern.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodThrottle {
    pub method: String,
    pub path: String,
    pub throttle: Throttle,
}

/// How many requests a key may make per period.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Requests per period, 1 to 2^53 - 1.
    pub limit: u64,
    pub period: Period,
    /// Where a period starts, as in API Gateway: for `week` the weekday
    /// (0 = Sunday … 6), for `month` the day of the month minus one (0 … 27);
    /// `day` takes 0 only. Periods are in UTC.
    #[serde(default)]
    pub offset: u32,
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

// ---------------------------------------------------------------------------
// API keys

/// An API key as stored: its identity, its plans and the digest of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The customer or owner the key was issued to (billing reads it).
    pub customer_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    /// At most one plan per API stage.
    pub plan_ids: Vec<String>,
    pub secret: SecretDigest,
    /// The secret before the last reroll, accepted until `valid_until`.
    pub previous_secret: Option<PreviousSecret>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A rerolled key's old secret and the end of its overlap window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: SecretDigest,
    pub valid_until: Timestamp,
}

/// What an operator sets on a key, on create and on update.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeySpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When the key stops working; from 1970 to 9999-12-31T23:59:59Z.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub plan_ids: Vec<String>,
}

fn yes() -> bool {
    true
}

impl ApiKey {
    pub fn from_spec(id: String, spec: ApiKeySpec, secret: SecretDigest, now: Timestamp) -> Self {
        ApiKey {
            id,
            name: spec.name,
            description: spec.description,
            customer_id: spec.customer_id,
            tags: spec.tags,
            enabled: spec.enabled,
            expires_at: spec.expires_at,
            plan_ids: spec.plan_ids,
            secret,
            previous_secret: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn spec(&self) -> ApiKeySpec {
        ApiKeySpec {
            name: self.name.clone(),
            description: self.description.clone(),
            customer_id: self.customer_id.clone(),
            tags: self.tags.clone(),
            enabled: self.enabled,
            expires_at: self.expires_at,
            plan_ids: self.plan_ids.clone(),
        }
    }

    pub fn view(&self) -> ApiKeyView {
        ApiKeyView {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            customer_id: self.customer_id.clone(),
            tags: self.tags.clone(),
            enabled: self.enabled,
            expires_at: self.expires_at,
            plan_ids: self.plan_ids.clone(),
            prefix: self.secret.prefix.clone(),
            previous_prefix: self.previous_secret.as_ref().map(|p| p.secret.prefix.clone()),
            previous_valid_until: self.previous_secret.as_ref().map(|p| p.valid_until),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A key as the admin API shows it: everything but the secret's digest.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub customer_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    pub plan_ids: Vec<String>,
    /// The visible start of the secret, to recognise the key.
    pub prefix: String,
    /// After a reroll: the old secret's prefix, and until when it still works.
    pub previous_prefix: Option<String>,
    pub previous_valid_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

// ---------------------------------------------------------------------------
// Policies

/// An IAM-style policy. With `api_id` set it is that API's resource policy;
/// without, it applies to the principals its statements name.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub api_id: Option<String>,
    pub statements: Vec<Statement>,
    #[serde(default)]
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Timestamp,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(default)]
    pub sid: String,
    pub effect: Effect,
    /// Key ids (`key:ID`), JWT subjects (`sub:…`), groups (`group:…`) or `*`.
    pub principals: Vec<String>,
    /// `invoke` or `*`.
    pub actions: Vec<String>,
    /// `api/stage/METHOD/path`, each part may use `*`.
    pub resources: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// A condition on the request: `operator(key, values)`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub operator: ConditionOperator,
    /// `source_ip`, `proxy_id`, `claim:NAME`, `header:NAME` or `tag:NAME`.
    pub key: String,
    pub values: Vec<String>,
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionOperator {
    IpAddress,
    NotIpAddress,
    StringEquals,
    StringNotEquals,
    StringLike,
    StringNotLike,
}

// ---------------------------------------------------------------------------
// Authorizers

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authorizer {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: AuthorizerKind,
    #[serde(default)]
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Timestamp,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizerKind {
    /// Validates bearer JWTs (the Cognito user-pool role).
    Jwt(JwtAuthorizer),
    /// Calls an HTTP endpoint and caches its answer (the Lambda-authorizer role).
    Http(HttpAuthorizer),
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JwtAuthorizer {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Where to fetch the signing keys; or give them inline in `jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks: Vec<Jwk>,
    /// Algorithms accepted, pinned: `none` never, HMAC never beside public-key ones.
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`: 0 to 300 s (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u32,
}

fn default_leeway() -> u32 {
    30
}

/// One JSON Web Key, as in RFC 7517 (the members Tollgate uses). Binary
/// members (`n`, `e`, `x`, `y`, `k`) are base64url without padding (RFC 7518
/// §6); see [`crate::jwk`] for the sizes accepted.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
    /// Symmetric key material (kty `oct`).
    #[serde(default)]
    pub k: Option<String>,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpAuthorizer {
    pub url: String,
    #[serde(default)]
    pub mode: HttpAuthorizerMode,
    /// `header:NAME` or `query:NAME`; together they key the result cache.
    pub identity_sources: Vec<String>,
    /// How long an answer is reused: 0 (never) to 3600 s (default 300).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u32,
    /// How long a call may take: 1 to 30000 ms (default 1000).
    #[serde(default = "default_authorizer_timeout")]
    pub timeout_ms: u32,
}

fn default_cache_ttl() -> u32 {
    300
}

fn default_authorizer_timeout() -> u32 {
    1000
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuthorizerMode {
    /// Sends one token (the first identity source).
    #[default]
    Token,
    /// Sends the request's method, path, headers and query.
    Request,
}

// ---------------------------------------------------------------------------
// Admin tokens

/// A bearer token for the admin API, stored as a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub secret: SecretDigest,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminTokenSpec {
    pub name: String,
    pub scopes: Vec<Scope>,
}

#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminTokenView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub prefix: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl AdminToken {
    pub fn view(&self) -> AdminTokenView {
        AdminTokenView {
            id: self.id.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            prefix: self.secret.prefix.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    /// Only the check path (the binary protocol's hello): for edge proxies.
    Check,
}

// ---------------------------------------------------------------------------
// Signed identity

/// Which key signs the identity tokens backends receive. Not a secret: every
/// node derives the key itself from the cluster token and this version.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityKeyState {
    pub version: u64,
    pub rotated_at: Timestamp,
}

impl Default for IdentityKeyState {
    fn default() -> Self {
        IdentityKeyState { version: 1, rotated_at: Timestamp(0) }
    }
}

// ---------------------------------------------------------------------------
// Entities as a whole

/// Any stored object; what a `Put` command carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entity {
    Api(Api),
    Plan(UsagePlan),
    Key(ApiKey),
    Policy(Policy),
    Authorizer(Authorizer),
    Token(AdminToken),
}

/// The kinds of stored object, with the names the admin API uses for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityKind {
    Api,
    Plan,
    Key,
    Policy,
    Authorizer,
    Token,
}

impl EntityKind {
    pub const ALL: [EntityKind; 6] = [
        EntityKind::Api,
        EntityKind::Plan,
        EntityKind::Key,
        EntityKind::Policy,
        EntityKind::Authorizer,
        EntityKind::Token,
    ];

    /// The singular noun used in messages.
    pub fn noun(self) -> &'static str {
        match self {
            EntityKind::Api => "api",
            EntityKind::Plan => "plan",
            EntityKind::Key => "key",
            EntityKind::Policy => "policy",
            EntityKind::Authorizer => "authorizer",
            EntityKind::Token => "token",
        }
    }

    /// The prefix of generated ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            EntityKind::Api => "api_",
            EntityKind::Plan => "plan_",
            EntityKind::Key => "key_",
            EntityKind::Policy => "pol_",
            EntityKind::Authorizer => "auth_",
            EntityKind::Token => "tok_",
        }
    }
}

impl Entity {
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Api(_) => EntityKind::Api,
            Entity::Plan(_) => EntityKind::Plan,
            Entity::Key(_) => EntityKind::Key,
            Entity::Policy(_) => EntityKind::Policy,
            Entity::Authorizer(_) => EntityKind::Authorizer,
            Entity::Token(_) => EntityKind::Token,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Entity::Api(x) => &x.id,
            Entity::Plan(x) => &x.id,
            Entity::Key(x) => &x.id,
            Entity::Policy(x) => &x.id,
            Entity::Authorizer(x) => &x.id,
            Entity::Token(x) => &x.id,
        }
    }

    /// Sets the creation and update times (`created` only when `Some`).
    pub fn stamp(&mut self, created: Option<Timestamp>, updated: Timestamp) {
        macro_rules! set {
            ($x:expr) => {{
                if let Some(c) = created {
                    $x.created_at = c;
                }
                $x.updated_at = updated;
            }};
        }
        match self {
            Entity::Api(x) => set!(x),
            Entity::Plan(x) => set!(x),
            Entity::Key(x) => set!(x),
            Entity::Policy(x) => set!(x),
            Entity::Authorizer(x) => set!(x),
            Entity::Token(x) => set!(x),
        }
    }

    pub fn created_at(&self) -> Timestamp {
        match self {
            Entity::Api(x) => x.created_at,
            Entity::Plan(x) => x.created_at,
            Entity::Key(x) => x.created_at,
            Entity::Policy(x) => x.created_at,
            Entity::Authorizer(x) => x.created_at,
            Entity::Token(x) => x.created_at,
        }
    }

    /// The JSON the admin API shows: secrets' digests left out.
    pub fn to_view_json(&self) -> serde_json::Value {
        let value = match self {
            Entity::Api(x) => serde_json::to_value(x),
            Entity::Plan(x) => serde_json::to_value(x),
            Entity::Key(x) => serde_json::to_value(x.view()),
            Entity::Policy(x) => serde_json::to_value(x),
            Entity::Authorizer(x) => serde_json::to_value(x),
            Entity::Token(x) => serde_json::to_value(x.view()),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

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
    /// The current time from the system clock, truncated to whole seconds.
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// Parses an RFC 3339 time (`2026-01-31T00:00:00Z`, any offset), to whole
    /// seconds.
    ///
    /// # Errors
    ///
    /// A message naming the expected form when `text` is not RFC 3339.
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
    /// The secret's first 12 characters (such as `tgk_Ab3dE9xQ`), shown in
    /// lists and logs to recognise it; the rest of the 32 random bytes stays
    /// unguessable.
    pub prefix: String,
    /// SHA-256 of the whole secret; a presented secret is hashed and compared
    /// in constant time.
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
#[serde(deny_unknown_fields)]
pub struct Api {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`: the `api` a check names. Empty on create:
    /// the node makes one (`api_…`).
    #[serde(default)]
    pub id: String,
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    #[serde(default)]
    pub description: String,
    /// Where the check looks for the API key of a request.
    #[serde(default)]
    pub key_source: KeySource,
    /// Its deployment stages (at most 256, names unique); a check names one.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Its routes (at most 256, unique by method and path); a request that
    /// matches none is denied `no_route`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Cross-origin settings; without them no CORS headers are added.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// WAF-style rules, checked in order before anything else.
    #[serde(default)]
    pub waf: Vec<WafRule>,
    /// When it was created; set by the node, ignored on input.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed; set by the node, ignored on input.
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// A WAF-style rule: a condition on the request and what to do on a match.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafRule {
    /// A label for the rule in metrics and decisions: 1 to 128 characters.
    pub name: String,
    /// What a match does; default `block`.
    #[serde(default)]
    pub action: WafAction,
    /// What the rule matches.
    pub condition: WafCondition,
}

/// What a WAF rule does when its condition matches (AWS WAF's rule action).
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WafAction {
    /// Deny the request (403; 429 for rate rules).
    #[default]
    Block,
    /// Only count matches (metrics), to try a rule before it blocks.
    Count,
}

/// What a WAF rule matches on; serialized in snake_case (`ip_set`,
/// `max_body_bytes`, ...). Regular expressions are at most
/// [`MAX_REGEX_LEN`](crate::validate::MAX_REGEX_LEN) bytes and run on the
/// canonical request.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(deny_unknown_fields)]
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
    HeaderMatches {
        /// The header's name, lower case.
        name: String,
        /// The regular expression its value must match (`regex` crate
        /// syntax, unanchored).
        regex: String,
    },
    /// More than `limit` requests (1 to 10^9) from one source address in
    /// `window_secs` (1 to 86400).
    RatePerIp {
        /// Requests allowed per window from one address, 1 to 10^9.
        limit: u32,
        /// The window's length in seconds, 1 to 86400.
        window_secs: u32,
    },
}

/// CORS settings of an API: preflights are answered by the check, and every
/// decision for an allowed origin carries the CORS response headers.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), `https://*.example.com`, or `*`.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for (`Access-Control-Allow-Methods`), in
    /// capitals; default `GET`, `HEAD`, `POST`.
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (lower case); `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers a browser lets scripts read
    /// (`Access-Control-Expose-Headers`), lower case; `*` for any.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer: 0 to 86400 s (default 600).
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u32,
    /// Allow cookies and credentials (`Access-Control-Allow-Credentials: true`);
    /// refused together with the origin `*`, as browsers refuse it.
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
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// The header the key is read from, lower case; default `x-api-key` (as in
    /// AWS API Gateway).
    #[serde(default = "default_key_header")]
    pub header: String,
    /// A query parameter the key is also read from when the header is absent
    /// (`None`: none); 1 to 64 of `A-Z a-z 0-9 _ -`.
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
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`, unique in the API: the `stage` a check
    /// names.
    pub name: String,
    /// Stage-wide throttle, applied to all keys together.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// Name/value pairs kept with the stage (AWS API Gateway's stage variables),
    /// stored and shown; the check does not read them.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// A method and path pattern of an API, and how requests to it authenticate.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// An HTTP method in capitals, or `*` for any.
    pub method: String,
    /// A path starting with `/`; `*` matches one segment, a trailing `/*` any rest.
    pub path: String,
    /// Whether a request must carry a valid API key (and so is metered under
    /// that key's plan); default false.
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct UsagePlan {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`. Empty on create: the node makes one
    /// (`plan_…`).
    #[serde(default)]
    pub id: String,
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    #[serde(default)]
    pub description: String,
    /// The rate and burst each key of the plan gets (per key, cluster-wide);
    /// `None`: no per-key throttle.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// The requests each key of the plan may make per period, exact across the
    /// cluster; `None`: no quota.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// The API stages the plan covers (unique, at most 256); a key is metered
    /// under the plan only on these.
    #[serde(default)]
    pub api_stages: Vec<PlanStage>,
    /// When it was created; set by the node, ignored on input.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed; set by the node, ignored on input.
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// One API stage a plan covers, with per-method throttle overrides.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStage {
    /// The API's id.
    pub api_id: String,
    /// The stage's name in that API.
    pub stage: String,
    /// Throttles that replace the plan's for some routes (at most 256).
    #[serde(default)]
    pub method_throttles: Vec<MethodThrottle>,
}

/// A throttle that replaces the plan's for one method and path pattern.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodThrottle {
    /// An HTTP method in capitals, or `*` for any.
    pub method: String,
    /// A route path pattern, as in [`Route::path`].
    pub path: String,
    /// The rate and burst for requests to that method and path, per key.
    pub throttle: Throttle,
}

/// How many requests a key may make per period.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per period, 1 to 2^53 - 1.
    pub limit: u64,
    /// The length of a period; see `offset` for where it starts.
    pub period: Period,
    /// Where a period starts, as in API Gateway: for `week` the weekday
    /// (0 = Sunday … 6), for `month` the day of the month minus one (0 … 27);
    /// `day` takes 0 only. Periods are in UTC.
    #[serde(default)]
    pub offset: u32,
}

/// The length of a quota period (AWS API Gateway's `QuotaSettings.period`),
/// in UTC.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A UTC day, from midnight.
    Day,
    /// A week, starting on the weekday `offset` names.
    Week,
    /// A calendar month, starting on day `offset + 1`.
    Month,
}

// ---------------------------------------------------------------------------
// API keys

/// An API key as stored: its identity, its plans and the digest of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`, made by the node (`key_…`); not the secret.
    pub id: String,
    /// A label for people: 1 to 128 characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    pub description: String,
    /// The customer or owner the key was issued to (billing reads it).
    pub customer_id: Option<String>,
    /// Labels (at most 50) that policy conditions can test (`tag:NAME`).
    pub tags: BTreeMap<String, String>,
    /// A disabled key is refused (`disabled_key`) but not deleted.
    pub enabled: bool,
    /// When the key stops working (`expired_key`); `None`: never.
    pub expires_at: Option<Timestamp>,
    /// At most one plan per API stage.
    pub plan_ids: Vec<String>,
    /// The current secret's prefix and SHA-256.
    pub secret: SecretDigest,
    /// The secret before the last reroll, accepted until `valid_until`.
    pub previous_secret: Option<PreviousSecret>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed (a reroll included).
    pub updated_at: Timestamp,
}

/// A rerolled key's old secret and the end of its overlap window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The old secret's prefix and SHA-256.
    pub secret: SecretDigest,
    /// The end of the overlap: from then the old secret is refused.
    pub valid_until: Timestamp,
}

/// What an operator sets on a key, on create and on update.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    #[serde(default)]
    pub description: String,
    /// The customer or owner the key is issued to (AWS API Gateway's
    /// `customerId`): 1 to 128 characters; billing reads it.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// At most 50 labels: names 1 to 128, values at most 256 printable
    /// characters; policy conditions test them as `tag:NAME`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Whether the key works; default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When the key stops working; from 1970 to 9999-12-31T23:59:59Z.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// The usage plans the key is in, unique; at most one per API stage (the
    /// state machine checks that and that they exist).
    #[serde(default)]
    pub plan_ids: Vec<String>,
}

fn yes() -> bool {
    true
}

impl ApiKey {
    /// A new key from what the operator set, its id and secret digest made by
    /// the node; created and updated at `now`.
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

    /// What an operator set on the key: the input that would recreate it.
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

    /// The key as the admin API shows it: no digest, its secrets' prefixes.
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
    /// The key's id (not its secret).
    pub id: String,
    /// A label for people.
    pub name: String,
    /// Free text for people.
    pub description: String,
    /// The customer or owner the key was issued to.
    pub customer_id: Option<String>,
    /// Labels policy conditions can test (`tag:NAME`).
    pub tags: BTreeMap<String, String>,
    /// Whether the key works.
    pub enabled: bool,
    /// When the key stops working; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// The usage plans the key is in.
    pub plan_ids: Vec<String>,
    /// The visible start of the secret, to recognise the key.
    pub prefix: String,
    /// After a reroll: the old secret's prefix, and until when it still works.
    pub previous_prefix: Option<String>,
    /// After a reroll: until when the old secret still works.
    pub previous_valid_until: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed (a reroll included).
    pub updated_at: Timestamp,
}

// ---------------------------------------------------------------------------
// Policies

/// An IAM-style policy. With `api_id` set it is that API's resource policy;
/// without, it applies to the principals its statements name.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`. Empty on create: the node makes one
    /// (`pol_…`).
    #[serde(default)]
    pub id: String,
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    #[serde(default)]
    pub description: String,
    /// The API whose resource policy this is; `None`: an identity policy.
    #[serde(default)]
    pub api_id: Option<String>,
    /// At least one statement. Across all policies that apply: an explicit
    /// deny wins, then any allow, else the request is denied implicitly.
    pub statements: Vec<Statement>,
    /// When it was created; set by the node, ignored on input.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed; set by the node, ignored on input.
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// One IAM-style statement: the effect on requests whose principal, action
/// and resource match and whose conditions all hold.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// An optional statement id for people (IAM's `Sid`); not matched on.
    #[serde(default)]
    pub sid: String,
    /// Allow or deny what the statement matches.
    pub effect: Effect,
    /// Key ids (`key:ID`), JWT subjects (`sub:…`), groups (`group:…`) or
    /// `*`; or, in an admin statement of an identity policy (no `api_id`),
    /// admin tokens only (`token:ID`, `token:*`), never mixed with the others.
    pub principals: Vec<String>,
    /// `invoke` or `*`; in an admin statement, admin actions `service:verb`
    /// (`keys:create`, `usage:read`, `keys:*`, `*`; see
    /// [`crate::validate::ADMIN_ACTIONS`]).
    pub actions: Vec<String>,
    /// `api/stage/METHOD/path`, each part may use `*`; in an admin
    /// statement, what the admin API touches: `api/ID`, `plan/ID`,
    /// `policy/ID`, `authorizer/ID`, `token/ID`, `ratelimit/ID`,
    /// `api/API/STAGE/key/ID` (a key, once per API stage its plans cover;
    /// `key/ID` when none), `identity`, `cluster`, `audit`, `snapshot`.
    pub resources: Vec<String>,
    /// Conditions that must all hold for the statement to apply; none: always.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// What a matching statement does (IAM's `Effect`).
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Allows the request, unless another statement denies it.
    Allow,
    /// Denies the request, whatever else allows it.
    Deny,
}

/// A condition on the request: `operator(key, values)`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// How the request's value for `key` is compared with `values`.
    pub operator: ConditionOperator,
    /// `source_ip`, `proxy_id`, `claim:NAME`, `header:NAME` or `tag:NAME`.
    pub key: String,
    /// What to compare with: CIDR blocks or addresses for the IP operators,
    /// strings (globs for the `Like` operators) for the others.
    pub values: Vec<String>,
}

/// The comparison of a [`Condition`], with IAM's names and semantics: a key
/// missing from the request matches no positive operator and satisfies
/// every negated one.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionOperator {
    /// `source_ip` is in one of the networks (canonical form, as
    /// [`crate::canonical::address`]).
    IpAddress,
    /// `source_ip` is in none of the networks (or the request has none).
    NotIpAddress,
    /// The value equals one of `values` exactly (case-sensitive).
    StringEquals,
    /// The value equals none of `values`.
    StringNotEquals,
    /// The value matches one of the globs (`*` any run of characters, `?` one).
    StringLike,
    /// The value matches none of the globs.
    StringNotLike,
}

// ---------------------------------------------------------------------------
// Authorizers

/// An authorizer a route can name: a JWT validator or a custom HTTP
/// endpoint (AWS API Gateway's Cognito and Lambda authorizers).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorizer {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`. Empty on create: the node makes one
    /// (`auth_…`).
    #[serde(default)]
    pub id: String,
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// Free text for people, at most 1024 characters.
    #[serde(default)]
    pub description: String,
    /// What kind of authorizer, with its settings.
    pub kind: AuthorizerKind,
    /// When it was created; set by the node, ignored on input.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed; set by the node, ignored on input.
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// The kind of an [`Authorizer`]: `{"jwt": {...}}` or `{"http": {...}}` in
/// JSON.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[serde(deny_unknown_fields)]
pub enum AuthorizerKind {
    /// Validates bearer JWTs (the Cognito user-pool role).
    Jwt(JwtAuthorizer),
    /// Calls an HTTP endpoint and caches its answer (the Lambda-authorizer role).
    Http(HttpAuthorizer),
}

/// Validates a bearer JWT (RFC 7519) from `Authorization`: signature with
/// a pinned algorithm, `iss`, `aud`, `exp`/`nbf` with leeway, and scopes.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthorizer {
    /// The `iss` a token must carry, exactly; not empty.
    pub issuer: String,
    /// A token's `aud` must name at least one of these; at least one.
    pub audiences: Vec<String>,
    /// Where to fetch the signing keys; or give them inline in `jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Signing keys given inline; HMAC (`oct`) keys can only be given so.
    #[serde(default)]
    pub jwks: Vec<Jwk>,
    /// Algorithms accepted, pinned: `none` never, HMAC never beside public-key ones.
    pub algorithms: Vec<String>,
    /// Scopes every token must carry (from `scope` or `scp`), on every route;
    /// routes may require more.
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
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// Key type: `RSA`, `EC`, `OKP` or `oct` (RFC 7518 §6.1, RFC 8037).
    pub kty: String,
    /// Key id, 1 to 256 characters, matched with a token's `kid` header.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key may verify (RFC 7517 §4.4), from
    /// [`JWT_ALGORITHMS`](crate::validate::JWT_ALGORITHMS); `None`: any the
    /// authorizer accepts for its key type.
    #[serde(default)]
    pub alg: Option<String>,
    /// RSA modulus (RFC 7518 §6.3.1.1): 2048 to 8192 bits.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA public exponent (RFC 7518 §6.3.1.2): odd, 3 to 2^33 - 1.
    #[serde(default)]
    pub e: Option<String>,
    /// Curve: `P-256` or `P-384` for `EC` (RFC 7518 §6.2.1.1), `Ed25519` for
    /// `OKP` (RFC 8037).
    #[serde(default)]
    pub crv: Option<String>,
    /// x coordinate (`EC`, RFC 7518 §6.2.1.2) or public key (`OKP`, RFC 8037).
    #[serde(default)]
    pub x: Option<String>,
    /// y coordinate (`EC`, RFC 7518 §6.2.1.3).
    #[serde(default)]
    pub y: Option<String>,
    /// Symmetric key material (kty `oct`).
    #[serde(default)]
    pub k: Option<String>,
}

/// A custom HTTP authorizer: the node POSTs the request's identity to `url`
/// and reads allow or deny, a principal and context from the answer;
/// answers are cached by identity source for `cache_ttl_secs`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthorizer {
    /// An `http://` or `https://` URL the node POSTs JSON to.
    pub url: String,
    /// What the node sends; default `token`.
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

/// What an HTTP authorizer is sent (AWS API Gateway's TOKEN and REQUEST
/// authorizer types).
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
    /// Made by the node (`tok_…`); not the secret.
    pub id: String,
    /// A label for people: 1 to 128 characters.
    pub name: String,
    /// What the token may do; at least one.
    pub scopes: Vec<Scope>,
    /// The token's prefix and SHA-256; the token itself is never stored.
    pub secret: SecretDigest,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
}

/// What an operator sets on an admin token when creating one.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenSpec {
    /// A label for people: 1 to 128 characters, not blank, no control
    /// characters.
    pub name: String,
    /// What the token may do; at least one.
    pub scopes: Vec<Scope>,
}

/// An admin token as the admin API shows it: no digest, the prefix only.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminTokenView {
    /// The token's id (not the token).
    pub id: String,
    /// A label for people.
    pub name: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
}

impl AdminToken {
    /// The token as the admin API shows it.
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

/// What an admin token may do.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Admin API reads (`GET`, `HEAD`).
    Read,
    /// Every admin API call, reads included.
    Write,
    /// Only the check path (the binary protocol's hello): for edge proxies.
    Check,
}

// ---------------------------------------------------------------------------
// Descriptor limits (Envoy's rate limit service)

/// The rate limits of one rate limit domain: a tree of descriptors, each a
/// key with an optional value and an optional rate limit. This is the model
/// of an envoyproxy/ratelimit configuration file, field for field, so such a
/// file loads unchanged (`tollgate limits import FILE.yaml`). Envoy names the
/// domain and the descriptors in each `ShouldRateLimit` call; see
/// [`crate::descriptors`] for how a request's descriptor finds its limit.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDomain {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`. Empty on create: the node makes one
    /// (`rld_…`).
    #[serde(default)]
    pub id: String,
    /// The domain Envoy names (`RateLimitRequest.domain`): 1 to 255
    /// characters, no control characters; unique in the cluster.
    pub domain: String,
    /// The descriptors at the top of the tree; at most 10,000 rules in all,
    /// nested at most 16 deep.
    #[serde(default)]
    pub descriptors: Vec<DescriptorRule>,
    /// When it was created; set by the node, ignored on input.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed; set by the node, ignored on input.
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// One descriptor of a [`RateLimitDomain`]'s tree (envoyproxy/ratelimit's
/// descriptor: `key`, `value`, `rate_limit`, nested `descriptors`).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorRule {
    /// The entry's key, 1 to 255 characters.
    pub key: String,
    /// The entry's value, at most 1024 characters; left out (or empty), any
    /// value matches and each distinct value is counted apart. A `*` matches
    /// any run of characters (`/api/*`); an exact value is tried first, then
    /// the patterns in the order written, then the key alone.
    #[serde(default)]
    pub value: Option<String>,
    /// The limit for a request descriptor that ends at this rule.
    #[serde(default)]
    pub rate_limit: Option<DescriptorRateLimit>,
    /// Descriptors one entry deeper.
    #[serde(default)]
    // A `$ref` to this same schema: without it utoipa, collecting the
    // schemas a type uses, recurses into this one for ever.
    #[schema(no_recursion)]
    pub descriptors: Vec<DescriptorRule>,
    /// Count, and say in the response what the limit would do, but never
    /// refuse (the descriptor's status stays `OK`).
    #[serde(default)]
    pub shadow_mode: bool,
    /// A quota descriptor: the request is refused for quota descriptors only
    /// when every quota descriptor of the request is over its limit.
    #[serde(default)]
    pub quota_mode: bool,
    /// With a pattern value: every value the pattern matches shares one
    /// count (without it, each value is counted apart).
    #[serde(default)]
    pub share_threshold: bool,
    /// Accepted for envoyproxy/ratelimit files; it names the statistics of
    /// a value there. Tollgate's metrics have no per-descriptor labels, so
    /// it changes nothing.
    #[serde(default)]
    pub detailed_metric: bool,
    /// Accepted for envoyproxy/ratelimit files, like `detailed_metric`;
    /// changes nothing here.
    #[serde(default)]
    pub value_to_metric: bool,
}

/// A descriptor's rate limit: `requests_per_unit` per fixed window of one
/// `unit`, aligned to the Unix epoch as envoyproxy/ratelimit aligns it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorRateLimit {
    /// Requests per window, 0 to 2^32 - 1 (0 refuses every request).
    #[serde(default)]
    pub requests_per_unit: u32,
    /// The window; required unless `unlimited`, refused with it.
    #[serde(default)]
    pub unit: Option<RateLimitUnit>,
    /// Never limited (and never counted); the status says `OK`.
    #[serde(default)]
    pub unlimited: bool,
    /// A name that other limits' `replaces` can refer to.
    #[serde(default)]
    pub name: Option<String>,
    /// Limits of the same request whose `name` is listed here are skipped
    /// when this one applies.
    #[serde(default)]
    pub replaces: Vec<LimitReplaces>,
}

/// One entry of [`DescriptorRateLimit::replaces`].
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitReplaces {
    /// The `name` of the limit replaced.
    pub name: String,
}

/// The window of a [`DescriptorRateLimit`] (Envoy's `RateLimitResponse.RateLimit.Unit`).
/// Windows are fixed and aligned to the Unix epoch: a month is 30 days and
/// a year 365, as envoyproxy/ratelimit counts them. In JSON, lower case
/// (`hour`); Envoy's upper-case names (`HOUR`) are read too.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitUnit {
    /// 1 s.
    #[serde(alias = "SECOND")]
    Second,
    /// 60 s.
    #[serde(alias = "MINUTE")]
    Minute,
    /// 3,600 s.
    #[serde(alias = "HOUR")]
    Hour,
    /// 86,400 s.
    #[serde(alias = "DAY")]
    Day,
    /// 7 days.
    #[serde(alias = "WEEK")]
    Week,
    /// 30 days.
    #[serde(alias = "MONTH")]
    Month,
    /// 365 days.
    #[serde(alias = "YEAR")]
    Year,
}

impl RateLimitUnit {
    /// The window's length in seconds.
    pub fn secs(self) -> i64 {
        match self {
            RateLimitUnit::Second => 1,
            RateLimitUnit::Minute => 60,
            RateLimitUnit::Hour => 3_600,
            RateLimitUnit::Day => 86_400,
            RateLimitUnit::Week => 7 * 86_400,
            RateLimitUnit::Month => 30 * 86_400,
            RateLimitUnit::Year => 365 * 86_400,
        }
    }

    /// The window holding `now_ms`: its start and end (exclusive), ms since
    /// the Unix epoch.
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        let len = self.secs() * 1000;
        let start = now_ms.div_euclid(len) * len;
        (start, start.saturating_add(len))
    }

    /// The unit's name in lower case, as configuration files write it.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitUnit::Second => "second",
            RateLimitUnit::Minute => "minute",
            RateLimitUnit::Hour => "hour",
            RateLimitUnit::Day => "day",
            RateLimitUnit::Week => "week",
            RateLimitUnit::Month => "month",
            RateLimitUnit::Year => "year",
        }
    }
}

// ---------------------------------------------------------------------------
// Signed identity

/// Which key signs the identity tokens backends receive. Not a secret: every
/// node derives the key itself from the cluster token and this version.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityKeyState {
    /// The signing key's version, from 1; each rotation adds one.
    pub version: u64,
    /// When the key was last rotated (the epoch before any rotation).
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
    /// An API.
    Api(Api),
    /// A usage plan.
    Plan(UsagePlan),
    /// An API key (with its secret's digest).
    Key(ApiKey),
    /// An IAM-style policy.
    Policy(Policy),
    /// A JWT or HTTP authorizer.
    Authorizer(Authorizer),
    /// An admin token (with its digest).
    Token(AdminToken),
    /// The descriptor limits of one rate limit domain.
    RateLimit(RateLimitDomain),
}

/// The kinds of stored object, with the names the admin API uses for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityKind {
    /// APIs, `/v1/admin/apis`.
    Api,
    /// Usage plans, `/v1/admin/plans`.
    Plan,
    /// API keys, `/v1/admin/keys`.
    Key,
    /// Policies, `/v1/admin/policies`.
    Policy,
    /// Authorizers, `/v1/admin/authorizers`.
    Authorizer,
    /// Admin tokens, `/v1/admin/tokens`.
    Token,
    /// Rate limit domains (descriptor limits), `/v1/admin/ratelimits`.
    RateLimit,
}

impl EntityKind {
    /// Every kind, in declaration order.
    pub const ALL: [EntityKind; 7] = [
        EntityKind::Api,
        EntityKind::Plan,
        EntityKind::Key,
        EntityKind::Policy,
        EntityKind::Authorizer,
        EntityKind::Token,
        EntityKind::RateLimit,
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
            EntityKind::RateLimit => "rate limit domain",
        }
    }

    /// The admin API's collection (`/v1/admin/{collection}`), as the audit
    /// trail and its `kind` filter name the kind.
    pub fn collection(self) -> &'static str {
        match self {
            EntityKind::Api => "apis",
            EntityKind::Plan => "plans",
            EntityKind::Key => "keys",
            EntityKind::Policy => "policies",
            EntityKind::Authorizer => "authorizers",
            EntityKind::Token => "tokens",
            EntityKind::RateLimit => "ratelimits",
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
            EntityKind::RateLimit => "rld_",
        }
    }
}

impl Entity {
    /// Which kind of object it is.
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Api(_) => EntityKind::Api,
            Entity::Plan(_) => EntityKind::Plan,
            Entity::Key(_) => EntityKind::Key,
            Entity::Policy(_) => EntityKind::Policy,
            Entity::Authorizer(_) => EntityKind::Authorizer,
            Entity::Token(_) => EntityKind::Token,
            Entity::RateLimit(_) => EntityKind::RateLimit,
        }
    }

    /// Its id, unique within its kind.
    pub fn id(&self) -> &str {
        match self {
            Entity::Api(x) => &x.id,
            Entity::Plan(x) => &x.id,
            Entity::Key(x) => &x.id,
            Entity::Policy(x) => &x.id,
            Entity::Authorizer(x) => &x.id,
            Entity::Token(x) => &x.id,
            Entity::RateLimit(x) => &x.id,
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
            Entity::RateLimit(x) => set!(x),
        }
    }

    /// When it was created.
    pub fn created_at(&self) -> Timestamp {
        match self {
            Entity::Api(x) => x.created_at,
            Entity::Plan(x) => x.created_at,
            Entity::Key(x) => x.created_at,
            Entity::Policy(x) => x.created_at,
            Entity::Authorizer(x) => x.created_at,
            Entity::Token(x) => x.created_at,
            Entity::RateLimit(x) => x.created_at,
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
            Entity::RateLimit(x) => serde_json::to_value(x),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

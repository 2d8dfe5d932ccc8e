//! The OpenAPI 3.1 document served at `/openapi.json`: a contract a tool can
//! drive. Every route the HTTP listener serves is in it, with every parameter,
//! request body and response typed, and the admin token required exactly
//! where the router requires it.
//!
//! # How it is made
//!
//! - [`routes`] is the one table of what the router serves: method, path
//!   template, who may call it, and the operation. A unit test compares it with
//!   the routes `super::router` adds; `tests/openapi.rs` asks a real node for
//!   each one.
//! - Schemas come from the types themselves (utoipa derives in
//!   `tollgate_proto`); [`constraints`] then adds, field by field, the limits
//!   `tollgate_proto::validate` and the handlers enforce (lengths, ranges,
//!   patterns, enumerations), taking the numbers from the same constants.
//!   What a schema cannot say — an id that must name a stored object, a name
//!   that must be unique in a list, one field that depends on another — is
//!   said in the descriptions and answered by the node with a 400 naming the
//!   field.
//! - `.ci/run` drives a real node with this document through schemathesis.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use tollgate_proto::validate::{
    HTTP_METHODS, JWT_ALGORITHMS, MAX_DESCRIPTION, MAX_DESCRIPTOR_DEPTH, MAX_DESCRIPTOR_KEY, MAX_DESCRIPTOR_RULES,
    MAX_DESCRIPTOR_VALUE, MAX_DOMAIN, MAX_LIST, MAX_NAME, MAX_REGEX_LEN,
};
use utoipa::OpenApi as _;

use super::admin::MAX_OVERLAP_SECS;
use super::extract::MAX_PAGE;
use super::usage::{MAX_DAYS, MAX_DELTA};
use crate::gateway::{MAX_FIELDS, MAX_HEADER_BYTES};
use tollgate_proto::audit::AuditAction;
use tollgate_proto::command::MAX_CREATE_MANY;
use tollgate_proto::model::EntityKind;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate",
        description = "The HTTP API of a Tollgate node: the check (`POST /v1/check` and forward-auth for edge \
                       proxies), the admin API (APIs, usage plans, keys, policies, authorizers, admin tokens, \
                       rate limit domains, usage, the identity key, decision counts and the cluster), health, \
                       metrics, the web console (`/console`) and this document. Admin routes need \
                       `Authorization: Bearer <admin token>`, `/v1/ratelimit` a token of the \
                       check scope; the others are public. Every error \
                       is `{\"error\": {\"code\", \"field\", \"message\"}}` and names the field at fault."
    ),
    components(schemas(
        tollgate_proto::model::Api,
        tollgate_proto::model::UsagePlan,
        tollgate_proto::model::ApiKeySpec,
        tollgate_proto::model::ApiKeyView,
        tollgate_proto::model::Policy,
        tollgate_proto::model::Authorizer,
        tollgate_proto::model::AdminTokenSpec,
        tollgate_proto::model::AdminTokenView,
        tollgate_proto::model::RateLimitDomain,
        tollgate_proto::check::CheckRequest,
        tollgate_proto::check::Decision,
        tollgate_proto::check::Principal,
        tollgate_proto::check::LimitState,
        tollgate_proto::check::ReasonCode,
        tollgate_proto::ratelimit::RateLimitRequest,
        tollgate_proto::ratelimit::RateLimitResponse,
        tollgate_proto::usage::UsageReport,
        tollgate_proto::usage::PeriodUsage,
        tollgate_proto::usage::UsageUpdate
    ))
)]
struct Derived;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the check path, health, metrics, keys, the console and this document.
    Public,
    /// A bearer admin token (a `read` token only for GET).
    Admin,
    /// A bearer token of the `check` scope (an edge proxy's): `/v1/ratelimit`.
    Proxy,
}

/// One route the HTTP listener serves, and its operation in the document.
pub struct RouteDoc {
    /// An HTTP method in lower case, as the document spells it.
    pub method: &'static str,
    /// The path template, `{name}` for a parameter (axum's syntax too).
    pub path: String,
    pub access: Access,
    operation: Value,
}

/// Every method a path item can hold: forward-auth answers all of them.
pub const ANY_METHOD: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The seven kinds of stored object: path segment, request schema on create,
/// on replace, the schema the API shows, and a noun.
const RESOURCES: [(&str, &str, &str, &str, &str); 7] = [
    ("apis", "Api", "ApiReplacement", "Api", "API"),
    ("plans", "UsagePlan", "UsagePlanReplacement", "UsagePlan", "usage plan"),
    ("keys", "ApiKeySpec", "ApiKeySpec", "ApiKeyView", "API key"),
    ("policies", "Policy", "PolicyReplacement", "Policy", "policy"),
    ("authorizers", "Authorizer", "AuthorizerReplacement", "Authorizer", "authorizer"),
    ("tokens", "AdminTokenSpec", "AdminTokenSpec", "AdminTokenView", "admin token"),
    ("ratelimits", "RateLimitDomain", "RateLimitDomainReplacement", "RateLimitDomain", "rate limit domain"),
];

// ---------------------------------------------------------------------------
// Patterns. They are ECMA-262 and Python `re` alike (no `\s`, whose meaning
// differs between them and from Rust's `char::is_whitespace`).

/// Rust's `char::is_whitespace` (Unicode White_Space), as a class body.
const WHITE_SPACE: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Neither white space nor a control character (`char::is_control`).
const VISIBLE: &str = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// Not a control character.
const NOT_CONTROL: &str = r"[^\x00-\x1f\x7f-\x9f]";
/// An id: 1 to 64 of `A-Z a-z 0-9 _ -` (`validate::id`).
const ID: &str = r"^[A-Za-z0-9_-]{1,64}$";
/// A lower-case HTTP header name (`validate::header_name`).
const HEADER_NAME: &str = r"^[a-z0-9!#$%&'*+.^_`|~-]{1,128}$";

fn id_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 64, "pattern": ID})
}

/// The rules of an id, for a field whose type (maybe nullable) is derived.
fn id_rules() -> Value {
    json!({"minLength": 1, "maxLength": 64, "pattern": ID})
}

/// `validate::name`: not blank, at most `MAX_NAME` characters, no control characters.
fn name_schema() -> Value {
    let pattern = format!("^{NOT_CONTROL}*{VISIBLE}{NOT_CONTROL}*$");
    json!({"minLength": 1, "maxLength": MAX_NAME, "pattern": pattern,
        "description": format!("Not blank, at most {MAX_NAME} characters, no control characters.")})
}

/// `validate::printable` (a domain, a descriptor key, a limit's name): 1 to
/// `max` bytes, no control characters. A schema counts characters, so
/// `maxLength` is the byte limit: a value of that many characters outside
/// ASCII is longer in bytes, and refused (400).
fn printable_schema(max: usize, what: &str) -> Value {
    json!({"minLength": 1, "maxLength": max, "pattern": format!("^{NOT_CONTROL}+$"),
        "description": format!("{what}: 1 to {max} bytes (UTF-8), no control characters.")})
}

/// `validate::url`: `http://` or `https://`, a host, no white space.
fn url_schema() -> Value {
    json!({"pattern": format!("^https?://[^{WHITE_SPACE}/][^{WHITE_SPACE}]*$")})
}

/// `validate::path_pattern`: starts with `/`, at most 1024 bytes, no white space.
fn path_pattern_schema() -> Value {
    json!({"minLength": 1, "maxLength": 1024, "pattern": format!("^/{VISIBLE}*$")})
}

fn timestamp_read_only(description: &str) -> Value {
    json!({"type": "string", "format": "date-time", "readOnly": true, "description": description})
}

/// One change to a derived schema: at `pointer` (JSON pointer from
/// `components/schemas`), merge the members of `merge` (or replace the node).
struct Constraint {
    pointer: String,
    value: Value,
    replace: bool,
}

fn merge(pointer: &str, value: Value) -> Constraint {
    Constraint { pointer: pointer.to_string(), value, replace: false }
}

fn replace(pointer: &str, value: Value) -> Constraint {
    Constraint { pointer: pointer.to_string(), value, replace: true }
}

/// What `tollgate_proto::validate` (and the check's own validation) enforce,
/// as JSON Schema, field by field.
fn constraints() -> Vec<Constraint> {
    let methods: Vec<&str> = HTTP_METHODS.to_vec();
    let request_methods: Vec<&str> = HTTP_METHODS.iter().copied().filter(|m| *m != "*").collect();
    let list = json!({"maxItems": MAX_LIST});
    let non_empty = json!({"minItems": 1, "maxItems": MAX_LIST});
    let description = json!({"maxLength": MAX_DESCRIPTION});
    let optional_id = json!({"maxLength": 64, "pattern": r"^[A-Za-z0-9_-]{0,64}$",
        "description": "1 to 64 of `A-Z a-z 0-9 _ -`. Leave out on create for a generated id; on replace, \
                        leave out or give the id in the path."});
    let id_ref = |what: &str| {
        let mut s = id_rules();
        s["description"] = json!(format!("The id of a stored {what}; a missing one is a 400 naming this field."));
        s
    };
    let header_or_star = format!(r"^(\*|{})$", HEADER_NAME.trim_start_matches('^').trim_end_matches('$'));
    let regex = json!({"maxLength": MAX_REGEX_LEN, "description": "A regular expression (Rust `regex` syntax) \
                       of at most 1024 bytes; one that does not compile is a 400."});
    let mut c = vec![
        // APIs
        merge("Api/properties/id", optional_id.clone()),
        merge("Api/properties/name", name_schema()),
        merge("Api/properties/description", description.clone()),
        merge("Api/properties/stages", json!({"maxItems": MAX_LIST, "description": "Stage names are unique."})),
        merge(
            "Api/properties/routes",
            json!({"maxItems": MAX_LIST, "description": "Each method and path appears once."}),
        ),
        merge("Api/properties/waf", list.clone()),
        replace("Api/properties/created_at", timestamp_read_only("Set by the node.")),
        replace("Api/properties/updated_at", timestamp_read_only("Set by the node.")),
        merge("KeySource/properties/header", json!({"pattern": HEADER_NAME, "minLength": 1, "maxLength": 128})),
        merge("KeySource/properties/query_param", id_rules()),
        merge("Stage/properties/name", id_rules()),
        merge("Route/properties/method", json!({"enum": methods})),
        merge("Route/properties/path", path_pattern_schema()),
        merge("Route/properties/authorizer_id", id_ref("authorizer")),
        merge("Route/properties/scopes", list.clone()),
        merge("Throttle/properties/rate_per_sec", json!({"exclusiveMinimum": 0, "maximum": 1e9})),
        merge("Throttle/properties/burst", json!({"minimum": 1})),
        merge("WafRule/properties/name", name_schema()),
        merge(
            "WafCondition/oneOf/0/properties/ip_set",
            json!({"minItems": 1, "maxItems": MAX_LIST,
                "description": "IP addresses or CIDR blocks, v4 or v6; anything else is a 400."}),
        ),
        merge("WafCondition/oneOf/1/properties/max_body_bytes", json!({"minimum": 1})),
        merge("WafCondition/oneOf/2/properties/max_header_bytes", json!({"minimum": 1})),
        merge("WafCondition/oneOf/3/properties/path_matches", regex.clone()),
        merge("WafCondition/oneOf/4/properties/query_matches", regex.clone()),
        merge(
            "WafCondition/oneOf/5/properties/header_matches/properties/name",
            json!({"pattern": HEADER_NAME, "minLength": 1, "maxLength": 128}),
        ),
        merge("WafCondition/oneOf/5/properties/header_matches/properties/regex", regex),
        merge("WafCondition/oneOf/6/properties/rate_per_ip/properties/limit", json!({"minimum": 1})),
        merge(
            "WafCondition/oneOf/6/properties/rate_per_ip/properties/window_secs",
            json!({"minimum": 1, "maximum": 86_400}),
        ),
        merge(
            "Cors/properties/allow_origins",
            json!({"minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string",
                "pattern": format!(r"^(\*|https?://[^{WHITE_SPACE}]*[^{WHITE_SPACE}/])$")}}),
        ),
        merge(
            "Cors/properties/allow_methods",
            json!({"maxItems": MAX_LIST, "items": {"type": "string", "enum": methods}}),
        ),
        merge(
            "Cors/properties/allow_headers",
            json!({"maxItems": MAX_LIST, "items": {"type": "string", "pattern": header_or_star}}),
        ),
        merge(
            "Cors/properties/expose_headers",
            json!({"maxItems": MAX_LIST, "items": {"type": "string", "pattern": header_or_star}}),
        ),
        merge("Cors/properties/max_age_secs", json!({"maximum": 86_400})),
        merge(
            "Cors/properties/allow_credentials",
            json!({"description": "Not with the origin `*`: browsers refuse credentials with it (a 400)."}),
        ),
        // Usage plans
        merge("UsagePlan/properties/id", optional_id.clone()),
        merge("UsagePlan/properties/name", name_schema()),
        merge("UsagePlan/properties/description", description.clone()),
        merge(
            "UsagePlan/properties/api_stages",
            json!({"maxItems": MAX_LIST, "description": "Each API stage appears once, and must exist."}),
        ),
        replace("UsagePlan/properties/created_at", timestamp_read_only("Set by the node.")),
        replace("UsagePlan/properties/updated_at", timestamp_read_only("Set by the node.")),
        merge("PlanStage/properties/api_id", id_ref("API")),
        merge("PlanStage/properties/stage", id_rules()),
        merge("PlanStage/properties/method_throttles", list.clone()),
        merge("MethodThrottle/properties/method", json!({"enum": methods})),
        merge("MethodThrottle/properties/path", path_pattern_schema()),
        merge("Quota/properties/limit", json!({"minimum": 1})),
        merge("Quota/properties/offset", json!({"maximum": 27})),
        // API keys
        merge("ApiKeySpec/properties/name", name_schema()),
        merge("ApiKeySpec/properties/description", description.clone()),
        merge("ApiKeySpec/properties/customer_id", name_schema()),
        merge(
            "ApiKeySpec/properties/tags",
            json!({"maxProperties": 50,
                "propertyNames": {"type": "string", "minLength": 1, "maxLength": 128,
                    "pattern": format!("^{NOT_CONTROL}*$")},
                "additionalProperties": {"type": "string", "maxLength": 256,
                    "pattern": format!("^{NOT_CONTROL}*$")}}),
        ),
        merge(
            "ApiKeySpec/properties/plan_ids",
            json!({"maxItems": MAX_LIST, "uniqueItems": true, "items": {"type": "string", "minLength": 1,
                "maxLength": 64, "pattern": ID, "description": "A stored usage plan's id (a 400 otherwise)."},
                "description": "At most one plan per API stage (a 409 otherwise)."}),
        ),
        // Policies
        merge("Policy/properties/id", optional_id.clone()),
        merge("Policy/properties/name", name_schema()),
        merge("Policy/properties/description", description.clone()),
        merge("Policy/properties/api_id", id_ref("API")),
        merge("Policy/properties/statements", non_empty.clone()),
        replace("Policy/properties/created_at", timestamp_read_only("Set by the node.")),
        replace("Policy/properties/updated_at", timestamp_read_only("Set by the node.")),
        merge("Statement/properties/principals", non_empty.clone()),
        merge(
            "Statement/properties/actions",
            json!({"minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string", "enum": ["invoke", "*"]},
                "description": "`invoke` or `*` for the check. An admin statement (principals all `token:…`, \
                    in a policy without `api_id`) takes admin actions instead, `service:verb` such as \
                    `keys:create`, `usage:read`, `keys:*` (see the README's \"Who may manage what\"); this \
                    schema shows the check's form only."}),
        ),
        merge(
            "Statement/properties/resources",
            json!({"minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string", "minLength": 1,
                "maxLength": 1024, "pattern": format!("^{VISIBLE}+$")}}),
        ),
        merge("Statement/properties/conditions", list.clone()),
        merge(
            "Condition/properties/key",
            json!({"pattern": r"^(source_ip|proxy_id|(claim|header|tag):[\s\S]+)$",
                "description": "`source_ip` (only with IpAddress and NotIpAddress, whose values are IP \
                                addresses or CIDR blocks), `proxy_id`, `claim:NAME`, `header:NAME` or `tag:NAME`."}),
        ),
        merge("Condition/properties/values", non_empty.clone()),
        // Authorizers
        merge("Authorizer/properties/id", optional_id.clone()),
        merge("Authorizer/properties/name", name_schema()),
        merge("Authorizer/properties/description", description),
        replace("Authorizer/properties/created_at", timestamp_read_only("Set by the node.")),
        replace("Authorizer/properties/updated_at", timestamp_read_only("Set by the node.")),
        merge("AuthorizerKind/oneOf/0", json!({"additionalProperties": false})),
        merge("AuthorizerKind/oneOf/1", json!({"additionalProperties": false})),
        merge("JwtAuthorizer/properties/issuer", json!({"pattern": format!("[^{WHITE_SPACE}]")})),
        merge("JwtAuthorizer/properties/audiences", non_empty.clone()),
        merge(
            "JwtAuthorizer/properties/algorithms",
            json!({"minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string", "enum": JWT_ALGORITHMS},
                "description": "HMAC (HS*) algorithms cannot be mixed with public-key ones; `none` never."}),
        ),
        merge("JwtAuthorizer/properties/jwks_url", url_schema()),
        merge(
            "JwtAuthorizer/properties/jwks",
            json!({"description": "Inline keys; give these or `jwks_url` (HMAC keys only inline)."}),
        ),
        merge("JwtAuthorizer/properties/leeway_secs", json!({"maximum": 300})),
        merge(
            "Jwk/properties/kty",
            json!({"enum": ["RSA", "EC", "OKP", "oct"],
                "description": "`oct` for HMAC algorithms, else `RSA`, `EC` or `OKP`."}),
        ),
        merge("HttpAuthorizer/properties/url", url_schema()),
        merge(
            "HttpAuthorizer/properties/identity_sources",
            json!({"minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string",
                "pattern": format!(r"^(header:{}|query:[\s\S]+)$",
                    HEADER_NAME.trim_start_matches('^').trim_end_matches('$'))}}),
        ),
        merge("HttpAuthorizer/properties/cache_ttl_secs", json!({"maximum": 3600})),
        merge("HttpAuthorizer/properties/timeout_ms", json!({"minimum": 1, "maximum": 30_000})),
        // Rate limit domains
        merge("RateLimitDomain/properties/id", optional_id),
        merge(
            "RateLimitDomain/properties/domain",
            printable_schema(MAX_DOMAIN, "The domain Envoy names; unique in the cluster (a 409 otherwise)"),
        ),
        merge(
            "RateLimitDomain/properties/descriptors",
            // No `maxItems`: the limit is on the rules of every level
            // together, which a schema cannot count.
            json!({"description": format!("At most {MAX_DESCRIPTOR_RULES} rules \
                in all, nested at most {MAX_DESCRIPTOR_DEPTH} deep; no two rules of one level with the same key \
                and value (a 400 naming the rule).")}),
        ),
        replace("RateLimitDomain/properties/created_at", timestamp_read_only("Set by the node.")),
        replace("RateLimitDomain/properties/updated_at", timestamp_read_only("Set by the node.")),
        merge("DescriptorRule/properties/key", printable_schema(MAX_DESCRIPTOR_KEY, "The entry's key")),
        merge(
            "DescriptorRule/properties/value",
            json!({"maxLength": MAX_DESCRIPTOR_VALUE, "pattern": format!("^{NOT_CONTROL}*$")}),
        ),
        merge(
            "DescriptorRule/properties/descriptors",
            json!({"description": "Rules one entry deeper; they count towards the domain's total."}),
        ),
        // `share_threshold` only with a `*` pattern value.
        merge(
            "DescriptorRule",
            json!({"anyOf": [
                {"properties": {"share_threshold": {"const": false}}},
                {"required": ["value"], "properties": {"value": {"type": "string", "pattern": "[*]"}}}
            ]}),
        ),
        merge(
            "DescriptorRateLimit/properties/name",
            printable_schema(MAX_DESCRIPTOR_KEY, "A name `replaces` can refer to"),
        ),
        merge(
            "DescriptorRateLimit/properties/replaces",
            json!({"maxItems": MAX_LIST, "description": "Never the limit's own `name` (a 400)."}),
        ),
        // A unit unless `unlimited`, and none with it.
        merge(
            "DescriptorRateLimit",
            json!({"anyOf": [
                {"required": ["unit"], "properties": {"unit": {"type": "string"}, "unlimited": {"const": false}}},
                {"required": ["unlimited"], "properties": {"unit": {"type": "null"}, "unlimited": {"const": true}}}
            ]}),
        ),
        merge(
            "LimitReplaces/properties/name",
            printable_schema(MAX_DESCRIPTOR_KEY, "The `name` of the limit replaced"),
        ),
        // Admin tokens
        merge("AdminTokenSpec/properties/name", name_schema()),
        merge("AdminTokenSpec/properties/scopes", non_empty),
        // The check
        merge("CheckRequest/properties/api", json!({"minLength": 1, "maxLength": 64})),
        merge("CheckRequest/properties/stage", json!({"minLength": 1, "maxLength": 64})),
        merge("CheckRequest/properties/method", json!({"enum": request_methods})),
        merge("CheckRequest/properties/path", json!({"pattern": "^/", "maxLength": 8192})),
        merge(
            "CheckRequest/properties/source_ip",
            json!({"anyOf": [{"type": "null"}, {"format": "ipv4"}, {"format": "ipv6"}]}),
        ),
        merge(
            "CheckRequest/properties/headers",
            json!({"maxProperties": MAX_FIELDS, "additionalProperties": {"type": "string",
                "maxLength": MAX_HEADER_BYTES},
                "description": format!("Request headers; names are matched case-insensitively. At most \
                    {MAX_FIELDS}, each name and value together at most {MAX_HEADER_BYTES} bytes.")}),
        ),
        merge("CheckRequest/properties/query", json!({"maxProperties": MAX_FIELDS})),
        merge("Decision/properties/status", json!({"minimum": 100, "maximum": 599})),
        replace(
            "RateLimitUnit",
            json!({"type": "string", "description": "A window: lower case, or Envoy's upper-case names.",
                "enum": ["second", "minute", "hour", "day", "week", "month", "year",
                         "SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR"]}),
        ),
        // The descriptor rate limit check. Lengths are in bytes there, in
        // characters here: a longer string of multi-byte characters is a 400.
        merge("RateLimitRequest/properties/domain", json!({"minLength": 1, "maxLength": MAX_DOMAIN})),
        merge(
            "RateLimitRequest/properties/descriptors",
            json!({"minItems": 1, "maxItems": tollgate_proto::ratelimit::MAX_DESCRIPTORS}),
        ),
        merge("RateLimitRequest/properties/hits_addend", json!({"maximum": tollgate_proto::ratelimit::MAX_HITS})),
        merge("RequestDescriptor/properties/entries", json!({"minItems": 1, "maxItems": MAX_DESCRIPTOR_DEPTH})),
        merge("RequestDescriptor/properties/hits_addend", json!({"maximum": tollgate_proto::ratelimit::MAX_HITS})),
        merge("DescriptorEntry/properties/key", json!({"minLength": 1, "maxLength": MAX_DESCRIPTOR_KEY})),
        merge("DescriptorEntry/properties/value", json!({"maxLength": MAX_DESCRIPTOR_VALUE})),
        // Usage
        merge(
            "UsageUpdate/properties/delta",
            json!({"minimum": -MAX_DELTA, "maximum": MAX_DELTA, "not": {"const": 0}}),
        ),
        merge("UsageReport/properties/start_date", json!({"format": "date"})),
        merge("UsageReport/properties/end_date", json!({"format": "date"})),
        merge("DayUsage/properties/date", json!({"format": "date"})),
        merge("PeriodUsage/properties/start", json!({"format": "date-time"})),
        merge("PeriodUsage/properties/end", json!({"format": "date-time"})),
    ];
    // Externally tagged enums: an object with exactly the one variant's member.
    for i in 0..7 {
        c.push(merge(&format!("WafCondition/oneOf/{i}"), json!({"additionalProperties": false})));
    }
    c
}

/// Schemas the handlers read and write themselves (not model types).
fn handwritten_schemas() -> Vec<(&'static str, Value)> {
    let uint64 = json!({"type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX});
    let nullable_uint64 = json!({"type": ["integer", "null"], "format": "uint64", "minimum": 0, "maximum": u64::MAX});
    let host_port = json!({"type": "string",
        "pattern": r"^[\s\S]+:\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
        "description": "host:port, a port from 1 to 65535"});
    let page = |item: &str| {
        json!({"type": "object", "required": ["items", "next_after"], "properties": {
            "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}},
            "next_after": {"type": ["string", "null"], "description": "More follow: pass as `after` for the next page."}
        }})
    };
    let mut schemas = vec![
        (
            "Error",
            json!({"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "field", "message"], "properties": {
                    "code": {"type": "string", "enum": ["invalid_field", "not_found", "conflict", "refused",
                        "unavailable", "unauthorized", "forbidden", "already_created", "internal",
                        "insufficient_storage", "too_large", "idempotency_key_reused"]},
                    "field": {"type": ["string", "null"], "description": "The request field at fault, as a \
                        JSON path into the body (`routes[0].method`), a parameter or `headers.NAME`."},
                    "message": {"type": "string", "description": "What is wrong and what would be accepted."}
                }}},
                "description": "Every error the node answers with itself."}),
        ),
        (
            "Denial",
            json!({"type": "object", "required": ["message", "reason"], "properties": {
                "message": {"type": "string"}, "reason": {"$ref": "#/components/schemas/ReasonCode"}},
                "description": "Forward-auth's body when a request may not pass."}),
        ),
        (
            "ApiKeyCreated",
            json!({"allOf": [{"$ref": "#/components/schemas/ApiKeyView"}, {"type": "object",
                "required": ["secret"], "properties": {"secret": {"type": "string",
                "description": "The key's secret, shown only in this answer."}}}]}),
        ),
        (
            "AdminTokenCreated",
            json!({"allOf": [{"$ref": "#/components/schemas/AdminTokenView"}, {"type": "object",
                "required": ["secret"], "properties": {"secret": {"type": "string",
                "description": "The token, shown only in this answer."}}}]}),
        ),
        (
            "KeyImport",
            json!({"type": "object", "required": ["items"], "additionalProperties": false, "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": MAX_CREATE_MANY,
                    "items": {"$ref": "#/components/schemas/ApiKeySpec"},
                    "description": "The keys to create, as for one create; all are created or none."}}}),
        ),
        (
            "KeysImported",
            json!({"type": "object", "required": ["items"], "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKeyCreated"},
                    "description": "Each key with its secret (shown only here), in the order given."}}}),
        ),
        (
            "Reroll",
            json!({"type": "object", "properties": {"overlap_secs": {"type": "integer", "format": "uint64",
                "minimum": 0, "maximum": MAX_OVERLAP_SECS, "default": 0,
                "description": "How long the old secret keeps working, in seconds (at most 30 days)."}}}),
        ),
        (
            "IdentityKey",
            json!({"type": "object", "required": ["version", "kid", "rotated_at"], "properties": {
                "version": uint64, "kid": {"type": "string"},
                "rotated_at": {"type": "string", "format": "date-time"},
                "signing": {"type": "boolean", "description": "Whether this node signs identity tokens \
                    (it has the cluster token). Only in GET."}}}),
        ),
        (
            "NodeAdd",
            json!({"type": "object", "required": ["id", "http_addr", "peer_addr"], "properties": {
                "id": {"type": "integer", "format": "uint64", "minimum": 1, "maximum": u64::MAX},
                "http_addr": host_port, "peer_addr": host_port,
                "wire_addr": {"anyOf": [{"type": "string", "maxLength": 0}, host_port],
                    "description": "The binary check listener, for client discovery (optional)."},
                "voter": {"type": "boolean", "default": true}}}),
        ),
        (
            "AuditPage",
            json!({"type": "object", "required": ["items", "next_after"], "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
                "next_after": {"type": ["string", "null"],
                    "description": "Give as `after` for the next page; null on the last."}}}),
        ),
        (
            "AuditEntry",
            json!({"type": "object",
                "required": ["seq", "at", "at_ms", "actor", "request", "action", "kind", "id", "changes", "note"],
                "description": "One admin change: who asked (the admin token by id and name; the bootstrap \
                    token has no id), from which address (the connection's, never a forwarded header), through \
                    which route, and which fields of the object's admin view changed. Never a secret: a key's \
                    secret prefixes are named, not recorded.",
                "properties": {
                    "seq": {"type": "integer", "format": "uint64", "minimum": 1,
                        "description": "The change's Raft log index: unique and increasing."},
                    "at": {"type": "string", "format": "date-time"},
                    "at_ms": {"type": "integer", "format": "int64"},
                    "actor": {"type": "object", "required": ["token_id", "token_name", "source"], "properties": {
                        "token_id": {"type": ["string", "null"]}, "token_name": {"type": "string"},
                        "source": {"type": "string"}}},
                    "request": {"type": "string", "description": "Method and route."},
                    "action": {"type": "string", "enum": AuditAction::ALL.map(AuditAction::name)},
                    "kind": {"type": ["string", "null"], "enum": audit_kinds()},
                    "id": {"type": ["string", "null"]},
                    "changes": {"type": "array", "items": {"type": "object", "required": ["field", "before", "after"],
                        "properties": {"field": {"type": "string"}, "before": {}, "after": {}}}},
                    "note": {"type": ["string", "null"]}}}),
        ),
        (
            "NodeMembership",
            json!({"type": "object", "required": ["id", "voter"],
                "properties": {"id": uint64, "voter": {"type": "boolean"}}}),
        ),
        (
            "ClusterStatus",
            json!({"type": "object", "required": ["node_id", "state", "leader_id", "term", "members"],
                "properties": {
                    "node_id": uint64, "state": {"type": "string"}, "leader_id": nullable_uint64,
                    "term": uint64, "last_log_index": nullable_uint64, "commit_index": uint64,
                    "applied_index": nullable_uint64, "snapshot_index": nullable_uint64,
                    "purged_index": nullable_uint64,
                    "millis_since_quorum_ack": {"type": ["integer", "null"], "format": "uint64", "minimum": 0,
                        "maximum": u64::MAX, "description": "On the leader: milliseconds since a quorum last \
                        acknowledged it. Null on other nodes, and before a quorum has."},
                    "members": {"type": "array", "items": {"type": "object",
                        "required": ["id", "http_addr", "peer_addr", "wire_addr", "voter", "matched_index"],
                        "properties": {
                            "id": uint64, "http_addr": {"type": "string"}, "peer_addr": {"type": "string"},
                            "wire_addr": {"type": "string"}, "voter": {"type": "boolean"},
                            "matched_index": {"type": ["integer", "null"], "format": "uint64", "minimum": 0,
                                "maximum": u64::MAX, "description": "On the leader: the last log index this \
                                member is known to hold (the leader's own last index for itself), so its lag \
                                is `last_log_index` minus this. Null on other nodes, and for a member the \
                                leader has not heard from."}}}}}}),
        ),
        (
            "DecisionCounts",
            json!({"type": "object", "required": ["node_id", "uptime_ms", "total", "reasons"], "properties": {
                "node_id": uint64,
                "uptime_ms": {"type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX,
                    "description": "How long the counts have been counting: less than in an earlier answer \
                    means the node restarted and its counts began again at zero."},
                "total": {"type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX,
                    "description": "Every decision counted, the sum of `reasons`."},
                "reasons": {"type": "object", "propertyNames": schema_ref("ReasonCode"),
                    "additionalProperties": uint64,
                    "description": "Decisions by reason; a reason that has not occurred is left out."}},
                "description": "This node's check decisions since it started, by reason, summed over APIs and \
                    stages (`tollgate_check_decisions_total`). Cumulative: take the difference of two \
                    answers for a rate."}),
        ),
        (
            "Readiness",
            json!({"type": "object", "required": ["member", "leader_id"], "properties": {
                "member": {"type": "boolean"}, "leader_id": nullable_uint64,
                "reason": {"type": ["string", "null"], "description": "Why the node is not ready: Raft \
                    stopped, removed, not a member, disk space low (--min-free-disk-mb), or no leader."}}}),
        ),
        (
            "Jwks",
            json!({"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array", "items": {
                "type": "object", "required": ["kty", "kid"], "properties": {
                    "kty": {"type": "string"}, "crv": {"type": "string"}, "alg": {"type": "string"},
                    "use": {"type": "string"}, "kid": {"type": "string"}, "x": {"type": "string"}}}}}}),
        ),
    ];
    for (segment, _, _, view, _) in RESOURCES {
        schemas.push((page_name(segment), page(view)));
    }
    schemas
}

fn page_name(segment: &str) -> &'static str {
    match segment {
        "apis" => "ApiPage",
        "plans" => "UsagePlanPage",
        "keys" => "ApiKeyPage",
        "policies" => "PolicyPage",
        "authorizers" => "AuthorizerPage",
        "ratelimits" => "RateLimitDomainPage",
        _ => "AdminTokenPage",
    }
}

// ---------------------------------------------------------------------------
// Operations

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn param(place: &str, name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": place, "required": required, "schema": schema, "description": description})
}

fn path_id(description: &str) -> Value {
    param("path", "id", true, id_schema(), description)
}

fn stale() -> Value {
    param(
        "query",
        "stale",
        false,
        json!({"type": "string", "enum": ["true", "false", "1", "0", ""]}),
        "`true` reads this node's copy without a read barrier (default: linearizable)",
    )
}

fn page_params() -> [Value; 2] {
    [
        param(
            "query",
            "limit",
            false,
            json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}),
            "page size",
        ),
        param("query", "after", false, json!({"type": "string"}), "return ids after this one (a page's `next_after`)"),
    ]
}

fn idempotency_key() -> Value {
    param(
        "header",
        "Idempotency-Key",
        false,
        // Tabs count as visible (`HeaderValue::to_str`); HTTP drops white
        // space around a field value before the node sees it.
        json!({"type": "string", "minLength": 1, "maxLength": 255,
            "pattern": r"^[\t\x20-\x7e]*[\x21-\x7e][\t\x20-\x7e]*$"}),
        "1 to 255 visible ASCII characters naming one request (method and path): a retry with the same key \
         takes effect once",
    )
}

fn response(description: &str, content: Option<Value>) -> Value {
    let mut r = json!({"description": description});
    if let Some(c) = content {
        r["content"] = c;
    }
    r
}

fn error(description: &str) -> Value {
    response(description, Some(json_body(schema_ref("Error"))))
}

fn unavailable() -> Value {
    let mut r = error("No leader is known, or it could not be reached in time: retry");
    r["headers"] = json!({"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}});
    r
}

fn too_large() -> Value {
    response("The body is larger than 1 MiB", Some(json!({"application/json": {"schema": schema_ref("Error")}})))
}

/// An operation: summary, parameters, optional body, and its responses. Every
/// admin operation may also answer 401, 403 and 503.
fn operation(
    tag: &str,
    summary: &str,
    params: Vec<Value>,
    body: Option<(Value, bool)>,
    responses: Vec<(&str, Value)>,
) -> Value {
    let mut op = json!({"tags": [tag], "summary": summary, "responses": {}});
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some((schema, required)) = body {
        op["requestBody"] = json!({"required": required, "content": json_body(schema)});
    }
    for (status, r) in responses {
        op["responses"][status] = r;
    }
    op
}

fn admin(mut op: Value, writes: bool) -> Value {
    op["security"] = json!([{"admin_token": []}]);
    op["responses"]["401"] = error("No admin token, or not a valid one");
    op["responses"]["403"] = error("The admin token may only read");
    op["responses"]["429"] = error("Too many wrong admin tokens from this address; see Retry-After");
    op["responses"]["503"] = unavailable();
    if writes {
        op["responses"]["413"] = too_large();
    }
    let takes_key = op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
    if takes_key {
        op["responses"]["422"] =
            error("This Idempotency-Key was already used for this route with another body: nothing was done");
    }
    op
}

/// A write the free-space guard refuses while a member's disk is nearly full
/// (see `crate::cluster::disk`): every admin write but membership changes.
fn guarded(mut op: Value) -> Value {
    op["responses"]["507"] = error(
        "A member's disk is nearly full (--min-free-disk-mb): writes are refused cluster-wide until space is \
         freed; the message names the node and its free space",
    );
    op
}

fn route(method: &'static str, path: impl Into<String>, access: Access, operation: Value) -> RouteDoc {
    RouteDoc { method, path: path.into(), access, operation }
}

/// Every route the HTTP listener serves: the one table of them.
pub fn routes() -> Vec<RouteDoc> {
    let mut routes = Vec::new();
    let bad = || error("Invalid input; `field` names it");
    for (segment, create_schema, replace_schema, view, noun) in RESOURCES {
        let created = match segment {
            "keys" => "ApiKeyCreated",
            "tokens" => "AdminTokenCreated",
            _ => view,
        };
        let collection = format!("/v1/admin/{segment}");
        let item = format!("{collection}/{{id}}");
        let [limit, after] = page_params();
        let mut params = vec![limit, after, stale()];
        if segment == "ratelimits" {
            params.push(param(
                "query",
                "domain",
                false,
                json!({"type": "string"}),
                "only the rate limit domain with this domain name (a page of one, or none)",
            ));
        }
        if segment == "keys" {
            params.push(param(
                "query",
                "search",
                false,
                json!({"type": "string"}),
                "only keys whose id, name, customer id or secret prefix contains this text, ignoring case \
                 (paged like the whole list; empty: every key)",
            ));
        }
        let list = operation(
            segment,
            &format!("List {noun}s, in id order"),
            params,
            None,
            vec![("200", response("A page", Some(json_body(schema_ref(page_name(segment)))))), ("400", bad())],
        );
        routes.push(route("get", collection.clone(), Access::Admin, admin(list, false)));
        let secret_note = if created == view { "" } else { " (with its secret, shown only here)" };
        let create = operation(
            segment,
            &format!("Create a {noun}"),
            vec![idempotency_key()],
            Some((schema_ref(create_schema), true)),
            vec![
                ("201", response(&format!("Created{secret_note}"), Some(json_body(schema_ref(created))))),
                ("400", bad()),
                ("409", error("The id exists, the change conflicts with stored objects, or this Idempotency-Key already created an object whose secret cannot be shown again")),
            ],
        );
        routes.push(route("post", collection, Access::Admin, guarded(admin(create, true))));
        let read = operation(
            segment,
            &format!("Read a {noun}"),
            vec![path_id(&format!("{noun} id")), stale()],
            None,
            vec![
                ("200", response("The object", Some(json_body(schema_ref(view))))),
                ("400", bad()),
                ("404", error("No such id")),
            ],
        );
        routes.push(route("get", item.clone(), Access::Admin, admin(read, false)));
        let put = operation(
            segment,
            &format!("Replace a {noun}"),
            vec![path_id(&format!("{noun} id")), idempotency_key()],
            Some((schema_ref(replace_schema), true)),
            vec![
                ("200", response("The stored object", Some(json_body(schema_ref(view))))),
                ("400", bad()),
                ("404", error("No such id")),
                ("409", error("The change conflicts with stored objects")),
            ],
        );
        routes.push(route("put", item.clone(), Access::Admin, guarded(admin(put, true))));
        let delete = operation(
            segment,
            &format!("Delete a {noun}"),
            vec![path_id(&format!("{noun} id")), idempotency_key()],
            None,
            vec![
                ("204", response("Deleted", None)),
                ("400", bad()),
                ("404", error("No such id")),
                ("409", error("Still used by another object")),
            ],
        );
        routes.push(route("delete", item, Access::Admin, guarded(admin(delete, false))));
    }
    let reroll = operation(
        "keys",
        "Give a key a new secret; the old one may keep working for `overlap_secs`",
        vec![path_id("API key id"), idempotency_key()],
        Some((schema_ref("Reroll"), false)),
        vec![
            (
                "200",
                response("The key with its new secret, shown only here", Some(json_body(schema_ref("ApiKeyCreated")))),
            ),
            ("400", bad()),
            ("404", error("No such key")),
            ("409", error("This Idempotency-Key already rerolled the key; its secret was shown once")),
        ],
    );
    routes.push(route("post", "/v1/admin/keys/{id}/reroll", Access::Admin, guarded(admin(reroll, true))));
    let import = operation(
        "keys",
        "Create many keys at once (at most 1000), all or none, in one replicated write",
        vec![idempotency_key()],
        Some((schema_ref("KeyImport"), true)),
        vec![
            ("201", response("The keys with their secrets, shown only here", Some(json_body(schema_ref("KeysImported"))))),
            ("400", bad()),
            ("409", error("An id or secret is taken, or this Idempotency-Key already imported keys whose secrets cannot be shown again")),
        ],
    );
    routes.push(route("post", "/v1/admin/keys/import", Access::Admin, guarded(admin(import, true))));
    let identity = operation(
        "identity",
        "The key version that signs identity tokens for backends",
        vec![stale()],
        None,
        vec![("200", response("The identity key", Some(json_body(schema_ref("IdentityKey"))))), ("400", bad())],
    );
    routes.push(route("get", "/v1/admin/identity-key", Access::Admin, admin(identity, false)));
    let rotate = operation(
        "identity",
        "Sign identity tokens with the next key version (backends accept the previous one too)",
        vec![idempotency_key()],
        None,
        vec![("200", response("The new identity key", Some(json_body(schema_ref("IdentityKey"))))), ("400", bad())],
    );
    routes.push(route("post", "/v1/admin/identity-key/rotate", Access::Admin, guarded(admin(rotate, false))));
    let date = |name: &str, description: &str| {
        param("query", name, false, json!({"type": "string", "format": "date"}), description)
    };
    let [limit, after] = page_params();
    let usage = operation(
        "usage",
        "Quota usage of a plan's keys: per UTC day, and the current period (GetUsage)",
        vec![
            path_id("usage plan id"),
            date("start_date", "first day, YYYY-MM-DD (default: today, UTC)"),
            date(
                "end_date",
                &format!("last day, YYYY-MM-DD (default: today); not before start_date, at most {MAX_DAYS} days after"),
            ),
            param("query", "key_id", false, json!({"type": "string"}), "only this key (it must be in the plan)"),
            limit,
            after,
            stale(),
        ],
        None,
        vec![
            ("200", response("Usage per key", Some(json_body(schema_ref("UsageReport"))))),
            ("400", bad()),
            ("404", error("No such plan or key")),
        ],
    );
    routes.push(route("get", "/v1/admin/plans/{id}/usage", Access::Admin, admin(usage, false)));
    let update = operation(
        "usage",
        "Add to (or take from) what a key may still use this period (UpdateUsage)",
        vec![
            path_id("usage plan id (the plan must have a quota)"),
            param("path", "key_id", true, id_schema(), "API key id (the key must be in the plan)"),
            idempotency_key(),
        ],
        Some((schema_ref("UsageUpdate"), true)),
        vec![
            ("200", response("The current period after the change", Some(json_body(schema_ref("PeriodUsage"))))),
            ("400", bad()),
            ("404", error("No such plan or key")),
        ],
    );
    routes.push(route("post", "/v1/admin/plans/{id}/usage/{key_id}", Access::Admin, guarded(admin(update, true))));
    let [limit, _] = page_params();
    let audit = operation(
        "audit",
        "The audit trail: every admin change, oldest first (kept: the last 10,000, at most 90 days)",
        vec![
            param(
                "query",
                "since",
                false,
                json!({"type": "string", "format": "date-time"}),
                "only changes asked for at or after this RFC 3339 time",
            ),
            param(
                "query",
                "kind",
                false,
                json!({"type": "string", "enum": EntityKind::ALL.map(EntityKind::collection)}),
                "only changes to this kind of object",
            ),
            param(
                "query",
                "action",
                false,
                json!({"type": "string", "enum": AuditAction::ALL.map(AuditAction::name)}),
                "only this kind of change",
            ),
            limit,
            param(
                "query",
                "after",
                false,
                json!({"type": "string", "pattern": "^[0-9]{1,20}$"}),
                "return changes after this sequence number (a page's `next_after`)",
            ),
            stale(),
        ],
        None,
        vec![("200", response("A page of changes", Some(json_body(schema_ref("AuditPage"))))), ("400", bad())],
    );
    routes.push(route("get", "/v1/admin/audit", Access::Admin, admin(audit, false)));
    let backup_file = json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}});
    let mut snapshot = operation(
        "cluster",
        "A backup of the whole replicated state, for `tollgate snapshot restore` (needs the write scope: it \
         holds every key's digest)",
        vec![],
        None,
        vec![("200", response("The backup file; X-Tollgate-Applied-Index says how far it reaches", Some(backup_file)))],
    );
    snapshot["description"] = json!(
        "Consistent with every write acknowledged before the request: the node waits for a read barrier through \
         the leader, then writes the state it applied. The file: `TGSNAP`, a zero, the format version, the \
         SHA-256 of the rest, then the state."
    );
    routes.push(route("post", "/v1/admin/snapshot", Access::Admin, admin(snapshot, false)));
    let node_id = || {
        param(
            "path",
            "id",
            true,
            json!({"type": "integer", "format": "uint64", "minimum": 1, "maximum": u64::MAX}),
            "node id",
        )
    };
    let status = operation(
        "cluster",
        "Cluster status: this node's view of the leader, term, indexes and members",
        vec![],
        None,
        vec![("200", response("Status", Some(json_body(schema_ref("ClusterStatus")))))],
    );
    routes.push(route("get", "/v1/admin/cluster", Access::Admin, admin(status, false)));
    let decisions = operation(
        "decisions",
        "This node's check decisions by reason since it started (cumulative counts, for rates)",
        vec![],
        None,
        vec![("200", response("The counts", Some(json_body(schema_ref("DecisionCounts")))))],
    );
    routes.push(route("get", "/v1/admin/decisions", Access::Admin, admin(decisions, false)));
    let add = operation(
        "cluster",
        "Add a node: a learner, then (unless `voter` is false) a voter",
        vec![],
        Some((schema_ref("NodeAdd"), true)),
        vec![
            ("201", response("Added", Some(json_body(schema_ref("NodeMembership"))))),
            ("400", bad()),
            ("409", error("Already a member, or the cluster refused the change")),
        ],
    );
    routes.push(route("post", "/v1/admin/cluster/nodes", Access::Admin, admin(add, true)));
    let promote = operation(
        "cluster",
        "Promote a learner to voter",
        vec![node_id()],
        None,
        vec![
            ("200", response("Promoted", Some(json_body(schema_ref("NodeMembership"))))),
            ("400", bad()),
            ("404", error("Not a member")),
            ("409", error("Already a voter, or the cluster refused the change")),
        ],
    );
    routes.push(route("post", "/v1/admin/cluster/nodes/{id}/promote", Access::Admin, admin(promote, false)));
    let remove = operation(
        "cluster",
        "Remove a node",
        vec![node_id()],
        None,
        vec![
            ("204", response("Removed", None)),
            ("400", bad()),
            ("404", error("Not a member")),
            ("409", error("The last voter, or the cluster refused the change")),
        ],
    );
    routes.push(route("delete", "/v1/admin/cluster/nodes/{id}", Access::Admin, admin(remove, false)));

    // The check path.
    let check = operation(
        "check",
        "Decide one request: may it pass, and with which headers?",
        vec![],
        Some((schema_ref("CheckRequest"), true)),
        vec![
            (
                "200",
                response(
                    "The decision, allow or deny (an unknown API is a deny, not an error)",
                    Some(json_body(schema_ref("Decision"))),
                ),
            ),
            ("400", bad()),
            ("413", too_large()),
            ("503", unavailable()),
        ],
    );
    routes.push(route("post", "/v1/check", Access::Public, check));
    let mut ratelimit = operation(
        "ratelimit",
        "Check descriptors against a rate limit domain (Envoy's ShouldRateLimit, in JSON): counted all or none",
        vec![],
        Some((schema_ref("RateLimitRequest"), true)),
        vec![
            (
                "200",
                response(
                    "The answer, OK or OVER_LIMIT, per descriptor and overall (an unknown domain is OK)",
                    Some(json_body(schema_ref("RateLimitResponse"))),
                ),
            ),
            ("400", bad()),
            ("401", error("No token of the check scope, or not a valid one")),
            ("413", too_large()),
            ("429", error("Too many wrong tokens from this address; see Retry-After")),
            ("503", unavailable()),
        ],
    );
    ratelimit["security"] = json!([{"check_token": []}]);
    routes.push(route("post", "/v1/ratelimit", Access::Proxy, ratelimit));
    let api_stage = || {
        [
            param("path", "api", true, json!({"type": "string", "minLength": 1, "maxLength": 64}), "API id"),
            param("path", "stage", true, json!({"type": "string", "minLength": 1, "maxLength": 64}), "stage name"),
        ]
    };
    let xff = |required: bool| {
        param(
            "header",
            "X-Forwarded-For",
            required,
            json!({"type": "string"}),
            "the chain of client addresses (IPv4 or IPv6, each may carry a port); the client is the first from \
             the right that is not a --trusted-proxies address",
        )
    };
    for method in ANY_METHOD {
        let [api, stage] = api_stage();
        let op = operation(
            "forward-auth",
            "Forward-auth for nginx, Caddy and Traefik: the proxy names itself in `mode`, and the method, URI \
             and client address are read from the headers that proxy sets",
            vec![
                api,
                stage,
                param(
                    "query",
                    "mode",
                    true,
                    json!({"type": "string", "enum": ["nginx", "caddy", "traefik"]}),
                    "the proxy that asks",
                ),
                param(
                    "query",
                    "address",
                    false,
                    json!({"type": "string", "enum": ["x-forwarded-for", "forwarded"], "default": "x-forwarded-for"}),
                    "which header carries the client address chain",
                ),
                param(
                    "header",
                    "X-Original-Method",
                    false,
                    json!({"type": "string"}),
                    "nginx mode: the original method (required)",
                ),
                param(
                    "header",
                    "X-Original-URI",
                    false,
                    json!({"type": "string", "pattern": "^/"}),
                    "nginx mode: the original path and query (required)",
                ),
                param(
                    "header",
                    "X-Forwarded-Method",
                    false,
                    json!({"type": "string"}),
                    "caddy and traefik modes: the original method (required)",
                ),
                param(
                    "header",
                    "X-Forwarded-Uri",
                    false,
                    json!({"type": "string", "pattern": "^/"}),
                    "caddy and traefik modes: the original path and query (required)",
                ),
                xff(false),
                param(
                    "header",
                    "Forwarded",
                    false,
                    json!({"type": "string"}),
                    "RFC 7239, read instead of X-Forwarded-For with `address=forwarded`",
                ),
            ],
            None,
            forward_auth_responses(true),
        );
        routes.push(route(method, "/v1/forward-auth/{api}/{stage}", Access::Public, op));
        let [api, stage] = api_stage();
        let op = operation(
            "forward-auth",
            "Forward-auth for Envoy (ext_authz, HTTP mode): the original method is this request's, the path \
             and query follow the prefix",
            vec![
                api,
                stage,
                param(
                    "path",
                    "rest",
                    true,
                    json!({"type": "string", "minLength": 1}),
                    "the original path, without its leading `/`",
                ),
                xff(true),
            ],
            None,
            forward_auth_responses(false),
        );
        routes.push(route(method, "/v1/forward-auth/{api}/{stage}/{rest}", Access::Public, op));
    }
    for (path, summary, ok, extra) in [
        (
            "/healthz",
            "Liveness",
            response("Alive", Some(json!({"text/plain": {"schema": {"type": "string", "const": "ok"}}}))),
            None,
        ),
        (
            "/readyz",
            "Readiness: a member of a cluster with a known leader, Raft running and enough free disk space",
            response("Ready", Some(json_body(schema_ref("Readiness")))),
            Some(("503", response("Not ready", Some(json_body(schema_ref("Readiness")))))),
        ),
        (
            "/metrics",
            "Prometheus metrics",
            response("Metrics, text format 0.0.4", Some(json!({"text/plain": {"schema": {"type": "string"}}}))),
            None,
        ),
        (
            "/.well-known/jwks.json",
            "Public keys that verify X-Tollgate-Identity",
            response("A JWK set", Some(json_body(schema_ref("Jwks")))),
            None,
        ),
        ("/openapi.json", "This document", response("OpenAPI 3.1", Some(json_body(json!({"type": "object"})))), None),
    ] {
        let mut responses = vec![("200", ok)];
        responses.extend(extra);
        routes.push(route("get", path, Access::Public, operation("operations", summary, vec![], None, responses)));
    }
    for asset in &super::console::ASSETS {
        let media = asset.content_type.split(';').next().unwrap_or(asset.content_type);
        let mut ok = response("The file", Some(json!({media: {"schema": {"type": "string"}}})));
        let mut headers = Map::new();
        for (name, value) in super::console::HEADERS {
            headers.insert(name.to_string(), json!({"required": true, "schema": {"type": "string", "const": value}}));
        }
        ok["headers"] = Value::Object(headers);
        let op = operation("console", asset.summary, vec![], None, vec![("200", ok)]);
        routes.push(route("get", asset.path, Access::Public, op));
    }
    routes
}

fn forward_auth_responses(header_form: bool) -> Vec<(&'static str, Value)> {
    let denial = || json_body(schema_ref("Denial"));
    let mut out = vec![
        ("200", response("Allowed: copy the X-Tollgate-* headers onto the upstream request (empty body)", None)),
        ("204", response("A CORS preflight, answered", Some(denial()))),
        ("401", response("Denied: no or bad credentials", Some(denial()))),
        ("404", response("Denied: unknown API, stage or route", Some(denial()))),
        ("413", too_large()),
        ("429", response("Denied: throttled or over quota (with Retry-After)", Some(denial()))),
        ("503", response("Denied: an authorizer or the quota could not be reached", Some(denial()))),
    ];
    if header_form {
        // nginx passes on only 2xx, 401 and 403: every other answer in nginx
        // mode, a malformed request's 400 included, is a 403 carrying the
        // real status in X-Tollgate-Status.
        out.push((
            "400",
            error("Malformed: a header the mode reads is missing or disagrees, or `mode` or `address` is wrong"),
        ));
        out.push((
            "403",
            response(
                "Denied; in nginx mode also every other answer, with the real status in X-Tollgate-Status",
                Some(json_body(json!({"anyOf": [schema_ref("Denial"), schema_ref("Error")]}))),
            ),
        ));
    } else {
        out.push(("400", error("Malformed: X-Forwarded-For is missing or not a chain of addresses")));
        out.push(("403", response("Denied", Some(denial()))));
    }
    out
}

// ---------------------------------------------------------------------------
// The document

/// The whole document (built once).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| build().0)
}

/// The document, and what went wrong putting it together (a constraint whose
/// field is not in the derived schema): empty, as a unit test proves.
fn build() -> (Value, Vec<String>) {
    let mut problems = Vec::new();
    let mut doc = serde_json::to_value(Derived::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    for c in constraints() {
        let Some(node) = schemas.pointer_mut(&format!("/{}", c.pointer)) else {
            problems.push(format!("no schema field {}", c.pointer));
            continue;
        };
        match (c.replace, node, c.value) {
            (true, node, value) => *node = value,
            (false, Value::Object(node), Value::Object(extra)) => node.extend(extra),
            _ => problems.push(format!("{} is not an object", c.pointer)),
        }
    }
    unsigned_integers(schemas);
    for (name, schema) in handwritten_schemas() {
        schemas[name] = schema;
    }
    // On replace the id comes from the path: the body leaves it out.
    for (_, create, replacement, _, _) in RESOURCES {
        if create != replacement {
            let mut schema = schemas[create].clone();
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("id");
            }
            schema["description"] = json!(format!(
                "{} The id is the one in the path: leave `id` out (or give the same).",
                schema["description"].as_str().unwrap_or_default()
            ));
            schemas[replacement] = schema;
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "admin_token": {"type": "http", "scheme": "bearer", "description": "An admin token"},
        "check_token": {"type": "http", "scheme": "bearer",
            "description": "A token of the check scope (an edge proxy's), or a write admin token"}
    });
    let mut paths = Map::new();
    for r in routes() {
        let item = paths.entry(r.path.clone()).or_insert_with(|| json!({}));
        if item.get(r.method).is_some() {
            problems.push(format!("{} {} appears twice", r.method, r.path));
        }
        let mut op = r.operation;
        op["operationId"] = json!(operation_id(r.method, &r.path));
        item[r.method] = op;
    }
    doc["paths"] = Value::Object(paths);
    (doc, problems)
}

/// `get /v1/admin/plans/{id}/usage` -> `get_v1_admin_plans_id_usage`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for part in path.split(|c: char| !c.is_ascii_alphanumeric()).filter(|p| !p.is_empty()) {
        id.push('_');
        id.push_str(part);
    }
    id
}

/// utoipa gives `u32` the format `int32` and `u64` the format `int64`, with
/// `minimum: 0`; a tool would take `int32` to end at 2^31-1. Say what they
/// are, and where they end unless a field ends sooner.
fn unsigned_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0);
            let (format, max) = match map.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => ("uint32", json!(u32::MAX)),
                Some("int64") if unsigned => ("uint64", json!(u64::MAX)),
                _ => ("", Value::Null),
            };
            if !format.is_empty() {
                map.insert("format".into(), json!(format));
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

/// The audit entry's `kind` values: a collection name, or null.
fn audit_kinds() -> Value {
    let mut kinds: Vec<Value> = EntityKind::ALL.iter().map(|k| Value::from(k.collection())).collect();
    kinds.push(Value::Null);
    Value::Array(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `super::router` adds, read off the router code (mod.rs,
    /// admin.rs, cluster.rs, check.rs, forward_auth.rs, ops.rs, console.rs,
    /// decisions.rs). A route added there and not here, or here and not in
    /// [`routes`], fails this test.
    const SERVED: &[(&str, &str)] = &[
        ("get", "/v1/admin/{kind}"),
        ("post", "/v1/admin/{kind}"),
        ("get", "/v1/admin/{kind}/{id}"),
        ("put", "/v1/admin/{kind}/{id}"),
        ("delete", "/v1/admin/{kind}/{id}"),
        ("post", "/v1/admin/keys/{id}/reroll"),
        ("post", "/v1/admin/keys/import"),
        ("get", "/v1/admin/identity-key"),
        ("get", "/v1/admin/plans/{id}/usage"),
        ("post", "/v1/admin/plans/{id}/usage/{key_id}"),
        ("post", "/v1/admin/identity-key/rotate"),
        ("get", "/v1/admin/audit"),
        ("post", "/v1/admin/snapshot"),
        ("get", "/v1/admin/cluster"),
        ("post", "/v1/admin/cluster/nodes"),
        ("post", "/v1/admin/cluster/nodes/{id}/promote"),
        ("delete", "/v1/admin/cluster/nodes/{id}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("post", "/v1/check"),
        ("post", "/v1/ratelimit"),
        ("get", "/.well-known/jwks.json"),
        ("any", "/v1/forward-auth/{api}/{stage}"),
        ("any", "/v1/forward-auth/{api}/{stage}/{rest}"),
        ("get", "/v1/admin/decisions"),
        ("get", "/console"),
        ("get", "/console/console.js"),
        ("get", "/console/console.css"),
        ("get", "/console/icon.svg"),
    ];

    fn served() -> Vec<(String, String)> {
        use crate::http::admin::{Apis, Authorizers, Keys, Plans, Policies, RateLimits, Resource, Tokens};
        let kinds =
            [Apis::PATH, Plans::PATH, Keys::PATH, Policies::PATH, Authorizers::PATH, Tokens::PATH, RateLimits::PATH];
        let mut out = Vec::new();
        for (method, path) in SERVED {
            let methods: Vec<&str> = if *method == "any" { ANY_METHOD.to_vec() } else { vec![method] };
            let paths: Vec<String> = if path.contains("{kind}") {
                kinds.iter().map(|k| path.replace("{kind}", k)).collect()
            } else {
                vec![path.to_string()]
            };
            for m in &methods {
                for p in &paths {
                    out.push((m.to_string(), p.clone()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_document_has_every_route_the_router_serves_and_no_other() {
        let mut documented: Vec<(String, String)> =
            routes().into_iter().map(|r| (r.method.to_string(), r.path)).collect();
        documented.sort();
        assert_eq!(documented, served());
    }

    #[test]
    fn every_constraint_lands_on_a_field() {
        let (_, problems) = build();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn only_admin_routes_carry_the_admin_token() {
        let doc = document();
        for r in routes() {
            let op = &doc["paths"][&r.path][r.method];
            let scheme = op["security"][0].as_object().and_then(|s| s.keys().next().cloned());
            let expected = match r.access {
                Access::Admin => Some("admin_token"),
                Access::Proxy => Some("check_token"),
                Access::Public => None,
            };
            assert_eq!(scheme.as_deref(), expected, "{} {}", r.method, r.path);
            assert_eq!(r.access == Access::Admin, r.path.starts_with("/v1/admin/"), "{} {}", r.method, r.path);
        }
        assert!(doc.get("security").is_none(), "no document-wide requirement: public routes are public");
    }

    #[test]
    fn the_check_types_and_the_error_body_are_defined() {
        let schemas = &document()["components"]["schemas"];
        for name in ["CheckRequest", "Decision", "Principal", "LimitState", "ReasonCode", "Error", "Timestamp"] {
            assert!(schemas[name].is_object(), "{name} is not defined");
        }
        assert_eq!(schemas["Throttle"]["properties"]["burst"]["format"], "uint32");
        assert_eq!(schemas["Throttle"]["properties"]["burst"]["maximum"], u32::MAX);
        assert_eq!(schemas["Cors"]["properties"]["max_age_secs"]["maximum"], 86_400);
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = routes().iter().map(|r| operation_id(r.method, &r.path)).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}

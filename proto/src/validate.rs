//! Rules each model value must satisfy on its own, checked by the node before
//! it proposes a change. Rules that need the rest of the model (does the plan
//! exist? is the key already in a plan for that stage?) are checked by the
//! state machine when the command is applied.
//!
//! Every failure names the field (as a JSON path into the request body) and
//! says what would be accepted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::*;

/// A request field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault, as a JSON path into the request body (`name`,
    /// `stages[2].throttle.rate_per_sec`, `kind.jwt.jwks[0].k`).
    pub field: String,
    /// What is wrong and what would be accepted, for a person to read.
    pub message: String,
}

/// The outcome of a rule: `Ok` when the value passes, else the first field
/// that fails.
pub type Checked = Result<(), FieldError>;

fn fail(field: impl Into<String>, message: impl Into<String>) -> Checked {
    Err(FieldError { field: field.into(), message: message.into() })
}

/// The longest `name` (and `customer_id`), in characters (Unicode scalar
/// values); a name must also not be blank nor hold control characters.
pub const MAX_NAME: usize = 128;
/// The longest `description`, in characters (Unicode scalar values).
pub const MAX_DESCRIPTION: usize = 1024;
/// The most entries in a list (stages, routes, WAF rules, plan ids, ...).
pub const MAX_LIST: usize = 256;
/// The methods a route, a method throttle or a policy may name, in capitals
/// (RFC 9110 §9); `*` means every method in a pattern, never in a request.
pub const HTTP_METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"];
/// The JWS algorithms a JWT authorizer may accept (RFC 7518 §3.1, and
/// `EdDSA` from RFC 8037); `none` never is.
pub const JWT_ALGORITHMS: [&str; 12] =
    ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

// Bounds of the numbers a client sends. Each keeps every computation made
// with the number far from overflow, and a value outside is refused naming
// its field.

/// The largest count or size without a natural bound (quota limits, WAF
/// sizes): 2^53 - 1, the largest whole number every JSON client reads exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// The slowest throttle rate, requests per second: about one request in
/// 11.6 days (slower limits are a quota's job).
pub const MIN_RATE_PER_SEC: f64 = 1e-6;
/// The fastest throttle rate, requests per second: a billion.
pub const MAX_RATE_PER_SEC: f64 = 1e9;
/// The largest throttle burst and WAF per-address limit.
pub const MAX_BURST: u32 = 1_000_000_000;
/// The latest time accepted (9999-12-31T23:59:59Z), in seconds since the
/// epoch; the earliest is the epoch itself.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;
/// The longest key id (`kid`) of a JWK.
pub const MAX_KID: usize = 256;

/// Ids, stage names: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn id(field: &str, value: &str) -> Checked {
    if value.is_empty() || value.len() > 64 {
        return fail(field, "must be 1 to 64 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return fail(field, "may contain only letters, digits, '_' and '-'");
    }
    Ok(())
}

fn name(field: &str, value: &str) -> Checked {
    if value.trim().is_empty() {
        return fail(field, "must not be empty");
    }
    if value.chars().count() > MAX_NAME {
        return fail(field, format!("must be at most {MAX_NAME} characters"));
    }
    if value.chars().any(char::is_control) {
        return fail(field, "must not contain control characters");
    }
    Ok(())
}

fn description(field: &str, value: &str) -> Checked {
    if value.chars().count() > MAX_DESCRIPTION {
        return fail(field, format!("must be at most {MAX_DESCRIPTION} characters"));
    }
    Ok(())
}

fn list_len<T>(field: &str, list: &[T]) -> Checked {
    if list.len() > MAX_LIST {
        return fail(field, format!("may hold at most {MAX_LIST} entries"));
    }
    Ok(())
}

fn non_empty<T>(field: &str, list: &[T]) -> Checked {
    if list.is_empty() {
        return fail(field, "must hold at least one entry");
    }
    list_len(field, list)
}

/// Lower-case HTTP header names (RFC 9110 token characters).
fn header_name(field: &str, value: &str) -> Checked {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        fail(field, "must be a lower-case HTTP header name such as x-api-key")
    }
}

fn method(field: &str, value: &str) -> Checked {
    if HTTP_METHODS.contains(&value) {
        Ok(())
    } else {
        fail(field, format!("must be one of {}", HTTP_METHODS.join(", ")))
    }
}

fn path_pattern(field: &str, value: &str) -> Checked {
    if !value.starts_with('/') {
        return fail(field, "must start with '/'");
    }
    if value.len() > 1024 {
        return fail(field, "must be at most 1024 characters");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail(field, "must not contain white space");
    }
    // Requests are matched in their canonical form: a pattern in another
    // spelling would never match.
    match crate::canonical::path(value) {
        Ok(canonical) if canonical == value => Ok(()),
        Ok(canonical) => fail(field, format!("must be written as requests are matched: {canonical}")),
        Err(e) => fail(field, e.to_string()),
    }
}

/// A throttle's rate is [`MIN_RATE_PER_SEC`] to [`MAX_RATE_PER_SEC`], its
/// burst 1 to [`MAX_BURST`].
pub fn throttle(field: &str, t: &Throttle) -> Checked {
    if !(MIN_RATE_PER_SEC..=MAX_RATE_PER_SEC).contains(&t.rate_per_sec) {
        return fail(
            format!("{field}.rate_per_sec"),
            format!("must be a number from {MIN_RATE_PER_SEC:e} to {MAX_RATE_PER_SEC:e} (requests per second)"),
        );
    }
    if !(1..=MAX_BURST).contains(&t.burst) {
        return fail(format!("{field}.burst"), format!("must be 1 to {MAX_BURST}"));
    }
    Ok(())
}

/// A quota's limit is 1 to [`MAX_SAFE_INTEGER`]; its offset fits its period.
pub fn quota(field: &str, q: &Quota) -> Checked {
    if !(1..=MAX_SAFE_INTEGER).contains(&q.limit) {
        return fail(format!("{field}.limit"), format!("must be 1 to {MAX_SAFE_INTEGER} (2^53 - 1)"));
    }
    let max_offset = match q.period {
        Period::Day => 0,
        Period::Week => 6,
        Period::Month => 27,
    };
    if q.offset > max_offset {
        return fail(
            format!("{field}.offset"),
            format!("must be 0 to {max_offset} for a {:?} period", q.period).to_lowercase(),
        );
    }
    Ok(())
}

fn url(field: &str, value: &str) -> Checked {
    let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !value.chars().any(char::is_whitespace) => Ok(()),
        _ => fail(field, "must be an http:// or https:// URL"),
    }
}

/// The rules an [`Api`] must satisfy on its own: its id, name and
/// description, key source, stages (unique names, valid throttles), routes
/// (valid method and path pattern, unique per method and path), CORS and WAF
/// rules.
///
/// # Errors
///
/// The first field that fails, such as `stages[1].name` or `routes[0].path`.
pub fn api(a: &Api) -> Checked {
    id("id", &a.id)?;
    name("name", &a.name)?;
    description("description", &a.description)?;
    header_name("key_source.header", &a.key_source.header)?;
    if let Some(q) = &a.key_source.query_param {
        id("key_source.query_param", q)?;
    }
    if a.key_source.from == KeyFrom::Authorizer {
        // The key comes from the route's authorizer: a route that needs one
        // must name an authorizer (the state machine checks it is an HTTP one).
        if let Some(i) = a.routes.iter().position(|r| r.api_key_required && r.authorizer_id.is_none()) {
            return fail(
                format!("routes[{i}].authorizer_id"),
                "key_source.from is authorizer: a route that requires an API key must name the HTTP authorizer that supplies it",
            );
        }
    }
    list_len("stages", &a.stages)?;
    let mut seen = BTreeSet::new();
    for (i, s) in a.stages.iter().enumerate() {
        id(&format!("stages[{i}].name"), &s.name)?;
        if !seen.insert(s.name.as_str()) {
            return fail(format!("stages[{i}].name"), format!("stage {:?} appears twice", s.name));
        }
        if let Some(t) = &s.throttle {
            throttle(&format!("stages[{i}].throttle"), t)?;
        }
    }
    list_len("routes", &a.routes)?;
    let mut seen = BTreeSet::new();
    for (i, r) in a.routes.iter().enumerate() {
        method(&format!("routes[{i}].method"), &r.method)?;
        path_pattern(&format!("routes[{i}].path"), &r.path)?;
        if !seen.insert((r.method.as_str(), r.path.as_str())) {
            return fail(format!("routes[{i}]"), format!("route {} {} appears twice", r.method, r.path));
        }
        if let Some(auth) = &r.authorizer_id {
            id(&format!("routes[{i}].authorizer_id"), auth)?;
        }
        list_len(&format!("routes[{i}].scopes"), &r.scopes)?;
    }
    if let Some(c) = &a.cors {
        cors(c)?;
    }
    list_len("waf", &a.waf)?;
    for (i, rule) in a.waf.iter().enumerate() {
        waf_rule(&format!("waf[{i}]"), rule)?;
    }
    Ok(())
}

/// The longest WAF regular expression, in bytes as written.
pub const MAX_REGEX_LEN: usize = 1024;
/// The most memory one WAF regular expression may compile to, in bytes
/// (1 MiB), for its program and for its lazy DFA each.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a WAF regular expression within the size limits.
pub fn waf_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("must be at most {MAX_REGEX_LEN} characters"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

fn waf_rule(at: &str, rule: &WafRule) -> Checked {
    name(&format!("{at}.name"), &rule.name)?;
    let field = format!("{at}.condition");
    match &rule.condition {
        WafCondition::IpSet(nets) => {
            non_empty(&format!("{field}.ip_set"), nets)?;
            for (i, n) in nets.iter().enumerate() {
                if n.parse::<ipnet::IpNet>().is_err() && n.parse::<IpAddr>().is_err() {
                    return fail(format!("{field}.ip_set[{i}]"), format!("{n:?} is not an IP address or CIDR block"));
                }
            }
        }
        WafCondition::MaxBodyBytes(n) if !(1..=MAX_SAFE_INTEGER).contains(n) => {
            return fail(format!("{field}.max_body_bytes"), format!("must be 1 to {MAX_SAFE_INTEGER} bytes"));
        }
        WafCondition::MaxHeaderBytes(n) if !(1..=MAX_SAFE_INTEGER).contains(n) => {
            return fail(format!("{field}.max_header_bytes"), format!("must be 1 to {MAX_SAFE_INTEGER} bytes"));
        }
        WafCondition::MaxBodyBytes(_) | WafCondition::MaxHeaderBytes(_) => {}
        WafCondition::PathMatches(r) => {
            waf_regex(r).map(|_| ()).or_else(|m| fail(format!("{field}.path_matches"), m))?
        }
        WafCondition::QueryMatches(r) => {
            waf_regex(r).map(|_| ()).or_else(|m| fail(format!("{field}.query_matches"), m))?
        }
        WafCondition::HeaderMatches { name, regex } => {
            header_name(&format!("{field}.header_matches.name"), name)?;
            waf_regex(regex).map(|_| ()).or_else(|m| fail(format!("{field}.header_matches.regex"), m))?;
        }
        WafCondition::RatePerIp { limit, window_secs } => {
            if !(1..=MAX_BURST).contains(limit) {
                return fail(format!("{field}.rate_per_ip.limit"), format!("must be 1 to {MAX_BURST}"));
            }
            if *window_secs == 0 || *window_secs > 86_400 {
                return fail(format!("{field}.rate_per_ip.window_secs"), "must be 1 to 86400");
            }
        }
    }
    Ok(())
}

fn cors(c: &Cors) -> Checked {
    non_empty("cors.allow_origins", &c.allow_origins)?;
    for (i, o) in c.allow_origins.iter().enumerate() {
        let ok = o == "*"
            || ((o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && !o.contains(char::is_whitespace));
        if !ok {
            return fail(
                format!("cors.allow_origins[{i}]"),
                "must be *, or scheme://host[:port] (host may start with *.)",
            );
        }
    }
    if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
        return fail("cors.allow_credentials", "browsers refuse credentials with the origin *; list the origins");
    }
    list_len("cors.allow_methods", &c.allow_methods)?;
    for (i, m) in c.allow_methods.iter().enumerate() {
        method(&format!("cors.allow_methods[{i}]"), m)?;
    }
    for (field, list) in [("cors.allow_headers", &c.allow_headers), ("cors.expose_headers", &c.expose_headers)] {
        list_len(field, list)?;
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                header_name(&format!("{field}[{i}]"), h)?;
            }
        }
    }
    if c.max_age_secs > 86_400 {
        return fail("cors.max_age_secs", "must be at most 86400");
    }
    Ok(())
}

/// The rules a [`UsagePlan`] must satisfy on its own: id, name, throttle and
/// quota bounds, and its API stages (unique, valid method throttles).
///
/// # Errors
///
/// The first field that fails, such as `api_stages[0].method_throttles[1].path`.
pub fn plan(p: &UsagePlan) -> Checked {
    id("id", &p.id)?;
    name("name", &p.name)?;
    description("description", &p.description)?;
    if let Some(t) = &p.throttle {
        throttle("throttle", t)?;
    }
    if let Some(q) = &p.quota {
        quota("quota", q)?;
    }
    list_len("api_stages", &p.api_stages)?;
    let mut seen = BTreeSet::new();
    for (i, s) in p.api_stages.iter().enumerate() {
        id(&format!("api_stages[{i}].api_id"), &s.api_id)?;
        id(&format!("api_stages[{i}].stage"), &s.stage)?;
        if !seen.insert((s.api_id.as_str(), s.stage.as_str())) {
            return fail(format!("api_stages[{i}]"), format!("{}/{} appears twice", s.api_id, s.stage));
        }
        list_len(&format!("api_stages[{i}].method_throttles"), &s.method_throttles)?;
        for (j, m) in s.method_throttles.iter().enumerate() {
            let at = format!("api_stages[{i}].method_throttles[{j}]");
            method(&format!("{at}.method"), &m.method)?;
            path_pattern(&format!("{at}.path"), &m.path)?;
            throttle(&format!("{at}.throttle"), &m.throttle)?;
        }
    }
    Ok(())
}

/// The rules an [`ApiKeySpec`] must satisfy on its own: name, description,
/// customer id, expiry, at most 50 tags (names 1 to 128, values at most 256
/// printable characters) and unique plan ids. Whether the plans exist is the
/// state machine's check.
///
/// # Errors
///
/// The first field that fails, such as `tags.team` or `plan_ids[1]`.
pub fn key_spec(k: &ApiKeySpec) -> Checked {
    name("name", &k.name)?;
    description("description", &k.description)?;
    if let Some(c) = &k.customer_id {
        name("customer_id", c)?;
    }
    if let Some(t) = k.expires_at {
        timestamp("expires_at", t)?;
    }
    if k.tags.len() > 50 {
        return fail("tags", "may hold at most 50 tags");
    }
    for (key, value) in &k.tags {
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return fail(format!("tags.{key}"), "tag names must be 1 to 128 printable characters");
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return fail(format!("tags.{key}"), "tag values must be at most 256 printable characters");
        }
    }
    list_len("plan_ids", &k.plan_ids)?;
    let mut seen = BTreeSet::new();
    for (i, p) in k.plan_ids.iter().enumerate() {
        id(&format!("plan_ids[{i}]"), p)?;
        if !seen.insert(p) {
            return fail(format!("plan_ids[{i}]"), format!("plan {p:?} appears twice"));
        }
    }
    Ok(())
}

/// The rules a [`Policy`] must satisfy on its own: id, name, and non-empty
/// statements whose actions are `invoke` or `*` and whose conditions are
/// well-formed (IP values parse as addresses or CIDR blocks).
///
/// # Errors
///
/// The first field that fails, such as `statements[0].actions[1]`.
pub fn policy(p: &Policy) -> Checked {
    id("id", &p.id)?;
    name("name", &p.name)?;
    description("description", &p.description)?;
    if let Some(api) = &p.api_id {
        id("api_id", api)?;
    }
    non_empty("statements", &p.statements)?;
    for (i, s) in p.statements.iter().enumerate() {
        let at = format!("statements[{i}]");
        non_empty(&format!("{at}.principals"), &s.principals)?;
        non_empty(&format!("{at}.actions"), &s.actions)?;
        non_empty(&format!("{at}.resources"), &s.resources)?;
        let tokens = s.principals.iter().filter(|p| p.starts_with("token:")).count();
        let admin = tokens == s.principals.len();
        if tokens > 0 && !admin {
            return fail(
                format!("{at}.principals"),
                "name admin tokens (token:…) or callers of the check, not both, in one statement",
            );
        }
        if admin && p.api_id.is_some() {
            return fail(
                format!("{at}.principals"),
                "admin tokens (token:…) are named in identity policies: leave api_id out",
            );
        }
        for (j, a) in s.actions.iter().enumerate() {
            if admin {
                admin_action(&format!("{at}.actions[{j}]"), a)?;
            } else if a != "invoke" && a != "*" {
                return fail(format!("{at}.actions[{j}]"), "must be \"invoke\" or \"*\"");
            }
        }
        for (j, r) in s.resources.iter().enumerate() {
            if r.is_empty() || r.len() > 1024 || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail(
                    format!("{at}.resources[{j}]"),
                    "must be a pattern over api/stage/METHOD/path such as petstore/*/GET/pets/*, without white space",
                );
            }
        }
        list_len(&format!("{at}.conditions"), &s.conditions)?;
        for (j, c) in s.conditions.iter().enumerate() {
            condition(&format!("{at}.conditions[{j}]"), c)?;
            if admin && c.key != "source_ip" {
                // An admin request has no key tags, claims or proxy id, and
                // its headers are the client's own: such a condition could
                // only ever fail (or, negated, always hold).
                return fail(format!("{at}.conditions[{j}].key"), "must be source_ip in an admin statement");
            }
        }
    }
    Ok(())
}

/// The admin API's actions, `service:verb`, that an admin statement (one
/// naming `token:` principals) may name; each part may also be a glob.
pub const ADMIN_ACTIONS: &[&str] = &[
    "apis:read",
    "apis:create",
    "apis:update",
    "apis:delete",
    "plans:read",
    "plans:create",
    "plans:update",
    "plans:delete",
    "keys:read",
    "keys:create",
    "keys:update",
    "keys:delete",
    "keys:reroll",
    "policies:read",
    "policies:create",
    "policies:update",
    "policies:delete",
    "authorizers:read",
    "authorizers:create",
    "authorizers:update",
    "authorizers:delete",
    "tokens:read",
    "tokens:create",
    "tokens:update",
    "tokens:delete",
    "ratelimits:read",
    "ratelimits:create",
    "ratelimits:update",
    "ratelimits:delete",
    "usage:read",
    "usage:update",
    "identity:read",
    "identity:rotate",
    "cluster:read",
    "cluster:update",
    "decisions:read",
    "audit:read",
    "snapshot:create",
];

/// An admin statement's action: `*`, one of [`ADMIN_ACTIONS`], or a glob
/// (`keys:*`, `*:read`) that matches at least one of them.
fn admin_action(at: &str, action: &str) -> Checked {
    let matches_one = ADMIN_ACTIONS.iter().any(|known| crate::descriptors::wildcard_match(action, known));
    let shaped = action == "*" || action.split_once(':').is_some_and(|(s, v)| !s.is_empty() && !v.is_empty());
    if shaped && matches_one {
        return Ok(());
    }
    fail(
        at,
        format!("must be an admin action such as keys:create, keys:* or *; these exist: {}", ADMIN_ACTIONS.join(", ")),
    )
}

fn condition(at: &str, c: &Condition) -> Checked {
    let key_ok = c.key == "source_ip"
        || c.key == "proxy_id"
        || ["claim:", "header:", "tag:"].iter().any(|p| c.key.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
    if !key_ok {
        return fail(format!("{at}.key"), "must be source_ip, proxy_id, claim:NAME, header:NAME or tag:NAME");
    }
    non_empty(&format!("{at}.values"), &c.values)?;
    let ip_op = matches!(c.operator, ConditionOperator::IpAddress | ConditionOperator::NotIpAddress);
    if ip_op != (c.key == "source_ip") {
        return fail(
            format!("{at}.operator"),
            "IpAddress and NotIpAddress go with the key source_ip, and only they do",
        );
    }
    if ip_op {
        for (k, v) in c.values.iter().enumerate() {
            if v.parse::<ipnet::IpNet>().is_err() && v.parse::<IpAddr>().is_err() {
                return fail(format!("{at}.values[{k}]"), format!("{v:?} is not an IP address or CIDR block"));
            }
        }
    }
    Ok(())
}

/// The rules an [`Authorizer`] must satisfy on its own. JWT: an issuer,
/// audiences, algorithms from [`JWT_ALGORITHMS`] (HMAC never mixed with
/// public keys), signing keys inline or a `jwks_url` (HMAC keys inline only,
/// long enough for RFC 7518 §3.2), leeway at most 300 s. HTTP: an http(s)
/// URL, identity sources `header:NAME` or `query:NAME`, cache TTL at most
/// 3600 s, time-out 1 to 30000 ms.
///
/// # Errors
///
/// The first field that fails, such as `kind.jwt.jwks[0].k`.
pub fn authorizer(a: &Authorizer) -> Checked {
    id("id", &a.id)?;
    name("name", &a.name)?;
    description("description", &a.description)?;
    match &a.kind {
        AuthorizerKind::Jwt(j) => jwt(j),
        AuthorizerKind::Http(h) => http_authorizer(h),
    }
}

fn jwt(j: &JwtAuthorizer) -> Checked {
    if j.issuer.trim().is_empty() {
        return fail("kind.jwt.issuer", "must not be empty");
    }
    non_empty("kind.jwt.audiences", &j.audiences)?;
    non_empty("kind.jwt.algorithms", &j.algorithms)?;
    for (i, alg) in j.algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&alg.as_str()) {
            return fail(
                format!("kind.jwt.algorithms[{i}]"),
                format!("{alg:?} is not accepted; use one of {}", JWT_ALGORITHMS.join(", ")),
            );
        }
    }
    let hmac = j.algorithms.iter().filter(|a| a.starts_with("HS")).count();
    if hmac != 0 && hmac != j.algorithms.len() {
        return fail("kind.jwt.algorithms", "HMAC (HS*) algorithms cannot be mixed with public-key ones");
    }
    match (&j.jwks_url, j.jwks.is_empty()) {
        (None, true) => return fail("kind.jwt.jwks", "give the signing keys inline in jwks, or a jwks_url"),
        (Some(u), _) => url("kind.jwt.jwks_url", u)?,
        (None, false) => {}
    }
    if hmac != 0 && j.jwks_url.is_some() {
        return fail("kind.jwt.jwks_url", "HMAC keys must be given inline, not fetched");
    }
    // The longest HMAC secret any listed algorithm needs (RFC 7518 §3.2).
    let hmac_min = j.algorithms.iter().filter_map(|a| crate::jwk::hmac_min_len(a)).max().unwrap_or(0);
    for (i, k) in j.jwks.iter().enumerate() {
        let at = format!("kind.jwt.jwks[{i}]");
        let want = if hmac != 0 { ["oct"].as_slice() } else { ["RSA", "EC", "OKP"].as_slice() };
        if !want.contains(&k.kty.as_str()) {
            return fail(format!("{at}.kty"), format!("must be one of {} for these algorithms", want.join(", ")));
        }
        if k.kid.as_ref().is_some_and(|kid| kid.is_empty() || kid.len() > MAX_KID) {
            return fail(format!("{at}.kid"), format!("must be 1 to {MAX_KID} characters"));
        }
        if let Some(alg) = k.alg.as_deref().filter(|a| !JWT_ALGORITHMS.contains(a)) {
            return fail(format!("{at}.alg"), format!("{alg:?} is not one of {}", JWT_ALGORITHMS.join(", ")));
        }
        match crate::jwk::material(k) {
            Err(bad) => return fail(format!("{at}.{}", bad.member), bad.message),
            Ok(crate::jwk::KeyMaterial::Oct(secret)) if secret.len() < hmac_min => {
                return fail(
                    format!("{at}.k"),
                    format!(
                        "is {} bytes; these algorithms need a key of at least {hmac_min} bytes (RFC 7518 §3.2)",
                        secret.len()
                    ),
                )
            }
            Ok(_) => {}
        }
    }
    if j.leeway_secs > 300 {
        return fail("kind.jwt.leeway_secs", "must be at most 300");
    }
    Ok(())
}

fn http_authorizer(h: &HttpAuthorizer) -> Checked {
    url("kind.http.url", &h.url)?;
    non_empty("kind.http.identity_sources", &h.identity_sources)?;
    for (i, s) in h.identity_sources.iter().enumerate() {
        let ok = s.strip_prefix("header:").is_some_and(|n| header_name("", n).is_ok())
            || s.strip_prefix("query:").is_some_and(|n| !n.is_empty());
        if !ok {
            return fail(format!("kind.http.identity_sources[{i}]"), "must be header:NAME (lower case) or query:NAME");
        }
    }
    if h.cache_ttl_secs > 3600 {
        return fail("kind.http.cache_ttl_secs", "must be at most 3600");
    }
    if h.timeout_ms == 0 || h.timeout_ms > 30_000 {
        return fail("kind.http.timeout_ms", "must be 1 to 30000");
    }
    Ok(())
}

/// A time from the epoch to [`MAX_TIMESTAMP`] (9999-12-31T23:59:59Z).
pub fn timestamp(field: &str, t: Timestamp) -> Checked {
    if !(0..=MAX_TIMESTAMP).contains(&t.0) {
        return fail(field, "must be an RFC 3339 time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z");
    }
    Ok(())
}

/// The rules an [`AdminTokenSpec`] must satisfy on its own: a name and at
/// least one scope.
///
/// # Errors
///
/// `name` or `scopes`.
pub fn token_spec(t: &AdminTokenSpec) -> Checked {
    name("name", &t.name)?;
    non_empty("scopes", &t.scopes)
}

/// The longest rate limit domain name, in bytes.
pub const MAX_DOMAIN: usize = 255;
/// The longest descriptor key (in a rule or a request), in bytes.
pub const MAX_DESCRIPTOR_KEY: usize = 255;
/// The longest descriptor value (in a rule or a request), in bytes.
pub const MAX_DESCRIPTOR_VALUE: usize = 1024;
/// The most rules in one rate limit domain, at every depth together.
pub const MAX_DESCRIPTOR_RULES: usize = 10_000;
/// The deepest a domain's rules (and a request's descriptor entries) nest.
pub const MAX_DESCRIPTOR_DEPTH: usize = 16;

fn printable(field: &str, value: &str, max: usize, what: &str) -> Checked {
    if value.is_empty() || value.len() > max {
        return fail(field, format!("{what} must be 1 to {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return fail(field, format!("{what} must not hold control characters"));
    }
    Ok(())
}

/// A rate limit domain: its name, and every rule of its tree (keys, values,
/// limits, nesting). The rules are envoyproxy/ratelimit's load-time checks:
/// no two sibling rules with the same key and value, a unit unless
/// `unlimited` (and none with it), `replaces` never empty nor naming its own
/// limit, `share_threshold` only on a pattern value.
pub fn rate_limit_domain(d: &RateLimitDomain) -> Checked {
    if !d.id.is_empty() {
        id("id", &d.id)?;
    }
    printable("domain", &d.domain, MAX_DOMAIN, "a domain")?;
    let mut count = 0usize;
    descriptor_rules("descriptors", &d.descriptors, 1, &mut count)
}

fn descriptor_rules(at: &str, rules: &[DescriptorRule], depth: usize, count: &mut usize) -> Checked {
    if depth > MAX_DESCRIPTOR_DEPTH && !rules.is_empty() {
        return fail(at, format!("descriptors nest at most {MAX_DESCRIPTOR_DEPTH} deep"));
    }
    let mut seen = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let here = format!("{at}[{i}]");
        *count += 1;
        if *count > MAX_DESCRIPTOR_RULES {
            return fail(&here, format!("a domain holds at most {MAX_DESCRIPTOR_RULES} descriptors"));
        }
        printable(&format!("{here}.key"), &rule.key, MAX_DESCRIPTOR_KEY, "a key")?;
        let value = rule.value.as_deref().unwrap_or("");
        if !value.is_empty() {
            printable(&format!("{here}.value"), value, MAX_DESCRIPTOR_VALUE, "a value")?;
        }
        if !seen.insert((rule.key.as_str(), value)) {
            let shown = if value.is_empty() { rule.key.clone() } else { format!("{}={value}", rule.key) };
            return fail(&here, format!("a second descriptor {shown:?} at the same level"));
        }
        if rule.share_threshold && !value.contains('*') {
            return fail(format!("{here}.share_threshold"), "only a value with a '*' pattern can share a count");
        }
        if let Some(limit) = &rule.rate_limit {
            let at = format!("{here}.rate_limit");
            match (limit.unlimited, limit.unit) {
                (true, Some(_)) => return fail(format!("{at}.unit"), "an unlimited limit takes no unit"),
                (false, None) => {
                    return fail(format!("{at}.unit"), "required: second, minute, hour, day, week, month or year")
                }
                _ => {}
            }
            if let Some(name) = &limit.name {
                printable(&format!("{at}.name"), name, MAX_DESCRIPTOR_KEY, "a name")?;
            }
            list_len(&format!("{at}.replaces"), &limit.replaces)?;
            for (j, r) in limit.replaces.iter().enumerate() {
                let field = format!("{at}.replaces[{j}].name");
                printable(&field, &r.name, MAX_DESCRIPTOR_KEY, "a name")?;
                if limit.name.as_deref() == Some(r.name.as_str()) {
                    return fail(field, "a limit cannot replace itself");
                }
            }
        }
        descriptor_rules(&format!("{here}.descriptors"), &rule.descriptors, depth + 1, count)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn jwt_authorizer(algorithms: &[&str], kty: &str) -> Authorizer {
        Authorizer {
            id: "a1".into(),
            name: "jwt".into(),
            description: String::new(),
            kind: AuthorizerKind::Jwt(JwtAuthorizer {
                issuer: "https://issuer".into(),
                audiences: vec!["api".into()],
                jwks_url: None,
                jwks: vec![Jwk {
                    kty: kty.into(),
                    kid: None,
                    alg: None,
                    // A 2048-bit odd modulus: the right shape for an RSA key.
                    n: Some(URL_SAFE_NO_PAD.encode([0xc5; 256])),
                    e: Some("AQAB".into()),
                    crv: None,
                    x: None,
                    y: None,
                    k: None,
                }],
                algorithms: algorithms.iter().map(|s| s.to_string()).collect(),
                required_scopes: vec![],
                leeway_secs: 30,
            }),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn jwt_algorithm_none_is_refused_and_named() {
        let err = authorizer(&jwt_authorizer(&["none"], "RSA")).unwrap_err();
        assert_eq!(err.field, "kind.jwt.algorithms[0]");
    }

    #[test]
    fn hmac_cannot_be_mixed_with_rsa() {
        let err = authorizer(&jwt_authorizer(&["HS256", "RS256"], "RSA")).unwrap_err();
        assert_eq!(err.field, "kind.jwt.algorithms");
        assert!(authorizer(&jwt_authorizer(&["RS256", "ES256"], "RSA")).is_ok());
    }

    #[test]
    fn quota_offset_is_bounded_by_period() {
        let q = Quota { limit: 10, period: Period::Week, offset: 7 };
        assert_eq!(quota("quota", &q).unwrap_err().field, "quota.offset");
        assert!(quota("quota", &Quota { offset: 6, ..q }).is_ok());
        assert!(quota("quota", &Quota { period: Period::Day, offset: 1, ..q }).is_err());
    }

    #[test]
    fn ids_refuse_slashes_and_empty() {
        assert!(id("id", "petstore-v1").is_ok());
        assert_eq!(id("id", "a/b").unwrap_err().field, "id");
        assert!(id("id", "").is_err());
    }

    #[test]
    fn ip_conditions_need_valid_cidrs() {
        let c = Condition {
            operator: ConditionOperator::IpAddress,
            key: "source_ip".into(),
            values: vec!["10.0.0.0/8".into(), "2001:db8::/32".into(), "nope".into()],
        };
        assert_eq!(condition("c", &c).unwrap_err().field, "c.values[2]");
    }

    #[test]
    fn timestamps_round_trip_through_bincode_and_json() {
        let t = Timestamp(1_790_000_000);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-09-21T14:13:20Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let bytes = crate::codec::encode(&t).unwrap();
        assert_eq!(crate::codec::decode::<Timestamp>(&bytes).unwrap(), t);
    }

    #[test]
    fn jwk_material_is_checked_when_the_authorizer_is_written() {
        let mut a = jwt_authorizer(&["RS256"], "RSA");
        let AuthorizerKind::Jwt(j) = &mut a.kind else { panic!("jwt") };
        j.jwks[0].n = Some("AQAB".into());
        assert_eq!(authorizer(&a).unwrap_err().field, "kind.jwt.jwks[0].n");

        // HS256 with the 43-character base64url form of 32 bytes: accepted.
        let mut a = jwt_authorizer(&["HS256"], "oct");
        let AuthorizerKind::Jwt(j) = &mut a.kind else { panic!("jwt") };
        j.jwks[0].k = Some(URL_SAFE_NO_PAD.encode([0xfb; 32]));
        assert!(authorizer(&a).is_ok(), "{:?}", authorizer(&a));
        // HS512 needs 64 bytes (RFC 7518 §3.2).
        let AuthorizerKind::Jwt(j) = &mut a.kind else { panic!("jwt") };
        j.algorithms = vec!["HS256".into(), "HS512".into()];
        assert_eq!(authorizer(&a).unwrap_err().field, "kind.jwt.jwks[0].k");
        let AuthorizerKind::Jwt(j) = &mut a.kind else { panic!("jwt") };
        j.algorithms = vec!["HS256".into()];
        j.jwks[0].k = Some("!!".into());
        assert_eq!(authorizer(&a).unwrap_err().field, "kind.jwt.jwks[0].k");
    }

    #[test]
    fn numbers_outside_their_bounds_are_refused_naming_the_field() {
        let t = |rate_per_sec: f64, burst: u32| throttle("t", &Throttle { rate_per_sec, burst });
        for rate in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e-7, 1e308, -1e308] {
            assert_eq!(t(rate, 1).unwrap_err().field, "t.rate_per_sec", "{rate}");
        }
        assert_eq!(t(1.0, 0).unwrap_err().field, "t.burst");
        assert_eq!(t(1.0, u32::MAX).unwrap_err().field, "t.burst");
        assert!(t(MIN_RATE_PER_SEC, 1).is_ok() && t(MAX_RATE_PER_SEC, MAX_BURST).is_ok());
        let q = |limit| quota("q", &Quota { limit, period: Period::Day, offset: 0 });
        for limit in [0, MAX_SAFE_INTEGER + 1, u64::MAX] {
            assert_eq!(q(limit).unwrap_err().field, "q.limit", "{limit}");
        }
        assert!(q(MAX_SAFE_INTEGER).is_ok());
        for t in [i64::MIN, -1, MAX_TIMESTAMP + 1, i64::MAX] {
            assert_eq!(timestamp("expires_at", Timestamp(t)).unwrap_err().field, "expires_at");
        }
        assert!(timestamp("expires_at", Timestamp(0)).is_ok() && timestamp("x", Timestamp(MAX_TIMESTAMP)).is_ok());
        let waf = |condition| waf_rule("waf[0]", &WafRule { name: "r".into(), action: WafAction::Block, condition });
        assert_eq!(waf(WafCondition::MaxBodyBytes(u64::MAX)).unwrap_err().field, "waf[0].condition.max_body_bytes");
        assert_eq!(waf(WafCondition::MaxHeaderBytes(0)).unwrap_err().field, "waf[0].condition.max_header_bytes");
        assert_eq!(
            waf(WafCondition::RatePerIp { limit: u32::MAX, window_secs: 1 }).unwrap_err().field,
            "waf[0].condition.rate_per_ip.limit"
        );
    }
}

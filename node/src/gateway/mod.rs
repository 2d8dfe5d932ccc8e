//! The check pipeline: may this request pass, and with which headers?
//!
//! [`Gateway::check`] runs the steps in the order a request meets them; each
//! can end it with a decision:
//!
//! 1. resolve the API, stage and route (unknown ones: a 404 decision);
//! 2. WAF rules (IP sets, sizes, regex matches, per-IP rates), then the API
//!    resource policy's explicit denies for everyone (source network, proxy);
//! 3. CORS: a preflight is answered here; CORS headers go on every decision;
//! 4. authentication: the route's JWT or HTTP authorizer, then the API key
//!    (hashed lookup; missing, unknown, disabled, expired each have their own
//!    reason);
//! 5. authorization: resource and principal policies together;
//! 6. throttles and 7. quota: charged only if every limit has room;
//! 8. allow, with rate-limit headers and the principal for the backend.
//!
//! Every step reads the request's facts from [`Checked`], built once by
//! validation: the path and client address there are in their canonical form
//! ([`tollgate_proto::canonical`]), and the raw request is out of reach after
//! it, so no spelling of a request can get another decision than its
//! canonical form.
//!
//! The gateway reads an immutable snapshot of the model (swapped by the state
//! machine after each apply). Limits are taken through `crate::metering`
//! (quota leases, borrowed throttle tokens); the only other shared mutable
//! state is the WAF's per-address limiter. No lock is held across `.await`.

pub mod authorizer;
pub mod cors;
pub mod identity;
pub mod jwt;
pub mod limits;
pub mod pattern;
pub mod policy;
pub mod waf;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_proto::canonical;
use tollgate_proto::check::{CheckRequest, Decision, LimitState, Principal, ReasonCode};
use tollgate_proto::model::{Api, ApiKey, AuthorizerKind, Entity, EntityKind, Route, Stage, UsagePlan};
use tollgate_proto::validate::HTTP_METHODS;
use tollgate_proto::FieldError;

use crate::clock::Clock;
use crate::cluster::state_machine::SharedModel;
use crate::metering::{BucketId, Limits, QuotaLimit, Refusal, ThrottleLimit};
use crate::metering::{Metering, MeteringConfig};
use crate::secret;
use limits::Limiter;
use policy::{RequestFacts, Verdict};
use tollgate_proto::command::QuotaPeriod;

/// What the identity token says (besides `iss`, `iat`, `exp`).
#[derive(serde::Serialize)]
struct IdentityClaims<'a> {
    sub: Option<&'a str>,
    aud: &'a str,
    stage: &'a str,
    key_id: Option<&'a str>,
    plan_id: Option<&'a str>,
    customer_id: Option<&'a str>,
    ctx: &'a BTreeMap<String, String>,
}

/// Method-override headers (Google's and Microsoft's conventions, Rails,
/// express `method-override`): if present, they must name the method.
const METHOD_OVERRIDE_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];
/// Method-override query parameters (Laravel, Symfony, express).
const METHOD_OVERRIDE_PARAMS: &[&str] = &["_method"];

/// Headers longer than this (name and value together) are refused.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// At most this many headers or query parameters.
pub const MAX_FIELDS: usize = 256;

pub struct Gateway {
    model: SharedModel,
    /// Per-node counts (WAF rate rules).
    limiter: Limiter,
    /// Quotas and throttles, across the cluster.
    pub metering: Arc<Metering>,
    clock: Arc<dyn Clock>,
    waf: waf::Waf,
    pub(crate) jwt: jwt::JwtVerifier,
    authorizers: authorizer::HttpAuthorizers,
    /// Signs the identity token backends receive.
    pub identity: identity::IdentitySigner,
    /// Authorizer cache results (`hit`/`miss`) and WAF `count` matches.
    stats: GatewayStats,
}

/// Counters the gateway keeps; registered in the node's Prometheus registry.
#[derive(Clone)]
pub struct GatewayStats {
    pub authorizer_cache: prometheus::IntCounterVec,
    pub waf_counted: prometheus::IntCounterVec,
}

impl Default for GatewayStats {
    fn default() -> Self {
        let vec = |name: &str, help: &str, label: &str| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        GatewayStats {
            authorizer_cache: vec(
                "tollgate_authorizer_cache_total",
                "HTTP authorizer answers by cache result.",
                "result",
            ),
            waf_counted: vec("tollgate_waf_counted_total", "Matches of WAF rules in count mode, by rule.", "rule"),
        }
    }
}

/// A check request after validation: the facts every step decides on, and
/// the only view of the request the steps get. Built by [`validate`] alone.
struct Checked<'a> {
    api: &'a str,
    stage: &'a str,
    /// In capitals, one of [`HTTP_METHODS`].
    method: &'a str,
    /// The canonical path ([`canonical::path`]): what routes, resources, WAF
    /// rules, method throttles and authorizers see.
    path: String,
    /// The canonical client address ([`canonical::address`]): IPv4-mapped
    /// IPv6 is IPv4.
    source_ip: Option<IpAddr>,
    /// Header names lower-cased.
    headers: BTreeMap<String, String>,
    /// Query parameters as the proxy decoded them (values are data, not
    /// structure: they are matched as given).
    query: &'a BTreeMap<String, String>,
    proxy_id: Option<&'a str>,
    body_size: Option<u64>,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

fn validate(req: &CheckRequest) -> Result<Checked<'_>, FieldError> {
    for (field, value) in [("api", &req.api), ("stage", &req.stage)] {
        if value.is_empty() || value.len() > 64 {
            return Err(bad(field, "must be 1 to 64 characters"));
        }
    }
    if !HTTP_METHODS.contains(&req.method.as_str()) || req.method == "*" {
        return Err(bad("method", "must be an HTTP method in capitals, such as GET"));
    }
    let path = canonical::path(&req.path).map_err(|e| bad("path", format!("{}: {e}", quoted(&req.path))))?;
    let source_ip = match &req.source_ip {
        None => None,
        Some(text) => Some(canonical::address(text).map_err(|e| bad("source_ip", format!("{} {e}", quoted(text))))?),
    };
    if req.headers.len() > MAX_FIELDS || req.query.len() > MAX_FIELDS {
        return Err(bad("headers", format!("at most {MAX_FIELDS} headers and {MAX_FIELDS} query parameters")));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in &req.headers {
        if name.len() + value.len() > MAX_HEADER_BYTES {
            return Err(bad(&format!("headers.{name}"), format!("longer than {MAX_HEADER_BYTES} bytes")));
        }
        // `X-Evil` and `x-evil` are one header: joined, never last-wins.
        tollgate_proto::check::add_header_line(&mut headers, &name.to_ascii_lowercase(), value.clone());
    }
    // A method override some framework behind the gateway honours would
    // have it serve another method than the one decided on.
    for name in METHOD_OVERRIDE_HEADERS {
        if let Some(v) = headers.get(*name) {
            if !v.trim().eq_ignore_ascii_case(&req.method) {
                return Err(bad(&format!("headers.{name}"), "a method override must name the request's own method"));
            }
        }
    }
    for (name, v) in &req.query {
        if METHOD_OVERRIDE_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
            && !v.trim().eq_ignore_ascii_case(&req.method)
        {
            return Err(bad(&format!("query.{name}"), "a method override must name the request's own method"));
        }
    }
    Ok(Checked {
        api: &req.api,
        stage: &req.stage,
        method: &req.method,
        path,
        source_ip,
        headers,
        query: &req.query,
        proxy_id: req.proxy_id.as_deref(),
        body_size: req.body_size,
    })
}

/// A value from the request, quoted for an error message (cut if long).
fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}...", &value[..end]),
        None => format!("{value:?}"),
    }
}

fn decision(reason: ReasonCode, message: impl Into<String>) -> Decision {
    Decision {
        allowed: reason == ReasonCode::Allowed,
        status: reason.status(),
        reason,
        message: message.into(),
        principal: None,
        context: BTreeMap::new(),
        response_headers: Vec::new(),
        upstream_headers: Vec::new(),
        limit: None,
    }
}

/// The route a request matches: exact method before `*`, then the most literal path.
fn resolve_route<'a>(api: &'a Api, method: &str, path: &str) -> Option<&'a Route> {
    api.routes
        .iter()
        .filter(|r| (r.method == method || r.method == "*") && pattern::path_matches(&r.path, path))
        .max_by_key(|r| (pattern::specificity(&r.path), r.method != "*"))
}

/// The request's API key, from the header or query parameter the API names;
/// or, when the API's key source is the authorizer, the `usageIdentifierKey`
/// the route's HTTP authorizer answered with.
fn presented_key<'a>(api: &Api, c: &'a Checked<'_>, from_authorizer: Option<&'a str>) -> Option<&'a str> {
    if api.key_source.from == tollgate_proto::model::KeyFrom::Authorizer {
        return from_authorizer.map(str::trim).filter(|k| !k.is_empty());
    }
    let from_header = c.headers.get(&api.key_source.header).map(String::as_str);
    let from_query = api.key_source.query_param.as_ref().and_then(|q| c.query.get(q)).map(String::as_str);
    from_header.or(from_query).map(str::trim).filter(|k| !k.is_empty())
}

/// The plan of `key` that covers this API stage (at most one, by the model's rules).
fn plan_for<'m>(model: &'m crate::state::Model, key: &ApiKey, api: &str, stage: &str) -> Option<&'m UsagePlan> {
    key.plan_ids.iter().find_map(|id| match model.get(EntityKind::Plan, id) {
        Some(Entity::Plan(p)) if p.api_stages.iter().any(|s| s.api_id == api && s.stage == stage) => Some(p),
        _ => None,
    })
}

impl Gateway {
    /// A gateway whose limits are kept in memory (`metering::LocalAuthority`).
    pub fn new(model: SharedModel, clock: Arc<dyn Clock>) -> Self {
        Self::with_stats(model, clock, GatewayStats::default(), None)
    }

    /// `cluster_token` turns on signed identity (see [`identity`]).
    pub fn with_stats(
        model: SharedModel,
        clock: Arc<dyn Clock>,
        stats: GatewayStats,
        cluster_token: Option<&str>,
    ) -> Self {
        let authority = Arc::new(crate::metering::LocalAuthority::new(model.clone()));
        let metering = Metering::new(authority, clock.clone(), MeteringConfig::default(), Default::default());
        metering.watch_limits(model.clone());
        Self::with_metering(model, clock, stats, cluster_token, metering)
    }

    pub fn with_metering(
        model: SharedModel,
        clock: Arc<dyn Clock>,
        stats: GatewayStats,
        cluster_token: Option<&str>,
        metering: Arc<Metering>,
    ) -> Self {
        Gateway {
            identity: identity::IdentitySigner::new(cluster_token),
            model,
            limiter: Limiter::default(),
            metering,
            clock,
            waf: waf::Waf::default(),
            jwt: jwt::JwtVerifier::default(),
            authorizers: authorizer::HttpAuthorizers::default(),
            stats,
        }
    }

    /// Outbound HTTPS calls (JWKS, HTTP authorizers) also trust `roots`.
    pub fn trusting(mut self, roots: &[reqwest::Certificate]) -> Self {
        self.jwt = jwt::JwtVerifier::trusting(roots);
        self.authorizers = authorizer::HttpAuthorizers::trusting(roots);
        self
    }

    /// Decides one request. A malformed request is an error naming the field;
    /// every other outcome, allow or deny, is a [`Decision`].
    pub async fn check(&self, req: &CheckRequest) -> Result<Decision, FieldError> {
        let c = validate(req)?;
        if c.source_ip.is_none() {
            self.require_no_address(&c)?;
        }
        Ok(self.decide(&c).await)
    }

    /// A check without the client address is refused when the API's rules
    /// decide on it (WAF IP sets and per-IP rates, policy conditions on
    /// `source_ip`): deciding without it would skip them, failing open.
    fn require_no_address(&self, c: &Checked<'_>) -> Result<(), FieldError> {
        let published = self.model.load();
        let model = &published.model;
        let Some(Entity::Api(api)) = model.get(EntityKind::Api, c.api) else { return Ok(()) };
        let waf_needs_it = api.waf.iter().any(|rule| {
            matches!(
                rule.condition,
                tollgate_proto::model::WafCondition::IpSet(_) | tollgate_proto::model::WafCondition::RatePerIp { .. }
            )
        });
        if waf_needs_it || policy::uses_source_ip(model, &api.id) {
            return Err(bad("source_ip", "required: this API's WAF rules or policies decide on the client address"));
        }
        Ok(())
    }

    /// Runs the pipeline on the validated, canonical facts.
    async fn decide(&self, c: &Checked<'_>) -> Decision {
        let published = self.model.load_full();
        let model = &published.model;
        let now_ms = self.clock.now_ms();

        // 1. API, stage, route.
        let Some(Entity::Api(api)) = model.get(EntityKind::Api, c.api) else {
            return decision(ReasonCode::UnknownApi, format!("no API {:?}", c.api));
        };
        let Some(stage) = api.stages.iter().find(|s| s.name == c.stage) else {
            return decision(ReasonCode::UnknownStage, format!("API {:?} has no stage {:?}", api.id, c.stage));
        };
        // A CORS preflight is routed by the method it asks about.
        let origin = c.headers.get("origin").map(String::as_str);
        let preflight = match (&api.cors, origin, c.method, c.headers.get("access-control-request-method")) {
            (Some(cors), Some(origin), "OPTIONS", Some(wanted)) => Some((cors, origin, wanted.as_str())),
            _ => None,
        };
        let routed_method = preflight.map(|(_, _, wanted)| wanted).unwrap_or(c.method);
        let route = match (api.routes.is_empty(), resolve_route(api, routed_method, &c.path)) {
            (true, _) => None,
            (false, Some(r)) => Some(r),
            // A preflight for a method without a route is refused by CORS below.
            (false, None) if preflight.is_some() => None,
            (false, None) => return decision(ReasonCode::NoRoute, format!("no route for {} {}", c.method, c.path)),
        };
        let resource = format!("{}/{}/{}/{}", api.id, stage.name, c.method, &c.path[1..]);
        let no_principals: [String; 0] = [];
        let mut facts = RequestFacts {
            resource: &resource,
            principals: &no_principals,
            source_ip: c.source_ip,
            proxy_id: c.proxy_id,
            headers: &c.headers,
            tags: None,
            claims: None,
        };

        // 2. WAF rules, then the resource policy's explicit denies for everyone.
        let mut counted = |rule: &str| self.stats.waf_counted.with_label_values(&[rule]).inc();
        if let Some(blocked) = self.waf.evaluate(&api.id, &api.waf, c, &self.limiter, now_ms, &mut counted) {
            let mut d = decision(blocked.reason, format!("blocked by WAF rule {:?}", blocked.rule));
            if let Some(retry) = blocked.retry_after_secs {
                d.response_headers.push(("retry-after".into(), retry.to_string()));
            }
            return self.finish(d, api, c);
        }
        if policy::early_deny(model, &api.id, &facts) {
            return self.finish(
                decision(ReasonCode::ResourcePolicyDenied, "denied by the API's resource policy"),
                api,
                c,
            );
        }

        // 3. CORS preflight.
        if let Some((cors, origin, wanted)) = preflight {
            let asked_headers = c.headers.get("access-control-request-headers").map(String::as_str);
            return match cors::preflight(cors, origin, wanted, asked_headers) {
                Ok(headers) => {
                    let mut d = decision(ReasonCode::CorsPreflight, "CORS preflight answered");
                    d.response_headers = headers;
                    d
                }
                Err(why) => decision(ReasonCode::CorsOriginDenied, why),
            };
        }

        // 4. Authentication: the route's authorizer, then the API key.
        let mut principal_names: Vec<String> = Vec::new();
        let mut principal_id: Option<String> = None;
        let mut claims: Option<BTreeMap<String, String>> = None;
        let mut context: BTreeMap<String, String> = BTreeMap::new();
        let mut key: Option<&ApiKey> = None;
        let mut authorizer_key: Option<authorizer::UsageKey> = None;
        if let Some((route, authorizer_id)) = route.and_then(|r| Some((r, r.authorizer_id.as_deref()?))) {
            let Some(Entity::Authorizer(authorizer)) = model.get(EntityKind::Authorizer, authorizer_id) else {
                let d = decision(ReasonCode::AuthorizerError, format!("authorizer {authorizer_id:?} does not exist"));
                return self.finish(d, api, c);
            };
            match &authorizer.kind {
                AuthorizerKind::Jwt(config) => {
                    let bearer = c
                        .headers
                        .get("authorization")
                        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                        .map(str::trim)
                        .filter(|t| !t.is_empty());
                    let Some(token) = bearer else {
                        return self.finish(decision(ReasonCode::MissingToken, "a bearer token is required"), api, c);
                    };
                    match self.jwt.verify(config, token, &route.scopes).await {
                        Ok(verified) => {
                            if let Some(sub) = &verified.subject {
                                principal_names.push(format!("sub:{sub}"));
                                principal_id = Some(format!("sub:{sub}"));
                            }
                            principal_names.extend(verified.groups.iter().map(|g| format!("group:{g}")));
                            if let Some(sub) = &verified.subject {
                                context.insert("sub".into(), sub.clone());
                            }
                            claims = Some(verified.claims);
                        }
                        Err(failure) => {
                            let (reason, why) = match failure {
                                jwt::Failure::Expired => {
                                    (ReasonCode::TokenExpired, "the token has expired".to_string())
                                }
                                jwt::Failure::Invalid(why) => (ReasonCode::InvalidToken, why),
                                jwt::Failure::MissingScope(s) => {
                                    (ReasonCode::InsufficientScope, format!("scope {s} is required"))
                                }
                                jwt::Failure::KeysUnavailable(why) => (ReasonCode::AuthorizerError, why),
                            };
                            return self.finish(decision(reason, why), api, c);
                        }
                    }
                }
                AuthorizerKind::Http(config) => {
                    match self.authorizers.authorize(&authorizer.id, config, c, &resource).await {
                        Ok(outcome) => {
                            let result = if outcome.cache_hit { "hit" } else { "miss" };
                            self.stats.authorizer_cache.with_label_values(&[result]).inc();
                            if !outcome.allowed {
                                let d = decision(ReasonCode::AuthorizerDenied, "the authorizer denied the request");
                                return self.finish(d, api, c);
                            }
                            if let Some(p) = &outcome.principal_id {
                                principal_names.push(p.clone());
                                principal_id = Some(p.clone());
                            }
                            context.extend(outcome.context);
                            authorizer_key = outcome.usage_key;
                        }
                        Err(failure) => {
                            let (reason, why) = match failure {
                                authorizer::Failure::MissingIdentity(s) => {
                                    (ReasonCode::MissingToken, format!("{s} is required"))
                                }
                                authorizer::Failure::TimedOut => {
                                    (ReasonCode::AuthorizerTimeout, "the authorizer timed out".into())
                                }
                                authorizer::Failure::Error(why) => (ReasonCode::AuthorizerError, why),
                            };
                            return self.finish(decision(reason, why), api, c);
                        }
                    }
                }
            }
        }
        if route.is_some_and(|r| r.api_key_required) {
            let Some(presented) = presented_key(api, c, authorizer_key.as_ref().map(|k| k.0.as_str())) else {
                return self.finish(decision(ReasonCode::MissingKey, "an API key is required"), api, c);
            };
            let digest = secret::sha256(presented);
            let Some(found) = model.key_by_digest(&digest) else {
                return self.finish(decision(ReasonCode::UnknownKey, "the API key is not valid"), api, c);
            };
            let now_s = now_ms.div_euclid(1000);
            if found.secret.sha256 != digest {
                // The old secret of a rerolled key: valid only inside its overlap window.
                let in_window = found
                    .previous_secret
                    .as_ref()
                    .is_some_and(|p| p.secret.sha256 == digest && now_s < p.valid_until.0);
                if !in_window {
                    return self.finish(decision(ReasonCode::UnknownKey, "the API key is not valid"), api, c);
                }
            }
            if !found.enabled {
                return self.finish(decision(ReasonCode::DisabledKey, "the API key is disabled"), api, c);
            }
            if found.expires_at.is_some_and(|t| now_s >= t.0) {
                return self.finish(decision(ReasonCode::ExpiredKey, "the API key has expired"), api, c);
            }
            principal_names.push(format!("key:{}", found.id));
            if let Some(customer) = &found.customer_id {
                principal_names.push(format!("customer:{customer}"));
            }
            key = Some(found);
        }
        facts.principals = &principal_names;
        facts.tags = key.map(|k| &k.tags);
        facts.claims = claims.as_ref();

        // 5. Authorization.
        match policy::evaluate(model, &api.id, &facts) {
            Verdict::Allow | Verdict::NotGoverned => {}
            Verdict::Deny { resource_policy: true } | Verdict::ImplicitDeny { resource_policy: true } => {
                return self.finish(
                    decision(ReasonCode::ResourcePolicyDenied, "denied by the API's resource policy"),
                    api,
                    c,
                );
            }
            Verdict::Deny { resource_policy: false } => {
                return self.finish(decision(ReasonCode::PolicyDenied, "denied by a policy"), api, c);
            }
            Verdict::ImplicitDeny { .. } => {
                return self.finish(decision(ReasonCode::ImplicitDeny, "no policy allows this request"), api, c);
            }
        }

        // 6./7. Throttles and quota.
        let plan = match key {
            Some(k) => match plan_for(model, k, &api.id, &stage.name) {
                Some(p) => Some(p),
                None => {
                    let d = decision(ReasonCode::KeyNotInPlan, "the API key has no usage plan for this API stage");
                    return self.finish(d, api, c);
                }
            },
            None => None,
        };
        let limits = self.limits_for(api, stage, key, plan, c.method, &c.path, now_ms);
        let epoch = limits.quota.as_ref().map(|q| published.limits.of(&q.period.plan_id)).unwrap_or(0);
        let limit = match self.metering.admit(&limits, now_ms, epoch).await {
            Ok(state) => state,
            Err(Refusal { reason, state }) => {
                let mut d = decision(reason, "rate or quota limit reached");
                d.limit = Some(state);
                return self.finish(d, api, c);
            }
        };

        // 8. Allow.
        let mut d = decision(ReasonCode::Allowed, "allowed");
        d.limit = limit;
        if let Some(k) = key {
            context.extend(k.tags.iter().map(|(n, v)| (format!("tag.{n}"), v.clone())));
        }
        if principal_id.is_some() || key.is_some() {
            d.principal = Some(Principal {
                id: principal_id.unwrap_or_else(|| key.map(|k| format!("key:{}", k.id)).unwrap_or_default()),
                key_id: key.map(|k| k.id.clone()),
                plan_id: plan.map(|p| p.id.clone()),
                customer_id: key.and_then(|k| k.customer_id.clone()),
            });
        }
        d.context = context;
        if let Some(p) = &d.principal {
            d.upstream_headers.push(("x-tollgate-principal".into(), p.id.clone()));
        }
        let identity = IdentityClaims {
            sub: d.principal.as_ref().map(|p| p.id.as_str()),
            aud: &api.id,
            stage: &stage.name,
            key_id: d.principal.as_ref().and_then(|p| p.key_id.as_deref()),
            plan_id: d.principal.as_ref().and_then(|p| p.plan_id.as_deref()),
            customer_id: d.principal.as_ref().and_then(|p| p.customer_id.as_deref()),
            ctx: &d.context,
        };
        if let Some(token) = self.identity.sign(model.identity.version, now_ms.div_euclid(1000), &identity) {
            d.upstream_headers.push(("x-tollgate-identity".into(), token.to_string()));
        }
        self.finish(d, api, c)
    }

    /// Which limits apply: the stage's, the key's plan throttle (or the method
    /// override that matches), and the plan's quota for the current period.
    #[allow(clippy::too_many_arguments)]
    fn limits_for(
        &self,
        api: &Api,
        stage: &Stage,
        key: Option<&ApiKey>,
        plan: Option<&UsagePlan>,
        method: &str,
        path: &str,
        now_ms: i64,
    ) -> Limits {
        let mut limits = Limits::default();
        if let Some(t) = stage.throttle {
            let bucket = BucketId::Stage { api: api.id.clone(), stage: stage.name.clone() };
            limits.stage = Some(ThrottleLimit { bucket, throttle: t });
        }
        if let (Some(key), Some(plan)) = (key, plan) {
            let overrides = plan
                .api_stages
                .iter()
                .find(|s| s.api_id == api.id && s.stage == stage.name)
                .map(|s| s.method_throttles.as_slice())
                .unwrap_or(&[]);
            let method_override = overrides
                .iter()
                .enumerate()
                .filter(|(_, m)| (m.method == method || m.method == "*") && pattern::path_matches(&m.path, path))
                .max_by_key(|(_, m)| (pattern::specificity(&m.path), m.method != "*"));
            let throttle = match method_override {
                Some((i, m)) => Some((Some(i), m.throttle)),
                None => plan.throttle.map(|t| (None, t)),
            };
            if let Some((method_override, t)) = throttle {
                let bucket = BucketId::Key { key: key.id.clone(), plan: plan.id.clone(), method_override };
                limits.key = Some(ThrottleLimit { bucket, throttle: t });
            }
            if let Some(q) = plan.quota {
                let (start, ends_ms) = crate::clock::period_bounds(now_ms, q.period, q.offset);
                let period = QuotaPeriod { key_id: key.id.clone(), plan_id: plan.id.clone(), start_ms: start };
                limits.quota = Some(QuotaLimit { period, quota: q, ends_ms });
            }
        }
        limits
    }

    /// Adds what every decision carries: CORS headers for an allowed origin,
    /// rate-limit headers, `Retry-After` on 429.
    fn finish(&self, mut d: Decision, api: &Api, c: &Checked<'_>) -> Decision {
        if let Some(cors) = &api.cors {
            d.response_headers.extend(cors::response_headers(cors, c.headers.get("origin").map(String::as_str)));
        }
        if let Some(LimitState { limit, remaining, reset_secs, retry_after_secs }) = d.limit {
            d.response_headers.push(("ratelimit-limit".into(), limit.to_string()));
            d.response_headers.push(("ratelimit-remaining".into(), remaining.to_string()));
            d.response_headers.push(("ratelimit-reset".into(), reset_secs.to_string()));
            if let Some(retry) = retry_after_secs {
                d.response_headers.push(("retry-after".into(), retry.to_string()));
            }
        }
        // A 503 (authorizer down or slow, no quota grant reachable) is worth
        // retrying soon: say when (RFC 9110 §10.2.3).
        if d.status == 503 && !d.response_headers.iter().any(|(n, _)| n == "retry-after") {
            d.response_headers.push(("retry-after".into(), "1".into()));
        }
        d
    }
}

#[cfg(test)]
mod tests;

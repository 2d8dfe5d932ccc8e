//! The check pipeline: may this request pass, and with which headers?
//!
//! [`Gateway::check`] runs the steps in the order a request meets them, each
//! a function answering a `Step`: `Break` with the decision that ends the
//! check, or `Continue` with what it found (`Gateway::steps` lists them):
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
//! Every step reads the request's facts from [`ValidRequest`], built once by
//! validation: the path and client address there are in their canonical form
//! ([`tollgate_proto::canonical`]), and the raw request is out of reach after
//! it, so no spelling of a request can get another decision than its
//! canonical form.
//!
//! The gateway reads an immutable snapshot of the model (swapped by the state
//! machine after each apply). Limits are taken through `crate::metering`
//! (quota leases, borrowed throttle tokens); the only other shared mutable
//! state is the WAF's per-address limiter. No lock is held across `.await`.
//!
//! Beside the check, [`ratelimit`] decides Envoy's descriptor rate limit
//! checks (`ShouldRateLimit`) against a rate limit domain's limits, taken
//! through the same metering.

pub mod authorizer;
pub mod cors;
pub mod identity;
pub mod jwt;
pub mod limits;
pub mod pattern;
pub mod policy;
pub mod ratelimit;
pub mod waf;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use tollgate_proto::canonical;
use tollgate_proto::check::{CheckRequest, Decision, LimitState, Principal, ReasonCode};
use tollgate_proto::model::{Api, ApiKey, AuthorizerKind, Cors, Route, Stage, UsagePlan};
use tollgate_proto::validate::HTTP_METHODS;
use tollgate_proto::FieldError;

use crate::clock::Clock;
use crate::metering::{BucketId, Limits, QuotaLimit, Refusal, ThrottleLimit};
use crate::metering::{Metering, MeteringConfig};
use crate::secret;
use crate::state::published::{LimitsEpochs, Published, SharedModel};
use crate::state::Model;
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
/// The method-override query parameter (Laravel, Symfony, express).
const METHOD_OVERRIDE_PARAM: &str = "_method";

/// The methods a query parameter `name=value` (both decoded) could make a
/// framework behind the gateway serve: `_method` itself, an array form
/// (`_method[]`), and one hidden from a parser that splits on `&` only, in
/// a `;`-separated pair (`a=1;_method=DELETE`, which older Python and Java
/// servers split) or behind an encoded `=` (`_method%3DDELETE`).
fn hidden_method_overrides<'a>(name: &'a str, value: &'a str) -> impl Iterator<Item = &'a str> {
    let whole = [(name, value)];
    let split = name.contains([';', '&', '=']);
    let in_name =
        name.split([';', '&']).filter(move |_| split).map(|piece| piece.split_once('=').unwrap_or((piece, "")));
    let in_value = value.split([';', '&']).skip(1).map(|piece| piece.split_once('=').unwrap_or((piece, "")));
    whole.into_iter().chain(in_name).chain(in_value).filter_map(|(n, v)| {
        let n = n.trim();
        let base = n.split_once('[').map_or(n, |(b, _)| b);
        base.eq_ignore_ascii_case(METHOD_OVERRIDE_PARAM).then_some(v)
    })
}

/// Headers the check decides on, or that carry a proxy's or the gateway's
/// word to the backend: their underscore spellings (`x_original_url`) are
/// the same variable to CGI, PHP, Rack and WSGI backends (`HTTP_X_…`), and
/// another header to the gateway and the proxy, so they are refused.
/// `hyphenated`: the name in lowercase with `_` read as `-`.
fn is_sensitive_header(hyphenated: &str) -> bool {
    const NAMES: &[&str] = &[
        "authorization",
        "x-api-key",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-rewrite-url",
        "x-client-cert-subject",
    ];
    METHOD_OVERRIDE_HEADERS.contains(&hyphenated)
        || NAMES.contains(&hyphenated)
        || ["x-forwarded-", "x-original-", "x-tollgate-"].iter().any(|p| hyphenated.starts_with(p))
}

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
    /// Descriptor rate limit checks by answer: `ok`, `over_limit`,
    /// `invalid`, `unavailable`.
    pub ratelimit: prometheus::IntCounterVec,
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
            ratelimit: vec(
                "tollgate_ratelimit_checks_total",
                "Descriptor rate limit checks (ShouldRateLimit, POST /v1/ratelimit) by answer.",
                "answer",
            ),
        }
    }
}

/// A check request after validation: the facts every step decides on, and
/// the only view of the request the steps get. Built by [`validate`] alone.
struct ValidRequest<'a> {
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

fn validate(req: &CheckRequest) -> Result<ValidRequest<'_>, FieldError> {
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
        let lower = name.to_ascii_lowercase();
        if lower.contains('_') {
            let hyphenated = lower.replace('_', "-");
            if is_sensitive_header(&hyphenated) {
                return Err(bad(
                    &format!("headers.{name}"),
                    format!(
                        "an underscore spelling of {hyphenated}: CGI, PHP, Rack and WSGI backends read it as that \
                         header, which the check decides on"
                    ),
                ));
            }
        }
        // `X-Evil` and `x-evil` are one header: joined, never last-wins.
        tollgate_proto::check::add_header_line(&mut headers, &lower, value.clone());
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
        if hidden_method_overrides(name, v).any(|named| !named.trim().eq_ignore_ascii_case(&req.method)) {
            return Err(bad(&format!("query.{name}"), "a method override must name the request's own method"));
        }
    }
    Ok(ValidRequest {
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
    pattern::best_match(&api.routes, method, path, |r| (r.method.as_str(), r.path.as_str())).map(|(_, r)| r)
}

/// The request's API key, from the header or query parameter the API names;
/// or, when the API's key source is the authorizer, the `usageIdentifierKey`
/// the route's HTTP authorizer answered with.
fn presented_key<'a>(api: &Api, c: &'a ValidRequest<'_>, from_authorizer: Option<&'a str>) -> Option<&'a str> {
    if api.key_source.from == tollgate_proto::model::KeyFrom::Authorizer {
        return from_authorizer.map(str::trim).filter(|k| !k.is_empty());
    }
    let from_header = c.headers.get(&api.key_source.header).map(String::as_str);
    let from_query = api.key_source.query_param.as_ref().and_then(|q| c.query.get(q)).map(String::as_str);
    from_header.or(from_query).map(str::trim).filter(|k| !k.is_empty())
}

/// The plan of `key` that covers this API stage (at most one, by the model's rules).
fn plan_for<'m>(model: &'m Model, key: &ApiKey, api: &str, stage: &str) -> Option<&'m UsagePlan> {
    key.plan_ids
        .iter()
        .filter_map(|id| model.plan(id))
        .find(|p| p.api_stages.iter().any(|s| s.api_id == api && s.stage == stage))
}

/// What a step of the pipeline answers: `Break` with the decision that ends
/// the check, or `Continue` with what it found for the steps after it.
type Step<T> = ControlFlow<Decision, T>;

/// A CORS preflight: the API's CORS rules, the origin, and the method asked about.
struct Preflight<'a> {
    cors: &'a Cors,
    origin: &'a str,
    method: &'a str,
}

/// Step 1's findings: where the request goes.
struct Target<'a> {
    api: &'a Api,
    stage: &'a Stage,
    /// `None` when the API has no routes, or for a preflight asking about a
    /// method without a route (refused by CORS).
    route: Option<&'a Route>,
    preflight: Option<Preflight<'a>>,
    /// `api/stage/METHOD/path`: what policies and authorizers match on.
    resource: String,
}

/// Step 4's findings: who is calling (all empty when anonymous).
#[derive(Default)]
struct Caller<'a> {
    /// Principal names policies match: `sub:…`, `group:…`, an HTTP
    /// authorizer's principal id, `key:…`, `customer:…`.
    names: Vec<String>,
    /// The principal id an authorizer answered (`sub:…` for a JWT).
    id: Option<String>,
    /// A verified JWT's claims, for policy conditions.
    claims: Option<BTreeMap<String, String>>,
    /// Context for the backend (`sub`, an HTTP authorizer's context).
    context: BTreeMap<String, String>,
    key: Option<&'a ApiKey>,
}

/// Step 1. Resolve the API, stage and route; unknown ones end the check with a
/// 404-style decision (not an error).
fn resolve<'a>(model: &'a Model, c: &'a ValidRequest<'_>) -> Step<Target<'a>> {
    let Some(api) = model.api(c.api) else {
        return Step::Break(decision(ReasonCode::UnknownApi, format!("no API {:?}", c.api)));
    };
    let Some(stage) = api.stages.iter().find(|s| s.name == c.stage) else {
        let why = format!("API {:?} has no stage {:?}", api.id, c.stage);
        return Step::Break(decision(ReasonCode::UnknownStage, why));
    };
    // A CORS preflight is routed by the method it asks about.
    let origin = c.headers.get("origin").map(String::as_str);
    let preflight = match (&api.cors, origin, c.method, c.headers.get("access-control-request-method")) {
        (Some(cors), Some(origin), "OPTIONS", Some(wanted)) => Some(Preflight { cors, origin, method: wanted }),
        _ => None,
    };
    let routed_method = preflight.as_ref().map(|p| p.method).unwrap_or(c.method);
    let route = match (api.routes.is_empty(), resolve_route(api, routed_method, &c.path)) {
        (true, _) => None,
        (false, Some(r)) => Some(r),
        // A preflight for a method without a route is refused by CORS below.
        (false, None) if preflight.is_some() => None,
        (false, None) => {
            return Step::Break(decision(ReasonCode::NoRoute, format!("no route for {} {}", c.method, c.path)))
        }
    };
    let resource = format!("{}/{}/{}/{}", api.id, stage.name, c.method, &c.path[1..]);
    Step::Continue(Target { api, stage, route, preflight, resource })
}

/// Step 3. A CORS preflight is answered here (without the headers of `finish`).
fn answer_preflight(t: &Target<'_>, c: &ValidRequest<'_>) -> Step<()> {
    let Some(Preflight { cors, origin, method }) = &t.preflight else { return Step::Continue(()) };
    let asked_headers = c.headers.get("access-control-request-headers").map(String::as_str);
    Step::Break(match cors::preflight(cors, origin, method, asked_headers) {
        Ok(headers) => {
            let mut d = decision(ReasonCode::CorsPreflight, "CORS preflight answered");
            d.response_headers = headers;
            d
        }
        Err(why) => decision(ReasonCode::CorsOriginDenied, why),
    })
}

/// What policies decide on: before authentication (`caller` `None`) no
/// principals, tags or claims.
fn facts<'a>(t: &'a Target<'_>, c: &'a ValidRequest<'_>, caller: Option<&'a Caller<'_>>) -> RequestFacts<'a> {
    RequestFacts {
        resource: &t.resource,
        principals: caller.map_or(&[], |k| k.names.as_slice()),
        source_ip: c.source_ip,
        proxy_id: c.proxy_id,
        headers: &c.headers,
        tags: caller.and_then(|k| k.key).map(|k| &k.tags),
        claims: caller.and_then(|k| k.claims.as_ref()),
    }
}

/// The bearer token of the `Authorization` header, read as every listener
/// reads one ([`secret::bearer_token`]); `None` if absent or empty.
fn bearer_token(headers: &BTreeMap<String, String>) -> Option<&str> {
    headers.get("authorization").map(String::as_str).and_then(secret::bearer_token)
}

/// Which limits apply: the stage's, the key's plan throttle (or the method
/// override that matches), and the plan's quota for the current period
/// (under the plan's limits epoch in `epochs`).
#[allow(clippy::too_many_arguments)]
fn limits_for(
    epochs: &LimitsEpochs,
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
        limits.throttles.push(ThrottleLimit::one(bucket, t, ReasonCode::StageThrottled));
    }
    if let (Some(key), Some(plan)) = (key, plan) {
        let overrides = plan
            .api_stages
            .iter()
            .find(|s| s.api_id == api.id && s.stage == stage.name)
            .map(|s| s.method_throttles.as_slice())
            .unwrap_or(&[]);
        let method_override = pattern::best_match(overrides, method, path, |m| (m.method.as_str(), m.path.as_str()));
        let throttle = match method_override {
            Some((i, m)) => Some((Some(i), m.throttle)),
            None => plan.throttle.map(|t| (None, t)),
        };
        if let Some((method_override, t)) = throttle {
            let bucket = BucketId::Key { key: key.id.clone(), plan: plan.id.clone(), method_override };
            limits.throttles.push(ThrottleLimit::one(bucket, t, ReasonCode::Throttled));
        }
        if let Some(q) = plan.quota {
            let (start, ends_ms) = crate::clock::period_bounds(now_ms, q.period, q.offset);
            let period = QuotaPeriod { key_id: key.id.clone(), plan_id: plan.id.clone(), start_ms: start };
            let epoch = epochs.of(&plan.id);
            limits.quotas.push(QuotaLimit { period, limit: q.limit, ends_ms, epoch, cost: 1 });
        }
    }
    limits
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
    fn require_no_address(&self, c: &ValidRequest<'_>) -> Result<(), FieldError> {
        let published = self.model.load();
        let model = &published.model;
        let Some(api) = model.api(c.api) else { return Ok(()) };
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
    async fn decide(&self, c: &ValidRequest<'_>) -> Decision {
        let published = self.model.load_full();
        let now_ms = self.clock.now_ms();
        match self.steps(&published, c, now_ms).await {
            ControlFlow::Break(d) | ControlFlow::Continue(d) => d,
        }
    }

    /// The steps in the order a request meets them; each ends the check
    /// with its decision (`Break`) or goes on with what it found.
    async fn steps(&self, published: &Published, c: &ValidRequest<'_>, now_ms: i64) -> Step<Decision> {
        let model = &published.model;
        let target = resolve(model, c)?;
        self.screen(model, &target, c, now_ms)?;
        answer_preflight(&target, c)?;
        let caller = self.authenticate(model, &target, c, now_ms).await?;
        self.authorize(model, &target, &caller, c)?;
        let plan = self.plan_of(model, &target, &caller, c)?;
        let limit = self.take_limits(published, &target, caller.key, plan, c, now_ms).await?;
        Step::Continue(self.allow(model, &target, caller, plan, limit, c, now_ms))
    }

    /// Ends the check with `d`, finished with CORS and rate-limit headers.
    fn end<T>(&self, d: Decision, t: &Target<'_>, c: &ValidRequest<'_>) -> Step<T> {
        Step::Break(self.finish(d, t.api, c))
    }

    /// Step 2. WAF rules, then the resource policy's explicit denies for everyone.
    fn screen(&self, model: &Model, t: &Target<'_>, c: &ValidRequest<'_>, now_ms: i64) -> Step<()> {
        let mut counted = |rule: &str| self.stats.waf_counted.with_label_values(&[rule]).inc();
        if let Some(blocked) = self.waf.evaluate(&t.api.id, &t.api.waf, c, &self.limiter, now_ms, &mut counted) {
            let mut d = decision(blocked.reason, format!("blocked by WAF rule {:?}", blocked.rule));
            if let Some(retry) = blocked.retry_after_secs {
                d.response_headers.push(("retry-after".into(), retry.to_string()));
            }
            return self.end(d, t, c);
        }
        if policy::early_deny(model, &t.api.id, &facts(t, c, None)) {
            return self.end(decision(ReasonCode::ResourcePolicyDenied, "denied by the API's resource policy"), t, c);
        }
        Step::Continue(())
    }

    /// Step 4. Authentication: the route's authorizer, then the API key.
    async fn authenticate<'a>(
        &self,
        model: &'a Model,
        t: &Target<'a>,
        c: &ValidRequest<'_>,
        now_ms: i64,
    ) -> Step<Caller<'a>> {
        let mut caller = Caller::default();
        let mut usage_key = None;
        if let Some((route, authorizer_id)) = t.route.and_then(|r| Some((r, r.authorizer_id.as_deref()?))) {
            let Some(authorizer) = model.authorizer(authorizer_id) else {
                let d = decision(ReasonCode::AuthorizerError, format!("authorizer {authorizer_id:?} does not exist"));
                return self.end(d, t, c);
            };
            match &authorizer.kind {
                AuthorizerKind::Jwt(config) => self.verify_jwt(config, route, t, c, &mut caller).await?,
                AuthorizerKind::Http(config) => {
                    usage_key = self.ask_authorizer(&authorizer.id, config, t, c, &mut caller).await?;
                }
            }
        }
        if t.route.is_some_and(|r| r.api_key_required) {
            let key = self.api_key(model, t, c, usage_key.as_ref(), now_ms)?;
            caller.names.push(format!("key:{}", key.id));
            if let Some(customer) = &key.customer_id {
                caller.names.push(format!("customer:{customer}"));
            }
            caller.key = Some(key);
        }
        Step::Continue(caller)
    }

    /// Step 4a. A JWT authorizer: a bearer token, verified, with the route's scopes.
    async fn verify_jwt(
        &self,
        config: &tollgate_proto::model::JwtAuthorizer,
        route: &Route,
        t: &Target<'_>,
        c: &ValidRequest<'_>,
        caller: &mut Caller<'_>,
    ) -> Step<()> {
        let Some(token) = bearer_token(&c.headers) else {
            return self.end(decision(ReasonCode::MissingToken, "a bearer token is required"), t, c);
        };
        match self.jwt.verify(config, token, &route.scopes).await {
            Ok(verified) => {
                if let Some(sub) = &verified.subject {
                    caller.names.push(format!("sub:{sub}"));
                    caller.id = Some(format!("sub:{sub}"));
                }
                caller.names.extend(verified.groups.iter().map(|g| format!("group:{g}")));
                if let Some(sub) = &verified.subject {
                    caller.context.insert("sub".into(), sub.clone());
                }
                caller.claims = Some(verified.claims);
                Step::Continue(())
            }
            Err(failure) => {
                let (reason, why) = match failure {
                    jwt::Failure::Expired => (ReasonCode::TokenExpired, "the token has expired".to_string()),
                    jwt::Failure::Invalid(why) => (ReasonCode::InvalidToken, why),
                    jwt::Failure::MissingScope(s) => (ReasonCode::InsufficientScope, format!("scope {s} is required")),
                    jwt::Failure::KeysUnavailable(why) => (ReasonCode::AuthorizerError, why),
                };
                self.end(decision(reason, why), t, c)
            }
        }
    }

    /// Step 4b. An HTTP authorizer (cached by identity source); answers the API
    /// key it named for usage plans, if any.
    async fn ask_authorizer(
        &self,
        authorizer_id: &str,
        config: &tollgate_proto::model::HttpAuthorizer,
        t: &Target<'_>,
        c: &ValidRequest<'_>,
        caller: &mut Caller<'_>,
    ) -> Step<Option<authorizer::UsageKey>> {
        match self.authorizers.authorize(authorizer_id, config, c, &t.resource).await {
            Ok(outcome) => {
                let result = if outcome.cache_hit { "hit" } else { "miss" };
                self.stats.authorizer_cache.with_label_values(&[result]).inc();
                if !outcome.allowed {
                    return self.end(decision(ReasonCode::AuthorizerDenied, "the authorizer denied the request"), t, c);
                }
                if let Some(p) = &outcome.principal_id {
                    caller.names.push(p.clone());
                    caller.id = Some(p.clone());
                }
                caller.context.extend(outcome.context);
                Step::Continue(outcome.usage_key)
            }
            Err(failure) => {
                let (reason, why) = match failure {
                    authorizer::Failure::MissingIdentity(s) => (ReasonCode::MissingToken, format!("{s} is required")),
                    authorizer::Failure::TimedOut => (ReasonCode::AuthorizerTimeout, "the authorizer timed out".into()),
                    authorizer::Failure::Error(why) => (ReasonCode::AuthorizerError, why),
                };
                self.end(decision(reason, why), t, c)
            }
        }
    }

    /// Step 4c. The API key: presented, known, enabled, not expired (an old
    /// secret of a rerolled key only inside its overlap window).
    fn api_key<'a>(
        &self,
        model: &'a Model,
        t: &Target<'_>,
        c: &ValidRequest<'_>,
        usage_key: Option<&authorizer::UsageKey>,
        now_ms: i64,
    ) -> Step<&'a ApiKey> {
        let Some(presented) = presented_key(t.api, c, usage_key.map(|k| k.0.as_str())) else {
            return self.end(decision(ReasonCode::MissingKey, "an API key is required"), t, c);
        };
        let digest = secret::sha256(presented);
        let Some(found) = model.key_by_digest(&digest) else {
            return self.end(decision(ReasonCode::UnknownKey, "the API key is not valid"), t, c);
        };
        let now_s = now_ms.div_euclid(1000);
        if found.secret.sha256 != digest {
            // The old secret of a rerolled key: valid only inside its overlap window.
            let in_window =
                found.previous_secret.as_ref().is_some_and(|p| p.secret.sha256 == digest && now_s < p.valid_until.0);
            if !in_window {
                return self.end(decision(ReasonCode::UnknownKey, "the API key is not valid"), t, c);
            }
        }
        if !found.enabled {
            return self.end(decision(ReasonCode::DisabledKey, "the API key is disabled"), t, c);
        }
        if found.expires_at.is_some_and(|e| now_s >= e.0) {
            return self.end(decision(ReasonCode::ExpiredKey, "the API key has expired"), t, c);
        }
        Step::Continue(found)
    }

    /// Step 5. Authorization: resource and principal policies together.
    fn authorize(&self, model: &Model, t: &Target<'_>, caller: &Caller<'_>, c: &ValidRequest<'_>) -> Step<()> {
        let (reason, why) = match policy::evaluate(model, &t.api.id, &facts(t, c, Some(caller))) {
            Verdict::Allow | Verdict::NotGoverned => return Step::Continue(()),
            Verdict::Deny { resource_policy: true } | Verdict::ImplicitDeny { resource_policy: true } => {
                (ReasonCode::ResourcePolicyDenied, "denied by the API's resource policy")
            }
            Verdict::Deny { resource_policy: false } => (ReasonCode::PolicyDenied, "denied by a policy"),
            Verdict::ImplicitDeny { .. } => (ReasonCode::ImplicitDeny, "no policy allows this request"),
        };
        self.end(decision(reason, why), t, c)
    }

    /// Step 6. The key's usage plan for this API stage (none without a key).
    fn plan_of<'a>(
        &self,
        model: &'a Model,
        t: &Target<'_>,
        caller: &Caller<'_>,
        c: &ValidRequest<'_>,
    ) -> Step<Option<&'a UsagePlan>> {
        let Some(key) = caller.key else { return Step::Continue(None) };
        match plan_for(model, key, &t.api.id, &t.stage.name) {
            Some(plan) => Step::Continue(Some(plan)),
            None => {
                let d = decision(ReasonCode::KeyNotInPlan, "the API key has no usage plan for this API stage");
                self.end(d, t, c)
            }
        }
    }

    /// Steps 6 and 7. Throttles and quota: taken from every limit, or from none.
    async fn take_limits(
        &self,
        published: &Published,
        t: &Target<'_>,
        key: Option<&ApiKey>,
        plan: Option<&UsagePlan>,
        c: &ValidRequest<'_>,
        now_ms: i64,
    ) -> Step<Option<LimitState>> {
        let limits = limits_for(&published.limits, t.api, t.stage, key, plan, c.method, &c.path, now_ms);
        match self.metering.admit(&limits, now_ms).await {
            Ok(admitted) => Step::Continue(admitted.tightest()),
            Err(Refusal { reason, state, .. }) => {
                let mut d = decision(reason, "rate or quota limit reached");
                d.limit = Some(state);
                self.end(d, t, c)
            }
        }
    }

    /// Step 8. Allow: the principal and context for the backend, rate-limit
    /// headers, and the signed identity token.
    #[allow(clippy::too_many_arguments)]
    fn allow(
        &self,
        model: &Model,
        t: &Target<'_>,
        caller: Caller<'_>,
        plan: Option<&UsagePlan>,
        limit: Option<LimitState>,
        c: &ValidRequest<'_>,
        now_ms: i64,
    ) -> Decision {
        let Caller { id: principal_id, mut context, key, .. } = caller;
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
            aud: &t.api.id,
            stage: &t.stage.name,
            key_id: d.principal.as_ref().and_then(|p| p.key_id.as_deref()),
            plan_id: d.principal.as_ref().and_then(|p| p.plan_id.as_deref()),
            customer_id: d.principal.as_ref().and_then(|p| p.customer_id.as_deref()),
            ctx: &d.context,
        };
        if let Some(token) = self.identity.sign(model.identity.version, now_ms.div_euclid(1000), &identity) {
            d.upstream_headers.push(("x-tollgate-identity".into(), token));
        }
        self.finish(d, t.api, c)
    }

    /// Adds what every decision carries: CORS headers for an allowed origin,
    /// rate-limit headers, `Retry-After` on 429.
    fn finish(&self, mut d: Decision, api: &Api, c: &ValidRequest<'_>) -> Decision {
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

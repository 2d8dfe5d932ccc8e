//! Who may call what on the HTTP listener: one extractor per kind of caller,
//! and the one place a token presented over HTTP is checked.
//!
//! - [`AdminCaller`]: every admin route. A bearer admin token (the bootstrap
//!   token, or a stored one) whose scope covers the request: `read` may not
//!   `POST`/`PUT`/`PATCH`/`DELETE`, `write` may do anything. Every 401 carries
//!   `WWW-Authenticate: Bearer` (RFC 9110 §11.6.1). Failed authentications are
//!   counted per source address and answered 429 once too many
//!   ([`super::auth_failures`]).
//! - [`MetricsCaller`]: `/metrics`, when `TOLLGATE_METRICS_TOKEN` is set.
//!
//! Tokens are read from `Authorization` by [`crate::secret::bearer`] (the
//! scheme in any case, RFC 9110 §11.1) — as the gateway and the peer routes
//! read theirs — and never logged. The check path (`/v1/check`,
//! forward-auth) has no caller here: its callers are the gateway's business.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tollgate_proto::audit::{AuditActor, AuditContext};
use tollgate_proto::model::Scope;
use tollgate_proto::validate::ADMIN_ACTIONS;

use super::error::ApiError;
use super::{HttpState, Settings};
use crate::app::App;
use crate::gateway::policy::{self, AdminRequest, AdminVerdict, ADMIN_PRINCIPAL};
use crate::secret;
use crate::state::Model;

/// The scope an admin request needs: `write` for the methods that change
/// something (`POST`, `PUT`, `PATCH`, `DELETE`), `read` for the rest (`GET`,
/// `HEAD`, and methods no admin route has, which then get 405 whatever the
/// token's scope).
pub fn required_scope(method: &Method) -> Scope {
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        Scope::Write
    } else {
        Scope::Read
    }
}

/// An admin caller whose token covers this request. Extracting it is the
/// admin guard: `http::router` puts it in front of every admin route as a
/// layer, and a handler may take it as an argument to know the scope.
///
/// Refusals, in the order they are checked:
/// - 429 `too_many_failures` with `Retry-After`: the source address used up
///   its failed authentications (its token is not even looked at);
/// - 401 `unauthorized`, "send one Authorization header…": several (which
///   one would count is ambiguous; not counted);
/// - 401 `unauthorized`, "an admin token is required…": no bearer token
///   (logged, not counted against the source: no guess was made);
/// - 401 `unauthorized`, "the admin token is not valid": neither the
///   bootstrap token nor a stored one (logged and counted);
/// - 403 `forbidden`, "this token has only the check scope…": a proxy's
///   token on any admin route;
/// - 403 `forbidden`, "this admin token may only read": a `read` token on a
///   route that needs `write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    /// The scope this request needed ([`required_scope`]), which the token holds.
    pub scope: Scope,
    /// Who is asking, as the audit trail records it.
    pub actor: AuditActor,
    /// The address of the request's connection (IPv4-mapped as IPv4).
    pub source_ip: std::net::IpAddr,
}

impl AdminCaller {
    /// The token's principal name in policies (`token:tok_…`); `None` for
    /// the bootstrap token, which no policy governs.
    fn principal(&self) -> Option<String> {
        self.actor.token_id.as_ref().map(|id| format!("{ADMIN_PRINCIPAL}{id}"))
    }

    /// Whether admin statements govern this token (some identity policy
    /// names it): then they, not its scopes alone, decide what it may do.
    pub fn governed(&self, model: &Model) -> bool {
        self.principal().is_some_and(|p| {
            let probe = AdminRequest { principal: &p, action: "", resources: &[], source_ip: None };
            policy::evaluate_admin(model, &probe) != AdminVerdict::NotGoverned
        })
    }

    /// Whether this caller may do `action` (`keys:create`) on every one of
    /// `resources` (`api/petstore/prod/key/key_…`), by the admin statements
    /// that name its token (see [`policy::evaluate_admin`]); a token no
    /// statement names, and the bootstrap token, may (their scope was
    /// checked already). A 403 naming the action and resource otherwise.
    pub fn may(&self, model: &Model, action: &str, resources: &[String]) -> Result<(), ApiError> {
        let Some(principal) = self.principal() else { return Ok(()) };
        let request = AdminRequest { principal: &principal, action, resources, source_ip: Some(self.source_ip) };
        match policy::evaluate_admin(model, &request) {
            AdminVerdict::NotGoverned | AdminVerdict::Allow => Ok(()),
            AdminVerdict::Deny => {
                Err(ApiError::forbidden(&format!("a policy denies this token {action} on {}", resources.join(", "))))
            }
            AdminVerdict::ImplicitDeny => {
                Err(ApiError::forbidden(&format!("no policy allows this token {action} on {}", resources.join(", "))))
            }
        }
    }
}

/// The admin action a route needs (`keys:create`, `usage:read`; see
/// `tollgate_proto::validate::ADMIN_ACTIONS`), from its method and route
/// template; `None` for a route that is not an admin route.
pub fn admin_action(method: &Method, route: &str) -> Option<&'static str> {
    let rest = route.strip_prefix("/v1/admin/")?;
    let action = match (method.as_str(), rest) {
        ("POST", "keys/{id}/reroll") => "keys:reroll",
        ("POST", "keys/import") => "keys:create",
        ("GET", "identity-key") => "identity:read",
        ("POST", "identity-key/rotate") => "identity:rotate",
        ("GET", "plans/{id}/usage") => "usage:read",
        ("POST", "plans/{id}/usage/{key_id}") => "usage:update",
        ("GET", "cluster") => "cluster:read",
        ("POST" | "DELETE", r) if r.starts_with("cluster/") => "cluster:update",
        ("GET", "decisions") => "decisions:read",
        ("GET", "audit") => "audit:read",
        ("POST", "snapshot") => "snapshot:create",
        (method, r) => {
            let (kind, item) = match r.split_once('/') {
                Some((kind, "{id}")) => (kind, true),
                Some(_) => return None,
                None => (r, false),
            };
            let verb = match (method, item) {
                ("GET", _) => "read",
                ("POST", false) => "create",
                ("PUT", true) => "update",
                ("DELETE", true) => "delete",
                _ => return None,
            };
            return ADMIN_ACTIONS.iter().copied().find(|a| a.split_once(':') == Some((kind, verb)));
        }
    };
    Some(action)
}

/// The admin guard, a layer in front of every admin route: admits the caller
/// ([`AdminCaller`], or its refusal) and hands it to the route in the
/// request's extensions, where [`Audit`] finds it.
pub async fn admin_guard(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    match AdminCaller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refusal) => refusal,
    }
}

/// Who made an admin write, from where, through which route, and when: what
/// a write proposes with its command ([`Command::audited`](tollgate_proto::Command::audited)).
/// Taken from the caller [`admin_guard`] admitted; a route outside the guard
/// that asks for it is a bug, answered 500.
pub struct Audit(pub AuditContext);

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(caller) = parts.extensions.get::<AdminCaller>() else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an admin write outside the guard",
            ));
        };
        let route = parts.extensions.get::<MatchedPath>().map_or("", |p| p.as_str());
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok(Audit(AuditContext { actor: caller.actor.clone(), request: format!("{} {route}", parts.method), at_ms }))
    }
}

impl<S> FromRequestParts<S> for AdminCaller
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        // Behind the guard: the caller it admitted (authenticated once).
        if let Some(caller) = parts.extensions.get::<AdminCaller>() {
            return Ok(caller.clone());
        }
        let state = HttpState::from_ref(state);
        let ConnectInfo(peer) =
            ConnectInfo::<SocketAddr>::from_request_parts(parts, &state).await.map_err(IntoResponse::into_response)?;
        let route = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
        admit_admin(&state.app, &state.settings, peer, &route, parts).map_err(IntoResponse::into_response)
    }
}

/// A 429 `too_many_failures` with `Retry-After` once `source` has used up
/// its failed authentications (`what`: "admin " or "", for the message).
fn budget_left(
    failures: &super::auth_failures::AuthFailures,
    source: std::net::IpAddr,
    now: std::time::Instant,
    what: &str,
) -> Result<(), ApiError> {
    failures.check(source, now).map_err(|retry| {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many failed {what}authentications from {source}; retry in {retry} s"),
        );
        e.retry_after = Some(retry);
        e
    })
}

fn admit_admin(
    app: &App,
    settings: &Settings,
    peer: SocketAddr,
    route: &str,
    parts: &Parts,
) -> Result<AdminCaller, ApiError> {
    let source = tollgate_proto::canonical::unmapped(peer.ip());
    let now = std::time::Instant::now();
    budget_left(&settings.admin_auth_failures, source, now, "admin ")?;
    if parts.headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        tracing::info!(%source, %route, "admin request with more than one Authorization header");
        return Err(ApiError::unauthorized("send one Authorization header, not several"));
    }
    let Some(token) = secret::bearer(&parts.headers) else {
        tracing::info!(%source, %route, "admin request without a token");
        return Err(ApiError::unauthorized("an admin token is required: Authorization: Bearer <token>"));
    };
    let scope = required_scope(&parts.method);
    if app.bootstrap_token.as_ref().is_some_and(|d| d.matches(token)) {
        let actor = AuditActor { token_id: None, token_name: "bootstrap".into(), source: source.to_string() };
        return Ok(AdminCaller { scope, actor, source_ip: source });
    }
    let published = app.published();
    let Some(stored) = published.model.token_by_digest(&secret::sha256(token)) else {
        let why = "the admin token is not valid";
        tracing::warn!(%source, %route, why, "admin authentication failed");
        settings.admin_auth_failures.fail(source, now);
        return Err(ApiError::unauthorized(why));
    };
    // `write` covers reading too.
    if stored.scopes.contains(&Scope::Write) || stored.scopes.contains(&scope) {
        // Before any body is read: a token whose policies allow this
        // route's action on nothing learns nothing more than a 403.
        let principal = format!("{ADMIN_PRINCIPAL}{}", stored.id);
        if let Some(action) = admin_action(&parts.method, route) {
            let probe = AdminRequest { principal: &principal, action, resources: &[], source_ip: Some(source) };
            match policy::evaluate_admin(&published.model, &probe) {
                AdminVerdict::NotGoverned | AdminVerdict::Allow => {}
                AdminVerdict::Deny => {
                    return Err(ApiError::forbidden(&format!("a policy denies this token {action}")));
                }
                AdminVerdict::ImplicitDeny => {
                    return Err(ApiError::forbidden(&format!("no policy allows this token {action}")));
                }
            }
        }
        let actor = AuditActor {
            token_id: Some(stored.id.clone()),
            token_name: stored.name.clone(),
            source: source.to_string(),
        };
        Ok(AdminCaller { scope, actor, source_ip: source })
    } else {
        if !stored.scopes.contains(&Scope::Read) {
            return Err(ApiError::forbidden("this token has only the check scope: it may not use the admin API"));
        }
        Err(ApiError::forbidden("this admin token may only read"))
    }
}

/// A proxy asking for descriptor rate limits (`POST /v1/ratelimit`): a
/// bearer token [`App::may_check`] accepts (the `check` or `write` scope,
/// or the bootstrap token), as on the wire and gRPC ports. Unlike a check,
/// a descriptor names no API key, so an anonymous caller could spend any
/// client's limits. Failed tokens count against the source address as the
/// admin routes' do (429 past the budget).
pub struct ProxyCaller;

impl<S> FromRequestParts<S> for ProxyCaller
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let state = HttpState::from_ref(state);
        let ConnectInfo(peer) =
            ConnectInfo::<SocketAddr>::from_request_parts(parts, &state).await.map_err(IntoResponse::into_response)?;
        let source = tollgate_proto::canonical::unmapped(peer.ip());
        let now = std::time::Instant::now();
        let failures = &state.settings.admin_auth_failures;
        let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
        let several = matches!((values.next(), values.next()), (Some(_), Some(_)));
        let one = if several { None } else { secret::bearer(&parts.headers) };
        // A stored token is never locked out by others' guesses at its
        // address (see `App::stored_check_token`).
        if one.is_some_and(|t| state.app.stored_check_token(t)) {
            return Ok(ProxyCaller);
        }
        budget_left(failures, source, now, "").map_err(IntoResponse::into_response)?;
        if several {
            return Err(ApiError::unauthorized("send one Authorization header, not several").into_response());
        }
        match one {
            Some(token) if state.app.may_check(token) => Ok(ProxyCaller),
            Some(_) => {
                tracing::warn!(%source, "rate limit request refused: the token is not valid");
                failures.fail(source, now);
                Err(ApiError::unauthorized("the token is not valid for the check scope").into_response())
            }
            None => {
                Err(ApiError::unauthorized("a token of the check scope is required: Authorization: Bearer <token>")
                    .into_response())
            }
        }
    }
}

/// A caller of `/metrics`: anyone when no metrics token is configured, else
/// one presenting it as a bearer token. Refused with 401, a
/// `WWW-Authenticate: Bearer` challenge and a plain-text body (Prometheus
/// shows it as the scrape error).
pub struct MetricsCaller;

impl<S> FromRequestParts<S> for MetricsCaller
where
    S: Send + Sync,
    Arc<Settings>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let settings = Arc::<Settings>::from_ref(state);
        match &settings.metrics_token {
            Some(expected) if !expected.presented_in(&parts.headers) => {
                let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
                Err((StatusCode::UNAUTHORIZED, challenge, "metrics need the metrics token: Authorization: Bearer ...")
                    .into_response())
            }
            _ => Ok(MetricsCaller),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::openapi::{routes, Access};

    #[test]
    fn every_admin_route_needs_one_admin_action_and_every_action_has_a_route() {
        let mut used = std::collections::BTreeSet::new();
        for route in routes().into_iter().filter(|r| r.access == Access::Admin) {
            let method = Method::from_bytes(route.method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
            let action = admin_action(&method, &route.path);
            assert!(action.is_some(), "{} {} has no admin action", route.method, route.path);
            used.extend(action);
        }
        let unused: Vec<&&str> = ADMIN_ACTIONS.iter().filter(|a| !used.contains(*a)).collect();
        assert!(unused.is_empty(), "admin actions no route needs: {unused:?}");
        assert_eq!(admin_action(&Method::GET, "/v1/check"), None);
        assert_eq!(admin_action(&Method::PATCH, "/v1/admin/keys/{id}"), None);
    }
}

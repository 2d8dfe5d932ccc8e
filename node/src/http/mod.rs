//! The HTTP listener: admin API, health, metrics, the OpenAPI document and
//! the web console (`/console`, static files: see [`console`]).
//!
//! Every admin route requires a bearer admin token: the bootstrap token from
//! `TOLLGATE_ADMIN_TOKEN`, or one created through `/v1/admin/tokens`. Tokens
//! with the `read` scope may only GET. Who may call what is decided in
//! [`auth`], one extractor per kind of caller; the request parts handlers
//! take (JSON bodies, query strings, request ids) are read in [`extract`],
//! each refusal a 400 naming the field. Request bodies are capped and every
//! request has a time limit. Nothing here logs a header or a body.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod auth_failures;
pub mod check;
pub mod cluster;
pub mod console;
pub mod decisions;
pub mod error;
pub mod extract;
pub mod forward_auth;
pub mod forwarded;
pub mod openapi;
pub mod ops;
pub mod ratelimit;
pub mod usage;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::app::App;
use crate::config::NodeConfig;
use crate::secret::{self, Digest};
use auth_failures::AuthFailures;
use error::ApiError;
use forwarded::TrustedProxies;

/// Largest admin request body.
pub const MAX_BODY: usize = 1 << 20;
/// Longest time one HTTP request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What only the HTTP listener needs, beside the node's handles.
pub struct Settings {
    /// Proxies whose entries in `X-Forwarded-For` are skipped when
    /// forward-auth looks for the client address (`--trusted-proxies`).
    pub trusted_proxies: TrustedProxies,
    /// Digest of the token `/metrics` requires (`TOLLGATE_METRICS_TOKEN`).
    pub metrics_token: Option<Digest>,
    /// `/metrics` is served on the HTTP listener (no `--metrics-addr`).
    pub metrics_on_http: bool,
    /// Failed authentications by source address: the admin API's, and the
    /// gRPC listener's (one budget, so a token cannot be guessed through
    /// the port that does not count).
    pub admin_auth_failures: Arc<AuthFailures>,
}

impl Settings {
    /// The listener's settings in a node's configuration.
    pub fn of(config: &NodeConfig) -> Self {
        Settings {
            trusted_proxies: TrustedProxies(config.trust.trusted_proxies.clone()),
            metrics_token: config.metrics.token.as_deref().map(Digest::of),
            metrics_on_http: config.metrics.addr.is_none(),
            admin_auth_failures: Arc::new(AuthFailures::per_minute(config.admin.failures_per_minute)),
        }
    }
}

/// The HTTP listener's state: a handler takes `State<Arc<App>>`, or
/// `State<Arc<Settings>>` for what is the listener's own.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<App>,
    pub settings: Arc<Settings>,
}

impl FromRef<HttpState> for Arc<App> {
    fn from_ref(state: &HttpState) -> Self {
        state.app.clone()
    }
}

impl FromRef<HttpState> for Arc<Settings> {
    fn from_ref(state: &HttpState) -> Self {
        state.settings.clone()
    }
}

pub fn router(state: HttpState) -> Router {
    let mut admin = Router::new();
    admin = admin::routes::<admin::Apis>(admin);
    admin = admin::routes::<admin::Plans>(admin);
    admin = admin::routes::<admin::Keys>(admin);
    admin = admin::routes::<admin::Policies>(admin);
    admin = admin::routes::<admin::Authorizers>(admin);
    admin = admin::routes::<admin::Tokens>(admin);
    admin = admin::routes::<admin::RateLimits>(admin);
    admin = admin.route("/v1/admin/keys/{id}/reroll", axum::routing::post(admin::reroll));
    admin = admin.route("/v1/admin/keys/import", axum::routing::post(admin::import_keys));
    admin = admin.route("/v1/admin/identity-key", axum::routing::get(admin::identity_key));
    admin = admin.route("/v1/admin/plans/{id}/usage", axum::routing::get(usage::get_usage));
    admin = admin.route("/v1/admin/plans/{id}/usage/{key_id}", axum::routing::post(usage::update_usage));
    admin = admin.route("/v1/admin/identity-key/rotate", axum::routing::post(admin::rotate_identity_key));
    admin = admin.route("/v1/admin/audit", axum::routing::get(audit::list));
    admin = admin.route("/v1/admin/decisions", axum::routing::get(decisions::decisions));
    let admin = cluster::routes(admin)
        .route_layer(middleware::from_fn(scope_idempotency_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::admin_guard))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_admin_request))
        .route_layer(middleware::map_response(no_store));
    Router::new()
        .merge(admin)
        .merge(ops::routes(state.settings.metrics_on_http))
        .merge(check::routes())
        .merge(ratelimit::routes())
        .merge(forward_auth::routes())
        .merge(console::routes())
        .fallback(|| async { ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Refuses a body announced too large before reading any of it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(middleware::from_fn(json_too_large))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .with_state(state)
}

/// An `Idempotency-Key` names one request: the same key sent with another
/// method or path is another request, never answered with the first one's
/// result (a key reused from a create once made a delete of a missing id
/// answer 204, and a create answer a rotation's result with a 500); and the
/// same key sent to the same route with another body is refused (422), as
/// Stripe does, never answered with the first body's result. The request id
/// is made here, once for every admin write, from the SHA-256 of the
/// method, path and key and that of the body
/// ([`crate::state::requests::idempotent_id`]). A malformed key is left for the handler to refuse.
async fn scope_idempotency_key(request: Request, next: Next) -> Response {
    let key = request.headers().get("idempotency-key").and_then(|v| v.to_str().ok());
    let Some(key) = key.filter(|k| !k.is_empty() && k.len() <= 255) else {
        return next.run(request).await;
    };
    let scope = secret::sha256(&format!("{} {} {key}", request.method(), request.uri().path()));
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(),
    };
    let body_digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let id = crate::state::requests::idempotent_id(&scope, &body_digest);
    let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
    request.extensions_mut().insert(extract::ScopedRequestId(id));
    next.run(request).await
}

/// The 413 of a body over [`MAX_BODY`], in the API's error shape.
fn too_large() -> Response {
    use axum::response::IntoResponse;
    error::ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is over {} KiB", MAX_BODY / 1024),
    )
    .into_response()
}

/// Gives a 413 from the body limit layers the API's error shape (they answer
/// in plain text).
async fn json_too_large(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_none_or(|v| !v.as_bytes().starts_with(b"application/json"));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && plain {
        return too_large();
    }
    response
}

/// Counts admin requests by route template (bounded), method and status.
async fn count_admin_request(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = request.method().clone();
    let response = next.run(request).await;
    app.metrics.admin_requests.with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()]).inc();
    response
}

/// Admin answers carry objects and, once, secrets: no cache (a browser's,
/// a proxy's) may keep them (RFC 9111 §5.2.2.5).
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response
        .headers_mut()
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

//! The check endpoints: `POST /v1/check` (JSON in, decision out) and
//! forward-auth for proxies that ask with the original request's headers:
//! nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth` and
//! Envoy `ext_authz` (HTTP mode). Both run the one pipeline in
//! [`crate::gateway`].
//!
//! Forward-auth reads the original method, URI and client address from the
//! usual headers (`X-Forwarded-Method`/`-Uri`/`-For` from Caddy and Traefik,
//! `X-Original-Method`/`-URI` and `X-Real-IP` from an nginx config, or — for
//! Envoy, which sends the original request itself — this request's method and
//! the path after `/v1/forward-auth/{api}/{stage}`). It answers 200 to allow,
//! with identity and rate-limit headers the proxy can copy, and the decision's
//! status (401/403/404/429, `Retry-After` on 429) to deny. nginx treats any
//! status but 2xx, 401 and 403 as an error, so `?mode=nginx` answers every
//! other denial with 403 and the real status in `X-Tollgate-Status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use tollgate_proto::check::{CheckRequest, Decision};

use super::admin::parse_body;
use super::error::ApiError;
use crate::app::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/check", post(check))
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .route("/v1/forward-auth/{api}/{stage}", any(forward_auth))
        .route("/v1/forward-auth/{api}/{stage}/{*rest}", any(forward_auth))
}

async fn decide(app: &App, req: &CheckRequest) -> Result<Decision, ApiError> {
    Ok(app.decide(req).await?)
}

/// The public keys backends verify `X-Tollgate-Identity` with.
async fn jwks(State(app): State<Arc<App>>) -> Response {
    let version = app.published().model.identity.version;
    ([(axum::http::header::CACHE_CONTROL, "max-age=60")], Json(app.gateway.identity.jwks(version))).into_response()
}

async fn check(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Decision>, ApiError> {
    let req: CheckRequest = parse_body(&body)?;
    Ok(Json(decide(&app, &req).await?))
}

/// Both forward-auth routes: `/{api}/{stage}` and `/{api}/{stage}/{*rest}`
/// (Envoy sends the original path after the prefix).
async fn forward_auth(
    State(app): State<Arc<App>>,
    Path(mut params): Path<BTreeMap<String, String>>,
    Query(options): Query<BTreeMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let api = params.remove("api").unwrap_or_default();
    let stage = params.remove("stage").unwrap_or_default();
    forward(app, api, stage, params.remove("rest"), options, peer, request).await
}

fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok())).map(str::trim).filter(|v| !v.is_empty())
}

/// Builds the check request a forward-auth call stands for.
fn original_request(
    api: String,
    stage: String,
    rest: Option<String>,
    peer: SocketAddr,
    request: &Request,
) -> Result<CheckRequest, ApiError> {
    let headers = request.headers();
    let method = header(headers, &["x-forwarded-method", "x-original-method"])
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| request.method().as_str().to_string());
    let uri = match (header(headers, &["x-forwarded-uri", "x-original-uri"]), rest) {
        (Some(uri), _) => uri.to_string(),
        (None, Some(_)) => {
            // The path as Envoy sent it, not axum's percent-decoded `rest`: a
            // second decoding would turn `..%2F` into a dot segment the backend
            // never sees. Ids are plain ASCII, so the raw prefix has 5 slashes.
            let rest = request.uri().path().splitn(6, '/').nth(5).unwrap_or_default();
            match request.uri().query() {
                Some(q) => format!("/{rest}?{q}"),
                None => format!("/{rest}"),
            }
        }
        (None, None) => "/".to_string(),
    };
    let (path, query) = uri.split_once('?').unwrap_or((uri.as_str(), ""));
    let source_ip = header(headers, &["x-forwarded-for"])
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .or_else(|| header(headers, &["x-real-ip", "x-envoy-external-address"]))
        .map(str::to_string)
        .unwrap_or_else(|| peer.ip().to_string());
    let mut original_headers = BTreeMap::new();
    for (name, value) in headers {
        let value = value
            .to_str()
            .map_err(|_| ApiError::field(format!("headers.{name}"), "header values must be visible ASCII"))?;
        original_headers.insert(name.as_str().to_string(), value.to_string());
    }
    Ok(CheckRequest {
        api,
        stage,
        method,
        path: path.to_string(),
        source_ip: Some(source_ip),
        query: form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
        proxy_id: header(headers, &["x-tollgate-proxy-id"]).map(str::to_string),
        client_cert_subject: header(headers, &["x-client-cert-subject", "x-ssl-client-s-dn"]).map(str::to_string),
        body_size: header(headers, &["content-length"]).and_then(|v| v.parse().ok()),
        headers: original_headers,
    })
}

async fn forward(
    app: Arc<App>,
    api: String,
    stage: String,
    rest: Option<String>,
    options: BTreeMap<String, String>,
    peer: SocketAddr,
    request: Request,
) -> Response {
    let nginx = options.get("mode").is_some_and(|m| m == "nginx");
    let outcome = match original_request(api, stage, rest, peer, &request) {
        Ok(req) => decide(&app, &req).await,
        Err(e) => Err(e),
    };
    let decision = match outcome {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let mut status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
    // nginx: anything but allow, 401 and 403 (a preflight's 204 included) goes
    // through the 403 path, where the config restores X-Tollgate-Status.
    if nginx && !decision.allowed && !matches!(decision.status, 401 | 403) {
        status = StatusCode::FORBIDDEN;
    }
    let mut response = if decision.allowed {
        StatusCode::OK.into_response()
    } else {
        let body = serde_json::json!({"message": decision.message, "reason": decision.reason});
        (status, Json(body)).into_response()
    };
    let out = response.headers_mut();
    let mut put = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            out.append(n, v);
        }
    };
    for (name, value) in decision.response_headers.iter().chain(&decision.upstream_headers) {
        put(name, value);
    }
    put("x-tollgate-reason", decision.reason.as_str());
    put("x-tollgate-status", &decision.status.to_string());
    if let Some(p) = &decision.principal {
        if let Some(k) = &p.key_id {
            put("x-tollgate-key-id", k);
        }
        if let Some(plan) = &p.plan_id {
            put("x-tollgate-plan-id", plan);
        }
        if let Some(c) = &p.customer_id {
            put("x-tollgate-customer-id", c);
        }
    }
    response
}

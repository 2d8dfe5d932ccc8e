//! `POST /v1/check` (JSON in, decision out) and the JWKS that verifies the
//! signed identity. Forward-auth, the same pipeline asked by proxies, is in
//! [`super::forward_auth`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tollgate_proto::check::{CheckRequest, Decision};

use super::error::ApiError;
use super::extract::JsonBody;
use super::HttpState;
use crate::app::App;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/check", post(check)).route("/.well-known/jwks.json", axum::routing::get(jwks))
}

async fn decide(app: &App, req: &CheckRequest) -> Result<Decision, ApiError> {
    Ok(app.decide(req).await?)
}

/// The public keys backends verify `X-Tollgate-Identity` with.
async fn jwks(State(app): State<Arc<App>>) -> Response {
    let version = app.published().model.identity.version;
    ([(axum::http::header::CACHE_CONTROL, "max-age=60")], Json(app.gateway.identity.jwks(version))).into_response()
}

async fn check(State(app): State<Arc<App>>, JsonBody(req): JsonBody<CheckRequest>) -> Result<Json<Decision>, ApiError> {
    Ok(Json(decide(&app, &req).await?))
}

//! `POST /v1/ratelimit`: the descriptor rate limit check
//! ([`crate::gateway::Gateway::should_rate_limit`]) in JSON, for callers
//! that are not Envoy (the role of Limitador's HTTP `check_and_report`).
//! The same request and answer as Envoy's gRPC `ShouldRateLimit`; a caller
//! authenticates as a proxy does ([`super::auth::ProxyCaller`]).
//!
//! Answers 200 with the [`RateLimitResponse`] whether or not the request is
//! over its limits (the caller acts on `overall_code`; with
//! `response_headers`, the `X-RateLimit-*` headers are also set on this
//! response); 400 naming the field for bad input; 503 with `Retry-After`
//! when a ledger count could not be had.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tollgate_proto::ratelimit::RateLimitRequest;

use super::auth::ProxyCaller;
use super::error::ApiError;
use super::extract::JsonBody;
use super::HttpState;
use crate::app::App;
use crate::gateway::ratelimit::RateLimitError;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/ratelimit", post(should_rate_limit))
}

async fn should_rate_limit(
    _caller: ProxyCaller,
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<RateLimitRequest>,
) -> Result<Response, ApiError> {
    match app.gateway.should_rate_limit(&req).await {
        Ok(answer) => {
            let mut response = Json(&answer).into_response();
            for (name, value) in &answer.response_headers {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value)) {
                    response.headers_mut().insert(name, value);
                }
            }
            Ok(response)
        }
        Err(RateLimitError::Invalid(e)) => Err(e.into()),
        Err(e @ RateLimitError::Unavailable(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))
        }
    }
}

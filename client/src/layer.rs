//! A tower [`Layer`](tower_layer::Layer) that checks every request of an HTTP
//! service (axum, hyper, tonic's HTTP) with Tollgate and answers denials
//! itself: 401/403/404/429 with the decision's headers (`Retry-After`,
//! `RateLimit-*`, CORS) and a small JSON body, 204 for a CORS preflight, 503
//! when no node answers and the client fails closed. On allow, the request
//! goes on with the decision's upstream headers (`X-Tollgate-Identity`,
//! `X-Tollgate-Principal`) and the response gets its headers.
//!
//! The client address is taken from a [`std::net::SocketAddr`] request
//! extension if the server put one there, else from `X-Forwarded-For`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::{CheckRequest, Client, Decision, Error};

/// Checks requests for one API stage.
#[derive(Clone)]
pub struct TollgateLayer {
    client: Client,
    api: Arc<str>,
    stage: Arc<str>,
}

impl TollgateLayer {
    pub fn new(client: Client, api: &str, stage: &str) -> Self {
        TollgateLayer { client, api: api.into(), stage: stage.into() }
    }
}

impl<S> tower_layer::Layer<S> for TollgateLayer {
    type Service = TollgateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TollgateService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct TollgateService<S> {
    inner: S,
    layer: TollgateLayer,
}

fn check_request<B>(layer: &TollgateLayer, req: &Request<B>) -> CheckRequest {
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string());
    let source_ip = req.extensions().get::<SocketAddr>().map(|a| a.ip().to_string()).or(forwarded);
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    CheckRequest {
        api: layer.api.to_string(),
        stage: layer.stage.to_string(),
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        source_ip,
        headers,
        query,
        body_size: req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()),
        ..Default::default()
    }
}

fn put(headers: &mut http::HeaderMap, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            headers.append(n, v);
        }
    }
}

fn answer<B: From<String>>(status: StatusCode, body: String, headers: &[(String, String)]) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    put(response.headers_mut(), headers);
    response
}

fn denial<B: From<String>>(decision: &Decision) -> Response<B> {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
    let body = if status == StatusCode::NO_CONTENT {
        String::new()
    } else {
        serde_json::json!({"message": decision.message, "reason": decision.reason.as_str()}).to_string()
    };
    answer(status, body, &decision.response_headers)
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for TollgateService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = check_request(&self.layer, &req);
        let client = self.layer.client.clone();
        Box::pin(async move {
            match client.check(check).await {
                Ok(decision) if decision.allowed => {
                    put(req.headers_mut(), &decision.upstream_headers);
                    let mut response = inner.call(req).await?;
                    put(response.headers_mut(), &decision.response_headers);
                    Ok(response)
                }
                Ok(decision) => Ok(denial(&decision)),
                Err(Error::Refused { field, message }) => {
                    let body = serde_json::json!({"message": format!("{field}: {message}")}).to_string();
                    Ok(answer(StatusCode::BAD_REQUEST, body, &[]))
                }
                Err(Error::Unavailable(_)) => Ok(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"message\":\"the gateway could not decide\"}".into(),
                    &[("retry-after".into(), "1".into())],
                )),
            }
        })
    }
}

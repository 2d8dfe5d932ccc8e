//! A tower [`Layer`](tower_layer::Layer) that checks every request of an HTTP
//! service (axum, hyper, tonic's HTTP) with Tollgate and answers denials
//! itself: 401/403/404/429 with the decision's headers (`Retry-After`,
//! `RateLimit-*`, CORS) and a small JSON body, 204 for a CORS preflight, 503
//! when no node answers and the client fails closed. On allow, the request
//! goes on with the decision's upstream headers (`X-Tollgate-Identity`,
//! `X-Tollgate-Principal`) and the response gets its headers.
//!
//! The request is decided on facts a client cannot forge:
//! - the client address only from a [`std::net::SocketAddr`] request
//!   extension the server put there (with axum: copy `ConnectInfo` into the
//!   extensions, as `examples/edge_proxy.rs` does); never from
//!   `X-Forwarded-For`, which the client writes when nothing is in front of
//!   this proxy. Without one the check has no address, and an API whose rules
//!   need it refuses the request;
//! - query parameters percent-decoded (`application/x-www-form-urlencoded`),
//!   a name given twice with its values joined by `,`; header lines of one
//!   name joined by `, ` (RFC 9110 §5.3), so a rule sees every value;
//! - a client's own `X-Tollgate-*` headers are removed before the request
//!   goes upstream, allowed or not: only the check's may reach the backend.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

use tollgate_proto::check::{add_header_line, add_query_param, header_text};

use crate::{CheckRequest, Client, Decision, Error};

/// Checks requests for one API stage. Cheap to clone (clones share the
/// client's connections).
#[derive(Clone)]
pub struct TollgateLayer {
    /// The client that asks the cluster.
    client: Client,
    /// The API id every request is checked against (`CheckRequest::api`).
    api: Arc<str>,
    /// The stage of that API (`CheckRequest::stage`), such as `prod`.
    stage: Arc<str>,
}

impl TollgateLayer {
    /// A layer checking every request as one of `api`'s `stage` (the ids an
    /// operator gave them in the admin API) through `client`.
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

/// The service [`TollgateLayer`] wraps around `S`: checks each request,
/// then calls `S` with it if allowed, else answers it itself (see the module
/// docs for each answer). Its errors are `S`'s: a check that fails is an
/// HTTP answer (400 or 503), never an error.
#[derive(Clone)]
pub struct TollgateService<S> {
    /// The wrapped service, called only for allowed requests.
    inner: S,
    /// The client, API and stage to check with.
    layer: TollgateLayer,
}

fn check_request<B>(layer: &TollgateLayer, req: &Request<B>) -> CheckRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        add_header_line(&mut headers, name.as_str(), header_text(value.as_bytes()));
    }
    let source_ip = req.extensions().get::<SocketAddr>().map(|a| a.ip().to_string());
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        add_query_param(&mut query, name.into_owned(), value.into_owned());
    }
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
        // Only the check's identity headers may reach the backend.
        let forged: Vec<HeaderName> =
            req.headers().keys().filter(|n| n.as_str().starts_with("x-tollgate-")).cloned().collect();
        for name in forged {
            req.headers_mut().remove(name);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> TollgateLayer {
        TollgateLayer::new(Client::new(crate::ClientConfig::new(["127.0.0.1:1"], "t")), "a", "s")
    }

    #[tokio::test]
    async fn facts_come_from_the_connection_and_every_value_is_seen() {
        let req = Request::builder()
            .uri("/p?q=union&q=safe&k=%75nion+x&flag")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-evil", "bad")
            .header("x-evil", "ok")
            .header("x-note", HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"))
            .body(())
            .expect("request");
        let check = check_request(&layer(), &req);
        assert_eq!(check.source_ip, None, "X-Forwarded-For is the client's own word here");
        assert_eq!(check.query.get("q").map(String::as_str), Some("union,safe"));
        assert_eq!(check.query.get("k").map(String::as_str), Some("union x"));
        assert_eq!(check.query.get("flag").map(String::as_str), Some(""));
        assert_eq!(check.headers.get("x-evil").map(String::as_str), Some("bad, ok"));
        assert_eq!(check.headers.get("x-note").map(String::as_str), Some("caf\u{e9}"));

        let mut req = Request::builder().uri("/p").body(()).expect("request");
        req.extensions_mut().insert(SocketAddr::from(([198, 51, 100, 7], 4000)));
        assert_eq!(check_request(&layer(), &req).source_ip.as_deref(), Some("198.51.100.7"));
    }
}

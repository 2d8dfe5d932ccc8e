//! Forward-auth: a proxy asks about the request it is holding by forwarding
//! its headers (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth`, Envoy `ext_authz` in HTTP mode). The answer is 200 to
//! allow, with identity and rate-limit headers the proxy can copy, or the
//! decision's status (401/403/404/429/503, `Retry-After` on 429) to deny.
//!
//! # Which facts, from where
//!
//! The request a proxy forwards carries the client's own headers next to the
//! ones the proxy sets, so a fact is read only from the one header the named
//! proxy sets (and its shipped configuration in `deploy/` overwrites), never
//! from a list of candidates a client could also write:
//!
//! | mode | route | method | path and query | client address |
//! |---|---|---|---|---|
//! | `nginx` | `/{api}/{stage}?mode=nginx` | `X-Original-Method` | `X-Original-URI` | `X-Forwarded-For` |
//! | `caddy`, `traefik` | `/{api}/{stage}?mode=caddy` | `X-Forwarded-Method` | `X-Forwarded-Uri` | `X-Forwarded-For` |
//! | `envoy` | `/{api}/{stage}/{path…}` | this request's | after the prefix | `X-Forwarded-For` |
//!
//! The Envoy form never reads `mode` from the query: that query is the
//! client's. The client address is the first `X-Forwarded-For` entry from the
//! right that is not one of `--trusted-proxies` (see [`super::forwarded`]);
//! with `&address=forwarded` in the header form, RFC 7239 `Forwarded` is read
//! instead (and `X-Forwarded-For` never).
//!
//! A request whose other spellings of a fact disagree with the mode's header
//! (`X-Forwarded-Uri` in nginx mode, `X-Original-URL`; method overrides are
//! the gateway's own rule) is refused with 400: it was either sent by a client trying to be
//! decided on one request and served another, or a proxy configured to pass
//! such headers on, which the operator must hear about.
//!
//! The rules after the facts are read ([`check_request`]) and the headers a
//! decision is answered with ([`decision_headers`]) are shared with Envoy's
//! ext_authz over gRPC (the `grpc` listener), so a request decides the same
//! whichever way Envoy asks.
//!
//! nginx treats any status of an auth subrequest but 2xx, 401 and 403 as an
//! error, so in nginx mode every other answer (404, 429, 503, a 400 for a
//! malformed request, a preflight's 204) is sent as 403 with the real status
//! in `X-Tollgate-Status`, which the shipped configuration restores.

use std::collections::BTreeMap;

use axum::extract::{Path, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use tollgate_proto::check::{CheckRequest, Decision};

use tollgate_proto::check::{add_header_line, add_query_param, header_text};

use super::error::ApiError;
use super::forwarded::{client_address, split_unquoted, ChainError, ChainHeader, TrustedProxies};
use super::HttpState;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/forward-auth/{api}/{stage}", any(by_headers))
        .route("/v1/forward-auth/{api}/{stage}/{*rest}", any(envoy))
        .route("/v1/forward-auth/{api}/{stage}/", any(envoy_root))
}

/// The proxy that asks, which says where each fact is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Nginx,
    Caddy,
    Traefik,
    Envoy,
}

impl ProxyMode {
    /// The `mode` query parameter of the header form (Envoy has its own route).
    fn parse(text: Option<&str>) -> Result<ProxyMode, ApiError> {
        match text {
            Some("nginx") => Ok(ProxyMode::Nginx),
            Some("caddy") => Ok(ProxyMode::Caddy),
            Some("traefik") => Ok(ProxyMode::Traefik),
            _ => Err(ApiError::field(
                "mode",
                "name the proxy that asks: ?mode=nginx, ?mode=caddy or ?mode=traefik (Envoy uses the path prefix \
                 form /v1/forward-auth/API/STAGE/...)",
            )),
        }
    }

    /// Where the original method and URI are read from (`None`: this request's own).
    fn sources(self) -> Option<(&'static str, &'static str)> {
        match self {
            ProxyMode::Nginx => Some(("x-original-method", "x-original-uri")),
            ProxyMode::Caddy | ProxyMode::Traefik => Some(("x-forwarded-method", "x-forwarded-uri")),
            ProxyMode::Envoy => None,
        }
    }
}

/// The proxies' spellings of the method. (Method-override headers and
/// `_method`, which frameworks honour, are the gateway's rule for every way
/// a check arrives: see `gateway::validate`.)
const METHOD_SPELLINGS: &[&str] = &["x-original-method", "x-forwarded-method"];
/// Other spellings of the path that some proxy or framework honours.
const URI_SPELLINGS: &[&str] = &["x-original-uri", "x-forwarded-uri", "x-original-url", "x-rewrite-url"];

async fn by_headers(
    State(http): State<HttpState>,
    Path((api, stage)): Path<(String, String)>,
    request: Request,
) -> Response {
    // This query is the operator's (fixed in the proxy's configuration).
    let (parts, _) = request.into_parts();
    let param = |name: &str| {
        parts
            .uri
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()))
    };
    let (mode, address_param) = (ProxyMode::parse(param("mode").as_deref()), param("address"));
    let address = match address_param.as_deref() {
        None | Some("x-forwarded-for") => Ok(ChainHeader::XForwardedFor),
        Some("forwarded") => Ok(ChainHeader::Forwarded),
        Some(_) => Err(ApiError::field("address", "must be x-forwarded-for (the default) or forwarded")),
    };
    let named_mode = mode.as_ref().ok().copied();
    let outcome = match (mode, address) {
        (Ok(mode), Ok(address)) => ask(&http, mode, address, api, stage, parts).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    respond(outcome, named_mode)
}

async fn envoy(State(http): State<HttpState>, params: RawPathParams, request: Request) -> Response {
    // Read raw: axum's `Path` would decode the tail, and answer a tail that
    // is not UTF-8 (`%FF`) itself, in plain text. The tail is not used (see
    // `original_request`): the check's path rule refuses such a path with
    // the API's error, as every other listener does. An escaped API or
    // stage name is no API's name.
    let param = |name: &str| params.iter().find(|(n, _)| *n == name).map_or(String::new(), |(_, v)| v.to_string());
    let (api, stage) = (param("api"), param("stage"));
    envoy_asks(&http, api, stage, request).await
}

/// Envoy asking about `/` (the prefix and a bare slash).
async fn envoy_root(
    State(http): State<HttpState>,
    Path((api, stage)): Path<(String, String)>,
    request: Request,
) -> Response {
    envoy_asks(&http, api, stage, request).await
}

async fn envoy_asks(http: &HttpState, api: String, stage: String, request: Request) -> Response {
    let parts = request.into_parts().0;
    let outcome = ask(http, ProxyMode::Envoy, ChainHeader::XForwardedFor, api, stage, parts).await;
    respond(outcome, Some(ProxyMode::Envoy))
}

async fn ask(
    http: &HttpState,
    mode: ProxyMode,
    address: ChainHeader,
    api: String,
    stage: String,
    request: Parts,
) -> Result<Decision, ApiError> {
    let check = original_request(&http.settings.trusted_proxies, mode, address, api, stage, &request)?;
    Ok(http.app.decide(&check).await?)
}

/// One header's value, trimmed; `None` when absent or empty. Several lines of
/// a field that must be single are refused: which one a proxy meant is unknown.
fn single<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::field(format!("headers.{name}"), "must appear once"));
    }
    let text = first.to_str().map_err(|_| ApiError::field(format!("headers.{name}"), "must be visible ASCII"))?;
    Ok(Some(text.trim()).filter(|t| !t.is_empty()))
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str, mode: ProxyMode) -> Result<&'a str, ApiError> {
    single(headers, name)?.ok_or_else(|| {
        ApiError::field(
            format!("headers.{name}"),
            format!("the {mode:?} mode reads it from the proxy; set it in the proxy's configuration (deploy/)"),
        )
    })
}

/// Refuses the request if any other spelling of a fact names another value.
fn agree(headers: &HeaderMap, spellings: &[&'static str], used: &str, value: &str) -> Result<(), ApiError> {
    for name in spellings.iter().filter(|n| **n != used) {
        for other in headers.get_all(*name) {
            let same = other.to_str().is_ok_and(|o| o.trim() == value || o.trim().is_empty());
            if !same {
                return Err(ApiError::field(
                    format!("headers.{name}"),
                    format!("disagrees with the {used} the proxy set; requests are decided on one spelling only"),
                ));
            }
        }
    }
    Ok(())
}

/// Builds the check request a forward-auth call stands for.
fn original_request(
    trusted: &TrustedProxies,
    mode: ProxyMode,
    address: ChainHeader,
    api: String,
    stage: String,
    request: &Parts,
) -> Result<CheckRequest, ApiError> {
    let headers = &request.headers;
    let facts = match mode.sources() {
        Some((method_header, uri_header)) => ProxiedFacts {
            method: required(headers, method_header, mode)?.to_ascii_uppercase(),
            uri: required(headers, uri_header, mode)?.to_string(),
            method_source: method_header,
            uri_source: uri_header,
        },
        None => {
            // The path as Envoy sent it, not axum's percent-decoded `rest`: a
            // second decoding would turn `..%2F` into a dot segment the
            // upstream never sees. Ids hold no `/`, so the raw prefix
            // `/v1/forward-auth/API/STAGE` has five slashes.
            let rest = request.uri.path().splitn(6, '/').nth(5).unwrap_or_default();
            let uri = match request.uri.query() {
                Some(q) => format!("/{rest}?{q}"),
                None => format!("/{rest}"),
            };
            ProxiedFacts {
                method: request.method.as_str().to_string(),
                uri,
                method_source: ":method",
                uri_source: ":path",
            }
        }
    };
    let source_ip = || {
        client_address(headers, address, trusted).map_err(|e| match &e {
            ChainError::Missing { header } | ChainError::Malformed { header, .. } => {
                ApiError::field(format!("headers.{header}"), e.to_string())
            }
        })
    };
    let client_cert = match mode {
        ProxyMode::Envoy => ClientCertSource::Xfcc,
        _ => ClientCertSource::SubjectHeader,
    };
    check_request(api, stage, facts, source_ip, headers, client_cert)
}

/// The method and URI a proxy reported, and where each was read from (named
/// in errors, and skipped when looking for disagreeing spellings).
pub(crate) struct ProxiedFacts {
    /// The method, in capitals.
    pub method: String,
    /// The origin-form request target: path and query, as the client sent them.
    pub uri: String,
    /// The header (or field) the method was read from.
    pub method_source: &'static str,
    /// The header (or field) the URI was read from.
    pub uri_source: &'static str,
}

/// Where the subject of the client's certificate is read from, if the
/// proxy terminated mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientCertSource {
    /// Envoy's `x-forwarded-client-cert`, its first element's `Subject`.
    Xfcc,
    /// `x-client-cert-subject`, set by the proxy's configuration.
    SubjectHeader,
}

/// The rules every proxied encoding of a check shares (forward-auth and
/// Envoy's gRPC ext_authz): the reported method and URI must agree with
/// every other spelling of them in `headers` (else 400 naming the
/// disagreeing header), the URI must be origin-form, the query is parsed
/// (a repeated name's values joined by `,`), each header's lines are joined
/// into one value, and the proxy id, client certificate subject and body
/// size are read from the one header each. `source_ip` is asked only once
/// the spellings agree, so a request that is wrong twice names the same
/// field whichever encoding it came in.
///
/// Errors: [`ApiError::field`] naming `headers.NAME` or the facts' sources.
pub(crate) fn check_request(
    api: String,
    stage: String,
    facts: ProxiedFacts,
    source_ip: impl FnOnce() -> Result<std::net::IpAddr, ApiError>,
    headers: &HeaderMap,
    client_cert: ClientCertSource,
) -> Result<CheckRequest, ApiError> {
    let ProxiedFacts { method, uri, method_source, uri_source } = facts;
    agree(headers, METHOD_SPELLINGS, method_source, &method)?;
    agree(headers, URI_SPELLINGS, uri_source, &uri)?;
    if !uri.starts_with('/') {
        return Err(ApiError::field(format!("headers.{uri_source}"), "must be an origin-form URI starting with '/'"));
    }
    let (path, query) = uri.split_once('?').unwrap_or((uri.as_str(), ""));
    let source_ip = source_ip()?;
    // Every line of a header, as one value (RFC 9110 §5.3): a rule sees all
    // of them, and a singleton such as Authorization given twice decides
    // as the invalid value it is, whichever line the upstream would read.
    let mut original_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        add_header_line(&mut original_headers, name.as_str(), header_text(value.as_bytes()));
    }
    // A parameter given twice: its values joined by `,`, so a rule matching
    // either value sees it (frameworks differ on which one they read).
    let mut query_params: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        add_query_param(&mut query_params, name.into_owned(), value.into_owned());
    }
    let client_cert_subject = match client_cert {
        ClientCertSource::Xfcc => single(headers, "x-forwarded-client-cert")?.and_then(xfcc_subject),
        ClientCertSource::SubjectHeader => single(headers, "x-client-cert-subject")?.map(str::to_string),
    };
    Ok(CheckRequest {
        api,
        stage,
        method,
        path: path.to_string(),
        source_ip: Some(source_ip.to_string()),
        query: query_params,
        proxy_id: single(headers, "x-tollgate-proxy-id")?.map(str::to_string),
        client_cert_subject,
        body_size: match single(headers, "x-original-content-length")? {
            Some(n) => Some(n.parse().map_err(|_| {
                ApiError::field("headers.x-original-content-length", "must be a whole number of bytes")
            })?),
            None => None,
        },
        headers: original_headers,
    })
}

/// The `Subject` of the first element of Envoy's `x-forwarded-client-cert`
/// (the client's certificate as Envoy saw it).
fn xfcc_subject(xfcc: &str) -> Option<String> {
    let first = *split_unquoted(xfcc, ',').first()?;
    split_unquoted(first, ';').into_iter().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("subject").then(|| v.trim().trim_matches('"').to_string())
    })
}

fn respond(outcome: Result<Decision, ApiError>, mode: Option<ProxyMode>) -> Response {
    let nginx = mode == Some(ProxyMode::Nginx);
    let decision = match outcome {
        Ok(d) => d,
        Err(e) if nginx => {
            // Through nginx only 401/403 survive; the config restores 400.
            let status = e.status;
            let mut response = e.into_response();
            *response.status_mut() = StatusCode::FORBIDDEN;
            if let Ok(v) = HeaderValue::try_from(status.as_u16().to_string()) {
                response.headers_mut().insert("x-tollgate-status", v);
            }
            response.headers_mut().insert("x-tollgate-reason", HeaderValue::from_static("invalid_request"));
            return response;
        }
        Err(e) => return e.into_response(),
    };
    let mut status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
    // nginx: anything but allow, 401 and 403 (a preflight's 204 included) goes
    // through the 403 path, where the config restores X-Tollgate-Status.
    if nginx && !decision.allowed && !matches!(decision.status, 401 | 403) {
        status = StatusCode::FORBIDDEN;
    }
    // Caddy, Traefik and Envoy pass the request on for any 2xx: a preflight
    // answered here (204, not allowed) would reach the upstream unchecked.
    // They must answer preflights themselves (README); here it is a 403.
    if !nginx && !decision.allowed && status.is_success() {
        status = StatusCode::FORBIDDEN;
    }
    let mut response = if decision.allowed {
        StatusCode::OK.into_response()
    } else {
        let body = serde_json::json!({"message": decision.message, "reason": decision.reason});
        (status, Json(body)).into_response()
    };
    let out = response.headers_mut();
    for (name, value) in decision_headers(&decision) {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            out.append(n, v);
        }
    }
    response
}

/// The identity headers a proxy copies onto the upstream request on allow.
pub(crate) const IDENTITY_HEADERS: [&str; 5] = [
    "x-tollgate-principal",
    "x-tollgate-key-id",
    "x-tollgate-plan-id",
    "x-tollgate-customer-id",
    "x-tollgate-identity",
];

/// The headers forward-auth answers a decision with, in order: the
/// decision's response headers (CORS, `RateLimit-*`, `Retry-After`,
/// `X-Request-Id`) and upstream headers (the signed identity, who called),
/// `x-tollgate-reason` and `x-tollgate-status`, and the principal's key,
/// plan and customer ids. On allow every header of [`IDENTITY_HEADERS`] is
/// there, empty when unknown, so a proxy never passes on a client's copy or
/// a placeholder of its own (Caddy 2.6 copies `{…}` for an absent one).
/// Names are lowercase.
pub(crate) fn decision_headers(decision: &Decision) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        decision.response_headers.iter().chain(&decision.upstream_headers).cloned().collect();
    out.push(("x-tollgate-reason".into(), decision.reason.as_str().to_string()));
    out.push(("x-tollgate-status".into(), decision.status.to_string()));
    let principal = decision.principal.as_ref();
    let key_id = principal.and_then(|p| p.key_id.clone());
    let plan_id = principal.and_then(|p| p.plan_id.clone());
    let customer_id = principal.and_then(|p| p.customer_id.clone());
    for (name, value) in
        [("x-tollgate-key-id", key_id), ("x-tollgate-plan-id", plan_id), ("x-tollgate-customer-id", customer_id)]
    {
        if let Some(v) = value {
            out.push((name.to_string(), v));
        }
    }
    if decision.allowed {
        for name in IDENTITY_HEADERS {
            if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                out.push((name.to_string(), String::new()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envoy_client_certificate_subject_is_read_from_xfcc() {
        let xfcc = "By=spiffe://a;Hash=ab;Subject=\"CN=client,O=Acme\";URI=spiffe://c,By=x;Subject=\"CN=other\"";
        // The first element is the one the nearest Envoy added.
        assert_eq!(xfcc_subject(xfcc).as_deref(), Some("CN=client,O=Acme"));
        assert_eq!(xfcc_subject("Hash=ab"), None);
    }

    #[test]
    fn obs_text_header_bytes_are_kept_as_latin1() {
        let value = HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a legal header value");
        assert_eq!(header_text(value.as_bytes()), "caf\u{e9}");
        let utf8 = HeaderValue::from_bytes("café".as_bytes()).expect("utf-8");
        assert_eq!(header_text(utf8.as_bytes()), "café");
    }
}

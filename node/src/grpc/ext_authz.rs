//! Envoy's external authorization over gRPC,
//! `envoy.service.auth.v3.Authorization/Check`: Envoy's `ext_authz` HTTP
//! filter with a `grpc_service` asks about every request it holds, and the
//! answer is the check pipeline's decision ([`App::decide`], the same as for
//! `POST /v1/check`, forward-auth and the wire port).
//!
//! # Which facts, from where
//!
//! Envoy describes the request in an `AttributeContext`; each fact is read
//! from one field, never from a header a client could also write:
//!
//! | fact | from | refused (`INVALID_ARGUMENT`, naming the field) |
//! |---|---|---|
//! | API, stage | `attributes.context_extensions` `tollgate_api`, `tollgate_stage` (the route's `typed_per_filter_config`) | missing or empty |
//! | method | `attributes.request.http.method` | missing; another spelling (`:method`, `x-original-method`, `x-forwarded-method`) that disagrees |
//! | path and query | `attributes.request.http.path` (the request target as the client sent it; Envoy decodes nothing) | missing; another spelling (`:path`, `x-original-uri`, `x-forwarded-uri`, `x-original-url`, `x-rewrite-url`) that disagrees |
//! | headers | `attributes.request.http.header_map` (`encode_raw_headers: true`, bytes read as forward-auth reads them) or `.headers` (lowercase names) | both given; a name or value HTTP does not allow |
//! | `host` header | `attributes.request.http.host`, when no `host` header came | an `:authority` that disagrees |
//! | client address | `attributes.source.address.socket_address.address` | missing, not an IP address |
//! | proxy id (`proxy_id` in policies) | `attributes.context_extensions` `tollgate_proxy_id`; never the client's `x-tollgate-proxy-id` | |
//! | client certificate | `x-forwarded-client-cert`, its first element's `Subject` (as forward-auth's Envoy mode) | given twice |
//! | body size | `attributes.request.http.size` (-1: unknown) | below -1; disagreeing with `x-original-content-length` |
//!
//! The source address is the connection Envoy accepted, so Envoy is the
//! proxy that saw the client. As in forward-auth, `X-Forwarded-For` is read
//! only when that address is one of the operator's `--trusted-proxies` (a
//! load balancer in front of Envoy): then the client is the first entry
//! from the right that is not trusted. The rest (spellings that must
//! agree, the query, header lines joined) is forward-auth's own
//! code ([`crate::http::forward_auth::check_request`]), so no spelling of a
//! request is decided differently through gRPC than through forward-auth.
//!
//! # The answer
//!
//! - Allow: `OkHttpResponse` whose `headers` (set on the upstream request,
//!   overwriting any client copy) are the header set forward-auth answers a
//!   200 with (identity, `x-tollgate-*`, `RateLimit-*`); an identity header
//!   with no value (no principal) is in `headers_to_remove` instead, so a
//!   client's copy never reaches the upstream. The decision's response
//!   headers (`RateLimit-*`, CORS, `X-Request-Id`) are also in
//!   `response_headers_to_add`, for the client.
//! - Deny: `DeniedHttpResponse` with the decision's status
//!   (401/403/404/429/503), its headers (`Retry-After` on 429, `RateLimit-*`,
//!   CORS, `x-tollgate-reason`) and a JSON body `{"message", "reason"}`;
//!   the `CheckResponse.status` is `UNAUTHENTICATED` for a 401,
//!   `RESOURCE_EXHAUSTED` for a 429, `UNAVAILABLE` for a 503 and
//!   `PERMISSION_DENIED` otherwise.
//! - A CORS preflight the API answers is a `DeniedHttpResponse` with 204 and
//!   the CORS headers: Envoy answers it to the client itself, and the
//!   preflight never reaches the upstream. (Through forward-auth, Envoy's
//!   HTTP mode would pass any 2xx on, so there it is a 403.)
//! - Bad input: the call fails with `INVALID_ARGUMENT` and a message
//!   `FIELD: what is wrong`; nothing is decided or counted.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use envoy_types::ext_authz::v3::pb;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use tollgate_proto::canonical;
use tollgate_proto::check::{CheckRequest, Decision};

use crate::app::App;
use crate::http::error::ApiError;
use crate::http::forward_auth::{check_request, decision_headers, ClientCertSource, ProxiedFacts};
use crate::http::forwarded::{client_behind, ChainError, TrustedProxies};

/// The gRPC service name Envoy calls (and health-checks).
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
/// The `context_extensions` key naming the API.
pub const API_KEY: &str = "tollgate_api";
/// The `context_extensions` key naming the proxy (a policy's `proxy_id`);
/// optional.
pub const PROXY_ID_KEY: &str = "tollgate_proxy_id";
/// The `context_extensions` key naming the stage.
pub const STAGE_KEY: &str = "tollgate_stage";

/// gRPC status codes (`google.rpc.Code`) used in a `CheckResponse`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// The `envoy.service.auth.v3.Authorization` service of one node.
pub struct ExtAuthz {
    app: Arc<App>,
    /// `--trusted-proxies`: when Envoy's peer is one, `X-Forwarded-For` is
    /// walked past them (see the module docs).
    trusted: TrustedProxies,
}

impl ExtAuthz {
    pub fn new(app: Arc<App>, trusted: TrustedProxies) -> ExtAuthz {
        ExtAuthz { app, trusted }
    }

    /// The tonic service (no limits set: the listener sets them).
    pub fn into_server(self) -> pb::AuthorizationServer<ExtAuthz> {
        pb::AuthorizationServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<pb::CheckRequest>,
    ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
        let check = original_request(request.get_ref(), &self.trusted)?;
        let decision = self.app.decide(&check).await.map_err(|e| invalid(&grpc_field(&e.field), &e.message))?;
        Ok(tonic::Response::new(answer(&decision)))
    }
}

fn invalid(field: &str, message: &str) -> tonic::Status {
    tonic::Status::invalid_argument(format!("{field}: {message}"))
}

/// A field named by forward-auth's shared rules, as this request spells it:
/// `headers.NAME` is `attributes.request.http.headers.NAME`; the check's own
/// fields (`path`, `source_ip`, …) are named by what they were read from.
fn grpc_field(field: &str) -> String {
    const HTTP: &str = "attributes.request.http";
    match field.strip_prefix("headers.") {
        Some(rest) if rest.starts_with("attributes.") => rest.to_string(),
        Some(rest) => format!("{HTTP}.headers.{rest}"),
        None => match field {
            "method" => format!("{HTTP}.method"),
            "path" => format!("{HTTP}.path"),
            "query" => format!("{HTTP}.path (query)"),
            "source_ip" => "attributes.source.address.socket_address.address".to_string(),
            "body_size" => format!("{HTTP}.size"),
            other if other.starts_with("headers") => format!("{HTTP}.{other}"),
            other => other.to_string(),
        },
    }
}

fn from_api_error(e: ApiError) -> tonic::Status {
    invalid(&grpc_field(e.field.as_deref().unwrap_or("attributes")), &e.message)
}

/// One `context_extensions` value, required.
fn extension(extensions: &HashMap<String, String>, key: &str) -> Result<String, tonic::Status> {
    // Not trimmed: a name with spaces is no API's or stage's name, as
    // forward-auth takes them from its path.
    match extensions.get(key) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(invalid(
            &format!("attributes.context_extensions.{key}"),
            "missing: set it in the route's ext_authz typed_per_filter_config check_settings.context_extensions \
             (see deploy/envoy/envoy.yaml)",
        )),
    }
}

/// The request's headers as one `HeaderMap` (pseudo-headers apart, as
/// `(name, value)`), from `header_map` (raw bytes, repeated names kept as
/// lines) or the `headers` map.
fn request_headers(http: &HttpRequest) -> Result<(HeaderMap, Vec<(String, String)>), tonic::Status> {
    let raw = http.header_map.as_ref().map(|m| m.headers.as_slice()).unwrap_or_default();
    if !raw.is_empty() && !http.headers.is_empty() {
        return Err(invalid(
            "attributes.request.http.header_map",
            "given with attributes.request.http.headers: send one (Envoy's encode_raw_headers chooses)",
        ));
    }
    let mut lines: Vec<(&str, &[u8])> = Vec::with_capacity(raw.len().max(http.headers.len()));
    for EnvoyHeader { key, value, raw_value } in raw {
        let bytes = if raw_value.is_empty() { value.as_bytes() } else { raw_value.as_slice() };
        lines.push((key.as_str(), bytes));
    }
    lines.extend(http.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let mut headers = HeaderMap::with_capacity(lines.len());
    let mut pseudo = Vec::new();
    for (key, bytes) in lines {
        let field = || format!("attributes.request.http.headers.{}", key.escape_debug());
        if key.starts_with(':') {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid(&field(), "is not UTF-8"))?;
            pseudo.push((key.to_string(), text.to_string()));
            continue;
        }
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| invalid("attributes.request.http.headers", &format!("{:?} is not a header name", key)))?;
        // Bytes as HTTP allows them (obs-text included, as a client's
        // Latin-1 `User-Agent`), read as forward-auth reads them.
        let value = HeaderValue::from_bytes(bytes)
            .map_err(|_| invalid(&field(), "is not a valid header value (control characters)"))?;
        headers.append(name, value);
    }
    Ok((headers, pseudo))
}

/// Builds the check request an ext_authz `CheckRequest` stands for (see the
/// module docs for where each fact comes from).
pub fn original_request(request: &pb::CheckRequest, trusted: &TrustedProxies) -> Result<CheckRequest, tonic::Status> {
    let attributes = request
        .attributes
        .as_ref()
        .ok_or_else(|| invalid("attributes", "missing: Envoy describes the request there"))?;
    let api = extension(&attributes.context_extensions, API_KEY)?;
    let stage = extension(&attributes.context_extensions, STAGE_KEY)?;
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| invalid("attributes.request.http", "missing: only HTTP requests can be checked"))?;
    // Not trimmed: " DELETE" is refused as forward-auth refuses it, never
    // guessed.
    let method = http.method.as_str();
    if method.is_empty() {
        return Err(invalid("attributes.request.http.method", "missing"));
    }
    if http.path.is_empty() {
        return Err(invalid("attributes.request.http.path", "missing"));
    }
    let (mut headers, pseudo) = request_headers(http)?;
    // Envoy's pseudo-headers must say what its fields say.
    for (name, value) in &pseudo {
        let (field, expected) = match name.as_str() {
            ":method" => ("method", method),
            ":path" => ("path", http.path.as_str()),
            ":authority" if !http.host.is_empty() => ("host", http.host.as_str()),
            _ => continue,
        };
        if value != expected {
            return Err(invalid(
                &format!("attributes.request.http.headers.{name}"),
                &format!("disagrees with attributes.request.http.{field}; requests are decided on one spelling only"),
            ));
        }
    }
    if !http.host.is_empty() && !headers.contains_key(axum::http::header::HOST) {
        let host = HeaderValue::from_str(&http.host)
            .map_err(|_| invalid("attributes.request.http.host", "is not a valid header value"))?;
        headers.insert(axum::http::header::HOST, host);
    }
    let source = attributes
        .source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            Address::SocketAddress(socket) => Some(socket.address.as_str()),
            _ => None,
        })
        .ok_or_else(|| {
            invalid(
                "attributes.source.address.socket_address",
                "missing: the check decides on the client's IP address (a pipe or internal address has none)",
            )
        })?;
    let nearest = canonical::address(source)
        .map_err(|e| invalid("attributes.source.address.socket_address.address", &e.to_string()))?;
    let facts = ProxiedFacts {
        method: method.to_string(),
        uri: http.path.clone(),
        method_source: "attributes.request.http.method",
        uri_source: "attributes.request.http.path",
    };
    let source_ip = || {
        client_behind(&headers, nearest, trusted).map_err(|e| match &e {
            ChainError::Missing { header } | ChainError::Malformed { header, .. } => {
                ApiError::field(format!("headers.{header}"), e.to_string())
            }
        })
    };
    let mut check =
        check_request(api, stage, facts, source_ip, &headers, ClientCertSource::Xfcc).map_err(from_api_error)?;
    // The proxy's id is Envoy's configuration, never a request header:
    // Envoy passes the client's headers on as they came, so a client's
    // `x-tollgate-proxy-id` would name any proxy a policy trusts.
    check.proxy_id = attributes.context_extensions.get(PROXY_ID_KEY).filter(|v| !v.is_empty()).cloned();
    match http.size {
        -1 => {}
        size => {
            let size = u64::try_from(size)
                .map_err(|_| invalid("attributes.request.http.size", "must be -1 (unknown) or a number of bytes"))?;
            if check.body_size.is_some_and(|said| said != size) {
                return Err(invalid(
                    "attributes.request.http.headers.x-original-content-length",
                    "disagrees with attributes.request.http.size",
                ));
            }
            check.body_size = Some(size);
        }
    }
    Ok(check)
}

/// Envoy's header option for `(name, value)`: the first line of a name
/// replaces what the request (or response) had, later lines are added.
fn header_options(headers: &[(String, String)]) -> Vec<pb::HeaderValueOption> {
    use pb::HeaderAppendAction::{AppendIfExistsOrAdd, OverwriteIfExistsOrAdd};
    headers
        .iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let repeated = headers[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            let action = if repeated { AppendIfExistsOrAdd } else { OverwriteIfExistsOrAdd };
            pb::HeaderValueOption {
                header: Some(pb::HeaderValue { key: name.clone(), value: value.clone(), raw_value: Vec::new() }),
                append_action: action as i32,
                ..Default::default()
            }
        })
        .collect()
}

/// The `CheckResponse` for a decision (see the module docs).
pub fn answer(decision: &Decision) -> pb::CheckResponse {
    let headers = decision_headers(decision);
    if decision.allowed {
        let (set, removed): (Vec<_>, Vec<_>) = headers.into_iter().partition(|(_, v)| !v.is_empty());
        let ok = pb::OkHttpResponse {
            headers: header_options(&set),
            headers_to_remove: removed.into_iter().map(|(n, _)| n).collect(),
            response_headers_to_add: header_options(&decision.response_headers),
            ..Default::default()
        };
        return pb::CheckResponse {
            status: Some(rpc::Status { code: OK, message: String::new(), details: Vec::new() }),
            http_response: Some(pb::HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
    }
    let code = match decision.status {
        401 => UNAUTHENTICATED,
        429 => RESOURCE_EXHAUSTED,
        503 => UNAVAILABLE,
        _ => PERMISSION_DENIED,
    };
    let body = serde_json::json!({"message": decision.message, "reason": decision.reason}).to_string();
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    let denied = pb::DeniedHttpResponse {
        status: Some(pb::HttpStatus { code: i32::from(decision.status) }),
        headers: header_options(&headers),
        body,
    };
    pb::CheckResponse {
        status: Some(rpc::Status { code, message: decision.reason.as_str().to_string(), details: Vec::new() }),
        http_response: Some(pb::HttpResponse::DeniedResponse(denied)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address as EnvoyAddress, HeaderMap as EnvoyHeaderMap, SocketAddress,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn request(path: &str, headers: &[(&str, &str)]) -> pb::CheckRequest {
        let http = HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: "api.example".into(),
            size: -1,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let socket = SocketAddress { address: "203.0.113.9".into(), ..Default::default() };
        let attributes = AttributeContext {
            source: Some(Peer {
                address: Some(EnvoyAddress { address: Some(Address::SocketAddress(socket)) }),
                ..Default::default()
            }),
            request: Some(Request { time: None, http: Some(http) }),
            context_extensions: [
                (API_KEY.to_string(), "pets".to_string()),
                (STAGE_KEY.to_string(), "prod".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        pb::CheckRequest { attributes: Some(attributes) }
    }

    fn refused(request: &pb::CheckRequest, trusted: &TrustedProxies) -> String {
        match original_request(request, trusted) {
            Ok(check) => panic!("decided on {check:?}"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                status.message().to_string()
            }
        }
    }

    #[test]
    fn facts_are_read_from_the_attribute_context() {
        let none = TrustedProxies::default();
        let check = original_request(
            &request(
                "/pets/7?a=1&a=2",
                &[(":path", "/pets/7?a=1&a=2"), ("x-api-key", "k"), ("x-forwarded-for", "1.1.1.1")],
            ),
            &none,
        )
        .expect("a good request");
        assert_eq!((check.api.as_str(), check.stage.as_str(), check.method.as_str()), ("pets", "prod", "GET"));
        assert_eq!(check.path, "/pets/7");
        assert_eq!(check.query["a"], "1,2");
        // Envoy's peer is the client: X-Forwarded-For is not read.
        assert_eq!(check.source_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(check.headers["host"], "api.example");
        assert!(!check.headers.contains_key(":path"));
        // Unless the operator trusts that peer as a proxy in front of Envoy.
        let lb = TrustedProxies(vec!["203.0.113.0/24".parse().expect("cidr")]);
        let check = original_request(&request("/", &[("x-forwarded-for", "9.9.9.9, 1.1.1.1")]), &lb).expect("ok");
        assert_eq!(check.source_ip.as_deref(), Some("1.1.1.1"));
    }

    /// A client's own `x-tollgate-proxy-id` never names the proxy: Envoy
    /// passes it on as it came. Only the route's context extension does.
    #[test]
    fn the_proxy_id_comes_from_envoys_configuration_never_from_a_header() {
        let none = TrustedProxies::default();
        let forged = request("/", &[("x-tollgate-proxy-id", "internal-edge")]);
        assert_eq!(original_request(&forged, &none).expect("ok").proxy_id, None);
        let mut configured = forged.clone();
        if let Some(a) = configured.attributes.as_mut() {
            a.context_extensions.insert(PROXY_ID_KEY.into(), "envoy-edge".into());
        }
        assert_eq!(original_request(&configured, &none).expect("ok").proxy_id.as_deref(), Some("envoy-edge"));
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let none = TrustedProxies::default();
        let mut missing_stage = request("/", &[]);
        if let Some(a) = missing_stage.attributes.as_mut() {
            a.context_extensions.remove(STAGE_KEY);
        }
        assert!(refused(&missing_stage, &none).starts_with("attributes.context_extensions.tollgate_stage:"));
        assert!(refused(&pb::CheckRequest { attributes: None }, &none).starts_with("attributes:"));
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("/a", &[(":path", "/b")], "attributes.request.http.headers.:path:"),
            ("/a", &[("x-original-url", "/admin")], "attributes.request.http.headers.x-original-url:"),
            ("/a", &[("x-http-method-override", "DELETE")], "x-http-method-override"),
            ("/a", &[("bad name", "v")], "attributes.request.http.headers:"),
            ("/a", &[("x-v", "a\nb")], "attributes.request.http.headers.x-v:"),
            ("a", &[], "attributes.request.http.path:"),
            ("/a/%2e%2e/%2e%2e/b", &[], "attributes.request.http.path:"),
        ];
        for (path, headers, field) in cases {
            let message = match original_request(&request(path, headers), &none) {
                // The pipeline's own rules (canonical path) refuse some at decide time.
                Ok(_) => continue,
                Err(status) => status.message().to_string(),
            };
            assert!(message.contains(field), "{path} {headers:?}: {message}");
        }
        let raw = |bytes: &[u8]| {
            let mut raw = request("/", &[]);
            if let Some(http) = raw.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
                http.header_map = Some(EnvoyHeaderMap {
                    headers: vec![EnvoyHeader {
                        key: "user-agent".into(),
                        value: String::new(),
                        raw_value: bytes.to_vec(),
                    }],
                });
            }
            raw
        };
        // A control character is no header value; a Latin-1 byte (obs-text)
        // is, and is read as forward-auth reads it.
        assert!(
            refused(&raw(b"a\x01b"), &none).starts_with("attributes.request.http.headers.user-agent: is not a valid")
        );
        let latin1 = original_request(&raw(b"caf\xe9"), &none).expect("obs-text is allowed");
        let forward_auth = tollgate_proto::check::header_text(b"caf\xe9");
        assert_eq!(latin1.headers["user-agent"], forward_auth);
    }

    #[test]
    fn allow_sets_identity_headers_and_removes_absent_ones() {
        let decision = Decision {
            allowed: true,
            status: 200,
            reason: tollgate_proto::check::ReasonCode::Allowed,
            message: String::new(),
            principal: None,
            context: Default::default(),
            response_headers: vec![("ratelimit-limit".into(), "20".into())],
            upstream_headers: vec![],
            limit: None,
        };
        let Some(pb::HttpResponse::OkResponse(ok)) = answer(&decision).http_response else { panic!("not ok") };
        assert!(ok.headers_to_remove.contains(&"x-tollgate-identity".to_string()));
        let keys: Vec<_> = ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| h.key.as_str()).collect();
        assert!(keys.contains(&"ratelimit-limit") && keys.contains(&"x-tollgate-status"), "{keys:?}");
        assert_eq!(ok.response_headers_to_add.len(), 1);
    }
}

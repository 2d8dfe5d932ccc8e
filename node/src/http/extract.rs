//! The request parts handlers take, each with its refusal mapped once to
//! the project's 400 that names the field: JSON bodies ([`JsonBody`]),
//! query strings ([`QueryMap`], [`ReadOptions`]) and the write's request id
//! ([`RequestId`], from `Idempotency-Key`).
//!
//! axum's own `Json` and `Query` answer in plain text without a field; these
//! answer `{"error": {"code": "invalid_field", "field": …}}` as every other
//! user error does. A body over the size limit is still axum's 413.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use crate::secret;

/// A JSON body, parsed by [`parse_body`]: a failure is a 400 naming the
/// field (as a path, e.g. `rules[0].limit`), or `body` for an empty or
/// malformed one. As `Option<JsonBody<T>>`, an empty body is `None`.
pub struct JsonBody<T>(pub T);

async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Response> {
    Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = body_bytes(request, state).await?;
        parse_body(&body).map(JsonBody).map_err(IntoResponse::into_response)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Response> {
        let body = body_bytes(request, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_body(&body).map(|value| Some(JsonBody(value))).map_err(IntoResponse::into_response)
    }
}

/// The query string as a map; one that does not decode is a 400 naming
/// `query`.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            if name.is_empty() && value.is_empty() {
                continue; // `?&limit=5`: an empty pair
            }
            // One parameter, one value: a second one would be read by one
            // component and not another (HTTP parameter pollution).
            if map.insert(name.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::field(name.as_ref(), "is given more than once; give it once"));
            }
        }
        Ok(QueryMap(map))
    }
}

/// The request id of a write, from its `Idempotency-Key` header (see
/// [`request_id`]).
pub struct RequestId(pub u128);

/// The request id the admin router made from a valid `Idempotency-Key`, the
/// route and the body (`super::scope_idempotency_key`).
#[derive(Clone, Copy)]
pub struct ScopedRequestId(pub u128);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = request_id(&parts.headers)?;
        Ok(RequestId(parts.extensions.get::<ScopedRequestId>().map_or(id, |s| s.0)))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReadOptions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let QueryMap(query) = QueryMap::from_request_parts(parts, state).await?;
        ReadOptions::parse_with(&query, &[])
    }
}

/// Parses a JSON body; a failure names the field (as a path) that was wrong.
///
/// A whole number may be written with a zero fraction (`5.0`): JSON has one
/// number type, and JSON Schema (so the OpenAPI document) counts `5.0` as an
/// integer.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field("body", "expected a JSON object"));
    }
    let field_error = |path: &serde_path_to_error::Path, message: String| {
        let path = path.to_string();
        let field = if path == "." { "body".to_string() } else { path };
        ApiError::field(field, message)
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let first = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| field_error(e.path(), e.inner().to_string()))
        .and_then(|value| de.end().map(|()| value).map_err(|e| ApiError::field("body", e.to_string())));
    match first {
        Ok(value) => Ok(value),
        Err(error) => {
            // Only a body with a whole number spelled as a float is read again.
            let Ok(mut json) = serde_json::from_slice::<Value>(body) else { return Err(error) };
            if !whole_numbers(&mut json) {
                return Err(error);
            }
            serde_path_to_error::deserialize(json).map_err(|e| field_error(e.path(), e.inner().to_string()))
        }
    }
}

/// Rewrites every float with no fraction that fits an integer as that
/// integer; true if any was.
fn whole_numbers(value: &mut Value) -> bool {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Every u64 and i64 in range; 2^64 itself is a float only.
            let whole = if f.fract() != 0.0 || !f.is_finite() {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(Value::from(f as u64))
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                Some(Value::from(f as i64))
            } else {
                None
            };
            match whole {
                Some(w) => {
                    *value = w;
                    true
                }
                None => false,
            }
        }
        // Every number is rewritten: no short circuit.
        Value::Array(items) => items.iter_mut().map(whole_numbers).fold(false, std::ops::BitOr::bitor),
        Value::Object(map) => map.values_mut().map(whole_numbers).fold(false, std::ops::BitOr::bitor),
        _ => false,
    }
}

/// `?stale`, `?limit`, `?after` of a read, parsed with errors that name the
/// parameter. Also an extractor (from the query string).
pub struct ReadOptions {
    pub stale: bool,
    pub limit: usize,
    pub after: Option<String>,
}

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// The query parameters every read takes.
const READ_PARAMETERS: [&str; 3] = ["stale", "limit", "after"];

impl ReadOptions {
    /// The read options in `query`, which may hold only them and `also`.
    ///
    /// # Errors
    /// A 400 naming the parameter: unknown (a typo such as `limt` would
    /// otherwise be read as "not given"), or a bad `stale` or `limit`.
    pub fn parse_with(query: &HashMap<String, String>, also: &[&str]) -> Result<Self, ApiError> {
        if let Some(unknown) =
            query.keys().find(|k| !READ_PARAMETERS.contains(&k.as_str()) && !also.contains(&k.as_str()))
        {
            let mut known: Vec<&str> = READ_PARAMETERS.iter().chain(also).copied().collect();
            known.sort_unstable();
            return Err(ApiError::field(unknown, format!("is not a parameter here; these are: {}", known.join(", "))));
        }
        Self::parse(query)
    }

    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let stale = match query.get("stale").map(String::as_str) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(_) => return Err(ApiError::field("stale", "must be true or false")),
        };
        let limit = match query.get("limit") {
            None => DEFAULT_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => return Err(ApiError::field("limit", format!("must be a whole number from 1 to {MAX_PAGE}"))),
            },
        };
        Ok(ReadOptions { stale, limit, after: query.get("after").cloned() })
    }
}

/// The request id of a write: from the `Idempotency-Key` header, so a client
/// retry takes effect once, or fresh.
pub fn request_id(headers: &HeaderMap) -> Result<u128, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(rand::random()),
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?;
            if text.is_empty() || text.len() > 255 {
                return Err(ApiError::field("Idempotency-Key", "must be 1 to 255 characters"));
            }
            let digest = secret::sha256(text);
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            Ok(u128::from_be_bytes(id))
        }
    }
}

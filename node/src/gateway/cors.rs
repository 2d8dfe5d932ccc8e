//! CORS: preflights answered by the check itself, and the CORS response
//! headers added to every decision for an allowed origin.

use tollgate_proto::model::Cors;

use super::pattern::glob_matches;

fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|o| o == "*" || o == origin || (o.contains('*') && glob_matches(o, origin)))
}

/// Headers for a request from `origin` (none if the origin is not allowed).
pub fn response_headers(cors: &Cors, origin: Option<&str>) -> Vec<(String, String)> {
    let Some(origin) = origin else { return Vec::new() };
    if !origin_allowed(cors, origin) {
        return Vec::new();
    }
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    let mut headers =
        vec![("access-control-allow-origin".to_string(), if wildcard { "*".to_string() } else { origin.to_string() })];
    if !wildcard {
        headers.push(("vary".into(), "Origin".into()));
    }
    if cors.allow_credentials {
        headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    if !cors.expose_headers.is_empty() {
        headers.push(("access-control-expose-headers".into(), cors.expose_headers.join(", ")));
    }
    headers
}

/// The answer to a preflight: `Ok(headers)` to answer 204, `Err(why)` to refuse.
pub fn preflight(
    cors: &Cors,
    origin: &str,
    method: &str,
    request_headers: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    if !origin_allowed(cors, origin) {
        return Err(format!("origin {origin} is not allowed"));
    }
    if !cors.allow_methods.iter().any(|m| m == "*" || m.eq_ignore_ascii_case(method)) {
        return Err(format!("method {method} is not allowed"));
    }
    let any_header = cors.allow_headers.iter().any(|h| h == "*");
    let asked: Vec<String> = request_headers
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if let Some(refused) = asked.iter().find(|h| !any_header && !cors.allow_headers.contains(h)) {
        return Err(format!("header {refused} is not allowed"));
    }
    let mut headers = response_headers(cors, Some(origin));
    headers.push(("access-control-allow-methods".into(), cors.allow_methods.join(", ")));
    if !asked.is_empty() {
        headers.push(("access-control-allow-headers".into(), asked.join(", ")));
    }
    headers.push(("access-control-max-age".into(), cors.max_age_secs.to_string()));
    Ok(headers)
}

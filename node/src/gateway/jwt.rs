//! JWT authorizers (the Cognito user-pool role): a bearer token is accepted
//! only if it is signed with one of the authorizer's pinned algorithms by a
//! key of the matching type (an HMAC secret can never verify an RS256 token
//! or the reverse), comes from its issuer, is for one of its audiences, is
//! within `exp`/`nbf` (with the configured leeway) and carries the required
//! scopes.
//!
//! Signing keys are inline in the authorizer or fetched from its JWKS URL.
//! Fetched keys are cached and refetched when stale, or when a token names a
//! key id the cache does not know (at most every [`MIN_REFRESH`]). The cache
//! lock is never held across the fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tollgate_proto::model::{Jwk, JwtAuthorizer};

/// Fetched keys are used for this long before they are fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown key id refetches the keys at most this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// What a valid token says about its bearer.
#[derive(Debug, Default)]
pub struct Verified {
    pub subject: Option<String>,
    pub groups: Vec<String>,
    /// Top-level claims as strings, for policy conditions (`claim:NAME`).
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not a valid token for this authorizer; the text says why (no secrets).
    Invalid(String),
    Expired,
    /// Valid, but without the scopes the route needs.
    MissingScope(String),
    /// The keys could not be fetched.
    KeysUnavailable(String),
}

struct Fetched {
    keys: Vec<Jwk>,
    at: Instant,
}

pub struct JwtVerifier {
    http: reqwest::Client,
    fetched: Mutex<HashMap<String, Arc<Fetched>>>,
    /// [`MIN_REFRESH`], or less in tests.
    pub(crate) min_refresh: Duration,
}

impl Default for JwtVerifier {
    fn default() -> Self {
        Self::trusting(&[])
    }
}

impl JwtVerifier {
    /// Fetches keys over HTTPS trusting the public web roots and `roots`.
    pub fn trusting(roots: &[reqwest::Certificate]) -> Self {
        let http = crate::tls::http_trusting(roots).timeout(FETCH_TIMEOUT).build().unwrap_or_default();
        JwtVerifier { http, fetched: Mutex::new(HashMap::new()), min_refresh: MIN_REFRESH }
    }
}

fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The key type an algorithm must be verified with.
fn key_type(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "oct",
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => "RSA",
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "OKP",
    }
}

fn decoding_key(jwk: &Jwk) -> Option<DecodingKey> {
    let key = match jwk.kty.as_str() {
        "RSA" => DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?),
        "EC" => DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?),
        "OKP" => DecodingKey::from_ed_components(jwk.x.as_deref()?),
        "oct" => DecodingKey::from_base64_secret(jwk.k.as_deref()?),
        _ => return None,
    };
    key.ok()
}

fn invalid(why: impl Into<String>) -> Failure {
    Failure::Invalid(why.into())
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    /// Verifies `token` for the authorizer; `route_scopes` are required too.
    pub async fn verify(
        &self,
        config: &JwtAuthorizer,
        token: &str,
        route_scopes: &[String],
    ) -> Result<Verified, Failure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the token is not a well-formed JWT"))?;
        let alg_name = format!("{:?}", header.alg);
        if !config.algorithms.contains(&alg_name) {
            return Err(invalid(format!("algorithm {alg_name} is not accepted")));
        }
        let alg = algorithm(&alg_name).ok_or_else(|| invalid("unsupported algorithm"))?;
        let jwk = self.find_key(config, header.kid.as_deref()).await?;
        if jwk.kty != key_type(alg) || jwk.alg.as_deref().is_some_and(|a| a != alg_name) {
            return Err(invalid(format!("key {:?} is not a {alg_name} key", jwk.kid.as_deref().unwrap_or(""))));
        }
        let key = decoding_key(&jwk).ok_or_else(|| invalid("the signing key is malformed"))?;
        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway_secs as u64;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<BTreeMap<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => Failure::Expired,
                InvalidAudience => invalid("wrong audience"),
                InvalidIssuer => invalid("wrong issuer"),
                InvalidSignature => invalid("bad signature"),
                ImmatureSignature => invalid("not valid yet (nbf)"),
                MissingRequiredClaim(c) => invalid(format!("missing claim {c}")),
                InvalidAlgorithm => invalid("algorithm does not match the key"),
                _ => invalid("the token is not valid"),
            }
        })?;
        let claims = data.claims;
        let scopes: Vec<String> = ["scope", "scp"].iter().filter_map(|c| claims.get(*c)).flat_map(strings).collect();
        if let Some(missing) = config.required_scopes.iter().chain(route_scopes).find(|s| !scopes.contains(s)) {
            return Err(Failure::MissingScope(missing.clone()));
        }
        let groups = ["groups", "cognito:groups"].iter().filter_map(|c| claims.get(*c)).flat_map(strings).collect();
        let flat = claims
            .iter()
            .map(|(name, value)| {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Array(_) => strings(value).join(","),
                    other => other.to_string(),
                };
                (name.clone(), text)
            })
            .collect();
        Ok(Verified { subject: claims.get("sub").and_then(|s| s.as_str()).map(str::to_string), groups, claims: flat })
    }

    /// The key a token names (or the only key, when it names none).
    async fn find_key(&self, config: &JwtAuthorizer, kid: Option<&str>) -> Result<Jwk, Failure> {
        let pick = |keys: &[Jwk]| -> Option<Jwk> {
            match kid {
                Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
                None if keys.len() == 1 => keys.first().cloned(),
                None => None,
            }
        };
        let unknown =
            || invalid(if kid.is_some() { "unknown key id (kid)" } else { "the token names no key id (kid)" });
        let Some(url) = &config.jwks_url else {
            return pick(&config.jwks).ok_or_else(unknown);
        };
        let cached = self.cached(url);
        if let Some(found) = cached.as_ref().filter(|c| c.at.elapsed() < JWKS_TTL).and_then(|c| pick(&c.keys)) {
            return Ok(found);
        }
        // Stale, missing, or the token names a key we do not know: refetch,
        // but not more often than MIN_REFRESH.
        if cached.as_ref().is_some_and(|c| c.at.elapsed() < self.min_refresh) {
            return pick(&cached.map(|c| c.keys.clone()).unwrap_or_default()).ok_or_else(unknown);
        }
        let keys = self.fetch(url).await?;
        pick(&keys).ok_or_else(unknown)
    }

    fn cached(&self, url: &str) -> Option<Arc<Fetched>> {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).get(url).cloned()
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Jwk>, Failure> {
        #[derive(serde::Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let unavailable = |e: String| Failure::KeysUnavailable(format!("cannot fetch the signing keys: {e}"));
        let response = self.http.get(url).send().await.map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        let jwks: Jwks = response.json().await.map_err(|e| unavailable(e.to_string()))?;
        let fetched = Arc::new(Fetched { keys: jwks.keys.clone(), at: Instant::now() });
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).insert(url.to_string(), fetched);
        Ok(jwks.keys)
    }
}

//! JWT authorizers (the Cognito user-pool role): a bearer token is accepted
//! only if it is signed with one of the authorizer's pinned algorithms by a
//! key of the matching type (an HMAC secret can never verify an RS256 token
//! or the reverse), comes from its issuer, is for one of its audiences, is
//! within `exp`/`nbf` (with the configured leeway) and carries the required
//! scopes.
//!
//! Signing keys are inline in the authorizer or fetched from its JWKS URL.
//! Key material is decoded once (base64url members, RFC 7518 §6; see
//! `tollgate_proto::jwk`): inline keys are checked when the authorizer is
//! written ([`validate_authorizer`]), fetched ones when they arrive, and a
//! key that cannot verify anything is dropped then, not at every check.
//!
//! Fetching is bounded, because it is driven by what clients send:
//! - **single flight**: checks that need a fetch of the same URL share one;
//!   a check that holds a usable (if stale) key never waits for it;
//! - **back-off**: after a failed fetch the URL is not fetched again for
//!   [`FIRST_BACKOFF`], doubling per failure up to [`MAX_BACKOFF`]; a success
//!   resets it. Meanwhile checks are answered from what is held;
//! - **unknown `kid`**: a token naming a key the cache does not know
//!   refetches at most once per [`MIN_REFRESH`] (or back-off step), so a
//!   flood of random key ids is not a flood of fetches;
//! - **stale keys**: a failed refresh keeps the keys held (at most
//!   [`MAX_KEYS`], each set used at most [`MAX_STALE`] after the fetch that
//!   brought it), so an issuer's outage does not lock out valid tokens;
//! - a JWKS document is read up to [`MAX_JWKS_BYTES`], with [`FETCH_TIMEOUT`].
//!
//! No lock is held across a fetch except the per-URL single-flight lock, which
//! only checks that need that very fetch wait on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tollgate_proto::jwk::{material, Curve, KeyMaterial};
use tollgate_proto::model::{Authorizer, AuthorizerKind, Jwk, JwtAuthorizer};
use tollgate_proto::FieldError;

/// Fetched keys are used this long before the next check refetches them.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// After a successful fetch, a token naming an unknown key id refetches at
/// most this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// After a failed fetch, no fetch of that URL for this long; it doubles with
/// each further failure, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// While refreshes fail, fetched keys stay in use this long after the fetch
/// that brought them; then checks fail with "keys unavailable".
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// At most this many usable keys are kept from one JWKS document.
pub const MAX_KEYS: usize = 100;
/// The largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The longest a JWKS fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The keys could not be fetched, and none are held.
    KeysUnavailable(String),
}

/// A key with its material decoded, ready to verify.
#[derive(Clone)]
struct UsableKey {
    jwk: Jwk,
    key: DecodingKey,
}

/// What is known about one JWKS URL.
#[derive(Default)]
struct JwksState {
    /// The keys of the last successful fetch (kept when a refresh fails).
    keys: Arc<Vec<UsableKey>>,
    /// When that fetch was.
    fetched_at: Option<Instant>,
    /// No fetch before this: [`MIN_REFRESH`] after a success, the back-off
    /// after a failure.
    next_fetch_at: Option<Instant>,
    /// Failed fetches since the last success (the back-off step).
    failures: u32,
    /// Why the last fetch failed, while it is the latest.
    last_error: Option<String>,
    /// Counts fetches finished: a check that waited for another's fetch
    /// sees it changed and uses that fetch's result instead of fetching.
    generation: u64,
}

/// One JWKS URL: its state, and the lock that makes fetches single-flight.
#[derive(Default)]
struct JwksSource {
    state: Mutex<JwksState>,
    fetching: tokio::sync::Mutex<()>,
}

/// The timings above, as fields so tests can shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub ttl: Duration,
    pub min_refresh: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub max_stale: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: JWKS_TTL,
            min_refresh: MIN_REFRESH,
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
            max_stale: MAX_STALE,
        }
    }
}

impl Timing {
    /// The wait after the `failures`-th failure in a row: doubling from the first.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.first_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

pub struct JwtVerifier {
    http: reqwest::Client,
    sources: Mutex<HashMap<String, Arc<JwksSource>>>,
    pub(crate) timing: Timing,
}

impl Default for JwtVerifier {
    fn default() -> Self {
        Self::trusting(&[])
    }
}

/// The keys held for a JWKS URL, as one check sees them.
struct Held {
    /// The usable keys (none once older than `max_stale`).
    keys: Arc<Vec<UsableKey>>,
    /// Whether a fetch may start now (the back-off has passed).
    may_fetch: bool,
    /// The fetch generation the keys come from.
    generation: u64,
}

impl JwtVerifier {
    /// Fetches keys over HTTPS trusting the public web roots and `roots`.
    pub fn trusting(roots: &[reqwest::Certificate]) -> Self {
        let http = crate::tls::http_trusting(roots).timeout(FETCH_TIMEOUT).build().unwrap_or_default();
        JwtVerifier { http, sources: Mutex::new(HashMap::new()), timing: Timing::default() }
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

/// The verifying key of a JWK, from its decoded material.
fn decoding_key(jwk: &Jwk) -> Result<DecodingKey, tollgate_proto::jwk::BadMember> {
    Ok(match material(jwk)? {
        KeyMaterial::Rsa { n, e } => DecodingKey::from_rsa_raw_components(&n, &e),
        // The same bytes `from_ec_components` builds: the uncompressed point.
        KeyMaterial::Ec { point, .. } => DecodingKey::from_ec_der(&point),
        KeyMaterial::Ed25519(x) => DecodingKey::from_ed_der(&x),
        KeyMaterial::Oct(k) => DecodingKey::from_secret(&k),
    })
}

/// Whether `point` (`0x04 || x || y`) lies on `curve`: ring refuses a key
/// agreement with a point that does not. `None` if that could not be tried.
fn on_curve(curve: Curve, point: &[u8]) -> Option<bool> {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256, ECDH_P384};
    let alg = match curve {
        Curve::P256 => &ECDH_P256,
        Curve::P384 => &ECDH_P384,
    };
    let private = EphemeralPrivateKey::generate(alg, &ring::rand::SystemRandom::new()).ok()?;
    Some(agree_ephemeral(private, &UnparsedPublicKey::new(alg, point), |_| ()).is_ok())
}

/// The admin API's check of an authorizer: the field rules of
/// `tollgate_proto::validate::authorizer` (which decode every inline key's
/// members, RFC 7518 §6), and for EC keys that the point is on its curve.
/// An error names the member, e.g. `kind.jwt.jwks[0].x`.
pub fn validate_authorizer(a: &Authorizer) -> Result<(), FieldError> {
    tollgate_proto::validate::authorizer(a)?;
    let AuthorizerKind::Jwt(j) = &a.kind else { return Ok(()) };
    for (i, jwk) in j.jwks.iter().enumerate() {
        if let Ok(KeyMaterial::Ec { curve, point }) = material(jwk) {
            if on_curve(curve, &point) == Some(false) {
                return Err(FieldError {
                    field: format!("kind.jwt.jwks[{i}].x"),
                    message: format!("x and y are not a point on {curve:?}"),
                });
            }
        }
    }
    Ok(())
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
        let UsableKey { jwk, key } = self.find_key(config, header.kid.as_deref()).await?;
        if jwk.kty != key_type(alg) || jwk.alg.as_deref().is_some_and(|a| a != alg_name) {
            return Err(invalid(format!("key {:?} is not a {alg_name} key", jwk.kid.as_deref().unwrap_or(""))));
        }
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

    /// The key a token names (or the only key, when it names none): inline,
    /// or from the URL's keys, fetched as the module doc says.
    async fn find_key(&self, config: &JwtAuthorizer, kid: Option<&str>) -> Result<UsableKey, Failure> {
        let unknown =
            || invalid(if kid.is_some() { "unknown key id (kid)" } else { "the token names no key id (kid)" });
        let Some(url) = &config.jwks_url else {
            let jwk = pick(&config.jwks, kid, |k| k).ok_or_else(unknown)?;
            // Checked when the authorizer was written; a stored one from before that may still be bad.
            let key = decoding_key(jwk).map_err(|_| invalid("the signing key is malformed"))?;
            return Ok(UsableKey { jwk: jwk.clone(), key });
        };
        let source = self.source(url);
        let Held { keys: held, may_fetch, generation } = self.held(&source, Instant::now());
        let found = pick(&held, kid, |k| &k.jwk).cloned();
        let fresh = lock(&source.state).fetched_at.is_some_and(|at| at.elapsed() < self.timing.ttl);
        if (found.is_some() && fresh) || !may_fetch {
            return self.answer(&source, found, held.is_empty(), unknown);
        }
        // A fetch is due. A check holding a usable key does not wait for
        // another check's fetch; one without waits and shares it.
        let _flight = match (&found, source.fetching.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(_), Err(_)) => return self.answer(&source, found, false, unknown),
            (None, Err(_)) => source.fetching.lock().await,
        };
        if lock(&source.state).generation == generation {
            let fetched = self.fetch(url).await;
            let now = Instant::now();
            let mut state = lock(&source.state);
            state.generation = state.generation.wrapping_add(1);
            match fetched {
                Ok(keys) => {
                    state.keys = Arc::new(keys);
                    state.fetched_at = Some(now);
                    state.failures = 0;
                    state.last_error = None;
                    state.next_fetch_at = now.checked_add(self.timing.min_refresh);
                }
                Err(why) => {
                    state.failures = state.failures.saturating_add(1);
                    state.next_fetch_at = now.checked_add(self.timing.backoff(state.failures));
                    tracing::warn!(url = %url, failures = state.failures, "JWKS fetch failed: {why}");
                    state.last_error = Some(why);
                }
            }
        }
        // This check's fetch, or the one it waited for, is done: answer from it.
        let held = self.held(&source, Instant::now()).keys;
        let found = pick(&held, kid, |k| &k.jwk).cloned();
        self.answer(&source, found, held.is_empty(), unknown)
    }

    /// What is held for a URL now.
    fn held(&self, source: &JwksSource, now: Instant) -> Held {
        let state = lock(&source.state);
        let usable = state.fetched_at.is_some_and(|at| now.saturating_duration_since(at) < self.timing.max_stale);
        let keys = if usable { state.keys.clone() } else { Arc::new(Vec::new()) };
        let may_fetch = state.next_fetch_at.is_none_or(|t| now >= t);
        Held { keys, may_fetch, generation: state.generation }
    }

    /// The key found, or why not: no keys held at all means the keys are
    /// unavailable (with the last fetch error); otherwise the token names
    /// a key the issuer does not have.
    fn answer(
        &self,
        source: &JwksSource,
        found: Option<UsableKey>,
        none_held: bool,
        unknown: impl FnOnce() -> Failure,
    ) -> Result<UsableKey, Failure> {
        match found {
            Some(key) => Ok(key),
            None if none_held => {
                let why = lock(&source.state).last_error.clone();
                Err(Failure::KeysUnavailable(why.unwrap_or_else(|| "no signing keys are held yet".into())))
            }
            None => Err(unknown()),
        }
    }

    fn source(&self, url: &str) -> Arc<JwksSource> {
        lock(&self.sources).entry(url.to_string()).or_default().clone()
    }

    /// Fetches and decodes a JWKS document: at most [`MAX_JWKS_BYTES`], keys
    /// that cannot be used skipped (and logged), at most [`MAX_KEYS`] kept.
    /// A document without one usable key is a failure.
    async fn fetch(&self, url: &str) -> Result<Vec<UsableKey>, String> {
        let mut response =
            self.http.get(url).send().await.map_err(|e| format!("cannot fetch the signing keys: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("cannot fetch the signing keys: HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(format!("the JWKS document is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("cannot fetch the signing keys: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS document is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Jwks {
            keys: Vec<Value>,
        }
        let jwks: Jwks =
            serde_json::from_slice(&body).map_err(|e| format!("the JWKS document is not a key set: {e}"))?;
        let mut keys = Vec::new();
        for (i, value) in jwks.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::debug!(url = %url, "JWKS key {i} skipped: {e}");
                    continue;
                }
            };
            match decoding_key(&jwk) {
                Ok(key) if keys.len() < MAX_KEYS => keys.push(UsableKey { jwk, key }),
                Ok(_) => break,
                Err(bad) => tracing::debug!(url = %url, "JWKS key {i} skipped: {}: {}", bad.member, bad.message),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS document holds no usable key".into());
        }
        Ok(keys)
    }
}

/// The key a token names, or the only key when it names none.
fn pick<'k, T>(keys: &'k [T], kid: Option<&str>, jwk: impl Fn(&T) -> &Jwk) -> Option<&'k T> {
    match kid {
        Some(kid) => keys.iter().find(|k| jwk(k).kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;

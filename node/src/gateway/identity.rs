//! Signed identity for backends: on allow, a short-lived JWT (EdDSA) naming
//! the principal, key, plan and context, which a backend verifies against the
//! cluster's public keys at `/.well-known/jwks.json` to know the request came
//! through the gateway.
//!
//! No signing key is stored anywhere. Every node derives the Ed25519 key of
//! version `v` with HKDF-SHA256 from the cluster token (`TOLLGATE_CLUSTER_TOKEN`,
//! which the nodes already share) and `v`; the replicated state holds only the
//! current version, which the admin API rotates. The JWKS carries the current,
//! the previous and the next version, so tokens issued just before a rotation
//! still verify, and so do tokens from nodes that applied it before others. Without a cluster token there is no key, and no identity header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use ring::hkdf;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// How long an identity token is valid (s): long enough for one request to
/// reach its backend, and for a token to be handed out again for a few
/// minutes, as Google IAP's signed headers are valid for 10 minutes. Reuse is
/// what keeps signing (about 18 µs of Ed25519 a token) off the check path for
/// every key asked at least every few minutes, however many keys there are.
pub const TOKEN_LIFETIME_SECS: i64 = 300;
/// A token is handed out again, for the same claims, until it is this old
/// (s), so a backend always gets one with at least a minute left.
pub const REUSE_SECS: i64 = 240;
/// Tokens are kept for reuse in windows of this many seconds: the current
/// window's and the previous one's, so a token is kept 120 to 240 s.
const WINDOW_SECS: i64 = REUSE_SECS / 2;
/// Most tokens one window keeps (about 600 bytes each, with their claims); a
/// window that fills up starts the next early, so the cache stays under
/// about 120 MB with any number of keys (past 100k keys asked in one window,
/// tokens are kept for less than a window and signed more often).
const MAX_PER_WINDOW: usize = 100_000;
pub const ISSUER: &str = "tollgate";

/// A derived key, ready to sign: the key pair is expanded once (jsonwebtoken
/// would expand it again for every token), and the JWT header is encoded once.
struct Derived {
    pair: Ed25519KeyPair,
    /// `base64url({"alg":"EdDSA","typ":"JWT","kid":…})`.
    header: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub struct IdentitySigner {
    /// The cluster token (held in memory only), or none: signing is off.
    root: Option<Vec<u8>>,
    derived: Mutex<HashMap<u64, Arc<Derived>>>,
    /// Tokens issued lately, for reuse.
    reuse: Mutex<Reuse>,
}

/// `header.payload` of a token issued at `iat_s` with `claims` (a JSON
/// object); `None` if `claims` is not an object.
fn signing_input(key: &Derived, iat_s: i64, claims: &str) -> Option<String> {
    let rest = claims.strip_prefix('{')?;
    let separator = if rest == "}" { "" } else { "," };
    let exp = iat_s.checked_add(TOKEN_LIFETIME_SECS)?;
    let body = format!("{{\"iss\":\"{ISSUER}\",\"iat\":{iat_s},\"exp\":{exp}{separator}{rest}");
    let mut token = String::with_capacity(key.header.len() + body.len() * 4 / 3 + 100);
    token.push_str(&key.header);
    token.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(body.as_bytes(), &mut token);
    Some(token)
}

fn push_signature(token: &mut String, signature: &[u8]) {
    token.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(signature, token);
}

/// A token issued at `iat` with key `version`.
#[derive(Clone)]
struct Signed {
    version: u64,
    /// Seconds since the Unix epoch.
    iat: i64,
    token: Arc<str>,
}

/// Tokens issued lately, by the claims they carry (JSON, without times), in
/// two windows of [`WINDOW_SECS`]: a lookup reads both, a new token goes
/// into the current one, and the previous one is dropped whole when a
/// window ends or fills. Memory stays within two windows whatever the number
/// of keys, with no sweep and no per-entry timer; a key asked at least once
/// a window is signed about once every [`REUSE_SECS`].
struct Reuse {
    /// Most entries a window keeps ([`MAX_PER_WINDOW`]).
    cap: usize,
    current: HashMap<Box<str>, Signed>,
    previous: HashMap<Box<str>, Signed>,
    /// When the current window began (s since the epoch).
    began_s: i64,
}

impl Reuse {
    /// A token for `claims` signed with key `version`, young enough to hand out at
    /// `now_s`. Answers too a window that ended, to be dropped outside the lock.
    fn find(&mut self, version: u64, claims: &str, now_s: i64) -> (Option<Signed>, Option<HashMap<Box<str>, Signed>>) {
        let ended = self.roll(now_s, false);
        let found = [&self.current, &self.previous]
            .into_iter()
            .filter_map(|window| window.get(claims))
            .find(|s| s.version == version && (0..REUSE_SECS).contains(&(now_s - s.iat)))
            .cloned();
        (found, ended)
    }

    /// Keeps a new token; answers a window that ended, as [`Self::find`].
    fn keep(&mut self, claims: String, signed: Signed) -> Option<HashMap<Box<str>, Signed>> {
        let ended = self.roll(signed.iat, self.current.len() >= self.cap);
        self.current.insert(claims.into_boxed_str(), signed);
        ended
    }

    /// Starts a new window if the current one is over (or `full`, or the
    /// clock went back); answers the window that ended.
    fn roll(&mut self, now_s: i64, full: bool) -> Option<HashMap<Box<str>, Signed>> {
        let age = now_s.saturating_sub(self.began_s);
        if !full && (0..WINDOW_SECS).contains(&age) {
            return None;
        }
        self.began_s = now_s;
        let current = std::mem::take(&mut self.current);
        if (WINDOW_SECS..2 * WINDOW_SECS).contains(&age) || full {
            Some(std::mem::replace(&mut self.previous, current))
        } else {
            // Both windows are too old to reuse from.
            let previous = std::mem::take(&mut self.previous);
            drop(current);
            Some(previous)
        }
    }
}

/// Frees a window that ended off the request's path (a window may hold
/// [`MAX_PER_WINDOW`] entries: milliseconds of frees).
fn drop_later(ended: Option<HashMap<Box<str>, Signed>>) {
    let Some(window) = ended.filter(|w| !w.is_empty()) else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(window))),
        Err(_) => drop(window),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentitySigner(enabled: {})", self.root.is_some())
    }
}

pub fn kid(version: u64) -> String {
    format!("tollgate-{version}")
}

struct SeedLen;

impl hkdf::KeyType for SeedLen {
    fn len(&self) -> usize {
        32
    }
}

impl IdentitySigner {
    pub fn new(cluster_token: Option<&str>) -> Self {
        IdentitySigner {
            root: cluster_token.map(|t| t.as_bytes().to_vec()),
            derived: Mutex::new(HashMap::new()),
            reuse: Mutex::new(Reuse {
                cap: MAX_PER_WINDOW,
                current: HashMap::new(),
                previous: HashMap::new(),
                began_s: 0,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    fn key(&self, version: u64) -> Option<Arc<Derived>> {
        let root = self.root.as_ref()?;
        if let Some(found) = lock(&self.derived).get(&version) {
            return Some(found.clone());
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tollgate/identity-key/v1");
        let info = version.to_be_bytes();
        let info = [info.as_slice()];
        let mut seed = [0u8; 32];
        salt.extract(root).expand(&info, SeedLen).ok()?.fill(&mut seed).ok()?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).ok()?;
        let header = b64(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid(version)}).to_string().as_bytes());
        let derived = Arc::new(Derived { pair, header });
        lock(&self.derived).insert(version, derived.clone());
        Some(derived)
    }

    /// The identity token for an allowed request, if signing is on: a JWS
    /// (RFC 7515, compact form) over `claims` with `iss`, `iat` and `exp`
    /// added, `iat` at most [`REUSE_SECS`] before `now_s` (s since the epoch).
    /// `claims` serialise to a JSON object.
    pub fn sign(&self, version: u64, now_s: i64, claims: &impl serde::Serialize) -> Option<String> {
        let key = self.key(version)?;
        let claims = serde_json::to_string(claims).ok()?;
        let (found, ended) = lock(&self.reuse).find(version, &claims, now_s);
        drop_later(ended);
        if let Some(signed) = found {
            return Some(signed.token.to_string());
        }
        let mut token = signing_input(&key, now_s, &claims)?;
        let signature = key.pair.sign(token.as_bytes());
        push_signature(&mut token, signature.as_ref());
        let signed = Signed { version, iat: now_s, token: token.as_str().into() };
        let ended = lock(&self.reuse).keep(claims, signed);
        drop_later(ended);
        Some(token)
    }

    /// The public keys of the current, the previous and the next version.
    /// The next one is published ahead of its rotation: right after a rotation,
    /// a node that has applied it signs with a version a lagging node has not
    /// reached yet, and a backend holding either node's keys must verify it.
    pub fn jwks(&self, current: u64) -> Value {
        let keys: Vec<Value> = [Some(current), current.checked_sub(1).filter(|v| *v >= 1), current.checked_add(1)]
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let key = self.key(v)?;
                Some(json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid(v),
                    "x": b64(key.pair.public_key().as_ref())}))
            })
            .collect();
        json!({"keys": keys})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_derives_the_same_key_and_versions_differ() {
        let a = IdentitySigner::new(Some("cluster-secret"));
        let b = IdentitySigner::new(Some("cluster-secret"));
        let other = IdentitySigner::new(Some("another-cluster"));
        assert_eq!(a.jwks(3), b.jwks(3));
        assert_ne!(a.jwks(3)["keys"][0]["x"], other.jwks(3)["keys"][0]["x"]);
        assert_ne!(a.jwks(3)["keys"][0]["x"], a.jwks(3)["keys"][1]["x"], "versions 3 and 2 differ");
        assert_eq!(a.jwks(1)["keys"].as_array().map(Vec::len), Some(2), "no version 0: current and next");
        assert_eq!(a.jwks(3)["keys"][2]["kid"], "tollgate-4", "the next key is published ahead");
        assert_eq!(a.jwks(3)["keys"][2], a.jwks(4)["keys"][0]);
        assert!(IdentitySigner::new(None).sign(1, 0, &json!({})).is_none());
    }

    #[test]
    fn a_token_verifies_against_the_published_key_only() {
        let signer = IdentitySigner::new(Some("cluster-secret"));
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = signer.sign(2, now, &json!({"sub": "key:k1"})).expect("token");
        let again = signer.sign(2, now + REUSE_SECS - 1, &json!({"sub": "key:k1"})).expect("token");
        assert_eq!(token, again, "reused within the window");
        let fresh = signer.sign(2, now + REUSE_SECS, &json!({"sub": "key:k1"})).expect("token");
        assert_ne!(token, fresh, "signed again after it");
        let other = signer.sign(2, now, &json!({"sub": "key:k2"})).expect("token");
        assert_ne!(token, other, "other claims, another token");
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(signer.jwks(2)["keys"][0].clone()).expect("jwk");
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("verifies");
        assert_eq!(data.claims["sub"], "key:k1");
        let previous: jsonwebtoken::jwk::Jwk = serde_json::from_value(signer.jwks(2)["keys"][1].clone()).expect("jwk");
        let wrong = jsonwebtoken::DecodingKey::from_jwk(&previous).expect("key");
        assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &validation).is_err());
    }

    /// The claims and times a token carries, read back without checking `exp`.
    fn read(signer: &IdentitySigner, version: u64, token: &str) -> Value {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(signer.jwks(version)["keys"][0].clone()).expect("jwk");
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies").claims
    }

    /// Random histories of signing over many keys, times and key versions:
    /// every token verifies with its version's key, carries exactly the
    /// claims asked for, was issued at most REUSE_SECS ago (never in the
    /// future) and so has at least LIFETIME - REUSE seconds left.
    #[test]
    fn a_reused_token_always_carries_its_claims_and_enough_time() {
        use rand::{Rng as _, SeedableRng as _};
        let signer = IdentitySigner::new(Some("cluster-secret"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut now = 1_800_000_000i64;
        let (mut reused, mut signed) = (0, 0);
        let mut last: HashMap<(u64, u64), String> = HashMap::new();
        for _ in 0..3_000 {
            // Mostly the same second or the next; now and then a window's
            // length, two, or a long pause.
            now += [0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 5, 30, 119, 120, 121, 239, 240, 241, 500, 1000][rng.gen_range(0..20)];
            let version = 1 + rng.gen_range(0..2u64);
            let who = rng.gen_range(0..5u64);
            let claims = json!({"sub": format!("key:{who}"), "ctx": {"n": who}});
            let token = signer.sign(version, now, &claims).expect("token");
            let read = read(&signer, version, &token);
            assert_eq!((&read["sub"], &read["ctx"]), (&claims["sub"], &claims["ctx"]));
            let iat = read["iat"].as_i64().expect("iat");
            assert!((0..REUSE_SECS).contains(&(now - iat)), "issued at {iat}, now {now}");
            assert_eq!(read["exp"].as_i64(), Some(iat + TOKEN_LIFETIME_SECS));
            match last.insert((version, who), token.clone()) {
                Some(before) if before == token => reused += 1,
                _ => signed += 1,
            }
        }
        assert!(reused > 500 && signed > 500, "both paths ran: {reused} reused, {signed} signed");
    }

    /// However many distinct claims are signed, the cache holds at most two
    /// windows of them.
    #[test]
    fn the_reuse_cache_stays_bounded_by_two_windows() {
        let signer = IdentitySigner::new(Some("cluster-secret"));
        let cap = 100;
        lock(&signer.reuse).cap = cap;
        for n in 0..(cap + cap / 2) {
            signer.sign(1, 1_800_000_000, &json!({"sub": n})).expect("token");
        }
        let reuse = lock(&signer.reuse);
        assert_eq!((reuse.current.len(), reuse.previous.len()), (cap / 2, cap));
        drop(reuse);
        // Two windows later nothing old is handed out or kept.
        signer.sign(1, 1_800_000_000 + 2 * WINDOW_SECS, &json!({"sub": 0})).expect("token");
        let reuse = lock(&signer.reuse);
        assert_eq!((reuse.current.len(), reuse.previous.len()), (1, 0));
    }
}

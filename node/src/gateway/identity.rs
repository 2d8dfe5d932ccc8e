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

/// How long an identity token is valid: long enough for one request to reach its backend.
pub const TOKEN_LIFETIME_SECS: i64 = 60;
/// A token is handed out again, for the same claims, for this long after it
/// was signed (so it always has 50 s left): signing is the costly part.
pub const REUSE_SECS: i64 = 10;
/// Most tokens kept for reuse; past this the cache starts over.
const MAX_REUSED: usize = 100_000;
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
    /// Recent tokens by key version, then by claims JSON (without times).
    recent: Mutex<HashMap<u64, HashMap<String, Signed>>>,
}

/// A token and the second it was signed.
type Signed = (Arc<str>, i64);

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
            recent: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    fn key(&self, version: u64) -> Option<Arc<Derived>> {
        let root = self.root.as_ref()?;
        if let Some(found) = self.derived.lock().unwrap_or_else(|p| p.into_inner()).get(&version) {
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
        self.derived.lock().unwrap_or_else(|p| p.into_inner()).insert(version, derived.clone());
        Some(derived)
    }

    /// The identity token for an allowed request, if signing is on. `claims`
    /// serialise to a JSON object; `iss`, `iat` and `exp` are added here.
    pub fn sign(&self, version: u64, now_s: i64, claims: &impl serde::Serialize) -> Option<Arc<str>> {
        let key = self.key(version)?;
        let claims = serde_json::to_string(claims).ok()?;
        if let Some((token, signed)) =
            self.recent.lock().unwrap_or_else(|p| p.into_inner()).get(&version).and_then(|m| m.get(&claims))
        {
            if (0..REUSE_SECS).contains(&(now_s - signed)) {
                return Some(token.clone());
            }
        }
        let rest = claims.strip_prefix('{')?;
        let separator = if rest == "}" { "" } else { "," };
        let exp = now_s + TOKEN_LIFETIME_SECS;
        let body = format!("{{\"iss\":\"{ISSUER}\",\"iat\":{now_s},\"exp\":{exp}{separator}{rest}");
        let mut token = String::with_capacity(key.header.len() + body.len() * 4 / 3 + 100);
        token.push_str(&key.header);
        token.push('.');
        token.push_str(&b64(body.as_bytes()));
        let signature = key.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64(signature.as_ref()));
        let token: Arc<str> = token.into();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.values().map(HashMap::len).sum::<usize>() >= MAX_REUSED {
            recent.clear();
        }
        recent.entry(version).or_default().insert(claims, (token.clone(), now_s));
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
}

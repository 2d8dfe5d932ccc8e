//! Generated secrets (API keys, admin tokens) and ids.
//!
//! A secret is 32 random bytes, base64url, behind a short type tag
//! (`tgk_` for keys, `tga_` for admin tokens). Only its SHA-256 is kept; the
//! plain text is returned once to whoever created it and never logged.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tollgate_proto::model::{EntityKind, SecretDigest};

/// How many leading characters of a secret are shown to identify it.
pub const VISIBLE_PREFIX: usize = 12;

/// A new secret with the given tag, and what may be stored of it.
pub fn generate(tag: &str) -> (String, SecretDigest) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("{tag}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let digest = SecretDigest { prefix: secret[..VISIBLE_PREFIX].to_string(), sha256: sha256(&secret) };
    (secret, digest)
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A new id for an object of `kind`, e.g. `key_3f9a0c…`.
pub fn new_id(kind: EntityKind) -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.id_prefix(), hex::encode(bytes))
}

/// The token of an `Authorization` header value that carries a bearer
/// token, the one parser of it for every listener and the gateway.
///
/// RFC 9110 §11.1: the scheme is case-insensitive (`Bearer`, `bearer`,
/// `BEARER`), and one or more spaces part it from its credentials; the token
/// (a token68) is trimmed. `None` when the scheme is another one, or the
/// token is empty (an empty token is no token: there is nothing to check).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The bearer token of a request's `Authorization` header (see
/// [`bearer_token`]); `None` if absent, sent more than once, not visible
/// ASCII, or not a bearer one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    match (all.next(), all.next()) {
        (Some(one), None) => one.to_str().ok().and_then(bearer_token),
        // None, or several: which would count is ambiguous, so none does.
        _ => None,
    }
}

/// A configured token (bootstrap admin token, cluster token) held only as its
/// digest and compared in constant time.
#[derive(Clone)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(token: &str) -> Self {
        Digest(sha256(token))
    }

    pub fn matches(&self, candidate: &str) -> bool {
        self.0.ct_eq(&sha256(candidate)).into()
    }

    /// Whether `headers` present this token as their bearer token (the
    /// `/metrics` token, the cluster token on peer routes).
    pub fn presented_in(&self, headers: &axum::http::HeaderMap) -> bool {
        bearer(headers).is_some_and(|token| self.matches(token))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_matches_only_its_digest() {
        let (secret, digest) = generate("tgk_");
        assert!(secret.starts_with("tgk_") && secret.len() == 4 + 43);
        assert_eq!(digest.prefix, &secret[..VISIBLE_PREFIX]);
        assert_eq!(digest.sha256, sha256(&secret));
        assert!(Digest::of(&secret).matches(&secret));
        assert!(!Digest::of(&secret).matches("tgk_other"));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_with_any_spacing() {
        for value in
            ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR tok", "Bearer   tok", "Bearer tok  ", "Bearer \ttok"]
        {
            assert_eq!(bearer_token(value), Some("tok"), "{value:?}");
        }
        for value in
            ["", "Bearer", "Bearer ", "Bearer    ", "Bearertok", "Basic tok", "Bearer\ttok", " Bearer tok", "Bear tok"]
        {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(axum::http::header::AUTHORIZATION, "bearer  tga_x ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("tga_x"));
        assert!(Digest::of("tga_x").presented_in(&headers));
        assert!(!Digest::of("tga_y").presented_in(&headers));
    }
}

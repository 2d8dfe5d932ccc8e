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

/// The token of an `Authorization: Bearer …` header, if there is one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
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
}

//! The key material of a JSON Web Key (RFC 7517), decoded and checked once.
//!
//! JWK members are base64url without padding (RFC 7518 §6, RFC 7515 §2), not
//! standard base64. [`material`] decodes the members a key type needs and
//! checks their sizes, so an authorizer with a key that could never verify a
//! token is refused when it is written (naming the member), not at traffic
//! time. The node checks what needs cryptography on top (an EC point lies on
//! its curve).
//!
//! Decoding is lenient in one way only: trailing `=` padding and the standard
//! alphabet (`+`, `/`) are accepted too. Each text has one meaning either way,
//! and earlier versions read `k` as standard base64.

use base64::Engine;

use crate::model::Jwk;

/// Decoded key material, ready for a signature library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `kty` RSA: modulus and public exponent, big-endian, no leading zeros.
    Rsa {
        /// The modulus (`n`), [`RSA_MIN_BITS`] to [`RSA_MAX_BITS`] bits.
        n: Vec<u8>,
        /// The public exponent (`e`): odd, 3 to 2^33 - 1.
        e: Vec<u8>,
    },
    /// `kty` EC: the uncompressed point `0x04 || x || y` on `curve`.
    Ec {
        /// The curve named by `crv`.
        curve: Curve,
        /// `0x04`, then `x` and `y`, each [`Curve::coordinate_len`] bytes.
        point: Vec<u8>,
    },
    /// `kty` OKP, `crv` Ed25519: the 32-byte public key.
    Ed25519(Vec<u8>),
    /// `kty` oct: the HMAC secret.
    Oct(Vec<u8>),
}

/// The elliptic curves Tollgate verifies with (ES256 and ES384).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (`crv` `P-256`, RFC 7518 §6.2.1.1), for ES256.
    P256,
    /// NIST P-384 (`crv` `P-384`, RFC 7518 §6.2.1.1), for ES384.
    P384,
}

impl Curve {
    /// Bytes in one coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// The smallest RSA modulus Tollgate accepts, in bits: what the signature
/// library verifies RS*/PS* signatures with (2048 to 8192-bit keys).
pub const RSA_MIN_BITS: usize = 2048;
/// The largest RSA modulus Tollgate accepts, in bits (see [`RSA_MIN_BITS`]).
pub const RSA_MAX_BITS: usize = 8192;
/// The largest encoded member read: an 8192-bit modulus is 1366 characters.
pub const MAX_MEMBER_CHARS: usize = 4096;
/// The shortest HMAC secret, in bytes (RFC 7518 §3.2: at least the hash size
/// of HS256). [`hmac_min_len`] gives it per algorithm.
pub const HMAC_MIN_BYTES: usize = 32;
/// The longest HMAC secret accepted, in bytes.
pub const HMAC_MAX_BYTES: usize = 1024;

/// The shortest secret RFC 7518 §3.2 allows for an HMAC algorithm (`HS256`:
/// 32 bytes, `HS384`: 48, `HS512`: 64); `None` for other algorithms.
pub fn hmac_min_len(alg: &str) -> Option<usize> {
    match alg {
        "HS256" => Some(32),
        "HS384" => Some(48),
        "HS512" => Some(64),
        _ => None,
    }
}

/// Why a key's material is not usable: the member at fault (`n`, `e`, `crv`,
/// `x`, `y`, `k` or `kty`) and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMember {
    /// The JWK member at fault, as named in RFC 7518 §6 (`n`, `e`, `crv`, `x`,
    /// `y`, `k`) or `kty`.
    pub member: &'static str,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

fn bad(member: &'static str, message: impl Into<String>) -> BadMember {
    BadMember { member, message: message.into() }
}

/// Decodes one base64url member (RFC 7518 §6; see the module doc for what is
/// tolerated). An empty member is refused.
pub fn decode_member(member: &'static str, text: &str) -> Result<Vec<u8>, BadMember> {
    if text.len() > MAX_MEMBER_CHARS {
        return Err(bad(member, format!("must be at most {MAX_MEMBER_CHARS} characters")));
    }
    let normalized: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalized.as_bytes())
        .map_err(|e| bad(member, format!("is not base64url without padding (RFC 7518 §6): {e}")))?;
    if bytes.is_empty() {
        return Err(bad(member, "must not be empty"));
    }
    Ok(bytes)
}

fn required<'a>(member: &'static str, value: &'a Option<String>) -> Result<&'a str, BadMember> {
    value.as_deref().ok_or_else(|| bad(member, "is required for this key type"))
}

/// A big-endian unsigned number without its leading zero bytes.
fn unsigned(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        Some(first) => be.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Decodes and checks the key material of `jwk` (RFC 7518 §6): RSA `n`
/// (2048 to 8192 bits, odd) and `e` (odd, 3 to 2^33 - 1); EC `crv` (P-256 or
/// P-384; inferred from the size of `x` when absent) with `x` and `y` of the
/// curve's coordinate size (shorter ones are left-padded with zeros); OKP
/// `crv` Ed25519 with a 32-byte `x`; oct `k` of [`HMAC_MIN_BYTES`] to
/// [`HMAC_MAX_BYTES`] bytes.
pub fn material(jwk: &Jwk) -> Result<KeyMaterial, BadMember> {
    match jwk.kty.as_str() {
        "RSA" => {
            let n = unsigned(decode_member("n", required("n", &jwk.n)?)?);
            let bits = bit_len(&n);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(bad(
                    "n",
                    format!("is a {bits}-bit modulus; {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are accepted"),
                ));
            }
            if n.last().is_some_and(|b| b & 1 == 0) {
                return Err(bad("n", "an RSA modulus is odd; this one is not"));
            }
            let e = unsigned(decode_member("e", required("e", &jwk.e)?)?);
            let value = e.iter().fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(u64::from(*b)));
            if e.len() > 5 || !(3..=(1u64 << 33) - 1).contains(&value) || value & 1 == 0 {
                return Err(bad("e", "must be an odd exponent from 3 to 2^33 - 1, such as AQAB (65537)"));
            }
            Ok(KeyMaterial::Rsa { n, e })
        }
        "EC" => {
            let x = decode_member("x", required("x", &jwk.x)?)?;
            let y = decode_member("y", required("y", &jwk.y)?)?;
            let curve = match jwk.crv.as_deref() {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                None if x.len() <= 32 && y.len() <= 32 => Curve::P256,
                None => Curve::P384,
                Some(other) => return Err(bad("crv", format!("{other:?} is not supported; use P-256 or P-384"))),
            };
            let size = curve.coordinate_len();
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            for (member, c) in [("x", &x), ("y", &y)] {
                if c.len() > size {
                    return Err(bad(member, format!("must be {size} bytes for {curve:?}, not {}", c.len())));
                }
                point.resize(point.len() + size - c.len(), 0);
                point.extend_from_slice(c);
            }
            Ok(KeyMaterial::Ec { curve, point })
        }
        "OKP" => {
            if let Some(crv) = jwk.crv.as_deref().filter(|c| *c != "Ed25519") {
                return Err(bad("crv", format!("{crv:?} is not supported; use Ed25519")));
            }
            let x = decode_member("x", required("x", &jwk.x)?)?;
            if x.len() != 32 {
                return Err(bad("x", format!("an Ed25519 public key is 32 bytes, not {}", x.len())));
            }
            Ok(KeyMaterial::Ed25519(x))
        }
        "oct" => {
            let k = decode_member("k", required("k", &jwk.k)?)?;
            if !(HMAC_MIN_BYTES..=HMAC_MAX_BYTES).contains(&k.len()) {
                return Err(bad(
                    "k",
                    format!(
                        "is {} bytes; an HMAC key must be {HMAC_MIN_BYTES} to {HMAC_MAX_BYTES} bytes (RFC 7518 §3.2)",
                        k.len()
                    ),
                ));
            }
            Ok(KeyMaterial::Oct(k))
        }
        other => Err(bad("kty", format!("{other:?} is not supported; use RSA, EC, OKP or oct"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(kty: &str) -> Jwk {
        Jwk { kty: kty.into(), kid: None, alg: None, n: None, e: None, crv: None, x: None, y: None, k: None }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_43_character_oct_key_is_32_bytes() {
        let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xfb).collect();
        let text = b64(&secret);
        assert_eq!(text.len(), 43);
        assert!(text.contains('-') || text.contains('_'), "the fixture exercises the url alphabet: {text}");
        let key = Jwk { k: Some(text.clone()), ..jwk("oct") };
        assert_eq!(material(&key), Ok(KeyMaterial::Oct(secret.clone())));
        // Padding and the standard alphabet mean the same bytes.
        let standard = base64::engine::general_purpose::STANDARD.encode(&secret);
        assert_eq!(material(&Jwk { k: Some(standard), ..jwk("oct") }), Ok(KeyMaterial::Oct(secret)));
    }

    #[test]
    fn bad_members_are_named() {
        let cases = [
            (Jwk { k: Some("c2hvcnQ".into()), ..jwk("oct") }, "k"),
            (Jwk { k: Some("not base64!".into()), ..jwk("oct") }, "k"),
            (jwk("oct"), "k"),
            (Jwk { n: Some(b64(&[0xc5; 128])), e: Some("AQAB".into()), ..jwk("RSA") }, "n"),
            (Jwk { n: Some(b64(&[0xc5; 256])), e: Some("Ag".into()), ..jwk("RSA") }, "e"),
            (Jwk { n: Some(b64(&[0xc5; 256])), e: None, ..jwk("RSA") }, "e"),
            (Jwk { crv: Some("P-521".into()), x: Some(b64(&[1; 66])), y: Some(b64(&[1; 66])), ..jwk("EC") }, "crv"),
            (Jwk { crv: Some("P-256".into()), x: Some(b64(&[1; 48])), y: Some(b64(&[1; 32])), ..jwk("EC") }, "x"),
            (Jwk { crv: Some("Ed25519".into()), x: Some(b64(&[1; 31])), ..jwk("OKP") }, "x"),
            (jwk("DSA"), "kty"),
        ];
        for (key, member) in cases {
            assert_eq!(material(&key).map_err(|e| e.member), Err(member), "{key:?}");
        }
        let rsa = Jwk { n: Some(b64(&[0xc5; 256])), e: Some("AQAB".into()), ..jwk("RSA") };
        assert!(matches!(material(&rsa), Ok(KeyMaterial::Rsa { .. })));
    }
}

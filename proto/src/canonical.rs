//! The canonical form of the request facts a check decides on: the path and
//! the client address.
//!
//! A proxy may report one request in many spellings (`/public/../admin`,
//! `/%61dmin`, `::ffff:198.51.100.7`), and the backend behind it decodes and
//! resolves what it receives. If routes, policies and WAF rules matched the
//! spelling, a request could walk around them. So the gateway computes the
//! canonical form once, when it validates a check, and decides on that form
//! only; a form that cannot be made unambiguous is refused. The invariant:
//! no spelling of a request gets a different decision from its canonical form.
//!
//! This module is pure (no I/O) so that the gateway, the admin API's
//! validation of route patterns and tools all apply the same rules.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

/// Longest path accepted, in bytes, as sent.
pub const MAX_PATH_BYTES: usize = 8192;

/// Why a path has no safe canonical form. Each message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not begin with `/` (an absolute-form or empty path).
    #[error("must start with '/'")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_BYTES`] bytes.
    #[error("must be at most {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// The path carries a query string (`?`); the query travels separately.
    #[error("must not contain '?': send the path without the query string, and the parameters in `query`")]
    QueryString,
    /// The path carries a fragment (`#`), which no client sends (RFC 3986 §3.5).
    #[error("must not contain '#': a fragment is never part of a request")]
    Fragment,
    /// A `%` at this byte offset is not followed by two hex digits
    /// (RFC 3986 §2.1).
    #[error("'%' at byte {0} does not start a percent-escape of two hex digits")]
    MalformedEscape(usize),
    /// Percent-escapes whose octets are not UTF-8 (`%FF`, or the overlong
    /// `%C0%AE` that lenient decoders read as `.`): backends decode them
    /// differently, or refuse them.
    #[error("percent-escapes that do not decode to UTF-8 (such as %FF, or the overlong %C0%AE) are refused")]
    NotUtf8,
    /// `%2F`: an encoded slash, which backends split on or not.
    #[error("an encoded '/' (%2F) is refused: backends disagree on whether it separates segments")]
    EncodedSlash,
    /// A backslash, raw or `%5C`, which some backends read as `/`.
    #[error("a backslash ('\\' or %5C) is refused: some backends read it as '/'")]
    Backslash,
    /// A control character (U+0000–U+001F, U+007F), raw or percent-encoded.
    #[error("control characters (NUL, CR, LF, ...), raw or percent-encoded, are refused")]
    ControlCharacter,
    /// A `;`, raw or `%3B`: a path parameter some backends strip.
    #[error("';' (raw or %3B) is refused: some backends strip ';' path parameters from segments, others do not")]
    PathParameter,
    #[error(
        "a double-encoded escape (%25 and two hex digits) is refused: a backend that decodes twice sees another path"
    )]
    /// `%25` followed by two hex digits: an escape that decodes to another escape.
    DoubleEncoded,
    /// A `..` segment would climb above `/` (RFC 3986 §5.2.4 would drop it;
    /// some backends do not).
    #[error("'..' climbs above the root")]
    AboveRoot,
    #[error(
        "an empty segment ('//') together with '..' is refused: backends that merge slashes first and those \
         that do not (RFC 3986) resolve it to different paths"
    )]
    /// An empty segment (`//`) in a path that also has `..`: resolved to
    /// different paths with and without slash merging.
    EmptySegmentWithDotDot,
}

/// Why a client address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// An IPv6 zone id (`fe80::1%eth0`, RFC 6874), which means nothing off the host.
    #[error("has a zone id ('%'): send the address alone, such as fe80::1")]
    ZoneId,
    /// An IPv4-compatible IPv6 address (`::a.b.c.d`, deprecated by RFC 4291
    /// §2.5.5.1), ambiguous with the IPv4 address.
    #[error("is an IPv4-compatible IPv6 address (::a.b.c.d), deprecated by RFC 4291 §2.5.5.1: send the IPv4 address")]
    Ipv4Compatible,
    /// Not an IPv4 or IPv6 address (a port, brackets or a host name included).
    #[error("is not an IP address: send an IPv4 or IPv6 address alone, without port or brackets")]
    NotAnAddress,
}

/// Unreserved characters (RFC 3986 §2.3): never need encoding, and an escape
/// of one means the character itself (§6.2.2.2).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters kept as they are in a canonical path: unreserved, sub-delims
/// (but `;`), `:`, `@` (RFC 3986 `pchar`) and the separator `/`.
fn kept_raw(b: u8) -> bool {
    unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' | b'/')
}

fn control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// The canonical form of a request path (without its query string).
///
/// Shape: `/` followed by segments separated by single `/`, no `.` or `..`
/// segment, a trailing `/` kept when the path had one. Each character is
/// either unreserved, a sub-delim other than `;`, `:`, `@`, `/`, or a
/// percent-escape with upper-case hex of any other octet.
///
/// The rules, in the order applied:
/// 1. the path must start with `/` and be at most [`MAX_PATH_BYTES`];
/// 2. percent-escapes of unreserved characters are decoded and the hex of the
///    others is written in upper case (RFC 3986 §6.2.2.1 and §6.2.2.2); raw
///    characters a URI may not hold (space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``,
///    `{`, `|`, `}`, non-ASCII) are percent-encoded as UTF-8 octets, as an IRI
///    is mapped to a URI (RFC 3987 §3.1);
/// 3. empty segments are dropped: `//admin` is `/admin`, as nginx does with
///    `merge_slashes on` (its default) and as Tomcat, Go's `path.Clean` and
///    Python's `normpath` do — so a route cannot be walked around with `//`;
/// 4. dot segments are resolved as RFC 3986 §5.2.4 `remove_dot_segments`
///    does, including those that were spelled `%2e`; a `..` that would climb
///    above the root is refused, as nginx answers it with 400.
///
/// Refused (with the [`PathError`] saying why), because no single form means
/// the same to every backend: `?` (the query string belongs in `query`), `#`,
/// an encoded `/`, a backslash raw or encoded, control characters raw or
/// encoded (NUL, CR, LF, ...), `;` raw or encoded (Tomcat and Jetty strip
/// `;`-parameters from segments, so `/admin;x=y/users` is `/admin/users` to
/// them and not to others; Spring Security's strict firewall refuses it too),
/// a malformed escape (`%g1`, a trailing `%`) and a double-encoded escape
/// (`%252e`: `%2e` to a backend that decodes once, `.` to one that decodes
/// twice).
///
/// The function is idempotent: `path(path(p)) == path(p)`.
pub fn path(raw: &str) -> Result<String, PathError> {
    if already_canonical(raw) {
        // The common case, on the hot path: nothing to decode, merge or resolve.
        return Ok(raw.to_string());
    }
    path_slow(raw)
}

/// Whether [`path`] would give `raw` back unchanged: absolute, within the
/// length, only bytes that stay as they are (no escape), no empty segment
/// but a trailing one, no `.` or `..` segment.
fn already_canonical(raw: &str) -> bool {
    raw.starts_with('/')
        && raw.len() <= MAX_PATH_BYTES
        && raw.bytes().all(kept_raw)
        && !raw.contains("//")
        && !raw.split('/').any(|s| s == "." || s == "..")
}

fn path_slow(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    // Step 2: one spelling per octet. After it every '/' separates segments.
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    // The octets the path names (escapes decoded), which must be UTF-8.
    let mut octets = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value =
                match (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value)) {
                    (Some(high), Some(low)) => high << 4 | low,
                    _ => return Err(PathError::MalformedEscape(i)),
                };
            match value {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::PathParameter),
                v if control(v) => return Err(PathError::ControlCharacter),
                v if unreserved(v) => decoded.push(char::from(v)),
                v => push_escape(&mut decoded, v),
            }
            octets.push(value);
            i += 3;
            continue;
        }
        octets.push(b);
        match b {
            b'?' => return Err(PathError::QueryString),
            b'#' => return Err(PathError::Fragment),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b if control(b) => return Err(PathError::ControlCharacter),
            b if kept_raw(b) => decoded.push(char::from(b)),
            b => push_escape(&mut decoded, b),
        }
        i += 1;
    }
    if std::str::from_utf8(&octets).is_err() {
        return Err(PathError::NotUtf8);
    }
    // Steps 3 and 4: merge slashes, resolve dot segments.
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    // `/admin//../x` is `/x` once slashes are merged (nginx) but `/admin/x`
    // to RFC 3986 resolution (most URL libraries, Envoy without
    // merge_slashes): no single answer, so neither is chosen.
    let inner_empty = segments.iter().take(segments.len().saturating_sub(1)).any(|s| s.is_empty());
    if inner_empty && segments.contains(&"..") {
        return Err(PathError::EmptySegmentWithDotDot);
    }
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match *segment {
            "" | "." => trailing_slash = last,
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut canonical = String::with_capacity(decoded.len());
    for segment in &kept {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        canonical.push('/');
    }
    if double_encoded(&canonical) {
        return Err(PathError::DoubleEncoded);
    }
    Ok(canonical)
}

/// Whether `%25` is followed by two hex digits (checked on the result, so
/// `%25%41` — `%2541` once the `A` is decoded — is caught too).
fn double_encoded(canonical: &str) -> bool {
    canonical
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_value(w[3]).is_some() && hex_value(w[4]).is_some())
}

/// The canonical form of a client address.
///
/// Surrounding white space is trimmed. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, `::ffff:0:0/96`, RFC 4291 §2.5.5.2) is the IPv4 client
/// it stands for: a dual-stack socket reports IPv4 clients that way. Any
/// other spelling of one address (upper-case hex, `0` groups written out)
/// parses to the same value.
///
/// Refused, each with its [`AddressError`]: a zone id (`fe80::1%eth0` names
/// an interface of the proxy's host, not a client); an IPv4-compatible
/// address (`::a.b.c.d`, the rest of `::/96` but `::` and `::1`), deprecated
/// by RFC 4291 §2.5.5.1 and produced by no current stack, so it is either a
/// misconfiguration or a spoof; ports, brackets and the legacy IPv4 forms
/// (`3325256711`, leading zeros) that `inet_aton` would read another way.
///
/// Not mapped: NAT64 addresses (`64:ff9b::/96`, RFC 6052) and 6to4 or Teredo
/// ones stay IPv6. They are the translator's address for a client, not a
/// spelling of it, and RFC 6052 forbids the well-known prefix for private
/// IPv4 space, so mapping would let a spoofed `64:ff9b::10.0.0.1` pass an
/// Allow on 10.0.0.0/8. Operators behind a translator list its prefix.
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it
/// stands for; any other address as it is. The one mapping [`address`]
/// applies, for addresses that come parsed (a socket's peer).
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The canonical form of a client address as a proxy reports it: the text
/// trimmed, parsed as an IPv4 or IPv6 address, IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`) as the IPv4 address ([`unmapped`]).
///
/// # Errors
///
/// [`AddressError::ZoneId`] for a zone id (`%`), [`AddressError::NotAnAddress`]
/// for anything that is not an address alone, and
/// [`AddressError::Ipv4Compatible`] for `::a.b.c.d` (but `::` and `::1` pass).
pub fn address(raw: &str) -> Result<IpAddr, AddressError> {
    let text = raw.trim();
    if text.contains('%') {
        return Err(AddressError::ZoneId);
    }
    let ip = unmapped(text.parse().map_err(|_| AddressError::NotAnAddress)?);
    match ip {
        IpAddr::V4(_) => Ok(ip),
        IpAddr::V6(v6) => {
            let compatible =
                v6.segments()[..6].iter().all(|s| *s == 0) && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST;
            if compatible {
                return Err(AddressError::Ipv4Compatible);
            }
            Ok(ip)
        }
    }
}

/// The network a rule value names (a CIDR block, or one address as a /32 or
/// /128), in the same canonical form as [`address`]: IPv4-mapped blocks
/// (`::ffff:198.51.100.0/120`) become the IPv4 blocks they stand for, so a
/// rule written either way matches the canonical address. `None` if the
/// value is neither (the admin API refuses such values).
pub fn network(rule: &str) -> Option<IpNet> {
    let net = match rule.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(rule.parse::<IpAddr>().ok()?),
    };
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).ok().map(IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
}

/// Whether the canonical address `ip` is inside the network a rule value names.
pub fn network_contains(rule: &str, ip: IpAddr) -> bool {
    network(rule).is_some_and(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_canonicalise_or_are_refused_with_the_reason() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/admin/users", Ok("/admin/users")),
            ("/admin/users/", Ok("/admin/users/")),
            ("/public/../admin/users", Ok("/admin/users")),
            ("/%2e%2e/admin", Err(AboveRoot)),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2E/admin", Ok("/admin")),
            ("/public/.%2e/admin", Ok("/admin")),
            ("/public/%2e./admin", Ok("/admin")),
            ("/pub%6cic/x", Ok("/public/x")),
            ("/%61dmin/users", Ok("/admin/users")),
            ("/%41%5a%30%2D%2e%5F%7e", Ok("/AZ0-._~")),
            ("/admin/./users", Ok("/admin/users")),
            ("/admin/%2e/users", Ok("/admin/users")),
            ("//admin/users", Ok("/admin/users")),
            ("/admin//users", Ok("/admin/users")),
            ("/admin///", Ok("/admin/")),
            ("//", Ok("/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/..", Ok("/")),
            ("/public//../admin", Err(EmptySegmentWithDotDot)),
            ("/admin//../public/x", Err(EmptySegmentWithDotDot)),
            ("/admin/a//../../public/x", Err(EmptySegmentWithDotDot)),
            ("/admin/%2e%2e//public/x", Err(EmptySegmentWithDotDot)),
            ("/a/..//b", Err(EmptySegmentWithDotDot)),
            ("//a/../b", Err(EmptySegmentWithDotDot)),
            ("/a/b/c/../../d", Ok("/a/d")),
            ("/..", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../admin", Err(AboveRoot)),
            ("//..", Err(EmptySegmentWithDotDot)),
            ("/...", Ok("/...")),
            ("/a..b/.x", Ok("/a..b/.x")),
            // Escapes that are not unreserved stay encoded, in upper case.
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/café", Ok("/caf%C3%A9")),
            ("/a%20b", Ok("/a%20b")),
            ("/a b", Ok("/a%20b")),
            ("/%7b%7D{}", Ok("/%7B%7D%7B%7D")),
            ("/a%3fb%23c", Ok("/a%3Fb%23c")),
            ("/%f0%9f%98%80", Ok("/%F0%9F%98%80")),
            ("/a%2Bb+c", Ok("/a%2Bb+c")),
            ("/user@host:8080/!$&'()*+,=", Ok("/user@host:8080/!$&'()*+,=")),
            ("/pets/*", Ok("/pets/*")),
            ("/discount/50%25", Ok("/discount/50%25")),
            ("/%25zz", Ok("/%25zz")),
            // Refused.
            ("", Err(NotAbsolute)),
            ("admin", Err(NotAbsolute)),
            ("%2fadmin", Err(NotAbsolute)),
            ("/admin%2fusers", Err(EncodedSlash)),
            ("/admin%2Fusers", Err(EncodedSlash)),
            ("/admin\\users", Err(Backslash)),
            ("/admin%5cusers", Err(Backslash)),
            ("/admin%5Cusers", Err(Backslash)),
            ("/a/%00", Err(ControlCharacter)),
            ("/a/\0", Err(ControlCharacter)),
            ("/a%0d%0aSet-Cookie:x", Err(ControlCharacter)),
            ("/a\tb", Err(ControlCharacter)),
            ("/a%7f", Err(ControlCharacter)),
            ("/a/%zz", Err(MalformedEscape(3))),
            ("/a/%g1", Err(MalformedEscape(3))),
            ("/a/%", Err(MalformedEscape(3))),
            ("/a/%4", Err(MalformedEscape(3))),
            ("/admin;x=y/users", Err(PathParameter)),
            ("/admin%3bx=y/users", Err(PathParameter)),
            ("/admin/users?id=1", Err(QueryString)),
            ("/admin#top", Err(Fragment)),
            ("/%252e%252e/admin", Err(DoubleEncoded)),
            ("/a%25%32%65", Err(DoubleEncoded)),
            // Octets that are not UTF-8: lenient decoders read the overlong
            // `%C0%AE` as `.`, and backends differ on the rest.
            ("/%c0%ae%c0%ae/admin", Err(NotUtf8)),
            ("/public/%ff", Err(NotUtf8)),
            ("/public/%FF%FE", Err(NotUtf8)),
            ("/caf%c3", Err(NotUtf8)),
            ("/caf%c3é", Err(NotUtf8)),
            ("/%e2%82", Err(NotUtf8)),
            ("/%ed%a0%80", Err(NotUtf8)),
            ("/%f4%90%80%80", Err(NotUtf8)),
            ("/%e0%80%af", Err(NotUtf8)),
        ];
        for (raw, expected) in cases {
            let got = path(raw);
            assert_eq!(got.as_deref().map_err(Clone::clone), expected.clone(), "path {raw:?}");
            if let Ok(canonical) = &got {
                assert_eq!(path(canonical).as_ref(), Ok(canonical), "idempotent on {raw:?}");
            }
        }
        assert_eq!(path(&format!("/{}", "a".repeat(MAX_PATH_BYTES))), Err(TooLong));
    }

    #[test]
    fn addresses_canonicalise_or_are_refused_with_the_reason() {
        use AddressError::*;
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let cases: &[(&str, Result<Option<IpAddr>, AddressError>)] = &[
            ("198.51.100.7", Ok(ip("198.51.100.7"))),
            (" 198.51.100.7\t", Ok(ip("198.51.100.7"))),
            ("::ffff:198.51.100.7", Ok(ip("198.51.100.7"))),
            ("::FFFF:c633:6407", Ok(ip("198.51.100.7"))),
            ("0:0:0:0:0:ffff:198.51.100.7", Ok(ip("198.51.100.7"))),
            ("2001:DB8::1", Ok(ip("2001:db8::1"))),
            ("2001:db8:0:0::1", Ok(ip("2001:db8::1"))),
            ("::1", Ok(ip("::1"))),
            ("::", Ok(ip("::"))),
            ("64:ff9b::198.51.100.7", Ok(ip("64:ff9b::c633:6407"))),
            ("::198.51.100.7", Err(Ipv4Compatible)),
            ("::2", Err(Ipv4Compatible)),
            ("fe80::1%eth0", Err(ZoneId)),
            ("fe80::1%25eth0", Err(ZoneId)),
            ("[2001:db8::1]", Err(NotAnAddress)),
            ("198.51.100.7:443", Err(NotAnAddress)),
            ("3325256711", Err(NotAnAddress)),
            ("198.051.100.7", Err(NotAnAddress)),
            ("0xc6.0x33.0x64.7", Err(NotAnAddress)),
            ("999.1.1.1", Err(NotAnAddress)),
            ("", Err(NotAnAddress)),
            ("example.com", Err(NotAnAddress)),
        ];
        for (raw, expected) in cases {
            let got = address(raw).map(Some);
            assert_eq!(&got, expected, "address {raw:?}");
        }
    }

    #[test]
    fn route_patterns_must_be_written_in_canonical_form() {
        let api = |path: &str| -> crate::model::Api {
            serde_json::from_value(serde_json::json!({"id": "pets", "name": "Pets",
                "routes": [{"method": "GET", "path": path}]}))
            .unwrap_or_else(|e| panic!("fixture: {e}"))
        };
        assert_eq!(crate::validate::api(&api("/pets/*")), Ok(()));
        let refused = |path: &str| crate::validate::api(&api(path)).err().map(|e| (e.field, e.message));
        let (field, message) = refused("/%70ets/*").unwrap_or_default();
        assert_eq!((field.as_str(), message.contains("/pets/*")), ("routes[0].path", true), "{message}");
        assert!(refused("//pets").is_some());
        assert!(refused("/pets/../admin").is_some());
        assert!(refused("/pets;v=1").is_some());
    }

    #[test]
    fn rule_networks_written_as_mapped_ipv6_match_ipv4_clients() {
        let client = IpAddr::from([198, 51, 100, 7]);
        for rule in ["198.51.100.0/24", "::ffff:198.51.100.0/120", "198.51.100.7", "::ffff:198.51.100.7"] {
            assert!(network_contains(rule, client), "{rule}");
        }
        assert_eq!(network("::ffff:198.51.100.0/120"), "198.51.100.0/24".parse().ok());
        assert!(!network_contains("198.51.101.0/24", client));
        assert!(!network_contains("2001:db8::/32", client));
        assert!(network_contains("2001:db8::/32", "2001:db8::1".parse().unwrap_or(client)));
        assert!(!network_contains("not a network", client));
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_rules() {
        // Every path over a small alphabet rich in the characters that
        // matter, up to 6 long: where the shortcut applies, the full rules
        // give the same answer.
        let alphabet = ['/', '.', 'a', '%', '2', 'e', ';', ':', '~'];
        let mut checked = 0;
        let mut stack: Vec<String> = vec!["/".into()];
        while let Some(p) = stack.pop() {
            if already_canonical(&p) {
                assert_eq!(path_slow(&p).as_deref(), Ok(p.as_str()), "{p}");
                checked += 1;
            }
            if p.len() < 7 {
                stack.extend(alphabet.iter().map(|c| format!("{p}{c}")));
            }
        }
        assert!(checked > 1000, "{checked}");
    }
}

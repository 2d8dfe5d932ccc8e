//! The client address behind a chain of proxies, from `X-Forwarded-For` and
//! RFC 7239 `Forwarded`.
//!
//! Each proxy appends the address it received the request from, so a chain
//! reads left to right from the (claimed) client to the proxy nearest to us.
//! Only the right end can be believed: everything left of the first proxy we
//! do not trust may have been written by the client. So the client address is
//! found by walking from the right and skipping the operator's trusted proxies
//! (`--trusted-proxies`), the model of nginx `real_ip_recursive`, Traefik's
//! `trustedIPs` and Envoy's `xff_num_trusted_hops`. All `X-Forwarded-For`
//! lines of a request are one list (RFC 9110 §5.3: repeated field lines are
//! one comma-separated value).
//!
//! This module never falls back to a less trusted source: a chain that is
//! missing or malformed is an error that the forward-auth handler answers
//! with 400, naming the header.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use tollgate_proto::canonical;

/// Why no client address could be taken from the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("{header}: the proxy must set it (see the forward-auth section of the README)")]
    Missing { header: &'static str },
    #[error("{header}: {why}")]
    Malformed { header: &'static str, why: String },
}

/// The operator's trusted proxies: networks whose entries in a chain are
/// skipped. Empty by default: the address the calling proxy saw is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The first entry from the right that is not a trusted proxy; when every
    /// entry is trusted, the leftmost. `None` for an empty chain.
    fn client_of(&self, chain: &[IpAddr]) -> Option<IpAddr> {
        chain.iter().rev().find(|ip| !self.trusts(**ip)).or(chain.first()).copied()
    }
}

/// All `X-Forwarded-For` lines as one list, left to right. An entry may carry
/// a port (`203.0.113.9:1234`, `[2001:db8::1]:443`), which is dropped.
pub fn x_forwarded_for(headers: &HeaderMap) -> Result<Vec<IpAddr>, ChainError> {
    const HEADER: &str = "x-forwarded-for";
    let mut chain = Vec::new();
    for line in headers.get_all(HEADER) {
        let line = line.to_str().map_err(|_| malformed(HEADER, "must be visible ASCII"))?;
        for entry in line.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let ip = parse_node(entry).ok_or_else(|| malformed(HEADER, format!("{entry:?} is not an IP address")))?;
            chain.push(ip);
        }
    }
    Ok(chain)
}

/// The `for=` parameters of every `Forwarded` element (RFC 7239 §4), left to
/// right, across all lines. An obfuscated or `unknown` node (§6) is kept as
/// `None`: it is a hop whose address nobody may claim.
pub fn forwarded_for(headers: &HeaderMap) -> Result<Vec<Option<IpAddr>>, ChainError> {
    const HEADER: &str = "forwarded";
    let mut chain = Vec::new();
    for line in headers.get_all(HEADER) {
        let line = line.to_str().map_err(|_| malformed(HEADER, "must be visible ASCII"))?;
        for element in split_unquoted(line, ',') {
            // RFC 7239 §4: a parameter may appear once per element.
            let mut seen_for = false;
            for pair in split_unquoted(element, ';') {
                let pair = pair.trim();
                if pair.is_empty() {
                    continue;
                }
                let (name, value) =
                    pair.split_once('=').ok_or_else(|| malformed(HEADER, format!("{pair:?} is not name=value")))?;
                if !name.trim().eq_ignore_ascii_case("for") {
                    continue;
                }
                if std::mem::replace(&mut seen_for, true) {
                    return Err(malformed(HEADER, format!("{element:?} names `for` twice")));
                }
                let value =
                    unquote(value.trim()).ok_or_else(|| malformed(HEADER, format!("{value:?}: bad quoting")))?;
                if value.eq_ignore_ascii_case("unknown") || value.starts_with('_') {
                    chain.push(None);
                    continue;
                }
                let ip =
                    parse_node(value).ok_or_else(|| malformed(HEADER, format!("{value:?} is not an IP address")))?;
                chain.push(Some(ip));
            }
        }
    }
    Ok(chain)
}

/// Which header carries the chain of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainHeader {
    /// `X-Forwarded-For`, which nginx, Caddy, Traefik and Envoy append to.
    XForwardedFor,
    /// RFC 7239 `Forwarded`, for proxies configured to maintain it.
    Forwarded,
}

/// The client address of a request that came through proxies, from the one
/// header `source` names (the other is never read: a client may have written
/// it). Canonical: IPv4-mapped IPv6 as IPv4.
pub fn client_address(
    headers: &HeaderMap,
    source: ChainHeader,
    trusted: &TrustedProxies,
) -> Result<IpAddr, ChainError> {
    let client = match source {
        ChainHeader::XForwardedFor => {
            let chain = x_forwarded_for(headers)?;
            trusted.client_of(&chain).ok_or(ChainError::Missing { header: "x-forwarded-for" })?
        }
        ChainHeader::Forwarded => {
            let chain = forwarded_for(headers)?;
            let hop = chain
                .iter()
                .rev()
                .find(|hop| !hop.is_some_and(|ip| trusted.trusts(ip)))
                .or(chain.first())
                .ok_or(ChainError::Missing { header: "forwarded" })?;
            // An obfuscated hop where the client should be: nobody may claim
            // that address, so no decision can be made on it.
            hop.ok_or_else(|| malformed("forwarded", "the client hop is obfuscated or unknown"))?
        }
    };
    Ok(client)
}

/// The client address of a request whose nearest hop is `nearest` (the
/// address the asking proxy itself accepted the connection from, as Envoy
/// reports it in ext_authz's `source.address`): that hop, unless it is one
/// of the trusted proxies; then `X-Forwarded-For` is walked from the right
/// past the trusted ones, as [`client_address`] does with `nearest`
/// appended. So `X-Forwarded-For` is read only when the operator said that
/// the nearest hop is a proxy. `nearest` must be canonical already
/// ([`canonical::address`]).
pub fn client_behind(headers: &HeaderMap, nearest: IpAddr, trusted: &TrustedProxies) -> Result<IpAddr, ChainError> {
    if !trusted.trusts(nearest) {
        return Ok(nearest);
    }
    let mut chain = x_forwarded_for(headers)?;
    chain.push(nearest);
    trusted.client_of(&chain).ok_or(ChainError::Missing { header: "x-forwarded-for" })
}

fn malformed(header: &'static str, why: impl Into<String>) -> ChainError {
    ChainError::Malformed { header, why: why.into() }
}

/// One node of a chain: an address, with an optional port; IPv6 may be in
/// brackets (required with a port). The address is read by the check's own
/// rules ([`canonical::address`]), so trusted networks match every spelling
/// and a spelling the check refuses is refused here, naming the header.
fn parse_node(text: &str) -> Option<IpAddr> {
    let address = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) || !ip.contains(':') {
            return None;
        }
        ip
    } else if text.parse::<IpAddr>().is_ok() {
        text
    } else {
        let (ip, port) = text.rsplit_once(':')?;
        if !valid_port(port) || ip.contains(':') {
            return None;
        }
        ip
    };
    canonical::address(address).ok()
}

/// RFC 7239 §6: a port is a number or an obfuscated `_token`.
fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
        || port.strip_prefix('_').is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        })
}

/// Splits on `sep` outside double quotes.
pub(crate) fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, ch) in text.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A token or a quoted-string (RFC 9110 §5.6.4), without its quotes. Escapes
/// are refused rather than interpreted: no address needs one.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => (!value.is_empty() && !value.contains(['"', '\\', ' '])).then_some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn the_client_is_the_first_untrusted_entry_from_the_right() {
        let none = trusted(&[]);
        let cdn = trusted(&["198.51.100.0/24", "10.0.0.0/8"]);
        type Case<'a> = (&'static [(&'static str, &'static str)], &'a TrustedProxies, &'static str);
        let cases: &[Case] = &[
            // The example: the client wrote the left entry.
            (&[("x-forwarded-for", "203.0.113.9, 198.51.100.7")], &none, "198.51.100.7"),
            (&[("x-forwarded-for", "203.0.113.9, 198.51.100.7")], &cdn, "203.0.113.9"),
            // Several lines are one list.
            (&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "198.51.100.7")], &cdn, "1.1.1.1"),
            (&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")], &cdn, "2.2.2.2"),
            // Every entry trusted: the leftmost.
            (&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")], &cdn, "10.1.1.1"),
            // Ports and brackets; mapped IPv6 is IPv4.
            (&[("x-forwarded-for", "1.1.1.1, 203.0.113.9:4711")], &none, "203.0.113.9"),
            (&[("x-forwarded-for", "[2001:db8::1]:443")], &none, "2001:db8::1"),
            (&[("x-forwarded-for", "::ffff:198.51.100.7")], &none, "198.51.100.7"),
            (&[("x-forwarded-for", "9.9.9.9, ::ffff:10.0.0.1")], &cdn, "9.9.9.9"),
            // A Forwarded header is not read when X-Forwarded-For is the source.
            (&[("x-forwarded-for", "5.5.5.5"), ("forwarded", "for=6.6.6.6")], &cdn, "5.5.5.5"),
        ];
        for (lines, trust, want) in cases {
            assert_eq!(client_address(&headers(lines), ChainHeader::XForwardedFor, trust), Ok(ip(want)), "{lines:?}");
        }
    }

    #[test]
    fn missing_malformed_and_disagreeing_chains_are_refused() {
        let none = trusted(&[]);
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("x-forwarded-for", "")],
            &[("x-forwarded-for", " , ")],
            &[("x-forwarded-for", "not-an-ip")],
            &[("x-forwarded-for", "1.1.1.1, 300.1.1.1")],
            &[("x-forwarded-for", "fe80::1%eth0")],
            &[("forwarded", "for=2.2.2.2")],
            &[("x-forwarded-for", "203.0.113.9:_")],
            // Spellings the check itself refuses are refused in the chain too.
            &[("x-forwarded-for", "::c633:6407")],
            &[("x-forwarded-for", "[::c633:6407]:80")],
        ];
        for lines in cases {
            assert!(client_address(&headers(lines), ChainHeader::XForwardedFor, &none).is_err(), "{lines:?}");
        }
        let forwarded_cases: &[&[(&str, &str)]] = &[
            &[],
            &[("x-forwarded-for", "1.1.1.1")],
            &[("forwarded", "for=_hidden")],
            &[("forwarded", "for=unknown")],
            &[("forwarded", "for")],
            &[("forwarded", "for=\"1.1.1.1")],
            &[("forwarded", "for=1.1.1.1:http")],
            &[("forwarded", "for=198.51.100.7;for=203.0.113.9")],
            &[("forwarded", "for=\"203.0.113.9:_\"")],
        ];
        for lines in forwarded_cases {
            assert!(client_address(&headers(lines), ChainHeader::Forwarded, &none).is_err(), "{lines:?}");
        }
    }

    #[test]
    fn forwarded_chains_are_walked_like_x_forwarded_for() {
        let cdn = trusted(&["10.0.0.0/8"]);
        let cases: &[(&str, &str)] = &[
            ("for=5.5.5.5, for=10.0.0.2", "5.5.5.5"),
            ("for=\"[2001:db8::7]:80\";proto=https", "2001:db8::7"),
            ("for=9.9.9.9;by=10.0.0.1, for=\"[::ffff:7.7.7.7]\"", "7.7.7.7"),
            ("for=_hidden, for=8.8.8.8", "8.8.8.8"),
        ];
        for (value, want) in cases {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(client_address(&h, ChainHeader::Forwarded, &cdn), Ok(ip(want)), "{value}");
        }
    }

    #[test]
    fn forwarded_parses_quoted_elements_and_obfuscated_nodes() {
        let h = headers(&[("forwarded", "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";by=_p, For=_x;proto=http")]);
        assert_eq!(forwarded_for(&h), Ok(vec![Some(ip("192.0.2.43")), Some(ip("2001:db8:cafe::17")), None]));
        let h = headers(&[("forwarded", "proto=https;host=\"a,b\"")]);
        assert_eq!(forwarded_for(&h), Ok(vec![]));
    }
}

//! A descriptor rate limit check (`ShouldRateLimit`): what a caller asks
//! about one request and the answer. Envoy's `RateLimitService` (gRPC) and
//! `POST /v1/ratelimit` (JSON) are two encodings of these types.
//!
//! The fields follow `envoy.service.ratelimit.v3.RateLimitRequest` and
//! `RateLimitResponse`; a limit's window is a [`RateLimitUnit`].

use serde::{Deserialize, Serialize};

use crate::model::RateLimitUnit;

/// The most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;
/// The most hits one request (or descriptor) may add: 10^9.
pub const MAX_HITS: u64 = 1_000_000_000;

/// One entry of a request descriptor: a key and its value.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    /// 1 to 255 bytes, e.g. `remote_address`.
    pub key: String,
    /// At most 1024 bytes, e.g. `10.0.0.1`.
    #[serde(default)]
    pub value: String,
}

/// A limit the caller sets for one descriptor itself (Envoy's
/// `RateLimitDescriptor.limit` override): used instead of the domain's.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    /// Requests per window.
    pub requests_per_unit: u32,
    /// The window.
    pub unit: RateLimitUnit,
}

/// One descriptor of a request: an ordered list of entries, matched against
/// the domain's tree from its top.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDescriptor {
    /// 1 to 16 entries.
    pub entries: Vec<DescriptorEntry>,
    /// The caller's own limit for this descriptor, if any.
    #[serde(default)]
    pub limit: Option<LimitOverride>,
    /// Hits this descriptor adds (instead of the request's `hits_addend`),
    /// 1 to 10^9 (0 reads as 1).
    #[serde(default)]
    pub hits_addend: Option<u64>,
}

/// A descriptor rate limit check.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRequest {
    /// The rate limit domain, 1 to 255 bytes.
    pub domain: String,
    /// 1 to 64 descriptors; each is counted against the limit it finds, and
    /// the request against every one or none.
    pub descriptors: Vec<RequestDescriptor>,
    /// Hits the request adds to each limit, at most 10^9 (0 reads as 1).
    #[serde(default)]
    pub hits_addend: u64,
    /// Whether to answer the `X-RateLimit-*` headers (IETF draft 03, as
    /// Envoy writes them) for the tightest limit.
    #[serde(default)]
    pub response_headers: bool,
}

/// Whether a descriptor (or the whole request) is within its limits.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RateLimitCode {
    /// Within the limit (or no limit applies): the request may go on.
    Ok,
    /// Over the limit: the request should be refused (Envoy answers 429).
    OverLimit,
}

/// The limit a descriptor found, as Envoy's `RateLimitResponse.RateLimit`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentLimit {
    /// The limit's `name`, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// Requests per window.
    pub requests_per_unit: u32,
    /// The window.
    pub unit: RateLimitUnit,
}

/// The answer for one descriptor, in the order asked.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorStatus {
    /// `OVER_LIMIT` for the limit that refused the request (and every
    /// quota-mode limit over its count); `OK` otherwise, also in shadow mode.
    pub code: RateLimitCode,
    /// The limit that applies; absent when none does (no rule matched, the
    /// limit is unlimited or replaced).
    #[serde(default)]
    pub current_limit: Option<CurrentLimit>,
    /// Requests left in the window after this one, as far as this node
    /// knows (never more than are left); `u32::MAX` for an unlimited rule;
    /// 0 when not known (a limit not charged because another refused).
    pub limit_remaining: u32,
    /// Seconds until the window ends (absent without a limit).
    #[serde(default)]
    pub duration_until_reset_secs: Option<u64>,
}

/// The answer to a [`RateLimitRequest`].
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitResponse {
    /// `OVER_LIMIT` when any descriptor's limit refused (nothing was
    /// counted then), else `OK`.
    pub overall_code: RateLimitCode,
    /// One per descriptor asked, in order.
    pub statuses: Vec<DescriptorStatus>,
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` for the tightest
    /// limit, when the request asked for them: `[name, value]` pairs.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
}

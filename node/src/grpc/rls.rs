//! Envoy's rate limit service over gRPC,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's
//! `ratelimit` HTTP filter (and the network and Thrift ones) sends the
//! descriptors its route's `rate_limits` actions built, and the answer is
//! the descriptor check [`Gateway::should_rate_limit`] decides (also
//! `POST /v1/ratelimit`), the same on every node.
//!
//! # Mapping
//!
//! | Envoy | Tollgate |
//! |---|---|
//! | `domain`, `descriptors[].entries[]` | [`RateLimitRequest`], as sent |
//! | `hits_addend` (0: 1), `descriptors[].hits_addend` | hits per descriptor |
//! | `descriptors[].limit` (override) | [`LimitOverride`]; `UNKNOWN` unit refused |
//! | `descriptors[].is_negative_hits` | refused: Tollgate gives nothing back on request |
//! | metadata `x-tollgate-ratelimit-headers: true` | `response_headers_to_add`: `X-RateLimit-*` (draft 03) |
//!
//! Bad input fails the call with `INVALID_ARGUMENT` and `FIELD: message`,
//! counting nothing; a ledger count that cannot be had fails it with
//! `UNAVAILABLE`, and Envoy's `failure_mode_deny` decides the request.
//!
//! [`Gateway::should_rate_limit`]: crate::gateway::Gateway::should_rate_limit

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::envoy::service::ratelimit::v3 as rls;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use rls::rate_limit_response::rate_limit::Unit;
use rls::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use tollgate_proto::model::RateLimitUnit;
use tollgate_proto::ratelimit::{
    DescriptorEntry, LimitOverride, RateLimitCode, RateLimitRequest, RateLimitResponse, RequestDescriptor,
    MAX_DESCRIPTORS,
};

use crate::app::App;
use crate::gateway::ratelimit::RateLimitError;

/// The gRPC service name Envoy calls (and health-checks).
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The call metadata that asks for `X-RateLimit-*` response headers.
pub const HEADERS_METADATA: &str = "x-tollgate-ratelimit-headers";

/// The `envoy.service.ratelimit.v3.RateLimitService` of one node.
pub struct Rls {
    app: Arc<App>,
}

impl Rls {
    pub fn new(app: Arc<App>) -> Rls {
        Rls { app }
    }

    /// The tonic service (no limits set: the listener sets them).
    pub fn into_server(self) -> RateLimitServiceServer<Rls> {
        RateLimitServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<rls::RateLimitRequest>,
    ) -> Result<tonic::Response<rls::RateLimitResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .get(HEADERS_METADATA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let asked = from_envoy(request.get_ref(), headers)?;
        match self.app.gateway.should_rate_limit(&asked).await {
            Ok(answer) => Ok(tonic::Response::new(to_envoy(&answer))),
            Err(RateLimitError::Invalid(e)) => Err(invalid(&e.field, &e.message)),
            Err(e @ RateLimitError::Unavailable(_)) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}

fn invalid(field: &str, message: &str) -> tonic::Status {
    tonic::Status::invalid_argument(format!("{field}: {message}"))
}

/// The request as the gateway reads it; the fields Tollgate refuses, named.
fn from_envoy(req: &rls::RateLimitRequest, response_headers: bool) -> Result<RateLimitRequest, tonic::Status> {
    if req.descriptors.len() > MAX_DESCRIPTORS {
        // Before copying any of them.
        return Err(invalid("descriptors", &format!("must hold 1 to {MAX_DESCRIPTORS} descriptors")));
    }
    let mut descriptors = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.is_negative_hits {
            return Err(invalid(&format!("descriptors[{i}].is_negative_hits"), "Tollgate gives no hits back"));
        }
        let limit = match &d.limit {
            None => None,
            Some(o) => {
                let unit = Unit::try_from(o.unit).ok().and_then(unit_from_envoy).ok_or_else(|| {
                    invalid(&format!("descriptors[{i}].limit.unit"), "must be SECOND to YEAR, not UNKNOWN")
                })?;
                Some(LimitOverride { requests_per_unit: o.requests_per_unit, unit })
            }
        };
        descriptors.push(RequestDescriptor {
            entries: d.entries.iter().map(|e| DescriptorEntry { key: e.key.clone(), value: e.value.clone() }).collect(),
            limit,
            hits_addend: d.hits_addend.as_ref().map(|h| h.value),
        });
    }
    Ok(RateLimitRequest {
        domain: req.domain.clone(),
        descriptors,
        hits_addend: u64::from(req.hits_addend),
        response_headers,
    })
}

fn unit_from_envoy(unit: Unit) -> Option<RateLimitUnit> {
    Some(match unit {
        Unit::Unknown => return None,
        Unit::Second => RateLimitUnit::Second,
        Unit::Minute => RateLimitUnit::Minute,
        Unit::Hour => RateLimitUnit::Hour,
        Unit::Day => RateLimitUnit::Day,
        Unit::Week => RateLimitUnit::Week,
        Unit::Month => RateLimitUnit::Month,
        Unit::Year => RateLimitUnit::Year,
    })
}

fn unit_to_envoy(unit: RateLimitUnit) -> Unit {
    match unit {
        RateLimitUnit::Second => Unit::Second,
        RateLimitUnit::Minute => Unit::Minute,
        RateLimitUnit::Hour => Unit::Hour,
        RateLimitUnit::Day => Unit::Day,
        RateLimitUnit::Week => Unit::Week,
        RateLimitUnit::Month => Unit::Month,
        RateLimitUnit::Year => Unit::Year,
    }
}

fn code(code: RateLimitCode) -> i32 {
    match code {
        RateLimitCode::Ok => rls::rate_limit_response::Code::Ok as i32,
        RateLimitCode::OverLimit => rls::rate_limit_response::Code::OverLimit as i32,
    }
}

fn to_envoy(answer: &RateLimitResponse) -> rls::RateLimitResponse {
    let statuses = answer
        .statuses
        .iter()
        .map(|s| rls::rate_limit_response::DescriptorStatus {
            code: code(s.code),
            current_limit: s.current_limit.as_ref().map(|l| rls::rate_limit_response::RateLimit {
                name: l.name.clone().unwrap_or_default(),
                requests_per_unit: l.requests_per_unit,
                unit: unit_to_envoy(l.unit) as i32,
            }),
            limit_remaining: s.limit_remaining,
            duration_until_reset: s
                .duration_until_reset_secs
                .map(|secs| ProtoDuration { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }),
            ..Default::default()
        })
        .collect();
    let response_headers_to_add = answer
        .response_headers
        .iter()
        .map(|(key, value)| EnvoyHeader { key: key.clone(), value: value.clone(), ..Default::default() })
        .collect();
    rls::RateLimitResponse {
        overall_code: code(answer.overall_code),
        statuses,
        response_headers_to_add,
        ..Default::default()
    }
}

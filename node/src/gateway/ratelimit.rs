//! `ShouldRateLimit`: a request's descriptors against its rate limit
//! domain, with envoyproxy/ratelimit's meaning, counted across the cluster.
//!
//! Steps, in order:
//! 1. Each descriptor finds its limit ([`tollgate_proto::descriptors::find`];
//!    a descriptor's own `limit` override comes first). An `unlimited` limit
//!    is never counted; a limit whose `name` another matched limit
//!    `replaces` is skipped.
//! 2. The limits are taken together, **all or none**, each charged the
//!    descriptor's hits (identical counts in one request are charged once,
//!    with their hits added): a request refused by one limit is charged to
//!    none (envoyproxy/ratelimit#443 charges them all). Windows of an hour
//!    and longer are leases on the replicated ledger, exact across the
//!    cluster; shorter ones are fixed-window buckets on the leader, lent out
//!    in small shares (see `metering::borrow`).
//! 3. `quota_mode` limits refuse only together: while another quota-mode
//!    limit of the request has room, one that is over is marked
//!    `OVER_LIMIT` and left out, and the others are taken.
//! 4. `shadow_mode` limits are taken one by one after the request was
//!    admitted, and never refuse.
//!
//! An unknown domain, or a descriptor no rule matches, is `OK` without a
//! limit, as envoyproxy/ratelimit answers.

use std::collections::HashSet;
use std::sync::Arc;

use smallvec::SmallVec;
use tollgate_proto::check::{LimitState, ReasonCode};
use tollgate_proto::descriptors::{self, CounterKey, CounterPath, CounterStep, Entry};
use tollgate_proto::model::{RateLimitDomain, RateLimitUnit};
use tollgate_proto::ratelimit::{
    CurrentLimit, DescriptorStatus, RateLimitCode, RateLimitRequest, RateLimitResponse, MAX_DESCRIPTORS, MAX_HITS,
};
use tollgate_proto::validate::{MAX_DESCRIPTOR_DEPTH, MAX_DESCRIPTOR_KEY, MAX_DESCRIPTOR_VALUE, MAX_DOMAIN};
use tollgate_proto::FieldError;

use super::Gateway;
use crate::metering::{Admitted, BucketId, LimitAt, Limits, QuotaLimit, ThrottleLimit};
use crate::state::published::Published;

/// Why a rate limit check was not decided.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// The request is malformed: the field and why (gRPC
    /// `INVALID_ARGUMENT`, HTTP 400).
    #[error("{0}")]
    Invalid(FieldError),
    /// A ledger count's grant could not be had from the leader in time
    /// (gRPC `UNAVAILABLE`, HTTP 503): Envoy's `failure_mode_deny` decides.
    #[error("the cluster's ledger could not be reached: {0}")]
    Unavailable(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RateLimitError {
    RateLimitError::Invalid(FieldError { field: field.into(), message: message.into() })
}

/// The field rules of a request; the first field that fails.
pub fn validate(req: &RateLimitRequest) -> Result<(), RateLimitError> {
    if req.domain.is_empty() || req.domain.len() > MAX_DOMAIN {
        return Err(invalid("domain", format!("must be 1 to {MAX_DOMAIN} bytes")));
    }
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(invalid("descriptors", format!("must hold 1 to {MAX_DESCRIPTORS} descriptors")));
    }
    if req.hits_addend > MAX_HITS {
        return Err(invalid("hits_addend", format!("at most {MAX_HITS}")));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        let at = format!("descriptors[{i}]");
        if d.entries.is_empty() || d.entries.len() > MAX_DESCRIPTOR_DEPTH {
            return Err(invalid(format!("{at}.entries"), format!("must hold 1 to {MAX_DESCRIPTOR_DEPTH} entries")));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() || e.key.len() > MAX_DESCRIPTOR_KEY {
                return Err(invalid(
                    format!("{at}.entries[{j}].key"),
                    format!("must be 1 to {MAX_DESCRIPTOR_KEY} bytes"),
                ));
            }
            if e.value.len() > MAX_DESCRIPTOR_VALUE {
                let message = format!("must be at most {MAX_DESCRIPTOR_VALUE} bytes");
                return Err(invalid(format!("{at}.entries[{j}].value"), message));
            }
        }
        if d.hits_addend.is_some_and(|h| h > MAX_HITS) {
            return Err(invalid(format!("{at}.hits_addend"), format!("at most {MAX_HITS}")));
        }
    }
    Ok(())
}

/// A limit one descriptor is counted in.
struct Counted {
    limit: CurrentLimit,
    counter: CounterKey,
    hits: u64,
    shadow: bool,
    quota_mode: bool,
}

/// What step 1 found for one descriptor.
enum Found {
    /// No limit applies (no rule, or replaced).
    None,
    /// An unlimited rule.
    Unlimited,
    Counted(Counted),
}

/// The limits of a request as metering takes them, and which limit each
/// descriptor is counted in.
struct Plan {
    limits: Limits,
    at: Vec<Option<LimitAt>>,
}

/// What happened to each descriptor.
#[derive(Clone, Copy)]
enum Outcome {
    Unknown,
    Taken(LimitState),
    Over,
}

impl Gateway {
    /// Decides a descriptor rate limit check (see the module docs).
    ///
    /// # Errors
    /// [`RateLimitError::Invalid`] naming the field, with nothing counted;
    /// [`RateLimitError::Unavailable`] when a ledger count could not be had.
    pub async fn should_rate_limit(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, RateLimitError> {
        let answer = self.decide_rate_limit(req).await;
        let label = match &answer {
            Ok(a) if a.overall_code == RateLimitCode::Ok => "ok",
            Ok(_) => "over_limit",
            Err(RateLimitError::Invalid(_)) => "invalid",
            Err(RateLimitError::Unavailable(_)) => "unavailable",
        };
        self.stats.ratelimit.with_label_values(&[label]).inc();
        answer
    }

    async fn decide_rate_limit(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, RateLimitError> {
        validate(req)?;
        let now_ms = self.clock.now_ms();
        let published: Arc<Published> = self.model.load_full();
        let Some(domain) = published.model.rate_limit_domain(&req.domain) else {
            let statuses = req.descriptors.iter().map(|_| status(RateLimitCode::Ok, None, 0, None)).collect();
            return Ok(RateLimitResponse { overall_code: RateLimitCode::Ok, statuses, response_headers: Vec::new() });
        };
        let found = find_limits(domain, req);
        let epoch = published.limits.of(&descriptors::ledger_plan_id(&domain.domain));

        // Steps 2 and 3: all or none, quota-mode limits refusing together.
        let mut outcomes = vec![Outcome::Unknown; found.len()];
        let mut left_out: HashSet<usize> = HashSet::new();
        let quota_mode: Vec<usize> =
            (0..found.len()).filter(|&i| matches!(&found[i], Found::Counted(c) if c.quota_mode && !c.shadow)).collect();
        let admitted = loop {
            let plan = plan(domain, &found, |i, c| !c.shadow && !left_out.contains(&i), now_ms, epoch);
            match self.metering.admit(&plan.limits, now_ms).await {
                Ok(admitted) => {
                    record(&plan, &admitted, &mut outcomes);
                    break true;
                }
                Err(refusal) if refusal.reason == ReasonCode::QuotaUnavailable => {
                    return Err(RateLimitError::Unavailable("no grant from the leader in time".into()));
                }
                Err(refusal) => {
                    let refused: Vec<usize> =
                        (0..found.len()).filter(|&i| plan.at[i].is_some() && plan.at[i] == refusal.at).collect();
                    for &i in &refused {
                        outcomes[i] = Outcome::Over;
                    }
                    let only_quota_mode = !refused.is_empty() && refused.iter().all(|i| quota_mode.contains(i));
                    left_out.extend(refused);
                    let room_left = quota_mode.iter().any(|i| !left_out.contains(i));
                    if !(only_quota_mode && room_left) {
                        break false;
                    }
                }
            }
        };

        // Step 4: shadow limits, one by one, never refusing.
        if admitted {
            for (i, f) in found.iter().enumerate() {
                let Found::Counted(c) = f else { continue };
                if !c.shadow {
                    continue;
                }
                let plan = plan(domain, &found, |j, _| j == i, now_ms, epoch);
                if let Ok(taken) = self.metering.admit(&plan.limits, now_ms).await {
                    record(&plan, &taken, &mut outcomes);
                }
            }
        }

        let statuses: Vec<DescriptorStatus> = found
            .iter()
            .zip(&outcomes)
            .map(|(f, outcome)| match f {
                Found::None => status(RateLimitCode::Ok, None, 0, None),
                Found::Unlimited => status(RateLimitCode::Ok, None, u32::MAX, None),
                Found::Counted(c) => {
                    let reset = Some(reset_secs(c.limit.unit, now_ms));
                    let (code, remaining) = match outcome {
                        Outcome::Over if !c.shadow => (RateLimitCode::OverLimit, 0),
                        Outcome::Taken(state) => {
                            (RateLimitCode::Ok, u32::try_from(state.remaining).unwrap_or(u32::MAX))
                        }
                        Outcome::Over | Outcome::Unknown => (RateLimitCode::Ok, 0),
                    };
                    status(code, Some(c.limit.clone()), remaining, reset)
                }
            })
            .collect();
        let overall_code = if admitted { RateLimitCode::Ok } else { RateLimitCode::OverLimit };
        let response_headers = if req.response_headers { headers(&found, &statuses) } else { Vec::new() };
        Ok(RateLimitResponse { overall_code, statuses, response_headers })
    }
}

fn status(code: RateLimitCode, limit: Option<CurrentLimit>, remaining: u32, reset: Option<u64>) -> DescriptorStatus {
    DescriptorStatus { code, current_limit: limit, limit_remaining: remaining, duration_until_reset_secs: reset }
}

/// Seconds until the window of `unit` holding `now_ms` ends (at least 1).
fn reset_secs(unit: RateLimitUnit, now_ms: i64) -> u64 {
    let (_, end) = unit.window(now_ms);
    ((end - now_ms).max(0) as u64).div_ceil(1000).max(1)
}

/// Step 1: each descriptor's limit, replaced ones left out.
fn find_limits(domain: &RateLimitDomain, req: &RateLimitRequest) -> Vec<Found> {
    let mut replaced: HashSet<&str> = HashSet::new();
    let mut found: Vec<Found> = Vec::with_capacity(req.descriptors.len());
    for d in &req.descriptors {
        let hits = match d.hits_addend.unwrap_or(req.hits_addend) {
            0 => 1,
            n => n,
        };
        if let Some(o) = d.limit {
            // The caller's own limit: counted per descriptor as asked, never
            // shadowed (envoyproxy/ratelimit does the same).
            let path = d
                .entries
                .iter()
                .map(|e| CounterStep { key: e.key.clone(), rule_value: None, value: e.value.clone() })
                .collect();
            let counter =
                CounterKey { path: CounterPath(path), unit: o.unit, override_limit: Some(o.requests_per_unit) };
            let limit = CurrentLimit { name: None, requests_per_unit: o.requests_per_unit, unit: o.unit };
            found.push(Found::Counted(Counted { limit, counter, hits, shadow: false, quota_mode: false }));
            continue;
        }
        let entries: SmallVec<[Entry; 4]> = d.entries.iter().map(|e| Entry { key: &e.key, value: &e.value }).collect();
        let Some(f) = descriptors::find(domain, &entries) else {
            found.push(Found::None);
            continue;
        };
        replaced.extend(f.limit.replaces.iter().map(|r| r.name.as_str()));
        match (f.limit.unlimited, f.limit.unit) {
            (false, Some(unit)) => {
                let limit =
                    CurrentLimit { name: f.limit.name.clone(), requests_per_unit: f.limit.requests_per_unit, unit };
                let counter = CounterKey { path: f.counter, unit, override_limit: None };
                let (shadow, quota_mode) = (f.rule.shadow_mode, f.rule.quota_mode);
                found.push(Found::Counted(Counted { limit, counter, hits, shadow, quota_mode }));
            }
            // Unlimited (validation allows no other way to lack a unit).
            _ => found.push(Found::Unlimited),
        }
    }
    for f in &mut found {
        if let Found::Counted(c) = f {
            if c.limit.name.as_deref().is_some_and(|n| replaced.contains(n)) {
                *f = Found::None;
            }
        }
    }
    found
}

/// The limits of the counted descriptors that `include` picks, identical
/// counts merged (their hits added).
fn plan(
    domain: &RateLimitDomain,
    found: &[Found],
    include: impl Fn(usize, &Counted) -> bool,
    now_ms: i64,
    epoch: u64,
) -> Plan {
    let mut limits = Limits::default();
    let mut at = vec![None; found.len()];
    for (i, f) in found.iter().enumerate() {
        let Found::Counted(c) = f else { continue };
        if !include(i, c) {
            continue;
        }
        let (start_ms, end_ms) = c.counter.unit.window(now_ms);
        if c.counter.unit.ledgered() {
            let period = c.counter.period(&domain.domain, start_ms);
            at[i] = Some(match limits.quotas.iter().position(|q| q.period == period) {
                Some(j) => {
                    limits.quotas[j].cost = limits.quotas[j].cost.saturating_add(c.hits);
                    LimitAt::Quota(j)
                }
                None => {
                    let limit = u64::from(c.limit.requests_per_unit);
                    limits.quotas.push(QuotaLimit { period, limit, ends_ms: end_ms, epoch, cost: c.hits });
                    LimitAt::Quota(limits.quotas.len() - 1)
                }
            });
        } else {
            let bucket = BucketId::Window { domain: domain.domain.clone(), counter: c.counter.clone(), start_ms };
            at[i] = Some(match limits.throttles.iter().position(|t| t.bucket == bucket) {
                Some(j) => {
                    limits.throttles[j].cost = limits.throttles[j].cost.saturating_add(c.hits);
                    LimitAt::Throttle(j)
                }
                None => {
                    limits.throttles.push(ThrottleLimit::fixed_window(bucket, c.limit.requests_per_unit, c.hits));
                    LimitAt::Throttle(limits.throttles.len() - 1)
                }
            });
        }
    }
    Plan { limits, at }
}

/// Notes each planned descriptor's state after an admission.
fn record(plan: &Plan, admitted: &Admitted, outcomes: &mut [Outcome]) {
    let throttles = plan.limits.throttles.len();
    for (i, at) in plan.at.iter().enumerate() {
        let index = match at {
            Some(LimitAt::Throttle(j)) => *j,
            Some(LimitAt::Quota(j)) => throttles + j,
            None => continue,
        };
        if let Some(state) = admitted.states.get(index) {
            outcomes[i] = Outcome::Taken(*state);
        }
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (IETF
/// draft-ietf-httpapi-ratelimit-headers-03, as Envoy writes them) for the
/// tightest limit: one over its limit, else the fewest left.
fn headers(found: &[Found], statuses: &[DescriptorStatus]) -> Vec<(String, String)> {
    let tightest = found
        .iter()
        .zip(statuses)
        .filter_map(|(f, s)| match f {
            Found::Counted(c) if !c.shadow => Some((s, c)),
            _ => None,
        })
        .min_by_key(|(s, _)| (s.code != RateLimitCode::OverLimit, s.limit_remaining));
    let Some((s, c)) = tightest else { return Vec::new() };
    let per = c.limit.requests_per_unit;
    vec![
        ("x-ratelimit-limit".into(), format!("{per}, {per};w={}", c.limit.unit.secs())),
        ("x-ratelimit-remaining".into(), s.limit_remaining.to_string()),
        ("x-ratelimit-reset".into(), s.duration_until_reset_secs.unwrap_or(0).to_string()),
    ]
}

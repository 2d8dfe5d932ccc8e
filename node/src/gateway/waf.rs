//! WAF-style rules of an API, checked in order before anything else: IP sets,
//! size limits, regular-expression matches on path, query and headers, and
//! per-source-address rate rules. The first blocking rule that matches ends
//! the check; `count` rules only count.
//!
//! Rules see only the canonical facts of [`ValidRequest`]: the canonical path and
//! client address (so `/%61dmin` meets a rule on `^/admin`, and
//! `::ffff:198.51.100.7` an IP set on 198.51.100.0/24 and the same per-IP
//! counter as 198.51.100.7). IP set entries are read with
//! [`canonical::network`], so an entry written as IPv4-mapped IPv6 matches too.
//!
//! Regular expressions are compiled once (within the size limits the admin
//! API enforces) and kept by pattern.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::Regex;
use tollgate_proto::canonical;
use tollgate_proto::check::ReasonCode;
use tollgate_proto::model::{Throttle, WafAction, WafCondition, WafRule};
use tollgate_proto::validate::waf_regex;

use super::limits::{BucketId, Limiter};
use super::ValidRequest;

#[derive(Default)]
pub struct Waf {
    compiled: Mutex<HashMap<String, Option<Arc<Regex>>>>,
}

/// A blocking rule that matched: its reason, name and (for rate rules) when to retry.
pub struct Blocked {
    pub reason: ReasonCode,
    pub rule: String,
    pub retry_after_secs: Option<u64>,
}

impl Waf {
    fn regex(&self, pattern: &str) -> Option<Arc<Regex>> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.entry(pattern.to_string()).or_insert_with(|| waf_regex(pattern).ok().map(Arc::new)).clone()
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        self.regex(pattern).is_some_and(|r| r.is_match(text))
    }

    /// Runs the rules; `count` matches are reported through `counted`.
    pub(super) fn evaluate(
        &self,
        api: &str,
        rules: &[WafRule],
        c: &ValidRequest<'_>,
        limiter: &Limiter,
        now_ms: i64,
        counted: &mut dyn FnMut(&str),
    ) -> Option<Blocked> {
        let (headers, source_ip) = (&c.headers, c.source_ip);
        for (i, rule) in rules.iter().enumerate() {
            let mut retry_after_secs = None;
            let matched = match &rule.condition {
                WafCondition::IpSet(nets) => {
                    source_ip.is_some_and(|ip| nets.iter().any(|n| canonical::network_contains(n, ip)))
                }
                WafCondition::MaxBodyBytes(max) => c.body_size.is_some_and(|b| b > *max),
                WafCondition::MaxHeaderBytes(max) => {
                    headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() as u64 > *max
                }
                WafCondition::PathMatches(r) => self.matches(r, &c.path),
                WafCondition::QueryMatches(r) => {
                    let query: Vec<String> = c.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    self.matches(r, &query.join("&"))
                }
                WafCondition::HeaderMatches { name, regex } => {
                    headers.get(name).is_some_and(|v| self.matches(regex, v))
                }
                WafCondition::RatePerIp { limit, window_secs } => match source_ip {
                    None => false,
                    Some(ip) => {
                        let t = Throttle { rate_per_sec: *limit as f64 / *window_secs as f64, burst: *limit };
                        let id = BucketId::WafIp { api: api.to_string(), rule: i, ip };
                        match limiter.take(id, t, now_ms) {
                            Ok(()) => false,
                            Err(retry) => {
                                retry_after_secs = Some(retry);
                                true
                            }
                        }
                    }
                },
            };
            if !matched {
                continue;
            }
            match rule.action {
                WafAction::Count => counted(&rule.name),
                WafAction::Block => {
                    let reason = match rule.condition {
                        WafCondition::RatePerIp { .. } => ReasonCode::WafRateLimited,
                        _ => ReasonCode::WafBlocked,
                    };
                    return Some(Blocked { reason, rule: rule.name.clone(), retry_after_secs });
                }
            }
        }
        None
    }
}

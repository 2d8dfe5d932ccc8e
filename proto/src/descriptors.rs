//! How a request's descriptor finds its limit in a rate limit domain, and
//! the identity of the count it is counted in.
//!
//! The rules are envoyproxy/ratelimit's (`GetLimit`), matched on the entries'
//! keys and values apart rather than on `key_value` strings (where key `a_b`
//! with value `c` and key `a` with value `b_c` would meet):
//!
//! - At each level, the entry `(key, value)` matches, in this order: the rule
//!   with that key and exactly that value; else the first rule (in the order
//!   written) with that key whose value is a `*` pattern the value matches;
//!   else the rule with that key and no value.
//! - A descriptor has a limit only if the rule matched by its **last** entry
//!   has one: a descriptor shorter or longer than the tree's path has none.
//! - Each distinct request descriptor is counted apart (its entries, in
//!   order, are the count's identity), except that a pattern rule with
//!   `share_threshold` counts every value it matches as one.
//!
//! A [`CounterPath`] names the rules the descriptor went through as well as
//! the values counted, so the state machine can find the same limit again
//! for a count's ledger without matching anything ([`resolve`]).

use serde::{Deserialize, Serialize};

use crate::command::QuotaPeriod;
use crate::model::{DescriptorRateLimit, DescriptorRule, RateLimitDomain, RateLimitUnit};

/// One entry of a request's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's key, e.g. `remote_address`.
    pub key: &'a str,
    /// Its value, e.g. `10.0.0.1`; may be empty.
    pub value: &'a str,
}

/// One step of a [`CounterPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CounterStep {
    /// The entry's key (and the rule's).
    pub key: String,
    /// The value of the rule matched, as written (`None`: the key-only rule).
    pub rule_value: Option<String>,
    /// The value counted: the request's, or the rule's pattern when the
    /// rule shares one count among the values it matches.
    pub value: String,
}

/// The identity of a count within its domain: the rules a descriptor
/// matched, with the values counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CounterPath(pub Vec<CounterStep>);

/// The limit a descriptor found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<'d> {
    /// The rule its last entry matched.
    pub rule: &'d DescriptorRule,
    /// That rule's limit.
    pub limit: &'d DescriptorRateLimit,
    /// What it is counted in.
    pub counter: CounterPath,
}

/// Whether `value` matches `pattern`, where each `*` matches any run of
/// characters (none included).
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else { return pattern == value };
    let Some(mut rest) = value.strip_prefix(first) else { return false };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else { return first == value };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A rule's value, `None` when left out or empty.
fn value_of(r: &DescriptorRule) -> Option<&str> {
    r.value.as_deref().filter(|v| !v.is_empty())
}

/// The rule among `rules` that `entry` matches, and the value counted.
fn step<'d>(rules: &'d [DescriptorRule], entry: Entry<'_>) -> Option<(&'d DescriptorRule, String)> {
    if !entry.value.is_empty() {
        if let Some(r) = rules.iter().find(|r| r.key == entry.key && value_of(r) == Some(entry.value)) {
            return Some((r, entry.value.to_string()));
        }
        let pattern = rules.iter().find_map(|r| {
            let v = value_of(r)?;
            (r.key == entry.key && v.contains('*') && wildcard_match(v, entry.value)).then_some((r, v))
        });
        if let Some((r, pattern)) = pattern {
            let counted = if r.share_threshold { pattern } else { entry.value };
            return Some((r, counted.to_string()));
        }
    }
    let r = rules.iter().find(|r| r.key == entry.key && value_of(r).is_none())?;
    Some((r, entry.value.to_string()))
}

/// The limit of the descriptor `entries` in `domain`, with its count's
/// identity; `None` when no rule's limit applies (see the module docs).
pub fn find<'d>(domain: &'d RateLimitDomain, entries: &[Entry<'_>]) -> Option<Found<'d>> {
    let mut rules: &[DescriptorRule] = &domain.descriptors;
    let mut path = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let (rule, counted) = step(rules, *entry)?;
        path.push(CounterStep {
            key: entry.key.to_string(),
            rule_value: rule.value.clone().filter(|v| !v.is_empty()),
            value: counted,
        });
        if i + 1 == entries.len() {
            let limit = rule.rate_limit.as_ref()?;
            return Some(Found { rule, limit, counter: CounterPath(path) });
        }
        if rule.descriptors.is_empty() {
            return None;
        }
        rules = &rule.descriptors;
    }
    None
}

/// The limit a count's ledger is bounded by: the rule `path` names, found
/// by the rules' keys and values as written (not by matching again).
/// `None` when the domain no longer has that rule or it has no limit.
pub fn resolve<'d>(domain: &'d RateLimitDomain, path: &CounterPath) -> Option<&'d DescriptorRateLimit> {
    let mut rules: &[DescriptorRule] = &domain.descriptors;
    let mut found: Option<&DescriptorRule> = None;
    for (i, step) in path.0.iter().enumerate() {
        if i > 0 {
            rules = &found?.descriptors;
        }
        found = rules.iter().find(|r| r.key == step.key && value_of(r) == step.rule_value.as_deref());
    }
    found?.rate_limit.as_ref()
}

/// The `plan_id` of a descriptor count's ledger starts with this, followed by
/// the domain; no usage plan's id can (ids are `A-Z a-z 0-9 _ -`).
pub const LEDGER_PLAN_PREFIX: &str = "#ratelimit/";

/// A descriptor count kept in the replicated quota ledger (windows of an
/// hour and longer): exact across the cluster, as quotas are. Its ledger's
/// [`QuotaPeriod`] is `{ key_id: <this, as JSON>, plan_id:
/// "#ratelimit/<domain>", start_ms: <window start> }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CounterKey {
    /// The count within its domain.
    pub path: CounterPath,
    /// The window's unit: a count of another unit is another count.
    pub unit: RateLimitUnit,
    /// The limit the request's descriptor set itself (Envoy's descriptor
    /// `limit` override), if it did; else the rule's.
    pub override_limit: Option<u32>,
}

/// The `plan_id` under which `domain`'s descriptor counts are leased (and
/// whose limits epoch moves when the domain changes).
pub fn ledger_plan_id(domain: &str) -> String {
    format!("{LEDGER_PLAN_PREFIX}{domain}")
}

impl CounterKey {
    /// The ledger period of this count in `domain` for the window starting
    /// at `start_ms`.
    pub fn period(&self, domain: &str, start_ms: i64) -> QuotaPeriod {
        QuotaPeriod {
            key_id: serde_json::to_string(self).unwrap_or_default(),
            plan_id: ledger_plan_id(domain),
            start_ms,
        }
    }

    /// The domain and count of a descriptor ledger's period; `None` for a
    /// key's quota period.
    ///
    /// # Errors
    /// The period says it is a descriptor count but its `key_id` is not one.
    pub fn of_period(period: &QuotaPeriod) -> Option<Result<(&str, CounterKey), String>> {
        let domain = period.plan_id.strip_prefix(LEDGER_PLAN_PREFIX)?;
        Some(
            serde_json::from_str(&period.key_id)
                .map(|key| (domain, key))
                .map_err(|e| format!("not a descriptor count: {e}")),
        )
    }

    /// When the window starting at `start_ms` ends, ms since the epoch.
    pub fn window_end_ms(&self, start_ms: i64) -> i64 {
        start_ms.saturating_add(self.unit.secs().saturating_mul(1000))
    }

    /// The limit this count's ledger is bounded by in `domain`.
    ///
    /// # Errors
    /// Why the count has no ledger there: its rule is gone or changed unit,
    /// it is unlimited, or its window is shorter than an hour (those are
    /// counted by the leader, not the ledger).
    pub fn ledger_limit(&self, domain: &RateLimitDomain) -> Result<u64, String> {
        if !self.unit.ledgered() {
            return Err(format!("a {} window is counted by the leader, not the ledger", self.unit.as_str()));
        }
        if let Some(limit) = self.override_limit {
            return Ok(limit as u64);
        }
        let limit = resolve(domain, &self.path)
            .ok_or_else(|| format!("domain {:?} has no such descriptor limit now", domain.domain))?;
        if limit.unlimited || limit.unit != Some(self.unit) {
            return Err(format!("the descriptor's limit in domain {:?} changed", domain.domain));
        }
        Ok(limit.requests_per_unit as u64)
    }
}

impl RateLimitUnit {
    /// Whether counts of this window live in the replicated ledger (exact
    /// across the cluster): an hour and longer. Shorter windows are counted
    /// by the leader and lent out.
    pub fn ledgered(self) -> bool {
        self.secs() >= 3_600
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LimitReplaces, Timestamp};

    fn rule(key: &str, value: Option<&str>, per: Option<u32>, children: Vec<DescriptorRule>) -> DescriptorRule {
        DescriptorRule {
            key: key.into(),
            value: value.map(str::to_string),
            rate_limit: per.map(|n| DescriptorRateLimit {
                requests_per_unit: n,
                unit: Some(RateLimitUnit::Minute),
                unlimited: false,
                name: None,
                replaces: Vec::<LimitReplaces>::new(),
            }),
            descriptors: children,
            shadow_mode: false,
            quota_mode: false,
            share_threshold: false,
            detailed_metric: false,
            value_to_metric: false,
        }
    }

    fn domain(rules: Vec<DescriptorRule>) -> RateLimitDomain {
        RateLimitDomain {
            id: "d".into(),
            domain: "edge".into(),
            descriptors: rules,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn limit_of(d: &RateLimitDomain, entries: &[(&str, &str)]) -> Option<u32> {
        let entries: Vec<Entry> = entries.iter().map(|(k, v)| Entry { key: k, value: v }).collect();
        let found = find(d, &entries)?;
        // Whatever a descriptor finds, its counter path resolves to again.
        assert_eq!(resolve(d, &found.counter), Some(found.limit));
        Some(found.limit.requests_per_unit)
    }

    #[test]
    fn every_matching_rule_of_the_reference_service_holds() {
        let mut shared = rule("path", Some("/files/*"), Some(7), vec![]);
        shared.share_threshold = true;
        let d = domain(vec![
            rule("database", Some("users"), Some(500), vec![]),
            rule("database", None, Some(100), vec![]),
            rule("path", Some("/api/*/items"), Some(3), vec![]),
            shared,
            rule(
                "remote_address",
                None,
                None,
                vec![rule("path", Some("/login"), Some(5), vec![]), rule("path", None, Some(50), vec![])],
            ),
            rule("a_b", Some("c"), Some(11), vec![]),
        ]);
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<u32>);
        let table: &[Row] = &[
            // Exact value first, then the key alone.
            (&[("database", "users")], Some(500)),
            (&[("database", "orders")], Some(100)),
            (&[("database", "")], Some(100)),
            // Patterns: a middle '*', a trailing one.
            (&[("path", "/api/v1/items")], Some(3)),
            (&[("path", "/api//items")], Some(3)),
            (&[("path", "/api/v1/items/x")], None),
            (&[("path", "/files/a/b")], Some(7)),
            (&[("path", "/other")], None),
            // Nested: the limit of the rule the last entry matched.
            (&[("remote_address", "10.0.0.1"), ("path", "/login")], Some(5)),
            (&[("remote_address", "10.0.0.1"), ("path", "/x")], Some(50)),
            // A descriptor shorter or longer than the tree's path has no limit.
            (&[("remote_address", "10.0.0.1")], None),
            (&[("database", "users"), ("extra", "1")], None),
            (&[("remote_address", "1"), ("path", "/login"), ("more", "1")], None),
            // Keys and values are matched apart: `a` + `b_c` is not `a_b` + `c`.
            (&[("a_b", "c")], Some(11)),
            (&[("a", "b_c")], None),
            (&[], None),
            (&[("unknown", "x")], None),
        ];
        for (entries, want) in table {
            assert_eq!(limit_of(&d, entries), *want, "{entries:?}");
        }
    }

    #[test]
    fn distinct_values_count_apart_unless_a_pattern_shares_one_count() {
        let mut shared = rule("path", Some("/files/*"), Some(7), vec![]);
        shared.share_threshold = true;
        let d =
            domain(vec![rule("user", None, Some(1), vec![]), shared, rule("path", Some("/api/*"), Some(2), vec![])]);
        let counter = |k: &str, v: &str| find(&d, &[Entry { key: k, value: v }]).map(|f| f.counter);
        assert_ne!(counter("user", "a"), counter("user", "b"));
        assert_ne!(counter("path", "/api/a"), counter("path", "/api/b"));
        assert_eq!(counter("path", "/files/a"), counter("path", "/files/b"));
    }

    #[test]
    fn a_removed_rule_no_longer_resolves() {
        let d = domain(vec![rule("user", None, Some(1), vec![])]);
        let found = find(&d, &[Entry { key: "user", value: "a" }]).map(|f| f.counter);
        let Some(counter) = found else { panic!("user has a limit") };
        let changed = domain(vec![rule("user", Some("b"), Some(1), vec![])]);
        assert_eq!(resolve(&changed, &counter), None);
    }

    #[test]
    fn units_read_in_lower_case_and_in_envoys_upper_case_and_windows_align_to_the_epoch() {
        for (text, unit) in
            [("\"hour\"", RateLimitUnit::Hour), ("\"HOUR\"", RateLimitUnit::Hour), ("\"YEAR\"", RateLimitUnit::Year)]
        {
            assert_eq!(serde_json::from_str::<RateLimitUnit>(text).ok(), Some(unit), "{text}");
        }
        assert!(serde_json::from_str::<RateLimitUnit>("\"Hour\"").is_err());
        assert_eq!(RateLimitUnit::Minute.window(125_000), (120_000, 180_000));
        assert_eq!(RateLimitUnit::Month.window(0), (0, 30 * 86_400_000));
    }

    #[test]
    fn wildcards_match_as_the_reference_service_does() {
        let table = [
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ba", false),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "abcbc", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "ac", false),
            ("ab*ba", "aba", false),
            ("*", "", true),
            ("x", "x", true),
            ("x", "y", false),
        ];
        for (pattern, value, want) in table {
            assert_eq!(wildcard_match(pattern, value), want, "{pattern} {value}");
        }
    }
}

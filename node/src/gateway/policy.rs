//! IAM-style authorization: statements with Allow/Deny, principals, actions,
//! resources (`api/stage/METHOD/path`, globbed) and conditions.
//!
//! Evaluation as in IAM: an explicit Deny beats any Allow, an Allow beats the
//! implicit deny. Resource policies (attached to an API) and principal
//! policies (naming keys, subjects, groups) are evaluated together. A request
//! that no policy governs — its API has no resource policy and no principal
//! policy names its principal — is not restricted by policies at all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tollgate_proto::canonical;
use tollgate_proto::model::{Condition, ConditionOperator, Effect, Statement};

use super::pattern::glob_matches;
use crate::state::Model;

/// What conditions and principals are matched against.
pub struct RequestFacts<'a> {
    /// `api/stage/METHOD/path`, from the canonical path without its leading `/`.
    pub resource: &'a str,
    /// The caller's principal names (`key:ID`, `customer:ID`, `sub:…`, `group:…`);
    /// empty when anonymous.
    pub principals: &'a [String],
    /// The canonical client address; rule values are read with
    /// [`canonical::network`], so IPv4-mapped spellings on either side agree.
    pub source_ip: Option<IpAddr>,
    pub proxy_id: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
    pub tags: Option<&'a BTreeMap<String, String>>,
    pub claims: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No policy governs this request.
    NotGoverned,
    Allow,
    /// An explicit Deny matched; `resource_policy` says where it was.
    Deny {
        resource_policy: bool,
    },
    /// Governed, but nothing allowed it.
    ImplicitDeny {
        resource_policy: bool,
    },
}

fn principal_matches(statement: &Statement, principals: &[String]) -> bool {
    statement.principals.iter().any(|p| p == "*" || principals.iter().any(|mine| glob_matches(p, mine)))
}

fn names_principal(statement: &Statement, principals: &[String]) -> bool {
    statement.principals.iter().any(|p| p != "*" && principals.iter().any(|mine| glob_matches(p, mine)))
}

fn applies(statement: &Statement, facts: &RequestFacts<'_>) -> bool {
    !is_admin_statement(statement)
        && principal_matches(statement, facts.principals)
        && statement.actions.iter().any(|a| a == "*" || a == "invoke")
        && statement.resources.iter().any(|r| glob_matches(r, facts.resource))
        && statement.conditions.iter().all(|c| condition_holds(c, facts))
}

fn condition_holds(c: &Condition, facts: &RequestFacts<'_>) -> bool {
    use ConditionOperator::*;
    if c.key == "source_ip" {
        let inside = facts.source_ip.is_some_and(|ip| c.values.iter().any(|v| canonical::network_contains(v, ip)));
        return match c.operator {
            IpAddress => inside,
            NotIpAddress => !inside,
            _ => false,
        };
    }
    let value: Option<&str> = if c.key == "proxy_id" {
        facts.proxy_id
    } else if let Some(name) = c.key.strip_prefix("header:") {
        facts.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    } else if let Some(name) = c.key.strip_prefix("tag:") {
        facts.tags.and_then(|t| t.get(name)).map(String::as_str)
    } else if let Some(name) = c.key.strip_prefix("claim:") {
        facts.claims.and_then(|t| t.get(name)).map(String::as_str)
    } else {
        None
    };
    // As in IAM: a key missing from the request matches no positive operator,
    // and so satisfies every negated one.
    match (c.operator, value) {
        (StringEquals, Some(v)) => c.values.iter().any(|x| x == v),
        (StringNotEquals, Some(v)) => !c.values.iter().any(|x| x == v),
        (StringLike, Some(v)) => c.values.iter().any(|x| glob_matches(x, v)),
        (StringNotLike, Some(v)) => !c.values.iter().any(|x| glob_matches(x, v)),
        (StringNotEquals | StringNotLike, None) => true,
        _ => false,
    }
}

/// Whether a statement can be decided before authentication: it applies to
/// everyone and its conditions need nothing the caller's identity provides.
fn decidable_anonymously(statement: &Statement) -> bool {
    statement.principals.iter().any(|p| p == "*")
        && statement.conditions.iter().all(|c| !(c.key.starts_with("tag:") || c.key.starts_with("claim:")))
}

/// Explicit denies of the API's resource policy that need no principal:
/// checked before authentication, so a blocked network never reaches it.
/// Statements on key tags or token claims wait for [`evaluate`].
pub fn early_deny(model: &Model, api: &str, facts: &RequestFacts<'_>) -> bool {
    model
        .policies()
        .filter(|p| p.api_id.as_deref() == Some(api))
        .flat_map(|p| &p.statements)
        .any(|s| s.effect == Effect::Deny && decidable_anonymously(s) && applies(s, facts))
}

/// Whether any policy that can apply to a request for `api` (its resource
/// policy, and principal policies) has a condition on `source_ip`: a check
/// without the client address cannot be decided on it.
pub fn uses_source_ip(model: &Model, api: &str) -> bool {
    model
        .policies()
        .filter(|p| !matches!(p.api_id.as_deref(), Some(a) if a != api))
        .flat_map(|p| &p.statements)
        .filter(|s| !is_admin_statement(s))
        .any(|s| s.conditions.iter().any(|c| c.key == "source_ip"))
}

pub use tollgate_proto::policy::{is_admin_statement, AdminRequest, AdminVerdict, ADMIN_PRINCIPAL};

/// Decides an admin request by the admin statements of the model's policies
/// (see [`tollgate_proto::policy::evaluate_admin`]); with no resources, the
/// route-level check made before a request's body is read.
pub fn evaluate_admin(model: &Model, request: &AdminRequest<'_>) -> AdminVerdict {
    tollgate_proto::policy::evaluate_admin(model.policies(), request)
}

/// The full evaluation, once the principal is known.
pub fn evaluate(model: &Model, api: &str, facts: &RequestFacts<'_>) -> Verdict {
    let mut governed_by_resource = false;
    let mut governed_by_principal = false;
    let mut allowed = false;
    for policy in model.policies() {
        let is_resource = match &policy.api_id {
            Some(a) if a == api => true,
            Some(_) => continue,
            None => false,
        };
        for s in policy.statements.iter().filter(|s| !is_admin_statement(s)) {
            if is_resource {
                governed_by_resource = true;
            } else if names_principal(s, facts.principals) {
                governed_by_principal = true;
            }
            if !applies(s, facts) {
                continue;
            }
            match s.effect {
                Effect::Deny => return Verdict::Deny { resource_policy: is_resource },
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Verdict::Allow
    } else if governed_by_resource || governed_by_principal {
        Verdict::ImplicitDeny { resource_policy: governed_by_resource && !governed_by_principal }
    } else {
        Verdict::NotGoverned
    }
}

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
use tollgate_proto::model::{Condition, ConditionOperator, Effect, Entity, EntityKind, Policy, Statement};

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

fn policies(model: &Model) -> impl Iterator<Item = &Policy> {
    model.iter(EntityKind::Policy).filter_map(|e| match e {
        Entity::Policy(p) => Some(p),
        _ => None,
    })
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
    policies(model)
        .filter(|p| p.api_id.as_deref() == Some(api))
        .flat_map(|p| &p.statements)
        .any(|s| s.effect == Effect::Deny && decidable_anonymously(s) && applies(s, facts))
}

/// Whether any policy that can apply to a request for `api` (its resource
/// policy, and principal policies) has a condition on `source_ip`: a check
/// without the client address cannot be decided on it.
pub fn uses_source_ip(model: &Model, api: &str) -> bool {
    policies(model)
        .filter(|p| !matches!(p.api_id.as_deref(), Some(a) if a != api))
        .flat_map(|p| &p.statements)
        .filter(|s| !is_admin_statement(s))
        .any(|s| s.conditions.iter().any(|c| c.key == "source_ip"))
}

/// Whether a statement is about the admin API: its principals are admin
/// tokens (`token:ID`, globs such as `token:*`), and only they (validation
/// refuses a mix). Such statements never apply to a check, and only they
/// apply to an admin request ([`evaluate_admin`]).
pub fn is_admin_statement(statement: &Statement) -> bool {
    statement.principals.iter().all(|p| p.starts_with(ADMIN_PRINCIPAL))
}

/// The prefix of an admin token's principal name: `token:tok_…`.
pub const ADMIN_PRINCIPAL: &str = "token:";

/// What an admin request is, for [`evaluate_admin`].
pub struct AdminRequest<'a> {
    /// The admin token's principal name, `token:tok_…`.
    pub principal: &'a str,
    /// `service:verb`, such as `keys:create` or `usage:read`.
    pub action: &'a str,
    /// What the request touches: `api/petstore`, `plan/gold`,
    /// `api/petstore/prod/key/key_…`, `cluster`. Every one must be allowed.
    pub resources: &'a [String],
    /// The address of the request's connection.
    pub source_ip: Option<IpAddr>,
}

/// Whether `action` could be allowed to `principal` on some resource: the
/// route-level check made before a request's body is read.
/// [`Verdict::NotGoverned`] when no admin statement names the principal
/// (its scopes decide); [`Verdict::Deny`] when a Deny of the action on every
/// resource (`*`) holds; [`Verdict::Allow`] when some Allow statement names
/// the action and its conditions hold; else [`Verdict::ImplicitDeny`].
pub fn admin_action_possible(model: &Model, principal: &str, action: &str, source_ip: Option<IpAddr>) -> Verdict {
    let principals = [principal.to_string()];
    let empty = BTreeMap::new();
    let facts = RequestFacts {
        resource: "",
        principals: &principals,
        source_ip,
        proxy_id: None,
        headers: &empty,
        tags: None,
        claims: None,
    };
    let mut governed = false;
    let mut allowed = false;
    for s in policies(model)
        .filter(|p| p.api_id.is_none())
        .flat_map(|p| &p.statements)
        .filter(|s| is_admin_statement(s) && principal_matches(s, &principals))
    {
        governed = true;
        let holds = s.actions.iter().any(|a| glob_matches(a, action))
            && s.conditions.iter().all(|c| condition_holds(c, &facts));
        match s.effect {
            Effect::Deny if holds && s.resources.iter().any(|r| r == "*") => {
                return Verdict::Deny { resource_policy: false }
            }
            Effect::Allow if holds => allowed = true,
            _ => {}
        }
    }
    match (governed, allowed) {
        (false, _) => Verdict::NotGoverned,
        (true, true) => Verdict::Allow,
        (true, false) => Verdict::ImplicitDeny { resource_policy: false },
    }
}

/// Who may manage what, with the check's engine and IAM's rules over the
/// admin statements of identity policies (those naming `token:` principals):
/// an explicit Deny on any resource wins; else the request is allowed when
/// every resource is allowed by some statement; else, if any statement names
/// the token, it is denied implicitly; else no policy governs the token and
/// its scopes alone decide ([`Verdict::NotGoverned`]).
pub fn evaluate_admin(model: &Model, request: &AdminRequest<'_>) -> Verdict {
    let principals = [request.principal.to_string()];
    let empty = BTreeMap::new();
    let statements: Vec<&Statement> = policies(model)
        .filter(|p| p.api_id.is_none())
        .flat_map(|p| &p.statements)
        .filter(|s| is_admin_statement(s) && principal_matches(s, &principals))
        .collect();
    if statements.is_empty() {
        return Verdict::NotGoverned;
    }
    let mut all_allowed = true;
    for resource in request.resources {
        let facts = RequestFacts {
            resource,
            principals: &principals,
            source_ip: request.source_ip,
            proxy_id: None,
            headers: &empty,
            tags: None,
            claims: None,
        };
        let mut allowed = false;
        for s in &statements {
            let matches = s.actions.iter().any(|a| glob_matches(a, request.action))
                && s.resources.iter().any(|r| glob_matches(r, resource))
                && s.conditions.iter().all(|c| condition_holds(c, &facts));
            match (matches, s.effect) {
                (true, Effect::Deny) => return Verdict::Deny { resource_policy: false },
                (true, Effect::Allow) => allowed = true,
                (false, _) => {}
            }
        }
        all_allowed &= allowed;
    }
    if all_allowed {
        Verdict::Allow
    } else {
        Verdict::ImplicitDeny { resource_policy: false }
    }
}

/// The full evaluation, once the principal is known.
pub fn evaluate(model: &Model, api: &str, facts: &RequestFacts<'_>) -> Verdict {
    let mut governed_by_resource = false;
    let mut governed_by_principal = false;
    let mut allowed = false;
    for policy in policies(model) {
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

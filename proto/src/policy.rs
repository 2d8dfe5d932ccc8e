//! IAM-style matching shared by the check's policies (the node's gateway)
//! and the admin statements the state machine enforces at apply time:
//! globs, and the evaluation of admin statements (statements of identity
//! policies whose principals are admin tokens, `token:…`).
//!
//! An admin statement's only condition key is `source_ip` (validation
//! refuses any other: an admin request carries no key tags, claims or
//! proxy id, and a header condition would be the client's to satisfy).

use std::net::IpAddr;

use crate::canonical;
use crate::model::{ConditionOperator, Effect, Policy, Statement};

/// The prefix of an admin token's principal name: `token:tok_…`.
pub const ADMIN_PRINCIPAL: &str = "token:";

/// IAM-style glob: `*` any run of characters, `?` exactly one. Iterative with
/// backtracking to the last `*`: linear in practice, no recursion.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether a statement is about the admin API: its principals are admin
/// tokens (`token:ID`, globs such as `token:*`), and only they (validation
/// refuses a mix). Such statements never apply to a check, and only they
/// apply to an admin request.
pub fn is_admin_statement(statement: &Statement) -> bool {
    statement.principals.iter().all(|p| p.starts_with(ADMIN_PRINCIPAL))
}

/// How admin statements decide an admin request (IAM's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminVerdict {
    /// No admin statement names the token: its scopes alone decide.
    NotGoverned,
    /// Allowed on every resource.
    Allow,
    /// An explicit Deny matched.
    Deny,
    /// Named, but not allowed on every resource.
    ImplicitDeny,
}

/// What an admin request is.
pub struct AdminRequest<'a> {
    /// The admin token's principal name, `token:tok_…`.
    pub principal: &'a str,
    /// `service:verb`, such as `keys:create` or `usage:read`.
    pub action: &'a str,
    /// What the request touches: `api/petstore`, `plan/gold`,
    /// `api/petstore/prod/key/key_…`, `cluster`. Every one must be allowed;
    /// none (the route-level check) means "on some resource".
    pub resources: &'a [String],
    /// The address of the request's connection.
    pub source_ip: Option<IpAddr>,
}

fn conditions_hold(statement: &Statement, source_ip: Option<IpAddr>) -> bool {
    statement.conditions.iter().all(|c| {
        let inside = c.key == "source_ip"
            && source_ip.is_some_and(|ip| c.values.iter().any(|v| canonical::network_contains(v, ip)));
        match c.operator {
            ConditionOperator::IpAddress => inside,
            ConditionOperator::NotIpAddress => !inside,
            // Refused by validation in admin statements; never holds.
            _ => false,
        }
    })
}

/// Decides `request` by the admin statements of `policies` (identity
/// policies only) that name its principal: an explicit Deny on any resource
/// wins; else Allow when every resource is allowed by some statement; else
/// ImplicitDeny if any statement names the token; else NotGoverned. With no
/// resources (the route-level check), a Deny counts only on `*` and one
/// Allow of the action suffices.
pub fn evaluate_admin<'p>(policies: impl Iterator<Item = &'p Policy>, request: &AdminRequest<'_>) -> AdminVerdict {
    let statements: Vec<&Statement> = policies
        .filter(|p| p.api_id.is_none())
        .flat_map(|p| &p.statements)
        .filter(|s| is_admin_statement(s) && s.principals.iter().any(|p| glob_matches(p, request.principal)))
        .collect();
    if statements.is_empty() {
        return AdminVerdict::NotGoverned;
    }
    let applies = |s: &Statement| {
        s.actions.iter().any(|a| glob_matches(a, request.action)) && conditions_hold(s, request.source_ip)
    };
    if request.resources.is_empty() {
        let on_all = |s: &Statement| s.resources.iter().any(|r| r == "*");
        if statements.iter().any(|s| s.effect == Effect::Deny && on_all(s) && applies(s)) {
            return AdminVerdict::Deny;
        }
        let allowed = statements.iter().any(|s| s.effect == Effect::Allow && applies(s));
        return if allowed { AdminVerdict::Allow } else { AdminVerdict::ImplicitDeny };
    }
    let mut all_allowed = true;
    for resource in request.resources {
        let mut allowed = false;
        for s in statements.iter().filter(|s| applies(s) && s.resources.iter().any(|r| glob_matches(r, resource))) {
            match s.effect {
                Effect::Deny => return AdminVerdict::Deny,
                Effect::Allow => allowed = true,
            }
        }
        all_allowed &= allowed;
    }
    if all_allowed {
        AdminVerdict::Allow
    } else {
        AdminVerdict::ImplicitDeny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("api/petstore/*", "api/petstore/prod/key/k1"));
        assert!(!glob_matches("api/petstore/*", "api/bank/prod/key/k1"));
        assert!(glob_matches("keys:*", "keys:create") && glob_matches("*:read", "usage:read"));
        assert!(glob_matches("k?y", "key") && !glob_matches("k?y", "kiey"));
    }
}

//! Matching of route paths and policy resources.
//!
//! Route and method-throttle paths: `/`-separated segments; `*` matches one
//! segment, and a final `*` matches one or more segments (`/pets/*` matches
//! `/pets/1` and `/pets/1/toys`). Policy resources and `StringLike` values are
//! globs where `*` matches any run of characters (slashes included) and `?`
//! one character, as in IAM.

/// Whether `path` matches the route pattern.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/').skip(1).peekable();
    let mut segs = path.split('/').skip(1).peekable();
    loop {
        match (pat.next(), segs.peek()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("*"), Some(seg)) => {
                if seg.is_empty() {
                    return false;
                }
                if pat.peek().is_none() {
                    return true; // a final `*` takes the rest
                }
                segs.next();
            }
            (Some(lit), Some(seg)) => {
                if lit != *seg {
                    return false;
                }
                segs.next();
            }
        }
    }
}

/// How specific a route pattern is: more literal segments win.
pub fn specificity(pattern: &str) -> usize {
    pattern.split('/').filter(|s| !s.is_empty() && *s != "*").count()
}

/// The one rule for matching a request to a route or a method throttle:
/// among `candidates` whose method is `method` or `*` and whose path pattern
/// matches `path`, the most literal path wins, then an exact method over `*`
/// (on a tie, the last listed). `rule` gives a candidate's method and path
/// pattern. Answers the winner and its index.
pub fn best_match<'a, T>(
    candidates: &'a [T],
    method: &str,
    path: &str,
    rule: impl Fn(&T) -> (&str, &str),
) -> Option<(usize, &'a T)> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let (m, pattern) = rule(c);
            (m == method || m == "*") && path_matches(pattern, path)
        })
        .max_by_key(|(_, c)| {
            let (m, pattern) = rule(c);
            (specificity(pattern), m != "*")
        })
}

pub use tollgate_proto::policy::glob_matches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns() {
        assert!(path_matches("/pets", "/pets"));
        assert!(!path_matches("/pets", "/pets/1"));
        assert!(path_matches("/pets/*", "/pets/1"));
        assert!(path_matches("/pets/*", "/pets/1/toys"));
        assert!(!path_matches("/pets/*", "/pets"));
        assert!(!path_matches("/pets/*", "/pets/"));
        assert!(path_matches("/pets/*/toys", "/pets/1/toys"));
        assert!(!path_matches("/pets/*/toys", "/pets/1/2/toys"));
        assert!(path_matches("/*", "/anything/at/all"));
        assert!(specificity("/pets/*/toys") > specificity("/pets/*"));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", "petstore/prod/GET/pets/1"));
        assert!(glob_matches("petstore/*/GET/*", "petstore/prod/GET/pets/1"));
        assert!(!glob_matches("petstore/*/POST/*", "petstore/prod/GET/pets/1"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*@example.com", "ann@example.com"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("", ""));
    }
}

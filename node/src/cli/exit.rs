//! The exit codes scripts can rely on, and the one error type that carries
//! one ([`Failure`]).
//!
//! Every failure of a command ends with one line on standard error and one
//! of the codes in [`Exit::ALL`]; `tollgate --help` prints that table
//! ([`after_help`]) and the README repeats it. A code says what kind of
//! failure it was, whoever found it: the node's status (404 is
//! [`Exit::NotFound`]), the CLI itself (a file it cannot read as input is
//! [`Exit::Invalid`], a node it cannot connect to [`Exit::Unavailable`]), or
//! clap (a bad command line is [`Exit::Usage`], clap's own 2).

use std::fmt;

use tollgate_client::admin::AdminError;

/// How a command ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It did what it was asked.
    Success = 0,
    /// Anything not below: a file that cannot be read or written, a node's
    /// 500, an answer that is not what the API documents.
    Error = 1,
    /// The command line is wrong (clap's own code): an unknown flag, a
    /// missing argument, a value in the wrong form, no admin token, a node
    /// configuration `serve` cannot take.
    Usage = 2,
    /// What the command names does not exist (404).
    NotFound = 3,
    /// It conflicts with what exists (409): an id taken, a plan keys still use.
    Conflict = 4,
    /// The input was refused as invalid (400, 413, 422), by the node or by
    /// the CLI reading an input file; the message names the field or line.
    Invalid = 5,
    /// The admin token is missing, wrong (401) or may not do this (403).
    Denied = 6,
    /// No node could be reached, or the cluster cannot serve the call now
    /// (503: no leader; 507: a member's disk is nearly full): try again.
    Unavailable = 7,
    /// Too many failed authentications from this address (429): wait for
    /// the `Retry-After` the node gave.
    RateLimited = 8,
}

impl Exit {
    /// Every code, in order, with what it means for `--help` and the README.
    pub const ALL: [(Exit, &'static str); 9] = [
        (Exit::Success, "success"),
        (Exit::Error, "any other error (a file that cannot be read, a node's 500)"),
        (Exit::Usage, "usage error: a bad command line, or no admin token"),
        (Exit::NotFound, "not found (404)"),
        (Exit::Conflict, "conflict (409): an id taken, an object still in use"),
        (Exit::Invalid, "refused as invalid (400, 413, 422, or an input file the CLI cannot accept)"),
        (Exit::Denied, "unauthorized or forbidden (401, 403): check the admin token and its scopes"),
        (Exit::Unavailable, "unavailable: no node reached, or no leader / disk nearly full (503, 507)"),
        (Exit::RateLimited, "rate limited (429): too many wrong tokens from this address"),
    ];

    /// The code for an HTTP status the node answered with (2xx: success).
    pub fn of_status(status: u16) -> Exit {
        match status {
            200..=299 => Exit::Success,
            404 => Exit::NotFound,
            409 => Exit::Conflict,
            400 | 413 | 422 => Exit::Invalid,
            401 | 403 => Exit::Denied,
            429 => Exit::RateLimited,
            503 | 507 => Exit::Unavailable,
            _ => Exit::Error,
        }
    }

    /// The code a failed command ends with: the first [`Failure`],
    /// [`AdminError`] or input-file error in its chain of causes, else
    /// [`Exit::Error`].
    pub fn of_error(error: &anyhow::Error) -> Exit {
        error
            .chain()
            .find_map(|cause| {
                if let Some(failure) = cause.downcast_ref::<Failure>() {
                    return Some(failure.exit);
                }
                if let Some(admin) = cause.downcast_ref::<AdminError>() {
                    return Some(match admin {
                        AdminError::Api { status: 0, .. } => Exit::Invalid,
                        AdminError::Api { status, .. } => Exit::of_status(*status),
                        AdminError::Unavailable(_) => Exit::Unavailable,
                    });
                }
                if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
                    // `serve` with a flag, variable or file key it cannot take.
                    return Some(Exit::Usage);
                }
                cause.downcast_ref::<super::limits::FileError>().map(|_| Exit::Invalid)
            })
            .unwrap_or(Exit::Error)
    }

    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit code table, for the end of `tollgate --help`.
pub fn after_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (exit, meaning) in Exit::ALL {
        text.push_str(&format!("  {}  {meaning}\n", exit.code()));
    }
    text.push_str(
        "\nOutput: -o table (the default on a terminal), json (the default otherwise) or yaml;\n\
         errors go to standard error as one line.",
    );
    text
}

/// A failure with the exit code it ends the command with, and its message
/// for a person (one line).
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }

    /// The command line lacks something clap could not require (an admin
    /// token comes from a flag or the environment).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Usage, message)
    }

    /// The node answered `status` with the API's error body
    /// `{"error": {"code", "field", "message"}}`: one line naming the field
    /// first, then what is wrong, then the status and code.
    pub fn refused(status: u16, body: &serde_json::Value) -> Failure {
        let error = &body["error"];
        let text = |name: &str| error[name].as_str().filter(|s| !s.is_empty());
        let message = match (text("message"), body) {
            (Some(message), _) => message.to_string(),
            (None, serde_json::Value::String(plain)) if !plain.is_empty() => plain.clone(),
            (None, serde_json::Value::Null) => "no answer body".to_string(),
            (None, other) => other.to_string(),
        };
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map(|r| format!("{status} {r}"))
            .unwrap_or_else(|| status.to_string());
        let code = text("code").map(|c| format!(", {c}")).unwrap_or_default();
        let line = match text("field") {
            Some(field) => format!("{field}: {message} ({reason}{code})"),
            None => format!("{message} ({reason}{code})"),
        };
        Failure::new(Exit::of_status(status), one_line(&line))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// `text` on one line: line breaks become `; `.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_status_has_the_code_the_help_promises() {
        let cases = [
            (200, Exit::Success),
            (204, Exit::Success),
            (400, Exit::Invalid),
            (401, Exit::Denied),
            (403, Exit::Denied),
            (404, Exit::NotFound),
            (409, Exit::Conflict),
            (413, Exit::Invalid),
            (422, Exit::Invalid),
            (429, Exit::RateLimited),
            (500, Exit::Error),
            (503, Exit::Unavailable),
            (507, Exit::Unavailable),
        ];
        for (status, exit) in cases {
            assert_eq!(Exit::of_status(status), exit, "{status}");
        }
        let codes: Vec<u8> = Exit::ALL.iter().map(|(e, _)| e.code()).collect();
        assert_eq!(codes, (0..=8).collect::<Vec<u8>>(), "one line per code, in order");
        assert!(after_help().contains("  3  not found (404)"), "{}", after_help());
    }

    #[test]
    fn a_refusal_names_the_field_first_on_one_line() {
        let body = json!({"error": {"code": "invalid_field", "field": "throttle.rate_per_sec",
            "message": "must be a number\nfrom 1e-6"}});
        let failure = Failure::refused(400, &body);
        assert_eq!(failure.exit, Exit::Invalid);
        assert_eq!(
            failure.message,
            "throttle.rate_per_sec: must be a number; from 1e-6 (400 Bad Request, invalid_field)"
        );
        let failure = Failure::refused(404, &json!({"error": {"code": "not_found", "message": "no key \"k\""}}));
        assert_eq!(
            (failure.exit, failure.message.as_str()),
            (Exit::NotFound, "no key \"k\" (404 Not Found, not_found)")
        );
        assert_eq!(Failure::refused(502, &json!("bad gateway")).message, "bad gateway (502 Bad Gateway)");
    }

    #[test]
    fn the_code_is_found_through_context() {
        let error = anyhow::Error::new(Failure::new(Exit::Conflict, "taken")).context("creating plan gold");
        assert_eq!(Exit::of_error(&error), Exit::Conflict);
        let admin = anyhow::Error::new(AdminError::Unavailable("refused".into())).context("x");
        assert_eq!(Exit::of_error(&admin), Exit::Unavailable);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("plain")), Exit::Error);
    }
}

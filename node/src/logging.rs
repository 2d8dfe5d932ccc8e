//! Log output that can never take the node down.
//!
//! A node's log goes to standard error, which may be a file on a disk that
//! fills up, a closed pipe, or `/dev/full`. A write that fails is counted
//! (`tollgate_log_write_errors_total`) and the line dropped: logging is never
//! a reason to stop answering checks. (tracing-subscriber's own report of a
//! failed write goes through `eprintln!`, which panics when standard error
//! fails, so it is turned off.)
//!
//! Lines are text or JSON ([`LogFormat`], `--log-format`); text is coloured
//! only for a person at a terminal ([`colour`]), so a log written to a file
//! or read by a log shipper carries no escape codes.

use std::io::{self, Write};
use std::sync::OnceLock;

use prometheus::IntCounter;

/// Failed log writes since the process started (one per line dropped).
pub fn write_errors() -> &'static IntCounter {
    static COUNTER: OnceLock<IntCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        IntCounter::new("tollgate_log_write_errors_total", "Log lines dropped because writing them failed.")
            .unwrap_or_else(|e| panic!("metric tollgate_log_write_errors_total: {e}"))
    })
}

/// Standard error that swallows (and counts) write errors.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match io::stderr().write_all(buf) {
            Ok(()) => {}
            Err(_) => write_errors().inc(),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, for people; coloured only when standard
    /// error is a terminal and `NO_COLOR` is not set.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter, the
    /// event's fields at the top level: `timestamp`, `level`, `message`,
    /// `target`, …), for a log shipper (Loki, Elastic, Vector).
    Json,
}

/// Whether text lines get ANSI colours: only for a person at a terminal,
/// and never when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>). A log written to a file or a pipe, which a log
/// shipper reads, has no escape codes.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the node's logger: `TOLLGATE_LOG` (an `EnvFilter`), default
/// `info,openraft=warn,sled=warn`, to standard error, in `format`. Called
/// once the node's configuration is resolved (the format is part of it);
/// a second call does nothing.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Stderr).log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => {
            let ansi = colour(io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            builder.with_ansi(ansi).try_init()
        }
        // No colours in JSON; the event's fields (`message` among them) at
        // the top level of each object rather than under `fields`.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_counted_and_reported_as_done() {
        // Writing to a closed descriptor behaves like /dev/full: an error.
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(Failing.write(b"x").is_err());
        // The wrapper's contract, checked on real standard error here: it
        // always says the whole line was written.
        assert_eq!(Stderr.write(b"").ok(), Some(0));
    }

    #[test]
    fn colour_only_at_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None), "a file or a pipe gets no escape codes");
    }
}

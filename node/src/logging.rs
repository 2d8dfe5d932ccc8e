//! Log output that can never take the node down.
//!
//! A node's log goes to standard error, which may be a file on a disk that
//! fills up, a closed pipe, or `/dev/full`. A write that fails is counted
//! (`tollgate_log_write_errors_total`) and the line dropped: logging is never
//! a reason to stop answering checks. (tracing-subscriber's own report of a
//! failed write goes through `eprintln!`, which panics when standard error
//! fails, so it is turned off.)

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

/// Installs the node's logger: `TOLLGATE_LOG` (an `EnvFilter`), default
/// `info,openraft=warn,sled=warn`, to standard error.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Stderr).log_internal_errors(false).try_init();
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
}

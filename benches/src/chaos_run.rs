//! `chaos`: the integration tests' chaos run (`tests/harness/chaos.rs`,
//! included by `main`) with longer settings, its figures printed.

use anyhow::bail;

use crate::{chaos, history};

/// `chaos`: one run, its figures, and an error if the checker found anything.
pub async fn run(config: &chaos::ChaosConfig) -> anyhow::Result<()> {
    if !config.bin.exists() {
        bail!("{} does not exist: `cargo build --release` first, or pass --bin", config.bin.display());
    }
    println!(
        "chaos: seed {}, {} s of faults, {} check and {} admin workers, quota {} per key, --quota-max-grant {}, --quota-lease-ms {}",
        config.seed,
        config.run.as_secs(),
        config.check_workers,
        config.admin_workers,
        config.quota,
        config.max_grant,
        config.lease_ms
    );
    let outcome = chaos::run(config).await;
    println!(
        "ran {:.1} s in all (start, faults, heal, settle, read back); {} operations recorded; nodes at noon UTC (clock offset {} ms)",
        outcome.elapsed.as_secs_f64(),
        outcome.history.len(),
        outcome.base_offset_ms
    );
    for f in &outcome.faults {
        let shift = if f.kind == history::FaultKind::ClockShift {
            format!(" (clock {:+} ms)", f.clock_offset_ms - outcome.base_offset_ms)
        } else {
            String::new()
        };
        println!(
            "  {:>7.1} s  {} node {}{shift}, {:.1} s",
            f.span.invoked_us as f64 / 1e6,
            f.kind,
            f.node,
            (f.span.completed_us - f.span.invoked_us) as f64 / 1e6
        );
    }
    print!("{}", outcome.report);
    if !outcome.report.violations.is_empty() {
        bail!("{} violations (seed {})", outcome.report.violations.len(), config.seed);
    }
    Ok(())
}

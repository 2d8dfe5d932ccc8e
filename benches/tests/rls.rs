//! `tollgate-bench rls` still runs end to end: a one-node cluster, gRPC
//! ShouldRateLimit and `POST /v1/check` in a round each, the summary with
//! the ratio, and a small high-cardinality pass in which no value may be
//! refused and the limit must still hold past it (the run fails otherwise).
//! Tiny settings, and no assertion on any speed figure: speed is measured
//! in a real run (BENCHMARKS.md), never asserted in a test.

use std::process::Command;

#[test]
fn rls_bench_prints_the_ratio_to_the_http_check_and_refuses_no_value_wrongly() {
    let bench = env!("CARGO_BIN_EXE_tollgate-bench");
    // The bench binary is the node too (`tollgate-bench serve`), so this
    // needs no `tollgate` binary built.
    let output = Command::new(bench)
        .arg("--bin")
        .arg(bench)
        .args(["rls", "--nodes", "1", "--rounds", "1", "--secs", "0.5", "--concurrency", "4"])
        .args(["--connections", "1", "--values", "500", "--hc-limit", "3", "--hc-passes", "1"])
        .output()
        .expect("tollgate-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tollgate-bench rls failed: {}\n{stdout}\n{stderr}", output.status);
    for line in [
        "gRPC ShouldRateLimit",
        "POST /v1/check",
        "throughput rls/check: x",
        "pass 1: 500 values in",
        "refused wrongly: 0",
        "admitted [3, 3, 3] (limit 3): yes",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
}

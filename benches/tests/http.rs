//! `tollgate-bench http` still runs end to end: a one-node cluster, the
//! bare axum baseline, both loops, and the summary with both ratios of each
//! loop. Tiny settings, and no assertion on any figure: speed is measured
//! as ratios in a real run (BENCHMARKS.md), never asserted in a test.

use std::process::Command;

#[test]
fn http_bench_prints_the_throughput_and_p99_ratios_against_bare_axum() {
    let bench = env!("CARGO_BIN_EXE_tollgate-bench");
    // The bench binary is the node too (`tollgate-bench serve`), so this
    // needs no `tollgate` binary built.
    let output = Command::new(bench)
        .arg("--bin")
        .arg(bench)
        .args(["http", "--nodes", "1", "--rounds", "1", "--secs", "0.5", "--concurrency", "4"])
        .args(["--rate", "200", "--connections", "16"])
        .output()
        .expect("tollgate-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tollgate-bench http failed: {}\n{stdout}\n{stderr}", output.status);
    for line in
        ["throughput check/axum: x", "throughput forward-auth/axum: x", "p99 check/axum: x", "p99 forward-auth/axum: x"]
    {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
}

//! Running an operation many times from a number of workers, and the line
//! that reports the latencies and throughput of such a run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Runs `op(n)` for n in 0..count with `concurrency` workers; the latency
/// histogram (µs) and the wall time.
pub async fn run_load<F, Fut>(count: usize, concurrency: usize, op: F) -> anyhow::Result<(Histogram<u64>, Duration)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    run_load_until(count, None, concurrency, op).await
}

/// As [`run_load`], but no operation starts once `until` (if given) has
/// passed: a run of a fixed time, or a fixed count, whichever ends first.
pub async fn run_load_until<F, Fut>(
    count: usize,
    until: Option<Instant>,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Histogram<u64>, Duration)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            loop {
                if until.is_some_and(|until| Instant::now() >= until) {
                    return anyhow::Ok(h);
                }
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(h);
                }
                let t = Instant::now();
                op(n).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all, start.elapsed()))
}

/// One line: how many, the throughput, and the latency percentiles in ms.
pub fn report(what: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{what}: n={} throughput={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        h.len(),
        h.len() as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

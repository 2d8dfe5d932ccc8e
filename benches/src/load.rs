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

/// What an open-loop run measured.
pub struct OpenLoop {
    /// Each request's latency (µs) from the time the schedule meant it to
    /// be sent, not from when it was: a stall delays every request behind
    /// it, and each one counts the wait (no coordinated omission).
    pub latency: Histogram<u64>,
    /// How late (µs) each request was handed to a sender, against its
    /// intended time: the scheduler's own lag, part of every latency.
    pub dispatch_lag: Histogram<u64>,
    /// Requests the schedule held in its window.
    pub scheduled: u64,
    /// Requests that had to wait for a free connection (all `connections`
    /// busy): the schedule was not kept for them.
    pub waited: u64,
    /// The schedule's window: `scheduled` requests at the rate asked.
    pub window: Duration,
    /// From the first intended send until the last answer.
    pub elapsed: Duration,
}

impl OpenLoop {
    /// Answers per second: over the window, or until the last answer if
    /// that came later (the schedule fell behind).
    pub fn rate(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.max(self.window).as_secs_f64()
    }
}

/// Sends `op()` at a constant `rate` per second for `duration`, whatever
/// the answers' latency (an open loop, as clients on the internet send),
/// with at most `connections` requests in flight; a request due while all
/// are busy waits for one, and its latency counts that wait.
///
/// The schedule is kept by a thread of its own that sleeps until each
/// request's intended time (to within the kernel's timer slack, about
/// 50 µs) and hands it to the runtime, which sends it at once.
pub async fn run_open_loop<F, Fut>(rate: f64, duration: Duration, connections: usize, op: F) -> anyhow::Result<OpenLoop>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    if !(rate.is_finite() && rate > 0.0) {
        anyhow::bail!("--rate {rate}: must be a number of requests per second above 0");
    }
    let all_slots = match u32::try_from(connections) {
        Ok(n) if n > 0 => n,
        _ => anyhow::bail!("--connections {connections}: must be from 1 to {}", u32::MAX),
    };
    let scheduled = (rate * duration.as_secs_f64()).floor() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let (due, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let scheduler = std::thread::Builder::new().name("open-loop".into()).spawn(move || {
        for n in 0..scheduled {
            let intended = start + period.mul_f64(n as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if due.send(intended).is_err() {
                return;
            }
        }
    })?;

    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let failure = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
    let mut dispatch_lag = Histogram::<u64>::new(3)?;
    let mut waited = 0;
    let op = Arc::new(op);
    while let Some(intended) = due_rx.recv().await {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                waited += 1;
                slots.clone().acquire_owned().await?
            }
        };
        dispatch_lag.record(intended.elapsed().as_micros() as u64)?;
        let (op, latency, failed) = (op.clone(), latency.clone(), failure.clone());
        tokio::spawn(async move {
            let outcome = op().await;
            let took = intended.elapsed().as_micros() as u64;
            match outcome {
                Ok(()) => {
                    let _ = latency.lock().unwrap_or_else(|p| p.into_inner()).record(took);
                }
                Err(e) => {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            }
            drop(slot);
        });
        if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            break;
        }
    }
    // Every request answered: all the slots free again.
    drop(due_rx);
    let _all = slots.acquire_many(all_slots).await?;
    let elapsed = start.elapsed();
    if scheduler.join().is_err() {
        anyhow::bail!("the open-loop scheduler thread panicked");
    }
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.context("a request of the open loop failed"));
    }
    let latency = std::mem::replace(&mut *latency.lock().unwrap_or_else(|p| p.into_inner()), Histogram::new(3)?);
    Ok(OpenLoop { latency, dispatch_lag, scheduled, waited, window: duration, elapsed })
}

//! Test doubles: authorities that misbehave on purpose, to prove what
//! metering does when the authority is slow or gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tollgate_proto::command::{QuotaPeriod, QuotaUsage};

use super::{Authority, BoxFuture, LeaseAnswer, LeaseRequest, LendRequest, Lent, Unavailable};

/// An authority whose lease commands with asks wait until the test lets
/// them through ([`Gated::open`]); renewals without asks, reports and loans
/// go straight to the inner one.
pub struct Gated {
    inner: Arc<dyn Authority>,
    gate: tokio::sync::Semaphore,
}

impl Gated {
    /// `inner`, with its grants held back until opened.
    pub fn new(inner: Arc<dyn Authority>) -> Self {
        Gated { inner, gate: tokio::sync::Semaphore::new(0) }
    }

    /// Lets `grants` more lease commands with asks through.
    pub fn open(&self, grants: usize) {
        self.gate.add_permits(grants);
    }
}

impl Authority for Gated {
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>> {
        Box::pin(async move {
            if !request.asks.is_empty() {
                let _pass = self.gate.acquire().await.map_err(|e| Unavailable(e.to_string()))?;
            }
            self.inner.lease(request).await
        })
    }
    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>) {
        self.inner.recalls(since)
    }
    fn report(&self, id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        self.inner.report(id, usage, now_ms)
    }
    fn lend(&self, requests: Vec<LendRequest>, now_ms: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>> {
        self.inner.lend(requests, now_ms)
    }
    fn members(&self) -> u32 {
        self.inner.members()
    }
    fn node_id(&self) -> u64 {
        self.inner.node_id()
    }
}

/// An authority that is never reachable, counting how often it is asked
/// for grants and tokens. It claims three members, so throttles fall back
/// to a third of their rate.
#[derive(Default)]
pub struct Unreachable {
    /// Grant and loan requests so far.
    pub asked: AtomicUsize,
}

impl Unreachable {
    /// Grant and loan requests so far.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Authority for Unreachable {
    fn lease(&self, _: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>) {
        (since, Vec::new())
    }
    fn report(&self, _: u128, _: Vec<QuotaUsage>, _: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn lend(&self, _: Vec<LendRequest>, _: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Unavailable("no leader".into())) })
    }
    fn members(&self) -> u32 {
        3
    }
    fn node_id(&self) -> u64 {
        1
    }
}

/// An authority that counts what it is asked for (grants in lease
/// commands, loans of throttle tokens) and passes everything on.
pub struct Counting {
    inner: Arc<dyn Authority>,
    /// Grants asked for so far (asks in lease commands).
    pub asks: AtomicUsize,
    /// Loans of throttle tokens asked for so far (give-backs included).
    pub lends: AtomicUsize,
}

impl Counting {
    /// `inner`, counted.
    pub fn new(inner: Arc<dyn Authority>) -> Self {
        Counting { inner, asks: AtomicUsize::new(0), lends: AtomicUsize::new(0) }
    }
}

impl Authority for Counting {
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<LeaseAnswer, Unavailable>> {
        self.asks.fetch_add(request.asks.len(), Ordering::SeqCst);
        self.inner.lease(request)
    }
    fn recalls(&self, since: u64) -> (u64, Vec<(u64, QuotaPeriod)>) {
        self.inner.recalls(since)
    }
    fn report(&self, id: u128, usage: Vec<QuotaUsage>, now_ms: i64) -> BoxFuture<'_, Result<(), Unavailable>> {
        self.inner.report(id, usage, now_ms)
    }
    fn lend(&self, requests: Vec<LendRequest>, now_ms: i64) -> BoxFuture<'_, Result<Vec<Lent>, Unavailable>> {
        self.lends.fetch_add(requests.len(), Ordering::SeqCst);
        self.inner.lend(requests, now_ms)
    }
    fn members(&self) -> u32 {
        self.inner.members()
    }
    fn node_id(&self) -> u64 {
        self.inner.node_id()
    }
}

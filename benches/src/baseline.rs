//! The bare axum server the `http` run measures the node against: the
//! node's axum and hyper, the node's tokio runtime (multi-thread, a worker
//! per core), and handlers that do only what any JSON or header endpoint
//! must — no gateway, no limits, no middleware.
//!
//! It runs as a process of its own, as a node does: `tollgate-bench`
//! starts its own binary again with the hidden subcommand
//! `baseline-server` ([`BaselineProcess::start`]), which binds
//! `127.0.0.1:0` and prints the address it bound on standard output
//! ([`serve`]). So the two servers compete with the load generator for
//! the cores in the same way, and one's allocations and threads never
//! share a process with the other's.
//!
//! - `POST /v1/check`: reads the body of a Tollgate check into a struct
//!   with serde_json (as the node reads it into its `CheckRequest`) and
//!   answers a decision-shaped JSON body padded to the size of the node's
//!   answer (`--answer-bytes`), so JSON in and out cost about the same.
//! - `/v1/forward-auth/{api}/{stage}/{*rest}`, any method (the Envoy form
//!   of forward-auth): reads the key header and answers 200 with two
//!   headers, or 401 without a key.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// How long the baseline process may take to print its address.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The fields of a Tollgate check the bench sends (the node's
/// `CheckRequest` has more, all optional).
#[derive(Deserialize)]
struct CheckShape {
    api: String,
    stage: String,
    method: String,
    path: String,
    #[serde(default)]
    source_ip: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A decision-shaped answer: the node's fields, with `padding` standing for
/// the signed identity and the other values the node adds.
#[derive(Serialize)]
struct Answer<'a> {
    allowed: bool,
    status: u16,
    reason: &'static str,
    message: &'static str,
    api: &'a str,
    stage: &'a str,
    method: &'a str,
    path: &'a str,
    source_ip: Option<&'a str>,
    /// How long the key was (never the key itself).
    key_len: usize,
    padding: &'a str,
}

/// What every request shares: the padding that brings an answer to the
/// node's size.
#[derive(Clone)]
struct Shared {
    padding: Arc<str>,
}

/// The baseline's routes; `answer_bytes`: about how long the check answer
/// is to be.
fn router(answer_bytes: usize) -> anyhow::Result<Router> {
    let padding = padding(answer_bytes)?.into();
    Ok(Router::new()
        .route("/v1/check", post(check))
        .route("/v1/forward-auth/{api}/{stage}/{*rest}", any(forward_auth))
        .with_state(Shared { padding }))
}

/// The padding that brings the answer to the bench's check (of a 40-byte
/// key) to `answer_bytes`.
fn padding(answer_bytes: usize) -> anyhow::Result<String> {
    let bare = serde_json::to_vec(&answer(&typical_check(), ""))?.len();
    Ok("x".repeat(answer_bytes.saturating_sub(bare)))
}

/// The check the bench sends (`fixture::check_body`), key aside.
fn typical_check() -> CheckShape {
    CheckShape {
        api: "bench".into(),
        stage: "prod".into(),
        method: "GET".into(),
        path: "/items/1".into(),
        source_ip: Some("192.0.2.1".into()),
        headers: [("x-api-key".to_string(), "k".repeat(40))].into(),
    }
}

fn answer<'a>(request: &'a CheckShape, padding: &'a str) -> Answer<'a> {
    Answer {
        allowed: true,
        status: 200,
        reason: "allowed",
        message: "",
        api: &request.api,
        stage: &request.stage,
        method: &request.method,
        path: &request.path,
        source_ip: request.source_ip.as_deref(),
        key_len: request.headers.get("x-api-key").map_or(0, String::len),
        padding,
    }
}

/// `POST /v1/check`, bare: JSON in, JSON out. A body that is not a check is
/// axum's own 4xx.
async fn check(State(shared): State<Shared>, Json(request): Json<CheckShape>) -> Response {
    Json(answer(&request, &shared.padding)).into_response()
}

/// Forward-auth, bare: 200 with two headers if a key is given, else 401.
async fn forward_auth(Path((api, _stage, _rest)): Path<(String, String, String)>, headers: HeaderMap) -> Response {
    match headers.get("x-api-key") {
        Some(key) => {
            let key_len = key.len().to_string();
            (StatusCode::OK, [("x-bench-api", api), ("x-bench-key-length", key_len)]).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// The `baseline-server` subcommand: binds `127.0.0.1:0`, prints the
/// address bound (one line on standard output), and serves until killed.
pub async fn serve(answer_bytes: usize) -> anyhow::Result<()> {
    let app = router(answer_bytes)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, app).await.context("serving the baseline")?;
    Ok(())
}

/// The baseline server process; killed and reaped when dropped (also when
/// the bench unwinds from a panic), and killed by the kernel if the bench
/// dies (`PR_SET_PDEATHSIG`).
pub struct BaselineProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl BaselineProcess {
    /// Starts `tollgate-bench baseline-server` (this very binary) and waits
    /// for the address it bound.
    pub async fn start(answer_bytes: usize) -> anyhow::Result<BaselineProcess> {
        let exe = std::env::current_exe().context("finding the tollgate-bench binary to start the baseline")?;
        let mut command = Command::new(&exe);
        command
            .args(["baseline-server", "--answer-bytes", &answer_bytes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::harness::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the baseline server ({} baseline-server)", exe.display()))?;
        let stdout = child.stdout.take().context("the baseline server's standard output")?;
        // From here, dropping `process` kills the child, which also ends the
        // read below if it is waiting.
        let mut process = BaselineProcess { child, url: String::new() };
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(START_PATIENCE, read).await {
            Ok(line) => line.context("reading the baseline server's address")??,
            Err(_) => bail!("the baseline server printed no address within {START_PATIENCE:?}"),
        };
        let addr: std::net::SocketAddr = line
            .trim()
            .parse()
            .with_context(|| format!("the baseline server printed {line:?}, not the address it bound"))?;
        process.url = format!("http://{addr}");
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_answer_is_padded_to_the_size_asked() {
        let padding = padding(800).expect("padding");
        let bytes = serde_json::to_vec(&answer(&typical_check(), &padding)).expect("serialises");
        assert_eq!(bytes.len(), 800);
    }

    #[test]
    fn an_answer_asked_smaller_than_the_bare_one_has_no_padding() {
        assert_eq!(padding(10).expect("padding"), "");
    }
}

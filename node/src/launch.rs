//! The one launcher of node processes: `tollgate dev`, the integration
//! tests' cluster harness (`tests/harness`) and `tollgate-bench` all start,
//! watch and stop `tollgate serve` children through this module, so a node
//! is started the same way everywhere and a fix to how (a flag, a wait, a
//! stop) lands once.
//!
//! A launch has two halves:
//!
//! - [`NodeCommand`]: the `serve` command line of one node — its id, data
//!   dir, listen addresses (port 0 allowed), `--init`, `--peers`, a config
//!   file, the admin and cluster tokens (in the environment, never on the
//!   command line, where `ps` would show them) and any further flags — and
//!   where its output goes.
//! - [`NodeProcess`]: the running child. It waits for the node's
//!   `node.json` (the addresses it bound: the only way to learn a port-0
//!   node's ports, with no check-a-port-then-bind race) and for `/readyz`,
//!   stops it with SIGTERM and a deadline, and kills it when dropped — also
//!   while a panic unwinds — so an error or a failed test leaves no node
//!   running.
//!
//! What a caller does around its nodes is its own: `tollgate dev` picks fixed
//! ports, prints and restarts; the harness proxies peer links and holds the
//! ports of a killed node; the bench measures. This module never picks a
//! port, never retries a start, and never prints.
//!
//! The crate forbids `unsafe`, so a hook that must run in the child before
//! `exec` (the harness's `PR_SET_PDEATHSIG`, which needs `pre_exec`) is the
//! caller's, passed to [`NodeCommand::spawn_with`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a wait looks again at `node.json`, `/readyz` or the process:
/// often enough that a start measured by the bench is not rounded up much,
/// rarely enough to cost a node nothing.
const POLL: Duration = Duration::from_millis(10);

/// Why a node could not be started, did not come up, or did not stop. Every
/// variant that concerns a running node names it and its log.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The data dir or the log file could not be made.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be run (missing, not executable).
    #[error("cannot run {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The process ended while it was waited for (bad flags, a port taken,
    /// a data dir it cannot open: its log says which).
    #[error("{node} exited ({status}) {while_}; see {}", log.display())]
    Exited { node: String, status: ExitStatus, while_: &'static str, log: PathBuf },
    /// A wait ran past its deadline.
    #[error("{node} {what} in {} s; see {}", after.as_secs(), log.display())]
    TimedOut { node: String, what: &'static str, after: Duration, log: PathBuf },
    /// `node.json` is there but does not say what was bound.
    #[error("{} of {node}: {message}", path.display())]
    NodeJson { node: String, path: PathBuf, message: String },
    /// SIGTERM could not be sent.
    #[error("cannot send SIGTERM to {node}: {source}")]
    Signal {
        node: String,
        #[source]
        source: std::io::Error,
    },
}

/// The four listen addresses of a node. Port 0 lets the kernel choose;
/// [`NodeProcess::wait_bound`] then says what it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `--http`: check, forward-auth, admin API, health.
    pub http: String,
    /// `--peer`: Raft and the other nodes.
    pub peer: String,
    /// `--wire`: the binary check protocol.
    pub wire: String,
    /// `--grpc`: Envoy's ext_authz.
    pub grpc: String,
}

impl Listen {
    /// On 127.0.0.1, at these ports (0: any free one, chosen at bind).
    pub fn loopback(http: u16, peer: u16, wire: u16, grpc: u16) -> Listen {
        let at = |port: u16| format!("127.0.0.1:{port}");
        Listen { http: at(http), peer: at(peer), wire: at(wire), grpc: at(grpc) }
    }
}

/// What a node bound, from its `node.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub wire: SocketAddr,
    pub grpc: SocketAddr,
}

/// One node's `tollgate serve` command line and environment. Fields left at
/// their defaults ([`NodeCommand::new`]) are not passed, so the node's own
/// defaults (or its config file) apply.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// The `tollgate` binary.
    pub bin: PathBuf,
    /// `--data-dir`. Always passed (also with a config file, which then
    /// should say the same): the launcher reads `node.json` from it.
    pub data_dir: PathBuf,
    /// How errors name the node, e.g. `node 2`.
    pub name: String,
    /// `--config FILE`; flags given here override what the file says.
    pub config: Option<PathBuf>,
    /// `--id`.
    pub id: Option<u64>,
    /// `--http`, `--peer`, `--wire`, `--grpc`.
    pub listen: Option<Listen>,
    /// `--init true`: start a new cluster of this node alone (the others
    /// join it through the admin API).
    pub init: bool,
    /// `--peers`: every member, `ID=HTTP/PEER/WIRE,…`, when all of them are
    /// known before any starts (fixed ports).
    pub peers: Option<String>,
    /// `TOLLGATE_ADMIN_TOKEN` (the bootstrap admin token); unset: inherited.
    pub admin_token: Option<String>,
    /// `TOLLGATE_CLUSTER_TOKEN` (peers' shared secret); unset: inherited.
    pub cluster_token: Option<String>,
    /// More environment, e.g. `TOLLGATE_LOG`.
    pub env: Vec<(String, String)>,
    /// More flags, after all of the above. A flag set above too is an error
    /// of the node's (given twice).
    pub flags: Vec<OsString>,
    /// Where standard output and error go, appended to; `None`:
    /// `DATA_DIR/node.log`.
    pub log: Option<PathBuf>,
}

impl NodeCommand {
    /// A node of `bin` keeping its data in `data_dir`, with nothing else
    /// set; fill in the public fields.
    pub fn new(bin: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> NodeCommand {
        let data_dir = data_dir.into();
        NodeCommand {
            bin: bin.into(),
            name: format!("the node in {}", data_dir.display()),
            data_dir,
            config: None,
            id: None,
            listen: None,
            init: false,
            peers: None,
            admin_token: None,
            cluster_token: None,
            env: Vec::new(),
            flags: Vec::new(),
            log: None,
        }
    }

    /// Sets `--id` and names the node by it.
    pub fn id(mut self, id: u64) -> NodeCommand {
        self.id = Some(id);
        self.name = format!("node {id}");
        self
    }

    /// The log file: [`NodeCommand::log`] or `DATA_DIR/node.log`.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone().unwrap_or_else(|| self.data_dir.join("node.log"))
    }

    /// The arguments after the binary: `serve` and its flags (no secrets:
    /// those go in the environment).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["serve".into()];
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        if let Some(config) = &self.config {
            flag("--config", config.into());
        }
        if let Some(id) = self.id {
            flag("--id", id.to_string().into());
        }
        if let Some(listen) = &self.listen {
            flag("--http", (&listen.http).into());
            flag("--peer", (&listen.peer).into());
            flag("--wire", (&listen.wire).into());
            flag("--grpc", (&listen.grpc).into());
        }
        flag("--data-dir", self.data_dir.as_os_str().into());
        if self.init {
            flag("--init", "true".into());
        }
        if let Some(peers) = &self.peers {
            flag("--peers", peers.into());
        }
        args.extend(self.flags.iter().cloned());
        args
    }

    /// Starts the node: see [`NodeCommand::spawn_with`].
    pub fn spawn(&self) -> Result<NodeProcess, LaunchError> {
        self.spawn_with(|_| {})
    }

    /// Makes the data dir, removes a `node.json` left by an earlier run (so
    /// [`NodeProcess::wait_bound`] reads only this run's), opens the log and
    /// starts the process with standard input closed. `prepare` may add to
    /// the command last (e.g. a `pre_exec` hook).
    pub fn spawn_with(&self, prepare: impl FnOnce(&mut Command)) -> Result<NodeProcess, LaunchError> {
        let io = |what: String| move |source| LaunchError::Io { what, source };
        std::fs::create_dir_all(&self.data_dir).map_err(io(format!("cannot create {}", self.data_dir.display())))?;
        let node_json = self.data_dir.join("node.json");
        match std::fs::remove_file(&node_json) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot remove the old {}", node_json.display()))(e)),
        }
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("cannot open the log {}", log_path.display())))?;
        let log_too = log.try_clone().map_err(io(format!("cannot share the log {}", log_path.display())))?;
        let mut command = Command::new(&self.bin);
        command.args(self.args());
        if let Some(token) = &self.admin_token {
            command.env("TOLLGATE_ADMIN_TOKEN", token);
        }
        if let Some(token) = &self.cluster_token {
            command.env("TOLLGATE_CLUSTER_TOKEN", token);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(log_too).stderr(log);
        prepare(&mut command);
        let child = command.spawn().map_err(|source| LaunchError::Spawn { bin: self.bin.clone(), source })?;
        Ok(NodeProcess { child, name: self.name.clone(), node_json, log: log_path })
    }
}

/// A running node process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// How errors name it.
    name: String,
    /// Where it reports what it bound.
    node_json: PathBuf,
    /// Its standard output and error, for error messages.
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Errors only say it is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How it ended, if it has (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `Exited` if the process has ended.
    fn check_alive(&mut self, while_: &'static str) -> Result<(), LaunchError> {
        match self.try_wait() {
            Some(status) => Err(LaunchError::Exited { node: self.name.clone(), status, while_, log: self.log.clone() }),
            None => Ok(()),
        }
    }

    fn timed_out(&self, what: &'static str, started: Instant) -> LaunchError {
        LaunchError::TimedOut { node: self.name.clone(), what, after: started.elapsed(), log: self.log.clone() }
    }

    /// Waits until the node has written `node.json` (it does once its
    /// listeners are bound) and returns the addresses in it. Fails if the
    /// process ends first or `deadline` passes.
    pub async fn wait_bound(&mut self, deadline: Instant) -> Result<Bound, LaunchError> {
        let started = Instant::now();
        let text = loop {
            self.check_alive("before it bound its ports")?;
            // Written to a temporary file and renamed: never read half-made.
            if let Ok(text) = std::fs::read_to_string(&self.node_json) {
                break text;
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out("did not write node.json", started));
            }
            tokio::time::sleep(POLL).await;
        };
        let bad =
            |message: String| LaunchError::NodeJson { node: self.name.clone(), path: self.node_json.clone(), message };
        let endpoints: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let addr = |name: &str| -> Result<SocketAddr, LaunchError> {
            endpoints[name].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| bad(format!("no {name} address")))
        };
        Ok(Bound { http: addr("http")?, peer: addr("peer")?, wire: addr("wire")?, grpc: addr("grpc")? })
    }

    /// Waits until `base_url/readyz` answers 2xx through `http` (a client
    /// that trusts the node's CA if it speaks TLS). Fails if the process
    /// ends first or `deadline` passes. Returns how long it waited.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        base_url: &str,
        deadline: Instant,
    ) -> Result<Duration, LaunchError> {
        let started = Instant::now();
        loop {
            self.check_alive("before it was ready")?;
            if is_ready(http, base_url).await {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out("did not become ready", started));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the node to stop (SIGTERM): it finishes what it has in hand and
    /// exits. Does nothing if it has exited already (its pid may be reused).
    pub fn terminate(&mut self) -> Result<(), LaunchError> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        let signal_error = |source| LaunchError::Signal { node: self.name.clone(), source };
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| signal_error(std::io::Error::other("not a valid pid")))?;
        // Our own child, not yet reaped (try_wait above): the pid is its.
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(|e| signal_error(e.into()))
    }

    /// Waits until the process ends by itself and returns how; fails once
    /// `deadline` passes (the process is left running: drop it to kill it).
    pub async fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus, LaunchError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out("did not exit", started));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, then waits until `deadline` for the process to end; past
    /// it, kills it (SIGKILL) and says it timed out.
    pub async fn stop(&mut self, deadline: Instant) -> Result<ExitStatus, LaunchError> {
        self.terminate()?;
        let ended = self.wait_exit(deadline).await;
        if ended.is_err() {
            self.kill();
        }
        ended
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One probe: whether `base_url/readyz` answers 2xx now.
pub async fn is_ready(http: &reqwest::Client, base_url: &str) -> bool {
    let url = format!("{}/readyz", base_url.trim_end_matches('/'));
    http.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_has_each_setting_once_and_no_secret() {
        let mut command = NodeCommand::new("/bin/tollgate", "/data/n2").id(2);
        command.listen = Some(Listen::loopback(0, 0, 9000, 0));
        command.init = true;
        command.admin_token = Some("tga_secret".into());
        command.flags = vec!["--keep-logs".into(), "5".into()];
        let args: Vec<String> = command.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "serve --id 2 --http 127.0.0.1:0 --peer 127.0.0.1:0 --wire 127.0.0.1:9000 --grpc 127.0.0.1:0 \
             --data-dir /data/n2 \
             --init true --keep-logs 5"
        );
        assert_eq!(command.name, "node 2");
        assert_eq!(command.log_path(), Path::new("/data/n2/node.log"));
    }

    #[tokio::test]
    async fn a_node_that_exits_at_once_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        // `false` stands in for a node that refuses its flags.
        let mut node = NodeCommand::new("false", dir.path()).id(7).spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        match node.wait_bound(deadline).await {
            Err(LaunchError::Exited { node, log, .. }) => {
                assert_eq!(node, "node 7");
                assert_eq!(log, dir.path().join("node.log"));
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stop_sends_sigterm_and_drop_kills() {
        let dir = tempfile::tempdir().expect("temp dir");
        // `sh serve …` in `dir` runs the script `dir/serve` as a stand-in for a
        // node (read by sh, never executed itself: no ETXTBSY race with other
        // tests' forks).
        std::fs::write(dir.path().join("serve"), "exec sleep 60\n").expect("script");
        let command = NodeCommand::new("sh", dir.path().join("data"));
        let in_dir = |c: &mut Command| {
            c.current_dir(dir.path());
        };
        let mut node = command.spawn_with(in_dir).expect("spawn");
        let status = node.stop(Instant::now() + Duration::from_secs(10)).await.expect("stops on SIGTERM");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        let mut again = command.spawn_with(in_dir).expect("spawn");
        let pid = again.pid();
        assert!(again.try_wait().is_none());
        drop(again);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped when dropped");
    }
}

//! `tollgate dev`: three real node processes on loopback, one folder of data,
//! the endpoints, each node's web console and a fresh admin token printed;
//! Ctrl-C, SIGTERM or SIGHUP stops all three. A node that exits is started
//! again (with back-off). Each node's configuration, but for its secrets, is
//! in `DIR/nodeN/tollgate.toml`.
//! Running it again on the same folder brings the same cluster back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::launch::{NodeCommand, NodeProcess};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Folder for the three nodes' data and logs.
    #[arg(long, default_value = ".tollgate-dev")]
    pub data_dir: PathBuf,
    /// HTTP ports are P, P+1, P+2; peer ports P+1000 … P+1002; wire (binary
    /// check) ports P+2000 … P+2002; gRPC (Envoy ext_authz) ports P+3000 … P+3002.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,
    /// TLS on every listener and mutual TLS between the nodes, with a
    /// development CA made in DATA_DIR/certs on the first run (`tollgate certs`).
    #[arg(long)]
    pub tls: bool,
    /// How the nodes write their logs (DATA_DIR/nodeN/node.log): `text`
    /// (the default; no colours in a file) or `json`, one object per line
    /// for a log shipper. Written into each node's tollgate.toml.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
}

/// The three processes; each is killed when dropped, so an early error leaves
/// none behind.
struct Nodes(Vec<NodeProcess>);

impl Nodes {
    /// Asks each node to stop (SIGTERM), then waits a while (10 s in all)
    /// before they are killed.
    async fn stop(&mut self) {
        for node in &mut self.0 {
            if let Err(e) = node.terminate() {
                eprintln!("{e}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut self.0 {
            // Past the deadline the node is killed when `Nodes` is dropped.
            let _ = node.wait_exit(deadline).await;
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let base = args.base_port;
    if base > 65535 - 3002 {
        bail!("--base-port: must leave room for P+3002 (at most 62533)");
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    // Caught from now on: a Ctrl-C or SIGTERM while the nodes start still
    // stops them (by default it would end this process and leave them running).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // The terminal dev runs in was closed: stop the nodes too.
    let mut hangup = signal(SignalKind::hangup())?;
    let exe = std::env::current_exe().context("cannot find the tollgate binary")?;
    let token = match std::env::var("TOLLGATE_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => crate::secret::generate("tga_").0,
    };
    let cluster_token = match std::env::var("TOLLGATE_CLUSTER_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => crate::secret::generate("tgc_").0,
    };
    let addr = |i: u16| (format!("127.0.0.1:{}", base + i), format!("127.0.0.1:{}", base + 1000 + i));
    let wire = |i: u16| format!("127.0.0.1:{}", base + 2000 + i);
    let grpc = |i: u16| format!("127.0.0.1:{}", base + 3000 + i);
    let peers: Vec<String> = (0..3)
        .map(|i| {
            let (http, peer) = addr(i);
            format!("{}={http}/{peer}/{}", i + 1, wire(i))
        })
        .collect();
    let peers = peers.join(",");
    let certs = std::path::absolute(args.data_dir.join("certs")).context("the certificates' folder")?;
    let mut roots = Vec::new();
    if args.tls {
        if !certs.join("ca.pem").exists() {
            crate::tls::generate(&certs, &[])?;
        }
        roots = crate::tls::outbound_roots(&certs.join("ca.pem"))?;
    }
    let scheme = if args.tls { "https" } else { "http" };

    // Each node's whole configuration, but for its two secrets, is kept in
    // its data dir (`tollgate serve --config DIR/tollgate.toml` with the
    // tokens in the environment starts it again), and every start uses it.
    let spawn = |i: u16| -> anyhow::Result<NodeProcess> {
        let dir = std::path::absolute(args.data_dir.join(format!("node{}", i + 1)))?;
        std::fs::create_dir_all(&dir)?;
        let (http, peer) = addr(i);
        let mut config = toml::Table::new();
        config.insert("id".into(), toml::Value::Integer(i as i64 + 1));
        config.insert("http".into(), toml::Value::String(http));
        config.insert("peer".into(), toml::Value::String(peer));
        config.insert("wire".into(), toml::Value::String(wire(i)));
        config.insert("grpc".into(), toml::Value::String(grpc(i)));
        config.insert("peers".into(), toml::Value::String(peers.clone()));
        config.insert("data_dir".into(), toml::Value::String(dir.display().to_string()));
        if let Some(format) = args.log_format {
            let name = clap::ValueEnum::to_possible_value(&format).map(|v| v.get_name().to_string());
            config.insert("log_format".into(), toml::Value::String(name.unwrap_or_default()));
        }
        if args.tls {
            for (key, file) in [("tls_cert", "node.pem"), ("tls_key", "node-key.pem"), ("tls_client_ca", "ca.pem")] {
                config.insert(key.into(), toml::Value::String(certs.join(file).display().to_string()));
            }
        }
        let path = dir.join("tollgate.toml");
        let text = format!(
            "# Written by `tollgate dev`. The secrets are not here: to run this node by hand,\n# set \
             TOLLGATE_ADMIN_TOKEN and TOLLGATE_CLUSTER_TOKEN as `tollgate dev` printed them:\n# \
             tollgate serve --config {}\n{}",
            path.display(),
            toml::to_string(&config)?
        );
        std::fs::write(&path, text)?;
        let mut command = NodeCommand::new(&exe, dir);
        command.name = format!("node {}", i + 1);
        command.config = Some(path);
        command.admin_token = Some(token.clone());
        command.cluster_token = Some(cluster_token.clone());
        command.spawn().context("cannot start a node")
    };
    let mut nodes = Nodes(Vec::new());
    for i in 0..3u16 {
        nodes.0.push(spawn(i)?);
    }

    let http = crate::tls::http_trusting(&roots).build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, node) in nodes.0.iter_mut().enumerate() {
        let url = format!("{scheme}://{}", addr(i as u16).0);
        tokio::select! {
            ready = node.wait_ready(&http, &url, deadline) => {
                ready?;
            }
            _ = term.recv() => bail!("stopped while the nodes were starting"),
            _ = interrupt.recv() => bail!("stopped while the nodes were starting"),
            _ = hangup.recv() => bail!("stopped while the nodes were starting"),
        }
    }

    println!("Tollgate dev cluster is up (data in {}).", args.data_dir.display());
    for i in 0..3u16 {
        let (h, p) = addr(i);
        println!(
            "  node {}: {scheme}://{h}  (wire {}, grpc {}, peer {p}, log {}/node{}/node.log)",
            i + 1,
            wire(i),
            grpc(i),
            args.data_dir.display(),
            i + 1
        );
    }
    println!();
    println!("Web console (sign in with the admin token below):");
    for i in 0..3u16 {
        println!("  node {}: {scheme}://{}/console", i + 1, addr(i).0);
    }
    println!();
    println!("Admin token (valid while this runs):");
    println!("  export TOLLGATE_ADMIN_TOKEN={token}");
    println!("  export TOLLGATE_URL={scheme}://{}", addr(0).0);
    println!("Cluster token (to run a node by hand from its DATA_DIR/nodeN/tollgate.toml):");
    println!("  export TOLLGATE_CLUSTER_TOKEN={cluster_token}");
    let curl_ca = if args.tls {
        println!("  export TOLLGATE_CA={}", certs.join("ca.pem").display());
        println!("TLS on every listener; the CA, node and proxy client certificates are in {}.", certs.display());
        " --cacert $TOLLGATE_CA"
    } else {
        ""
    };
    println!();
    println!(
        "Try:  curl -s{curl_ca} -H \"Authorization: Bearer $TOLLGATE_ADMIN_TOKEN\" $TOLLGATE_URL/v1/admin/cluster"
    );
    println!("Ctrl-C stops all three nodes.");

    // A node that exits (or is killed, to try a failover) is started again
    // after a back-off that doubles while it keeps failing (1 s up to 30 s)
    // and is forgotten once it has run for a minute.
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    let mut restart_at: [Option<Instant>; 3] = [None; 3];
    let mut backoff = [Duration::from_secs(1); 3];
    let mut started = [Instant::now(); 3];
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => break,
            _ = watch.tick() => {
                for i in 0..3 {
                    if let Some(at) = restart_at[i] {
                        if Instant::now() >= at {
                            restart_at[i] = None;
                            match spawn(i as u16) {
                                Ok(child) => {
                                    nodes.0[i] = child;
                                    started[i] = Instant::now();
                                    eprintln!("node {} started again", i + 1);
                                }
                                Err(e) => {
                                    eprintln!("node {} could not be started again: {e:#}", i + 1);
                                    restart_at[i] = Some(Instant::now() + backoff[i]);
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(status) = nodes.0[i].try_wait() {
                        if started[i].elapsed() > Duration::from_secs(60) {
                            backoff[i] = Duration::from_secs(1);
                        }
                        eprintln!(
                            "node {} exited ({status}); starting it again in {} s (log: {}/node{}/node.log)",
                            i + 1,
                            backoff[i].as_secs(),
                            args.data_dir.display(),
                            i + 1
                        );
                        restart_at[i] = Some(Instant::now() + backoff[i]);
                        backoff[i] = (backoff[i] * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
    println!("stopping…");
    nodes.stop().await;
    Ok(())
}

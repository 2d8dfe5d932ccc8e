//! The `tollgate` command line: `serve`, `dev`, and admin subcommands that call
//! the admin HTTP API (`keys`, `plans`, `apis`, `policies`, `authorizers`,
//! `tokens`, `limits`, `cluster`). Reading files is in submodules: key
//! imports (`import`), envoyproxy/ratelimit configuration files (`limits`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tollgate_client::admin::{AdminClient, AdminError, Method};

use crate::config::ServeArgs;
use crate::dev::DevArgs;

mod import;
mod limits;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Distributed rate-limit and API-key metering cluster")]
struct Cli {
    /// Admin API base URL of any node.
    #[arg(long, global = true, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Admin token (bearer).
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an `https://` URL (a cluster with
    /// TLS whose certificates a private CA signed, e.g. `tollgate certs`).
    #[arg(long, global = true, env = "TOLLGATE_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a three-node cluster on loopback for development.
    Dev(DevArgs),
    /// Make a development CA, a node certificate and a proxy client certificate.
    Certs {
        /// Folder for the PEM files.
        #[arg(long, default_value = "tollgate-certs")]
        out: std::path::PathBuf,
        /// Names and addresses the node certificate is for, besides localhost
        /// and 127.0.0.1 (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// API keys.
    #[command(subcommand)]
    Keys(KeyCmd),
    /// Usage plans.
    #[command(subcommand)]
    Plans(PlanCmd),
    /// APIs (stages, routes).
    #[command(subcommand)]
    Apis(ObjectCmd),
    /// IAM-style policies.
    #[command(subcommand)]
    Policies(ObjectCmd),
    /// JWT and HTTP authorizers.
    #[command(subcommand)]
    Authorizers(ObjectCmd),
    /// Admin tokens.
    #[command(subcommand)]
    Tokens(TokenCmd),
    /// Descriptor limits for Envoy's rate limit service: rate limit domains,
    /// loaded from envoyproxy/ratelimit configuration files.
    #[command(subcommand)]
    Limits(LimitCmd),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A plan the key belongs to (repeatable).
        #[arg(long = "plan")]
        plans: Vec<String>,
        /// A tag, NAME=VALUE (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        customer: Option<String>,
        /// RFC 3339 expiry time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Create many keys from a JSON-lines or CSV file (`-`: standard
    /// input), up to 1000 per request; each secret is written once, as a JSON
    /// line, to standard output or `--secrets-out`.
    Import {
        /// The file: JSON lines (one key spec per line) or CSV (a header row
        /// naming some of name, plan_ids, customer_id, description, enabled,
        /// expires_at, tags).
        file: String,
        /// The file's format (default: CSV for a `.csv` name, else JSON lines).
        #[arg(long, value_enum)]
        format: Option<import::Format>,
        /// Write the secrets here (a new file, readable by its owner only)
        /// instead of to standard output.
        #[arg(long)]
        secrets_out: Option<std::path::PathBuf>,
        /// Keys per request, 1 to 1000 (each request is one replicated write).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        /// Steady rate, requests per second.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        burst: Option<u32>,
        /// Requests per period.
        #[arg(long)]
        quota: Option<u64>,
        /// day, week or month.
        #[arg(long, default_value = "month")]
        period: String,
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// An API stage the plan covers, API_ID/STAGE (repeatable).
        #[arg(long = "stage")]
        stages: Vec<String>,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Quota usage of the plan's keys per day, and the current period.
    Usage {
        id: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// First day, YYYY-MM-DD (default today, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default today, UTC).
        #[arg(long)]
        to: Option<String>,
    },
    /// Add to (or, negative, take from) what a key may still use this period.
    AdjustUsage {
        id: String,
        #[arg(long)]
        key: String,
        #[arg(long, allow_hyphen_values = true)]
        delta: i64,
    },
}

#[derive(Subcommand)]
enum ObjectCmd {
    /// Create from a JSON file (`-` for standard input) or inline JSON.
    Create(JsonInput),
    /// Replace from JSON.
    Update {
        id: String,
        #[command(flatten)]
        input: JsonInput,
    },
    List(ListArgs),
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an admin token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// read, write or check (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List(ListArgs),
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum LimitCmd {
    /// Load envoyproxy/ratelimit configuration files (YAML).
    ///
    /// One domain per YAML document (`---` between documents). Each domain
    /// is created, or replaces the stored domain of the same name (keeping
    /// its id). Every file is read and checked before anything is written;
    /// an error names the file, line, column and field. `metadata` is
    /// refused: Tollgate has nowhere to keep it.
    Import {
        /// The files (`-`: standard input).
        #[arg(required = true)]
        files: Vec<String>,
        /// Read and check the files, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List rate limit domains, in id order (JSON).
    List(ListArgs),
    /// Show the rate limit domain with this domain name (JSON).
    Get { domain: String },
    /// Delete the rate limit domain with this domain name.
    Delete { domain: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
    Status,
    /// Add a node (as learner, then voter unless --learner).
    AddNode {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        http: String,
        #[arg(long)]
        peer: String,
        /// The node's binary check listener, for client discovery.
        #[arg(long, default_value = "")]
        wire: String,
        #[arg(long)]
        learner: bool,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
}

#[derive(clap::Args)]
struct ListArgs {
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    after: Option<String>,
    /// Read the node's local copy.
    #[arg(long)]
    stale: bool,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct JsonInput {
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    json: Option<String>,
}

impl JsonInput {
    fn read(&self) -> anyhow::Result<Value> {
        let text = match (&self.file, &self.json) {
            (Some(p), _) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
            (Some(p), _) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            (None, Some(j)) => j.clone(),
            (None, None) => bail!("give --file or --json"),
        };
        serde_json::from_str(&text).context("the input is not JSON")
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Not a plain drop, which would wait for every blocking task (a
    // free-space measurement on a hung filesystem, say) however long it takes.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when standard error cannot be written.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Listens for SIGTERM and SIGINT from now on (a signal that arrives while
/// the node is still starting is kept, not fatal) and completes on the first.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Writes one line of a command's output. A reader that went away (`| head`)
/// ends the output quietly, as for any Unix tool; println! would panic.
fn output(line: &str) -> std::io::Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Only the admin subcommands need it (and `--ca`).
    let admin = || -> anyhow::Result<Admin> {
        let roots = match &cli.ca {
            Some(ca) => crate::tls::outbound_roots(ca)?,
            None => Vec::new(),
        };
        let http = crate::tls::http_trusting(&roots).build()?;
        let base = cli.url.trim_end_matches('/').to_string();
        // Without a token only a call fails (and says how to give one).
        let client = cli.token.as_ref().map(|token| AdminClient::with_http([base.clone()], token, http)).transpose()?;
        Ok(Admin { base, client })
    };
    match cli.command {
        Top::Serve(args) => {
            let shutdown = shutdown_signal()?;
            // The log format is part of the configuration: resolved first
            // (its errors go to standard error as any command's), then the
            // logger, then the node.
            let config = args.resolve()?;
            crate::logging::init(config.log.format);
            crate::server::run(config, shutdown).await
        }
        Top::Dev(args) => crate::dev::run(args).await,
        Top::Certs { out, hosts } => {
            for file in crate::tls::generate(&out, &hosts)? {
                output(&file)?;
            }
            Ok(())
        }
        Top::Keys(cmd) => keys(&admin()?, cmd).await,
        Top::Plans(cmd) => plans(&admin()?, cmd).await,
        Top::Apis(cmd) => objects(&admin()?, "apis", cmd).await,
        Top::Policies(cmd) => objects(&admin()?, "policies", cmd).await,
        Top::Authorizers(cmd) => objects(&admin()?, "authorizers", cmd).await,
        Top::Tokens(cmd) => tokens(&admin()?, cmd).await,
        Top::Limits(LimitCmd::Import { files, dry_run: true }) => {
            for loaded in limits::read_files(&files)? {
                let rules = limits::rule_count(&loaded.domain.descriptors);
                output(&format!(
                    "checked {:?} ({}): {rules} descriptors",
                    loaded.domain.domain,
                    loaded.source.origin()
                ))?;
            }
            Ok(())
        }
        Top::Limits(cmd) => rate_limits(&admin()?, cmd).await,
        Top::Cluster(cmd) => cluster(&admin()?, cmd).await,
    }
}

/// The admin subcommands' view of the API: the one admin client
/// (`tollgate_client::admin`, on the one node `--url` names), with errors
/// and answers printed for a person.
struct Admin {
    base: String,
    /// None without `--token`: only a call needs one, and fails without it.
    client: Option<AdminClient>,
}

impl Admin {
    /// One call; the answer's JSON (Null when empty), or an error that gives
    /// the status and the field and message the node named.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let client = self.client.as_ref().ok_or_else(|| anyhow!("set --token or TOLLGATE_ADMIN_TOKEN"))?;
        let (status, value) = match client.request(method, path, body.as_ref()).await {
            Ok(answer) => answer,
            Err(AdminError::Unavailable(why)) => {
                // One node: its cause alone, after the URL said once.
                let why = why.strip_prefix(&format!("{}: ", self.base)).unwrap_or(&why);
                bail!("cannot reach {}: {why}", self.base)
            }
            Err(e) => return Err(e.into()),
        };
        if !(200..300).contains(&status) {
            let status = reqwest::StatusCode::from_u16(status).map(|s| s.to_string()).unwrap_or(status.to_string());
            let err = &value["error"];
            match err["field"].as_str() {
                Some(field) => bail!("{status}: {field}: {}", err["message"].as_str().unwrap_or_default()),
                None => bail!(
                    "{status}: {}",
                    err["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string())
                ),
            }
        }
        Ok(value)
    }

    async fn print(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<()> {
        let value = self.call(method, path, body).await?;
        if !value.is_null() {
            output(&serde_json::to_string_pretty(&value)?)?;
        }
        Ok(())
    }

    async fn list(&self, collection: &str, args: &ListArgs) -> anyhow::Result<()> {
        let mut query = vec![];
        if let Some(l) = args.limit {
            query.push(format!("limit={l}"));
        }
        if let Some(a) = &args.after {
            query.push(format!("after={a}"));
        }
        if args.stale {
            query.push("stale=true".into());
        }
        let path = format!("/v1/admin/{collection}?{}", query.join("&"));
        self.print(Method::GET, &path, None).await
    }
}

async fn keys(admin: &Admin, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, plans, tags, customer, expires } => {
            let mut tag_map = BTreeMap::new();
            for t in tags {
                let (k, v) = t.split_once('=').ok_or_else(|| anyhow!("--tag {t:?}: expected NAME=VALUE"))?;
                tag_map.insert(k.to_string(), v.to_string());
            }
            let body = json!({"name": name, "plan_ids": plans, "tags": tag_map, "customer_id": customer, "expires_at": expires});
            admin.print(Method::POST, "/v1/admin/keys", Some(body)).await
        }
        KeyCmd::Import { file, format, secrets_out, batch } => {
            import_keys(admin, &file, format, secrets_out.as_deref(), batch).await
        }
        KeyCmd::List(args) => admin.list("keys", &args).await,
        KeyCmd::Get { id } => admin.print(Method::GET, &format!("/v1/admin/keys/{id}"), None).await,
        KeyCmd::Disable { id } => set_enabled(admin, &id, false).await,
        KeyCmd::Enable { id } => set_enabled(admin, &id, true).await,
        KeyCmd::Delete { id } => admin.print(Method::DELETE, &format!("/v1/admin/keys/{id}"), None).await,
    }
}

async fn import_keys(
    admin: &Admin,
    file: &str,
    format: Option<import::Format>,
    secrets_out: Option<&std::path::Path>,
    batch: usize,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Read};
    if !(1..=tollgate_client::admin::MAX_IMPORT).contains(&batch) {
        bail!("--batch: must be 1 to {}", tollgate_client::admin::MAX_IMPORT);
    }
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
        bytes
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))?
    };
    let rows =
        import::read(&bytes, format.unwrap_or_else(|| import::Format::of(file))).with_context(|| file.to_string())?;
    let client = admin.client.as_ref().ok_or_else(|| anyhow!("set --token or TOLLGATE_ADMIN_TOKEN"))?;
    let mut out: Box<dyn Write> = match secrets_out {
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            Box::new(std::io::BufWriter::new(
                options.open(path).with_context(|| format!("--secrets-out {}", path.display()))?,
            ))
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(rows.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} keys, {per_sec}, {eta} left")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let created = import::import(client, &rows, batch, &mut *out, &progress).await;
    progress.finish_and_clear();
    drop(out);
    if let (Err(_), Some(path)) = (&created, secrets_out) {
        // Nothing written: the file goes, so the same command can run again.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
    }
    let created = created?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("created {created} keys in {secs:.1} s ({:.0} keys/s)", created as f64 / secs.max(0.001));
    Ok(())
}

async fn set_enabled(admin: &Admin, id: &str, enabled: bool) -> anyhow::Result<()> {
    let path = format!("/v1/admin/keys/{id}");
    let mut key = admin.call(Method::GET, &path, None).await?;
    key["enabled"] = Value::Bool(enabled);
    admin.print(Method::PUT, &path, Some(key)).await
}

async fn plans(admin: &Admin, cmd: PlanCmd) -> anyhow::Result<()> {
    match cmd {
        PlanCmd::Create { name, id, rate, burst, quota, period, offset, stages } => {
            let throttle = match (rate, burst) {
                (Some(r), Some(b)) => json!({"rate_per_sec": r, "burst": b}),
                (None, None) => Value::Null,
                _ => bail!("give --rate and --burst together"),
            };
            let quota = quota.map(|limit| json!({"limit": limit, "period": period, "offset": offset}));
            let mut api_stages = vec![];
            for s in stages {
                let (api, stage) = s.split_once('/').ok_or_else(|| anyhow!("--stage {s:?}: expected API_ID/STAGE"))?;
                api_stages.push(json!({"api_id": api, "stage": stage}));
            }
            let body = json!({"id": id.unwrap_or_default(), "name": name, "throttle": throttle, "quota": quota, "api_stages": api_stages});
            admin.print(Method::POST, "/v1/admin/plans", Some(body)).await
        }
        PlanCmd::List(args) => admin.list("plans", &args).await,
        PlanCmd::Get { id } => admin.print(Method::GET, &format!("/v1/admin/plans/{id}"), None).await,
        PlanCmd::Delete { id } => admin.print(Method::DELETE, &format!("/v1/admin/plans/{id}"), None).await,
        PlanCmd::Usage { id, key, from, to } => {
            let params: Vec<String> = [("key_id", key), ("start_date", from), ("end_date", to)]
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
                .collect();
            admin.print(Method::GET, &format!("/v1/admin/plans/{id}/usage?{}", params.join("&")), None).await
        }
        PlanCmd::AdjustUsage { id, key, delta } => {
            let path = format!("/v1/admin/plans/{id}/usage/{key}");
            admin.print(Method::POST, &path, Some(json!({"delta": delta}))).await
        }
    }
}

async fn objects(admin: &Admin, collection: &str, cmd: ObjectCmd) -> anyhow::Result<()> {
    match cmd {
        ObjectCmd::Create(input) => {
            admin.print(Method::POST, &format!("/v1/admin/{collection}"), Some(input.read()?)).await
        }
        ObjectCmd::Update { id, input } => {
            admin.print(Method::PUT, &format!("/v1/admin/{collection}/{id}"), Some(input.read()?)).await
        }
        ObjectCmd::List(args) => admin.list(collection, &args).await,
        ObjectCmd::Get { id } => admin.print(Method::GET, &format!("/v1/admin/{collection}/{id}"), None).await,
        ObjectCmd::Delete { id } => admin.print(Method::DELETE, &format!("/v1/admin/{collection}/{id}"), None).await,
    }
}

async fn tokens(admin: &Admin, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { name, scopes } => {
            admin.print(Method::POST, "/v1/admin/tokens", Some(json!({"name": name, "scopes": scopes}))).await
        }
        TokenCmd::List(args) => admin.list("tokens", &args).await,
        TokenCmd::Delete { id } => admin.print(Method::DELETE, &format!("/v1/admin/tokens/{id}"), None).await,
    }
}

async fn rate_limits(admin: &Admin, cmd: LimitCmd) -> anyhow::Result<()> {
    let client = || admin.client.as_ref().ok_or_else(|| anyhow!("set --token or TOLLGATE_ADMIN_TOKEN"));
    // The stored domain named `domain`, or an error saying there is none.
    let stored = |domain: String| async move {
        limits::find(client()?, &domain).await?.ok_or_else(|| anyhow!("no rate limit domain {domain:?}"))
    };
    match cmd {
        LimitCmd::Import { files, dry_run: _ } => {
            // Every file is read and checked before the first write.
            let all = limits::read_files(&files)?;
            let client = client()?;
            for (done, loaded) in all.iter().enumerate() {
                let (id, outcome) = limits::write(client, loaded).await.map_err(|e| match done {
                    0 => e,
                    _ => anyhow!(
                        "{e:#}\n({done} of the {} domains were written before this one; importing again writes the rest)",
                        all.len()
                    ),
                })?;
                let verb = match outcome {
                    limits::Outcome::Created => "created",
                    limits::Outcome::Replaced => "replaced",
                };
                output(&format!("{verb} {:?} ({id}) from {}", loaded.domain.domain, loaded.source.origin()))?;
            }
            Ok(())
        }
        LimitCmd::List(args) => admin.list("ratelimits", &args).await,
        LimitCmd::Get { domain } => output(&serde_json::to_string_pretty(&stored(domain).await?)?).map_err(Into::into),
        LimitCmd::Delete { domain } => {
            let found = stored(domain).await?;
            let id = found["id"].as_str().unwrap_or_default();
            admin.print(Method::DELETE, &format!("/v1/admin/ratelimits/{id}"), None).await
        }
    }
}

async fn cluster(admin: &Admin, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => admin.print(Method::GET, "/v1/admin/cluster", None).await,
        ClusterCmd::AddNode { id, http, peer, wire, learner } => {
            let body = json!({"id": id, "http_addr": http, "peer_addr": peer, "wire_addr": wire, "voter": !learner});
            admin.print(Method::POST, "/v1/admin/cluster/nodes", Some(body)).await
        }
        ClusterCmd::Promote { id } => {
            admin.print(Method::POST, &format!("/v1/admin/cluster/nodes/{id}/promote"), None).await
        }
        ClusterCmd::Remove { id } => admin.print(Method::DELETE, &format!("/v1/admin/cluster/nodes/{id}"), None).await,
    }
}

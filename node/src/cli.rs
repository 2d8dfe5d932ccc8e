//! The `tollgate` command line: `serve` and `dev` run nodes; the admin
//! subcommands cover the admin HTTP API, a subcommand for every route
//! (`tests/cli.rs` checks that against the OpenAPI document): `keys`,
//! `plans`, `apis`, `policies`, `authorizers`, `tokens`, `limits`,
//! `identity-key` and `cluster`; `certs` and `completions` are local.
//!
//! # Layout
//!
//! This file holds the command tree's top and [`main`], which turns the
//! outcome into an exit code ([`exit`]). One file per group of subcommands
//! (`keys`, `plans`, `objects` for the JSON kinds and tokens, `cluster`
//! with the identity key, `limits::commands`); reading input files apart
//! (`import` for key files, `limits` for envoyproxy/ratelimit files). Each
//! calls the API through [`api`] and prints through [`output`], whose
//! tables take their columns from [`views`]. A new group (say `audit` or
//! `snapshot`) is a file of its own, a variant of `Top`, and rows in the
//! coverage test's table.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tollgate_client::admin::AdminClient;

use crate::config::ServeArgs;
use crate::dev::DevArgs;

mod api;
mod backup;
mod cluster;
pub mod exit;
mod import;
mod keys;
mod limits;
mod objects;
pub mod output;
mod plans;
mod views;

use exit::Exit;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Distributed rate-limit and API-key metering cluster",
    after_help = exit::after_help()
)]
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
    /// How results are printed: table (default on a terminal), json
    /// (default otherwise, for scripts) or yaml.
    #[arg(short = 'o', long, global = true, env = "TOLLGATE_OUTPUT", value_enum)]
    output: Option<output::Format>,
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
        out: PathBuf,
        /// Names and addresses the node certificate is for, besides localhost
        /// and 127.0.0.1 (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Print a shell completion script (`tollgate completions bash >
    /// /etc/bash_completion.d/tollgate`; zsh: a file `_tollgate` on $fpath).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// API keys: create (secret shown once), list, update, enable, disable,
    /// reroll, import many.
    #[command(subcommand)]
    Keys(keys::KeyCmd),
    /// Usage plans (throttle and quota), and their keys' usage.
    #[command(subcommand)]
    Plans(plans::PlanCmd),
    /// APIs: stages, routes, CORS, WAF rules (JSON).
    #[command(subcommand)]
    Apis(objects::ObjectCmd),
    /// IAM-style and resource policies (JSON).
    #[command(subcommand)]
    Policies(objects::ObjectCmd),
    /// JWT and HTTP authorizers (JSON).
    #[command(subcommand)]
    Authorizers(objects::ObjectCmd),
    /// Admin tokens (secret shown once).
    #[command(subcommand)]
    Tokens(objects::TokenCmd),
    /// Descriptor limits for Envoy's rate limit service: rate limit domains,
    /// loaded from envoyproxy/ratelimit configuration files.
    #[command(subcommand)]
    Limits(limits::commands::LimitCmd),
    /// The key version that signs identity tokens for backends.
    #[command(subcommand)]
    IdentityKey(cluster::IdentityKeyCmd),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Backups: save the cluster's state to a file, restore it into a new
    /// node's data dir, check a file.
    #[command(subcommand)]
    Snapshot(backup::SnapshotCmd),
    /// The audit trail: who changed what, when, from where.
    Audit(backup::AuditArgs),
}

/// The whole command tree, as clap sees it (completions, and tests that
/// check every route has a subcommand and every argument a help text).
pub fn command() -> clap::Command {
    Cli::command()
}

pub fn main() -> ExitCode {
    // A bad command line ends here with clap's message and code 2.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Error.code());
        }
    };
    let result = runtime.block_on(run(cli));
    // Not a plain drop, which would wait for every blocking task (a
    // free-space measurement on a hung filesystem, say) however long it takes.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line; not eprintln!, which panics when standard error
            // cannot be written.
            let _ = writeln!(std::io::stderr(), "error: {}", exit::one_line(&format!("{e:#}")));
            ExitCode::from(Exit::of_error(&e).code())
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = output::Format::or_default(cli.output);
    // Only the admin subcommands need it (and `--ca`).
    let api = || -> anyhow::Result<api::Api> {
        // A URL that is no node's (a typo, another scheme) is a usage error.
        let scheme_ok = reqwest::Url::parse(&cli.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !scheme_ok {
            return Err(exit::Failure::usage(format!("--url {:?}: expected http(s)://host:port", cli.url)).into());
        }
        let roots = match &cli.ca {
            Some(ca) => crate::tls::outbound_roots(ca)?,
            None => Vec::new(),
        };
        // A node that accepts and never answers must not hang a script:
        // past these, the call fails with exit code 7.
        let http = crate::tls::http_trusting(&roots)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()?;
        let base = cli.url.trim_end_matches('/').to_string();
        // Without a token only a call fails (and says how to give one).
        let client = cli.token.as_ref().map(|token| AdminClient::with_http([base.clone()], token, http)).transpose()?;
        Ok(api::Api::new(base, client, format))
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
            let files = crate::tls::generate(&out, &hosts)?;
            output::write_stdout(&files.iter().map(|f| format!("{f}\n")).collect::<String>())?;
            Ok(())
        }
        Top::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "tollgate", &mut script);
            output::write_stdout(&String::from_utf8_lossy(&script))?;
            Ok(())
        }
        Top::Keys(cmd) => keys::run(&api()?, cmd).await,
        Top::Plans(cmd) => plans::run(&api()?, cmd).await,
        Top::Apis(cmd) => objects::run(&api()?, &objects::APIS, cmd).await,
        Top::Policies(cmd) => objects::run(&api()?, &objects::POLICIES, cmd).await,
        Top::Authorizers(cmd) => objects::run(&api()?, &objects::AUTHORIZERS, cmd).await,
        Top::Tokens(cmd) => objects::tokens(&api()?, cmd).await,
        Top::Limits(cmd) => limits::commands::run(&api()?, cmd).await,
        Top::IdentityKey(cmd) => cluster::identity_key(&api()?, cmd).await,
        Top::Cluster(cmd) => cluster::run(&api()?, cmd).await,
        Top::Snapshot(cmd) => backup::snapshot(api, format, cmd).await,
        Top::Audit(args) => backup::audit(&api()?, &args).await,
    }
}

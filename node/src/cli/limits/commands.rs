//! `tollgate limits`: rate limit domains (`/v1/admin/ratelimits`), loaded
//! from envoyproxy/ratelimit files (the file reading is the module above)
//! and named by their domain name.

use clap::Subcommand;
use serde_json::{json, Value};
use tollgate_client::admin::Method;

use crate::cli::api::{segment, Api, ListArgs};
use crate::cli::exit::{Exit, Failure};
use crate::cli::output::{self, View};
use crate::cli::views;

#[derive(Subcommand)]
pub enum LimitCmd {
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
    /// List rate limit domains, in id order.
    List(ListArgs),
    /// Show the rate limit domain with this domain name (or this id).
    Get {
        /// The domain name, as Envoy sends it (or the domain's id, `rld_…`).
        domain: String,
    },
    /// Delete the rate limit domain with this domain name (or this id).
    Delete {
        /// The domain name, as Envoy sends it (or the domain's id, `rld_…`).
        domain: String,
    },
}

pub async fn run(api: &Api, cmd: LimitCmd) -> anyhow::Result<()> {
    match cmd {
        LimitCmd::Import { files, dry_run } => import(api, &files, dry_run).await,
        LimitCmd::List(args) => api.show_list("/v1/admin/ratelimits", &args, views::RATE_LIMITS).await,
        LimitCmd::Get { domain } => {
            let stored = stored(api, &domain).await?;
            output::print(api.format, &stored, View::One(views::RATE_LIMITS))
        }
        LimitCmd::Delete { domain } => {
            let stored = stored(api, &domain).await?;
            let id = stored["id"].as_str().unwrap_or_default();
            api.call(Method::DELETE, &format!("/v1/admin/ratelimits/{}", segment(id)), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("deleted rate limit domain {domain:?} ({id})")))
        }
    }
}

/// The stored domain named `name`, or else the one whose id is `name`.
///
/// # Errors
/// Neither exists (exit code 3), or the node refused or was not reached.
async fn stored(api: &Api, name: &str) -> anyhow::Result<Value> {
    if let Some(found) = super::find(api.client()?, name).await? {
        return Ok(found);
    }
    let path = format!("/v1/admin/ratelimits/{}", segment(name));
    match api.call(Method::GET, &path, None).await {
        Ok(found) => Ok(found),
        Err(e) if Exit::of_error(&e) == Exit::NotFound => {
            Err(Failure::new(Exit::NotFound, format!("no rate limit domain {name:?}")).into())
        }
        Err(e) => Err(e),
    }
}

/// Reads and checks every file, then writes each domain (a progress bar on
/// a terminal), and prints what was done to each; on a failure, what was
/// done before it, then the failure.
async fn import(api: &Api, files: &[String], dry_run: bool) -> anyhow::Result<()> {
    let all = super::read_files(files)?;
    let row = |loaded: &super::LoadedDomain, id: &str, result: &str| {
        json!({"domain": loaded.domain.domain, "id": id, "result": result,
            "rules": super::rule_count(&loaded.domain.descriptors), "source": loaded.source.origin()})
    };
    if dry_run {
        let rows: Vec<Value> = all.iter().map(|loaded| row(loaded, "", "checked")).collect();
        return output::print(api.format, &json!({ "items": rows }), View::Rows(views::IMPORTED_LIMITS));
    }
    let client = api.client()?;
    let progress = output::progress(all.len() as u64, "domains");
    let mut rows = Vec::new();
    let mut failed = None;
    for (done, loaded) in all.iter().enumerate() {
        match super::write(client, loaded).await {
            Ok((id, outcome)) => {
                let result = match outcome {
                    super::Outcome::Created => "created",
                    super::Outcome::Replaced => "replaced",
                };
                rows.push(row(loaded, &id, result));
                progress.inc(1);
            }
            Err(e) => {
                let exit = Exit::of_error(&e);
                let message = match done {
                    0 => format!("{e:#}"),
                    _ => format!(
                        "{e:#} ({done} of the {} domains were written before this one; importing again writes the rest)",
                        all.len()
                    ),
                };
                failed = Some(Failure::new(exit, message));
                break;
            }
        }
    }
    progress.finish_and_clear();
    if !rows.is_empty() || failed.is_none() {
        output::print(api.format, &json!({ "items": rows }), View::Rows(views::IMPORTED_LIMITS))?;
    }
    match failed {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

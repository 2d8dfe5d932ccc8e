//! `tollgate keys`: API keys through `/v1/admin/keys`. A key's secret is
//! printed once, by `create` and `reroll` (and `import`, as JSON lines);
//! no other command can show it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
// `.map()` on a value parser.
use clap::builder::TypedValueParser as _;
use serde_json::{json, Value};
use tollgate_client::admin::{Method, MAX_IMPORT};

use super::api::{segment, Api, ListArgs};
use super::exit::{Exit, Failure};
use super::import;
use super::output::{self, View};
use super::views;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key; its secret is printed once.
    Create {
        /// A label for people (1 to 128 characters).
        #[arg(long)]
        name: String,
        /// Free text for people.
        #[arg(long, default_value = "")]
        description: String,
        /// A plan the key belongs to (repeatable).
        #[arg(long = "plan")]
        plans: Vec<String>,
        /// A tag, NAME=VALUE (repeatable); policies decide on `tag:NAME`.
        #[arg(long = "tag", value_parser = name_value)]
        tags: Vec<(String, String)>,
        /// The customer the key belongs to (usage is reported per key).
        #[arg(long)]
        customer: Option<String>,
        /// When the key stops working, RFC 3339 (`2027-01-01T00:00:00Z`).
        #[arg(long)]
        expires: Option<String>,
        /// Create it disabled (`keys enable` turns it on).
        #[arg(long)]
        disabled: bool,
    },
    /// Create many keys from a JSON-lines or CSV file (`-`: standard
    /// input), up to 1000 per request; each secret is written once, as a
    /// JSON line whatever `-o` says, to standard output or `--secrets-out`.
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
        secrets_out: Option<PathBuf>,
        /// Keys per request, 1 to 1000 (each request is one replicated write).
        #[arg(long, default_value_t = MAX_IMPORT, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
        batch: usize,
    },
    /// List keys in id order (no secrets: each key's visible prefix).
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Only keys whose id, name, customer or secret prefix contains
        /// this text, ignoring case.
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one key (no secret: its visible prefix).
    Get {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Change a key's settings; what is not given stays. Its secret stays too.
    Update {
        /// The key's id (`key_…`).
        id: String,
        /// A new label.
        #[arg(long)]
        name: Option<String>,
        /// New free text.
        #[arg(long)]
        description: Option<String>,
        /// A new customer (`""`: none).
        #[arg(long)]
        customer: Option<String>,
        /// A new expiry, RFC 3339 (`never`: none).
        #[arg(long)]
        expires: Option<String>,
        /// Put the key in this plan too (repeatable).
        #[arg(long = "add-plan")]
        add_plans: Vec<String>,
        /// Take the key out of this plan (repeatable).
        #[arg(long = "remove-plan")]
        remove_plans: Vec<String>,
        /// Set a tag, NAME=VALUE (repeatable).
        #[arg(long = "tag", value_parser = name_value)]
        tags: Vec<(String, String)>,
        /// Remove the tag NAME (repeatable).
        #[arg(long = "remove-tag")]
        remove_tags: Vec<String>,
    },
    /// Delete a key: checks stop accepting its secret.
    Delete {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Turn a key on (checks accept it again).
    Enable {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Turn a key off (checks refuse it with `disabled_key`; it can be enabled again).
    Disable {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Give a key a new secret, printed once; the old one keeps working for
    /// `--overlap-secs`, so clients can move over.
    Reroll {
        /// The key's id (`key_…`).
        id: String,
        /// Seconds the old secret keeps working, 0 (default) to 2592000 (30 days).
        #[arg(long, default_value_t = 0)]
        overlap_secs: u64,
    },
}

/// `NAME=VALUE`, for `--tag`.
pub fn name_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

pub async fn run(api: &Api, cmd: KeyCmd) -> anyhow::Result<()> {
    let item = |id: &str| format!("/v1/admin/keys/{}", segment(id));
    let one = View::One(views::KEYS);
    match cmd {
        KeyCmd::Create { name, description, plans, tags, customer, expires, disabled } => {
            let tags: BTreeMap<String, String> = tags.into_iter().collect();
            let body = json!({"name": name, "description": description, "plan_ids": plans, "tags": tags,
                "customer_id": customer, "expires_at": expires, "enabled": !disabled});
            api.show(Method::POST, "/v1/admin/keys", Some(body), one).await
        }
        KeyCmd::Import { file, format, secrets_out, batch } => {
            import_keys(api, &file, format, secrets_out.as_deref(), batch).await
        }
        KeyCmd::List { list, search } => {
            let path = match search {
                Some(text) => format!("/v1/admin/keys?search={}", super::api::query_value(&text)),
                None => "/v1/admin/keys".to_string(),
            };
            api.show_list(&path, &list, views::KEYS).await
        }
        KeyCmd::Get { id } => api.show(Method::GET, &item(&id), None, one).await,
        KeyCmd::Update { id, name, description, customer, expires, add_plans, remove_plans, tags, remove_tags } => {
            let mut spec = spec_of(&api.call(Method::GET, &item(&id), None).await?);
            if let Some(name) = name {
                spec["name"] = json!(name);
            }
            if let Some(description) = description {
                spec["description"] = json!(description);
            }
            if let Some(customer) = customer {
                spec["customer_id"] = if customer.is_empty() { Value::Null } else { json!(customer) };
            }
            if let Some(expires) = expires {
                spec["expires_at"] = if expires == "never" { Value::Null } else { json!(expires) };
            }
            let mut plans: Vec<String> = strings(&spec["plan_ids"]);
            plans.retain(|p| !remove_plans.contains(p));
            for plan in add_plans {
                if !plans.contains(&plan) {
                    plans.push(plan);
                }
            }
            spec["plan_ids"] = json!(plans);
            if let Value::Object(map) = &mut spec["tags"] {
                for name in &remove_tags {
                    map.remove(name);
                }
                for (name, value) in tags {
                    map.insert(name, json!(value));
                }
            }
            api.show(Method::PUT, &item(&id), Some(spec), one).await
        }
        KeyCmd::Delete { id } => {
            api.call(Method::DELETE, &item(&id), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("deleted key {id}")))
        }
        KeyCmd::Enable { id } => set_enabled(api, &id, true).await,
        KeyCmd::Disable { id } => set_enabled(api, &id, false).await,
        KeyCmd::Reroll { id, overlap_secs } => {
            let path = format!("{}/reroll", item(&id));
            api.show(Method::POST, &path, Some(json!({"overlap_secs": overlap_secs})), one).await
        }
    }
}

/// The settings of a key as the API shows it, as a key spec (what create
/// and replace take).
fn spec_of(view: &Value) -> Value {
    let mut spec = serde_json::Map::new();
    for field in ["name", "description", "customer_id", "tags", "enabled", "expires_at", "plan_ids"] {
        spec.insert(field.into(), view.get(field).cloned().unwrap_or(Value::Null));
    }
    if !spec["tags"].is_object() {
        spec.insert("tags".into(), json!({}));
    }
    Value::Object(spec)
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

async fn set_enabled(api: &Api, id: &str, enabled: bool) -> anyhow::Result<()> {
    let path = format!("/v1/admin/keys/{}", segment(id));
    let mut spec = spec_of(&api.call(Method::GET, &path, None).await?);
    spec["enabled"] = Value::Bool(enabled);
    api.show(Method::PUT, &path, Some(spec), View::One(views::KEYS)).await
}

async fn import_keys(
    api: &Api,
    file: &str,
    format: Option<import::Format>,
    secrets_out: Option<&Path>,
    batch: usize,
) -> anyhow::Result<()> {
    use std::io::Read;
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
        bytes
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))?
    };
    let rows = import::read(&bytes, format.unwrap_or_else(|| import::Format::of(file)))
        .map_err(|e| Failure::new(Exit::Invalid, format!("{file}: {e:#}")))?;
    let client = api.client()?;
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
    let progress = output::progress(rows.len() as u64, "keys");
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
    output::note(&format!("created {created} keys in {secs:.1} s ({:.0} keys/s)", created as f64 / secs.max(0.001)));
    Ok(())
}

//! `tollgate snapshot save|restore|status` (backups, as etcdctl's
//! `snapshot` commands) and `tollgate audit` (the audit trail).
//!
//! See `crate::cluster::backup` for what a backup holds and how a restored
//! node starts a new cluster.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use tollgate_client::admin::AdminClient;

use super::api::{query_value, Api, ListArgs};
use super::exit::{Exit, Failure};
use super::output::{self, text, Column, View};
use crate::cluster::backup::{self, Summary};

/// `tollgate snapshot …`.
#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent backup of the whole cluster state to FILE (mode
    /// 0600): every object, quota ledger and audit entry, as of a read
    /// barrier through the leader. Needs a `write` admin token.
    Save {
        /// Where to write the backup (replaced if it exists).
        file: PathBuf,
    },
    /// Seed a new node's data dir from a backup, offline. Start that node
    /// without `--init` and with the same `--id`: it leads a new cluster
    /// of itself, and nodes added with `tollgate cluster add` receive the
    /// state from it.
    Restore {
        /// The backup file (`tollgate snapshot save`).
        file: PathBuf,
        /// The new node's data dir: must not hold a node's data yet.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id (the `--id` it will be started with).
        #[arg(long, default_value_t = 1)]
        id: u64,
    },
    /// Check a backup file (its digest and contents) and say what it holds.
    Status {
        /// The backup file.
        file: PathBuf,
    },
}

/// `tollgate audit`: the audit trail, oldest first.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only changes at or after this RFC 3339 time (`2026-12-01T00:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Only changes to this kind of object: apis, plans, keys, policies,
    /// authorizers, tokens, ratelimits.
    #[arg(long)]
    kind: Option<String>,
    /// Only this kind of change: create, replace, delete, import, reroll,
    /// rotate_identity_key, adjust_usage, add_node, promote_node,
    /// remove_node.
    #[arg(long)]
    action: Option<String>,
    #[command(flatten)]
    list: ListArgs,
}

impl AuditArgs {
    /// The admin API path these arguments' filters ask for (the list's own
    /// `limit`, `after` and `stale` are added page by page).
    pub fn path(&self) -> String {
        let filters: Vec<String> = [("since", &self.since), ("kind", &self.kind), ("action", &self.action)]
            .into_iter()
            .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", query_value(v))))
            .collect();
        if filters.is_empty() {
            "/v1/admin/audit".to_string()
        } else {
            format!("/v1/admin/audit?{}", filters.join("&"))
        }
    }
}

/// The audit trail's columns in a table.
pub const AUDIT: &[Column] = &[
    Column { header: "SEQ", fields: &["seq"], cell: |v| text(&v["seq"]) },
    Column { header: "AT", fields: &["at"], cell: |v| text(&v["at"]) },
    Column { header: "TOKEN", fields: &["actor"], cell: who },
    Column { header: "SOURCE", fields: &[], cell: |v| text(&v["actor"]["source"]) },
    Column { header: "ACTION", fields: &["action"], cell: |v| text(&v["action"]) },
    Column { header: "KIND", fields: &["kind"], cell: |v| text(&v["kind"]) },
    Column { header: "ID", fields: &["id"], cell: |v| text(&v["id"]) },
    Column { header: "CHANGES", fields: &["changes"], cell: changes },
];

fn who(entry: &Value) -> String {
    let actor = &entry["actor"];
    match actor["token_id"].as_str() {
        Some(id) => format!("{} ({id})", text(&actor["token_name"])),
        None => text(&actor["token_name"]),
    }
}

fn changes(entry: &Value) -> String {
    let fields: Vec<String> = entry["changes"].as_array().into_iter().flatten().map(|c| text(&c["field"])).collect();
    fields.join(", ")
}

/// What a backup's summary shows in a table.
const SUMMARY: &[Column] = &[
    Column { header: "FILE", fields: &["file"], cell: |v| text(&v["file"]) },
    Column { header: "LOG INDEX", fields: &["applied_index"], cell: |v| text(&v["applied_index"]) },
    Column { header: "TAKEN", fields: &["taken_at"], cell: |v| text(&v["taken_at"]) },
    Column { header: "OBJECTS", fields: &["objects"], cell: |v| text(&v["objects"]) },
    Column { header: "LEDGERS", fields: &["ledgers"], cell: |v| text(&v["ledgers"]) },
    Column { header: "AUDIT ENTRIES", fields: &["audit_entries"], cell: |v| text(&v["audit_entries"]) },
    Column { header: "BYTES", fields: &["bytes"], cell: |v| text(&v["bytes"]) },
];

/// Takes a backup through `api`'s node and writes it to `file` (mode 0600, via
/// a temporary file renamed into place, so a failed save leaves no partial
/// file). The download is checked like a restore would check it first.
pub async fn save(api: &Api, file: &Path) -> anyhow::Result<Summary> {
    let client: &AdminClient = api.client()?;
    let bytes = client.snapshot().await.map_err(|e| api.failure(e))?;
    let (_, _, summary) = backup::read(&bytes).context("the node sent a backup that does not check")?;
    let name = file.file_name().ok_or_else(|| anyhow!("{} is not a file name", file.display()))?;
    let tmp = file.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut out = private_file(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    out.write_all(&bytes).and_then(|()| out.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(out);
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(summary)
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Reads `file` for `restore` or `status`.
pub fn read_file(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// What a summary says, for a person.
pub fn describe(summary: &Summary) -> String {
    format!(
        "log index {}, taken {}: {} objects, {} quota ledgers, {} audit entries, {} bytes",
        summary.applied_index, summary.taken_at, summary.objects, summary.ledgers, summary.audit_entries, summary.bytes
    )
}

/// A backup file's checks failing: exit code 5, the reason on one line.
fn refused(e: anyhow::Error) -> anyhow::Error {
    Failure::new(Exit::Invalid, format!("{e:#}")).into()
}

/// Runs `tollgate snapshot …`: what the backup holds, printed as `-o` says.
pub async fn snapshot(
    api: impl FnOnce() -> anyhow::Result<Api>,
    format: output::Format,
    cmd: SnapshotCmd,
) -> anyhow::Result<()> {
    let (file, summary, line) = match cmd {
        SnapshotCmd::Save { file } => {
            let summary = save(&api()?, &file).await?;
            let line = format!("saved {}: {}", file.display(), describe(&summary));
            (file, summary, line)
        }
        SnapshotCmd::Restore { file, data_dir, id } => {
            let bytes = read_file(&file)?;
            let summary = backup::restore(&bytes, &data_dir, id).await.map_err(refused)?;
            let line = format!(
                "restored {} into {} for node {id}: {}; start it with: tollgate serve --id {id} --data-dir {} (no --init)",
                file.display(),
                data_dir.display(),
                describe(&summary),
                data_dir.display()
            );
            (file, summary, line)
        }
        SnapshotCmd::Status { file } => {
            let (_, _, summary) = backup::read(&read_file(&file)?).map_err(refused)?;
            let line = format!("{}: {}", file.display(), describe(&summary));
            (file, summary, line)
        }
    };
    let mut value = serde_json::to_value(&summary)?;
    value["file"] = json!(file.display().to_string());
    if format == output::Format::Table {
        output::note(&line);
    }
    output::print(format, &value, View::One(SUMMARY))
}

/// Runs `tollgate audit`: the entries the filters select, oldest first.
pub async fn audit(api: &Api, args: &AuditArgs) -> anyhow::Result<()> {
    api.show_list(&args.path(), &args.list, AUDIT).await
}

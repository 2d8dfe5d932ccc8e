//! `tollgate snapshot save|restore|status` (backups, as etcdctl's
//! `snapshot` commands) and `tollgate audit` (the audit trail).
//!
//! See `crate::cluster::backup` for what a backup holds and how a restored
//! node starts a new cluster.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::Value;
use tollgate_client::admin::{AdminClient, Method};

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
    /// The most entries to show (1 to 1000; default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Show entries after this sequence number (a page's `next_after`).
    #[arg(long)]
    after: Option<String>,
}

impl AuditArgs {
    /// The admin API path these arguments ask for.
    pub fn path(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("since", &self.since), ("kind", &self.kind), ("action", &self.action)] {
            if let Some(v) = value {
                query.append_pair(name, v);
            }
        }
        if let Some(limit) = self.limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(after) = &self.after {
            query.append_pair("after", after);
        }
        format!("/v1/admin/audit?{}", query.finish())
    }
}

/// One audit entry as a line for a person:
/// `#12 2026-12-01T10:00:00Z ops (tok_…) from 10.0.0.1 replace plans gold: name "Gold" -> "Golden"`.
pub fn line(entry: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let actor = &entry["actor"];
    let who = match actor["token_id"].as_str() {
        Some(id) => format!("{} ({id})", text(&actor["token_name"])),
        None => text(&actor["token_name"]),
    };
    let mut out = format!(
        "#{} {} {who} from {} {}",
        entry["seq"],
        text(&entry["at"]),
        text(&actor["source"]),
        text(&entry["action"])
    );
    if let Some(kind) = entry["kind"].as_str() {
        out.push_str(&format!(" {kind}"));
    }
    if let Some(id) = entry["id"].as_str() {
        out.push_str(&format!(" {id}"));
    }
    let changes: Vec<String> = entry["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| match (&c["before"], &c["after"]) {
            (Value::Null, Value::Null) => format!("{} (changed, not recorded)", text(&c["field"])),
            (before, after) => format!("{} {before} -> {after}", text(&c["field"])),
        })
        .collect();
    if !changes.is_empty() {
        out.push_str(&format!(": {}", changes.join("; ")));
    }
    if let Some(note) = entry["note"].as_str() {
        out.push_str(&format!(" ({note})"));
    }
    out
}

/// Takes a backup through `client` and writes it to `file` (mode 0600, via
/// a temporary file renamed into place, so a failed save leaves no partial
/// file). The download is checked like a restore would check it first.
pub async fn save(client: &AdminClient, file: &Path) -> anyhow::Result<Summary> {
    let bytes = client.snapshot().await?;
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

/// Runs `tollgate snapshot …` (`client`: only `save` needs one).
pub async fn snapshot(
    client: impl FnOnce() -> anyhow::Result<AdminClient>,
    cmd: SnapshotCmd,
) -> anyhow::Result<String> {
    match cmd {
        SnapshotCmd::Save { file } => {
            let summary = save(&client()?, &file).await?;
            Ok(format!("saved {}: {}", file.display(), describe(&summary)))
        }
        SnapshotCmd::Restore { file, data_dir, id } => {
            let summary = backup::restore(&read_file(&file)?, &data_dir, id).await?;
            Ok(format!(
                "restored {} into {} for node {id}: {}\nstart it with: tollgate serve --id {id} --data-dir {} …",
                file.display(),
                data_dir.display(),
                describe(&summary),
                data_dir.display()
            ))
        }
        SnapshotCmd::Status { file } => {
            let (_, _, summary) = backup::read(&read_file(&file)?)?;
            Ok(format!("{}: {}", file.display(), describe(&summary)))
        }
    }
}

/// Runs `tollgate audit`: the page's entries, one line each, and how to get
/// the next page.
pub async fn audit(client: &AdminClient, args: &AuditArgs) -> anyhow::Result<Vec<String>> {
    let (status, page) = client.request(Method::GET, &args.path(), None).await?;
    if !(200..300).contains(&status) {
        let err = &page["error"];
        let field = err["field"].as_str().map(|f| format!("{f}: ")).unwrap_or_default();
        return Err(anyhow!("{status}: {field}{}", err["message"].as_str().unwrap_or_default()));
    }
    let mut lines: Vec<String> = page["items"].as_array().into_iter().flatten().map(line).collect();
    if let Some(next) = page["next_after"].as_str() {
        lines.push(format!("(more: tollgate audit --after {next})"));
    }
    Ok(lines)
}

//! `tollgate keys import FILE`: keys read from a JSON-lines or CSV file and
//! created through `POST /v1/admin/keys/import`, up to 1000 per request
//! (one replicated write each, all of a batch or none of it).
//!
//! - **JSON lines**: one key spec per line, as `POST /v1/admin/keys` takes it
//!   (`{"name": "acme", "plan_ids": ["gold"]}`); blank lines and lines
//!   starting with `#` are skipped; an unknown field is an error.
//! - **CSV**: a header row naming some of `name` (required), `plan_ids`
//!   (`;`-separated), `customer_id`, `description`, `enabled` (`true` or
//!   `false`; empty: true), `expires_at` (RFC 3339; empty: never) and `tags`
//!   (`k=v;k2=v2`); an unknown column is an error.
//!
//! Every error names the line it comes from. Each created key's secret is
//! written once, as a JSON line `{"line", "id", "name", "secret"}`, to
//! standard output or the file given (made new, readable by its owner only).
//! A batch the node refuses stops the import: the keys of the batches before
//! it stay created, and their secrets are already written.

use std::io::Write;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Value};
use tollgate_client::admin::{AdminClient, AdminError, ApiKeySpec, MAX_IMPORT};

/// How the file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON key spec per line.
    Jsonl,
    /// A header row, then one key per row.
    Csv,
}

impl Format {
    /// The format a file name implies: `.csv` is CSV, anything else JSON lines.
    pub fn of(path: &str) -> Format {
        if path.to_ascii_lowercase().ends_with(".csv") {
            Format::Csv
        } else {
            Format::Jsonl
        }
    }
}

/// A key spec read from the file, and the line (from 1) it came from.
#[derive(Debug)]
pub struct Row {
    pub line: usize,
    pub spec: ApiKeySpec,
}

/// The CSV columns a file may have.
const COLUMNS: &[&str] = &["name", "plan_ids", "customer_id", "description", "enabled", "expires_at", "tags"];

/// Every key spec in `text`.
///
/// # Errors
/// The first line that is not a key spec, named with what is wrong.
pub fn read(text: &str, format: Format) -> anyhow::Result<Vec<Row>> {
    match format {
        Format::Jsonl => read_jsonl(text),
        Format::Csv => read_csv(text),
    }
}

fn read_jsonl(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let spec: ApiKeySpec = serde_json::from_str(trimmed).with_context(|| format!("line {}", i + 1))?;
        rows.push(Row { line: i + 1, spec });
    }
    Ok(rows)
}

fn read_csv(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().context("line 1: the header row")?.clone();
    for h in &headers {
        if !COLUMNS.contains(&h) {
            bail!("line 1: unknown column {h:?}; the columns are {}", COLUMNS.join(", "));
        }
    }
    if !headers.iter().any(|h| h == "name") {
        bail!("line 1: no `name` column");
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.position() {
            Some(p) => anyhow!("line {}: {e}", p.line()),
            None => anyhow!("{e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let mut spec = Map::new();
        for (column, value) in headers.iter().zip(record.iter()) {
            let value = match column {
                "plan_ids" => json!(value.split(';').map(str::trim).filter(|p| !p.is_empty()).collect::<Vec<_>>()),
                "enabled" => match value {
                    "" | "true" => json!(true),
                    "false" => json!(false),
                    other => bail!("line {line}: enabled: {other:?} is neither true nor false"),
                },
                "tags" => {
                    let mut tags = Map::new();
                    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .ok_or_else(|| anyhow!("line {line}: tags: {pair:?} is not NAME=VALUE"))?;
                        tags.insert(k.trim().to_string(), json!(v.trim()));
                    }
                    Value::Object(tags)
                }
                "customer_id" | "expires_at" if value.is_empty() => Value::Null,
                _ => json!(value),
            };
            spec.insert(column.to_string(), value);
        }
        let spec: ApiKeySpec = serde_json::from_value(Value::Object(spec)).with_context(|| format!("line {line}"))?;
        rows.push(Row { line, spec });
    }
    Ok(rows)
}

/// Creates the keys of `rows`, `batch` (1 to 1000) per request, writing each
/// secret to `out` as it comes; `progress` counts keys created. Answers how
/// many were created.
///
/// # Errors
/// A batch refused (naming the line of the item at fault, and how many keys
/// were created before it), or the node out of reach.
pub async fn import(
    admin: &AdminClient,
    rows: &[Row],
    batch: usize,
    out: &mut dyn Write,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<usize> {
    let batch = batch.clamp(1, MAX_IMPORT);
    let mut created = 0;
    for chunk in rows.chunks(batch) {
        let specs: Vec<ApiKeySpec> = chunk.iter().map(|r| r.spec.clone()).collect();
        let keys = match admin.import_keys(&specs).await {
            Ok(keys) => keys,
            Err(AdminError::Api { status, field: Some(field), message, .. }) => {
                let (line, rest) = item_line(chunk, &field);
                bail!("line {line}: {rest}: {message} ({status}; {created} keys were created before this batch)")
            }
            Err(e) => bail!("{e} ({created} keys were created before this batch)"),
        };
        for (row, key) in chunk.iter().zip(keys) {
            let line = json!({"line": row.line, "id": key.key.id, "name": key.key.name, "secret": key.secret});
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        created += chunk.len();
        progress.inc(chunk.len() as u64);
    }
    Ok(created)
}

/// The file line of `items[N].rest` in `chunk`, and `rest` (or the field
/// itself if it names no item).
fn item_line<'a>(chunk: &[Row], field: &'a str) -> (usize, &'a str) {
    let parsed = field.strip_prefix("items[").and_then(|r| r.split_once(']')).and_then(|(n, rest)| {
        let row = chunk.get(n.parse::<usize>().ok()?)?;
        Some((row.line, rest.strip_prefix('.').unwrap_or("the key")))
    });
    parsed.unwrap_or((chunk.first().map_or(0, |r| r.line), field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_skip_blanks_and_comments_and_name_the_bad_line() {
        let rows = read("# keys\n{\"name\": \"a\", \"plan_ids\": [\"gold\"]}\n\n{\"name\": \"b\"}\n", Format::Jsonl)
            .expect("rows");
        assert_eq!(rows.iter().map(|r| (r.line, r.spec.name.as_str())).collect::<Vec<_>>(), [(2, "a"), (4, "b")]);
        assert_eq!(rows[0].spec.plan_ids, ["gold"]);
        let err = read("{\"name\": \"a\"}\n{\"nmae\": \"b\"}\n", Format::Jsonl).expect_err("unknown field");
        assert!(format!("{err:#}").starts_with("line 2: unknown field `nmae`"), "{err:#}");
    }

    #[test]
    fn csv_columns_become_the_key_spec_and_errors_name_the_line() {
        let text = "name,plan_ids,enabled,tags,expires_at\nacme, gold;silver ,,tier=1;team = core,\nbeta,,false,,2030-01-01T00:00:00Z\n";
        let rows = read(text, Format::Csv).expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].spec.plan_ids.clone()), (2, vec!["gold".to_string(), "silver".into()]));
        assert!(rows[0].spec.enabled && !rows[1].spec.enabled);
        assert_eq!(rows[0].spec.tags.get("team").map(String::as_str), Some("core"));
        assert!(rows[0].spec.expires_at.is_none() && rows[1].spec.expires_at.is_some());
        for (text, says) in [
            ("name,plan\nacme,gold\n", "line 1: unknown column \"plan\""),
            ("plan_ids\ngold\n", "line 1: no `name` column"),
            ("name,enabled\nacme,yes\n", "line 2: enabled"),
            ("name,tags\nacme,tier\n", "line 2: tags"),
            ("name\nacme\nbeta,extra\n", "line 3"),
        ] {
            let err = read(text, Format::Csv).expect_err(text);
            assert!(format!("{err:#}").contains(says), "{text:?}: {err:#}");
        }
    }

    #[test]
    fn a_refused_item_is_named_by_its_line_in_the_file() {
        let rows = read("{\"name\": \"a\"}\n\n{\"name\": \"b\"}\n", Format::Jsonl).expect("rows");
        assert_eq!(item_line(&rows, "items[1].plan_ids"), (3, "plan_ids"));
        assert_eq!(item_line(&rows, "items[0]"), (1, "the key"));
        assert_eq!(item_line(&rows, "items"), (1, "items"));
        assert_eq!(item_line(&rows, "items[9].name"), (1, "items[9].name"));
        assert_eq!(Format::of("keys.CSV"), Format::Csv);
        assert_eq!(Format::of("keys.jsonl"), Format::Jsonl);
    }
}

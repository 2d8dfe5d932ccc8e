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

use super::exit::{Exit, Failure};

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

/// Every key spec in the file's `bytes` (UTF-8; a byte order mark is
/// skipped; lines may end in LF or CRLF).
///
/// # Errors
/// The first line that is not UTF-8 or not a key spec, named with what is
/// wrong.
pub fn read(bytes: &[u8], format: Format) -> anyhow::Result<Vec<Row>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| anyhow!("line {}: not UTF-8 text", line_at(&bytes[..e.valid_up_to()], e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::Jsonl => read_jsonl(text),
        Format::Csv => read_csv(text),
    }
}

/// The line (from 1) of the byte at `offset` in `bytes`: one more than the
/// line feeds before it (so CRLF and LF count alike).
fn line_at(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())].iter().filter(|b| **b == b'\n').count()
}

fn read_jsonl(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let spec: ApiKeySpec = serde_json::from_str(trimmed).map_err(|e| {
            // serde_json says where in the text it read ("at line 1 column
            // 19"): here that text is one line of the file, so say the
            // file's line and the column in it.
            let message = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&at).unwrap_or(&message);
            let column = e.column() + (line.len() - line.trim_start().len());
            anyhow!("line {}, column {column}: {message}", i + 1)
        })?;
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
        // Lines are counted here: the reader's own count is off with CRLF
        // (it may place a record at the line feed of the CRLF before it).
        let line_of = |p: &csv::Position| {
            let bytes = text.as_bytes();
            let mut at = p.byte() as usize;
            while matches!(bytes.get(at), Some(b'\r' | b'\n')) {
                at += 1;
            }
            line_at(bytes, at)
        };
        let record = record.map_err(|e| match e.position() {
            Some(p) => anyhow!("line {}: {}", line_of(p), csv_message(&e)),
            None => anyhow!("{e}"),
        })?;
        let line = record.position().map_or(0, line_of);
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

/// What a CSV error says, without the reader's own (CRLF-blind) position.
fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// The most bytes of key specs one request carries, well under the node's
/// 1 MiB body limit (a thousand keys with long descriptions would pass it).
const MAX_REQUEST_BYTES: usize = 768 << 10;

/// `rows` cut into batches of at most `batch` keys and
/// [`MAX_REQUEST_BYTES`] of JSON each.
fn batches(rows: &[Row], batch: usize) -> Vec<&[Row]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = serde_json::to_vec(&row.spec).map_or(0, |v| v.len() + 1);
        if i > start && (i - start >= batch || bytes + size > MAX_REQUEST_BYTES) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
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
    for chunk in batches(rows, batch) {
        let specs: Vec<ApiKeySpec> = chunk.iter().map(|r| r.spec.clone()).collect();
        let lines = format!("lines {}-{}", chunk.first().map_or(0, |r| r.line), chunk.last().map_or(0, |r| r.line));
        let keys = match admin.import_keys(&specs).await {
            Ok(keys) => keys,
            Err(AdminError::Api { status: 409, code, message, .. }) if code == "already_created" => {
                return Err(Failure::new(
                    Exit::Conflict,
                    format!(
                        "{lines}: the node created these keys but its answer was lost on the way ({message}); \
                         their secrets cannot be shown again: find the keys by name and reroll them ({created} \
                         keys were created before them)"
                    ),
                )
                .into())
            }
            Err(AdminError::Api { status, field: Some(field), message, .. }) => {
                let (line, rest) = item_line(chunk, &field);
                return Err(Failure::new(
                    Exit::of_status(status),
                    format!("line {line}: {rest}: {message} ({status}; {created} keys were created before this batch)"),
                )
                .into());
            }
            Err(e) => {
                let exit = match &e {
                    AdminError::Api { status, .. } => Exit::of_status(*status),
                    AdminError::Unavailable(_) => Exit::Unavailable,
                };
                return Err(Failure::new(
                    exit,
                    format!("{lines}: {e} ({created} keys were created before this batch)"),
                )
                .into());
            }
        };
        let written = write_secrets(out, chunk, &keys);
        if let Err(e) = written {
            let ids: Vec<&str> = keys.iter().map(|k| k.key.id.as_str()).collect();
            let shown = if ids.len() > 10 {
                format!("{} and {} more", ids[..10].join(", "), ids.len() - 10)
            } else {
                ids.join(", ")
            };
            bail!(
                "{lines}: {} keys were created, but their secrets could not be written ({e}): reroll them \
                 (tollgate keys reroll, POST /v1/admin/keys/{{id}}/reroll): {shown}; {created} keys were created \
                 and written before them",
                keys.len()
            );
        }
        created += chunk.len();
        progress.inc(chunk.len() as u64);
    }
    Ok(created)
}

/// Writes each created key's secret as a JSON line, and flushes.
fn write_secrets(
    out: &mut dyn Write,
    chunk: &[Row],
    keys: &[tollgate_client::admin::CreatedKey],
) -> std::io::Result<()> {
    for (row, key) in chunk.iter().zip(keys) {
        let line = json!({"line": row.line, "id": key.key.id, "name": key.key.name, "secret": key.secret});
        writeln!(out, "{line}")?;
    }
    out.flush()
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

    fn read_str(text: &str, format: Format) -> anyhow::Result<Vec<Row>> {
        read(text.as_bytes(), format)
    }

    #[test]
    fn json_lines_skip_blanks_and_comments_and_name_the_bad_line() {
        let rows =
            read_str("# keys\n{\"name\": \"a\", \"plan_ids\": [\"gold\"]}\n\n{\"name\": \"b\"}\n", Format::Jsonl)
                .expect("rows");
        assert_eq!(rows.iter().map(|r| (r.line, r.spec.name.as_str())).collect::<Vec<_>>(), [(2, "a"), (4, "b")]);
        assert_eq!(rows[0].spec.plan_ids, ["gold"]);
        let err = read_str("{\"name\": \"a\"}\n{\"nmae\": \"b\"}\n", Format::Jsonl).expect_err("unknown field");
        let text = format!("{err:#}");
        assert!(text.starts_with("line 2, column 7: unknown field `nmae`"), "{text}");
        assert!(!text.contains("line 1"), "one line named, the file's: {text}");
    }

    #[test]
    fn csv_columns_become_the_key_spec_and_errors_name_the_line() {
        let text = "name,plan_ids,enabled,tags,expires_at\nacme, gold;silver ,,tier=1;team = core,\nbeta,,false,,2030-01-01T00:00:00Z\n";
        let rows = read_str(text, Format::Csv).expect("rows");
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
            ("name\nacme\nbeta,extra\n", "line 3: 2 fields where the header has 1"),
        ] {
            let err = read_str(text, Format::Csv).expect_err(text);
            assert!(format!("{err:#}").contains(says), "{text:?}: {err:#}");
        }
    }

    /// Every spelling a file from another system may have: CRLF line ends
    /// (Excel, Windows), a byte order mark, quoted fields over two lines.
    /// The line numbers are the file's, in errors and in the rows.
    #[test]
    fn line_numbers_hold_for_crlf_a_byte_order_mark_and_quoted_line_breaks() {
        for (what, prefix, eol) in [("LF", "", "\n"), ("CRLF", "", "\r\n"), ("BOM, CRLF", "\u{feff}", "\r\n")] {
            let csv = format!("{prefix}name,description{eol}ok,{eol}\"two{eol}lines\",x{eol}bad,{eol}");
            let rows = read_str(&csv, Format::Csv).expect(what);
            assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 5], "{what}");
            let bad = format!("{prefix}name,enabled{eol}ok,true{eol}bad,yes{eol}");
            let err = read_str(&bad, Format::Csv).expect_err(what);
            assert!(format!("{err:#}").starts_with("line 3: enabled"), "{what}: {err:#}");
            let short = format!("{prefix}name,enabled{eol}ok,true{eol}bad{eol}");
            let err = read_str(&short, Format::Csv).expect_err(what);
            assert!(format!("{err:#}").starts_with("line 3: 1 fields"), "{what}: {err:#}");
            let jsonl = format!("{prefix}{{\"name\": \"a\"}}{eol}{{\"name\": 5}}{eol}");
            let err = read_str(&jsonl, Format::Jsonl).expect_err(what);
            assert!(format!("{err:#}").starts_with("line 2, column "), "{what}: {err:#}");
        }
        let err = read(b"name\nok\nbad\xff\n", Format::Csv).expect_err("latin-1");
        assert_eq!(format!("{err:#}"), "line 3: not UTF-8 text");
    }

    #[test]
    fn batches_hold_at_most_the_count_and_stay_under_the_body_limit() {
        let long = "\u{e9}".repeat(1000); // 2000 bytes of JSON each
        let text: String =
            (0..1000).map(|i| format!("{{\"name\": \"k{i}\", \"description\": \"{long}\"}}\n")).collect();
        let rows = read_str(&text, Format::Jsonl).expect("rows");
        let cut = batches(&rows, 1000);
        assert!(cut.len() > 1, "a thousand long keys do not fit one request");
        for b in &cut {
            let bytes: usize = b.iter().map(|r| serde_json::to_vec(&r.spec).map_or(0, |v| v.len() + 1)).sum();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
        }
        assert_eq!(cut.iter().map(|b| b.len()).sum::<usize>(), 1000, "every key, once, in order");
        assert_eq!(batches(&rows[..10], 3).iter().map(|b| b.len()).collect::<Vec<_>>(), [3, 3, 3, 1]);
    }

    #[test]
    fn a_refused_item_is_named_by_its_line_in_the_file() {
        let rows = read_str("{\"name\": \"a\"}\n\n{\"name\": \"b\"}\n", Format::Jsonl).expect("rows");
        assert_eq!(item_line(&rows, "items[1].plan_ids"), (3, "plan_ids"));
        assert_eq!(item_line(&rows, "items[0]"), (1, "the key"));
        assert_eq!(item_line(&rows, "items"), (1, "items"));
        assert_eq!(item_line(&rows, "items[9].name"), (1, "items[9].name"));
        assert_eq!(Format::of("keys.CSV"), Format::Csv);
        assert_eq!(Format::of("keys.jsonl"), Format::Jsonl);
    }
}

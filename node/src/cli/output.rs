//! What a command prints on standard output, in the format asked for
//! (`-o table|json|yaml`, or `TOLLGATE_OUTPUT`): a table for a person at a
//! terminal, JSON for a script (the default when standard output is not a
//! terminal), or YAML. JSON and YAML print the admin API's answer as it
//! is (a list: every page's items, `{"items": [...], "next_after": ...}`);
//! a table shows the columns of the object's kind ([`super::views`]).
//!
//! Standard output carries only the result. Notes for a person (how to get
//! the next page) and progress bars go to standard error, and progress bars
//! only when it is a terminal. A reader that goes away (`| head`) ends the
//! output quietly, as for any Unix tool.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for a person (the default when standard output is a terminal).
    Table,
    /// The API's JSON, pretty-printed (the default otherwise: for scripts).
    Json,
    /// The API's answer as YAML.
    Yaml,
}

impl Format {
    /// The format asked for, else table on a terminal and JSON otherwise.
    pub fn or_default(asked: Option<Format>) -> Format {
        asked.unwrap_or_else(|| if std::io::stdout().is_terminal() { Format::Table } else { Format::Json })
    }
}

/// One column of a table: its header, the top-level fields it shows (so a
/// one-object view does not show them again), and how a cell is made from
/// the object.
pub struct Column {
    pub header: &'static str,
    pub fields: &'static [&'static str],
    pub cell: fn(&Value) -> String,
}

/// How a result looks as a table.
pub enum View {
    /// One object: a row per field, the kind's columns first, then its
    /// other top-level fields (a secret right after the columns).
    One(&'static [Column]),
    /// A list (`{"items": [...]}` or an array): a row per item.
    Rows(&'static [Column]),
    /// The cluster's status: its fields, then a row per member.
    Cluster,
    /// Nothing to show (the API answered 204): a line for a person in a
    /// table, nothing in JSON or YAML.
    Done(String),
}

/// Prints `value` as `format` says, shaped by `view` for a table.
pub fn print(format: Format, value: &Value, view: View) -> anyhow::Result<()> {
    let text = render(format, value, &view)?;
    if !text.is_empty() {
        write_stdout(&text)?;
    }
    if format == Format::Table {
        if let Some(next) = value.get("next_after").and_then(Value::as_str) {
            note(&format!("more items follow: add --after {next} (or leave out --limit)"));
        }
    }
    Ok(())
}

/// The text `print` writes (ending in a line break, or empty).
pub fn render(format: Format, value: &Value, view: &View) -> anyhow::Result<String> {
    Ok(match (format, view) {
        (Format::Json | Format::Yaml, View::Done(_)) => String::new(),
        (Format::Json, _) => format!("{}\n", serde_json::to_string_pretty(value)?),
        (Format::Yaml, _) => {
            let text = yaml_serde::to_string(value)?;
            if text.ends_with('\n') {
                text
            } else {
                format!("{text}\n")
            }
        }
        (Format::Table, View::Done(line)) => format!("{line}\n"),
        (Format::Table, View::One(columns)) => one(value, columns),
        (Format::Table, View::Rows(columns)) => {
            let items = value.get("items").unwrap_or(value).as_array().map(Vec::as_slice).unwrap_or_default();
            rows(items, columns)
        }
        (Format::Table, View::Cluster) => {
            let members = value["members"].as_array().map(Vec::as_slice).unwrap_or_default();
            format!("{}\n{}", one(value, super::views::CLUSTER), rows(members, super::views::MEMBERS))
        }
    })
}

/// Writes `text` to standard output; a closed pipe is not an error.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A line for a person on standard error (never mixed into the results).
/// Not `eprintln!`, which panics when standard error cannot be written.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A progress bar of `len` steps on standard error when it is a terminal;
/// hidden (drawing nothing) otherwise. `what` names a step (`keys`).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what}, {{per_sec}}, {{eta}} left");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `text` safe to print on a terminal: control characters (escape
/// sequences that would retitle or clear it, line breaks that would fake a
/// row) and bidirectional overrides shown escaped, as `\u{1b}`.
pub fn printable(text: &str) -> String {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    text.chars().map(|c| if unsafe_char(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A table without borders (kubectl's look: columns apart by two spaces,
/// easy to read and to cut), lines trimmed at the end.
fn table(header: Option<Vec<&str>>, body: Vec<Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if let Some(header) = header {
        table.set_header(header);
    }
    for row in body {
        table.add_row(row.into_iter().map(|cell| printable(&cell)).collect::<Vec<_>>());
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A row per item, the columns' headers on top.
fn rows(items: &[Value], columns: &[Column]) -> String {
    let header = columns.iter().map(|c| c.header).collect();
    let body = items.iter().map(|item| columns.iter().map(|c| (c.cell)(item)).collect()).collect();
    table(Some(header), body)
}

/// A row per field of one object: the columns, a secret, the rest.
fn one(value: &Value, columns: &[Column]) -> String {
    let mut body: Vec<Vec<String>> =
        columns.iter().map(|c| vec![c.header.to_ascii_lowercase(), (c.cell)(value)]).collect();
    if let Value::Object(map) = value {
        let shown = |name: &str| columns.iter().any(|c| c.fields.contains(&name));
        if let Some(secret) = map.get("secret") {
            body.push(vec!["secret".into(), format!("{} (shown once: store it now)", text(secret))]);
        }
        for (name, field) in map {
            if name != "secret" && !shown(name) {
                body.push(vec![name.clone(), short(&text(field))]);
            }
        }
    }
    table(None, body)
}

/// A cell's text: a string as it is, `-` for null or nothing, a list of
/// plain values joined by `,`, anything else as compact JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(text).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// At most 100 characters of `cell` (nested rules, routes): `-o yaml`
/// shows them whole.
fn short(cell: &str) -> String {
    const MAX: usize = 100;
    match cell.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}… (-o yaml shows all)", &cell[..at]),
        None => cell.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_cannot_drive_the_terminal() {
        let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\nfake row\u{202e}evil";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert!(shown.contains("pwned") && shown.contains("\\u{1b}"), "{shown}");
        let rendered = table(None, vec![vec!["description".into(), hostile.into()]]);
        assert_eq!(rendered.lines().count(), 1, "{rendered}");
        assert_eq!(printable("plain text"), "plain text");
    }
    use serde_json::json;

    const COLUMNS: &[Column] = &[
        Column { header: "ID", fields: &["id"], cell: |v| text(&v["id"]) },
        Column { header: "PLANS", fields: &["plan_ids"], cell: |v| text(&v["plan_ids"]) },
    ];

    #[test]
    fn a_list_is_a_row_per_item_under_its_headers() {
        let page = json!({"items": [{"id": "k1", "plan_ids": ["a", "b"]}, {"id": "k22", "plan_ids": []}],
            "next_after": null});
        let text = render(Format::Table, &page, &View::Rows(COLUMNS)).expect("table");
        assert_eq!(text, "ID   PLANS\nk1   a,b\nk22  -\n");
    }

    #[test]
    fn one_object_shows_its_columns_then_a_secret_then_the_rest() {
        let key = json!({"id": "k1", "plan_ids": ["a"], "secret": "tgk_x", "name": "alice", "notes": "n".repeat(150)});
        let text = render(Format::Table, &key, &View::One(COLUMNS)).expect("table");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..4],
            ["id      k1", "plans   a", "secret  tgk_x (shown once: store it now)", "name    alice"]
        );
        assert!(lines[4].ends_with("… (-o yaml shows all)"), "{}", lines[4]);
    }

    #[test]
    fn json_and_yaml_are_the_answer_itself_and_a_delete_prints_nothing_there() {
        let page = json!({"items": [{"id": "k1"}], "next_after": "k1"});
        let json: Value =
            serde_json::from_str(&render(Format::Json, &page, &View::Rows(COLUMNS)).expect("json")).expect("parses");
        assert_eq!(json, page);
        let yaml: Value =
            yaml_serde::from_str(&render(Format::Yaml, &page, &View::Rows(COLUMNS)).expect("yaml")).expect("parses");
        assert_eq!(yaml, page);
        assert_eq!(render(Format::Json, &Value::Null, &View::Done("deleted k1".into())).expect("json"), "");
        assert_eq!(render(Format::Table, &Value::Null, &View::Done("deleted k1".into())).expect("t"), "deleted k1\n");
    }
}

//! `tollgate limits import FILE.yaml…`: envoyproxy/ratelimit configuration
//! files, read as that service reads them, become rate limit domains
//! (`/v1/admin/ratelimits`): each domain is created, or replaces the stored
//! domain of the same name.
//!
//! # The file format
//!
//! envoyproxy/ratelimit's YAML, field for field: `domain` and `descriptors`
//! at the top; in a descriptor `key`, `value`, `rate_limit`, `descriptors`,
//! `shadow_mode`, `quota_mode`, `share_threshold`, `detailed_metric` and
//! `value_to_metric`; in a `rate_limit` `requests_per_unit`, `unit`,
//! `unlimited`, `name` and `replaces` (a list of `{name}`). As there:
//!
//! - `unit` is any case (`second`, `SECOND`, `Second`); an empty one is no unit;
//! - a key, value, name or domain that YAML reads as a number or a boolean
//!   (`value: 123`, `value: true`, `value: 1.10`) is its text as written;
//! - flags take YAML 1.1's spellings too (`yes`, `on`, `y`, …), as the Go
//!   loader does; a left-out or empty field takes its zero value.
//!
//! Unlike there, a file may hold several domains, one per YAML document
//! (`---` between them). An unknown field is refused wherever it is, and so
//! is a known one at the wrong level (the Go loader lets `unit` sit in a
//! descriptor and ignores it); `metadata` (dynamic metadata for Envoy's
//! response) is refused because Tollgate has nowhere to keep it. The field
//! rules of `tollgate_proto::validate::rate_limit_domain` are checked here
//! too, before anything is written.
//!
//! Every error names the file, the line and column, and the field
//! (`limits.yaml: line 7, column 5: descriptors[0].rate_limit: unknown field
//! `reqests_per_unit`, …`): syntax and type errors where the YAML reader
//! stopped, field rules where the value they are about starts (or, for a
//! field left out, the block it is missing from), and refusals from the
//! node the same way, from the field the node names.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tollgate_client::admin::{AdminClient, AdminError, Method};
use tollgate_proto::model::{DescriptorRateLimit, DescriptorRule, LimitReplaces, RateLimitDomain, RateLimitUnit};
use tollgate_proto::validate;

use super::exit::{Exit, Failure};

pub mod commands;

/// Where a file error is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file as named on the command line (`-`: standard input).
    pub file: String,
    /// From 1.
    pub line: usize,
    /// From 1.
    pub column: usize,
    /// The field at fault as a path (`descriptors[2].rate_limit.unit`);
    /// empty when the error is not about one field (bad YAML syntax).
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: line {}, column {}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FileError {}

/// One YAML document of a file: where a domain came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file as named on the command line.
    pub file: String,
    /// The file's text, to find a field in (one copy per file).
    text: Arc<str>,
    /// Which YAML document of the file (from 0).
    index: usize,
}

impl Document {
    /// An error about `field` of this document's domain
    /// (`descriptors[0].key`; empty: the whole document), placed where that
    /// field is in the file.
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> FileError {
        let (line, column) = locate(&self.text, self.index, field).unwrap_or((1, 1));
        FileError { file: self.file.clone(), line, column, field: field.to_string(), message: message.into() }
    }

    /// `FILE: line L`, where the document's `domain` is.
    pub fn origin(&self) -> String {
        let (line, _) = locate(&self.text, self.index, "domain").unwrap_or((1, 1));
        format!("{}: line {line}", self.file)
    }
}

/// One domain read from a file, and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedDomain {
    pub source: Document,
    /// The domain as the admin API takes it (no id: the node makes one, or
    /// the import names the stored domain's).
    pub domain: RateLimitDomain,
}

// ---------------------------------------------------------------------------
// The file's shape, as envoyproxy/ratelimit reads it

/// One document: one domain.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `domain` and `descriptors`")]
struct FileDomain {
    #[serde(deserialize_with = "text")]
    domain: String,
    #[serde(default, deserialize_with = "list")]
    descriptors: Vec<FileDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a descriptor: a mapping with `key` (and `value`, `rate_limit`, …)")]
struct FileDescriptor {
    #[serde(deserialize_with = "text")]
    key: String,
    #[serde(default, deserialize_with = "optional_text")]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<FileRateLimit>,
    #[serde(default, deserialize_with = "list")]
    descriptors: Vec<FileDescriptor>,
    #[serde(default, deserialize_with = "flag")]
    shadow_mode: bool,
    #[serde(default, deserialize_with = "flag")]
    quota_mode: bool,
    #[serde(default, deserialize_with = "flag")]
    share_threshold: bool,
    #[serde(default, deserialize_with = "flag")]
    detailed_metric: bool,
    #[serde(default, deserialize_with = "flag")]
    value_to_metric: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate_limit: a mapping with `unit` and `requests_per_unit` (or `unlimited`)"
)]
struct FileRateLimit {
    #[serde(default, deserialize_with = "count")]
    requests_per_unit: u32,
    #[serde(default, deserialize_with = "optional_text")]
    unit: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    unlimited: bool,
    #[serde(default, deserialize_with = "optional_text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "list")]
    replaces: Vec<FileReplaces>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a replaces entry: a mapping `name: LIMIT_NAME`")]
struct FileReplaces {
    #[serde(deserialize_with = "text")]
    name: String,
}

/// Where each field of the format belongs, for an unknown field that is a
/// known one at the wrong level.
const FIELD_HOMES: &[(&str, &str)] = &[
    ("domain", "at the top of the document"),
    ("key", "in a descriptor"),
    ("value", "in a descriptor"),
    ("rate_limit", "in a descriptor"),
    ("descriptors", "at the top of the document or in a descriptor"),
    ("shadow_mode", "in a descriptor"),
    ("quota_mode", "in a descriptor"),
    ("share_threshold", "in a descriptor"),
    ("detailed_metric", "in a descriptor"),
    ("value_to_metric", "in a descriptor"),
    ("requests_per_unit", "in a rate_limit"),
    ("unit", "in a rate_limit"),
    ("unlimited", "in a rate_limit"),
    ("name", "in a rate_limit or a replaces entry"),
    ("replaces", "in a rate_limit"),
];

/// A scalar as the text it is written with: a string, or a number or
/// boolean YAML would read as such (`123`, `true`, `1.10`), as the Go
/// loader gives a string field the scalar's text.
fn text<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    // The YAML reader hands a string field the scalar as written; a
    // mapping or a list is refused with its position.
    String::deserialize(deserializer)
}

/// [`text`], where null (`~`, or nothing) and the empty string mean absent.
fn optional_text<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// A list, where null means empty.
fn list<'de, D: de::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A flag: a boolean in YAML 1.2's spelling or YAML 1.1's (`yes`, `no`,
/// `on`, `off`, `y`, `n`, in the three cases YAML allows), which the Go
/// loader reads; null is false.
fn flag<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Flag;
    impl Visitor<'_> for Flag {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            const TRUE: [&str; 11] = ["y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"];
            const FALSE: [&str; 11] = ["n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"];
            if TRUE.contains(&v) {
                Ok(true)
            } else if FALSE.contains(&v) {
                Ok(false)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
    }
    deserializer.deserialize_any(Flag)
}

/// `requests_per_unit`: a whole number from 0 to 2^32 - 1 (a float with no
/// fraction counts); null is 0.
fn count<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct Count;
    impl Visitor<'_> for Count {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a whole number from 0 to {}", u32::MAX)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                Ok(v as u32)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
            Ok(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<u32, E> {
            Ok(0)
        }
    }
    deserializer.deserialize_any(Count)
}

// ---------------------------------------------------------------------------
// Reading

/// Every domain in `text`, the contents of `file` (one per YAML document;
/// empty documents are skipped).
///
/// # Errors
/// The first problem, with its file, line, column and field: bad YAML, an
/// unknown field, a wrong type, a field rule broken, or no domain at all.
pub fn read(file: &str, text: &str) -> Result<Vec<LoadedDomain>, FileError> {
    let shared: Arc<str> = text.into();
    let mut out = Vec::new();
    for (index, deserializer) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let parsed: Option<FileDomain> =
            serde_path_to_error::deserialize(deserializer).map_err(|e| yaml_error(file, text, index, e))?;
        let Some(parsed) = parsed else { continue };
        let source = Document { file: file.to_string(), text: shared.clone(), index };
        let domain = RateLimitDomain {
            id: String::new(),
            domain: parsed.domain,
            descriptors: rules(&source, "descriptors", parsed.descriptors)?,
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        validate::rate_limit_domain(&domain).map_err(|e| source.error_at(&e.field, e.message))?;
        out.push(LoadedDomain { source, domain });
    }
    if out.is_empty() {
        return Err(FileError {
            file: file.to_string(),
            line: 1,
            column: 1,
            field: "domain".into(),
            message: "no domain in the file (each YAML document holds one: `domain: NAME`, then `descriptors`)".into(),
        });
    }
    Ok(out)
}

/// Every domain in the files named: each read and checked before any is
/// written, and no domain named twice.
///
/// # Errors
/// A file that cannot be read, or the first [`FileError`].
pub fn read_files(files: &[String]) -> anyhow::Result<Vec<LoadedDomain>> {
    let mut all: Vec<LoadedDomain> = Vec::new();
    for file in files {
        let bytes = if file == "-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map_err(|e| anyhow!("-: {e}"))?;
            bytes
        } else {
            std::fs::read(Path::new(file)).map_err(|e| anyhow!("{file}: {e}"))?
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let before = &bytes[..e.valid_up_to()];
            let line = 1 + before.iter().filter(|b| **b == b'\n').count();
            let column = 1 + before.iter().rev().take_while(|b| **b != b'\n').count();
            Failure::new(Exit::Invalid, format!("{file}: line {line}, column {column}: not UTF-8 text"))
        })?;
        for loaded in read(file, text)? {
            if let Some(first) = all.iter().find(|d| d.domain.domain == loaded.domain.domain) {
                let message = format!(
                    "domain {:?} is also in {}: one document per domain",
                    first.domain.domain,
                    first.source.origin()
                );
                bail!(loaded.source.error_at("domain", message));
            }
            all.push(loaded);
        }
    }
    Ok(all)
}

/// The rules of one level of the tree, read at `at` (`descriptors`,
/// `descriptors[0].descriptors`).
fn rules(source: &Document, at: &str, list: Vec<FileDescriptor>) -> Result<Vec<DescriptorRule>, FileError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        let rate_limit = match d.rate_limit {
            None => None,
            Some(limit) => Some(DescriptorRateLimit {
                requests_per_unit: limit.requests_per_unit,
                unit: match limit.unit.as_deref() {
                    None => None,
                    Some(unit) => Some(unit_of(unit).ok_or_else(|| {
                        source.error_at(
                            &format!("{here}.rate_limit.unit"),
                            format!("unknown unit {unit:?}: second, minute, hour, day, week, month or year (any case)"),
                        )
                    })?),
                },
                unlimited: limit.unlimited,
                name: limit.name,
                replaces: limit.replaces.into_iter().map(|r| LimitReplaces { name: r.name }).collect(),
            }),
        };
        out.push(DescriptorRule {
            key: d.key,
            value: d.value,
            rate_limit,
            descriptors: rules(source, &format!("{here}.descriptors"), d.descriptors)?,
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            share_threshold: d.share_threshold,
            detailed_metric: d.detailed_metric,
            value_to_metric: d.value_to_metric,
        });
    }
    Ok(out)
}

/// How many rules `rules` holds, at every level.
pub fn rule_count(rules: &[DescriptorRule]) -> usize {
    rules.iter().map(|r| 1 + rule_count(&r.descriptors)).sum()
}

/// A unit in any case, as envoyproxy/ratelimit takes it.
fn unit_of(text: &str) -> Option<RateLimitUnit> {
    const UNITS: [RateLimitUnit; 7] = [
        RateLimitUnit::Second,
        RateLimitUnit::Minute,
        RateLimitUnit::Hour,
        RateLimitUnit::Day,
        RateLimitUnit::Week,
        RateLimitUnit::Month,
        RateLimitUnit::Year,
    ];
    UNITS.into_iter().find(|u| u.as_str().eq_ignore_ascii_case(text))
}

/// A YAML reader's error as a [`FileError`]: its position, the field path
/// it was reading, and its message without either (and with a word on
/// fields that are known, but elsewhere or not to Tollgate).
fn yaml_error(
    file: &str,
    text: &str,
    document: usize,
    error: serde_path_to_error::Error<yaml_serde::Error>,
) -> FileError {
    let path = error.path().to_string();
    let field = if path == "." || path == "?" { String::new() } else { path };
    let inner = error.into_inner();
    let (line, column) = match inner.location() {
        Some(at) => (at.line(), at.column()),
        // No position: the end of the text.
        None => (text.lines().count().max(1), 1),
    };
    let mut message = inner.to_string();
    // The reader appends the position (and, for a field, puts the path in
    // front): both are said once, by the FileError.
    if let Some(cut) = message.find(&format!(" at line {line} column {column}")) {
        message.replace_range(cut..cut + format!(" at line {line} column {column}").len(), "");
    }
    // The reader's own path is the field's, or (for an unknown field) the
    // path of the mapping the field is in.
    if let Some((head, rest)) = message.split_once(": ") {
        let within = |sep: &str| field.strip_prefix(head).is_some_and(|tail| tail.starts_with(sep));
        if head == field || within(".") || within("[") {
            message = rest.to_string();
        }
    }
    // YAML's word for a tab where indentation goes.
    let at_tab = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.chars().nth(column.saturating_sub(1)));
    if at_tab == Some('\t') {
        message.push_str(" (a tab: YAML indents with spaces)");
    }
    // A key given twice is reported at the start of its mapping: say where
    // the second one is.
    let (mut line, mut column) = (line, column);
    if let Some(name) = message.strip_prefix("duplicate field `").and_then(|m| m.split('`').next()) {
        let path = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
        if let Some((l, c)) = locate_nth(text, document, &path, 1) {
            (line, column) = (l, c);
        }
    }
    if let Some(name) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        if name == "metadata" {
            message = "metadata is not supported by Tollgate (envoyproxy/ratelimit only copies it into the \
                       response's dynamic metadata): remove it"
                .into();
        } else if name == "<<" {
            message = "merge keys (`<<: *anchor`) are not supported: write the fields out (an alias of a whole \
                       value, `rate_limit: *hourly`, works)"
                .into();
        } else if let Some((_, home)) = FIELD_HOMES.iter().find(|(known, _)| *known == name) {
            message.push_str(&format!(" (`{name}` belongs {home})"));
        }
    }
    FileError { file: file.to_string(), line, column, field, message }
}

// ---------------------------------------------------------------------------
// Where a field is

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// `descriptors[2].rate_limit.unit` as its steps; `None` for a path that is
/// not one.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Field(name));
        }
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// The line and column (from 1) where the value at `path` starts in the
/// YAML document number `document` (from 0) of `text`; for a path through
/// a field the document leaves out, where the nearest value around it
/// starts. `None` when the text does not parse.
///
/// It walks the document with a deserializer that fails on purpose once it
/// reaches the value: the YAML reader gives that failure the position of
/// the value it was reading.
pub fn locate(text: &str, document: usize, path: &str) -> Option<(usize, usize)> {
    locate_nth(text, document, path, 0)
}

/// [`locate`], where a path ending in a field finds its `nth` occurrence
/// (from 0) in its mapping: a key given twice.
fn locate_nth(text: &str, document: usize, path: &str, nth: usize) -> Option<(usize, usize)> {
    let steps = steps(path)?;
    let deserializer = yaml_serde::Deserializer::from_str(text).nth(document)?;
    match (Seek { steps: &steps, nth }).deserialize(deserializer) {
        Ok(()) => None,
        Err(e) => e.location().map(|at| (at.line(), at.column())),
    }
}

/// Walks the steps; fails where they end. `nth`: which occurrence of the
/// last step's field to stop at.
struct Seek<'s, 'a> {
    steps: &'s [Step<'a>],
    nth: usize,
}

const HERE: &str = "here";

impl<'de> DeserializeSeed<'de> for Seek<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.steps.first() {
            None => deserializer.deserialize_any(Here),
            Some(Step::Field(_)) => deserializer.deserialize_map(self),
            Some(Step::Index(_)) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the path")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Field(name), rest)) = self.steps.split_first() else { return Err(de::Error::custom(HERE)) };
        let mut skip = if rest.is_empty() { self.nth } else { 0 };
        while let Some(key) = map.next_key::<String>()? {
            if key == *name && skip == 0 {
                return map.next_value_seed(Seek { steps: rest, nth: self.nth });
            }
            skip = skip.saturating_sub(usize::from(key == *name));
            map.next_value::<IgnoredAny>()?;
        }
        // The field is left out: here, the mapping it would be in.
        Err(de::Error::custom(HERE))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(index), rest)) = self.steps.split_first() else { return Err(de::Error::custom(HERE)) };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(HERE));
            }
        }
        match seq.next_element_seed(Seek { steps: rest, nth: self.nth })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom(HERE)),
        }
    }
}

/// Fails on any value: every `visit_*` left to serde's default, which
/// refuses it.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(HERE)
    }
}

// ---------------------------------------------------------------------------
// Writing

/// What an import did to one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replaced,
}

/// The stored rate limit domain named `domain` (its JSON view), if any.
///
/// # Errors
/// The node's refusal, or no node answering.
pub async fn find(client: &AdminClient, domain: &str) -> anyhow::Result<Option<Value>> {
    let query: String = form_urlencoded::byte_serialize(domain.as_bytes()).collect();
    let (status, page) = client
        .request(Method::GET, &format!("/v1/admin/ratelimits?domain={query}"), None)
        .await
        .map_err(unreachable)?;
    if status != 200 {
        let refused = Failure::refused(status, &page);
        return Err(Failure::new(refused.exit, format!("looking up domain {domain:?}: {}", refused.message)).into());
    }
    Ok(page["items"].as_array().and_then(|items| items.first()).cloned())
}

/// Creates `loaded`'s domain, or replaces the stored one of the same name
/// (keeping its id); the stored domain's id and what was done.
///
/// # Errors
/// The node's refusal, placed in the file at the field it names.
pub async fn write(client: &AdminClient, loaded: &LoadedDomain) -> anyhow::Result<(String, Outcome)> {
    let body = serde_json::to_value(&loaded.domain)?;
    let (method, path, outcome) = match find(client, &loaded.domain.domain).await? {
        Some(stored) => {
            let id = stored["id"].as_str().unwrap_or_default().to_string();
            (Method::PUT, format!("/v1/admin/ratelimits/{id}"), Outcome::Replaced)
        }
        None => (Method::POST, "/v1/admin/ratelimits".to_string(), Outcome::Created),
    };
    let (status, answer) = client.request(method, &path, Some(&body)).await.map_err(unreachable)?;
    if !(200..300).contains(&status) {
        // Placed in the file, with the exit code of the node's status.
        let field = answer["error"]["field"].as_str().unwrap_or_default();
        let placed = loaded.source.error_at(field, refusal(status, &answer));
        return Err(Failure::new(Exit::of_status(status), placed.to_string()).into());
    }
    Ok((answer["id"].as_str().unwrap_or_default().to_string(), outcome))
}

/// No node answered: say so as the other admin subcommands do.
fn unreachable(error: AdminError) -> anyhow::Error {
    match error {
        AdminError::Unavailable(why) => Failure::new(Exit::Unavailable, format!("cannot reach {why}")).into(),
        other => other.into(),
    }
}

/// A node's error answer for a person: the status and its message.
fn refusal(status: u16, answer: &Value) -> String {
    let reason = reqwest::StatusCode::from_u16(status).map(|s| s.to_string()).unwrap_or(status.to_string());
    let message = answer["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| answer.to_string());
    format!("the node refused it ({reason}): {message}")
}

#[cfg(test)]
mod tests;

//! The admin subcommands' view of the admin API: one call on the node
//! `--url` names through the one admin client (`tollgate_client::admin`),
//! an error answer turned into a [`Failure`] with its exit code, and lists
//! read page by page through the API's cursor.

// `.map()` on a value parser.
use clap::builder::TypedValueParser as _;
use serde_json::{json, Value};
use tollgate_client::admin::{AdminClient, AdminError, Method};

use super::exit::{Exit, Failure};
use super::output::{self, Format, View};

/// The most items one list request asks for (the API's own bound).
pub const MAX_PAGE: usize = 1000;

/// Which part of a list to read.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// At most this many items in all (default: every item, read page by
    /// page). When more follow, JSON and YAML carry `next_after`, and a
    /// table says on standard error how to go on. At least 1.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub limit: Option<usize>,
    /// Start after this id (the `next_after` of an earlier list).
    #[arg(long)]
    pub after: Option<String>,
    /// Items asked for per request, 1 to 1000.
    #[arg(long, default_value_t = MAX_PAGE, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub page_size: usize,
    /// Read the node's local copy instead of a linearizable read (faster,
    /// may miss the latest writes; works without a leader).
    #[arg(long)]
    pub stale: bool,
}

/// A node's admin API, and how results are printed.
pub struct Api {
    /// `--url`, without a trailing `/`.
    pub base: String,
    /// None without an admin token: only a call needs one, and fails
    /// without it (exit code 2).
    client: Option<AdminClient>,
    pub format: Format,
}

impl Api {
    pub fn new(base: String, client: Option<AdminClient>, format: Format) -> Api {
        Api { base, client, format }
    }

    /// The admin client, or a usage failure saying how to give a token.
    pub fn client(&self) -> Result<&AdminClient, Failure> {
        self.client.as_ref().ok_or_else(|| Failure::usage("no admin token: set --token or TOLLGATE_ADMIN_TOKEN"))
    }

    /// One call; the answer's JSON (`Null` when empty).
    ///
    /// # Errors
    /// A [`Failure`]: the node's refusal (naming the field it named, with
    /// the exit code of its status), or no node reached (exit code 7).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.client()?.request(method, path, body.as_ref()).await.map_err(|e| self.failure(e))?;
        if !(200..300).contains(&status) {
            return Err(Failure::refused(status, &value).into());
        }
        Ok(value)
    }

    /// The client's error as a [`Failure`]; for the one node, its cause
    /// alone after the URL.
    pub fn failure(&self, error: AdminError) -> Failure {
        match error {
            AdminError::Unavailable(why) => {
                let why = why.strip_prefix(&format!("{}: ", self.base)).unwrap_or(&why);
                Failure::new(Exit::Unavailable, format!("cannot reach {}: {why}", self.base))
            }
            AdminError::Api { status, code, field, message } => {
                Failure::refused(status, &json!({"error": {"code": code, "field": field, "message": message}}))
            }
        }
    }

    /// A call whose answer is printed, shaped by `view` in a table.
    pub async fn show(&self, method: Method, path: &str, body: Option<Value>, view: View) -> anyhow::Result<()> {
        let value = self.call(method, path, body).await?;
        output::print(self.format, &value, view)
    }

    /// Every item of the list at `path` (which may carry a query of its
    /// own) that `args` selects, read a page at a time: `{"items": [...],
    /// "next_after": ID or null}`, with `next_after` set only when `--limit`
    /// left items out.
    pub async fn list(&self, path: &str, args: &ListArgs) -> anyhow::Result<Value> {
        let mut items: Vec<Value> = Vec::new();
        let mut after = args.after.clone();
        let join = if path.contains('?') { '&' } else { '?' };
        loop {
            let want = args.limit.map_or(args.page_size, |limit| (limit - items.len()).min(args.page_size));
            if want == 0 {
                break;
            }
            let mut query = format!("limit={want}");
            if let Some(after) = &after {
                query.push_str(&format!("&after={}", query_value(after)));
            }
            if args.stale {
                query.push_str("&stale=true");
            }
            let page = self.call(Method::GET, &format!("{path}{join}{query}"), None).await?;
            let got = page["items"].as_array().cloned().unwrap_or_default();
            items.extend(got);
            after = page["next_after"].as_str().map(str::to_string);
            if after.is_none() {
                break;
            }
        }
        Ok(json!({"items": items, "next_after": after}))
    }

    /// Prints a list (see [`Api::list`]) as a table of `columns`, or as it is.
    pub async fn show_list(
        &self,
        path: &str,
        args: &ListArgs,
        columns: &'static [output::Column],
    ) -> anyhow::Result<()> {
        let page = self.list(path, args).await?;
        output::print(self.format, &page, View::Rows(columns))
    }
}

/// `text` as one path segment: every byte but `A-Z a-z 0-9 - _ . ~`
/// percent-encoded, so an id can never reach another route (`a/b`, `..`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_~".contains(&byte) || (byte == b'.' && text != "." && text != "..") {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `text` as a query value.
pub fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_stays_one_path_segment() {
        assert_eq!(segment("key_abc-1.2"), "key_abc-1.2");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("x?y#z"), "x%3Fy%23z");
        assert_eq!(query_value("a b&c"), "a+b%26c");
    }
}

//! `tollgate apis|policies|authorizers`: objects written as JSON (the
//! admin API's bodies, too rich for flags), and `tollgate tokens`, admin
//! tokens.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};
use tollgate_client::admin::Method;

use super::api::{segment, Api, ListArgs};
use super::exit::{Exit, Failure};
use super::output::{self, Column, View};
use super::views;

/// One kind of JSON object: its collection and how it looks in a table.
pub struct Kind {
    /// The collection's path segment (`apis`).
    pub collection: &'static str,
    /// A noun for people (`API`).
    pub noun: &'static str,
    pub columns: &'static [Column],
}

pub const APIS: Kind = Kind { collection: "apis", noun: "API", columns: views::APIS };
pub const POLICIES: Kind = Kind { collection: "policies", noun: "policy", columns: views::POLICIES };
pub const AUTHORIZERS: Kind = Kind { collection: "authorizers", noun: "authorizer", columns: views::AUTHORIZERS };

#[derive(Subcommand)]
pub enum ObjectCmd {
    /// Create one from JSON, as `POST /v1/admin/{kind}` takes it (see
    /// /openapi.json or the README for the fields).
    Create(JsonInput),
    /// Replace one with JSON (the whole object: `get -o json`, edited, is
    /// the usual start; the id comes from the argument).
    Update {
        /// The object's id.
        id: String,
        #[command(flatten)]
        input: JsonInput,
    },
    /// List them in id order.
    List(ListArgs),
    /// Show one.
    Get {
        /// The object's id.
        id: String,
    },
    /// Delete one.
    Delete {
        /// The object's id.
        id: String,
    },
}

/// Where a JSON body comes from.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct JsonInput {
    /// A file holding the JSON (`-`: standard input).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The JSON itself, inline.
    #[arg(long)]
    json: Option<String>,
}

impl JsonInput {
    /// The JSON given.
    ///
    /// # Errors
    /// A file that cannot be read (exit code 1), or text that is not JSON
    /// (exit code 5, naming the line and column).
    pub fn read(&self) -> anyhow::Result<Value> {
        let (text, from) = match (&self.file, &self.json) {
            (Some(p), _) if p.as_os_str() == "-" => {
                (std::io::read_to_string(std::io::stdin()).context("reading standard input")?, "-".to_string())
            }
            (Some(p), _) => (
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
                p.display().to_string(),
            ),
            (None, Some(j)) => (j.clone(), "--json".to_string()),
            (None, None) => return Err(Failure::usage("give --file or --json").into()),
        };
        serde_json::from_str(&text).map_err(|e| Failure::new(Exit::Invalid, format!("{from}: not JSON: {e}")).into())
    }
}

pub async fn run(api: &Api, kind: &Kind, cmd: ObjectCmd) -> anyhow::Result<()> {
    let collection = format!("/v1/admin/{}", kind.collection);
    let item = |id: &str| format!("{collection}/{}", segment(id));
    let one = View::One(kind.columns);
    match cmd {
        ObjectCmd::Create(input) => api.show(Method::POST, &collection, Some(input.read()?), one).await,
        ObjectCmd::Update { id, input } => {
            let mut body = input.read()?;
            // What `get` shows and the node sets: left out of a replacement.
            if let Value::Object(map) = &mut body {
                map.remove("created_at");
                map.remove("updated_at");
            }
            api.show(Method::PUT, &item(&id), Some(body), one).await
        }
        ObjectCmd::List(args) => api.show_list(&collection, &args, kind.columns).await,
        ObjectCmd::Get { id } => api.show(Method::GET, &item(&id), None, one).await,
        ObjectCmd::Delete { id } => {
            api.call(Method::DELETE, &item(&id), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("deleted {} {id}", kind.noun)))
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an admin token; its secret is printed once.
    Create {
        /// A label for people (1 to 128 characters).
        #[arg(long)]
        name: String,
        /// What it may do: read (GETs), write, or check (the check path:
        /// wire, gRPC, /v1/ratelimit) (repeatable).
        #[arg(long = "scope", required = true, value_parser = ["read", "write", "check"])]
        scopes: Vec<String>,
    },
    /// List admin tokens (no secrets: each token's visible prefix).
    List(ListArgs),
    /// Show one admin token (no secret).
    Get {
        /// The token's id.
        id: String,
    },
    /// Change a token's name or scopes; its secret stays.
    Update {
        /// The token's id.
        id: String,
        /// A new label.
        #[arg(long)]
        name: Option<String>,
        /// The scopes it has from now on (repeatable; replaces them all).
        #[arg(long = "scope", value_parser = ["read", "write", "check"])]
        scopes: Vec<String>,
    },
    /// Delete an admin token: it stops working.
    Delete {
        /// The token's id.
        id: String,
    },
}

pub async fn tokens(api: &Api, cmd: TokenCmd) -> anyhow::Result<()> {
    let item = |id: &str| format!("/v1/admin/tokens/{}", segment(id));
    let one = View::One(views::TOKENS);
    match cmd {
        TokenCmd::Create { name, scopes } => {
            api.show(Method::POST, "/v1/admin/tokens", Some(json!({"name": name, "scopes": scopes})), one).await
        }
        TokenCmd::List(args) => api.show_list("/v1/admin/tokens", &args, views::TOKENS).await,
        TokenCmd::Get { id } => api.show(Method::GET, &item(&id), None, one).await,
        TokenCmd::Update { id, name, scopes } => {
            let token = api.call(Method::GET, &item(&id), None).await?;
            let name = name.map(Value::from).unwrap_or_else(|| token["name"].clone());
            let scopes = if scopes.is_empty() { token["scopes"].clone() } else { json!(scopes) };
            api.show(Method::PUT, &item(&id), Some(json!({"name": name, "scopes": scopes})), one).await
        }
        TokenCmd::Delete { id } => {
            api.call(Method::DELETE, &item(&id), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("deleted token {id}")))
        }
    }
}

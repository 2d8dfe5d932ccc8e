//! The `tollgate` command line from outside: a subcommand for every admin
//! route of the OpenAPI document (and no subcommand without a route), help
//! text on every command and argument, shell completions, and, against a
//! real node, table, JSON and YAML output, key reroll and update, and the
//! exit codes scripts rely on.

use std::collections::BTreeSet;
use std::process::Output;

use serde_json::{json, Value};

use crate::harness::{self, Cluster};

/// Every admin route, `(method, path)` as the OpenAPI document spells it,
/// and the subcommands that call it. A route added to the API and not
/// here, or a subcommand added and not here, fails
/// [`every_admin_route_has_a_subcommand_and_every_subcommand_a_route`].
const ROUTES: &[(&str, &str, &[&str])] = &[
    ("get", "/v1/admin/apis", &["apis list"]),
    ("post", "/v1/admin/apis", &["apis create"]),
    ("get", "/v1/admin/apis/{id}", &["apis get"]),
    ("put", "/v1/admin/apis/{id}", &["apis update"]),
    ("delete", "/v1/admin/apis/{id}", &["apis delete"]),
    ("get", "/v1/admin/plans", &["plans list"]),
    ("post", "/v1/admin/plans", &["plans create"]),
    ("get", "/v1/admin/plans/{id}", &["plans get"]),
    ("put", "/v1/admin/plans/{id}", &["plans update"]),
    ("delete", "/v1/admin/plans/{id}", &["plans delete"]),
    ("get", "/v1/admin/plans/{id}/usage", &["plans usage"]),
    ("post", "/v1/admin/plans/{id}/usage/{key_id}", &["plans adjust-usage"]),
    ("get", "/v1/admin/keys", &["keys list"]),
    ("post", "/v1/admin/keys", &["keys create"]),
    ("get", "/v1/admin/keys/{id}", &["keys get"]),
    ("put", "/v1/admin/keys/{id}", &["keys update", "keys enable", "keys disable"]),
    ("delete", "/v1/admin/keys/{id}", &["keys delete"]),
    ("post", "/v1/admin/keys/{id}/reroll", &["keys reroll"]),
    ("post", "/v1/admin/keys/import", &["keys import"]),
    ("get", "/v1/admin/policies", &["policies list"]),
    ("post", "/v1/admin/policies", &["policies create"]),
    ("get", "/v1/admin/policies/{id}", &["policies get"]),
    ("put", "/v1/admin/policies/{id}", &["policies update"]),
    ("delete", "/v1/admin/policies/{id}", &["policies delete"]),
    ("get", "/v1/admin/authorizers", &["authorizers list"]),
    ("post", "/v1/admin/authorizers", &["authorizers create"]),
    ("get", "/v1/admin/authorizers/{id}", &["authorizers get"]),
    ("put", "/v1/admin/authorizers/{id}", &["authorizers update"]),
    ("delete", "/v1/admin/authorizers/{id}", &["authorizers delete"]),
    ("get", "/v1/admin/tokens", &["tokens list"]),
    ("post", "/v1/admin/tokens", &["tokens create"]),
    ("get", "/v1/admin/tokens/{id}", &["tokens get"]),
    ("put", "/v1/admin/tokens/{id}", &["tokens update"]),
    ("delete", "/v1/admin/tokens/{id}", &["tokens delete"]),
    // Envoy's files create a domain or replace the stored one of its name;
    // `get` and `delete` find a domain by its name (or id).
    ("get", "/v1/admin/ratelimits", &["limits list"]),
    ("post", "/v1/admin/ratelimits", &["limits import"]),
    ("get", "/v1/admin/ratelimits/{id}", &["limits get"]),
    ("put", "/v1/admin/ratelimits/{id}", &["limits import"]),
    ("delete", "/v1/admin/ratelimits/{id}", &["limits delete"]),
    ("get", "/v1/admin/identity-key", &["identity-key get"]),
    ("post", "/v1/admin/identity-key/rotate", &["identity-key rotate"]),
    ("get", "/v1/admin/cluster", &["cluster status"]),
    ("post", "/v1/admin/cluster/nodes", &["cluster add"]),
    ("post", "/v1/admin/cluster/nodes/{id}/promote", &["cluster promote"]),
    ("delete", "/v1/admin/cluster/nodes/{id}", &["cluster remove"]),
    ("get", "/v1/admin/decisions", &["cluster decisions"]),
    ("get", "/v1/admin/audit", &["audit"]),
    ("post", "/v1/admin/snapshot", &["snapshot save"]),
];

/// Subcommands that call no admin route.
/// (`snapshot restore` and `status` read a backup file offline.)
const LOCAL: &[&str] = &["serve", "dev", "certs", "completions", "snapshot restore", "snapshot status"];

/// The leaf subcommands of `command`, as space-separated paths (clap's own
/// `help` subcommands left out).
fn leaves(command: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let path = if prefix.is_empty() { sub.get_name().to_string() } else { format!("{prefix} {}", sub.get_name()) };
        if sub.has_subcommands() {
            leaves(sub, &path, out);
        } else {
            out.insert(path);
        }
    }
}

#[test]
fn every_admin_route_has_a_subcommand_and_every_subcommand_a_route() {
    let document = tollgate_node::http::openapi::document();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        if path.starts_with("/v1/admin/") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    assert!(documented.len() > 40, "the document's admin routes: {documented:?}");
    let tabled: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    let no_subcommand: Vec<_> = documented.difference(&tabled).collect();
    assert!(
        no_subcommand.is_empty(),
        "admin routes without a subcommand (add one, and a row to ROUTES): {no_subcommand:?}"
    );
    let no_route: Vec<_> = tabled.difference(&documented).collect();
    assert!(no_route.is_empty(), "rows of ROUTES the API does not serve: {no_route:?}");

    let mut commands = BTreeSet::new();
    leaves(&tollgate_node::cli::command(), "", &mut commands);
    let mapped: BTreeSet<String> = ROUTES.iter().flat_map(|(_, _, cmds)| cmds.iter().map(|c| c.to_string())).collect();
    let missing: Vec<_> = mapped.iter().filter(|c| !commands.contains(*c)).collect();
    assert!(missing.is_empty(), "ROUTES names subcommands the CLI does not have: {missing:?}");
    let unmapped: Vec<_> = commands.iter().filter(|c| !mapped.contains(*c) && !LOCAL.contains(&c.as_str())).collect();
    assert!(unmapped.is_empty(), "subcommands that call no admin route in ROUTES: {unmapped:?}");
}

#[test]
fn every_command_and_argument_has_help_text() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if command.get_about().is_none() && command.get_long_about().is_none() {
            missing.push(format!("command `{path}`"));
        }
        for arg in command.get_arguments() {
            let help = arg.get_help().or(arg.get_long_help()).map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("argument `{}` of `{path}`", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut command = tollgate_node::cli::command();
    // As clap finishes it before use: --help, --version and `help` added.
    command.build();
    let mut missing = Vec::new();
    walk(&command, "tollgate", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
    let help = command.render_long_help().to_string();
    for code in 0..=8 {
        assert!(help.contains(&format!("\n  {code}  ")), "exit code {code} is not in --help:\n{help}");
    }
}

/// `tollgate ARGS…`, with no output format or node from the environment.
fn tollgate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_OUTPUT")
        .env_remove("TOLLGATE_URL")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tollgate")
}

/// `tollgate --url URL --token TOKEN ARGS…`.
fn on(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--url", url, "--token", harness::TOKEN];
    all.extend_from_slice(args);
    tollgate(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON a successful command printed.
fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn completions_generate_for_every_shell() {
    let out = tollgate(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(script.contains("_tollgate()") && script.contains("complete -F _tollgate"), "not a bash script");
    for word in ["reroll", "identity-key", "adjust-usage", "--output", "--log-format"] {
        assert!(script.contains(word), "bash completes no {word}");
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = tollgate(&["completions", shell]);
        assert!(out.status.success() && stdout(&out).contains("reroll"), "{shell}: {}", stderr(&out));
    }
    assert_eq!(tollgate(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is a usage error");
}

/// A plan and three keys in it, made through the CLI; the keys' JSON.
async fn three_keys(url: &str) -> Vec<Value> {
    let plan =
        json_of(&on(url, &["plans", "create", "--id", "gold", "--name", "Gold", "--rate", "10", "--burst", "20"]));
    assert_eq!(plan["throttle"], json!({"rate_per_sec": 10.0, "burst": 20}), "{plan}");
    (0..3)
        .map(|i| {
            let name = format!("k{i}");
            json_of(&on(
                url,
                &["keys", "create", "--name", &name, "--plan", "gold", "--customer", "acme", "-o", "json"],
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_and_a_get_print_as_a_table_as_json_and_as_yaml() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let url = cluster.url(1);
    let keys = three_keys(&url).await;
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap_or_default()).collect();
    assert!(keys.iter().all(|k| k["secret"].as_str().is_some_and(|s| s.starts_with("tgk_"))), "{keys:?}");

    // Not a terminal: JSON, every page read, no secret.
    let out = on(&url, &["keys", "list"]);
    let page = json_of(&out);
    let listed: Vec<&str> = page["items"].as_array().into_iter().flatten().filter_map(|k| k["id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!((listed, &page["next_after"]), (sorted.clone(), &Value::Null), "{page}");
    for key in &keys {
        assert!(!stdout(&out).contains(key["secret"].as_str().unwrap_or("?")), "a list shows no secret");
    }
    // Read one item per request: the same list, through the cursor.
    assert_eq!(json_of(&on(&url, &["keys", "list", "--page-size", "1"])), page);

    // YAML: the same answer, by flag and by TOLLGATE_OUTPUT.
    let yaml = on(&url, &["keys", "list", "-o", "yaml"]);
    assert!(yaml.status.success(), "{}", stderr(&yaml));
    let parsed: Value = yaml_serde::from_slice(&yaml.stdout).expect("YAML");
    assert_eq!(parsed, page);
    let by_env = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--url", &url, "--token", harness::TOKEN, "keys", "list"])
        .env("TOLLGATE_OUTPUT", "yaml")
        .output()
        .expect("tollgate");
    assert_eq!(yaml_serde::from_slice::<Value>(&by_env.stdout).expect("YAML"), page);

    // A table: the key columns, a row per key.
    let out = on(&url, &["keys", "list", "-o", "table"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "PREFIX", "ENABLED", "PLANS", "CUSTOMER", "EXPIRES"], "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    for key in &keys {
        let row = lines.iter().find(|l| l.starts_with(key["id"].as_str().unwrap_or("?"))).expect("a row per key");
        let cells: Vec<&str> = row.split_whitespace().collect();
        let prefix = key["prefix"].as_str().unwrap_or_default();
        assert_eq!(cells[1..], [key["name"].as_str().unwrap_or_default(), prefix, "true", "gold", "acme", "-"]);
    }

    // A limit: part of the list, and the way on.
    let first = json_of(&on(&url, &["keys", "list", "--limit", "2"]));
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["next_after"].as_str(), Some(sorted[1]));
    let out = on(&url, &["keys", "list", "--limit", "2", "-o", "table"]);
    assert_eq!(stdout(&out).lines().count(), 3);
    assert!(stderr(&out).contains(&format!("--after {}", sorted[1])), "{}", stderr(&out));
    let rest = json_of(&on(&url, &["keys", "list", "--after", sorted[1]]));
    assert_eq!(rest["items"][0]["id"].as_str(), Some(sorted[2]));

    // A get, three ways.
    let got = json_of(&on(&url, &["keys", "get", ids[0]]));
    let mut created = keys[0].clone();
    if let Some(fields) = created.as_object_mut() {
        fields.remove("secret");
    }
    assert_eq!(got, created);
    let yaml = on(&url, &["keys", "get", ids[0], "-o", "yaml"]);
    assert_eq!(yaml_serde::from_slice::<Value>(&yaml.stdout).expect("YAML"), got);
    let table = stdout(&on(&url, &["keys", "get", ids[0], "-o", "table"]));
    let field = |name: &str| {
        table.lines().find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' '))).map(str::trim)
    };
    assert_eq!(field("id"), Some(ids[0]), "{table}");
    assert_eq!((field("name"), field("plans"), field("customer")), (Some("k0"), Some("gold"), Some("acme")), "{table}");
    assert_eq!(field("prefix"), keys[0]["prefix"].as_str(), "{table}");
    assert!(field("secret").is_none(), "a get shows no secret: {table}");

    // Plans read in words.
    let table = stdout(&on(&url, &["plans", "list", "-o", "table"]));
    assert!(table.starts_with("ID") && table.contains("THROTTLE") && table.contains("10/s, burst 20"), "{table}");
    // The cluster: its fields, then a row per member.
    let table = stdout(&on(&url, &["cluster", "status", "-o", "table"]));
    assert!(table.lines().any(|l| l.starts_with("state") && l.ends_with("Leader")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("ID") && l.contains("HTTP") && l.contains("VOTER")), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_rerolled_and_updated_through_the_cli() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let url = cluster.url(1);
    let api = json!({"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
        "routes": [{"method": "GET", "path": "/pets", "api_key_required": true}]});
    json_of(&on(&url, &["apis", "create", "--json", &api.to_string()]));
    for plan in ["gold", "silver"] {
        json_of(&on(&url, &["plans", "create", "--id", plan, "--name", plan, "--stage", "pets/prod"]));
    }
    let key = json_of(&on(&url, &["keys", "create", "--name", "alice", "--plan", "gold", "--tag", "team=web"]));
    let (id, first) = (key["id"].as_str().unwrap_or_default(), key["secret"].as_str().unwrap_or_default());
    let check = |secret: &str| {
        let body = json!({"api": "pets", "stage": "prod", "method": "GET", "path": "/pets",
            "headers": {"x-api-key": secret}});
        let cluster = &cluster;
        async move {
            let (status, decision) = cluster.post(1, "/v1/check", body).await;
            assert_eq!(status, 200, "{decision}");
            (decision["allowed"].as_bool().unwrap_or(false), decision["reason"].as_str().unwrap_or("").to_string())
        }
    };
    assert!(check(first).await.0);

    // Reroll: a new secret once, the old one still good for the overlap.
    let rerolled = json_of(&on(&url, &["keys", "reroll", id, "--overlap-secs", "600"]));
    let second = rerolled["secret"].as_str().unwrap_or_default();
    assert!(second.starts_with("tgk_") && second != first, "{rerolled}");
    assert_eq!(rerolled["previous_prefix"], key["prefix"], "{rerolled}");
    assert_ne!(rerolled["prefix"], key["prefix"]);
    assert!(check(second).await.0 && check(first).await.0, "both work during the overlap");
    let shown = stdout(&on(&url, &["keys", "get", id]));
    assert!(!shown.contains(second) && !shown.contains(first), "no secret after the reroll: {shown}");
    // Rerolled with no overlap: the old secret stops at once.
    let third = json_of(&on(&url, &["keys", "reroll", id]));
    let third = third["secret"].as_str().unwrap_or_default().to_string();
    assert!(check(&third).await.0);
    assert!(!check(second).await.0, "the second secret stopped with the third reroll");

    // Update: what is given changes, the rest stays, the secret too.
    let updated = json_of(&on(
        &url,
        &[
            "keys",
            "update",
            id,
            "--name",
            "alice2",
            "--add-plan",
            "silver",
            "--remove-plan",
            "gold",
            "--tag",
            "tier=1",
            "--customer",
            "acme",
        ],
    ));
    assert_eq!(
        (&updated["name"], &updated["plan_ids"], &updated["tags"], &updated["customer_id"]),
        (&json!("alice2"), &json!(["silver"]), &json!({"team": "web", "tier": "1"}), &json!("acme")),
        "{updated}"
    );
    let (_, stored) = cluster.get(1, &format!("/v1/admin/keys/{id}")).await;
    assert_eq!(stored, updated);
    assert!(updated.get("secret").is_none(), "an update shows no secret");
    assert!(check(&third).await.0, "the secret survives an update");
    let updated = json_of(&on(&url, &["keys", "update", id, "--remove-tag", "team", "--customer", ""]));
    assert_eq!((&updated["tags"], &updated["customer_id"]), (&json!({"tier": "1"}), &Value::Null), "{updated}");

    // Disable and enable.
    assert_eq!(json_of(&on(&url, &["keys", "disable", id]))["enabled"], false);
    assert_eq!(check(&third).await, (false, "disabled_key".to_string()));
    assert_eq!(json_of(&on(&url, &["keys", "enable", id]))["enabled"], true);
    assert!(check(&third).await.0);

    // A plan updated in place.
    let plan = json_of(&on(&url, &["plans", "update", "silver", "--rate", "5", "--burst", "10", "--quota", "100"]));
    assert_eq!(plan["throttle"], json!({"rate_per_sec": 5.0, "burst": 10}), "{plan}");
    assert_eq!(plan["quota"], json!({"limit": 100, "period": "month", "offset": 0}), "{plan}");
    assert_eq!(
        (&plan["api_stages"][0]["api_id"], &plan["api_stages"][0]["stage"]),
        (&json!("pets"), &json!("prod")),
        "kept: {plan}"
    );
    assert_eq!(plan["api_stages"].as_array().map(Vec::len), Some(1), "{plan}");
    let plan = json_of(&on(&url, &["plans", "update", "silver", "--no-throttle", "--period", "day"]));
    assert_eq!((&plan["throttle"], &plan["quota"]["period"]), (&Value::Null, &json!("day")), "{plan}");
    let plan = json_of(&on(&url, &["plans", "update", "silver", "--remove-stage", "pets/prod", "--no-quota"]));
    assert_eq!((&plan["api_stages"], &plan["quota"]), (&json!([]), &Value::Null), "{plan}");
}

/// Exit code and standard error of a failed command: one line, `error: …`.
fn failed(out: &Output) -> (i32, String) {
    let text = stderr(out);
    assert_eq!(text.lines().count(), 1, "one line on standard error: {text:?}");
    assert!(text.starts_with("error: "), "{text}");
    assert!(out.stdout.is_empty(), "nothing on standard output: {}", stdout(out));
    (out.status.code().unwrap_or(-1), text.trim_end().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_say_what_went_wrong() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let url = cluster.url(1);
    assert_eq!(on(&url, &["keys", "list"]).status.code(), Some(0));

    // 2: the command line (clap's own), or no token.
    assert_eq!(on(&url, &["keys", "get"]).status.code(), Some(2));
    assert_eq!(on(&url, &["plans", "create", "--name", "x", "--rate", "1"]).status.code(), Some(2), "--burst too");
    assert_eq!(on(&url, &["keys", "list", "--limit", "0"]).status.code(), Some(2), "the API takes 1 and up");
    for bad in ["not a url", "ftp://127.0.0.1:1"] {
        let (code, text) = failed(&tollgate(&["--url", bad, "--token", harness::TOKEN, "keys", "list"]));
        assert_eq!(code, 2, "{bad}: {text}");
        assert!(text.contains("--url"), "{text}");
    }
    let (code, text) = failed(&tollgate(&["--url", &url, "keys", "list"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("TOLLGATE_ADMIN_TOKEN"), "{text}");

    // 3: not found.
    let (code, text) = failed(&on(&url, &["keys", "get", "key_nope"]));
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("404 Not Found"), "{text}");
    assert_eq!(failed(&on(&url, &["limits", "get", "nope"])).0, 3);

    // 4: conflict.
    json_of(&on(&url, &["plans", "create", "--id", "gold", "--name", "Gold"]));
    let (code, text) = failed(&on(&url, &["plans", "create", "--id", "gold", "--name", "Gold"]));
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("409 Conflict"), "{text}");

    // 5: invalid, naming the field the node named.
    let (code, text) = failed(&on(&url, &["plans", "create", "--name", "x", "--rate", "0", "--burst", "5"]));
    assert_eq!(code, 5, "{text}");
    assert!(text.starts_with("error: throttle.rate_per_sec: ") && text.contains("400 Bad Request"), "{text}");
    let key = json_of(&on(&url, &["keys", "create", "--name", "k"]));
    let id = key["id"].as_str().unwrap_or_default();
    let (code, text) = failed(&on(&url, &["keys", "reroll", id, "--overlap-secs", "99999999"]));
    assert_eq!((code, text.starts_with("error: overlap_secs: ")), (5, true), "{text}");
    let (code, text) = failed(&on(&url, &["apis", "create", "--json", "{not json"]));
    assert_eq!(code, 5, "{text}");

    // 6: a wrong token (one guess), and a read token writing.
    let (code, text) =
        failed(&tollgate(&["--url", &url, "--token", "tga_wrong-but-long-enough-0123456789", "keys", "list"]));
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("401"), "{text}");
    let reader = json_of(&on(&url, &["tokens", "create", "--name", "reader", "--scope", "read"]));
    let reader = reader["secret"].as_str().unwrap_or_default();
    let out = tollgate(&["--url", &url, "--token", reader, "keys", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (code, text) = failed(&tollgate(&["--url", &url, "--token", reader, "keys", "delete", id]));
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("403"), "{text}");

    // 7: nobody there.
    let (code, text) = failed(&on("http://127.0.0.1:1", &["cluster", "status"]));
    assert_eq!(code, 7, "{text}");
    assert!(text.contains("cannot reach http://127.0.0.1:1"), "{text}");

    // 8: wrong tokens until the node limits this address (last: it then
    // refuses everyone here for a while).
    let mut last = (0, String::new());
    for _ in 0..30 {
        last = failed(&tollgate(&["--url", &url, "--token", "tga_wrong-but-long-enough-0123456789", "keys", "list"]));
        if last.0 != 6 {
            break;
        }
    }
    assert_eq!(last.0, 8, "{}", last.1);
    assert!(last.1.contains("429"), "{}", last.1);
}

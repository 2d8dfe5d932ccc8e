//! Rate limit domains (descriptor limits) from outside: the admin API's
//! create, read, replace, delete and list, the domain name unique in the
//! cluster, bad input refused by field; and `tollgate limits`, which loads
//! envoyproxy/ratelimit configuration files into a real cluster.

use std::path::{Path, PathBuf};
use std::process::Output;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{self, Cluster};

/// A small domain: one key with a per-minute limit, and a nested rule.
fn domain(name: &str, per_minute: u32) -> Value {
    json!({"domain": name, "descriptors": [
        {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": per_minute, "name": "per_key"},
         "descriptors": [{"key": "path", "value": "/search*", "rate_limit": {"unit": "second", "requests_per_unit": 2}}]},
        {"key": "plan", "value": "partner", "rate_limit": {"unit": "hour", "requests_per_unit": 9000,
         "replaces": [{"name": "per_key"}]}},
        {"key": "remote_address", "value": "192.0.2.1", "rate_limit": {"unlimited": true}}
    ]})
}

/// The stored domain's fields that were given (the node adds id and times).
fn given(stored: &Value) -> Value {
    json!({"domain": stored["domain"], "descriptors": stored["descriptors"]})
}

/// The same domain as `given` would show it: every default filled in.
fn filled(input: &Value) -> Value {
    fn rule(r: &Value) -> Value {
        let limit = match r.get("rate_limit") {
            None | Some(Value::Null) => Value::Null,
            Some(l) => json!({"requests_per_unit": l.get("requests_per_unit").cloned().unwrap_or(json!(0)),
                "unit": l.get("unit").cloned().unwrap_or(Value::Null),
                "unlimited": l.get("unlimited").cloned().unwrap_or(json!(false)),
                "name": l.get("name").cloned().unwrap_or(Value::Null),
                "replaces": l.get("replaces").cloned().unwrap_or(json!([]))}),
        };
        let nested: Vec<Value> = r["descriptors"].as_array().map(|d| d.iter().map(rule).collect()).unwrap_or_default();
        json!({"key": r["key"], "value": r.get("value").cloned().unwrap_or(Value::Null), "rate_limit": limit,
            "descriptors": nested, "shadow_mode": false, "quota_mode": false, "share_threshold": false,
            "detailed_metric": false, "value_to_metric": false})
    }
    let rules: Vec<Value> = input["descriptors"].as_array().map(|d| d.iter().map(rule).collect()).unwrap_or_default();
    json!({"domain": input["domain"], "descriptors": rules})
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_domains_are_created_read_replaced_and_deleted_with_a_domain_named_once() {
    let cluster = Cluster::start(1).await;
    cluster.leader().await;
    let node = 1;

    let (status, created) = cluster.post(node, "/v1/admin/ratelimits", domain("shop", 60)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("rld_"), "{created}");
    assert_eq!(given(&created), filled(&domain("shop", 60)));
    let (status, read) = cluster.get(node, &format!("/v1/admin/ratelimits/{id}")).await;
    assert_eq!((status, given(&read)), (200, filled(&domain("shop", 60))), "{read}");

    // Found by its domain name (any spelling a query can carry), alone.
    let (status, other) = cluster.post(node, "/v1/admin/ratelimits", domain("a b/c&d", 5)).await;
    assert_eq!(status, 201, "{other}");
    for (query, expected) in [
        ("domain=shop", vec![id.as_str()]),
        ("domain=shop&stale=true", vec![id.as_str()]),
        ("domain=a+b%2Fc%26d", vec![other["id"].as_str().unwrap_or_default()]),
        ("domain=nope", vec![]),
        ("domain=shop&after=rld_zzzz", vec![]),
    ] {
        let (status, page) = cluster.get(node, &format!("/v1/admin/ratelimits?{query}")).await;
        let ids: Vec<&str> = page["items"].as_array().into_iter().flatten().filter_map(|d| d["id"].as_str()).collect();
        assert_eq!((status, ids, &page["next_after"]), (200, expected, &Value::Null), "{query}: {page}");
    }
    let (status, answer) = cluster.get(node, "/v1/admin/ratelimits?domian=shop").await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("domian")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("domain"), "{answer}");

    // A second domain of the same name is refused, by create or by replace.
    let (status, answer) = cluster.post(node, "/v1/admin/ratelimits", domain("shop", 1)).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (409, Some("domain")), "{answer}");
    let other_id = other["id"].as_str().unwrap_or_default();
    let (status, answer) =
        cluster.call(node, Method::PUT, &format!("/v1/admin/ratelimits/{other_id}"), Some(domain("shop", 1))).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (409, Some("domain")), "{answer}");

    // Replace: the id stays, the rules change.
    let (status, replaced) =
        cluster.call(node, Method::PUT, &format!("/v1/admin/ratelimits/{id}"), Some(domain("shop", 120))).await;
    assert_eq!((status, replaced["id"].as_str()), (200, Some(id.as_str())), "{replaced}");
    let (_, read) = cluster.get(node, &format!("/v1/admin/ratelimits/{id}")).await;
    assert_eq!(given(&read), filled(&domain("shop", 120)));

    // Bad input names the field, is a 4xx, and changes nothing.
    // `domain("bad", 1)` with the member at `pointer` set (added if missing).
    let with = |pointer: &str, value: Value| {
        let mut body = domain("bad", 1);
        let (parent, member) = pointer.rsplit_once('/').unwrap_or_default();
        match body.pointer_mut(parent) {
            Some(Value::Object(map)) => map.insert(member.to_string(), value),
            Some(Value::Array(items)) => {
                member.parse::<usize>().ok().and_then(|i| items.get_mut(i)).map(|at| std::mem::replace(at, value))
            }
            _ => panic!("no {parent} in the body"),
        };
        body
    };
    // The list of the 17th level, one too deep.
    let seventeenth = format!("{}.descriptors", vec!["descriptors[0]"; 16].join("."));
    let deep = {
        let mut rule = json!({"key": "k16"});
        for level in (0..16).rev() {
            rule = json!({"key": format!("k{level}"), "descriptors": [rule]});
        }
        json!({"domain": "bad", "descriptors": [rule]})
    };
    let cases = [
        (json!({"descriptors": []}), "body"),
        (with("/domain", json!("")), "domain"),
        (with("/domain", json!("a\u{7}b")), "domain"),
        (with("/id", json!("no spaces")), "id"),
        (with("/descriptors/0/key", json!("")), "descriptors[0].key"),
        (with("/descriptors/0/rate_limit/unit", json!("fortnight")), "descriptors[0].rate_limit.unit"),
        (with("/descriptors/0/rate_limit/unit", Value::Null), "descriptors[0].rate_limit.unit"),
        (with("/descriptors/2/rate_limit/unit", json!("second")), "descriptors[2].rate_limit.unit"),
        (with("/descriptors/0/rate_limit/requests_per_unit", json!(-1)), "descriptors[0].rate_limit.requests_per_unit"),
        (
            with("/descriptors/0/rate_limit/requests_per_unit", json!(4_294_967_296u64)),
            "descriptors[0].rate_limit.requests_per_unit",
        ),
        (
            with("/descriptors", json!([{"key": "a", "value": "v"}, {"key": "b"}, {"key": "a", "value": "v"}])),
            "descriptors[2]",
        ),
        (with("/descriptors", json!([{"key": "a"}, {"key": "a", "value": ""}])), "descriptors[1]"),
        (with("/descriptors/1/share_threshold", json!(true)), "descriptors[1].share_threshold"),
        (with("/descriptors/1/rate_limit/name", json!("per_key")), "descriptors[1].rate_limit.replaces[0].name"),
        (with("/descriptors/1/rate_limit/replaces/0/name", json!("")), "descriptors[1].rate_limit.replaces[0].name"),
        (with("/descriptors/0/descriptors/0/value", json!("x".repeat(1025))), "descriptors[0].descriptors[0].value"),
        (with("/descriptors/0/rate_limit/reqests_per_unit", json!(5)), "descriptors[0].rate_limit.reqests_per_unit"),
        (with("/descriptors/0/metadata", json!({"a": 1})), "descriptors[0].metadata"),
        (deep, seventeenth.as_str()),
    ];
    for (body, field) in cases {
        let (status, answer) = cluster.post(node, "/v1/admin/ratelimits", body.clone()).await;
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some(field)), "{body}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap_or_default().is_empty(), "{answer}");
        let (status, answer) =
            cluster.call(node, Method::PUT, &format!("/v1/admin/ratelimits/{id}"), Some(body.clone())).await;
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some(field)), "PUT {body}: {answer}");
    }
    let (status, answer) =
        cluster.call(node, Method::PUT, &format!("/v1/admin/ratelimits/{id}"), Some(with("/id", json!("other")))).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("id")), "{answer}");
    let all = cluster.list_all(node, "ratelimits", false).await;
    assert_eq!(all.len(), 2, "nothing was created: {all:?}");
    let (_, read) = cluster.get(node, &format!("/v1/admin/ratelimits/{id}")).await;
    assert_eq!(given(&read), filled(&domain("shop", 120)), "nothing was replaced");

    // Delete: gone by id and by name, and the name is free again.
    assert_eq!(cluster.call(node, Method::DELETE, &format!("/v1/admin/ratelimits/{id}"), None).await.0, 204);
    assert_eq!(cluster.get(node, &format!("/v1/admin/ratelimits/{id}")).await.0, 404);
    let (_, page) = cluster.get(node, "/v1/admin/ratelimits?domain=shop").await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(cluster.post(node, "/v1/admin/ratelimits", domain("shop", 1)).await.0, 201);
}

/// `tollgate --url URL --token T limits ARGS…`.
fn cli(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--url", url, "--token", harness::TOKEN, "limits"])
        .args(args)
        .env_remove("TOLLGATE_OUTPUT")
        .output()
        .expect("tollgate limits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ratelimit/example.yaml")
}

/// The rule at `path` of keys and values (`[("plan", Some("partner")), ("api_key", None)]`).
fn rule<'a>(domain: &'a Value, path: &[(&str, Option<&str>)]) -> &'a Value {
    let mut rules = &domain["descriptors"];
    let mut found = &Value::Null;
    for (key, value) in path {
        found = rules
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["key"] == *key && r["value"].as_str() == *value))
            .unwrap_or_else(|| panic!("no rule {key}={value:?} in {domain}"));
        rules = &found["descriptors"];
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_imports_an_envoy_ratelimit_file_replaces_it_on_reimport_and_names_a_bad_line() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.other_than(leader);
    let url = cluster.url(follower);
    let dir = tempfile::tempdir().expect("dir");

    // The example loads as it is, through a follower.
    let example = example();
    let out = cli(&url, &["import", example.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // What was done, per domain (JSON: standard output is not a terminal).
    let said: Value = serde_json::from_slice(&out.stdout).expect("import prints JSON");
    let done = &said["items"][0];
    assert_eq!((&done["domain"], &done["result"]), (&json!("storefront"), &json!("created")), "{said}");
    assert!(done["source"].as_str().is_some_and(|s| s.ends_with("example.yaml: line 13")), "{said}");
    assert_eq!(said["items"].as_array().map(Vec::len), Some(1), "{said}");
    let out = cli(&url, &["get", "storefront"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("get prints JSON");
    let id = shown["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(done["id"].as_str(), Some(id.as_str()), "{said} / {shown}");
    // The file's features, as stored (read back from the leader too).
    let (_, stored) = cluster.get(leader, &format!("/v1/admin/ratelimits/{id}")).await;
    assert_eq!(stored, shown);
    assert_eq!(shown["descriptors"].as_array().map(Vec::len), Some(5), "{shown}");
    let partner = rule(&shown, &[("plan", Some("partner")), ("api_key", None)]);
    assert_eq!(partner["rate_limit"]["unit"], "hour", "`HOUR` in the file: {partner}");
    assert_eq!(partner["rate_limit"]["requests_per_unit"], 20_000);
    assert_eq!(partner["rate_limit"]["replaces"], json!([{"name": "key_hourly"}]));
    let exports = rule(&shown, &[("api_key", None), ("path", Some("/exports/*"))]);
    assert_eq!((&exports["share_threshold"], &exports["rate_limit"]["unit"]), (&json!(true), &json!("minute")));
    assert_eq!(rule(&shown, &[("remote_address", Some("192.0.2.10"))])["rate_limit"]["unlimited"], true);
    assert_eq!(rule(&shown, &[("path", Some("/checkout"))])["shadow_mode"], true);

    // Imported again, edited: the same domain (same id) is replaced.
    let edited = dir.path().join("edited.yaml");
    let original = std::fs::read_to_string(&example).expect("example");
    assert!(original.contains("requests_per_unit: 20000"));
    std::fs::write(&edited, original.replace("requests_per_unit: 20000", "requests_per_unit: 25000")).expect("write");
    let out = cli(&url, &["import", edited.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said: Value = serde_json::from_slice(&out.stdout).expect("import prints JSON");
    assert_eq!((&said["items"][0]["result"], &said["items"][0]["id"]), (&json!("replaced"), &json!(id)), "{said}");
    let (_, stored) = cluster.get(leader, &format!("/v1/admin/ratelimits/{id}")).await;
    let partner = rule(&stored, &[("plan", Some("partner")), ("api_key", None)]);
    assert_eq!(partner["rate_limit"]["requests_per_unit"], 25_000, "{stored}");
    let out = cli(&url, &["list"]);
    let page: Value = serde_json::from_slice(&out.stdout).expect("list prints JSON");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");

    // A misspelt field on line 9: refused with its file, line and column,
    // and nothing written (not even the good file given before it).
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    .expect("write");
    let bad = dir.path().join("bad.yaml");
    let typo =
        "# storefront, with a typo\ndomain: storefront\ndescriptors:\n  - key: remote_address\n    rate_limit:\n      \
                unit: second\n      requests_per_unit: 1\n  - key: api_key\n    rate_limt:\n      unit: hour\n";
    std::fs::write(&bad, typo).expect("write");
    let out = cli(&url, &["import", good.to_str().unwrap_or_default(), bad.to_str().unwrap_or_default()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: line 9, column 5: descriptors[1].rate_limt: unknown field `rate_limt`",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
    let all = cluster.list_all(leader, "ratelimits", false).await;
    assert_eq!(all.len(), 1, "nothing written: {all:?}");
    let partner = rule(&all[0], &[("plan", Some("partner")), ("api_key", None)]);
    assert_eq!(partner["rate_limit"]["requests_per_unit"], 25_000, "the stored domain is unchanged");

    // metadata, envoyproxy/ratelimit's and not Tollgate's, is refused by line too.
    std::fs::write(&bad, "domain: other\ndescriptors:\n  - key: k\n    metadata:\n      owner: search\n")
        .expect("write");
    let out = cli(&url, &["import", bad.to_str().unwrap_or_default()]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("line 4, column 5") && stderr.contains("metadata is not supported")
    );

    // --dry-run reads and checks, and writes nothing.
    let out = cli(&url, &["import", "--dry-run", good.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said: Value = serde_json::from_slice(&out.stdout).expect("a dry run prints JSON");
    assert_eq!((&said["items"][0]["domain"], &said["items"][0]["result"]), (&json!("other"), &json!("checked")));
    assert_eq!(cluster.list_all(leader, "ratelimits", false).await.len(), 1);

    // Delete by domain name.
    let out = cli(&url, &["delete", "storefront"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cluster.get(leader, &format!("/v1/admin/ratelimits/{id}")).await.0, 404);
    let out = cli(&url, &["get", "storefront"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no rate limit domain \"storefront\""));
}

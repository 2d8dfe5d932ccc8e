//! A test of the crate's shape: dependencies between the top-level modules
//! of `node/src` point one way. It reads every source file, collects the
//! `crate::<module>` paths each top-level module uses (in `use` lines and
//! inline, grouped `crate::{a, b}` included; comments are skipped), and fails
//!
//! - on any cycle between top-level modules, naming the files that make it;
//! - on any import from a lower layer into a higher one, for the layers of
//!   the request path, highest first:
//!   listeners (`http`, `wire`, `grpc`, `server`) → `app` → `gateway` → `cluster` →
//!   `metering` → `state` → `store`.
//!
//! `metering` ranks below `cluster` in *imports* although the metering calls
//! the cluster at run time: the metering owns the port it calls
//! (`metering::Authority`, with `LendRequest`/`Lent`), and the cluster
//! implements it (`cluster::authority`) and is handed to the metering as an
//! `Arc<dyn Authority>` when the node starts. So the metering names nothing
//! above it, and neither does the cluster. There is no allow-list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers of the request path, highest first; modules in one entry share a rank.
const LAYERS: &[&[&str]] =
    &[&["http", "wire", "grpc", "server"], &["app"], &["gateway"], &["cluster"], &["metering"], &["state"], &["store"]];

/// `from -> to -> [file:line, ...]`
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The top-level module a file (relative to `src`) belongs to; `None` for
/// the crate roots.
fn top_module(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The top-level modules named right after each `crate::` in `code`, with
/// the byte offset of each `crate::`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `tollgate_crate::x` or `$crate::x` are not ours.
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.push((at, ident(rest)));
            continue;
        };
        // The first name of each item at depth 0: `{a::{b, c}, d}` -> a, d.
        let (mut depth, mut items, mut item) = (0usize, Vec::new(), String::new());
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        found.extend(items.iter().map(|item| (at, ident(item.trim()))));
    }
    found.retain(|(_, name)| !name.is_empty());
    found
}

/// The module graph of `files` (path relative to `src`, text).
fn graph(files: &[(String, String)]) -> Graph {
    let mut graph = Graph::new();
    for (rel, text) in files {
        let Some(from) = top_module(rel) else { continue };
        // Comments dropped, lines kept (a `use` may span lines).
        let code: String =
            text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        for (at, to) in crate_paths(&code) {
            if to != from && !matches!(to.as_str(), "self" | "super") {
                let line = code[..at].matches('\n').count() + 1;
                graph.entry(from.clone()).or_default().entry(to).or_default().push(format!("{rel}:{line}"));
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it (first = last), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|targets| targets.keys()) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every way `graph` breaks the rules, one line each (empty: none).
fn violations(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(cycle) = find_cycle(graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let at = &graph[&pair[0]][&pair[1]];
                format!("{} -> {} (at {})", pair[0], pair[1], at.join(", "))
            })
            .collect();
        found.push(format!("import cycle: {}", edges.join("; ")));
    }
    for (from, targets) in graph {
        for (to, at) in targets {
            if let (Some(a), Some(b)) = (rank(from), rank(to)) {
                if a > b {
                    found.push(format!("{from} imports {to}, a layer above it (at {})", at.join(", ")));
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, relative to `root`, with its text.
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src").to_string_lossy().replace('\\', "/");
            // This file names modules in its fixtures, not as imports.
            if rel != "layers.rs" {
                out.push((rel, std::fs::read_to_string(&path).expect("read source")));
            }
        }
    }
}

fn this_crate() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    files
}

#[test]
fn modules_import_each_other_one_way_only() {
    let graph = graph(&this_crate());
    assert!(graph.contains_key("http") && graph.contains_key("cluster"), "the source walk found the modules");
    let shape: Vec<String> = graph
        .iter()
        .map(|(from, to)| format!("{from} -> {}", to.keys().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    let broken = violations(&graph);
    assert!(broken.is_empty(), "{}\n\nmodule graph:\n{}", broken.join("\n"), shape.join("\n"));
}

#[test]
fn a_cluster_file_that_imports_the_http_listener_is_caught() {
    let mut files = this_crate();
    files.push(("cluster/extra.rs".into(), "use crate::http::HttpState;\n".into()));
    let broken = violations(&graph(&files));
    assert!(broken.iter().any(|v| v.starts_with("import cycle") && v.contains("cluster/extra.rs:1")), "{broken:?}");
    assert!(broken.iter().any(|v| v.starts_with("cluster imports http")), "{broken:?}");
}

#[test]
fn grouped_inline_and_foreign_paths_are_read_right() {
    let code = "use crate::{\n    app::App,\n    cluster::{leader, peer},\n    store,\n};\nlet m = crate::state::Model::default(); $crate::no; tollgate_crate::no";
    let names: Vec<String> = crate_paths(code).into_iter().map(|(_, name)| name).collect();
    assert_eq!(names, ["app", "cluster", "store", "state"]);
    let commented = graph(&[("gateway/x.rs".into(), "// crate::http is only mentioned\n".into())]);
    assert!(commented.is_empty(), "comments are not imports");
}

//! A node's log as a log shipper reads it: written to a file it has no
//! colour codes, and with `--log-format json` every line is one JSON object
//! with the event's level, message and target.

use serde_json::Value;

use crate::harness::{Cluster, Options};

/// Node 1's log file, once it has lines from starting up and from a write.
async fn log_of(cluster: &Cluster) -> Vec<u8> {
    let leader = cluster.leader().await;
    // A wrong token is logged (with its source address, never the token).
    let wrong = tollgate_client::admin::AdminClient::new([cluster.url(leader)], "tga_not-the-token-0123456789abcdef")
        .expect("client");
    let (status, _) = wrong.request(reqwest::Method::GET, "/v1/admin/keys", None).await.expect("an answer");
    assert_eq!(status, 401);
    let path = cluster.node(1).dir.join("node.log");
    let mut log = Vec::new();
    crate::harness::wait_until("the failed authentication is in the log", || {
        log = std::fs::read(&path).unwrap_or_default();
        let seen = String::from_utf8_lossy(&log).contains("admin authentication failed");
        async move { seen }
    })
    .await;
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_logging_to_a_file_writes_no_colour_codes() {
    let cluster = Cluster::start(1).await;
    let log = log_of(&cluster).await;
    let text = String::from_utf8_lossy(&log);
    assert!(text.lines().count() >= 3, "the log has lines: {text}");
    assert!(text.contains(" INFO "), "text lines with their level: {text}");
    let escape = log.iter().position(|b| *b == 0x1b);
    assert_eq!(escape, None, "an ESC byte in a log written to a file: {text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_log_format_json_every_line_is_an_object_with_level_message_and_target() {
    let options = Options { extra_args: vec!["--log-format".into(), "json".into()], ..Default::default() };
    let cluster = Cluster::start_with(1, options).await;
    let log = log_of(&cluster).await;
    let text = String::from_utf8_lossy(&log);
    assert!(!log.contains(&0x1b), "no colour codes in JSON: {text:?}");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["level", "message", "target", "timestamp"] {
            assert!(event[field].is_string(), "no {field} in {line}");
        }
        lines += 1;
    }
    assert!(lines >= 3, "the log has lines: {text}");
    assert!(
        text.lines().any(|l| l.contains("\"level\":\"WARN\"") && l.contains("admin authentication failed")),
        "the wrong token, as a warning with its address: {text}"
    );
}

/// `tollgate dev --log-format json` passes the format to its nodes (in
/// each node's configuration file, so a node it starts again keeps it).
#[tokio::test(flavor = "multi_thread")]
async fn tollgate_dev_passes_the_log_format_to_its_nodes() {
    let dir = tempfile::tempdir().expect("dir");
    let (_dev, _) = crate::tls::start_dev(dir.path(), &["--log-format", "json"]).await;
    let node = dir.path().join("dev/node1");
    let config = std::fs::read_to_string(node.join("tollgate.toml")).expect("tollgate.toml");
    assert!(config.contains("log_format = \"json\""), "{config}");
    let log = std::fs::read_to_string(node.join("node.log")).expect("node.log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "node 1 logged nothing");
    for line in lines {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string() && event["message"].is_string(), "{line}");
    }
}

//! Health, Prometheus metrics and the access log.

mod common;

use std::time::Duration;

use common::{Fixture, curl, wait_until};

const INDEX: &str = "<p>index</p>\n";

fn fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", INDEX);
    fx
}

/// A web listener on 127.0.0.1 and an admin listener on ::1 (separate addresses, so that the
/// port-0 problem shown in protocols.rs does not get in the way).
fn with_admin(access_log: &str) -> String {
    format!(
        r#"[server]
data_dir = "{{dir}}/data"

[access_log]
{access_log}

[[listener]]
name = "web"
address = "127.0.0.1:0"

[[listener]]
name = "admin"
address = "[::1]:0"
role = "admin"

[[site]]
name = "main"
root = "root"
"#
    )
}

fn metrics(server: &common::Server) -> String {
    let r = curl(&["-g", &format!("{}/metrics", server.url("admin"))]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", r.header("content-type"));
    r.text()
}

/// The value of a sample line `name{labels} value` (or `name value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn healthz() {
    let server = fixture().start(&with_admin("output = \"off\""));
    let r = curl(&["-g", &format!("{}/healthz", server.url("admin"))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON health");
    assert_eq!(v["status"], "ok");
    // The admin listener serves the console and the API beside it, nothing from the sites;
    // the web listener serves no admin paths.
    assert_eq!(curl(&["-g", &format!("{}/a.txt", server.url("admin"))]).status, 404);
    assert_eq!(curl(&[&format!("{}/healthz", server.url("web"))]).status, 404);
}

#[test]
fn metrics_count_requests_by_site_and_status() {
    let server = fixture().start(&with_admin("output = \"off\""));
    let web = server.url("web");
    for _ in 0..3 {
        assert_eq!(curl(&[&format!("{web}/index.html")]).status, 200);
    }
    assert_eq!(curl(&[&format!("{web}/missing")]).status, 404);
    // The count is taken when the response ends, which may be a moment after curl has it.
    let mut text = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        text = metrics(&server);
        sample(&text, "servente_http_requests_total{site=\"main\",status=\"200\"}") == Some(3.0)
            && sample(&text, "servente_http_requests_total{site=\"main\",status=\"404\"}") == Some(1.0)
    });
    assert!(counted, "request counts missing or wrong:\n{text}");
    assert!(text.contains("# TYPE servente_http_requests_total counter"), "{text}");
    let open = sample(&text, "servente_connections_open").expect("servente_connections_open");
    assert!(open >= 1.0, "the connection reading /metrics is open: {open}");
    let bytes = sample(&text, "servente_http_response_bytes_total{site=\"main\"}").expect("bytes sent");
    assert!(bytes >= (3 * INDEX.len()) as f64, "{bytes}");
    assert_eq!(
        sample(&text, "servente_http_request_duration_seconds_count{site=\"main\"}"),
        Some(4.0),
        "every request lands in the histogram:\n{text}"
    );
    assert!(sample(&text, "servente_connections_total").expect("servente_connections_total") >= 5.0);
}

#[test]
fn metrics_count_reloads() {
    let server = fixture().start(&with_admin("output = \"off\""));
    let good = std::fs::read_to_string(server.fx.config_path()).expect("config");
    server.fx.write("servente.toml", "not = [valid");
    server.signal("HUP");
    assert!(server.wait_stderr("reload refused", common::WAIT), "{}", server.stderr());
    server.fx.write("servente.toml", &good);
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    let text = metrics(&server);
    assert_eq!(sample(&text, "servente_reloads_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "servente_reload_failures_total"), Some(1.0), "{text}");
}

/// Waits (bounded) until the file has at least `n` lines; returns them.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let ok = wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect();
        lines.len() >= n
    });
    assert!(ok, "{} has {} lines, expected {n}: {lines:#?}", path.display(), lines.len());
    lines
}

#[test]
fn access_log_json() {
    let server = fixture().start(&with_admin("format = \"json\"\noutput = \"{dir}/access.log\""));
    let web = server.url("web");
    curl(&["-A", "agent/1.0", "-e", "http://ref.example/", &format!("{web}/index.html")]);
    curl(&[&format!("{web}/missing?x=1&y=%22q%22")]);
    curl(&["-I", &format!("{web}/index.html")]);
    curl(&["--http2-prior-knowledge", "-H", "Host: vhost.example", &format!("{web}/")]);
    let lines = wait_lines(&server.fx.path().join("access.log"), 4);
    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    let v: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    // (method, target, status, bytes, version)
    let expected = [
        ("GET", "/index.html", 200, INDEX.len(), "HTTP/1.1"),
        ("GET", "/missing?x=1&y=%22q%22", 404, "not found\n".len(), "HTTP/1.1"),
        ("HEAD", "/index.html", 200, 0, "HTTP/1.1"),
        ("GET", "/", 200, INDEX.len(), "HTTP/2.0"),
    ];
    // Lines are written when responses end; find each by method and target.
    let find = |method: &str, target: &str| -> serde_json::Value {
        v.iter()
            .find(|l| l["method"] == method && l["target"] == target)
            .cloned()
            .unwrap_or_else(|| panic!("no line for {method} {target}: {lines:#?}"))
    };
    for (method, target, status, bytes, version) in expected {
        let line = find(method, target);
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["target"], target, "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["bytes"], bytes, "{line}");
        assert_eq!(line["version"], version, "{line}");
        assert_eq!(line["site"], "main", "{line}");
        assert_eq!(line["peer"], "127.0.0.1", "{line}");
        assert!(line["duration_us"].is_u64(), "{line}");
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with(" GMT")), "{line}");
    }
    assert_eq!(find("GET", "/index.html")["user_agent"], "agent/1.0");
    assert_eq!(find("GET", "/index.html")["referer"], "http://ref.example/");
    assert_eq!(find("GET", "/")["host"], "vhost.example");
    // Admin requests are logged too, as the admin area.
    curl(&["-g", &format!("{}/healthz", server.url("admin"))]);
    let lines = wait_lines(&server.fx.path().join("access.log"), 5);
    let last: serde_json::Value = serde_json::from_str(&lines[4]).expect("json");
    assert_eq!((last["target"].as_str(), last["status"].as_u64(), last["peer"].as_str()), (Some("/healthz"), Some(200), Some("::1")));
}

#[test]
fn access_log_combined() {
    let server = fixture().start(&with_admin("format = \"combined\"\noutput = \"{dir}/access.log\""));
    let web = server.url("web");
    curl(&["-A", "agent/1.0", "-e", "http://ref.example/", &format!("{web}/index.html")]);
    curl(&["-A", "evil\" agent", &format!("{web}/missing")]);
    let lines = wait_lines(&server.fx.path().join("access.log"), 2);
    let first = lines.iter().find(|l| l.contains("/index.html")).expect("index line");
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    // [26/Nov/2026:10:41:19 +0000]
    let time = first.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(t, _)| t).expect("time in brackets");
    assert_eq!(time.len(), 26, "{time}");
    assert!(time.ends_with(" +0000") && time.as_bytes()[2] == b'/' && time.as_bytes()[6] == b'/', "{time}");
    assert!(
        first.ends_with(&format!("] \"GET /index.html HTTP/1.1\" 200 {} \"http://ref.example/\" \"agent/1.0\"", INDEX.len())),
        "{first}"
    );
    let second = lines.iter().find(|l| l.contains("/missing")).expect("missing line");
    assert!(second.ends_with("\"GET /missing HTTP/1.1\" 404 10 \"-\" \"evil\\\" agent\""), "a quote must be escaped: {second}");
}

#[test]
fn access_log_is_reopened_on_sighup() {
    let server = fixture().start(&with_admin("format = \"json\"\noutput = \"{dir}/access.log\""));
    let web = server.url("web");
    let log = server.fx.path().join("access.log");
    curl(&[&format!("{web}/index.html?before")]);
    wait_lines(&log, 1);
    // What logrotate does: move the file away, then SIGHUP.
    let rotated = server.fx.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    curl(&[&format!("{web}/index.html?after")]);
    let lines = wait_lines(&log, 1);
    assert!(lines[0].contains("/index.html?after"), "{lines:?}");
    let old = std::fs::read_to_string(&rotated).expect("rotated log");
    assert!(old.contains("?before") && !old.contains("?after"), "{old}");
}

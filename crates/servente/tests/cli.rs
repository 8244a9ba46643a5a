//! The command line: `check`, `cert`, `config`, help, and `serve` flags over the embedded
//! default config.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Fixture, curl, run_servente};

const BAD: &str = r#"[server]
max_conections = 5

[[listener]]
name = "web"
address = "nowhere"

[[site]]
name = "main"
root = "root"
listing = "yes"
"#;

/// Splits `error: FILE:LINE: KEY: MESSAGE` into (line, key, message).
fn parse_problem<'a>(line: &'a str, file: &str) -> Option<(usize, &'a str, &'a str)> {
    let rest = line.strip_prefix("error: ")?.strip_prefix(file)?.strip_prefix(':')?;
    let (n, rest) = rest.split_once(": ")?;
    let (key, message) = rest.split_once(": ")?;
    Some((n.parse().ok()?, key, message))
}

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let fx = Fixture::new();
    let path = fx.write("bad.toml", BAD);
    let file = path.display().to_string();
    let (code, stdout, stderr) = run_servente(&["check", "--config", &file]);
    assert_ne!(code, 0, "check accepted a bad config: {stdout}");
    let problems: Vec<(usize, &str, &str)> = stderr.lines().filter_map(|l| parse_problem(l, &file)).collect();
    let errors = stderr.lines().filter(|l| l.starts_with("error: ")).count();
    assert_eq!(problems.len(), errors, "every problem is FILE:LINE: key: message:\n{stderr}");
    let find =
        |key: &str| problems.iter().find(|(_, k, _)| *k == key).copied().unwrap_or_else(|| panic!("no problem for {key}:\n{stderr}"));
    let (line, _, message) = find("server.max_conections");
    assert_eq!(line, 2);
    assert!(message.contains("unknown key") && message.contains("did you mean `max_connections`"), "{message}");
    let (line, _, message) = find("listener[0].address");
    // The line of the listener's table or of the key itself.
    assert!(line == 4 || line == 6, "line {line}");
    assert!(message.contains("`nowhere` is not a listen address"), "{message}");
    let (line, _, message) = find("site[0].listing");
    assert_eq!(line, 11);
    assert!(message.contains("true or false"), "{message}");
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(stderr.contains(&format!("{file}: 3 problems")), "{stderr}");
}

#[test]
fn check_reports_problems_found_after_reading() {
    let fx = Fixture::new();
    let toml = "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[site]]\nname = \"main\"\nroot = \"no/such/folder\"\nlisteners = [\"other\"]\n\n[[site.redirect]]\nfrom = \"old\"\nto = \"/new\"\nstatus = 200\n";
    let path = fx.write("semantic.toml", toml);
    let file = path.display().to_string();
    let (code, _, stderr) = run_servente(&["check", "--config", &file]);
    assert_eq!(code, 1, "{stderr}");
    for needle in [
        "listener[1].name: another listener is already named `web`",
        "site[0].root: cannot open",
        "site[0].listeners: there is no `web` listener named `other`",
        "site[0].redirect[0].from: must be a path starting with `/`",
        "site[0].redirect[0].status: 200 is not a redirect status",
    ] {
        let line = stderr.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("missing {needle:?} in:\n{stderr}"));
        assert!(line.starts_with(&format!("error: {file}:")), "{line}");
    }
    // A certificate that does not exist is reported by check too.
    let tls = "[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n\n[[site]]\nname = \"main\"\nroot = \".\"\n";
    let path = fx.write("tls.toml", tls);
    let (code, _, stderr) = run_servente(&["check", "--config", &path.display().to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("listener[0].tls.cert") && stderr.contains("missing.pem"), "{stderr}");
}

#[test]
fn check_accepts_a_good_config() {
    let fx = Fixture::new();
    fx.mkdir("root");
    common::self_signed("localhost", &fx.path().join("certs"));
    let toml = "[server]\ndata_dir = \"data\"\n\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"tls\"\naddress = \"[::1]:0\"\n[listener.tls]\ncert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"\n\n[[listener]]\nname = \"admin\"\naddress = \"unix:admin.sock\"\nrole = \"admin\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n";
    let path = fx.write("good.toml", toml);
    let file = path.display().to_string();
    let (code, stdout, stderr) = run_servente(&["check", "--config", &file]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{file}: ok (3 listeners, 1 sites)"));
    assert!(!fx.path().join("data/admin.sock").exists(), "check must not bind anything");
}

#[test]
fn serve_refuses_a_bad_config_with_exit_2() {
    let fx = Fixture::new();
    let path = fx.write("bad.toml", BAD);
    let file = path.display().to_string();
    let (code, _, stderr) = run_servente(&["serve", "--config", &file]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("error: {file}:2: server.max_conections: unknown key")), "{stderr}");
    let (code, _, stderr) = run_servente(&["serve", "--config", &fx.path().join("absent.toml").display().to_string()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the config"), "{stderr}");
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run_servente(&["--help"]);
    assert_eq!(code, 0);
    for word in ["serve", "check", "cert", "config", "Usage: servente"] {
        assert!(stdout.contains(word), "--help does not mention {word}:\n{stdout}");
    }
    for args in [&["help", "serve"][..], &["serve", "--help"][..]] {
        let (code, stdout, _) = run_servente(args);
        assert_eq!(code, 0, "{args:?}");
        for word in ["--config", "--root", "--listen", "--admin", "--data-dir", "SIGHUP", "SIGTERM", "SIGINT"] {
            assert!(stdout.contains(word), "{args:?} does not mention {word}:\n{stdout}");
        }
    }
    let (code, stdout, _) = run_servente(&["help", "check"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--config"));
    let (code, stdout, _) = run_servente(&["help", "cert", "self-signed"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--host") && stdout.contains("--out-dir"), "{stdout}");
    let (code, stdout, _) = run_servente(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("servente "), "{stdout}");
    let (code, _, stderr) = run_servente(&["no-such-command"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no-such-command"), "{stderr}");
}

#[test]
fn cert_self_signed_writes_a_certificate_and_a_private_key() {
    let fx = Fixture::new();
    let out = fx.path().join("certs/new");
    let (code, stdout, stderr) =
        run_servente(&["cert", "self-signed", "--host", "example.test", "--host", "127.0.0.1", "--out-dir", &out.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("example.test, 127.0.0.1"), "{stdout}");
    let cert = std::fs::read_to_string(out.join("cert.pem")).expect("cert.pem");
    let key = std::fs::read_to_string(out.join("key.pem")).expect("key.pem");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "not a PKCS#8 key");
    let mode = std::fs::metadata(out.join("key.pem")).expect("key.pem").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is readable by others: {mode:o}");
}

#[test]
fn config_default_and_reference() {
    let (code, default, _) = run_servente(&["config", "default"]);
    assert_eq!(code, 0);
    assert!(default.contains("[[listener]]") && default.contains("[[site]]"), "{default}");
    // The printed default passes check.
    let fx = Fixture::new();
    let path = fx.write("default.toml", &default);
    let (code, stdout, stderr) = run_servente(&["check", "--config", &path.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    let (code, reference, _) = run_servente(&["config", "reference"]);
    assert_eq!(code, 0);
    assert!(reference.starts_with("# Configuration reference"), "{reference}");
    for key in ["`listener.address`", "`limits.header_read_timeout`", "`site.symlinks`", "`access_log.format`"] {
        assert!(reference.contains(key), "the reference misses {key}");
    }
}

#[test]
fn serve_flags_over_the_embedded_default() {
    let fx = Fixture::new();
    fx.write("share/note.txt", "shared by flag\n");
    fx.mkdir("share/folder");
    let root = fx.path().join("share");
    let data = fx.path().join("data");
    let args: Vec<String> = [
        "serve",
        "--root",
        &root.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "unix:flag.sock",
        "--admin",
        "off",
        "--data-dir",
        &data.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let server = fx.spawn(&args, &[], 2);
    let names: Vec<String> = server.announcements().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["cli", "cli1"], "only the --listen listeners run (no admin, no default ones)");
    let r = curl(&[&format!("{}/note.txt", server.url("cli"))]);
    assert_eq!((r.status, r.text()), (200, "shared by flag\n".to_string()));
    // The embedded default lists folders.
    let r = curl(&["-H", "Accept: application/json", &format!("{}/", server.url("cli"))]);
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json listing");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    // A relative Unix socket is inside --data-dir.
    let sock = data.join("flag.sock");
    assert_eq!(server.url("cli1"), format!("unix:{}", sock.display()));
    let r = curl(&["--unix-socket", &sock.display().to_string(), "http://localhost/note.txt"]);
    assert_eq!(r.status, 200);
}

/// In `config reference` (and docs/config.md, generated from it), every key is listed under
/// the heading of the table it belongs to.
#[test]
fn reference_lists_each_key_under_its_own_table() {
    let (code, reference, _) = run_servente(&["config", "reference"]);
    assert_eq!(code, 0);
    let mut heading = String::new();
    let mut misplaced = Vec::new();
    for line in reference.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            // "## `[[site.redirect]]`" -> "site.redirect"
            heading = h.trim_matches(|c| c == '`' || c == '[' || c == ']').to_string();
            continue;
        }
        let Some(key) = line.strip_prefix("- `").and_then(|l| l.split_once('`')).map(|(k, _)| k) else { continue };
        let table = key.rsplit_once('.').map(|(t, _)| t).unwrap_or("");
        if table != heading {
            misplaced.push(format!("`{key}` is listed under `{heading}`"));
        }
    }
    assert!(misplaced.is_empty(), "{misplaced:#?}");
}

/// The training run of the profile-guided release build (scripts/build-release) checks every
/// answer it gets; run quickly here, it keeps that workload in step with the server: a route or
/// config key that changed fails this test instead of training error paths.
#[test]
fn the_pgo_training_run_gets_the_answers_it_expects() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pgo-train");
    let mut cmd = std::process::Command::new("python3");
    cmd.args([script, "--quick", common::BIN]);
    let (code, stdout, stderr) = common::run_bounded(cmd, None, std::time::Duration::from_secs(120));
    assert_eq!(code, 0, "pgo-train failed: {stderr}");
    assert!(stdout.contains("pgo-train: done"), "{stdout}");
}

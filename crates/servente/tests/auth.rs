//! The user directory from the outside: the `servente user|group|token` commands, the admin
//! API (sessions, CSRF, tokens, Basic, the config endpoints), sign-in throttling and its audit
//! trail, access rules of sites, user names in the logs, and a store that survives writers
//! killed mid-change.
//!
//! Every server here runs on loopback with port 0 and its own data folder; the web listener is
//! on 127.0.0.1 and the admin one on ::1 (two sockets, so port 0 cannot give them the same one).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{BIN, Fixture, Resp, Server, WAIT, curl, run_servente_with_input, wait_until};
use serde_json::{Value, json};

/// The first administrator's password, given to the server on first run.
const ADMIN_PW: &str = "admin-password-1";

/// A config with a web and an admin listener and one site `main` on `root`.
fn toml(auth: &str, access_log: &str, site_extra: &str) -> String {
    format!(
        r#"[server]
data_dir = "{{dir}}/data"

[access_log]
{access_log}

[auth]
{auth}

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
{site_extra}
"#
    )
}

const LOG_OFF: &str = "output = \"off\"";

fn fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "<p>home</p>\n");
    fx.write("root/public/p.txt", "public\n");
    fx.write("root/private/x.txt", "private x\n");
    fx.write("root/members/m.txt", "members only\n");
    fx.write("root/members/index.html", "<p>members</p>\n");
    fx
}

/// Starts servente; on first run it creates `admin` (group `admins`) with [`ADMIN_PW`].
fn start(fx: Fixture, toml: &str) -> Server {
    fx.start_with_env(toml, &[("SERVENTE_ADMIN_PASSWORD", ADMIN_PW)])
}

fn data_dir(server: &Server) -> PathBuf {
    server.fx.path().join("data")
}

// ---------------------------------------------------------------------------------------------
// The command line

/// What a `servente user|group|token` command did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `servente ARGS --data-dir DATA` with `stdin` (if any) as standard input, bounded by
/// [`WAIT`].
fn cli(data: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut full: Vec<std::ffi::OsString> = args.iter().map(|a| a.into()).collect();
    full.push("--data-dir".into());
    full.push(data.into());
    let (code, stdout, stderr) = run_servente_with_input(&full, stdin);
    Out { code, stdout, stderr }
}

/// Runs a command that must succeed; returns its standard output.
fn cli_ok(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = cli(data, args, stdin);
    assert_eq!(out.code, 0, "servente {args:?} failed: {out:?}");
    out.stdout
}

/// A refused command: exit code 1, nothing on stdout, one `error:` line saying `needle`.
fn assert_cli_error(out: &Out, needle: &str) {
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {out:?}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected an `error:` line saying {needle:?}: {out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn user_json(data: &Path, name: &str) -> Value {
    parse(&cli_ok(data, &["user", "show", name, "--json"], None))
}

/// The user names `user list --json` shows.
fn user_names(data: &Path) -> Vec<String> {
    let list = parse(&cli_ok(data, &["user", "list", "--json"], None));
    list.as_array().expect("an array of users").iter().map(|u| u["name"].as_str().expect("name").to_string()).collect()
}

/// Creates a token with the CLI; returns (id, secret).
fn token_create(data: &Path, user: &str, name: &str, scopes: &[&str]) -> (String, String) {
    let mut args = vec!["token", "create", "--user", user, "--name", name];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = cli_ok(data, &args, None);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("created token "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token id in {out}"));
    let secret = out.lines().find_map(|l| l.strip_prefix("secret: ")).unwrap_or_else(|| panic!("no secret in {out}"));
    (id.to_string(), secret.to_string())
}

/// The part of a token secret that is nowhere but in the secret (`st_ID_RANDOM`; the id is
/// hex, the random part base64url, which may hold `_` too).
fn secret_part(secret: &str) -> &str {
    let random = secret.strip_prefix("st_").and_then(|rest| rest.split_once('_')).map(|(_, r)| r);
    random.filter(|r| r.len() >= 20).unwrap_or_else(|| panic!("not a token secret: {secret}"))
}

#[test]
fn cli_manages_users_groups_and_tokens() {
    let fx = Fixture::new();
    let data = fx.path().join("data");
    let ok = |args: &[&str], stdin: Option<&str>| cli_ok(&data, args, stdin);
    let run = |args: &[&str], stdin: Option<&str>| cli(&data, args, stdin);

    // An administrator first, so that "the last administrator" has someone to protect.
    ok(&["group", "add", "admins"], None);
    ok(&["user", "add", "root", "--group", "admins", "--password-stdin"], Some("root-password-1\n"));

    // A user with a password from stdin: nothing is printed but the confirmation.
    let out = ok(&["user", "add", "alice", "--password-stdin"], Some("alice-password-1\n"));
    assert_eq!(out.trim(), "created user alice");
    let list = ok(&["user", "list"], None);
    let line = list.lines().find(|l| l.starts_with("alice ")).unwrap_or_else(|| panic!("alice not listed:\n{list}"));
    assert!(line.trim_end().ends_with("active"), "{line}");
    let alice = user_json(&data, "alice");
    assert_eq!((alice["name"].as_str(), alice["disabled"].as_bool()), (Some("alice"), Some(false)), "{alice}");
    assert_eq!(alice["groups"], json!([]), "{alice}");
    assert!(alice["created"].as_i64().is_some_and(|t| t > 0) && alice["password_changed"].is_i64(), "{alice}");
    assert!(!alice.to_string().contains("argon2"), "the password hash is never shown: {alice}");

    // Groups and members.
    assert_eq!(ok(&["group", "add", "staff"], None).trim(), "created group staff");
    assert_eq!(ok(&["group", "members", "staff", "--add", "alice"], None).trim(), "alice");
    assert_eq!(user_json(&data, "alice")["groups"], json!(["staff"]));

    // A generated password is printed once, and only there.
    let out = ok(&["user", "passwd", "alice"], None);
    let pw = out.lines().find_map(|l| l.strip_prefix("password: ")).unwrap_or_else(|| panic!("no generated password in {out}"));
    assert!(pw.len() >= 12 && !pw.contains(char::is_whitespace), "{pw:?}");
    assert_eq!(out.matches(pw).count(), 1, "{out}");
    for args in [&["user", "list"][..], &["user", "list", "--json"], &["user", "show", "alice"], &["user", "show", "alice", "--json"]] {
        assert!(!ok(args, None).contains(pw), "{args:?} shows the password");
    }
    let out = ok(&["user", "passwd", "alice", "--password-stdin"], Some("alice-password-2\n"));
    assert!(!out.contains("password:"), "{out}");

    // Disabled and enabled again.
    ok(&["user", "disable", "alice"], None);
    assert_eq!(user_json(&data, "alice")["disabled"], true);
    let list = ok(&["user", "list"], None);
    assert!(list.lines().any(|l| l.starts_with("alice ") && l.trim_end().ends_with("disabled")), "{list}");
    ok(&["user", "enable", "alice"], None);
    assert_eq!(user_json(&data, "alice")["disabled"], false);

    // Tokens: the secret is printed once; listings never show it.
    let (id, secret) = token_create(&data, "alice", "t", &["user"]);
    assert!(secret.starts_with("st_") && secret.len() > 30, "{secret}");
    let list = ok(&["token", "list"], None);
    let line = list.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("token {id} not listed:\n{list}"));
    assert!(line.contains("alice") && line.contains(" user ") && line.trim_end().ends_with("never"), "{line}");
    let list_json = ok(&["token", "list", "--json"], None);
    for text in [&list, &list_json] {
        assert!(!text.contains(secret_part(&secret)), "a listing shows the secret:\n{text}");
    }
    let tokens = parse(&list_json);
    let t = tokens.as_array().and_then(|a| a.iter().find(|t| t["id"] == id.as_str())).unwrap_or_else(|| panic!("{tokens}"));
    assert_eq!(
        (t["user"].as_str(), t["name"].as_str(), &t["scopes"], &t["expires"]),
        (Some("alice"), Some("t"), &json!(["user"]), &Value::Null)
    );
    assert_eq!(ok(&["token", "revoke", &id], None).trim(), format!("revoked token {id}"));
    assert!(!ok(&["token", "list"], None).contains(&id));
    assert_cli_error(&run(&["token", "revoke", &id], None), "not found");

    // Refusals: exit code 1 and one clear line, and nothing changed.
    assert_cli_error(&run(&["user", "add", "alice", "--password-stdin"], Some("another-password\n")), "already exists");
    assert_cli_error(&run(&["user", "add", "Bad Name"], None), "not a valid user name");
    assert_cli_error(&run(&["user", "add", "bob", "--password-stdin"], Some("short\n")), "at least 8 characters");
    assert_cli_error(&run(&["user", "add", "carol", "--group", "nope", "--password-stdin"], Some("carol-password\n")), "group `nope`");
    assert_cli_error(&run(&["group", "members", "nope", "--add", "alice"], None), "group `nope`");
    assert_cli_error(&run(&["group", "add", "staff"], None), "already exists");
    assert_cli_error(&run(&["token", "create", "--user", "alice", "--name", "x", "--scope", "root"], None), "not a scope");
    assert_cli_error(&run(&["token", "create", "--user", "ghost", "--name", "x", "--scope", "user"], None), "user `ghost`");
    assert_cli_error(&run(&["user", "remove", "root"], None), "last administrator");
    assert_cli_error(&run(&["group", "members", "admins", "--remove", "root"], None), "last administrator");
    assert_cli_error(&run(&["user", "show", "ghost"], None), "not found");
    assert_eq!(user_names(&data), ["alice", "root"]);
    assert_eq!(user_json(&data, "root")["groups"], json!(["admins"]));

    // Removing a user takes their memberships along.
    assert_eq!(ok(&["user", "remove", "alice"], None).trim(), "removed user alice");
    assert_cli_error(&run(&["user", "show", "alice"], None), "not found");
    assert_eq!(ok(&["group", "members", "staff"], None), "");
    assert_eq!(user_names(&data), ["root"]);
}

// ---------------------------------------------------------------------------------------------
// The admin API

/// curl arguments that present credentials.
fn jar(path: &Path) -> Vec<String> {
    vec!["-b".into(), path.display().to_string()]
}

fn jar_csrf(path: &Path, csrf: &str) -> Vec<String> {
    vec!["-b".into(), path.display().to_string(), "-H".into(), format!("X-CSRF-Token: {csrf}")]
}

fn bearer(secret: &str) -> Vec<String> {
    vec!["-H".into(), format!("Authorization: Bearer {secret}")]
}

fn basic(user: &str, password: &str) -> Vec<String> {
    vec!["-u".into(), format!("{user}:{password}")]
}

fn cookie(value: &str) -> Vec<String> {
    vec!["-H".into(), format!("Cookie: servente_session={value}")]
}

/// `METHOD` on the admin listener with `args` (credentials, headers, body) before the URL.
fn call_args(server: &Server, method: &str, path: &str, args: &[String]) -> Resp {
    let mut all: Vec<String> = vec!["-g".into(), "-X".into(), method.into()];
    all.extend(args.iter().cloned());
    all.push(format!("{}{path}", server.url("admin")));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    curl(&refs)
}

/// `METHOD` on the admin listener with `auth` and, if any, a JSON body.
fn call(server: &Server, method: &str, path: &str, auth: &[String], body: Option<&Value>) -> Resp {
    let mut args = auth.to_vec();
    if let Some(b) = body {
        args.extend(["-H".into(), "Content-Type: application/json".into(), "--data-binary".into(), b.to_string()]);
    }
    call_args(server, method, path, &args)
}

/// The JSON body of an API answer (which must say it is JSON).
fn body_json(r: &Resp) -> Value {
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("application/json")), "not JSON: {r:?}");
    parse(&r.text())
}

/// An API error: the status, and `{"error": "..."}`.
fn assert_api_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.text(), r.stderr);
    let v = body_json(r);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty() && !e.contains('\n')), "{what}: {v}");
}

/// Signs in with `POST /api/session`, keeping the cookie in the jar; returns the answer.
fn sign_in(server: &Server, jar: &Path, user: &str, password: &str) -> Resp {
    let body = json!({ "user": user, "password": password }).to_string();
    let args: Vec<String> =
        vec!["-c".into(), jar.display().to_string(), "-H".into(), "Content-Type: application/json".into(), "--data-binary".into(), body];
    call_args(server, "POST", "/api/session", &args)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|u| u["name"].as_str().unwrap_or_else(|| panic!("no name: {u}")).to_string())
        .collect()
}

#[test]
fn admin_api_sessions_csrf_and_input_errors() {
    let server = start(fixture(), &toml("", LOG_OFF, ""));
    let admin_jar = server.fx.path().join("admin.jar");

    // Signing in sets a locked-down cookie and answers with the session (and its CSRF token).
    let r = sign_in(&server, &admin_jar, "admin", ADMIN_PW);
    assert_eq!(r.status, 200, "{} {}", r.text(), r.stderr);
    let session = body_json(&r);
    assert_eq!(session["user"], "admin", "{session}");
    assert!(session["groups"].as_array().is_some_and(|g| g.contains(&json!("admins"))), "{session}");
    let csrf = session["csrf"].as_str().filter(|c| c.len() >= 16).unwrap_or_else(|| panic!("no CSRF token: {session}")).to_string();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!(session["expires"].as_i64().is_some_and(|e| e > now), "{session}");
    let set_cookie = r.header("set-cookie").expect("Set-Cookie").to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(part), "{set_cookie} lacks {part}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP gets no Secure cookie: {set_cookie}");
    let value = set_cookie
        .split(';')
        .next()
        .and_then(|c| c.strip_prefix("servente_session="))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{set_cookie}"))
        .to_string();
    assert_ne!(value, csrf);
    let jar_text = std::fs::read_to_string(&admin_jar).expect("cookie jar");
    assert!(
        jar_text.lines().any(|l| l.starts_with("#HttpOnly_") && l.ends_with(&value)),
        "curl did not keep an HttpOnly cookie:\n{jar_text}"
    );

    // A state-changing request without the CSRF token (or with a wrong one) changes nothing.
    let bob = json!({ "name": "bob", "password": "bob-password-1" });
    assert_api_error(&call(&server, "POST", "/api/users", &jar(&admin_jar), Some(&bob)), 403, "POST without X-CSRF-Token");
    assert_api_error(&call(&server, "POST", "/api/users", &jar_csrf(&admin_jar, "not-the-token"), Some(&bob)), 403, "wrong X-CSRF-Token");
    let r = call(&server, "GET", "/api/users", &jar(&admin_jar), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&body_json(&r)), ["admin"]);

    // With it, users are created; every kind of bad input has its status.
    let with = jar_csrf(&admin_jar, &csrf);
    let r = call(&server, "POST", "/api/users", &with, Some(&bob));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = body_json(&r);
    assert_eq!((created["name"].as_str(), &created["groups"], created.get("password")), (Some("bob"), &json!([]), None), "{created}");
    assert_api_error(&call(&server, "POST", "/api/users", &with, Some(&bob)), 409, "duplicate user");
    assert_api_error(&call(&server, "POST", "/api/users", &with, Some(&json!({ "name": "Bad Name" }))), 422, "bad name");
    assert_api_error(&call(&server, "POST", "/api/users", &with, Some(&json!({ "name": "dave", "role": "admin" }))), 422, "unknown field");
    let mut args = with.clone();
    args.extend(["-H".into(), "Content-Type: application/json".into(), "--data-binary".into(), "{\"name\": ".into()]);
    assert_api_error(&call_args(&server, "POST", "/api/users", &args), 400, "malformed JSON");
    let mut args = with.clone();
    args.extend(["-H".into(), "Content-Type: text/plain".into(), "--data-binary".into(), json!({ "name": "dave" }).to_string()]);
    assert_api_error(&call_args(&server, "POST", "/api/users", &args), 415, "text/plain body");
    let big = server.fx.write("big.json", json!({ "name": "dave", "display_name": "x".repeat(70 * 1024) }).to_string());
    let mut args = with.clone();
    args.extend(["-H".into(), "Content-Type: application/json".into(), "--data-binary".into(), format!("@{}", big.display())]);
    assert_api_error(&call_args(&server, "POST", "/api/users", &args), 413, "body over 64 KiB");
    // Without a password one is generated and shown in this answer.
    let r = call(&server, "POST", "/api/users", &with, Some(&json!({ "name": "carol" })));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(body_json(&r)["password"].as_str().is_some_and(|p| p.len() >= 12), "{}", r.text());
    let r = call(&server, "GET", "/api/users", &jar(&admin_jar), None);
    assert_eq!(names(&body_json(&r)), ["admin", "bob", "carol"], "refused requests left nothing behind");

    // A signed-in user who is not an administrator may see their session, not the API.
    let bob_jar = server.fx.path().join("bob.jar");
    let r = sign_in(&server, &bob_jar, "bob", "bob-password-1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_json(&r)["groups"], json!([]));
    assert_eq!(body_json(&call(&server, "GET", "/api/session", &jar(&bob_jar), None))["user"], "bob");
    assert_api_error(&call(&server, "GET", "/api/users", &jar(&bob_jar), None), 403, "non-admin session");

    // Administrators cannot lock themselves out.
    assert_api_error(&call(&server, "DELETE", "/api/users/admin", &with, None), 422, "deleting yourself");
    assert_api_error(&call(&server, "PATCH", "/api/users/admin", &with, Some(&json!({ "disabled": true }))), 422, "disabling yourself");
    assert_api_error(&call(&server, "DELETE", "/api/groups/admins", &with, None), 422, "removing the admins group");
    // A new password ends the user's sessions; a removed user is gone.
    let r = call(&server, "PUT", "/api/users/bob/password", &with, Some(&json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(body_json(&r)["password"].as_str().is_some_and(|p| p.len() >= 12), "{}", r.text());
    assert_api_error(&call(&server, "GET", "/api/session", &jar(&bob_jar), None), 401, "a session after a password change");
    assert_eq!(call(&server, "DELETE", "/api/users/carol", &with, None).status, 204);
    assert_api_error(&call(&server, "GET", "/api/users/carol", &with, None), 404, "a removed user");
    assert_api_error(&call(&server, "DELETE", "/api/users/carol", &with, None), 404, "removing twice");

    // Signing out needs the CSRF token too, then makes the cookie useless.
    assert_api_error(&call(&server, "DELETE", "/api/session", &jar(&admin_jar), None), 403, "sign-out without X-CSRF-Token");
    assert_eq!(call(&server, "GET", "/api/session", &jar(&admin_jar), None).status, 200, "the session survived a refused sign-out");
    let mut args = with.clone();
    args.extend(["-c".into(), admin_jar.display().to_string()]);
    let r = call_args(&server, "DELETE", "/api/session", &args);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.header("set-cookie").is_some_and(|c| c.starts_with("servente_session=;") && c.contains("Max-Age=0")), "{r:?}");
    let r = call(&server, "GET", "/api/users", &cookie(&value), None);
    assert_api_error(&r, 401, "a signed-out cookie");
    assert_api_error(&call(&server, "GET", "/api/session", &cookie(&value), None), 401, "a signed-out cookie");
    // Forged cookies (random, or the CSRF token) and no credentials at all.
    assert_api_error(&call(&server, "GET", "/api/users", &cookie("Zm9yZ2VkLWNvb2tpZS12YWx1ZQ"), None), 401, "forged cookie");
    assert_api_error(&call(&server, "GET", "/api/users", &cookie(&csrf), None), 401, "the CSRF token as cookie");
    let r = call(&server, "GET", "/api/users", &[], None);
    assert_api_error(&r, 401, "no credentials");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");
}

#[test]
fn admin_api_tokens_basic_openapi_and_status() {
    let server = start(fixture(), &toml("", LOG_OFF, ""));
    let data = data_dir(&server);
    // The running server sees what the command line writes.
    cli_ok(&data, &["user", "add", "bob", "--password-stdin"], Some("bob-password-1\n"));
    let (reader_id, reader) = token_create(&data, "admin", "reader", &["admin:read"]);
    let (_, bobs) = token_create(&data, "bob", "bob's", &["admin"]);

    // The API description needs no credentials.
    let r = call(&server, "GET", "/api/openapi.json", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = body_json(&r);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    assert!(doc["paths"]["/api/users"].is_object());

    // A read-only token reads, and may not write.
    let r = call(&server, "GET", "/api/users", &bearer(&reader), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&body_json(&r)), ["admin", "bob"]);
    let eve = json!({ "name": "eve", "password": "eve-password-1" });
    assert_api_error(&call(&server, "POST", "/api/users", &bearer(&reader), Some(&eve)), 403, "admin:read token writing");
    assert_api_error(
        &call(&server, "DELETE", &format!("/api/tokens/{reader_id}"), &bearer(&reader), None),
        403,
        "admin:read token revoking",
    );
    let r = call(&server, "GET", "/api/tokens", &bearer(&reader), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_json(&r).as_array().map(Vec::len), Some(2), "{}", r.text());
    for s in [&reader, &bobs] {
        assert!(!r.text().contains(secret_part(s)), "GET /api/tokens shows a secret: {}", r.text());
    }
    // A token of someone who is not an administrator, whatever its scope.
    assert_api_error(&call(&server, "GET", "/api/users", &bearer(&bobs), None), 403, "token of a non-admin");
    // A disabled user's tokens stop working, and work again once the user is enabled.
    let admin = basic("admin", ADMIN_PW);
    let r = call(&server, "PATCH", "/api/users/bob", &admin, Some(&json!({ "disabled": true })));
    assert_eq!((r.status, &body_json(&r)["disabled"]), (200, &json!(true)), "{}", r.text());
    assert_api_error(&call(&server, "GET", "/api/users", &bearer(&bobs), None), 401, "token of a disabled user");
    let r = call(&server, "PATCH", "/api/users/bob", &admin, Some(&json!({ "disabled": false })));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_api_error(&call(&server, "GET", "/api/users", &bearer(&bobs), None), 403, "token of a non-admin, enabled again");
    // Unknown and malformed tokens.
    assert_api_error(&call(&server, "GET", "/api/users", &bearer(&format!("{reader}x")), None), 401, "altered token");
    assert_api_error(&call(&server, "GET", "/api/users", &bearer("st_nothing"), None), 401, "unknown token");

    // Basic from loopback works, for writes too (no session, so no CSRF token).
    let r = call(&server, "GET", "/api/users", &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&server, "POST", "/api/users", &admin, Some(&eve));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_api_error(&call(&server, "GET", "/api/users", &basic("admin", "not-the-password"), None), 401, "wrong Basic password");
    assert_api_error(&call(&server, "GET", "/api/users", &basic("bob", "bob-password-1"), None), 403, "Basic of a non-admin");

    // A revoked token stops working at once.
    let r = call(&server, "DELETE", &format!("/api/tokens/{reader_id}"), &admin, None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_api_error(&call(&server, "GET", "/api/users", &bearer(&reader), None), 401, "revoked token");
    assert_api_error(&call(&server, "DELETE", &format!("/api/tokens/{reader_id}"), &admin, None), 404, "revoking twice");

    // The command line finds the same directory through the config file.
    let config = server.fx.config_path().display().to_string();
    let (code, out, err) = common::run_servente(&["user", "list", "--json", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&parse(&out)), ["admin", "bob", "eve"]);

    // Status has the documented fields, with the web site's requests counted.
    assert_eq!(curl(&[&format!("{}/index.html", server.url("web"))]).status, 200);
    let mut status = Value::Null;
    let counted = wait_until(Duration::from_secs(5), || {
        let r = call(&server, "GET", "/api/status", &admin, None);
        assert_eq!(r.status, 200, "{}", r.text());
        status = body_json(&r);
        status["sites"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "main")).is_some_and(|s| s["requests"].as_u64() >= Some(1))
    });
    assert!(counted, "the web request is not counted: {status}");
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()), "{status}");
    for key in [
        "started",
        "uptime_seconds",
        "connections_open",
        "connections_total",
        "tls_handshakes",
        "tls_handshake_failures",
        "requests_total",
        "bytes_total",
    ] {
        assert!(status[key].is_u64(), "{key} missing or not a count: {status}");
    }
    for class in ["2xx", "3xx", "4xx", "5xx"] {
        assert!(status["responses"][class].is_u64(), "responses.{class}: {status}");
    }
    let main = status["sites"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "main")).expect("site main");
    assert!(main["bytes"].is_u64() && main["responses"]["2xx"].as_u64() >= Some(1), "{main}");
}

#[test]
fn admin_api_config_validate_and_apply() {
    let fx = fixture();
    fx.write("root2/index.html", "<p>second</p>\n");
    let server = start(fx, &toml("", LOG_OFF, ""));
    let admin = basic("admin", ADMIN_PW);
    let file = server.fx.config_path();
    let original = std::fs::read_to_string(&file).expect("config file");
    let web = server.url("web");

    let r = call(&server, "GET", "/api/config", &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let view = body_json(&r);
    assert_eq!(view["text"].as_str(), Some(original.as_str()));
    assert_eq!(view["persisted"], true);
    assert_eq!(view["source"].as_str(), Some(file.display().to_string().as_str()));

    // A broken config: every problem names the line and the key.
    let broken = format!("{original}\n[[site]]\nname = \"x\"\nroot = \"root\"\nbogus_key = 1\n");
    let line = broken.lines().position(|l| l.starts_with("bogus_key")).expect("bogus line") + 1;
    let r = call(&server, "POST", "/api/config/validate", &admin, Some(&json!({ "text": broken })));
    assert_api_error(&r, 422, "validate a broken config");
    let problems = body_json(&r)["problems"].clone();
    assert!(
        problems
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.as_str().is_some_and(|p| p.contains(&format!(":{line}: site[1].bogus_key"))))),
        "no problem names line {line} and site[1].bogus_key: {problems}"
    );
    let r = call(&server, "POST", "/api/config/validate", &admin, Some(&json!({ "text": original })));
    assert_eq!((r.status, body_json(&r)), (200, json!({ "ok": true })), "{}", r.text());

    // Applying it is refused, and the old config keeps running (and stays in the file).
    let r = call(&server, "POST", "/api/config/apply", &admin, Some(&json!({ "text": broken })));
    assert_api_error(&r, 422, "apply a broken config");
    assert!(body_json(&r)["problems"].as_array().is_some_and(|p| !p.is_empty()), "{}", r.text());
    assert_eq!(std::fs::read_to_string(&file).expect("config file"), original);
    assert_eq!(body_json(&call(&server, "GET", "/api/config", &admin, None))["text"].as_str(), Some(original.as_str()));
    let r = curl(&[&format!("{web}/index.html")]);
    assert_eq!((r.status, r.text().as_str()), (200, "<p>home</p>\n"));

    // A valid config with a second site takes effect and is saved.
    let second = format!("{original}\n[[site]]\nname = \"second\"\nhosts = [\"second.test\"]\nroot = \"root2\"\n");
    let r = call(&server, "POST", "/api/config/apply", &admin, Some(&json!({ "text": second })));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_json(&r), json!({ "ok": true, "persisted": true }));
    let r = curl(&["-H", "Host: second.test", &format!("{web}/")]);
    assert_eq!((r.status, r.text().as_str()), (200, "<p>second</p>\n"), "the new site is not served");
    let r = curl(&[&format!("{web}/")]);
    assert_eq!((r.status, r.text().as_str()), (200, "<p>home</p>\n"));
    assert_eq!(std::fs::read_to_string(&file).expect("config file"), second, "the applied config is not saved");
    let r = call(&server, "GET", "/api/sites", &admin, None);
    assert_eq!(names(&body_json(&r)), ["main", "second"]);
    assert_eq!(body_json(&call(&server, "GET", "/api/config", &admin, None))["text"].as_str(), Some(second.as_str()));
}

#[test]
fn sessions_end_after_session_ttl() {
    // Session times are whole seconds: a 3 s session lasts between 2 and 3 s.
    let server = start(fixture(), &toml("session_ttl = \"3s\"", LOG_OFF, ""));
    let jar = server.fx.path().join("admin.jar");
    let signed_in = Instant::now();
    let r = sign_in(&server, &jar, "admin", ADMIN_PW);
    let answered = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let set_cookie = r.header("set-cookie").expect("Set-Cookie").to_string();
    assert!(set_cookie.contains("Max-Age=3;"), "{set_cookie}");
    let value = set_cookie.split(';').next().and_then(|c| c.strip_prefix("servente_session=")).expect("cookie value").to_string();
    let r = call(&server, "GET", "/api/session", &cookie(&value), None);
    if signed_in.elapsed() < Duration::from_secs(2) {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The session was made before the sign-in answer came: it has ended 3 s after that.
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(answered.elapsed()));
    // Sent by hand: curl itself would drop the expired cookie.
    assert_api_error(&call(&server, "GET", "/api/session", &cookie(&value), None), 401, "an expired session");
}

// ---------------------------------------------------------------------------------------------
// Throttling

#[test]
fn failed_sign_ins_are_throttled_and_audited() {
    let site = "[[site.access]]\npath = \"/private/\"\nallow = [\"group:admins\"]\n";
    let server = start(fixture(), &toml("login_delay_after = 1\nlogin_lock_after = 3", LOG_OFF, site));
    // Bearer tokens are not passwords: they are not throttled, so the audit log stays readable.
    let (_, auditor) = token_create(&data_dir(&server), "admin", "auditor", &["admin:read"]);
    let jar = server.fx.path().join("admin.jar");

    let wrong = ["wrong-guess-1", "wrong-guess-2", "wrong-guess-3"];
    let started = Instant::now();
    for w in wrong {
        assert_api_error(&sign_in(&server, &jar, "admin", w), 401, "wrong password");
    }
    // Attempts 2 and 3 were slowed down (250 ms, then 500 ms).
    assert!(started.elapsed() >= Duration::from_millis(700), "no delay: {:?}", started.elapsed());
    // The fourth attempt is refused even with the right password.
    let r = sign_in(&server, &jar, "admin", ADMIN_PW);
    assert_api_error(&r, 429, "locked account");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no Retry-After: {r:?}"));
    assert!((1..=900).contains(&retry), "Retry-After: {retry}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    // So is Basic with the right password, and another account from the same address.
    assert_api_error(&call(&server, "GET", "/api/users", &basic("admin", ADMIN_PW), None), 429, "Basic on a locked account");
    assert_api_error(&sign_in(&server, &jar, "nobody", "whatever-password"), 429, "locked address");
    // The account is locked on the web listener too (another address: 127.0.0.1).
    let r = curl(&["-u", &format!("admin:{ADMIN_PW}"), &format!("{}/private/x.txt", server.url("web"))]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{r:?}");

    let r = call(&server, "GET", "/api/audit?limit=100", &bearer(&auditor), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let entries = body_json(&r);
    let logins: Vec<&Value> = entries.as_array().expect("audit list").iter().filter(|e| e["action"] == "login").collect();
    let failed = logins.iter().filter(|e| e["outcome"] == "failed" && e["target"] == "admin").count();
    let denied = logins.iter().filter(|e| e["outcome"] == "denied" && e["target"] == "admin").count();
    assert_eq!(failed, 3, "{logins:#?}");
    assert!(denied >= 2, "{logins:#?}");
    assert!(logins.iter().all(|e| e["time"].is_i64() && e["client"].is_string() && e["actor"].is_string()), "{logins:#?}");
    assert!(logins.iter().any(|e| e["client"] == "::1"), "{logins:#?}");
    assert!(!logins.iter().any(|e| e["outcome"] == "ok"), "no sign-in succeeded: {logins:#?}");
    for secret in wrong.iter().chain([&ADMIN_PW, &"whatever-password"]) {
        assert!(!text.contains(secret), "the audit log contains the password {secret}: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Site access rules

const ACCESS: &str = r#"
[[site.access]]
path = "/private/"
allow = ["group:staff"]

[[site.access]]
path = "/members/**"
allow = ["users"]
"#;

#[test]
fn site_access_rules() {
    let server = start(fixture(), &toml("", "format = \"json\"\noutput = \"{dir}/access.log\"", ACCESS));
    let data = data_dir(&server);
    cli_ok(&data, &["group", "add", "staff"], None);
    cli_ok(&data, &["user", "add", "alice", "--group", "staff", "--password-stdin"], Some("alice-password-1\n"));
    cli_ok(&data, &["user", "add", "bob", "--password-stdin"], Some("bob-password-1\n"));
    let (_, alice_user) = token_create(&data, "alice", "site", &["user"]);
    let (_, alice_read) = token_create(&data, "alice", "api", &["admin:read"]);
    let (revoked_id, revoked) = token_create(&data, "alice", "old", &["user"]);
    cli_ok(&data, &["token", "revoke", &revoked_id], None);
    let web = server.url("web");
    let get = |path: &str, auth: &[String]| {
        let mut args: Vec<String> = vec!["--path-as-is".into()];
        args.extend(auth.iter().cloned());
        args.push(format!("{web}{path}"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Not signed in: 401 with a Basic challenge (the client is on loopback).
    let r = get("/private/x.txt", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Basic ")), "{r:?}");
    assert!(!r.text().contains("private x"));
    // Signed in, not in the group: 403. In the group: the file.
    assert_eq!(get("/private/x.txt", &basic("bob", "bob-password-1")).status, 403);
    let r = get("/private/x.txt", &basic("alice", "alice-password-1"));
    assert_eq!((r.status, r.text().as_str()), (200, "private x\n"));
    // Other spellings of the same path are protected too.
    let spellings = [
        "/%70rivate/x.txt",
        "//private/x.txt",
        "/public/../private/x.txt",
        "/private/./x.txt",
        "/private//x.txt",
        "/./private/x.txt",
        "/%2e/private/x.txt",
        "/public/%2e%2e/private/x.txt",
        "/private/%78.txt",
        "/private%2fx.txt",
        "/private",
    ];
    let mut leaks = Vec::new();
    for p in spellings {
        let r = get(p, &[]);
        if r.status == 200 || r.text().contains("private x") {
            leaks.push(format!("{p}: {} {:?}", r.status, r.text()));
        }
    }
    assert!(leaks.is_empty(), "served without credentials:\n{}", leaks.join("\n"));
    // Request targets curl would not send: the absolute form, and `//` at the start as it is.
    for target in ["http://localhost/private/x.txt", "//private/x.txt", "/private/../private/x.txt"] {
        let mut s = common::connect(&server.addr("web"));
        write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send request");
        let r = common::read_response(&mut std::io::BufReader::new(s), false).expect("response");
        assert_eq!(r.status, 401, "{target}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(get("/%70rivate/x.txt", &[]).status, 401);
    assert_eq!(get("/%70rivate/x.txt", &basic("bob", "bob-password-1")).status, 403);
    assert_eq!(get("/%70rivate/x.txt", &basic("alice", "alice-password-1")).status, 200);
    // Tokens: the `user` scope acts as the user; another scope does not; a revoked one is unknown.
    let r = get("/private/x.txt", &bearer(&alice_user));
    assert_eq!((r.status, r.text().as_str()), (200, "private x\n"));
    assert_eq!(get("/private/x.txt", &bearer(&alice_read)).status, 403);
    assert_eq!(get("/private/x.txt", &bearer(&revoked)).status, 401);
    // Anyone signed in may read /members/**.
    assert_eq!(get("/members/m.txt", &[]).status, 401);
    assert_eq!(get("/members/", &[]).status, 401);
    assert_eq!(get("/members/m.txt", &basic("bob", "bob-password-1")).text(), "members only\n");
    let r = get("/members", &[]);
    assert!(r.status != 200 && !r.text().contains("members"), "/members: {} {}", r.status, r.text());
    // Paths no rule matches stay public.
    assert_eq!(get("/public/p.txt", &[]).text(), "public\n");
    assert_eq!(get("/index.html", &[]).status, 200);
    assert_eq!(get("/", &[]).status, 200);

    // The access log names the user of an authenticated request.
    let log = server.fx.path().join("access.log");
    let mut lines: Vec<Value> = Vec::new();
    let found = wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        lines.iter().any(|l| l["target"] == "/members/m.txt" && l["status"] == 200)
    });
    assert!(found, "{lines:#?}");
    let line = lines.iter().find(|l| l["target"] == "/members/m.txt" && l["status"] == 200).expect("line");
    assert_eq!(line["user"], "bob", "{line}");
    let anonymous = lines.iter().find(|l| l["target"] == "/public/p.txt").expect("line");
    assert_eq!(anonymous["user"], Value::Null, "{anonymous}");
}

/// Waits until the wall clock is early in a second, so that what follows (a few hundred
/// milliseconds) happens within one second.
fn early_in_a_second() {
    let frac = || SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").subsec_millis();
    let deadline = Instant::now() + Duration::from_secs(3);
    while frac() > 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_old_password_stops_working_at_once() {
    let server = start(fixture(), &toml("", LOG_OFF, ACCESS));
    let data = data_dir(&server);
    let url = format!("{}/members/m.txt", server.url("web"));
    early_in_a_second();
    cli_ok(&data, &["user", "add", "dave", "--password-stdin"], Some("dave-password-1\n"));
    let r = curl(&["-u", "dave:dave-password-1", &url]);
    assert_eq!(r.status, 200, "{}", r.text());
    cli_ok(&data, &["user", "passwd", "dave", "--password-stdin"], Some("dave-password-2\n"));
    let r = curl(&["-u", "dave:dave-password-1", &url]);
    assert_eq!(r.status, 401, "the old password still works after `servente user passwd`");
    assert_eq!(curl(&["-u", "dave:dave-password-2", &url]).status, 200);
    // The same for an account removed and created again with another password.
    early_in_a_second();
    cli_ok(&data, &["user", "remove", "dave"], None);
    cli_ok(&data, &["user", "add", "dave", "--password-stdin"], Some("dave-password-3\n"));
    let r = curl(&["-u", "dave:dave-password-2", &url]);
    assert_eq!(r.status, 401, "the removed account's password still works");
}

// ---------------------------------------------------------------------------------------------
// Logs

/// A user name that, written raw, starts a forged log line (no `:`, so that Basic carries it).
const FORGED: &str = "mallory\n10.9.8.7 - admin [forged] \"GET /forged HTTP/1.1\" 200 1";

/// Signs in with [`FORGED`] as user name on the admin API, and sends it with Basic to a
/// protected path of the web site; returns the server.
fn forge_log_lines(access_log: &str) -> Server {
    let server = start(fixture(), &toml("", access_log, ACCESS));
    let jar = server.fx.path().join("jar");
    assert_api_error(&sign_in(&server, &jar, FORGED, "some-password"), 401, "sign-in as a forged name");
    let r = curl(&["-u", &format!("{FORGED}:some-password"), &format!("{}/private/x.txt", server.url("web"))]);
    assert_eq!(r.status, 401, "{}", r.text());
    server
}

#[test]
fn claimed_user_names_cannot_forge_access_log_lines() {
    let server = forge_log_lines("format = \"combined\"\noutput = \"{dir}/access.log\"");
    let log = server.fx.path().join("access.log");
    let mut text = String::new();
    let logged = wait_until(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("POST /api/session") && text.contains("GET /private/x.txt")
    });
    assert!(logged, "{text}");
    for line in text.lines() {
        assert!(line.starts_with("::1 - ") || line.starts_with("127.0.0.1 - "), "a forged access log line: {line:?}\n{text}");
    }
}

#[test]
fn claimed_user_names_cannot_forge_application_log_lines() {
    let server = forge_log_lines(LOG_OFF);
    assert!(server.wait_stderr_count("\"login\"", 2, WAIT), "the failed sign-ins are not logged:\n{}", server.stderr());
    let forged: Vec<String> = server.stderr().lines().filter(|l| l.starts_with("10.9.8.7")).map(str::to_string).collect();
    assert!(forged.is_empty(), "forged application log lines: {forged:#?}");
}

// ---------------------------------------------------------------------------------------------
// Crash safety

#[test]
fn killed_writers_leave_a_consistent_directory() {
    let fx = Fixture::new();
    let data = fx.path().join("data");
    cli_ok(&data, &["group", "add", "staff"], None);
    let mut created = Vec::new();
    let mut killed = Vec::new();
    for i in 0..24u64 {
        let name = format!("user{i:02}");
        let data_arg = data.display().to_string();
        let mut args = vec!["user", "add", name.as_str(), "--password-stdin", "--data-dir", data_arg.as_str()];
        if i.is_multiple_of(2) {
            args.extend(["--group", "staff"]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn servente");
        let _ = child.stdin.take().expect("stdin").write_all(format!("password-of-{name}\n").as_bytes());
        // From at once to after the command has (most likely) finished.
        std::thread::sleep(Duration::from_millis(i * 3));
        let _ = child.kill();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "a killed servente did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = child.wait_with_output().expect("output");
        match status.code() {
            Some(0) => {
                assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("created user {name}")), "{out:?}");
                created.push(name);
            }
            Some(code) => panic!("servente user add {name} failed ({code}): {}", String::from_utf8_lossy(&out.stderr)),
            None => killed.push(name),
        }
    }
    assert!(!killed.is_empty(), "no process was killed mid-run; created: {created:?}");

    // The directory opens, lists, and has every user reported as created.
    let present = user_names(&data);
    for name in &created {
        assert!(present.contains(name), "{name} was reported created but is missing: {present:?}");
    }
    // A killed add either happened completely or not at all, and the name can be used again.
    for name in &killed {
        let out = cli(&data, &["user", "add", name, "--password-stdin"], Some("another-password\n"));
        if present.contains(name) {
            assert_cli_error(&out, "already exists");
            let u = user_json(&data, name);
            let index: usize = name[4..].parse().expect("index");
            let groups = if index.is_multiple_of(2) { json!(["staff"]) } else { json!([]) };
            assert_eq!(u["groups"], groups, "a half-made user: {u}");
        } else {
            assert_eq!(out.code, 0, "{out:?}");
        }
    }
    let staff = parse(&cli_ok(&data, &["group", "list", "--json"], None));
    let members = staff.as_array().and_then(|g| g.iter().find(|g| g["name"] == "staff")).map(|g| g["members"].clone()).expect("staff");
    for m in members.as_array().expect("members") {
        assert!(present.contains(&m.as_str().expect("name").to_string()), "a member who is not a user: {m}");
    }
    assert_eq!(user_names(&data).len(), 24);
}

#[test]
fn concurrent_commands_all_succeed() {
    let fx = Fixture::new();
    let data = fx.path().join("data");
    cli_ok(&data, &["group", "add", "staff"], None);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || {
                let name = format!("c{i}");
                (name.clone(), cli(&data, &["user", "add", &name, "--group", "staff", "--password-stdin"], Some("concurrent-password\n")))
            })
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .filter(|(_, out)| out.code != 0)
        .map(|(name, out)| format!("{name}: {}", out.stderr.trim()))
        .collect();
    assert!(failures.is_empty(), "{} of 8 concurrent `user add` failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(user_names(&data).len(), 8);
}

//! The application role from the outside: a real servente proxying to Python upstreams
//! (`tests/apps/*.py`, standard library only) that the tests start themselves or that servente
//! supervises as apps. Real clients: curl, wrk for load, raw HTTP/1.1 and WebSocket over
//! `std::net::TcpStream`.
//!
//! Every server listens on loopback with port 0; every wait is bounded; every process a test
//! starts is killed when the test ends, even when it fails (the upstreams by [`Helper`]'s drop,
//! supervised apps by [`AppServer`]'s drop: SIGTERM to servente, then SIGKILL to whatever still
//! carries the test's marker in its environment).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use common::{BIN, Fixture, RawResp, Resp, Server, WAIT, connect, curl, noise, read_response, refused_port, wait_until};
use serde_json::Value;

/// The Python helpers.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps");

/// The first administrator's password, given to servente on first run (for the admin API).
const ADMIN_PW: &str = "admin-password-1";

/// `[server]` with a data folder in the fixture and a short shutdown grace, the access log off,
/// `extra` sections (e.g. `[limits]`), then `rest`.
fn config(extra: &str, rest: &str) -> String {
    format!(
        "[server]\ndata_dir = \"{{dir}}/data\"\nshutdown_grace = \"3s\"\n\n[access_log]\noutput = \"off\"\n\n{extra}\n\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// Like [`config`], with an admin listener on ::1 too (a separate address, so that port 0
/// cannot hand both the same port).
fn config_with_admin(rest: &str) -> String {
    config("", &format!("[[listener]]\nname = \"admin\"\naddress = \"[::1]:0\"\nrole = \"admin\"\n\n{rest}"))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (and reaped) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets a flag when dropped (stops a helper thread's loop even when the test fails).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A Python helper a test started itself (an upstream), killed when dropped.
struct Helper {
    /// Held for its drop.
    _child: ChildGuard,
    /// `127.0.0.1:PORT` or `unix:/path`, as the helper announced it.
    addr: String,
    /// Everything it wrote (stdout and stderr), for failure messages.
    output: Arc<Mutex<String>>,
}

impl Helper {
    /// Runs `python3 SCRIPT ARGS` and waits (bounded) for its `listening ADDRESS` line.
    fn start(script: &str, args: &[&str]) -> Helper {
        let mut child = Command::new("python3")
            .arg(format!("{SCRIPTS}/{script}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3 (Debian package python3)");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout pipe");
        let stderr = child.stderr.take().expect("stderr pipe");
        let out = output.clone();
        // Both pipes are drained for the whole life of the process, so they never fill.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = tx.send(addr.to_string());
                }
                lock(&out).push_str(&format!("{line}\n"));
            }
        });
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lock(&out).push_str(&format!("{line}\n"));
            }
        });
        let child = ChildGuard(child);
        match rx.recv_timeout(WAIT) {
            Ok(addr) => Helper { _child: child, addr, output },
            Err(_) => {
                drop(child);
                panic!("{script} {args:?} did not start: {}", lock(&output));
            }
        }
    }

    /// The test upstream on a free TCP port, answering with `name`.
    fn upstream(name: &str) -> Helper {
        Helper::start("upstream.py", &["--name", name, "--port", "0"])
    }

    /// The test upstream on a Unix socket.
    fn unix_upstream(name: &str, path: &Path) -> Helper {
        Helper::start("upstream.py", &["--name", name, "--unix", &path.display().to_string()])
    }

    /// A misbehaving server (`hang`, `truncate`, `garbage`).
    fn raw(mode: &str) -> Helper {
        Helper::start("rawserver.py", &[mode])
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it printed so far.
    fn log(&self) -> String {
        lock(&self.output).clone()
    }

    /// Every request target the upstream received so far (asked directly, not through servente).
    fn seen(&self) -> Vec<String> {
        let r = curl(&[&format!("{}/_control/seen", self.url())]);
        assert_eq!(r.status, 200, "{r:?}\n{}", self.log());
        serde_json::from_slice(&r.body).expect("seen list")
    }

    /// Sets the status its `/health` answers.
    fn set_health(&self, status: u16) {
        let r = curl(&[&format!("{}/_control/health?status={status}", self.url())]);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a command printed.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs a command that ends on its own, bounded by `limit` (killed and a panic past it).
fn run(cmd: &mut Command, limit: Duration) -> Out {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn command");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("command output");
            Out {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// The SHA-256 of `data` as lowercase hex (coreutils' sha256sum; the test build is unoptimized).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("sha256sum output");
    let _ = writer.join();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Whether a process exists and is not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Live processes whose environment has `SERVENTE_TEST_MARK=marker` (every app of a test, and
/// whatever those start, carries its fixture's path so).
fn marked_processes(marker: &str) -> Vec<u32> {
    let entry = format!("SERVENTE_TEST_MARK={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
                && running(*pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

/// GETs (or whatever `args` say) through curl and parses the upstream's `/echo` JSON.
fn echo(args: &[&str]) -> Value {
    let r = curl(args);
    assert_eq!(r.status, 200, "{args:?}: {r:?}");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", r.text()))
}

/// Every value the upstream received for header `name`.
fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The one value of header `name` the upstream received (none: `None`; several: a panic).
fn header(echo: &Value, name: &str) -> Option<String> {
    let mut v = header_values(echo, name);
    assert!(v.len() <= 1, "{name} received {} times: {echo}", v.len());
    v.pop()
}

fn name_of(v: &Value) -> String {
    v["name"].as_str().unwrap_or_default().to_string()
}

/// An answer servente made up itself: one clear line of text.
fn assert_one_line(r: &Resp, needle: &str) {
    let text = r.text();
    assert!(text.ends_with('\n') && text.trim_end().lines().count() == 1, "one line expected: {text:?}");
    assert!(text.contains(needle), "{needle:?} expected in {text:?}");
}

// ---------------------------------------------------------------------------------------------
// Servente with supervised apps and the admin API

/// servente running supervised apps. Dropped: SIGTERM (so that it stops its apps), then
/// SIGKILL to any process still marked with the fixture's path.
struct AppServer {
    server: Server,
    token: String,
    marker: String,
}

impl Drop for AppServer {
    fn drop(&mut self) {
        if self.server.alive() {
            let _ = Command::new("kill").args(["-s", "TERM", &self.server.pid().to_string()]).status();
            let _ = self.server.wait_exit(Duration::from_secs(10));
        }
        // Nothing should be left (a test checks); if something is, it goes anyway.
        for pid in marked_processes(&self.marker) {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// A supervised app running `script` from the fixture's `apps` folder, marked for clean-up.
fn app_section(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = \"python3\"\nargs = [\"{script}\"]\ndir = \"apps\"\nenv = {{ SERVENTE_TEST_MARK = \"{{dir}}\" }}\nready_path = \"/\"\n{extra}\n"
    )
}

impl AppServer {
    /// Copies the helpers to the fixture's `apps` folder, starts servente (which creates
    /// `admin` on first run) and makes an API token with the `admin` scope.
    fn start(fx: Fixture, toml: &str) -> AppServer {
        for script in ["upstream.py", "crash.py"] {
            let text = std::fs::read(format!("{SCRIPTS}/{script}")).expect("read helper script");
            fx.write(&format!("apps/{script}"), text);
        }
        let marker = fx.path().display().to_string();
        let server = fx.start_with_env(toml, &[("SERVENTE_ADMIN_PASSWORD", ADMIN_PW)]);
        let mut app = AppServer { server, token: String::new(), marker };
        let data = app.server.fx.path().join("data");
        let out = run(
            Command::new(BIN)
                .args(["token", "create", "--user", "admin", "--name", "apps-test", "--scope", "admin", "--data-dir"])
                .arg(&data)
                .env_remove("RUST_LOG")
                .env("NO_COLOR", "1"),
            WAIT,
        );
        assert_eq!(out.code, 0, "token create failed: {}", out.stderr);
        app.token = out.stdout.lines().find_map(|l| l.strip_prefix("secret: ")).expect("a secret: line").trim().to_string();
        app
    }

    fn web(&self) -> String {
        self.server.url("web")
    }

    /// A request to the admin API with the token.
    fn api(&self, method: &str, path: &str) -> Resp {
        let auth = format!("Authorization: Bearer {}", self.token);
        curl(&["-g", "-X", method, "-H", &auth, &format!("{}{path}", self.server.url("admin"))])
    }

    /// `GET /api/apps/NAME`.
    fn app(&self, name: &str) -> Value {
        let r = self.api("GET", &format!("/api/apps/{name}"));
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_slice(&r.body).expect("app JSON")
    }

    /// (instance id, pid) of the app's ready instances.
    fn ready_pids(&self, name: &str) -> Vec<(u64, u32)> {
        let a = self.app(name);
        a["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["ready"].as_bool() == Some(true))
            .filter_map(|i| Some((i["id"].as_u64()?, u32::try_from(i["pid"].as_u64()?).ok()?)))
            .collect()
    }

    /// Waits (bounded) until the app is running with `n` ready instances; returns their pids.
    fn wait_ready(&self, name: &str, n: usize) -> Vec<(u64, u32)> {
        let mut last = Vec::new();
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.ready_pids(name);
            last.len() == n && self.app(name)["status"] == "running"
        });
        assert!(ok, "{name} not running with {n} ready instances: {}\n{}", self.app(name), self.server.stderr());
        last
    }

    /// `servente app ARGS` against this server's admin listener, with the token.
    fn cli(&self, args: &[&str]) -> Out {
        run(
            Command::new(BIN)
                .arg("app")
                .args(args)
                .arg("--config")
                .arg(self.server.fx.config_path())
                .args(["--admin", &self.server.addr("admin")])
                .env("SERVENTE_TOKEN", &self.token)
                .env_remove("RUST_LOG")
                .env("NO_COLOR", "1"),
            WAIT,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Proxy basics

/// `protocol = "http2"`: the upstream is spoken to over cleartext HTTP/2 with prior knowledge.
/// A second servente is the upstream, and its access log shows every request arriving as
/// HTTP/2.0: a small GET, a 1 MiB GET (its bytes intact), a HEAD, and a request whose client
/// came over HTTP/2 itself.
#[test]
fn proxy_speaks_http2_to_an_h2c_upstream() {
    let up = Fixture::new();
    up.write("root/hello.txt", "hello over h2\n");
    let big = noise(1 << 20, 11);
    up.write("root/big.bin", &big);
    let upstream = up.start(
        "[server]\ndata_dir = \"{dir}/data\"\n\n[access_log]\nformat = \"json\"\noutput = \"{dir}/access.log\"\n\n\
         [[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n",
    );
    let toml = config(
        "",
        &format!(
            "[[upstream]]\nname = \"h2\"\nservers = [\"{}\"]\nprotocol = \"http2\"\n\n\
             [[site]]\nname = \"main\"\n\n[[site.proxy]]\npath = \"/up/\"\nupstream = \"h2\"\nstrip_prefix = \"/up\"\n",
            upstream.addr("web")
        ),
    );
    let server = Fixture::new().start(&toml);
    let base = server.url("web");

    let r = curl(&[&format!("{base}/up/hello.txt")]);
    assert_eq!((r.status, r.text().as_str()), (200, "hello over h2\n"), "{r:?}");
    let r = curl(&[&format!("{base}/up/big.bin")]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.body == big, "the 1 MiB body changed on its way: {} bytes", r.body.len());
    let r = curl(&["-I", &format!("{base}/up/hello.txt")]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("14")), "{r:?}");
    let r = curl(&["--http2-prior-knowledge", &format!("{base}/up/hello.txt")]);
    assert_eq!((r.status, r.version.as_str(), r.text().as_str()), (200, "2", "hello over h2\n"), "{r:?}");

    let log = up_log_lines(&upstream, 4);
    let seen: Vec<(String, String, String)> = log
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("method"), s("target"), s("version"))
        })
        .collect();
    for (method, target) in [("GET", "/hello.txt"), ("GET", "/big.bin"), ("HEAD", "/hello.txt")] {
        assert!(seen.iter().any(|(m, t, _)| m == method && t == target), "no {method} {target} upstream: {seen:?}");
    }
    assert!(seen.iter().all(|(_, _, v)| v == "HTTP/2.0"), "every request reached the upstream over HTTP/2: {seen:?}");
}

/// The upstream servente's access log, once it has at least `n` lines (bounded wait).
fn up_log_lines(upstream: &Server, n: usize) -> Vec<String> {
    let path = upstream.fx.path().join("access.log");
    let mut lines = Vec::new();
    let ok = wait_until(WAIT, || {
        lines = std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_string).collect();
        lines.len() >= n
    });
    assert!(ok, "the upstream logged {} requests, expected {n}: {lines:#?}", lines.len());
    lines
}

#[test]
fn proxy_forwards_requests_headers_and_bodies() {
    let a = Helper::upstream("A");
    let fx = Fixture::new();
    let sock = fx.path().join("u.sock");
    let u = Helper::unix_upstream("U", &sock);
    fx.write("root/index.html", "static\n");
    let upload = fx.write("upload.bin", noise(1 << 20, 3));
    let upload3 = fx.write("upload3.bin", noise(3 << 20, 4));
    // One worker thread: the upstream pool is per thread, and a check below needs the pool
    // that earlier requests filled.
    let toml = config(
        "",
        &format!(
            r#"[[upstream]]
name = "plain"
servers = ["{a}"]

[[upstream]]
name = "sock"
servers = ["{u}"]

[[site]]
name = "main"
root = "root"

[[site.proxy]]
path = "/app/"
upstream = "plain"
strip_prefix = "/app"
trust_forwarded_from = ["10.0.0.0/8"]

[[site.proxy]]
path = "/trusted/"
upstream = "plain"
strip_prefix = "/trusted"
trust_forwarded_from = ["127.0.0.0/8"]

[[site.proxy]]
path = "/nofwd/"
upstream = "plain"
strip_prefix = "/nofwd"
forwarded = false

[[site.proxy]]
path = "/echo/**"
upstream = "plain"

[[site.proxy]]
path = "/unix/"
upstream = "sock"
strip_prefix = "/unix"
"#,
            a = a.addr,
            u = u.addr
        ),
    );
    let toml = toml.replace("shutdown_grace = \"3s\"", "shutdown_grace = \"3s\"\nworker_threads = 1");
    let server = fx.start(&toml);
    let base = server.url("web");

    // Query string kept, prefix stripped, Host preserved, forwarding headers set.
    let e = echo(&["-H", "Host: app.example", &format!("{base}/app/echo/x?a=1&b=two%20words")]);
    assert_eq!((e["method"].as_str(), e["target"].as_str()), (Some("GET"), Some("/echo/x?a=1&b=two%20words")), "{e}");
    assert_eq!(header(&e, "host").as_deref(), Some("app.example"), "{e}");
    assert_eq!(header(&e, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{e}");
    assert_eq!(header(&e, "x-forwarded-proto").as_deref(), Some("http"), "{e}");
    assert_eq!(header(&e, "x-forwarded-host").as_deref(), Some("app.example"), "{e}");
    assert_eq!(header(&e, "forwarded").as_deref(), Some("for=127.0.0.1;proto=http;host=\"app.example\""), "{e}");
    // An HTTP/2 client names the host in :authority; the HTTP/1.1 upstream gets it as Host.
    let e = echo(&["--http2-prior-knowledge", &format!("{base}/app/echo/h2")]);
    let authority = base.trim_start_matches("http://").to_string();
    assert_eq!((e["target"].as_str(), header(&e, "host")), (Some("/echo/h2"), Some(authority.clone())), "{e}");
    assert_eq!(header(&e, "x-forwarded-host"), Some(authority), "{e}");
    // Without strip_prefix the path goes as it is; files are still served beside the routes.
    let e = echo(&[&format!("{base}/echo/a/b?q=1")]);
    assert_eq!(e["target"].as_str(), Some("/echo/a/b?q=1"), "{e}");
    let r = curl(&[&format!("{base}/index.html")]);
    assert_eq!((r.status, r.text().as_str()), (200, "static\n"), "{r:?}");

    // A client's own forwarding headers: replaced when it is not trusted ...
    let spoof = [
        "-H",
        "X-Forwarded-For: 1.2.3.4",
        "-H",
        "X-Forwarded-Host: evil.example",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "Forwarded: for=6.6.6.6",
    ];
    let url = format!("{base}/app/echo");
    let e = echo(&[&spoof[..], &["-H", "Host: app.example", url.as_str()]].concat());
    assert_eq!(header(&e, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{e}");
    assert_eq!(header(&e, "x-forwarded-host").as_deref(), Some("app.example"), "{e}");
    assert_eq!(header(&e, "x-forwarded-proto").as_deref(), Some("http"), "{e}");
    assert_eq!(header(&e, "forwarded").as_deref(), Some("for=127.0.0.1;proto=http;host=\"app.example\""), "{e}");
    // ... kept and extended when it is.
    let url = format!("{base}/trusted/echo");
    let e = echo(&[&spoof[..], &["-H", "Host: app.example", url.as_str()]].concat());
    assert_eq!(header(&e, "x-forwarded-for").as_deref(), Some("1.2.3.4, 127.0.0.1"), "{e}");
    assert_eq!(header(&e, "x-forwarded-host").as_deref(), Some("evil.example"), "{e}");
    assert_eq!(header(&e, "x-forwarded-proto").as_deref(), Some("https"), "{e}");
    assert_eq!(header(&e, "forwarded").as_deref(), Some("for=6.6.6.6, for=127.0.0.1;proto=http;host=\"app.example\""), "{e}");
    // forwarded = false: none are sent, and a client's own are not passed on either.
    let url = format!("{base}/nofwd/echo");
    let e = echo(&[&spoof[..], &[url.as_str()]].concat());
    for h in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"] {
        assert_eq!(header(&e, h), None, "{h}: {e}");
    }

    // Hop-by-hop headers stay on their hop, both ways.
    let e = echo(&[
        "-H",
        "Connection: x-secret",
        "-H",
        "X-Secret: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "X-Kept: yes",
        &format!("{base}/app/echo"),
    ]);
    for h in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert_eq!(header(&e, h), None, "{h} was forwarded: {e}");
    }
    assert_eq!(header(&e, "x-kept").as_deref(), Some("yes"), "{e}");
    let r = curl(&[&format!("{base}/app/hop")]);
    assert_eq!((r.status, r.header("x-up-kept")), (200, Some("1")), "{r:?}");
    assert_eq!((r.header("x-up-secret"), r.header("keep-alive")), (None, None), "hop-by-hop response headers came through: {r:?}");

    // Request bodies are streamed through intact: Content-Length, chunked, and Expect: 100-continue.
    let want = sha256_hex(&std::fs::read(&upload).expect("upload"));
    let file = format!("@{}", upload.display());
    let url = format!("{base}/app/echo/upload");
    let e = echo(&["--data-binary", &file, "-H", "Content-Type: application/octet-stream", &url]);
    assert_eq!(
        (e["method"].as_str(), e["body_len"].as_u64(), e["body_sha256"].as_str()),
        (Some("POST"), Some(1 << 20), Some(want.as_str()))
    );
    let e = echo(&["--data-binary", &file, "-H", "Transfer-Encoding: chunked", &url]);
    assert_eq!((e["body_len"].as_u64(), e["body_sha256"].as_str()), (Some(1 << 20), Some(want.as_str())), "chunked upload");
    let want3 = sha256_hex(&std::fs::read(&upload3).expect("upload"));
    let e = echo(&["-X", "PUT", "--data-binary", &format!("@{}", upload3.display()), "-H", "Expect: 100-continue", &url]);
    assert_eq!((e["body_len"].as_u64(), e["body_sha256"].as_str()), (Some(3 << 20), Some(want3.as_str())), "upload after 100-continue");
    // HTTP/2 can carry a body in DATA frames with no Content-Length: it goes through whole.
    let e = echo(&["--http2-prior-knowledge", "--data-binary", &file, "-H", "Content-Length:", &url]);
    assert_eq!((e["body_len"].as_u64(), e["body_sha256"].as_str()), (Some(1 << 20), Some(want.as_str())), "HTTP/2 body without a length");
    // Requests without a body now meet the pooled connections those uploads left (hyper's, not
    // the lean client's; one worker thread, so one pool): their forwarding fields must come
    // along all the same.
    for _ in 0..4 {
        let e = echo(&["-H", "Host: app.example", &format!("{base}/app/echo/after-upload")]);
        assert_eq!(header(&e, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{e}");
        assert_eq!(header(&e, "forwarded").as_deref(), Some("for=127.0.0.1;proto=http;host=\"app.example\""), "{e}");
    }

    // HEAD: the length without the body (a GET after it on the same connection parses), and
    // the pooled upstream connection stays in step.
    let mut r = BufReader::new(connect(&server.addr("web")));
    write!(r.get_mut(), "HEAD /app/echo/head HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let head = read_response(&mut r, true).expect("HEAD response");
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.header("content-length").is_some_and(|l| l.parse::<u64>().is_ok_and(|n| n > 0)), "{head:?}");
    write!(r.get_mut(), "GET /app/echo/after-head HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let after = read_response(&mut r, false).expect("GET after HEAD");
    let e: Value = serde_json::from_slice(&after.body).expect("echo JSON");
    assert_eq!(e["target"].as_str(), Some("/echo/after-head"), "{e}");
    for _ in 0..4 {
        let e = echo(&[&format!("{base}/app/echo/after-head")]);
        assert_eq!(e["target"].as_str(), Some("/echo/after-head"), "{e}");
    }

    // An upstream on a Unix socket.
    let e = echo(&[&format!("{base}/unix/echo?via=unix")]);
    assert_eq!((name_of(&e).as_str(), e["target"].as_str()), ("U", Some("/echo?via=unix")), "{e}");

    // Server-Sent Events flow as they are written: the first event is here before the second
    // is even sent (the upstream waits a second in between and says when it sent the second).
    let mut s = connect(&server.addr("web"));
    write!(s, "GET /app/sse HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n").expect("send");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut got = Vec::new();
    let mut first_at = None;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains("\n\n0\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if first_at.is_none() && String::from_utf8_lossy(&got).contains("data: one\n\n") {
            first_at = Some(SystemTime::now());
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200") && text.to_ascii_lowercase().contains("text/event-stream"), "{text}");
    let first_at =
        first_at.unwrap_or_else(|| panic!("first event never arrived: {text}")).duration_since(SystemTime::UNIX_EPOCH).expect("clock");
    let sent: f64 = text
        .split_once("data: two sent=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("second event missing: {text}"));
    let ahead = sent - first_at.as_secs_f64();
    assert!(ahead > 0.5, "the first event arrived only {ahead:.3}s before the second was sent (buffered?)");

    // A large download arrives intact.
    let r = curl(&[&format!("{base}/app/big?mib=50")]);
    assert_eq!((r.exit, r.status, r.body.len()), (0, 200, 50 << 20), "{}", r.stderr);
    assert_eq!(Some(sha256_hex(&r.body).as_str()), r.header("x-body-sha256"), "the 50 MiB body changed on the way");
    drop(server);
    drop((a, u));
}

// ---------------------------------------------------------------------------------------------
// 2. Load balancing and health

#[test]
fn load_balancing_retries_and_health_checks() {
    let a = Helper::upstream("A");
    let b = Helper::upstream("B");
    let refused = refused_port();
    let dead = refused.addr.clone();
    let both = format!("servers = [\"{}\", \"{}\"]", a.addr, b.addr);
    let route = |name: &str| format!("[[site.proxy]]\npath = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = \"/{name}\"\n");
    let toml = config(
        "",
        &format!(
            r#"[[upstream]]
name = "rr"
{both}

[[upstream]]
name = "lc"
{both}
balance = "least_conn"

[[upstream]]
name = "hash"
{both}
balance = "hash"
hash_key = "header:X-User"

[[upstream]]
name = "withdead"
servers = ["{a}", "{dead}"]
max_fails = 2
fail_timeout = "30s"

[[upstream]]
name = "checked"
{both}
[upstream.health]
path = "/health"
interval = "300ms"
fails = 2
passes = 1

[[site]]
name = "main"
{routes}"#,
            a = a.addr,
            routes = ["rr", "lc", "hash", "withdead", "checked"].map(route).join("\n"),
        ),
    );
    let server = Fixture::new().start(&toml);
    let base = server.url("web");
    let names = |path: &str, n: usize, extra: &[&str]| -> Vec<String> {
        let url = format!("{base}{path}");
        (0..n).map(|_| name_of(&echo(&[extra, &[url.as_str()]].concat()))).collect()
    };
    let count = |v: &[String], n: &str| v.iter().filter(|x| *x == n).count();

    // Round robin: each in turn.
    let got = names("/rr/echo", 10, &[]);
    assert_eq!((count(&got, "A"), count(&got, "B")), (5, 5), "{got:?}");
    assert!(got.windows(2).all(|w| w[0] != w[1]), "not taking turns: {got:?}");

    // Least connections: while one server is busy with a slow request, the other gets the rest.
    let slow_url = format!("{base}/lc/slow?ms=2000");
    let slow = std::thread::spawn(move || name_of(&echo(&[&slow_url])));
    assert!(wait_until(WAIT, || a.seen().iter().chain(b.seen().iter()).any(|t| t.starts_with("/slow"))), "the slow request did not arrive");
    let quick = names("/lc/echo", 6, &[]);
    let busy = slow.join().expect("slow request");
    assert!(quick.iter().all(|n| *n != busy), "least_conn sent requests to the busy server {busy}: {quick:?}");

    // Hashing on a header: the same user always reaches the same server; users are spread.
    let mut per_user = Vec::new();
    for i in 0..20 {
        let h = format!("X-User: user{i}");
        let got = names("/hash/echo", 3, &["-H", &h]);
        assert!(got.iter().all(|n| *n == got[0]), "user{i} moved between servers: {got:?}");
        per_user.push(got[0].clone());
    }
    assert!(count(&per_user, "A") > 0 && count(&per_user, "B") > 0, "20 users all on one server: {per_user:?}");

    // A dead server: GETs are retried on the live one, and after max_fails it is left out.
    let got = names("/withdead/echo", 10, &[]);
    assert!(got.iter().all(|n| n == "A"), "{got:?}");
    let connect_failures = || server.stderr().lines().filter(|l| l.contains("cannot connect") && l.contains(&dead)).count();
    assert!(server.wait_stderr("failed 2 times in a row; left out", WAIT), "{}", server.stderr());
    let before = connect_failures();
    assert_eq!(before, 2, "max_fails = 2: {}", server.stderr());
    let got = names("/withdead/echo", 10, &[]);
    assert!(got.iter().all(|n| n == "A"), "{got:?}");
    assert_eq!(connect_failures(), before, "the dead server was tried again while left out");

    // Active health checks: a server whose /health answers 500 is taken out, then back in.
    let got = names("/checked/echo", 4, &[]);
    assert_eq!(count(&got, "B"), 2, "{got:?}");
    b.set_health(500);
    assert!(wait_until(Duration::from_secs(8), || names("/checked/echo", 4, &[]).iter().all(|n| n == "A")), "B was not taken out");
    assert!(server.wait_stderr("health check failed", WAIT), "{}", server.stderr());
    let got = names("/checked/echo", 10, &[]);
    assert!(got.iter().all(|n| n == "A"), "an unhealthy server got traffic: {got:?}");
    b.set_health(200);
    assert!(wait_until(Duration::from_secs(8), || names("/checked/echo", 4, &[]).iter().any(|n| n == "B")), "B did not come back");
    assert!(server.wait_stderr("health check passes again", WAIT), "{}", server.stderr());
    drop(server);
    drop((a, b));
}

// ---------------------------------------------------------------------------------------------
// 3. Supervised apps

#[test]
fn supervised_apps_restart_fail_log_and_stop() {
    let fx = Fixture::new();
    let toml = config_with_admin(&format!(
        r#"{hello}
{crashy}
{sockapp}
[[site]]
name = "main"

[[site.proxy]]
path = "/hello/"
upstream = "hello"
strip_prefix = "/hello"

[[site.proxy]]
path = "/crashy/"
upstream = "crashy"
strip_prefix = "/crashy"

[[site.proxy]]
path = "/sockapp/"
upstream = "sockapp"
strip_prefix = "/sockapp"
"#,
        hello = app_section("hello", "upstream.py", "instances = 2\nstop_grace = \"2s\""),
        crashy = app_section("crashy", "crash.py", "max_restarts = 2\nrestart_window = \"60s\"\nstop_grace = \"2s\""),
        sockapp = app_section("sockapp", "upstream.py", "listen = \"unix\"\nstop_grace = \"2s\""),
    ));
    let mut app = AppServer::start(fx, &toml);
    let web = app.web();
    let url = format!("{web}/hello/echo");

    // Both instances get traffic; each knows its SERVENTE_INSTANCE.
    let first = app.wait_ready("hello", 2);
    let got: Vec<(String, u64)> = (0..10)
        .map(|_| {
            let e = echo(&[&url]);
            (name_of(&e), e["pid"].as_u64().unwrap_or_default())
        })
        .collect();
    for (id, pid) in &first {
        let name = format!("instance-{id}");
        assert!(got.iter().filter(|(n, p)| *n == name && *p == u64::from(*pid)).count() >= 3, "{name} (pid {pid}) got too little: {got:?}");
    }
    let out = app.cli(&["status", "hello"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("hello: running"), "{out:?}");
    for (_, pid) in &first {
        assert!(out.stdout.contains(&format!("pid {pid} ")), "pid {pid} missing: {out:?}");
    }
    // An app told to listen on a Unix socket (SOCKET_PATH) in the data folder.
    let sock = app.wait_ready("sockapp", 1);
    let status = app.app("sockapp");
    let address = status["instances"][0]["address"].as_str().unwrap_or_default().to_string();
    let data = app.server.fx.path().join("data");
    assert!(address.starts_with(&format!("unix:{}", data.display())) && address.ends_with(".sock"), "{status}");
    let e = echo(&[&format!("{web}/sockapp/echo")]);
    assert_eq!((name_of(&e), e["pid"].as_u64()), ("instance-1".to_string(), Some(u64::from(sock[0].1))), "{e}");
    let out = app.cli(&["list"]);
    assert!(out.code == 0 && out.stdout.contains("hello: running") && out.stdout.contains("crashy: "), "{out:?}");

    // kill -9 of one instance: it is restarted (same id, new pid) and traffic goes on.
    let (victim_id, victim_pid) = first[0];
    let killed = run(Command::new("kill").args(["-s", "KILL", &victim_pid.to_string()]), WAIT);
    assert_eq!(killed.code, 0, "{killed:?}");
    let mut failures = Vec::new();
    let mut requests = 0;
    let restarted = wait_until(Duration::from_secs(20), || {
        let r = curl(&[&url]);
        requests += 1;
        if r.status != 200 {
            failures.push(format!("{} {}", r.status, r.text()));
        }
        app.ready_pids("hello").iter().any(|(id, pid)| *id == victim_id && *pid != victim_pid)
    });
    assert!(restarted, "instance {victim_id} was not restarted: {}\n{}", app.app("hello"), app.server.stderr());
    assert!(failures.is_empty(), "{} of {requests} requests failed while an instance was restarted: {failures:?}", failures.len());
    let status = app.app("hello");
    let instance = status["instances"].as_array().into_iter().flatten().find(|i| i["id"].as_u64() == Some(victim_id)).expect("instance");
    assert_eq!(instance["restarts"].as_u64(), Some(1), "{status}");
    assert!(!running(victim_pid), "the killed process is still there");
    let now = app.wait_ready("hello", 2);
    let got: Vec<String> = (0..6).map(|_| name_of(&echo(&[&url]))).collect();
    assert!(got.contains(&format!("instance-{victim_id}")), "the restarted instance gets no traffic: {got:?}");

    // An app that exits at once: retried, then marked failed after max_restarts; its output is
    // in the logs and its route answers 503.
    let failed = wait_until(Duration::from_secs(20), || app.app("crashy")["status"] == "failed");
    assert!(failed, "crashy is not failed: {}\n{}", app.app("crashy"), app.server.stderr());
    let status = app.app("crashy");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("crashed too often")), "{status}");
    // (The output is read by its own task, which may trail the exit a little.)
    let starts = |out: &Out| out.stdout.lines().filter(|l| l.contains("stdout: crash app starting")).count();
    let mut out = app.cli(&["logs", "crashy"]);
    wait_until(Duration::from_secs(5), || {
        out = app.cli(&["logs", "crashy"]);
        out.code == 0 && starts(&out) >= 3 && out.stdout.matches("stderr: crash app: something went wrong").count() >= 3
    });
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(starts(&out), 3, "one start and max_restarts = 2 restarts: {}", out.stdout);
    assert_eq!(out.stdout.matches("stderr: crash app: something went wrong").count(), 3, "{}", out.stdout);
    let r = curl(&[&format!("{web}/crashy/")]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_one_line(&r, "no upstream server is available");
    let out = app.cli(&["logs", "hello"]);
    assert!(out.code == 0 && out.stdout.contains(&format!("hello#{victim_id} stdout: listening 127.0.0.1:")), "{out:?}");
    let r = app.api("GET", "/api/apps/crashy/logs?lines=2");
    let lines: Value = serde_json::from_slice(&r.body).expect("logs JSON");
    assert_eq!(lines.as_array().map(Vec::len), Some(2), "{lines}");

    // SIGTERM to servente stops every app process, including one an app started itself.
    let spawned = echo(&[&format!("{web}/hello/spawn")]);
    let child = u32::try_from(spawned["child"].as_u64().expect("child pid")).expect("pid");
    assert!(running(child), "the app's child is not running");
    let mut pids: Vec<u32> = now.iter().chain(sock.iter()).map(|(_, p)| *p).collect();
    pids.push(child);
    assert!(marked_processes(&app.marker).len() >= 4, "{:?}", marked_processes(&app.marker));
    app.server.signal("TERM");
    let exit = app.server.wait_exit(Duration::from_secs(15));
    assert!(exit.is_some_and(|s| s.success()), "servente did not exit 0 after SIGTERM: {exit:?}\n{}", app.server.stderr());
    assert!(
        wait_until(Duration::from_secs(3), || pids.iter().all(|p| !running(*p))),
        "left behind: {:?}",
        pids.iter().filter(|p| running(**p)).collect::<Vec<_>>()
    );
    assert_eq!(marked_processes(&app.marker), Vec::<u32>::new(), "app processes outlived servente");
}

// ---------------------------------------------------------------------------------------------
// 4. Rolling restart under load

#[test]
fn rolling_restart_under_load_loses_no_request() {
    assert!(
        Command::new("sh").args(["-c", "command -v wrk"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success()),
        "wrk is missing: install the Debian package `wrk`"
    );
    let toml = config_with_admin(&format!(
        "{}\n[[site]]\nname = \"main\"\n\n[[site.proxy]]\npath = \"/roll/\"\nupstream = \"roll\"\nstrip_prefix = \"/roll\"\n",
        app_section("roll", "upstream.py", "instances = 2\nstop_grace = \"5s\"")
    ));
    let app = AppServer::start(Fixture::new(), &toml);
    let before = app.wait_ready("roll", 2);
    let url = format!("{}/roll/hello", app.web());

    // A second witness: one curl after the other for the whole run, with POSTs, which servente
    // never retries on another server (so a request lost in the switch would show).
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let witness = {
        let (stop, url) = (stop.0.clone(), url.clone());
        std::thread::spawn(move || {
            let (mut total, mut bad) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = curl(&["-d", "witness=1", &url]);
                total += 1;
                if r.status != 200 || !r.text().starts_with("hello from instance-") {
                    bad.push(format!("{} {} {}", r.status, r.text(), r.stderr));
                }
            }
            (total, bad)
        })
    };
    let mut wrk = ChildGuard(
        Command::new("wrk")
            .args(["-t2", "-c16", "-d6s", "--timeout", "5s", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wrk"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let r = app.api("POST", "/api/apps/roll/restart");
    let restart_took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}\n{}", app.server.stderr());
    // wrk runs 6 s; it gets 15 more to finish.
    let done = wait_until(Duration::from_secs(15), || wrk.0.try_wait().ok().flatten().is_some());
    drop(stop);
    assert!(done, "wrk did not finish");
    let mut report = String::new();
    if let Some(mut o) = wrk.0.stdout.take() {
        let _ = o.read_to_string(&mut report);
    }
    let (witnessed, bad) = witness.join().expect("witness thread");
    let requests: u64 = report
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    println!(
        "rolling restart: restart took {restart_took:?}; wrk: {requests} requests; curl witness: {witnessed} requests, {} bad\n{report}",
        bad.len()
    );
    assert!(!report.contains("Socket errors"), "wrk saw socket errors:\n{report}");
    assert!(!report.contains("Non-2xx"), "wrk saw failed responses:\n{report}");
    assert!(requests > 100, "too few requests to mean anything:\n{report}");
    assert!(bad.is_empty() && witnessed > 10, "curl witness: {witnessed} requests, failures: {bad:?}");
    let after = app.wait_ready("roll", 2);
    let old: Vec<u32> = before.iter().map(|(_, p)| *p).collect();
    assert!(after.iter().all(|(_, p)| !old.contains(p)), "not every instance was replaced: before {before:?}, after {after:?}");
    assert!(old.iter().all(|p| !running(*p)), "an old instance is still running");
    let got: Vec<String> = (0..6).map(|_| curl(&[&url]).text()).collect();
    for (id, _) in &after {
        assert!(got.iter().any(|t| t.trim() == format!("hello from instance-{id}")), "instance {id} gets no traffic: {got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Failure modes

/// Sends raw bytes to servente; returns the first response (if any) and whatever followed it
/// before the connection closed (a smuggled second request would show up there).
fn raw_exchange(addr: &str, bytes: &[u8]) -> (Option<common::RawResp>, Vec<u8>, bool) {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(4))).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut r = BufReader::new(s);
    let first = read_response(&mut r, false).ok();
    let mut rest = Vec::new();
    let closed = match r.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    (first, rest, closed)
}

#[test]
fn failing_upstreams_and_hostile_clients() {
    let hang = Helper::raw("hang");
    let stall = Helper::raw("stall");
    let trunc = Helper::raw("truncate");
    let garbage = Helper::raw("garbage");
    let good = Helper::upstream("good");
    let refused = refused_port();
    let dead = refused.addr.clone();
    let mut sections = String::new();
    for (name, addr) in [
        ("hang", &hang.addr),
        ("stall", &stall.addr),
        ("trunc", &trunc.addr),
        ("garbage", &garbage.addr),
        ("down", &dead),
        ("good", &good.addr),
    ] {
        sections.push_str(&format!("[[upstream]]\nname = \"{name}\"\nservers = [\"{addr}\"]\nresponse_timeout = \"1s\"\n\n"));
    }
    sections.push_str("[[site]]\nname = \"main\"\n\n");
    for name in ["hang", "stall", "trunc", "garbage", "down", "good"] {
        sections.push_str(&format!("[[site.proxy]]\npath = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = \"/{name}\"\n\n"));
    }
    let server = Fixture::new().start(&config("", &sections));
    let base = server.url("web");
    let addr = server.addr("web");

    // An upstream that never answers: 504 after response_timeout.
    let t = Instant::now();
    let r = curl(&[&format!("{base}/hang/x")]);
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "504 after {took:?}");
    assert_one_line(&r, "did not answer in time");

    // An upstream that stops sending in the middle of the body: after response_timeout without a
    // byte the client sees a broken transfer, not a connection held for ever.
    let t = Instant::now();
    let r = curl(&["--max-time", "20", &format!("{base}/stall/x")]);
    let took = t.elapsed();
    assert_eq!((r.status, r.exit, r.body.as_slice()), (200, 18, &b"0123456789"[..]), "{r:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "cut after {took:?}");
    // The same for a request with a body (it goes through hyper's client, not the lean one).
    let t = Instant::now();
    let r = curl(&["--max-time", "20", "-d", "x=1", &format!("{base}/stall/x")]);
    let took = t.elapsed();
    assert_eq!((r.status, r.exit, r.body.as_slice()), (200, 18, &b"0123456789"[..]), "POST: {r:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "POST cut after {took:?}");
    // An upload slower than response_timeout is not cut while the upstream takes it: the
    // timeout counts from the body's last piece (it gave 504 after 1 s before).
    let slow_body = "x".repeat(60_000);
    let t = Instant::now();
    let r = curl(&["--max-time", "30", "--limit-rate", "20k", "-H", "Expect:", "--data-binary", &slow_body, &format!("{base}/good/echo")]);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "slow upload: {r:?} after {took:?}");
    assert!(r.text().contains("60000"), "the echo saw the whole body: {}", r.text());
    assert!(took >= Duration::from_secs(2), "the upload was not slow ({took:?}): the check proves nothing");

    // A response cut short: the client sees a broken transfer (curl: 18), and servente goes on.
    let r = curl(&[&format!("{base}/trunc/x")]);
    assert_eq!((r.status, r.exit, r.body.as_slice()), (200, 18, &b"0123456789"[..]), "{r:?}");
    let r = curl(&[&format!("{base}/good/hello")]);
    assert_eq!((r.status, r.text().as_str()), (200, "hello from good\n"), "{r:?}");

    // Not HTTP at all: 502.
    let r = curl(&[&format!("{base}/garbage/x")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_one_line(&r, "bad gateway");
    // Nobody listening: 502, for GET and POST alike.
    let r = curl(&[&format!("{base}/down/x")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_one_line(&r, "bad gateway");
    let r = curl(&["-d", "x=1", &format!("{base}/down/x")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_one_line(&r, "bad gateway");

    // Request smuggling attempts, each with a second request hidden behind the first. Each gets
    // 400 and a closed connection, except Content-Length with Transfer-Encoding: RFC 9112
    // section 6.1 lets a server reject it or process it by Transfer-Encoding alone, provided it
    // closes the connection after responding (servente, through hyper, does the latter); a proxy
    // that forwards it must drop the Content-Length first.
    let smuggled = |n: u32| format!("GET /good/smuggled-{n} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let attempts: Vec<(&str, bool, String)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            true,
            format!(
                "POST /good/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                smuggled(1)
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            true,
            format!(
                "POST /good/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n{}",
                smuggled(2)
            ),
        ),
        (
            "two different Content-Lengths",
            false,
            format!("POST /good/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 48\r\n\r\n{}", smuggled(3)),
        ),
        (
            "obs-fold header line",
            false,
            format!("GET /good/echo HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n Content-Length: 48\r\n\r\n{}", smuggled(4)),
        ),
        (
            "chunked not the final coding",
            false,
            format!("POST /good/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{}", smuggled(5)),
        ),
        (
            "space before the colon",
            false,
            format!("POST /good/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length : 48\r\n\r\n{}", smuggled(6)),
        ),
    ];
    let mut problems = Vec::new();
    for (what, te_may_win, bytes) in &attempts {
        let (first, rest, closed) = raw_exchange(&addr, bytes.as_bytes());
        let Some(first) = first else {
            problems.push(format!("{what}: no response"));
            continue;
        };
        let body = String::from_utf8_lossy(&first.body).into_owned();
        let te_won = *te_may_win
            && first.status == 200
            && serde_json::from_str::<Value>(&body)
                .is_ok_and(|e| e["body_len"] == 0 && header(&e, "content-length").is_none() && header(&e, "transfer-encoding").is_some());
        if first.status != 400 && !te_won {
            problems.push(format!("{what}: {} instead of 400 ({body})", first.status));
        }
        if !rest.is_empty() || !closed {
            problems.push(format!("{what}: the connection went on after the first response: {:?}", String::from_utf8_lossy(&rest)));
        }
        println!("smuggling attempt \"{what}\": {}, connection closed: {closed}", first.status);
    }
    let seen = good.seen();
    assert!(!seen.iter().any(|t| t.contains("smuggled")), "the upstream received a smuggled request: {seen:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Oversized request heads: 431, and nothing reaches the upstream.
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let r = curl(&["-H", &big, &format!("{base}/good/echo/oversized")]);
    assert_eq!(r.status, 431, "{r:?}");
    assert!(!good.seen().iter().any(|t| t.contains("oversized")));
    let r = curl(&[&format!("{base}/good/hello")]);
    assert_eq!(r.status, 200, "{r:?}");
    drop(server);
    drop((hang, trunc, garbage, good));
}

#[test]
fn chunked_upload_over_max_body_bytes_is_refused() {
    let good = Helper::upstream("good");
    let fx = Fixture::new();
    let upload = fx.write("upload.bin", noise(3 << 20, 9));
    let toml = config(
        "[limits]\nmax_body_bytes = \"1MiB\"",
        &format!(
            "[[upstream]]\nname = \"good\"\nservers = [\"{}\"]\n\n[[site]]\nname = \"main\"\n\n[[site.proxy]]\npath = \"/good/\"\nupstream = \"good\"\nstrip_prefix = \"/good\"\n",
            good.addr
        ),
    );
    let server = fx.start(&toml);
    let url = format!("{}/good/echo/upload", server.url("web"));
    let file = format!("@{}", upload.display());
    // Declared too large: refused before the upstream sees anything.
    let r = curl(&["--data-binary", &file, &url]);
    assert_eq!(r.status, 413, "{r:?}");
    // The same bytes, chunked: refused as well, and the upstream never gets them all.
    let r = curl(&["--data-binary", &file, "-H", "Transfer-Encoding: chunked", &url]);
    assert_eq!(r.status, 413, "a 3 MiB chunked body with max_body_bytes = 1MiB: {} {}", r.status, r.text());
    drop(server);
    drop(good);
}

/// A client that starts an upload to a proxied app and then sends nothing more gets 408 after
/// `limits.body_read_timeout`, and its connection is closed. The upstream is not blamed: with
/// `max_fails = 1` one failure would take it out, and its `response_timeout`, shorter than
/// the body's, does not run while the proxy waits on the client.
#[test]
fn a_stalled_upload_through_the_proxy_gets_408_and_spares_the_upstream() {
    let good = Helper::upstream("good");
    let fx = Fixture::new();
    let toml = config(
        "[limits]\nbody_read_timeout = \"2s\"",
        &format!(
            "[[upstream]]\nname = \"good\"\nservers = [\"{}\"]\nmax_fails = 1\nfail_timeout = \"60s\"\nresponse_timeout = \"600ms\"\n\n[[site]]\nname = \"main\"\n\n[[site.proxy]]\npath = \"/good/\"\nupstream = \"good\"\nstrip_prefix = \"/good\"\n\n[[listener]]\nname = \"admin\"\naddress = \"[::1]:0\"\nrole = \"admin\"\n",
            good.addr
        ),
    );
    let server = fx.start(&toml);
    let started = Instant::now();
    let (first, _, closed) = raw_exchange(
        &server.addr("web"),
        b"POST /good/echo/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nthe start of a body that stops",
    );
    let waited = started.elapsed();
    assert_eq!(first.as_ref().map(|r| r.status), Some(408), "{first:?}");
    assert!(closed, "the connection stayed open");
    assert!(waited > Duration::from_millis(1800), "answered after {waited:?}");
    let e = echo(&[&format!("{}/good/echo/after", server.url("web"))]);
    assert_eq!(e["target"].as_str(), Some("/echo/after"), "{e}");
    let log = server.stderr();
    assert!(!log.contains("left out") && !log.contains("no response within"), "the upstream was blamed:\n{log}");
    let metrics = curl(&["-g", &format!("{}/metrics", server.url("admin"))]).text();
    assert!(metrics.lines().any(|l| l == "servente_body_timeouts_total 1"), "the timeout is counted:\n{metrics}");
    drop(server);
    drop(good);
}

// ---------------------------------------------------------------------------------------------
// 6. WebSocket

/// A masked client frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one (unmasked, server) frame: (opcode, payload).
fn ws_read(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
    }
    assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
    let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
    r.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}

/// servente proxying `/chat/` to a WebSocket echo upstream; `limits` goes into the config's
/// head, `upstream` into the upstream's table.
fn websocket_proxy(limits: &str, upstream: &str) -> (Helper, Server) {
    let ws = Helper::upstream("ws");
    let toml = config(
        limits,
        &format!(
            "[[upstream]]\nname = \"ws\"\nservers = [\"{}\"]\n{upstream}\n[[site]]\nname = \"main\"\n\n[[site.proxy]]\npath = \"/chat/\"\nupstream = \"ws\"\nstrip_prefix = \"/chat\"\n",
            ws.addr
        ),
    );
    let server = Fixture::new().start(&toml);
    (ws, server)
}

/// A WebSocket handshake on `/chat/ws` (RFC 6455's example key): the stream, a reader on it,
/// and the answer's head.
fn websocket_handshake(addr: &str) -> (TcpStream, BufReader<TcpStream>, RawResp) {
    let mut s: TcpStream = connect(addr);
    write!(
        s,
        "GET /chat/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("send handshake");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let resp = read_response(&mut r, false).expect("handshake response");
    (s, r, resp)
}

/// A tunnel in which no byte passes either way for the upstream's `response_timeout` is closed
/// (as nginx's proxy_read_timeout closes a quiet WebSocket); one in use is not.
#[test]
fn a_quiet_websocket_is_closed_after_the_upstreams_response_timeout() {
    let (_ws, server) = websocket_proxy("", "response_timeout = \"1500ms\"\n");
    let (mut s, mut r, resp) = websocket_handshake(&server.addr("web"));
    assert_eq!(resp.status, 101, "{resp:?}");
    // In use for 3 s, twice the limit, a message every 0.5 s: open throughout.
    let mut last_sent = Instant::now();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let m = format!("message {i}");
        last_sent = Instant::now();
        s.write_all(&ws_frame(1, m.as_bytes())).expect("send frame");
        let (_, payload) = ws_read(&mut r).unwrap_or_else(|e| panic!("message {i} not echoed: {e}"));
        assert_eq!(payload, m.as_bytes());
    }
    // Then quiet: closed about 1.5 s after the last bytes went through (the upstream's echo of
    // the last message came after it was sent, so at least 1.5 s after `last_sent`).
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut rest = Vec::new();
    let end = r.read_to_end(&mut rest);
    let waited = last_sent.elapsed();
    assert!(end.is_ok() && rest.is_empty(), "the tunnel ended with {end:?} and {} more bytes", rest.len());
    assert!(waited >= Duration::from_millis(1490) && waited < Duration::from_secs(6), "closed {waited:?} after the last message");
}

#[test]
fn websocket_is_tunnelled_past_the_idle_timeout() {
    let (ws, server) = websocket_proxy("[limits]\nidle_timeout = \"2s\"", "");
    let addr = server.addr("web");

    // The limit bites: a kept-alive HTTP connection left idle is closed after about 2 s.
    let mut s = connect(&addr);
    write!(s, "GET /chat/hello HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("response");
    assert_eq!(resp.status, 200);
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    let idle = t.elapsed();
    assert!(idle > Duration::from_millis(1500) && idle < Duration::from_secs(5), "idle HTTP connection closed after {idle:?}");

    // A proxied request that takes longer than the idle timeout is not cut: it is in flight.
    let t = Instant::now();
    let r = curl(&[&format!("{}/chat/slow?ms=2500", server.url("web"))]);
    assert_eq!(r.status, 200, "a 2.5 s answer with idle_timeout = 2s: {r:?}");
    assert!(t.elapsed() >= Duration::from_millis(2400));

    // The handshake goes through (RFC 6455's example key and its answer).
    let (mut s, mut r, resp) = websocket_handshake(&addr);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp:?}");
    assert!(resp.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")), "{resp:?}");

    // Messages are echoed, including after a pause longer than the idle timeout.
    let long = "x".repeat(300);
    let messages = ["hello", "second message", long.as_str(), "after three quiet seconds"];
    for (i, m) in messages.iter().enumerate() {
        if i == 3 {
            std::thread::sleep(Duration::from_secs(3));
        }
        s.write_all(&ws_frame(1, m.as_bytes())).expect("send frame");
        let (op, payload) = ws_read(&mut r).unwrap_or_else(|e| panic!("message {i} not echoed: {e}"));
        assert_eq!((op, String::from_utf8_lossy(&payload).as_ref()), (1, *m), "message {i}");
    }
    s.write_all(&ws_frame(9, b"ping")).expect("ping");
    assert_eq!(ws_read(&mut r).expect("pong"), (0xA, b"ping".to_vec()));
    s.write_all(&ws_frame(8, &1000u16.to_be_bytes())).expect("close");
    assert_eq!(ws_read(&mut r).expect("close echo").0, 8);
    drop(server);
    drop(ws);
}

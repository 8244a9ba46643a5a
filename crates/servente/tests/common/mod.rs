//! Helpers shared by the integration tests: a temp folder with files and a config, a real
//! `servente serve` process started on it (killed on drop), the real `curl` binary, and raw
//! HTTP/1.1 over `std::net::TcpStream`.
//!
//! Every wait here is bounded in time; every network address is on loopback.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_servente");

/// Longest any single wait in these helpers lasts.
pub const WAIT: Duration = Duration::from_secs(10);

/// `[server]` (with a data folder inside the fixture, plus `server_extra` lines) and the access
/// log turned off, followed by `rest` (listeners, sites, other sections).
pub fn config(server_extra: &str, rest: &str) -> String {
    format!("[server]\ndata_dir = \"{{dir}}/data\"\nshutdown_grace = \"20s\"\n{server_extra}\n\n[access_log]\noutput = \"off\"\n\n{rest}")
}

/// One web listener `web` on 127.0.0.1 (port picked by the OS) and one site `main` on the
/// fixture's `root` folder, with `site_extra` added to the `[[site]]` table.
pub fn web_config(site_extra: &str) -> String {
    config(
        "",
        &format!("[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n{site_extra}\n"),
    )
}

/// A temp folder holding a site's files and the config.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("servente-test-").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("root")).expect("root folder");
        Fixture { dir }
    }

    /// The fixture folder (canonical, so that symlink checks compare like with like).
    pub fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical temp dir")
    }

    /// Writes `data` at `rel` (inside the fixture folder), creating folders; returns the path.
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(&p, data).expect("write fixture file");
        p
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(&p).expect("create folder");
        p
    }

    /// Creates a symbolic link at `rel` pointing to `target`.
    pub fn symlink(&self, target: impl AsRef<Path>, rel: &str) {
        let link = self.path().join(rel);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    /// Sets a file's modification time `secs_ago` seconds in the past.
    pub fn set_age(&self, rel: &str, secs_ago: u64) {
        let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
        let f = std::fs::File::options().write(true).open(self.path().join(rel)).expect("open to set mtime");
        f.set_modified(t).expect("set mtime");
    }

    /// Writes the config (with `{dir}` replaced by the fixture folder) to `servente.toml`.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let text = toml.replace("{dir}", &self.path().display().to_string());
        self.write("servente.toml", text)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("servente.toml")
    }

    /// Writes the config and starts `servente serve` on it.
    pub fn start(self, toml: &str) -> Server {
        self.start_with_env(toml, &[])
    }

    /// Like [`Fixture::start`], with extra environment variables for the server.
    pub fn start_with_env(self, toml: &str, env: &[(&str, &str)]) -> Server {
        let config = self.write_config(toml);
        let listeners = toml.matches("[[listener]]").count();
        let args = vec!["serve".to_string(), "--config".to_string(), config.display().to_string()];
        self.spawn(&args, env, listeners)
    }

    /// Runs the servente binary with `args` and waits until it announced `listeners` listeners.
    pub fn spawn(self, args: &[String], env: &[(&str, &str)], listeners: usize) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        cmd.env_remove("RUST_LOG").env_remove("SERVENTE_TEST_HOOKS").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn servente");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log: Arc<(Mutex<String>, Condvar)> = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let log2 = log.clone();
        // Drains stderr for the whole life of the process, so the pipe never fills.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let (m, cv) = &*log2;
                        m.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(&line));
                        cv.notify_all();
                    }
                }
            }
        });
        let mut server = Server { child: Some(child), log, fx: self, ready_at: Instant::now() };
        let deadline = Instant::now() + WAIT;
        loop {
            // "servente started" is logged after the listeners are announced, right before the
            // signal handlers are installed.
            let text = server.stderr();
            if text.matches("servente: listening on ").count() >= listeners && text.contains("servente started") {
                server.ready_at = Instant::now();
                break;
            }
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                // Give the drain thread a moment to collect the last words.
                std::thread::sleep(Duration::from_millis(100));
                panic!("servente exited early ({status}); stderr:\n{}", server.stderr());
            }
            assert!(Instant::now() < deadline, "servente did not announce {listeners} listeners in time; stderr:\n{}", server.stderr());
            server.wait_change(Duration::from_millis(50));
        }
        server
    }
}

/// A running `servente serve` process; killed when dropped.
pub struct Server {
    child: Option<Child>,
    log: Arc<(Mutex<String>, Condvar)>,
    /// The folder it serves from; tests may change files and the config while it runs.
    pub fx: Fixture,
    /// When the server said it started.
    ready_at: Instant,
}

impl Server {
    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child still owned")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child still owned").id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_change(&self, timeout: Duration) {
        let (m, cv) = &*self.log;
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        let _ = cv.wait_timeout(guard, timeout);
    }

    /// Waits (bounded) until stderr contains `needle` `count` times.
    pub fn wait_stderr_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wait_change(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_stderr_count(needle, 1, timeout)
    }

    /// Every listener announcement so far, in order: (name, url).
    pub fn announcements(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for line in self.stderr().lines() {
            let Some(rest) = line.strip_prefix("servente: listening on ") else { continue };
            let Some((url, tail)) = rest.split_once(" (listener \"") else { continue };
            let Some((name, _)) = tail.split_once('"') else { continue };
            out.push((name.to_string(), url.to_string()));
        }
        out
    }

    /// The announced URL of a listener (the latest announcement wins): `http://127.0.0.1:PORT`,
    /// `https://...`, or `unix:/path`.
    pub fn url(&self, name: &str) -> String {
        let map: HashMap<String, String> = self.announcements().into_iter().collect();
        map.get(name).cloned().unwrap_or_else(|| panic!("no listener named {name} announced; stderr:\n{}", self.stderr()))
    }

    /// `IP:PORT` of a TCP listener.
    pub fn addr(&self, name: &str) -> String {
        let url = self.url(name);
        url.split_once("://").map(|(_, a)| a.to_string()).unwrap_or_else(|| panic!("{name} is not a TCP listener: {url}"))
    }

    pub fn port(&self, name: &str) -> u16 {
        let addr = self.addr(name);
        addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port")
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`) with the `kill` command.
    ///
    /// servente announces its listeners (and logs "servente started") just *before* it installs
    /// its signal handlers, so a signal sent at once may still meet the default action (a
    /// SIGHUP would kill it). Leave it a moment after start-up first.
    pub fn signal(&self, sig: &str) {
        let settle = self.ready_at + Duration::from_millis(200);
        if let Some(rest) = settle.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        let status = Command::new("kill").arg("-s").arg(sig).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -s {sig} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child_mut().try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child_mut().try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `curl` got.
#[derive(Debug, Clone)]
pub struct Resp {
    /// curl's exit code (0 on success).
    pub exit: i32,
    /// 0 when there was no response.
    pub status: u16,
    /// `1.1`, `2`, ...
    pub version: String,
    /// Headers of the last response, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's stdout (only what `-w` writes, as the body goes to a file).
    pub stdout: String,
    /// curl's stderr (errors, and `-v` output).
    pub stderr: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs the real `curl` with `args` (plus silent mode, no config file, no proxy and time
/// limits) and returns the last response's status, headers and body.
pub fn curl(args: &[&str]) -> Resp {
    let tmp = tempfile::tempdir().expect("curl temp dir");
    let headers_file = tmp.path().join("headers");
    let body_file = tmp.path().join("body");
    let out = Command::new("curl")
        .arg("-q")
        .args(["-s", "-S", "--noproxy", "*", "--max-time", "20", "--connect-timeout", "5"])
        .arg("-D")
        .arg(&headers_file)
        .arg("-o")
        .arg(&body_file)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let raw_headers = std::fs::read_to_string(&headers_file).unwrap_or_default();
    let body = std::fs::read(&body_file).unwrap_or_default();
    let (status, version, headers) = parse_head(&raw_headers);
    Resp {
        exit: out.status.code().unwrap_or(-1),
        status,
        version,
        headers,
        body,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Parses the last `HTTP/...` block of a header dump.
fn parse_head(raw: &str) -> (u16, String, Vec<(String, String)>) {
    let normalized = raw.replace("\r\n", "\n");
    let Some(block) = normalized.split("\n\n").filter(|b| b.starts_with("HTTP/")).last() else {
        return (0, String::new(), Vec::new());
    };
    let mut lines = block.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("").trim_start_matches("HTTP/").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, version, headers)
}

/// One check of a data-driven table: curl `args` (the URL is `base` + `path`) and the status
/// expected.
pub struct Case<'a> {
    pub path: &'a str,
    pub args: &'a [&'a str],
    pub status: u16,
}

/// Runs every case and reports all failures at once.
pub fn expect_statuses(base: &str, cases: &[Case<'_>]) {
    let mut failures = Vec::new();
    for c in cases {
        let url = format!("{base}{}", c.path);
        let mut args: Vec<&str> = c.args.to_vec();
        args.push(&url);
        let r = curl(&args);
        if r.status != c.status {
            failures.push(format!("{} {:?}: expected {}, got {} ({}{})", c.path, c.args, c.status, r.status, r.text(), r.stderr));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr` with read and write timeouts set.
/// A loopback address that refuses connections for as long as this value lives: a socket
/// bound to it that never listens. (A port found by binding a listener and closing it again
/// can meanwhile be handed to another test's server, which then answers instead of refusing.)
pub struct RefusedPort {
    _socket: socket2::Socket,
    pub addr: String,
}

pub fn refused_port() -> RefusedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let addr = socket.local_addr().expect("addr").as_socket().expect("an IP address").to_string();
    RefusedPort { _socket: socket, addr }
}

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.set_write_timeout(Some(WAIT)).expect("write timeout");
    s
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or no body for HEAD/1xx/204/304).
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<RawResp> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed in the head: {head:?}")));
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("head too large"));
        }
    }
    let (status, _, headers) = parse_head(&head);
    let mut resp = RawResp { status, head, headers, body: Vec::new() };
    if head_request || status < 200 || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16).map_err(io::Error::other)?;
            if size == 0 {
                let mut trailer = String::new();
                while r.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(io::Error::other)?;
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Sends a GET on a new connection and reads the answer.
pub fn raw_get(addr: &str, path: &str) -> RawResp {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send request");
    read_response(&mut BufReader::new(s), false).expect("read response")
}

/// Polls `f` every 20ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the peer closes (Ok(bytes)) or the read timeout/error hits (Err).
pub fn read_until_close(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Text of a given size from repeated CSS, compressible.
pub fn css_text(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 64);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(&format!(".rule-{i} {{ color: #{:06x}; margin: {}px; }}\n", (i * 7919) % 0xffffff, i % 17));
        i += 1;
    }
    s.truncate(bytes);
    s
}

/// Bytes that do not compress (a simple xorshift stream), deterministic.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid gzip member holding `data` in stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Generates a self-signed certificate with `servente cert self-signed` into `out_dir`.
pub fn self_signed(host: &str, out_dir: &Path) {
    let out = Command::new(BIN)
        .args(["cert", "self-signed", "--host", host, "--out-dir"])
        .arg(out_dir)
        .output()
        .expect("run servente cert self-signed");
    assert!(out.status.success(), "cert self-signed failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the servente binary with `args` (a command that ends on its own, such as `check` or
/// `--help`), bounded by [`WAIT`]; returns (exit code, stdout, stderr).
pub fn run_servente(args: &[&str]) -> (i32, String, String) {
    run_servente_with_input(args, None)
}

/// Like [`run_servente`], with `stdin` (if any) as the command's standard input.
pub fn run_servente_with_input<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
    run_bounded(cmd, stdin, WAIT)
}

/// Runs a command to its end and returns (exit code, stdout, stderr); one still running after
/// `limit` gets SIGTERM (a script may then stop what it started), SIGKILL 5 s later, and the
/// test fails.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> (i32, String, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let _ = pipe.write_all(text.as_bytes());
        // Dropping the pipe closes it: the command sees the end of its input.
    }
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("command output");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-s", "TERM", &pid]).status();
            if rx.recv_timeout(Duration::from_secs(5)).is_err() {
                let _ = Command::new("kill").args(["-s", "KILL", &pid]).status();
            }
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

//! The file role from the outside: real WebDAV clients (litmus, rclone, cadaver, davfs2) and curl
//! against a real `servente serve` whose users are made with the CLI. Permissions of homes,
//! group and shared folders; quotas (507, RFC 4331); partial, interrupted and concurrent
//! uploads; a crash mid-upload; hostile paths, headers and XML; locks between users;
//! conditional requests; the file manager's JSON API (sessions and CSRF, resumable uploads,
//! share links, zip downloads).
//!
//! Every server listens on 127.0.0.1 with port 0 and has its own data folder; every external
//! command runs with a time limit and is killed (by its pid) when it overruns or the test ends.
//!
//! Tests whose comment starts "Was a bug" guard against server bugs found while writing these
//! tests (all fixed): each says what is sent and what must come back.

mod common;

use std::io::{BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, Resp, Server, connect, curl, noise, read_response, run_servente_with_input, wait_until};
use serde_json::{Value, json};

/// (user, password). alice and carol are in the group `staff`; bob is in none.
type Who<'a> = (&'a str, &'a str);
const ALICE: Who<'static> = ("alice", "alice-password-1");
const BOB: Who<'static> = ("bob", "bob-password-1");
const CAROL: Who<'static> = ("carol", "carol-password-1");

/// Shared folders: `docs` read by every user and written by alice; `staffonly` read by staff.
const FOLDERS: &str = r#"
[[files.folder]]
name = "docs"
read = ["users"]
write = ["user:alice"]

[[files.folder]]
name = "staffonly"
read = ["group:staff"]
"#;

const LOCK_BODY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>";
const QUOTA_PROPS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propfind xmlns:D=\"DAV:\"><D:prop><D:quota-used-bytes/><D:quota-available-bytes/></D:prop></D:propfind>";

fn proppatch_body(ns: &str, name: &str, value: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop><Z:{name} xmlns:Z=\"{ns}\">{value}</Z:{name}></D:prop></D:set></D:propertyupdate>"
    )
}

fn propfind_one(ns: &str, name: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propfind xmlns:D=\"DAV:\"><D:prop><Z:{name} xmlns:Z=\"{ns}\"/></D:prop></D:propfind>"
    )
}

// ---------------------------------------------------------------------------------------------
// A server with the file role

/// A config with one web listener on 127.0.0.1, a site mounting the file role at `/files/`,
/// and `files` in the `[files]` section (keys first, then `[[files.folder]]` tables).
fn toml(data_dir: &str, files: &str) -> String {
    format!(
        r#"[server]
data_dir = "{data_dir}"
shutdown_grace = "5s"

[access_log]
output = "off"

[files]
{files}

[[listener]]
name = "web"
address = "127.0.0.1:0"

[[site]]
name = "main"
root = "root"
files = "/files/"
"#
    )
}

/// Makes the group `staff` and the users alice, bob and carol in the directory at `data`.
fn add_users(data: &Path) {
    let d = data.display().to_string();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--data-dir", &d]);
        let (code, out, err) = run_servente_with_input(&full, stdin);
        assert_eq!(code, 0, "servente {args:?} failed: {out}{err}");
    };
    run(&["group", "add", "staff"], None);
    for ((user, pw), staff) in [(ALICE, true), (BOB, false), (CAROL, true)] {
        let mut args = vec!["user", "add", user, "--password-stdin"];
        if staff {
            args.extend(["--group", "staff"]);
        }
        run(&args, Some(&format!("{pw}\n")));
    }
}

/// A running servente with the file role, and where its data lives.
struct Dav {
    server: Server,
    /// `http://127.0.0.1:PORT`
    origin: String,
    data: PathBuf,
}

impl Dav {
    /// A server on a new fixture, with the three users, and `files` in `[files]`.
    fn start(files: &str) -> Dav {
        let fx = Fixture::new();
        let data = fx.path().join("data");
        add_users(&data);
        Dav::start_on(fx, data, "{dir}/data", files)
    }

    fn start_on(fx: Fixture, data: PathBuf, data_dir: &str, files: &str) -> Dav {
        let server = fx.start(&toml(data_dir, files));
        let origin = server.url("web");
        Dav { server, origin, data }
    }

    /// The WebDAV URL of `path` (`/users/alice/a.txt`).
    fn url(&self, path: &str) -> String {
        format!("{}/files/dav{path}", self.origin)
    }

    /// A URL under the mount (`api/session`, `s/ID`).
    fn mount(&self, rest: &str) -> String {
        format!("{}/files/{rest}", self.origin)
    }

    /// The files root on disk (`users/`, `groups/`, `shared/`, `.tmp/`).
    fn disk(&self, rel: &str) -> PathBuf {
        self.data.join("files").join(rel)
    }

    /// `METHOD url` as `who`, with `args` before the URL.
    fn call_url(&self, who: Who<'_>, method: &str, url: &str, args: &[&str]) -> Resp {
        let user = format!("{}:{}", who.0, who.1);
        let mut a = vec!["-g", "-u", &user, "-X", method];
        a.extend_from_slice(args);
        a.push(url);
        curl(&a)
    }

    /// `METHOD` on a WebDAV path as `who`.
    fn call(&self, who: Who<'_>, method: &str, path: &str, args: &[&str]) -> Resp {
        self.call_url(who, method, &self.url(path), args)
    }

    fn get(&self, who: Who<'_>, path: &str) -> Resp {
        self.call(who, "GET", path, &[])
    }

    fn put(&self, who: Who<'_>, path: &str, data: &[u8]) -> Resp {
        self.put_with(who, path, data, &[])
    }

    /// PUT `data` with extra curl `args` (headers).
    fn put_with(&self, who: Who<'_>, path: &str, data: &[u8], args: &[&str]) -> Resp {
        let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
        tmp.write_all(data).expect("write body");
        let at = format!("@{}", tmp.path().display());
        let mut a = vec!["--data-binary", &at, "-H", "Content-Type: application/octet-stream"];
        a.extend_from_slice(args);
        self.call(who, "PUT", path, &a)
    }

    /// PUT that must succeed (201 or 204).
    fn put_ok(&self, who: Who<'_>, path: &str, data: &[u8]) {
        let r = self.put(who, path, data);
        assert!(matches!(r.status, 201 | 204), "PUT {path} as {}: {} {}{}", who.0, r.status, r.text(), r.stderr);
    }

    fn mkcol_ok(&self, who: Who<'_>, path: &str) {
        let r = self.call(who, "MKCOL", path, &[]);
        assert_eq!(r.status, 201, "MKCOL {path} as {}: {}{}", who.0, r.text(), r.stderr);
    }

    fn propfind(&self, who: Who<'_>, path: &str, depth: &str, body: Option<&str>) -> Resp {
        let depth = format!("Depth: {depth}");
        let mut a = vec!["-H", &depth, "-H", "Content-Type: application/xml"];
        if let Some(b) = body {
            a.extend(["--data-binary", b]);
        }
        self.call(who, "PROPFIND", path, &a)
    }

    /// The hrefs of a Depth 1 listing (which must answer 207).
    fn listing(&self, who: Who<'_>, path: &str) -> Vec<String> {
        let r = self.propfind(who, path, "1", None);
        assert_eq!(r.status, 207, "PROPFIND {path}: {}", r.text());
        hrefs(&r.text())
    }

    /// LOCKs `path` as `who`; returns the lock token (without the angle brackets).
    fn lock(&self, who: Who<'_>, path: &str) -> String {
        let r =
            self.call(who, "LOCK", path, &["-H", "Timeout: Second-600", "-H", "Content-Type: application/xml", "--data-binary", LOCK_BODY]);
        assert!(matches!(r.status, 200 | 201), "LOCK {path} as {}: {} {}", who.0, r.status, r.text());
        let token = r.header("lock-token").unwrap_or_else(|| panic!("no Lock-Token: {r:?}"));
        token.trim().trim_start_matches('<').trim_end_matches('>').to_string()
    }

    /// Runs `servente ARGS --data-dir DATA`, which must succeed; returns its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let d = self.data.display().to_string();
        let mut full = args.to_vec();
        full.extend(["--data-dir", &d]);
        let (code, out, err) = run_servente_with_input(&full, None);
        assert_eq!(code, 0, "servente {args:?}: {out}{err}");
        out
    }

    /// Files in the upload temp folder (`.tmp` beside the areas).
    fn temp_files(&self) -> Vec<(String, u64)> {
        std::fs::read_dir(self.disk(".tmp"))
            .map(|rd| {
                rd.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0))).collect()
            })
            .unwrap_or_default()
    }
}

/// The `<D:href>`s of a multistatus, in order.
fn hrefs(xml: &str) -> Vec<String> {
    responses(xml).into_iter().map(|(h, _)| h).collect()
}

/// Each `<D:response>` of a multistatus: (href, its XML).
fn responses(xml: &str) -> Vec<(String, String)> {
    xml.split("<D:response>")
        .skip(1)
        .map(|chunk| {
            let href = between(chunk, "<D:href>", "</D:href>").unwrap_or_default();
            (href, chunk.to_string())
        })
        .collect()
}

/// The text of `<D:name>` in a response's XML (None when absent or reported without value).
fn dav_prop(chunk: &str, name: &str) -> Option<String> {
    between(chunk, &format!("<D:{name}>"), &format!("</D:{name}>"))
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(s[start..start + len].to_string())
}

/// Asserts `r` has `status`, showing the body on failure.
#[track_caller]
fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: got {} {}{}", r.status, r.text(), r.stderr);
}

// ---------------------------------------------------------------------------------------------
// External commands

/// Runs `cmd` (with `stdin`, if any) and waits at most `limit`; a command still running then is
/// killed by its pid and the test fails.
fn run(cmd: &mut Command, stdin: Option<Vec<u8>>, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("command output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

fn joined<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    a.iter().chain(b).copied().collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A child process (curl in the background) killed and reaped when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SHA-256 of `data` as hex, by coreutils' sha256sum (the test build is unoptimized).
fn sha256_hex(data: &[u8]) -> String {
    let out = run(&mut Command::new("sha256sum"), Some(data.to_vec()), Duration::from_secs(30));
    text(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// `{relative path: [size, sha256]}` of every file under `dir`, by python3.
fn manifest(dir: &Path) -> Value {
    const SCRIPT: &str = r#"
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        h = hashlib.sha256()
        with open(p, 'rb') as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b''):
                h.update(chunk)
        out[os.path.relpath(p, root)] = [os.path.getsize(p), h.hexdigest()]
json.dump(out, sys.stdout)
"#;
    let out = run(Command::new("python3").args(["-c", SCRIPT]).arg(dir), None, Duration::from_secs(60));
    assert!(out.status.success(), "manifest of {}: {}", dir.display(), text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("manifest JSON")
}

/// What python3's zipfile makes of a zip: `{"bad": first bad member or null, "files": {name:
/// sha256}, "dirs": [names]}`.
fn read_zip(data: &[u8]) -> Value {
    const SCRIPT: &str = r#"
import hashlib, io, json, sys, zipfile
z = zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read()))
out = {"bad": z.testzip(), "files": {}, "dirs": []}
for i in z.infolist():
    if i.is_dir():
        out["dirs"].append(i.filename)
    else:
        out["files"][i.filename] = hashlib.sha256(z.read(i)).hexdigest()
json.dump(out, sys.stdout)
"#;
    let out = run(Command::new("python3").args(["-c", SCRIPT]), Some(data.to_vec()), Duration::from_secs(30));
    assert!(out.status.success(), "not a valid zip: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("zip JSON")
}

/// Standard base64, for hand-made Basic headers.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Real WebDAV clients

/// Debian's litmus (the WebDAV compliance suite) against alice's home: every suite at 100%.
#[test]
fn litmus_passes_every_suite() {
    let dav = Dav::start("");
    let cwd = tempfile::tempdir().expect("litmus folder");
    let url = dav.url("/users/alice/");
    let out = run(
        Command::new("litmus").args(["-k", &url, ALICE.0, ALICE.1]).current_dir(cwd.path()).env("TESTS", "basic copymove props locks http"),
        None,
        Duration::from_secs(120),
    );
    let stdout = text(&out.stdout);
    let summaries: Vec<&str> = stdout.lines().filter(|l| l.starts_with("<- summary for")).collect();
    for line in &summaries {
        println!("{line}");
    }
    for line in stdout.lines().filter(|l| l.contains("WARNING")) {
        println!("litmus warning: {}", line.trim());
    }
    let mut failures = Vec::new();
    for suite in ["basic", "copymove", "props", "locks", "http"] {
        match summaries.iter().find(|l| l.contains(&format!("`{suite}'"))) {
            Some(l) if l.trim_end().ends_with("100.0%") => {}
            Some(l) => failures.push(l.to_string()),
            None => failures.push(format!("no summary for {suite}")),
        }
    }
    assert!(failures.is_empty(), "litmus: {failures:?}\nstdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(out.status.success(), "litmus exited with {}", out.status);
}

/// Folder and file names for the rclone tree: non-ASCII, spaces, URL-special characters.
const NAMES: [&str; 8] = ["café", "naïve file", "日本語", "emoji 🎉", "Ωmega ß", "100% done", "x&y+z #1", "[brackets] 'q' ;="];

/// rclone (Debian's, webdav backend, vendor "other"): 1,000 small files in nested folders with
/// such names, plus one 100 MiB file, go up; `rclone check` finds them identical; they come back
/// down byte for byte; `rclone about` reports the quota.
#[test]
fn rclone_round_trips_a_unicode_tree_and_a_large_file() {
    let dav = Dav::start("quotas = { alice = \"1 GiB\" }");
    let work = tempfile::tempdir().expect("rclone folder");
    let src = work.path().join("src");
    let mut small = 0u64;
    for i in 0..10 {
        for j in 0..10 {
            let dir = src.join(format!("{} {i}", NAMES[i % 8])).join(format!("sub {} {j}", NAMES[(i + j) % 8]));
            std::fs::create_dir_all(&dir).expect("source folder");
            for k in 0..10 {
                let n = i * 100 + j * 10 + k;
                let data = noise(1 + (n * 37) % 3000, n as u64 + 1);
                small += data.len() as u64;
                std::fs::write(dir.join(format!("fïle {k} {}.txt", NAMES[(j + k) % 8])), data).expect("source file");
            }
        }
    }
    let big = 100u64 << 20;
    {
        let mut f = std::fs::File::create(src.join("big file ✓.bin")).expect("big file");
        let copied = std::io::copy(&mut std::fs::File::open("/dev/urandom").expect("urandom").take(big), &mut f).expect("fill big file");
        assert_eq!(copied, big);
    }
    let source = manifest(&src);
    assert_eq!(source.as_object().map(|m| m.len()), Some(1001));

    let obscured = run(Command::new("rclone").args(["obscure", ALICE.1]), None, Duration::from_secs(20));
    assert!(obscured.status.success(), "rclone obscure: {}", text(&obscured.stderr));
    let envs: Vec<(&str, String)> = vec![
        ("RCLONE_CONFIG", work.path().join("rclone.conf").display().to_string()),
        ("RCLONE_CACHE_DIR", work.path().join("cache").display().to_string()),
        ("RCLONE_CONFIG_S_TYPE", "webdav".into()),
        ("RCLONE_CONFIG_S_URL", dav.url("/users/alice/")),
        ("RCLONE_CONFIG_S_VENDOR", "other".into()),
        ("RCLONE_CONFIG_S_USER", ALICE.0.into()),
        ("RCLONE_CONFIG_S_PASS", text(&obscured.stdout).trim().to_string()),
    ];
    let rclone = |args: &[&str], limit: u64| {
        let mut cmd = Command::new("rclone");
        cmd.args(args).args(["--retries", "1", "--low-level-retries", "1"]).env("NO_PROXY", "*").env_remove("HTTP_PROXY");
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let t = Instant::now();
        let out = run(&mut cmd, None, Duration::from_secs(limit));
        println!("rclone {} took {:.1?}", args[0], t.elapsed());
        assert!(out.status.success(), "rclone {args:?} failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
        out
    };

    let src_s = src.display().to_string();
    let out = rclone(&["copy", &src_s, "s:tree", "--transfers", "8", "--checkers", "8"], 300);
    let errors: Vec<String> = text(&out.stderr).lines().filter(|l| l.contains("ERROR")).map(str::to_string).collect();
    assert!(errors.is_empty(), "rclone copy up logged errors: {errors:?}");
    assert!(dav.temp_files().is_empty(), "temp files left after the uploads: {:?}", dav.temp_files());
    assert_eq!(manifest(&dav.disk("users/alice/tree")), source, "what the server stored differs from the source");

    let out = rclone(&["check", &src_s, "s:tree", "--checkers", "8"], 120);
    let log = text(&out.stderr);
    assert!(log.contains(" 0 differences found") && log.contains("1001 matching files"), "rclone check:\n{log}");

    let down = work.path().join("down");
    let down_s = down.display().to_string();
    rclone(&["copy", "s:tree", &down_s, "--transfers", "8", "--checkers", "8"], 300);
    assert_eq!(manifest(&down), source, "the tree copied back down differs from the source");

    let out = rclone(&["about", "s:", "--json"], 30);
    let about: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("rclone about: {e}: {}", text(&out.stdout)));
    let used = small + big;
    assert_eq!(about["total"], json!(1u64 << 30), "{about}");
    assert_eq!(about["used"], json!(used), "{about}");
    assert_eq!(about["free"], json!((1u64 << 30) - used), "{about}");
}

/// cadaver, scripted on its standard input, with the password in a temporary HOME's .netrc.
#[test]
fn cadaver_scripted_session() {
    let dav = Dav::start("");
    let home = tempfile::tempdir().expect("cadaver home");
    let netrc = home.path().join(".netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1\nlogin {}\npassword {}\n", ALICE.0, ALICE.1)).expect("netrc");
    std::fs::set_permissions(&netrc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("netrc mode");
    std::fs::write(home.path().join("local.txt"), "hello from cadaver\n").expect("local file");
    std::fs::write(home.path().join("second.txt"), "second version\n").expect("local file");
    let script = "\
mkcol cdir
cd cdir
put local.txt
ls
propset local.txt myprop myvalue
propget local.txt myprop
lock local.txt
discover local.txt
put second.txt local.txt
unlock local.txt
copy local.txt copy.txt
move copy.txt moved.txt
propget moved.txt myprop
get moved.txt got.txt
ls
delete local.txt
ls
quit
";
    let out = run(
        Command::new("cadaver").arg(dav.url("/users/alice/")).current_dir(home.path()).env("HOME", home.path()),
        Some(script.as_bytes().to_vec()),
        Duration::from_secs(60),
    );
    let o = text(&out.stdout) + &text(&out.stderr);
    println!("{o}");
    for needle in [
        "Creating `cdir': succeeded.",
        "Uploading local.txt to `/files/dav/users/alice/cdir/local.txt':",
        "Setting property on `local.txt': succeeded.",
        "Value of myprop is: myvalue",
        "Locking `local.txt': succeeded.",
        "Lock token <",
        "Uploading second.txt to `/files/dav/users/alice/cdir/local.txt':",
        "Unlocking `local.txt': succeeded.",
        "Copying `/files/dav/users/alice/cdir/local.txt' to `/files/dav/users/alice/cdir/copy.txt':  succeeded.",
        "Moving `/files/dav/users/alice/cdir/copy.txt' to `/files/dav/users/alice/cdir/moved.txt':  succeeded.",
        "Downloading `/files/dav/users/alice/cdir/moved.txt' to got.txt:",
        "Deleting `local.txt': succeeded.",
    ] {
        assert!(o.contains(needle), "cadaver did not say {needle:?}:\n{o}");
    }
    assert!(!o.contains("failed"), "a cadaver command failed:\n{o}");
    assert_eq!(o.matches("Value of myprop is: myvalue").count(), 2, "the dead property travels with COPY and MOVE:\n{o}");
    let got = std::fs::read_to_string(home.path().join("got.txt")).expect("cadaver downloaded got.txt");
    assert_eq!(got, "second version\n", "the locked PUT replaced the file, and COPY/MOVE carried it");
    // The last listing shows moved.txt only.
    let last_ls = o.rsplit("Listing collection").next().unwrap_or_default();
    assert!(last_ls.contains("moved.txt") && !last_ls.contains("local.txt"), "{last_ls}");
    // And the server agrees.
    let hrefs = dav.listing(ALICE, "/users/alice/cdir/");
    assert_eq!(hrefs, ["/files/dav/users/alice/cdir/", "/files/dav/users/alice/cdir/moved.txt"]);
    let r = dav.propfind(
        ALICE,
        "/users/alice/cdir/moved.txt",
        "0",
        Some(&propfind_one("http://webdav.org/cadaver/custom-properties/", "myprop")),
    );
    assert!(r.text().contains(">myvalue<"), "{}", r.text());
}

/// davfs2 mounts alice's home through FUSE, as people mount a WebDAV share on Linux. What the
/// server holds shows in the mount; files written, renamed, copied and deleted there reach the
/// server whole (davfs2 LOCKs each new file, PUTs it on close, then UNLOCKs), and no lock or
/// temporary file is left once it is unmounted. Needs root and /dev/fuse (as CI has); skipped
/// with a note elsewhere.
#[test]
fn davfs2_mount_reads_and_writes() {
    let uid = run(Command::new("id").arg("-u"), None, Duration::from_secs(10));
    if text(&uid.stdout).trim() != "0" || !Path::new("/dev/fuse").exists() {
        println!("skipped: mounting with davfs2 needs root and /dev/fuse");
        return;
    }
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/pre/");
    dav.put_ok(ALICE, "/users/alice/pre/hello.txt", b"from the server\n");
    let dir = tempfile::tempdir().expect("davfs2 folder");
    // mount.davfs makes its cache under `cache` after giving up root for its own user.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("folder mode");
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    std::fs::create_dir(&mnt).expect("mount point");
    std::fs::create_dir(&cache).expect("cache folder");
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("cache mode");
    let url = dav.url("/users/alice/");
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{url} {} {}\n", ALICE.0, ALICE.1)).expect("secrets");
    std::fs::set_permissions(&secrets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("secrets mode");
    let conf = dir.path().join("davfs2.conf");
    // buf_size: davfs2 1.6 with its default 16 KiB buffer cannot list folders on Linux 6.16
    // and later (every readdir fails with EINVAL); 64 KiB is the known workaround.
    // delay_upload 0: a closed file goes up at once, so the server can be checked while mounted.
    std::fs::write(&conf, format!("secrets {}\ncache_dir {}\nbuf_size 64\ndelay_upload 0\n", secrets.display(), cache.display()))
        .expect("davfs2.conf");
    let out = run(
        Command::new("mount.davfs").arg("-o").arg(format!("conf={}", conf.display())).arg(&url).arg(&mnt),
        None,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "mount.davfs failed: {}{}", text(&out.stdout), text(&out.stderr));
    let mounted = DavfsMount(mnt.clone());

    // The server's files show in the mount.
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("listing {}: {e}", d.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lost+found")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&mnt), ["pre"]);
    assert_eq!(std::fs::read_to_string(mnt.join("pre/hello.txt")).expect("read through the mount"), "from the server\n");

    // Writes through the mount.
    std::fs::write(mnt.join("notes.txt"), "first line\n").expect("write notes.txt");
    std::fs::create_dir(mnt.join("docs")).expect("mkdir docs");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(mnt.join("docs/big.bin"), &big).expect("write big.bin");
    std::fs::rename(mnt.join("notes.txt"), mnt.join("docs/notes.txt")).expect("rename notes.txt");
    std::fs::copy(mnt.join("docs/big.bin"), mnt.join("docs/copy.bin")).expect("copy big.bin");
    std::fs::remove_file(mnt.join("pre/hello.txt")).expect("rm hello.txt");
    std::fs::remove_dir(mnt.join("pre")).expect("rmdir pre");
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("docs/notes.txt")).expect("open notes.txt");
    f.write_all(b"second line\n").expect("append");
    drop(f);
    assert_eq!(names(&mnt.join("docs")), ["big.bin", "copy.bin", "notes.txt"]);

    // The server has them while the share is still mounted.
    let arrived =
        wait_until(Duration::from_secs(20), || dav.get(ALICE, "/users/alice/docs/notes.txt").text() == "first line\nsecond line\n");
    assert!(arrived, "notes.txt did not reach the server while mounted");
    drop(mounted);
    assert_eq!(dav.get(ALICE, "/users/alice/docs/notes.txt").text(), "first line\nsecond line\n");
    for name in ["big.bin", "copy.bin"] {
        let got = dav.get(ALICE, &format!("/users/alice/docs/{name}"));
        expect(&got, 200, name);
        assert!(got.body == big, "{name} arrived whole ({} bytes of {})", got.body.len(), big.len());
    }
    expect(&dav.get(ALICE, "/users/alice/pre/"), 404, "the removed folder");
    assert_eq!(
        dav.listing(ALICE, "/users/alice/"),
        ["/files/dav/users/alice/", "/files/dav/users/alice/docs/"],
        "only what the mount left"
    );
    assert!(dav.temp_files().is_empty(), "temporary files left: {:?}", dav.temp_files());
    // Every lock davfs2 took was given back: another client may write.
    dav.put_ok(ALICE, "/users/alice/docs/notes.txt", b"after the unmount\n");
}

/// A davfs2 mount, unmounted when dropped: `umount` waits for mount.davfs to upload what it
/// still holds; a lazy unmount follows in case that failed, so a test never leaves a mount.
struct DavfsMount(PathBuf);

impl Drop for DavfsMount {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !quiet(Command::new("umount").arg(&self.0)).is_ok_and(|s| s.success()) {
            let _ = quiet(Command::new("umount").arg("-l").arg(&self.0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Permissions

#[test]
fn homes_groups_and_shared_folders_keep_to_their_rules() {
    let dav = Dav::start(FOLDERS);
    dav.put_ok(ALICE, "/users/alice/secret.txt", b"alice's secret\n");
    dav.put_ok(BOB, "/users/bob/own.txt", b"bob's\n");

    // Nobody else sees a home: 404, not 403, so that names do not leak.
    expect(&dav.get(BOB, "/users/alice/secret.txt"), 404, "bob reads alice's file");
    expect(&dav.propfind(BOB, "/users/alice/", "1", None), 404, "bob lists alice's home");
    expect(&dav.call(BOB, "DELETE", "/users/alice/secret.txt", &[]), 404, "bob deletes alice's file");
    let r = dav.call(BOB, "COPY", "/users/alice/secret.txt", &["-H", &format!("Destination: {}", dav.url("/users/bob/stolen.txt"))]);
    expect(&r, 404, "bob copies alice's file to his home");
    let r = dav.put(BOB, "/users/alice/planted.txt", b"x");
    assert!(matches!(r.status, 403 | 404 | 409), "bob writes into alice's home: {}", r.status);
    let r = dav.call(ALICE, "MOVE", "/users/alice/secret.txt", &["-H", &format!("Destination: {}", dav.url("/users/bob/gift.txt"))]);
    assert!(matches!(r.status, 403 | 404 | 409 | 502), "alice moves into bob's home: {}", r.status);
    assert!(!dav.disk("users/alice/planted.txt").exists() && !dav.disk("users/bob/stolen.txt").exists());
    assert!(!dav.disk("users/bob/gift.txt").exists() && dav.disk("users/alice/secret.txt").exists());
    assert_eq!(dav.listing(BOB, "/users/"), ["/files/dav/users/", "/files/dav/users/bob/"], "bob sees his own home only");
    assert_eq!(dav.get(ALICE, "/users/alice/secret.txt").text(), "alice's secret\n");

    // A read-only shared folder: readers read, only writers write.
    dav.put_ok(ALICE, "/shared/docs/handbook.txt", b"read me\n");
    assert_eq!(dav.get(BOB, "/shared/docs/handbook.txt").text(), "read me\n");
    expect(&dav.put(BOB, "/shared/docs/handbook.txt", b"defaced"), 403, "a reader overwrites");
    expect(&dav.put(BOB, "/shared/docs/new.txt", b"new"), 403, "a reader creates");
    expect(&dav.call(BOB, "DELETE", "/shared/docs/handbook.txt", &[]), 403, "a reader deletes");
    expect(&dav.call(BOB, "MKCOL", "/shared/docs/d/", &[]), 403, "a reader makes a folder");
    let r = dav.call(BOB, "PROPPATCH", "/shared/docs/handbook.txt", &["--data-binary", &proppatch_body("urn:x", "tag", "bob")]);
    expect(&r, 403, "a reader sets a property");
    let r = dav.call(BOB, "LOCK", "/shared/docs/new.txt", &["--data-binary", LOCK_BODY]);
    expect(&r, 403, "a reader locks a new name in a read-only folder");
    let r = dav.call(BOB, "MOVE", "/shared/docs/handbook.txt", &["-H", &format!("Destination: {}", dav.url("/users/bob/h.txt"))]);
    expect(&r, 403, "a reader moves a file out");
    // Nor may a reader publish it with a share link; a writer may.
    let share = |who: (&str, &str), path: &str| {
        let body = json!({ "path": path }).to_string();
        let auth = format!("{}:{}", who.0, who.1);
        api(&["-u", &auth, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body], &dav.mount("api/shares")).0
    };
    expect(&share(BOB, "/shared/docs/handbook.txt"), 403, "a reader shares a read-only folder's file");
    expect(&share(BOB, "/shared/docs"), 403, "a reader shares a read-only folder");
    expect(&share(ALICE, "/shared/docs/handbook.txt"), 201, "a writer shares a file of the folder");
    let r = dav.call(BOB, "COPY", "/shared/docs/handbook.txt", &["-H", &format!("Destination: {}", dav.url("/users/bob/h.txt"))]);
    expect(&r, 201, "a reader copies a file to his home");
    assert_eq!(dav.get(ALICE, "/shared/docs/handbook.txt").text(), "read me\n");
    assert!(!dav.disk("shared/docs/new.txt").exists() && !dav.disk("shared/docs/d").exists());
    dav.put_ok(ALICE, "/shared/docs/handbook.txt", b"read me, v2\n");

    // A folder readable by a group only is invisible to others.
    let bob_shared = dav.listing(BOB, "/shared/");
    assert_eq!(bob_shared, ["/files/dav/shared/", "/files/dav/shared/docs/"], "bob does not see staffonly");
    expect(&dav.propfind(BOB, "/shared/staffonly/", "0", None), 404, "bob opens staffonly");
    expect(&dav.propfind(CAROL, "/shared/staffonly/", "0", None), 207, "carol opens staffonly");
    expect(&dav.put(CAROL, "/shared/staffonly/x.txt", b"x"), 403, "staffonly has no writers");

    // A group folder: members read and write, others see nothing.
    dav.put_ok(ALICE, "/groups/staff/plan.txt", b"plan v1\n");
    assert_eq!(dav.get(CAROL, "/groups/staff/plan.txt").text(), "plan v1\n");
    dav.put_ok(CAROL, "/groups/staff/plan.txt", b"plan v2\n");
    assert_eq!(dav.get(ALICE, "/groups/staff/plan.txt").text(), "plan v2\n");
    expect(&dav.get(BOB, "/groups/staff/plan.txt"), 404, "bob reads the staff folder");
    let r = dav.put(BOB, "/groups/staff/bob.txt", b"x");
    assert!(matches!(r.status, 403 | 404 | 409), "bob writes into the staff folder: {}", r.status);
    assert!(!dav.disk("groups/staff/bob.txt").exists());
    assert_eq!(dav.listing(BOB, "/groups/"), ["/files/dav/groups/"], "bob is in no group");
    assert_eq!(dav.listing(ALICE, "/groups/"), ["/files/dav/groups/", "/files/dav/groups/staff/"]);

    // The top is a read-only listing.
    let top = dav.listing(BOB, "/");
    assert_eq!(top, ["/files/dav/", "/files/dav/users/", "/files/dav/shared/"], "bob has no group folder");
    for (method, path) in [("PUT", "/x.txt"), ("MKCOL", "/users/mallory/"), ("MKCOL", "/newtop/"), ("PUT", "/users/x.txt")] {
        let r = dav.call(ALICE, method, path, &[]);
        assert!((400..500).contains(&r.status), "{method} {path}: {}", r.status);
    }

    // Credentials: none (401 with a Basic challenge), wrong, a token with and without the `user` scope.
    let r = curl(&[&dav.url("/users/alice/secret.txt")]);
    expect(&r, 401, "no credentials");
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Basic ")), "{r:?}");
    expect(&dav.get(("alice", "wrong-password"), "/users/alice/secret.txt"), 401, "wrong password");
    let token = |scope: &str| {
        let out = dav.cli(&["token", "create", "--user", "alice", "--name", scope, "--scope", scope]);
        out.lines().find_map(|l| l.strip_prefix("secret: ")).expect("token secret").to_string()
    };
    let user_token = format!("Authorization: Bearer {}", token("user"));
    let r = curl(&["-H", &user_token, &dav.url("/users/alice/secret.txt")]);
    assert_eq!((r.status, r.text().as_str()), (200, "alice's secret\n"), "a `user` token");
    let r = curl(&["-H", &user_token, "-X", "PUT", "--data-binary", "by token", &dav.url("/users/alice/token.txt")]);
    expect(&r, 201, "a `user` token writes, no CSRF token needed");
    let secret = user_token.trim_start_matches("Authorization: Bearer ").to_string();
    let r = dav.get(("alice", &secret), "/users/alice/secret.txt");
    expect(&r, 200, "a `user` token as alice's Basic password");
    expect(&dav.get(("bob", &secret), "/users/bob/own.txt"), 401, "alice's token as bob's password");
    let admin_token = format!("Authorization: Bearer {}", token("admin:read"));
    expect(&curl(&["-H", &admin_token, &dav.url("/users/alice/secret.txt")]), 403, "a token without the `user` scope");
    expect(&curl(&["-H", "Authorization: Bearer st_0123456789abcdef_nope", &dav.url("/users/alice/")]), 401, "a made-up token");
}

// ---------------------------------------------------------------------------------------------
// Quotas

#[test]
fn quota_overflow_is_507_and_leaves_the_old_file() {
    let dav = Dav::start("quota = \"10 MiB\"\nquotas = { bob = \"1 MiB\" }");
    let old = noise(600_000, 1);
    dav.put_ok(BOB, "/users/bob/a.bin", &old);
    dav.put_ok(BOB, "/users/bob/b.bin", &noise(300_000, 2));
    // 600k + 300k + 200k > 1 MiB.
    expect(&dav.put(BOB, "/users/bob/c.bin", &noise(200_000, 3)), 507, "a new file past the quota");
    assert!(!dav.disk("users/bob/c.bin").exists());
    // Replacing a file counts the old one out: 700k + 300k fits, 800k + 300k does not.
    let bigger = noise(800_000, 4);
    expect(&dav.put(BOB, "/users/bob/a.bin", &bigger), 507, "a replacement past the quota");
    assert!(dav.get(BOB, "/users/bob/a.bin").body == old, "the old file is intact after a 507");
    // Without a Content-Length (chunked), the quota is found out mid-body.
    expect(&dav.put_with(BOB, "/users/bob/a.bin", &bigger, &["-H", "Transfer-Encoding: chunked"]), 507, "a chunked PUT past the quota");
    assert!(dav.get(BOB, "/users/bob/a.bin").body == old, "the old file is intact after a chunked 507");
    expect(&dav.put(BOB, "/users/bob/a.bin", &noise(700_000, 5)), 204, "a replacement that fits");
    assert!(dav.temp_files().is_empty(), "temp files left: {:?}", dav.temp_files());
    // COPY counts too; so do the other users' own quotas (alice: 10 MiB).
    let r = dav.call(BOB, "COPY", "/users/bob/a.bin", &["-H", &format!("Destination: {}", dav.url("/users/bob/copy.bin"))]);
    expect(&r, 507, "a COPY past the quota");
    dav.put_ok(ALICE, "/users/alice/a.bin", &noise(2_000_000, 6));

    // RFC 4331 properties of the home and its folders: bytes used in the home and what is left.
    dav.mkcol_ok(BOB, "/users/bob/sub/");
    let used = 700_000 + 300_000;
    let left = (1 << 20) - used;
    for path in ["/users/bob/", "/users/bob/sub/"] {
        let r = dav.propfind(BOB, path, "0", Some(QUOTA_PROPS));
        expect(&r, 207, "quota properties");
        let xml = r.text();
        assert_eq!(dav_prop(&xml, "quota-used-bytes"), Some(used.to_string()), "{path}: {xml}");
        assert_eq!(dav_prop(&xml, "quota-available-bytes"), Some(left.to_string()), "{path}: {xml}");
    }
    let r = dav.propfind(ALICE, "/users/alice/", "0", Some(QUOTA_PROPS));
    assert_eq!(dav_prop(&r.text(), "quota-available-bytes"), Some(((10 << 20) - 2_000_000).to_string()), "{}", r.text());
    // Deleting frees the space at once.
    expect(&dav.call(BOB, "DELETE", "/users/bob/b.bin", &[]), 204, "DELETE");
    let r = dav.propfind(BOB, "/users/bob/", "0", Some(QUOTA_PROPS));
    assert_eq!(dav_prop(&r.text(), "quota-used-bytes"), Some("700000".into()), "{}", r.text());
    dav.put_ok(BOB, "/users/bob/c.bin", &noise(300_000, 7));
}

/// Was a bug, fixed: two PUTs running at the same time are each checked against the usage at their start, so
/// together they exceed the quota. bob (quota 1 MiB, empty home) sends two 700,000-byte PUTs
/// on two connections, both started before either ends: both get 201 and bob holds 1,400,000
/// bytes (PROPFIND then says quota-used-bytes 1400000, quota-available-bytes 0). Expected: the
/// second one to finish gets 507 (the room must be reserved, or checked again at the commit).
/// A resumable upload holds its announced size in the quota from its start until it finishes or
/// is cancelled: uploads (and PUTs) that fit only one at a time cannot all begin.
#[test]
fn chunked_uploads_hold_their_room_in_the_quota() {
    let dav = Dav::start("quotas = { bob = \"1 MiB\" }");
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let start = |name: &str, size: usize| {
        let body = json!({ "path": format!("/users/bob/{name}"), "size": size }).to_string();
        api(&["-u", &bob, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body], &dav.mount("api/uploads"))
    };
    let (r, v) = start("a.bin", 700_000);
    expect(&r, 201, "the first 700,000-byte upload in a 1 MiB quota");
    let a = v["id"].as_str().expect("upload id").to_string();
    let (r, v) = start("b.bin", 700_000);
    expect(&r, 507, "a second 700,000-byte upload beside the first");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("quota")), "{v}");
    expect(&dav.put(BOB, "/users/bob/c.bin", &noise(400_000, 3)), 507, "a 400,000-byte PUT beside the upload");
    // Cancelled, the first gives its room back.
    expect(&api(&["-u", &bob, "-X", "DELETE"], &dav.mount(&format!("api/uploads/{a}"))).0, 200, "cancel the first upload");
    let (r, v) = start("b.bin", 700_000);
    expect(&r, 201, "the second upload once the first is cancelled");
    let b = v["id"].as_str().expect("upload id").to_string();
    let data = noise(700_000, 4);
    let work = tempfile::tempdir().expect("temp");
    let f = work.path().join("chunk");
    std::fs::write(&f, &data).expect("chunk file");
    let at = format!("@{}", f.display());
    let (r, v) = api(
        &["-u", &bob, "-X", "PATCH", "-H", "Upload-Offset: 0", "-H", "Content-Type: application/offset+octet-stream", "--data-binary", &at],
        &dav.mount(&format!("api/uploads/{b}")),
    );
    expect(&r, 201, "the whole file in one chunk");
    assert_eq!(v["done"].as_bool(), Some(true), "{v}");
    assert!(dav.get(BOB, "/users/bob/b.bin").body == data, "b.bin round trip");
    // Finished, the reservation has become usage: counted once, not twice.
    let used = dav_prop(&dav.propfind(BOB, "/users/bob/", "0", Some(QUOTA_PROPS)).text(), "quota-used-bytes");
    assert_eq!(used.as_deref(), Some("700000"), "quota-used-bytes after the upload");
    expect(&dav.put(BOB, "/users/bob/c.bin", &noise(400_000, 3)), 507, "400,000 bytes more");
    expect(&dav.put(BOB, "/users/bob/c.bin", &noise(300_000, 3)), 201, "300,000 bytes more");
}

#[test]
fn concurrent_puts_share_the_quota() {
    let dav = Dav::start("quotas = { bob = \"1 MiB\" }");
    let addr = dav.server.addr("web");
    let auth = base64(format!("{}:{}", BOB.0, BOB.1).as_bytes());
    let body = noise(700_000, 9);
    let mut conns = Vec::new();
    for name in ["one", "two"] {
        let mut s = connect(&addr);
        write!(
            s,
            "PUT /files/dav/users/bob/{name}.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("send head");
        s.write_all(&body[..1000]).expect("send the first bytes");
        conns.push(s);
    }
    // Both uploads have begun (a server that reserves the room may refuse the second at once).
    wait_until(Duration::from_secs(5), || dav.temp_files().len() == 2);
    let mut statuses = Vec::new();
    for mut s in conns {
        let _ = s.write_all(&body[1000..]);
        statuses.push(read_response(&mut BufReader::new(s), false).map(|r| r.status).unwrap_or(0));
    }
    let stored: u64 =
        ["one", "two"].iter().filter_map(|n| std::fs::metadata(dav.disk(&format!("users/bob/{n}.bin"))).ok()).map(|m| m.len()).sum();
    let r = dav.propfind(BOB, "/users/bob/", "0", Some(QUOTA_PROPS));
    let used = dav_prop(&r.text(), "quota-used-bytes");
    assert!(
        stored <= 1 << 20 && statuses.contains(&507),
        "two concurrent 700,000-byte PUTs in a 1 MiB quota: statuses {statuses:?}, {stored} bytes stored, quota-used-bytes {used:?}"
    );
}

/// Links placed on disk by hand lead nowhere over WebDAV: not as the file asked for (a GET
/// opens it refusing links), not as a folder on the way, and not for a Range request, which
/// takes dav-server's path. A FIFO placed by hand is refused at once too (opening it would
/// wait for a writer). The real file beside them downloads.
#[test]
fn links_placed_by_hand_are_refused_on_download() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/d/");
    dav.put_ok(ALICE, "/users/alice/d/real.txt", b"real bytes");
    let home = dav.disk("users/alice");
    std::os::unix::fs::symlink("/etc/hostname", home.join("outside")).expect("symlink");
    std::os::unix::fs::symlink(home.join("d/real.txt"), home.join("inside")).expect("symlink");
    std::os::unix::fs::symlink("/etc", home.join("etc")).expect("symlink");
    std::os::unix::fs::symlink(home.join("d"), home.join("dlink")).expect("symlink");
    let made = Command::new("mkfifo").arg(home.join("fifo")).status().expect("mkfifo");
    assert!(made.success());
    let r = dav.get(ALICE, "/users/alice/d/real.txt");
    expect(&r, 200, "the real file");
    assert_eq!(r.body, b"real bytes");
    for path in
        ["/users/alice/outside", "/users/alice/inside", "/users/alice/etc/hostname", "/users/alice/dlink/real.txt", "/users/alice/fifo"]
    {
        for args in [&["-m", "20"][..], &["-m", "20", "-H", "Range: bytes=0-3"][..]] {
            let r = dav.call(ALICE, "GET", path, args);
            expect(&r, 403, &format!("GET {path} {args:?}"));
            assert!(!String::from_utf8_lossy(&r.body).contains("real bytes"), "{path}: {}", r.text());
        }
    }
}

/// FIFOs and links placed on disk by hand are not served, so they are not listed either: not by
/// servente's own PROPFIND (Depth 1), not by dav-server's (Depth infinity), not on a share link's
/// page. A share link that names the FIFO answers 404 at once; opening it used to wait for a
/// writer on the connection's thread, stalling every connection of that worker. COPY of their
/// folder leaves them out, and DELETE of it removes them with it (it used to fail).
#[test]
fn special_files_placed_by_hand_are_neither_listed_nor_shared() {
    let dav = Dav::start("propfind_infinity = true");
    dav.mkcol_ok(ALICE, "/users/alice/pub/");
    dav.put_ok(ALICE, "/users/alice/pub/a.txt", b"file a\n");
    let pub_dir = dav.disk("users/alice/pub");
    let made = Command::new("mkfifo").arg(pub_dir.join("fifo")).status().expect("mkfifo");
    assert!(made.success());
    std::os::unix::fs::symlink("/etc/hostname", pub_dir.join("link")).expect("symlink");
    let _socket = std::os::unix::net::UnixListener::bind(pub_dir.join("sock")).expect("a socket");
    for (path, depth) in [("/users/alice/pub/", "1"), ("/users/alice/", "infinity")] {
        let r = dav.propfind(ALICE, path, depth, None);
        expect(&r, 207, &format!("PROPFIND Depth {depth} of {path}"));
        let h = hrefs(&r.text());
        assert!(h.contains(&"/files/dav/users/alice/pub/a.txt".to_string()), "{h:?}");
        assert!(!h.iter().any(|h| h.ends_with("/fifo") || h.ends_with("/link") || h.ends_with("/sock")), "Depth {depth}: {h:?}");
    }
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let b = json!({"path": "/users/alice/pub"}).to_string();
    let (r, v) = api(&["-u", &alice, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &b], &dav.mount("api/shares"));
    expect(&r, 201, "a share of the folder");
    let url = format!("{}{}", dav.origin, v["url"].as_str().expect("url"));
    let r = curl(&["-m", "10", &format!("{url}/")]);
    expect(&r, 200, "the shared folder's page");
    assert!(r.text().contains("a.txt") && !["fifo", ">link", "sock"].iter().any(|n| r.text().contains(n)), "{}", r.text());
    for name in ["fifo", "link", "sock"] {
        let r = curl(&["-m", "10", &format!("{url}/{name}")]);
        expect(&r, 404, &format!("the share's {name}"));
    }
    // The worker is not stuck: the real file still downloads, over the link and over WebDAV.
    assert_eq!(curl(&["-m", "10", &format!("{url}/a.txt")]).text(), "file a\n");
    assert_eq!(dav.get(ALICE, "/users/alice/pub/a.txt").body, b"file a\n");
    // A copy of the folder leaves them out; deleting it takes them along (the link's target stays).
    expect(&dav.call(ALICE, "COPY", "/users/alice/pub/", &["-H", "Destination: /files/dav/users/alice/copy/"]), 201, "COPY");
    let copied: Vec<_> = std::fs::read_dir(dav.disk("users/alice/copy")).expect("the copy").flatten().map(|e| e.file_name()).collect();
    assert_eq!(copied, ["a.txt"], "the copy holds the file only");
    expect(&dav.call(ALICE, "DELETE", "/users/alice/pub/", &[]), 204, "DELETE of the folder");
    assert!(!pub_dir.exists(), "the folder is gone, FIFO, socket and link with it");
    assert!(Path::new("/etc/hostname").exists());
}

/// A folder larger than one piece of servente's own PROPFIND answer (256 entries) is read and
/// statted in pieces, several at once, and streamed in order. Every entry must come exactly once,
/// in well-formed XML, with its own length and dead property, links left out; also when the
/// folder holds an exact multiple of a piece (the last piece is then empty but for the closing
/// tag). A small folder is answered whole, with its length.
#[test]
fn large_folder_listings_stream_every_entry_once() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/big/");
    dav.mkcol_ok(ALICE, "/users/alice/big/sub/");
    let dir = dav.disk("users/alice/big");
    let name = |i: usize| format!("f {i} é.txt");
    let href = |i: usize| format!("/files/dav/users/alice/big/f%20{i}%20%C3%A9.txt");
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).expect("symlink");
    let allprop = "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind>";
    let named =
        "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\"><D:prop><D:getcontentlength/><Z:tag xmlns:Z=\"urn:x\"/></D:prop></D:propfind>";
    // 511 files and `sub/`: 512 entries, two full pieces. Then 800 files and `sub/`.
    for files in [511, 800] {
        for i in 0..files {
            std::fs::write(dir.join(name(i)), "x".repeat(i)).expect("write a file");
        }
        let r = dav.call(
            ALICE,
            "PROPPATCH",
            "/users/alice/big/f%207%20%C3%A9.txt",
            &["--data-binary", &proppatch_body("urn:x", "tag", "seven")],
        );
        assert_eq!(r.status, 207, "PROPPATCH: {}", r.text());
        for body in [allprop, named] {
            let r = dav.propfind(ALICE, "/users/alice/big/", "1", Some(body));
            expect(&r, 207, "PROPFIND Depth 1 of a large folder");
            assert!(r.header("content-length").is_none(), "a large listing streams: {:?}", r.headers);
            let xml = r.text();
            let parsed = run(
                Command::new("python3").args(["-c", "import sys, xml.dom.minidom as m; m.parseString(sys.stdin.buffer.read())"]),
                Some(xml.as_bytes().to_vec()),
                Duration::from_secs(30),
            );
            assert!(parsed.status.success(), "the answer is not well-formed XML: {}", String::from_utf8_lossy(&parsed.stderr));
            assert_eq!(xml.matches("</D:multistatus>").count(), 1);
            let responses = responses(&xml);
            assert_eq!(responses.len(), files + 2, "the folder, its files and sub/; not the link");
            let mut seen = std::collections::HashMap::new();
            for (h, chunk) in &responses {
                assert!(seen.insert(h.clone(), chunk.clone()).is_none(), "{h} is listed twice");
            }
            assert!(seen.contains_key("/files/dav/users/alice/big/"));
            assert!(seen.contains_key("/files/dav/users/alice/big/sub/"));
            assert!(!seen.keys().any(|h| h.ends_with("/link")), "links are not shown");
            for i in 0..files {
                let chunk = seen.get(&href(i)).unwrap_or_else(|| panic!("{} is missing (of {files})", href(i)));
                assert_eq!(dav_prop(chunk, "getcontentlength"), Some(i.to_string()), "length of {}", href(i));
                assert_eq!(chunk.contains(">seven</"), i == 7, "the dead property belongs to f 7 only: {chunk}");
                if body == named && i != 7 {
                    assert!(chunk.contains("404 Not Found"), "a missing dead property is reported: {chunk}");
                }
            }
        }
    }
    // A small folder: whole, with its length.
    let r = dav.propfind(ALICE, "/users/alice/big/sub/", "1", Some(allprop));
    expect(&r, 207, "PROPFIND Depth 1 of a small folder");
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
}

/// RFC 4331 properties exist where a quota applies: a home's folders. On a file in a home they
/// are either absent (404) or the home's values; on a group folder (no quota) absent or its
/// real usage. (Until servente answered PROPFIND itself, a file reported its own size as
/// quota-used-bytes and quota minus its size as quota-available-bytes, and a group folder its
/// inode size and the caller's quota minus that.)
#[test]
fn quota_properties_only_where_a_quota_applies() {
    let dav = Dav::start("quota = \"10 MiB\"\nquotas = { bob = \"1 MiB\" }");
    dav.put_ok(BOB, "/users/bob/a.bin", &noise(300_000, 1));
    dav.put_ok(BOB, "/users/bob/b.bin", &noise(600_000, 2));
    dav.put_ok(ALICE, "/groups/staff/g.bin", &noise(1000, 3));
    let mut failures = Vec::new();
    let r = dav.propfind(BOB, "/users/bob/a.bin", "0", Some(QUOTA_PROPS));
    let xml = r.text();
    let got = (dav_prop(&xml, "quota-used-bytes"), dav_prop(&xml, "quota-available-bytes"));
    if got != (None, None) && got != (Some("900000".into()), Some(((1 << 20) - 900_000).to_string())) {
        failures.push(format!("a file in bob's home reports used/available {got:?}; bob can store only 148576 more bytes"));
    }
    let r = dav.propfind(ALICE, "/groups/staff/", "0", Some(QUOTA_PROPS));
    let xml = r.text();
    let got = (dav_prop(&xml, "quota-used-bytes"), dav_prop(&xml, "quota-available-bytes"));
    if got.0.is_some() && got.0 != Some("1000".into()) {
        failures.push(format!("the staff group folder (1000 bytes, no quota) reports used/available {got:?}"));
    }
    assert!(failures.is_empty(), "wrong RFC 4331 properties:\n{}", failures.join("\n"));
}

/// A small tmpfs mounted on a temp folder; unmounted (lazily, so a busy mount cannot keep it)
/// when dropped, before the folder itself is removed.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4m`), or says why it cannot (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let uid = run(Command::new("id").arg("-u"), None, Duration::from_secs(10));
        if text(&uid.stdout).trim() != "0" {
            return Err(format!("running as uid {}", text(&uid.stdout).trim()));
        }
        let dir = tempfile::Builder::new().prefix("servente-tmpfs-").tempdir().map_err(|e| e.to_string())?;
        let out = run(
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()),
            None,
            Duration::from_secs(10),
        );
        if !out.status.success() {
            return Err(format!("mount failed: {}", text(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).stdin(Stdio::null()).status();
    }
}

/// The files root on a 4 MiB tmpfs (no quota): a PUT bigger than the disk gets 507, whether it
/// makes a new file or replaces one, and leaves neither a partial file nor a temporary one;
/// the space comes back and the server goes on. The same for a chunked upload by the API: the
/// chunk that does not fit gets 507 (JSON), the upload stays where it was acknowledged, and
/// no file appears. Skipped (with a note) where no tmpfs can be mounted.
#[test]
fn full_disk_gives_507_and_keeps_the_old_file() {
    let small = match Tmpfs::mount("4m") {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: needs root to mount a tmpfs ({why})");
            return;
        }
    };
    let root = small.path().to_path_buf();
    let fx = Fixture::new();
    let data = fx.path().join("data");
    add_users(&data);
    // Declared after `small`, so the server stops before the tmpfs is unmounted.
    let dav = Dav::start_on(fx, data, "{dir}/data", &format!("root = \"{}\"", root.display()));
    let in_dir = |rel: &str| -> Vec<String> {
        std::fs::read_dir(root.join(rel))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_else(|e| panic!("cannot list {rel}: {e}"))
    };
    let big = noise(6 << 20, 21);

    // 1. A small file.
    let old = b"the old content\n";
    expect(&dav.put(ALICE, "/users/alice/keep.txt", old), 201, "PUT keep.txt");
    // 2. A new file bigger than the disk.
    expect(&dav.put(ALICE, "/users/alice/big.bin", &big), 507, "PUT a 6 MiB big.bin on a 4 MiB disk");
    // 3. Replacing the small file with a big one.
    expect(&dav.put(ALICE, "/users/alice/keep.txt", &big), 507, "PUT 6 MiB over keep.txt on a 4 MiB disk");
    let r = dav.get(ALICE, "/users/alice/keep.txt");
    expect(&r, 200, "GET keep.txt after the 507");
    assert!(r.body == old, "keep.txt changed after a 507: {} bytes", r.body.len());
    // 4. Nothing partial is left.
    expect(&dav.get(ALICE, "/users/alice/big.bin"), 404, "GET big.bin after the 507");
    assert!(!root.join("users/alice/big.bin").exists(), "big.bin is on disk");
    assert!(wait_until(Duration::from_secs(5), || in_dir(".tmp").is_empty()), "temp files left: {:?}", in_dir(".tmp"));
    assert_eq!(in_dir("users/alice"), ["keep.txt"], "alice's home on disk");
    // 5. The space is back (2 MiB fits only if nothing of the failed uploads holds on to it),
    // and the server goes on.
    let two = noise(2 << 20, 22);
    expect(&dav.put(ALICE, "/users/alice/after.bin", &two), 201, "PUT 2 MiB after the failures");
    assert!(dav.get(ALICE, "/users/alice/after.bin").body == two, "after.bin round trip");
    expect(&dav.call(ALICE, "DELETE", "/users/alice/after.bin", &[]), 204, "DELETE after.bin");
    dav.put_ok(ALICE, "/users/alice/small.txt", b"small\n");
    assert_eq!(dav.get(ALICE, "/users/alice/small.txt").text(), "small\n");

    // 6. A chunked upload by the API, 1 MiB at a time: the chunk that does not fit is refused.
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let body = json!({ "path": "/users/alice/chunked.bin", "size": big.len() }).to_string();
    let (r, v) =
        api(&["-u", &alice, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body], &dav.mount("api/uploads"));
    expect(&r, 201, "POST api/uploads for 6 MiB");
    let id = v["id"].as_str().unwrap_or_else(|| panic!("no upload id: {v}")).to_string();
    let work = tempfile::tempdir().expect("temp");
    let chunk = 1 << 20;
    let mut acknowledged = 0;
    let mut refused = None;
    for offset in (0..big.len()).step_by(chunk) {
        let f = work.path().join(format!("chunk-{offset}"));
        std::fs::write(&f, &big[offset..(offset + chunk).min(big.len())]).expect("chunk file");
        let (at, off) = (format!("@{}", f.display()), format!("Upload-Offset: {offset}"));
        let (r, v) = api(
            &["-u", &alice, "-X", "PATCH", "-H", &off, "-H", "Content-Type: application/offset+octet-stream", "--data-binary", &at],
            &dav.mount(&format!("api/uploads/{id}")),
        );
        if r.status == 200 {
            assert_eq!(v["offset"].as_u64(), Some((offset + chunk) as u64), "{v}");
            acknowledged = offset + chunk;
            continue;
        }
        refused = Some((offset, r, v));
        break;
    }
    let (at, r, v) = refused.unwrap_or_else(|| panic!("every chunk of a 6 MiB upload was taken on a 4 MiB disk"));
    expect(&r, 507, &format!("the chunk at {at} on a full disk"));
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "a JSON error: {}", r.text());
    // The upload stands where it was last acknowledged (the partial chunk was cut back).
    let (r, v) = api(&["-u", &alice], &dav.mount(&format!("api/uploads/{id}")));
    expect(&r, 200, "GET api/uploads/ID after the 507");
    assert_eq!(v["offset"].as_u64(), Some(acknowledged as u64), "{v}");
    expect(&dav.get(ALICE, "/users/alice/chunked.bin"), 404, "GET chunked.bin after the 507");
    assert!(!root.join("users/alice/chunked.bin").exists(), "chunked.bin is on disk");
    // Given up, the upload frees its space.
    let (r, _) = api(&["-u", &alice, "-X", "DELETE"], &dav.mount(&format!("api/uploads/{id}")));
    expect(&r, 200, "DELETE api/uploads/ID");
    assert!(in_dir(".uploads").is_empty(), "upload files left: {:?}", in_dir(".uploads"));
    assert!(in_dir(".tmp").is_empty(), "temp files left: {:?}", in_dir(".tmp"));
    expect(&dav.put(ALICE, "/users/alice/after.bin", &two), 201, "PUT 2 MiB after the chunked upload");
    assert!(dav.get(ALICE, "/users/alice/keep.txt").body == old, "keep.txt at the end");
}

// ---------------------------------------------------------------------------------------------
// Uploads: partial, interrupted, crashed

#[test]
fn partial_put_with_content_range_changes_part_of_a_file() {
    let dav = Dav::start("");
    dav.put_ok(ALICE, "/users/alice/p.txt", b"hello world!");
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"WORLD", &["-H", "Content-Range: bytes 6-10/*"]);
    expect(&r, 204, "a range inside the file");
    assert_eq!(dav.get(ALICE, "/users/alice/p.txt").text(), "hello WORLD!");
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"HELLO", &["-H", "Content-Range: bytes 0-4/12"]);
    expect(&r, 204, "a range with the full length");
    assert_eq!(dav.get(ALICE, "/users/alice/p.txt").text(), "HELLO WORLD!");
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"??", &["-H", "Content-Range: bytes 12-13/*"]);
    expect(&r, 204, "a range appending");
    assert_eq!(dav.get(ALICE, "/users/alice/p.txt").text(), "HELLO WORLD!??");
    // Wrong ranges change nothing.
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"XY", &["-H", "Content-Range: bytes 0-5/*"]);
    assert!(matches!(r.status, 400 | 416), "a range longer than the body: {}", r.status);
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"XY", &["-H", "Content-Range: nonsense"]);
    expect(&r, 400, "a malformed Content-Range");
    assert_eq!(dav.get(ALICE, "/users/alice/p.txt").text(), "HELLO WORLD!??");
    // The ETag changes with the content.
    let e1 = dav.call(ALICE, "HEAD", "/users/alice/p.txt", &["-I"]).header("etag").map(str::to_string);
    let r = dav.put_with(ALICE, "/users/alice/p.txt", b"h", &["-H", "Content-Range: bytes 0-0/*"]);
    expect(&r, 204, "one byte");
    let e2 = dav.call(ALICE, "HEAD", "/users/alice/p.txt", &["-I"]).header("etag").map(str::to_string);
    assert!(e1.is_some() && e1 != e2, "{e1:?} {e2:?}");
    assert!(dav.temp_files().is_empty(), "temp files left: {:?}", dav.temp_files());
}

/// A PUT whose client goes away mid-body replaces nothing, and its temporary file goes away.
#[test]
fn interrupted_put_leaves_the_old_file() {
    let dav = Dav::start("");
    dav.put_ok(ALICE, "/users/alice/doc.bin", b"the old version\n");
    let work = tempfile::tempdir().expect("temp");
    let big = work.path().join("big.bin");
    std::fs::write(&big, noise(8 << 20, 3)).expect("big file");
    let user = format!("{}:{}", ALICE.0, ALICE.1);
    let mut upload = Bg(Command::new("curl")
        .args(["-q", "-s", "--noproxy", "*", "--max-time", "60", "--limit-rate", "2M", "-o", "/dev/null", "-u", &user, "-T"])
        .arg(&big)
        .arg(dav.url("/users/alice/doc.bin"))
        .stdin(Stdio::null())
        .spawn()
        .expect("run curl"));
    // The temporary file is there and bytes keep coming: the upload is well under way.
    let started = wait_until(Duration::from_secs(15), || !dav.temp_files().is_empty());
    assert!(started, "no upload in progress: {:?}", dav.temp_files());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(upload.0.try_wait().expect("try_wait").is_none(), "curl finished too early");
    let _ = upload.0.kill();
    let _ = upload.0.wait();
    assert!(wait_until(Duration::from_secs(10), || dav.temp_files().is_empty()), "temp file left: {:?}", dav.temp_files());
    assert_eq!(dav.get(ALICE, "/users/alice/doc.bin").text(), "the old version\n");
    assert_eq!(dav.listing(ALICE, "/users/alice/"), ["/files/dav/users/alice/", "/files/dav/users/alice/doc.bin"]);
    // A body shorter than its Content-Length does not replace the file either.
    let mut s = connect(&dav.server.addr("web"));
    let auth = base64(user.as_bytes());
    write!(s, "PUT /files/dav/users/alice/doc.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Length: 100000\r\n\r\nshort").expect("send");
    assert!(wait_until(Duration::from_secs(10), || !dav.temp_files().is_empty()), "the short upload began");
    drop(s);
    assert!(wait_until(Duration::from_secs(10), || dav.temp_files().is_empty()), "temp file left: {:?}", dav.temp_files());
    assert_eq!(dav.get(ALICE, "/users/alice/doc.bin").text(), "the old version\n");
    // The server is fine.
    dav.put_ok(ALICE, "/users/alice/doc.bin", b"the new version\n");
    assert_eq!(dav.get(ALICE, "/users/alice/doc.bin").text(), "the new version\n");
}

/// A client that starts an upload and then sends nothing more (stalled, or gone without
/// closing its connection) is cut after `limits.body_read_timeout`: the connection is closed,
/// the temporary file goes, and the old file stays.
#[test]
fn a_stalled_upload_is_cut_after_body_read_timeout() {
    let dav = Dav::start("[limits]\nbody_read_timeout = \"1s\"\n");
    dav.put_ok(ALICE, "/users/alice/doc.bin", b"the old version\n");
    let mut s = connect(&dav.server.addr("web"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let auth = base64(format!("{}:{}", ALICE.0, ALICE.1).as_bytes());
    write!(s, "PUT /files/dav/users/alice/doc.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Length: 100000\r\n\r\nshort").expect("send");
    assert!(wait_until(Duration::from_secs(10), || !dav.temp_files().is_empty()), "the upload began");
    let stalled = Instant::now();
    let mut answer = Vec::new();
    let end = s.read_to_end(&mut answer);
    let waited = stalled.elapsed();
    assert!(end.is_ok(), "the connection was not closed: {end:?}");
    assert!(waited > Duration::from_millis(500) && waited < Duration::from_secs(6), "closed after {waited:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "answered {answer}");
    assert!(wait_until(Duration::from_secs(10), || dav.temp_files().is_empty()), "temp file left: {:?}", dav.temp_files());
    assert_eq!(dav.get(ALICE, "/users/alice/doc.bin").text(), "the old version\n");

    // The same over HTTP/2: the stream gets 408, the connection goes on.
    use hyper::body::{Body as _, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    /// A body that sends a few bytes of its declared length, then nothing.
    struct Stalls(bool);
    impl hyper::body::Body for Stalls {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"short")))))
        }
    }
    let addr = dav.server.addr("web");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2");
        tokio::spawn(conn);
        let put = http::Request::put(format!("http://{addr}/files/dav/users/alice/doc.bin"))
            .header("authorization", format!("Basic {auth}"))
            .header("content-length", "100000")
            .body(http_body_util::Either::Left(Stalls(false)))
            .expect("request");
        assert!(!put.body().is_end_stream());
        let started = Instant::now();
        let res = tokio::time::timeout(common::WAIT, sender.send_request(put)).await.expect("an answer in time").expect("response");
        assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() > Duration::from_millis(500), "answered after {:?}", started.elapsed());
        let get = http::Request::get(format!("http://{addr}/files/dav/users/alice/doc.bin"))
            .header("authorization", format!("Basic {auth}"))
            .body(http_body_util::Either::Right(http_body_util::Empty::<bytes::Bytes>::new()))
            .expect("request");
        let res = tokio::time::timeout(common::WAIT, sender.send_request(get)).await.expect("in time").expect("response");
        assert_eq!(res.status(), http::StatusCode::OK);
        let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("body").to_bytes();
        assert_eq!(body.as_ref(), b"the old version\n");
    });
    assert!(wait_until(Duration::from_secs(10), || dav.temp_files().is_empty()), "temp file left: {:?}", dav.temp_files());
}

/// kill -9 of servente during an upload: after the restart the old file is intact, the
/// temporary file is swept, and dead properties are still there (SQLite).
#[test]
fn crash_during_upload_leaves_the_old_file_and_no_temp_file() {
    let keep = tempfile::Builder::new().prefix("servente-files-data-").tempdir().expect("data folder");
    let data = keep.path().canonicalize().expect("canonical").join("data");
    add_users(&data);
    let data_dir = data.display().to_string();
    let mut dav = Dav::start_on(Fixture::new(), data.clone(), &data_dir, "");
    dav.put_ok(ALICE, "/users/alice/victim.txt", b"old content\n");
    let r =
        dav.call(ALICE, "PROPPATCH", "/users/alice/victim.txt", &["--data-binary", &proppatch_body("urn:servente-test", "colour", "blue")]);
    expect(&r, 207, "PROPPATCH");

    let work = tempfile::tempdir().expect("temp");
    let big = work.path().join("big.bin");
    std::fs::write(&big, noise(8 << 20, 4)).expect("big file");
    let user = format!("{}:{}", ALICE.0, ALICE.1);
    let mut upload = Bg(Command::new("curl")
        .args(["-q", "-s", "--noproxy", "*", "--max-time", "60", "--limit-rate", "2M", "-o", "/dev/null", "-u", &user, "-T"])
        .arg(&big)
        .arg(dav.url("/users/alice/victim.txt"))
        .stdin(Stdio::null())
        .spawn()
        .expect("run curl"));
    let started = wait_until(Duration::from_secs(15), || !dav.temp_files().is_empty());
    assert!(started, "no upload in progress: {:?}", dav.temp_files());
    std::thread::sleep(Duration::from_millis(1200));
    let killed = Command::new("kill").args(["-s", "KILL", &dav.server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    assert!(dav.server.wait_exit(Duration::from_secs(10)).is_some(), "servente did not die");
    assert!(wait_until(Duration::from_secs(10), || upload.0.try_wait().ok().flatten().is_some()), "curl did not notice");
    let orphans = dav.temp_files();
    assert_eq!(orphans.len(), 1, "the crash left the temporary file: {orphans:?}");
    drop(dav);

    let dav = Dav::start_on(Fixture::new(), data, &data_dir, "");
    assert!(wait_until(Duration::from_secs(5), || dav.temp_files().is_empty()), "the restart did not sweep {:?}", dav.temp_files());
    assert_eq!(dav.get(ALICE, "/users/alice/victim.txt").text(), "old content\n");
    assert_eq!(dav.listing(ALICE, "/users/alice/"), ["/files/dav/users/alice/", "/files/dav/users/alice/victim.txt"]);
    let r = dav.propfind(ALICE, "/users/alice/victim.txt", "0", Some(&propfind_one("urn:servente-test", "colour")));
    assert!(r.text().contains(">blue<"), "the dead property survived: {}", r.text());
    drop(keep);
}

// ---------------------------------------------------------------------------------------------
// PROPFIND depth, hostile input

#[test]
fn propfind_depth_infinity_is_refused_unless_enabled() {
    for enabled in [false, true] {
        let dav = Dav::start(if enabled { "propfind_infinity = true" } else { "" });
        dav.mkcol_ok(ALICE, "/users/alice/a/");
        dav.mkcol_ok(ALICE, "/users/alice/a/b/");
        dav.put_ok(ALICE, "/users/alice/a/b/deep.txt", b"deep");
        let r = dav.propfind(ALICE, "/users/alice/", "infinity", None);
        if enabled {
            expect(&r, 207, "Depth: infinity with propfind_infinity = true");
            let h = hrefs(&r.text());
            assert!(
                h.contains(&"/files/dav/users/alice/a/b/deep.txt".to_string()) && h.contains(&"/files/dav/users/alice/".into()),
                "{h:?}"
            );
        } else {
            expect(&r, 403, "Depth: infinity");
            assert!(r.text().contains("propfind-finite-depth"), "{}", r.text());
        }
        let r = dav.propfind(ALICE, "/users/alice/", "1", None);
        assert_eq!(hrefs(&r.text()), ["/files/dav/users/alice/", "/files/dav/users/alice/a/"]);
    }
}

/// Was a bug, fixed: PROPFIND without a Depth header leaves out the resource asked for. RFC 4918 9.1: no
/// Depth means infinity, so either 403 with `propfind-finite-depth` (as `Depth: infinity` gets)
/// or a multistatus that starts with the resource itself. `PROPFIND /files/dav/users/alice/`
/// without Depth answers 207 listing only the children, and for an empty folder an empty
/// `<D:multistatus>` — clients take that as "not found" or crash.
#[test]
fn propfind_without_depth_is_infinity() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/empty/");
    dav.mkcol_ok(ALICE, "/users/alice/full/");
    dav.put_ok(ALICE, "/users/alice/full/f.txt", b"f");
    let mut failures = Vec::new();
    for path in ["/users/alice/empty/", "/users/alice/full/"] {
        let r = curl(&["-u", &format!("{}:{}", ALICE.0, ALICE.1), "-X", "PROPFIND", &dav.url(path)]);
        let ok = r.status == 403 || (r.status == 207 && hrefs(&r.text()).first().map(String::as_str) == Some(&format!("/files/dav{path}")));
        if !ok {
            failures.push(format!("PROPFIND {path} without Depth: {} {}", r.status, r.text()));
        }
    }
    assert!(failures.is_empty(), "PROPFIND without Depth omits the resource:\n{}", failures.join("\n"));
}

#[test]
fn hostile_paths_and_destinations_are_refused() {
    let dav = Dav::start(FOLDERS);
    dav.put_ok(ALICE, "/users/alice/a.txt", b"alice\n");
    dav.put_ok(BOB, "/users/bob/private.txt", b"bob's private\n");
    let before = manifest(&dav.disk(""));
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let raw = |method: &str, path: &str, extra: &[&str]| {
        let url = format!("{}{path}", dav.origin);
        let mut a = vec!["--path-as-is", "-g", "-u", &alice, "-X", method];
        a.extend_from_slice(extra);
        a.push(&url);
        curl(&a)
    };
    let mut failures = Vec::new();
    let mut check = |what: &str, r: &Resp, ok: &dyn Fn(u16) -> bool| {
        if !ok(r.status) || r.text().contains("bob's private") || r.text().contains("root:") {
            failures.push(format!("{what}: {} {}", r.status, r.text().chars().take(200).collect::<String>()));
        }
    };
    let refused = |s: u16| (400..500).contains(&s) || s == 502;
    // `..` in all spellings, in the request path: never another home, never outside the root.
    for path in [
        "/files/dav/users/alice/../bob/private.txt",
        "/files/dav/users/alice/%2e%2e/bob/private.txt",
        "/files/dav/users/alice/%2E%2E/%2E%2E/users/bob/private.txt",
        "/files/dav/users/alice/.%2e/bob/private.txt",
        "/files/dav/users/alice/..%2fbob%2fprivate.txt",
        "/files/dav/users/alice%2f..%2fbob/private.txt",
        "/files/dav/users/alice/../../../../../../etc/passwd",
        "/files/dav/../../etc/passwd",
        "/files/dav/.tmp/",
        "/files/dav/.uploads/",
        "/files/dav/users/alice/../../.tmp/",
    ] {
        check(&format!("GET {path}"), &raw("GET", path, &[]), &refused);
        check(&format!("PROPFIND {path}"), &raw("PROPFIND", path, &["-H", "Depth: 1"]), &refused);
        check(&format!("PUT {path}"), &raw("PUT", path, &["--data-binary", "planted"]), &refused);
    }
    // An encoded slash and control characters in names: refused, nothing made.
    for name in ["a%2fb.txt", "nul%00.txt", "soh%01.txt", "nl%0a.txt", "del%7f.txt", "cr%0d.txt"] {
        let path = format!("/files/dav/users/alice/{name}");
        check(&format!("PUT {path}"), &raw("PUT", &path, &["--data-binary", "x"]), &|s| s == 400);
        check(&format!("MKCOL {path}"), &raw("MKCOL", &path, &[]), &|s| s == 400);
        let dest = format!("Destination: {}/files/dav/users/alice/{name}", dav.origin);
        check(&format!("COPY to {name}"), &raw("COPY", "/files/dav/users/alice/a.txt", &["-H", &dest]), &|s| s == 400);
    }
    // A name too long for the file system: a client error, not a server error.
    let long = format!("/files/dav/users/alice/{}", "n".repeat(300));
    check("PUT with a 300-byte name", &raw("PUT", &long, &["--data-binary", "x"]), &|s| (400..500).contains(&s));
    // Destinations outside the caller's areas or outside the mount.
    let src = "/files/dav/users/alice/a.txt";
    for dest in [
        format!("{}/files/dav/users/alice/../bob/x.txt", dav.origin),
        format!("{}/files/dav/users/alice/%2e%2e/bob/x.txt", dav.origin),
        format!("{}/files/dav/users/bob/x.txt", dav.origin),
        format!("{}/files/dav/x.txt", dav.origin),
        format!("{}/files/dav/../../etc/x.txt", dav.origin),
        format!("{}/files/other/x.txt", dav.origin),
        "/etc/passwd".to_string(),
        "/files/dav/../../tmp/x.txt".to_string(),
        "/files/dav/.tmp/x".to_string(),
        "not a url".to_string(),
    ] {
        for method in ["COPY", "MOVE"] {
            let r = raw(method, src, &["-H", &format!("Destination: {dest}")]);
            check(&format!("{method} to {dest}"), &r, &refused);
        }
    }
    // MOVE and COPY onto themselves: 403 (RFC 4918 9.8.5, 9.9.4).
    let here = format!("Destination: {}{src}", dav.origin);
    check("MOVE onto itself", &raw("MOVE", src, &["-H", &here]), &|s| s == 403);
    check("COPY onto itself", &raw("COPY", src, &["-H", &here]), &|s| s == 403);
    dav.mkcol_ok(ALICE, "/users/alice/d/");
    let dir_here = format!("Destination: {}/files/dav/users/alice/d/", dav.origin);
    check("MOVE a folder onto itself", &raw("MOVE", "/files/dav/users/alice/d/", &["-H", &dir_here]), &|s| s == 403);
    assert!(failures.is_empty(), "{} hostile request(s) were not refused as expected:\n{}", failures.len(), failures.join("\n"));

    // Nothing moved anywhere: the tree is as before (plus alice's folder `d`).
    let after = manifest(&dav.disk(""));
    assert_eq!(after, before, "the hostile requests changed files");
    assert_eq!(dav.get(ALICE, "/users/alice/a.txt").text(), "alice\n");
    assert!(dav.disk("users/alice/d").is_dir());
    assert_eq!(std::fs::read_dir(dav.disk("users/alice")).expect("home").count(), 2, "only a.txt and d in alice's home");
}

/// Was a bug, fixed: a Destination on another host (or port) is treated as if it were on this server. `COPY
/// /files/dav/users/alice/a.txt` with `Destination: http://elsewhere.example/files/dav/users/alice/b.txt`
/// answers 201 and creates b.txt here. Expected: 502 Bad Gateway (RFC 4918 9.8.5/9.9.4: the
/// destination is on another server), nothing created.
#[test]
fn destination_on_another_host_is_refused() {
    let dav = Dav::start("");
    dav.put_ok(ALICE, "/users/alice/a.txt", b"a");
    let mut failures = Vec::new();
    for (i, host) in ["http://elsewhere.example", "http://127.0.0.1:1", "https://127.0.0.2"].into_iter().enumerate() {
        for method in ["COPY", "MOVE"] {
            let name = format!("{method}-{i}.txt");
            let dest = format!("Destination: {host}/files/dav/users/alice/{name}");
            let r = dav.call(ALICE, method, "/users/alice/a.txt", &["-H", &dest]);
            if !matches!(r.status, 400 | 403 | 502) || dav.disk(&format!("users/alice/{name}")).exists() {
                failures.push(format!(
                    "{method} with `{dest}`: {} (created here: {})",
                    r.status,
                    dav.disk(&format!("users/alice/{name}")).exists()
                ));
            }
            if method == "MOVE" && !dav.disk("users/alice/a.txt").exists() {
                dav.put_ok(ALICE, "/users/alice/a.txt", b"a");
            }
        }
    }
    assert!(failures.is_empty(), "a Destination on another host is served locally:\n{}", failures.join("\n"));
}

/// Was a bug, fixed: a request path whose `..` climbs out of the mount answers `502 Bad Gateway` (and
/// closes the connection): `GET /files/dav/users/alice/../../../etc/passwd` → 502 with an
/// empty body. Nothing leaks, but 502 says an upstream failed, which sets off monitoring.
/// Expected: 400 or 404 (or 403).
#[test]
fn request_paths_with_dot_segments_are_refused() {
    let dav = Dav::start("");
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let mut failures = Vec::new();
    for path in ["/files/dav/users/alice/../../../etc/passwd", "/files/dav/../../etc/passwd", "/files/dav/users/alice/../../../"] {
        for method in ["GET", "PROPFIND", "PUT"] {
            let url = format!("{}{path}", dav.origin);
            let r = curl(&["--path-as-is", "-u", &alice, "-X", method, &url]);
            if !matches!(r.status, 400 | 403 | 404) {
                failures.push(format!("{method} {path}: {}", r.status));
            }
        }
    }
    assert!(failures.is_empty(), "paths escaping the mount:\n{}", failures.join("\n"));
}

/// Was a data-loss bug (fixed in servente-files::guard): DELETE of a folder that may not be deleted — an area's own folder (a home,
/// a group folder, a shared folder) or a virtual listing (`/users/`, `/groups/`, `/`) — answers
/// 403 (or a 207 holding 403s) only after deleting every file inside that the caller may
/// write. `DELETE /files/dav/users/alice/` → `403 Forbidden`, and alice's home is empty;
/// `DELETE /files/dav/` by alice empties her home, her group folders and the shared folders
/// she writes. Expected: 403 (or 405) with nothing deleted. (dav-server deletes the children
/// one by one before it reaches the folder that ServenteFs refuses to remove.)
#[test]
fn delete_of_an_area_folder_deletes_nothing() {
    let dav = Dav::start(FOLDERS);
    let areas = ["/users/alice/", "/groups/staff/", "/shared/docs/"];
    let mut failures = Vec::new();
    for target in ["/users/alice/", "/groups/staff/", "/shared/docs/", "/users/", "/groups/", "/shared/", "/"] {
        for area in areas {
            dav.put_ok(ALICE, &format!("{area}keep.txt"), b"keep me");
            if !dav.disk(&format!("{}dir", area.trim_start_matches('/'))).is_dir() {
                dav.mkcol_ok(ALICE, &format!("{area}dir/"));
            }
            dav.put_ok(ALICE, &format!("{area}dir/inner.txt"), b"and me");
        }
        let r = dav.call(ALICE, "DELETE", target, &[]);
        let mut lost = Vec::new();
        for area in areas {
            for f in ["keep.txt", "dir/inner.txt"] {
                let rel = format!("{}{f}", area.trim_start_matches('/'));
                if !dav.disk(&rel).exists() {
                    lost.push(rel);
                }
            }
        }
        if !lost.is_empty() || ((200..300).contains(&r.status) && r.status != 207) {
            failures.push(format!("DELETE {target}: {} — deleted {lost:?}", r.status));
        }
    }
    assert!(failures.is_empty(), "DELETE of folders that cannot be deleted:\n{}", failures.join("\n"));
}

/// Was a data-loss bug (fixed in servente-files::guard): COPY or MOVE with an area's own folder as Destination (Overwrite: T, the
/// default) first deletes everything in that area, then fails. With alice's home holding
/// keep.txt and m/f.txt: `COPY /files/dav/users/alice/m/` with `Destination:
/// http://HOST/files/dav/users/alice/` → `207` whose only response is `403` for the home, and
/// the home is empty — m/ and keep.txt are gone. The same with MOVE, with a file as the source,
/// and in a group folder. Expected: 403 (or 409/412) and nothing deleted (mod_dav refuses a
/// Destination that contains the source; the area folder itself can never be replaced).
#[test]
fn copy_or_move_onto_an_area_folder_deletes_nothing() {
    let dav = Dav::start("");
    let mut failures = Vec::new();
    for (area, method, src) in [
        ("/users/alice/", "COPY", "m/"),
        ("/users/alice/", "MOVE", "m/"),
        ("/users/alice/", "COPY", "keep.txt"),
        ("/groups/staff/", "MOVE", "m/"),
    ] {
        dav.put_ok(ALICE, &format!("{area}keep.txt"), b"keep me");
        if dav.call(ALICE, "PROPFIND", &format!("{area}m/"), &["-H", "Depth: 0"]).status == 404 {
            dav.mkcol_ok(ALICE, &format!("{area}m/"));
        }
        dav.put_ok(ALICE, &format!("{area}m/f.txt"), b"and me");
        let r = dav.call(ALICE, method, &format!("{area}{src}"), &["-H", &format!("Destination: {}", dav.url(area))]);
        let rel = area.trim_start_matches('/');
        let left = ["keep.txt", "m/f.txt"].iter().filter(|f| dav.disk(&format!("{rel}{f}")).exists()).count();
        if left != 2 || ((200..300).contains(&r.status) && r.status != 207) {
            failures.push(format!(
                "{method} {area}{src} onto {area}: {} {} — {left} of 2 files left",
                r.status,
                r.text().replace('\n', " ")
            ));
        }
    }
    assert!(failures.is_empty(), "COPY/MOVE onto an area folder:\n{}", failures.join("\n"));
}

/// A folder cannot be moved or copied into its own subtree: 403 (as mod_dav: "the source
/// collection contains the destination"), and the folder is intact.
#[test]
fn move_or_copy_into_its_own_subtree_is_refused() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/m/");
    dav.mkcol_ok(ALICE, "/users/alice/m/sub/");
    dav.put_ok(ALICE, "/users/alice/m/f.txt", b"f");
    let mut failures = Vec::new();
    for (method, dest) in [("MOVE", "m/sub/m2/"), ("MOVE", "m/sub/"), ("COPY", "m/sub/m2/")] {
        let r = dav.call(ALICE, method, "/users/alice/m/", &["-H", &format!("Destination: {}", dav.url(&format!("/users/alice/{dest}")))]);
        if r.status != 403 {
            failures.push(format!("{method} m/ into {dest}: {}", r.status));
        }
    }
    assert!(dav.disk("users/alice/m/f.txt").exists() && dav.disk("users/alice/m/sub").is_dir(), "the source folder is intact");
    assert!(!dav.disk("users/alice/m/sub/m2").exists() && !dav.disk("users/alice/m/sub/m").exists(), "nothing was made");
    assert!(failures.is_empty(), "MOVE/COPY into the folder's own subtree:\n{}", failures.join("\n"));
}

#[test]
fn malformed_xml_bombs_and_huge_bodies_are_refused() {
    let dav = Dav::start("");
    dav.put_ok(ALICE, "/users/alice/x.txt", b"x");
    let path = "/users/alice/x.txt";
    let xml = |method: &str, body: &str, extra: &[&str]| {
        let mut a = vec!["-H", "Content-Type: application/xml", "-H", "Depth: 0", "--data-binary", body];
        a.extend_from_slice(extra);
        let t = Instant::now();
        let r = dav.call(ALICE, method, path, &a);
        (r, t.elapsed())
    };
    for (method, body) in [
        ("PROPFIND", "<D:propfind xmlns:D=\"DAV:\"><D:prop>"),
        ("PROPFIND", "not xml at all"),
        ("PROPPATCH", "<D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop><x>"),
        ("PROPPATCH", "garbage"),
        ("LOCK", "<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope>"),
        ("LOCK", "garbage"),
    ] {
        let (r, _) = xml(method, body, &[]);
        expect(&r, 400, &format!("malformed {method} {body:?}"));
    }

    // Billion laughs: refused quickly, without expanding, and the server stays up.
    let dtd = "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY l0 \"lol\">".to_string()
        + &(1..10).map(|i| format!("<!ENTITY l{i} \"{}\">", format!("&l{};", i - 1).repeat(10))).collect::<String>()
        + "]>";
    for (method, body) in [
        (
            "PROPPATCH",
            format!(
                "{dtd}<D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop><Z:bomb xmlns:Z=\"urn:x\">&l9;</Z:bomb></D:prop></D:set></D:propertyupdate>"
            ),
        ),
        ("PROPFIND", format!("{dtd}<D:propfind xmlns:D=\"DAV:\"><D:prop><Z:bomb xmlns:Z=\"urn:x\">&l9;</Z:bomb></D:prop></D:propfind>")),
        (
            "LOCK",
            format!(
                "{dtd}<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>&l9;</D:owner></D:lockinfo>"
            ),
        ),
    ] {
        let (r, took) = xml(method, &body, &[]);
        assert!((400..500).contains(&r.status), "{method} with an XML bomb: {} {}", r.status, r.text());
        assert!(took < Duration::from_secs(3), "{method} with an XML bomb took {took:?}");
        assert!(r.body.len() < 10_000, "{method}: an answer of {} bytes", r.body.len());
    }
    let (r, _) = xml("PROPFIND", &propfind_one("urn:x", "bomb"), &[]);
    assert!(r.status == 207 && !r.text().contains("lollol"), "{}", r.text());
    expect(&dav.call(ALICE, "UNLOCK", path, &["-H", "Lock-Token: <urn:uuid:00000000-0000-0000-0000-000000000000>"]), 409, "no lock taken");
    assert_eq!(dav.get(ALICE, path).text(), "x", "the server answers after the bombs");

    // An external entity is not fetched.
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop><Z:xxe xmlns:Z=\"urn:x\">&xxe;</Z:xxe></D:prop></D:set></D:propertyupdate>";
    let (r, _) = xml("PROPPATCH", xxe, &[]);
    assert!(r.status == 400 || r.status == 207, "XXE: {}", r.status);
    let (r, _) = xml("PROPFIND", &propfind_one("urn:x", "xxe"), &[]);
    assert!(!r.text().contains("root:"), "an external entity was expanded: {}", r.text());

    // Bodies past `max_propfind_body` (1 MiB): 413, with a Content-Length or chunked.
    let huge = format!("<D:propfind xmlns:D=\"DAV:\"><D:prop>{}</D:prop></D:propfind>", "<D:getetag/>".repeat(100_000));
    assert!(huge.len() > 1 << 20);
    let mut file = tempfile::NamedTempFile::new().expect("temp");
    file.write_all(huge.as_bytes()).expect("write");
    let at = format!("@{}", file.path().display());
    for method in ["PROPFIND", "PROPPATCH", "LOCK"] {
        let (r, _) = xml(method, &at, &[]);
        expect(&r, 413, &format!("{method} with a 1.2 MiB body"));
        // The server answers 413 while the body is still coming and closes at once, so curl may
        // fail to send (exit 55) before it reads the answer: refused either way.
        let (r, _) = xml(method, &at, &["-H", "Transfer-Encoding: chunked"]);
        let cut_off = r.exit == 55 && matches!(r.status, 0 | 100);
        assert!(r.status == 413 || cut_off, "chunked {method} with a 1.2 MiB body: {} (curl exit {}) {}", r.status, r.exit, r.stderr);
    }
    assert_eq!(dav.get(ALICE, path).text(), "x");
}

// ---------------------------------------------------------------------------------------------
// Locks and conditional requests

#[test]
fn locks_keep_other_users_out() {
    let dav = Dav::start(FOLDERS);
    dav.put_ok(ALICE, "/groups/staff/k.txt", b"alice's draft\n");
    let token = dav.lock(ALICE, "/groups/staff/k.txt");
    let if_token = format!("If: (<{token}>)");
    let dest = format!("Destination: {}", dav.url("/groups/staff/moved.txt"));
    // Another member, without the token or with alice's: 423.
    expect(&dav.put(CAROL, "/groups/staff/k.txt", b"carol's"), 423, "carol's PUT on alice's lock");
    let r = dav.put_with(CAROL, "/groups/staff/k.txt", b"carol's", &["-H", &if_token]);
    assert!(matches!(r.status, 412 | 423), "carol's PUT with alice's token: {}", r.status);
    expect(&dav.call(CAROL, "DELETE", "/groups/staff/k.txt", &[]), 423, "carol's DELETE");
    expect(&dav.call(CAROL, "MOVE", "/groups/staff/k.txt", &["-H", &dest]), 423, "carol's MOVE");
    let r = dav.call(CAROL, "PROPPATCH", "/groups/staff/k.txt", &["--data-binary", &proppatch_body("urn:x", "a", "1")]);
    assert!(matches!(r.status, 423) || r.text().contains("423"), "carol's PROPPATCH: {} {}", r.status, r.text());
    let r = dav.call(CAROL, "LOCK", "/groups/staff/k.txt", &["--data-binary", LOCK_BODY]);
    expect(&r, 423, "carol's LOCK on a locked file");
    assert_eq!(dav.get(CAROL, "/groups/staff/k.txt").text(), "alice's draft\n", "reading is fine");
    // Someone who cannot see the folder can neither lock nor write there.
    let r = dav.call(BOB, "LOCK", "/groups/staff/other.txt", &["--data-binary", LOCK_BODY]);
    assert!((400..500).contains(&r.status) && r.status != 423, "bob's LOCK in the staff folder: {}", r.status);
    let r = dav.call(BOB, "LOCK", "/users/alice/", &["--data-binary", LOCK_BODY]);
    assert!((400..500).contains(&r.status), "bob's LOCK on alice's home: {}", r.status);
    // The holder writes with the token, then unlocks; then carol may write.
    let r = dav.put_with(ALICE, "/groups/staff/k.txt", b"alice's final\n", &["-H", &if_token]);
    expect(&r, 204, "alice's PUT with her token");
    let r = dav.call(ALICE, "UNLOCK", "/groups/staff/k.txt", &["-H", &format!("Lock-Token: <{token}>")]);
    expect(&r, 204, "alice's UNLOCK");
    dav.put_ok(CAROL, "/groups/staff/k.txt", b"carol's turn\n");
    // A lock on a folder covers new members of it.
    dav.mkcol_ok(ALICE, "/groups/staff/d/");
    let t2 = dav.lock(ALICE, "/groups/staff/d/");
    expect(&dav.put(CAROL, "/groups/staff/d/new.txt", b"x"), 423, "carol's PUT into a locked folder");
    let r = dav.put_with(ALICE, "/groups/staff/d/new.txt", b"x", &["-H", &format!("If: (<{t2}>)")]);
    expect(&r, 201, "alice's PUT into her locked folder");
}

/// Locks survive a restart: clients (Office, Finder, davfs2) hold their tokens for hours, and
/// a restarted server must still honour them, for the holder and against everyone else. A lock
/// that expired meanwhile is gone.
#[test]
fn locks_survive_a_restart() {
    let keep = tempfile::Builder::new().prefix("servente-files-data-").tempdir().expect("data folder");
    let data = keep.path().canonicalize().expect("canonical").join("data");
    add_users(&data);
    let data_dir = data.display().to_string();
    let dav = Dav::start_on(Fixture::new(), data.clone(), &data_dir, FOLDERS);
    dav.put_ok(ALICE, "/groups/staff/doc.txt", b"draft\n");
    dav.mkcol_ok(ALICE, "/groups/staff/d/");
    let token = dav.lock(ALICE, "/groups/staff/doc.txt");
    let folder = dav.lock(ALICE, "/groups/staff/d/");
    let r = dav.call(
        ALICE,
        "LOCK",
        "/groups/staff/short.txt",
        &["-H", "Timeout: Second-1", "-H", "Content-Type: application/xml", "--data-binary", LOCK_BODY],
    );
    expect(&r, 201, "a short lock");
    // As neon-based clients (cadaver, davfs2, LibreOffice) write it: DAV: as the default
    // namespace, so the owner element reaches the lock system with an undeclared prefix.
    let neon_body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><lockinfo xmlns='DAV:'><lockscope><exclusive/></lockscope><locktype><write/></locktype><owner><href>alice's laptop</href></owner></lockinfo>";
    dav.put_ok(ALICE, "/groups/staff/neon.txt", b"x");
    let r = dav.call(ALICE, "LOCK", "/groups/staff/neon.txt", &["-H", "Content-Type: application/xml", "--data-binary", neon_body]);
    expect(&r, 200, "a neon-style LOCK");
    drop(dav);

    let dav = Dav::start_on(Fixture::new(), data, &data_dir, FOLDERS);
    expect(&dav.put(CAROL, "/groups/staff/doc.txt", b"carol's"), 423, "carol's PUT after the restart");
    expect(&dav.put(CAROL, "/groups/staff/d/new.txt", b"x"), 423, "carol's PUT into the locked folder");
    expect(&dav.put(CAROL, "/groups/staff/neon.txt", b"carol's"), 423, "carol's PUT on the neon-style lock");
    let r = dav.propfind(CAROL, "/groups/staff/doc.txt", "0", None);
    assert!(r.text().contains(&token), "lockdiscovery shows the lock: {}", r.text());
    let root = between(&r.text(), "lockroot>", "lockroot>").unwrap_or_default();
    assert!(root.contains("/files/dav/groups/staff/doc.txt"), "the lock root keeps its mount prefix: {}", r.text());
    let r = dav.propfind(CAROL, "/groups/staff/neon.txt", "0", None);
    assert!(r.text().contains("alice's laptop"), "the neon-style owner came back: {}", r.text());
    let r = dav.put_with(ALICE, "/groups/staff/doc.txt", b"final\n", &["-H", &format!("If: (<{token}>)")]);
    expect(&r, 204, "alice's PUT with her token after the restart");
    let r = dav.call(ALICE, "UNLOCK", "/groups/staff/doc.txt", &["-H", &format!("Lock-Token: <{token}>")]);
    expect(&r, 204, "UNLOCK after the restart");
    dav.put_ok(CAROL, "/groups/staff/doc.txt", b"carol's turn\n");
    let r = dav.call(ALICE, "UNLOCK", "/groups/staff/d/", &["-H", &format!("Lock-Token: <{folder}>")]);
    expect(&r, 204, "UNLOCK of the folder");
    // The one-second lock expired while the server was down (or just after).
    std::thread::sleep(Duration::from_millis(1100));
    dav.put_ok(CAROL, "/groups/staff/short.txt", b"no lock left\n");
    drop(keep);
}

/// Was a bug, fixed: a LOCK of a URL where nothing exists answered 201 but created nothing, so
/// the next HEAD said 404 (davfs2 locks every file it creates this way). RFC 4918 section
/// 9.10.4 wants an empty file there, locked; a PUT with the token then fills it.
#[test]
fn lock_of_an_unmapped_url_creates_an_empty_file() {
    let dav = Dav::start("");
    let r = dav.call(ALICE, "LOCK", "/users/alice/new.txt", &["-H", "Content-Type: application/xml", "--data-binary", LOCK_BODY]);
    expect(&r, 201, "LOCK of an unmapped URL");
    let token = between(&r.text(), "<D:href>", "</D:href>").expect("the lock token in the answer");
    let head = dav.call(ALICE, "HEAD", "/users/alice/new.txt", &["-I"]);
    expect(&head, 200, "HEAD of the locked empty file");
    let got = dav.get(ALICE, "/users/alice/new.txt");
    expect(&got, 200, "GET of the locked empty file");
    assert!(got.body.is_empty(), "the new file is empty: {:?}", got.text());
    assert_eq!(std::fs::metadata(dav.disk("users/alice/new.txt")).expect("the file on disk").len(), 0);
    assert_eq!(dav.listing(ALICE, "/users/alice/"), ["/files/dav/users/alice/", "/files/dav/users/alice/new.txt"]);
    // It is locked: a PUT without the token is refused, with it the file is filled.
    expect(&dav.put(ALICE, "/users/alice/new.txt", b"no token\n"), 423, "PUT without the token");
    let r = dav.put_with(ALICE, "/users/alice/new.txt", b"with the token\n", &["-H", &format!("If: (<{token}>)")]);
    expect(&r, 204, "PUT with the token");
    assert_eq!(dav.get(ALICE, "/users/alice/new.txt").text(), "with the token\n");
    // A LOCK of a URL whose folder does not exist creates nothing (409) and keeps no lock.
    let r = dav.call(ALICE, "LOCK", "/users/alice/none/x.txt", &["-H", "Content-Type: application/xml", "--data-binary", LOCK_BODY]);
    expect(&r, 409, "LOCK under a missing folder");
    dav.mkcol_ok(ALICE, "/users/alice/none/");
    dav.put_ok(ALICE, "/users/alice/none/x.txt", b"no lock left behind\n");
}

/// Was a bug, fixed: a reader of a read-only shared folder can LOCK its files, and then its writers cannot
/// change them. bob (in `read` of `docs`, not in `write`) sends `LOCK
/// /files/dav/shared/docs/handbook.txt` (exclusive write lock, existing file) → 200 with a
/// lock token (Timeout: Infinite); alice (a writer) then gets 423 Locked on PUT. Expected: 403
/// for bob, as for his PUT, DELETE and for a LOCK of a new name there.
#[test]
fn readers_cannot_lock_files_of_a_read_only_folder() {
    let dav = Dav::start(FOLDERS);
    dav.put_ok(ALICE, "/shared/docs/handbook.txt", b"read me\n");
    let r = dav.call(BOB, "LOCK", "/shared/docs/handbook.txt", &["-H", "Content-Type: application/xml", "--data-binary", LOCK_BODY]);
    let then = dav.put(ALICE, "/shared/docs/handbook.txt", b"v2\n");
    assert!(
        r.status == 403 && matches!(then.status, 201 | 204),
        "a reader LOCKs a file of a read-only folder: {} (then the writer's PUT: {})",
        r.status,
        then.status
    );
}

/// Was a bug, fixed: any signed-in user can remove anyone's lock with UNLOCK, given the token, which every
/// reader sees in DAV:lockdiscovery — even for a path they cannot open. alice locks
/// /groups/staff/k.txt; `UNLOCK /files/dav/groups/staff/k.txt` with `Lock-Token: <alice's
/// token>` by carol (member) → 204, and by bob (not a member; GET there is 404) → 204; the same
/// for bob on /users/alice/h.txt. Expected: 403 for carol (RFC 4918 9.11: only the lock's owner,
/// or a principal allowed to, may remove it), 404 for bob, and the lock stays.
#[test]
fn another_user_cannot_remove_a_lock() {
    let dav = Dav::start("");
    dav.put_ok(ALICE, "/groups/staff/k.txt", b"k");
    dav.put_ok(ALICE, "/users/alice/h.txt", b"h");
    let mut failures = Vec::new();
    for (who, path) in [(CAROL, "/groups/staff/k.txt"), (BOB, "/groups/staff/k.txt"), (BOB, "/users/alice/h.txt")] {
        let token = dav.lock(ALICE, path);
        let r = dav.call(who, "UNLOCK", path, &["-H", &format!("Lock-Token: <{token}>")]);
        // Still locked? carol's PUT must be refused (for h.txt, alice's own PUT without token is).
        let probe = if path.starts_with("/groups/") { dav.put(CAROL, path, b"probe") } else { dav.put(ALICE, path, b"probe") };
        if (200..300).contains(&r.status) || probe.status != 423 {
            failures
                .push(format!("{} UNLOCKs alice's lock on {path}: {} (then a PUT without the token: {})", who.0, r.status, probe.status));
        }
        let _ = dav.call(ALICE, "UNLOCK", path, &["-H", &format!("Lock-Token: <{token}>")]);
    }
    assert!(failures.is_empty(), "locks removed by other users:\n{}", failures.join("\n"));
}

#[test]
fn conditional_requests_with_etags() {
    let dav = Dav::start("");
    let p = "/users/alice/c.txt";
    dav.put_ok(ALICE, p, b"version 1\n");
    let head = |path: &str| dav.call(ALICE, "HEAD", path, &["-I"]);
    let e1 = head(p).header("etag").expect("ETag").to_string();
    assert!(e1.starts_with('"') && e1.ends_with('"'), "{e1}");
    expect(&dav.put_with(ALICE, p, b"version 2\n", &["-H", &format!("If-Match: {e1}")]), 204, "If-Match with the current ETag");
    let e2 = head(p).header("etag").expect("ETag").to_string();
    assert_ne!(e1, e2, "the ETag changes with the content");
    expect(&dav.put_with(ALICE, p, b"lost update\n", &["-H", &format!("If-Match: {e1}")]), 412, "If-Match with an old ETag");
    expect(&dav.put_with(ALICE, p, b"lost update\n", &["-H", "If-None-Match: *"]), 412, "If-None-Match: * on an existing file");
    expect(&dav.put_with(ALICE, p, b"lost update\n", &["-H", &format!("If: ([{e1}])")]), 412, "If: with an old ETag");
    expect(&dav.call(ALICE, "DELETE", p, &["-H", &format!("If-Match: {e1}")]), 412, "DELETE with an old ETag");
    assert_eq!(dav.get(ALICE, p).text(), "version 2\n");
    expect(&dav.call(ALICE, "GET", p, &["-H", &format!("If-None-Match: {e2}")]), 304, "GET with the current ETag");
    expect(&dav.put_with(ALICE, "/users/alice/new.txt", b"new\n", &["-H", "If-None-Match: *"]), 201, "If-None-Match: * on a new file");
    expect(&dav.put_with(ALICE, "/users/alice/none.txt", b"x", &["-H", "If-Match: *"]), 412, "If-Match: * on no file");
    assert!(!dav.disk("users/alice/none.txt").exists());
    expect(&dav.put_with(ALICE, p, b"version 3\n", &["-H", &format!("If: ([{e2}])")]), 204, "If: with the current ETag");
    assert_eq!(dav.get(ALICE, p).text(), "version 3\n");
}

/// A download answers one byte range and the HTTP preconditions itself, as the web role does:
/// 206 with Content-Range, 416 for a range past the end, the whole file when If-Range names an
/// old version, 304 and 412 from the validators. Several ranges at once get dav-server's
/// multipart answer.
#[test]
fn downloads_answer_ranges_and_preconditions() {
    let dav = Dav::start("");
    let p = "/users/alice/r.txt";
    dav.put_ok(ALICE, p, b"0123456789abcdef");
    let head = dav.call(ALICE, "HEAD", p, &["-I"]);
    let etag = head.header("etag").expect("ETag").to_string();
    let modified = head.header("last-modified").expect("Last-Modified").to_string();
    let get = |args: &[&str]| dav.call(ALICE, "GET", p, args);

    let r = get(&["-H", "Range: bytes=2-5"]);
    expect(&r, 206, "one range");
    assert_eq!((r.body.as_slice(), r.header("content-range")), (&b"2345"[..], Some("bytes 2-5/16")));
    let r = get(&["-H", "Range: bytes=-3"]);
    expect(&r, 206, "the last 3 bytes");
    assert_eq!((r.body.as_slice(), r.header("content-range")), (&b"def"[..], Some("bytes 13-15/16")));
    let r = get(&["-H", "Range: bytes=16-"]);
    expect(&r, 416, "a range past the end");
    assert_eq!(r.header("content-range"), Some("bytes */16"));
    let r = get(&["-H", "Range: bytes=2-5", "-H", "If-Range: \"an-old-version\""]);
    expect(&r, 200, "If-Range with another ETag");
    assert_eq!(r.body, b"0123456789abcdef");
    let if_range = format!("If-Range: {etag}");
    let r = get(&["-H", "Range: bytes=2-5", "-H", &if_range]);
    expect(&r, 206, "If-Range with the current ETag");
    assert_eq!(r.body, b"2345");
    let r = dav.call(ALICE, "HEAD", p, &["-I", "-H", "Range: bytes=0-9"]);
    expect(&r, 206, "HEAD with a range");
    assert_eq!(r.header("content-length"), Some("10"));

    let since = format!("If-Modified-Since: {modified}");
    let r = get(&["-H", &since]);
    expect(&r, 304, "If-Modified-Since the file's own time");
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    expect(&get(&["-H", "If-Match: \"an-old-version\""]), 412, "If-Match with another ETag");
    let r = get(&["-H", "If-None-Match: \"an-old-version\"", "-H", "Range: bytes=0-0"]);
    expect(&r, 206, "If-None-Match with another ETag, one range");
    assert_eq!(r.body, b"0");

    let r = get(&["-H", "Range: bytes=0-1,4-5"]);
    expect(&r, 206, "two ranges");
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("multipart/byteranges")), "{:?}", r.header("content-type"));
    let body = r.text();
    assert!(body.contains("01") && body.contains("45") && !body.contains("0123"), "{body}");
}

/// Was a bug, fixed: an If header naming a lock token that does not lock the resource is ignored instead of
/// failing: `PUT /files/dav/users/alice/f.txt` (not locked) with `If:
/// (<urn:uuid:3b2f0c1e-0000-4000-8000-000000000001>)` → 204, and so with the token of a lock
/// that was just released. Expected: 412 Precondition Failed (RFC 4918 10.4: the state token
/// does not match, so the condition is false), the file unchanged.
#[test]
fn if_header_with_a_lock_token_not_held_fails() {
    let dav = Dav::start("");
    let p = "/users/alice/f.txt";
    dav.put_ok(ALICE, p, b"original");
    let released = dav.lock(ALICE, p);
    expect(&dav.call(ALICE, "UNLOCK", p, &["-H", &format!("Lock-Token: <{released}>")]), 204, "UNLOCK");
    let mut failures = Vec::new();
    for token in ["urn:uuid:3b2f0c1e-0000-4000-8000-000000000001", released.as_str()] {
        let r = dav.put_with(ALICE, p, b"changed", &["-H", &format!("If: (<{token}>)")]);
        if r.status != 412 {
            failures.push(format!("PUT with `If: (<{token}>)`: {}", r.status));
        }
        let r = dav.call(ALICE, "PROPPATCH", p, &["-H", &format!("If: (<{token}>)"), "--data-binary", &proppatch_body("urn:x", "a", "1")]);
        if r.status != 412 {
            failures.push(format!("PROPPATCH with `If: (<{token}>)`: {}", r.status));
        }
    }
    assert!(failures.is_empty(), "If: with a lock token that locks nothing:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The JSON API: sessions, CSRF, resumable uploads, share links, zip

/// Signs in with `POST MOUNT/api/session`; returns (the Cookie header, the CSRF token).
fn sign_in(dav: &Dav, who: Who<'_>) -> (String, String) {
    let body = json!({ "user": who.0, "password": who.1 }).to_string();
    let r = curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body, &dav.mount("api/session")]);
    expect(&r, 200, "sign-in");
    let v: Value = serde_json::from_slice(&r.body).expect("session JSON");
    assert_eq!(v["user"], who.0, "{v}");
    let set = r.header("set-cookie").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite"), "{set}");
    let cookie = set.split(';').next().expect("cookie").to_string();
    (format!("Cookie: {cookie}"), v["csrf"].as_str().expect("csrf").to_string())
}

/// curl with `args` on `url`, returning the answer and its JSON body (Null when not JSON).
fn api(args: &[&str], url: &str) -> (Resp, Value) {
    let mut a = vec!["-g"];
    a.extend_from_slice(args);
    a.push(url);
    let r = curl(&a);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r, v)
}

#[test]
fn session_cookie_needs_the_csrf_token_to_change_files() {
    let dav = Dav::start("quota = \"10 MiB\"");
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &json!({"user": "alice", "password": "wrong"}).to_string(),
        &dav.mount("api/session"),
    ]);
    expect(&r, 401, "sign-in with a wrong password");
    let (cookie, csrf) = sign_in(&dav, ALICE);
    let token = format!("X-CSRF-Token: {csrf}");
    let (r, v) = api(&["-H", &cookie], &dav.mount("api/session"));
    expect(&r, 200, "GET api/session");
    assert_eq!((v["home"].as_str(), v["quota"]["limit"].as_u64()), (Some("/users/alice/"), Some(10 << 20)), "{v}");
    let areas: Vec<&str> = v["areas"].as_array().expect("areas").iter().filter_map(|a| a["path"].as_str()).collect();
    assert_eq!(areas, ["/users/alice/", "/groups/staff/"], "{v}");

    let with = |method: &str, path: &str, extra: &[&str]| {
        let url = dav.url(path);
        let mut a = vec!["-H", &cookie, "-X", method];
        a.extend_from_slice(extra);
        a.push(&url);
        curl(&a)
    };
    // Reading needs no token.
    dav.put_ok(ALICE, "/users/alice/f.txt", b"file\n");
    assert_eq!(with("GET", "/users/alice/f.txt", &[]).text(), "file\n");
    expect(&with("PROPFIND", "/users/alice/", &["-H", "Depth: 1"]), 207, "PROPFIND with the cookie");
    // Changing needs it: without it or with a wrong one, 403 and nothing happens.
    let dest = format!("Destination: {}", dav.url("/users/alice/g.txt"));
    for bad in [None, Some("X-CSRF-Token: wrong")] {
        let mut h: Vec<&str> = Vec::new();
        if let Some(b) = bad {
            h.extend(["-H", b]);
        }
        let patch = proppatch_body("urn:x", "a", "1");
        for (method, path, extra) in [
            ("PUT", "/users/alice/new.txt", joined(&h, &["--data-binary", "forged"])),
            ("PUT", "/users/alice/f.txt", joined(&h, &["--data-binary", "forged"])),
            ("DELETE", "/users/alice/f.txt", joined(&h, &[])),
            ("MKCOL", "/users/alice/d/", joined(&h, &[])),
            ("MOVE", "/users/alice/f.txt", joined(&h, &["-H", &dest])),
            ("COPY", "/users/alice/f.txt", joined(&h, &["-H", &dest])),
            ("PROPPATCH", "/users/alice/f.txt", joined(&h, &["--data-binary", &patch])),
            ("LOCK", "/users/alice/f.txt", joined(&h, &["--data-binary", LOCK_BODY])),
        ] {
            let r = with(method, path, &extra);
            expect(&r, 403, &format!("{method} {path} with the cookie and {bad:?}"));
        }
    }
    assert_eq!(dav.get(ALICE, "/users/alice/f.txt").text(), "file\n");
    assert_eq!(std::fs::read_dir(dav.disk("users/alice")).expect("home").count(), 1, "nothing was made");
    // With the token, it works.
    expect(&with("PUT", "/users/alice/new.txt", &["-H", &token, "--data-binary", "mine"]), 201, "PUT with the token");
    expect(&with("DELETE", "/users/alice/f.txt", &["-H", &token]), 204, "DELETE with the token");
    // The API wants it too.
    let share = json!({"path": "/users/alice/new.txt"}).to_string();
    let (r, _) =
        api(&["-H", &cookie, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &share], &dav.mount("api/shares"));
    expect(&r, 403, "POST api/shares without the token");
    let (r, _) = api(
        &["-H", &cookie, "-H", &token, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &share],
        &dav.mount("api/shares"),
    );
    expect(&r, 201, "POST api/shares with the token");
    // Signing out ends the session.
    let (r, _) = api(&["-H", &cookie, "-X", "DELETE"], &dav.mount("api/session"));
    expect(&r, 403, "sign-out without the token");
    let (r, _) = api(&["-H", &cookie, "-H", &token, "-X", "DELETE"], &dav.mount("api/session"));
    expect(&r, 200, "sign-out");
    expect(&with("GET", "/users/alice/new.txt", &[]), 401, "the cookie after sign-out");
}

#[test]
fn resumable_upload_in_chunks() {
    let dav = Dav::start("quotas = { bob = \"1 MiB\" }");
    let data = noise((5 << 20) / 2 + 123, 7);
    let chunk = 1 << 20;
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    dav.mkcol_ok(ALICE, "/users/alice/up/");
    let start = |who: &str, path: &str, size: usize| {
        let body = json!({ "path": path, "size": size }).to_string();
        api(&["-u", who, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body], &dav.mount("api/uploads"))
    };
    let tmp = tempfile::tempdir().expect("temp");
    let send = |who: &str, id: &str, offset: usize, bytes: &[u8]| {
        let f = tmp.path().join(format!("chunk-{offset}-{}", bytes.len()));
        std::fs::write(&f, bytes).expect("chunk file");
        let at = format!("@{}", f.display());
        let off = format!("Upload-Offset: {offset}");
        api(
            &["-u", who, "-X", "PATCH", "-H", &off, "-H", "Content-Type: application/offset+octet-stream", "--data-binary", &at],
            &dav.mount(&format!("api/uploads/{id}")),
        )
    };
    // The API takes decoded paths; WebDAV URLs are encoded.
    let (target, target_url) = ("/users/alice/up/film été.bin", "/users/alice/up/film%20%C3%A9t%C3%A9.bin");
    let (r, v) = start(&alice, target, data.len());
    expect(&r, 201, "POST api/uploads");
    let id = v["id"].as_str().expect("upload id").to_string();
    assert_eq!(v["offset"], 0, "{v}");

    let (r, v) = send(&alice, &id, 0, &data[..chunk]);
    expect(&r, 200, "the first chunk");
    assert_eq!(v["offset"], chunk, "{v}");
    // A repeated or skipping chunk: 409 with where the upload stands.
    for wrong in [0, 2 * chunk] {
        let (r, v) = send(&alice, &id, wrong, &data[wrong..wrong + 10]);
        expect(&r, 409, &format!("a chunk at {wrong}"));
        assert_eq!(v["offset"], chunk, "{v}");
    }
    let (r, v) = api(&["-u", &alice], &dav.mount(&format!("api/uploads/{id}")));
    expect(&r, 200, "GET api/uploads/ID");
    assert_eq!((v["offset"].as_u64(), v["size"].as_u64()), (Some(chunk as u64), Some(data.len() as u64)), "{v}");
    // Someone else's upload does not exist for bob.
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let (r, _) = api(&["-u", &bob], &dav.mount(&format!("api/uploads/{id}")));
    expect(&r, 404, "bob looks at alice's upload");
    let (r, _) = send(&bob, &id, chunk, &data[chunk..2 * chunk]);
    expect(&r, 404, "bob sends a chunk to alice's upload");

    let (r, _) = send(&alice, &id, chunk, &data[chunk..2 * chunk]);
    expect(&r, 200, "the second chunk");
    // Not there until the last byte.
    expect(&dav.get(ALICE, target_url), 404, "the file before the last chunk");
    assert_eq!(dav.listing(ALICE, "/users/alice/up/"), ["/files/dav/users/alice/up/"]);
    let (r, _) = send(&alice, &id, 2 * chunk, &[&data[2 * chunk..], &b"extra"[..]].concat());
    expect(&r, 400, "a chunk past the announced size");
    let (r, v) = send(&alice, &id, 2 * chunk, &data[2 * chunk..]);
    expect(&r, 201, "the last chunk");
    assert_eq!(v["done"], true, "{v}");
    let got = dav.get(ALICE, target_url);
    expect(&got, 200, "the finished file");
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data), "the uploaded file's SHA-256");
    assert!(got.body == data);
    let (r, _) = api(&["-u", &alice], &dav.mount(&format!("api/uploads/{id}")));
    expect(&r, 404, "the finished upload is gone");

    // Refused at the start: a read-only folder, no folder, past the quota, someone else's home.
    for (who, path, size, status) in [
        (&bob, "/shared/none/x.bin", 10, 404),
        (&bob, "/users/alice/up/x.bin", 10, 404),
        (&alice, "/users/alice/missing/x.bin", 10, 409),
        (&bob, "/users/bob/big.bin", 2 << 20, 507),
        (&alice, "/users/", 10, 403),
    ] {
        let (r, _) = start(who, path, size);
        expect(&r, status, &format!("an upload to {path}"));
    }
}

#[test]
fn share_links_with_password_expiry_and_revocation() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/pub/");
    dav.mkcol_ok(ALICE, "/users/alice/pub/sub%20dir/");
    dav.put_ok(ALICE, "/users/alice/pub/a.txt", b"file a\n");
    dav.put_ok(ALICE, "/users/alice/pub/sub%20dir/b%C3%A9.txt", b"file b\n");
    dav.put_ok(ALICE, "/users/alice/outside.txt", b"not shared\n");
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let create = |body: Value| {
        let b = body.to_string();
        api(&["-u", &alice, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &b], &dav.mount("api/shares"))
    };
    let (r, v) = create(json!({"path": "/users/alice/pub", "password": "open sesame", "expires_in": 3600}));
    expect(&r, 201, "a share with a password");
    let id = v["id"].as_str().expect("id").to_string();
    let url = format!("{}{}", dav.origin, v["url"].as_str().expect("url"));
    assert_eq!((v["is_dir"].as_bool(), v["password"].as_bool()), (Some(true), Some(true)), "{v}");

    // Without the password: the form, for the link and anything under it.
    for u in [url.clone(), format!("{url}/"), format!("{url}/a.txt"), format!("{url}/?zip=1")] {
        let r = curl(&[&u]);
        expect(&r, 401, &format!("{u} without the password"));
        assert!(r.text().contains("type=password") && !r.text().contains("file a"), "{}", r.text());
    }
    let r = curl(&["-X", "POST", "--data", "password=wrong", &url]);
    expect(&r, 401, "a wrong password");
    assert!(r.text().contains("Wrong password"), "{}", r.text());
    let r = curl(&["-X", "POST", "--data-urlencode", "password=open sesame", &url]);
    expect(&r, 303, "the right password");
    let set = r.header("set-cookie").expect("share cookie");
    assert!(set.contains("HttpOnly") && set.contains(&format!("Path=/files/s/{id}")), "{set}");
    let cookie = format!("Cookie: {}", set.split(';').next().expect("cookie"));
    let with = |u: &str| curl(&["-g", "--path-as-is", "-H", &cookie, u]);

    let r = with(&url);
    expect(&r, 301, "the folder link without a slash");
    let r = with(&format!("{url}/"));
    expect(&r, 200, "the folder listing");
    assert!(r.text().contains("a.txt") && r.text().contains("sub dir/") && !r.text().contains("outside"), "{}", r.text());
    assert_eq!(with(&format!("{url}/a.txt")).text(), "file a\n");
    assert_eq!(with(&format!("{url}/sub%20dir/b%C3%A9.txt")).text(), "file b\n");
    let r = with(&format!("{url}/a.txt?download=1"));
    assert!(r.header("content-disposition").is_some_and(|d| d.starts_with("attachment")), "{r:?}");
    // No way out of the shared folder.
    for esc in [
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/sub%20dir/%2e%2e/%2e%2e/outside.txt",
        "/..%2foutside.txt",
        "/sub%20dir/../../outside.txt",
    ] {
        let r = with(&format!("{url}{esc}"));
        assert!(r.status == 404 && !r.text().contains("not shared"), "{esc}: {} {}", r.status, r.text());
    }
    // Read-only.
    let r = curl(&["-H", &cookie, "-X", "PUT", "--data-binary", "x", &format!("{url}/a.txt")]);
    expect(&r, 405, "PUT through a share link");
    // The zip of the whole folder.
    let r = with(&format!("{url}/?zip=1"));
    expect(&r, 200, "the folder as a zip");
    assert_eq!(r.header("content-type"), Some("application/zip"));
    let z = read_zip(&r.body);
    assert_eq!(z["bad"], Value::Null, "{z}");
    assert_eq!(z["files"], json!({"pub/a.txt": sha256_hex(b"file a\n"), "pub/sub dir/bé.txt": sha256_hex(b"file b\n")}), "the zip's files");
    // Revoked: 404.
    let (r, v) = api(&["-u", &alice], &dav.mount("api/shares"));
    expect(&r, 200, "GET api/shares");
    assert_eq!(v.as_array().map(|a| a.len()), Some(1), "{v}");
    let (r, _) = api(&["-u", &format!("{}:{}", BOB.0, BOB.1), "-X", "DELETE"], &dav.mount(&format!("api/shares/{id}")));
    expect(&r, 404, "bob revokes alice's share");
    let (r, _) = api(&["-u", &alice, "-X", "DELETE"], &dav.mount(&format!("api/shares/{id}")));
    expect(&r, 200, "alice revokes her share");
    expect(&with(&format!("{url}/a.txt")), 404, "a revoked link");

    // A file link without a password, expiring: works, then 404.
    let (r, v) = create(json!({"path": "/users/alice/pub/a.txt", "expires_in": 2}));
    expect(&r, 201, "a share of a file");
    let furl = format!("{}{}", dav.origin, v["url"].as_str().expect("url"));
    let r = curl(&[&furl]);
    assert_eq!((r.status, r.text().as_str()), (200, "file a\n"), "before it expires");
    expect(&curl(&[&format!("{furl}/../outside.txt"), "--path-as-is"]), 404, "under a file link");
    assert!(wait_until(Duration::from_secs(6), || curl(&[&furl]).status == 404), "the link did not expire");
    // Only one's own files.
    for path in ["/users/bob/", "/users/alice/../bob/", "/users/alice/nothing.txt", "/users/", "/"] {
        let (r, _) = create(json!({ "path": path }));
        assert!(matches!(r.status, 400 | 403 | 404), "a share of {path}: {}", r.status);
    }

    // A link lends its owner's current access: when alice leaves the group, her link into the
    // group folder stops working; when she is disabled, so do the links to her home.
    dav.put_ok(ALICE, "/groups/staff/team.txt", b"team\n");
    let link = |path: &str| {
        let (r, v) = create(json!({ "path": path }));
        expect(&r, 201, &format!("a share of {path}"));
        format!("{}{}", dav.origin, v["url"].as_str().expect("url"))
    };
    let (group_link, home_link) = (link("/groups/staff/team.txt"), link("/users/alice/pub/a.txt"));
    assert_eq!(curl(&[&group_link]).text(), "team\n");
    dav.cli(&["group", "members", "staff", "--remove", "alice"]);
    assert!(wait_until(Duration::from_secs(5), || curl(&[&group_link]).status == 404), "the group link outlived alice's membership");
    assert_eq!(curl(&[&home_link]).text(), "file a\n");
    dav.cli(&["user", "disable", "alice"]);
    assert!(wait_until(Duration::from_secs(5), || curl(&[&home_link]).status == 404), "the home link outlived alice's account");
}

/// Was a bug, fixed: the folder listing of a share link offers "Download everything as a zip" as
/// `href="?zip"`, but `GET /files/s/ID/?zip` answers the HTML listing again; only `?zip=` or
/// `?zip=1` gives the zip (the query parser skips keys without `=`). The same for `?download`
/// on a file. Expected: `?zip` gives application/zip, `?download` an attachment.
#[test]
fn share_links_take_flag_style_parameters() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/pub/");
    dav.put_ok(ALICE, "/users/alice/pub/a.txt", b"a");
    let body = json!({"path": "/users/alice/pub"}).to_string();
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let (r, v) =
        api(&["-u", &alice, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body], &dav.mount("api/shares"));
    expect(&r, 201, "share");
    let url = format!("{}{}/", dav.origin, v["url"].as_str().expect("url"));
    let listing = curl(&[&url]).text();
    assert!(listing.contains("href=\"?zip\""), "{listing}");
    let mut failures = Vec::new();
    let r = curl(&[&format!("{url}?zip")]);
    if r.header("content-type") != Some("application/zip") {
        failures.push(format!("GET {url}?zip: {} {:?}", r.status, r.header("content-type")));
    }
    let r = curl(&[&format!("{url}a.txt?download")]);
    if !r.header("content-disposition").is_some_and(|d| d.starts_with("attachment")) {
        failures.push(format!("GET {url}a.txt?download: Content-Disposition {:?}", r.header("content-disposition")));
    }
    assert!(failures.is_empty(), "flag-style query parameters are ignored:\n{}", failures.join("\n"));
}

#[test]
fn zip_download_of_a_folder() {
    let dav = Dav::start("");
    dav.mkcol_ok(ALICE, "/users/alice/caf%C3%A9/");
    dav.mkcol_ok(ALICE, "/users/alice/caf%C3%A9/inner/");
    let big = noise(3 << 20, 11);
    dav.put_ok(ALICE, "/users/alice/caf%C3%A9/one.txt", b"one\n");
    dav.put_ok(ALICE, "/users/alice/caf%C3%A9/inner/big%20file.bin", &big);
    dav.put_ok(ALICE, "/users/alice/other.txt", b"other\n");
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let (r, _) = api(&["-u", &alice], &dav.mount("api/zip?path=/users/alice/caf%C3%A9"));
    expect(&r, 200, "zip of a folder");
    assert_eq!(r.header("content-type"), Some("application/zip"));
    assert!(r.header("content-disposition").is_some_and(|d| d.starts_with("attachment") && d.contains("caf")), "{r:?}");
    let z = read_zip(&r.body);
    assert_eq!(z["bad"], Value::Null, "{z}");
    assert_eq!(z["files"], json!({"café/one.txt": sha256_hex(b"one\n"), "café/inner/big file.bin": sha256_hex(&big)}), "{z}");
    // Others' folders, escapes and the virtual top are refused.
    let bob = format!("{}:{}", BOB.0, BOB.1);
    for (who, path, status) in [
        (&bob, "/users/alice/caf%C3%A9", 404),
        (&alice, "/users/alice/../bob", 404),
        (&alice, "/users/alice/%2e%2e/bob", 404),
        (&alice, "/users/", 403),
        (&alice, "/", 403),
    ] {
        let (r, _) = api(&["-u", who], &dav.mount(&format!("api/zip?path={path}")));
        expect(&r, status, &format!("zip of {path}"));
    }
    let (r, _) = api(&[], &dav.mount("api/zip?path=/users/alice/caf%C3%A9"));
    expect(&r, 401, "zip without signing in");
}

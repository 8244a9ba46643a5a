//! A PHP application through php-fpm (Debian's `php-fpm`) behind servente's FastCGI route: a
//! front controller, PATH_INFO, a form post, a file upload, a session cookie, a streamed
//! response, static files beside the scripts, and what happens when php-fpm is down.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The php-fpm binary (`/usr/sbin/php-fpm8.2` on Debian 12).
fn php_fpm() -> PathBuf {
    let found = std::fs::read_dir("/usr/sbin").ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("php-fpm")))
    });
    found.expect("php-fpm is not installed (Debian package php-fpm; scripts/test installs it)")
}

/// A php-fpm instance of its own on a Unix socket, stopped on drop.
struct Fpm {
    child: Child,
    socket: PathBuf,
}

impl Drop for Fpm {
    /// SIGTERM first: php-fpm's master then stops its children. A SIGKILL alone left them
    /// running (orphans waiting on a deleted socket), two more after every test.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_fpm(dir: &std::path::Path) -> Fpm {
    let socket = dir.join("fpm.sock");
    let root = running_as_root();
    let conf = format!(
        "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\ndaemonize = no\n[www]\n{user}listen = {s}\npm = static\npm.max_children = 2\ncatch_workers_output = yes\n",
        d = dir.display(),
        s = socket.display(),
        user = if root { "user = root\ngroup = root\n" } else { "" },
    );
    std::fs::write(dir.join("fpm.conf"), conf).expect("fpm config");
    let mut cmd = Command::new(php_fpm());
    if root {
        cmd.arg("-R");
    }
    let child = cmd
        .args(["-F", "-n", "-y"])
        .arg(dir.join("fpm.conf"))
        .arg("-d")
        .arg(format!("session.save_path={}", dir.display()))
        .args(["-d", "upload_max_filesize=8M", "-d", "post_max_size=9M", "-d", "output_buffering=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start php-fpm");
    let deadline = Instant::now() + WAIT;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "php-fpm did not create its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    Fpm { child, socket }
}

/// Whether the tests run as root (php-fpm then needs `-R` and a user).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

const INDEX: &str = r#"<?php
session_start();
$_SESSION['visits'] = ($_SESSION['visits'] ?? 0) + 1;
header('X-App: php');
if (($_GET['status'] ?? '') === 'teapot') { http_response_code(418); }
if (isset($_GET['go'])) { header('Location: /elsewhere'); exit; }
echo "uri=", $_SERVER['REQUEST_URI'], "\n";
echo "script=", $_SERVER['SCRIPT_NAME'], "\n";
echo "path_info=", $_SERVER['PATH_INFO'] ?? '', "\n";
echo "root=", $_SERVER['DOCUMENT_ROOT'], "\n";
echo "filename=", $_SERVER['SCRIPT_FILENAME'], "\n";
echo "translated=", $_SERVER['PATH_TRANSLATED'] ?? '', "\n";
echo "method=", $_SERVER['REQUEST_METHOD'], "\n";
echo "query=", $_SERVER['QUERY_STRING'], "\n";
echo "https=", $_SERVER['HTTPS'] ?? 'off', "\n";
echo "remote=", $_SERVER['REMOTE_ADDR'], "\n";
echo "ua=", $_SERVER['HTTP_USER_AGENT'] ?? '', "\n";
echo "proxy=", getenv('HTTP_PROXY') ?: ($_SERVER['HTTP_PROXY'] ?? 'none'), "\n";
echo "xff=", $_SERVER['HTTP_X_FORWARDED_FOR'] ?? 'none', "\n";
echo "multi=", $_SERVER['HTTP_X_MULTI'] ?? '', "\n";
echo "visits=", $_SESSION['visits'], "\n";
echo "post=", json_encode($_POST), "\n";
foreach ($_FILES as $k => $f) { echo "file=$k:", $f['name'], ":", $f['size'], ":", md5_file($f['tmp_name']), "\n"; }
"#;

const STREAM: &str = r#"<?php
header('Content-Type: text/plain');
for ($i = 0; $i < 3; $i++) { echo "tick $i\n"; flush(); usleep(300000); }
"#;

fn fixture_with_fpm() -> (Fixture, Fpm) {
    let fx = Fixture::new();
    fx.write("root/index.php", INDEX);
    fx.write("root/stream.php", STREAM);
    fx.write("root/style.css", "body{}");
    fx.write("root/uploads/photo.jpg/evil.php.txt", "not a script");
    let fpm = start_fpm(&fx.path());
    (fx, fpm)
}

fn php_config(socket: &std::path::Path) -> String {
    web_config(&format!("[site.fastcgi]\naddress = \"unix:{}\"\nfront_controller = \"/index.php\"\n", socket.display()))
}

#[test]
fn php_through_fastcgi() {
    let (fx, fpm) = fixture_with_fpm();
    let dir = fx.path();
    let server = fx.start(&php_config(&fpm.socket));
    let base = server.url("web");

    // A header spelled with underscores would pass for another one (X_Forwarded_For becomes
    // HTTP_X_FORWARDED_FOR): such headers are not passed, as nginx does by default; a header
    // sent twice arrives once, its values joined.
    let r = curl(&[
        "-A",
        "servente-test",
        "-H",
        "Proxy: http://evil.example",
        "-H",
        "X_Forwarded_For: 6.6.6.6",
        "-H",
        "X-Multi: a",
        "-H",
        "X-Multi: b",
        &format!("{base}/index.php/a/b?x=1"),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    for want in [
        "uri=/index.php/a/b?x=1",
        "script=/index.php",
        "path_info=/a/b",
        "method=GET",
        "query=x=1",
        "remote=127.0.0.1",
        "ua=servente-test",
        "proxy=none",
        "xff=none",
        "multi=a, b",
        "https=off",
    ] {
        assert!(t.contains(want), "missing {want} in:\n{t}");
    }
    assert_eq!(r.header("x-app"), Some("php"));
    // The paths on disk: the site's root, the script in it, and PATH_INFO under the root.
    let line = |name: &str| t.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_string();
    let root = line("root=");
    assert!(root.ends_with("/root"), "{t}");
    assert_eq!(line("filename="), format!("{root}/index.php"), "{t}");
    assert_eq!(line("translated="), format!("{root}/a/b"), "{t}");

    // Front controller: pretty URLs with no file behind them.
    let t = curl(&[&format!("{base}/blog/2026/hello")]).text();
    assert!(t.contains("uri=/blog/2026/hello") && t.contains("script=/index.php"), "{t}");

    // Static files beside the scripts stay static; a file that only looks like a script is not run.
    let r = curl(&[&format!("{base}/style.css")]);
    assert_eq!((r.status, r.text().as_str()), (200, "body{}"));
    let r = curl(&[&format!("{base}/uploads/photo.jpg/evil.php.txt")]);
    assert_eq!((r.status, r.text().as_str()), (200, "not a script"));

    // Status and Location from the script.
    assert_eq!(curl(&[&format!("{base}/?status=teapot")]).status, 418);
    let r = curl(&[&format!("{base}/?go=1")]);
    assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));

    // A form post and a file upload (2 MiB).
    let t = curl(&["-d", "name=Zoë&age=7", &format!("{base}/form")]).text();
    assert!(t.contains(r#"post={"name":"Zo\u00eb","age":"7"}"#), "{t}");
    let upload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("upload.bin"), &upload).expect("upload file");
    let t = curl(&["-F", "note=hi", "-F", &format!("doc=@{}", dir.join("upload.bin").display()), &format!("{base}/upload")]).text();
    let md5 = String::from_utf8(Command::new("md5sum").arg(dir.join("upload.bin")).output().expect("md5sum").stdout).expect("utf8");
    let md5 = md5.split_whitespace().next().expect("digest");
    assert!(t.contains(&format!("file=doc:upload.bin:{}:{md5}", upload.len())), "{t}");
    assert!(t.contains(r#"post={"note":"hi"}"#), "{t}");

    // A session cookie carries state from one request to the next.
    let jar = dir.join("jar");
    let jar = jar.to_str().expect("path");
    assert!(curl(&["-c", jar, "-b", jar, &format!("{base}/")]).text().contains("visits=1"));
    assert!(curl(&["-c", jar, "-b", jar, &format!("{base}/")]).text().contains("visits=2"));
}

#[test]
fn php_output_streams_as_it_is_flushed() {
    let (fx, fpm) = fixture_with_fpm();
    let server = fx.start(&php_config(&fpm.socket));
    let url = format!("{}/stream.php", server.url("web"));
    // curl prints each chunk as it arrives; time stamps show the first came before the end.
    let started = Instant::now();
    let mut child = Command::new("curl").args(["-sN", &url]).stdout(Stdio::piped()).spawn().expect("curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 7];
    std::io::Read::read_exact(&mut out, &mut first).expect("first tick");
    let first_at = started.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let total = started.elapsed();
    let _ = child.wait();
    assert_eq!(&first, b"tick 0\n");
    assert!(rest.contains("tick 2"), "{rest}");
    assert!(first_at + Duration::from_millis(400) < total, "first chunk at {first_at:?}, end at {total:?}: not streamed");
}

/// A script that takes too long: 504 when not even the head came within the route's timeout,
/// a transfer cut short when the body stops in the middle; servente goes on.
#[test]
fn slow_scripts_meet_the_timeout() {
    let (fx, fpm) = fixture_with_fpm();
    fx.write(
        "root/slow.php",
        "<?php\nif (isset($_GET['head'])) { header('Content-Type: text/plain'); echo \"part\"; flush(); }\nsleep(8);\necho \"late\";\n",
    );
    let cfg = web_config(&format!("[site.fastcgi]\naddress = \"unix:{}\"\ntimeout = \"1s\"\n", fpm.socket.display()));
    let server = fx.start(&cfg);
    let base = server.url("web");
    let t = Instant::now();
    let r = curl(&["--max-time", "20", &format!("{base}/slow.php")]);
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("FastCGI"), "{}", r.text());
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "504 after {took:?}");
    let t = Instant::now();
    let r = curl(&["--max-time", "20", "-N", &format!("{base}/slow.php?head=1")]);
    let took = t.elapsed();
    assert_eq!((r.status, r.text().as_str()), (200, "part"), "{r:?}");
    assert_ne!(r.exit, 0, "the cut transfer looked complete: {r:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "cut after {took:?}");
}

/// An application that stops reading its input (here: one that accepts and never reads) gets
/// the rest of a large POST body for at most the route's timeout, then the client has a 504;
/// before, the request hung for as long as the application did.
/// A FastCGI application on `socket` that accepts connections and never reads or answers.
fn deaf_application(socket: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the deaf application");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
}

#[test]
fn an_application_that_stops_reading_meets_the_timeout() {
    let fx = Fixture::new();
    let socket = fx.path().join("deaf.sock");
    deaf_application(&socket);
    fx.write("root/upload.php", "<?php echo 'never runs';\n");
    fx.write("root/plain.txt", "still here\n");
    let body = fx.path().join("body.bin");
    std::fs::write(&body, vec![b'x'; 8 << 20]).expect("body file");
    let cfg = web_config(&format!("[site.fastcgi]\naddress = \"unix:{}\"\ntimeout = \"1s\"\n", socket.display()));
    let server = fx.start(&cfg);
    let t = Instant::now();
    let data = format!("@{}", body.display());
    let r = curl(&["--max-time", "20", "-H", "Expect:", "--data-binary", &data, &format!("{}/upload.php", server.url("web"))]);
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "504 after {took:?}");
    // The server goes on.
    assert_eq!(curl(&[&format!("{}/plain.txt", server.url("web"))]).text(), "still here\n");
}

/// A client that starts a body for a script and then sends nothing more gets 408 after
/// `limits.body_read_timeout` (not a 502 or 504 that would blame the application), well before
/// the route's own timeout; the server goes on.
#[test]
fn a_client_that_stops_sending_its_body_gets_408() {
    let fx = Fixture::new();
    let socket = fx.path().join("app.sock");
    deaf_application(&socket);
    fx.write("root/upload.php", "<?php echo 'never runs';\n");
    fx.write("root/plain.txt", "still here\n");
    let cfg = web_config(&format!("[site.fastcgi]\naddress = \"unix:{}\"\ntimeout = \"20s\"\n", socket.display()));
    let server = fx.start(&format!("[limits]\nbody_read_timeout = \"1s\"\n\n{cfg}"));
    for length in ["100", "10000000"] {
        let mut s = connect(&server.addr("web"));
        s.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
        let t = Instant::now();
        write!(s, "POST /upload.php HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nthe start").expect("send");
        let mut r = std::io::BufReader::new(s);
        let resp = read_response(&mut r, false).expect("an answer");
        let took = t.elapsed();
        assert_eq!(resp.status, 408, "Content-Length {length}: {resp:?}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "408 after {took:?}");
    }
    assert_eq!(curl(&[&format!("{}/plain.txt", server.url("web"))]).text(), "still here\n");
}

#[test]
fn php_fpm_down_is_a_clean_502() {
    let (fx, fpm) = fixture_with_fpm();
    let socket = fpm.socket.clone();
    let server = fx.start(&php_config(&socket));
    assert_eq!(curl(&[&format!("{}/", server.url("web"))]).status, 200);
    drop(fpm);
    let _ = std::fs::remove_file(&socket);
    let r = curl(&[&format!("{}/", server.url("web"))]);
    assert_eq!(r.status, 502);
    assert!(r.text().contains("FastCGI"), "{}", r.text());
    // Static files still work.
    assert_eq!(curl(&[&format!("{}/style.css", server.url("web"))]).status, 200);
}

#[test]
fn kept_connections_survive_a_php_fpm_restart() {
    let (fx, fpm) = fixture_with_fpm();
    let dir = fx.path();
    let config = web_config(&format!(
        "[site.fastcgi]\naddress = \"unix:{}\"\nfront_controller = \"/index.php\"\nmax_idle = 2\n",
        fpm.socket.display()
    ));
    let server = fx.start(&config);
    let url = format!("{}/kept", server.url("web"));
    for _ in 0..4 {
        assert_eq!(curl(&[&url]).status, 200);
    }
    // php-fpm restarts: the connections servente kept are closed under it.
    drop(fpm);
    let _ = std::fs::remove_file(dir.join("fpm.sock"));
    let _fpm = start_fpm(&dir);
    for i in 0..4 {
        let r = curl(&[&url]);
        assert_eq!(r.status, 200, "request {i} after the restart: {}", r.text());
    }
}

/// A body without a declared length (chunked HTTP/1.1, HTTP/2 DATA frames without
/// Content-Length) reaches the script whole and with its CONTENT_LENGTH, as behind nginx: small
/// ones are read ahead in memory, large ones through a temporary file. Before, the script saw an
/// empty body (chunked) or the request failed with 502 (HTTP/2).
#[test]
fn bodies_without_a_length_reach_the_script() {
    let (fx, fpm) = fixture_with_fpm();
    fx.write(
        "root/body.php",
        "<?php $in = file_get_contents('php://input'); echo 'len=', $_SERVER['CONTENT_LENGTH'], ' got=', strlen($in), ' md5=', md5($in), ' post=', json_encode($_POST), \"\\n\";\n",
    );
    let form = fx.write("form.txt", "a=1&b=two");
    let big = fx.write("big.bin", noise(3 << 20, 7));
    let huge = fx.write("huge.bin", noise(11 << 20, 8));
    let server = fx.start(&php_config(&fpm.socket));
    let url = format!("{}/body.php", server.url("web"));
    let md5 = |p: &std::path::Path| {
        let out = Command::new("md5sum").arg(p).output().expect("md5sum");
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
    };
    for (file, len, post) in [(&form, 9, r#"{"a":"1","b":"two"}"#), (&big, 3 << 20, "[]")] {
        let want = format!("len={len} got={len} md5={} post={post}", md5(file));
        let data = format!("@{}", file.display());
        let content_type = if post == "[]" { "application/octet-stream" } else { "application/x-www-form-urlencoded" };
        let ct = format!("Content-Type: {content_type}");
        for how in [&["-H", "Transfer-Encoding: chunked"][..], &["--http2-prior-knowledge", "-H", "Content-Length:"][..]] {
            let r = curl(&[how, &["-H", "Expect:", "-H", &ct, "--data-binary", &data, &url]].concat());
            assert_eq!((r.status, r.text().trim()), (200, want.as_str()), "{how:?}");
        }
    }
    // A body of unknown length past limits.max_body_bytes (10 MiB by default) is refused.
    let r = curl(&["-H", "Transfer-Encoding: chunked", "-H", "Expect:", "--data-binary", &format!("@{}", huge.display()), &url]);
    assert_eq!(r.status, 413, "{r:?}");
}

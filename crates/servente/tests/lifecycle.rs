//! The process lifecycle: graceful stop on SIGTERM, fast stop on SIGINT, reload on SIGHUP,
//! and a panicking handler that costs one request, never the process.

mod common;

use std::io::{BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Fixture, config, connect, curl, noise, wait_until};

/// Larger than what loopback socket buffers can hold (send plus autotuned receive buffers reach
/// several MiB), so a slow reader really keeps the response in flight. With 4 MiB the server
/// sometimes handed the whole body to the kernel before the signal, and the tests were flaky.
const BIG: usize = 24 << 20;

fn big_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "index\n");
    fx.write("root/big.bin", noise(BIG, 5));
    fx
}

fn one_site(server_extra: &str) -> String {
    config(server_extra, "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n")
}

/// A download read slowly over a raw connection, so that the response stays in flight.
///
/// (curl 7.88's `--limit-rate` averages over seconds and let a 4 MiB file through loopback in
/// a fraction of a second, so it cannot hold a response open; this reader can.)
struct SlowDownload {
    received: Arc<AtomicUsize>,
    /// Set to stop pacing and drain what is left at full speed.
    hurry: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<u8>, bool)>,
}

impl SlowDownload {
    /// GETs `path` and reads about `rate` bytes per second, for at most 30 seconds.
    fn start(addr: &str, path: &str, rate: usize) -> Self {
        let mut s = connect(addr);
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let hurry = Arc::new(AtomicBool::new(false));
        let hurry2 = hurry.clone();
        let thread = std::thread::spawn(move || {
            const CHUNK: usize = 16 * 1024;
            let pause = Duration::from_secs_f64(CHUNK as f64 / rate as f64);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut out = Vec::new();
            let mut buf = vec![0u8; CHUNK];
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => return (out, true),
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        counter.store(out.len(), Ordering::Relaxed);
                    }
                    Err(_) => return (out, false),
                }
                if !hurry2.load(Ordering::Relaxed) {
                    std::thread::sleep(pause);
                }
            }
            (out, false)
        });
        let d = SlowDownload { received, hurry, thread };
        assert!(wait_until(Duration::from_secs(5), || d.received.load(Ordering::Relaxed) > 0), "the download did not start");
        d
    }

    /// Waits for the end; returns (status, body, whether the server closed cleanly).
    fn finish(self, hurry: bool) -> (u16, Vec<u8>, bool) {
        self.hurry.store(hurry, Ordering::Relaxed);
        let (raw, clean) = self.thread.join().expect("reader thread");
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return (0, Vec::new(), clean) };
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, raw[split + 4..].to_vec(), clean)
    }
}

#[test]
fn sigterm_lets_a_slow_download_finish() {
    let mut server = big_fixture().start(&one_site(""));
    let addr = server.addr("web");
    let download = SlowDownload::start(&addr, "/big.bin", 8 << 20);
    let sent = Instant::now();
    server.signal("TERM");
    // New connections are refused soon after the signal...
    let refused = wait_until(Duration::from_secs(3), || std::net::TcpStream::connect(&addr).is_err());
    assert!(refused, "still accepting connections after SIGTERM");
    assert!(download.received.load(Ordering::Relaxed) < BIG, "the download was over before the signal; the test proves nothing");
    // ...while the one in flight gets every byte.
    let (status, body, clean) = download.finish(false);
    assert_eq!(status, 200);
    assert_eq!(body.len(), BIG, "the download was cut");
    assert!(body == noise(BIG, 5), "the downloaded bytes differ");
    assert!(clean, "the connection was not closed cleanly after the response");
    let exit = server.wait_exit(Duration::from_secs(10)).expect("servente exits after the download");
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(sent.elapsed() >= Duration::from_millis(1200), "exited before the download could finish");
    assert!(server.stderr().contains("SIGTERM"), "{}", server.stderr());
}

#[test]
fn sigterm_grace_period_ends_long_requests() {
    let mut server = big_fixture().start(&one_site("").replace("shutdown_grace = \"20s\"", "shutdown_grace = \"1s\""));
    let download = SlowDownload::start(&server.addr("web"), "/big.bin", 256 << 10);
    let sent = Instant::now();
    server.signal("TERM");
    let exit = server.wait_exit(Duration::from_secs(8)).expect("servente exits after the grace period");
    let elapsed = sent.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4), "exited after {elapsed:?}");
    let (status, body, _) = download.finish(true);
    assert_eq!(status, 200);
    assert!(body.len() < BIG, "the download cannot have completed");
}

/// Idle connections have nothing in flight: SIGTERM must not wait the grace period for them.
#[test]
fn sigterm_does_not_wait_for_idle_connections() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut server = big_fixture().start(&one_site(""));
    let addr = server.addr("web");
    // An HTTP/1.1 keep-alive connection after one response.
    let s = connect(&addr);
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    write!(w, "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    assert_eq!(common::read_response(&mut r, false).expect("response").status, 200);
    // A connection that has not sent anything yet.
    let _silent = connect(&addr);
    // An HTTP/2 connection after one response, its client still running (it must answer the
    // server's GOAWAY and PING for a graceful close).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let h2_conn = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2");
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/index.html")).body(Empty::<bytes::Bytes>::new()).expect("request");
        let res = tokio::time::timeout(common::WAIT, sender.send_request(req)).await.expect("in time").expect("response");
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.expect("body");
        (sender, conn)
    });
    let sent = Instant::now();
    server.signal("TERM");
    let exit = server.wait_exit(Duration::from_secs(10)).expect("servente exits");
    let elapsed = sent.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(elapsed < Duration::from_secs(3), "SIGTERM waited {elapsed:?} for idle connections (shutdown_grace is 20s)");
    drop(h2_conn);
}

#[test]
fn sigint_exits_at_once_with_130() {
    let mut server = big_fixture().start(&one_site(""));
    let download = SlowDownload::start(&server.addr("web"), "/big.bin", 256 << 10);
    let sent = Instant::now();
    server.signal("INT");
    let exit = server.wait_exit(Duration::from_secs(5)).expect("servente exits on SIGINT");
    assert!(sent.elapsed() < Duration::from_secs(2), "SIGINT took {:?}", sent.elapsed());
    assert_eq!(exit.code(), Some(130), "{exit}");
    let (_, body, _) = download.finish(true);
    assert!(body.len() < BIG, "SIGINT does not wait for downloads");
}

#[test]
fn sighup_with_a_broken_config_keeps_serving() {
    let server = big_fixture().start(&one_site(""));
    let url = format!("{}/index.html", server.url("web"));
    assert_eq!(curl(&[&url]).status, 200);
    let good = std::fs::read_to_string(server.fx.config_path()).expect("config");
    for (broken, needle) in [
        ("[[listener]\nname = ", "servente.toml:1"),
        (
            "[server]\nmax_connections = \"many\"\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n[[site]]\nname = \"main\"\nroot = \"nope\"\n",
            "site[0].root",
        ),
    ] {
        let refusals = server.stderr().matches("reload refused").count();
        server.fx.write("servente.toml", broken);
        server.signal("HUP");
        assert!(server.wait_stderr_count("reload refused", refusals + 1, common::WAIT), "no refusal logged; stderr:\n{}", server.stderr());
        assert!(
            server.wait_stderr(needle, Duration::from_secs(2)),
            "the refusal does not name the problem ({needle}):\n{}",
            server.stderr()
        );
        let r = curl(&[&url]);
        assert_eq!((r.status, r.text()), (200, "index\n".to_string()), "the old config stopped serving");
    }
    // A good config is taken again.
    server.fx.write("servente.toml", good.replace("root = \"root\"", "root = \"root\"\nlisting = true"));
    server.fx.mkdir("root/empty");
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    assert_eq!(curl(&[&format!("{}/empty/", server.url("web"))]).status, 200, "listing turned on by the reload");
}

fn two_sites_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("site-a/index.html", "site a\n");
    fx.write("site-b/index.html", "site b\n");
    fx
}

const SITE_A: &str = "[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\nroot = \"site-a\"\ndefault = true\n";
const SITE_B: &str = "[[site]]\nname = \"b\"\nhosts = [\"b.test\"]\nroot = \"site-b\"\n";
const WEB: &str = "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n";

fn get_on(w: &mut impl Write, r: &mut impl std::io::BufRead, host: &str) -> common::RawResp {
    write!(w, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send on the kept-alive connection");
    common::read_response(r, false).expect("response on the kept-alive connection")
}

#[test]
fn sighup_adds_a_site_and_a_listener() {
    let server = two_sites_fixture().start(&config("", &format!("{WEB}\n{SITE_A}")));
    let web = server.url("web");
    // A keep-alive connection opened before the reload.
    let s = connect(&server.addr("web"));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    assert_eq!(get_on(&mut w, &mut r, "b.test").body, b"site a\n", "before the reload b.test falls to the default");

    let web2 = "[[listener]]\nname = \"web2\"\naddress = \"[::1]:0\"\n";
    // A new admin listener listed first moves `web` from the first place to the second.
    let admin = "[[listener]]\nname = \"admin\"\naddress = \"unix:admin.sock\"\nrole = \"admin\"\n";
    server.fx.write_config(&config("", &format!("{admin}\n{WEB}\n{web2}\n{SITE_A}\n{SITE_B}")));
    server.signal("HUP");
    assert!(server.wait_stderr("listener \"web2\"", common::WAIT), "web2 never announced:\n{}", server.stderr());
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());

    assert_eq!(server.url("web"), web, "the kept listener keeps its port");
    let r2 = curl(&["-H", "Host: b.test", &format!("{web}/")]);
    assert_eq!((r2.status, r2.text()), (200, "site b\n".to_string()));
    let r2 = curl(&["-g", "-H", "Host: b.test", &format!("{}/", server.url("web2"))]);
    assert_eq!((r2.status, r2.text()), (200, "site b\n".to_string()));
    let r2 = curl(&["-g", &format!("{}/", server.url("web2"))]);
    assert_eq!((r2.status, r2.text()), (200, "site a\n".to_string()));
    let admin_sock = server.fx.path().join("data/admin.sock").display().to_string();
    assert_eq!(curl(&["--unix-socket", &admin_sock, "http://localhost/healthz"]).status, 200);
    // The connection from before the reload still works, on the new config, as a `web` one.
    let resp = get_on(&mut w, &mut r, "b.test");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"site b\n"[..]));
    let resp = get_on(&mut w, &mut r, "a.test");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"site a\n"[..]));

    // Removing the listener again closes it.
    let port2 = server.port("web2");
    let old = connect(&server.addr("web2"));
    let mut old_w = old.try_clone().expect("clone");
    let mut old_r = BufReader::new(old);
    assert_eq!(get_on(&mut old_w, &mut old_r, "a.test").status, 200);
    server.fx.write_config(&config("", &format!("{WEB}\n{SITE_A}\n{SITE_B}")));
    server.signal("HUP");
    assert!(server.wait_stderr_count("config reloaded", 2, common::WAIT), "{}", server.stderr());
    let closed = wait_until(Duration::from_secs(3), || std::net::TcpStream::connect(("::1", port2)).is_err());
    assert!(closed, "the removed listener still accepts connections");
    // A connection it accepted before is not served as some other listener.
    // (It may also just be closed.)
    let _ = write!(old_w, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    if let Ok(resp) = common::read_response(&mut old_r, false) {
        assert_eq!(resp.status, 421, "a request on a removed listener: {:?}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(curl(&["-H", "Host: b.test", &format!("{web}/")]).text(), "site b\n");
}

/// "Port 0 picks a free port" for every listener: a reload that adds a second listener on
/// 127.0.0.1:0 must bind a new socket, and must not change the role of the one running.
#[test]
fn sighup_adds_a_second_port_zero_listener() {
    let server = two_sites_fixture().start(&config("", &format!("{WEB}\n{SITE_A}")));
    let web = server.url("web");
    let admin = "[[listener]]\nname = \"admin\"\naddress = \"127.0.0.1:0\"\nrole = \"admin\"\n";
    server.fx.write_config(&config("", &format!("{WEB}\n{admin}\n{SITE_A}")));
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    let r = curl(&[&format!("{web}/")]);
    assert_eq!((r.status, r.text()), (200, "site a\n".to_string()), "the web listener stopped serving the site after the reload");
    assert_ne!(server.port("admin"), server.port("web"), "the new listener was not given a port of its own:\n{}", server.stderr());
    let r = curl(&[&format!("{}/healthz", server.url("admin"))]);
    assert_eq!(r.status, 200);
}

#[test]
fn panicking_handler_gets_500_and_the_server_goes_on() {
    let fx = big_fixture();
    let mut server = fx.start_with_env(&one_site(""), &[("SERVENTE_TEST_HOOKS", "1")]);
    let base = server.url("web");
    for flags in [&[][..], &["--http2-prior-knowledge"][..]] {
        let mut args = flags.to_vec();
        let u = format!("{base}/__servente_test_panic");
        args.push(&u);
        let r = curl(&args);
        assert_eq!(r.status, 500, "{flags:?} {r:?}");
        let mut args = flags.to_vec();
        let u = format!("{base}/index.html");
        args.push(&u);
        let r = curl(&args);
        assert_eq!((r.status, r.text()), (200, "index\n".to_string()), "{flags:?}");
    }
    // On one HTTP/1.1 connection: the 500 closes it; a new connection is served.
    let s = connect(&server.addr("web"));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    write!(w, "GET /__servente_test_panic HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let resp = common::read_response(&mut r, false).expect("a 500, not a dropped connection");
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(common::raw_get(&server.addr("web"), "/index.html").status, 200);
    assert!(server.alive());
    assert!(server.stderr().contains("panicked"), "{}", server.stderr());
}

#[test]
fn test_hook_is_off_without_the_variable() {
    let server = big_fixture().start(&one_site(""));
    let r = curl(&[&format!("{}/__servente_test_panic", server.url("web"))]);
    assert_eq!(r.status, 404);
}

#[test]
fn sighup_that_cannot_bind_changes_nothing() {
    let server = two_sites_fixture().start(&config("", &format!("{WEB}\n{SITE_A}")));
    let web = server.url("web");
    // A port that is taken, by this test.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("addr").port();
    let busy = format!("[[listener]]\nname = \"busy\"\naddress = \"127.0.0.1:{port}\"\n");
    // The new config also changes the site: none of it may take effect.
    let site_b_as_default = SITE_B.replace("root = \"site-b\"", "root = \"site-b\"\ndefault = true");
    let site_a_plain = SITE_A.replace("default = true\n", "");
    server.fx.write_config(&config("", &format!("{WEB}\n{busy}\n{site_a_plain}\n{site_b_as_default}")));
    server.signal("HUP");
    assert!(server.wait_stderr("reload refused", common::WAIT), "{}", server.stderr());
    assert!(server.stderr().contains(&format!("127.0.0.1:{port}")), "the refusal names the address: {}", server.stderr());
    let r = curl(&["-H", "Host: unknown.test", &format!("{web}/")]);
    assert_eq!(r.text(), "site a\n", "part of a refused config was applied");
    assert_eq!(curl(&["-H", "Host: b.test", &format!("{web}/")]).text(), "site a\n");
    drop(taken);
}

#[test]
fn sighup_replaces_a_tls_certificate() {
    let fx = two_sites_fixture();
    common::self_signed("localhost", &fx.path().join("old"));
    common::self_signed("localhost", &fx.path().join("new"));
    let tls = |dir: &str| {
        format!(
            "[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{dir}/cert.pem\"\nkey = \"{dir}/key.pem\"\n\n{SITE_A}"
        )
    };
    let server = fx.start(&config("", &tls("old")));
    let port = server.port("tls");
    let dir = server.fx.path();
    let verify = |ca: &str| {
        curl(&[
            "--cacert",
            &dir.join(ca).join("cert.pem").display().to_string(),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/"),
        ])
    };
    assert_eq!(verify("old").status, 200);
    assert_eq!(verify("new").exit, 60);
    server.fx.write_config(&config("", &tls("new")));
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    assert_eq!(server.port("tls"), port);
    let r = verify("new");
    assert_eq!((r.exit, r.status), (0, 200), "the new certificate is not served after the reload: {}", r.stderr);
    assert_eq!(verify("old").exit, 60);
}

/// A reload that keeps a Unix socket listener but changes its `unix_mode` must apply the mode
/// (or say that it cannot): tightening permissions is what an operator reloads for.
#[test]
fn sighup_applies_a_new_unix_mode() {
    use std::os::unix::fs::PermissionsExt;
    let sock = |mode: &str| format!("[[listener]]\nname = \"sock\"\naddress = \"unix:web.sock\"\nunix_mode = \"{mode}\"\n");
    let server = two_sites_fixture().start(&config("", &format!("{}\n{SITE_A}", sock("0666"))));
    let path = server.fx.path().join("data/web.sock");
    let mode = || std::fs::metadata(&path).expect("socket").permissions().mode() & 0o777;
    assert_eq!(format!("{:o}", mode()), "666");
    server.fx.write_config(&config("", &format!("{}\n{SITE_A}", sock("0600"))));
    server.signal("HUP");
    assert!(server.wait_stderr("config reloaded", common::WAIT), "{}", server.stderr());
    let r = curl(&["--unix-socket", &path.display().to_string(), "http://localhost/"]);
    assert_eq!((r.status, r.text()), (200, "site a\n".to_string()));
    assert_eq!(format!("{:o}", mode()), "600", "unix_mode 0600 from the reloaded config was not applied");
}

//! Transports and protocols: TLS with ALPN and SNI, cleartext HTTP/2, Unix sockets, IPv6,
//! keep-alive, pipelining, and connection reuse by a real HTTP client library.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::{Fixture, config, curl, run_servente, self_signed};

fn tls_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "main site\n");
    fx.write("secure/index.html", "secure site\n");
    self_signed("localhost", &fx.path().join("certs/default"));
    self_signed("secure.test", &fx.path().join("certs/secure"));
    fx
}

fn tls_config(listener_extra: &str) -> String {
    config(
        "",
        &format!(
            r#"
[[listener]]
name = "tls"
address = "127.0.0.1:0"

[listener.tls]
cert = "certs/default/cert.pem"
key = "certs/default/key.pem"
{listener_extra}

[[site]]
name = "main"
root = "root"
default = true

[[site]]
name = "secure"
hosts = ["secure.test"]
root = "secure"

[site.tls]
cert = "certs/secure/cert.pem"
key = "certs/secure/key.pem"
"#
        ),
    )
}

#[test]
fn tls_alpn_chooses_the_http_version() {
    let server = tls_fixture().start(&tls_config(""));
    let url = server.url("tls");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // (curl flags, version curl reports)
    for (flags, version) in [(&["--http2"][..], "2"), (&["--http1.1"][..], "1.1"), (&[][..], "2")] {
        let mut args = vec!["-k", "-w", "%{http_version}"];
        args.extend_from_slice(flags);
        let u = format!("{url}/");
        args.push(&u);
        let r = curl(&args);
        assert_eq!((r.exit, r.status), (0, 200), "{flags:?}: {}", r.stderr);
        assert_eq!(r.stdout, version, "{flags:?}");
        assert_eq!(r.text(), "main site\n");
    }
    // Parallel transfers multiplexed on one HTTP/2 connection: one connect in all.
    let u = format!("{url}/");
    let mut args = vec!["-k", "--parallel", "-w", "%{http_version} %{response_code} %{num_connects}\n"];
    for i in 0..4 {
        // The first URL's body goes to the helper's own `-o` file.
        if i > 0 {
            args.extend(["-o", "/dev/null"]);
        }
        args.push(u.as_str());
    }
    let r = curl(&args);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}{}", r.stdout, r.stderr);
    assert!(lines.iter().all(|l| l.starts_with("2 200 ")), "{lines:?}");
    let connects: u32 = lines.iter().map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u32>().ok()).expect("num_connects")).sum();
    assert_eq!(connects, 1, "{lines:?}");
}

#[test]
fn tls_versions() {
    let server = tls_fixture().start(&tls_config(""));
    let url = format!("{}/", server.url("tls"));
    let r = curl(&["-k", "-v", "--tls-max", "1.2", &url]);
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert!(r.stderr.contains("SSL connection using TLSv1.2"), "{}", r.stderr);
    let r = curl(&["-k", "-v", "--tlsv1.3", &url]);
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert!(r.stderr.contains("SSL connection using TLSv1.3"), "{}", r.stderr);

    let server = tls_fixture().start(&tls_config("min_version = \"1.3\""));
    let url = format!("{}/", server.url("tls"));
    let r = curl(&["-k", "--tls-max", "1.2", &url]);
    assert_ne!(r.exit, 0, "TLS 1.2 accepted although min_version is 1.3");
    assert_eq!(r.status, 0);
    let r = curl(&["-k", &url]);
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
}

#[test]
fn sni_chooses_the_site_certificate() {
    let server = tls_fixture().start(&tls_config(""));
    let port = server.port("tls");
    let dir = server.fx.path();
    let default_ca = dir.join("certs/default/cert.pem").display().to_string();
    let secure_ca = dir.join("certs/secure/cert.pem").display().to_string();
    let resolve_secure = format!("secure.test:{port}:127.0.0.1");
    let resolve_local = format!("localhost:{port}:127.0.0.1");
    let secure_url = format!("https://secure.test:{port}/");
    let local_url = format!("https://localhost:{port}/");
    // Verified against the site's own certificate: the server presented it for this name.
    for http in ["--http2", "--http1.1"] {
        let r = curl(&[http, "--cacert", &secure_ca, "--resolve", &resolve_secure, &secure_url]);
        assert_eq!((r.exit, r.status, r.text()), (0, 200, "secure site\n".to_string()), "{http}: {}", r.stderr);
    }
    // The listener's certificate does not verify for secure.test, and the other way round.
    let r = curl(&["--cacert", &default_ca, "--resolve", &resolve_secure, &secure_url]);
    assert_eq!(r.exit, 60, "secure.test must not get the default certificate: {}", r.stderr);
    let r = curl(&["--cacert", &default_ca, "--resolve", &resolve_local, &local_url]);
    assert_eq!((r.exit, r.status, r.text()), (0, 200, "main site\n".to_string()), "{}", r.stderr);
    let r = curl(&["--cacert", &secure_ca, "--resolve", &resolve_local, &local_url]);
    assert_eq!(r.exit, 60, "localhost must get the listener's certificate: {}", r.stderr);
}

/// `[site.tls] min_version = "1.3"` is documented as "only TLS 1.3" for that site's hosts.
#[test]
fn site_tls_min_version_is_refused_as_unknown() {
    // TLS versions are agreed before SNI picks a site, so they are a listener setting; a site
    // that asks for one must hear that it is not applied rather than be silently ignored.
    let toml = tls_config("").replace("key = \"certs/secure/key.pem\"", "key = \"certs/secure/key.pem\"\nmin_version = \"1.3\"");
    let fx = tls_fixture();
    let path = fx.write_config(&toml);
    let (code, _out, err) = run_servente(&["check", "--config", &path.display().to_string()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("tls.min_version: unknown key"), "{err}");
}

#[test]
fn plain_http_on_a_tls_listener_gets_no_answer() {
    let server = tls_fixture().start(&tls_config(""));
    let r = curl(&[&format!("http://{}/", server.addr("tls"))]);
    assert_ne!(r.exit, 0);
    assert!(r.status == 0 || r.status == 400, "{r:?}");
    // And the listener still serves TLS afterwards.
    let r = curl(&["-k", &format!("{}/", server.url("tls"))]);
    assert_eq!(r.status, 200);
}

const MANY_LISTENERS: &str = r#"
[[listener]]
name = "web"
address = "127.0.0.1:0"

[[listener]]
name = "v6"
address = "[::1]:0"

[[listener]]
name = "sock"
address = "unix:{dir}/run/web.sock"
unix_mode = "0660"

[[listener]]
name = "rel"
address = "unix:rel.sock"

[[site]]
name = "main"
root = "root"
"#;

fn many_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "index\n");
    fx.write("root/hello.txt", "hello\n");
    fx
}

#[test]
fn cleartext_http2_with_prior_knowledge() {
    let server = many_fixture().start(&config("", MANY_LISTENERS));
    let base = server.url("web");
    let r = curl(&["--http2-prior-knowledge", "-w", "%{http_version}", &format!("{base}/hello.txt")]);
    assert_eq!((r.status, r.stdout.as_str(), r.text()), (200, "2", "hello\n".to_string()), "{}", r.stderr);
    // (Multiplexing over cleartext HTTP/2 is checked with hyper's client below: curl 7.88
    // itself fails `--parallel` with prior knowledge before sending the second stream.)
    // Plain HTTP/1.1 still works on the same listener.
    let r = curl(&["-w", "%{http_version}", &format!("{base}/hello.txt")]);
    assert_eq!((r.status, r.stdout.as_str()), (200, "1.1"));
}

#[test]
fn unix_socket_listeners() {
    let server = many_fixture().start(&config("", MANY_LISTENERS));
    let dir = server.fx.path();
    let abs = dir.join("run/web.sock");
    let rel = dir.join("data/rel.sock");
    assert_eq!(server.url("sock"), format!("unix:{}", abs.display()));
    assert_eq!(server.url("rel"), format!("unix:{}", rel.display()), "a relative socket path is inside the data folder");
    for (path, mode) in [(&abs, 0o660), (&rel, 0o666)] {
        let meta = std::fs::metadata(path).expect("socket file");
        assert!(meta.file_type().is_socket(), "{}", path.display());
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{}", path.display());
        let r = curl(&["--unix-socket", &path.display().to_string(), "http://localhost/hello.txt"]);
        assert_eq!((r.status, r.text()), (200, "hello\n".to_string()), "{}", path.display());
        let r = curl(&["--unix-socket", &path.display().to_string(), "--http2-prior-knowledge", "-w", "%{http_version}", "http://x/"]);
        assert_eq!((r.status, r.stdout.as_str()), (200, "2"));
    }
}

#[test]
fn unix_socket_file_is_removed_on_shutdown() {
    let mut server = many_fixture().start(&config("", MANY_LISTENERS));
    let abs = server.fx.path().join("run/web.sock");
    assert!(abs.exists());
    server.signal("TERM");
    let status = server.wait_exit(common::WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!abs.exists(), "the socket file is left behind");
}

#[test]
fn ipv6_listener() {
    let server = many_fixture().start(&config("", MANY_LISTENERS));
    let url = server.url("v6");
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let r = curl(&["-g", "-w", "%{remote_ip}", &format!("{url}/hello.txt")]);
    assert_eq!((r.status, r.text(), r.stdout.as_str()), (200, "hello\n".to_string(), "::1"), "{}", r.stderr);
    // HTTP/2 over IPv6 too.
    let r = curl(&["-g", "--http2-prior-knowledge", "-w", "%{http_version}", &format!("{url}/")]);
    assert_eq!((r.status, r.stdout.as_str(), r.text()), (200, "2", "index\n".to_string()));
}

fn web_only() -> String {
    common::web_config("")
}

#[test]
fn pipelined_requests_in_one_write() {
    let fx = Fixture::new();
    fx.write("root/a.txt", "first body\n");
    fx.write("root/b.txt", "second, longer body\n");
    let server = fx.start(&web_only());
    let mut s = common::connect(&server.addr("web"));
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /b.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("one write with three requests");
    let mut r = BufReader::new(s);
    let a = common::read_response(&mut r, false).expect("first response");
    let b = common::read_response(&mut r, false).expect("second response");
    let c = common::read_response(&mut r, false).expect("third response");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"first body\n"[..]));
    assert_eq!((b.status, b.body.as_slice()), (200, &b"second, longer body\n"[..]));
    assert_eq!(c.status, 404);
}

#[test]
fn keep_alive_and_connection_close() {
    let fx = Fixture::new();
    fx.write("root/a.txt", "aaa");
    let server = fx.start(&web_only());
    let s = common::connect(&server.addr("web"));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    for i in 0..5 {
        write!(w, "GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let resp = common::read_response(&mut r, false).unwrap_or_else(|e| panic!("request {i} on a kept-alive connection: {e}"));
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"aaa"[..]));
    }
    write!(w, "GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let resp = common::read_response(&mut r, false).expect("last response");
    assert_eq!(resp.status, 200);
    let mut rest = Vec::new();
    let n = std::io::Read::read_to_end(&mut r, &mut rest).expect("the server closes after Connection: close");
    assert_eq!(n, 0);
    // HTTP/1.0 without keep-alive is closed after one answer too.
    let mut s = common::connect(&server.addr("web"));
    s.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").expect("send");
    let out = common::read_until_close(&mut s).expect("closed after an HTTP/1.0 answer");
    assert!(out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&out));
    assert!(out.ends_with(b"aaa"));
}

/// `servente_connections_total` from the admin listener's /metrics.
fn connections_total(server: &common::Server) -> u64 {
    let r = curl(&["-g", &format!("{}/metrics", server.url("admin"))]);
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("servente_connections_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no servente_connections_total in {}", r.text()))
}

#[test]
fn hyper_client_reuses_one_connection() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let fx = Fixture::new();
    fx.write("root/a.txt", "from hyper\n");
    // The admin listener is on ::1 so that it is a different socket from the web one.
    let toml = config(
        "",
        "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"admin\"\naddress = \"[::1]:0\"\nrole = \"admin\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n",
    );
    let server = fx.start(&toml);
    let url = format!("{}/a.txt", server.url("web"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let before = connections_total(&server);
    let bodies = rt.block_on(async {
        let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut bodies = Vec::new();
        for _ in 0..5 {
            let res = tokio::time::timeout(common::WAIT, client.get(url.parse().expect("uri"))).await.expect("in time").expect("response");
            assert_eq!(res.status(), 200);
            assert_eq!(res.version(), http::Version::HTTP_11);
            let body = res.into_body().collect().await.expect("body").to_bytes();
            bodies.push(body);
        }
        bodies
    });
    assert!(bodies.iter().all(|b| b.as_ref() == b"from hyper\n"));
    let after = connections_total(&server);
    // One connection for the five requests, one for the curl that read the metrics.
    assert_eq!(after - before, 2, "five sequential requests should share one keep-alive connection");

    // HTTP/2: concurrent requests multiplexed on one connection.
    let before = connections_total(&server);
    let statuses = rt.block_on(async {
        let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            let uri: http::Uri = url.parse().expect("uri");
            tasks.push(tokio::spawn(async move {
                let res = client.get(uri).await.expect("response");
                let version = res.version();
                let status = res.status();
                let body = res.into_body().collect().await.expect("body").to_bytes();
                (status, version, body)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(tokio::time::timeout(common::WAIT, t).await.expect("in time").expect("task"));
        }
        out
    });
    for (status, version, body) in statuses {
        assert_eq!((status, version, body.as_ref()), (http::StatusCode::OK, http::Version::HTTP_2, &b"from hyper\n"[..]));
    }
    let after = connections_total(&server);
    assert_eq!(after - before, 2, "eight concurrent HTTP/2 requests should share one connection");
}

/// "Port 0 picks a free port": two listeners both configured on 127.0.0.1:0 must each get a
/// socket of their own, each serving its own role.
#[test]
fn two_listeners_on_port_zero_get_their_own_sockets() {
    let fx = many_fixture();
    let toml = config(
        "",
        "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"admin\"\naddress = \"127.0.0.1:0\"\nrole = \"admin\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n",
    );
    let server = fx.start(&toml);
    let r = curl(&[&format!("{}/hello.txt", server.url("web"))]);
    assert_eq!((r.status, r.text()), (200, "hello\n".to_string()), "the web listener does not serve the site");
    let r = curl(&[&format!("{}/healthz", server.url("admin"))]);
    assert_eq!(r.status, 200, "the admin listener does not serve /healthz");
    assert_ne!(server.port("web"), server.port("admin"), "both listeners were announced on one port:\n{}", server.stderr());
}

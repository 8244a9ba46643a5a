//! Limits on what a client may send or hold: slow heads, idle connections, header and body
//! sizes, connection count, TLS handshakes.

mod common;

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use common::{Fixture, config, connect, curl, read_until_close};

fn fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "index\n");
    fx
}

fn limited(limits: &str, server_extra: &str) -> String {
    config(
        server_extra,
        &format!(
            "[limits]\n{limits}\n\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n"
        ),
    )
}

#[test]
fn slowloris_gets_408_and_is_disconnected() {
    let server = fixture().start(&limited("header_read_timeout = \"1s\"", ""));
    let mut s = connect(&server.addr("web"));
    let mut writer = s.try_clone().expect("clone");
    let start = Instant::now();
    // One byte every 200ms: the whole head would take far longer than the limit.
    let head = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}\r\n\r\n", "a".repeat(60));
    let trickle = std::thread::spawn(move || {
        for b in head.bytes() {
            if writer.write_all(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
            if start.elapsed() > Duration::from_secs(8) {
                return false;
            }
        }
        false
    });
    s.set_read_timeout(Some(Duration::from_secs(8))).expect("read timeout");
    let answer = read_until_close(&mut s).expect("the server closes the connection");
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "expected a 408, got {text:?}");
    assert!(elapsed >= Duration::from_millis(900), "closed too early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "closed too late: {elapsed:?}");
    let _ = trickle.join();
    // The server is fine afterwards.
    assert_eq!(curl(&[&format!("{}/", server.url("web"))]).status, 200);
    let m = common::raw_get(&server.addr("web"), "/");
    assert_eq!(m.status, 200);
}

#[test]
fn slowloris_on_a_kept_alive_connection_gets_408() {
    let server = fixture().start(&limited("header_read_timeout = \"1s\"", ""));
    let s = connect(&server.addr("web"));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    write!(w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    assert_eq!(common::read_response(&mut r, false).expect("first response").status, 200);
    // The second request head never completes.
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a").expect("partial head");
    let start = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("the server answers and closes");
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
}

#[test]
fn a_fast_client_is_not_cut_by_the_head_timeout() {
    // Many quick requests on one connection over more than header_read_timeout in total.
    let server = fixture().start(&limited("header_read_timeout = \"1s\"\nidle_timeout = \"5s\"", ""));
    let s = connect(&server.addr("web"));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1600) && n < 100 {
        write!(w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let resp = common::read_response(&mut r, false).expect("response");
        assert_eq!(resp.status, 200);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(n >= 5);
}

/// Reads from a connection that should be closed by the idle timeout (1s); returns when.
fn assert_closed_after_about_a_second(r: &mut impl Read, start: Instant, what: &str) {
    let mut rest = [0u8; 16];
    match r.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: an idle close sends nothing, got {:?}", String::from_utf8_lossy(&rest[..n])),
        Err(e) => panic!("{what}: not closed {:?} after the last response ({e})", start.elapsed()),
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(4), "{what}: closed after {elapsed:?}");
}

#[test]
fn idle_connection_without_a_request_is_closed() {
    let server = fixture().start(&limited("idle_timeout = \"1s\"", ""));
    let s = connect(&server.addr("web"));
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    assert_closed_after_about_a_second(&mut BufReader::new(s), Instant::now(), "a connection that never sent a byte");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_a_response() {
    let server = fixture().start(&limited("idle_timeout = \"1s\"", ""));
    let s = connect(&server.addr("web"));
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    write!(w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let resp = common::read_response(&mut r, false).expect("response");
    assert_eq!(resp.status, 200);
    assert_closed_after_about_a_second(&mut r, Instant::now(), "an HTTP/1.1 keep-alive connection after one response");
}

#[test]
fn idle_http2_connection_is_closed_after_a_response() {
    http2_idle_close(false);
}

/// PINGs are not requests: a client that keeps pinging is closed as an idle one is (the
/// guard once restarted idle time at any bytes, so a trickle held a connection for ever).
#[test]
fn a_pinging_http2_connection_is_still_idle() {
    http2_idle_close(true);
}

fn http2_idle_close(ping: bool) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let server = fixture().start(&limited("idle_timeout = \"1s\"", ""));
    let addr = server.addr("web");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        client.timer(TokioTimer::new());
        if ping {
            client.keep_alive_interval(Duration::from_millis(200)).keep_alive_while_idle(true);
        }
        let (mut sender, conn) = client.handshake(TokioIo::new(tcp)).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/")).body(Empty::<bytes::Bytes>::new()).expect("request");
        let res = tokio::time::timeout(common::WAIT, sender.send_request(req)).await.expect("in time").expect("response");
        assert_eq!((res.status(), res.version()), (http::StatusCode::OK, http::Version::HTTP_2));
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.as_ref(), b"index\n");
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        let elapsed = start.elapsed();
        assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed within 6s");
        assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    });
}

/// A client that asks for a large file and then reads nothing holds the response until
/// `send_timeout`: then servente closes the connection (before this limit it was held forever,
/// with its file open). What was already in the socket buffers still arrives, then the end.
#[test]
fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    let fx = fixture();
    let size = 64 << 20;
    fx.write("root/big.bin", vec![1u8; size]);
    let server = fx.start(&limited("send_timeout = \"1s\"", ""));
    let s = connect(&server.addr("web"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut w = s.try_clone().expect("clone");
    write!(w, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    std::thread::sleep(Duration::from_secs(4));
    let mut r = s;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was not closed (read {got} bytes): {e}"),
        }
    }
    assert!(got < size, "the whole file arrived ({got} bytes): the stalled response was not cut");
}

/// Over HTTP/2 a client that stops reading stalls its stream on the flow-control window, not
/// on the socket: such a stream is reset after `send_timeout`, whether its file is large or
/// fits in one piece, while another stream on the same connection, read in bursts with pauses
/// shorter than the limit, gets all of its file; the connection serves new requests afterwards.
#[test]
fn http2_streams_whose_client_stops_reading_are_reset_after_send_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let fx = fixture();
    let (big, small, mid) = (64 << 20, 100 << 10, 8 << 20);
    fx.write("root/big.bin", vec![1u8; big]);
    fx.write("root/small.bin", vec![3u8; small]);
    fx.write("root/mid.bin", vec![2u8; mid]);
    let server =
        fx.start(&(limited("send_timeout = \"2s\"", "") + "\n[[listener]]\nname = \"admin\"\naddress = \"[::1]:0\"\nrole = \"admin\"\n"));
    let addr = server.addr("web");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        // A small window: the 100 KiB file (two pieces, the second its last) does not fit in it.
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(16 << 10)
            .handshake(TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let get = |path: &str| {
            let mut sender = sender.clone();
            let req = http::Request::get(format!("http://{addr}{path}")).body(Empty::<bytes::Bytes>::new()).expect("request");
            async move {
                let res = tokio::time::timeout(common::WAIT, sender.send_request(req)).await.expect("in time").expect("response");
                assert_eq!((res.status(), res.version()), (http::StatusCode::OK, http::Version::HTTP_2));
                res.into_body()
            }
        };
        let stalled = [(get("/big.bin").await, big), (get("/small.bin").await, small)];
        let started = Instant::now();
        // Read in bursts of 1 MiB, each after a 600 ms pause: 4.8 s in all, well past the limit.
        let mut steady = get("/mid.bin").await;
        let mut got = 0usize;
        'read: loop {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let burst_end = got + (1 << 20);
            while got < burst_end {
                match tokio::time::timeout(common::WAIT, steady.frame()).await.expect("the steady stream flows") {
                    Some(frame) => got += frame.expect("the steady stream is not cut").data_ref().map_or(0, |d| d.len()),
                    None => break 'read,
                }
            }
        }
        assert_eq!(got, mid, "the steady stream got all of its file");
        assert!(started.elapsed() > Duration::from_secs(4), "the steady stream took less than twice the limit");
        for (mut body, size) in stalled {
            let mut read = 0usize;
            let ended = loop {
                match tokio::time::timeout(common::WAIT, body.frame()).await.expect("the stalled stream ends") {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            assert!(ended.is_some() && read < size, "a stalled stream was not reset: {read} of {size} bytes, end {ended:?}");
        }
        // The connection itself goes on.
        let body = get("/").await.collect().await.expect("body").to_bytes();
        assert_eq!(body.as_ref(), b"index\n");
    });
    let metrics = curl(&["-g", &format!("{}/metrics", server.url("admin"))]).text();
    assert!(metrics.lines().any(|l| l == "servente_send_timeouts_total 2"), "the two resets are counted:\n{metrics}");
}

#[test]
fn oversized_heads_get_431() {
    let server = fixture().start(&limited("max_header_bytes = \"16KiB\"\nmax_headers = 10", ""));
    let url = format!("{}/", server.url("web"));
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let fits = format!("X-Big: {}", "a".repeat(4_000));
    let r = curl(&["-H", &big, &url]);
    assert_eq!(r.status, 431, "{r:?}");
    let r = curl(&["-H", &fits, &url]);
    assert_eq!(r.status, 200);
    // Too many header fields.
    let many: Vec<String> = (0..20).map(|i| format!("X-H{i}: v")).collect();
    let mut args = Vec::new();
    for h in &many {
        args.push("-H");
        args.push(h.as_str());
    }
    args.push(&url);
    let r = curl(&args);
    assert_eq!(r.status, 431, "{r:?}");
    let r = curl(&["-H", "X-One: 1", "-H", "X-Two: 2", &url]);
    assert_eq!(r.status, 200);
    // Over HTTP/2 as well.
    let r = curl(&["--http2-prior-knowledge", "-H", &big, &url]);
    assert_eq!((r.version.as_str(), r.status), ("2", 431), "{r:?}");
    // A long request target counts too.
    let r = curl(&[&format!("{url}?q={}", "b".repeat(20_000))]);
    assert_eq!(r.status, 431, "{r:?}");

    // hyper reads up to 128 KiB at once (for bodies): a big head pipelined behind another
    // request, so read partly with it, is still refused.
    let pipelined = format!("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n{big}\r\n\r\n");
    assert_eq!(two_statuses(&server.addr("web"), &pipelined), [200, 431]);
    // A body refused unread is drained (hyper reads it in one go when it is small) and not
    // taken for the next head.
    let body = "b".repeat(1_500);
    let put = format!("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\nHost: x\r\n\r\n", body.len());
    assert_eq!(two_statuses(&server.addr("web"), &put), [405, 200]);
}

/// Sends `requests` (two, pipelined) in one write on a new connection; the statuses of the
/// two answers, 0 for one that did not come.
fn two_statuses(addr: &str, requests: &str) -> [u16; 2] {
    let mut s = connect(addr);
    s.write_all(requests.as_bytes()).expect("send");
    let mut r = BufReader::new(s);
    [0, 1].map(|_| common::read_response(&mut r, false).map(|r| r.status).unwrap_or(0))
}

#[test]
fn declared_body_over_the_limit_gets_413() {
    let fx = fixture();
    let upload = fx.write("upload.bin", vec![b'u'; 2048]);
    let small = fx.write("small.bin", vec![b'u'; 512]);
    let server = fx.start(&limited("max_body_bytes = \"1KiB\"", ""));
    let url = format!("{}/", server.url("web"));
    let r = curl(&["--data-binary", &format!("@{}", upload.display()), &url]);
    assert_eq!(r.status, 413, "{r:?}");
    let r = curl(&["-X", "PUT", "--data-binary", &format!("@{}", upload.display()), &url]);
    assert_eq!(r.status, 413, "{r:?}");
    // Under the limit, the request reaches the site (which takes no bodies).
    let r = curl(&["--data-binary", &format!("@{}", small.display()), &url]);
    assert_eq!(r.status, 405);
    // A huge declared length is refused before any body byte is sent.
    let mut s = connect(&server.addr("web"));
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n").expect("send");
    let resp = common::read_response(&mut BufReader::new(s), false).expect("answer without the body");
    assert_eq!(resp.status, 413);
}

#[test]
fn connections_over_max_get_503() {
    let server = fixture().start(&limited("", "max_connections = 2"));
    let addr = server.addr("web");
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = connect(&addr);
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        write!(w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        assert_eq!(common::read_response(&mut r, false).expect("response").status, 200);
        held.push((w, r));
    }
    let mut third = connect(&addr);
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = read_until_close(&mut third).expect("the third connection is answered and closed");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text:?}");
    // The held connections still work.
    for (w, r) in &mut held {
        write!(w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        assert_eq!(common::read_response(r, false).expect("response").status, 200);
    }
    // Closing one makes room again.
    held.pop();
    let ok = common::wait_until(Duration::from_secs(5), || {
        let mut s = connect(&addr);
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        read_until_close(&mut s).map(|o| o.starts_with(b"HTTP/1.1 200")).unwrap_or(false)
    });
    assert!(ok, "a slot freed by a closed connection is never reused");
}

#[test]
fn tls_handshake_timeout_closes_silent_clients() {
    let fx = fixture();
    common::self_signed("localhost", &fx.path().join("certs"));
    let toml = config(
        "",
        "[limits]\ntls_handshake_timeout = \"1s\"\n\n[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"\n\n[[site]]\nname = \"main\"\nroot = \"root\"\n",
    );
    let server = fx.start(&toml);
    let mut s = connect(&server.addr("tls"));
    let start = Instant::now();
    let out = read_until_close(&mut s).expect("closed by the server");
    let elapsed = start.elapsed();
    assert!(out.is_empty());
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    let r = curl(&["-k", &format!("{}/", server.url("tls"))]);
    assert_eq!(r.status, 200);
}

//! The web role as a client sees it: methods, files, folders, listings, MIME types, path
//! safety, conditionals, ranges, compression, per-site config and virtual hosts. Every test
//! runs a real `servente serve` and talks to it with the real `curl` on loopback.

mod common;

use std::io::{BufReader, Write};
use std::time::Duration;

use common::{Case, Fixture, css_text, curl, expect_statuses, gzip_stored, noise, web_config};

const HELLO: &str = "hello servente\n";

fn basic_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/index.html", "<!doctype html><title>home</title>root index\n");
    fx.write("root/hello.txt", HELLO);
    fx.write("root/sub/index.html", "sub index\n");
    fx
}

#[test]
fn get_returns_the_file_with_its_headers() {
    let server = basic_fixture().start(&web_config(""));
    let r = curl(&[&format!("{}/hello.txt", server.url("web"))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), HELLO);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("15"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some_and(|v| v.ends_with(" GMT")), "{r:?}");
    let etag = r.header("etag").expect("etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong etag: {etag}");
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let server = basic_fixture().start(&web_config("listing = true"));
    let base = server.url("web");
    // Same headers (except Date) as GET, with curl.
    for path in ["/hello.txt", "/", "/missing.txt", "/sub"] {
        let get = curl(&[&format!("{base}{path}")]);
        let head = curl(&["-I", &format!("{base}{path}")]);
        assert_eq!(get.status, head.status, "{path}");
        let strip = |h: &[(String, String)]| -> Vec<(String, String)> {
            let mut v: Vec<_> = h.iter().filter(|(k, _)| k != "date").cloned().collect();
            v.sort();
            v
        };
        assert_eq!(strip(&get.headers), strip(&head.headers), "HEAD {path} headers differ from GET");
        assert_eq!(
            head.header("content-length").and_then(|v| v.parse::<usize>().ok()),
            Some(get.body.len()),
            "HEAD {path} announces the GET body length"
        );
    }
    // No body bytes: a HEAD then a GET pipelined on one connection must parse back to back.
    let mut s = common::connect(&server.addr("web"));
    for path in ["/hello.txt", "/missing.txt", "/"] {
        write!(s, "HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\nGET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    }
    let mut r = BufReader::new(s);
    for path in ["/hello.txt", "/missing.txt", "/"] {
        let head = common::read_response(&mut r, true).expect("HEAD response");
        let get = common::read_response(&mut r, false).expect("GET response right after the HEAD head");
        assert_eq!(head.status, get.status, "{path}");
        assert!(get.head.starts_with("HTTP/1.1 "), "{path}: the HEAD answer carried body bytes: {:?}", get.head);
        assert_eq!(head.header("content-length").and_then(|v| v.parse::<usize>().ok()), Some(get.body.len()), "{path}");
    }
}

#[test]
fn options_and_other_methods() {
    let server = basic_fixture().start(&web_config(""));
    let url = format!("{}/hello.txt", server.url("web"));
    let r = curl(&["-X", "OPTIONS", &url]);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let allow = r.header("allow").expect("Allow on OPTIONS");
    for m in ["GET", "HEAD", "OPTIONS"] {
        assert!(allow.contains(m), "{allow}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = curl(&["-X", method, "--data-binary", "x=1", &url]);
        assert_eq!(r.status, 405, "{method}");
        let allow = r.header("allow").unwrap_or_else(|| panic!("Allow on 405 for {method}"));
        assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
        assert!(!allow.contains(method), "{allow}");
    }
}

#[test]
fn index_file_and_folder_redirect() {
    let server = basic_fixture().start(&web_config(""));
    let base = server.url("web");
    let r = curl(&[&format!("{base}/")]);
    assert_eq!((r.status, r.text().contains("root index")), (200, true), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = curl(&[&format!("{base}/sub/")]);
    assert_eq!((r.status, r.text()), (200, "sub index\n".to_string()));
    let r = curl(&[&format!("{base}/sub")]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/sub/"));
    let r = curl(&[&format!("{base}/sub?x=1&y=2")]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/sub/?x=1&y=2"), "the query is kept");
    let r = curl(&["-L", &format!("{base}/sub")]);
    assert_eq!((r.status, r.text()), (200, "sub index\n".to_string()));
    // A file asked for as a folder does not exist.
    let r = curl(&[&format!("{base}/hello.txt/")]);
    assert_eq!(r.status, 404);
    let r = curl(&[&format!("{base}/index.html")]);
    assert_eq!(r.status, 200);
}

const NASTY: &str = "<b>&\"q'.txt";

fn listing_fixture() -> Fixture {
    let fx = basic_fixture();
    fx.write("root/files/a.txt", "aaa");
    fx.write(&format!("root/files/{NASTY}"), "nasty");
    fx.write("root/files/.hidden", "secret");
    fx.mkdir("root/files/inner");
    fx
}

#[test]
fn listing_html_escapes_names() {
    let server = listing_fixture().start(&web_config("listing = true"));
    let r = curl(&[&format!("{}/files/", server.url("web"))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    assert!(page.contains("a.txt"), "{page}");
    assert!(page.contains("inner/"), "{page}");
    assert!(page.contains("&lt;b&gt;&amp;&quot;q&#39;.txt"), "escaped name missing: {page}");
    assert!(!page.contains("<b>"), "an unescaped name reached the page: {page}");
    assert!(!page.contains(".hidden"), "dotfiles are not listed: {page}");
}

#[test]
fn listing_json_by_accept_or_query() {
    let server = listing_fixture().start(&web_config("listing = true"));
    let base = server.url("web");
    for args in [vec!["-H", "Accept: application/json"], vec![]] {
        let url = if args.is_empty() { format!("{base}/files/?format=json") } else { format!("{base}/files/") };
        let mut all = args.clone();
        all.push(&url);
        let r = curl(&all);
        assert_eq!(r.status, 200, "{args:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("listing is JSON");
        let entries = v.as_array().expect("a JSON array");
        let find = |name: &str| entries.iter().find(|e| e["name"] == name).cloned();
        assert_eq!(find("a.txt").expect("a.txt")["type"], "file");
        assert_eq!(find("a.txt").expect("a.txt")["size"], 3);
        assert_eq!(find(NASTY).expect("nasty name, raw in JSON")["type"], "file");
        assert_eq!(find("inner").expect("inner")["type"], "folder");
        assert!(find(".hidden").is_none());
        assert_eq!(entries.len(), 3, "{v}");
    }
}

#[test]
fn listing_off_is_forbidden() {
    let server = listing_fixture().start(&web_config(""));
    let base = server.url("web");
    expect_statuses(
        &base,
        &[
            Case { path: "/files/", args: &[], status: 403 },
            Case { path: "/files/?format=json", args: &[], status: 403 },
            Case { path: "/files/", args: &["-H", "Accept: application/json"], status: 403 },
            Case { path: "/files/a.txt", args: &[], status: 200 },
            Case { path: "/files/inner/", args: &[], status: 403 },
            Case { path: "/files", args: &[], status: 301 },
        ],
    );
}

#[test]
fn mime_types() {
    let fx = Fixture::new();
    let cases = [
        ("page.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("image.png", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("data.json", "application/json"),
        ("mod.wasm", "application/wasm"),
        ("thing.zzunknownzz", "application/octet-stream"),
        ("no_extension", "application/octet-stream"),
    ];
    for (name, _) in cases {
        fx.write(&format!("root/{name}"), "x");
    }
    let server = fx.start(&web_config(""));
    let mut failures = Vec::new();
    for (name, expected) in cases {
        let r = curl(&[&format!("{}/{name}", server.url("web"))]);
        if r.status != 200 || r.header("content-type") != Some(expected) {
            failures.push(format!("{name}: {} {:?}, expected {expected}", r.status, r.header("content-type")));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The first bytes of /etc/passwd, which no answer may ever contain.
fn passwd_marker() -> Vec<u8> {
    let p = std::fs::read("/etc/passwd").expect("/etc/passwd exists on the test machine");
    p[..p.len().min(16)].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// curl --path-as-is `path` and check the status, and that nothing of /etc/passwd leaked.
fn check_paths(base: &str, cases: &[(&str, u16)]) {
    let marker = passwd_marker();
    let mut failures = Vec::new();
    for (path, status) in cases {
        let r = curl(&["--path-as-is", &format!("{base}{path}")]);
        if r.status != *status {
            failures.push(format!("{path}: expected {status}, got {} {:?}", r.status, r.text()));
        }
        assert!(!contains(&r.body, &marker), "{path} leaked /etc/passwd");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn hostile_paths_are_refused() {
    let fx = basic_fixture();
    fx.write("root/.env", "SECRET=1");
    fx.write("root/.git/config", "[core]");
    fx.write("root/sub/.secret", "s");
    fx.write("root/.well-known/security.txt", "contact: x");
    let server = fx.start(&web_config(""));
    check_paths(
        &server.url("web"),
        &[
            ("/../../etc/passwd", 400),
            ("/sub/../../../etc/passwd", 400),
            ("/%2e%2e/%2e%2e/etc/passwd", 400),
            ("/%2E%2E/%2E%2E/etc/passwd", 400),
            ("/sub/%2e%2e/%2e%2e/etc/passwd", 400),
            ("/..%2f..%2fetc%2fpasswd", 400),
            ("/sub%2f..%2f..%2fetc%2fpasswd", 400),
            ("/sub%2Findex.html", 400),
            ("/hello.txt%00.html", 400),
            ("/%00", 400),
            ("/..%5c..%5cetc%5cpasswd", 400),
            ("/sub%5cindex.html", 400),
            ("/%zz", 400),
            ("/.env", 404),
            ("/.git/config", 404),
            ("/.git/", 404),
            ("/%2eenv", 404),
            ("/sub/.secret", 404),
            ("/sub/../.env", 404),
            // Dot segments that stay inside the root are fine.
            ("/sub/../hello.txt", 200),
            ("/./hello.txt", 200),
            ("/.well-known/security.txt", 200),
        ],
    );
}

fn symlink_fixture() -> Fixture {
    let fx = basic_fixture();
    fx.write("root/real.txt", "real content\n");
    fx.write("root/.env", "SECRET=1");
    fx.symlink("/etc/passwd", "root/outside");
    fx.symlink("/etc", "root/etcdir");
    fx.symlink("real.txt", "root/inside.txt");
    fx.symlink(fx.path().join("root/real.txt"), "root/inside_abs.txt");
    fx.symlink("sub", "root/linkdir");
    fx.symlink(".env", "root/peek");
    fx.symlink("../servente.toml", "root/config_link");
    fx
}

#[test]
fn symlinks_inside_policy() {
    let server = symlink_fixture().start(&web_config(""));
    let base = server.url("web");
    check_paths(
        &base,
        &[
            ("/outside", 403),
            ("/etcdir/passwd", 403),
            ("/etcdir/", 403),
            ("/config_link", 403),
            ("/peek", 404),
            ("/inside.txt", 200),
            ("/inside_abs.txt", 200),
            ("/linkdir/", 200),
        ],
    );
    assert_eq!(curl(&[&format!("{base}/inside.txt")]).text(), "real content\n");
    assert_eq!(curl(&[&format!("{base}/linkdir/")]).text(), "sub index\n");
}

#[test]
fn symlinks_refuse_policy() {
    let server = symlink_fixture().start(&web_config("symlinks = \"refuse\""));
    check_paths(
        &server.url("web"),
        &[
            ("/outside", 403),
            ("/etcdir/passwd", 403),
            ("/inside.txt", 403),
            ("/inside_abs.txt", 403),
            ("/linkdir/", 403),
            ("/real.txt", 200),
            ("/sub/", 200),
        ],
    );
}

fn conditional_fixture() -> Fixture {
    let fx = Fixture::new();
    fx.write("root/doc.bin", noise(100, 7));
    fx
}

#[test]
fn conditional_requests() {
    let data = noise(100, 7);
    let server = conditional_fixture().start(&web_config(""));
    let url = format!("{}/doc.bin", server.url("web"));
    let first = curl(&[&url]);
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("etag").to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong etag: {etag}");
    let lm = first.header("last-modified").expect("last-modified").to_string();
    let weak = format!("W/{etag}");
    let inm = format!("If-None-Match: {etag}");
    let inm_list = format!("If-None-Match: \"other\", {etag}");
    let inm_weak = format!("If-None-Match: {weak}");
    let ims = format!("If-Modified-Since: {lm}");
    let im = format!("If-Match: {etag}");
    let ius = format!("If-Unmodified-Since: {lm}");
    let ir_etag = format!("If-Range: {etag}");
    let ir_date = format!("If-Range: {lm}");
    const PAST: &str = "Sat, 01 Jan 2000 00:00:00 GMT";
    let ims_past = format!("If-Modified-Since: {PAST}");
    let ius_past = format!("If-Unmodified-Since: {PAST}");
    let ir_past = format!("If-Range: {PAST}");
    let range = "Range: bytes=0-9";
    // (headers, status, expected body)
    type CondCase<'a> = (Vec<&'a str>, u16, Option<&'a [u8]>);
    let cases: Vec<CondCase> = vec![
        (vec![&inm], 304, Some(b"")),
        (vec![&inm_list], 304, Some(b"")),
        (vec![&inm_weak], 304, Some(b"")),
        (vec!["If-None-Match: *"], 304, Some(b"")),
        (vec!["If-None-Match: \"other\""], 200, Some(&data)),
        (vec![&ims], 304, Some(b"")),
        (vec![&ims_past], 200, Some(&data)),
        // If-None-Match takes precedence over If-Modified-Since.
        (vec!["If-None-Match: \"other\"", &ims], 200, Some(&data)),
        (vec!["If-Match: \"nope\""], 412, None),
        (vec![&im], 200, Some(&data)),
        (vec!["If-Match: *"], 200, Some(&data)),
        (vec![&ius_past], 412, None),
        (vec![&ius], 200, Some(&data)),
        (vec![&ir_etag, range], 206, Some(&data[..10])),
        (vec!["If-Range: \"other\"", range], 200, Some(&data)),
        (vec![&ir_date, range], 206, Some(&data[..10])),
        (vec![&ir_past, range], 200, Some(&data)),
    ];
    let mut failures = Vec::new();
    for (headers, status, body) in &cases {
        let mut args = Vec::new();
        for h in headers {
            args.push("-H");
            args.push(*h);
        }
        args.push(&url);
        let r = curl(&args);
        if r.status != *status || body.is_some_and(|b| r.body != b) {
            failures.push(format!("{headers:?}: expected {status}, got {} with {} bytes", r.status, r.body.len()));
        }
        if r.status == 304 && r.header("etag") != Some(etag.as_str()) {
            failures.push(format!("{headers:?}: a 304 carries the ETag, got {:?}", r.header("etag")));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn changed_file_gets_a_new_etag() {
    let server =
        conditional_fixture().start(&web_config("").replace("[access_log]", "[cache]\nrevalidate_after = \"100ms\"\n\n[access_log]"));
    let url = format!("{}/doc.bin", server.url("web"));
    let old = curl(&[&url]).header("etag").expect("etag").to_string();
    server.fx.write("root/doc.bin", noise(150, 9));
    let mut fresh = None;
    let seen = common::wait_until(Duration::from_secs(5), || {
        let r = curl(&[&url]);
        let ok = r.body == noise(150, 9);
        if ok {
            fresh = Some(r);
        }
        ok
    });
    assert!(seen, "the changed file was never served");
    let fresh = fresh.expect("fresh response");
    let new = fresh.header("etag").expect("etag");
    assert_ne!(new, old, "a changed file keeps its ETag");
    let r = curl(&["-H", &format!("If-None-Match: {old}"), &url]);
    assert_eq!(r.status, 200, "the old ETag must not validate the new content");
    // A deleted file is gone as soon as the cache looks again.
    std::fs::remove_file(server.fx.path().join("root/doc.bin")).expect("delete");
    let gone = common::wait_until(Duration::from_secs(5), || curl(&[&url]).status == 404);
    assert!(gone, "a deleted file is still served");
}

/// Parses a multipart/byteranges body; returns (start, end, total, bytes) per part.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(u64, u64, u64, Vec<u8>, String)> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut pos = 0;
    // Optional CRLF before the first delimiter.
    if body.starts_with(b"\r\n") {
        pos = 2;
    }
    loop {
        assert!(body[pos..].starts_with(delim.as_bytes()), "delimiter expected at {pos}: {:?}", String::from_utf8_lossy(&body[pos..]));
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            pos += 2;
            break;
        }
        assert!(body[pos..].starts_with(b"\r\n"), "CRLF after the delimiter");
        pos += 2;
        let end = body[pos..].windows(4).position(|w| w == b"\r\n\r\n").expect("end of part headers") + pos;
        let headers = String::from_utf8_lossy(&body[pos..end]).to_string();
        pos = end + 4;
        let cr = headers
            .lines()
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-range")).map(|(_, v)| v.trim().to_string())
            })
            .expect("content-range in part");
        let spec = cr.strip_prefix("bytes ").expect("bytes unit");
        let (range, total) = spec.split_once('/').expect("total");
        let (s, e) = range.split_once('-').expect("range");
        let (s, e, total): (u64, u64, u64) = (s.parse().expect("s"), e.parse().expect("e"), total.parse().expect("total"));
        let len = (e - s + 1) as usize;
        parts.push((s, e, total, body[pos..pos + len].to_vec(), headers));
        pos += len;
        assert!(body[pos..].starts_with(b"\r\n"), "CRLF before the next delimiter");
        pos += 2;
    }
    assert!(body[pos..].iter().all(|b| *b == b'\r' || *b == b'\n'), "only a line end after the closing delimiter");
    parts
}

fn check_ranges(base: &str, data: &[u8]) {
    let url = format!("{base}/data.bin");
    let len = data.len();
    // (Range, status, Content-Range, body)
    let single: [(&str, u16, &str, &[u8]); 7] = [
        ("bytes=10-19", 206, "bytes 10-19/1000", &data[10..20]),
        ("bytes=-100", 206, "bytes 900-999/1000", &data[900..]),
        ("bytes=990-", 206, "bytes 990-999/1000", &data[990..]),
        ("bytes=0-0", 206, "bytes 0-0/1000", &data[..1]),
        ("bytes=995-5000", 206, "bytes 995-999/1000", &data[995..]),
        ("bytes=-5000", 206, "bytes 0-999/1000", data),
        ("bytes=5-1", 200, "", data),
    ];
    for (range, status, content_range, body) in single {
        let r = curl(&["-H", &format!("Range: {range}"), &url]);
        assert_eq!(r.status, status, "{range}");
        assert_eq!(r.body, body, "{range}");
        if status == 206 {
            assert_eq!(r.header("content-range"), Some(content_range), "{range}");
            assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()), "{range}");
        } else {
            assert!(r.header("content-range").is_none(), "{range}");
        }
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = curl(&["-H", &format!("Range: {range}"), &url]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()), "{range}");
    }
    let r = curl(&["-H", "Range: bytes=0-4, 10-14, -5", &url]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").expect("content-type");
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap_or_else(|| panic!("multipart type: {ct}"));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()), "Content-Length equals the body length");
    let parts = parse_multipart(&r.body, boundary);
    let expected = [(0u64, 4u64), (10, 14), (995, 999)];
    assert_eq!(parts.len(), expected.len());
    for ((s, e, total, bytes, headers), (es, ee)) in parts.iter().zip(expected) {
        assert_eq!((*s, *e, *total), (es, ee, len as u64));
        assert_eq!(bytes.as_slice(), &data[es as usize..=ee as usize]);
        assert!(headers.to_ascii_lowercase().contains("content-type: application/octet-stream"), "{headers}");
    }
}

#[test]
fn ranges_from_memory_and_from_disk() {
    let data = noise(1000, 3);
    for cache in ["", "[cache]\nmax_file_bytes = 0\n"] {
        let fx = Fixture::new();
        fx.write("root/data.bin", &data);
        let server = fx.start(&web_config("").replace("[access_log]", &format!("{cache}\n[access_log]")));
        check_ranges(&server.url("web"), &data);
    }
}

/// A file of several MiB served from disk (not cached): over plain HTTP/1.1 its bytes are not
/// read by servente but sent from the file (unread bodies, `sendfile`), over HTTP/2 they are
/// read; both, whole or a range, arrive exactly.
#[test]
fn large_files_from_disk_arrive_whole() {
    let data = noise((5 << 20) + 123, 7);
    let fx = Fixture::new();
    fx.write("root/big.bin", &data);
    let server = fx.start(&web_config("").replace("[access_log]", "[cache]\nmax_file_bytes = 0\n\n[access_log]"));
    let url = format!("{}/big.bin", server.url("web"));
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let r = curl(&[proto, &url]);
        assert_eq!(r.status, 200, "{proto}");
        assert!(r.body == data, "{proto}: {} bytes of {}", r.body.len(), data.len());
        let r = curl(&[proto, "-H", "Range: bytes=1000000-4500000", &url]);
        assert_eq!(r.status, 206, "{proto}");
        assert!(r.body == data[1_000_000..=4_500_000], "{proto}: range of {} bytes", r.body.len());
    }
}

fn compression_fixture() -> (Fixture, String, String, String, Vec<u8>, Vec<u8>) {
    let fx = Fixture::new();
    let big = css_text(8000);
    let small = css_text(500);
    let js = css_text(5000).replace(".rule", "var x");
    let sidecar = gzip_stored(b"/* from the precompressed sidecar */\n");
    let stale = gzip_stored(b"/* a stale sidecar */\n");
    fx.write("root/big.css", &big);
    fx.write("root/small.css", &small);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(noise(4000, 11));
    fx.write("root/pic.png", &png);
    fx.write("root/app.js", &js);
    fx.write("root/app.js.gz", &sidecar);
    fx.set_age("root/app.js", 100);
    fx.write("root/old.js", &js);
    fx.write("root/old.js.gz", &stale);
    fx.set_age("root/old.js.gz", 100);
    (fx, big, small, js, sidecar, png)
}

#[test]
fn compression_negotiation() {
    for cache in ["", "[cache]\nmax_file_bytes = 0\n"] {
        let (fx, big, small, js, sidecar, png) = compression_fixture();
        let server = fx.start(&web_config("").replace("[access_log]", &format!("{cache}\n[access_log]")));
        let base = server.url("web");
        let big_url = format!("{base}/big.css");
        // (curl args, expected Content-Encoding)
        let cases: [(&[&str], Option<&str>); 9] = [
            (&["--compressed"], Some("br")),
            (&["--compressed", "-H", "Accept-Encoding: br"], Some("br")),
            (&["--compressed", "-H", "Accept-Encoding: zstd"], Some("zstd")),
            (&["--compressed", "-H", "Accept-Encoding: gzip"], Some("gzip")),
            (&["--compressed", "-H", "Accept-Encoding: gzip;q=1, br;q=0.5"], Some("gzip")),
            (&["--compressed", "-H", "Accept-Encoding: br;q=0, gzip"], Some("gzip")),
            (&["--compressed", "-H", "Accept-Encoding: zstd;q=0.9, br;q=0.8, gzip;q=0.1"], Some("zstd")),
            (&["--compressed", "-H", "Accept-Encoding: identity"], None),
            (&[], None),
        ];
        let mut etags = Vec::new();
        for (args, coding) in cases {
            let mut all = args.to_vec();
            all.push(&big_url);
            let r = curl(&all);
            assert_eq!(r.status, 200, "{args:?} {cache}");
            assert_eq!(r.header("content-encoding"), coding, "{args:?} {cache}");
            assert!(r.header("vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")), "{args:?}: {:?}", r.headers);
            assert!(r.body == big.as_bytes(), "{args:?} {cache}: the decoded body differs from the file");
            etags.push((coding, r.header("etag").map(str::to_string)));
        }
        // Each representation has its own validator.
        let identity = etags.iter().find(|(c, _)| c.is_none()).and_then(|(_, e)| e.clone());
        for (c, e) in &etags {
            if c.is_some() && e.is_some() {
                assert_ne!(e, &identity, "{c:?} shares the identity ETag");
            }
        }
        // Without --compressed, the raw gzip bytes arrive.
        let r = curl(&["-H", "Accept-Encoding: gzip", &big_url]);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert!(r.body.starts_with(&[0x1f, 0x8b]) && r.body.len() < big.len(), "{cache}");

        // Small bodies and images are sent as they are.
        let r = curl(&["--compressed", &format!("{base}/small.css")]);
        assert_eq!((r.header("content-encoding"), r.body == small.as_bytes()), (None, true), "small.css {cache}");
        let r = curl(&["--compressed", &format!("{base}/pic.png")]);
        assert_eq!((r.header("content-encoding"), r.body == png), (None, true), "pic.png {cache}");
        assert_eq!(r.header("content-type"), Some("image/png"));

        // A fresh sidecar is sent as is.
        let r = curl(&["-H", "Accept-Encoding: gzip", &format!("{base}/app.js")]);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{cache}");
        assert_eq!(r.body, sidecar, "{cache}: the body is not the sidecar's bytes");
        let r = curl(&["--compressed", "-H", "Accept-Encoding: gzip", &format!("{base}/app.js")]);
        assert_eq!(r.text(), "/* from the precompressed sidecar */\n");
        // Other codings of the same file are still made on the fly from the file itself.
        let r = curl(&["--compressed", "-H", "Accept-Encoding: br", &format!("{base}/app.js")]);
        assert_eq!((r.header("content-encoding"), r.body == js.as_bytes()), (Some("br"), true), "{cache}");

        // A sidecar older than its file is ignored.
        let r = curl(&["--compressed", "-H", "Accept-Encoding: gzip", &format!("{base}/old.js")]);
        assert_eq!(r.status, 200);
        assert!(r.body == js.as_bytes(), "{cache}: a stale sidecar was served: {:?}", r.text().get(..40));
        let raw = curl(&["-H", "Accept-Encoding: gzip", &format!("{base}/old.js")]);
        assert_ne!(raw.body, gzip_stored(b"/* a stale sidecar */\n"));
    }
}

#[test]
fn compression_can_be_turned_off() {
    let (fx, big, ..) = compression_fixture();
    let server = fx.start(&web_config("[site.compression]\nenabled = false\nprecompressed = false\n"));
    let base = server.url("web");
    let r = curl(&["--compressed", &format!("{base}/big.css")]);
    assert_eq!((r.header("content-encoding"), r.body == big.as_bytes()), (None, true));
    let r = curl(&["-H", "Accept-Encoding: gzip", &format!("{base}/app.js")]);
    assert_eq!(r.header("content-encoding"), None, "precompressed = false ignores sidecars");
}

const SITE_FEATURES: &str = r#"
[[site.redirect]]
from = "/old.html"
to = "/new.html"

[[site.redirect]]
from = "/away"
to = "https://example.org/landing"
status = 308

# Prefix rules last: see redirect_after_a_non_matching_prefix_rule.
[[site.redirect]]
from = "/blog/*"
to = "/articles/*"
status = 302

[site.error_pages]
404 = "/errors/404.html"

[[site.rule]]
path = "/assets/**"
cache_control = "public, max-age=31536000, immutable"

[[site.rule]]
path = "/**/*.html"
headers = { X-Frame-Options = "DENY" }

[[site.rule]]
path = "/assets/special/"
cache_control = "no-store"
headers = { X-Special = "yes" }
"#;

fn features_fixture() -> Fixture {
    let fx = basic_fixture();
    fx.write("root/errors/404.html", "<h1>custom not found</h1>\n");
    fx.write("root/assets/app.css", "body{}");
    fx.write("root/assets/special/x.css", "x{}");
    fx.write("root/deep/a/b/page.html", "deep");
    fx
}

#[test]
fn redirects() {
    let server = features_fixture().start(&web_config(SITE_FEATURES));
    let base = server.url("web");
    let cases = [
        ("/old.html", 301, "/new.html"),
        ("/old.html?x=1", 301, "/new.html?x=1"),
        ("/blog/2024/post%20one", 302, "/articles/2024/post%20one"),
        ("/blog/", 302, "/articles/"),
        ("/blog/a?page=2", 302, "/articles/a?page=2"),
        ("/away", 308, "https://example.org/landing"),
    ];
    for (path, status, location) in cases {
        let r = curl(&[&format!("{base}{path}")]);
        assert_eq!((r.status, r.header("location")), (status, Some(location)), "{path}");
    }
    // Not redirected: near misses.
    for path in ["/old.htm", "/old.html/x", "/blogx"] {
        let r = curl(&[&format!("{base}{path}")]);
        assert!(r.header("location").is_none(), "{path} was redirected to {:?}", r.header("location"));
    }
}

/// Redirects are "tried in order before files": a prefix rule that does not match must not
/// stop the rules after it.
#[test]
fn redirect_after_a_non_matching_prefix_rule() {
    let rules = r#"
[[site.redirect]]
from = "/blog/*"
to = "/articles/*"

[[site.redirect]]
from = "/old.html"
to = "/new.html"
"#;
    let server = basic_fixture().start(&web_config(rules));
    let base = server.url("web");
    let r = curl(&[&format!("{base}/blog/x")]);
    assert_eq!((r.status, r.header("location")), (301, Some("/articles/x")));
    let r = curl(&[&format!("{base}/old.html")]);
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("/new.html")),
        "the exact redirect listed after a prefix redirect is never tried"
    );
}

#[test]
fn error_pages() {
    let server = features_fixture().start(&web_config(SITE_FEATURES));
    let base = server.url("web");
    let r = curl(&[&format!("{base}/no/such/page")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "<h1>custom not found</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    // Hidden files get the 404 page too.
    let r = curl(&[&format!("{base}/.git/config")]);
    assert_eq!((r.status, r.text()), (404, "<h1>custom not found</h1>\n".to_string()));
    let r = curl(&["-I", &format!("{base}/no/such/page")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-length"), Some("26"));
    // The page itself is still a normal file.
    let r = curl(&[&format!("{base}/errors/404.html")]);
    assert_eq!(r.status, 200);
}

#[test]
fn rules_set_headers_by_path() {
    let server = features_fixture().start(&web_config(SITE_FEATURES));
    let base = server.url("web");
    // (path, Cache-Control, X-Frame-Options, X-Special)
    type Expected<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let cases: [Expected; 6] = [
        ("/assets/app.css", Some("public, max-age=31536000, immutable"), None, None),
        ("/index.html", None, Some("DENY"), None),
        ("/", None, None, None),
        ("/deep/a/b/page.html", None, Some("DENY"), None),
        ("/assets/special/x.css", Some("no-store"), None, Some("yes")),
        ("/hello.txt", None, None, None),
    ];
    let mut failures = Vec::new();
    for (path, cc, xfo, special) in cases {
        let r = curl(&[&format!("{base}{path}")]);
        let got = (r.header("cache-control"), r.header("x-frame-options"), r.header("x-special"));
        if r.status != 200 || got != (cc, xfo, special) {
            failures.push(format!("{path}: {} {got:?}, expected {:?}", r.status, (cc, xfo, special)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Rule headers also ride on 304s and ranges.
    let etag = curl(&[&format!("{base}/assets/app.css")]).header("etag").expect("etag").to_string();
    let r = curl(&["-H", &format!("If-None-Match: {etag}"), &format!("{base}/assets/app.css")]);
    assert_eq!((r.status, r.header("cache-control")), (304, Some("public, max-age=31536000, immutable")));
}

fn vhost_fixture() -> Fixture {
    let fx = Fixture::new();
    for name in ["a", "b", "c"] {
        fx.write(&format!("site-{name}/index.html"), format!("site {name}\n"));
    }
    fx
}

const VHOSTS: &str = r#"
[[listener]]
name = "web"
address = "127.0.0.1:0"

[[site]]
name = "a"
hosts = ["a.test"]
root = "site-a"

[[site]]
name = "b"
hosts = ["*.b.test"]
root = "site-b"

[[site]]
name = "c"
hosts = ["c.test"]
root = "site-c"
default = true
"#;

fn check_hosts(base: &str, cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (host, site) in cases {
        let r = curl(&["-H", &format!("Host: {host}"), &format!("{base}/")]);
        let expected = format!("site {site}\n");
        if r.status != 200 || r.text() != expected {
            failures.push(format!("Host {host}: {} {:?}, expected {expected:?}", r.status, r.text()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn virtual_hosts() {
    let server = vhost_fixture().start(&common::config("", VHOSTS));
    check_hosts(
        &server.url("web"),
        &[
            ("a.test", "a"),
            ("A.Test", "a"),
            ("a.test:8080", "a"),
            ("a.test.", "a"),
            ("www.b.test", "b"),
            ("X.B.TEST:443", "b"),
            ("b.test", "c"),
            ("c.test", "c"),
            ("unknown.example", "c"),
            ("127.0.0.1", "c"),
        ],
    );
    // Over HTTP/2 the :authority chooses the site.
    let r = curl(&["--http2-prior-knowledge", "-H", "Host: a.test", &format!("{}/", server.url("web"))]);
    assert_eq!((r.version.as_str(), r.text()), ("2", "site a\n".to_string()));
}

#[test]
fn first_site_is_the_default_without_an_explicit_one() {
    let server = vhost_fixture().start(&common::config("", &VHOSTS.replace("default = true", "")));
    check_hosts(&server.url("web"), &[("unknown.example", "a"), ("c.test", "c"), ("x.b.test", "b")]);
}

#[test]
fn sites_limited_to_listeners() {
    let toml = common::config(
        "",
        r#"
[[listener]]
name = "one"
address = "127.0.0.1:0"

[[listener]]
name = "two"
address = "[::1]:0"

[[site]]
name = "a"
hosts = ["a.test"]
root = "site-a"
listeners = ["one"]

[[site]]
name = "b"
hosts = ["b.test"]
root = "site-b"
listeners = ["two"]
"#,
    );
    let server = vhost_fixture().start(&toml);
    let one = server.url("one");
    let two = server.url("two");
    let get = |base: &str, host: &str| {
        let r = curl(&["-g", "-H", &format!("Host: {host}"), &format!("{base}/")]);
        (r.status, r.text())
    };
    assert_eq!(get(&one, "a.test"), (200, "site a\n".to_string()));
    assert_eq!(get(&two, "b.test"), (200, "site b\n".to_string()));
    // Each listener only knows its own site; for it, that site is the default.
    assert_eq!(get(&one, "b.test"), (200, "site a\n".to_string()));
    assert_eq!(get(&two, "a.test"), (200, "site b\n".to_string()));
}

#[test]
fn dotfiles_and_index_options() {
    let fx = basic_fixture();
    fx.write("root/.env", "SECRET=1");
    fx.write("root/docs/home.htm", "htm index\n");
    fx.write("root/docs/index.html", "html index\n");
    let server = fx.start(&web_config("hide_dotfiles = false\nindex = [\"home.htm\", \"index.html\"]"));
    let base = server.url("web");
    let r = curl(&[&format!("{base}/.env")]);
    assert_eq!((r.status, r.text()), (200, "SECRET=1".to_string()), "hide_dotfiles = false serves dotfiles");
    let r = curl(&[&format!("{base}/docs/")]);
    assert_eq!(r.text(), "htm index\n", "index files are tried in order");
    let r = curl(&[&format!("{base}/")]);
    assert!(r.text().contains("root index"), "falls back to the next index name");
}

#[test]
fn encoded_file_names() {
    let fx = basic_fixture();
    for name in ["a b.txt", "café.txt", "%41.txt", "q?.txt", "hash#.txt"] {
        fx.write(&format!("root/enc/{name}"), name);
    }
    let server = fx.start(&web_config("listing = true"));
    let base = server.url("web");
    // (request path, status, body)
    let cases = [
        ("/enc/a%20b.txt", 200, "a b.txt"),
        ("/enc/caf%C3%A9.txt", 200, "café.txt"),
        ("/enc/caf%c3%a9.txt", 200, "café.txt"),
        ("/enc/%2541.txt", 200, "%41.txt"),
        ("/enc/%41.txt", 404, "not found\n"),
        ("/enc/q%3F.txt", 200, "q?.txt"),
        ("/enc/hash%23.txt", 200, "hash#.txt"),
        ("/hello.txt?x=1&y=2", 200, HELLO),
    ];
    let mut failures = Vec::new();
    for (path, status, body) in cases {
        let r = curl(&["--path-as-is", &format!("{base}{path}")]);
        if (r.status, r.text()) != (status, body.to_string()) {
            failures.push(format!("{path}: {} {:?}", r.status, r.text()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Listing links are percent-encoded and lead back to the files.
    let page = curl(&[&format!("{base}/enc/")]).text();
    for href in ["a%20b.txt", "caf%C3%A9.txt", "%2541.txt", "q%3F.txt", "hash%23.txt"] {
        assert!(page.contains(&format!("href=\"{href}\"")), "missing link {href}: {page}");
        assert_eq!(curl(&["--path-as-is", &format!("{base}/enc/{href}")]).status, 200, "{href}");
    }
}

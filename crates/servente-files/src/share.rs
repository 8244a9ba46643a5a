//! Share links: `MOUNT/s/ID` opens a file or folder read-only without an account, until the
//! link expires or its owner revokes it. A link with a password asks for it once per browser
//! (a cookie derived from the stored hash, so it cannot be made without the server's data).
//! Folders are listed as a plain page, and can be downloaded whole as a zip.

use std::path::{Path, PathBuf};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use servente_core::RequestBody;
use servente_core::{Body, RequestCx};

use crate::FilesRole;
use crate::db::Share;

pub async fn handle(role: &FilesRole, mount: &str, link: &str, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
    let (id, sub) = link.split_once('/').map(|(i, s)| (i, Some(s))).unwrap_or((link, None));
    let st = role.st.clone();
    let id2 = id.to_string();
    let dir = role.directory.clone();
    let lookup = move || -> Result<Option<Share>, String> {
        let Some(s) = st.db.share(&id2)? else { return Ok(None) };
        if s.expires.is_some_and(|e| e <= servente_auth::unix_now()) {
            return Ok(None);
        }
        // The link lends its owner's access: it stops working when the owner is disabled or
        // removed, or may no longer change the place (left the group, folder rules changed):
        // sharing is for those who may write, as creating the link was.
        let Some(dir) = dir else { return Ok(None) };
        let Some(owner) = dir.store().user(&s.owner).map_err(|e| e.to_string())? else { return Ok(None) };
        if owner.user.disabled {
            return Ok(None);
        }
        let p = servente_auth::Principal {
            user: owner.user.name,
            groups: owner.user.groups,
            method: servente_auth::Method::Password,
            scopes: None,
        };
        let ok = crate::api::dav_path(&format!("/{}", s.path))
            .ok()
            .is_some_and(|d| matches!(st.resolve(&d, &p), Ok(crate::fs::Node::Area { write: true, .. })));
        Ok(ok.then_some(s))
    };
    let share = match tokio::task::spawn_blocking(lookup).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(_)) => return page(StatusCode::NOT_FOUND, "Link not found", "<p>This link does not exist, has expired or was revoked.</p>"),
        _ => return page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "<p>The link could not be looked up.</p>"),
    };
    let base = format!("{mount}s/{id}");
    if let Some(hash) = &share.password_hash {
        let want = servente_auth::secret::sha256_hex(&format!("{}:{hash}", share.id));
        let cookie_name = format!("servente_share_{}", share.id);
        let has = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == cookie_name && servente_auth::secret::constant_time_eq(v, &want));
        if !has {
            return ask_password(req, &base, &cookie_name, &want, hash, cx).await;
        }
    }
    if *req.method() != Method::GET && *req.method() != Method::HEAD {
        return page(StatusCode::METHOD_NOT_ALLOWED, "Read-only", "<p>Share links are read-only.</p>");
    }
    let root = role.st.root.join(&share.path);
    let Some((disk, shown)) = inside(&root, &share, sub) else {
        return page(StatusCode::NOT_FOUND, "Not found", "<p>There is no such file in this share.</p>");
    };
    let meta = match std::fs::symlink_metadata(&disk) {
        // Not a link, FIFO, socket or device placed by hand in the shared folder.
        Ok(m) if m.is_file() || m.is_dir() => m,
        _ => return page(StatusCode::NOT_FOUND, "Not found", "<p>There is no such file in this share.</p>"),
    };
    let name = shown.rsplit('/').find(|s| !s.is_empty()).unwrap_or("download").to_string();
    if meta.is_dir() {
        if crate::api::query(&req, "zip").is_some() {
            return zip_response(disk, &name);
        }
        if sub.is_some_and(|s| !s.is_empty() && !s.ends_with('/')) || (sub.is_none() && share.is_dir) {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            let loc = format!("{}/", req.uri().path());
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        return listing(&disk, &name).await;
    }
    let download = crate::api::query(&req, "download").is_some();
    file_response(&disk, &name, download, *req.method() == Method::HEAD, cx.sendfile)
}

/// The file for `sub` under a share, refusing anything that leaves it (`..`, links).
fn inside(root: &Path, share: &Share, sub: Option<&str>) -> Option<(PathBuf, String)> {
    let sub = sub.unwrap_or("");
    if !share.is_dir && !sub.is_empty() {
        return None;
    }
    let mut p = root.to_path_buf();
    let mut shown = String::from(share.path.rsplit('/').next().unwrap_or(""));
    for seg in sub.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_encoding::percent_decode_str(seg).decode_utf8().ok()?;
        if seg == "." || seg == ".." || seg.contains('/') || seg.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return None;
        }
        p.push(seg.as_ref());
        // No link anywhere on the way: a share never reaches outside its folder.
        if std::fs::symlink_metadata(&p).ok()?.file_type().is_symlink() {
            return None;
        }
        shown.push('/');
        shown.push_str(&seg);
    }
    Some((p, shown))
}

async fn ask_password(req: Request<RequestBody>, base: &str, cookie: &str, want: &str, hash: &str, cx: &RequestCx) -> Response<Body> {
    let form = |msg: &str| {
        page(
            StatusCode::UNAUTHORIZED,
            "Password required",
            &format!(
                "<form method=post><p>{msg}</p><label>Password <input type=password name=password autofocus required></label> <button>Open</button></form>"
            ),
        )
    };
    if *req.method() != Method::POST {
        return form("This link is protected by a password.");
    }
    let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
        Ok(body) => body,
        Err(e) if servente_core::request_body::timed_out_in(&*e) => return servente_core::request_body::body_failed(true),
        Err(_) => return form("The form was too large."),
    };
    let body = body.to_bytes();
    let password = std::str::from_utf8(&body).ok().and_then(|t| crate::api::form_value(t, "password")).unwrap_or_default();
    let stored = hash.to_string();
    let ok = tokio::task::spawn_blocking(move || servente_auth::secret::verify_password(&password, &stored)).await.unwrap_or(false);
    if !ok {
        return form("Wrong password; try again.");
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    let secure = if cx.tls { "; Secure" } else { "" };
    let c = format!("{cookie}={want}; Path={base}; HttpOnly; SameSite=Lax{secure}");
    if let (Ok(c), Ok(l)) = (HeaderValue::from_str(&c), HeaderValue::from_str(base)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem;color:#1d2330;background:#fff}\
a{color:#1f5fbf}table{width:100%;border-collapse:collapse}td{padding:.35rem .5rem;border-bottom:1px solid #e3e6ec}\
td.n{text-align:right;white-space:nowrap;color:#5b6475}@media(prefers-color-scheme:dark){body{background:#15181e;color:#e4e7ee}a{color:#8ab4ff}td{border-color:#2b313c}}";

fn page(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\"><title>{t}</title><style>{STYLE}</style><h1>{t}</h1>{body}</html>",
        t = escape(title)
    );
    let mut r = Response::new(Body::full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn listing(dir: &Path, name: &str) -> Response<Body> {
    let d = dir.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || {
        let mut v: Vec<(String, bool, u64)> = std::fs::read_dir(&d)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        if !(m.is_file() || m.is_dir()) {
                            return None;
                        }
                        Some((e.file_name().to_string_lossy().into_owned(), m.is_dir(), m.len()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.to_lowercase().cmp(&b.0.to_lowercase())));
        v
    })
    .await
    .unwrap_or_default();
    const SEG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    let mut rows = String::new();
    for (n, is_dir, len) in entries {
        let href = percent_encoding::utf8_percent_encode(&n, SEG).to_string();
        let (href, size) = if is_dir { (format!("{href}/"), "folder".to_string()) } else { (href, human(len)) };
        rows.push_str(&format!(
            "<tr><td><a href=\"{}\">{}{}</a></td><td class=n>{}</td></tr>",
            escape(&href),
            escape(&n),
            if is_dir { "/" } else { "" },
            size
        ));
    }
    let body = format!("<p><a href=\"?zip\">Download everything as a zip</a></p><table>{rows}</table>");
    page(StatusCode::OK, name, &body)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn disposition(kind: &str, name: &str) -> HeaderValue {
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    let ascii: String = name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
    let enc = percent_encoding::utf8_percent_encode(name, ATTR);
    HeaderValue::from_str(&format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{enc}"))
        .unwrap_or(HeaderValue::from_static("attachment"))
}

fn file_response(disk: &Path, name: &str, download: bool, head: bool, sendfile: bool) -> Response<Body> {
    // A link put there since it was looked at, or a FIFO, is refused as not a file, without
    // holding this thread waiting for a FIFO's writer.
    let Some((file, meta)) = crate::fs::open_regular(disk).ok().flatten() else {
        return page(StatusCode::NOT_FOUND, "Not found", "<p>The file is gone.</p>");
    };
    let len = meta.len();
    let body = if head { Body::empty() } else { Body::stream(servente_core::file_body::FileBody::whole(file, &meta).unread_if(sendfile)) };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let mime = crate::mime::of_name(name);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_DISPOSITION, disposition(if download { "attachment" } else { "inline" }, name));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A shared HTML file must not run scripts in this server's origin.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(crate::FILE_CSP));
    r
}

/// A zip of a folder (or of one file), streamed as it is built.
pub fn zip_response(disk: PathBuf, path: &str) -> Response<Body> {
    let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("files").to_string();
    let rx = if disk.is_dir() { crate::zip::stream_dir(disk, name.clone()) } else { crate::zip::stream_file(disk, name.clone()) };
    let mut r = Response::new(Body::stream(crate::zip::ChannelBody(rx)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    r.headers_mut().insert(header::CONTENT_DISPOSITION, disposition("attachment", &format!("{name}.zip")));
    r
}

//! servente's file role: every user's home folder, group and shared folders, reachable over
//! WebDAV (RFC 4918 class 1 and 2), from the web file manager, and through share links.
//!
//! A site mounts the role at a path (`site.files = "/files/"`). Under it:
//! `dav/…` is WebDAV (dav-server's protocol engine over [`fs::ServenteFs`]), `api/…` the file
//! manager's JSON API ([`api`]), `s/ID…` share links ([`share`]), everything else the file
//! manager's page ([`ui`]). Sign-in is the user directory's (servente-auth): Basic, Bearer
//! tokens with the `user` scope, or a browser session with its CSRF token.

// Handlers return their error answer as `Err(Response)`; it is built once per failed request.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod db;
pub mod dirsync;
pub mod download;
pub mod fs;
pub mod guard;
pub mod locks;
pub mod mime;
pub mod propfind;
pub mod share;
pub mod ui;
pub mod uploads;
pub mod zip;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use dav_server::{DavConfig, DavHandler};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use servente_auth::web::{Authenticated, sign_in_user};
use servente_auth::{Acl, Client, Directory, Level, Subject};
use servente_config::Config;
use servente_core::RequestBody;
use servente_core::{Body, RequestCx, simple_response};

use crate::fs::{Caller, ServenteFs, Storage, StorageSettings};

/// WebDAV locks live as long as the process, across config reloads (clients hold their tokens).
fn locks() -> Box<locks::Locks> {
    Box::new(locks::shared())
}

/// The file role of one config generation.
pub struct FilesRole {
    pub st: Arc<Storage>,
    /// One WebDAV handler per mount path (`/files/` serves WebDAV under `/files/dav`).
    dav: HashMap<String, DavHandler<Caller>>,
    pub(crate) directory: Option<Arc<Directory>>,
    pub(crate) basic_over_plain_http: bool,
    propfind_infinity: bool,
    max_xml: u64,
    pub(crate) uploads: Arc<uploads::Uploads>,
}

impl FilesRole {
    /// `None` when no site mounts the role.
    pub fn new(config: &Config, data_dir: &Path, directory: Option<Arc<Directory>>) -> Result<Option<Arc<FilesRole>>, String> {
        let mounts: Vec<&str> = config.sites.iter().map(|s| s.files.as_str()).filter(|m| !m.is_empty()).collect();
        if mounts.is_empty() {
            return Ok(None);
        }
        let f = &config.files;
        let mut folders = Vec::new();
        for folder in &f.folders {
            let parse = |list: &[String]| -> Result<Acl, String> {
                let mut acl = Acl::new();
                for s in list {
                    acl = acl.grant(Subject::parse(s).map_err(|e| format!("files.folder `{}`: {e}", folder.name))?, Level::Read);
                }
                Ok(acl)
            };
            folders.push(fs::Folder { name: folder.name.clone(), read: parse(&folder.read)?, write: parse(&folder.write)? });
        }
        let settings = StorageSettings {
            default_quota: f.quota.0,
            quotas: f.quotas.iter().map(|(u, q)| (u.clone(), q.0)).collect(),
            group_folders: f.group_folders,
            folders,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create the data folder {}: {e}", data_dir.display()))?;
        let st = Arc::new(Storage::open(&f.root_path, &data_dir.join("files.db"), settings)?);
        locks::shared().attach(st.clone());
        let fs = ServenteFs::new(st.clone());
        let mut dav = HashMap::new();
        for m in mounts {
            let handler = DavConfig::new()
                .filesystem(Box::new(fs.clone()))
                .locksystem(locks())
                .strip_prefix(format!("{m}dav"))
                .hide_symlinks(true)
                .autoindex(false)
                // GET reads the file in chunks of this size, each on the blocking pool: fewer,
                // larger reads than the default 16 KiB.
                .read_buf_size(512 << 10)
                .build_handler();
            dav.insert(m.to_string(), handler);
        }
        let uploads = Arc::new(uploads::Uploads::new(&st.root)?);
        // Uploads in progress hold their room in the quota across restarts and reloads.
        for u in uploads.in_progress() {
            if let Some(home) = &u.home {
                st.try_reserve(home, u.reserved, u64::MAX);
            }
        }
        Ok(Some(Arc::new(FilesRole {
            st,
            dav,
            directory,
            basic_over_plain_http: config.auth.basic_over_plain_http,
            propfind_infinity: f.propfind_infinity,
            max_xml: f.max_propfind_body.0,
            uploads,
        })))
    }

    /// Answers a request whose path starts with `mount`.
    pub async fn handle(&self, mount: &str, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
        let rest = req.uri().path()[mount.len()..].to_string();
        if rest == "dav" || rest.starts_with("dav/") {
            return self.webdav(mount, req, cx).await;
        }
        if let Some(api) = rest.strip_prefix("api/") {
            let api = api.to_string();
            return api::handle(self, mount, &api, req, cx).await;
        }
        if let Some(link) = rest.strip_prefix("s/") {
            let link = link.to_string();
            return share::handle(self, mount, &link, req, cx).await;
        }
        ui::handle(&rest, &req)
    }

    fn client(cx: &RequestCx) -> Client {
        Client { ip: cx.peer.map(|p| p.ip()), tls: cx.tls }
    }

    /// Signs the request in; the error is the response to send (401 with a Basic challenge
    /// where Basic is accepted, 403, 429).
    pub(crate) async fn sign_in(&self, req: &Request<RequestBody>, cx: &mut RequestCx) -> Result<Authenticated, Response<Body>> {
        let Some(dir) = &self.directory else {
            return Err(simple_response(StatusCode::SERVICE_UNAVAILABLE, "sign-in is unavailable: the user directory is not open\n"));
        };
        match sign_in_user(dir, req.headers(), &Self::client(cx), self.basic_over_plain_http).await {
            Ok(a) => {
                cx.user = Some(a.principal.user.clone());
                Ok(a)
            }
            Err(r) => {
                // The file manager's own requests (fetch, or anything with a session cookie)
                // must not make the browser pop up its password dialog: no challenge for them.
                let from_page = req.headers().get("sec-fetch-dest").is_some_and(|v| v == "empty")
                    || servente_auth::web::session_cookie(req.headers()).is_some();
                let realm = (r.challenge && !from_page).then_some("servente files");
                Err(servente_core::refused(r.status, r.message, realm, r.retry_after))
            }
        }
    }

    async fn webdav(&self, mount: &str, mut req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
        let Some(handler) = self.dav.get(mount) else {
            return simple_response(StatusCode::NOT_FOUND, "not found\n");
        };
        let who = match self.sign_in(&req, cx).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        // Cookie sessions (the file manager) must prove they come from our page for anything
        // that changes files; a page of another site cannot read the token.
        let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS" | "PROPFIND");
        if !safe && let Err(r) = check_csrf(&req, &who) {
            return r;
        }
        if let Err(r) = check_request(&req, self.max_xml) {
            return r;
        }
        // No Depth on a PROPFIND means infinity (RFC 4918 section 9.1).
        if req.method().as_str() == "PROPFIND" && req.headers().get("depth").is_none_or(|d| d.as_bytes().eq_ignore_ascii_case(b"infinity"))
        {
            if !self.propfind_infinity {
                return finite_depth();
            }
            // dav-server answers Depth: infinity only for its test client; this is the switch.
            req.headers_mut().insert("x-litmus", HeaderValue::from_static("servente: propfind_infinity"));
            req.headers_mut().insert("depth", HeaderValue::from_static("infinity"));
        }
        if let Err(r) = guard::check(&self.st, &who.principal, mount, &req).await {
            return r;
        }
        let user = who.principal.user.clone();
        let mut caller = Caller { who: Arc::new(who.principal), named_props: false, sync_micros: Default::default() };
        let sync = caller.sync_micros.clone();
        let head = req.method() == http::Method::HEAD;
        let get = head || req.method() == http::Method::GET;
        if get
            && !download::needs_dav_server(req.headers())
            && let Some(dav) = dav_path_under(mount, req.uri().path())
            && let Some(r) = download::answer(&self.st, &caller, &dav, req.headers(), head, cx.sendfile).await
        {
            return sandboxed(r);
        }
        let mut req = req;
        let body_failure = req.body_mut().failure_signal();
        let resp = if req.method().as_str() == "PROPFIND" {
            // The body is small (bounded by `max_propfind_body`); read it to see whether it names
            // its properties.
            let (parts, body) = req.into_parts();
            let body = match http_body_util::Limited::new(body, self.max_xml as usize).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if servente_core::request_body::timed_out_in(&*e) => {
                    return servente_core::request_body::body_failed(true);
                }
                Err(_) => return simple_response(StatusCode::PAYLOAD_TOO_LARGE, "the XML body is too large or was cut off\n"),
            };
            let depth1 = match parts.headers.get("depth").map(|d| d.as_bytes()) {
                Some(b"0") => Some(false),
                Some(b"1") => Some(true),
                _ => None,
            };
            let want = propfind::parse(&body);
            if let (Some(depth1), Some(want)) = (depth1, &want)
                && propfind::can_answer(want)
                && let Some(dav) = dav_path_under(mount, parts.uri.path())
                && let Some(r) = propfind::answer(&self.st, &caller, &dav, parts.uri.path(), depth1, want).await
            {
                return r;
            }
            let named = match want {
                Some(propfind::Want::Named(props)) => Some(props),
                _ => None,
            };
            caller.named_props = named.is_some();
            let depth0 = parts.headers.get("depth").is_some_and(|d| d.as_bytes() == b"0");
            let resp = handler.handle_guarded(Request::from_parts(parts, http_body_util::Full::new(body)), user, caller).await;
            match named {
                Some(props) if depth0 && resp.status() == StatusCode::MULTI_STATUS => {
                    let (parts, body) = resp.into_parts();
                    let Ok(xml) = body.collect().await.map(|b| b.to_bytes()) else {
                        return simple_response(StatusCode::INTERNAL_SERVER_ERROR, "the PROPFIND answer failed\n");
                    };
                    let fixed = report_missing(&props, &xml).map(Bytes::from).unwrap_or(xml);
                    let mut parts = parts;
                    parts.headers.remove(header::CONTENT_LENGTH);
                    return Response::from_parts(parts, Body::full(fixed));
                }
                _ => resp,
            }
        } else if req.method().as_str() == "LOCK" {
            let dav = dav_path_under(mount, req.uri().path());
            let resp = handler.handle_guarded(req, user, caller).await;
            match dav {
                Some(dav) if resp.status() == StatusCode::CREATED => match self.st.create_empty(&dav).await {
                    Ok(()) => resp,
                    Err(e) => {
                        // The lock is of no use without its file: give it back.
                        use dav_server::ls::DavLockSystem;
                        if let Some(t) = resp.headers().get("lock-token").and_then(|t| t.to_str().ok()) {
                            let _ = locks().unlock(&dav, t.trim_start_matches('<').trim_end_matches('>')).await;
                        }
                        tracing::warn!(path = %dav, error = ?e, "could not create the file of a LOCK");
                        let status = match e {
                            dav_server::fs::FsError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
                            _ => StatusCode::INTERNAL_SERVER_ERROR,
                        };
                        return simple_response(status, "the locked file could not be created\n");
                    }
                },
                _ => resp,
            }
        } else {
            handler.handle_guarded(req, user, caller).await
        };
        // dav-server answers a body that failed on the client's side as its own failure (502,
        // 504 for a timeout): the client is owed 400 or 408.
        if let Some(r) = body_failure.answer() {
            return r;
        }
        let mut resp = resp.map(Body::stream);
        if get {
            resp = sandboxed(resp);
        }
        let synced = sync.load(std::sync::atomic::Ordering::Relaxed);
        if synced > 0
            && let Ok(v) = HeaderValue::from_str(&format!("fsync;dur={:.3}", synced as f64 / 1000.0))
        {
            // How long the upload waited for the disk: what "on disk before 201" costs.
            resp.headers_mut().insert("server-timing", v);
        }
        resp
    }
}

/// Files are served from the file manager's origin: an uploaded HTML page must not run
/// scripts there (it could act with the session of whoever opens it).
fn sandboxed(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(FILE_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// The policy for files served as they are: no scripts, a unique origin, their own images
/// and media only.
pub(crate) const FILE_CSP: &str = "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'";

/// The WebDAV path of a request path under `MOUNTdav`.
pub(crate) fn dav_path_under(mount: &str, path: &str) -> Option<dav_server::davpath::DavPath> {
    let rest = path.strip_prefix(mount)?.strip_prefix("dav")?;
    dav_server::davpath::DavPath::new(if rest.is_empty() { "/" } else { rest }).ok()
}

/// dav-server leaves requested properties that do not exist out of its answer; RFC 4918 wants
/// them listed with 404 (and clients choke on a response with no propstat at all). Adds them to
/// each response of a Depth 0 answer (small, so parsing it again is cheap).
fn report_missing(requested: &[(String, String)], xml: &[u8]) -> Option<Vec<u8>> {
    use xmltree::{Element, XMLNode};
    let mut root = Element::parse(xml).ok()?;
    let mut changed = false;
    for resp in root.children.iter_mut().filter_map(|c| c.as_mut_element()).filter(|e| e.name == "response") {
        let present: Vec<(String, String)> = resp
            .children
            .iter()
            .filter_map(|c| c.as_element())
            .filter(|e| e.name == "propstat")
            .flat_map(|ps| ps.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "prop"))
            .flat_map(|p| p.children.iter().filter_map(|c| c.as_element()))
            .map(|e| (e.namespace.clone().unwrap_or_default(), e.name.clone()))
            .collect();
        let missing: Vec<&(String, String)> = requested.iter().filter(|r| !present.contains(r)).collect();
        if missing.is_empty() {
            continue;
        }
        let dav = |name: &str| {
            let mut e = Element::new(name);
            e.prefix = Some("D".into());
            e.namespace = Some("DAV:".into());
            e
        };
        let mut prop = dav("prop");
        for (i, (ns, name)) in missing.into_iter().enumerate() {
            let mut e = Element::new(name);
            if ns == "DAV:" {
                e.prefix = Some("D".into());
                e.namespace = Some(ns.clone());
            } else if !ns.is_empty() {
                let pfx = format!("ns{i}");
                let mut n = xmltree::Namespace::empty();
                n.put(pfx.clone(), ns.clone());
                e.prefix = Some(pfx);
                e.namespace = Some(ns.clone());
                e.namespaces = Some(n);
            }
            prop.children.push(XMLNode::Element(e));
        }
        let mut status = dav("status");
        status.children.push(XMLNode::Text("HTTP/1.1 404 Not Found".into()));
        let mut ps = dav("propstat");
        ps.children.push(XMLNode::Element(prop));
        ps.children.push(XMLNode::Element(status));
        resp.children.push(XMLNode::Element(ps));
        changed = true;
    }
    if !changed {
        return None;
    }
    let mut out = Vec::new();
    root.write_with_config(&mut out, xmltree::EmitterConfig::new().perform_indent(false)).ok()?;
    Some(out)
}

/// Refuses what dav-server would take badly or that no client needs: control characters in
/// names (they break listings, logs and other clients), a Destination outside this server's
/// WebDAV space, oversized XML bodies.
fn check_request(req: &Request<RequestBody>, max_xml: u64) -> Result<(), Response<Body>> {
    let bad = |p: &str| percent_encoding::percent_decode_str(p).any(|b| b < 0x20 || b == 0x7f);
    let dots = |p: &str| {
        p.split('/').any(|s| {
            let s = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
            s == "." || s == ".."
        })
    };
    if bad(req.uri().path()) {
        return Err(simple_response(StatusCode::BAD_REQUEST, "names may not contain control characters\n"));
    }
    if dots(req.uri().path()) {
        return Err(simple_response(StatusCode::BAD_REQUEST, "paths may not contain `.` or `..` segments\n"));
    }
    if let Some(d) = req.headers().get("destination") {
        let Some(d) = d.to_str().ok().and_then(|d| d.parse::<http::Uri>().ok()) else {
            return Err(simple_response(StatusCode::BAD_REQUEST, "the Destination header is not a URL\n"));
        };
        if bad(d.path()) || dots(d.path()) {
            return Err(simple_response(StatusCode::BAD_REQUEST, "the Destination has control characters or `.` or `..` segments\n"));
        }
    }
    if matches!(req.method().as_str(), "COPY" | "MOVE")
        && let Some(dest) = req.headers().get("destination").and_then(|d| d.to_str().ok()?.parse::<http::Uri>().ok())
        && into_itself(req.uri().path(), dest.path())
    {
        // dav-server would copy a folder into itself until the names grow too long.
        return Err(simple_response(StatusCode::FORBIDDEN, "a folder cannot be copied or moved into itself\n"));
    }
    let xml_method = matches!(req.method().as_str(), "PROPFIND" | "PROPPATCH" | "LOCK");
    if xml_method
        && let Some(n) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && n > max_xml
    {
        return Err(simple_response(StatusCode::PAYLOAD_TOO_LARGE, "the XML body is too large\n"));
    }
    Ok(())
}

/// Whether `dest` lies strictly inside `src` (both request paths, compared decoded and
/// normalized).
fn into_itself(src: &str, dest: &str) -> bool {
    use dav_server::davpath::DavPath;
    let (Ok(s), Ok(d)) = (DavPath::new(src), DavPath::new(dest)) else { return false };
    let s = s
        .as_rel_ospath()
        .as_os_str()
        .as_encoded_bytes()
        .strip_suffix(b"/")
        .unwrap_or(s.as_rel_ospath().as_os_str().as_encoded_bytes())
        .to_vec();
    let d = d.as_rel_ospath().as_os_str().as_encoded_bytes().to_vec();
    d.len() > s.len() && d.starts_with(&s) && d[s.len()] == b'/'
}

fn finite_depth() -> Response<Body> {
    let mut r = Response::new(Body::full(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n",
    ));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    r
}

/// State-changing requests made with a session cookie must carry the session's CSRF token.
pub(crate) fn check_csrf<B>(req: &Request<B>, who: &Authenticated) -> Result<(), Response<Body>> {
    if servente_auth::web::csrf_ok(req.headers(), who) {
        Ok(())
    } else {
        Err(simple_response(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token header\n"))
    }
}

/// Whether a WebDAV lock held by someone else than `user` covers `path`.
pub(crate) async fn locked(path: &dav_server::davpath::DavPath, user: &str) -> bool {
    use dav_server::ls::DavLockSystem;
    locks().check(path, Some(user), false, false, &[]).await.is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_into_itself_is_seen_through_encodings() {
        assert!(into_itself("/f/dav/a", "/f/dav/a/b"));
        assert!(into_itself("/f/dav/a/", "/f/dav/%61/b/"));
        assert!(into_itself("/f/dav/a", "/f/dav/x/../a/b"));
        assert!(!into_itself("/f/dav/a", "/f/dav/ab"));
        assert!(!into_itself("/f/dav/a", "/f/dav/a"));
    }
}

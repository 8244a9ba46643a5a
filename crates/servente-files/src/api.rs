//! The web file manager's JSON API under `MOUNT/api/`. Browsing, folders, renames, moves and
//! deletes go over WebDAV from the page itself; this API adds what WebDAV lacks for a browser:
//! sign-in, the caller's folders and quota, resumable chunked uploads, folder downloads as
//! zip, and share links.
//!
//! Paths are WebDAV paths, decoded (`/users/alice/Photos/été.jpg`). Errors are JSON
//! `{"error": "one line"}` with the matching status.

use bytes::Bytes;
use dav_server::davpath::DavPath;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use servente_auth::web::{Authenticated, clear_session_cookie, session_cookie, set_session_cookie};
use servente_auth::{Actor, Principal};
use servente_core::RequestBody;
use servente_core::{Body, RequestCx};

use crate::FilesRole;
use crate::db::Share;
use crate::fs::{Kind, Node};
use crate::uploads::{ChunkError, UploadMeta};

pub(crate) type ApiResult = Result<Response<Body>, Response<Body>>;

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn problem(status: StatusCode, msg: impl std::fmt::Display) -> Response<Body> {
    json_response(status, &json!({ "error": msg.to_string() }))
}

/// Largest chunk of a resumable upload (the page sends 8 MiB).
const MAX_CHUNK: usize = 64 << 20;

pub async fn handle(role: &FilesRole, mount: &str, rest: &str, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
    match route(role, mount, rest, req, cx).await {
        Ok(r) | Err(r) => r,
    }
}

async fn route(role: &FilesRole, mount: &str, rest: &str, req: Request<RequestBody>, cx: &mut RequestCx) -> ApiResult {
    let seg: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    if let (&Method::POST, ["session"]) = (&method, seg.as_slice()) {
        return sign_in(role, req, cx).await;
    }
    let who = role.sign_in(&req, cx).await.map_err(|r| {
        // The page wants JSON, and no Basic dialog from the browser.
        let mut r2 = problem(r.status(), "sign in first");
        if let Some(v) = r.headers().get(header::RETRY_AFTER) {
            r2.headers_mut().insert(header::RETRY_AFTER, v.clone());
        }
        r2
    })?;
    if method != Method::GET && method != Method::HEAD {
        crate::check_csrf(&req, &who).map_err(|_| problem(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token header"))?;
    }
    let p = who.principal.clone();
    match (&method, seg.as_slice()) {
        (&Method::GET, ["session"]) => session_view(role, &who),
        (&Method::DELETE, ["session"]) => sign_out(role, &req, &p, cx).await,
        (&Method::GET, ["shares"]) => list_shares(role, mount, &p).await,
        (&Method::POST, ["shares"]) => create_share(role, mount, &p, req).await,
        (&Method::DELETE, ["shares", id]) => {
            let (st, owner, id) = (role.st.clone(), p.user.clone(), id.to_string());
            let gone = blocking(move || st.db.remove_share(&owner, &id)).await?;
            if gone { Ok(json_response(StatusCode::OK, &json!({}))) } else { Err(problem(StatusCode::NOT_FOUND, "no such share link")) }
        }
        (&Method::POST, ["uploads"]) => start_upload(role, &p, req).await,
        (&Method::GET, ["uploads", id]) => match role.uploads.get(&p.user, id) {
            Some((m, have)) => Ok(json_response(StatusCode::OK, &json!({ "path": m.path, "size": m.size, "offset": have }))),
            None => Err(problem(StatusCode::NOT_FOUND, "no such upload")),
        },
        (&Method::PATCH, ["uploads", id]) => {
            let id = id.to_string();
            upload_chunk(role, &p, &id, req).await
        }
        (&Method::DELETE, ["uploads", id]) => {
            let Some((meta, _)) = role.uploads.get(&p.user, id) else {
                return Err(problem(StatusCode::NOT_FOUND, "no such upload"));
            };
            if role.uploads.remove(id) {
                release_upload(role, &meta);
            }
            Ok(json_response(StatusCode::OK, &json!({})))
        }
        (&Method::GET | &Method::HEAD, ["zip"]) => {
            let path = query(&req, "path").ok_or_else(|| problem(StatusCode::BAD_REQUEST, "give ?path="))?;
            let (dav, node) = resolve(role, &p, &path)?;
            if matches!(node, Node::Root | Node::List(_)) {
                return Err(problem(StatusCode::FORBIDDEN, "download the folders one by one"));
            }
            let disk = role.st.disk_path(&dav);
            if !disk.exists() {
                return Err(problem(StatusCode::NOT_FOUND, "no such file or folder"));
            }
            let mut r = crate::share::zip_response(disk, &path);
            if method == Method::HEAD {
                *r.body_mut() = Body::empty();
            }
            Ok(r)
        }
        _ => Err(problem(StatusCode::NOT_FOUND, "no such API endpoint")),
    }
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, Response<Body>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!("{e}");
            Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "the file metadata store failed; see the server log"))
        }
        Err(_) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error")),
    }
}

pub(crate) fn query<B>(req: &Request<B>, key: &str) -> Option<String> {
    form_value(req.uri().query()?, key)
}

/// A value of a query string or urlencoded form, decoded; a key without `=` has the empty value.
pub(crate) fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).find(|(k, _)| *k == key).map(|(_, v)| {
        let v = v.replace('+', " ");
        percent_encoding::percent_decode_str(&v).decode_utf8_lossy().into_owned()
    })
}

/// A decoded path made a WebDAV path (each segment percent-encoded).
pub(crate) fn dav_path(path: &str) -> Result<DavPath, Response<Body>> {
    if !path.starts_with('/') || path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(problem(StatusCode::BAD_REQUEST, "a path starts with `/` and has no control characters"));
    }
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    let enc = percent_encoding::utf8_percent_encode(path, SEGMENT).to_string();
    DavPath::new(&enc).map_err(|_| problem(StatusCode::BAD_REQUEST, "not a valid path"))
}

fn resolve(role: &FilesRole, p: &Principal, path: &str) -> Result<(DavPath, Node), Response<Body>> {
    let dav = dav_path(path)?;
    let node = role.st.resolve(&dav, p).map_err(|_| problem(StatusCode::NOT_FOUND, "no such file or folder"))?;
    Ok((dav, node))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<RequestBody>) -> Result<T, Response<Body>> {
    let body = http_body_util::Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|e| match servente_core::request_body::timed_out_in(&*e) {
            true => servente_core::request_body::body_failed(true),
            false => problem(StatusCode::PAYLOAD_TOO_LARGE, "the JSON body is too large or was cut off"),
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| problem(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

fn areas_json(role: &FilesRole, p: &Principal) -> Value {
    let mut v = Vec::new();
    for kind in [Kind::Users, Kind::Groups, Kind::Shared] {
        for name in role.st.areas(p, kind) {
            let write = role.st.access(p, kind, &name).unwrap_or(false);
            let label = if kind == Kind::Users { "Home".to_string() } else { name.clone() };
            v.push(json!({ "path": format!("/{}/{}/", kind.dir(), name), "name": label, "kind": kind.dir(), "write": write }));
        }
    }
    Value::Array(v)
}

fn session_json(role: &FilesRole, p: &Principal, csrf: &str) -> Value {
    json!({
        "user": p.user,
        "groups": p.groups,
        "csrf": csrf,
        "home": format!("/users/{}/", p.user),
        "areas": areas_json(role, p),
        "quota": { "used": role.st.used(&p.user), "limit": role.st.quota(&p.user) },
    })
}

fn session_view(role: &FilesRole, who: &Authenticated) -> ApiResult {
    let csrf = who.session.as_ref().map(|s| s.csrf.as_str()).unwrap_or("");
    Ok(json_response(StatusCode::OK, &session_json(role, &who.principal, csrf)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    user: String,
    password: String,
}

async fn sign_in(role: &FilesRole, req: Request<RequestBody>, cx: &mut RequestCx) -> ApiResult {
    let Some(dir) = role.directory.clone() else {
        return Err(problem(StatusCode::SERVICE_UNAVAILABLE, "sign-in is unavailable: the user directory is not open"));
    };
    let body: SignInBody = read_json(req).await?;
    let client = FilesRole::client(cx);
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        let p = d.login(&body.user, &body.password, &client)?;
        let (cookie, session) = d.create_session(&p)?;
        Ok::<_, servente_auth::AuthError>((p, cookie, session))
    })
    .await
    .map_err(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    let (p, cookie, session) = match out {
        Ok(v) => v,
        Err(servente_auth::AuthError::Throttled(left)) => {
            let mut r = problem(StatusCode::TOO_MANY_REQUESTS, "too many failed sign-ins; try again later");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(left.as_secs()));
            return Err(r);
        }
        Err(servente_auth::AuthError::Store(e)) => {
            tracing::error!("sign-in failed: {e}");
            return Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "sign-in is unavailable"));
        }
        Err(_) => return Err(problem(StatusCode::UNAUTHORIZED, "wrong user name or password")),
    };
    cx.user = Some(p.user.clone());
    let mut r = json_response(StatusCode::OK, &session_json(role, &p, &session.csrf));
    if let Some(c) = set_session_cookie(&cookie, dir.settings().session_ttl.as_secs(), cx.tls) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(r)
}

async fn sign_out(role: &FilesRole, req: &Request<RequestBody>, p: &Principal, cx: &RequestCx) -> ApiResult {
    if let (Some(dir), Some(cookie)) = (role.directory.clone(), session_cookie(req.headers()).map(str::to_string)) {
        let actor = Actor { name: p.user.clone(), client: FilesRole::client(cx).label() };
        let _ = tokio::task::spawn_blocking(move || dir.end_session(&cookie, &actor)).await;
    }
    let mut r = json_response(StatusCode::OK, &json!({}));
    r.headers_mut().insert(header::SET_COOKIE, clear_session_cookie(cx.tls));
    Ok(r)
}

fn share_json(mount: &str, s: &Share) -> Value {
    json!({
        "id": s.id,
        "url": format!("{mount}s/{}", s.id),
        "path": format!("/{}", s.path),
        "is_dir": s.is_dir,
        "created": s.created,
        "expires": s.expires,
        "password": s.password_hash.is_some(),
    })
}

async fn list_shares(role: &FilesRole, mount: &str, p: &Principal) -> ApiResult {
    let (st, owner) = (role.st.clone(), p.user.clone());
    let list = blocking(move || st.db.shares_of(&owner)).await?;
    Ok(json_response(StatusCode::OK, &Value::Array(list.iter().map(|s| share_json(mount, s)).collect())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewShare {
    path: String,
    /// Seconds from now.
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    password: Option<String>,
}

async fn create_share(role: &FilesRole, mount: &str, p: &Principal, req: Request<RequestBody>) -> ApiResult {
    let body: NewShare = read_json(req).await?;
    let (dav, node) = resolve(role, p, &body.path)?;
    match node {
        Node::Area { write: true, .. } => {}
        // A reader of a shared folder could otherwise publish what its writers keep inside.
        Node::Area { write: false, .. } => {
            return Err(problem(StatusCode::FORBIDDEN, "this folder is read-only for you: only those who may change it can share it"));
        }
        _ => return Err(problem(StatusCode::BAD_REQUEST, "share a file or a folder inside your folders")),
    }
    let disk = role.st.disk_path(&dav);
    let meta = std::fs::metadata(&disk).map_err(|_| problem(StatusCode::NOT_FOUND, "no such file or folder"))?;
    let password = body.password.filter(|p| !p.is_empty());
    let hash = match password {
        Some(pw) => Some(
            tokio::task::spawn_blocking(move || servente_auth::secret::hash_password(&pw))
                .await
                .map_err(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?
                .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e))?,
        ),
        None => None,
    };
    let now = servente_auth::unix_now();
    let r: [u8; 16] = servente_auth::secret::random_bytes();
    let share = Share {
        id: r.iter().map(|b| format!("{b:02x}")).collect(),
        owner: p.user.clone(),
        path: String::from_utf8_lossy(&crate::fs::key(&dav)).into_owned(),
        is_dir: meta.is_dir(),
        created: now,
        expires: body.expires_in.map(|s| now.saturating_add(s.min(100 * 365 * 86400) as i64)),
        password_hash: hash,
    };
    let st = role.st.clone();
    let s2 = share.clone();
    blocking(move || st.db.add_share(&s2)).await?;
    tracing::info!(target: "audit", user = %p.user, path = %share.path, "share link created");
    Ok(json_response(StatusCode::CREATED, &share_json(mount, &share)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUpload {
    path: String,
    size: u64,
}

async fn start_upload(role: &FilesRole, p: &Principal, req: Request<RequestBody>) -> ApiResult {
    let body: NewUpload = read_json(req).await?;
    // Abandoned uploads give their room back before a new one asks for it.
    let uploads = role.uploads.clone();
    for gone in blocking(move || Ok(uploads.sweep_stale())).await? {
        release_upload(role, &gone);
    }
    let (dav, node) = resolve(role, p, &body.path)?;
    let old = check_target(role, &dav, &node, body.size)?;
    // The whole announced size is held against the quota from the start, as a WebDAV PUT
    // holds its Content-Length: two uploads that fit only one at a time cannot both begin,
    // and nobody finds the home full after sending gigabytes.
    let (mut reserved, mut home) = (0, None);
    if let Node::Area { kind: Kind::Users, name, .. } = &node
        && let Some(q) = role.st.quota(name)
    {
        reserved = body.size.saturating_sub(old);
        if !role.st.try_reserve(name, reserved, q) {
            return Err(problem(StatusCode::INSUFFICIENT_STORAGE, "this file does not fit in your quota beside your other uploads"));
        }
        home = Some(name.clone());
    }
    let meta = UploadMeta { owner: p.user.clone(), path: body.path, size: body.size, reserved, home };
    let id = match role.uploads.create(&meta) {
        Ok(id) => id,
        Err(e) => {
            release_upload(role, &meta);
            return Err(problem(StatusCode::INSUFFICIENT_STORAGE, e));
        }
    };
    if body.size == 0 {
        return finish_upload(role, p, &id, &meta).await;
    }
    Ok(json_response(StatusCode::CREATED, &json!({ "id": id, "offset": 0, "size": meta.size })))
}

/// Gives back an upload's room in the quota (it finished, failed to start or was cancelled).
fn release_upload(role: &FilesRole, meta: &UploadMeta) {
    if let Some(home) = &meta.home {
        role.st.release(home, meta.reserved);
    }
}

/// May a file of `size` bytes be written at `dav`? The size of the file it replaces, if any.
fn check_target(role: &FilesRole, dav: &DavPath, node: &Node, size: u64) -> Result<u64, Response<Body>> {
    match node {
        Node::Area { write: true, depth, .. } if *depth >= 1 => {}
        Node::Area { write: false, .. } => return Err(problem(StatusCode::FORBIDDEN, "this folder is read-only for you")),
        _ => return Err(problem(StatusCode::FORBIDDEN, "files go inside a folder")),
    }
    let disk = role.st.disk_path(dav);
    if !disk.parent().is_some_and(|d| d.is_dir()) {
        return Err(problem(StatusCode::CONFLICT, "the folder does not exist"));
    }
    let old = match std::fs::symlink_metadata(&disk) {
        Ok(m) if m.is_dir() => return Err(problem(StatusCode::CONFLICT, "a folder of that name exists")),
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if let Node::Area { kind: Kind::Users, name, .. } = node
        && let Some(q) = role.st.quota(name)
        && role.st.used(name).saturating_sub(old) + size > q
    {
        return Err(problem(StatusCode::INSUFFICIENT_STORAGE, "this file does not fit in your quota"));
    }
    Ok(old)
}

async fn upload_chunk(role: &FilesRole, p: &Principal, id: &str, req: Request<RequestBody>) -> ApiResult {
    let offset = req
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .ok_or_else(|| problem(StatusCode::BAD_REQUEST, "give the chunk's offset in Upload-Offset"))?;
    let Some((meta, _)) = role.uploads.get(&p.user, id) else { return Err(problem(StatusCode::NOT_FOUND, "no such upload")) };
    let body = http_body_util::Limited::new(req.into_body(), MAX_CHUNK)
        .collect()
        .await
        .map_err(|e| match servente_core::request_body::timed_out_in(&*e) {
            true => servente_core::request_body::body_failed(true),
            false => problem(StatusCode::BAD_REQUEST, "the chunk was cut off or is larger than 64 MiB"),
        })?
        .to_bytes();
    let (uploads, owner, id2) = (role.uploads.clone(), p.user.clone(), id.to_string());
    let chunk: Bytes = body;
    let have = tokio::task::spawn_blocking(move || uploads.append(&owner, &id2, offset, &chunk))
        .await
        .map_err(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    match have {
        Ok(n) if n == meta.size => finish_upload(role, p, id, &meta).await,
        Ok(n) => Ok(json_response(StatusCode::OK, &json!({ "id": id, "offset": n, "size": meta.size }))),
        Err(ChunkError::Offset(at)) => {
            Err(json_response(StatusCode::CONFLICT, &json!({ "error": "the chunk does not start where the upload stands", "offset": at })))
        }
        Err(ChunkError::TooLong) => Err(problem(StatusCode::BAD_REQUEST, "the chunk goes past the announced size")),
        Err(ChunkError::NotFound) => Err(problem(StatusCode::NOT_FOUND, "no such upload")),
        Err(ChunkError::Io(e)) => {
            tracing::error!("upload {id}: {e}");
            Err(problem(StatusCode::INSUFFICIENT_STORAGE, "the chunk could not be stored (disk full?)"))
        }
    }
}

/// Moves a complete upload to its place (checks again: the folder may have changed meanwhile).
async fn finish_upload(role: &FilesRole, p: &Principal, id: &str, meta: &UploadMeta) -> ApiResult {
    let (dav, node) = resolve(role, p, &meta.path)?;
    let disk = role.st.disk_path(&dav);
    let old = std::fs::symlink_metadata(&disk).map(|m| m.len()).unwrap_or(0);
    check_target(role, &dav, &node, meta.size)?;
    if crate::locked(&dav, &p.user).await {
        return Err(problem(StatusCode::LOCKED, "the file is locked by a WebDAV client"));
    }
    let part = role.uploads.part_path(id).ok_or_else(|| problem(StatusCode::NOT_FOUND, "no such upload"))?;
    let d2 = disk.clone();
    blocking(move || {
        crate::fs::replace_durably(&part, &d2).map_err(|e| format!("cannot move the upload into place: {e}"))?;
        Ok(())
    })
    .await?;
    if role.uploads.remove(id) {
        release_upload(role, meta);
    }
    if let Node::Area { kind: Kind::Users, name, .. } = &node {
        role.st.add_usage(name, meta.size as i64 - old as i64);
    }
    Ok(json_response(StatusCode::CREATED, &json!({ "id": id, "offset": meta.size, "size": meta.size, "done": true })))
}

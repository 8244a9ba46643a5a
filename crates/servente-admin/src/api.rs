//! The JSON admin API (`/api/...`): routing, authentication and CSRF checks, JSON in and out,
//! and the mapping of directory errors to statuses. `docs/admin-api.md` is the overview and
//! `openapi.json` (served at `/api/openapi.json`) the full description.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use servente_auth::web::{Authenticated, authenticate, clear_session_cookie, credentials, session_cookie, set_session_cookie};
use servente_auth::{Actor, AuthError, Client, DirError, NewUser, Principal, StoreError, UserPatch};
use servente_core::RequestBody;
use servente_core::{Body, RequestCx};
use tokio::sync::oneshot;

use crate::{Admin, ControlRequest};

const OPENAPI: &str = include_str!("openapi.json");
/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// An answer that is not the happy path: status, one clear line, and maybe a list of problems.
pub struct Problem {
    status: StatusCode,
    message: String,
    problems: Vec<String>,
    retry_after: Option<Duration>,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Problem { status, message: message.into(), problems: Vec::new(), retry_after: None }
    }
}

impl From<DirError> for Problem {
    fn from(e: DirError) -> Self {
        match e {
            DirError::Invalid(m) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            DirError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Conflict(_) => Problem::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Backend(_) => {
                tracing::error!("admin API: {e}");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the user directory failed; see the server log")
            }
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Throttled(left) => Problem { retry_after: Some(left), ..Problem::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()) },
            AuthError::Store(s) => s.into(),
            AuthError::BasicNeedsTls | AuthError::Scope => Problem::new(StatusCode::FORBIDDEN, e.to_string()),
            _ => Problem::new(StatusCode::UNAUTHORIZED, e.to_string()),
        }
    }
}

type ApiResult = Result<Response<Body>, Problem>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(json_response(StatusCode::OK, &serde_json::to_value(value).unwrap_or(Value::Null)))
}

fn created(value: Value) -> ApiResult {
    Ok(json_response(StatusCode::CREATED, &value))
}

fn no_content() -> ApiResult {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

fn problem_response(p: Problem) -> Response<Body> {
    let mut v = json!({ "error": p.message });
    if !p.problems.is_empty() {
        v["problems"] = json!(p.problems);
    }
    let mut r = json_response(p.status, &v);
    if p.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"servente\""));
    }
    if let Some(left) = p.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(left.as_secs().max(1)));
    }
    r
}

/// Runs directory work on the blocking pool (SQLite and password hashing block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Problem> + Send + 'static) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}"))))
}

/// Reads a JSON body: 415 unless it says it is JSON, 413 past 64 KiB, 400 for bad syntax,
/// 422 for well-formed JSON with wrong or unknown fields.
async fn read_json<T: DeserializeOwned>(req: Request<RequestBody>) -> Result<T, Problem> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"));
    }
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 64 KiB"));
        }
        Err(e) if servente_core::request_body::timed_out_in(&*e) => {
            return Err(Problem::new(StatusCode::REQUEST_TIMEOUT, "the body stopped coming (limits.body_read_timeout)"));
        }
        Err(e) => return Err(Problem::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        Problem::new(status, format!("invalid JSON: {e}"))
    })
}

fn client(cx: &RequestCx) -> Client {
    Client { ip: cx.peer.map(|p| p.ip()), tls: cx.tls }
}

/// Answers one `/api/...` request.
pub async fn handle(admin: &Admin, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
    match route(admin, req, cx).await {
        Ok(r) => r,
        Err(p) => problem_response(p),
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches("/api").split('/').filter(|s| !s.is_empty()).collect()
}

async fn route(admin: &Admin, req: Request<RequestBody>, cx: &mut RequestCx) -> ApiResult {
    let path = req.uri().path().to_string();
    let seg = segments(&path);
    let method = req.method().clone();
    match (&method, seg.as_slice()) {
        (&Method::GET, ["openapi.json"]) => {
            let mut r = Response::new(Body::full(OPENAPI));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(r);
        }
        (&Method::POST, ["session"]) => return sign_in(admin, req, cx).await,
        _ => {}
    }
    let who = authenticated(admin, &req, cx).await?;
    cx.user = Some(who.principal.user.clone());
    if !matches!(method, Method::GET | Method::HEAD) {
        check_csrf(&req, &who)?;
    }
    let actor = Actor { name: who.principal.user.clone(), client: client(cx).label() };
    if let ["session"] = seg.as_slice() {
        return match method {
            Method::GET => session_view(admin, &who),
            Method::DELETE => sign_out(admin, &req, &actor, cx.tls).await,
            _ => Err(not_allowed()),
        };
    }
    require_admin(&who.principal, &method)?;
    let dir = admin.shared.directory.clone();
    match (method, seg.as_slice()) {
        (Method::GET, ["users"]) => ok(blocking(move || Ok(dir.store().users()?)).await?),
        (Method::POST, ["users"]) => {
            let body: NewUserBody = read_json(req).await?;
            let (user, password) = blocking(move || {
                Ok(dir.add_user(
                    &actor,
                    NewUser {
                        name: body.name,
                        display_name: body.display_name.unwrap_or_default(),
                        email: body.email.unwrap_or_default(),
                        groups: body.groups.unwrap_or_default(),
                        password: body.password.filter(|p| !p.is_empty()),
                    },
                )?)
            })
            .await?;
            let mut v = serde_json::to_value(user).unwrap_or(Value::Null);
            if let Some(p) = password {
                v["password"] = json!(p);
            }
            created(v)
        }
        (Method::GET, ["users", name]) => {
            let name = name.to_string();
            let user = blocking(move || Ok(dir.store().user(&name)?)).await?;
            match user {
                Some(rec) => ok(rec.user),
                None => Err(Problem::new(StatusCode::NOT_FOUND, "no such user")),
            }
        }
        (Method::PATCH, ["users", name]) => {
            let name = name.to_string();
            let body: PatchUserBody = read_json(req).await?;
            let patch = UserPatch { display_name: body.display_name, email: body.email, disabled: body.disabled };
            if patch.disabled == Some(true) && name == actor.name {
                return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "you cannot disable your own account"));
            }
            ok(blocking(move || Ok(dir.update_user(&actor, &name, patch)?)).await?)
        }
        (Method::PUT, ["users", name, "password"]) => {
            let name = name.to_string();
            let body: PasswordBody = read_json(req).await?;
            let generated = blocking(move || Ok(dir.set_password(&actor, &name, body.password.filter(|p| !p.is_empty()))?)).await?;
            ok(match generated {
                Some(p) => json!({ "password": p }),
                None => json!({}),
            })
        }
        (Method::DELETE, ["users", name]) => {
            let name = name.to_string();
            if name == actor.name {
                return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "you cannot delete your own account"));
            }
            blocking(move || Ok(dir.remove_user(&actor, &name)?)).await?;
            no_content()
        }
        (Method::GET, ["groups"]) => ok(blocking(move || Ok(dir.store().groups()?)).await?),
        (Method::POST, ["groups"]) => {
            let body: NewGroupBody = read_json(req).await?;
            let g = blocking(move || Ok(dir.add_group(&actor, &body.name, &body.description.unwrap_or_default())?)).await?;
            created(serde_json::to_value(g).unwrap_or(Value::Null))
        }
        (Method::DELETE, ["groups", name]) => {
            let name = name.to_string();
            blocking(move || Ok(dir.remove_group(&actor, &name)?)).await?;
            no_content()
        }
        (Method::PUT, ["groups", group, "members", user]) => {
            let (group, user) = (group.to_string(), user.to_string());
            blocking(move || Ok(dir.add_member(&actor, &group, &user)?)).await?;
            no_content()
        }
        (Method::DELETE, ["groups", group, "members", user]) => {
            let (group, user) = (group.to_string(), user.to_string());
            blocking(move || Ok(dir.remove_member(&actor, &group, &user)?)).await?;
            no_content()
        }
        (Method::GET, ["tokens"]) => ok(blocking(move || Ok(dir.store().tokens(None)?)).await?),
        (Method::POST, ["tokens"]) => {
            let body: NewTokenBody = read_json(req).await?;
            let user = body.user.unwrap_or_else(|| actor.name.clone());
            let expires = match body.expires_in_days {
                None => None,
                Some(d @ 1..=3650) => Some(Duration::from_secs(d * 86_400)),
                Some(_) => return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "expires_in_days must be between 1 and 3650")),
            };
            let (token, secret) = blocking(move || Ok(dir.create_token(&actor, &user, &body.name, &body.scopes, expires)?)).await?;
            let mut v = serde_json::to_value(token).unwrap_or(Value::Null);
            v["secret"] = json!(secret);
            created(v)
        }
        (Method::DELETE, ["tokens", id]) => {
            let id = id.to_string();
            blocking(move || Ok(dir.revoke_token(&actor, &id)?)).await?;
            no_content()
        }
        (Method::GET, ["status"]) => ok(status(admin)),
        (Method::GET, ["sites"]) => ok(&admin.sites),
        (Method::GET, ["config"]) => ok(&admin.config),
        (Method::POST, ["config", "validate"]) => {
            let body: ConfigBody = read_json(req).await?;
            control(admin, |reply| ControlRequest::Validate { text: body.text, reply }).await?;
            ok(json!({ "ok": true }))
        }
        (Method::POST, ["config", "apply"]) => {
            let body: ConfigBody = read_json(req).await?;
            let persisted = control(admin, |reply| ControlRequest::Apply { text: body.text, reply }).await?;
            let d = admin.shared.directory.clone();
            let detail = if persisted { "applied and saved" } else { "applied (not saved: no config file)" };
            blocking(move || {
                d.audit(&actor, "config.apply", "config", "ok", detail);
                Ok(())
            })
            .await?;
            ok(json!({ "ok": true, "persisted": persisted }))
        }
        (Method::GET, ["apps"]) => ok(admin.shared.apps.apps().iter().map(|a| app_json(a)).collect::<Vec<_>>()),
        (Method::GET, ["apps", name]) => match admin.shared.apps.app(name) {
            Some(a) => ok(app_json(&a)),
            None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no app named `{name}`"))),
        },
        (Method::GET, ["apps", name, "logs"]) => match admin.shared.apps.app(name) {
            Some(a) => {
                let lines = query_param(&req, "lines").and_then(|v| v.parse().ok()).unwrap_or(100usize).min(500);
                ok(a.logs(lines))
            }
            None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no app named `{name}`"))),
        },
        (Method::POST, ["apps", name, "restart"]) => {
            let Some(a) = admin.shared.apps.app(name) else {
                return Err(Problem::new(StatusCode::NOT_FOUND, format!("no app named `{name}`")));
            };
            let result = a.restart().await;
            let d = admin.shared.directory.clone();
            let target = name.to_string();
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            let detail = result.as_ref().err().cloned().unwrap_or_default();
            blocking(move || {
                d.audit(&actor, "app.restart", &target, outcome, &detail);
                Ok(())
            })
            .await?;
            match result {
                Ok(()) => ok(app_json(&a)),
                Err(e) => Err(Problem::new(StatusCode::CONFLICT, e)),
            }
        }
        (Method::GET, ["log"]) => {
            let after = query_param(&req, "after").and_then(|v| v.parse().ok()).unwrap_or(0);
            ok(servente_core::logging::recent(after))
        }
        (Method::GET, ["audit"]) => {
            let limit = query_param(&req, "limit").and_then(|v| v.parse::<u32>().ok()).unwrap_or(200).clamp(1, 1000);
            ok(blocking(move || Ok(dir.store().audit_recent(limit)?)).await?)
        }
        (_, ["users" | "groups" | "tokens" | "status" | "sites" | "config" | "log" | "audit" | "apps", ..]) => {
            Err(not_allowed_or_missing(&seg))
        }
        _ => Err(Problem::new(StatusCode::NOT_FOUND, format!("no such API endpoint: {path}"))),
    }
}

fn not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

fn not_allowed_or_missing(seg: &[&str]) -> Problem {
    // `/api/users/x` exists for GET, PATCH, DELETE; deeper unknown paths are 404.
    match seg.len() {
        1 | 2 => not_allowed(),
        _ => Problem::new(StatusCode::NOT_FOUND, "no such API endpoint"),
    }
}

/// The value of `key` in a query string.
fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The value of `key` in the request's query string.
fn query_param<'a, B>(req: &'a Request<B>, key: &str) -> Option<&'a str> {
    query(req.uri().query().unwrap_or(""), key)
}

async fn control<T>(admin: &Admin, make: impl FnOnce(oneshot::Sender<Result<T, Vec<String>>>) -> ControlRequest) -> Result<T, Problem> {
    let (tx, rx) = oneshot::channel();
    if admin.shared.control.send(make(tx)).await.is_err() {
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(problems)) => Err(Problem {
            problems,
            ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "the config is invalid; the running config is unchanged")
        }),
        Err(_) => Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down")),
    }
}

async fn authenticated(admin: &Admin, req: &Request<RequestBody>, cx: &RequestCx) -> Result<Authenticated, Problem> {
    let creds = credentials(req.headers());
    match authenticate(&admin.shared.directory, creds, &client(cx), admin.basic_over_plain_http).await? {
        Some(a) => Ok(a),
        None => Err(Problem::new(StatusCode::UNAUTHORIZED, "sign in first")),
    }
}

/// State-changing requests made with a session cookie must carry the session's CSRF token
/// (a page of another site can make the browser send the cookie, but cannot read the token).
fn check_csrf(req: &Request<RequestBody>, who: &Authenticated) -> Result<(), Problem> {
    if servente_auth::web::csrf_ok(req.headers(), who) {
        Ok(())
    } else {
        Err(Problem::new(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token header"))
    }
}

fn require_admin(p: &Principal, method: &Method) -> Result<(), Problem> {
    if !p.is_admin() {
        return Err(Problem::new(StatusCode::FORBIDDEN, "only members of the `admins` group may use the admin API"));
    }
    let read_only = matches!(*method, Method::GET | Method::HEAD);
    if p.has_scope("admin") || (read_only && p.has_scope("admin:read")) { Ok(()) } else { Err(AuthError::Scope.into()) }
}

fn session_json(p: &Principal, display_name: &str, csrf: &str, expires: i64) -> Value {
    json!({ "user": p.user, "display_name": display_name, "groups": p.groups, "csrf": csrf, "expires": expires })
}

fn session_view(admin: &Admin, who: &Authenticated) -> ApiResult {
    let Some(s) = &who.session else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "this request is not part of a browser session"));
    };
    let display = admin.shared.directory.store().user(&who.principal.user)?.map(|r| r.user.display_name).unwrap_or_default();
    ok(session_json(&who.principal, &display, &s.csrf, s.expires))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    user: String,
    password: String,
}

async fn sign_in(admin: &Admin, req: Request<RequestBody>, cx: &mut RequestCx) -> ApiResult {
    let body: SignInBody = read_json(req).await?;
    let dir = admin.shared.directory.clone();
    let client = client(cx);
    let (p, display, cookie, session) = blocking(move || {
        let p = dir.login(&body.user, &body.password, &client)?;
        let display = dir.store().user(&p.user)?.map(|r| r.user.display_name).unwrap_or_default();
        let (cookie, session) = dir.create_session(&p)?;
        Ok((p, display, cookie, session))
    })
    .await?;
    cx.user = Some(p.user.clone());
    let mut r = json_response(StatusCode::OK, &session_json(&p, &display, &session.csrf, session.expires));
    let ttl = admin.shared.directory.settings().session_ttl.as_secs();
    if let Some(c) = set_session_cookie(&cookie, ttl, cx.tls) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(r)
}

async fn sign_out(admin: &Admin, req: &Request<RequestBody>, actor: &Actor, tls: bool) -> ApiResult {
    if let Some(cookie) = session_cookie(req.headers()).map(str::to_string) {
        let dir = admin.shared.directory.clone();
        let actor = actor.clone();
        blocking(move || Ok(dir.end_session(&cookie, &actor)?)).await?;
    }
    let mut r = no_content()?;
    r.headers_mut().insert(header::SET_COOKIE, clear_session_cookie(tls));
    Ok(r)
}

fn status(admin: &Admin) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &admin.shared.metrics;
    let mut total_requests = 0u64;
    let mut total_bytes = 0u64;
    let mut classes = [0u64; 5];
    let sites: Vec<Value> = m
        .sites()
        .iter()
        .map(|s| {
            let (bytes, c) = s.totals();
            let requests: u64 = c.iter().sum();
            total_requests += requests;
            total_bytes += bytes;
            for (t, x) in classes.iter_mut().zip(c) {
                *t += x;
            }
            json!({ "name": s.name(), "requests": requests, "bytes": bytes, "responses": class_json(&c) })
        })
        .collect();
    let started = admin.shared.started.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started": started,
        "uptime_seconds": admin.shared.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "connections_open": m.connections_open.load(Relaxed),
        "connections_total": m.connections_total.load(Relaxed),
        "tls_handshakes": m.tls_handshakes.load(Relaxed),
        "tls_handshake_failures": m.tls_handshake_failures.load(Relaxed),
        "requests_total": total_requests,
        "bytes_total": total_bytes,
        "responses": class_json(&classes),
        "sites": sites,
    })
}

fn app_json(a: &servente_apps::supervisor::AppRuntime) -> Value {
    let (status, message, instances) = a.status();
    let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "name": a.name,
        "status": status.as_str(),
        "message": message,
        "instances": instances.iter().map(|i| json!({
            "id": i.id,
            "pid": i.pid,
            "address": i.address,
            "ready": i.ready,
            "started": unix(i.started),
            "restarts": i.restarts,
        })).collect::<Vec<_>>(),
    })
}

fn class_json(c: &[u64; 5]) -> Value {
    json!({ "2xx": c[1], "3xx": c[2], "4xx": c[3], "5xx": c[4] })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    name: String,
    password: Option<String>,
    display_name: Option<String>,
    email: Option<String>,
    groups: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUserBody {
    display_name: Option<String>,
    email: Option<String>,
    disabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroupBody {
    name: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    user: Option<String>,
    name: String,
    scopes: Vec<String>,
    expires_in_days: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_segments() {
        assert_eq!(segments("/api/users/alice/password"), vec!["users", "alice", "password"]);
        assert_eq!(segments("/api/"), Vec::<&str>::new());
        assert_eq!(query("after=5&x=1", "after"), Some("5"));
        assert_eq!(query("x=1", "after"), None);
    }

    #[test]
    fn the_openapi_document_is_json_and_lists_the_endpoints() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
        for p in ["/api/session", "/api/users", "/api/users/{name}", "/api/tokens", "/api/status", "/api/config/apply", "/api/log"] {
            assert!(doc["paths"][p].is_object(), "{p} is not described");
        }
    }
}

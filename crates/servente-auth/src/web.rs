//! Signing in over HTTP: credentials from request headers (Basic, Bearer, session cookie), the
//! session cookie itself, and [`authenticate`], which every HTTP role calls.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};

use crate::{AuthError, Client, Directory, Principal, Session};

pub const SESSION_COOKIE: &str = "servente_session";

/// What a request offers to prove who it comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    Cookie(String),
    /// An Authorization header servente cannot read.
    Malformed,
}

/// The credentials of a request: the Authorization header if any, else the session cookie.
pub fn credentials(headers: &HeaderMap) -> Credentials {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let Ok(v) = v.to_str() else { return Credentials::Malformed };
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Credentials::Bearer(rest.to_string());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok().and_then(|b| String::from_utf8(b).ok());
            if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                return Credentials::Basic { user: user.to_string(), password: password.to_string() };
            }
        }
        return Credentials::Malformed;
    }
    match session_cookie(headers) {
        Some(c) => Credentials::Cookie(c.to_string()),
        None => Credentials::None,
    }
}

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
    })
}

/// `Set-Cookie` for a new session: not readable by scripts, sent only to this site, and only
/// over TLS when the session started over TLS.
pub fn set_session_cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")).ok()
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static("servente_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure")
    } else {
        HeaderValue::from_static("servente_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
    }
}

/// Who a request is from, and the session it used, if any.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub session: Option<Session>,
}

/// Checks the request's credentials against the directory, off the async threads (password
/// hashing takes tens of milliseconds). `Ok(None)`: the request carries none.
/// `basic_over_plain`: accept Basic on plain HTTP from non-loopback clients.
pub async fn authenticate(
    dir: &Arc<Directory>,
    creds: Credentials,
    client: &Client,
    basic_over_plain: bool,
) -> Result<Option<Authenticated>, AuthError> {
    if let Credentials::Basic { .. } = creds
        && !client.tls
        && !client.is_local()
        && !basic_over_plain
    {
        return Err(AuthError::BasicNeedsTls);
    }
    if creds == Credentials::None {
        return Ok(None);
    }
    // A client sending the same credentials again (a WebDAV client, a page loading its parts)
    // is let in from memory, on the connection's own thread, while the directory is unchanged.
    if let Some(who) = dir.recent(&creds) {
        return Ok(Some(who));
    }
    // The same credentials being checked for another request: that check's result, once done.
    let turn = dir.check_turn(&creds).await;
    if turn.is_some()
        && let Some(who) = dir.recent(&creds)
    {
        return Ok(Some(who));
    }
    let dir = dir.clone();
    let client = client.clone();
    let run = move || {
        let check = || -> Result<Option<Authenticated>, AuthError> {
            Ok(Some(match &creds {
                Credentials::None => return Ok(None),
                Credentials::Malformed => return Err(AuthError::BadCredentials),
                Credentials::Basic { user, password } => {
                    Authenticated { principal: dir.verify_basic(user, password, &client)?, session: None }
                }
                Credentials::Bearer(t) => Authenticated { principal: dir.authenticate_token(t)?, session: None },
                Credentials::Cookie(c) => {
                    let (principal, session) = dir.session(c)?;
                    Authenticated { principal, session: Some(session) }
                }
            }))
        };
        // The stamp is read before the check, so a change made meanwhile is not hidden. A check
        // may write itself (a password sign-in's audit entry, a token's last use): then it runs
        // again, now reading only, and the sign-in is kept only if nothing changed during that.
        let stamp = dir.change_stamp();
        let Some(mut who) = check()? else { return Ok(None) };
        let mut keep = stamp;
        let after = dir.change_stamp();
        if stamp.is_some() && after != stamp {
            keep = after;
            who = check()?.ok_or(AuthError::BadCredentials)?;
            if dir.change_stamp() != keep {
                return Ok(Some(who));
            }
        }
        dir.remember(&creds, &who, keep);
        Ok(Some(who))
    };
    // `turn` is held until the check's result is remembered, and released on return.
    tokio::task::spawn_blocking(run)
        .await
        .unwrap_or_else(|e| Err(AuthError::Store(crate::StoreError::Backend(format!("the sign-in check failed: {e}")))))
}

/// Why a request to a protected resource is not let in, in HTTP terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: http::StatusCode,
    pub message: &'static str,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// Answer with a Basic challenge (401 where Basic is accepted), so browsers and WebDAV
    /// clients ask for a password.
    pub challenge: bool,
}

/// Signs a request in for a role's user-facing resources: it must carry credentials, and a
/// token must have the `user` scope. The refusal says what to answer.
pub async fn sign_in_user(
    dir: &Arc<Directory>,
    headers: &HeaderMap,
    client: &Client,
    basic_over_plain: bool,
) -> Result<Authenticated, Refusal> {
    use http::StatusCode as S;
    let basic_ok = client.tls || client.is_local() || basic_over_plain;
    let refuse = |status, message, challenge| Refusal { status, message, retry_after: None, challenge: challenge && basic_ok };
    match authenticate(dir, credentials(headers), client, basic_over_plain).await {
        Ok(None) => Err(refuse(S::UNAUTHORIZED, "sign-in required", true)),
        Ok(Some(a)) if !a.principal.has_scope("user") => Err(refuse(S::FORBIDDEN, "this token does not have the `user` scope", false)),
        Ok(Some(a)) => Ok(a),
        Err(AuthError::Throttled(left)) => Err(Refusal {
            retry_after: Some(left.as_secs()),
            ..refuse(S::TOO_MANY_REQUESTS, "too many failed sign-ins; try again later", false)
        }),
        Err(AuthError::BasicNeedsTls) => Err(refuse(S::FORBIDDEN, "Basic authentication is refused over plain HTTP; use HTTPS", false)),
        Err(AuthError::Store(e)) => {
            tracing::error!("sign-in check failed: {e}");
            Err(refuse(S::INTERNAL_SERVER_ERROR, "sign-in is unavailable", false))
        }
        Err(_) => Err(refuse(S::UNAUTHORIZED, "wrong user name, password, token or session", true)),
    }
}

/// Whether a state-changing request made with a session cookie carries the session's CSRF
/// token (a page of another site can make the browser send the cookie, but cannot read the
/// token). Requests without a session need none.
pub fn csrf_ok(headers: &HeaderMap, who: &Authenticated) -> bool {
    let Some(session) = &who.session else { return true };
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    crate::secret::constant_time_eq(sent, &session.csrf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn reads_every_kind_of_credentials() {
        assert_eq!(credentials(&headers(&[])), Credentials::None);
        assert_eq!(
            credentials(&headers(&[("authorization", "Basic YWxpY2U6cGE6c3M=")])),
            Credentials::Basic { user: "alice".into(), password: "pa:ss".into() }
        );
        assert_eq!(credentials(&headers(&[("authorization", "bearer st_abc")])), Credentials::Bearer("st_abc".into()));
        assert_eq!(credentials(&headers(&[("authorization", "Basic !!!")])), Credentials::Malformed);
        assert_eq!(credentials(&headers(&[("authorization", "Digest x")])), Credentials::Malformed);
        assert_eq!(credentials(&headers(&[("cookie", "a=b; servente_session=xyz"), ("cookie", "c=d")])), Credentials::Cookie("xyz".into()));
        assert_eq!(credentials(&headers(&[("cookie", "servente_session=")])), Credentials::None);
    }

    #[test]
    fn cookies_are_locked_down() {
        let c = set_session_cookie("v", 60, true).expect("cookie");
        let c = c.to_str().expect("ascii");
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=60", "Path=/"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!set_session_cookie("v", 60, false).expect("cookie").to_str().expect("ascii").contains("Secure"));
    }
}

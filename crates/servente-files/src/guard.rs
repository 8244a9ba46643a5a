//! Checks made before dav-server sees a WebDAV request, where its own behaviour would be wrong
//! for servente: it deletes a folder's contents before finding that the folder itself may not
//! go, it overwrites a COPY/MOVE destination before asking whether it may, it lets anyone
//! remove or take a lock, and it ignores lock tokens in an If header that no lock holds.
//! Each check answers the status RFC 4918 asks for, before anything changes.

use dav_server::davpath::DavPath;
use dav_server::ls::DavLockSystem;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use servente_auth::Principal;
use servente_core::{Body, simple_response};

use crate::fs::{Node, Storage};

type Check = Result<(), Response<Body>>;

fn refuse(status: StatusCode, text: &'static str) -> Check {
    Err(simple_response(status, text))
}

/// The place of a request path under the mount, as the caller sees it.
fn place(st: &Storage, who: &Principal, mount: &str, path: &str) -> Result<(DavPath, Node), Response<Body>> {
    let dav = crate::dav_path_under(mount, path).ok_or_else(|| simple_response(StatusCode::BAD_REQUEST, "not a valid path\n"))?;
    match st.resolve(&dav, who) {
        Ok(node) => Ok((dav, node)),
        Err(dav_server::fs::FsError::Forbidden) => Err(simple_response(StatusCode::FORBIDDEN, "this path is not allowed\n")),
        Err(_) => Err(simple_response(StatusCode::NOT_FOUND, "not found\n")),
    }
}

/// A place the caller may change: inside an area (not the area's own folder, nor a listing)
/// with write access.
fn writable(node: &Node, what: &'static str) -> Check {
    match node {
        Node::Area { write: true, depth, .. } if *depth >= 1 => Ok(()),
        Node::Area { write: false, .. } => refuse(StatusCode::FORBIDDEN, "this folder is read-only for you\n"),
        _ => Err(simple_response(StatusCode::FORBIDDEN, what)),
    }
}

pub async fn check(st: &Storage, who: &Principal, mount: &str, req: &Request<servente_core::RequestBody>) -> Check {
    let path = req.uri().path();
    let method = req.method();
    match method.as_str() {
        "DELETE" => {
            let (_, node) = place(st, who, mount, path)?;
            writable(&node, "home, group and shared folders themselves cannot be deleted\n")?;
        }
        "MOVE" | "COPY" => {
            let (_, node) = place(st, who, mount, path)?;
            if method.as_str() == "MOVE" {
                writable(&node, "home, group and shared folders themselves cannot be moved\n")?;
            }
            let Some(dest) = destination(req) else {
                return refuse(StatusCode::BAD_REQUEST, "COPY and MOVE need a Destination header\n");
            };
            let dest = dest?;
            if let Some(host) = dest.authority() {
                let here =
                    req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
                if here.is_none_or(|h| !h.eq_ignore_ascii_case(host.as_str())) {
                    return refuse(StatusCode::BAD_GATEWAY, "the Destination is on another server\n");
                }
            }
            if !dest.path().starts_with(&format!("{mount}dav/")) {
                return refuse(StatusCode::BAD_GATEWAY, "the Destination is outside this WebDAV space\n");
            }
            if crate::dav_path_under(mount, dest.path()).is_none() {
                return refuse(StatusCode::BAD_REQUEST, "the Destination is not a valid path\n");
            }
            let (_, dnode) = place(st, who, mount, dest.path())
                .map_err(|_| simple_response(StatusCode::CONFLICT, "the Destination's folder does not exist for you\n"))?;
            writable(&dnode, "home, group and shared folders themselves cannot be replaced\n")?;
        }
        "LOCK" | "UNLOCK" => {
            let (dav, node) = place(st, who, mount, path)?;
            match node {
                Node::Area { write: true, .. } => {}
                Node::Area { write: false, .. } => return refuse(StatusCode::FORBIDDEN, "only those who may write here may lock\n"),
                _ => return refuse(StatusCode::FORBIDDEN, "listings cannot be locked\n"),
            }
            if method.as_str() == "UNLOCK"
                && let Some(token) = lock_token(req.headers())
            {
                let locks = crate::locks::shared().discover(&dav).await;
                if let Some(l) = locks.iter().find(|l| l.token == token)
                    && l.principal.as_deref() != Some(who.user.as_str())
                {
                    return refuse(StatusCode::FORBIDDEN, "this lock belongs to someone else\n");
                }
            }
        }
        _ => {}
    }
    if *method != Method::GET && *method != Method::HEAD {
        unheld_tokens(req, mount).await?;
    }
    Ok(())
}

fn destination(req: &Request<servente_core::RequestBody>) -> Option<Result<http::Uri, Response<Body>>> {
    let d = req.headers().get("destination")?;
    Some(
        d.to_str()
            .ok()
            .and_then(|d| d.parse::<http::Uri>().ok())
            .ok_or_else(|| simple_response(StatusCode::BAD_REQUEST, "the Destination header is not a URL\n")),
    )
}

fn lock_token(h: &HeaderMap) -> Option<String> {
    let v = h.get("lock-token")?.to_str().ok()?.trim();
    Some(v.strip_prefix('<')?.strip_suffix('>')?.to_string())
}

/// One list of an If header: an optional resource tag and its conditions.
#[derive(Debug, PartialEq)]
struct List {
    tag: Option<String>,
    /// (negated, lock token); ETags are left to dav-server.
    tokens: Vec<(bool, String)>,
}

/// Parses the lists of an If header (RFC 4918 section 10.4); `None` if it does not parse (then
/// dav-server judges it).
fn parse_if(text: &str) -> Option<Vec<List>> {
    let mut lists = Vec::new();
    let mut tag = None;
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('<') {
            let (t, r) = r.split_once('>')?;
            tag = Some(t.to_string());
            rest = r.trim_start();
            continue;
        }
        let r = rest.strip_prefix('(')?;
        let (inner, r) = r.split_once(')')?;
        let mut tokens = Vec::new();
        let mut s = inner.trim();
        while !s.is_empty() {
            let mut not = false;
            if let Some(x) = s.strip_prefix("Not").or_else(|| s.strip_prefix("not")) {
                not = true;
                s = x.trim_start();
            }
            if let Some(x) = s.strip_prefix('<') {
                let (t, x) = x.split_once('>')?;
                tokens.push((not, t.to_string()));
                s = x.trim_start();
            } else if let Some(x) = s.strip_prefix('[') {
                let (_, x) = x.split_once(']')?;
                s = x.trim_start();
            } else {
                return None;
            }
        }
        lists.push(List { tag: tag.clone(), tokens });
        rest = r.trim_start();
    }
    Some(lists)
}

/// An If header is a set of alternatives; one whose lock token no lock holds can never be
/// true. When none can be, the answer is 412 (dav-server would go on as if it were true).
async fn unheld_tokens(req: &Request<servente_core::RequestBody>, mount: &str) -> Check {
    let Some(text) = req.headers().get("if").and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let Some(lists) = parse_if(text) else { return Ok(()) };
    if lists.is_empty() {
        return Ok(());
    }
    let locks = crate::locks::shared();
    for list in &lists {
        let path = match &list.tag {
            Some(t) => t.parse::<http::Uri>().ok().map(|u| u.path().to_string()),
            None => Some(req.uri().path().to_string()),
        };
        let Some(dav) = path.and_then(|p| crate::dav_path_under(mount, &p)) else { return Ok(()) };
        let held = locks.discover(&dav).await;
        let impossible = list.tokens.iter().any(|(not, t)| !*not && t.starts_with("urn:uuid:") && !held.iter().any(|l| &l.token == t));
        if !impossible {
            return Ok(());
        }
    }
    refuse(StatusCode::PRECONDITION_FAILED, "no lock holds the token of the If header\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_headers_parse_into_lists() {
        let l = parse_if("(<urn:uuid:a> [\"e1\"]) (Not <urn:uuid:b>)").expect("parses");
        assert_eq!(
            l,
            vec![
                List { tag: None, tokens: vec![(false, "urn:uuid:a".into())] },
                List { tag: None, tokens: vec![(true, "urn:uuid:b".into())] }
            ]
        );
        let l = parse_if("<http://h/f/dav/x> (<urn:uuid:a>)").expect("parses");
        assert_eq!(l[0].tag.as_deref(), Some("http://h/f/dav/x"));
        assert_eq!(parse_if("(<unterminated"), None);
        assert_eq!(parse_if("garbage"), None);
    }
}

//! Plain GET and HEAD of a file, answered by servente itself with a [`FileBody`]: a hot file
//! is read from the page cache on the connection's thread, a cold one on the blocking pool.
//! The HTTP preconditions (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since,
//! If-Range) and a single byte range are answered here too, with the web role's rules
//! ([`servente_core::conditional`], [`servente_core::range`]); a WebDAV `If` header and a
//! request for several ranges at once go to dav-server.
//!
//! The file is opened and looked at on the connection's thread, as the path was already
//! resolved there: both are metadata calls the kernel answers from its caches for a file
//! that is in use.

use std::sync::Arc;

use dav_server::davpath::DavPath;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use servente_core::conditional::{self, Outcome, Validators};
use servente_core::file_body::FileBody;
use servente_core::range::{self, Ranges};
use servente_core::{Body, simple_response};

use crate::fs::{Caller, Node, Storage};

/// Whether dav-server must answer: a WebDAV `If` header (lock tokens, and tags that may name
/// other resources).
pub fn needs_dav_server(h: &HeaderMap) -> bool {
    // Compared by name, not looked up: a lookup by string would parse and hash "if".
    h.keys().any(|k| k.as_str() == "if")
}

/// `headers`: the request's; `sendfile`: the request's [`servente_core::RequestCx::sendfile`].
/// `None`: dav-server answers instead (not a file servente may open, or several ranges).
pub async fn answer(
    st: &Arc<Storage>,
    caller: &Caller,
    dav: &DavPath,
    headers: &HeaderMap,
    head: bool,
    sendfile: bool,
) -> Option<Response<Body>> {
    let Ok(Node::Area { depth, .. }) = st.resolve_to_open(dav, &caller.who) else { return None };
    if depth == 0 {
        return None;
    }
    // A link anywhere on the path, or a FIFO, is not opened (see `Storage::open_file`):
    // dav-server's path refuses both.
    let (file, meta) = st.open_file(dav).ok()??;
    let len = meta.len();
    let etag = etag_value(&meta)?;
    let modified = meta.modified().ok()?;
    let validators = Validators { etag: etag.to_str().ok()?, last_modified: conditional::secs(modified) };
    let honor_range = match conditional::evaluate(headers, true, validators) {
        Outcome::Proceed { honor_range } => honor_range,
        Outcome::NotModified => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut().insert(header::ETAG, etag);
            if let Some(v) = http_date(modified) {
                r.headers_mut().insert(header::LAST_MODIFIED, v);
            }
            return Some(r);
        }
        Outcome::Failed => return Some(simple_response(StatusCode::PRECONDITION_FAILED, "precondition failed\n")),
    };
    let ranges = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if honor_range => range::parse(v, len),
        _ => Ranges::Full,
    };
    let (status, start, count) = match ranges {
        Ranges::Full => (StatusCode::OK, 0, len),
        Ranges::Partial(list) => match list[..] {
            [one] => (StatusCode::PARTIAL_CONTENT, one.start, one.len()),
            _ => return None,
        },
        Ranges::Unsatisfiable => {
            let mut r = simple_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Some(r);
        }
    };
    let body = if head {
        Body::empty()
    } else if status == StatusCode::OK {
        Body::stream(FileBody::whole(file, &meta).unread_if(sendfile))
    } else {
        Body::stream(FileBody::new(file, start, count).unread_if(sendfile))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let name = dav.file_name().unwrap_or("");
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::mime::of_name(name)));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, etag);
    if let Some(v) = http_date(modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    Some(r)
}

/// The quoted ETag (the same as [`crate::fs::StdMeta`]'s), written once into its header value.
fn etag_value(m: &std::fs::Metadata) -> Option<HeaderValue> {
    use std::fmt::Write;
    use std::os::unix::fs::MetadataExt;
    let modified = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    let mut tag = String::with_capacity(48);
    write!(tag, "\"{}\"", crate::fs::Etag { ino: m.ino(), len: Some(m.len()), modified }).ok()?;
    HeaderValue::from_maybe_shared(bytes::Bytes::from(tag)).ok()
}

/// `t` as an HTTP date. The last one made on this thread is kept: a file downloaded again and
/// again has the same modification time, and formatting a date takes an allocation and some
/// arithmetic.
fn http_date(t: std::time::SystemTime) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    LAST.with_borrow_mut(|last| match last {
        Some((s, v)) if *s == secs => Some(v.clone()),
        _ => {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()?;
            *last = Some((secs, v.clone()));
            Some(v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdMeta;
    use dav_server::fs::DavMetaData;

    #[test]
    fn validators_are_those_of_the_metadata() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let m = f.as_file().metadata().expect("metadata");
        let tag = etag_value(&m).expect("etag");
        assert_eq!(tag.to_str().ok(), Some(format!("\"{}\"", StdMeta(m.clone()).etag().expect("etag")).as_str()));
        let t = m.modified().expect("mtime");
        let first = http_date(t).expect("date");
        assert_eq!(first.to_str().ok(), Some(httpdate::fmt_http_date(t).as_str()));
        assert_eq!(http_date(t), Some(first.clone()), "the same again");
        let later = t + std::time::Duration::from_secs(1);
        assert_eq!(http_date(later).expect("date").to_str().ok(), Some(httpdate::fmt_http_date(later).as_str()));
        assert_eq!(http_date(t), Some(first), "and back");
    }

    #[test]
    fn only_the_webdav_if_header_goes_to_dav_server() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic eA=="));
        for name in ["range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range"] {
            h.insert(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), HeaderValue::from_static("v"));
        }
        assert!(!needs_dav_server(&h));
        h.insert(http::HeaderName::from_static("if"), HeaderValue::from_static("(<urn:uuid:x>)"));
        assert!(needs_dav_server(&h));
    }
}

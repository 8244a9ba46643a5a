//! PROPFIND on real files and folders, Depth 0 and 1, answered by servente itself.
//!
//! Listing a folder is what WebDAV clients do most, and dav-server builds each entry through a
//! generic XML tree (about 70 µs per entry here: 0.7 s for 10,000 files). This path stats the
//! folder in one blocking call, reads the dead properties of all entries in one query and
//! writes the XML as text: the same properties, values and ETags as dav-server. It steps aside
//! (returns `None`) for anything unusual: virtual folders, a lock that may be involved,
//! `propname`, `include`, Microsoft or Apache properties, errors; dav-server answers those.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use dav_server::davpath::DavPath;
use dav_server::fs::DavMetaData;
use http::{HeaderValue, Response, StatusCode, header};
use servente_core::Body;

use crate::db::Prop;
use crate::fs::{Caller, Kind, Node, StdMeta, Storage, key};

/// What the request body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    All,
    /// (namespace, name)
    Named(Vec<(String, String)>),
}

const DAV: &str = "DAV:";

/// Live properties of the DAV: namespace this path knows.
const LIVE: &[&str] = &[
    "creationdate",
    "getcontentlength",
    "getcontenttype",
    "getetag",
    "getlastmodified",
    "lockdiscovery",
    "resourcetype",
    "supportedlock",
    "quota-available-bytes",
    "quota-used-bytes",
    "displayname",
    "getcontentlanguage",
];

/// Reads a PROPFIND body: all properties, or the named ones; `None` for anything else
/// (`propname`, `include`, not XML), which dav-server handles.
pub fn parse(body: &[u8]) -> Option<Want> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Some(Want::All);
    }
    let root = xmltree::Element::parse(body).ok()?;
    if root.name != "propfind" || root.namespace.as_deref() != Some(DAV) {
        return None;
    }
    let children: Vec<&xmltree::Element> = root.children.iter().filter_map(|c| c.as_element()).collect();
    match children.as_slice() {
        [one] if one.name == "allprop" && one.namespace.as_deref() == Some(DAV) => Some(Want::All),
        [one] if one.name == "prop" && one.namespace.as_deref() == Some(DAV) => Some(Want::Named(
            one.children.iter().filter_map(|c| c.as_element()).map(|e| (e.namespace.clone().unwrap_or_default(), e.name.clone())).collect(),
        )),
        _ => None,
    }
}

/// Whether this path knows every property asked for (Microsoft's and Apache's, and DAV:
/// properties it does not list, are left to dav-server).
pub fn can_answer(want: &Want) -> bool {
    match want {
        Want::All => true,
        Want::Named(names) => names.iter().all(|(ns, name)| {
            (ns != DAV || LIVE.contains(&name.as_str()))
                && !ns.starts_with("urn:schemas-microsoft-com")
                && ns != "http://apache.org/dav/props/"
        }),
    }
}

/// Dead properties by path.
type DeadProps = HashMap<Vec<u8>, Vec<Prop>>;

struct Entry {
    /// Percent-encoded name, with a final `/` for folders; empty for the target itself.
    href_tail: String,
    meta: std::fs::Metadata,
    key: Vec<u8>,
}

/// The answer, or `None` to let dav-server answer. `href` is the request path as sent.
pub async fn answer(st: &Arc<Storage>, caller: &Caller, dav: &DavPath, href: &str, depth1: bool, want: &Want) -> Option<Response<Body>> {
    let node = st.resolve(dav, &caller.who).ok()?;
    let Node::Area { kind, name, .. } = &node else { return None };
    if crate::locks::shared().maybe_locked(dav) {
        return None;
    }
    let home = (*kind == Kind::Users).then(|| (st.used(name), st.quota(name)));
    let disk = st.disk_path(dav);
    let target_key = key(dav);
    let need_dead = match want {
        Want::All => true,
        Want::Named(n) => n.iter().any(|(ns, name)| ns != DAV || name == "displayname" || name == "getcontentlanguage"),
    };
    let st2 = st.clone();
    // First the folder itself, the names in it and the dead properties, in one blocking call.
    let dir = disk.clone();
    let tk = target_key.clone();
    let (meta, names, dead) = tokio::task::spawn_blocking(move || -> Option<(std::fs::Metadata, Vec<std::fs::DirEntry>, DeadProps)> {
        let meta = std::fs::symlink_metadata(&dir).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
        let mut names = Vec::new();
        if depth1 && meta.is_dir() {
            for e in std::fs::read_dir(&dir).ok()? {
                // Kept as entries: their metadata is a stat relative to the open folder, not a
                // walk of the whole path.
                names.push(e.ok()?);
            }
        }
        let mut dead = DeadProps::new();
        if need_dead {
            for (path, prop) in st2.db.props_under(&tk, depth1).ok()? {
                dead.entry(path).or_default().push(prop);
            }
        }
        Some((meta, names, dead))
    })
    .await
    .ok()??;

    let base: Arc<str> = if href.ends_with('/') || !meta.is_dir() { href.into() } else { format!("{href}/").into() };
    let want = Arc::new(want.clone());
    let dead = Arc::new(dead);
    let mut out = String::with_capacity(1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?><D:multistatus xmlns:D=\"DAV:\">");
    let me = Entry { href_tail: String::new(), meta, key: target_key.clone() };
    write_response(&mut out, &base, &me, dead.get(&me.key).map(Vec::as_slice).unwrap_or(&[]), &want, home);
    // Then the entries: stat and XML in parallel on the blocking pool, one part per core
    // (a stat is a path lookup in the kernel; it is most of the work).
    let parts = if names.len() >= 512 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4) } else { 1 };
    let per = names.len().div_ceil(parts.max(1)).max(1);
    let mut tasks = Vec::new();
    let mut names = names;
    while !names.is_empty() {
        let rest = names.split_off(per.min(names.len()));
        let chunk = std::mem::replace(&mut names, rest);
        let (base, want, dead, tk) = (base.clone(), want.clone(), dead.clone(), target_key.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut out = String::with_capacity(chunk.len() * 720);
            let mut mime = MimeCache::default();
            for entry in chunk {
                let Ok(m) = entry.metadata() else { continue };
                let name = entry.file_name();
                if m.file_type().is_symlink() {
                    continue;
                }
                let mut tail = percent_encoding::percent_encode(name.as_bytes(), SEGMENT).to_string();
                if m.is_dir() {
                    tail.push('/');
                }
                let mut k = tk.clone();
                k.push(b'/');
                k.extend_from_slice(name.as_bytes());
                let e = Entry { href_tail: tail, meta: m, key: k };
                mime.last = None;
                write_response_with(&mut out, &base, &e, dead.get(&e.key).map(Vec::as_slice).unwrap_or(&[]), &want, home, &mut mime);
            }
            out
        }));
    }
    let mut chunks = vec![bytes::Bytes::from(out)];
    for t in tasks {
        chunks.push(bytes::Bytes::from(t.await.ok()?));
    }
    chunks.push(bytes::Bytes::from_static(b"</D:multistatus>"));
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    let frames = futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(http_body::Frame::data(c))));
    let mut r = Response::new(Body::stream(http_body_util::StreamBody::new(frames)));
    *r.status_mut() = StatusCode::MULTI_STATUS;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

/// Media types by extension, remembered for one listing (folders hold many files of a kind).
#[derive(Default)]
struct MimeCache {
    map: HashMap<String, &'static str>,
    last: Option<&'static str>,
}

impl MimeCache {
    fn get(&mut self, file_name: &str) -> &'static str {
        let Some((_, ext)) = file_name.rsplit_once('.') else { return "application/octet-stream" };
        if let Some(m) = self.map.get(ext) {
            return m;
        }
        let m = mime_guess::from_ext(ext).first_raw().unwrap_or("application/octet-stream");
        if self.map.len() < 256 {
            self.map.insert(ext.to_string(), m);
        }
        m
    }
}

/// Bytes kept as they are in hrefs: RFC 3986 unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

const SUPPORTED_LOCK: &str = "<D:supportedlock><D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry><D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry></D:supportedlock>";

/// The value of a live property, as its whole element; `None` when this resource has none.
fn live(name: &str, meta: &StdMeta, file_name: &str, home: Option<(u64, Option<u64>)>, mime: &mut MimeCache, out: &mut String) -> bool {
    let is_dir = meta.is_dir();
    match name {
        "creationdate" => match meta.created() {
            Ok(t) => {
                let t: chrono::DateTime<chrono::Utc> = t.into();
                let _ = write!(out, "<D:creationdate>{}</D:creationdate>", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            Err(_) => return false,
        },
        "getcontentlength" if !is_dir => {
            let _ = write!(out, "<D:getcontentlength>{}</D:getcontentlength>", meta.len());
        }
        "getcontenttype" => {
            let t = if is_dir { "httpd/unix-directory" } else { mime.get(file_name) };
            let _ = write!(out, "<D:getcontenttype>{t}</D:getcontenttype>");
        }
        "getetag" => match meta.etag() {
            Some(tag) => {
                let _ = write!(out, "<D:getetag>{tag}</D:getetag>");
            }
            None => return false,
        },
        "getlastmodified" => match meta.modified() {
            Ok(t) => {
                let _ = write!(out, "<D:getlastmodified>{}</D:getlastmodified>", httpdate::fmt_http_date(t));
            }
            Err(_) => return false,
        },
        "lockdiscovery" => out.push_str("<D:lockdiscovery/>"),
        "resourcetype" => out.push_str(if is_dir { "<D:resourcetype><D:collection/></D:resourcetype>" } else { "<D:resourcetype/>" }),
        "supportedlock" => out.push_str(SUPPORTED_LOCK),
        "quota-used-bytes" if is_dir && home.is_some() => {
            let _ = write!(out, "<D:quota-used-bytes>{}</D:quota-used-bytes>", home.map(|h| h.0).unwrap_or(0));
        }
        "quota-available-bytes" if is_dir => match home {
            Some((used, Some(q))) => {
                let _ = write!(out, "<D:quota-available-bytes>{}</D:quota-available-bytes>", q.saturating_sub(used));
            }
            _ => return false,
        },
        _ => return false,
    }
    true
}

/// A stored dead property without its XML declaration.
fn dead_xml(xml: &[u8]) -> &str {
    let s = std::str::from_utf8(xml).unwrap_or("");
    match s.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map(|(_, e)| e).unwrap_or(""),
        None => s,
    }
}

fn write_response(out: &mut String, base: &str, e: &Entry, dead: &[Prop], want: &Want, home: Option<(u64, Option<u64>)>) {
    write_response_with(out, base, e, dead, want, home, &mut MimeCache::default());
}

fn write_response_with(
    out: &mut String,
    base: &str,
    e: &Entry,
    dead: &[Prop],
    want: &Want,
    home: Option<(u64, Option<u64>)>,
    mime: &mut MimeCache,
) {
    let meta = StdMeta(e.meta.clone());
    let meta = &meta;
    let file_name = e.key.rsplit(|&b| b == b'/').next().map(|n| std::str::from_utf8(n).unwrap_or("")).unwrap_or("");
    let _ = write!(out, "<D:response><D:href>{base}{}</D:href>", e.href_tail);
    let ok_start = out.len();
    out.push_str("<D:propstat><D:prop>");
    let props_start = out.len();
    let mut missing: Vec<(&str, &str)> = Vec::new();
    match want {
        Want::All => {
            for name in [
                "creationdate",
                "getcontentlength",
                "getcontenttype",
                "getetag",
                "getlastmodified",
                "lockdiscovery",
                "resourcetype",
                "supportedlock",
            ] {
                live(name, meta, file_name, home, mime, out);
            }
            for (_, _, xml) in dead {
                out.push_str(dead_xml(xml));
            }
        }
        Want::Named(names) => {
            for (ns, name) in names {
                let found = (ns == DAV && live(name, meta, file_name, home, mime, out))
                    || match dead.iter().find(|(dns, dname, _)| dns == ns && dname == name) {
                        Some((_, _, xml)) => {
                            out.push_str(dead_xml(xml));
                            true
                        }
                        None => false,
                    };
                if !found {
                    missing.push((ns, name));
                }
            }
        }
    }
    if out.len() == props_start {
        // Nothing found: no empty 200 propstat.
        out.truncate(ok_start);
    } else {
        out.push_str("</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>");
    }
    if !missing.is_empty() {
        out.push_str("<D:propstat><D:prop>");
        for (i, (ns, name)) in missing.iter().enumerate() {
            if *ns == DAV {
                let _ = write!(out, "<D:{name}/>");
            } else if ns.is_empty() {
                let _ = write!(out, "<{name} xmlns=\"\"/>");
            } else {
                let _ = write!(out, "<N{i}:{name} xmlns:N{i}=\"{}\"/>", crate::share::escape(ns));
            }
        }
        out.push_str("</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>");
    }
    out.push_str("</D:response>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_or_left_to_dav_server() {
        assert_eq!(parse(b""), Some(Want::All));
        assert_eq!(parse(br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"#), Some(Want::All));
        assert_eq!(
            parse(br#"<propfind xmlns="DAV:"><prop><getetag/><x:a xmlns:x="urn:x"/></prop></propfind>"#),
            Some(Want::Named(vec![("DAV:".into(), "getetag".into()), ("urn:x".into(), "a".into())]))
        );
        assert_eq!(parse(br#"<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>"#), None);
        assert_eq!(parse(br#"<D:propfind xmlns:D="DAV:"><D:allprop/><D:include><D:x/></D:include></D:propfind>"#), None);
        let ms = parse(
            br#"<D:propfind xmlns:D="DAV:"><D:prop><Z:Win32FileAttributes xmlns:Z="urn:schemas-microsoft-com:"/></D:prop></D:propfind>"#,
        );
        assert!(ms.as_ref().is_some_and(|w| !can_answer(w)), "Microsoft properties are left to dav-server");
        assert!(can_answer(&Want::All));
        assert_eq!(parse(b"<not xml"), None);
    }

    #[test]
    fn dead_properties_lose_their_declaration() {
        assert_eq!(dead_xml(br#"<?xml version="1.0" encoding="UTF-8"?><Z:a xmlns:Z="u">b</Z:a>"#), r#"<Z:a xmlns:Z="u">b</Z:a>"#);
        assert_eq!(dead_xml(b"<a/>"), "<a/>");
    }
}

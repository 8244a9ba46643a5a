//! PROPFIND on real files and folders, Depth 0 and 1, answered by servente itself.
//!
//! Listing a folder is what WebDAV clients do most, and dav-server builds each entry through a
//! generic XML tree (about 70 µs per entry here: 0.7 s for 10,000 files). This path reads the
//! dead properties of all entries in one query and writes the XML as text: the same properties,
//! values and ETags as dav-server. A large folder is read and statted in pieces of 256 entries,
//! a few at once on the blocking pool, and streamed in order (see [`Pieces`]). It steps aside
//! (returns `None`) for anything unusual: virtual folders, a lock that may be involved,
//! `propname`, `include`, Microsoft or Apache properties, errors; dav-server answers those.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::AsFd as _;
use std::sync::Arc;

use dav_server::davpath::DavPath;
use http::{HeaderValue, Response, StatusCode, header};
use servente_core::Body;

use crate::db::Prop;
use crate::fs::{Caller, Etag, Kind, Node, Storage, key};

/// What the request body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    All,
    /// (namespace, name)
    Named(Vec<(String, String)>),
}

const DAV: &str = "DAV:";

/// Live properties of the DAV: namespace this path knows; RFC 4918's own come first.
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

/// How many of [`LIVE`]'s first names allprop answers with.
const ALLPROP: usize = 8;

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

/// Entries per piece of the answer (about 100 to 180 KB of XML). A folder whose end is found
/// while reading the first piece's names (fewer than this many entries) is answered whole,
/// with a Content-Length; a larger one streams (chunked in
/// HTTP/1.1): pieces are written on the blocking pool, a few at once and sent in order, so the
/// client receives while servente still stats, and memory holds a few pieces, not the answer.
const PIECE: usize = 256;

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
    let href = href.to_string();
    let want = want.clone();
    // The target, the dead properties and the first names, in one blocking call; anything
    // unexpected here (a link, an unreadable folder) leaves the answer to dav-server.
    let (first, listing, batch) = tokio::task::spawn_blocking(move || -> Option<(String, Arc<Listing>, Option<Batch>)> {
        let meta = std::fs::symlink_metadata(&disk).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
        let mut own = Facts::of_std(&meta);
        let mut reader = Reader { dir: None, next: 0 };
        let mut folder = None;
        if depth1 && meta.is_dir() {
            use rustix::fs::{AtFlags, Mode, OFlags};
            let fd =
                rustix::fs::open(&disk, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).ok()?;
            // The folder listed is the one opened, whatever is at its path later: its own
            // properties and every entry's are read through this handle.
            own = Facts::of_statx(&rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, statx_mask(true)).ok()?);
            reader.dir = Some(rustix::fs::Dir::read_from(&fd).ok()?);
            folder = Some(fd);
        }
        let batch = reader.batch().ok()?;
        let mut dead = DeadProps::new();
        if need_dead {
            for (path, prop) in st2.db.props_under(&target_key, depth1).ok()? {
                dead.entry(path).or_default().push(prop);
            }
        }
        let base = if href.ends_with('/') || !meta.is_dir() { href } else { format!("{href}/") };
        let btime = match &want {
            Want::All => true,
            Want::Named(n) => n.iter().any(|(ns, n)| ns == DAV && n == "creationdate"),
        };
        let mut listing = Listing { folder, reader: std::sync::Mutex::new(reader), base, want, dead, home, key: target_key, btime };
        let mut w = Writer::default();
        // Room for the head and, for a small folder, its entries (about 400 to 700 bytes each).
        let small = batch.as_ref().filter(|b| b.last).map_or(0, |b| b.ends.len());
        let mut out = String::with_capacity(1024 + small * 800);
        out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?><D:multistatus xmlns:D=\"DAV:\">");
        let own_name = listing.key.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let own_dead = listing.dead.get(&listing.key).map(Vec::as_slice).unwrap_or_default();
        listing.write_response(&mut w, &mut out, "", own_name, &own, own_dead);
        listing.key.push(b'/');
        // A small folder is answered here, at once, through the handle already open; a large
        // one in pieces, from the first.
        let batch = match batch {
            Some(b) if b.last => {
                if let Some(folder) = &listing.folder {
                    listing.piece(&b, folder.as_fd(), &mut w, &mut out);
                }
                out.push_str("</D:multistatus>");
                None
            }
            None => {
                out.push_str("</D:multistatus>");
                None
            }
            more => more,
        };
        Some((out, Arc::new(listing), batch))
    })
    .await
    .ok()??;

    let mut r = match batch {
        None => {
            let len = first.len();
            let mut r = Response::new(Body::full(first));
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
        Some(batch) => {
            use futures_util::StreamExt as _;
            // (Asked once: std reads the cgroup's CPU quota from /proc and /sys at every call.)
            static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            let ahead = *AHEAD.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4));
            let mut pieces = Pieces {
                listing,
                first: Some(batch),
                running: futures_util::stream::FuturesUnordered::new(),
                ready: std::collections::BTreeMap::new(),
                next_out: 0,
                ended: false,
                finished: false,
                ahead,
            };
            pieces.top_up();
            let rest = futures_util::stream::unfold(pieces, |mut pieces| async move {
                let piece = pieces.next().await?;
                Some((piece.map(http_body::Frame::data), pieces))
            });
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(first)))]);
            Response::new(Body::stream(http_body_util::StreamBody::new(first.chain(rest))))
        }
    };
    *r.status_mut() = StatusCode::MULTI_STATUS;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

/// A piece's memory, given back for the next piece once the piece is sent (when its `Bytes`
/// is dropped). Memory that is freed goes back to the system within milliseconds, and a new
/// piece then faults in and zeroes fresh pages (2 MiB huge pages here): about 6% of a
/// 10,000-entry listing's CPU time, measured with `perf`.
struct Spare(String);

/// At most this many pieces' buffers are kept (a few listings' worth of pieces in flight).
const SPARES: usize = 8;

static SPARE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Spare {
    /// An empty buffer for a piece of about `len` bytes: a kept one if there is one.
    fn take(len: usize) -> String {
        let kept = SPARE.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut out = kept.unwrap_or_default();
        out.clear();
        out.reserve(len);
        out
    }
}

impl AsRef<[u8]> for Spare {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let piece = std::mem::take(&mut self.0);
        // Not an unusually large one (a folder of long names), which would stay in memory.
        if piece.capacity() <= PIECE * 1600 {
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARES {
                spare.push(piece);
            }
        }
    }
}

/// Some names of a folder, each with its final NUL, one after the other, and the number of
/// their piece of the answer.
struct Batch {
    n: usize,
    bytes: Vec<u8>,
    /// Where each name ends (after its NUL).
    ends: Vec<usize>,
    /// Whether the folder has no names after these.
    last: bool,
}

impl Batch {
    fn names(&self) -> impl Iterator<Item = &std::ffi::CStr> {
        self.ends.iter().scan(0, |start, &end| {
            let name = std::ffi::CStr::from_bytes_with_nul(&self.bytes[*start..end]).unwrap_or_default();
            *start = end;
            Some(name)
        })
    }
}

/// Reads a folder's names for the pieces, one batch each, in order.
struct Reader {
    /// `None` once the end was reached (or for a target that is not listed).
    dir: Option<rustix::fs::Dir>,
    next: usize,
}

impl Reader {
    /// The next [`PIECE`] names but `.`, `..` and symbolic links (which WebDAV does not show);
    /// `None` after the last batch.
    fn batch(&mut self) -> std::io::Result<Option<Batch>> {
        let Some(dir) = self.dir.as_mut() else { return Ok(None) };
        let mut b = Batch { n: self.next, bytes: Vec::with_capacity(PIECE * 16), ends: Vec::with_capacity(PIECE), last: false };
        self.next += 1;
        while b.ends.len() < PIECE {
            let Some(entry) = dir.read() else {
                b.last = true;
                self.dir = None;
                break;
            };
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if matches!(name, b".\0" | b"..\0") || entry.file_type() == rustix::fs::FileType::Symlink {
                continue;
            }
            b.bytes.extend_from_slice(name);
            b.ends.push(b.bytes.len());
        }
        Ok(Some(b))
    }
}

type PieceJob = tokio::task::JoinHandle<std::io::Result<Option<(usize, String, bool)>>>;

/// A large folder's listing after its head: pieces written on the blocking pool, a few at once,
/// each reading its batch of names then statting them, and sent in order. A client that stops
/// reading stops the listing: no thread waits for it, but the folder stays open and the
/// pieces written ahead stay in memory until the connection ends.
struct Pieces {
    listing: Arc<Listing>,
    /// The batch read with the head, for the first job.
    first: Option<Batch>,
    running: futures_util::stream::FuturesUnordered<PieceJob>,
    /// Pieces written but not yet due, by number.
    ready: std::collections::BTreeMap<usize, (String, bool)>,
    next_out: usize,
    /// No more jobs to start: one has read the last names.
    ended: bool,
    /// The last piece was sent (or the listing failed).
    finished: bool,
    ahead: usize,
}

impl Pieces {
    fn top_up(&mut self) {
        while !self.ended && self.running.len() + self.ready.len() < self.ahead {
            let listing = self.listing.clone();
            let first = self.first.take();
            self.running.push(tokio::task::spawn_blocking(move || {
                let batch = match first {
                    Some(b) => b,
                    None => match listing.reader.lock().map_err(|_| std::io::Error::other("folder reader poisoned"))?.batch()? {
                        Some(b) => b,
                        None => return Ok(None),
                    },
                };
                let mut out = Spare::take(batch.ends.len() * 800 + 32);
                // Each piece opens the folder again, through the first handle (not its path,
                // where another folder may be by now), so that pieces written at once on
                // several threads do not share, and bounce between cores, one open file.
                if let Some(folder) = listing.folder.as_ref().filter(|_| !batch.ends.is_empty()) {
                    use rustix::fs::{Mode, OFlags};
                    let fd = rustix::fs::openat(folder, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
                    listing.piece(&batch, fd.as_fd(), &mut Writer::default(), &mut out);
                }
                if batch.last {
                    out.push_str("</D:multistatus>");
                }
                Ok(Some((batch.n, out, batch.last)))
            }));
        }
    }

    /// The next piece due, or the error that ends the answer (the client sees it cut short).
    async fn next(&mut self) -> Option<std::io::Result<bytes::Bytes>> {
        use futures_util::StreamExt as _;
        loop {
            if self.finished {
                return None;
            }
            if let Some((piece, last)) = self.ready.remove(&self.next_out) {
                self.next_out += 1;
                self.finished = last;
                self.top_up();
                return Some(Ok(bytes::Bytes::from_owner(Spare(piece))));
            }
            let failed = match self.running.next().await {
                Some(Ok(Ok(Some((n, piece, last))))) => {
                    self.ended |= last;
                    self.ready.insert(n, (piece, last));
                    self.top_up();
                    continue;
                }
                Some(Ok(Ok(None))) => {
                    self.ended = true;
                    continue;
                }
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => std::io::Error::other(e),
                None => std::io::Error::other("the folder listing stopped before its end"),
            };
            self.finished = true;
            return Some(Err(failed));
        }
    }
}

/// A folder being listed: what every response needs, shared by the pieces.
struct Listing {
    /// The folder, opened once (`None` when only the target is answered).
    folder: Option<rustix::fd::OwnedFd>,
    reader: std::sync::Mutex<Reader>,
    /// The request path, ending in `/` for a folder.
    base: String,
    want: Want,
    dead: DeadProps,
    home: Option<(u64, Option<u64>)>,
    /// The target's key and `/` (an entry's key is this and its name).
    key: Vec<u8>,
    /// Whether creation dates are asked for (the only property that needs `STATX_BTIME`).
    btime: bool,
}

/// What one piece's writer keeps from entry to entry.
#[derive(Default)]
struct Writer {
    dates: Dates,
    key: Vec<u8>,
    tail: String,
}

impl Listing {
    /// Writes the responses of a batch's entries into `out`, statting them relative to `folder`.
    fn piece(&self, batch: &Batch, folder: rustix::fd::BorrowedFd<'_>, w: &mut Writer, out: &mut String) {
        use rustix::fs::{AtFlags, FileType};
        let mask = statx_mask(self.btime);
        for name in batch.names() {
            // The entry may be gone by now (deleted since the folder was read): left out.
            let Ok(stx) = rustix::fs::statx(folder, name, AtFlags::SYMLINK_NOFOLLOW, mask) else { continue };
            // Links, FIFOs, sockets and devices placed by hand are not served (see
            // `Storage::refuse_special_files`), so they are not listed either.
            if !matches!(FileType::from_raw_mode(stx.stx_mode.into()), FileType::RegularFile | FileType::Directory) {
                continue;
            }
            let facts = Facts::of_statx(&stx);
            let name = name.to_bytes();
            let mut tail = std::mem::take(&mut w.tail);
            tail.clear();
            let _ = write!(tail, "{}", percent_encoding::percent_encode(name, SEGMENT));
            if facts.dir {
                tail.push('/');
            }
            let dead = if self.dead.is_empty() {
                None
            } else {
                w.key.clear();
                w.key.extend_from_slice(&self.key);
                w.key.extend_from_slice(name);
                self.dead.get(&w.key)
            };
            self.write_response(w, out, &tail, name, &facts, dead.map(Vec::as_slice).unwrap_or_default());
            w.tail = tail;
        }
    }

    /// One `<D:response>`: `tail` is the percent-encoded name after the base (with a `/` for a
    /// folder; empty for the target itself), `name` the raw one (for the media type).
    fn write_response(&self, w: &mut Writer, out: &mut String, tail: &str, name: &[u8], facts: &Facts, dead: &[Prop]) {
        let file_name = std::str::from_utf8(name).unwrap_or("");
        let _ = write!(out, "<D:response><D:href>{}{tail}</D:href>", self.base);
        let ok_start = out.len();
        out.push_str("<D:propstat><D:prop>");
        let props_start = out.len();
        let mut missing: Vec<(&str, &str)> = Vec::new();
        match &self.want {
            Want::All => {
                // allprop: the live properties RFC 4918 defines (the first eight of LIVE).
                for name in &LIVE[..ALLPROP] {
                    live(name, facts, file_name, self.home, w, out);
                }
                for (_, _, xml) in dead {
                    out.push_str(dead_xml(xml));
                }
            }
            Want::Named(names) => {
                for (ns, name) in names {
                    let found = (ns == DAV && live(name, facts, file_name, self.home, w, out))
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
}

/// What `statx` is asked for: what [`Facts`] holds (the birth time only when wanted).
fn statx_mask(btime: bool) -> rustix::fs::StatxFlags {
    use rustix::fs::StatxFlags;
    let mask = StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::INO | StatxFlags::SIZE | StatxFlags::MTIME;
    if btime { mask | StatxFlags::BTIME } else { mask }
}

/// What a response says about one resource, from `statx` (entries) or std's metadata (the
/// target). Times are (seconds, nanoseconds) since the epoch.
struct Facts {
    dir: bool,
    /// A regular file (the only kind whose ETag has its length).
    file: bool,
    len: u64,
    ino: u64,
    modified: Option<(i64, u32)>,
    created: Option<(i64, u32)>,
}

impl Facts {
    fn of_std(m: &std::fs::Metadata) -> Facts {
        use std::os::unix::fs::MetadataExt;
        let since = |t: std::io::Result<std::time::SystemTime>| {
            let d = t.ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()))
        };
        let modified = since(m.modified());
        // As `StdMeta::created`: the modification time where the file system keeps no birth time.
        let created = since(m.created()).or(modified);
        Facts { dir: m.is_dir(), file: m.is_file(), len: m.len(), ino: m.ino(), modified, created }
    }

    fn of_statx(s: &rustix::fs::Statx) -> Facts {
        use rustix::fs::StatxFlags;
        let has = |f: StatxFlags| s.stx_mask & f.bits() != 0;
        let time = |t: &rustix::fs::StatxTimestamp| (t.tv_sec >= 0).then_some((t.tv_sec, t.tv_nsec));
        let kind = rustix::fs::FileType::from_raw_mode(s.stx_mode.into());
        let modified = if has(StatxFlags::MTIME) { time(&s.stx_mtime) } else { None };
        Facts {
            dir: kind == rustix::fs::FileType::Directory,
            file: kind == rustix::fs::FileType::RegularFile,
            len: s.stx_size,
            ino: s.stx_ino,
            modified,
            // As `StdMeta::created`: the modification time where the file system keeps no birth time.
            created: if has(StatxFlags::BTIME) { time(&s.stx_btime) } else { None }.or(modified),
        }
    }
}

/// Dates formatted once per second of time seen: the files of a folder often share them.
#[derive(Default)]
struct Dates {
    http: (i64, String),
    iso: (i64, String),
}

impl Dates {
    /// RFC 7231 date (getlastmodified); `None` outside what HTTP dates can say.
    fn http(&mut self, secs: i64) -> Option<&str> {
        // httpdate formats years 1970 to 9999 only.
        if !(0..253_402_300_800).contains(&secs) {
            return None;
        }
        if self.http.1.is_empty() || self.http.0 != secs {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            self.http.1.clear();
            let _ = write!(self.http.1, "{}", httpdate::HttpDate::from(t));
            self.http.0 = secs;
        }
        Some(&self.http.1)
    }

    /// RFC 3339 date (creationdate).
    fn iso(&mut self, secs: i64) -> Option<&str> {
        if self.iso.1.is_empty() || self.iso.0 != secs {
            let t = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)?;
            self.iso.1.clear();
            let _ = write!(self.iso.1, "{}", t.format("%Y-%m-%dT%H:%M:%SZ"));
            self.iso.0 = secs;
        }
        Some(&self.iso.1)
    }
}

/// Bytes kept as they are in hrefs: RFC 3986 unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

const SUPPORTED_LOCK: &str = "<D:supportedlock><D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry><D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry></D:supportedlock>";

/// Writes a live property as its whole element; false when this resource has none.
fn live(name: &str, f: &Facts, file_name: &str, home: Option<(u64, Option<u64>)>, w: &mut Writer, out: &mut String) -> bool {
    let Writer { dates, .. } = w;
    match name {
        "creationdate" => match f.created.and_then(|(s, _)| dates.iso(s)) {
            Some(d) => {
                let _ = write!(out, "<D:creationdate>{d}</D:creationdate>");
            }
            None => return false,
        },
        "getcontentlength" if !f.dir => {
            let _ = write!(out, "<D:getcontentlength>{}</D:getcontentlength>", f.len);
        }
        "getcontenttype" => {
            let t = if f.dir { "httpd/unix-directory" } else { crate::mime::of_name(file_name) };
            let _ = write!(out, "<D:getcontenttype>{t}</D:getcontenttype>");
        }
        "getetag" => match f.modified {
            Some((s, ns)) => {
                let modified = std::time::Duration::new(s as u64, ns);
                let _ = write!(out, "<D:getetag>{}</D:getetag>", Etag { ino: f.ino, len: f.file.then_some(f.len), modified });
            }
            None => return false,
        },
        "getlastmodified" => match f.modified.and_then(|(s, _)| dates.http(s)) {
            Some(d) => {
                let _ = write!(out, "<D:getlastmodified>{d}</D:getlastmodified>");
            }
            None => return false,
        },
        "lockdiscovery" => out.push_str("<D:lockdiscovery/>"),
        "resourcetype" => out.push_str(if f.dir { "<D:resourcetype><D:collection/></D:resourcetype>" } else { "<D:resourcetype/>" }),
        "supportedlock" => out.push_str(SUPPORTED_LOCK),
        "quota-used-bytes" if f.dir && home.is_some() => {
            let _ = write!(out, "<D:quota-used-bytes>{}</D:quota-used-bytes>", home.map(|h| h.0).unwrap_or(0));
        }
        "quota-available-bytes" if f.dir => match home {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_piece_leaves_its_memory_for_the_next() {
        let mut piece = Spare::take(77_777);
        piece.push_str("<D:response/>");
        let cap = piece.capacity();
        let bytes = bytes::Bytes::from_owner(Spare(piece));
        assert_eq!(&bytes[..], b"<D:response/>");
        drop(bytes);
        assert!(SPARE.lock().expect("spares").iter().any(|b| b.capacity() == cap), "kept once sent");
        let again = Spare::take(100);
        assert!(again.is_empty() && again.capacity() >= 100);
        drop(Spare(String::with_capacity(PIECE * 1600 + 1)));
        assert!(SPARE.lock().expect("spares").iter().all(|b| b.capacity() <= PIECE * 1600), "an unusually large one is not kept");
    }

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
    fn folders_are_read_in_batches_of_a_piece() {
        let tmp = tempfile::tempdir().expect("temp dir");
        for i in 0..2 * PIECE {
            std::fs::write(tmp.path().join(format!("f{i}")), b"").expect("file");
        }
        std::os::unix::fs::symlink("f0", tmp.path().join("link")).expect("symlink");
        let fd = rustix::fs::open(tmp.path(), rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
            .expect("open");
        let dir = rustix::fs::Dir::new(fd).expect("dir");
        let mut reader = Reader { dir: Some(dir), next: 0 };
        let mut names = std::collections::HashSet::new();
        let mut batches = Vec::new();
        while let Some(b) = reader.batch().expect("batch") {
            for n in b.names() {
                assert!(names.insert(n.to_str().expect("name").to_string()), "{n:?} twice");
            }
            batches.push((b.n, b.ends.len(), b.last));
        }
        // Two full batches, then the end found on its own: an empty last batch.
        assert_eq!(batches, [(0, PIECE, false), (1, PIECE, false), (2, 0, true)]);
        assert_eq!(names.len(), 2 * PIECE, "every file, no link, no . or ..");
        assert!(!names.contains("link"));
    }

    #[test]
    fn etags_and_dates_match_what_dav_server_is_given() {
        use dav_server::fs::DavMetaData;
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::write(tmp.path().join("a.txt"), b"hello").expect("file");
        std::fs::create_dir(tmp.path().join("sub")).expect("folder");
        // A socket file: not a regular file, so its tag has no length.
        let _socket = std::os::unix::net::UnixListener::bind(tmp.path().join("s.sock")).expect("socket");
        let dir = rustix::fs::open(tmp.path(), rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
            .expect("open");
        let mask = rustix::fs::StatxFlags::TYPE
            | rustix::fs::StatxFlags::MODE
            | rustix::fs::StatxFlags::INO
            | rustix::fs::StatxFlags::SIZE
            | rustix::fs::StatxFlags::MTIME
            | rustix::fs::StatxFlags::BTIME;
        for name in ["a.txt", "sub", "s.sock"] {
            let std_meta = crate::fs::StdMeta(std::fs::symlink_metadata(tmp.path().join(name)).expect("metadata"));
            let stx = rustix::fs::statx(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW, mask).expect("statx");
            for facts in [Facts::of_statx(&stx), Facts::of_std(&std_meta.0)] {
                let mut w = Writer::default();
                let mut out = String::new();
                assert!(live("getetag", &facts, name, None, &mut w, &mut out));
                assert_eq!(out, format!("<D:getetag>{}</D:getetag>", std_meta.etag().expect("etag")), "{name}");
                out.clear();
                assert!(live("creationdate", &facts, name, None, &mut w, &mut out));
                let created: chrono::DateTime<chrono::Utc> = std_meta.created().expect("created").into();
                assert_eq!(out, format!("<D:creationdate>{}</D:creationdate>", created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                out.clear();
                assert!(live("getlastmodified", &facts, name, None, &mut w, &mut out));
                let modified = httpdate::fmt_http_date(std_meta.modified().expect("modified"));
                assert_eq!(out, format!("<D:getlastmodified>{modified}</D:getlastmodified>"));
            }
        }
    }

    #[test]
    fn dead_properties_lose_their_declaration() {
        assert_eq!(dead_xml(br#"<?xml version="1.0" encoding="UTF-8"?><Z:a xmlns:Z="u">b</Z:a>"#), r#"<Z:a xmlns:Z="u">b</Z:a>"#);
        assert_eq!(dead_xml(b"<a/>"), "<a/>");
    }
}

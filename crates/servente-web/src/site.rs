//! One static site: answering a request from its root with redirects, conditionals, ranges,
//! compression, listings, error pages and per-path headers.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use servente_apps::fastcgi::{FastCgiRoute, Script};
use servente_apps::proxy::ProxyRoute;
use servente_apps::upstream::Upstream;
use servente_auth::{Acl, Level};
use servente_config::Site as SiteConfig;
use servente_core::Body;
use servente_core::file_body::FileBody;
use servente_core::metrics::SiteStats;
use tokio_util::io::ReaderStream;

use crate::conditional::{self, Outcome, Validators};
use crate::files::{self, Budget, FileCache, FileMeta, Lookup, Resolver, Target};
use crate::listing;
use crate::negotiate::{self, Coding};
use crate::path::{self, PathError};
use crate::range::{self, ByteRange, Multipart, Ranges};

const ALLOW: &str = "GET, HEAD, OPTIONS";
const STREAM_CHUNK: usize = 128 * 1024;

struct Redirect {
    from: String,
    prefix: bool,
    to: String,
    status: StatusCode,
}

/// A static site built from its `[[site]]` config.
pub struct Site {
    pub name: String,
    pub stats: Arc<SiteStats>,
    resolver: Arc<Resolver>,
    listing: bool,
    hide_dotfiles: bool,
    compress: bool,
    compress_min: u64,
    error_pages: HashMap<u16, String>,
    redirects: Vec<Redirect>,
    cache: FileCache,
    budget: Arc<Budget>,
    /// Access rules: path pattern and who may read; the first match decides.
    access: Vec<(String, Acl)>,
    /// Paths forwarded to upstreams; the first match wins, before files.
    proxy: Vec<ProxyRoute>,
    /// False for a site without a root: only its routes answer.
    files: bool,
    fastcgi: Option<Arc<FastCgiRoute>>,
    /// Where the file role is mounted on this site (`/files/`).
    pub files_mount: Option<String>,
}

/// A counter that makes multipart boundaries unique within the process.
static BOUNDARY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Site {
    pub fn new(
        c: &SiteConfig,
        stats: Arc<SiteStats>,
        budget: Arc<Budget>,
        upstreams: &std::collections::HashMap<String, Arc<Upstream>>,
    ) -> Result<Self, String> {
        let mut proxy = Vec::new();
        for p in &c.proxy {
            let upstream = upstreams.get(&p.upstream).ok_or_else(|| format!("{}: no upstream or app named `{}`", c.key, p.upstream))?;
            proxy.push(ProxyRoute::new(p, upstream.clone()));
        }
        let mut rules = Vec::new();
        for r in &c.rules {
            let mut headers = Vec::new();
            if let Some(cc) = &r.cache_control {
                let v = HeaderValue::from_str(cc).map_err(|_| format!("{}: bad cache_control `{cc}`", c.key))?;
                headers.push((header::CACHE_CONTROL, v));
            }
            for (k, v) in &r.headers {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{}: bad header name `{k}`", c.key))?;
                let value = HeaderValue::from_str(v).map_err(|_| format!("{}: bad value for header `{k}`", c.key))?;
                headers.push((name, value));
            }
            rules.push((r.path.clone(), headers));
        }
        Ok(Site {
            name: c.name.clone(),
            stats,
            resolver: Arc::new(Resolver {
                root: c.root_path.clone(),
                index: c.index.clone(),
                symlinks: c.symlinks,
                hide_dotfiles: c.hide_dotfiles,
                precompressed: c.compression.precompressed,
                compress_types: c.compression.types.clone(),
                rules,
                budget: budget.clone(),
            }),
            listing: c.listing,
            hide_dotfiles: c.hide_dotfiles,
            compress: c.compression.enabled,
            compress_min: c.compression.min_bytes.0,
            error_pages: c.error_pages.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.clone()))).collect(),
            redirects: c
                .redirects
                .iter()
                .map(|r| Redirect {
                    prefix: r.from.ends_with('*'),
                    from: r.from.trim_end_matches('*').to_string(),
                    to: r.to.clone(),
                    status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                })
                .collect(),
            cache: FileCache::new(budget.clone()),
            budget,
            access: c
                .access
                .iter()
                .map(|a| Acl::parse(&a.allow, Level::Read).map(|acl| (a.path.clone(), acl)).map_err(|e| format!("{}: {e}", c.key)))
                .collect::<Result<_, _>>()?,
            proxy,
            files: !c.root.is_empty(),
            files_mount: (!c.files.is_empty()).then(|| c.files.clone()),
            fastcgi: match &c.fastcgi {
                Some(f) => Some(Arc::new(FastCgiRoute::new(f, &c.root_path).map_err(|e| format!("{}.fastcgi: {e}", c.key))?)),
                None => None,
            },
        })
    }

    /// The FastCGI script a request goes to, if the site has a FastCGI route and the path
    /// names a script (or falls to the front controller). Checks the disk on the blocking pool.
    pub async fn fastcgi_script(&self, raw_path: &str) -> Option<(Arc<FastCgiRoute>, Arc<Script>)> {
        let route = self.fastcgi.clone()?;
        let url = path::clean(raw_path, self.hide_dotfiles).ok()?.url_path;
        let script = match route.cached_script(&url) {
            Some(known) => known?,
            None => {
                let (r, url) = (route.clone(), url.into_owned());
                tokio::task::spawn_blocking(move || r.resolve_and_cache(&url)).await.ok().flatten()?
            }
        };
        Some((route, script))
    }

    /// The access rule and the proxy route for a request path, both matched on the decoded,
    /// normalized path (so that `%2e` or `//` tricks cannot step around a rule), cleaned once.
    /// `None` where none matches: the path is public, or not proxied.
    pub fn rules_for(&self, raw_path: &str) -> (Option<&Acl>, Option<&ProxyRoute>) {
        if self.access.is_empty() && self.proxy.is_empty() {
            return (None, None);
        }
        let Ok(clean) = path::clean(raw_path, false) else { return (None, None) };
        let url = &*clean.url_path;
        let acl = self.access.iter().find(|(pattern, _)| negotiate::glob_match(pattern, url)).map(|(_, acl)| acl);
        (acl, self.proxy.iter().find(|r| negotiate::glob_match(&r.pattern, url)))
    }

    async fn lookup(&self, url_path: &str, relative: &str, trailing_slash: bool, now: Instant) -> Arc<Target> {
        let previous = match self.cache.lookup(url_path, now) {
            Lookup::Hit(t) => return t,
            Lookup::Miss(previous) => previous,
        };
        let resolver = self.resolver.clone();
        let (relative, url) = (relative.to_string(), url_path.to_string());
        let fallback = previous.clone();
        let target = match tokio::task::spawn_blocking(move || files::resolve(&resolver, &relative, trailing_slash, &url, previous)).await {
            Ok(t) => Arc::new(t),
            Err(_) => fallback.unwrap_or_else(|| Arc::new(Target::Forbidden)),
        };
        self.cache.store(url_path.to_string(), target.clone());
        target
    }

    /// Answers one request.
    /// Answers one request; `now` is a recent clock reading (the request's start).
    pub async fn handle<B>(&self, req: &Request<B>, now: Instant, sendfile: bool) -> Response<Body> {
        let method = req.method();
        if method == Method::OPTIONS {
            let mut r = empty(StatusCode::NO_CONTENT);
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            return r;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            return r;
        }
        let head = method == Method::HEAD;
        if !self.files {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let clean = match path::clean(req.uri().path(), self.hide_dotfiles) {
            Ok(c) => c,
            Err(PathError::BadRequest) => return self.error(StatusCode::BAD_REQUEST, head, now).await,
            Err(PathError::Hidden) => return self.error(StatusCode::NOT_FOUND, head, now).await,
        };
        let url_path = &clean.url_path;
        if let Some(r) = self.redirect(url_path, req.uri().query()) {
            return r;
        }
        let target = self.lookup(url_path, &clean.relative, clean.trailing_slash, now).await;
        match target.as_ref() {
            Target::File(f) => self.serve_file(f, req.headers(), head, sendfile).await,
            Target::AddSlash => {
                let mut location = path::encode_path(&format!("{url_path}/"));
                if let Some(q) = req.uri().query() {
                    location.push('?');
                    location.push_str(q);
                }
                redirect_to(StatusCode::MOVED_PERMANENTLY, &location)
            }
            Target::Folder(dir) if self.listing => {
                let json = wants_json(req);
                let dir = dir.clone();
                let hide = self.hide_dotfiles;
                let resolver = self.resolver.clone();
                let listed = tokio::task::spawn_blocking(move || listing::read(&dir, hide, |p| resolver.allows(p))).await;
                match listed {
                    Ok(Ok(entries)) => {
                        let mut r = if json {
                            with_type(listing::json(&entries), "application/json")
                        } else {
                            with_type(listing::html(url_path, &entries), "text/html; charset=utf-8")
                        };
                        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                        r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
                        strip_body_for_head(r, head)
                    }
                    _ => self.error(StatusCode::FORBIDDEN, head, now).await,
                }
            }
            Target::Folder(_) | Target::Forbidden => self.error(StatusCode::FORBIDDEN, head, now).await,
            Target::NotFound => self.error(StatusCode::NOT_FOUND, head, now).await,
        }
    }

    fn redirect(&self, url_path: &str, query: Option<&str>) -> Option<Response<Body>> {
        for r in &self.redirects {
            let rest = if r.prefix {
                match url_path.strip_prefix(r.from.as_str()) {
                    Some(rest) => rest,
                    None => continue,
                }
            } else if url_path == r.from {
                ""
            } else {
                continue;
            };
            let mut location = match r.to.strip_suffix('*') {
                Some(base) => format!("{base}{}", path::encode_path(rest)),
                None => r.to.clone(),
            };
            if let Some(q) = query
                && !location.contains('?')
            {
                location.push('?');
                location.push_str(q);
            }
            return Some(redirect_to(r.status, &location));
        }
        None
    }

    /// An error answer, with the site's page for that status when it has one.
    async fn error(&self, status: StatusCode, head: bool, now: Instant) -> Response<Body> {
        if let Some(page) = self.error_pages.get(&status.as_u16())
            && let Ok(clean) = path::clean(page, false)
            && let Target::File(f) = self.lookup(&clean.url_path, &clean.relative, false, now).await.as_ref()
        {
            let body = match &f.body {
                Some(b) => Some(b.bytes.clone()),
                None => tokio::fs::read(&f.path).await.ok().map(Bytes::from),
            };
            if let Some(body) = body {
                let mut r = Response::new(Body::Empty);
                *r.status_mut() = status;
                r.headers_mut().insert(header::CONTENT_TYPE, f.content_type.clone());
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                if !head {
                    *r.body_mut() = Body::full(body);
                }
                return r;
            }
        }
        let message = match status {
            StatusCode::BAD_REQUEST => "bad request\n",
            StatusCode::FORBIDDEN => "forbidden\n",
            StatusCode::NOT_FOUND => "not found\n",
            _ => "error\n",
        };
        strip_body_for_head(text(status, message), head)
    }

    async fn serve_file(&self, f: &Arc<FileMeta>, req: &HeaderMap, head: bool, sendfile: bool) -> Response<Body> {
        let range_header = req.get(header::RANGE).and_then(|v| v.to_str().ok());
        // Pick the representation: a fresh sidecar, on-the-fly compression, or the file as is.
        let accept = req.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
        let on_the_fly = self.compress && f.compressible && f.len >= self.compress_min;
        // A streamed compression has no length to take ranges of: ranges get the file as is.
        let on_the_fly_here = on_the_fly && (f.body.is_some() || range_header.is_none());
        let mut coding = None;
        if !accept.is_empty() {
            let available = Coding::ALL.map(|c| f.sidecars[c.index()].is_some() || on_the_fly_here);
            coding = negotiate::choose(accept, available);
        }
        let mut rep = match coding {
            None => Rep::Identity,
            Some(c) => match &f.sidecars[c.index()] {
                Some(s) => Rep::Sidecar(c, s),
                None => Rep::OnTheFly(c),
            },
        };
        // A cached body is compressed once and kept; if that does not pay off, send it as is.
        let mut compressed: Option<Bytes> = None;
        if let Rep::OnTheFly(c) = rep
            && let Some(body) = &f.body
        {
            let budget = self.budget.clone();
            let src = body.bytes.clone();
            let cell = &f.encoded[c.index()];
            let made = cell
                .get_or_init(|| async move {
                    let out = tokio::task::spawn_blocking(move || compress_all(&src, c)).await.ok()??;
                    files::cache_bytes(out, &budget)
                })
                .await;
            match made {
                Some(b) => compressed = Some(b.bytes.clone()),
                None => rep = Rep::Identity,
            }
        }
        let (etag, len): (&HeaderValue, Option<u64>) = match (&rep, &compressed) {
            (Rep::Identity, _) => (&f.etags[0], Some(f.len)),
            (Rep::Sidecar(_, s), _) => (&s.etag, Some(s.len)),
            (Rep::OnTheFly(c), Some(b)) => (&f.etags[c.index() + 1], Some(b.len() as u64)),
            (Rep::OnTheFly(c), None) => (&f.etags[c.index() + 1], None),
        };
        let mut headers = f.headers.clone();
        headers.insert(header::ETAG, etag.clone());
        let etag = etag.to_str().unwrap_or("");
        if let Rep::Sidecar(c, _) | Rep::OnTheFly(c) = rep {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.token()));
        }
        let honor_range = match conditional::evaluate(req, true, Validators { etag, last_modified: f.modified }) {
            Outcome::NotModified => {
                headers.remove(header::CONTENT_TYPE);
                headers.remove(header::ACCEPT_RANGES);
                return with_headers(empty(StatusCode::NOT_MODIFIED), headers);
            }
            Outcome::Failed => return text(StatusCode::PRECONDITION_FAILED, "precondition failed\n"),
            Outcome::Proceed { honor_range } => honor_range,
        };
        let Some(len) = len else {
            // Streamed compression of a file too large to cache: length unknown, no ranges.
            let Rep::OnTheFly(c) = rep else { return text(StatusCode::INTERNAL_SERVER_ERROR, "error\n") };
            let body = if head { Body::Empty } else { compress_stream(&f.path, c).await.unwrap_or(Body::Empty) };
            return with_headers(Response::new(body), headers);
        };
        let ranges = match range_header {
            Some(r) if honor_range => range::parse(r, len),
            _ => Ranges::Full,
        };
        let (source_path, cached): (&std::path::Path, Option<&Bytes>) = match &rep {
            Rep::Identity => (&f.path, f.body.as_ref().map(|b| &b.bytes)),
            Rep::Sidecar(_, s) => (&s.path, s.body.as_ref().map(|b| &b.bytes)),
            Rep::OnTheFly(_) => (&f.path, compressed.as_ref()),
        };
        match ranges {
            Ranges::Full => {
                let length = if let Rep::Identity = rep { f.len_value.clone() } else { HeaderValue::from(len) };
                headers.insert(header::CONTENT_LENGTH, length);
                let body = if head {
                    Body::Empty
                } else {
                    match cached {
                        Some(b) => Body::full(b.clone()),
                        None => match file_body(source_path, 0, len, sendfile) {
                            Ok(b) => b,
                            Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
                        },
                    }
                };
                with_headers(Response::new(body), headers)
            }
            Ranges::Unsatisfiable => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Ranges::Partial(list) if list.len() == 1 => {
                let r = list[0];
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{len}", r.start, r.end)) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                let body = if head {
                    Body::Empty
                } else {
                    match cached {
                        Some(b) => Body::full(b.slice(r.start as usize..=r.end as usize)),
                        None => match file_body(source_path, r.start, r.len(), sendfile) {
                            Ok(b) => b,
                            Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
                        },
                    }
                };
                let mut resp = with_headers(Response::new(body), headers);
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                resp
            }
            Ranges::Partial(list) => {
                let boundary = format!("servente-{:016x}", BOUNDARY_COUNTER.fetch_add(1, Relaxed) ^ 0x5e7e_47e0_0000_0000);
                let ct = f.content_type.to_str().unwrap_or("application/octet-stream");
                let mp = Multipart::new(boundary, ct, &list, len);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(mp.body_len(&list)));
                if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={}", mp.boundary)) {
                    headers.insert(header::CONTENT_TYPE, v);
                }
                let body = if head {
                    Body::Empty
                } else {
                    match cached {
                        Some(b) => Body::full(multipart_in_memory(&mp, &list, b)),
                        None => match std::fs::File::open(source_path) {
                            Ok(file) => Body::stream(MultipartBody::new(file, mp, list, sendfile)),
                            Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
                        },
                    }
                };
                let mut resp = with_headers(Response::new(body), headers);
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                resp
            }
        }
    }
}

enum Rep<'a> {
    Identity,
    Sidecar(Coding, &'a files::Sidecar),
    OnTheFly(Coding),
}

fn wants_json<B>(req: &Request<B>) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "format=json"))
        || req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    servente_core::simple_response(status, message)
}

fn with_type(body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn with_headers(mut r: Response<Body>, headers: HeaderMap) -> Response<Body> {
    *r.headers_mut() = headers;
    r
}

fn redirect_to(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = text(status, "moved\n");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// For HEAD: keep the headers (with the length the GET would have) and drop the body.
fn strip_body_for_head(mut r: Response<Body>, head: bool) -> Response<Body> {
    if head {
        let len = http_body::Body::size_hint(r.body()).exact();
        if let Some(len) = len {
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        *r.body_mut() = Body::Empty;
    }
    r
}

/// Streams `len` bytes of a file from `start` (read from the page cache on this thread when
/// the bytes are there, or not read at all on a connection that sends them with `sendfile`,
/// see [`FileBody`]).
fn file_body(path: &std::path::Path, start: u64, len: u64, sendfile: bool) -> io::Result<Body> {
    Ok(Body::stream(FileBody::new(std::fs::File::open(path)?, start, len).unread_if(sendfile)))
}

fn multipart_in_memory(mp: &Multipart, list: &[ByteRange], body: &Bytes) -> Bytes {
    let mut out = Vec::with_capacity(mp.body_len(list) as usize);
    for (h, r) in mp.part_headers.iter().zip(list) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&body[r.start as usize..=r.end as usize]);
    }
    out.extend_from_slice(mp.closing.as_bytes());
    Bytes::from(out)
}

/// A multipart/byteranges body from disk: each part's header, then its bytes as a
/// [`FileBody`] (never more than a chunk in memory, however large the range), then the closing
/// boundary. One open file serves every part.
struct MultipartBody {
    file: Arc<std::fs::File>,
    parts: std::vec::IntoIter<(Bytes, ByteRange)>,
    current: Option<FileBody>,
    closing: Option<Bytes>,
    /// Parts may go unread ([`FileBody::unread_if`]).
    sendfile: bool,
}

impl MultipartBody {
    fn new(file: std::fs::File, mp: Multipart, list: Vec<ByteRange>, sendfile: bool) -> Self {
        let parts: Vec<(Bytes, ByteRange)> = mp.part_headers.into_iter().map(Bytes::from).zip(list).collect();
        MultipartBody { file: Arc::new(file), parts: parts.into_iter(), current: None, closing: Some(Bytes::from(mp.closing)), sendfile }
    }
}

impl http_body::Body for MultipartBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(part) = this.current.as_mut() {
            match std::pin::Pin::new(part).poll_frame(cx) {
                Poll::Ready(None) => this.current = None,
                other => return other,
            }
        }
        Poll::Ready(match this.parts.next() {
            Some((header, r)) => {
                this.current = Some(FileBody::shared(this.file.clone(), r.start, r.len()).unread_if(this.sendfile));
                Some(Ok(Frame::data(header)))
            }
            None => this.closing.take().map(|c| Ok(Frame::data(c))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.current.is_none() && self.parts.len() == 0 && self.closing.is_none()
    }
}

/// Compresses a whole body; `None` when it does not get smaller.
fn compress_all(src: &[u8], c: Coding) -> Option<Bytes> {
    use std::io::Write;
    let out = match c {
        Coding::Br => {
            let mut out = Vec::with_capacity(src.len() / 3);
            let params = brotli::enc::BrotliEncoderParams { quality: 6, lgwin: 22, ..Default::default() };
            brotli::BrotliCompress(&mut &src[..], &mut out, &params).ok()?;
            out
        }
        Coding::Zstd => zstd::bulk::compress(src, 6).ok()?,
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(src.len() / 3), flate2::Compression::new(6));
            e.write_all(src).ok()?;
            e.finish().ok()?
        }
    };
    (out.len() < src.len()).then(|| Bytes::from(out))
}

/// Compresses a file as it is streamed (for files too large to keep in memory).
async fn compress_stream(path: &std::path::Path, c: Coding) -> io::Result<Body> {
    use async_compression::Level;
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
    let file = tokio::io::BufReader::with_capacity(STREAM_CHUNK, tokio::fs::File::open(path).await?);
    let body = match c {
        Coding::Br => stream_reader(BrotliEncoder::with_quality(file, Level::Precise(4))),
        Coding::Zstd => stream_reader(ZstdEncoder::with_quality(file, Level::Precise(3))),
        Coding::Gzip => stream_reader(GzipEncoder::with_quality(file, Level::Precise(6))),
    };
    Ok(body)
}

fn stream_reader<R: tokio::io::AsyncRead + Send + 'static>(r: R) -> Body {
    let stream = ReaderStream::with_capacity(r, STREAM_CHUNK);
    Body::stream(http_body_util::StreamBody::new(stream.map_ok(Frame::data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multipart_from_disk_matches_the_in_memory_layout() {
        use http_body_util::BodyExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data.bin");
        // Larger than a read chunk, so a part spans several frames.
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let list = vec![ByteRange { start: 0, end: 9 }, ByteRange { start: 100_000, end: 650_000 }, ByteRange { start: 5, end: 5 }];
        let mp = || Multipart::new("b0undary".to_string(), "application/octet-stream", &list, data.len() as u64);
        let expected = multipart_in_memory(&mp(), &list, &Bytes::from(data.clone()));
        assert_eq!(expected.len() as u64, mp().body_len(&list));
        let file = std::fs::File::open(&path).expect("open");
        let got = MultipartBody::new(file, mp(), list.clone(), false).collect().await.expect("body").to_bytes();
        assert!(got == expected, "{} bytes streamed, {} expected", got.len(), expected.len());
    }

    #[test]
    fn compression_round_trips() {
        use std::io::Read;
        let src = "hello servente ".repeat(500);
        let gz = compress_all(src.as_bytes(), Coding::Gzip).expect("smaller");
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut back).expect("gunzip");
        assert_eq!(back, src);
        let zs = compress_all(src.as_bytes(), Coding::Zstd).expect("smaller");
        assert_eq!(zstd::bulk::decompress(&zs, src.len()).expect("unzstd"), src.as_bytes());
        let br = compress_all(src.as_bytes(), Coding::Br).expect("smaller");
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut out).expect("unbrotli");
        assert_eq!(out, src.as_bytes());
        assert!(compress_all(b"x", Coding::Gzip).is_none(), "tiny input does not shrink");
    }
}

//! FastCGI (the protocol of php-fpm): the wire format ([`encode_param`], [`Record`],
//! [`parse_cgi_head`], no IO), a client that runs one request on a kept-alive connection, and
//! the site route that decides which requests are scripts, the way nginx's usual PHP setup
//! does (`try_files $uri $uri/ /index.php`).
//!
//! Written by hand: the protocol is small (eight record types, of which a responder uses six)
//! and the crates for it did not fit the streaming and pooling servente needs.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body as _, Frame};
use servente_config::FastCgi as FastCgiConfig;
use servente_core::RequestBody;
use servente_core::{Body, RequestCx, simple_response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::pool::Address;
use crate::read_timeout::ReadTimeout;
use servente_core::lazy_timer::LazyTimer;

const VERSION: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const RESPONDER: u16 = 1;
/// Largest content of one record.
const MAX_CONTENT: usize = 65_535;
/// Largest CGI response head servente reads before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// The request id: one request per connection at a time.
const REQUEST_ID: u16 = 1;

/// Appends one record (content up to 65,535 bytes) to `out`.
pub fn write_record(out: &mut BytesMut, kind: u8, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    let padding = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&REQUEST_ID.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[padding as u8, 0]);
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// Appends `data` as as many records of `kind` as it takes.
fn write_stream(out: &mut BytesMut, kind: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        write_record(out, kind, chunk);
    }
}

fn write_length(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// Appends one name-value pair in FastCGI's encoding (lengths of 1 or 4 bytes).
pub fn encode_param(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    write_length(out, name.len());
    write_length(out, value.len());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value);
}

/// One record read from the application.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub kind: u8,
    pub content: Bytes,
}

/// Takes one complete record off the front of `buf`, if there is one.
pub fn parse_record(buf: &mut BytesMut) -> Result<Option<Record>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(format!("not a FastCGI record (version byte {})", buf[0]));
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let padding = buf[6] as usize;
    if buf.len() < 8 + len + padding {
        return Ok(None);
    }
    let kind = buf[1];
    buf.advance(8);
    let content = buf.split_to(len).freeze();
    buf.advance(padding);
    Ok(Some(Record { kind, content }))
}

/// A parsed CGI head: status, headers, and how many bytes of the buffer it took.
pub type CgiHead = (StatusCode, Vec<(HeaderName, HeaderValue)>, usize);

/// Splits a CGI response head (`Status: 404 Not Found`, `Location: ...`, other headers) from
/// the body bytes after it. `None` while the head is incomplete.
pub fn parse_cgi_head(buf: &[u8]) -> Result<Option<CgiHead>, String> {
    let end = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, p + 4),
        None => match buf.windows(2).position(|w| w == b"\n\n") {
            Some(p) => (p, p + 2),
            None => return Ok(None),
        },
    };
    let head = std::str::from_utf8(&buf[..end.0]).map_err(|_| "the script's response head is not UTF-8".to_string())?;
    let mut status = None;
    let mut headers = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line from the script: `{line}`"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse::<u16>().ok()).and_then(|c| StatusCode::from_u16(c).ok());
            status = Some(code.ok_or_else(|| format!("bad Status from the script: `{value}`"))?);
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("bad header name from the script: `{name}`"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("bad value of {name} from the script"))?;
        headers.push((name, value));
    }
    let status = status.unwrap_or(if headers.iter().any(|(n, _)| n == header::LOCATION) { StatusCode::FOUND } else { StatusCode::OK });
    Ok(Some((status, headers, end.1)))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(address: &Address) -> io::Result<Box<dyn Stream>> {
    Ok(match address {
        Address::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
        Address::Name(n) => Box::new(tokio::net::TcpStream::connect(n.as_str()).await?),
        Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
    })
}

/// A site's FastCGI route.
pub struct FastCgiRoute {
    address: Address,
    root: PathBuf,
    prefix: String,
    extension: String,
    front_controller: Option<String>,
    params: Vec<(String, String)>,
    max_idle: usize,
    /// Longest wait for the application (connect, response head, each piece of the body).
    timeout: Duration,
    pool_key: Arc<str>,
    /// Recent answers of `script_for` by URL path: a busy front controller would otherwise
    /// cost a trip to the blocking pool and a few file system calls per request.
    /// Looked up on every request: keyed with foldhash (seeded per process, as the file cache
    /// of `servente-web`), not SipHash; the map is bounded by `SCRIPT_CACHE_MAX`.
    cache: dashmap::DashMap<String, (Option<Arc<Script>>, Instant), foldhash::fast::RandomState>,
}

/// How long a cached script resolution is trusted (a new or removed file is seen after this).
const SCRIPT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most paths remembered; past it the cache starts over (hostile URLs cannot grow it).
const SCRIPT_CACHE_MAX: usize = 10_000;

/// What a request path means under the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// URL path of the script (`SCRIPT_NAME`).
    pub name: String,
    pub path_info: String,
    pub file: PathBuf,
}

impl FastCgiRoute {
    pub fn new(c: &FastCgiConfig, root: &Path) -> Result<Self, String> {
        Ok(FastCgiRoute {
            address: Address::parse(&c.address)?,
            root: root.to_path_buf(),
            prefix: c.path.clone(),
            extension: c.extension.clone(),
            front_controller: c.front_controller.clone(),
            params: c.params.clone(),
            max_idle: c.max_idle,
            timeout: c.timeout.0,
            pool_key: Arc::from(c.address.as_str()),
            cache: dashmap::DashMap::default(),
        })
    }

    /// [`FastCgiRoute::script_for`] through a short-lived cache: `Some` with the answer when
    /// it is known, `None` when the disk must be asked (on the blocking pool).
    pub fn cached_script(&self, url_path: &str) -> Option<Option<Arc<Script>>> {
        match self.cache.get(url_path) {
            Some(e) if e.1.elapsed() < SCRIPT_CACHE_TTL => Some(e.0.clone()),
            _ => None,
        }
    }

    /// Asks the disk and remembers the answer. Blocks.
    pub fn resolve_and_cache(&self, url_path: &str) -> Option<Arc<Script>> {
        let script = self.script_for(url_path).map(Arc::new);
        if self.cache.len() >= SCRIPT_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(url_path.to_string(), (script.clone(), Instant::now()));
        script
    }

    /// The script for a normalized URL path, if the request goes to FastCGI: a script named in
    /// the path (with what follows as PATH_INFO), a folder's `index` script, or the front
    /// controller for paths that match no file or folder. Blocks (file system checks).
    pub fn script_for(&self, url_path: &str) -> Option<Script> {
        if !url_path.starts_with(&self.prefix) {
            return None;
        }
        let inside = |file: &Path| -> bool {
            // Scripts must be regular files inside the root, wherever links point.
            std::fs::canonicalize(file).is_ok_and(|f| f.starts_with(&self.root) && f.is_file())
        };
        // A segment ending in the extension names the script; the rest is PATH_INFO.
        let mut end = 0;
        for seg in url_path.split_inclusive('/') {
            end += seg.len();
            let name = seg.trim_end_matches('/');
            if name.ends_with(&self.extension) && name.len() > self.extension.len() {
                let script = &url_path[..end - (seg.len() - name.len())];
                let file = self.root.join(script.trim_start_matches('/'));
                if inside(&file) {
                    return Some(Script { name: script.to_string(), path_info: url_path[script.len()..].to_string(), file });
                }
                break;
            }
        }
        let on_disk = self.root.join(url_path.trim_start_matches('/'));
        match std::fs::metadata(&on_disk) {
            Ok(m) if m.is_dir() => {
                let index = on_disk.join(format!("index{}", self.extension));
                if url_path.ends_with('/') && inside(&index) {
                    return Some(Script { name: format!("{url_path}index{}", self.extension), path_info: String::new(), file: index });
                }
                None
            }
            Ok(_) => None,
            Err(_) => {
                let fc = self.front_controller.as_ref()?;
                let file = self.root.join(fc.trim_start_matches('/'));
                inside(&file).then(|| Script { name: fc.clone(), path_info: String::new(), file })
            }
        }
    }

    /// Runs a script and answers with its response, streamed.
    pub async fn run(&self, req: Request<RequestBody>, script: Arc<Script>, cx: &RequestCx) -> Response<Body> {
        match self.exchange(req, &script, cx).await {
            Ok(r) => r,
            Err(Failure::Timeout) => {
                tracing::warn!(script = %script.name, fastcgi = %self.address, "FastCGI application did not answer within {:?}", self.timeout);
                simple_response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout: the FastCGI application did not answer in time\n")
            }
            Err(Failure::Client(e)) => {
                tracing::debug!(script = %script.name, "the client's request body failed: {e}");
                servente_core::request_body::body_failed(servente_core::request_body::is_timeout(&e))
            }
            Err(Failure::Other(e)) => {
                tracing::warn!(script = %script.name, fastcgi = %self.address, "FastCGI request failed: {e}");
                simple_response(StatusCode::BAD_GATEWAY, "bad gateway: the FastCGI application failed to answer\n")
            }
        }
    }

    /// The CGI variables of a request, encoded as FCGI_PARAMS content. Written straight into
    /// one buffer: a request has some 30 of them, and building each as an owned string first
    /// showed as the largest item of the FastCGI path in profiles.
    /// `length`: the body's length when it was read ahead (see [`Buffered`]); otherwise the
    /// request's Content-Length goes as it is.
    fn params<B>(&self, req: &Request<B>, script: &Script, cx: &RequestCx, length: Option<u64>) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut out = Vec::with_capacity(1024);
        let mut put = |name: &str, value: &[u8]| encode_param(&mut out, name, value);
        let uri = req.uri();
        let text = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        let host = text(header::HOST).or(uri.host()).unwrap_or("localhost");
        let (server_name, server_port) = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') || h.starts_with('[') => (h, p),
            _ => (host, if cx.tls { "443" } else { "80" }),
        };
        let mut scratch = String::new();
        // Paths go as their bytes: FastCGI values are bytes, and a file name need not be UTF-8.
        let file = script.file.as_os_str().as_encoded_bytes();
        let root = self.root.as_os_str().as_encoded_bytes();
        put("GATEWAY_INTERFACE", b"CGI/1.1");
        put("SERVER_SOFTWARE", b"servente");
        put("REQUEST_METHOD", req.method().as_str().as_bytes());
        put("REQUEST_URI", uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        put("QUERY_STRING", uri.query().unwrap_or("").as_bytes());
        put("SCRIPT_NAME", script.name.as_bytes());
        put("SCRIPT_FILENAME", file);
        put("DOCUMENT_ROOT", root);
        scratch.push_str(&script.name);
        scratch.push_str(&script.path_info);
        put("DOCUMENT_URI", scratch.as_bytes());
        put("PATH_INFO", script.path_info.as_bytes());
        put(
            "SERVER_PROTOCOL",
            match req.version() {
                http::Version::HTTP_2 => b"HTTP/2.0",
                http::Version::HTTP_10 => b"HTTP/1.0",
                _ => b"HTTP/1.1",
            },
        );
        put("REQUEST_SCHEME", if cx.tls { b"https" } else { b"http" });
        put("SERVER_NAME", server_name.as_bytes());
        put("SERVER_PORT", server_port.as_bytes());
        match cx.peer {
            Some(p) => {
                scratch.clear();
                let _ = write!(scratch, "{}", p.ip().to_canonical());
                put("REMOTE_ADDR", scratch.as_bytes());
                scratch.clear();
                let _ = write!(scratch, "{}", p.port());
                put("REMOTE_PORT", scratch.as_bytes());
            }
            None => {
                put("REMOTE_ADDR", b"127.0.0.1");
                put("REMOTE_PORT", b"0");
            }
        }
        match length {
            Some(n) => {
                scratch.clear();
                let _ = write!(scratch, "{n}");
                put("CONTENT_LENGTH", scratch.as_bytes());
            }
            None => put("CONTENT_LENGTH", text(header::CONTENT_LENGTH).unwrap_or("").as_bytes()),
        }
        put("CONTENT_TYPE", text(header::CONTENT_TYPE).unwrap_or("").as_bytes());
        // php-cgi refuses to run without it unless cgi.force_redirect is off.
        put("REDIRECT_STATUS", b"200");
        let mut value = Vec::new();
        if !script.path_info.is_empty() {
            value.extend_from_slice(root);
            value.extend_from_slice(script.path_info.as_bytes());
            put("PATH_TRANSLATED", &value);
        }
        if cx.tls {
            put("HTTPS", b"on");
        }
        if let Some(user) = &cx.user {
            put("REMOTE_USER", user.as_bytes());
        }
        // Each header name once, its values joined with ", " (as CGI wants).
        for name in req.headers().keys() {
            // `Proxy` would become HTTP_PROXY, which many libraries take as their proxy
            // setting ("httpoxy"); Content-Type and -Length are passed above.
            // A name with an underscore would pass for another (X_Forwarded_For becomes
            // HTTP_X_FORWARDED_FOR, as X-Forwarded-For does): such headers are dropped, as
            // nginx does by default (`underscores_in_headers off`).
            if name == "proxy" || name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH || name.as_str().contains('_') {
                continue;
            }
            scratch.clear();
            scratch.push_str("HTTP_");
            scratch.extend(name.as_str().chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }));
            value.clear();
            for (i, v) in req.headers().get_all(name).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            put(&scratch, &value);
        }
        for (k, v) in &self.params {
            put(k, v.as_bytes());
        }
        out
    }

    /// A new connection to the application, within the timeout.
    async fn open(&self) -> Result<Box<dyn Stream>, Failure> {
        match tokio::time::timeout(self.timeout, connect(&self.address)).await {
            Ok(r) => r.map_err(|e| Failure::Other(format!("cannot connect to {}: {e}", self.address))),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Writes `bytes` to the application, each write within the route's timeout (as nginx's
    /// `fastcgi_send_timeout`): an application that stops reading its input (a stuck script
    /// with a large POST body) must not hold the client for ever. No timer is armed when the
    /// socket takes the bytes at once, as it does for a request head.
    async fn send(&self, s: &mut Box<dyn Stream>, bytes: &[u8]) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, s.write_all(bytes)).await {
            Ok(r) => r.map_err(|e| Failure::Other(e.to_string())),
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, mut req: Request<RequestBody>, script: &Script, cx: &RequestCx) -> Result<Response<Body>, Failure> {
        // A body without a declared length (chunked HTTP/1.1, HTTP/2 DATA frames alone) is read
        // first: applications take the body's length from CONTENT_LENGTH and see no body
        // without it.
        let bodiless = req.body().is_end_stream();
        let mut buffered = None;
        if !bodiless && !req.headers().contains_key(header::CONTENT_LENGTH) {
            match Buffered::read(req.body_mut(), cx.max_body).await? {
                Some(b) => buffered = Some(b),
                None => return Ok(too_large()),
            }
        }
        let params = self.params(&req, script, cx, buffered.as_ref().map(Buffered::len));
        let mut out = BytesMut::with_capacity(params.len() + 64);
        let mut begin = [0u8; 8];
        begin[..2].copy_from_slice(&RESPONDER.to_be_bytes());
        // With `max_idle`, FCGI_KEEP_CONN: the connection stays open for the next request (and
        // keeps its php-fpm child); without, the application closes it when done.
        begin[2] = u8::from(self.max_idle > 0);
        write_record(&mut out, BEGIN_REQUEST, &begin);
        write_stream(&mut out, PARAMS, &params);
        write_record(&mut out, PARAMS, &[]);
        // A request known to have no body (hyper says so from its framing, for HTTP/1.1 and
        // HTTP/2 alike) ends its STDIN at once: the whole request is one write.
        if bodiless {
            write_record(&mut out, STDIN, &[]);
        }
        let request = out.split().freeze();
        // A kept connection may have been closed by the application meanwhile: if writing the
        // head on it fails, a fresh connection takes the request (nothing of it was processed).
        let (mut reused, timer) = match take_idle(&self.pool_key) {
            Some(Idle { stream, timer }) => (Some(stream), timer),
            None => (None, LazyTimer::default()),
        };
        if let Some(s) = reused.as_mut()
            && self.send(s, &request).await.is_err()
        {
            reused = None;
        }
        // The close may also show only when reading: a request without a body can then be
        // sent again on a fresh connection, since the application never started it.
        let mut replay = (reused.is_some() && bodiless).then(|| request.clone());
        let mut stream = match reused {
            Some(s) => s,
            None => {
                let mut s = self.open().await?;
                self.send(&mut s, &request).await?;
                s
            }
        };
        if let Some(body) = buffered {
            body.send(self, &mut stream, &mut out).await?;
        } else if !bodiless {
            // The request body, streamed as STDIN records, up to `limits.max_body_bytes`.
            let mut body = req.into_body();
            let mut left = cx.max_body;
            loop {
                match next_data(&mut body, &mut left).await? {
                    Next::Data(data) => {
                        out.clear();
                        write_stream(&mut out, STDIN, &data);
                        self.send(&mut stream, &out).await?;
                    }
                    Next::End => break,
                    Next::TooLarge => return Ok(too_large()),
                }
            }
        }
        if !bodiless {
            out.clear();
            write_record(&mut out, STDIN, &[]);
            self.send(&mut stream, &out).await?;
        }
        // The response head.
        let keep = (self.max_idle > 0).then(|| (self.pool_key.clone(), self.max_idle));
        let mut reader = RecordReader { stream: Some(stream), timer, buf: BytesMut::with_capacity(16 * 1024), done: false, keep };
        let mut head = BytesMut::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (status, headers, rest) = loop {
            let next = reader.next_stdout_by(deadline).await.ok_or(Failure::Timeout)?;
            match next {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                Ok(None) => return Err("the script ended without a response".into()),
                Err(e) => match replay.take() {
                    Some(request) if head.is_empty() => {
                        tracing::debug!(fastcgi = %self.address, "kept connection was closed ({e}); sending the request again on a new one");
                        let mut s = self.open().await?;
                        self.send(&mut s, &request).await?;
                        reader.stream = Some(s);
                        reader.buf.clear();
                        continue;
                    }
                    _ => return Err(e.into()),
                },
            }
            if let Some((status, headers, used)) = parse_cgi_head(&head)? {
                break (status, headers, head.split_off(used).freeze());
            }
            if head.len() > MAX_HEAD {
                return Err("the script's response head is larger than 64 KiB".into());
            }
        };
        let body = CgiBody { first: (!rest.is_empty()).then_some(rest), reader };
        let body = Box::pin(http_body_util::StreamBody::new(body.into_stream()));
        let mut r = Response::new(Body::stream(ReadTimeout::new(body, self.timeout)));
        *r.status_mut() = status;
        for (n, v) in headers {
            r.headers_mut().append(n, v);
        }
        Ok(r)
    }
}

/// Why an exchange with the application failed.
enum Failure {
    /// It did not answer within the route's timeout (504).
    Timeout,
    /// The client's body failed: it stopped coming (408) or broke off (400). Not the
    /// application's fault.
    Client(io::Error),
    /// Anything else (502), said in one line.
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Other(e.to_string())
    }
}

/// A request body read whole before its request goes out (see `exchange`): in memory up to
/// [`Buffered::IN_MEMORY`], in an unnamed temporary file beyond, as nginx spills a request body
/// past its buffer, so that large uploads of unknown length do not sit in memory.
enum Buffered {
    Memory(BytesMut),
    File(tokio::fs::File, u64),
}

impl Buffered {
    const IN_MEMORY: usize = 256 << 10;

    /// The body, or None when it is longer than `max`.
    async fn read(body: &mut RequestBody, max: u64) -> Result<Option<Buffered>, Failure> {
        let mut mem = BytesMut::new();
        let mut file: Option<(tokio::fs::File, u64)> = None;
        let spill = |e: io::Error| Failure::Other(format!("cannot keep the request body in a temporary file: {e}"));
        let mut left = max;
        loop {
            let data = match next_data(body, &mut left).await? {
                Next::Data(data) => data,
                Next::End => break,
                Next::TooLarge => return Ok(None),
            };
            let total = max - left;
            match &mut file {
                Some((f, len)) => {
                    f.write_all(&data).await.map_err(spill)?;
                    *len = total;
                }
                None if mem.len() + data.len() > Self::IN_MEMORY => {
                    let std_file =
                        tokio::task::spawn_blocking(tempfile::tempfile).await.map_err(|e| Failure::Other(e.to_string()))?.map_err(spill)?;
                    let mut f = tokio::fs::File::from_std(std_file);
                    f.write_all(&mem).await.map_err(spill)?;
                    f.write_all(&data).await.map_err(spill)?;
                    mem = BytesMut::new();
                    file = Some((f, total));
                }
                None => mem.extend_from_slice(&data),
            }
        }
        Ok(Some(match file {
            Some((f, len)) => Buffered::File(f, len),
            None => Buffered::Memory(mem),
        }))
    }

    fn len(&self) -> u64 {
        match self {
            Buffered::Memory(m) => m.len() as u64,
            Buffered::File(_, len) => *len,
        }
    }

    /// Sends the body as STDIN records (the caller sends the empty one that ends them).
    async fn send(self, to: &FastCgiRoute, stream: &mut Box<dyn Stream>, out: &mut BytesMut) -> Result<(), Failure> {
        match self {
            Buffered::Memory(m) => {
                out.clear();
                write_stream(out, STDIN, &m);
                to.send(stream, out).await?;
            }
            Buffered::File(mut f, len) => {
                let reread = |e: io::Error| Failure::Other(format!("cannot read the request body back from its temporary file: {e}"));
                f.flush().await.map_err(reread)?;
                f.seek(io::SeekFrom::Start(0)).await.map_err(reread)?;
                let mut left = len;
                let mut buf = vec![0u8; MAX_CONTENT];
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    f.read_exact(&mut buf[..want]).await.map_err(reread)?;
                    left -= want as u64;
                    out.clear();
                    write_record(out, STDIN, &buf[..want]);
                    to.send(stream, out).await?;
                }
            }
        }
        Ok(())
    }
}

/// What [`next_data`] found.
enum Next {
    Data(Bytes),
    End,
    /// More than the bytes the body had left.
    TooLarge,
}

/// The next data of a request body that may still bring `left` bytes (counted down).
async fn next_data(body: &mut RequestBody, left: &mut u64) -> Result<Next, Failure> {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(Failure::Client)?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if data.len() as u64 > *left {
            return Ok(Next::TooLarge);
        }
        *left -= data.len() as u64;
        return Ok(Next::Data(data));
    }
    Ok(Next::End)
}

fn too_large() -> Response<Body> {
    let mut r = simple_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

struct RecordReader {
    stream: Option<Box<dyn Stream>>,
    /// The connection's timer for the response head, kept with it in the pool.
    timer: LazyTimer,
    buf: BytesMut,
    done: bool,
    /// Pool key and size: where the connection goes once the response is complete.
    keep: Option<(Arc<str>, usize)>,
}

/// A kept-alive connection waiting in the pool, with its timer: a timer kept from one request
/// to the next moves later for free, where a `timeout_at` per request would register one in
/// tokio's timer wheel and remove it again (see [`servente_core::lazy_timer`]). While the
/// connection is pooled, its armed timer keeps the last request's waker: that task gets one
/// spurious wake when the timer fires, unless the connection is used before.
struct Idle {
    stream: Box<dyn Stream>,
    timer: LazyTimer,
}

type IdleMap = std::collections::HashMap<String, Vec<Idle>, foldhash::fast::RandomState>;

thread_local! {
    /// Idle kept-alive FastCGI connections of this worker thread, by address.
    static IDLE: std::cell::RefCell<IdleMap> = std::cell::RefCell::new(IdleMap::default());
}

fn take_idle(key: &str) -> Option<Idle> {
    IDLE.with(|p| p.borrow_mut().get_mut(key)?.pop())
}

fn put_idle(key: &str, stream: Idle, max: usize) {
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        // The key is allocated once per address and thread, not per request.
        if !p.contains_key(key) {
            p.insert(key.to_string(), Vec::new());
        }
        if let Some(list) = p.get_mut(key)
            && list.len() < max
        {
            list.push(stream);
        }
    });
}

impl RecordReader {
    /// [`RecordReader::next_stdout`], or None once `deadline` has passed.
    async fn next_stdout_by(&mut self, deadline: tokio::time::Instant) -> Option<Result<Option<Bytes>, String>> {
        // The timer is lent out while it runs. Should the connection be pooled meanwhile (a
        // script that ended before its head was complete), it goes without one and gets a new
        // one when next used.
        let mut timer = std::mem::take(&mut self.timer);
        let next = timer.bound(deadline, self.next_stdout()).await;
        self.timer = timer;
        next
    }

    /// The next STDOUT bytes; `None` at END_REQUEST. STDERR lines go to the log.
    async fn next_stdout(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if self.done {
                return Ok(None);
            }
            match parse_record(&mut self.buf)? {
                Some(Record { kind: STDOUT, content }) if !content.is_empty() => return Ok(Some(content)),
                Some(Record { kind: STDERR, content }) => {
                    for line in String::from_utf8_lossy(&content).lines().filter(|l| !l.trim().is_empty()) {
                        tracing::warn!(target: "fastcgi", "{line}");
                    }
                }
                Some(Record { kind: END_REQUEST, .. }) => {
                    self.done = true;
                    if let (Some((key, max)), Some(stream)) = (&self.keep, self.stream.take())
                        && self.buf.is_empty()
                    {
                        put_idle(key, Idle { stream, timer: std::mem::take(&mut self.timer) }, *max);
                    }
                    return Ok(None);
                }
                Some(_) => {}
                None => {
                    if self.buf.capacity() - self.buf.len() < 8192 {
                        self.buf.reserve(16 * 1024);
                    }
                    let Some(stream) = self.stream.as_mut() else { return Err("the connection is gone".into()) };
                    let n = stream.read_buf(&mut self.buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the FastCGI application closed the connection mid-response".into());
                    }
                }
            }
        }
    }
}

/// The script's output after the head, streamed as it comes.
struct CgiBody {
    first: Option<Bytes>,
    reader: RecordReader,
}

impl CgiBody {
    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send {
        futures_util::stream::unfold((self.first, Some(self.reader)), |(first, reader)| async move {
            if let Some(b) = first {
                return Some((Ok(Frame::data(b)), (None, reader)));
            }
            let mut reader = reader?;
            match reader.next_stdout().await {
                Ok(Some(b)) => Some((Ok(Frame::data(b)), (None, Some(reader)))),
                Ok(None) => None,
                Err(e) => Some((Err(io::Error::other(e)), (None, None))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_use_short_and_long_lengths() {
        let long = vec![b'x'; 300];
        let mut p = Vec::new();
        encode_param(&mut p, "A", b"1");
        encode_param(&mut p, "LONG", &long);
        assert_eq!(&p[..4], &[1, 1, b'A', b'1']);
        assert_eq!(p[4], 4);
        assert_eq!(&p[5..9], &(300u32 | 0x8000_0000).to_be_bytes());
        assert_eq!(p.len(), 4 + 1 + 4 + 4 + 300);
    }

    #[test]
    fn records_round_trip_with_padding() {
        let mut out = BytesMut::new();
        write_record(&mut out, STDOUT, b"hello");
        write_record(&mut out, END_REQUEST, &[0; 8]);
        assert_eq!(out.len(), 8 + 8 + 8 + 8);
        let mut partial = BytesMut::from(&out[..10]);
        assert_eq!(parse_record(&mut partial), Ok(None));
        assert_eq!(parse_record(&mut out), Ok(Some(Record { kind: STDOUT, content: Bytes::from_static(b"hello") })));
        assert_eq!(parse_record(&mut out).map(|r| r.map(|r| r.kind)), Ok(Some(END_REQUEST)));
        assert!(out.is_empty());
        assert!(parse_record(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..])).is_err());
    }

    #[test]
    fn cgi_heads_give_status_and_headers() {
        let (s, h, used) = parse_cgi_head(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nbody").expect("ok").expect("complete");
        assert_eq!((s, h.len(), used), (StatusCode::NOT_FOUND, 1, 51));
        let (s, _, _) = parse_cgi_head(b"Location: /x\r\n\r\n").expect("ok").expect("complete");
        assert_eq!(s, StatusCode::FOUND);
        assert_eq!(parse_cgi_head(b"Content-Type: text/html\r\n"), Ok(None));
        assert!(parse_cgi_head(b"no colon here\r\n\r\n").is_err());
    }

    #[test]
    fn scripts_are_found_like_nginx_does() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("root");
        std::fs::create_dir_all(root.join("blog")).expect("dir");
        std::fs::create_dir_all(root.join("up.jpg")).expect("dir");
        for f in ["index.php", "blog/index.php", "style.css"] {
            std::fs::write(root.join(f), "x").expect("file");
        }
        let c = FastCgiConfig {
            address: "unix:/run/php.sock".into(),
            path: "/".into(),
            extension: ".php".into(),
            front_controller: Some("/index.php".into()),
            ..Default::default()
        };
        let r = FastCgiRoute::new(&c, &root).expect("route");
        let s = r.script_for("/index.php/a/b").expect("script");
        assert_eq!((s.name.as_str(), s.path_info.as_str()), ("/index.php", "/a/b"));
        assert_eq!(r.script_for("/blog/").expect("index").name, "/blog/index.php");
        assert_eq!(r.script_for("/style.css"), None, "static files stay static");
        assert_eq!(r.script_for("/no/such/page").expect("front controller").name, "/index.php");
        assert_eq!(r.script_for("/up.jpg/evil.php").map(|s| s.name), Some("/index.php".to_string()), "never a non-script file");
        assert_eq!(r.script_for("/missing.php").map(|s| s.name), Some("/index.php".to_string()));
    }

    /// The pairs of an FCGI_PARAMS content, decoded.
    fn decode_params(mut p: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let length = |p: &mut &[u8]| -> usize {
            if p[0] < 0x80 {
                let n = p[0] as usize;
                *p = &p[1..];
                n
            } else {
                let n = u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]) as usize;
                *p = &p[4..];
                n
            }
        };
        let mut pairs = Vec::new();
        while !p.is_empty() {
            let (n, v) = (length(&mut p), length(&mut p));
            pairs.push((p[..n].to_vec(), p[n..n + v].to_vec()));
            p = &p[n + v..];
        }
        pairs
    }

    #[test]
    fn paths_reach_the_application_as_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        // A root whose name is not UTF-8: PHP gets its bytes, not U+FFFD.
        let root = Path::new(std::ffi::OsStr::from_bytes(b"/srv/caf\xe9"));
        let c = FastCgiConfig { address: "unix:/run/php.sock".into(), path: "/".into(), extension: ".php".into(), ..Default::default() };
        let r = FastCgiRoute::new(&c, root).expect("route");
        let script = Script { name: "/index.php".into(), path_info: "/a/b".into(), file: root.join("index.php") };
        let req = Request::builder().uri("/index.php/a/b?x=1").header("host", "example.org").body(()).expect("request");
        let cx = RequestCx {
            listener: "web".into(),
            listener_index: 0,
            peer: Some("192.0.2.7:4242".parse().expect("address")),
            tls: false,
            sendfile: false,
            sni: None,
            site: None,
            user: None,
            started: Instant::now(),
            max_body: 1 << 20,
        };
        let pairs = decode_params(&r.params(&req, &script, &cx, None));
        let get = |name: &str| pairs.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(get("DOCUMENT_ROOT"), b"/srv/caf\xe9");
        assert_eq!(get("SCRIPT_FILENAME"), b"/srv/caf\xe9/index.php");
        assert_eq!(get("PATH_TRANSLATED"), b"/srv/caf\xe9/a/b");
        assert_eq!(get("PATH_INFO"), b"/a/b");
        assert_eq!(get("QUERY_STRING"), b"x=1");
        assert_eq!((get("REMOTE_ADDR"), get("REMOTE_PORT")), (b"192.0.2.7".to_vec(), b"4242".to_vec()));
        assert_eq!((get("SERVER_NAME"), get("SERVER_PORT")), (b"example.org".to_vec(), b"80".to_vec()));
        assert_eq!(get("HTTP_HOST"), b"example.org");
    }
}

//! The HTTP engine shared by every HTTP-based role: hyper for HTTP/1.1 and HTTP/2, the
//! per-request bookkeeping (limits, metrics, access log, panic isolation) and the response
//! body type roles answer with.
//!
//! A role never sees a socket. It implements [`Router`]: given a request and a [`RequestCx`]
//! (listener, peer, TLS), it returns a `Response<Body>` and may say which site answered
//! (for metrics and logs) by setting [`RequestCx::site`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::access_log::{AccessLogger, AccessRecord};
use crate::guard::{ConnState, InFlightRequest};
use crate::metrics::{Metrics, SiteStats};
use crate::request_body::RequestBody;

/// A response body: nothing, bytes in memory, or a stream (files, compression, proxies).
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, io::Error>),
}

impl Body {
    pub fn empty() -> Self {
        Body::Empty
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }
    pub fn stream<B>(b: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = io::Error> + Send + 'static,
    {
        Body::Stream(UnsyncBoxBody::new(b))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty | Body::Full(None) => true,
            Body::Full(Some(_)) => false,
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty | Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

/// Where a request came in, as a role needs to know it.
pub struct RequestCx {
    /// The listener's name from the config.
    pub listener: Arc<str>,
    /// The listener's index among the config's listeners (stable for a config generation).
    pub listener_index: usize,
    /// The client's address; `None` on a Unix socket.
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The connection sends file bytes from the file itself (`sendfile`): plain HTTP/1.x on a
    /// TCP or Unix socket. File bodies may then leave them unread ([`crate::file_body::FileBody::unread_if`]).
    pub sendfile: bool,
    /// The SNI name the TLS client asked for.
    pub sni: Option<Arc<str>>,
    /// Set by the role: the site (or role area) that answered, for metrics and the access log.
    pub site: Option<Arc<SiteStats>>,
    /// Set by the role when it knows the user (later roles with authentication).
    pub user: Option<String>,
    /// When the request head was handed over: a clock reading roles can reuse.
    pub started: Instant,
    /// `limits.max_body_bytes`. The engine refuses a larger declared Content-Length; a role
    /// that reads a body without one (chunked, HTTP/2) must stop at this many bytes itself.
    pub max_body: u64,
}

/// What an HTTP role implements. One value serves every request of a config generation; on
/// reload the core swaps in a new one while requests in flight finish on the old one.
pub trait Router: Send + Sync + 'static {
    fn handle<'a>(&'a self, req: Request<RequestBody>, cx: &'a mut RequestCx) -> impl Future<Output = Response<Body>> + Send + 'a;

    /// The largest request body this request may send, asked when its declared Content-Length
    /// passes `cx.max_body` (`limits.max_body_bytes`); a role that takes large bodies itself
    /// (file uploads, bounded by quotas instead) answers more.
    fn body_limit(&self, _req: &Request<RequestBody>, cx: &RequestCx) -> u64 {
        cx.max_body
    }
}

/// Per-connection facts the engine needs for every request. Only this connection's thread
/// touches it, so the per-request clones of its `Arc`s cost no cache-line traffic between
/// cores, unlike clones of process-wide ones; hence the engine and a copy of the listener's
/// name live here.
pub(crate) struct ConnInfo {
    pub engine: Arc<Engine>,
    pub listener: Arc<str>,
    pub listener_index: usize,
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The stream can `sendfile` (a plain socket).
    pub sendfile: bool,
    pub sni: Option<Arc<str>>,
    pub state: Arc<ConnState>,
    /// The client's address as the access log writes it, made on the first logged request.
    pub peer_text: std::sync::OnceLock<Arc<str>>,
}

impl ConnInfo {
    fn peer_text(&self) -> Arc<str> {
        self.peer_text.get_or_init(|| self.peer.map_or_else(|| Arc::from("unix"), |p| Arc::from(p.ip().to_string()))).clone()
    }
}

/// Process-wide pieces the engine uses for every request.
pub(crate) struct Engine {
    pub metrics: Arc<Metrics>,
    pub access_log: arc_swap::ArcSwap<AccessLogger>,
    pub max_body_bytes: std::sync::atomic::AtomicU64,
    /// `limits.body_read_timeout` in milliseconds.
    pub body_read_timeout_ms: std::sync::atomic::AtomicU64,
    pub unknown_site: Arc<SiteStats>,
}

/// Serves one request: limits, the role's handler inside a panic guard, and the bookkeeping
/// done when the response body ends.
pub(crate) async fn serve_request<R: Router>(
    router: Arc<R>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    flight: InFlightRequest,
) -> Result<Response<TrackedBody>, Infallible> {
    let started = Instant::now();
    let engine = &conn.engine;
    let log = engine.access_log.load();
    let log_fields = log.enabled().then(|| LogFields::from_request(&req));
    let max_body = engine.max_body_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let body_timeout = Duration::from_millis(engine.body_read_timeout_ms.load(std::sync::atomic::Ordering::Relaxed));
    let req = req.map(|b| RequestBody::new(b, body_timeout));
    let mut cx = RequestCx {
        listener: conn.listener.clone(),
        listener_index: conn.listener_index,
        peer: conn.peer,
        tls: conn.tls,
        sendfile: conn.sendfile && req.version() < http::Version::HTTP_2,
        sni: conn.sni.clone(),
        site: None,
        user: None,
        started,
        max_body,
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Only a body larger than the default asks the role (a lookup the common request skips).
    if declared.is_some_and(|n| n > max_body) {
        cx.max_body = router.body_limit(&req, &cx);
    }
    let response = if declared.is_some_and(|n| n > cx.max_body) {
        simple_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
    } else {
        // Bound before the `match`: a future built in the scrutinee would be kept twice in this
        // one (the temporary's storage lasts to the end of the `match`), which hyper then moves.
        let guarded = AssertUnwindSafe(router.handle(req, &mut cx)).catch_unwind();
        match guarded.await {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(listener = %conn.listener, panic = %what, "a request handler panicked; answering 500 and closing the connection");
                let mut r = simple_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
        }
    };
    let (parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        flight.state().upgraded();
    }
    let done = Completion {
        status: parts.status.as_u16(),
        bytes: 0,
        started,
        site: cx.site.take().unwrap_or_else(|| engine.unknown_site.clone()),
        _flight: flight,
        log: log_fields.map(|f| (f, log.as_ref().clone(), conn.peer_text(), cx.user.take())),
    };
    let split = crate::streams::watched();
    Ok(Response::from_parts(parts, TrackedBody { inner: body, done, split, rest: None }))
}

/// A short plain-text response, for errors the engine or a role answers itself.
pub fn simple_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The answer to a refused sign-in: `message` as text, a Basic challenge for `realm`, and
/// Retry-After in seconds.
pub fn refused(status: StatusCode, message: &str, realm: Option<&str>, retry_after: Option<u64>) -> Response<Body> {
    let mut resp = Response::new(Body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some(realm) = realm
        && let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// A redirect to `location` with an empty body.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The request fields the access log needs, copied before the request goes to the role.
struct LogFields {
    method: String,
    target: String,
    version: &'static str,
    host: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl LogFields {
    fn from_request<B>(req: &Request<B>) -> Self {
        let h = |name: header::HeaderName| req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        LogFields {
            method: req.method().as_str().to_string(),
            target: req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into()),
            version: match req.version() {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            host: req.uri().host().map(str::to_string).or_else(|| h(header::HOST)),
            referer: h(header::REFERER),
            user_agent: h(header::USER_AGENT),
        }
    }
}

/// Records a request in metrics and the access log when its body ends or is dropped.
struct Completion {
    status: u16,
    bytes: u64,
    started: Instant,
    site: Arc<SiteStats>,
    /// Ends the request's count on its connection when dropped, after this drop's bookkeeping.
    _flight: InFlightRequest,
    log: Option<(LogFields, AccessLogger, Arc<str>, Option<String>)>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.site.record(self.status, self.bytes, elapsed);
        if let Some((f, logger, peer, user)) = &self.log {
            logger.log(&AccessRecord {
                peer,
                user: user.as_deref(),
                time: SystemTime::now(),
                method: &f.method,
                target: &f.target,
                version: f.version,
                status: self.status,
                bytes: self.bytes,
                referer: f.referer.as_deref(),
                user_agent: f.user_agent.as_deref(),
                host: f.host.as_deref(),
                site: self.site.name(),
                duration_micros: elapsed.as_micros() as u64,
            });
        }
    }
}

/// The body hyper sends: the role's body, counting bytes, with [`Completion`] attached.
///
/// On a watched HTTP/2 stream it also tells the watchdog ([`crate::streams`]) each time hyper
/// asks it for a piece, and hands out pieces of at most [`crate::streams::PIECE`] bytes: hyper
/// asks for the next one only once about a piece of this stream has left, so the watchdog's
/// rule becomes "the client took none of the next 64 KiB for `send_timeout`", whatever size the
/// role's pieces are (a file body's are 256 KiB).
pub struct TrackedBody {
    inner: Body,
    done: Completion,
    /// Pieces are split for the watchdog (a watched HTTP/2 stream).
    split: bool,
    /// What is left of a piece that was split.
    rest: Option<Bytes>,
}

impl TrackedBody {
    /// At most a [`crate::streams::PIECE`] of `data`, keeping the remainder for the next call.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > crate::streams::PIECE {
            self.rest = Some(data.split_off(crate::streams::PIECE));
        }
        data
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let polled = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(this.piece(rest))))),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if this.split => Poll::Ready(Some(Ok(frame.map_data(|d| this.piece(d))))),
                other => other,
            },
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.done.bytes += data.len() as u64;
        }
        if this.split {
            // hyper asked; a piece handed over waits in h2 until the client's window lets it go.
            crate::streams::pulled(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        match &self.rest {
            None => hint,
            Some(rest) => {
                let n = rest.len() as u64;
                let mut h = SizeHint::new();
                h.set_lower(hint.lower() + n);
                if let Some(upper) = hint.upper() {
                    h.set_upper(upper + n);
                }
                h
            }
        }
    }
}

//! Forwarding a request to an upstream group and its response back: the request's headers
//! (hop-by-hop removed, forwarding headers set as configured), server choice with retries,
//! timeouts, streaming bodies both ways, and protocol upgrades (WebSocket) as a tunnel.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use servente_config::{ProxyRoute as RouteConfig, UpstreamProtocol};
use servente_core::RequestBody;
use servente_core::{Body, RequestCx, simple_response};

use crate::h1::{self, HOP_BY_HOP};
use crate::pool::{self, Client, Sender, UpBody};
use crate::read_timeout::ReadTimeout;
use crate::upstream::{InFlight, Upstream};

/// A path of a site forwarded to an upstream.
pub struct ProxyRoute {
    pub pattern: String,
    pub upstream: Arc<Upstream>,
    strip_prefix: Option<String>,
    forwarded: bool,
    trusted: Vec<(IpAddr, u8)>,
}

pub fn empty_body() -> UpBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// The client's body on its way upstream, stopped with an error past `limit` bytes (bodies
/// without a Content-Length are only bounded here); `tripped` tells the proxy to answer 413.
pub struct CappedBody {
    inner: RequestBody,
    left: u64,
    state: Arc<BodyState>,
}

/// What the proxy learns of a request body while hyper sends it.
#[derive(Default)]
pub struct BodyState {
    /// The body passed `limits.max_body_bytes`.
    tripped: std::sync::atomic::AtomicBool,
    /// Pieces hyper has taken (and the end): while this moves, the upstream is reading.
    moved: std::sync::atomic::AtomicU64,
    /// hyper is waiting for the client's next piece: the upstream is not the slow one, so
    /// `response_timeout` does not run (`body_read_timeout` does).
    awaiting_client: std::sync::atomic::AtomicBool,
}

impl CappedBody {
    pub fn new(inner: RequestBody, limit: u64, state: Arc<BodyState>) -> Self {
        CappedBody { inner, left: limit, state }
    }
}

#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body is larger than limits.max_body_bytes")
    }
}

impl std::error::Error for TooLarge {}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = pool::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, pool::BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.state.awaiting_client.store(polled.is_pending(), std::sync::atomic::Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > this.left {
                    this.state.tripped.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                this.left -= n;
                this.state.moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.state.moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client's address as X-Forwarded-For names it and as a Forwarded `for=` node, and the
/// last Forwarded value made from it.
struct PeerText {
    ip: Option<IpAddr>,
    client: HeaderValue,
    node: String,
    /// (TLS, Host, the value): valid while the next request of this client matches.
    forwarded: Option<(bool, Option<HeaderValue>, HeaderValue)>,
}

/// Calls `f` with the texts of the client's address. The texts of the last client are kept
/// per thread: a kept-alive client sends many requests, and formatting an address and the
/// Forwarded value each time showed in profiles.
fn peer_text<R>(peer: Option<IpAddr>, f: impl FnOnce(&mut PeerText) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<Option<PeerText>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        let mut text = last.take().filter(|t| t.ip == peer).unwrap_or_else(|| {
            let (client, node) = match peer {
                Some(IpAddr::V6(ip)) => (ip.to_string(), format!("\"[{ip}]\"")),
                Some(ip) => (ip.to_string(), ip.to_string()),
                None => ("unix".to_string(), "unknown".to_string()),
            };
            let client = HeaderValue::from_maybe_shared(Bytes::from(client)).unwrap_or(HeaderValue::from_static("unknown"));
            PeerText { ip: peer, client, node, forwarded: None }
        });
        let result = f(&mut text);
        *last = Some(text);
        result
    })
}

/// Removes hop-by-hop headers ([`h1::HOP_BY_HOP`]), including those the Connection header
/// names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages have none: one pass over the names is cheaper than a lookup for each.
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    if !h.contains_key(header::CONNECTION) {
        for n in HOP_BY_HOP.iter().skip(1) {
            h.remove(*n);
        }
        return;
    }
    // Names the Connection header adds to the fixed list (most often it names only
    // keep-alive or close, which need no owned name).
    let named: Vec<HeaderName> = h1::list_items(h, &header::CONNECTION)
        .filter(|t| !h1::is_hop_by_hop(t.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in &named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE) && h1::has_token(req.headers(), &header::CONNECTION, "upgrade")
}

fn in_cidr(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn bad_gateway(status: StatusCode, text: &'static str) -> Response<Body> {
    simple_response(status, text)
}

impl ProxyRoute {
    pub fn new(c: &RouteConfig, upstream: Arc<Upstream>) -> Self {
        ProxyRoute {
            pattern: c.path.clone(),
            upstream,
            strip_prefix: c.strip_prefix.clone().filter(|p| !p.is_empty() && p != "/"),
            forwarded: c.forwarded,
            trusted: c.trust_forwarded_from.iter().filter_map(|t| servente_config::apps::parse_cidr(t)).collect(),
        }
    }

    /// The path and query the upstream sees: the client's own (a cheap clone) unless a prefix
    /// is stripped. `None` when the stripped target is not a valid one.
    fn upstream_target(&self, uri: &Uri) -> Option<PathAndQuery> {
        let original = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let Some(prefix) = &self.strip_prefix else { return Some(original) };
        let path = match uri.path().strip_prefix(prefix.as_str()) {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            _ => return Some(original),
        };
        let target = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        target.parse().ok()
    }

    /// Sets (or, from trusted proxies, extends) the forwarding headers. With `extra` (the lean
    /// client writes those after the map) the new fields of an untrusted client's request go
    /// there, sparing the map four insertions; a trusted client's are merged in the map.
    fn forwarding_headers(&self, h: &mut HeaderMap, cx: &RequestCx, mut extra: Option<&mut h1::Fields>) {
        let peer = cx.peer.map(|p| p.ip().to_canonical());
        let trusted = !self.trusted.is_empty() && peer.is_some_and(|ip| self.trusted.iter().any(|c| in_cidr(ip, *c)));
        let forwarding = [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &FORWARDED];
        // What an untrusted client says about earlier hops is not passed on.
        let previous = |h: &HeaderMap, name: &HeaderName| -> Option<String> {
            if !trusted {
                return None;
            }
            let values: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        let previous_for = previous(h, &X_FORWARDED_FOR);
        let previous_forwarded = previous(h, &FORWARDED);
        if !trusted && h.keys().any(|k| forwarding.contains(&k)) {
            for n in forwarding {
                h.remove(n);
            }
        }
        if !self.forwarded {
            return;
        }
        let mut add = |h: &mut HeaderMap, name: &'static HeaderName, value: HeaderValue| match extra.as_deref_mut() {
            Some(extra) if !trusted => extra.push(name, value),
            _ => {
                h.insert(name, value);
            }
        };
        let proto = if cx.tls { "https" } else { "http" };
        let host = h.get(header::HOST).filter(|v| v.to_str().is_ok()).cloned();
        // From an untrusted client none of them is left to keep.
        if !trusted || !h.contains_key(&X_FORWARDED_PROTO) {
            add(h, &X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if (!trusted || !h.contains_key(&X_FORWARDED_HOST))
            && let Some(v) = &host
        {
            add(h, &X_FORWARDED_HOST, v.clone());
        }
        peer_text(peer, |text| {
            let xff = match previous_for {
                Some(list) => {
                    HeaderValue::from_maybe_shared(Bytes::from(format!("{list}, {}", text.client.to_str().unwrap_or_default()))).ok()
                }
                None => Some(text.client.clone()),
            };
            if let Some(v) = xff {
                add(h, &X_FORWARDED_FOR, v);
            }
            if previous_forwarded.is_none()
                && let Some((tls, last_host, v)) = &text.forwarded
                && *tls == cx.tls
                && *last_host == host
            {
                add(h, &FORWARDED, v.clone());
                return;
            }
            let mut value = previous_forwarded.as_ref().map(|list| format!("{list}, ")).unwrap_or_default();
            value.push_str("for=");
            value.push_str(&text.node);
            value.push_str(";proto=");
            value.push_str(proto);
            if let Some(host) = host.as_ref().and_then(|v| v.to_str().ok()).filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            {
                value.push_str(";host=\"");
                value.push_str(host);
                value.push('"');
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                if previous_forwarded.is_none() {
                    text.forwarded = Some((cx.tls, host.clone(), v.clone()));
                }
                add(h, &FORWARDED, v);
            }
        });
    }

    /// The value consistent hashing keys on.
    fn hash_value<B>(&self, req: &Request<B>) -> Option<Vec<u8>> {
        let key = self.upstream.settings.hash_key.as_deref()?;
        if let Some(name) = key.strip_prefix("header:") {
            return req.headers().get(name).map(|v| v.as_bytes().to_vec());
        }
        let name = key.strip_prefix("cookie:")?;
        req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then(|| v.as_bytes().to_vec())
        })
    }

    pub async fn handle(&self, mut req: Request<RequestBody>, cx: &RequestCx) -> Response<Body> {
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // From the body itself, not its headers: an HTTP/2 request may carry DATA frames with
        // neither Content-Length nor Transfer-Encoding.
        let has_body = !req.body().is_end_stream();
        let idempotent =
            matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE);
        let retryable = idempotent && !has_body && !upgrade;
        let hash = self.hash_value(&req);
        let (mut parts, mut body) = req.into_parts();
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgrade_value.filter(|_| upgrade) {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, u);
        }
        // An HTTP/2 client names the host in the URI; HTTP/1.1 needs it as a header.
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
        let settings = &self.upstream.settings;
        // A request without a body and not asking for an upgrade goes by the lean client, on
        // this task (`h1`); the others by hyper's.
        let lean = !has_body && !upgrade && settings.protocol == UpstreamProtocol::Http1;
        // Forwarding fields the lean client writes after the map (see `forwarding_headers`).
        let mut extra = h1::Fields::default();
        self.forwarding_headers(&mut parts.headers, cx, lean.then_some(&mut extra));
        let Some(target) = self.upstream_target(&parts.uri) else {
            return bad_gateway(StatusCode::BAD_REQUEST, "the request target cannot be forwarded\n");
        };
        // Only a request with a body can grow past the limit, and only it needs the flag.
        let body_state = has_body.then(|| Arc::new(BodyState::default()));
        // Set when the client's body fails (it stopped coming, or broke off): then the request
        // fails for the client's sake, and the upstream is not blamed.
        let client_failure = has_body.then(|| body.failure_signal());
        let mut body = body_state.as_ref().map(|state| CappedBody::new(body, cx.max_body, state.clone()));
        let head_request = parts.method == Method::HEAD;
        let attempts = if retryable { 1 + settings.retries } else { 1 };
        // Servers already tried, noted only when another attempt follows (the common request
        // that succeeds at once allocates nothing).
        let mut tried: Vec<u64> = Vec::new();
        let mut picked = false;
        for _ in 0..attempts {
            let Some(flight) = self.upstream.pick(hash.as_deref(), &tried) else { break };
            let server = flight.server();
            picked = true;
            // A pooled connection may have been closed by the server a moment ago; a request
            // that is safe to repeat then gets one fresh connection to the same server.
            let mut fresh_tries = if retryable { 2 } else { 1 };
            // The request's own clock reading serves the first try (a clock read per use
            // showed in profiles); a later try reads the clock again.
            let mut now = if tried.is_empty() { cx.started } else { std::time::Instant::now() };
            let mut pooled = pool::take(server.id, settings.idle_timeout.0, now);
            loop {
                let reused = pooled.is_some();
                // hyper's futures are large and rare here (requests with bodies, new
                // connections): boxed, they keep this future small for the common request (each
                // box made before its await; see `WebRole::handle`).
                let opened = match pooled.take() {
                    Some(Sender::Raw(conn)) if !lean => {
                        let boxed = Box::pin(pool::handshake(conn.into_stream(), settings.protocol));
                        boxed.await.map(Sender::Hyper)
                    }
                    Some(s) => Ok(s),
                    None if lean => pool::open(&server.address, settings.connect_timeout.0).await.map(Sender::Raw),
                    None => {
                        let boxed = Box::pin(pool::connect(&server.address, settings.protocol, settings.connect_timeout.0));
                        boxed.await.map(Sender::Hyper)
                    }
                };
                let sender = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        // Once a server is out, every request that still tries it would
                        // repeat the same line: only the first failures are warnings.
                        if server.is_down() {
                            tracing::debug!(upstream = %self.upstream.name, server = %server.address, "cannot connect: {e}");
                        } else {
                            tracing::warn!(upstream = %self.upstream.name, server = %server.address, "cannot connect: {e}");
                        }
                        self.upstream.report(server, false);
                        break;
                    }
                };
                let sent = match sender {
                    Sender::Raw(conn) => exchange(conn, &parts, &target, &extra, now + settings.response_timeout.0).await,
                    Sender::Hyper(client) => {
                        let req_body =
                            if retryable { empty_body() } else { body.take().map(|b| b.boxed_unsync()).unwrap_or_else(empty_body) };
                        // HTTP/1.1 takes the origin form as it is; HTTP/2 needs scheme and authority.
                        let absolute = match (&client, &server.address) {
                            (Client::H1(_), _) => None,
                            (_, pool::Address::Tcp(a)) => Some(format!("http://{a}{target}")),
                            (_, pool::Address::Name(n)) => Some(format!("http://{n}{target}")),
                            (_, pool::Address::Unix(_)) => Some(format!("http://localhost{target}")),
                        };
                        let uri = match absolute.map(|a| a.parse::<Uri>()) {
                            None => Uri::from(target.clone()),
                            Some(Ok(u)) => u,
                            Some(Err(_)) => return bad_gateway(StatusCode::BAD_REQUEST, "the request target cannot be forwarded\n"),
                        };
                        let mut up = Request::new(req_body);
                        *up.method_mut() = parts.method.clone();
                        *up.uri_mut() = uri;
                        // Only a request that may be tried again needs its headers kept.
                        *up.headers_mut() = if retryable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
                        // A lean request can meet a pooled hyper connection: its forwarding
                        // fields join the map then.
                        for (name, value) in extra.iter() {
                            up.headers_mut().insert(name.clone(), value.clone());
                        }
                        if matches!(client, Client::H2(_)) {
                            // HTTP/2 carries the host in :authority; a Host header would be a duplicate.
                            up.headers_mut().remove(header::HOST);
                        } else {
                            *up.version_mut() = http::Version::HTTP_11;
                        }
                        let boxed = Box::pin(send(client, up, settings.response_timeout.0, body_state.as_deref()));
                        boxed.await
                    }
                };
                match sent {
                    Ok(Answer::Hyper(resp, sender)) => {
                        self.upstream.report(server, resp.status() != StatusCode::BAD_GATEWAY);
                        return self.respond(resp, sender, flight, client_upgrade, head_request);
                    }
                    Ok(Answer::Lean(head, conn)) => {
                        self.upstream.report(server, head.status != StatusCode::BAD_GATEWAY);
                        return self.respond_lean(head, conn, flight, now);
                    }
                    Err(SendError::Timeout) => {
                        tracing::warn!(upstream = %self.upstream.name, server = %server.address, "no response within {:?}", settings.response_timeout.0);
                        self.upstream.report(server, false);
                        return bad_gateway(StatusCode::GATEWAY_TIMEOUT, "gateway timeout: the upstream server did not answer in time\n");
                    }
                    Err(SendError::Failed(_))
                        if body_state.as_ref().is_some_and(|s| s.tripped.load(std::sync::atomic::Ordering::Relaxed)) =>
                    {
                        let mut r = simple_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return r;
                    }
                    Err(SendError::Failed(e)) if let Some(answer) = client_failure.as_ref().and_then(|f| f.answer()) => {
                        tracing::debug!(upstream = %self.upstream.name, server = %server.address, "the client's request body failed: {e}");
                        return answer;
                    }
                    Err(SendError::Failed(e)) => {
                        if reused && fresh_tries > 1 {
                            fresh_tries -= 1;
                            now = std::time::Instant::now();
                            continue;
                        }
                        if server.is_down() {
                            tracing::debug!(upstream = %self.upstream.name, server = %server.address, "request failed: {e}");
                        } else {
                            tracing::warn!(upstream = %self.upstream.name, server = %server.address, "request failed: {e}");
                        }
                        self.upstream.report(server, false);
                        if !retryable {
                            return bad_gateway(StatusCode::BAD_GATEWAY, "bad gateway: the upstream server failed to answer\n");
                        }
                        break;
                    }
                }
            }
            tried.push(server.id);
        }
        if !picked {
            bad_gateway(StatusCode::SERVICE_UNAVAILABLE, "service unavailable: no upstream server is available\n")
        } else {
            bad_gateway(StatusCode::BAD_GATEWAY, "bad gateway: no upstream server could answer\n")
        }
    }

    fn respond(
        &self,
        resp: Response<Incoming>,
        sender: Option<Sender>,
        flight: InFlight,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        head: bool,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return bad_gateway(StatusCode::BAD_GATEWAY, "bad gateway: the upstream switched protocols unasked\n");
            };
            let upstream_upgrade = hyper::upgrade::on(Response::from_parts(parts.clone(), body));
            let idle = self.upstream.settings.response_timeout.0;
            tokio::spawn(async move {
                let _flight = flight;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (c, u) = (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(u));
                        if let Err(e) = crate::tunnel::run(c, u, idle).await {
                            tracing::debug!("upgraded connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
            });
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *r.headers_mut() = parts.headers;
            return r;
        }
        strip_hop_by_hop(&mut parts.headers);
        let max_idle = self.upstream.settings.max_idle;
        let body = if head || body.is_end_stream() {
            // Nothing to read: the connection is free now.
            if let Some(s) = sender {
                pool::put(flight.server().id, s, max_idle);
            }
            drop(flight);
            Body::empty()
        } else {
            let limit = self.upstream.settings.response_timeout.0;
            Body::stream(ReadTimeout::new(PooledBody { inner: body, sender, flight: Some(flight), max_idle }, limit))
        };
        let mut r = Response::from_parts(parts, body);
        // hyper recomputes the framing; keep a HEAD answer's length as the upstream said.
        if head {
            r.headers_mut().remove(header::TRANSFER_ENCODING);
        }
        r
    }
}

impl ProxyRoute {
    /// The client's response from a lean exchange: hop-by-hop headers go, the body follows as
    /// bytes when it came whole (the connection is back in the pool already) or as a stream.
    /// `now` is a recent clock reading: the idle time of a connection freed at once counts from it.
    fn respond_lean(&self, head: h1::Head, conn: h1::Conn, flight: InFlight, now: std::time::Instant) -> Response<Body> {
        let max_idle = self.upstream.settings.max_idle;
        let answer = conn.body(&head, move |conn, at_once| {
            if let Some(conn) = conn {
                let since = if at_once { now } else { std::time::Instant::now() };
                pool::put_at(flight.server().id, Sender::Raw(conn), max_idle, since);
            }
        });
        // The lean client leaves the hop-by-hop headers out already.
        let h1::Head { status, headers, .. } = head;
        let body = match answer {
            h1::Answer::Empty => Body::empty(),
            h1::Answer::Whole(bytes) => Body::full(bytes),
            h1::Answer::Streaming(s) => Body::stream(ReadTimeout::new(s, self.upstream.settings.response_timeout.0)),
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }
}

/// What an upstream answered: by hyper's client (with its connection, to pool once the body
/// is read, for HTTP/1.1), or by the lean one.
enum Answer {
    Hyper(Response<Incoming>, Option<Sender>),
    Lean(h1::Head, h1::Conn),
}

/// Sends a request without a body by the lean client and reads the response head, which must
/// come before `deadline`.
async fn exchange(
    mut conn: h1::Conn,
    parts: &http::request::Parts,
    target: &PathAndQuery,
    extra: &h1::Fields,
    deadline: std::time::Instant,
) -> Result<Answer, SendError> {
    // The connection's own timer bounds the exchange (taken out while the connection is lent to
    // it): a pooled connection's timer stays armed from one request to the next.
    let mut timer = std::mem::take(&mut conn.timer);
    let fut = async move {
        conn.send(&parts.method, target.as_str(), &parts.headers, extra).await?;
        let head = conn.read_head(parts.method == Method::HEAD).await?;
        Ok::<_, h1::Error>((head, conn))
    };
    // Bound first: a future built in a `match` scrutinee is kept twice in the caller's future.
    let bounded = timer.bound(deadline.into(), fut);
    match bounded.await {
        Some(Ok((head, mut conn))) => {
            conn.timer = timer;
            Ok(Answer::Lean(head, conn))
        }
        Some(Err(e)) => Err(SendError::Failed(Box::new(e))),
        None => Err(SendError::Timeout),
    }
}

enum SendError {
    Timeout,
    Failed(pool::BoxError),
}

/// Sends a request; for HTTP/1.1 the sender comes back with the response, to be pooled once
/// the body is read. The response head must come within `timeout`, counted from when the
/// request body (`body`, when it has one) last moved: an upload slower than the timeout is not
/// cut while the upstream keeps reading it (as nginx's `proxy_send_timeout` counts between
/// writes); once the body has ended or stalled, the head comes within one to two timeouts.
async fn send(client: Client, req: Request<UpBody>, timeout: std::time::Duration, body: Option<&BodyState>) -> Result<Answer, SendError> {
    let failed = |e: hyper::Error| SendError::Failed(Box::new(e));
    let fut = async move {
        match client {
            Client::H1(mut s) => {
                s.ready().await.map_err(failed)?;
                let resp = s.send_request(req).await.map_err(failed)?;
                Ok(Answer::Hyper(resp, Some(Sender::Hyper(Client::H1(s)))))
            }
            Client::H2(mut s) => {
                s.ready().await.map_err(failed)?;
                let resp = s.send_request(req).await.map_err(failed)?;
                Ok(Answer::Hyper(resp, None))
            }
        }
    };
    tokio::pin!(fut);
    let moved = || body.map_or(0, |b| b.moved.load(std::sync::atomic::Ordering::Relaxed));
    let awaiting_client = || body.is_some_and(|b| b.awaiting_client.load(std::sync::atomic::Ordering::Relaxed));
    let mut seen = moved();
    loop {
        match tokio::time::timeout(timeout, &mut fut).await {
            Ok(r) => return r,
            Err(_) if moved() != seen || awaiting_client() => seen = moved(),
            Err(_) => return Err(SendError::Timeout),
        }
    }
}

/// The upstream's response body on its way to the client; when it ends, its connection goes
/// back to the pool and the server's in-flight count drops.
struct PooledBody {
    inner: Incoming,
    sender: Option<Sender>,
    flight: Option<InFlight>,
    max_idle: usize,
}

impl PooledBody {
    /// The body was read to its end: the connection can carry the next request.
    fn release(&mut self) {
        if let (Some(s), Some(f)) = (self.sender.take(), self.flight.take()) {
            pool::put(f.server().id, s, self.max_idle);
        }
        self.flight = None;
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.sender = None;
                this.flight = None;
                Poll::Ready(Some(Err(io::Error::other(format!("the upstream response broke off: {e}")))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling a body whose length is known once it has it all, so the
                // end is noticed here, not by a final `None`.
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn cidrs_match() {
        let net = servente_config::apps::parse_cidr("10.1.0.0/16").expect("cidr");
        assert!(in_cidr("10.1.2.3".parse().expect("ip"), net));
        assert!(!in_cidr("10.2.0.1".parse().expect("ip"), net));
        assert!(in_cidr("::1".parse().expect("ip"), servente_config::apps::parse_cidr("::1").expect("cidr")));
        assert!(!in_cidr("::1".parse().expect("ip"), net));
    }
}

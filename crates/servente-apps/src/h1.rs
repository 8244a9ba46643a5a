//! The lean HTTP/1.1 upstream client: a proxied request without a body is written, and its
//! answer read, on the request's own task.
//!
//! Written by hand because hyper's client runs every connection as a task of its own, fed
//! through channels: each proxied request then pays extra task wake-ups and channel hand-offs
//! (request, response head, every body frame) on top of the socket work, and in the proxy
//! benchmark that was the larger part of servente's user CPU. Here the request's task writes
//! the head and reads the answer itself; an answer that arrives whole (the usual small one)
//! becomes a body in memory and its connection goes back to the pool at once. Requests with a
//! body and protocol upgrades still go through hyper's client (`pool::connect`).
//!
//! Parsing the head is httparse's (strict: no obs-fold, no space before the colon); framing
//! follows RFC 9112 section 6.3, and anything ambiguous ends the connection after the answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};
use servente_core::lazy_timer::LazyTimer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a response head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after a chunked body (they are read and dropped).
const MAX_TRAILERS: usize = 64 * 1024;
/// How much room each read asks for.
const READ_ROOM: usize = 16 * 1024;

/// A connection to an upstream server, over TCP or a Unix socket.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// The connection failed or closed before any byte of an answer (a kept-alive connection
    /// the server had just closed looks like this).
    NoAnswer(io::Error),
    /// The server sent something that is not a usable HTTP/1.1 response.
    Malformed(String),
    /// Reading failed in the middle of the answer.
    Io(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoAnswer(e) => write!(f, "no answer: {e}"),
            Error::Malformed(m) => write!(f, "malformed response: {m}"),
            Error::Io(e) => write!(f, "reading the response: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// How the body of a response is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A response head, checked and ready for the client.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The headers as the server sent them, without the hop-by-hop ones (those of the fixed
    /// list and those its Connection header names).
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub reusable: bool,
}

/// A kept-alive connection and the bytes read from it but not yet used.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    /// The request head being sent, kept to be reused by the next request.
    out: Vec<u8>,
    /// The response timer, kept with the connection so that each request does not register
    /// and remove one (see [`servente_core::lazy_timer`]). While the connection is pooled an
    /// armed timer still holds the waker of the last task that used it, until it fires (one
    /// spurious wake) or the connection is taken again.
    pub timer: LazyTimer,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn { io, buf: BytesMut::new(), out: Vec::new(), timer: LazyTimer::default() }
    }

    /// The bare stream, for hyper's client (only an idle connection, which holds no bytes, is
    /// handed over).
    pub fn into_stream(self) -> Stream {
        self.io
    }

    /// Whether an idle connection can still carry a request: no close and no stray bytes from
    /// the server since it was pooled. Costs a system call only when the reactor saw the socket
    /// become readable.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        }
    }

    /// Sends a request head without a body: `headers`, then the `extra` fields (the proxy's
    /// forwarding fields, written without going through the map).
    pub async fn send(&mut self, method: &Method, target: &str, headers: &HeaderMap, extra: &Fields) -> Result<(), Error> {
        self.out.clear();
        encode_request(&mut self.out, method, target, headers, extra);
        self.io.write_all(&self.out).await.map_err(Error::NoAnswer)
    }

    /// Reads the final response head (1xx answers are skipped).
    pub async fn read_head(&mut self, head_request: bool) -> Result<Head, Error> {
        let mut received = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf, head_request)? {
                    Parsed::Partial if self.buf.len() > MAX_HEAD => {
                        return Err(Error::Malformed(format!("the head is longer than {} KiB", MAX_HEAD / 1024)));
                    }
                    Parsed::Partial => {}
                    Parsed::Informational(n) => {
                        self.buf.advance(n);
                        continue;
                    }
                    Parsed::Final(n, pending) => {
                        let bytes = self.buf.split_to(n).freeze();
                        return pending.into_head(&bytes);
                    }
                }
            }
            self.buf.reserve(READ_ROOM);
            match std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)).await {
                Ok(0) if !received => return Err(Error::NoAnswer(io::ErrorKind::UnexpectedEof.into())),
                Ok(0) => return Err(Error::Malformed("the connection closed in the middle of the head".into())),
                Ok(_) => received = true,
                Err(e) if !received => return Err(Error::NoAnswer(e)),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// The body that follows `head`. When it arrives whole with the head, it is returned as
    /// bytes and `done` gets the connection at once (and `true`, "at once", so that it may reuse
    /// a clock reading); otherwise it streams, and `done` gets the connection when the body has
    /// been read to its end. `done` gets `None` when the connection cannot be reused; it is
    /// dropped unused if the body is dropped unfinished.
    pub fn body(mut self, head: &Head, done: impl FnOnce(Option<Conn>, bool) + Send + 'static) -> Answer {
        let decoder = Decoder::new(head.framing);
        match decoder {
            Decoder::Done => {
                done(head.reusable.then_some(self).filter(|c| c.buf.is_empty()), true);
                Answer::Empty
            }
            Decoder::Length(n) if n <= self.buf.len() as u64 => {
                let bytes = self.buf.split_to(n as usize).freeze();
                done(head.reusable.then_some(self).filter(|c| c.buf.is_empty()), true);
                Answer::Whole(bytes)
            }
            _ => Answer::Streaming(Streaming {
                conn: Some(self),
                decoder,
                reusable: head.reusable,
                done: Some(Box::new(done)),
                unflushed: false,
                failure: None,
            }),
        }
    }
}

/// A response body, as `Conn::body` found it.
pub enum Answer {
    Empty,
    Whole(Bytes),
    Streaming(Streaming),
}

type Done = Box<dyn FnOnce(Option<Conn>, bool) + Send>;

/// A response body read from the connection as the client takes it.
pub struct Streaming {
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    done: Option<Done>,
    /// Data went out since the last `Pending`: hyper may still hold it unsent.
    unflushed: bool,
    /// A failure held back for one poll (see `fail`).
    failure: Option<io::Error>,
}

impl Streaming {
    /// Ends the body with an error. When data was handed out in the same poll burst, the error
    /// waits one turn: hyper writes out what it holds when a body says `Pending`, so the client
    /// gets the head and the bytes that did arrive (and sees a transfer cut short) rather than
    /// nothing at all.
    fn fail(&mut self, e: io::Error, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        if self.unflushed {
            self.unflushed = false;
            self.failure = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(e)))
    }

    fn finish(&mut self) {
        let conn = self.conn.take().filter(|c| self.reusable && c.buf.is_empty());
        if let Some(done) = self.done.take() {
            done(conn, false);
        }
    }
}

impl http_body::Body for Streaming {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failure.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.next(&mut conn.buf) {
                Ok(Step::Data(bytes)) => {
                    // hyper stops polling a body of known length once it has it all, so the
                    // end is noticed here rather than by a last poll.
                    if this.decoder == Decoder::Done {
                        this.finish();
                    }
                    this.unflushed = true;
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e, cx),
            }
            conn.buf.reserve(READ_ROOM);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => {
                    this.unflushed = false;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) if this.decoder == Decoder::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed the connection before the end of the body");
                    return this.fail(e, cx);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The request head as bytes: request line, the headers as they are, then `extra`.
fn encode_request(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap, extra: &Fields) {
    out.reserve(32 + target.len() + (headers.len() + extra.len()) * 40);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter().chain(extra.iter()) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A few header fields outside a header map (at most [`Fields::CAPACITY`], kept inline: the
/// common request allocates nothing for them).
#[derive(Default)]
pub struct Fields {
    fields: [Option<(&'static HeaderName, HeaderValue)>; Fields::CAPACITY],
    len: usize,
}

impl Fields {
    pub const CAPACITY: usize = 4;

    /// Adds a field; a field beyond the capacity is a bug of the caller, reported in debug
    /// builds and dropped otherwise.
    pub fn push(&mut self, name: &'static HeaderName, value: HeaderValue) {
        debug_assert!(self.len < Self::CAPACITY, "more than {} extra fields", Self::CAPACITY);
        if let Some(slot) = self.fields.get_mut(self.len) {
            *slot = Some((name, value));
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields[..self.len].iter().flatten().map(|(n, v)| (*n, v))
    }
}

/// What `parse_head` found at the start of the buffer.
enum Parsed {
    Partial,
    /// A 1xx answer of this many bytes, to skip.
    Informational(usize),
    /// The final head: its length, and where its parts lie.
    Final(usize, PendingHead),
}

/// A parsed head as offsets into the bytes it was parsed from, so that header values can
/// share those bytes instead of being copied.
struct PendingHead {
    status: StatusCode,
    http10: bool,
    head_request: bool,
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, Field)>,
}

/// What a response field means to the lean client, told once per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Passed on to the client.
    Plain,
    Connection,
    TransferEncoding,
    ContentLength,
    /// Another of [`HOP_BY_HOP`].
    HopByHop,
}

impl Field {
    fn of(name: &[u8]) -> Field {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        // The length rules out most names at once.
        match name.len() {
            10 if is("connection") => Field::Connection,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            14 if is("content-length") => Field::ContentLength,
            _ if is_hop_by_hop(name) => Field::HopByHop,
            _ => Field::Plain,
        }
    }
}

fn parse_head(buf: &[u8], head_request: bool) -> Result<Parsed, Error> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let n = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(Error::Malformed(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed(format!("status {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Malformed("it switched protocols unasked".into()));
    }
    if status.is_informational() {
        return Ok(Parsed::Informational(n));
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let fields = response.headers.iter().map(|h| (offset(h.name.as_bytes()), offset(h.value), Field::of(h.name.as_bytes()))).collect();
    Ok(Parsed::Final(n, PendingHead { status, http10: response.version == Some(0), head_request, fields }))
}

/// The items of a comma-separated list field over all its lines, trimmed, empty ones
/// skipped (RFC 9110 section 5.6.1); a line that is not text has none.
pub(crate) fn list_items<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> + 'a {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// Whether a list field holds `token` (compared without regard to case).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1): neither
/// the lean client nor the proxy passes them on. Connection comes first. Plain lowercase
/// strings: the lean client compares raw field names with them, and a header map takes them as
/// names as they are.
pub(crate) const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Whether a raw field name (any case) is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The items of one line of a comma-separated list field, trimmed, empty ones skipped.
fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

impl PendingHead {
    /// The head for the client: framing and reuse come from the raw fields, and the header
    /// map gets every field but the hop-by-hop ones and those the Connection header names (so
    /// the proxy has nothing to look up or remove afterwards).
    fn into_head(self, bytes: &Bytes) -> Result<Head, Error> {
        let fields = || self.fields.iter().map(|(n, v, kind)| (&bytes[n.clone()], &bytes[v.clone()], *kind));
        let (mut close, mut keep_alive, mut chunked, mut coded, mut has_length) = (false, false, false, false, false);
        // Names the Connection header adds to the fixed list (most often it names none).
        let mut listed: Vec<&[u8]> = Vec::new();
        for (_, value, kind) in fields() {
            if kind == Field::Connection {
                for t in items(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !is_hop_by_hop(t) {
                        listed.push(t);
                    }
                }
            } else if kind == Field::TransferEncoding {
                coded = true;
                if let Some(last) = items(value).last() {
                    chunked = last.eq_ignore_ascii_case(b"chunked");
                }
            } else if kind == Field::ContentLength {
                has_length = true;
            }
        }
        let mut reusable = !close && (!self.http10 || keep_alive);
        let code = self.status.as_u16();
        let mut drop_length = false;
        let framing = if self.head_request || code == 204 || code == 304 {
            Framing::Empty
        } else if coded {
            // A length beside it is ignored (RFC 9112 section 6.3), and such a connection is
            // not trusted with another request; a coding list that does not end in chunked
            // runs until the close.
            if has_length || self.http10 {
                reusable = false;
            }
            drop_length = true;
            if chunked {
                Framing::Chunked
            } else {
                reusable = false;
                Framing::UntilClose
            }
        } else if has_length {
            Framing::Length(content_length(fields().filter(|f| f.2 == Field::ContentLength).map(|f| f.1))?)
        } else {
            reusable = false;
            Framing::UntilClose
        };
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for (name_at, value_at, kind) in &self.fields {
            let name = &bytes[name_at.clone()];
            let passed = match kind {
                Field::Plain => true,
                Field::ContentLength => !drop_length,
                Field::Connection | Field::TransferEncoding | Field::HopByHop => false,
            };
            if !passed || listed.iter().any(|l| name.eq_ignore_ascii_case(l)) {
                continue;
            }
            let name = HeaderName::from_bytes(name).map_err(|_| Error::Malformed("a header name is not valid".into()))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value_at.clone()))
                .map_err(|_| Error::Malformed(format!("the value of {name} is not valid")))?;
            headers.append(name, value);
        }
        Ok(Head { status: self.status, headers, framing, reusable })
    }
}

/// The Content-Length from its lines: every value (and every item of a list) must be the same
/// number.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<u64, Error> {
    let mut found: Option<u64> = None;
    for v in values {
        for item in v.split(|&b| b == b',') {
            let item = item.trim_ascii();
            let n = (!item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit))
                .then(|| item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
                .ok_or_else(|| Error::Malformed("the Content-Length is not a number".into()))?;
            if found.is_some_and(|f| f != n) {
                return Err(Error::Malformed("two different Content-Lengths".into()));
            }
            found = Some(n);
        }
    }
    found.ok_or_else(|| Error::Malformed("an empty Content-Length".into()))
}

/// Where the reading of a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    UntilClose,
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, this many bytes seen so far.
    Trailers(usize),
    Done,
}

enum Step {
    Data(Bytes),
    /// The buffer holds no more of the body: read.
    More,
    Done,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the upstream's chunked body is malformed: {what}"))
}

/// The position of the LF ending the first line of `buf`, which must end in CRLF.
fn line_end(buf: &[u8]) -> Result<Option<usize>, io::Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(0) => Err(malformed("a bare line feed")),
        Some(i) if buf[i - 1] != b'\r' => Err(malformed("a bare line feed")),
        found => Ok(found),
    }
}

impl Decoder {
    fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::ChunkSize,
            Framing::UntilClose => Decoder::UntilClose,
        }
    }

    /// The next piece of body the buffer holds.
    fn next(&mut self, buf: &mut BytesMut) -> Result<Step, io::Error> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::Done),
                _ if buf.is_empty() => return Ok(Step::More),
                Decoder::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                Decoder::Length(n) => {
                    let take = n.min(buf.len() as u64);
                    *self = if take == n { Decoder::Done } else { Decoder::Length(n - take) };
                    return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                }
                Decoder::ChunkData(n) => {
                    let take = n.min(buf.len() as u64);
                    *self = if take == n { Decoder::ChunkEnd } else { Decoder::ChunkData(n - take) };
                    return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                }
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("no CRLF after a chunk"));
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::ChunkSize => {
                    let Some(end) = line_end(buf)? else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(malformed("a chunk-size line is too long"));
                        }
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..end - 1])?;
                    buf.advance(end + 1);
                    *self = if size == 0 { Decoder::Trailers(0) } else { Decoder::ChunkData(size) };
                }
                Decoder::Trailers(seen) => {
                    let Some(end) = line_end(buf)? else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(malformed("the trailers are too long"));
                        }
                        return Ok(Step::More);
                    };
                    buf.advance(end + 1);
                    // An empty line ends the message; trailer fields are dropped.
                    *self = if end == 1 { Decoder::Done } else { Decoder::Trailers(seen + end + 1) };
                    if *self == Decoder::Done {
                        return Ok(Step::Done);
                    }
                }
            }
        }
    }
}

/// A chunk-size line without its CRLF: hex digits, then optional extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, io::Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(malformed("a chunk size is not a hexadecimal number"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(malformed("a chunk-size line has stray bytes"));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| malformed("a chunk size is not text"))?;
    u64::from_str_radix(text, 16).map_err(|_| malformed("a chunk size is not a hexadecimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Head, Error> {
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        match parse_head(&bytes, head_request)? {
            Parsed::Final(n, pending) => {
                assert_eq!(n, bytes.len());
                pending.into_head(&bytes)
            }
            Parsed::Informational(_) => panic!("informational"),
            Parsed::Partial => panic!("partial"),
        }
    }

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Decoder, usize), io::Error> {
        // Fed one byte at a time, as the worst network would.
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Step::Data(d) = decoder.next(&mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, decoder, buf.len()))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n", false).expect("head");
        assert_eq!((h.status, h.framing, h.reusable), (StatusCode::OK, Framing::Length(5), true));
        assert_eq!(h.headers["x-a"], "b");
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false).expect("head");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        // Transfer-Encoding wins over a length, which goes, and the connection is not reused.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false).expect("head");
        assert_eq!((h.framing, h.reusable, h.headers.contains_key("content-length")), (Framing::Chunked, false, false));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false).expect("head");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false).expect("head");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false).expect("head");
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("head");
        assert_eq!((h.framing, h.headers["content-length"].as_bytes()), (Framing::Empty, &b"9"[..]));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\n", false).expect("head");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n", false).expect("head");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 7\r\nConnection: Keep-Alive\r\n\r\n", false).expect("head");
        assert!(h.reusable);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n", false).expect("head");
        assert_eq!(h.framing, Framing::Length(7));
        // A bad length does not matter where the length is not used.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true).expect("head");
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, close\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\n\
             Transfer-Encoding: chunked\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nTE: trailers\r\n\
             X-Kept: k\r\nx-kept: l\r\nServer: s\r\n\r\n",
            false,
        )
        .expect("head");
        let names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "server"]);
        assert_eq!(h.headers.get_all("x-kept").iter().count(), 2);
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Space : a\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 1000 Big\r\n\r\n",
            "this is not HTTP at all\r\n\r\n",
        ] {
            let bytes = Bytes::copy_from_slice(bad.as_bytes());
            let result = parse_head(&bytes, false).and_then(|p| match p {
                Parsed::Final(_, pending) => pending.into_head(&bytes).map(|_| ()),
                _ => Ok(()),
            });
            assert!(matches!(result, Err(Error::Malformed(_))), "accepted: {bad:?}");
        }
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\nX-A: b\r\n", false), Ok(Parsed::Partial)));
        assert!(matches!(parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200", false), Ok(Parsed::Informational(40))));
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let input = b"5;name=value\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let (out, decoder, left) = decode_all(Framing::Chunked, input).expect("decodes");
        assert_eq!((out.as_slice(), decoder, left), (&b"hello world!"[..], Decoder::Done, 4));
        let (out, decoder, left) = decode_all(Framing::Length(4), b"abcdef").expect("decodes");
        assert_eq!((out.as_slice(), decoder, left), (&b"abcd"[..], Decoder::Done, 2));
        for bad in [&b"5\r\nhelloXX"[..], b"z\r\n", b"5\nhello\r\n", b"5 x\r\nhello\r\n", b"1234567890abcdef0\r\n"] {
            assert!(decode_all(Framing::Chunked, bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode_all(Framing::Chunked, &long).is_err());
    }

    #[tokio::test]
    async fn an_exchange_reuses_its_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            for answer in [
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..],
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ] {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.expect("read");
                    head.push(b[0]);
                }
                seen.push(String::from_utf8(head).expect("text"));
                s.write_all(answer).await.expect("write");
            }
            // The second body comes later, in pieces.
            for piece in [&b"3\r\nabc"[..], b"\r\n0\r\n\r\n"] {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                s.write_all(piece).await.expect("write");
            }
            seen
        });
        let stream = Stream::Tcp(TcpStream::connect(addr).await.expect("connect"));
        let mut conn = Conn::new(stream);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("example"));
        conn.send(&Method::GET, "/one?x=1", &headers, &Fields::default()).await.expect("send");
        let h = conn.read_head(false).await.expect("head");
        let (tx, rx) = std::sync::mpsc::channel();
        let first = conn.body(&h, move |c, _| tx.send(c).expect("send"));
        assert!(matches!(first, Answer::Whole(ref b) if b == "hi"));
        let mut conn = rx.recv().expect("done").expect("reusable");
        assert!(conn.is_usable());
        conn.send(&Method::GET, "/two", &headers, &Fields::default()).await.expect("send");
        let h = conn.read_head(false).await.expect("head");
        let (tx, rx) = std::sync::mpsc::channel();
        let Answer::Streaming(body) = conn.body(&h, move |c, _| tx.send(c).expect("send")) else { panic!("not streaming") };
        let collected = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
        assert_eq!(collected, "abc");
        assert!(rx.recv().expect("done").is_some());
        let seen = server.await.expect("server");
        assert_eq!(seen, ["GET /one?x=1 HTTP/1.1\r\nhost: example\r\n\r\n", "GET /two HTTP/1.1\r\nhost: example\r\n\r\n"]);
    }
}

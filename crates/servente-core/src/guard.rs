//! Time limits on a client connection: the header read timeout and the idle timeout.
//!
//! hyper's own `header_read_timeout` closes the socket without an answer and does not
//! distinguish an idle keep-alive connection from a slow request head. [`GuardedIo`] wraps the
//! connection's stream and sees every read; the HTTP engine tells it through [`ConnState`] when
//! a request head has been parsed and when its response is finished. From that it knows which
//! phase the connection is in:
//! - idle (no request in flight, nothing read since the last response): closed quietly after
//!   `idle_timeout`;
//! - reading a head (bytes arrived, no request dispatched yet): after `header_read_timeout`
//!   an HTTP/1 client gets `408 Request Timeout` and the connection is closed;
//! - busy (a request in flight): no limit on reading.
//!
//! HTTP/2 connections (detected by their preface) only get the idle limit, counted from the
//! connection's start or its last request's end whatever frames arrive meanwhile.
//!
//! Writes, in any phase and on tunnels (WebSocket) too, get `send_timeout`, as nginx's: a write
//! that waits that long for room in the socket (the client not reading) ends the connection.
//! The kernel reports room only once about a third of the send buffer is free, so a client
//! reading far slower than that per `send_timeout` is cut too. HTTP/2 streams held back by the
//! client's flow-control window never wait on the socket; [`crate::streams`] times those.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use rustix::io::Errno;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::sendfile::{Plan, SendFile};

/// Connections cut by `send_timeout`, for the metrics (process-wide, as [`crate::metrics::Metrics`]).
pub static SEND_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 20\r\ncontent-type: text/plain\r\n\r\nrequest head timeout";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// How much [`GuardedIo::sniff`] reads at once: as much as hyper's first read, so that one
/// read usually takes a whole request head.
const SNIFF_ROOM: usize = 8192;

/// What the HTTP engine tells the guard about requests on one connection.
#[derive(Default)]
pub struct ConnState {
    in_flight: AtomicUsize,
    /// Bumped when a request is dispatched or finishes, so the guard sees that the phase moved.
    generation: AtomicU64,
    /// The connection's reader, parked on its last read: woken when the last response
    /// finishes so that the idle clock starts.
    parked_reader: AtomicWaker,
    /// The connection was handed over by a `101 Switching Protocols` (WebSocket and other
    /// upgrades): it is a tunnel now, whose bytes are not HTTP heads, so no limit here applies.
    upgraded: AtomicBool,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState::default())
    }

    /// A request head was parsed and handed to a handler.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.generation.fetch_add(1, Relaxed);
    }

    /// A response was fully sent (or abandoned).
    pub fn request_finished(&self) {
        let before = self.in_flight.fetch_sub(1, Relaxed);
        self.generation.fetch_add(1, Relaxed);
        if before == 1 {
            self.parked_reader.wake();
        }
    }

    /// Counts a request in flight from the moment hyper hands it over (before its handler first
    /// runs, so that hyper's own read for an early close already sees the connection busy and
    /// arms no head timer) until the token is dropped: with its response, or with the handler
    /// when hyper drops it (an HTTP/2 stream reset), so that the count cannot stay up.
    pub fn start(self: &Arc<Self>) -> InFlightRequest {
        self.request_started();
        InFlightRequest(self.clone())
    }

    /// The response was `101 Switching Protocols`: stop timing heads and idleness.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }
}

/// One request counted in flight on its connection (see [`ConnState::start`]).
pub struct InFlightRequest(Arc<ConnState>);

impl InFlightRequest {
    pub fn state(&self) -> &ConnState {
        &self.0
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Idle,
    ReadingHead,
    Busy,
}

/// The limits a guard enforces.
#[derive(Clone, Copy, Debug)]
pub struct GuardLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Zero: no limit.
    pub send_timeout: Duration,
}

/// A stream wrapper that enforces [`GuardLimits`]; see the module docs.
pub struct GuardedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    limits: GuardLimits,
    sleep: Pin<Box<Sleep>>,
    deadline: Option<Instant>,
    phase: Phase,
    seen_generation: u64,
    /// None until the first bytes tell HTTP/1 from HTTP/2.
    http2: Option<bool>,
    /// How much of HTTP/2's preface the first reads matched, while `http2` is undecided.
    preface_seen: usize,
    /// Bytes [`GuardedIo::sniff`] read, handed on by the next reads.
    prefix: Option<bytes::Bytes>,
    on_header_timeout: Option<Box<dyn Fn() + Send + Sync>>,
    /// TCP_CORK is on while a file is sent (see [`SendFile::cork`]); off at the next flush.
    corked: bool,
    /// When a write that found the socket full gives up: set at the first such write, cleared
    /// by any write that moves bytes.
    write_deadline: Option<Instant>,
    /// Its timer, made at the first stall.
    write_sleep: Option<Pin<Box<Sleep>>>,
    /// A write has been made.
    wrote: bool,
    /// `TCP_NODELAY` is set (see [`GuardedIo::nodelay_before_write`]).
    nodelay: bool,
    /// The client closed its side: a read found the end.
    read_eof: bool,
}

impl<I> GuardedIo<I> {
    pub fn new(inner: I, state: Arc<ConnState>, limits: GuardLimits, http2: Option<bool>) -> Self {
        let now = Instant::now();
        GuardedIo {
            inner,
            state,
            limits,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            deadline: None,
            phase: Phase::Idle,
            seen_generation: 0,
            http2,
            preface_seen: 0,
            prefix: None,
            on_header_timeout: None,
            corked: false,
            write_deadline: None,
            write_sleep: None,
            wrote: false,
            nodelay: false,
            read_eof: false,
        }
    }

    /// Called once when a head timeout closes the connection (to count it).
    pub fn on_header_timeout(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_header_timeout = Some(Box::new(f));
        self
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Moves the phase along from what the engine reported and what was just read. Any
    /// change of phase, and any request that started or finished since the last look (even
    /// when the phase looks the same, as ReadingHead -> Idle -> ReadingHead in one call),
    /// starts a new deadline.
    fn update_phase(&mut self, read_bytes: bool) {
        let generation = self.state.generation.load(Relaxed);
        let moved = generation != self.seen_generation;
        self.seen_generation = generation;
        let mut reset = false;
        if self.state.in_flight() > 0 {
            reset = self.phase != Phase::Busy || moved;
            self.phase = Phase::Busy;
        } else {
            if moved || self.phase == Phase::Busy {
                reset = true;
                self.phase = Phase::Idle;
            }
            // HTTP/2 has no head phase here, and its bytes do not restart idle time either: a
            // request's HEADERS trickled a byte at a time, or PINGs, would otherwise hold the
            // connection open for ever (Go's server does not count PINGs as activity either).
            // Its idle time runs from the connection's start or its last request's end.
            if read_bytes && self.phase == Phase::Idle && self.http2 != Some(true) {
                reset = true;
                self.phase = Phase::ReadingHead;
            }
        }
        if reset {
            self.deadline = None;
        }
    }

    fn deadline_for_phase(&mut self) -> Option<Instant> {
        if self.deadline.is_none() {
            self.deadline = match self.phase {
                Phase::Busy => None,
                Phase::Idle => Some(Instant::now() + self.limits.idle_timeout),
                Phase::ReadingHead => Some(Instant::now() + self.limits.header_read_timeout),
            };
        }
        self.deadline
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> GuardedIo<I> {
    /// Reads a cleartext connection's first bytes, under the head timeout, until they tell
    /// HTTP/2's preface (`Some(true)`) from an HTTP/1 head (`Some(false)`); `None` when the
    /// client closed before sending anything. The next reads hand the bytes on, so the engine
    /// for that protocol can be set up with its own limits (hyper-util's automatic builder
    /// has no limit on an HTTP/1 head other than the read buffer's, which then also caps the
    /// size of every body read).
    pub async fn sniff(&mut self) -> io::Result<Option<bool>> {
        use tokio::io::AsyncReadExt as _;
        let mut got = bytes::BytesMut::with_capacity(SNIFF_ROOM);
        while self.http2.is_none() {
            if got.len() == got.capacity() {
                got.reserve(SNIFF_ROOM);
            }
            if self.read_buf(&mut got).await? == 0 {
                if got.is_empty() {
                    return Ok(None);
                }
                // Closed inside what could have been the preface: hyper's HTTP/1 parser then
                // sees the short request and the end.
                self.http2 = Some(false);
            }
        }
        if !got.is_empty() {
            self.prefix = Some(got.freeze());
        }
        Ok(self.http2)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &mut this.prefix {
            // Counted as read when `sniff` took them.
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(n));
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if this.http2.is_none() && !got.is_empty() {
                    // The preface may come over several reads: decided at its first byte that
                    // differs, or once it is whole. (Taken for HTTP/1, an HTTP/2 connection
                    // would get the head timeout between its requests.)
                    let seen = this.preface_seen;
                    let n = got.len().min(H2_PREFACE.len() - seen);
                    if got[..n] != H2_PREFACE[seen..seen + n] {
                        this.http2 = Some(false);
                    } else if seen + n == H2_PREFACE.len() {
                        this.http2 = Some(true);
                        // Earlier pieces of the preface may have been taken for a head: the
                        // idle limit, not the head timeout, runs from here.
                        this.phase = Phase::Idle;
                        this.deadline = None;
                    } else {
                        this.preface_seen += n;
                    }
                }
                let read_bytes = !got.is_empty();
                // An empty read into room is the end of the client's side.
                this.read_eof |= !read_bytes && buf.remaining() > 0;
                this.update_phase(read_bytes);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.state.upgraded.load(Relaxed) => Poll::Pending,
            Poll::Pending => {
                // Registered whatever the phase: a request that finishes must wake this reader
                // so that the idle clock starts. hyper does not always read again after a
                // response (seen when the last read before it came in the head phase): the
                // only timer armed was then the head timeout's, and an idle connection stayed
                // open 10 s instead of `idle_timeout`.
                this.state.parked_reader.register(cx.waker());
                // The response may have finished between the engine's report and the registration.
                this.update_phase(false);
                let Some(deadline) = this.deadline_for_phase() else { return Poll::Pending };
                // A deadline that moved later leaves the timer where it is (a kept-alive
                // connection would otherwise re-arm it at every request).
                if crate::lazy_timer::poll_until(&mut this.sleep, deadline, cx).is_pending() {
                    return Poll::Pending;
                }
                if this.phase == Phase::ReadingHead {
                    if let Some(f) = &this.on_header_timeout {
                        f();
                    }
                    if this.http2 != Some(true) {
                        // Best effort: the answer is small and the socket is idle, so one write
                        // almost always takes it whole; if not, the client just sees the close.
                        let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    }
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head timeout")));
                }
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection timeout")))
            }
        }
    }
}

/// A file shorter than the response promised: its length can no longer be kept.
fn shrank() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the file became shorter while it was being sent")
}

impl<I: AsyncRead + AsyncWrite + SendFile + Unpin> GuardedIo<I> {
    /// Writes `bufs`, sending a slice that mirrors a file with `sendfile` (see
    /// [`crate::sendfile`]); the count returned is the same as a plain write's.
    fn write_zero_copy(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let can = self.inner.can_sendfile();
        if let Some(plan) = crate::sendfile::plan(bufs, can) {
            // Corked from the response head on, so that head and file leave in full segments.
            if can && !self.corked {
                self.inner.cork(true);
                self.corked = true;
            }
            match plan {
                Plan::Before(n) => return Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..n]),
                Plan::Lost => return Poll::Ready(Err(io::Error::other("unread file bytes lost their file"))),
                Plan::Send { file, offset, len, unread } => {
                    if can {
                        match self.inner.poll_sendfile(cx, &file, offset, len) {
                            Poll::Ready(Ok(0)) if unread => return Poll::Ready(Err(shrank())),
                            // The file is shorter now, or cannot be sent this way: the memory
                            // is the truth.
                            Poll::Ready(Ok(0)) => {}
                            Poll::Ready(Err(e))
                                if matches!(
                                    e.raw_os_error().map(Errno::from_raw_os_error),
                                    Some(Errno::INVAL | Errno::NOSYS | Errno::OVERFLOW)
                                ) => {}
                            other => return other,
                        }
                    }
                    if unread {
                        return self.write_from_file(cx, &file, offset, len);
                    }
                    // From memory, and that slice alone: an unread slice may follow it.
                    return Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..1]);
                }
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Writes unread file bytes where `sendfile` cannot: read into a small buffer, then
    /// written (the count is what the socket took, so the rest comes again).
    fn write_from_file(&mut self, cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: usize) -> Poll<io::Result<usize>> {
        let mut buf = vec![0u8; len.min(64 << 10)];
        let n = loop {
            match std::os::unix::fs::FileExt::read_at(file, &mut buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Poll::Ready(Err(shrank()));
        }
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    /// Counts a write's outcome against `send_timeout`: bytes taken (`moved`) stop the clock,
    /// a full socket starts it, and once it has run out the write fails, which ends the
    /// connection.
    fn watch_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>, moved: impl Fn(&T) -> bool) -> Poll<io::Result<T>> {
        match &r {
            Poll::Ready(Ok(v)) if moved(v) => self.write_deadline = None,
            Poll::Pending if !self.limits.send_timeout.is_zero() => {
                let deadline = *self.write_deadline.get_or_insert_with(|| Instant::now() + self.limits.send_timeout);
                let sleep = self.write_sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if crate::lazy_timer::poll_until(sleep, deadline, cx).is_ready() {
                    SEND_TIMEOUTS.fetch_add(1, Relaxed);
                    let secs = self.limits.send_timeout.as_secs_f64();
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("the client took no data for {secs} s"))));
                }
            }
            _ => {}
        }
        r
    }

    /// Sets `TCP_NODELAY` before the connection's second write, unless the socket is corked
    /// (a file being sent, released by a flush, which pushes what is held).
    ///
    /// nginx sets it as late, when a connection is kept alive. Nagle's algorithm holds back a
    /// short segment only while an earlier short one is unacknowledged (Linux follows Minshall's
    /// variant), so a connection's first write never waits for it; setting the option at
    /// accept cost every one-request connection a system call.
    fn nodelay_before_write(&mut self) {
        if self.nodelay {
            return;
        }
        if self.wrote && !self.corked {
            self.inner.set_nodelay();
            self.nodelay = true;
        }
        self.wrote = true;
    }

    /// Lets held-back segments go (at a flush, or before the connection ends).
    fn uncork(&mut self) {
        if self.corked {
            self.inner.cork(false);
            self.corked = false;
        }
    }
}

impl<I: AsyncRead + AsyncWrite + SendFile + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.nodelay_before_write();
        let r = if buf.len() >= crate::sendfile::MIN_SLICE || crate::sendfile::is_unread(buf) {
            self.write_zero_copy(cx, &[io::IoSlice::new(buf)])
        } else {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        };
        self.watch_write(cx, r, |n| *n > 0)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.nodelay_before_write();
        let r = self.write_zero_copy(cx, bufs);
        self.watch_write(cx, r, |n| *n > 0)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.uncork();
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, r, |_| true)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.uncork();
        // A plain socket whose client has closed its side has nothing left to read (no byte
        // follows a FIN), so closing it sends the FIN after the queued bytes, as `shutdown`
        // would: one system call fewer for every connection that ends that way.
        if self.read_eof && self.inner.fin_on_drop() {
            return Poll::Ready(Ok(()));
        }
        // A TLS close_notify waits for room like any write.
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch_write(cx, r, |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes every frame of an unread file body through `io` as hyper would (each frame's
    /// bytes, in as many writes as the stream wants).
    async fn write_body<I: AsyncRead + AsyncWrite + SendFile + Unpin>(
        io: &mut GuardedIo<I>,
        body: crate::file_body::FileBody,
    ) -> io::Result<()> {
        use http_body_util::BodyExt;
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            let data = frame?.into_data().map_err(|_| io::Error::other("not data"))?;
            assert!(crate::sendfile::is_unread(&data), "cached bytes go unread");
            io.write_all(&data).await?;
        }
        io.flush().await
    }

    #[tokio::test]
    async fn unread_file_bytes_come_from_the_file_with_or_without_sendfile() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, &data).expect("write");
        let file = Arc::new(std::fs::File::open(f.path()).expect("open"));
        let body = || crate::file_body::FileBody::shared(file.clone(), 1000, 200_000).unread_if(true);
        let want = &data[1000..201_000];

        // A stream that cannot sendfile (a pipe) reads them back from the file.
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        write_body(&mut io, body()).await.expect("written through a pipe");
        drop(io);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert!(got == want, "the pipe got the file's bytes");

        // A TCP connection sends them with sendfile, while the client reads.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        write_body(&mut io, body()).await.expect("sent over TCP");
        drop(io);
        let got = reader.await.expect("reader").expect("read");
        assert!(got == want, "the TCP client got the file's bytes");

        // A file that became shorter than promised ends the response with an error, not zeros.
        let frame = {
            use http_body_util::BodyExt;
            let mut b = std::pin::pin!(body());
            b.frame().await.expect("a frame").expect("no error").into_data().expect("data")
        };
        f.as_file().set_len(50_000).expect("truncate");
        // A mirrored (read) chunk of the shrunk file falls back to its memory, and alone: the
        // unread slice queued behind it must not go out with it as zeros.
        {
            let listener2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut tcp_client = tokio::net::TcpStream::connect(listener2.local_addr().expect("addr")).await.expect("connect");
            let (tcp_server, _) = listener2.accept().await.expect("accept");
            // Registered as the file from offset 0: its tail lies past the new end, where
            // sendfile sends nothing.
            let read_chunk = crate::sendfile::mirrored(data[30_000..110_000].to_vec(), std::fs::File::open(f.path()).expect("open"));
            let past_end = read_chunk.slice(55_000..);
            let mut io = GuardedIo::new(tcp_server, ConnState::new(), limits(), None);
            let bufs = [io::IoSlice::new(&past_end), io::IoSlice::new(&frame)];
            let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &bufs)).await.expect("written from memory");
            assert_eq!(n, past_end.len(), "only the read slice, from memory");
            drop(io);
            let mut got = Vec::new();
            tcp_client.read_to_end(&mut got).await.expect("read");
            assert!(got == data[85_000..110_000], "the read chunk's own bytes");
        }
        for tcp in [false, true] {
            let err = if tcp {
                let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
                let (server, _) = listener.accept().await.expect("accept");
                tokio::spawn(async move { client.read_to_end(&mut Vec::new()).await });
                GuardedIo::new(server, ConnState::new(), limits(), None).write_all(&frame).await
            } else {
                let (_client, server) = tokio::io::duplex(1 << 20);
                GuardedIo::new(server, ConnState::new(), limits(), None).write_all(&frame).await
            };
            assert_eq!(err.expect_err("a short file cannot be sent").kind(), io::ErrorKind::UnexpectedEof, "tcp: {tcp}");
        }
    }

    fn limits() -> GuardLimits {
        GuardLimits {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(500),
            send_timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_one_that_reads_slowly_is_not() {
        let chunk = vec![7u8; 1024];
        // Reads 1 KiB every second: slower than the writer, but never 2 s without taking bytes.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        let start = Instant::now();
        for _ in 0..20 {
            io.write_all(&chunk).await.expect("a slow reader is served");
        }
        io.flush().await.expect("flush");
        drop(io);
        assert_eq!(reader.await.expect("reader"), 20 * 1024);
        assert!(start.elapsed() >= Duration::from_secs(10), "the writer did wait for the reader");

        // Stops reading: the write that finds the pipe full fails 2 s later.
        let (client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        let start = Instant::now();
        let mut err = None;
        for _ in 0..20 {
            if let Err(e) = io.write_all(&chunk).await {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the stalled write fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        drop(client);
    }

    /// A guarded pipe whose client has sent one request head, already read by the server side.
    async fn after_one_request_head() -> (tokio::io::DuplexStream, GuardedIo<tokio::io::DuplexStream>, Arc<ConnState>) {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = ConnState::new();
        let mut io = GuardedIo::new(server, state.clone(), limits(), None);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.expect("request");
        assert!(n > 0);
        (client, io, state)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_gets_408() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        client.write_all(b"GET / HT").await.expect("write");
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.expect("first bytes");
        assert_eq!(n, 8);
        let err = io.read(&mut buf).await.expect_err("must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut answer = Vec::new();
        drop(io);
        client.read_to_end(&mut answer).await.expect("read answer");
        assert!(answer.starts_with(b"HTTP/1.1 408 "));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed_quietly() {
        let (mut client, mut io, state) = after_one_request_head().await;
        let mut buf = [0u8; 64];
        state.request_started();
        state.request_finished();
        let start = Instant::now();
        let err = io.read(&mut buf).await.expect_err("idle timeout");
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert_eq!(err.to_string(), "idle connection timeout");
        drop(io);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert!(answer.is_empty(), "an idle close sends nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clock_starts_when_a_response_finishes_while_the_reader_is_parked() {
        let (_client, mut io, state) = after_one_request_head().await;
        let mut buf = [0u8; 64];
        state.request_started();
        let finisher = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            finisher.request_finished();
        });
        // Parked while busy; the finish wakes it and the idle limit then applies.
        let err = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await.expect("closed before 5s").expect_err("idle");
        assert_eq!(err.to_string(), "idle connection timeout");
    }

    /// Regression: a head deadline set for the first request survived every later request
    /// when the reader never saw the connection busy (reported by the web-static benchmark as
    /// 408s after 10 s of steady keep-alive load).
    #[tokio::test(start_paused = true)]
    async fn each_request_gets_a_fresh_head_deadline() {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = ConnState::new();
        let mut io = GuardedIo::new(server, state.clone(), limits(), None);
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
            let n = io.read(&mut buf).await.expect("request");
            assert!(n > 0);
            state.request_started();
            state.request_finished();
            // Each round is under the head timeout (200ms), all of them together are not.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        client.write_all(b"GET / HT").await.expect("write");
        let n = io.read(&mut buf).await.expect("head bytes");
        assert_eq!(n, 8);
        // The rest of this head has its own 200ms; a stale deadline would fail the read now.
        let waited = tokio::time::timeout(Duration::from_millis(100), io.read(&mut buf)).await;
        assert!(waited.is_err(), "the head deadline must be fresh, got {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_has_no_limit() {
        let (_client, mut io, state) = after_one_request_head().await;
        let mut buf = [0u8; 64];
        state.request_started();
        let waited = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
        assert!(waited.is_err(), "a busy connection must not be cut by the guard");
    }

    #[tokio::test]
    async fn an_http2_preface_over_several_reads_is_told_apart() {
        for (pieces, http2) in [
            (vec![&b"PRI * HT"[..], &b"TP/2.0\r\n\r\nSM\r\n\r\n"[..]], Some(true)),
            (vec![&b"P"[..], &b"UT / HTTP/1.1\r\n"[..]], Some(false)),
            (vec![&b"GET / HTTP/1.1\r\n"[..]], Some(false)),
            (vec![&b"PRI"[..]], None),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
            let mut buf = [0u8; 64];
            for p in &pieces {
                client.write_all(p).await.expect("write");
                let n = io.read(&mut buf).await.expect("read");
                assert_eq!(&buf[..n], *p, "a read takes one piece");
            }
            assert_eq!(io.http2, http2, "{pieces:?}");
            if http2 == Some(true) {
                assert_eq!(io.phase, Phase::Idle, "HTTP/2 has no head phase");
            }
        }
    }

    /// What `sniff` decides from `pieces` sent one write at a time, and the bytes the next
    /// reads give: every byte sniffed, then the rest of the stream.
    async fn sniffed(pieces: &[&[u8]]) -> (Option<bool>, Vec<u8>, Phase) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in pieces {
                client.write_all(&p).await.expect("write");
                // So that the server reads each piece on its own.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let found = io.sniff().await.expect("sniff");
        let phase = io.phase;
        writer.await.expect("writer");
        let mut rest = Vec::new();
        // Small reads, as a caller with little room would make.
        let mut buf = [0u8; 7];
        loop {
            let n = io.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        (found, rest, phase)
    }

    /// Bytes that never make a request (a HEADERS frame trickled, PINGs) do not keep an HTTP/2
    /// connection open past its idle limit.
    #[tokio::test(start_paused = true)]
    async fn http2_bytes_without_requests_do_not_restart_idle_time() {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = ConnState::new();
        let mut io = GuardedIo::new(server, state.clone(), limits(), Some(true));
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..20 {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        let mut buf = [0u8; 16];
        let err = loop {
            match io.read(&mut buf).await {
                Ok(n) => assert!(n > 0, "the trickle ended before the limit"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.to_string(), "idle connection timeout");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(700), "closed after {took:?}");
        drop(io);
        trickle.await.expect("trickle");

        // A request that finishes starts a new idle period.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = GuardedIo::new(server, state.clone(), limits(), Some(true));
        client.write_all(b"frame").await.expect("write");
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(n, 5);
        tokio::time::sleep(Duration::from_millis(400)).await;
        state.request_started();
        state.request_finished();
        let start = Instant::now();
        let err = io.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.to_string(), "idle connection timeout");
        assert!(start.elapsed() >= Duration::from_millis(500), "the idle time ran from the request's end");
    }

    // Paused time: the writer's pauses, not the machine's speed, make the separate reads,
    // and the head timeout never fires while they run.
    #[tokio::test(start_paused = true)]
    async fn sniff_tells_http2_from_http1_and_hands_every_byte_on() {
        let head: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (h2, got, phase) = sniffed(&[head]).await;
        assert_eq!((h2, got.as_slice(), phase), (Some(false), head, Phase::ReadingHead), "an HTTP/1 head in one read");

        // The preface split over reads, then a frame: HTTP/2, with only the idle limit.
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (h2, got, phase) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n", b"frame"]).await;
        assert_eq!((h2, phase), (Some(true), Phase::Idle));
        assert_eq!(got, [preface, b"frame"].concat());

        // A method that starts like the preface is told apart at its first differing byte.
        let (h2, got, _) = sniffed(&[b"P", b"UT /x HTTP/1.1\r\n\r\n"]).await;
        assert_eq!((h2, got.as_slice()), (Some(false), b"PUT /x HTTP/1.1\r\n\r\n".as_slice()));

        // Closed before a byte: nothing to serve. Closed inside the preface: HTTP/1, whose
        // parser then sees the short request and the end.
        assert_eq!(sniffed(&[]).await.0, None);
        let (h2, got, _) = sniffed(&[b"PRI * "]).await;
        assert_eq!((h2, got.as_slice()), (Some(false), b"PRI * ".as_slice()));
    }

    /// A TCP connection gets TCP_NODELAY before its second write, not at its first (nor while
    /// corked); one whose client closed first ends without `shutdown`, and the client still
    /// gets every byte and the end.
    #[tokio::test]
    async fn nodelay_comes_with_the_second_write_and_a_closed_client_gets_everything() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert!(!server.nodelay().expect("nodelay"), "accepted without it");
        let mut io = GuardedIo::new(server, ConnState::new(), limits(), None);
        io.write_all(b"first ").await.expect("write");
        assert!(!io.get_ref().nodelay().expect("nodelay"), "one write needs no TCP_NODELAY");
        io.corked = true;
        io.write_all(b"corked ").await.expect("write");
        assert!(!io.get_ref().nodelay().expect("nodelay"), "a corked write needs none either");
        io.flush().await.expect("flush uncorks");
        io.write_all(b"third").await.expect("write");
        assert!(io.get_ref().nodelay().expect("nodelay"), "set before a later write");

        // The client sends its last bytes and closes its side; the server reads to the end,
        // answers and closes.
        client.write_all(b"bye").await.expect("client write");
        client.shutdown().await.expect("client shutdown");
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.expect("server reads");
        assert_eq!(got, b"bye");
        assert!(io.read_eof);
        let tail = vec![7u8; 200_000];
        io.write_all(&tail).await.expect("answer");
        io.shutdown().await.expect("shutdown after the end");
        drop(io);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("client reads to the end");
        assert_eq!(got.len(), "first corked third".len() + tail.len());
        assert!(got.starts_with(b"first corked third") && got.ends_with(&tail));
    }
}

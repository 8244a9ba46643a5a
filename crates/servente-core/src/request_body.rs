//! A request's body as roles get it: hyper's, with `limits.body_read_timeout`.
//!
//! A client that starts a body (an upload with a Content-Length of a gigabyte, a chunked POST)
//! and then sends nothing more, or vanishes without closing its connection, would otherwise
//! hold the connection, the role's work (a half-written upload, an upstream request) and what
//! it holds open, forever: the connection's guard cannot tell a client that should be sending
//! from one that waits for its answer. Here the wait is timed where it happens: while a role
//! asks for the next piece and none has come for `body_read_timeout`, the body fails with
//! [`io::ErrorKind::TimedOut`], as nginx's `client_body_timeout`. A role that is not asking
//! (busy with what it already has, or waiting on an upstream that reads slowly) is not timed.
//! After that error the body keeps failing; it never reports an early end as a complete body
//! (nor does it let through hyper's clean end of an HTTP/2 body reset short of its length).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::http::{Body, simple_response};

/// Bodies that timed out, for the metrics (process-wide, as [`crate::metrics::Metrics`]).
pub static BODY_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// The request body a role reads; see the module docs.
pub struct RequestBody {
    inner: Incoming,
    /// `limits.body_read_timeout`; zero: no limit.
    timeout: Duration,
    /// When the piece being waited for is due; None while none is awaited.
    deadline: Option<Instant>,
    /// Made the first time a piece is awaited, then kept.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    /// Set when the body fails, for a role that hands the body on (see [`Self::failure_signal`]).
    signal: Option<Arc<FailureSignal>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        RequestBody { inner, timeout, deadline: None, sleep: None, timed_out: false, signal: None }
    }

    /// Set if this body fails on the client's side: for a role that hands the body to code of
    /// its own (a WebDAV engine) that would answer such a failure as its own (502, 504).
    pub fn failure_signal(&mut self) -> Arc<FailureSignal> {
        self.signal.get_or_insert_with(Default::default).clone()
    }

    fn failed(&mut self, how: u8) {
        if let Some(s) = &self.signal {
            s.0.store(how, Ordering::Relaxed);
        }
    }

    fn timed_out(&self) -> io::Error {
        let secs = self.timeout.as_secs_f64();
        io::Error::new(io::ErrorKind::TimedOut, format!("the client sent no body data for {secs} s (limits.body_read_timeout)"))
    }
}

/// How a request body failed, once it has (see [`RequestBody::failure_signal`]).
#[derive(Debug, Default)]
pub struct FailureSignal(AtomicU8);

impl FailureSignal {
    const TIMED_OUT: u8 = 1;
    const BROKE_OFF: u8 = 2;

    /// The answer owed to the client ([`body_failed`]) if the body failed.
    pub fn answer(&self) -> Option<Response<Body>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            how => Some(body_failed(how == Self::TIMED_OUT)),
        }
    }
}

/// Whether a body read failed because the client stopped sending (`body_read_timeout`).
pub fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

/// Whether `e`, a body error as a collecting wrapper (`http_body_util::Limited`) boxes it, is a
/// [`RequestBody`] timeout.
pub fn timed_out_in(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>().is_some_and(is_timeout)
}

/// The answer to a request whose body failed on the client's side: 408 when it stopped coming
/// (`timed_out`), else 400 (it broke off). The connection is closed: the rest of the body will
/// not be read.
pub fn body_failed(timed_out: bool) -> Response<Body> {
    let mut r = if timed_out {
        simple_response(StatusCode::REQUEST_TIMEOUT, "the request body stopped coming (limits.body_read_timeout)\n")
    } else {
        simple_response(StatusCode::BAD_REQUEST, "the request body broke off\n")
    };
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed(FailureSignal::BROKE_OFF);
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
            // hyper ends an HTTP/2 body that the client reset with NO_ERROR as if it were
            // complete; short of its declared length it broke off.
            Poll::Ready(None) if this.inner.size_hint().lower() > 0 => {
                this.failed(FailureSignal::BROKE_OFF);
                let left = this.inner.size_hint().lower();
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body ended {left} bytes short of its length"),
                ))))
            }
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|r| r.map_err(io::Error::other)))
            }
            Poll::Pending if this.timeout.is_zero() => Poll::Pending,
            Poll::Pending => {
                let deadline = *this.deadline.get_or_insert_with(|| Instant::now() + this.timeout);
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if crate::lazy_timer::poll_until(sleep, deadline, cx).is_ready() {
                    this.timed_out = true;
                    BODY_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                    this.failed(FailureSignal::TIMED_OUT);
                    return Poll::Ready(Some(Err(this.timed_out())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.timed_out && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

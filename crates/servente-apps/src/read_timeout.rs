//! A response body with a limit on each wait for its next piece, for bodies read from an
//! upstream server or a FastCGI application (as nginx's `proxy_read_timeout` and
//! `fastcgi_read_timeout`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// A response body that fails when the upstream sends nothing for `limit` (between two pieces,
/// as nginx's `proxy_read_timeout`): a server that stalls in the middle of a body would
/// otherwise hold the client's connection for ever. The timer is armed only while the body
/// waits, and re-armed (not re-allocated) after each piece.
pub struct ReadTimeout<B> {
    inner: B,
    limit: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        ReadTimeout { inner, limit, timer: None, armed: false }
    }
}

impl<B: http_body::Body<Data = Bytes, Error = io::Error> + Unpin> http_body::Body for ReadTimeout<B> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = tokio::time::Instant::now() + this.limit;
                    match this.timer.as_mut() {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the upstream sent nothing for {:?} in the middle of the body", this.limit),
                    )))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Runs HTTP/2 streams on their connection's task first, and as tasks of their own only when
//! they have to wait; and cuts a stream whose client stops taking its response.
//!
//! hyper's HTTP/2 server hands each new stream to an executor, which with tokio means a task
//! per request: a task cell, the runtime's task list (a lock), a queue hand-off and waker
//! traffic. Profiles of many small responses over HTTP/2 put that near a tenth of the
//! server's CPU. Most streams need no task at all: a cached file or a short answer is done in
//! its first poll. [`StreamExec`] queues the streams hyper starts while [`run`] polls the
//! connection; `run` then polls each once, in order, on the connection's task, and spawns on
//! tokio only those still pending (from then on they run as before). Outside `run`,
//! `StreamExec` spawns as tokio's executor does.
//!
//! `send_timeout` for HTTP/2: a stream held back by the client's flow-control window never
//! waits on the socket, so the connection's guard cannot see it. hyper asks a response body
//! for its next piece only once the stream has room in h2's send buffer and in the client's
//! window; the body ([`crate::http`]'s `TrackedBody`) hands out pieces of at most [`PIECE`]
//! bytes and reports to [`pulled`] each time it is asked, and whether it handed a piece over
//! (which then waits in h2 until the client's window lets it go). A stream that has handed a
//! piece over and not been asked again for `send_timeout` (its client took none of the next
//! 64 KiB) is dropped, which resets it (h2 sends RST_STREAM with CANCEL) and frees what it held
//! (an open file); the connection and its other streams go on. A body waiting on its own
//! source (an upstream, a file read) is not timed here. Not covered: the last piece, once
//! handed over, ends the stream in hyper and stays in h2's buffer, bounded by the connection's
//! idle timeout; tunnels over HTTP/2 (extended CONNECT) are not enabled.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

thread_local! {
    /// Set while [`run`] polls a connection on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Streams started during that poll, oldest first (the buffer is reused).
    static QUEUE: RefCell<VecDeque<Stream>> = const { RefCell::new(VecDeque::new()) };
    /// The response body of the watched stream being polled on this thread; None outside one.
    static BODY: Cell<Option<Pull>> = const { Cell::new(None) };
}

/// hyper's executor for server connections; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExec {
    /// `limits.send_timeout`; zero: streams are not watched.
    pub send_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let stream = Stream {
            fut: Box::pin(fut),
            watch: (!self.send_timeout.is_zero()).then(|| Watch { timeout: self.send_timeout, ..Watch::default() }),
        };
        if ACTIVE.get() {
            QUEUE.with_borrow_mut(|q| q.push_back(stream));
        } else {
            tokio::spawn(stream);
        }
    }
}

/// HTTP/2 streams reset by `send_timeout`, for the metrics (process-wide, as
/// [`crate::metrics::Metrics`]).
pub static SEND_TIMEOUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest piece a watched stream's body hands to hyper at once (see the module docs).
pub(crate) const PIECE: usize = 64 << 10;

/// Where a stream's response body stands, as [`pulled`] last reported it.
#[derive(Clone, Copy, Debug, Default)]
struct Pull {
    /// The body handed a piece over and has not been asked for the next one yet.
    waiting: bool,
    /// hyper asked the body for a piece during this poll: the client made room.
    asked: bool,
}

/// Whether a response body made now belongs to a watched HTTP/2 stream.
pub(crate) fn watched() -> bool {
    BODY.get().is_some()
}

/// Called by a watched stream's response body each time hyper asks it for a piece; `handed`:
/// it handed one over (which waits for the client's window until hyper asks again).
pub(crate) fn pulled(handed: bool) {
    if BODY.get().is_some() {
        BODY.set(Some(Pull { waiting: handed, asked: true }));
    }
}

/// A stream's watchdog: the deadline by which hyper must ask its body again.
#[derive(Default)]
struct Watch {
    timeout: Duration,
    pull: Pull,
    deadline: Option<Instant>,
    /// Made the first time the stream waits on its client, then kept.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Watch {
    /// Polls `fut` with its body's reports going to this watch; Ready(true) when `fut` ended,
    /// Ready(false) when the client has taken nothing for the timeout.
    fn poll(&mut self, fut: Pin<&mut (dyn Future<Output = ()> + Send)>, cx: &mut Context<'_>) -> Poll<bool> {
        let restore = Restore(BODY.replace(Some(Pull { asked: false, ..self.pull })));
        let polled = fut.poll(cx);
        let pull = BODY.get().unwrap_or_default();
        drop(restore);
        if polled.is_ready() {
            return Poll::Ready(true);
        }
        self.pull = pull;
        if !pull.waiting {
            self.deadline = None;
            return Poll::Pending;
        }
        let deadline = match self.deadline {
            Some(d) if !pull.asked => d,
            _ => Instant::now() + self.timeout,
        };
        self.deadline = Some(deadline);
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match crate::lazy_timer::poll_until(sleep, deadline, cx) {
            Poll::Ready(()) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Puts back what [`BODY`] held before a watched poll, even if that poll panics.
struct Restore(Option<Pull>);

impl Drop for Restore {
    fn drop(&mut self) {
        BODY.set(self.0);
    }
}

/// A stream hyper started, with its watchdog when `send_timeout` is set. Boxed once, here.
struct Stream {
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
    watch: Option<Watch>,
}

impl Future for Stream {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(watch) = &mut this.watch else {
            return this.fut.as_mut().poll(cx);
        };
        match watch.poll(this.fut.as_mut(), cx) {
            Poll::Ready(false) => {
                SEND_TIMEOUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    "an HTTP/2 stream's client took nothing for {} s (send_timeout); the stream is reset",
                    watch.timeout.as_secs_f64()
                );
                // Ending here drops hyper's stream, which resets it and closes its body.
                Poll::Ready(())
            }
            Poll::Ready(true) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Clears the flag and drops what is queued even if the connection's poll panics, so no
/// stream is left for another connection to run.
struct Active;

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.set(false);
        if std::thread::panicking() {
            let dropped = QUEUE.with_borrow_mut(std::mem::take);
            drop(dropped);
        }
    }
}

/// Polls a connection with `poll`, then the streams it started: each once, here; those not
/// finished go on as tokio tasks.
pub fn run<T>(cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let result = {
        let _active = Active;
        ACTIVE.set(true);
        poll(cx)
    };
    // A stream's first poll may wake this task (it queued frames to send): the connection is
    // polled again and writes them. A stream that panics is dropped alone, as a task of its
    // own would have been; the connection and the other streams go on.
    while let Some(mut stream) = QUEUE.with_borrow_mut(VecDeque::pop_front) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut stream).poll(cx))) {
            Ok(Poll::Pending) => {
                tokio::spawn(stream);
            }
            Ok(Poll::Ready(())) => {}
            Err(_) => tracing::error!("an HTTP/2 stream panicked; it is reset, the connection goes on"),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn ready_streams_run_inline_and_pending_ones_become_tasks() {
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = Some(rx);
        std::future::poll_fn(|cx| {
            run(cx, |_| {
                let d = done.clone();
                StreamExec::default().execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                let (d, rx) = (done.clone(), rx.take());
                StreamExec::default().execute(async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    d.fetch_add(10, Ordering::SeqCst);
                });
                Poll::Ready(())
            })
        })
        .await;
        // The first finished in its inline poll; the second waits as a task of its own.
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(!ACTIVE.get());
        assert!(QUEUE.with_borrow(|q| q.is_empty()));
        tx.send(()).expect("the pending stream is still alive as a task");
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) == 11 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 11);
    }

    #[tokio::test]
    async fn a_panicking_stream_is_dropped_alone() {
        let done = Arc::new(AtomicUsize::new(0));
        std::future::poll_fn(|cx| {
            run(cx, |_| {
                StreamExec::default().execute(async { panic!("a broken stream") });
                let d = done.clone();
                StreamExec::default().execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                Poll::Ready(())
            })
        })
        .await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "the stream after the panicking one ran");
        assert!(QUEUE.with_borrow(|q| q.is_empty()));
    }

    /// A response body's life as hyper would drive it: asked at 0 s, it hands a piece over;
    /// asked again at 1 s, it waits 10 s on its source (longer than the timeout: not a stall);
    /// asked at 11 s, it hands a piece over that hyper never asks past. `step` tells how far it got.
    struct Scripted {
        step: Arc<AtomicUsize>,
        sleep: Pin<Box<Sleep>>,
    }

    impl Future for Scripted {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            loop {
                let step = self.step.load(Ordering::SeqCst);
                let (handed, wait) = match step {
                    0 => (true, 1),
                    1 => (false, 10),
                    2 => (true, 0),
                    // hyper never asks again: only the watch can end this stream.
                    _ => return Poll::Pending,
                };
                if step > 0 && self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                pulled(handed);
                self.step.store(step + 1, Ordering::SeqCst);
                let next = Instant::now() + Duration::from_secs(wait);
                self.sleep.as_mut().reset(next);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_cut_only_while_its_body_waits_to_be_taken() {
        let step = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let body = Scripted { step: step.clone(), sleep: Box::pin(tokio::time::sleep(Duration::ZERO)) };
        let stream = Stream { fut: Box::pin(body), watch: Some(Watch { timeout: Duration::from_secs(2), ..Watch::default() }) };
        tokio::spawn(stream).await.expect("the stream ended");
        // Made at 0 s, asked at 1 s, waited on its source to 11 s, then cut 2 s later.
        assert_eq!(step.load(Ordering::SeqCst), 3, "the stream was cut before its body's last step");
        assert_eq!(Instant::now() - start, Duration::from_secs(13));
        assert!(BODY.get().is_none(), "the report slot is cleared after each poll");
    }

    #[tokio::test]
    async fn outside_run_streams_are_spawned() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        StreamExec::default().execute(async move {
            let _ = tx.send(7);
        });
        assert_eq!(rx.await.expect("the spawned stream ran"), 7);
    }
}

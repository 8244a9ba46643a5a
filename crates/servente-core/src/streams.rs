//! Runs HTTP/2 streams on their connection's task first, and as tasks of their own only when
//! they have to wait.
//!
//! hyper's HTTP/2 server hands each new stream to an executor, which with tokio means a task
//! per request: a task cell, the runtime's task list (a lock), a queue hand-off and waker
//! traffic. Profiles of many small responses over HTTP/2 put that near a tenth of the
//! server's CPU. Most streams need no task at all: a cached file or a short answer is done in
//! its first poll. [`StreamExec`] queues the streams hyper starts while [`run`] polls the
//! connection; `run` then polls each once, in order, on the connection's task, and spawns on
//! tokio only those still pending (from then on they run as before). Outside `run`,
//! `StreamExec` spawns as tokio's executor does.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Set while [`run`] polls a connection on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Streams started during that poll, oldest first (the buffer is reused).
    static QUEUE: RefCell<VecDeque<Stream>> = const { RefCell::new(VecDeque::new()) };
}

/// hyper's executor for server connections; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if ACTIVE.get() {
            QUEUE.with_borrow_mut(|q| q.push_back(Box::pin(fut)));
        } else {
            tokio::spawn(fut);
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
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.as_mut().poll(cx))) {
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
                StreamExec.execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                let (d, rx) = (done.clone(), rx.take());
                StreamExec.execute(async move {
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
                StreamExec.execute(async { panic!("a broken stream") });
                let d = done.clone();
                StreamExec.execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                Poll::Ready(())
            })
        })
        .await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "the stream after the panicking one ran");
        assert!(QUEUE.with_borrow(|q| q.is_empty()));
    }

    #[tokio::test]
    async fn outside_run_streams_are_spawned() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        StreamExec.execute(async move {
            let _ = tx.send(7);
        });
        assert_eq!(rx.await.expect("the spawned stream ran"), 7);
    }
}

//! A timer that moves later for free: for deadlines that are pushed back at every request
//! (a kept-alive connection's idle time, an upstream connection's response timeout).
//!
//! tokio re-arms a timer through its timer wheel, under the driver's lock, at every reset; a
//! `timeout_at` per request registers one and removes it again. Here a deadline later than the
//! armed one leaves the timer where it is: it then fires early, once, and is set to the real
//! deadline at that moment. A deadline that moves earlier re-arms it at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Ready once `deadline` has passed; `sleep` is the timer kept between calls.
pub fn poll_until(sleep: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    if deadline < sleep.deadline() {
        sleep.as_mut().reset(deadline);
    }
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        sleep.as_mut().reset(deadline);
    }
}

/// A timer kept across uses (for example with a pooled connection), armed at its first use.
#[derive(Default)]
pub struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl LazyTimer {
    /// `fut`'s output, or None when `deadline` passes first.
    pub async fn bound<F: Future>(&mut self, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let sleep = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            poll_until(sleep, deadline, cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_and_an_earlier_one_cuts() {
        let secs = Duration::from_secs;
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        // The future waits, so the timer is made, armed at 10 s; the future wins.
        assert_eq!(timer.bound(start + secs(10), tokio::time::sleep(secs(1))).await, Some(()));
        // A later deadline leaves it armed at 10 s: it fires early, once, and waits on to 30 s.
        assert_eq!(timer.bound(start + secs(30), std::future::pending::<()>()).await, None);
        assert_eq!(Instant::now(), start + secs(30));
        // Armed far out (at 130 s) ...
        let now = Instant::now();
        assert_eq!(timer.bound(now + secs(100), tokio::time::sleep(secs(1))).await, Some(()));
        // ... then an earlier deadline re-arms it at once: the cut comes at 5 s, not at 130 s.
        let now = Instant::now();
        assert_eq!(timer.bound(now + secs(5), std::future::pending::<()>()).await, None);
        assert_eq!(Instant::now(), now + secs(5));
    }
}

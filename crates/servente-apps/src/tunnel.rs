//! The tunnel an upgraded connection (WebSocket) becomes: bytes copied both ways between the
//! client and the upstream server until both directions are closed (a side that closed only
//! its sending half still receives), or until none moved either way for the upstream's
//! `response_timeout`, as nginx's `proxy_read_timeout` closes a quiet WebSocket (zero: no
//! limit). Without that limit two silent peers, or a peer gone without a FIN, would hold the
//! connection, its upstream connection and a slot of `limits.max_connections` for ever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies between `client` and `upstream` until both directions are closed, a copy fails, or
/// nothing was read from either for `idle` (zero: no limit). Returns why it ended, for the
/// debug log.
pub async fn run<C, U>(client: C, upstream: U, idle: Duration) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds from `start` to the last read that brought bytes, on either side.
    let last = AtomicU64::new(0);
    let mut client = Watched { io: client, start, last: &last };
    let mut upstream = Watched { io: upstream, start, last: &last };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    if idle.is_zero() {
        return copy.await.map(|_| ());
    }
    let mut deadline = later(start, idle);
    loop {
        tokio::select! {
            r = &mut copy => return r.map(|_| ()),
            _ = tokio::time::sleep_until(deadline) => {
                // The timer is set once per `idle`, not per read: on waking, it moves to the
                // last read's time plus `idle` unless that has passed.
                let seen = later(start, Duration::from_millis(last.load(Relaxed)));
                if later(seen, idle) <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no bytes either way for {idle:?}")));
                }
                deadline = later(seen, idle);
            }
        }
    }
}

/// `t` plus `d`, or a year after `t` when that is past what an `Instant` holds (a limit of
/// "1000000000h" in the config must not panic the tunnel's task).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(|| t + Duration::from_secs(365 * 24 * 3600))
}

/// One side of the tunnel, noting when a read brought bytes.
struct Watched<'a, T> {
    io: T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(self.start.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_ends_after_the_limit_and_a_busy_one_does_not() {
        let (mut client, client_end) = duplex(1024);
        let (upstream_end, mut upstream) = duplex(1024);
        let tunnel = tokio::spawn(run(client_end, upstream_end, Duration::from_secs(10)));
        // Traffic every 6 s, each way in turn, for 30 s: three times the limit, never idle for it.
        let mut buf = [0u8; 5];
        for i in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                client.write_all(b"hello").await.expect("client writes");
                upstream.read_exact(&mut buf).await.expect("upstream reads");
            } else {
                upstream.write_all(b"world").await.expect("upstream writes");
                client.read_exact(&mut buf).await.expect("client reads");
            }
        }
        assert!(!tunnel.is_finished(), "a tunnel in use stays open");
        let quiet = Instant::now();
        let ended = tunnel.await.expect("tunnel task");
        let waited = quiet.elapsed();
        assert_eq!(ended.expect_err("ended by the limit").kind(), io::ErrorKind::TimedOut);
        assert!(waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11), "closed after {waited:?} of quiet");
        // Both sides see the end.
        assert_eq!(client.read(&mut buf).await.expect("client end"), 0);
        assert_eq!(upstream.read(&mut buf).await.expect("upstream end"), 0);
    }

    #[test]
    fn a_limit_past_what_an_instant_holds_does_not_panic() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }
}

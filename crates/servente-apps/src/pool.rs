//! Connections to upstream servers: connecting (TCP or Unix socket, with a timeout), the
//! HTTP/1.1 or HTTP/2 handshake, and a keep-alive pool per worker thread.
//!
//! The pool is thread-local on purpose: with per-core runtimes a connection's IO is driven by
//! the thread that made it, so handing it to another thread would add a cross-thread wake-up
//! to every request. An HTTP/1.1 connection goes back to the pool when its response body has
//! been read to the end (only then can it carry the next request); an HTTP/2 connection is
//! shared by every request of the thread until it closes. HTTP/1.1 connections are either
//! hyper's (requests with bodies, upgrades) or bare ones for the lean client (`h1`); an idle
//! bare one can be handed to hyper when a request needs it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use servente_config::UpstreamProtocol;

use crate::h1;

/// The body servente sends upstream: the client's body, streamed (and capped), or nothing.
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an upstream server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    /// A host name, resolved at each new connection.
    Name(String),
    Unix(std::path::PathBuf),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        servente_config::apps::check_server_address(text)?;
        if let Some(p) = text.strip_prefix("unix:") {
            return Ok(Address::Unix(p.into()));
        }
        Ok(match text.parse::<SocketAddr>() {
            Ok(a) => Address::Tcp(a),
            Err(_) => Address::Name(text.to_string()),
        })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Name(n) => f.write_str(n),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connection able to send requests.
pub enum Sender {
    /// Driven by hyper's client, on a task of its own.
    Hyper(Client),
    /// An HTTP/1.1 connection driven by the request's own task (`h1`), not by hyper.
    Raw(h1::Conn),
}

/// The sending half of a connection that hyper's client drives.
pub enum Client {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Hyper(Client::H1(s)) => s.is_closed(),
            Sender::Hyper(Client::H2(s)) => s.is_closed(),
            Sender::Raw(_) => false,
        }
    }
}

/// Opens a connection and runs its HTTP handshake; the connection's task is spawned on the
/// current runtime and ends when the connection closes.
pub async fn connect(address: &Address, protocol: UpstreamProtocol, timeout: Duration) -> io::Result<Client> {
    let fut = async { handshake(open_stream(address).await?, protocol).await };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(address)),
    }
}

/// Opens a connection for the lean HTTP/1.1 client (`h1`): no task, no handshake.
pub async fn open(address: &Address, timeout: Duration) -> io::Result<h1::Conn> {
    match tokio::time::timeout(timeout, open_stream(address)).await {
        Ok(r) => r.map(h1::Conn::new),
        Err(_) => Err(timed_out(address)),
    }
}

fn timed_out(address: &Address) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} timed out"))
}

async fn open_stream(address: &Address) -> io::Result<h1::Stream> {
    Ok(match address {
        Address::Tcp(a) => h1::Stream::Tcp(tcp(tokio::net::TcpStream::connect(a).await?)?),
        Address::Name(n) => h1::Stream::Tcp(tcp(tokio::net::TcpStream::connect(n.as_str()).await?)?),
        Address::Unix(p) => h1::Stream::Unix(tokio::net::UnixStream::connect(p).await?),
    })
}

fn tcp(s: tokio::net::TcpStream) -> io::Result<tokio::net::TcpStream> {
    s.set_nodelay(true)?;
    Ok(s)
}

/// Runs hyper's client handshake on an open connection and spawns its task.
pub async fn handshake(io: h1::Stream, protocol: UpstreamProtocol) -> io::Result<Client> {
    let io = TokioIo::new(io);
    match protocol {
        UpstreamProtocol::Http2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(io::Error::other)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            Ok(Client::H2(sender))
        }
        _ => {
            let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(io::Error::other)?;
            tokio::spawn(async move {
                // with_upgrades: a 101 from the upstream hands the connection to the tunnel.
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
            Ok(Client::H1(sender))
        }
    }
}

/// Identifies one server in the thread-local pool (`upstream::Server::id`, unique per process).
pub type PoolKey = u64;

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<PoolKey, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// A pooled connection for `key`, if one is idle, open and younger than `max_idle_time` at
/// `now` (a clock reading the caller already has).
pub fn take(key: PoolKey, max_idle_time: Duration, now: Instant) -> Option<Sender> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(&key)?;
        while let Some(mut idle) = list.pop() {
            if idle.sender.is_closed() || now.saturating_duration_since(idle.since) > max_idle_time {
                continue;
            }
            if let Sender::Raw(conn) = &mut idle.sender
                && !conn.is_usable()
            {
                continue;
            }
            // HTTP/2 senders are shared: leave a copy for the next request.
            if let Sender::Hyper(Client::H2(s)) = &idle.sender {
                let copy = Sender::Hyper(Client::H2(s.clone()));
                list.push(idle);
                return Some(copy);
            }
            return Some(idle.sender);
        }
        None
    })
}

/// Puts a connection back for reuse (HTTP/1.1: after its response body was read to the end).
pub fn put(key: PoolKey, sender: Sender, max_idle: usize) {
    put_at(key, sender, max_idle, Instant::now());
}

/// [`put`], idle since `now` (a clock reading the caller already has).
pub fn put_at(key: PoolKey, sender: Sender, max_idle: usize, now: Instant) {
    if sender.is_closed() || max_idle == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry(key).or_default();
        if list.len() < max_idle {
            list.push(Idle { sender, since: now });
        }
    });
}

/// Drops this thread's idle connections of `key` (a server removed from its upstream).
pub fn forget(key: PoolKey) {
    POOL.with(|p| p.borrow_mut().remove(&key));
}

//! The server: running listeners, accepting connections within limits, TLS, serving them with
//! the HTTP engine, and changing all of that on reload or stopping it on shutdown.
//!
//! [`Server::apply`] takes the listeners of a config generation: it binds the new addresses
//! first (so a failed bind changes nothing), then swaps in the new router and settings, updates
//! listeners that stay (their TLS certificates, role) and stops those that went away.
//! Connections already established keep running on the router they started with for the
//! request in flight, and on the new one for their next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use servente_config::{Config, ListenAddress, ListenerRole};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLogger;
use crate::guard::{ConnState, GuardLimits, GuardedIo};
use crate::http::{ConnInfo, Engine, Router, serve_request};
use crate::listen::{Accepted, BoundListener, bind_on, set_unix_mode};
use crate::metrics::Metrics;
use crate::streams::StreamExec;

/// One listener as the core runs it, built from a config `[[listener]]`.
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub index: usize,
    pub address: ListenAddress,
    pub unix_mode: Option<u32>,
    pub role: ListenerRole,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Connection-level settings of a config generation.
pub struct Settings {
    guard: GuardLimits,
    tls_handshake_timeout: Duration,
    max_connections: usize,
    max_body_bytes: u64,
    body_read_timeout: Duration,
    /// One engine per protocol, chosen by TLS ALPN or, on cleartext, by [`GuardedIo::sniff`];
    /// built once so a connection borrows one instead of cloning it.
    http1: http1::Builder,
    http2: http2::Builder<StreamExec>,
}

/// The largest read hyper makes on an HTTP/1 connection (its read buffer's limit), so the
/// largest piece of a request body. It also bounds how much of a response body hyper queues
/// before it writes. The read buffer never shrinks and the read size only after two short
/// reads: a connection left idle after a large upload keeps up to this much (at 20,000 such
/// connections, 2.5 GiB; 320 MiB with 16 KiB).
const READ_MAX: usize = 128 << 10;

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let l = &config.limits;
        let max_header = l.max_header_bytes.0.max(8192) as usize;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            // hyper answers 431 to a head over this.
            .max_header_size(max_header)
            // Reads of a request body take up to this much: limited to the 16 KiB of a head,
            // a 100 MiB PUT took 85 ms instead of 65 (6,400 reads instead of 800).
            .max_buf_size(READ_MAX.max(max_header));
        // Leave hyper's write strategy alone (no `writev(false)`, no `pipeline_flush`): it
        // must hand body bytes to the stream as they are, never copy them into its own
        // buffer, or unread file bytes (see `sendfile::unread`) would go out as zeros.
        // `ConnInfo::sendfile` also requires a stream with vectored writes for that reason.
        if l.max_headers != 100 {
            // hyper keeps up to 100 headers on the stack; only a different limit costs a heap buffer.
            h1.max_headers(l.max_headers);
        }
        let mut h2 = http2::Builder::new(StreamExec { send_timeout: l.send_timeout.0 });
        h2.timer(TokioTimer::new())
            .max_header_list_size(max_header as u32)
            .max_concurrent_streams(256)
            // hyper's default lets one stream take the whole connection window (1 MiB each): a
            // stream whose role is not reading its body (a slow upstream) would then stop the
            // client's uploads on every other stream, which `body_read_timeout` would cut. Four
            // such streams are needed now; the unread bytes a connection can hold stay bounded.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(None);
        Settings {
            guard: GuardLimits {
                header_read_timeout: l.header_read_timeout.0,
                idle_timeout: l.idle_timeout.0,
                send_timeout: l.send_timeout.0,
            },
            tls_handshake_timeout: l.tls_handshake_timeout.0,
            max_connections: config.server.max_connections,
            max_body_bytes: l.max_body_bytes.0,
            body_read_timeout: l.body_read_timeout.0,
            http1: h1,
            http2: h2,
        }
    }
}

struct Shared<R> {
    router: ArcSwap<R>,
    settings: ArcSwap<Settings>,
    engine: Arc<Engine>,
    open: AtomicUsize,
    shutdown: CancellationToken,
    /// Set just before `shutdown` is cancelled: a connection checks this flag, not the token,
    /// whose check takes a lock that every connection of the process shares.
    stopping: AtomicBool,
    tracker: TaskTracker,
}

/// What makes a listener "the same" across reloads: its address, and for port 0 (where two
/// listeners may share the configured address but get different ports) also its name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ListenerKey(ListenAddress, Option<Arc<str>>);

impl ListenerKey {
    fn of(spec: &ListenerSpec) -> Self {
        let port_zero = matches!(spec.address, ListenAddress::Tcp(a) if a.port() == 0);
        ListenerKey(spec.address.clone(), port_zero.then(|| spec.name.clone()))
    }
}

struct Running {
    spec: Arc<ArcSwap<ListenerSpec>>,
    stop: CancellationToken,
    local: String,
}

/// A running server; see the module docs.
pub struct Server<R: Router> {
    shared: Arc<Shared<R>>,
    running: Mutex<HashMap<ListenerKey, Running>>,
    /// The runtimes that serve connections: one multi-threaded runtime, or one single-threaded
    /// runtime per core, each with its own socket per TCP listener (SO_REUSEPORT).
    workers: Vec<tokio::runtime::Handle>,
}

/// What [`Server::apply`] reports for each listener.
pub struct Bound {
    pub name: Arc<str>,
    pub role: ListenerRole,
    pub tls: bool,
    /// The address really bound (the real port when the config said 0).
    pub local: String,
}

impl<R: Router> Server<R> {
    /// Binds the listeners and starts serving them with `router`.
    /// `workers` are the runtimes connections run on; with more than one, each TCP listener
    /// gets one socket per worker and the kernel spreads connections over them.
    pub fn start(
        workers: Vec<tokio::runtime::Handle>,
        listeners: Vec<ListenerSpec>,
        router: R,
        settings: Settings,
        metrics: Arc<Metrics>,
        access_log: AccessLogger,
    ) -> std::io::Result<(Self, Vec<Bound>)> {
        let server = Self::new(workers, router, settings, metrics, access_log);
        let bound = server.apply_listeners(listeners, || {})?;
        Ok((server, bound))
    }

    fn new(workers: Vec<tokio::runtime::Handle>, router: R, settings: Settings, metrics: Arc<Metrics>, access_log: AccessLogger) -> Self {
        let engine = Arc::new(Engine {
            unknown_site: metrics.site("-"),
            metrics,
            access_log: ArcSwap::from_pointee(access_log),
            max_body_bytes: settings.max_body_bytes.into(),
            body_read_timeout_ms: (settings.body_read_timeout.as_millis() as u64).into(),
        });
        Server {
            shared: Arc::new(Shared {
                router: ArcSwap::from_pointee(router),
                settings: ArcSwap::from_pointee(settings),
                engine,
                open: AtomicUsize::new(0),
                shutdown: CancellationToken::new(),
                stopping: AtomicBool::new(false),
                tracker: TaskTracker::new(),
            }),
            running: Mutex::new(HashMap::new()),
            workers,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.engine.metrics
    }

    /// Makes `listeners`, `router` and `settings` the running generation; see the module docs.
    pub fn apply(
        &self,
        listeners: Vec<ListenerSpec>,
        router: R,
        settings: Settings,
        access_log: Option<AccessLogger>,
    ) -> std::io::Result<Vec<Bound>> {
        self.apply_listeners(listeners, || {
            self.shared.router.store(Arc::new(router));
            self.shared.engine.max_body_bytes.store(settings.max_body_bytes, Relaxed);
            self.shared.engine.body_read_timeout_ms.store(settings.body_read_timeout.as_millis() as u64, Relaxed);
            self.shared.settings.store(Arc::new(settings));
            if let Some(log) = access_log {
                self.shared.engine.access_log.store(Arc::new(log));
            }
        })
    }

    /// Binds what is new (failing before any change), runs `activate`, then updates the
    /// listeners that stay and stops those that went away.
    fn apply_listeners(&self, listeners: Vec<ListenerSpec>, activate: impl FnOnce()) -> std::io::Result<Vec<Bound>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = HashMap::new();
        for spec in &listeners {
            let key = ListenerKey::of(spec);
            if !running.contains_key(&key) {
                fresh.insert(key, bind(&spec.address, spec.unix_mode, &self.workers)?);
            }
        }
        activate();
        let wanted: Vec<ListenerKey> = listeners.iter().map(ListenerKey::of).collect();
        running.retain(|key, r| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(listener = %r.spec.load().name, address = %r.local, "listener closed");
                r.stop.cancel();
            }
            keep
        });
        let mut bound = Vec::new();
        for spec in listeners {
            let key = ListenerKey::of(&spec);
            let (name, role, tls) = (spec.name.clone(), spec.role, spec.tls.is_some());
            let local = if let Some(r) = running.get(&key) {
                if let ListenAddress::Unix(path) = &spec.address
                    && let Err(e) = set_unix_mode(path, spec.unix_mode.unwrap_or(0o666))
                {
                    tracing::warn!(listener = %spec.name, error = %e, "the new unix_mode was not applied");
                }
                r.spec.store(Arc::new(spec));
                r.local.clone()
            } else if let Some(sockets) = fresh.remove(&key) {
                let local = sockets.first().map(|(_, l)| l.local_address()).unwrap_or_default();
                let spec = Arc::new(ArcSwap::from_pointee(spec));
                let stop = CancellationToken::new();
                for (worker, listener) in sockets {
                    let task = accept_loop(listener, spec.clone(), self.shared.clone(), stop.clone());
                    worker.spawn(self.shared.tracker.track_future(task));
                }
                running.insert(key, Running { spec, stop, local: local.clone() });
                local
            } else {
                continue;
            };
            bound.push(Bound { name, role, tls, local });
        }
        Ok(bound)
    }

    /// Stops accepting, asks every connection to finish its request in flight, and waits up
    /// to `grace`. Returns whether everything finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.stopping.store(true, SeqCst);
        self.shared.shutdown.cancel();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.shared.tracker.close();
        tokio::time::timeout(grace, self.shared.tracker.wait()).await.is_ok()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Relaxed)
    }
}

async fn accept_loop<R: Router>(
    listener: BoundListener,
    spec: Arc<ArcSwap<ListenerSpec>>,
    shared: Arc<Shared<R>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let spec = spec.load_full();
                let max = shared.settings.load().max_connections;
                let metrics = &shared.engine.metrics;
                if shared.open.fetch_add(1, Relaxed) >= max {
                    shared.open.fetch_sub(1, Relaxed);
                    metrics.connections_refused.fetch_add(1, Relaxed);
                    tokio::spawn(refuse(stream, spec.tls.is_none()));
                    continue;
                }
                metrics.connections_total.fetch_add(1, Relaxed);
                metrics.connections_open.fetch_add(1, Relaxed);
                shared.tracker.spawn(connection_task(stream, peer, spec, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors or a similar passing condition: wait a little rather
                // than spin; the connections that hold descriptors will close.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What each accepted connection's task runs. Its future is allocated and moved when the task
/// is spawned, so it is kept small (see `serve_stream`; a test holds it under 4 KB).
async fn connection_task<R: Router>(stream: Accepted, peer: Option<SocketAddr>, spec: Arc<ListenerSpec>, shared: Arc<Shared<R>>) {
    let _open = OpenGuard(shared.clone());
    match stream {
        Accepted::Tcp(s) => serve_stream(s, peer, spec, shared).await,
        Accepted::Unix(s) => serve_stream(s, peer, spec, shared).await,
    }
}

struct OpenGuard<R>(Arc<Shared<R>>);

impl<R> Drop for OpenGuard<R> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.engine.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Binds `address` on each worker: a TCP address gets one socket per worker (the first decides
/// the port when the config says 0); a Unix socket is served by the first worker alone.
fn bind(
    address: &ListenAddress,
    unix_mode: Option<u32>,
    workers: &[tokio::runtime::Handle],
) -> std::io::Result<Vec<(tokio::runtime::Handle, BoundListener)>> {
    let mut sockets = Vec::new();
    let mut address = address.clone();
    let share = workers.len() > 1;
    for worker in workers {
        let _inside = worker.enter();
        let listener = bind_on(&address, unix_mode, share)?;
        if let (ListenAddress::Tcp(a), BoundListener::Tcp(l)) = (&mut address, &listener)
            && a.port() == 0
        {
            a.set_port(l.local_addr()?.port());
        }
        let unix = matches!(listener, BoundListener::Unix(..));
        sockets.push((worker.clone(), listener));
        if unix {
            break;
        }
    }
    Ok(sockets)
}

/// Answers a connection over the limit: 503 on plain HTTP, a close on TLS (where a plain-text
/// answer would be noise to the client).
async fn refuse(stream: Accepted, plain: bool) {
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 20\r\n\r\ntoo many connections";
    if plain {
        let write = async {
            match stream {
                Accepted::Tcp(mut s) => s.write_all(BUSY).await.and(s.shutdown().await),
                Accepted::Unix(mut s) => s.write_all(BUSY).await.and(s.shutdown().await),
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }
}

/// A connection, from its first byte to its end.
///
/// Its future is part of each connection's task, which is allocated and moved when it is
/// spawned, so the paths that need much state (a TLS handshake, an HTTP/2 connection) are
/// boxed: inline, they made every connection's task 12.5 KB in a release build, plain
/// HTTP/1.1 ones included (measured with `size_of_val`). The box for those is made in a
/// statement of its own, before the await, as in `WebRole::handle`.
async fn serve_stream<R, IO>(io: IO, peer: Option<SocketAddr>, spec: Arc<ListenerSpec>, shared: Arc<Shared<R>>)
where
    R: Router,
    IO: AsyncRead + AsyncWrite + crate::sendfile::SendFile + Unpin + Send + 'static,
{
    match spec.tls.clone() {
        None => serve_http(io, None, None, peer, spec, shared).await,
        Some(tls) => {
            // The handshake's flights are several writes each way.
            io.set_nodelay();
            let boxed = Box::pin(serve_tls(io, tls, peer, spec, shared));
            boxed.await
        }
    }
}

async fn serve_tls<R, IO>(io: IO, tls: Arc<rustls::ServerConfig>, peer: Option<SocketAddr>, spec: Arc<ListenerSpec>, shared: Arc<Shared<R>>)
where
    R: Router,
    IO: AsyncRead + AsyncWrite + crate::sendfile::SendFile + Unpin + Send + 'static,
{
    let timeout = shared.settings.load().tls_handshake_timeout;
    let metrics = &shared.engine.metrics;
    let accepted = tokio::select! {
        r = tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(tls).accept(io)) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            metrics.tls_handshakes.fetch_add(1, Relaxed);
            let (_, session) = stream.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2");
            let sni: Option<Arc<str>> = session.server_name().map(Arc::from);
            serve_http(stream, Some(h2), sni, peer, spec, shared).await;
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(listener = %spec.name, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(listener = %spec.name, "TLS handshake timed out");
        }
    }
}

async fn serve_http<R, IO>(
    io: IO,
    h2: Option<bool>,
    sni: Option<Arc<str>>,
    peer: Option<SocketAddr>,
    spec: Arc<ListenerSpec>,
    shared: Arc<Shared<R>>,
) where
    R: Router,
    IO: AsyncRead + AsyncWrite + crate::sendfile::SendFile + Unpin + Send + 'static,
{
    let settings = shared.settings.load_full();
    let state = ConnState::new();
    let metrics = shared.engine.metrics.clone();
    // hyper copies body bytes (flattens) for a stream without vectored writes: unread bytes
    // must not meet that.
    let sendfile = io.can_sendfile() && io.is_write_vectored();
    let mut guarded = GuardedIo::new(io, state.clone(), settings.guard, h2).on_header_timeout(move || {
        metrics.header_timeouts.fetch_add(1, Relaxed);
    });
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    // TLS says which protocol through ALPN; cleartext by its first bytes.
    let h2 = match h2 {
        Some(h2) => h2,
        None => {
            let sniffed = tokio::select! {
                r = guarded.sniff() => r,
                _ = shutdown.as_mut() => return,
            };
            match sniffed {
                Ok(Some(h2)) => h2,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(listener = %spec.name, error = %e, "connection ended before its first request");
                    return;
                }
            }
        }
    };
    let info = Arc::new(ConnInfo {
        engine: shared.engine.clone(),
        listener: Arc::from(&*spec.name),
        listener_index: spec.index,
        peer,
        tls: spec.tls.is_some(),
        sendfile,
        sni,
        state,
        peer_text: std::sync::OnceLock::new(),
    });
    let shared2 = shared.clone();
    let service = service_fn(move |req| {
        // Counted at dispatch, before the handler first runs (see `ConnState::start`).
        let flight = info.state.start();
        serve_request(shared2.router.load_full(), info.clone(), req, flight)
    });
    let io = TokioIo::new(guarded);
    // Each connection is built inside the statement that makes its future, a statement that
    // ends before the await. Built in a `let conn` before it, or as a temporary of the awaiting
    // statement, the moved-from connection kept its storage in this future beside the running
    // one: 10.8 KB for a plain connection's task in a debug build, 2.5 KB now.
    let result = if h2 {
        // Boxed: HTTP/2's state is twice HTTP/1's (see `serve_stream`).
        let boxed = Box::pin(drive(settings.http2.serve_connection(io, service), |c| c.graceful_shutdown(), shutdown, &shared.stopping));
        boxed.await
    } else {
        // With upgrades: a role may answer 101 and take the connection over (WebSocket proxying).
        let run =
            drive(settings.http1.serve_connection(io, service).with_upgrades(), |c| c.graceful_shutdown(), shutdown, &shared.stopping);
        run.await
    };
    if let Err(e) = result {
        tracing::debug!(listener = %spec.name, error = %e, "connection ended with an error");
    }
}

/// Runs a connection until it ends; once `shutdown` fires, asks it (`graceful`) to finish the
/// requests it has and take no more.
async fn drive<C: Future<Output = hyper::Result<()>>>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    mut shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
    stopping: &AtomicBool,
) -> hyper::Result<()> {
    tokio::pin!(conn);
    let mut draining = false;
    // The shutdown future is polled once, which leaves this task's waker with the token, and
    // after that only once the flag says the token is cancelled: polling it at every wake of a
    // busy connection (a lock that all connections share, and a waker check) showed in profiles.
    let mut watching = false;
    std::future::poll_fn(|cx| {
        if !draining && (!watching || stopping.load(Relaxed)) {
            watching = true;
            if shutdown.as_mut().poll(cx).is_ready() {
                draining = true;
                graceful(conn.as_mut());
            }
        }
        // HTTP/2 streams that finish at once run on this task (see `streams`).
        crate::streams::run(cx, |cx| conn.as_mut().poll(cx))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, RequestBody, RequestCx, simple_response};
    use http::{Request, Response, StatusCode};

    struct Plain;

    impl Router for Plain {
        async fn handle<'a>(&'a self, _req: Request<RequestBody>, _cx: &'a mut RequestCx) -> Response<Body> {
            simple_response(StatusCode::OK, "ok\n")
        }
    }

    /// Every connection's task is allocated and moved at the size of `connection_task`'s future
    /// (see `serve_stream`). With the TLS and HTTP/2 paths inline it was 10.8 KB in this (debug)
    /// build, 12.5 KB in a release build; 2.5 KB now. Sizes are fixed at compile time,
    /// so this cannot flake; the socket and server are only there to name the types.
    #[tokio::test]
    async fn a_plain_connection_task_stays_small() {
        let config =
            servente_config::load_str("<embedded>", servente_config::EMBEDDED_DEFAULT, std::path::Path::new("."), &Default::default())
                .expect("the embedded default loads");
        let server = Server::new(
            vec![tokio::runtime::Handle::current()],
            Plain,
            Settings::from_config(&config),
            Metrics::new(),
            AccessLogger::off(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let spec = Arc::new(ListenerSpec {
            name: "t".into(),
            index: 0,
            address: ListenAddress::Tcp(address),
            unix_mode: None,
            role: ListenerRole::Web,
            tls: None,
        });
        let task = connection_task(Accepted::Tcp(stream), None, spec, server.shared.clone());
        let size = std::mem::size_of_val(&task);
        println!("a connection's task: {size} bytes");
        assert!(size < 4096, "a plain connection's task takes {size} bytes");
    }
}

//! Binding listening sockets: TCP over IPv4 and IPv6, and Unix domain sockets with a file mode.
//!
//! Only this module binds sockets in servente; roles receive connections from the core.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use servente_config::ListenAddress;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound listening socket.
pub enum BoundListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl BoundListener {
    /// What the listener actually listens on (the real port when the config said 0).
    pub fn local_address(&self) -> String {
        match self {
            BoundListener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into()),
            BoundListener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// The next connection. `TCP_NODELAY` is left to whoever serves it (`GuardedIo` sets it
    /// before a second write, a TLS connection before its handshake).
    pub async fn accept(&self) -> io::Result<(Accepted, Option<SocketAddr>)> {
        match self {
            BoundListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Accepted::Tcp(s), Some(peer)))
            }
            BoundListener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Accepted::Unix(s), None))
            }
        }
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if let BoundListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An accepted client stream.
pub enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Binds `address`. A Unix socket's folder is created if missing; a stale socket file left by
/// a dead process is replaced, but one that a live process still answers on is an error.
pub fn bind(address: &ListenAddress, unix_mode: Option<u32>) -> io::Result<BoundListener> {
    bind_on(address, unix_mode, false)
}

/// Like [`bind`]; `shared_port` sets SO_REUSEPORT so that one socket per worker can listen on
/// the same TCP port. Must run inside the runtime that will poll the listener.
pub fn bind_on(address: &ListenAddress, unix_mode: Option<u32>, shared_port: bool) -> io::Result<BoundListener> {
    match address {
        ListenAddress::Tcp(addr) => bind_tcp(*addr, shared_port).map(BoundListener::Tcp),
        ListenAddress::Unix(path) => bind_unix(path, unix_mode.unwrap_or(0o666)),
    }
}

fn bind_tcp(addr: SocketAddr, shared_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]:port` (and `:port`) takes IPv4 too, whatever the system default.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

fn bind_unix(path: &Path, mode: u32) -> io::Result<BoundListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{} is in use by another running process", path.display())));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display())))?;
    set_unix_mode(path, mode)?;
    Ok(BoundListener::Unix(listener, path.to_path_buf()))
}

/// Sets the file mode of a Unix socket (at bind, and again when a reload changes it).
pub fn set_unix_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set the mode of {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_mode_and_stale_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/s.sock");
        let addr = ListenAddress::Unix(path.clone());
        let l = bind(&addr, Some(0o600)).expect("bind");
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&addr, None).err().expect("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // A socket file whose listener is gone (std's does not unlink) is replaced.
        let std_listener = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).expect("bind std");
        drop(std_listener);
        bind(&ListenAddress::Unix(dir.path().join("stale.sock")), None).expect("stale socket replaced");
        drop(l);
        assert!(!path.exists(), "socket file removed when the listener closes");
    }

    #[tokio::test]
    async fn tcp_port_zero_reports_real_port() {
        let l = bind(&ListenAddress::Tcp("127.0.0.1:0".parse().expect("addr")), None).expect("bind");
        assert!(!l.local_address().ends_with(":0"));
    }
}

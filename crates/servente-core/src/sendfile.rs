//! Sending response bytes that mirror a file with `sendfile(2)`, under hyper.
//!
//! hyper writes a response body by handing the body's memory to the socket (`writev`), which
//! copies every byte into the kernel. For a large file that copy is most of the server's work
//! (a profile of 1 MiB responses: over half the CPU time in `_copy_from_iter`). nginx avoids it
//! with `sendfile`, which hands the kernel the file's page-cache pages instead.
//!
//! hyper has no way to pass a file down, so servente passes a hint beside the bytes: memory
//! holding a copy of a file region ([`mirrored`]) is recorded in a process-wide registry for as
//! long as that memory lives. When the connection's stream (see [`SendFile`]) is asked to write
//! a slice that lies inside such memory, it calls `sendfile` on the file region instead, and
//! reports the same count, so hyper never knows. The memory is the truth: if `sendfile` cannot
//! run (TLS, a filesystem without it) or the file became shorter, the slice is written from
//! memory as usual. A file changed in place (same inode) while it is being sent may send the
//! new bytes, as nginx's `sendfile` does; files replaced by rename, as deploy tools and
//! servente's own uploads do, keep sending the old ones, since the open file is the old one.
//!
//! Hand-written: no crate bridges hyper and `sendfile`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;

/// Slices shorter than this are written from memory: a lookup and a second system call would
/// cost more than the copy.
pub const MIN_SLICE: usize = 16 << 10;

struct Region {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// Memory regions that mirror file regions, by start address.
static MIRRORS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());

/// A registration in [`MIRRORS`], removed when dropped: whoever owns mirrored memory holds
/// this and drops it before the memory is freed or reused.
pub struct Mirror {
    start: usize,
}

impl Mirror {
    /// Records that `mem` holds the bytes of `file` from `offset`.
    pub fn register(mem: &[u8], file: Arc<File>, offset: u64) -> Option<Mirror> {
        if mem.len() < MIN_SLICE {
            return None;
        }
        let start = mem.as_ptr() as usize;
        let mut map = MIRRORS.write().unwrap_or_else(|e| e.into_inner());
        map.insert(start, Region { len: mem.len(), file, offset });
        Some(Mirror { start })
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        MIRRORS.write().unwrap_or_else(|e| e.into_inner()).remove(&self.start);
    }
}

/// The file region that `slice` mirrors, if any.
fn mirror_of(slice: &[u8]) -> Option<(Arc<File>, u64)> {
    let at = slice.as_ptr() as usize;
    let map = MIRRORS.read().unwrap_or_else(|e| e.into_inner());
    let (start, r) = map.range(..=at).next_back()?;
    (at + slice.len() <= start + r.len).then(|| (r.file.clone(), r.offset + (at - start) as u64))
}

/// Files kept open by [`mirrored`] bytes at most, so that a large cache of bodies cannot take
/// the file descriptors that connections need.
const MAX_HELD_FILES: usize = 1024;

/// Smallest `data` that [`mirrored`] keeps a file open for.
pub const MIN_HELD: usize = 64 << 10;

static HELD_FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes that hold `data`, the whole content of `file`, for keeping (a cache): they say so to
/// the stream that writes them while they live, keeping `file` open meanwhile. Small data, or
/// past [`MAX_HELD_FILES`], gives plain bytes and closes the file.
pub fn mirrored(data: Vec<u8>, file: File) -> Bytes {
    use std::sync::atomic::Ordering::Relaxed;
    struct Owner {
        // Declared first, so dropped first: unregistered before the memory goes.
        _mirror: Option<Mirror>,
        data: Vec<u8>,
    }
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            HELD_FILES.fetch_sub(1, Relaxed);
        }
    }
    if data.len() < MIN_HELD || HELD_FILES.fetch_add(1, Relaxed) >= MAX_HELD_FILES {
        if data.len() >= MIN_HELD {
            HELD_FILES.fetch_sub(1, Relaxed);
        }
        return Bytes::from(data);
    }
    let mirror = Mirror::register(&data, Arc::new(file), 0);
    Bytes::from_owner(Owner { _mirror: mirror, data })
}

/// A connection stream that can send file bytes itself.
pub trait SendFile {
    /// Whether [`SendFile::poll_sendfile`] can work on this stream at all.
    fn can_sendfile(&self) -> bool {
        false
    }

    /// Sends up to `len` bytes of `file` from `offset`, as a write of that many bytes would.
    fn poll_sendfile(&self, _cx: &mut Context<'_>, _file: &File, _offset: u64, _len: usize) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }

    /// Holds back partly filled packets (`TCP_CORK`) while a file is sent, as nginx's
    /// `tcp_nopush` does, so that the file goes out in full-sized segments; released at the
    /// next flush. Without it, every `sendfile` that finds the send buffer partly full pushes a
    /// short segment (twice the packets for a 1 MiB file, measured).
    fn cork(&self, _on: bool) {}
}

macro_rules! socket_sendfile {
    ($t:ty $(, $cork:ident)?) => {
        impl SendFile for $t {
            fn can_sendfile(&self) -> bool {
                true
            }

            fn poll_sendfile(&self, cx: &mut Context<'_>, file: &File, offset: u64, len: usize) -> Poll<io::Result<usize>> {
                loop {
                    std::task::ready!(self.poll_write_ready(cx))?;
                    let mut at = offset;
                    match self.try_io(tokio::io::Interest::WRITABLE, || Ok(rustix::fs::sendfile(self, file, Some(&mut at), len)?)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return Poll::Ready(r),
                    }
                }
            }

            $(
                fn $cork(&self, on: bool) {
                    // Only an optimisation: a failure changes nothing else.
                    let _ = rustix::net::sockopt::set_tcp_cork(self, on);
                }
            )?
        }
    };
}

socket_sendfile!(tokio::net::TcpStream, cork);
socket_sendfile!(tokio::net::UnixStream);

impl<IO> SendFile for tokio_rustls::server::TlsStream<IO> {}
impl SendFile for tokio::io::DuplexStream {}

/// What a write of a list of slices does instead of copying them all.
pub enum Plan {
    /// Write only the first this many slices, which come before a mirrored one.
    Before(usize),
    /// Send the first slice from its file.
    Send { file: Arc<File>, offset: u64, len: usize },
}

/// The plan for a write of `bufs`; `None`: write them as usual.
pub fn plan(bufs: &[IoSlice<'_>]) -> Option<Plan> {
    let (i, (file, offset)) =
        bufs.iter().enumerate().find_map(|(i, b)| (b.len() >= MIN_SLICE).then(|| mirror_of(b)).flatten().map(|m| (i, m)))?;
    Some(if i > 0 { Plan::Before(i) } else { Plan::Send { file, offset, len: bufs[0].len() } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn mirrored_memory_is_found_inside_and_forgotten_when_dropped() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        let data = vec![7u8; 64 << 10];
        f.write_all(&data).expect("write");
        let b = mirrored(data, File::open(f.path()).expect("open"));
        let inner = b.slice(20_000..40_000);
        let (_, off) = mirror_of(&inner).expect("an interior slice is mirrored");
        assert_eq!(off, 20_000);
        assert!(mirror_of(&vec![0u8; 20_000]).is_none(), "other memory is not");
        let small = b.slice(0..100);
        let plain = IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(plan(&[IoSlice::new(&small)]).is_none(), "small slices are copied");
        assert!(matches!(plan(&[plain, IoSlice::new(&inner)]), Some(Plan::Before(1))), "the head goes first, alone");
        assert!(matches!(plan(&[IoSlice::new(&inner)]), Some(Plan::Send { offset: 20_000, len: 20_000, .. })));
        drop((b, inner, small));

        let mem = vec![1u8; 32 << 10];
        let file = Arc::new(File::open(f.path()).expect("open"));
        let m = Mirror::register(&mem, file, 0).expect("registered");
        assert!(mirror_of(&mem).is_some());
        drop(m);
        assert!(mirror_of(&mem).is_none(), "a dropped registration is gone while the memory lives on");
    }
}

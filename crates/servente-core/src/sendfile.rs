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
//! A body may go further and not read the bytes at all ([`unread`]): for a connection that is
//! known to send files this way (plain HTTP/1.x), a file region of at least [`MIN_SLICE`] that
//! is all in the page cache is handed to hyper as bytes of a reserved, zero-filled address range, registered like any
//! mirror but marked unread. Here the file is the truth: such a slice is always sent from the
//! file (by `sendfile`, or by reading it into a small buffer where `sendfile` cannot run, of
//! any length), and a file that became shorter ends the connection rather than send zeros.
//! This spares the copy of every byte into memory that nothing reads, and lets the response
//! head leave before any of the file is read.
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
    /// The memory does not hold the bytes (see [`unread`]).
    unread: bool,
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
        Some(Self::insert(mem, file, offset, false))
    }

    fn insert(mem: &[u8], file: Arc<File>, offset: u64, unread: bool) -> Mirror {
        let start = mem.as_ptr() as usize;
        let mut map = MIRRORS.write().unwrap_or_else(|e| e.into_inner());
        map.insert(start, Region { len: mem.len(), file, offset, unread });
        Mirror { start }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        MIRRORS.write().unwrap_or_else(|e| e.into_inner()).remove(&self.start);
    }
}

/// The file region that `slice` mirrors, if any, and whether it is unread.
fn mirror_of(slice: &[u8]) -> Option<(Arc<File>, u64, bool)> {
    let at = slice.as_ptr() as usize;
    let map = MIRRORS.read().unwrap_or_else(|e| e.into_inner());
    let (start, r) = map.range(..=at).next_back()?;
    (at + slice.len() <= start + r.len).then(|| (r.file.clone(), r.offset + (at - start) as u64, r.unread))
}

/// The address range unread bytes point into: mapped once, read-only and never written, so it
/// costs no memory (every page is the kernel's shared zero page), and a bug that copied from it
/// would send zeros, never another file's bytes. Cut into slots, one per live [`unread`] frame.
struct UnreadArea {
    map: memmap2::Mmap,
    free: std::sync::Mutex<Vec<u32>>,
}

/// Largest unread frame: 2 MiB, so a large file takes few trips through hyper.
pub const UNREAD_SLOT: usize = 2 << 20;
/// Unread frames alive at once at most (8 GiB of address space, no memory; a download holds
/// one or two); past that, file bodies read their bytes as before.
const UNREAD_SLOTS: usize = 4 << 10;

static UNREAD: std::sync::OnceLock<Option<UnreadArea>> = std::sync::OnceLock::new();

fn unread_area() -> Option<&'static UnreadArea> {
    UNREAD
        .get_or_init(|| {
            let map =
                memmap2::MmapOptions::new().len(UNREAD_SLOT * UNREAD_SLOTS).no_reserve_swap().map_anon().and_then(|m| m.make_read_only());
            match map {
                Ok(map) => Some(UnreadArea { map, free: std::sync::Mutex::new((0..UNREAD_SLOTS as u32).rev().collect()) }),
                Err(e) => {
                    tracing::debug!(error = %e, "no address range for unread file bytes: file bodies read them");
                    None
                }
            }
        })
        .as_ref()
}

/// Whether `mem` lies in the unread area (its bytes are not the file's).
pub fn is_unread(mem: &[u8]) -> bool {
    UNREAD.get().and_then(Option::as_ref).is_some_and(|a| (mem.as_ptr() as usize).wrapping_sub(a.map.as_ptr() as usize) < a.map.len())
}

/// Bytes that stand for up to `len` bytes of `file` from `offset` (at most [`UNREAD_SLOT`])
/// without reading them, for a connection whose stream sends them from the file itself. Only
/// when those bytes are in the page cache (see [`cached`], and [`Probed`] for a file known by
/// `id`), so that `sendfile` does not wait for the disk on the connection's thread; `None`
/// otherwise, and the caller reads them.
pub fn unread(file: &Arc<File>, offset: u64, len: u64, id: Option<&FileId>) -> Option<Bytes> {
    let len = len.min(UNREAD_SLOT as u64) as usize;
    if len == 0 || !Probed::cached(file, id, offset, len as u64) {
        return None;
    }
    let area = unread_area()?;
    let slot = area.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
    let at = slot as usize * UNREAD_SLOT;
    let mem: &'static [u8] = &area.map[at..at + len];
    struct Owner {
        mirror: Option<Mirror>,
        mem: &'static [u8],
        slot: u32,
        area: &'static UnreadArea,
    }
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.mem
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            // Unregistered before the slot can be handed out again.
            self.mirror = None;
            self.area.free.lock().unwrap_or_else(|e| e.into_inner()).push(self.slot);
        }
    }
    let mirror = Some(Mirror::insert(mem, file.clone(), offset, true));
    Some(Bytes::from_owner(Owner { mirror, mem, slot, area }))
}

/// Distance between the pages [`cached`] looks at. Each probe is a system call (five for a
/// 1 MiB file), but a wider gap lets a larger uncached hole through, and `sendfile` then waits
/// for the disk on a worker that serves every connection of its core.
const PROBE_EVERY: u64 = 256 << 10;

/// Whether `len` bytes of `file` from `offset` are in the page cache, judged by one byte every
/// [`PROBE_EVERY`] and the last one, each read with `preadv2(RWF_NOWAIT)` (which refuses
/// rather than wait for the disk). A region evicted between two probes (memory pressure, a
/// file read only in part) makes `sendfile` wait for it on the connection's thread, as
/// nginx's does, which never asks. (`cachestat(2)` would count every page, but needs Linux 6.5
/// and a raw system call.)
fn cached(file: &File, offset: u64, len: u64) -> bool {
    let last = offset + len - 1;
    let mut byte = [0u8; 1];
    let mut at = offset;
    loop {
        let probe = at.min(last);
        match rustix::io::preadv2(file, &mut [std::io::IoSliceMut::new(&mut byte)], probe, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(1) => {}
            _ => return false,
        }
        if probe == last {
            return true;
        }
        at += PROBE_EVERY;
    }
}

/// What a file's content is known by without reading it: its identity, size and modification
/// time, from the `statx` its opener made. A file written in place or replaced gets another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId { dev: meta.dev(), ino: meta.ino(), size: meta.size(), mtime: (meta.mtime(), meta.mtime_nsec()) }
    }
}

/// How long a region found in the page cache is taken to stay there without probing again.
/// The same file downloaded again and again (a popular file, the benchmark) pays the five
/// probes of a 1 MiB region once per this, not per request. A region evicted meanwhile (memory
/// pressure within a second of being read whole) only makes one `sendfile` wait for the disk,
/// as nginx's always may; the bytes sent are right either way.
const PROBED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Slots of each worker thread's memo of regions found cached, chosen by a hash of the region.
const PROBED_SLOTS: usize = 1 << 6;

/// Each thread's memo of regions [`cached`] found in the page cache, by file and region, when.
/// Per thread, so it takes no lock: each worker probes a region once per [`PROBED_FOR`].
struct Probed;

type ProbedSlot = Option<(FileId, u64, u64, std::time::Instant)>;

thread_local! {
    static PROBED: std::cell::RefCell<[ProbedSlot; PROBED_SLOTS]> = const { std::cell::RefCell::new([None; PROBED_SLOTS]) };
}

impl Probed {
    /// [`cached`], skipped for a region of the file `id` found cached less than [`PROBED_FOR`] ago.
    fn cached(file: &File, id: Option<&FileId>, offset: u64, len: u64) -> bool {
        let Some(id) = id else { return cached(file, offset, len) };
        // A multiplicative hash's top bits: spreads inode numbers that differ in low bits.
        let slot = ((id.ino ^ offset ^ len.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (u64::BITS - PROBED_SLOTS.trailing_zeros())) as usize;
        let now = std::time::Instant::now();
        let seen = PROBED.with_borrow(|memo| {
            memo[slot].is_some_and(|(i, o, l, at)| i == *id && o == offset && l == len && now.duration_since(at) < PROBED_FOR)
        });
        if seen {
            return true;
        }
        let found = cached(file, offset, len);
        if found {
            PROBED.with_borrow_mut(|memo| memo[slot] = Some((*id, offset, len, now)));
        }
        found
    }
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

    /// Turns off Nagle's algorithm (`TCP_NODELAY`), for a TCP connection that writes a second
    /// time (see `GuardedIo`'s `nodelay_before_write`).
    fn set_nodelay(&self) {}

    /// The stream is a kernel socket that nothing else holds: dropping it closes it, which
    /// sends a FIN after the queued bytes as `shutdown` would, as long as nothing is left
    /// unread (see `GuardedIo`'s `poll_shutdown`).
    fn fin_on_drop(&self) -> bool {
        false
    }
}

macro_rules! socket_sendfile {
    ($t:ty $(, $cork:ident, $nodelay:ident)?) => {
        impl SendFile for $t {
            fn can_sendfile(&self) -> bool {
                true
            }

            fn fin_on_drop(&self) -> bool {
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

                fn $nodelay(&self) {
                    // Only an optimisation: a failure changes nothing else.
                    let _ = <$t>::set_nodelay(self, true);
                }
            )?
        }
    };
}

socket_sendfile!(tokio::net::TcpStream, cork, set_nodelay);
socket_sendfile!(tokio::net::UnixStream);

impl<IO> SendFile for tokio_rustls::server::TlsStream<IO> {}
impl SendFile for tokio::io::DuplexStream {}

/// What a write of a list of slices does instead of copying them all.
pub enum Plan {
    /// Write only the first this many slices, which come before a mirrored one.
    Before(usize),
    /// Send the first slice from its file; if `unread`, its memory does not hold the bytes.
    Send { file: Arc<File>, offset: u64, len: usize, unread: bool },
    /// An unread slice whose file is not known any more: nothing right can be sent.
    Lost,
}

/// The plan for a write of `bufs` by a stream that can `sendfile` (`can`) or not (then only
/// unread slices, which must come from their file, change anything); `None`: write them as
/// usual.
pub fn plan(bufs: &[IoSlice<'_>], can: bool) -> Option<Plan> {
    let (i, found) = bufs.iter().enumerate().find_map(|(i, b)| {
        if is_unread(b) {
            Some((i, mirror_of(b)))
        } else if can && b.len() >= MIN_SLICE {
            mirror_of(b).map(|m| (i, Some(m)))
        } else {
            None
        }
    })?;
    Some(match found {
        _ if i > 0 => Plan::Before(i),
        Some((file, offset, unread)) => Plan::Send { file, offset, len: bufs[0].len(), unread },
        None => Plan::Lost,
    })
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
        let (_, off, unread) = mirror_of(&inner).expect("an interior slice is mirrored");
        assert!(!unread);
        assert_eq!(off, 20_000);
        assert!(mirror_of(&vec![0u8; 20_000]).is_none(), "other memory is not");
        let small = b.slice(0..100);
        let plain = IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(plan(&[IoSlice::new(&small)], true).is_none(), "small slices are copied");
        assert!(matches!(plan(&[plain, IoSlice::new(&inner)], true), Some(Plan::Before(1))), "the head goes first, alone");
        assert!(matches!(plan(&[IoSlice::new(&inner)], true), Some(Plan::Send { offset: 20_000, len: 20_000, unread: false, .. })));
        assert!(plan(&[IoSlice::new(&inner)], false).is_none(), "a stream without sendfile writes mirrors from memory");
        drop((b, inner, small));

        let mem = vec![1u8; 32 << 10];
        let file = Arc::new(File::open(f.path()).expect("open"));
        let m = Mirror::register(&mem, file, 0).expect("registered");
        assert!(mirror_of(&mem).is_some());
        drop(m);
        assert!(mirror_of(&mem).is_none(), "a dropped registration is gone while the memory lives on");
    }

    #[test]
    fn unread_bytes_point_at_their_file_and_must_come_from_it() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&vec![9u8; UNREAD_SLOT + 5000]).expect("write");
        f.flush().expect("flush");
        let file = Arc::new(File::open(f.path()).expect("open"));
        // Just written, so in the page cache.
        let b = unread(&file, 100, (UNREAD_SLOT + 5000) as u64, None).expect("cached bytes are left unread");
        assert_eq!(b.len(), UNREAD_SLOT, "at most one slot");
        assert!(is_unread(&b) && b.iter().take(4096).all(|&x| x == 0), "zeros from the reserved range");
        // Any piece of it, however small, is sent from the file, even by a stream without sendfile.
        let piece = b.slice(10..20);
        assert!(matches!(plan(&[IoSlice::new(&piece)], false), Some(Plan::Send { offset: 110, len: 10, unread: true, .. })));
        let head = IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(plan(&[head, IoSlice::new(&piece)], false), Some(Plan::Before(1))));
        // Dropped, its registration goes with it (the slot itself may already serve another
        // test running in parallel, so only the new one is checked).
        drop((b, piece));
        let again = unread(&file, 0, 10, None).expect("a slot again");
        assert!(matches!(mirror_of(&again), Some((_, 0, true))));
        assert!(!is_unread(&[0u8; 10]), "ordinary memory is not unread");
    }

    #[test]
    fn a_region_found_cached_is_not_probed_again_for_the_same_content() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&vec![3u8; 300 << 10]).expect("write");
        f.flush().expect("flush");
        let file = File::open(f.path()).expect("open");
        let id = FileId::of(&file.metadata().expect("metadata"));
        let len = 300 << 10;
        assert!(Probed::cached(&file, Some(&id), 0, len), "just written, so cached");
        // Cut short behind the opener's back: the probe past the end now fails...
        f.as_file().set_len(10).expect("truncate");
        assert!(!cached(&file, 0, len));
        assert!(!Probed::cached(&file, None, 0, len), "a file without an id is always probed");
        // ...but the region of the content known by `id` was found cached a moment ago.
        assert!(Probed::cached(&file, Some(&id), 0, len));
        // The metadata of the file as it is now names other content, which is probed.
        let now = FileId::of(&file.metadata().expect("metadata"));
        assert_ne!(now, id);
        assert!(!Probed::cached(&file, Some(&now), 0, len));
        assert!(!Probed::cached(&file, Some(&id), 4096, len - 4096), "another region of it is probed");
    }
}

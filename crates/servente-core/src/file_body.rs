//! A region of an open file as a response body, read without stalling the connection's thread.
//!
//! Each chunk is first read with `preadv2(RWF_NOWAIT)`, which copies bytes that are already in
//! the page cache and refuses (EAGAIN) rather than wait for the disk. A hot file is so read on
//! the connection's own thread, in one call per chunk, with no hop to another thread and back;
//! only a chunk that must come from the disk is read on the blocking pool, so a slow disk never
//! holds up the other connections of that thread. Filesystems without RWF_NOWAIT get every chunk
//! from the blocking pool.
//!
//! On a connection that sends files with `sendfile` (see [`FileBody::unread_if`]), a region
//! of at least [`crate::sendfile::MIN_SLICE`] that is already in the page cache is not read at
//! all: the body hands over unread bytes ([`crate::sendfile::unread`]) and the socket takes the
//! pages from the file. A shorter region is read (one read costs less than what `sendfile`
//! needs around it).
//!
//! Chunks are read into buffers kept in a small per-thread pool and given back when the
//! socket has taken their bytes, so a download neither zeroes nor faults in fresh memory for
//! every chunk.
//!
//! Hand-written because the crates that turn a file into a stream (`tokio::fs`,
//! `tokio_util::io::ReaderStream`) send every read to the blocking pool.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use rustix::io::{Errno, ReadWriteFlags, preadv2};
use tokio::task::JoinHandle;

use crate::sendfile::{FileId, Mirror};

/// Largest chunk read (and handed to the socket) at once.
pub const CHUNK: u64 = 256 << 10;

/// Buffers kept for reuse per thread (4 MiB of them at most).
const POOLED: usize = 16;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A [`CHUNK`]-sized buffer, from the pool when one is free.
fn buffer() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; CHUNK as usize])
}

/// The first `len` bytes of a pooled buffer, as the owner of a [`Bytes`]; the buffer goes back
/// to the pool of the thread that drops it.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    /// The chunk mirrors its file region, so the socket may `sendfile` it (see
    /// [`crate::sendfile`]); released before the buffer is reused.
    mirror: Option<Mirror>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.mirror = None;
        let buf = std::mem::take(&mut self.buf);
        // During thread teardown the pool may be gone: the buffer is then simply freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(buf);
            }
        });
    }
}

/// The first `len` bytes of `buf`, read from `file` at `offset`.
fn chunk(buf: Vec<u8>, len: usize, file: &Arc<File>, offset: u64) -> Bytes {
    let mirror = Mirror::register(&buf[..len], file.clone(), offset);
    Bytes::from_owner(Chunk { buf, len, mirror })
}

/// `len` bytes of `file` from `start`, as an HTTP body.
pub struct FileBody {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// A chunk being read on the blocking pool.
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// False once the filesystem said it cannot read without waiting.
    nowait: bool,
    /// Cached regions of at least `MIN_SLICE` go out unread (see [`FileBody::unread_if`]).
    unread: bool,
    /// What the file's content is known by, if its opener looked (see [`FileBody::whole`]).
    id: Option<FileId>,
}

impl FileBody {
    pub fn new(file: File, start: u64, len: u64) -> Self {
        Self::shared(Arc::new(file), start, len)
    }

    /// A region of a file that other bodies read too (the parts of a multipart answer).
    pub fn shared(file: Arc<File>, start: u64, len: u64) -> Self {
        FileBody { file, pos: start, end: start.saturating_add(len), pending: None, nowait: true, unread: false, id: None }
    }

    /// All of `file`, whose metadata `meta` its opener read anyway: its length, and its
    /// [`FileId`], so that a region of it found in the page cache is not probed again for a
    /// while (see [`crate::sendfile::unread`]).
    pub fn whole(file: File, meta: &std::fs::Metadata) -> Self {
        FileBody { id: Some(FileId::of(meta)), ..Self::new(file, 0, meta.len()) }
    }

    /// With `yes` (the request's [`crate::RequestCx::sendfile`]), regions already in the page
    /// cache and at least [`crate::sendfile::MIN_SLICE`] long are not read at all: the body
    /// hands over [`crate::sendfile::unread`] bytes, which the connection sends from the file. Only for a connection whose stream does that (plain
    /// HTTP/1.x): any other would have to read them back from the file one small piece at a
    /// time.
    pub fn unread_if(mut self, yes: bool) -> Self {
        self.unread = yes;
        self
    }

    /// The file shrank under the response: its promised length can no longer be sent.
    fn shrank(&self) -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, format!("the file ended {} bytes early", self.end - self.pos))
    }

    /// A chunk read (or its error) as the next frame, moving past its bytes.
    fn frame(&mut self, chunk: io::Result<Bytes>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(Some(chunk.map(|c| {
            self.pos += c.len() as u64;
            Frame::data(c)
        })))
    }

    /// Reads the next chunk from the page cache, if it is all there.
    fn read_cached(&mut self, want: usize) -> Option<io::Result<Bytes>> {
        if !self.nowait {
            return None;
        }
        let mut buf = buffer();
        match preadv2(&*self.file, &mut [IoSliceMut::new(&mut buf[..want])], self.pos, ReadWriteFlags::NOWAIT) {
            Ok(0) => Some(Err(self.shrank())),
            Ok(n) => Some(Ok(chunk(buf, n, &self.file, self.pos))),
            Err(Errno::AGAIN) => None,
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                self.nowait = false;
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(task) = &mut this.pending {
            let read = ready!(Pin::new(task).poll(cx));
            this.pending = None;
            let chunk = match read {
                Ok(Ok(c)) if c.is_empty() => Err(this.shrank()),
                Ok(r) => r,
                Err(e) => Err(io::Error::other(format!("reading the file failed: {e}"))),
            };
            return this.frame(chunk);
        }
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        // A short region is read instead (one read, and the head and body leave in one write):
        // sending it from the file would cost more system calls than its copy.
        if this.unread
            && this.end - this.pos >= crate::sendfile::MIN_SLICE as u64
            && let Some(b) = crate::sendfile::unread(&this.file, this.pos, this.end - this.pos, this.id.as_ref())
        {
            return this.frame(Ok(b));
        }
        let want = (this.end - this.pos).min(CHUNK) as usize;
        if let Some(chunk) = this.read_cached(want) {
            return this.frame(chunk);
        }
        let (file, pos) = (this.file.clone(), this.pos);
        this.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = buffer();
            let mut filled = 0;
            // Fill the chunk (short reads happen), stopping early only at the end of the file.
            while filled < want {
                match file.read_at(&mut buf[filled..want], pos + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(chunk(buf, filled, &file, pos))
        }));
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&data).expect("write");
        (f, data)
    }

    #[tokio::test]
    async fn whole_files_and_regions_come_out_exact() {
        let (f, data) = file_of(3 * CHUNK as usize + 1234);
        for (start, len) in [(0, data.len()), (0, 0), (5, 10), (CHUNK as usize - 1, CHUNK as usize + 2), (100, data.len() - 100)] {
            let body = FileBody::new(File::open(f.path()).expect("open"), start as u64, len as u64);
            assert_eq!(http_body::Body::size_hint(&body).exact(), Some(len as u64));
            let got = body.collect().await.expect("read").to_bytes();
            assert_eq!(&got[..], &data[start..start + len], "region {start}+{len}");
        }
    }

    #[tokio::test]
    async fn the_blocking_pool_reads_when_the_cache_cannot() {
        let (f, data) = file_of(CHUNK as usize + 10);
        let mut body = FileBody::new(File::open(f.path()).expect("open"), 0, data.len() as u64);
        body.nowait = false;
        let got = body.collect().await.expect("read").to_bytes();
        assert_eq!(&got[..], &data[..]);
    }

    #[tokio::test]
    async fn a_file_that_shrank_is_an_error_not_a_short_body() {
        let (f, data) = file_of(1000);
        let body = FileBody::new(File::open(f.path()).expect("open"), 0, data.len() as u64 + 10);
        assert!(body.collect().await.is_err());
        let mut body = FileBody::new(File::open(f.path()).expect("open"), 0, data.len() as u64 + 10);
        body.nowait = false;
        assert!(body.collect().await.is_err());
    }
}

//! Streaming ZIP archives for "download this folder as a zip".
//!
//! Hand-written rather than built on a zip crate because the archive is produced in one pass while
//! walking the tree, with no seeking and no temporary file: entries are STORED (most user files are
//! already compressed), each file's CRC and sizes follow its data in a data descriptor (general
//! purpose bit 3) so every file is read once, names are UTF-8 (bit 11), and ZIP64 records are
//! written where sizes, offsets or the entry count need them. The walk and reads run on a blocking
//! thread that feeds a small bounded channel, so memory stays small however big the tree is.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Size of the chunks sent through the channel.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the producer thread and the consumer.
const CHANNEL: usize = 4;

/// From where on a size or offset (32-bit fields) or the entry count (16-bit) needs ZIP64.
/// The values themselves are the "see the ZIP64 record" markers. Lowered in tests.
#[derive(Clone, Copy)]
struct Limits {
    size: u64,
    count: u64,
}
const LIMITS: Limits = Limits { size: 0xFFFF_FFFF, count: 0xFFFF };

/// The chunks of an archive being produced; the stream ends early with an `Err` item on failure.
pub type ZipStream = mpsc::Receiver<io::Result<Bytes>>;

/// Streams `dir` (a folder on disk) as a ZIP archive whose entries are under `top/`.
/// The walk and file reads run on a blocking thread; chunks arrive through a bounded channel,
/// so memory stays small however big the tree is. Symlinks are skipped (never followed).
pub fn stream_dir(dir: PathBuf, top: String) -> ZipStream {
    start(LIMITS, move |z| z.dir(&dir, top.trim_matches('/'))).0
}

/// Same for a single file, as the archive's only entry named `name`.
pub fn stream_file(file: PathBuf, name: String) -> ZipStream {
    let not_file = || io::Error::new(io::ErrorKind::NotFound, "not a regular file");
    start(LIMITS, move |z| z.file(&file, name.trim_start_matches('/'))?.then_some(()).ok_or_else(not_file)).0
}

/// Runs `job` then writes the central directory, on a blocking thread feeding the channel.
fn start(limits: Limits, job: impl FnOnce(&mut Zip) -> io::Result<()> + Send + 'static) -> (ZipStream, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let task = tokio::task::spawn_blocking(move || {
        let mut z = Zip { tx, limits, buf: Vec::with_capacity(CHUNK), offset: 0, cd: Vec::new(), count: 0 };
        if let Err(e) = job(&mut z).and_then(|()| z.finish()) {
            let _ = z.tx.blocking_send(Err(e)); // fails only when the receiver is gone anyway
        }
    });
    (rx, task)
}

/// Appends little-endian integers, each given as (value, width in bytes).
fn le(out: &mut Vec<u8>, fields: &[(u64, usize)]) {
    for &(v, n) in fields {
        out.extend_from_slice(&v.to_le_bytes()[..n]);
    }
}

/// `Ok(None)` for "not found": the entry vanished while the tree was walked.
fn gone<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        r => r.map(Some),
    }
}

/// MS-DOS time and date (of the mtime taken as UTC, clamped to 1980..=2107) and Unix mtime.
fn times(meta: &Metadata) -> (u64, u64, u64) {
    let secs = u64::try_from(meta.mtime()).unwrap_or(0);
    let dos = secs.clamp(315_532_800, 4_354_819_198);
    let (days, rem) = (dos / 86_400, dos % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, non-negative days only).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let time = ((rem / 3600) << 11) | ((rem % 3600 / 60) << 5) | (rem % 60 / 2);
    (time, ((year - 1980) << 9) | (month << 5) | day, secs.min(i32::MAX as u64))
}

/// The archive being written: output buffer, position, and the central directory so far.
struct Zip {
    tx: mpsc::Sender<io::Result<Bytes>>,
    limits: Limits,
    buf: Vec<u8>,
    offset: u64,
    cd: Vec<u8>,
    count: u64,
}

impl Zip {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        self.offset += data.len() as u64;
        if self.buf.len() >= CHUNK { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "zip download cancelled"))
    }

    /// Walks `root` depth-first in name order: each folder's entry, its files, then its subfolders.
    fn dir(&mut self, root: &Path, top: &str) -> io::Result<()> {
        if !std::fs::symlink_metadata(root)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
        }
        let mut stack = vec![(root.to_path_buf(), if top.is_empty() { String::new() } else { format!("{top}/") })];
        while let Some((path, name)) = stack.pop() {
            let Some(meta) = gone(std::fs::symlink_metadata(&path))? else { continue };
            if !meta.is_dir() {
                continue; // replaced by something else (a symlink?) since it was listed
            }
            if !name.is_empty() {
                self.entry(&name, &meta, None)?;
            }
            let Some(list) = gone(std::fs::read_dir(&path))? else { continue };
            let entries = list.map(|e| gone(e.and_then(|e| Ok((e.file_name(), e.file_type()?)))).transpose());
            let mut children = entries.flatten().collect::<io::Result<Vec<_>>>()?;
            children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut subdirs = Vec::new();
            for (file_name, kind) in children {
                let child = format!("{name}{}", file_name.to_string_lossy());
                if kind.is_dir() {
                    subdirs.push((path.join(&file_name), child + "/"));
                } else if kind.is_file() {
                    self.file(&path.join(&file_name), &child)?;
                } // symlinks, sockets, FIFOs, devices: skipped
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Adds a regular file; `false` if it vanished or is not (or no longer) a regular file.
    fn file(&mut self, path: &Path, name: &str) -> io::Result<bool> {
        let Some(before) = gone(std::fs::symlink_metadata(path))? else { return Ok(false) };
        if !before.is_file() {
            return Ok(false);
        }
        // A link or a FIFO swapped in since the lstat is skipped, without waiting for a FIFO's
        // writer (see `open_regular`); so is another file put in its place.
        let opened = match crate::fs::open_regular(path) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return Ok(false),
            r => r,
        };
        let Some((file, meta)) = gone(opened)?.flatten() else { return Ok(false) };
        if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
            return Ok(false);
        }
        self.entry(name, &meta, Some(file))?;
        Ok(true)
    }

    /// One entry: local header, data and data descriptor (files only), central directory record.
    fn entry(&mut self, name: &str, meta: &Metadata, file: Option<File>) -> io::Result<()> {
        if name.len() > usize::from(u16::MAX) {
            return Ok(()); // cannot be named in a ZIP (and is past PATH_MAX anyway)
        }
        let (time, date, unix) = times(meta);
        let is_file = file.is_some();
        // Known before the data is read; at most `meta.len()` bytes are read, so it holds.
        let zip64 = is_file && meta.len() >= self.limits.size;
        let flags = if is_file { 0x0808 } else { 0x0800 };
        let (offset, name_len) = (self.offset, name.len() as u64);

        // Local header. With bit 3, CRC and sizes are 0 here; a ZIP64 one has 0xFFFFFFFF sizes and
        // zeros in its ZIP64 extra field instead, as Python's zipfile writes when streaming.
        let mut extra = Vec::new();
        if zip64 {
            le(&mut extra, &[(1, 2), (16, 2), (0, 8), (0, 8)]);
        }
        le(&mut extra, &[(0x5455, 2), (5, 2), (1, 1), (unix, 4)]);
        let (need, mark) = if zip64 { (45, 0xFFFF_FFFF) } else { (20, 0) };
        let mut h = Vec::with_capacity(30 + name.len() + extra.len());
        le(&mut h, &[(0x0403_4b50, 4), (need, 2), (flags, 2), (0, 2), (time, 2), (date, 2), (0, 4), (mark, 4), (mark, 4)]);
        le(&mut h, &[(name_len, 2), (extra.len() as u64, 2)]);
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        self.put(&h)?;

        let (mut crc, mut size) = (0, 0);
        if let Some(file) = file {
            (crc, size) = self.copy(file, meta.len())?;
            let mut d = Vec::with_capacity(24);
            le(&mut d, &[(0x0807_4b50, 4), (crc.into(), 4)]);
            let w = if zip64 { 8 } else { 4 };
            le(&mut d, &[(size, w), (size, w)]);
            self.put(&d)?;
        }

        // Central directory record: ZIP64 extra holds the sizes of a ZIP64 entry and any offset
        // that does not fit, each only when its 32-bit field says 0xFFFFFFFF.
        let big_offset = offset >= self.limits.size;
        let (ws, wo) = (if zip64 { 8 } else { 0 }, if big_offset { 8 } else { 0 }); // 0: field left out
        let mut extra = Vec::new();
        if zip64 || big_offset {
            le(&mut extra, &[(1, 2), ((2 * ws + wo) as u64, 2), (size, ws), (size, ws), (offset, wo)]);
        }
        le(&mut extra, &[(0x5455, 2), (5, 2), (1, 1), (unix, 4)]);
        let need = if zip64 || big_offset { 45 } else { 20 };
        let size32 = if zip64 { 0xFFFF_FFFF } else { size };
        let offset32 = if big_offset { 0xFFFF_FFFF } else { offset };
        let mode = u64::from(meta.mode() & 0o777) | if is_file { 0o100_000 } else { 0o040_000 };
        let attrs = (mode << 16) | if is_file { 0 } else { 0x10 }; // Unix mode, MS-DOS directory bit
        le(&mut self.cd, &[(0x0201_4b50, 4), (0x0300 | need, 2), (need, 2), (flags, 2), (0, 2), (time, 2), (date, 2)]);
        le(&mut self.cd, &[(crc.into(), 4), (size32, 4), (size32, 4), (name_len, 2), (extra.len() as u64, 2)]);
        le(&mut self.cd, &[(0, 2), (0, 2), (0, 2), (attrs, 4), (offset32, 4)]);
        self.cd.extend_from_slice(name.as_bytes());
        self.cd.extend_from_slice(&extra);
        self.count += 1;
        Ok(())
    }

    /// Copies at most `len` bytes (the size when opened: a file that grows is cut there, one that
    /// shrinks ends early) into the output; returns the CRC-32 and the number of bytes copied.
    fn copy(&mut self, mut file: File, len: u64) -> io::Result<(u32, u64)> {
        let (mut crc, mut done) = (crc32fast::Hasher::new(), 0);
        while done < len {
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
            let start = self.buf.len();
            self.buf.resize(start + (len - done).min((CHUNK - start) as u64) as usize, 0);
            let n = loop {
                match file.read(&mut self.buf[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                break;
            }
            crc.update(&self.buf[start..]);
            (done, self.offset) = (done + n as u64, self.offset + n as u64);
        }
        Ok((crc.finalize(), done))
    }

    /// Central directory, ZIP64 end records when needed, end of central directory; last flush.
    fn finish(&mut self) -> io::Result<()> {
        let (start, len, count, l) = (self.offset, self.cd.len() as u64, self.count, self.limits);
        let cd = std::mem::take(&mut self.cd);
        for piece in cd.chunks(CHUNK) {
            self.put(piece)?;
        }
        let mut end = Vec::with_capacity(98);
        if count >= l.count || len >= l.size || start >= l.size {
            let at = self.offset;
            le(&mut end, &[(0x0606_4b50, 4), (44, 8), (0x032D, 2), (45, 2), (0, 4), (0, 4)]);
            le(&mut end, &[(count, 8), (count, 8), (len, 8), (start, 8)]);
            le(&mut end, &[(0x0706_4b50, 4), (0, 4), (at, 8), (1, 4)]);
        }
        let count16 = if count >= l.count { 0xFFFF } else { count };
        let fit = |v: u64| if v >= l.size { 0xFFFF_FFFF } else { v };
        le(&mut end, &[(0x0605_4b50, 4), (0, 2), (0, 2), (count16, 2), (count16, 2), (fit(len), 4), (fit(start), 4), (0, 2)]);
        self.put(&end)?;
        self.flush()
    }
}

/// Chunks from a channel as an HTTP body.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    async fn collect(mut rx: ZipStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    /// Checks the archive with Python's zipfile (and `unzip -t` if installed), including that
    /// `member` holds the bytes of the file `expect`; returns the names, one a line.
    fn check(zip: &Path, member: &str, expect: &Path) -> String {
        let script = "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; \
                      assert z.read(sys.argv[2]) == open(sys.argv[3],'rb').read(); print('\\n'.join(z.namelist()))";
        let out = Command::new("python3").arg("-c").arg(script).arg(zip).arg(member).arg(expect).output().expect("python3");
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        if Command::new("unzip").arg("-v").output().is_ok_and(|o| o.status.success()) {
            let unzip = Command::new("unzip").arg("-t").arg(zip).output().expect("unzip");
            assert!(unzip.status.success(), "unzip -t: {}", String::from_utf8_lossy(&unzip.stdout));
        }
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[tokio::test]
    async fn folder_archives_are_valid_with_and_without_zip64() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("sub/deep")).expect("mkdir");
        std::fs::create_dir(root.join("empty")).expect("mkdir");
        for (name, text) in [("a.txt", "hi\n"), ("with space.txt", "sp"), ("ünïcødé 名前.txt", "u"), ("sub/zero.txt", "")] {
            std::fs::write(root.join(name), text).expect("write");
        }
        let mut x = 0x2545_F491_4F6C_DD1D_u64; // xorshift: 1 MiB that does not repeat
        let big: Vec<u8> = (0..1 << 20).map(|_| (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x as u8).3).collect();
        let big_path = root.join("sub/deep/big.bin");
        std::fs::write(&big_path, &big).expect("write");
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("link.txt")).expect("symlink");
        std::os::unix::fs::symlink("/etc", root.join("sub/etc")).expect("symlink");
        let names = "Top/\nTop/a.txt\nTop/with space.txt\nTop/ünïcødé 名前.txt\nTop/empty/\n\
                     Top/sub/\nTop/sub/zero.txt\nTop/sub/deep/\nTop/sub/deep/big.bin\n";
        let zip64_end = |zip: &[u8]| zip.windows(4).any(|w| w == 0x0606_4b50_u32.to_le_bytes());

        let zip = tmp.path().join("out.zip");
        let bytes = collect(stream_dir(root.clone(), "Top/".into())).await;
        assert!(!zip64_end(&bytes));
        std::fs::write(&zip, bytes).expect("write zip");
        assert_eq!(check(&zip, "Top/sub/deep/big.bin", &big_path), names);

        // ZIP64 sizes for big.bin, ZIP64 offsets for all but the first three entries, ZIP64 end.
        let dir = root.clone();
        let bytes = collect(start(Limits { size: 100, count: 3 }, move |z| z.dir(&dir, "Top")).0).await;
        assert!(zip64_end(&bytes));
        std::fs::write(&zip, bytes).expect("write zip");
        assert_eq!(check(&zip, "Top/sub/deep/big.bin", &big_path), names);

        std::fs::write(&zip, collect(stream_file(big_path.clone(), "big.bin".into())).await).expect("write zip");
        assert_eq!(check(&zip, "big.bin", &big_path), "big.bin\n");
    }

    #[tokio::test]
    async fn files_changing_size_are_archived_as_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().to_path_buf();
        std::fs::write(p.join("shrinks"), [1u8; 1000]).expect("write");
        std::fs::write(p.join("grows"), [2u8; 10]).expect("write");
        // The size when opened says ZIP64 for "shrinks" (limit 100); fewer bytes are there to read.
        let (rx, _) = start(Limits { size: 100, count: 0xFFFF }, move |z| {
            for (name, new_len) in [("shrinks", 10), ("grows", 1000)] {
                let file = File::open(p.join(name))?;
                let meta = file.metadata()?;
                File::options().write(true).open(p.join(name))?.set_len(new_len)?;
                z.entry(name, &meta, Some(file))?;
            }
            Ok(())
        });
        let (zip, want) = (tmp.path().join("out.zip"), tmp.path().join("want"));
        std::fs::write(&zip, collect(rx).await).expect("write zip");
        std::fs::write(&want, [1u8; 10]).expect("write");
        assert_eq!(check(&zip, "shrinks", &want), "shrinks\ngrows\n");
        std::fs::write(&want, [2u8; 10]).expect("write");
        check(&zip, "grows", &want);
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_the_producer() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), vec![7u8; 8 << 20]).expect("write");
        let path = tmp.path().to_path_buf();
        let (mut rx, task) = start(LIMITS, move |z| z.dir(&path, "t"));
        assert!(rx.recv().await.expect("a chunk").is_ok());
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("stopped").expect("no panic");
    }
}

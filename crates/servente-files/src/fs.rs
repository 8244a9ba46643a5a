//! The storage behind WebDAV: one tree on disk, seen through each caller's permissions.
//!
//! Layout under the files root, identical to the WebDAV namespace:
//! `users/NAME/…` (a user's home), `groups/NAME/…` (a group's folder), `shared/NAME/…`
//! (`[[files.folder]]`), and `.tmp/` for uploads in progress. `/`, `/users/`, `/groups/` and
//! `/shared/` are virtual listings holding only what the caller may open; anything else is 404.
//!
//! [`ServenteFs`] implements dav-server's `GuardedFileSystem` with the caller as credentials:
//! reads and directory operations go to dav-server's `LocalFs` after the permission check;
//! writes go to [`Upload`] (a temporary file, fsync, rename: a file appears only whole); dead
//! properties live in [`Db`]; quotas are counted here (bytes of regular files in a home).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream, GuardedFileSystem, OpenOptions, ReadDirMeta,
};
use dav_server::localfs::LocalFs;
use futures_util::{FutureExt, StreamExt};
use http::StatusCode;
use servente_auth::{Acl, Level, Principal};

use crate::db::Db;

/// Who is asking, handed to every filesystem call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub who: Arc<Principal>,
    /// A PROPFIND naming its properties: dav-server would append every dead property to the
    /// named ones, so [`ServenteFs`] lists none (the named ones come through `get_prop`).
    pub named_props: bool,
    /// Microseconds the request's upload spent in fsync (reported as `Server-Timing`).
    pub sync_micros: Arc<std::sync::atomic::AtomicU64>,
}

/// The three kinds of top folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Users,
    Groups,
    Shared,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Groups => "groups",
            Kind::Shared => "shared",
        }
    }
    fn parse(s: &[u8]) -> Option<Kind> {
        match s {
            b"users" => Some(Kind::Users),
            b"groups" => Some(Kind::Groups),
            b"shared" => Some(Kind::Shared),
            _ => None,
        }
    }
}

/// Where a path lands for a caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `/`
    Root,
    /// `/users/`, `/groups/`, `/shared/`
    List(Kind),
    /// Inside a home or folder: `depth` is 0 for the area's own folder.
    Area { kind: Kind, name: String, write: bool, depth: usize },
}

impl Node {
    /// The home owner whose quota this node counts against.
    fn quota_user(&self) -> Option<&str> {
        match self {
            Node::Area { kind: Kind::Users, name, .. } => Some(name),
            _ => None,
        }
    }
}

/// A `[[files.folder]]` with its rules.
pub struct Folder {
    pub name: String,
    pub read: Acl,
    pub write: Acl,
}

/// The state every request shares: the root, the metadata store and the quota counters.
pub struct Storage {
    pub root: PathBuf,
    tmp: PathBuf,
    pub db: Db,
    default_quota: u64,
    quotas: HashMap<String, u64>,
    group_folders: bool,
    folders: Vec<Folder>,
    /// Bytes in each home, counted once by walking it, then kept up to date by every change.
    usage: Mutex<HashMap<String, u64>>,
    /// Bytes promised to uploads in progress, per user.
    reserved: Mutex<HashMap<String, u64>>,
    /// Area folders known to exist (created on first use).
    made: std::sync::RwLock<HashMap<Kind, HashSet<String>>>,
    /// The root, held open: downloads open their file from it (see [`Storage::open_file`]).
    root_fd: std::os::fd::OwnedFd,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("root", &self.root).finish_non_exhaustive()
    }
}

pub struct StorageSettings {
    pub default_quota: u64,
    pub quotas: HashMap<String, u64>,
    pub group_folders: bool,
    pub folders: Vec<Folder>,
}

impl Storage {
    /// Opens (creating) the root and its metadata store; `db_file` is usually in the data folder.
    pub fn open(root: &Path, db_file: &Path, s: StorageSettings) -> Result<Storage, String> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        // Uploads cut short by a crash leave their temporary file; nothing else refers to it.
        // Only at startup: a reload builds a new Storage while uploads of the old one go on.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            if let Ok(entries) = std::fs::read_dir(&tmp) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        });
        let root_fd = rustix::fs::open(
            root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        Ok(Storage {
            root_fd,
            root: root.to_path_buf(),
            tmp,
            db: Db::open(db_file)?,
            default_quota: s.default_quota,
            quotas: s.quotas,
            group_folders: s.group_folders,
            folders: s.folders,
            usage: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            made: std::sync::RwLock::new(HashMap::new()),
        })
    }

    /// The quota of a user in bytes; `None` for unlimited.
    pub fn quota(&self, user: &str) -> Option<u64> {
        let q = self.quotas.get(user).copied().unwrap_or(self.default_quota);
        (q > 0).then_some(q)
    }

    /// Bytes in a user's home (walks it the first time).
    pub fn used(&self, user: &str) -> u64 {
        if let Some(u) = self.usage.lock().unwrap_or_else(|p| p.into_inner()).get(user) {
            return *u;
        }
        let total = tree_size(&self.root.join("users").join(user));
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()).entry(user.to_string()).or_insert(total)
    }

    /// Promises `n` more bytes of `user`'s quota `q` to an upload, if they are free.
    pub(crate) fn try_reserve(&self, user: &str, n: u64, q: u64) -> bool {
        let used = self.used(user);
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let held = r.entry(user.to_string()).or_insert(0);
        if used.saturating_add(*held).saturating_add(n) > q {
            return false;
        }
        *held += n;
        true
    }

    pub(crate) fn release(&self, user: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = r.get_mut(user) {
            *held = held.saturating_sub(n);
        }
    }

    pub(crate) fn add_usage(&self, user: &str, delta: i64) {
        let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = u.get_mut(user) {
            *v = v.saturating_add_signed(delta);
        }
    }

    fn forget_usage(&self, user: &str) {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// What `who` may do in area `kind/name`: `None` (invisible), read, or write.
    pub fn access(&self, who: &Principal, kind: Kind, name: &str) -> Option<bool> {
        match kind {
            Kind::Users => (name == who.user).then_some(true),
            Kind::Groups => (self.group_folders && who.in_group(name)).then_some(true),
            Kind::Shared => {
                let f = self.folders.iter().find(|f| f.name == name)?;
                if f.write.allows(Some(who), Level::Read) { Some(true) } else { f.read.allows(Some(who), Level::Read).then_some(false) }
            }
        }
    }

    /// The areas of a kind that `who` can see, by name.
    pub fn areas(&self, who: &Principal, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Users => vec![who.user.clone()],
            Kind::Groups if self.group_folders => who.groups.clone(),
            Kind::Groups => Vec::new(),
            Kind::Shared => {
                self.folders.iter().filter(|f| self.access(who, Kind::Shared, &f.name).is_some()).map(|f| f.name.clone()).collect()
            }
        }
    }

    /// Places `path` for `who`. Areas the caller may not see are "not found", so names of other
    /// people's homes and folders do not leak.
    pub fn resolve(&self, path: &DavPath, who: &Principal) -> FsResult<Node> {
        self.resolve_checking(path, who, Some(true))
    }

    /// [`Storage::resolve`] for a caller that opens the path with [`Storage::open_file`], which
    /// refuses links and special files itself: no component is looked at here, which spares a
    /// download one `lstat` per folder of its path.
    pub fn resolve_to_open(&self, path: &DavPath, who: &Principal) -> FsResult<Node> {
        self.resolve_checking(path, who, None)
    }

    /// `leaf`: whether [`Storage::refuse_special_files`] looks at the last component too;
    /// `None`: it does not run.
    fn resolve_checking(&self, path: &DavPath, who: &Principal, leaf: Option<bool>) -> FsResult<Node> {
        let raw = path.as_rel_ospath().as_os_str().as_encoded_bytes();
        let mut segs = raw.split(|&b| b == b'/').filter(|s| !s.is_empty());
        let Some(top) = segs.next() else { return Ok(Node::Root) };
        let kind = Kind::parse(top).ok_or(FsError::NotFound)?;
        let Some(name) = segs.next() else { return Ok(Node::List(kind)) };
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let write = self.access(who, kind, name).ok_or(FsError::NotFound)?;
        let mut depth = 0;
        for s in segs {
            // Control characters in names break listings, logs and other clients.
            if s.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return Err(FsError::Forbidden);
            }
            depth += 1;
        }
        self.ensure_area(kind, name)?;
        if depth > 0
            && let Some(leaf) = leaf
        {
            self.refuse_special_files(raw, leaf)?;
        }
        Ok(Node::Area { kind, name: name.to_string(), write, depth })
    }

    /// WebDAV cannot make symbolic links, but one placed on disk by hand could lead out of the
    /// area (dav-server's local filesystem follows links): every existing component of the
    /// path below the area must be a real file or folder (the last one only with `leaf`).
    /// Listings hide links. Other special files placed by hand are refused as well: opening a
    /// FIFO would hold a blocking-pool thread until something writes to it.
    fn refuse_special_files(&self, rel: &[u8], leaf: bool) -> FsResult<()> {
        let mut p = self.root.clone();
        let mut segs = rel.split(|&b| b == b'/').filter(|s| !s.is_empty()).enumerate().peekable();
        while let Some((i, seg)) = segs.next() {
            p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(seg));
            if i < 2 {
                continue;
            }
            if !leaf && segs.peek().is_none() {
                break;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if !(m.is_file() || m.is_dir()) => return Err(FsError::Forbidden),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Opens the file at `path`, which resolved to an area (see [`Storage::resolve_to_open`]),
    /// for reading; `None` if it is not a regular file. `openat2` from the root's descriptor
    /// refuses a link in any component (`RESOLVE_NO_SYMLINKS`) and any way out of the root
    /// (`RESOLVE_BENEATH`) in the open itself, so no link or folder can be swapped in between
    /// a check and the open; the walk starts at the root, not at `/`; a FIFO is not waited on
    /// (see [`open_regular`]). Where the kernel has no `openat2` (before Linux 5.6, or a
    /// sandbox refusing it): [`Storage::open_file_checked`].
    pub(crate) fn open_file(&self, path: &DavPath) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
        use rustix::fs::{Mode, ResolveFlags};
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
        if !NO_OPENAT2.load(Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root_fd, path.as_rel_ospath(), SERVE_FLAGS, Mode::empty(), how) {
                Ok(fd) => return regular_only(fd),
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => NO_OPENAT2.store(true, Relaxed),
                Err(e) => return Err(e.into()),
            }
        }
        self.open_file_checked(path)
    }

    /// [`Storage::open_file`] where the kernel has no `openat2`: every folder below the area
    /// looked at first (a link or special file on the way: `None`), then an open that follows
    /// no link in the last one. A link swapped in for a folder between the two is not seen.
    fn open_file_checked(&self, path: &DavPath) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
        let raw = path.as_rel_ospath().as_os_str().as_encoded_bytes();
        if self.refuse_special_files(raw, false).is_err() {
            return Ok(None);
        }
        open_regular(&self.disk_path(path))
    }

    /// Opens the file `path` to copy from it. Not `std::fs::copy`'s open, which follows links
    /// and waits for a FIFO's writer: as downloads do ([`Storage::open_file`]), so a link or
    /// FIFO put on its path after it was looked at is refused (as not found).
    fn source(&self, path: &DavPath) -> std::io::Result<Source> {
        self.open_file(path)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is not a regular file", self.disk_path(path).display()))
        })
    }

    fn ensure_area(&self, kind: Kind, name: &str) -> FsResult<()> {
        // Asked on every request, from every thread: a shared read, and no allocation.
        if self.made.read().unwrap_or_else(|p| p.into_inner()).get(&kind).is_some_and(|names| names.contains(name)) {
            return Ok(());
        }
        let dir = self.root.join(kind.dir()).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            tracing::error!("cannot create {}: {e}", dir.display());
            FsError::GeneralFailure
        })?;
        self.made.write().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default().insert(name.to_string());
        Ok(())
    }

    /// The file on disk for a path that resolved to an area.
    pub fn disk_path(&self, path: &DavPath) -> PathBuf {
        self.root.join(path.as_rel_ospath())
    }

    /// Makes the empty file that a LOCK of an unmapped URL creates (RFC 4918 section 9.10.4),
    /// on disk before the answer. dav-server opens that file for writing but never commits it,
    /// and an upload that is never committed leaves nothing behind. A file that appeared
    /// meanwhile (a PUT was quicker) is left as it is.
    pub(crate) async fn create_empty(&self, path: &DavPath) -> FsResult<()> {
        let target = self.disk_path(path);
        blocking(move || match create_private(&target) {
            Ok(f) => {
                f.sync_all().map_err(io_err)?;
                sync_parent(&target).map_err(io_err)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(e)),
        })
        .await
    }
}

/// The key of a path in the metadata store: relative to the root, no trailing slash.
pub fn key(path: &DavPath) -> Vec<u8> {
    let mut k = path.as_rel_ospath().as_os_str().as_encoded_bytes().to_vec();
    while k.last() == Some(&b'/') {
        k.pop();
    }
    k
}

/// Bytes of the regular files under `dir`, links not followed.
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// Writes every chunk, in order, from `at`: one `pwritev` per batch of network reads (at
/// most 1024 slices, the kernel's limit), again from where a short write stopped.
fn write_all_vectored_at(file: &std::fs::File, chunks: &[Bytes], mut at: u64) -> std::io::Result<()> {
    for batch in chunks.chunks(1024) {
        let mut slices: Vec<std::io::IoSlice<'_>> = batch.iter().map(|c| std::io::IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        // Drops leading empty chunks, so an empty remainder is never written (it would read as 0).
        std::io::IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match rustix::io::pwritev(file, rest, at) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or(Err(FsError::GeneralFailure))
}

fn io_err(e: std::io::Error) -> FsError {
    FsError::from(&e)
}

/// dav-server's filesystem for every caller.
#[derive(Clone)]
pub struct ServenteFs {
    pub st: Arc<Storage>,
    local: Box<LocalFs>,
}

impl ServenteFs {
    pub fn new(st: Arc<Storage>) -> ServenteFs {
        let local = LocalFs::new(&st.root, false, false, false);
        ServenteFs { st, local }
    }

    /// Resolves and insists on a place inside an area (`depth` at least `min_depth`), writable
    /// when `write`.
    fn area(&self, path: &DavPath, c: &Caller, write: bool, min_depth: usize) -> FsResult<Node> {
        let node = self.st.resolve(path, &c.who)?;
        match &node {
            Node::Area { write: w, depth, .. } if (!write || *w) && *depth >= min_depth => Ok(node),
            Node::Area { depth, .. } if *depth >= min_depth => Err(FsError::Forbidden),
            _ => Err(FsError::Forbidden),
        }
    }

    async fn meta_of(&self, path: &DavPath, node: &Node) -> FsResult<Box<dyn DavMetaData>> {
        match node {
            Node::Root | Node::List(_) => Ok(Box::new(VirtualDir)),
            Node::Area { .. } => {
                let m = std::fs::metadata(self.st.disk_path(path)).map_err(io_err)?;
                Ok(self.wrap(Box::new(StdMeta(m)), node))
            }
        }
    }

    /// A home's folders report the home's usage as their length, which dav-server turns into
    /// the RFC 4331 `quota-used-bytes` / `quota-available-bytes` of each folder.
    fn wrap(&self, m: Box<dyn DavMetaData>, node: &Node) -> Box<dyn DavMetaData> {
        match node.quota_user() {
            Some(user) if m.is_dir() => Box::new(HomeDir { inner: m, used: self.st.used(user) }),
            _ => m,
        }
    }
}

impl GuardedFileSystem<Caller> for ServenteFs {
    fn open<'a>(&'a self, path: &'a DavPath, options: OpenOptions, c: &'a Caller) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            if !options.write {
                self.area(path, c, false, 0)?;
                return GuardedFileSystem::<()>::open(self.local.as_ref(), path, options, &()).await;
            }
            let node = self.area(path, c, true, 1)?;
            let st = self.st.clone();
            let target = path.clone();
            let quota = node.quota_user().and_then(|u| st.quota(u).map(|q| (u.to_string(), q)));
            // A whole-file PUT only looks at metadata and creates the temporary file, which the
            // kernel does from its caches: done here. A partial one copies the old file first,
            // which goes to the blocking pool.
            let mut upload = if options.truncate {
                Upload::begin(st, target, options, quota)?
            } else {
                blocking(move || Upload::begin(st, target, options, quota)).await?
            };
            upload.sync_report = Some(c.sync_micros.clone());
            Ok(Box::new(upload) as Box<dyn DavFile>)
        }
        .boxed()
    }

    fn read_dir<'a>(&'a self, path: &'a DavPath, meta: ReadDirMeta, c: &'a Caller) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let node = self.st.resolve(path, &c.who)?;
            let names: Vec<(String, PathBuf)> = match &node {
                Node::Root => {
                    let mut v = vec![Kind::Users];
                    if !self.st.areas(&c.who, Kind::Groups).is_empty() {
                        v.push(Kind::Groups);
                    }
                    if !self.st.areas(&c.who, Kind::Shared).is_empty() {
                        v.push(Kind::Shared);
                    }
                    v.into_iter().map(|k| (k.dir().to_string(), PathBuf::new())).collect()
                }
                Node::List(kind) => self
                    .st
                    .areas(&c.who, *kind)
                    .into_iter()
                    .filter(|n| self.st.ensure_area(*kind, n).is_ok())
                    .map(|n| {
                        let p = self.st.root.join(kind.dir()).join(&n);
                        (n, p)
                    })
                    .collect(),
                Node::Area { .. } => {
                    let inner = GuardedFileSystem::<()>::read_dir(self.local.as_ref(), path, meta, &()).await?;
                    let used = node.quota_user().map(|u| self.st.used(u));
                    // Links, FIFOs, sockets and devices placed by hand are left out, as in
                    // servente's own listing: not listed, copied or moved one by one (a DELETE
                    // of their folder removes them, see `remove_unlisted`).
                    let served = inner.filter_map(|e| async move {
                        match e {
                            // An entry that cannot be looked at is left to dav-server.
                            Ok(e)
                                if e.is_symlink().await.unwrap_or(false)
                                    || !(e.is_file().await.unwrap_or(true) || e.is_dir().await.unwrap_or(true)) =>
                            {
                                None
                            }
                            other => Some(other),
                        }
                    });
                    return Ok(Box::pin(
                        served.map(move |e| e.map(|e| Box::new(Entry { inner: e, home_used: used }) as Box<dyn DavDirEntry>)),
                    ) as FsStream<Box<dyn DavDirEntry>>);
                }
            };
            let kind_list = matches!(node, Node::List(Kind::Users));
            let used = kind_list.then(|| self.st.used(&c.who.user));
            let entries: Vec<FsResult<Box<dyn DavDirEntry>>> = names
                .into_iter()
                .map(|(name, disk)| {
                    let meta: Box<dyn DavMetaData> = match std::fs::metadata(&disk) {
                        Ok(m) if !disk.as_os_str().is_empty() => match used {
                            Some(u) => Box::new(HomeDir { inner: Box::new(StdMeta(m)), used: u }),
                            None => Box::new(StdMeta(m)),
                        },
                        _ => Box::new(VirtualDir),
                    };
                    Ok(Box::new(VirtualEntry { name, meta }) as Box<dyn DavDirEntry>)
                })
                .collect();
            Ok(Box::pin(futures_util::stream::iter(entries)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let node = self.st.resolve(path, &c.who)?;
            self.meta_of(path, &node).await
        }
        .boxed()
    }

    fn symlink_metadata<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let node = self.st.resolve(path, &c.who)?;
            match node {
                Node::Area { .. } => {
                    let m = std::fs::symlink_metadata(self.st.disk_path(path)).map_err(io_err)?;
                    Ok(self.wrap(Box::new(StdMeta(m)), &node))
                }
                _ => Ok(Box::new(VirtualDir) as Box<dyn DavMetaData>),
            }
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            self.area(path, c, true, 1)?;
            GuardedFileSystem::<()>::create_dir(self.local.as_ref(), path, &()).await
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            self.area(path, c, true, 1)?;
            let disk = self.st.disk_path(path);
            blocking(move || remove_unlisted(&disk).map_err(io_err)).await?;
            GuardedFileSystem::<()>::remove_dir(self.local.as_ref(), path, &()).await?;
            let st = self.st.clone();
            let k = key(path);
            blocking(move || st.db.remove_tree(&k).map_err(log_db)).await
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            let node = self.area(path, c, true, 1)?;
            let st = self.st.clone();
            let disk = st.disk_path(path);
            let k = key(path);
            let user = node.quota_user().map(str::to_string);
            blocking(move || {
                let len = remove_freeing_later(&disk).map_err(io_err)?;
                if let Some(u) = user {
                    st.add_usage(&u, -(len as i64));
                }
                st.db.remove_tree(&k).map_err(log_db)
            })
            .await
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            let a = self.area(from, c, true, 1)?;
            let b = self.area(to, c, true, 1)?;
            let (ua, ub) = (a.quota_user().map(str::to_string), b.quota_user().map(str::to_string));
            if ua != ub
                && let Some(u) = &ub
                && let Some(q) = self.st.quota(u)
            {
                let size = {
                    let disk = self.st.disk_path(from);
                    blocking(move || Ok(tree_size_or_file(&disk))).await?
                };
                if self.st.used(u) + size > q {
                    return Err(FsError::InsufficientStorage);
                }
            }
            GuardedFileSystem::<()>::rename(self.local.as_ref(), from, to, &()).await?;
            if ua != ub {
                for u in [ua, ub].into_iter().flatten() {
                    self.st.forget_usage(&u);
                }
            }
            let st = self.st.clone();
            let (kf, kt) = (key(from), key(to));
            blocking(move || st.db.move_tree(&kf, &kt).map_err(log_db)).await
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            self.area(from, c, false, 1)?;
            let b = self.area(to, c, true, 1)?;
            let st = self.st.clone();
            let (dst, from_path) = (st.disk_path(to), from.clone());
            let user = b.quota_user().map(str::to_string);
            let limit = user.as_deref().and_then(|u| st.quota(u).map(|q| (q, st.used(u))));
            let (kf, kt) = (key(from), key(to));
            blocking(move || {
                // Opened once: its length for the quota is that of the bytes copied.
                let source = st.source(&from_path).map_err(io_err)?;
                let len = source.1.len();
                let old = std::fs::symlink_metadata(&dst).map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0);
                if let Some((q, used)) = limit
                    && used.saturating_sub(old) + len > q
                {
                    return Err(FsError::InsufficientStorage);
                }
                copy_durably(&st, source, &dst)?;
                if let Some(u) = &user {
                    st.add_usage(u, len as i64 - old as i64);
                }
                st.db.copy_one(&kf, &kt).map_err(log_db)
            })
            .await
        }
        .boxed()
    }

    fn set_accessed<'a>(&'a self, path: &'a DavPath, tm: SystemTime, c: &Caller) -> FsFuture<'a, ()> {
        let allowed = self.area(path, c, true, 1).map(drop);
        async move {
            allowed?;
            GuardedFileSystem::<()>::set_accessed(self.local.as_ref(), path, tm, &()).await
        }
        .boxed()
    }

    fn set_modified<'a>(&'a self, path: &'a DavPath, tm: SystemTime, c: &'a Caller) -> FsFuture<'a, ()> {
        async move {
            self.area(path, c, true, 1)?;
            GuardedFileSystem::<()>::set_modified(self.local.as_ref(), path, tm, &()).await
        }
        .boxed()
    }

    fn have_props<'a>(&'a self, path: &'a DavPath, c: &'a Caller) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        let ok = matches!(self.st.resolve(path, &c.who), Ok(Node::Area { .. }));
        Box::pin(std::future::ready(ok))
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
        c: &'a Caller,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            self.area(path, c, true, 0)?;
            let changes: Vec<(String, String, Option<Vec<u8>>)> = patch
                .iter()
                .map(|(set, p)| {
                    (
                        p.namespace.clone().unwrap_or_default(),
                        p.name.clone(),
                        if *set { Some(p.xml.clone().unwrap_or_default()) } else { None },
                    )
                })
                .collect();
            let st = self.st.clone();
            let k = key(path);
            blocking(move || st.db.patch(&k, &changes).map_err(log_db)).await?;
            Ok(patch.into_iter().map(|(_, p)| (StatusCode::OK, DavProp { xml: None, ..p })).collect())
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool, c: &'a Caller) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            self.area(path, c, false, 0)?;
            if c.named_props {
                return Ok(Vec::new());
            }
            let st = self.st.clone();
            let k = key(path);
            let rows = blocking(move || st.db.props(&k).map_err(log_db)).await?;
            Ok(rows
                .into_iter()
                .map(|(ns, name, xml)| DavProp {
                    name,
                    prefix: None,
                    namespace: (!ns.is_empty()).then_some(ns),
                    xml: do_content.then_some(xml),
                })
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp, c: &'a Caller) -> FsFuture<'a, Vec<u8>> {
        async move {
            self.area(path, c, false, 0)?;
            let st = self.st.clone();
            let k = key(path);
            let ns = prop.namespace.unwrap_or_default();
            blocking(move || st.db.prop(&k, &ns, &prop.name).map_err(log_db)?.ok_or(FsError::NotFound)).await
        }
        .boxed()
    }

    fn get_quota<'a>(&'a self, c: &'a Caller) -> FsFuture<'a, (u64, Option<u64>)> {
        async move {
            let st = self.st.clone();
            let user = c.who.user.clone();
            blocking(move || Ok((st.used(&user), st.quota(&user)))).await
        }
        .boxed()
    }
}

fn log_db(e: String) -> FsError {
    tracing::error!("{e}");
    FsError::GeneralFailure
}

/// Opens a file to send it, as every download does (WebDAV, share links, zips): a link as the
/// last component fails (ELOOP), and a FIFO placed by hand opens without waiting for a writer
/// (`O_NONBLOCK`, which a regular file ignores). `Ok(None)` for anything that is not a regular
/// file once open.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    regular_only(rustix::fs::open(path, SERVE_FLAGS, rustix::fs::Mode::empty())?)
}

/// How a file to be sent is opened ([`open_regular`], [`Storage::open_file`]).
const SERVE_FLAGS: rustix::fs::OFlags =
    rustix::fs::OFlags::RDONLY.union(rustix::fs::OFlags::NOFOLLOW).union(rustix::fs::OFlags::NONBLOCK).union(rustix::fs::OFlags::CLOEXEC);

/// The file just opened, with its metadata, if it is a regular file.
fn regular_only(fd: std::os::fd::OwnedFd) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Creates the new file `path`, readable and writable by servente only; fails if it exists.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Removes what WebDAV never shows from a folder that is being deleted: links, FIFOs, sockets
/// and devices placed there by hand (listings leave them out, so dav-server's delete does not
/// see them, and the folder would stay, not empty). Unlinking a link leaves what it points to.
fn remove_unlisted(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let t = e.file_type()?;
        if !(t.is_file() || t.is_dir()) {
            match std::fs::remove_file(e.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

fn tree_size_or_file(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => tree_size(p),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

/// Copies through a temporary file, so the destination is either the old file or the whole copy.
fn copy_durably(st: &Storage, src: Source, dst: &Path) -> FsResult<()> {
    let tmp = temp_name(&st.tmp);
    let result = (|| {
        let mut to = create_private(&tmp)?;
        copy_regular(src, &mut to)?;
        to.sync_all()?;
        put_in_place(&tmp, dst)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// A file to copy from, opened by [`Storage::source`].
type Source = (std::fs::File, std::fs::Metadata);

/// Copies `src` into `to` (`copy_file_range` where the filesystem has it) and gives `to` its
/// permissions.
fn copy_regular((mut from, meta): Source, to: &mut std::fs::File) -> std::io::Result<u64> {
    let n = std::io::copy(&mut from, to)?;
    to.set_permissions(meta.permissions())?;
    Ok(n)
}

/// Makes the finished file `tmp` the file `target`, durably: its bytes on disk, then the
/// rename, then the folder's entry on disk. Readers see the old file or the new one, whole.
pub(crate) fn replace_durably(tmp: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    put_in_place(tmp, target)
}

/// The rename and folder sync of [`replace_durably`], for a file already synced. The file it
/// replaces, if any, is freed after the answer (see [`hold`]).
fn put_in_place(tmp: &Path, target: &Path) -> std::io::Result<()> {
    let replaced = hold(target);
    std::fs::rename(tmp, target)?;
    let synced = sync_parent(target);
    release_later(replaced);
    synced
}

/// The file or link at `path`, held (`O_PATH`: no reading rights, nothing followed) across a
/// rename that replaces it or an unlink that removes it. The last name of a file going away
/// otherwise frees its blocks inside that call, and the client waits for it: on ext4 here,
/// 0.5 ms for 1 MiB and about 20 ms for 100 MiB. Held, the file is freed when
/// [`release_later`] closes it, off the answer's path.
/// So a DELETE is answered a few milliseconds before its space is free: a client that
/// retries an upload at once after making room on a full disk may still see 507 once.
fn hold(path: &Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).ok()
}

/// Removes the name `path` at once; the file is freed later, by [`release_later`]. Gives the
/// length of what was removed if it was a regular file (0 otherwise), read from the held file
/// itself, so a quota counts exactly the bytes that go.
pub(crate) fn remove_freeing_later(path: &Path) -> std::io::Result<u64> {
    let held = hold(path);
    let len = match &held {
        Some(fd) => {
            let m = rustix::fs::fstat(fd)?;
            let regular = rustix::fs::FileType::from_raw_mode(m.st_mode) == rustix::fs::FileType::RegularFile;
            if regular { m.st_size as u64 } else { 0 }
        }
        None => std::fs::symlink_metadata(path).map(|m| if m.is_file() { m.len() } else { 0 })?,
    };
    let removed = std::fs::remove_file(path);
    release_later(held);
    removed.map(|()| len)
}

/// Closes a file held by [`hold`] on the blocking pool (inline outside a runtime), so the
/// answer does not wait for the filesystem to free it. A crash before the close loses
/// nothing: the kernel frees an unlinked file whose last holder is gone, on restart too.
/// At most [`MAX_RELEASING`] closes wait at a time; past that (a folder of thousands of
/// files deleted at once), the caller closes inline, so held descriptors and pool threads
/// stay bounded.
fn release_later(held: Option<std::os::fd::OwnedFd>) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(fd) = held else { return };
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    if RELEASING.fetch_add(1, Relaxed) >= MAX_RELEASING {
        RELEASING.fetch_sub(1, Relaxed);
        return drop(fd);
    }
    rt.spawn_blocking(move || {
        drop(fd);
        RELEASING.fetch_sub(1, Relaxed);
    });
}

/// How many held files [`release_later`] lets wait for the blocking pool at once.
const MAX_RELEASING: usize = 32;
static RELEASING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn sync_parent(p: &Path) -> std::io::Result<()> {
    match p.parent() {
        // Shared with other callers syncing the same folder at the same time.
        Some(d) => crate::dirsync::sync_folder(d),
        None => Ok(()),
    }
}

fn temp_name(dir: &Path) -> PathBuf {
    let r: [u8; 12] = servente_auth::secret::random_bytes();
    let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("up-{name}"))
}

/// Bytes gathered before they go to disk in one blocking call (one `pwritev`). Small enough
/// that most of a 1 MiB upload is written while the rest still arrives.
const WRITE_BATCH: usize = 256 << 10;

/// The most bytes written between two writeback hints during an upload.
const SYNC_EVERY: u64 = 8 << 20;

/// How many written bytes wait for the next writeback hint, once the upload has written up to
/// offset `written` (a resumed upload, starting further in, is hinted as a large one is):
/// every batch while the upload is small, so that its final fsync finds most of
/// it on disk already (a 1 MiB PUT: fsync and rename 0.5-0.65 ms instead of 0.9-1.2), then a quarter of
/// what is written, up to [`SYNC_EVERY`], so that a large upload does not spend its blocking
/// thread on hints (with a hint every batch, a 100 MiB PUT took about 5% longer).
fn hint_every(written: u64) -> u64 {
    (written / 4).clamp(WRITE_BATCH as u64, SYNC_EVERY)
}

/// A PUT in progress: bytes go to a temporary file beside the files root and replace the target
/// only on [`DavFile::flush`], after fsync. Dropped before that (the client vanished, the body
/// was short, the quota was hit), the temporary file is removed and the old version stays.
pub struct Upload {
    st: Arc<Storage>,
    target: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    /// The batch being written; it holds the file meanwhile.
    inflight: Option<tokio::task::JoinHandle<FsResult<std::fs::File>>>,
    unsynced: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Where the next byte goes.
    pos: u64,
    /// Bytes the client sent.
    received: u64,
    /// Size of the file being built (the old content counts for partial writes).
    end: u64,
    expected: Option<u64>,
    /// The home's owner and quota, when one applies.
    quota: Option<(String, u64)>,
    /// Growth over the old file reserved against the quota (so concurrent uploads cannot
    /// together pass it).
    reserved: u64,
    old_len: u64,
    committed: Option<Box<dyn DavMetaData>>,
    /// Where to report the time spent in fsync.
    sync_report: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload").field("target", &self.target).field("received", &self.received).finish_non_exhaustive()
    }
}

impl Upload {
    /// `path`: the file to write, which resolved to an area.
    fn begin(st: Arc<Storage>, path: DavPath, o: OpenOptions, quota: Option<(String, u64)>) -> FsResult<Upload> {
        let target = st.disk_path(&path);
        let old = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => return Err(FsError::Forbidden),
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e)),
        };
        if old.is_some() && o.create_new {
            return Err(FsError::Exists);
        }
        if old.is_none() && !o.create && !o.create_new {
            return Err(FsError::NotFound);
        }
        match target.parent().map(std::fs::metadata) {
            Some(Ok(m)) if m.is_dir() => {}
            _ => return Err(FsError::NotFound),
        }
        let old_len = old.as_ref().map(|m| m.len()).unwrap_or(0);
        let keep_old = old.is_some() && !o.truncate;
        let tmp = temp_name(&st.tmp);
        let file = create_private(&tmp).map_err(io_err)?;
        let mut u = Upload {
            st,
            target,
            tmp,
            file: Some(file),
            inflight: None,
            unsynced: 0,
            pending: Vec::new(),
            pending_len: 0,
            pos: 0,
            received: 0,
            end: 0,
            expected: o.size,
            quota,
            reserved: 0,
            old_len,
            committed: None,
            sync_report: None,
        };
        // A declared size is reserved at once: an upload that cannot fit fails before its body.
        if let Some(size) = o.size
            && !keep_old
        {
            u.reserve(size)?;
        }
        if keep_old {
            let file = u.file.as_mut().ok_or(FsError::GeneralFailure)?;
            copy_regular(u.st.source(&path).map_err(io_err)?, file).map_err(io_err)?;
            u.end = old_len;
            if o.append {
                u.pos = old_len;
            }
        }
        Ok(u)
    }

    /// Waits for the write in flight, if any (its error, such as a full disk, surfaces here).
    async fn settle(&mut self) -> FsResult<()> {
        if let Some(h) = self.inflight.take() {
            self.file = Some(h.await.unwrap_or(Err(FsError::GeneralFailure))?);
        }
        Ok(())
    }

    /// The gathered bytes, with the offset they go to and their length; the position moves
    /// past them.
    fn take_batch(&mut self) -> (Vec<Bytes>, u64, u64) {
        let chunks = std::mem::take(&mut self.pending);
        let len = std::mem::take(&mut self.pending_len) as u64;
        let at = self.pos;
        self.pos += len;
        (chunks, at, len)
    }

    /// Writes the gathered bytes at their offset on the blocking pool. The write runs while the
    /// next bytes arrive (one batch in flight); every [`hint_every`] bytes it also asks the
    /// kernel to start writing them to disk without waiting (`posix_fadvise(DONTNEED)` starts
    /// writeback on Linux; the pages it would drop are those already written back, which is
    /// rarely any, since it looks at once: `fincore` finds 1 and 10 MiB uploads wholly cached
    /// after their PUT), so the final fsync has little left to wait for.
    async fn write_pending(&mut self, wait: bool) -> FsResult<()> {
        if !self.pending.is_empty() {
            self.settle().await?;
            let (chunks, at, len) = self.take_batch();
            let file = self.file.take().ok_or(FsError::GeneralFailure)?;
            self.unsynced += len;
            let sync = (self.unsynced >= hint_every(at + len)).then(|| (at + len - self.unsynced, self.unsynced));
            if sync.is_some() {
                self.unsynced = 0;
            }
            self.inflight = Some(tokio::task::spawn_blocking(move || {
                write_all_vectored_at(&file, &chunks, at).map_err(io_err)?;
                if let Some((from, n)) = sync {
                    // A hint: if it fails, the final fsync does all the work.
                    let _ = rustix::fs::fadvise(&file, from, std::num::NonZeroU64::new(n), rustix::fs::Advice::DontNeed);
                }
                Ok(file)
            }));
        }
        if wait {
            self.settle().await?;
        }
        Ok(())
    }

    fn take(&mut self, b: Bytes) -> FsResult<()> {
        self.received += b.len() as u64;
        self.end = self.end.max(self.pos + self.pending_len as u64 + b.len() as u64);
        self.reserve(self.end)?;
        self.pending_len += b.len();
        self.pending.push(b);
        Ok(())
    }
}

impl Upload {
    /// Makes sure the quota has room for a file of `end` bytes (replacing the old one).
    fn reserve(&mut self, end: u64) -> FsResult<()> {
        let Some((user, q)) = &self.quota else { return Ok(()) };
        let need = end.saturating_sub(self.old_len);
        if need > self.reserved {
            if !self.st.try_reserve(user, need - self.reserved, *q) {
                return Err(FsError::InsufficientStorage);
            }
            self.reserved = need;
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some((user, _)) = &self.quota {
            self.st.release(user, self.reserved);
        }
        if self.committed.is_none() {
            // Often on a runtime thread (the client went away): the name goes now, the
            // blocks are freed on the blocking pool when the last descriptor closes. It is
            // ours unless a write is in flight; then that write's task closes it there.
            let file = self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
            release_later(file.map(std::os::fd::OwnedFd::from));
        }
    }
}

impl DavFile for Upload {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            if let Some(m) = &self.committed {
                return Ok(m.clone());
            }
            self.settle().await?;
            let f = self.file.as_ref().ok_or(FsError::GeneralFailure)?;
            Ok(Box::new(StdMeta(f.metadata().map_err(io_err)?)) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let b = buf.copy_to_bytes(buf.remaining());
        self.write_bytes(b)
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move {
            self.take(buf)?;
            if self.pending_len >= WRITE_BATCH {
                self.write_pending(false).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        Box::pin(std::future::ready(Err(FsError::NotImplemented)))
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            self.write_pending(true).await?;
            self.pos = match pos {
                SeekFrom::Start(n) => n,
                SeekFrom::End(n) => self.end.checked_add_signed(n).ok_or(FsError::GeneralFailure)?,
                SeekFrom::Current(n) => self.pos.checked_add_signed(n).ok_or(FsError::GeneralFailure)?,
            };
            Ok(self.pos)
        }
        .boxed()
    }

    /// The commit: dav-server calls this once the whole body has arrived.
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if self.committed.is_some() {
                return Ok(());
            }
            if let Some(n) = self.expected
                && n != self.received
            {
                // Short or long body: dav-server answers 400; the old file stays.
                return Err(FsError::GeneralFailure);
            }
            // The last bytes are written in the same blocking call as the fsync: a small
            // upload then takes one trip to the blocking pool, not two.
            self.settle().await?;
            let (chunks, at, _) = self.take_batch();
            let file = self.file.take().ok_or(FsError::GeneralFailure)?;
            let (tmp, target) = (self.tmp.clone(), self.target.clone());
            let (meta, took) = blocking(move || {
                write_all_vectored_at(&file, &chunks, at).map_err(io_err)?;
                let t = std::time::Instant::now();
                file.sync_all().map_err(io_err)?;
                put_in_place(&tmp, &target).map_err(io_err)?;
                let took = t.elapsed();
                Ok((file.metadata().map_err(io_err)?, took))
            })
            .await?;
            if let Some(r) = &self.sync_report {
                r.store(took.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some((user, _)) = &self.quota {
                self.st.add_usage(user, meta.len() as i64 - self.old_len as i64);
                self.st.release(user, std::mem::take(&mut self.reserved));
            } else if let Ok(rel) = self.target.strip_prefix(self.st.root.join("users"))
                && let Some(user) = rel.iter().next().and_then(|u| u.to_str())
            {
                self.st.add_usage(user, meta.len() as i64 - self.old_len as i64);
            }
            self.committed = Some(Box::new(StdMeta(meta)));
            Ok(())
        }
        .boxed()
    }
}

/// Metadata of a file or folder on disk.
#[derive(Debug, Clone)]
pub struct StdMeta(pub std::fs::Metadata);

impl DavMetaData for StdMeta {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn modified(&self) -> FsResult<SystemTime> {
        self.0.modified().map_err(io_err)
    }
    fn is_dir(&self) -> bool {
        self.0.is_dir()
    }
    fn is_symlink(&self) -> bool {
        self.0.file_type().is_symlink()
    }
    fn created(&self) -> FsResult<SystemTime> {
        self.0.created().or_else(|_| self.0.modified()).map_err(io_err)
    }
    fn etag(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let t = self.0.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(Etag { ino: self.0.ino(), len: self.0.is_file().then_some(self.0.len()), modified: t }.to_string())
    }
    fn executable(&self) -> FsResult<bool> {
        use std::os::unix::fs::PermissionsExt;
        Ok(self.0.is_file() && self.0.permissions().mode() & 0o100 != 0)
    }
}

/// The ETag of a file or folder, the same as dav-server's local filesystem gives (Apache's:
/// inode, length for a regular file, modification time in µs), so ETags from either path
/// match in If headers. Written in place by PROPFIND, as a String by [`StdMeta`].
pub struct Etag {
    pub ino: u64,
    /// `None` but for a regular file.
    pub len: Option<u64>,
    /// Since the epoch.
    pub modified: std::time::Duration,
}

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.modified.as_secs() * 1_000_000 + u64::from(self.modified.subsec_nanos()) / 1000;
        match self.len {
            Some(len) => write!(f, "{:x}-{len:x}-{micros:x}", self.ino),
            None => write!(f, "{:x}-{micros:x}", self.ino),
        }
    }
}

/// `/`, `/users/`, `/groups/`, `/shared/`: read-only listings.
#[derive(Debug, Clone)]
struct VirtualDir;

impl DavMetaData for VirtualDir {
    fn len(&self) -> u64 {
        0
    }
    /// The listings change with the directory and config; their date is when servente started.
    fn modified(&self) -> FsResult<SystemTime> {
        static STARTED: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
        Ok(*STARTED.get_or_init(SystemTime::now))
    }
    fn is_dir(&self) -> bool {
        true
    }
    fn etag(&self) -> Option<String> {
        None
    }
}

/// A folder of a home, reporting the home's usage as its length (see [`ServenteFs::wrap`]).
#[derive(Debug, Clone)]
struct HomeDir {
    inner: Box<dyn DavMetaData>,
    used: u64,
}

impl DavMetaData for HomeDir {
    fn len(&self) -> u64 {
        self.used
    }
    fn modified(&self) -> FsResult<SystemTime> {
        self.inner.modified()
    }
    fn is_dir(&self) -> bool {
        true
    }
    fn etag(&self) -> Option<String> {
        self.inner.etag()
    }
    fn created(&self) -> FsResult<SystemTime> {
        self.inner.created()
    }
}

struct VirtualEntry {
    name: String,
    meta: Box<dyn DavMetaData>,
}

impl DavDirEntry for VirtualEntry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        Box::pin(std::future::ready(Ok(self.meta.clone())))
    }
}

/// An entry of a real folder; folders of a home report the home's usage.
struct Entry {
    inner: Box<dyn DavDirEntry>,
    home_used: Option<u64>,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.inner.name()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            let m = self.inner.metadata().await?;
            Ok(match self.home_used {
                Some(used) if m.is_dir() => Box::new(HomeDir { inner: m, used }) as Box<dyn DavMetaData>,
                _ => m,
            })
        }
        .boxed()
    }
    fn is_dir(&self) -> FsFuture<'_, bool> {
        self.inner.is_dir()
    }
    fn is_file(&self) -> FsFuture<'_, bool> {
        self.inner.is_file()
    }
    fn is_symlink(&self) -> FsFuture<'_, bool> {
        self.inner.is_symlink()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where an upload written in batches of `WRITE_BATCH` gets its writeback hints, and what
    /// is left for the final fsync (the last batch is written with it, unhinted).
    fn hints(size: u64) -> (Vec<u64>, u64) {
        let batch = WRITE_BATCH as u64;
        let (mut written, mut unsynced, mut at) = (0, 0, Vec::new());
        while size - written > batch {
            written += batch;
            unsynced += batch;
            if unsynced >= hint_every(written) {
                at.push(written);
                unsynced = 0;
            }
        }
        (at, unsynced + size - written)
    }

    #[test]
    fn copies_take_regular_files_only_with_their_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let settings = StorageSettings { default_quota: 0, quotas: HashMap::new(), group_folders: false, folders: Vec::new() };
        let st = Storage::open(&root, &dir.path().join("files.db"), settings).expect("storage");
        let home = root.join("users/alice");
        std::fs::create_dir_all(home.join("d")).expect("mkdir");
        let at = |p: &str| DavPath::new(&format!("/users/alice/{p}")).expect("path");
        let src = home.join("d/src");
        std::fs::write(&src, b"the old bytes").expect("write");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let mut to = tempfile::tempfile().expect("temp file");
        assert_eq!(copy_regular(st.source(&at("d/src")).expect("opened"), &mut to).expect("copied"), 13);
        assert_eq!(to.metadata().expect("metadata").permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read(&src).expect("read"), b"the old bytes");

        // A link and a FIFO in a file's place, and a link as a folder on the way: refused at
        // once, neither followed nor waited on.
        std::os::unix::fs::symlink(&src, home.join("link")).expect("symlink");
        std::os::unix::fs::symlink(home.join("d"), home.join("dlink")).expect("symlink");
        let fifo = home.join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR, 0)
            .expect("mkfifo");
        for p in ["link", "dlink/src", "fifo"] {
            let e = st.source(&at(p)).expect_err("not a regular file");
            // ELOOP for a link (RESOLVE_NO_SYMLINKS), not found for the FIFO.
            let eloop = e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error());
            assert!(eloop || e.kind() == std::io::ErrorKind::NotFound, "{p}: {e}");
            // The way taken without openat2 refuses the same (a link at the end: ELOOP too).
            match st.open_file_checked(&at(p)) {
                Ok(None) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {}
                other => panic!("{p} without openat2: {other:?}"),
            }
        }
        let (_, meta) = st.open_file_checked(&at("d/src")).expect("opened").expect("a regular file");
        assert_eq!(meta.len(), 13);

        // The durable copy leaves the copy in place and nothing in the temporary folder; one
        // that fails (its destination's folder is missing) leaves neither.
        let dst = home.join("dst");
        copy_durably(&st, st.source(&at("d/src")).expect("opened"), &dst).expect("copied");
        assert_eq!(std::fs::read(&dst).expect("read"), b"the old bytes");
        assert!(copy_durably(&st, st.source(&at("d/src")).expect("opened"), &home.join("missing/dst2")).is_err());
        assert!(!home.join("missing/dst2").exists());
        assert_eq!(std::fs::read_dir(root.join(".tmp")).expect("list").count(), 0, "no temporary file left");
    }

    #[test]
    fn a_held_file_outlives_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (target, tmp) = (dir.path().join("target"), dir.path().join("tmp"));
        std::fs::write(&target, b"old").expect("write");
        std::fs::write(&tmp, b"new").expect("write");
        let held = hold(&target).expect("held");
        let old_ino = rustix::fs::fstat(&held).expect("fstat").st_ino;
        put_in_place(&tmp, &target).expect("replaced");
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
        // What the hold keeps is the old file, now without a name: still there, not freed.
        let kept = rustix::fs::fstat(&held).expect("fstat");
        assert_eq!((kept.st_ino, kept.st_nlink), (old_ino, 0));
        release_later(Some(held));

        // A name that is not there holds nothing; a link is held as itself, not followed.
        assert!(hold(&dir.path().join("missing")).is_none());
        std::os::unix::fs::symlink(&target, dir.path().join("link")).expect("symlink");
        let link = hold(&dir.path().join("link")).expect("link held");
        assert_eq!(rustix::fs::fstat(&link).expect("fstat").st_mode & 0o170000, 0o120000);
        // In a runtime, the close goes to the blocking pool and does not wait for it.
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(async move { release_later(Some(link)) });
    }

    #[test]
    fn closes_waiting_for_the_pool_are_bounded() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            // A folder of many files deleted at once: however slow the pool, no more than
            // the bound wait for it; the others are closed inline.
            for i in 0..200 {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, b"x").expect("write");
                assert_eq!(remove_freeing_later(&p).expect("removed"), 1, "the length removed");
                assert!(RELEASING.load(Relaxed) <= MAX_RELEASING);
            }
        });
        drop(rt);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        // A link removed is not counted as the file it points to.
        std::fs::write(dir.path().join("big"), [0u8; 4096]).expect("write");
        std::os::unix::fs::symlink(dir.path().join("big"), dir.path().join("link")).expect("symlink");
        assert_eq!(remove_freeing_later(&dir.path().join("link")).expect("removed"), 0);
        assert!(remove_freeing_later(&dir.path().join("link")).is_err(), "already gone");
    }

    #[test]
    fn small_uploads_are_hinted_every_batch_large_ones_ever_more_rarely() {
        let k = 1024;
        assert_eq!(hints(1 << 20), (vec![256 * k, 512 * k, 768 * k], 256 * k), "1 MiB: all but the last batch");
        let (at, left) = hints(100 << 20);
        assert!(at.len() < 30, "100 MiB: {} hints", at.len());
        assert!(left <= SYNC_EVERY, "100 MiB: {left} bytes left for the fsync");
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "hints spread out as the upload grows: {gaps:?}");
        assert_eq!(gaps.last(), Some(&SYNC_EVERY));
    }

    #[test]
    fn vectored_writes_put_every_chunk_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
        // More chunks than one pwritev takes, some of them empty, of uneven sizes.
        let chunks: Vec<Bytes> = (0..2500).map(|i| Bytes::from(vec![(i % 251) as u8; (i * 37) % 300])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        write_all_vectored_at(&file, &chunks, 10).expect("write");
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), 10 + expected.len());
        assert_eq!(&got[10..], &expected[..]);
        write_all_vectored_at(&file, &[], 0).expect("nothing to write");
    }
}

//! Finding a request's file on disk safely, and the cache of what was found.
//!
//! [`resolve`] turns a clean relative path into a [`Target`]: a file (with its metadata,
//! validators, headers and, when small enough, its bytes), a folder, or a refusal. It applies
//! the site's symlink policy by comparing the canonical path with the root. Results are kept
//! in a per-site [`FileCache`] and looked at again on disk once they are older than
//! `cache.revalidate_after`; an unchanged file keeps its cached bytes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use servente_config::SymlinkPolicy;

use crate::negotiate::Coding;

/// Memory limits shared by the caches of every site.
pub struct Budget {
    used: AtomicU64,
    pub max_total: u64,
    pub max_file: u64,
    pub revalidate_ms: u64,
    epoch: Instant,
}

impl Budget {
    pub fn new(max_total: u64, max_file: u64, revalidate_ms: u64) -> Arc<Self> {
        Arc::new(Budget { used: AtomicU64::new(0), max_total, max_file, revalidate_ms, epoch: Instant::now() })
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Reserves `n` bytes if they fit; the returned charge gives them back when dropped.
    pub fn reserve(self: &Arc<Self>, n: u64) -> Option<Charge> {
        if n > self.max_file {
            return None;
        }
        let mut used = self.used.load(Relaxed);
        loop {
            if used + n > self.max_total {
                return None;
            }
            match self.used.compare_exchange_weak(used, used + n, Relaxed, Relaxed) {
                Ok(_) => return Some(Charge { budget: self.clone(), bytes: n }),
                Err(actual) => used = actual,
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }
}

/// Bytes held against the [`Budget`] until dropped.
pub struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Relaxed);
    }
}

/// Bytes kept in memory, with their charge.
pub struct CachedBytes {
    pub bytes: Bytes,
    _charge: Charge,
}

/// A precompressed sidecar file (`x.css.br` beside `x.css`).
pub struct Sidecar {
    pub path: PathBuf,
    pub len: u64,
    pub etag: HeaderValue,
    pub body: Option<CachedBytes>,
}

/// Everything needed to answer for one file, computed once per version of the file.
pub struct FileMeta {
    pub path: PathBuf,
    pub len: u64,
    /// `len` as a Content-Length value, made once.
    pub len_value: HeaderValue,
    /// Whole seconds since the epoch.
    pub modified: u64,
    identity: (u64, u64, i64, i64, u64),
    /// Strong entity tags: identity, then one per [`Coding`] for on-the-fly compression.
    pub etags: [HeaderValue; 4],
    pub content_type: HeaderValue,
    /// Headers every response for this file carries (type, validators, rules), without length.
    pub headers: HeaderMap,
    pub compressible: bool,
    pub body: Option<CachedBytes>,
    pub sidecars: [Option<Sidecar>; 3],
    /// On-the-fly compressed bodies of a cached file, made on first demand; `None` inside when
    /// compression would not make it smaller or there is no room in the budget.
    pub encoded: [tokio::sync::OnceCell<Option<CachedBytes>>; 3],
}

/// What a path leads to.
pub enum Target {
    File(Arc<FileMeta>),
    /// A folder asked for without a trailing slash: redirect to add it.
    AddSlash,
    /// A folder with no index file.
    Folder(PathBuf),
    NotFound,
    /// Refused by the symlink policy, or unreadable.
    Forbidden,
}

struct Entry {
    checked_ms: AtomicU64,
    target: Arc<Target>,
}

/// What `resolve` needs to know of a site; shared with the blocking pool.
pub struct Resolver {
    pub root: PathBuf,
    pub index: Vec<String>,
    pub symlinks: SymlinkPolicy,
    pub hide_dotfiles: bool,
    pub precompressed: bool,
    /// Media types compressed on the fly (`text/*` style wildcards allowed).
    pub compress_types: Vec<String>,
    /// Path patterns and the headers they add.
    pub rules: Vec<(String, Vec<(HeaderName, HeaderValue)>)>,
    pub budget: Arc<Budget>,
}

impl Resolver {
    pub fn is_compressible(&self, mime: &str) -> bool {
        let essence = mime.split(';').next().unwrap_or("").trim();
        self.compress_types.iter().any(|t| match t.strip_suffix("/*") {
            Some(major) => essence.split('/').next() == Some(major),
            None => essence == t,
        })
    }

    /// Whether the symlink policy lets a request reach `path`.
    pub fn allows(&self, path: &Path) -> bool {
        checked_metadata(self, path).is_ok()
    }

    fn rule_headers(&self, path: &str) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.rules.iter().filter(move |(p, _)| crate::negotiate::glob_match(p, path)).flat_map(|(_, h)| h.iter())
    }
}

/// The result of a cache lookup.
pub enum Lookup {
    /// Fresh enough to use.
    Hit(Arc<Target>),
    /// Missing or stale (with what was cached): the caller resolves and calls [`FileCache::store`].
    Miss(Option<Arc<Target>>),
}

/// Most entries one site's cache holds; past it the cache starts over, so a client asking
/// for endless distinct missing paths cannot grow it without bound.
const MAX_ENTRIES: usize = 100_000;

/// The per-site cache of resolved paths.
pub struct FileCache {
    map: DashMap<String, Entry, RandomState>,
    budget: Arc<Budget>,
}

impl FileCache {
    pub fn new(budget: Arc<Budget>) -> Self {
        FileCache { map: DashMap::with_hasher(RandomState::default()), budget }
    }

    /// Looks `key` (the clean URL path) up. When an entry is stale, only the first request
    /// to see it gets `Miss` and revalidates; the others keep serving what is cached meanwhile.
    pub fn lookup(&self, key: &str, now: Instant) -> Lookup {
        let now = self.budget.ms_since_epoch(now);
        match self.map.get(key) {
            Some(e) => {
                let checked = e.checked_ms.load(Relaxed);
                if now.saturating_sub(checked) < self.budget.revalidate_ms
                    || e.checked_ms.compare_exchange(checked, now, Relaxed, Relaxed).is_err()
                {
                    Lookup::Hit(e.target.clone())
                } else {
                    Lookup::Miss(Some(e.target.clone()))
                }
            }
            None => Lookup::Miss(None),
        }
    }

    pub fn store(&self, key: String, target: Arc<Target>) {
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        let now = self.budget.ms_since_epoch(Instant::now());
        self.map.insert(key, Entry { checked_ms: AtomicU64::new(now), target });
    }
}

/// Looks a clean relative path up on disk; see the module docs. `previous` is reused when the
/// file has not changed.
pub fn resolve(o: &Resolver, relative: &str, trailing_slash: bool, url_path: &str, previous: Option<Arc<Target>>) -> Target {
    let budget = &o.budget;
    let full = if relative.is_empty() { o.root.clone() } else { o.root.join(relative) };
    let meta = match checked_metadata(o, &full) {
        Ok(m) => m,
        Err(t) => return t,
    };
    if meta.is_dir() {
        if !trailing_slash {
            return Target::AddSlash;
        }
        for name in &o.index {
            let candidate = full.join(name);
            if let Ok(m) = checked_metadata(o, &candidate)
                && m.is_file()
            {
                return file_target(o, candidate, &m, url_path, previous, budget);
            }
        }
        return Target::Folder(full);
    }
    if !meta.is_file() {
        return Target::NotFound;
    }
    if trailing_slash {
        // `/file.txt/` names a folder that is not one.
        return Target::NotFound;
    }
    file_target(o, full, &meta, url_path, previous, budget)
}

/// Metadata of `path` after the symlink policy allowed it.
fn checked_metadata(o: &Resolver, path: &Path) -> Result<std::fs::Metadata, Target> {
    let not_found = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => Target::NotFound,
        _ => Target::Forbidden,
    };
    match o.symlinks.get() {
        SymlinkPolicy::Follow => std::fs::metadata(path).map_err(not_found),
        policy => {
            let canonical = std::fs::canonicalize(path).map_err(not_found)?;
            let allowed = if policy == SymlinkPolicy::Refuse { canonical == path } else { canonical.starts_with(&o.root) };
            if !allowed {
                return Err(Target::Forbidden);
            }
            if o.hide_dotfiles
                && let Ok(inside) = canonical.strip_prefix(&o.root)
                && inside.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.') && c.as_os_str() != ".well-known")
            {
                // A link to a hidden file is as hidden as the file.
                return Err(Target::NotFound);
            }
            std::fs::metadata(&canonical).map_err(not_found)
        }
    }
}

fn identity(m: &std::fs::Metadata) -> (u64, u64, i64, i64, u64) {
    (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len())
}

fn file_target(
    o: &Resolver,
    path: PathBuf,
    meta: &std::fs::Metadata,
    url_path: &str,
    previous: Option<Arc<Target>>,
    budget: &Arc<Budget>,
) -> Target {
    let id = identity(meta);
    if let Some(prev) = previous
        && let Target::File(f) = prev.as_ref()
        && f.identity == id
        && f.path == path
        && sidecars_unchanged(o, f)
    {
        return Target::File(f.clone());
    }
    let len = meta.len();
    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()).unwrap_or(0);
    let base_tag = format!("{:x}-{:x}{:x}", len, meta.mtime(), meta.mtime_nsec());
    let etags = ["", "-br", "-zst", "-gz"].map(|suffix| etag_value(&format!("\"{base_tag}{suffix}\"")));
    let mime = content_type_for(&path);
    let compressible = o.is_compressible(mime.to_str().unwrap_or(""));
    let sidecars: [Option<Sidecar>; 3] =
        if o.precompressed { Coding::ALL.map(|c| sidecar(&path, c, meta, &base_tag, budget)) } else { [None, None, None] };
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::CONTENT_TYPE, mime.clone());
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(modified))) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if compressible || sidecars.iter().any(Option::is_some) {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    for (name, value) in o.rule_headers(url_path) {
        headers.insert(name.clone(), value.clone());
    }
    let body = read_small(&path, len, budget);
    Target::File(Arc::new(FileMeta {
        path,
        len,
        len_value: HeaderValue::from(len),
        modified,
        identity: id,
        etags,
        content_type: mime,
        headers,
        compressible,
        body,
        sidecars,
        encoded: Default::default(),
    }))
}

fn sidecars_unchanged(o: &Resolver, f: &FileMeta) -> bool {
    if !o.precompressed {
        return true;
    }
    Coding::ALL.iter().all(|c| {
        let path = sidecar_path(&f.path, *c);
        let now = std::fs::metadata(&path).ok().filter(|m| m.is_file()).map(|m| m.len());
        match (&f.sidecars[c.index()], now) {
            (None, None) => true,
            (Some(s), Some(len)) => s.len == len,
            // A sidecar older than its file is stale and was skipped: look again.
            _ => false,
        }
    })
}

fn sidecar_path(path: &Path, c: Coding) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".");
    s.push(c.extension());
    PathBuf::from(s)
}

fn sidecar(path: &Path, c: Coding, original: &std::fs::Metadata, base_tag: &str, budget: &Arc<Budget>) -> Option<Sidecar> {
    let path = sidecar_path(path, c);
    let m = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
    // Fresh means not older than the file it compresses.
    if (m.mtime(), m.mtime_nsec()) < (original.mtime(), original.mtime_nsec()) {
        return None;
    }
    let len = m.len();
    let etag = etag_value(&format!("\"{base_tag}-{}{:x}\"", c.extension(), len));
    let body = read_small(&path, len, budget);
    Some(Sidecar { path, len, etag, body })
}

/// Entity tags are made of hex digits, dashes and letters, so they are always valid values.
fn etag_value(tag: &str) -> HeaderValue {
    HeaderValue::from_str(tag).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Reads a file whole for the cache. Large ones keep their file open beside the bytes, so that
/// plain connections send them with `sendfile` (see `servente_core::sendfile`).
fn read_small(path: &Path, len: u64, budget: &Arc<Budget>) -> Option<CachedBytes> {
    use std::io::Read;
    let charge = budget.reserve(len)?;
    let mut file = std::fs::File::open(path).ok()?;
    let mut data = Vec::with_capacity(len as usize);
    file.read_to_end(&mut data).ok()?;
    // The file changed between stat and read: do not cache a mix of versions.
    (data.len() as u64 == len).then(|| CachedBytes { bytes: servente_core::sendfile::mirrored(data, file), _charge: charge })
}

/// Keeps freshly compressed bytes if they fit in the budget.
pub fn cache_bytes(bytes: Bytes, budget: &Arc<Budget>) -> Option<CachedBytes> {
    let charge = budget.reserve(bytes.len() as u64)?;
    Some(CachedBytes { bytes, _charge: charge })
}

/// The Content-Type of a file from its extension; text gets `charset=utf-8`.
pub fn content_type_for(path: &Path) -> HeaderValue {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let Some(mime) = mime_guess::from_ext(ext).first_raw() else {
        return HeaderValue::from_static("application/octet-stream");
    };
    if mime.starts_with("text/") || mime == "application/javascript" || mime == "image/svg+xml" {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8")).unwrap_or(HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static(mime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for(Path::new("a.html")), "text/html; charset=utf-8");
        assert_eq!(content_type_for(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(content_type_for(Path::new("a.png")), "image/png");
        assert_eq!(content_type_for(Path::new("a.wasm")), "application/wasm");
        assert_eq!(content_type_for(Path::new("noext")), "application/octet-stream");
    }

    #[test]
    fn budget_is_bounded_and_returned() {
        let b = Budget::new(100, 60, 1000);
        let c1 = b.reserve(60).expect("fits");
        assert!(b.reserve(61).is_none(), "over max_file");
        assert!(b.reserve(50).is_none(), "over max_total");
        drop(c1);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(50).is_some());
    }
}

//! WebDAV locks: servente's lock system, kept in memory for every check and written through
//! to the file role's store (`files.db`), so that a restart keeps the locks clients hold (a
//! client that still holds a token, as Office or Finder do for hours, would otherwise get 412
//! on its next conditional write). Expired locks are dropped.
//!
//! The rules are those of dav-server's in-memory `MemLs` (which passes litmus): a lock covers
//! its own path, and everything under it when deep; exclusive locks conflict with any other,
//! shared ones only with exclusive ones; a request holds a lock when it submits its token and
//! is its principal. Written here because `MemLs` cannot take back a lock with a given token.
//! Locks are few, so they are kept in a flat list.
//!
//! It also answers whether a path may be locked at all, so that the fast PROPFIND path
//! ([`crate::propfind`]) knows when it can skip lock discovery (almost always) and when
//! dav-server must answer.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use futures_util::FutureExt;
use xmltree::Element;

use crate::fs::Storage;

#[derive(Debug, Clone)]
pub struct Locks {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    locks: Vec<DavLock>,
    /// Where locks are written through; set by the files role ([`Locks::attach`]).
    store: Option<Arc<Storage>>,
    /// The stored locks were read (once per process).
    loaded: bool,
    /// Changes for the store, written on the blocking pool before the request is answered.
    pending: Vec<Write>,
}

#[derive(Debug)]
enum Write {
    Save(crate::db::StoredLock),
    Remove(Vec<String>),
}

struct Job {
    st: Arc<Storage>,
    pending: Vec<Write>,
    done: tokio::sync::oneshot::Sender<()>,
}

/// The lock writer thread's queue, started on first use.
fn writer() -> &'static std::sync::mpsc::Sender<Job> {
    static WRITER: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("servente-locks".into()).spawn(move || {
            for job in rx {
                apply(&job.st, job.pending);
                let _ = job.done.send(());
            }
        });
        if let Err(e) = spawned {
            // The sender then fails at once and the caller writes itself.
            tracing::warn!(error = %e, "cannot start the WebDAV lock writer");
        }
        tx
    })
}

/// Writes `pending` to `st`'s store (on the caller's thread: call it where blocking is fine).
fn apply(st: &Storage, pending: Vec<Write>) {
    for w in pending {
        let r = match &w {
            Write::Save(l) => st.db.save_lock(l),
            Write::Remove(tokens) => st.db.remove_locks(tokens),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not write a WebDAV lock change to the store: after a restart the store's older state comes back");
        }
    }
}

/// Locks live as long as the process, across config reloads (clients keep their tokens).
pub fn shared() -> Locks {
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    LOCKS.get_or_init(|| Locks { inner: Default::default() }).clone()
}

/// The non-empty segments of a path: `/a/b/` and `/a/b` are the same resource.
fn segs(p: &DavPath) -> Vec<&[u8]> {
    p.as_bytes().split(|&c| c == b'/').filter(|s| !s.is_empty()).collect()
}

/// `a` is `b` or one of its ancestors.
fn covers(a: &[&[u8]], b: &[&[u8]]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn holds(l: &DavLock, principal: Option<&str>, ignore_principal: bool, tokens: &[String]) -> bool {
    tokens.contains(&l.token) && (ignore_principal || principal == l.principal.as_deref())
}

impl Inner {
    /// Drops expired locks (and their stored copies).
    fn expire(&mut self) {
        let now = SystemTime::now();
        let gone: Vec<String> = self.locks.iter().filter(|l| l.timeout_at.is_some_and(|t| t <= now)).map(|l| l.token.clone()).collect();
        if !gone.is_empty() {
            self.locks.retain(|l| !gone.contains(&l.token));
            self.unstore(&gone);
        }
    }

    /// Locks on `path` and its ancestors, from the root down.
    fn along(&self, path: &DavPath) -> Vec<&DavLock> {
        let p = segs(path);
        let mut v: Vec<&DavLock> = self.locks.iter().filter(|l| covers(&segs(&l.path), &p)).collect();
        v.sort_by_cached_key(|l| segs(&l.path).len());
        v
    }

    /// A conflicting lock on `path` or an ancestor that covers it (`MemLs`'s
    /// `check_locks_to_path`).
    fn check_up(&self, path: &DavPath, principal: Option<&str>, ignore: bool, tokens: &[String], shared_ok: bool) -> Result<(), DavLock> {
        let depth = segs(path).len();
        let mut held = false;
        let mut first_shared: Option<&DavLock> = None;
        for l in self.along(path) {
            if segs(&l.path).len() < depth && !l.deep {
                continue;
            }
            if holds(l, principal, ignore, tokens) {
                held = true;
            } else if !l.shared {
                return Err(l.clone());
            } else if !shared_ok {
                first_shared.get_or_insert(l);
            }
        }
        match first_shared {
            Some(l) if !held => Err(l.clone()),
            _ => Ok(()),
        }
    }

    /// A conflicting lock on `path` or below it (`check_locks_from_path`).
    fn check_down(&self, path: &DavPath, principal: Option<&str>, ignore: bool, tokens: &[String], shared_ok: bool) -> Result<(), DavLock> {
        let p = segs(path);
        match self.locks.iter().find(|l| covers(&p, &segs(&l.path)) && (!l.shared || !shared_ok) && !holds(l, principal, ignore, tokens)) {
            Some(l) => Err(l.clone()),
            None => Ok(()),
        }
    }

    /// A lock that conflicts with `path`: on it or an ancestor covering it, and with `deep`
    /// also below it.
    fn conflict(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore: bool,
        tokens: &[String],
        shared_ok: bool,
        deep: bool,
    ) -> Result<(), DavLock> {
        self.check_up(path, principal, ignore, tokens, shared_ok)?;
        if deep { self.check_down(path, principal, ignore, tokens, shared_ok) } else { Ok(()) }
    }

    /// The lock with `token` on `path` or an ancestor.
    fn find(&mut self, path: &DavPath, token: &str) -> Option<&mut DavLock> {
        let p = segs(path);
        self.locks.iter_mut().find(|l| l.token == token && covers(&segs(&l.path), &p))
    }

    fn store(&mut self, l: &DavLock) {
        if self.store.is_some() {
            self.pending.push(Write::Save(stored(l)));
        }
    }

    fn unstore(&mut self, tokens: &[String]) {
        if self.store.is_some() {
            self.pending.push(Write::Remove(tokens.to_vec()));
        }
    }
}

/// A lock as the store keeps it.
fn stored(l: &DavLock) -> crate::db::StoredLock {
    let owner = l.owner.as_ref().and_then(|o| {
        // dav-server renames the owner element's prefix (to `D`) without declaring it, as
        // clients that write `<lockinfo xmlns="DAV:">` send it (neon: cadaver, davfs2,
        // LibreOffice): the stored copy declares every prefix it uses, or it cannot be read.
        let mut o = (**o).clone();
        declare_prefixes(&mut o);
        let mut out = Vec::new();
        o.write_with_config(&mut out, xmltree::EmitterConfig::new().perform_indent(false).write_document_declaration(false)).ok()?;
        String::from_utf8(out).ok()
    });
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    crate::db::StoredLock {
        token: l.token.clone(),
        prefix: l.path.prefix().to_string(),
        path: l.path.as_url_string(),
        principal: l.principal.clone(),
        owner,
        timeout_at: l.timeout_at.map(secs),
        timeout: l.timeout.map(|d| d.as_secs() as i64),
        shared: l.shared,
        deep: l.deep,
    }
}

/// Declares, on `e`, every namespace prefix that `e` or an element in it uses.
fn declare_prefixes(e: &mut Element) {
    fn walk(e: &Element, ns: &mut xmltree::Namespace) {
        if let (Some(p), Some(uri)) = (&e.prefix, &e.namespace) {
            ns.put(p.as_str(), uri.as_str());
        }
        for c in e.children.iter().filter_map(|c| c.as_element()) {
            walk(c, ns);
        }
    }
    let mut ns = e.namespaces.clone().unwrap_or_else(xmltree::Namespace::empty);
    walk(e, &mut ns);
    e.namespaces = Some(ns);
}

/// A stored lock back, or `None` if its path no longer parses. An owner that does not parse
/// is left out: the lock itself matters more than who it says holds it.
fn restored(s: crate::db::StoredLock) -> Option<DavLock> {
    let owner = s.owner.as_ref().and_then(|xml| Element::parse(xml.as_bytes()).ok()).map(Box::new);
    let mut path = DavPath::new(&format!("{}{}", s.prefix, s.path)).ok()?;
    if !s.prefix.is_empty() {
        path.set_prefix(&s.prefix).ok()?;
    }
    Some(DavLock {
        token: s.token,
        path: Box::new(path),
        principal: s.principal,
        owner,
        timeout_at: s.timeout_at.map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)),
        timeout: s.timeout.map(|t| Duration::from_secs(t.max(0) as u64)),
        shared: s.shared,
        deep: s.deep,
    })
}

impl Locks {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers `r` once the store has the changes made for it. They go to one writer thread
    /// (the store fsyncs, which must not stall this thread), handed over while the memory lock
    /// is held, so the store sees every change in the order memory did.
    fn answer<T: Send + 'static>(&self, mut inner: MutexGuard<'_, Inner>, r: T) -> LsFuture<'_, T> {
        let pending = std::mem::take(&mut inner.pending);
        let Some(st) = inner.store.clone().filter(|_| !pending.is_empty()) else {
            return std::future::ready(r).boxed();
        };
        let (done, written) = tokio::sync::oneshot::channel();
        if let Err(std::sync::mpsc::SendError(job)) = writer().send(Job { st, pending, done }) {
            apply(&job.st, job.pending);
            return std::future::ready(r).boxed();
        }
        drop(inner);
        async move {
            let _ = written.await;
            r
        }
        .boxed()
    }

    /// Writes locks through to `st`'s store from now on, and takes back the locks stored
    /// there by an earlier run. Only the first call of the process counts: later config builds
    /// (reloads, validations, throwaway builds) keep the store the running server started
    /// with, so locks are never split between two stores. If the stored locks cannot be read,
    /// locks stay in memory only for this run (writing beside unread ones could bring back
    /// conflicting locks at the next start).
    pub fn attach(&self, st: Arc<Storage>) {
        let mut inner = self.inner();
        if inner.loaded {
            return;
        }
        inner.loaded = true;
        match st.db.locks() {
            Ok(list) => {
                let n = list.len();
                inner.locks.extend(list.into_iter().filter_map(restored));
                if n > 0 {
                    tracing::info!(locks = inner.locks.len(), "WebDAV locks taken back from the store");
                }
                inner.store = Some(st);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the stored WebDAV locks: locks are kept in memory only until a restart"),
        }
    }

    /// Whether a lock may cover `path` or anything under it.
    pub fn maybe_locked(&self, path: &DavPath) -> bool {
        let inner = self.inner();
        if inner.locks.is_empty() {
            return false;
        }
        let p = segs(path);
        inner.locks.iter().any(|l| {
            let q = segs(&l.path);
            covers(&q, &p) || covers(&p, &q)
        })
    }
}

impl DavLockSystem for Locks {
    fn lock(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let mut inner = self.inner();
        inner.expire();
        let r = inner.conflict(path, None, true, &[], shared, deep);
        let r = r.map(|()| {
            let lock = DavLock {
                token: new_token(),
                path: Box::new(path.clone()),
                principal: principal.map(str::to_string),
                owner: owner.map(|o| Box::new(o.clone())),
                timeout_at: timeout.map(|d| SystemTime::now() + d),
                timeout,
                shared,
                deep,
            };
            inner.store(&lock);
            inner.locks.push(lock.clone());
            lock
        });
        self.answer(inner, r)
    }

    fn unlock(&self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let mut inner = self.inner();
        inner.expire();
        let r = match inner.find(path, token) {
            Some(_) => {
                inner.locks.retain(|l| l.token != token);
                inner.unstore(&[token.to_string()]);
                Ok(())
            }
            None => Err(()),
        };
        self.answer(inner, r)
    }

    fn refresh(&self, path: &DavPath, token: &str, timeout: Option<Duration>) -> LsFuture<'_, Result<DavLock, ()>> {
        let mut inner = self.inner();
        inner.expire();
        let r = match inner.find(path, token) {
            Some(l) => {
                l.timeout = timeout;
                l.timeout_at = timeout.map(|d| SystemTime::now() + d);
                let l = l.clone();
                inner.store(&l);
                Ok(l)
            }
            None => Err(()),
        };
        self.answer(inner, r)
    }

    fn check(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let mut inner = self.inner();
        inner.expire();
        let r = inner.conflict(path, principal, ignore_principal, submitted_tokens, false, deep);
        self.answer(inner, r)
    }

    fn discover(&self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let mut inner = self.inner();
        inner.expire();
        let r = inner.along(path).into_iter().cloned().collect();
        self.answer(inner, r)
    }

    fn delete(&self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let mut inner = self.inner();
        let p = segs(path);
        let gone: Vec<String> = inner.locks.iter().filter(|l| covers(&p, &segs(&l.path))).map(|l| l.token.clone()).collect();
        if !gone.is_empty() {
            inner.locks.retain(|l| !gone.contains(&l.token));
            inner.unstore(&gone);
        }
        self.answer(inner, Ok(()))
    }
}

/// A lock token: a random (version 4) UUID as a URN, as RFC 4918 suggests.
fn new_token() -> String {
    let mut b: [u8; 16] = servente_auth::secret::random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("urn:uuid:{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DavPath {
        DavPath::new(s).expect("path")
    }

    #[test]
    fn stored_locks_come_back_whole() {
        // As dav-server hands over the owner of `<D:lockinfo xmlns:D="DAV:">` and of
        // `<lockinfo xmlns="DAV:">` (prefix renamed to `D`, not declared).
        let mut owner = Element::parse(&b"<D:owner xmlns:D=\"DAV:\"><D:href>mailto:a@x</D:href></D:owner>"[..]).expect("xml");
        fn undeclare(e: &mut Element) {
            e.namespaces = None;
            for c in e.children.iter_mut().filter_map(|c| c.as_mut_element()) {
                undeclare(c);
            }
        }
        undeclare(&mut owner);
        let mut path = DavPath::new("/files/dav/users/a/b%20c.txt").expect("path");
        path.set_prefix("/files/dav").expect("prefix");
        let lock = DavLock {
            token: new_token(),
            path: Box::new(path),
            principal: Some("a".into()),
            owner: Some(Box::new(owner)),
            timeout_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            timeout: Some(Duration::from_secs(600)),
            shared: false,
            deep: true,
        };
        let back = restored(stored(&lock)).expect("restored");
        assert_eq!(back.path.as_bytes(), lock.path.as_bytes());
        assert_eq!(back.path.prefix(), "/files/dav");
        let owner = back.owner.expect("the owner came back");
        assert_eq!(owner.name, "owner");
        assert!(format!("{owner:?}").contains("mailto:a@x"));
        assert_eq!(
            (back.token, back.timeout_at, back.timeout, back.shared, back.deep),
            (lock.token.clone(), lock.timeout_at, lock.timeout, false, true)
        );
        // An owner that cannot be read leaves the lock without one, not the lock out.
        let mut s = stored(&lock);
        s.owner = Some("<D:owner>".into());
        assert!(restored(s).expect("still a lock").owner.is_none());
    }

    #[tokio::test]
    async fn locks_follow_the_memls_rules() {
        let l = Locks { inner: Default::default() };
        let (dir, f) = (p("/users/a/"), p("/users/a/f"));
        assert!(!l.maybe_locked(&dir));
        let lock = l.lock(&f, Some("a"), None, None, false, false).await.expect("lock");
        assert!(lock.token.starts_with("urn:uuid:") && lock.token.len() == 45, "{}", lock.token);
        assert!(l.maybe_locked(&dir) && l.maybe_locked(&f) && !l.maybe_locked(&p("/users/b/")));
        // Exclusive: another lock, or a write without the token, conflicts; the holder passes.
        assert!(l.lock(&f, Some("b"), None, None, true, false).await.is_err());
        assert!(l.check(&f, Some("b"), false, false, &[]).await.is_err());
        assert!(l.check(&f, Some("a"), false, false, std::slice::from_ref(&lock.token)).await.is_ok());
        assert!(l.check(&f, Some("b"), false, false, std::slice::from_ref(&lock.token)).await.is_err(), "another principal");
        // A deep change of the folder sees the lock below; a shallow one does not.
        assert!(l.check(&dir, Some("b"), false, true, &[]).await.is_err());
        assert!(l.check(&dir, Some("b"), false, false, &[]).await.is_ok());
        assert_eq!(l.discover(&f).await.len(), 1);
        assert!(l.unlock(&f, "urn:uuid:other").await.is_err());
        l.unlock(&f, &lock.token).await.expect("unlock");
        assert!(!l.maybe_locked(&dir));
        // Shared locks coexist; a deep folder lock covers new members.
        let s1 = l.lock(&f, Some("a"), None, None, true, false).await.expect("shared");
        l.lock(&f, Some("b"), None, None, true, false).await.expect("second shared");
        assert!(l.lock(&f, Some("c"), None, None, false, false).await.is_err(), "exclusive over shared");
        assert!(l.lock(&dir, Some("c"), None, None, false, true).await.is_err(), "deep over a locked member");
        l.delete(&dir).await.expect("delete");
        assert!(l.discover(&f).await.is_empty() && l.refresh(&f, &s1.token, None).await.is_err());
        let d = l.lock(&dir, Some("a"), None, None, false, true).await.expect("deep");
        assert!(l.check(&p("/users/a/new"), Some("b"), false, false, &[]).await.is_err());
        assert!(l.check(&p("/users/a/new"), Some("a"), false, false, std::slice::from_ref(&d.token)).await.is_ok());
        // An expired lock is gone.
        let r = l.refresh(&p("/users/a/new"), &d.token, Some(Duration::ZERO)).await.expect("refresh");
        assert_eq!(r.timeout, Some(Duration::ZERO));
        assert!(l.check(&p("/users/a/new"), Some("b"), false, false, &[]).await.is_ok());
    }
}

//! WebDAV locks: dav-server's in-memory lock system, plus a record of which paths have ever
//! been locked and may still be, so that the fast PROPFIND path ([`crate::propfind`]) knows
//! when it can skip lock discovery (almost always) and when dav-server must answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::memls::MemLs;
use futures_util::FutureExt;
use xmltree::Element;

#[derive(Debug, Clone)]
pub struct Locks {
    inner: Box<MemLs>,
    /// Paths (decoded, relative, no trailing slash) that may hold a lock. Expired locks stay
    /// listed until unlocked or deleted: the record errs on the side of "maybe locked".
    held: Arc<Mutex<HashSet<Vec<u8>>>>,
}

/// Locks live as long as the process, across config reloads (clients keep their tokens).
pub fn shared() -> Locks {
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    LOCKS.get_or_init(|| Locks { inner: MemLs::new(), held: Default::default() }).clone()
}

fn key(p: &DavPath) -> Vec<u8> {
    crate::fs::key(p)
}

impl Locks {
    /// Whether a lock may cover `path` or anything under it.
    pub fn maybe_locked(&self, path: &DavPath) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_empty() {
            return false;
        }
        let k = key(path);
        held.iter().any(|h| related(h, &k))
    }

    fn forget_if_free(&self, path: &DavPath) -> impl Future<Output = ()> + Send + '_ {
        let path = path.clone();
        async move {
            if self.inner.discover(&path).await.iter().all(|l| *l.path != path) {
                self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(&path));
            }
        }
    }
}

/// One path is the other or lies under it.
fn related(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && (long.len() == short.len() || short.is_empty() || long[short.len()] == b'/')
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
        // Recorded before the lock exists, so no PROPFIND can miss it.
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(key(path));
        self.inner.lock(path, principal, owner, timeout, shared, deep)
    }

    fn unlock(&self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let path = path.clone();
        let token = token.to_string();
        async move {
            let r = self.inner.unlock(&path, &token).await;
            self.forget_if_free(&path).await;
            r
        }
        .boxed()
    }

    fn refresh(&self, path: &DavPath, token: &str, timeout: Option<Duration>) -> LsFuture<'_, Result<DavLock, ()>> {
        self.inner.refresh(path, token, timeout)
    }

    fn check(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        self.inner.check(path, principal, ignore_principal, deep, submitted_tokens)
    }

    fn discover(&self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        self.inner.discover(path)
    }

    fn delete(&self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let k = key(path);
        let path = path.clone();
        async move {
            let r = self.inner.delete(&path).await;
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|h| !(h.starts_with(&k) && (h.len() == k.len() || h[k.len()] == b'/')));
            r
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn related_paths_are_ancestors_or_descendants() {
        assert!(related(b"users/a", b"users/a/x"));
        assert!(related(b"users/a/x", b"users/a"));
        assert!(related(b"users/a", b"users/a"));
        assert!(!related(b"users/a", b"users/ab"));
        assert!(related(b"", b"users"));
    }

    #[tokio::test]
    async fn the_record_follows_locks() {
        let l = Locks { inner: MemLs::new(), held: Default::default() };
        let p = DavPath::new("/users/a/f").expect("path");
        let dir = DavPath::new("/users/a/").expect("path");
        assert!(!l.maybe_locked(&dir));
        let lock = l.lock(&p, Some("a"), None, None, false, false).await.expect("lock");
        assert!(l.maybe_locked(&dir) && l.maybe_locked(&p));
        assert!(!l.maybe_locked(&DavPath::new("/users/b/").expect("path")));
        l.unlock(&p, &lock.token).await.expect("unlock");
        assert!(!l.maybe_locked(&dir));
    }
}

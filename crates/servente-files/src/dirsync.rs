//! Folder fsyncs shared between concurrent callers (group commit).
//!
//! A file created or renamed into a folder is durable only once the folder itself is synced.
//! Uploads of many small files into one folder (a client syncing a tree) each need that sync,
//! and on a plain disk each costs a device flush. A sync that *starts* after a caller's change
//! covers it, so callers that arrive while one is running wait for the next and share it: with
//! eight uploads in flight into one folder, one sync serves up to eight. A failed sync is
//! shared by nobody: each caller it would have covered runs (or waits for) another attempt,
//! and reports its own failure.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct Folder {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// Callers that asked so far (each takes the next number).
    asked: u64,
    /// Every caller up to this number is covered by a successful sync.
    synced: u64,
    running: bool,
}

static FOLDERS: LazyLock<Mutex<HashMap<PathBuf, Arc<Folder>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes the folder `dir`'s entries as they are now durable. Blocks (call it on the blocking
/// pool); `sync` is the operation itself, `fsync` of the folder in production.
pub fn sync_folder(dir: &Path) -> io::Result<()> {
    sync_with(dir, |d| std::fs::File::open(d)?.sync_all())
}

fn sync_with(dir: &Path, sync: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
    let folder = lock(&FOLDERS).entry(dir.to_path_buf()).or_default().clone();
    let result = (|| {
        let mut st = lock(&folder.state);
        st.asked += 1;
        let mine = st.asked;
        loop {
            if st.synced >= mine {
                return Ok(());
            }
            if !st.running {
                // Everyone who asked before this point is covered by the sync that starts now.
                st.running = true;
                let upto = st.asked;
                drop(st);
                let running = Running(&folder);
                let r = sync(dir);
                std::mem::forget(running);
                st = lock(&folder.state);
                st.running = false;
                if r.is_ok() {
                    st.synced = st.synced.max(upto);
                }
                folder.finished.notify_all();
                return r;
            }
            st = folder.finished.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    })();
    // The last user of a folder's entry removes it, so the map holds only busy folders. The
    // count is read and this caller's reference dropped under the map's lock, so two callers
    // finishing together cannot both see the other's reference and leave the entry behind.
    let mut folders = lock(&FOLDERS);
    if Arc::strong_count(&folder) == 2 {
        folders.remove(dir);
    }
    drop(folder);
    drop(folders);
    result
}

/// Set while a sync runs; if the sync panics, the folder is marked idle again and the waiters
/// woken (one of them runs the next sync), so nobody waits for ever.
struct Running<'a>(&'a Folder);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).running = false;
        self.0.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_syncs_and_each_is_covered() {
        let dir = Path::new("/servente-test/shared-syncs");
        let syncs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let syncs = syncs.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        sync_with(dir, |_| {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            Ok(())
                        })
                        .expect("sync");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let n = syncs.load(Ordering::SeqCst);
        // 320 callers; while one sync runs the others queue behind it and share the next.
        assert!(n < 320 / 2, "{n} syncs for 320 callers");
        assert!(lock(&FOLDERS).get(dir).is_none(), "an idle folder's entry is removed");
    }

    #[test]
    fn a_sync_that_started_before_a_caller_does_not_cover_it() {
        let dir = Path::new("/servente-test/ordering");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let syncs = Arc::new(AtomicUsize::new(0));
        let s1 = syncs.clone();
        let first = std::thread::spawn(move || {
            sync_with(dir, |_| {
                s1.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).expect("signal");
                lock(&go_rx).recv().expect("go");
                Ok(())
            })
        });
        started_rx.recv().expect("the first sync runs");
        let s2 = syncs.clone();
        let second = std::thread::spawn(move || {
            sync_with(dir, |_| {
                s2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        });
        std::thread::sleep(Duration::from_millis(20));
        go_tx.send(()).expect("release");
        first.join().expect("first").expect("ok");
        second.join().expect("second").expect("ok");
        // The second caller arrived while the first sync ran: it needed a sync of its own.
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_sync_is_reported_and_covers_nobody() {
        let dir = Path::new("/servente-test/failing");
        let calls = AtomicUsize::new(0);
        let r = sync_with(dir, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::other("disk gone"))
        });
        assert!(r.is_err());
        // The next caller runs its own sync; nothing counts as done.
        sync_with(dir, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .expect("second sync");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_sync_that_panics_leaves_the_folder_usable() {
        let dir = Path::new("/servente-test/panicking");
        let r = std::panic::catch_unwind(|| sync_with(dir, |_| panic!("a broken sync")));
        assert!(r.is_err());
        // Not stuck as "running": the next caller syncs at once.
        sync_with(dir, |_| Ok(())).expect("sync after the panic");
    }

    #[test]
    fn syncs_a_real_folder() {
        let dir = std::env::temp_dir();
        sync_folder(&dir).expect("fsync of the temp folder");
    }
}

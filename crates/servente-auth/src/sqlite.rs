//! The embedded directory store: one SQLite file in the data folder.
//!
//! SQLite in WAL mode with `synchronous = FULL`: every change is one transaction, durable when
//! the method returns, and a process killed at any instant leaves the file consistent. The
//! CLI and a running server may use the file at the same time (a busy timeout serializes
//! writers). One connection behind a mutex is plenty: the directory is small and its queries
//! take microseconds; password hashing, the slow part, happens outside the store.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::*;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE users(
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    password_changed INTEGER NOT NULL
);
CREATE TABLE groups(name TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE members(
    grp TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY(grp, user)
);
CREATE INDEX members_by_user ON members(user);
CREATE TABLE tokens(
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER,
    last_used INTEGER
);
CREATE TABLE sessions(
    id_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The database file, for [`Store::change_stamp`]; `None` in memory.
    path: Option<std::path::PathBuf>,
    /// Sees writes to that file for [`Store::change_stamp`]; `None` when inotify is not to be had.
    watch: Option<Watch>,
}

/// Tells whether the database files were written since the last look, without touching the
/// file system: an inotify watch on their folder, whose events the kernel queues before the
/// writing call returns (so a change by another process, the CLI, is seen by the next request,
/// as with `statx`, and unlike times, without a clock tick in which two writes look alike).
/// It replaces two `statx` path walks per signed-in request with one read of an empty queue;
/// the CPU that saves is small (within the noise of `perf stat` over 300 requests).
struct Watch {
    fd: rustix::fd::OwnedFd,
    /// The database's file name and its write-ahead log's.
    names: [Vec<u8>; 2],
    /// Writes seen so far, the stamp: bumped for an event on one of `names`, or when the queue
    /// overflowed (events were lost). `None` once the watch ended (the folder was removed or
    /// moved): stamps come from `statx` again.
    seen: Mutex<Option<u64>>,
}

impl Watch {
    fn new(db: &Path) -> Option<Watch> {
        use rustix::fs::inotify::{CreateFlags, WatchFlags, add_watch, init};
        use std::os::unix::ffi::OsStrExt as _;
        let name = db.file_name()?.as_bytes().to_vec();
        let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let fd = init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let what = WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF;
        add_watch(&fd, dir, what).ok()?;
        let wal = [name.as_slice(), b"-wal"].concat();
        Some(Watch { fd, names: [name, wal], seen: Mutex::new(Some(0)) })
    }

    /// The count of writes seen, after taking in the queued events; `None` once the watch ended.
    fn stamp(&self) -> Option<u64> {
        use rustix::fs::inotify::{ReadFlags, Reader};
        // Held while the queue is read, so that a caller never returns before the events
        // another caller is taking in are counted.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let count = (*seen)?;
        let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
        let mut events = Reader::new(&self.fd, &mut buf);
        let mut bumped = false;
        loop {
            match events.next() {
                Ok(e) => {
                    let flags = e.events();
                    if flags.intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
                        *seen = None;
                        return None;
                    }
                    let ours = e.file_name().is_some_and(|n| self.names.iter().any(|m| m.as_slice() == n.to_bytes()));
                    bumped |= ours || flags.contains(ReadFlags::QUEUE_OVERFLOW);
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    *seen = None;
                    return None;
                }
            }
        }
        let count = count + u64::from(bumped);
        *seen = Some(count);
        Some(count)
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Maps a uniqueness violation to `Conflict(what)`, anything else to `Backend`.
fn conflict(what: String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(what),
        _ => backend(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        // Watching starts before the first stamp is read.
        let watch = Watch::new(path);
        Ok(SqliteStore { path: Some(path.to_path_buf()), watch, ..Self::init(conn)? })
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(backend)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA).map_err(backend)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(backend)?;
            }
            SCHEMA_VERSION => {}
            v => return Err(StoreError::Backend(format!("the store has schema version {v}, newer than this servente ({SCHEMA_VERSION})"))),
        }
        tx.commit().map_err(backend)?;
        Ok(SqliteStore { conn: Mutex::new(conn), path: None, watch: None })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done change (SQLite rolls back an
        // unfinished transaction), so a poisoned lock is safe to take over.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write transaction that takes the write lock at once: a deferred one that reads first
/// would fail with "database is locked" (without waiting) when another writer got there in
/// between; an immediate one waits for the busy timeout instead.
fn write_tx(conn: &mut Connection) -> StoreResult<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)
}

fn groups_of(conn: &Connection, user: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT grp FROM members WHERE user = ?1 ORDER BY grp")?;
    st.query_map([user], |r| r.get(0))?.collect()
}

fn members_of(conn: &Connection, group: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT user FROM members WHERE grp = ?1 ORDER BY user")?;
    st.query_map([group], |r| r.get(0))?.collect()
}

const USER_COLUMNS: &str = "name, display_name, email, disabled, created, password_changed, password_hash";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        user: User {
            name: r.get(0)?,
            display_name: r.get(1)?,
            email: r.get(2)?,
            groups: Vec::new(),
            disabled: r.get(3)?,
            created: r.get(4)?,
            password_changed: r.get(5)?,
        },
        password_hash: r.get(6)?,
    })
}

const TOKEN_COLUMNS: &str = "id, user, name, scopes, created, expires, last_used, secret_hash";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Token, String)> {
    let scopes: String = r.get(3)?;
    Ok((
        Token {
            id: r.get(0)?,
            user: r.get(1)?,
            name: r.get(2)?,
            scopes: scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            created: r.get(4)?,
            expires: r.get(5)?,
            last_used: r.get(6)?,
        },
        r.get(7)?,
    ))
}

fn exists(conn: &Connection, table: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(&format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE name = ?1)"), [name], |r| r.get(0))
}

impl Store for SqliteStore {
    /// Every commit writes the write-ahead log and every checkpoint the database file. The
    /// stamp is the count of such writes [`Watch`] saw or, without a watch, a hash of both
    /// files' identity, size, modification and change times (two `statx` calls; Linux since
    /// 6.13 gives a file that was just looked at a fine-grained time at its next change, so two
    /// changes within one clock tick still differ). The top bit tells the two kinds apart, so
    /// a watch that ends changes the stamp.
    fn change_stamp(&self) -> Option<u64> {
        const WATCHED: u64 = 1 << 63;
        if let Some(count) = self.watch.as_ref().and_then(Watch::stamp) {
            return Some(count | WATCHED);
        }
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let db = self.path.as_ref()?;
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let mut h = std::hash::DefaultHasher::new();
        for file in [db.as_os_str(), wal.as_os_str()] {
            match std::fs::metadata(file) {
                Ok(m) => (m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()).hash(&mut h),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0u8.hash(&mut h),
                Err(_) => return None,
            }
        }
        Some(h.finish() & !WATCHED)
    }

    fn user_count(&self) -> StoreResult<u64> {
        self.conn().query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(backend)
    }

    fn user(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let conn = self.conn();
        // Asked on every request that signs in (WebDAV clients send Basic each time): keep the
        // statement prepared.
        let found = conn
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"))
            .and_then(|mut st| st.query_row([name], user_row).optional())
            .map_err(backend)?;
        match found {
            Some(mut rec) => {
                rec.user.groups = groups_of(&conn, name).map_err(backend)?;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    fn users(&self) -> StoreResult<Vec<User>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name")).map_err(backend)?;
        let mut users: Vec<User> =
            st.query_map([], user_row).map_err(backend)?.map(|r| r.map(|u| u.user)).collect::<Result<_, _>>().map_err(backend)?;
        for u in &mut users {
            u.groups = groups_of(&conn, &u.name).map_err(backend)?;
        }
        Ok(users)
    }

    fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        for g in &user.groups {
            if !exists(&tx, "groups", g).map_err(backend)? {
                return Err(StoreError::NotFound(format!("group `{g}`")));
            }
        }
        tx.execute(
            "INSERT INTO users(name, display_name, email, password_hash, disabled, created, password_changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![user.name, user.display_name, user.email, password_hash, user.disabled, user.created, user.password_changed],
        )
        .map_err(conflict(format!("user `{}`", user.name)))?;
        for g in &user.groups {
            tx.execute("INSERT OR IGNORE INTO members(grp, user) VALUES (?1, ?2)", params![g, user.name]).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn update_user(&self, name: &str, patch: &UserPatch) -> StoreResult<User> {
        {
            let mut conn = self.conn();
            let tx = write_tx(&mut conn)?;
            if !exists(&tx, "users", name).map_err(backend)? {
                return Err(StoreError::NotFound(format!("user `{name}`")));
            }
            if let Some(d) = &patch.display_name {
                tx.execute("UPDATE users SET display_name = ?1 WHERE name = ?2", params![d, name]).map_err(backend)?;
            }
            if let Some(e) = &patch.email {
                tx.execute("UPDATE users SET email = ?1 WHERE name = ?2", params![e, name]).map_err(backend)?;
            }
            if let Some(d) = patch.disabled {
                tx.execute("UPDATE users SET disabled = ?1 WHERE name = ?2", params![d, name]).map_err(backend)?;
                if d {
                    tx.execute("DELETE FROM sessions WHERE user = ?1", [name]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)?;
        }
        self.user(name)?.map(|r| r.user).ok_or_else(|| StoreError::NotFound(format!("user `{name}`")))
    }

    fn set_password(&self, name: &str, password_hash: &str, now: i64) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        let n = tx
            .execute("UPDATE users SET password_hash = ?1, password_changed = ?2 WHERE name = ?3", params![password_hash, now, name])
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user `{name}`")));
        }
        tx.execute("DELETE FROM sessions WHERE user = ?1", [name]).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn remove_user(&self, name: &str) -> StoreResult<()> {
        // Memberships, tokens and sessions go with the user (ON DELETE CASCADE), in the same
        // transaction as the delete itself.
        match self.conn().execute("DELETE FROM users WHERE name = ?1", [name]).map_err(backend)? {
            0 => Err(StoreError::NotFound(format!("user `{name}`"))),
            _ => Ok(()),
        }
    }

    fn groups(&self) -> StoreResult<Vec<Group>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT name, description FROM groups ORDER BY name").map_err(backend)?;
        let mut groups: Vec<Group> = st
            .query_map([], |r| Ok(Group { name: r.get(0)?, description: r.get(1)?, members: Vec::new() }))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for g in &mut groups {
            g.members = members_of(&conn, &g.name).map_err(backend)?;
        }
        Ok(groups)
    }

    fn group(&self, name: &str) -> StoreResult<Option<Group>> {
        let conn = self.conn();
        let found = conn
            .query_row("SELECT name, description FROM groups WHERE name = ?1", [name], |r| {
                Ok(Group { name: r.get(0)?, description: r.get(1)?, members: Vec::new() })
            })
            .optional()
            .map_err(backend)?;
        match found {
            Some(mut g) => {
                g.members = members_of(&conn, name).map_err(backend)?;
                Ok(Some(g))
            }
            None => Ok(None),
        }
    }

    fn create_group(&self, name: &str, description: &str) -> StoreResult<()> {
        self.conn()
            .execute("INSERT INTO groups(name, description) VALUES (?1, ?2)", params![name, description])
            .map(|_| ())
            .map_err(conflict(format!("group `{name}`")))
    }

    fn remove_group(&self, name: &str) -> StoreResult<()> {
        match self.conn().execute("DELETE FROM groups WHERE name = ?1", [name]).map_err(backend)? {
            0 => Err(StoreError::NotFound(format!("group `{name}`"))),
            _ => Ok(()),
        }
    }

    fn add_member(&self, group: &str, user: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        if !exists(&tx, "groups", group).map_err(backend)? {
            return Err(StoreError::NotFound(format!("group `{group}`")));
        }
        if !exists(&tx, "users", user).map_err(backend)? {
            return Err(StoreError::NotFound(format!("user `{user}`")));
        }
        tx.execute("INSERT OR IGNORE INTO members(grp, user) VALUES (?1, ?2)", params![group, user]).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn remove_member(&self, group: &str, user: &str) -> StoreResult<()> {
        match self.conn().execute("DELETE FROM members WHERE grp = ?1 AND user = ?2", params![group, user]).map_err(backend)? {
            0 => Err(StoreError::NotFound(format!("membership of `{user}` in `{group}`"))),
            _ => Ok(()),
        }
    }

    fn create_token(&self, token: &Token, secret_hash: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn)?;
        if !exists(&tx, "users", &token.user).map_err(backend)? {
            return Err(StoreError::NotFound(format!("user `{}`", token.user)));
        }
        tx.execute(
            "INSERT INTO tokens(id, user, name, scopes, secret_hash, created, expires, last_used) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
            params![token.id, token.user, token.name, token.scopes.join(" "), secret_hash, token.created, token.expires],
        )
        .map_err(conflict(format!("token `{}`", token.id)))?;
        tx.commit().map_err(backend)
    }

    fn token(&self, id: &str) -> StoreResult<Option<(Token, String)>> {
        self.conn().query_row(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"), [id], token_row).optional().map_err(backend)
    }

    fn tokens(&self, user: Option<&str>) -> StoreResult<Vec<Token>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR user = ?1 ORDER BY created, id"))
            .map_err(backend)?;
        st.query_map([user], token_row).map_err(backend)?.map(|r| r.map(|(t, _)| t)).collect::<Result<_, _>>().map_err(backend)
    }

    fn revoke_token(&self, id: &str) -> StoreResult<()> {
        match self.conn().execute("DELETE FROM tokens WHERE id = ?1", [id]).map_err(backend)? {
            0 => Err(StoreError::NotFound(format!("token `{id}`"))),
            _ => Ok(()),
        }
    }

    fn touch_token(&self, id: &str, now: i64) -> StoreResult<()> {
        self.conn().execute("UPDATE tokens SET last_used = ?1 WHERE id = ?2", params![now, id]).map(|_| ()).map_err(backend)
    }

    fn create_session(&self, s: &Session) -> StoreResult<()> {
        self.conn()
            .execute(
                "INSERT INTO sessions(id_hash, user, csrf, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id_hash, s.user, s.csrf, s.created, s.expires],
            )
            .map(|_| ())
            .map_err(conflict("session".into()))
    }

    fn session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        self.conn()
            .query_row("SELECT id_hash, user, csrf, created, expires FROM sessions WHERE id_hash = ?1", [id_hash], |r| {
                Ok(Session { id_hash: r.get(0)?, user: r.get(1)?, csrf: r.get(2)?, created: r.get(3)?, expires: r.get(4)? })
            })
            .optional()
            .map_err(backend)
    }

    fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        self.conn().execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash]).map(|_| ()).map_err(backend)
    }

    fn purge_sessions(&self, now: i64) -> StoreResult<u64> {
        self.conn().execute("DELETE FROM sessions WHERE expires < ?1", [now]).map(|n| n as u64).map_err(backend)
    }

    fn audit(&self, e: &AuditEntry) -> StoreResult<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit(time, actor, client, action, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.time, e.actor, e.client, e.action, e.target, e.outcome, e.detail],
        )
        .map_err(backend)?;
        Ok(conn.last_insert_rowid())
    }

    fn prune_audit(&self, last_id: i64) -> StoreResult<()> {
        self.conn().execute("DELETE FROM audit WHERE id <= ?1", [last_id]).map(|_| ()).map_err(backend)
    }

    fn audit_recent(&self, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id, time, actor, client, action, target, outcome, detail FROM audit ORDER BY id DESC LIMIT ?1")
            .map_err(backend)?;
        st.query_map([limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                time: r.get(1)?,
                actor: r.get(2)?,
                client: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                outcome: r.get(6)?,
                detail: r.get(7)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            display_name: String::new(),
            email: String::new(),
            groups: Vec::new(),
            disabled: false,
            created: 0,
            password_changed: 0,
        }
    }

    #[test]
    fn the_stamp_changes_with_every_write_from_any_process_and_only_then() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("data");
        std::fs::create_dir(&folder).expect("mkdir");
        let db = folder.join("users.db");
        let server = SqliteStore::open(&db).expect("open");
        assert!(server.watch.is_some(), "inotify is available here");
        let s0 = server.change_stamp().expect("a stamp");
        // Reads, and writes to other files of the folder, change nothing.
        assert_eq!(server.user_count().expect("count"), 0);
        std::fs::write(folder.join("other.txt"), "x").expect("write");
        assert_eq!(server.change_stamp(), Some(s0));
        // Another connection stands for the CLI: its change is seen at once.
        let cli = SqliteStore::open(&db).expect("open again");
        cli.create_user(&user("alice"), "hash").expect("create");
        let s1 = server.change_stamp().expect("a stamp");
        assert_ne!(s1, s0);
        assert_eq!(server.change_stamp(), Some(s1));
        server.update_user("alice", &UserPatch { disabled: Some(true), ..Default::default() }).expect("update");
        let s2 = server.change_stamp().expect("a stamp");
        assert_ne!(s2, s1);
        // The folder moved away: the watch ends and stamps come from `statx` again.
        let moved = dir.path().join("moved");
        std::fs::rename(&folder, &moved).expect("rename");
        std::fs::create_dir(&folder).expect("mkdir");
        let s3 = server.change_stamp();
        assert!(server.watch.as_ref().is_some_and(|w| w.stamp().is_none()), "the watch ended");
        assert_ne!(s3, Some(s2));
    }
}

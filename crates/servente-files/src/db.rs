//! The file role's metadata: WebDAV dead properties and share links, in one SQLite file
//! (`files.db` in the data folder).
//!
//! Properties are keyed by the resource's path relative to the files root (`users/alice/a.txt`),
//! so a MOVE, COPY or DELETE of a tree carries its properties along in one transaction. Same
//! durability rules as the user directory: WAL, `synchronous = FULL`, one connection behind a
//! mutex (every query takes microseconds).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS props(
    path BLOB NOT NULL,
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    xml BLOB NOT NULL,
    PRIMARY KEY(path, ns, name)
);
CREATE TABLE IF NOT EXISTS shares(
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    path TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER,
    password_hash TEXT
);
CREATE INDEX IF NOT EXISTS shares_by_owner ON shares(owner);
CREATE TABLE IF NOT EXISTS locks(
    token TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    path TEXT NOT NULL,
    principal TEXT,
    owner TEXT,
    timeout_at INTEGER,
    timeout INTEGER,
    shared INTEGER NOT NULL,
    deep INTEGER NOT NULL
);
";

/// A WebDAV lock as stored (see [`crate::locks`]): the mount's WebDAV prefix and the path
/// under it as URL paths, owner as XML, times in seconds (the expiry since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLock {
    pub token: String,
    pub prefix: String,
    pub path: String,
    pub principal: Option<String>,
    pub owner: Option<String>,
    pub timeout_at: Option<i64>,
    pub timeout: Option<i64>,
    pub shared: bool,
    pub deep: bool,
}

/// A share link as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub id: String,
    pub owner: String,
    /// Path under the files root, without leading slash (`users/alice/photos`).
    pub path: String,
    pub is_dir: bool,
    pub created: i64,
    pub expires: Option<i64>,
    pub password_hash: Option<String>,
}

pub struct Db {
    conn: Mutex<Connection>,
}

pub type DbResult<T> = Result<T, String>;

/// A dead property: namespace, name, and its element as stored XML.
pub type Prop = (String, String, Vec<u8>);

fn err(e: rusqlite::Error) -> String {
    format!("file metadata store: {e}")
}

/// Rows whose path is `path` or lies under it. (`path || '/'` as a byte prefix: LIKE would
/// treat `%` and `_` in names as wildcards.)
/// Every value is bound and computed as a BLOB (`||` would make TEXT, which never equals a BLOB).
const UNDER: &str = "(path = ?1 OR substr(path, 1, length(?1) + 1) = CAST(?1 || '/' AS BLOB))";

impl Db {
    pub fn open(file: &Path) -> DbResult<Db> {
        let conn = Connection::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Db { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn has_props(&self, path: &[u8]) -> DbResult<bool> {
        self.conn()
            .query_row("SELECT 1 FROM props WHERE path = ?1 LIMIT 1", [path], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(err)
    }

    pub fn props(&self, path: &[u8]) -> DbResult<Vec<Prop>> {
        let c = self.conn();
        let mut st = c.prepare_cached("SELECT ns, name, xml FROM props WHERE path = ?1 ORDER BY ns, name").map_err(err)?;
        let rows = st.query_map([path], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Dead properties of `path` and, with `children`, of the entries directly in it:
    /// (path, namespace, name, xml).
    pub fn props_under(&self, path: &[u8], children: bool) -> DbResult<Vec<(Vec<u8>, Prop)>> {
        let c = self.conn();
        let sql = if children {
            format!("SELECT path, ns, name, xml FROM props WHERE {UNDER}")
        } else {
            "SELECT path, ns, name, xml FROM props WHERE path = ?1".into()
        };
        let mut st = c.prepare_cached(&sql).map_err(err)?;
        let rows = st.query_map([path], |r| Ok((r.get::<_, Vec<u8>>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))).map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(err)?;
            // Only the folder itself and its direct entries, not deeper ones.
            let direct = row.0.len() == path.len() || !row.0[path.len() + 1..].contains(&b'/');
            if direct {
                out.push(row);
            }
        }
        Ok(out)
    }

    pub fn prop(&self, path: &[u8], ns: &str, name: &str) -> DbResult<Option<Vec<u8>>> {
        self.conn()
            .query_row("SELECT xml FROM props WHERE path = ?1 AND ns = ?2 AND name = ?3", params![path, ns, name], |r| r.get(0))
            .optional()
            .map_err(err)
    }

    /// Applies a PROPPATCH in one transaction: `Some(xml)` sets, `None` removes.
    pub fn patch(&self, path: &[u8], changes: &[(String, String, Option<Vec<u8>>)]) -> DbResult<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(err)?;
        for (ns, name, xml) in changes {
            match xml {
                Some(x) => {
                    tx.execute("INSERT OR REPLACE INTO props(path, ns, name, xml) VALUES (?1, ?2, ?3, ?4)", params![path, ns, name, x])
                }
                None => tx.execute("DELETE FROM props WHERE path = ?1 AND ns = ?2 AND name = ?3", params![path, ns, name]),
            }
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Stores a new lock, or a refreshed one in place (its row keeps its rank).
    pub fn save_lock(&self, l: &StoredLock) -> DbResult<()> {
        self.conn()
            .execute(
                "INSERT INTO locks(token, prefix, path, principal, owner, timeout_at, timeout, shared, deep)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(token) DO UPDATE SET timeout_at = excluded.timeout_at, timeout = excluded.timeout",
                params![l.token, l.prefix, l.path, l.principal, l.owner, l.timeout_at, l.timeout, l.shared, l.deep],
            )
            .map(|_| ())
            .map_err(err)
    }

    pub fn remove_locks(&self, tokens: &[String]) -> DbResult<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(err)?;
        for t in tokens {
            tx.execute("DELETE FROM locks WHERE token = ?1", [t]).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// The stored locks, oldest first.
    pub fn locks(&self) -> DbResult<Vec<StoredLock>> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT token, prefix, path, principal, owner, timeout_at, timeout, shared, deep FROM locks ORDER BY rowid")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(StoredLock {
                    token: r.get(0)?,
                    prefix: r.get(1)?,
                    path: r.get(2)?,
                    principal: r.get(3)?,
                    owner: r.get(4)?,
                    timeout_at: r.get(5)?,
                    timeout: r.get(6)?,
                    shared: r.get(7)?,
                    deep: r.get(8)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Forgets the properties of `path` and everything under it.
    pub fn remove_tree(&self, path: &[u8]) -> DbResult<()> {
        self.conn().execute(&format!("DELETE FROM props WHERE {UNDER}"), [path]).map(drop).map_err(err)
    }

    /// Moves the properties of `from` and everything under it to `to`, replacing what `to` had.
    pub fn move_tree(&self, from: &[u8], to: &[u8]) -> DbResult<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(err)?;
        tx.execute(&format!("DELETE FROM props WHERE {UNDER}"), [to]).map_err(err)?;
        tx.execute(&format!("UPDATE props SET path = CAST(?2 || substr(path, length(?1) + 1) AS BLOB) WHERE {UNDER}"), params![from, to])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Copies the properties of exactly `from` to `to` (a COPY goes file by file).
    pub fn copy_one(&self, from: &[u8], to: &[u8]) -> DbResult<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(err)?;
        tx.execute("DELETE FROM props WHERE path = ?1", [to]).map_err(err)?;
        tx.execute("INSERT INTO props(path, ns, name, xml) SELECT ?2, ns, name, xml FROM props WHERE path = ?1", params![from, to])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    pub fn add_share(&self, s: &Share) -> DbResult<()> {
        self.conn()
            .execute(
                "INSERT INTO shares(id, owner, path, is_dir, created, expires, password_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![s.id, s.owner, s.path, s.is_dir, s.created, s.expires, s.password_hash],
            )
            .map(drop)
            .map_err(err)
    }

    fn share_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Share> {
        Ok(Share {
            id: r.get(0)?,
            owner: r.get(1)?,
            path: r.get(2)?,
            is_dir: r.get(3)?,
            created: r.get(4)?,
            expires: r.get(5)?,
            password_hash: r.get(6)?,
        })
    }

    pub fn share(&self, id: &str) -> DbResult<Option<Share>> {
        self.conn()
            .query_row("SELECT id, owner, path, is_dir, created, expires, password_hash FROM shares WHERE id = ?1", [id], Self::share_row)
            .optional()
            .map_err(err)
    }

    pub fn shares_of(&self, owner: &str) -> DbResult<Vec<Share>> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT id, owner, path, is_dir, created, expires, password_hash FROM shares WHERE owner = ?1 ORDER BY created")
            .map_err(err)?;
        let rows = st.query_map([owner], Self::share_row).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Revokes a link; `false` when `owner` has no link `id`.
    pub fn remove_share(&self, owner: &str, id: &str) -> DbResult<bool> {
        self.conn().execute("DELETE FROM shares WHERE id = ?1 AND owner = ?2", [id, owner]).map(|n| n > 0).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&d.path().join("files.db")).expect("open");
        (d, db)
    }

    fn set(db: &Db, path: &str, name: &str) {
        db.patch(path.as_bytes(), &[("ns".into(), name.into(), Some(format!("<{name}/>").into_bytes()))]).expect("patch");
    }

    #[test]
    fn properties_follow_moves_and_copies_of_whole_trees() {
        let (_d, db) = db();
        set(&db, "users/a/dir", "x");
        set(&db, "users/a/dir/f", "y");
        set(&db, "users/a/dir2", "z");
        set(&db, "users/a/di%_r", "w");
        db.move_tree(b"users/a/dir", b"users/a/new").expect("move");
        assert!(db.props(b"users/a/dir").expect("props").is_empty());
        assert_eq!(db.prop(b"users/a/new", "ns", "x").expect("prop"), Some(b"<x/>".to_vec()), "moved rows keep BLOB keys");
        assert_eq!(db.props(b"users/a/new/f").expect("props").len(), 1);
        assert_eq!(db.props(b"users/a/dir2").expect("props").len(), 1, "a sibling with the same prefix stays");
        db.copy_one(b"users/a/new/f", b"users/a/copy").expect("copy");
        assert_eq!(db.prop(b"users/a/copy", "ns", "y").expect("prop"), Some(b"<y/>".to_vec()));
        db.remove_tree(b"users/a/di%").expect("remove");
        assert!(db.has_props(b"users/a/di%_r").expect("has"), "no wildcard matching");
        assert!(db.has_props(b"users/a/new/f").expect("has"));
        db.remove_tree(b"users/a").expect("remove");
        assert!(!db.has_props(b"users/a/new/f").expect("has"));
        assert!(!db.has_props(b"users/a/copy").expect("has"));
        db.patch(b"p", &[("ns".into(), "q".into(), Some(b"1".to_vec())), ("ns".into(), "q".into(), None)]).expect("patch");
        assert!(!db.has_props(b"p").expect("has"));
    }

    #[test]
    fn share_links_belong_to_their_owner() {
        let (_d, db) = db();
        let s = Share {
            id: "abc".into(),
            owner: "alice".into(),
            path: "users/alice/x".into(),
            is_dir: false,
            created: 1,
            expires: None,
            password_hash: None,
        };
        db.add_share(&s).expect("add");
        assert_eq!(db.share("abc").expect("get"), Some(s));
        assert!(!db.remove_share("bob", "abc").expect("remove"));
        assert_eq!(db.shares_of("alice").expect("list").len(), 1);
        assert!(db.remove_share("alice", "abc").expect("remove"));
        assert!(db.share("abc").expect("get").is_none());
    }
}

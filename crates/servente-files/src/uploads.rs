//! Resumable uploads for the web file manager: a large file goes up in chunks, each one on
//! disk (fsync) before it is acknowledged, and the file appears at its place only when the
//! last byte has arrived. After a network drop the page asks for the offset and goes on.
//!
//! Each upload is `<root>/.uploads/ID.part` (the bytes so far) and `ID.json` (owner, target
//! path, size, quota reservation). Uploads whose bytes have not grown for a day are removed
//! at startup and whenever an upload starts ([`Uploads::sweep_stale`]); those kept hold their
//! reservation again after a restart ([`Uploads::in_progress`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// An upload as recorded beside its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadMeta {
    pub owner: String,
    /// WebDAV path of the file to create (`/users/alice/film.mkv`).
    pub path: String,
    pub size: u64,
    /// Bytes held against the home's quota while the upload is in progress (its growth over
    /// the file it replaces); given back when it finishes or is cancelled.
    #[serde(default)]
    pub reserved: u64,
    /// The home whose quota holds `reserved` (as the path resolved when the upload started).
    #[serde(default)]
    pub home: Option<String>,
}

pub struct Uploads {
    dir: PathBuf,
}

/// Why a chunk was refused.
#[derive(Debug, PartialEq)]
pub enum ChunkError {
    NotFound,
    /// The chunk does not start where the upload stands; here is where it stands.
    Offset(u64),
    TooLong,
    Io(String),
}

const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Uploads {
    pub fn new(root: &Path) -> Result<Uploads, String> {
        let dir = root.join(".uploads");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let uploads = Uploads { dir };
        uploads.sweep_stale();
        Ok(uploads)
    }

    /// Removes the uploads whose bytes have not grown for [`STALE_AFTER`] (an upload's age is
    /// that of its `.part`, touched by every chunk; its record is written once), and stray
    /// files of either kind. Returns the records removed, so their quota can be given back.
    pub fn sweep_stale(&self) -> Vec<UploadMeta> {
        let stale = |p: &Path| match std::fs::metadata(p).and_then(|m| m.modified()) {
            Ok(t) => t.elapsed().unwrap_or_default() > STALE_AFTER,
            Err(_) => true,
        };
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return removed };
        for e in entries.flatten() {
            let path = e.path();
            let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|x| x.to_str())) else {
                continue;
            };
            let part = self.dir.join(format!("{stem}.part"));
            match ext {
                "json" if stale(&part) => {
                    let meta = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<UploadMeta>(&b).ok());
                    if self.remove(stem) {
                        removed.extend(meta);
                    }
                }
                // A `.part` without its record (a crash between the two writes of `create`).
                "part" if stale(&part) && !self.dir.join(format!("{stem}.json")).exists() => {
                    let _ = std::fs::remove_file(&part);
                }
                _ => {}
            }
        }
        removed
    }

    fn files(&self, id: &str) -> Option<(PathBuf, PathBuf)> {
        // IDs are ours: 32 hex digits; anything else is not an upload (and no path trick).
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some((self.dir.join(format!("{id}.part")), self.dir.join(format!("{id}.json"))))
    }

    /// Starts an upload; returns its ID.
    pub fn create(&self, meta: &UploadMeta) -> Result<String, String> {
        let r: [u8; 16] = servente_auth::secret::random_bytes();
        let id: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let (part, json) = self.files(&id).ok_or("bad id")?;
        std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
        let text = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
        write_synced(&json, &text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
        Ok(id)
    }

    /// The upload and how many bytes it holds, if `owner` has one with this ID.
    pub fn get(&self, owner: &str, id: &str) -> Option<(UploadMeta, u64)> {
        let (part, json) = self.files(id)?;
        let meta: UploadMeta = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
        if meta.owner != owner {
            return None;
        }
        let have = std::fs::metadata(part).ok()?.len();
        Some((meta, have))
    }

    /// Appends a chunk that starts at `offset`, durably; returns the new length.
    pub fn append(&self, owner: &str, id: &str, offset: u64, chunk: &[u8]) -> Result<u64, ChunkError> {
        let (meta, have) = self.get(owner, id).ok_or(ChunkError::NotFound)?;
        if offset != have {
            return Err(ChunkError::Offset(have));
        }
        if have + chunk.len() as u64 > meta.size {
            return Err(ChunkError::TooLong);
        }
        let (part, _) = self.files(id).ok_or(ChunkError::NotFound)?;
        let mut f = std::fs::OpenOptions::new().append(true).open(&part).map_err(|e| ChunkError::Io(e.to_string()))?;
        let io = |e: std::io::Error| {
            // A partial write (disk full) is cut back so the offset stays what was acknowledged.
            let _ = std::fs::OpenOptions::new().write(true).open(&part).and_then(|f| f.set_len(have));
            ChunkError::Io(e.to_string())
        };
        f.write_all(chunk).map_err(io)?;
        f.sync_data().map_err(io)?;
        // Marks the upload as active so the startup sweep keeps it.
        let _ = f.set_modified(SystemTime::now());
        Ok(have + chunk.len() as u64)
    }

    /// Every upload still on disk (after the startup sweep), to hold their quota again.
    pub fn in_progress(&self) -> Vec<UploadMeta> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// The finished bytes, for the caller to move into place; the record is removed by
    /// [`Uploads::remove`] after that.
    pub fn part_path(&self, id: &str) -> Option<PathBuf> {
        self.files(id).map(|(p, _)| p)
    }

    /// Forgets an upload; true if this call removed its record (so that of a cancel racing
    /// the finish, only one gives its quota back).
    pub fn remove(&self, id: &str) -> bool {
        let Some((part, json)) = self.files(id) else { return false };
        let removed = std::fs::remove_file(json).is_ok();
        // A large part file is freed off the answer's path.
        let _ = crate::fs::remove_freeing_later(&part);
        removed
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_must_follow_each_other_and_stay_within_the_size() {
        let d = tempfile::tempdir().expect("tempdir");
        let u = Uploads::new(d.path()).expect("uploads");
        let meta = UploadMeta { owner: "alice".into(), path: "/users/alice/f".into(), size: 10, reserved: 0, home: None };
        let id = u.create(&meta).expect("create");
        assert_eq!(u.get("bob", &id), None, "another user's upload is invisible");
        assert_eq!(u.append("alice", &id, 0, b"hello"), Ok(5));
        assert_eq!(u.append("alice", &id, 0, b"hello"), Err(ChunkError::Offset(5)), "a repeated chunk is refused with the offset");
        assert_eq!(u.append("alice", &id, 5, b"world!"), Err(ChunkError::TooLong));
        assert_eq!(u.append("alice", &id, 5, b"world"), Ok(10));
        assert_eq!(u.get("alice", &id), Some((meta, 10)));
        assert_eq!(u.append("alice", "../../etc/passwd", 0, b"x"), Err(ChunkError::NotFound));
        u.remove(&id);
        assert_eq!(u.get("alice", &id), None);
    }

    #[test]
    fn only_uploads_idle_for_a_day_are_swept() {
        let d = tempfile::tempdir().expect("tempdir");
        let u = Uploads::new(d.path()).expect("uploads");
        let meta = |n: &str| UploadMeta {
            owner: "alice".into(),
            path: format!("/users/alice/{n}"),
            size: 10,
            reserved: 7,
            home: Some("alice".into()),
        };
        let (old, fresh) = (u.create(&meta("old")).expect("create"), u.create(&meta("fresh")).expect("create"));
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        let age = |name: String| {
            let f = std::fs::OpenOptions::new().write(true).open(d.path().join(".uploads").join(name)).expect("open");
            f.set_modified(two_days_ago).expect("set mtime");
        };
        age(format!("{old}.part"));
        // A record written long ago whose bytes still grow is not stale.
        age(format!("{fresh}.json"));
        assert_eq!(u.sweep_stale(), vec![meta("old")]);
        assert_eq!(u.get("alice", &old), None);
        assert!(u.get("alice", &fresh).is_some());
        assert_eq!(u.sweep_stale(), Vec::new(), "swept once");
    }
}

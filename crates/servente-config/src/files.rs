//! The file role's settings: where users' and groups' files live, quotas, shared folders.

use crate::reader::{ByteSize, Section, TableReader};

/// `[files]`: storage and rules for WebDAV and the web file manager (mounted by `site.files`).
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub root: String,
    pub quota: ByteSize,
    pub quotas: Vec<(String, ByteSize)>,
    pub group_folders: bool,
    pub propfind_infinity: bool,
    pub max_propfind_body: ByteSize,
    pub folders: Vec<Folder>,
    /// Set by validation: `root` resolved against the config's folder, or the data folder's `files`.
    pub root_path: std::path::PathBuf,
}

impl Section for Files {
    fn read(t: &mut TableReader<'_>) -> Self {
        let f = Files {
            root: t.field(
                "root",
                String::new(),
                "Folder holding every user's and group's files (`users/NAME`, `groups/NAME`, `shared/NAME`). Relative to the config file's folder; empty means `files` in the data folder.",
            ),
            quota: t.field("quota", ByteSize(0), "Bytes each user's home folder may hold (`10 GiB`); 0 means no limit. Uploads past it get 507."),
            quotas: t.map("quotas", "Per-user quotas overriding `quota`, e.g. `alice = \"50 GiB\"`."),
            group_folders: t.field("group_folders", true, "Give every group a shared folder `groups/NAME` that its members may read and write."),
            propfind_infinity: t.field(
                "propfind_infinity",
                false,
                "Answer PROPFIND with `Depth: infinity` (a whole tree in one response). Off, such requests get 403 `propfind-finite-depth` as RFC 4918 allows.",
            ),
            max_propfind_body: t.field("max_propfind_body", ByteSize(1 << 20), "Largest XML body accepted by PROPFIND, PROPPATCH and LOCK."),
            folders: t.list("folder", "A shared folder `shared/NAME` with its own readers and writers."),
            root_path: Default::default(),
        };
        for (user, _) in &f.quotas {
            if !crate::name_ok(user) {
                t.error("quotas", format!("`{user}` is not a user name"));
            }
        }
        f
    }
}

/// `[[files.folder]]`: a folder shared by whoever its rules name.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub name: String,
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl Section for Folder {
    fn read(t: &mut TableReader<'_>) -> Self {
        let f = Folder {
            name: t.required("name", "The folder's name, as it appears under `shared/`. Unique."),
            read: t.field("read", Vec::new(), "Who may read: `users` (anyone signed in), `group:NAME`, `user:NAME`."),
            write: t.field("write", Vec::new(), "Who may also create, change and delete files (writers may read too)."),
        };
        if !crate::name_ok(&f.name) {
            t.error("name", "use lower-case letters, digits, `.`, `_` and `-` (at most 64)");
        }
        crate::check_subjects(t, "read", &f.read, false);
        crate::check_subjects(t, "write", &f.write, false);
        f
    }
}

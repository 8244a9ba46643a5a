//! The interface of the directory's storage, and the records it keeps.
//!
//! [`Store`] is what a backend implements: the embedded default is [`crate::sqlite::SqliteStore`];
//! a PostgreSQL implementation for clusters takes the same trait. Every method is one
//! transaction: it either happens whole or not at all. Methods block; async callers run them
//! on a blocking pool. The store knows nothing of passwords in clear, only their hashes.

use serde::Serialize;

/// What a store can fail with. `NotFound` and `Conflict` are the caller's fault and reach the
/// user as 404 and 409; `Backend` is the store's (disk full, corrupt file) and becomes a 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("storage error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A person (or a service account), as every role sees them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// Unix seconds.
    pub created: i64,
    pub password_changed: i64,
}

/// A user with the hash of their password, for verification only; never serialized.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub user: User,
    pub password_hash: String,
}

/// A change to a user's profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
}

/// An API token. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Token {
    pub id: String,
    pub user: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created: i64,
    pub expires: Option<i64>,
    pub last_used: Option<i64>,
}

/// A browser session. `id_hash` is the SHA-256 of the cookie value.
#[derive(Debug, Clone)]
pub struct Session {
    pub id_hash: String,
    pub user: String,
    pub csrf: String,
    pub created: i64,
    pub expires: i64,
}

/// One line of the audit log: who did what to what, from where, and how it ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub time: i64,
    pub actor: String,
    pub client: String,
    pub action: String,
    pub target: String,
    /// `ok`, `failed` (bad credentials) or `denied` (not allowed, throttled).
    pub outcome: String,
    pub detail: String,
}

/// The storage of users, groups, tokens, sessions and the audit log.
pub trait Store: Send + Sync + 'static {
    fn user_count(&self) -> StoreResult<u64>;
    fn user(&self, name: &str) -> StoreResult<Option<UserRecord>>;
    fn users(&self) -> StoreResult<Vec<User>>;
    /// Creates a user with a password hash and initial groups (which must exist).
    fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()>;
    fn update_user(&self, name: &str, patch: &UserPatch) -> StoreResult<User>;
    /// Replaces the password hash and ends every session of the user.
    fn set_password(&self, name: &str, password_hash: &str, now: i64) -> StoreResult<()>;
    /// Removes a user with their memberships, tokens and sessions.
    fn remove_user(&self, name: &str) -> StoreResult<()>;

    fn groups(&self) -> StoreResult<Vec<Group>>;
    fn group(&self, name: &str) -> StoreResult<Option<Group>>;
    fn create_group(&self, name: &str, description: &str) -> StoreResult<()>;
    fn remove_group(&self, name: &str) -> StoreResult<()>;
    fn add_member(&self, group: &str, user: &str) -> StoreResult<()>;
    fn remove_member(&self, group: &str, user: &str) -> StoreResult<()>;

    fn create_token(&self, token: &Token, secret_hash: &str) -> StoreResult<()>;
    /// The token with this id and its secret's hash.
    fn token(&self, id: &str) -> StoreResult<Option<(Token, String)>>;
    fn tokens(&self, user: Option<&str>) -> StoreResult<Vec<Token>>;
    fn revoke_token(&self, id: &str) -> StoreResult<()>;
    fn touch_token(&self, id: &str, now: i64) -> StoreResult<()>;

    fn create_session(&self, session: &Session) -> StoreResult<()>;
    fn session(&self, id_hash: &str) -> StoreResult<Option<Session>>;
    fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Deletes sessions that ended before `now`; returns how many.
    fn purge_sessions(&self, now: i64) -> StoreResult<u64>;

    /// Appends to the audit log; returns the entry's id.
    fn audit(&self, entry: &AuditEntry) -> StoreResult<i64>;
    /// Deletes entries with an id up to `last_id`.
    fn prune_audit(&self, last_id: i64) -> StoreResult<()>;
    /// The newest `limit` entries, newest first.
    fn audit_recent(&self, limit: u32) -> StoreResult<Vec<AuditEntry>>;

    /// A value that changes whenever anything is written to the store, by this process or
    /// another, and that is cheap to read (no query, nothing that blocks): `None` when the
    /// store cannot tell. It lets sign-ins be reused from memory until the store changes.
    fn change_stamp(&self) -> Option<u64> {
        None
    }
}

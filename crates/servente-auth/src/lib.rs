//! servente's one user directory: every role (web, files, mail, print, database, game, admin)
//! signs people in here, so a person has one account, one password and the permissions an
//! administrator gave them.
//!
//! - [`store`]: the storage interface ([`Store`]) and its records; [`sqlite`] is the embedded
//!   default, a PostgreSQL implementation can take the same trait.
//! - [`secret`]: argon2id password hashes, random tokens, token and session formats.
//! - [`acl`]: the permission model (subjects, levels, principals) roles express rules with.
//! - [`throttle`]: slowing and refusing repeated failed sign-ins.
//! - [`web`]: credentials from HTTP headers (Basic, Bearer, session cookie) and the cookies.
//!
//! [`Directory`] ties them together: it validates input, hashes, checks credentials, and
//! writes every sign-in, failure and administrative change to the audit log (the store's
//! `audit` table and the `audit` tracing target).

pub mod acl;
pub mod secret;
pub mod sqlite;
pub mod store;
pub mod throttle;
pub mod web;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use acl::{Acl, Level, Method, Principal, Subject};
pub use store::{AuditEntry, Group, Session, Store, StoreError, Token, User, UserPatch};
pub use throttle::{ThrottlePolicy, Verdict};

/// Members of this group administer servente (admin API and console).
pub const ADMINS: &str = "admins";
/// The account created on first run.
pub const FIRST_ADMIN: &str = "admin";
/// Scopes a token may carry: `admin` (the whole admin API), `admin:read` (its GET requests),
/// `user` (act as the user on sites and roles).
pub const SCOPES: &[&str] = &["admin", "admin:read", "user"];
/// Audit entries kept; older ones are deleted as new ones come.
pub const AUDIT_KEEP: i64 = 100_000;
/// The store file inside the data folder.
pub const STORE_FILE: &str = "directory.db";

/// User and group names: 1 to 64 characters, lowercase ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit. They appear in paths, mail addresses and logs.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Who asks for a change or a sign-in, and from where: recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub client: String,
}

impl Actor {
    /// The command line, run by a local operator.
    pub fn cli() -> Self {
        let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Actor { name: format!("cli:{who}"), client: "local".into() }
    }
}

/// Why a sign-in failed. The message is what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed sign-ins; try again in {} seconds", .0.as_secs())]
    Throttled(Duration),
    #[error("the token is unknown, revoked or expired")]
    BadToken,
    #[error("the token does not allow this")]
    Scope,
    #[error("the session has ended; sign in again")]
    NoSession,
    #[error("Basic authentication is refused over plain HTTP; use HTTPS, a session or a token")]
    BasicNeedsTls,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a change was refused. `Invalid` is the caller's input (422); the store's errors keep
/// their own meaning (404, 409, 500).
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type DirResult<T> = Result<T, DirError>;

/// A new user as the CLI or the API asks for it.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub groups: Vec<String>,
    /// `None`: generate one and return it.
    pub password: Option<String>,
}

/// Settings of the directory that come from the config.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub session_ttl: Duration,
    pub throttle: ThrottlePolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { session_ttl: Duration::from_secs(12 * 3600), throttle: ThrottlePolicy::default() }
    }
}

pub struct Directory {
    store: Arc<dyn Store>,
    throttle: throttle::Throttle,
    settings: Settings,
    /// Recently used Basic credentials: SHA-256 of user and password to the account's
    /// password hash when they were verified (salted, so any change of password changes it)
    /// and when they were last used. An entry stays valid while it is used at least once per
    /// [`BASIC_IDLE`]; before, it lapsed a minute after the check however busy the client was,
    /// so a WebDAV client paid a full password hash (tens of milliseconds) every minute.
    basic_cache: dashmap::DashMap<String, (String, Instant)>,
    /// Recent successful sign-ins, by a hash of the credentials the request sent, with when
    /// they were checked and the store's change stamp at that moment. The same credentials are
    /// let in again from memory (without a store lookup, so without leaving the connection's
    /// thread) while the store is unchanged, for up to [`RECENT`] after the check; a password
    /// or session sign-in used in the second half of that time is renewed, up to [`RECENT_MAX`]
    /// after the check. A store that cannot tell when it changed gets [`RECENT_BLIND`]. Every
    /// change this directory makes also empties it.
    recent: dashmap::DashMap<[u8; 32], Recent>,
    /// Sign-ins being checked in the store, by the same key as `recent`: requests that bring
    /// the same credentials while they are checked wait for that check (see
    /// [`Directory::check_turn`]) instead of each hashing the password.
    checking: dashmap::DashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>,
}

/// The right to check one set of credentials in the store, held while it is checked; see
/// [`Directory::check_turn`].
pub struct CheckTurn<'a> {
    dir: &'a Directory,
    key: [u8; 32],
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CheckTurn<'_> {
    fn drop(&mut self) {
        // The turn is released first, its reference to the lock with it; then the entry goes
        // once no one else holds or awaits it (the map's reference is the only one left).
        // Checked with this turn's reference still held, a waiter that took the lock and
        // finished in between would see that reference and leave the entry behind too.
        drop(self.held.take());
        self.dir.checking.remove_if(&self.key, |_, m| Arc::strong_count(m) <= 1);
    }
}

/// A sign-in kept by [`Directory::remember`].
struct Recent {
    who: web::Authenticated,
    /// When it was checked, or last renewed.
    at: Instant,
    /// When it was checked against the store: renewals stop [`RECENT_MAX`] after.
    checked: Instant,
    /// The store's change stamp then (`None`: a store that cannot tell).
    stamp: Option<u64>,
}

/// How long a sign-in in use may be renewed in memory before it is checked in the store again:
/// a bound on how long a change the store's stamp failed to show (two writes within one clock
/// tick of the file system) can go unseen.
pub const RECENT_MAX: Duration = Duration::from_secs(15 * 60);

/// How long verified Basic credentials stay known without being used (see `basic_cache`).
pub const BASIC_IDLE: Duration = Duration::from_secs(15 * 60);
/// How long a sign-in is reused from memory while the store shows no change.
pub const RECENT: Duration = Duration::from_secs(60);
/// How long a sign-in is reused from memory when the store cannot tell whether it changed: a
/// change made by another process (the CLI) is seen at most this late.
pub const RECENT_BLIND: Duration = Duration::from_secs(1);

fn check_password(p: &str) -> DirResult<()> {
    if p.chars().count() < 8 {
        return Err(DirError::Invalid("a password needs at least 8 characters".into()));
    }
    if p.len() > 1024 {
        return Err(DirError::Invalid("a password may have at most 1024 bytes".into()));
    }
    if p.chars().any(char::is_control) {
        return Err(DirError::Invalid("a password may not contain control characters".into()));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> DirResult<()> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(DirError::Invalid(format!("{field} must be at most {max} characters, without control characters")));
    }
    Ok(())
}

fn check_name(kind: &str, name: &str) -> DirResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(DirError::Invalid(format!(
            "`{name}` is not a valid {kind} name: use 1 to 64 lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )))
    }
}

fn hash(password: &str) -> DirResult<String> {
    secret::hash_password(password).map_err(|e| DirError::Store(StoreError::Backend(e.to_string())))
}

impl Directory {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Directory {
            store,
            throttle: throttle::Throttle::new(settings.throttle),
            settings,
            basic_cache: dashmap::DashMap::new(),
            recent: dashmap::DashMap::new(),
            checking: dashmap::DashMap::new(),
        }
    }

    /// Opens the embedded store in `data_dir` (created, private to this user, when missing).
    pub fn open(data_dir: &Path, settings: Settings) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| StoreError::Backend(format!("cannot create the data folder {}: {e}", data_dir.display())))?;
        let store = sqlite::SqliteStore::open(&data_dir.join(STORE_FILE))?;
        Ok(Directory::new(Arc::new(store), settings))
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Records an event in the audit log (store and `audit` tracing target). A store failure
    /// is logged, not returned: the change it describes has already happened.
    pub fn audit(&self, actor: &Actor, action: &str, target: &str, outcome: &str, detail: &str) {
        tracing::info!(target: "audit", actor = %actor.name, client = %actor.client, action, target_name = target, outcome, detail, "audit");
        let entry = AuditEntry {
            id: 0,
            time: unix_now(),
            actor: actor.name.clone(),
            client: actor.client.clone(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
        };
        match self.store.audit(&entry) {
            // Keep the newest entries only, so a flood of failed sign-ins cannot fill the disk.
            Ok(id) if id % 1000 == 0 => {
                if let Err(e) = self.store.prune_audit(id - AUDIT_KEEP) {
                    tracing::warn!("cannot prune the audit log: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(action, target_name = target, "cannot write the audit log: {e}"),
        }
    }

    /// On first run (no user at all): creates the `admins` group and the `admin` account with
    /// `password`, or a generated one which is returned to be shown once.
    pub fn ensure_admin(&self, password: Option<String>) -> DirResult<Option<String>> {
        if self.store.user_count()? > 0 {
            return Ok(None);
        }
        let actor = Actor { name: "servente".into(), client: "local".into() };
        if self.store.group(ADMINS)?.is_none() {
            self.add_group(&actor, ADMINS, "Administrators of servente")?;
        }
        let generated = password.is_none();
        let (_, pw) = self.add_user(
            &actor,
            NewUser {
                name: FIRST_ADMIN.into(),
                display_name: "Administrator".into(),
                groups: vec![ADMINS.into()],
                password,
                ..Default::default()
            },
        )?;
        Ok(if generated { pw } else { None })
    }

    pub fn add_user(&self, actor: &Actor, new: NewUser) -> DirResult<(User, Option<String>)> {
        check_name("user", &new.name)?;
        check_text("display_name", &new.display_name, 200)?;
        check_text("email", &new.email, 254)?;
        if !new.email.is_empty() && !new.email.contains('@') {
            return Err(DirError::Invalid(format!("`{}` is not a mail address", new.email)));
        }
        let (password, generated) = match new.password {
            Some(p) => {
                check_password(&p)?;
                (p, false)
            }
            None => (secret::generate_password(), true),
        };
        let now = unix_now();
        let mut groups = new.groups;
        groups.sort();
        groups.dedup();
        let user = User {
            name: new.name,
            display_name: new.display_name,
            email: new.email,
            groups,
            disabled: false,
            created: now,
            password_changed: now,
        };
        self.store.create_user(&user, &hash(&password)?)?;
        self.audit(actor, "user.add", &user.name, "ok", &format!("groups: {}", user.groups.join(",")));
        Ok((user, generated.then_some(password)))
    }

    /// Sets a user's password (generated and returned when `None`) and ends their sessions.
    pub fn set_password(&self, actor: &Actor, name: &str, password: Option<String>) -> DirResult<Option<String>> {
        let (password, generated) = match password {
            Some(p) => {
                check_password(&p)?;
                (p, false)
            }
            None => (secret::generate_password(), true),
        };
        self.store.set_password(name, &hash(&password)?, unix_now())?;
        self.recent.clear();
        self.audit(actor, "user.passwd", name, "ok", "");
        Ok(generated.then_some(password))
    }

    pub fn update_user(&self, actor: &Actor, name: &str, patch: UserPatch) -> DirResult<User> {
        if let Some(d) = &patch.display_name {
            check_text("display_name", d, 200)?;
        }
        if let Some(e) = &patch.email {
            check_text("email", e, 254)?;
            if !e.is_empty() && !e.contains('@') {
                return Err(DirError::Invalid(format!("`{e}` is not a mail address")));
            }
        }
        let user = self.store.update_user(name, &patch)?;
        self.recent.clear();
        let detail = match patch.disabled {
            Some(true) => "disabled",
            Some(false) => "enabled",
            None => "profile",
        };
        self.audit(actor, "user.update", name, "ok", detail);
        Ok(user)
    }

    pub fn remove_user(&self, actor: &Actor, name: &str) -> DirResult<()> {
        if let Some(rec) = self.store.user(name)?
            && rec.user.groups.iter().any(|g| g == ADMINS)
            && self.store.group(ADMINS)?.is_some_and(|g| g.members.len() == 1)
        {
            return Err(DirError::Invalid(format!("`{name}` is the last administrator; make someone else an admin first")));
        }
        self.store.remove_user(name)?;
        self.recent.clear();
        self.audit(actor, "user.remove", name, "ok", "");
        Ok(())
    }

    pub fn add_group(&self, actor: &Actor, name: &str, description: &str) -> DirResult<Group> {
        check_name("group", name)?;
        check_text("description", description, 500)?;
        self.store.create_group(name, description)?;
        self.audit(actor, "group.add", name, "ok", "");
        Ok(Group { name: name.into(), description: description.into(), members: Vec::new() })
    }

    pub fn remove_group(&self, actor: &Actor, name: &str) -> DirResult<()> {
        if name == ADMINS {
            return Err(DirError::Invalid(format!("the `{ADMINS}` group cannot be removed")));
        }
        self.store.remove_group(name)?;
        self.recent.clear();
        self.audit(actor, "group.remove", name, "ok", "");
        Ok(())
    }

    pub fn add_member(&self, actor: &Actor, group: &str, user: &str) -> DirResult<()> {
        self.store.add_member(group, user)?;
        self.recent.clear();
        self.audit(actor, "group.member.add", group, "ok", user);
        Ok(())
    }

    pub fn remove_member(&self, actor: &Actor, group: &str, user: &str) -> DirResult<()> {
        if group == ADMINS && self.store.group(ADMINS)?.is_some_and(|g| g.members.len() == 1 && g.members[0] == user) {
            return Err(DirError::Invalid(format!("`{user}` is the last administrator")));
        }
        self.store.remove_member(group, user)?;
        self.recent.clear();
        self.audit(actor, "group.member.remove", group, "ok", user);
        Ok(())
    }

    /// Creates a token; the returned secret is shown once and never stored.
    pub fn create_token(
        &self,
        actor: &Actor,
        user: &str,
        name: &str,
        scopes: &[String],
        expires_in: Option<Duration>,
    ) -> DirResult<(Token, String)> {
        check_text("name", name, 200)?;
        if name.is_empty() {
            return Err(DirError::Invalid("a token needs a name saying what it is for".into()));
        }
        if scopes.is_empty() {
            return Err(DirError::Invalid(format!("a token needs at least one scope: {}", SCOPES.join(", "))));
        }
        for s in scopes {
            if !SCOPES.contains(&s.as_str()) {
                return Err(DirError::Invalid(format!("`{s}` is not a scope: use {}", SCOPES.join(", "))));
            }
        }
        let (id, secret) = secret::new_token();
        let now = unix_now();
        let token = Token {
            id,
            user: user.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            created: now,
            expires: expires_in.map(|d| now + d.as_secs() as i64),
            last_used: None,
        };
        self.store.create_token(&token, &secret::sha256_hex(&secret))?;
        self.audit(actor, "token.create", &token.id, "ok", &format!("user {user}, scopes {}", scopes.join(" ")));
        Ok((token, secret))
    }

    pub fn revoke_token(&self, actor: &Actor, id: &str) -> DirResult<()> {
        self.store.revoke_token(id)?;
        self.recent.clear();
        self.audit(actor, "token.revoke", id, "ok", "");
        Ok(())
    }

    fn principal(&self, user: User, method: Method, scopes: Option<Vec<String>>) -> Principal {
        Principal { user: user.name, groups: user.groups, method, scopes }
    }

    /// Checks a user name and password, with throttling. Blocks (hashing, and the delay of a
    /// throttled attempt): call it from a blocking thread.
    pub fn login(&self, user: &str, password: &str, client: &Client) -> Result<Principal, AuthError> {
        // The claimed name goes to logs: keep it short and free of line breaks and controls.
        let actor = Actor { name: printable(user), client: client.label() };
        let account_key = format!("user:{}", actor.name);
        let addr_key = format!("addr:{}", client.label());
        let keys = [account_key.as_str(), addr_key.as_str()];
        match self.throttle.check(&keys, Instant::now()) {
            Verdict::Go => {}
            Verdict::Delay(d) => std::thread::sleep(d),
            Verdict::Locked(left) => {
                self.audit(&actor, "login", user, "denied", "throttled");
                return Err(AuthError::Throttled(left));
            }
        }
        let found = if valid_name(user) { self.store.user(user)? } else { None };
        let ok = match &found {
            Some(rec) => secret::verify_password(password, &rec.password_hash) && !rec.user.disabled,
            None => {
                secret::verify_dummy(password);
                false
            }
        };
        match found {
            Some(rec) if ok => {
                self.throttle.succeeded(&account_key);
                self.audit(&actor, "login", user, "ok", client.method_label());
                Ok(self.principal(rec.user, Method::Password, None))
            }
            _ => {
                self.throttle.failed(&keys, Instant::now());
                self.audit(&actor, "login", user, "failed", "wrong user name or password (or account disabled)");
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// Checks Basic credentials, sent again with every request: a pair verified before and
    /// used in the last [`BASIC_IDLE`] is accepted from memory while the account's password
    /// and state are unchanged, so that a WebDAV client does not pay a password hash per request.
    pub fn verify_basic(&self, user: &str, password: &str, client: &Client) -> Result<Principal, AuthError> {
        // A token works as the password of its own user ("app passwords" for WebDAV clients,
        // which only know Basic), with the token's scopes.
        if secret::token_id(password).is_some() {
            let p = self.authenticate_token(password)?;
            return if p.user == user { Ok(p) } else { Err(AuthError::BadToken) };
        }
        let key = secret::sha256_hex(&format!("{user}\0{password}"));
        if let Some(hit) = self.basic_cache.get(&key).map(|e| e.clone())
            && hit.1.elapsed() < BASIC_IDLE
            && let Some(rec) = self.store.user(user)?
            && secret::constant_time_eq(&rec.password_hash, &hit.0)
            && !rec.user.disabled
        {
            if hit.1.elapsed() >= RECENT
                && let Some(mut e) = self.basic_cache.get_mut(&key)
            {
                e.1 = Instant::now();
            }
            return Ok(self.principal(rec.user, Method::Password, None));
        }
        let p = self.login(user, password, client)?;
        if let Some(rec) = self.store.user(user)? {
            if self.basic_cache.len() > 10_000 {
                self.basic_cache.retain(|_, e| e.1.elapsed() < BASIC_IDLE);
            }
            self.basic_cache.insert(key, (rec.password_hash, Instant::now()));
        }
        Ok(p)
    }

    /// Checks an API token.
    pub fn authenticate_token(&self, secret_text: &str) -> Result<Principal, AuthError> {
        let id = secret::token_id(secret_text).ok_or(AuthError::BadToken)?;
        let (token, hash) = self.store.token(id)?.ok_or(AuthError::BadToken)?;
        let now = unix_now();
        if !secret::constant_time_eq(&hash, &secret::sha256_hex(secret_text)) || token.expires.is_some_and(|e| e <= now) {
            return Err(AuthError::BadToken);
        }
        let rec = self.store.user(&token.user)?.ok_or(AuthError::BadToken)?;
        if rec.user.disabled {
            return Err(AuthError::BadToken);
        }
        // Coarse (per minute) so that a busy script does not write on every request.
        if token.last_used.is_none_or(|t| now - t >= 60) {
            self.store.touch_token(id, now)?;
        }
        Ok(self.principal(rec.user, Method::Token, Some(token.scopes)))
    }

    /// The sign-in of `creds` if the same credentials signed in recently and the store has not
    /// changed since (see [`Directory::recent`]'s field); sessions must also still be live.
    /// Never blocks.
    pub fn recent(&self, creds: &web::Credentials) -> Option<web::Authenticated> {
        let key = recent_key(creds)?;
        let entry = self.recent.get(&key)?;
        let Recent { who, at, checked, stamp } = &*entry;
        let age = at.elapsed();
        let fresh = match stamp {
            Some(s) => age < RECENT && self.store.change_stamp() == Some(*s),
            None => age < RECENT_BLIND,
        };
        if !fresh || who.session.as_ref().is_some_and(|s| s.expires <= unix_now()) {
            return None;
        }
        let who = who.clone();
        // In use while the store is unchanged: kept for another RECENT (renewed now and then,
        // not at every request), so a busy client does not go back to the store every minute.
        // Not a token's: its expiry is only checked in the store.
        if stamp.is_some() && age >= RECENT / 2 && who.principal.method != Method::Token && checked.elapsed() < RECENT_MAX {
            drop(entry);
            if let Some(mut e) = self.recent.get_mut(&key) {
                e.at = Instant::now();
            }
        }
        Some(who)
    }

    /// Waits until no other request is checking the same credentials, and holds that right
    /// until the turn is dropped. A client that opens its connections together (rclone's
    /// transfers, a browser's parallel requests) sends the same credentials on all of them at
    /// once; each used to hash the password on the blocking pool, so that on 2 cores eight of
    /// them made the first answers wait about 250 ms. Now one checks, and the others find its
    /// sign-in in memory ([`Directory::recent`]). `None` for credentials that have no key.
    pub async fn check_turn(&self, creds: &web::Credentials) -> Option<CheckTurn<'_>> {
        let key = recent_key(creds)?;
        if self.checking.len() >= 10_000 {
            // Turns abandoned by cancelled requests can leave idle entries behind.
            self.checking.retain(|_, m| Arc::strong_count(m) > 1);
        }
        let lock = self.checking.entry(key).or_default().clone();
        Some(CheckTurn { dir: self, key, held: Some(lock.lock_owned().await) })
    }

    /// The store's change stamp, read before a sign-in is checked and handed to
    /// [`Directory::remember`] after, so that a change made in between is not missed.
    pub fn change_stamp(&self) -> Option<u64> {
        self.store.change_stamp()
    }

    /// Keeps a successful sign-in for [`Directory::recent`].
    pub fn remember(&self, creds: &web::Credentials, who: &web::Authenticated, stamp: Option<u64>) {
        let Some(key) = recent_key(creds) else { return };
        if self.recent.len() >= 10_000 {
            self.recent.retain(|_, e| e.at.elapsed() < RECENT);
        }
        let now = Instant::now();
        self.recent.insert(key, Recent { who: who.clone(), at: now, checked: now, stamp });
    }

    /// Starts a browser session for a signed-in principal; returns the cookie value (shown
    /// only to that browser) and the session.
    pub fn create_session(&self, who: &Principal) -> Result<(String, Session), AuthError> {
        let cookie = secret::random_token();
        let now = unix_now();
        let session = Session {
            id_hash: secret::sha256_hex(&cookie),
            user: who.user.clone(),
            csrf: secret::random_token(),
            created: now,
            expires: now + self.settings.session_ttl.as_secs() as i64,
        };
        self.store.create_session(&session)?;
        // Now and then, sweep sessions that have ended.
        if secret::random_bytes::<1>()[0] < 8 {
            let _ = self.store.purge_sessions(now);
        }
        Ok((cookie, session))
    }

    /// The session of a cookie value, if it is live and its user still enabled.
    pub fn session(&self, cookie: &str) -> Result<(Principal, Session), AuthError> {
        let session = self.store.session(&secret::sha256_hex(cookie))?.ok_or(AuthError::NoSession)?;
        if session.expires <= unix_now() {
            return Err(AuthError::NoSession);
        }
        let rec = self.store.user(&session.user)?.ok_or(AuthError::NoSession)?;
        if rec.user.disabled {
            return Err(AuthError::NoSession);
        }
        Ok((self.principal(rec.user, Method::Session, None), session))
    }

    pub fn end_session(&self, cookie: &str, actor: &Actor) -> Result<(), AuthError> {
        self.store.delete_session(&secret::sha256_hex(cookie))?;
        self.recent.clear();
        self.audit(actor, "logout", &actor.name, "ok", "");
        Ok(())
    }
}

/// What [`Directory::recent`] files a sign-in under: a SHA-256 of the kind and the secret,
/// so the map holds no secret and a lookup's timing tells nothing about one.
fn recent_key(creds: &web::Credentials) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match creds {
        web::Credentials::Basic { user, password } => {
            h.update(b"basic\0");
            h.update(user.as_bytes());
            h.update(b"\0");
            h.update(password.as_bytes());
        }
        web::Credentials::Bearer(t) => {
            h.update(b"bearer\0");
            h.update(t.as_bytes());
        }
        web::Credentials::Cookie(c) => {
            h.update(b"cookie\0");
            h.update(c.as_bytes());
        }
        web::Credentials::None | web::Credentials::Malformed => return None,
    }
    Some(h.finalize().into())
}

/// A claimed (unchecked) name made safe for logs: at most 64 characters, control
/// characters replaced by `?`.
pub fn printable(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Where a client connects from, for throttling, the audit log and the Basic-auth rule.
#[derive(Debug, Clone)]
pub struct Client {
    /// `None` on a Unix socket.
    pub ip: Option<IpAddr>,
    pub tls: bool,
}

impl Client {
    pub fn label(&self) -> String {
        match self.ip {
            Some(ip) => ip.to_canonical().to_string(),
            None => "unix".into(),
        }
    }

    fn method_label(&self) -> &'static str {
        if self.tls { "over TLS" } else { "over plain HTTP" }
    }

    /// Loopback or a Unix socket: the network cannot see the traffic.
    pub fn is_local(&self) -> bool {
        // An IPv4 client of a `[::]` listener shows up as `::ffff:127.0.0.1`.
        self.ip.is_none_or(|ip| ip.to_canonical().is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let store = sqlite::SqliteStore::in_memory().expect("store");
        let settings = Settings {
            throttle: ThrottlePolicy { delay_after: 100, lock_after: 3, window: Duration::from_secs(60) },
            ..Settings::default()
        };
        Directory::new(Arc::new(store), settings)
    }

    fn local() -> Client {
        Client { ip: Some([127, 0, 0, 1].into()), tls: false }
    }

    #[test]
    fn first_run_creates_one_admin_once() {
        let d = dir();
        let pw = d.ensure_admin(None).expect("first run").expect("a generated password");
        let p = d.login(FIRST_ADMIN, &pw, &local()).expect("admin signs in");
        assert!(p.is_admin());
        assert_eq!(d.ensure_admin(None).expect("second run"), None);
        assert_eq!(d.store().users().expect("users").len(), 1);
    }

    #[test]
    fn users_groups_and_logins() {
        let d = dir();
        let a = Actor::cli();
        d.add_group(&a, "staff", "").expect("group");
        let (u, pw) = d
            .add_user(
                &a,
                NewUser { name: "alice".into(), groups: vec!["staff".into()], password: Some("s3cret-pass".into()), ..Default::default() },
            )
            .expect("user");
        assert_eq!(pw, None);
        assert_eq!(u.groups, vec!["staff".to_string()]);
        assert!(matches!(
            d.add_user(&a, NewUser { name: "alice".into(), ..Default::default() }),
            Err(DirError::Store(StoreError::Conflict(_)))
        ));
        assert!(matches!(d.add_user(&a, NewUser { name: "Alice".into(), ..Default::default() }), Err(DirError::Invalid(_))));
        assert!(matches!(
            d.add_user(&a, NewUser { name: "bob".into(), password: Some("short".into()), ..Default::default() }),
            Err(DirError::Invalid(_))
        ));
        assert!(matches!(
            d.add_user(&a, NewUser { name: "bob".into(), groups: vec!["nope".into()], ..Default::default() }),
            Err(DirError::Store(StoreError::NotFound(_)))
        ));
        assert!(d.store().user("bob").expect("lookup").is_none(), "a refused add leaves nothing behind");
        let p = d.login("alice", "s3cret-pass", &local()).expect("login");
        assert!(p.in_group("staff") && !p.is_admin());
        assert!(matches!(d.login("alice", "wrong", &local()), Err(AuthError::BadCredentials)));
        d.update_user(&a, "alice", UserPatch { disabled: Some(true), ..Default::default() }).expect("disable");
        assert!(matches!(d.login("alice", "s3cret-pass", &local()), Err(AuthError::BadCredentials)));
        let audit = d.store().audit_recent(50).expect("audit");
        assert!(audit.iter().any(|e| e.action == "login" && e.outcome == "failed"));
        assert!(audit.iter().any(|e| e.action == "user.add" && e.target == "alice"));
        assert!(!audit.iter().any(|e| e.detail.contains("s3cret")), "passwords never reach the audit log");
    }

    #[test]
    fn repeated_failures_lock_the_account() {
        let d = dir();
        let a = Actor::cli();
        d.add_user(&a, NewUser { name: "carol".into(), password: Some("carol-password".into()), ..Default::default() }).expect("user");
        for _ in 0..3 {
            assert!(matches!(d.login("carol", "nope", &local()), Err(AuthError::BadCredentials)));
        }
        assert!(matches!(d.login("carol", "carol-password", &local()), Err(AuthError::Throttled(_))));
    }

    #[test]
    fn tokens_and_sessions() {
        let d = dir();
        let a = Actor::cli();
        d.add_user(&a, NewUser { name: "dave".into(), password: Some("dave-password".into()), ..Default::default() }).expect("user");
        let (t, secret) = d.create_token(&a, "dave", "backup script", &["admin:read".into()], None).expect("token");
        let p = d.authenticate_token(&secret).expect("token works");
        assert_eq!(p.user, "dave");
        assert!(p.has_scope("admin:read") && !p.has_scope("admin"));
        assert!(matches!(d.authenticate_token(&format!("{secret}x")), Err(AuthError::BadToken)));
        let via_basic = d.verify_basic("dave", &secret, &local()).expect("a token is its user's app password");
        assert!(via_basic.has_scope("admin:read") && !via_basic.has_scope("admin"), "with the token's scopes");
        assert!(matches!(d.verify_basic("erin", &secret, &local()), Err(AuthError::BadToken)), "only for its own user");
        assert!(d.create_token(&a, "dave", "x", &["root".into()], None).is_err());
        d.revoke_token(&a, &t.id).expect("revoke");
        assert!(matches!(d.authenticate_token(&secret), Err(AuthError::BadToken)));

        let who = d.login("dave", "dave-password", &local()).expect("login");
        let (cookie, s) = d.create_session(&who).expect("session");
        let (p, s2) = d.session(&cookie).expect("live session");
        assert_eq!((p.user.as_str(), s2.csrf.as_str()), ("dave", s.csrf.as_str()));
        assert!(matches!(d.session("forged"), Err(AuthError::NoSession)));
        d.set_password(&a, "dave", Some("another-password".into())).expect("passwd");
        assert!(matches!(d.session(&cookie), Err(AuthError::NoSession)), "a new password ends sessions");
    }

    #[test]
    fn recent_sign_ins_are_reused_until_a_change() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let d = Arc::new(dir());
        let a = Actor::cli();
        d.add_group(&a, "staff", "").expect("group");
        d.add_user(&a, NewUser { name: "fay".into(), password: Some("fay-password".into()), ..Default::default() }).expect("user");
        let basic = |pw: &str| web::Credentials::Basic { user: "fay".into(), password: pw.into() };
        let sign_in = |c: web::Credentials| rt.block_on(web::authenticate(&d, c, &local(), false));
        assert!(d.recent(&basic("fay-password")).is_none());
        sign_in(basic("fay-password")).expect("signs in").expect("a principal");
        let hit = d.recent(&basic("fay-password")).expect("reused from memory");
        assert_eq!(hit.principal.user, "fay");
        assert!(d.recent(&basic("fay-passwore")).is_none(), "only the same secret");
        assert!(sign_in(basic("wrong-password")).is_err());

        // Every change the directory makes is seen at once.
        d.add_member(&a, "staff", "fay").expect("member");
        assert!(d.recent(&basic("fay-password")).is_none());
        let again = sign_in(basic("fay-password")).expect("signs in").expect("a principal");
        assert!(again.principal.in_group("staff"));
        d.set_password(&a, "fay", Some("new-fay-password".into())).expect("passwd");
        assert!(sign_in(basic("fay-password")).is_err(), "the old password is refused at once");

        let who = d.login("fay", "new-fay-password", &local()).expect("login");
        let (cookie, _) = d.create_session(&who).expect("session");
        sign_in(web::Credentials::Cookie(cookie.clone())).expect("session").expect("a principal");
        assert!(d.recent(&web::Credentials::Cookie(cookie.clone())).is_some());
        d.end_session(&cookie, &a).expect("sign out");
        assert!(sign_in(web::Credentials::Cookie(cookie)).is_err(), "a session ended is refused at once");
    }

    /// Eight requests with the same new credentials at once hash the password once: the others
    /// wait for that check and are let in from memory. Wrong credentials at once are each
    /// refused, and no turn is left behind.
    #[test]
    fn the_same_credentials_at_once_are_checked_once() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        let d = Arc::new(dir());
        let a = Actor::cli();
        d.add_user(&a, NewUser { name: "joe".into(), password: Some("joe-password".into()), ..Default::default() }).expect("user");
        let logins = || d.store().audit_recent(100).expect("audit").iter().filter(|e| e.action == "login").count();
        let at_once = |password: &'static str| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let d = d.clone();
                        tokio::spawn(async move {
                            let creds = web::Credentials::Basic { user: "joe".into(), password: password.into() };
                            web::authenticate(&d, creds, &local(), false).await.map(|w| w.map(|w| w.principal.user))
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.expect("task"));
                }
                out
            })
        };
        let before = logins();
        for r in at_once("joe-password") {
            assert_eq!(r.expect("signed in").as_deref(), Some("joe"));
        }
        assert_eq!(logins() - before, 1, "one password check for eight requests");
        for r in at_once("not-joes-password") {
            assert!(r.is_err(), "each wrong attempt is refused");
        }
        assert!(d.checking.is_empty(), "no turn left behind");
    }

    #[test]
    fn basic_credentials_in_use_stay_known() {
        let d = dir();
        let a = Actor::cli();
        d.add_user(&a, NewUser { name: "ivy".into(), password: Some("ivy-password".into()), ..Default::default() }).expect("user");
        let logins = || d.store().audit_recent(100).expect("audit").iter().filter(|e| e.action == "login").count();
        let backdate = |by: Duration| {
            for mut e in d.basic_cache.iter_mut() {
                e.1 = Instant::now().checked_sub(by).expect("an instant in the past");
            }
        };
        d.verify_basic("ivy", "ivy-password", &local()).expect("first check hashes");
        assert_eq!(logins(), 1);
        // Used again after five minutes: known, no new hash, and the entry is fresh again.
        backdate(Duration::from_secs(5 * 60));
        d.verify_basic("ivy", "ivy-password", &local()).expect("known");
        assert_eq!(logins(), 1, "no second password check");
        assert!(d.basic_cache.iter().all(|e| e.1.elapsed() < RECENT), "use renews the entry");
        // Unused for longer than BASIC_IDLE: checked in full again.
        backdate(BASIC_IDLE + Duration::from_secs(1));
        d.verify_basic("ivy", "ivy-password", &local()).expect("checked again");
        assert_eq!(logins(), 2);
        // A new password makes the known pair worthless at once.
        d.set_password(&a, "ivy", Some("ivy-password-2".into())).expect("passwd");
        assert!(d.verify_basic("ivy", "ivy-password", &local()).is_err());
    }

    #[test]
    fn sign_ins_in_use_are_renewed_but_not_tokens() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = Arc::new(Directory::open(tmp.path(), Settings::default()).expect("store"));
        let a = Actor::cli();
        d.add_user(&a, NewUser { name: "hal".into(), password: Some("hal-password".into()), ..Default::default() }).expect("user");
        let (_, token) = d.create_token(&a, "hal", "t", &["user".into()], None).expect("token");
        let basic = web::Credentials::Basic { user: "hal".into(), password: "hal-password".into() };
        let bearer = web::Credentials::Bearer(token);
        let age = |c: &web::Credentials| d.recent.get(&recent_key(c).expect("key")).map(|e| e.at.elapsed()).expect("remembered");
        let backdate = |c: &web::Credentials, by: Duration| {
            if let Some(mut e) = d.recent.get_mut(&recent_key(c).expect("key")) {
                e.at = Instant::now().checked_sub(by).expect("an instant in the past");
            }
        };
        let sign_in =
            |c: &web::Credentials| rt.block_on(web::authenticate(&d, c.clone(), &local(), false)).expect("signs in").expect("a principal");
        // A password sign-in used late in its minute is renewed...
        sign_in(&basic);
        backdate(&basic, RECENT - Duration::from_secs(5));
        assert!(d.recent(&basic).is_some(), "still fresh");
        assert!(age(&basic) < RECENT / 2, "a password sign-in in use is renewed");
        // ...but not past RECENT_MAX after its check,
        if let Some(mut e) = d.recent.get_mut(&recent_key(&basic).expect("key")) {
            e.checked = Instant::now().checked_sub(RECENT_MAX + Duration::from_secs(1)).expect("an instant in the past");
        }
        backdate(&basic, RECENT - Duration::from_secs(5));
        assert!(d.recent(&basic).is_some(), "still within its minute");
        assert!(age(&basic) >= RECENT / 2, "not renewed past RECENT_MAX");
        // ...and one unused for RECENT is checked again.
        backdate(&basic, RECENT + Duration::from_secs(1));
        assert!(d.recent(&basic).is_none(), "unused for RECENT: checked again");
        // A token's is never renewed: its expiry lives in the store.
        sign_in(&bearer);
        backdate(&bearer, RECENT - Duration::from_secs(5));
        assert!(d.recent(&bearer).is_some(), "still fresh");
        assert!(age(&bearer) >= RECENT / 2, "a token sign-in is not renewed");
    }

    #[test]
    fn a_change_by_another_process_ends_reuse_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let tmp = tempfile::tempdir().expect("temp dir");
        let server = Arc::new(Directory::open(tmp.path(), Settings::default()).expect("store"));
        let cli = Directory::open(tmp.path(), Settings::default()).expect("the CLI's view of the same store");
        let a = Actor::cli();
        cli.add_user(&a, NewUser { name: "gus".into(), password: Some("gus-password".into()), ..Default::default() }).expect("user");
        let creds = web::Credentials::Basic { user: "gus".into(), password: "gus-password".into() };
        rt.block_on(web::authenticate(&server, creds.clone(), &local(), false)).expect("signs in");
        assert!(server.recent(&creds).is_some(), "reused while the store is unchanged");
        assert!(server.recent(&creds).is_some());
        cli.update_user(&a, "gus", UserPatch { disabled: Some(true), ..Default::default() }).expect("disable");
        assert!(server.recent(&creds).is_none(), "the other process's write is seen");
        assert!(rt.block_on(web::authenticate(&server, creds, &local(), false)).is_err());
    }

    #[test]
    fn mapped_loopback_is_local() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("address");
        let c = Client { ip: Some(mapped), tls: false };
        assert!(c.is_local());
        assert_eq!(c.label(), "127.0.0.1");
        assert!(!Client { ip: Some("192.0.2.1".parse().expect("address")), tls: false }.is_local());
        assert!(Client { ip: None, tls: false }.is_local());
    }

    #[test]
    fn the_last_admin_stays() {
        let d = dir();
        d.ensure_admin(Some("admin-password".into())).expect("first run");
        let a = Actor::cli();
        assert!(matches!(d.remove_user(&a, FIRST_ADMIN), Err(DirError::Invalid(_))));
        assert!(matches!(d.remove_member(&a, ADMINS, FIRST_ADMIN), Err(DirError::Invalid(_))));
        assert!(matches!(d.remove_group(&a, ADMINS), Err(DirError::Invalid(_))));
    }

    #[test]
    fn removing_a_user_takes_their_tokens_and_memberships() {
        let d = dir();
        let a = Actor::cli();
        d.add_group(&a, "staff", "").expect("group");
        d.add_user(&a, NewUser { name: "erin".into(), groups: vec!["staff".into()], ..Default::default() }).expect("user");
        let (_, secret) = d.create_token(&a, "erin", "t", &["user".into()], None).expect("token");
        d.remove_user(&a, "erin").expect("remove");
        assert!(d.store().group("staff").expect("group").expect("exists").members.is_empty());
        assert!(d.store().tokens(None).expect("tokens").is_empty());
        assert!(matches!(d.authenticate_token(&secret), Err(AuthError::BadToken)));
    }
}

//! The permission model every role uses: who (a [`Subject`]) may do what (a [`Level`]) on a
//! thing (a site path today; a folder, mailbox, print queue, database or game room later).
//!
//! A role keeps an [`Acl`] per thing it protects and asks `acl.allows(principal, level)`.
//! Subjects are written in the config as `public`, `users` (anyone signed in), `group:NAME`
//! and `user:NAME`; a level is `read`, `write` or `manage`, each implying the ones before.

use std::fmt;

/// Someone a permission is granted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Everyone, signed in or not.
    Public,
    /// Anyone signed in.
    Users,
    Group(String),
    User(String),
}

impl Subject {
    pub fn parse(text: &str) -> Result<Subject, String> {
        match text {
            "public" => Ok(Subject::Public),
            "users" => Ok(Subject::Users),
            _ => match text.split_once(':') {
                Some(("group", n)) if crate::valid_name(n) => Ok(Subject::Group(n.to_string())),
                Some(("user", n)) if crate::valid_name(n) => Ok(Subject::User(n.to_string())),
                _ => Err(format!("`{text}` is not a subject: write `public`, `users`, `group:NAME` or `user:NAME`")),
            },
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Public => f.write_str("public"),
            Subject::Users => f.write_str("users"),
            Subject::Group(g) => write!(f, "group:{g}"),
            Subject::User(u) => write!(f, "user:{u}"),
        }
    }
}

/// What a permission allows; each level implies the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Read,
    Write,
    Manage,
}

/// How a principal proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    Session,
    Token,
}

/// A signed-in user as the roles see them.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user: String,
    pub groups: Vec<String>,
    pub method: Method,
    /// The token's scopes when signed in with a token; `None` for a password or session,
    /// which carry the user's full rights.
    pub scopes: Option<Vec<String>>,
}

impl Principal {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether a token principal carries `scope` (always true for password and session).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.iter().any(|x| x == scope))
    }

    /// Administrators: members of the `admins` group.
    pub fn is_admin(&self) -> bool {
        self.in_group(crate::ADMINS)
    }
}

/// A list of grants. Empty means nobody.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acl {
    grants: Vec<(Subject, Level)>,
}

impl Acl {
    pub fn new() -> Self {
        Acl::default()
    }

    pub fn grant(mut self, subject: Subject, level: Level) -> Self {
        self.grants.push((subject, level));
        self
    }

    /// Grants `level` to every subject written in `texts` (config syntax).
    pub fn parse(texts: &[String], level: Level) -> Result<Acl, String> {
        let mut acl = Acl::new();
        for t in texts {
            acl = acl.grant(Subject::parse(t)?, level);
        }
        Ok(acl)
    }

    /// Whether anyone at all, signed in or not, has `level`.
    pub fn is_public(&self, level: Level) -> bool {
        self.grants.iter().any(|(s, l)| *s == Subject::Public && *l >= level)
    }

    /// Whether `who` (or nobody signed in, for `None`) has `level`.
    pub fn allows(&self, who: Option<&Principal>, level: Level) -> bool {
        self.grants.iter().filter(|(_, l)| *l >= level).any(|(s, _)| match (s, who) {
            (Subject::Public, _) => true,
            (_, None) => false,
            (Subject::Users, Some(_)) => true,
            (Subject::Group(g), Some(p)) => p.in_group(g),
            (Subject::User(u), Some(p)) => p.user == *u,
        })
    }

    pub fn subjects(&self) -> impl Iterator<Item = &Subject> {
        self.grants.iter().map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal { user: "alice".into(), groups: vec!["staff".into()], method: Method::Password, scopes: None }
    }

    #[test]
    fn subjects_parse_and_print() {
        for t in ["public", "users", "group:staff", "user:alice"] {
            assert_eq!(Subject::parse(t).expect(t).to_string(), t);
        }
        for bad in ["everyone", "group:", "user:Bad Name", "role:x"] {
            assert!(Subject::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_match_by_subject_and_level() {
        let acl = Acl::new().grant(Subject::Group("staff".into()), Level::Read).grant(Subject::User("bob".into()), Level::Write);
        assert!(acl.allows(Some(&alice()), Level::Read));
        assert!(!acl.allows(Some(&alice()), Level::Write));
        assert!(!acl.allows(None, Level::Read));
        let bob = Principal { user: "bob".into(), groups: vec![], ..alice() };
        assert!(acl.allows(Some(&bob), Level::Read), "write implies read");
        assert!(!acl.allows(Some(&bob), Level::Manage));
        assert!(Acl::parse(&["public".into()], Level::Read).expect("acl").allows(None, Level::Read));
        assert!(Acl::parse(&["users".into()], Level::Read).expect("acl").allows(Some(&bob), Level::Read));
        assert!(!Acl::new().allows(Some(&bob), Level::Read), "empty means nobody");
    }

    #[test]
    fn token_scopes_narrow_a_principal() {
        let mut p = alice();
        assert!(p.has_scope("admin"));
        p.scopes = Some(vec!["admin:read".into()]);
        assert!(p.has_scope("admin:read"));
        assert!(!p.has_scope("admin"));
    }
}

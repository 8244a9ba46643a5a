//! `servente user|group|token`: the user directory from the command line. These commands open
//! the store file in the data folder directly (a running server sees the changes at once), and
//! every change goes to the audit log with the operator's login name.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use servente_auth::{Actor, DirError, Directory, NewUser, Settings, UserPatch};
use servente_config::{EMBEDDED_DEFAULT, Overrides};

/// Where the user directory is.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Config file whose `server.data_dir` holds the directory.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The data folder (overrides the config's).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a password is generated and printed once.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long, default_value = "")]
        email: String,
        /// Group to put the user in (may be repeated); `admins` makes an administrator.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (generated unless --password-stdin) and end their sessions.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user, with their group memberships, tokens and sessions.
    Remove { name: String },
    /// Refuse every sign-in of a user (and end their sessions) without deleting them.
    Disable { name: String },
    /// Allow a disabled user to sign in again.
    Enable { name: String },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a group (its members stay).
    Remove { name: String },
    /// List groups with their members.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the members of a group, after adding or removing some.
    Members {
        name: String,
        #[arg(long = "add", value_name = "USER")]
        add: Vec<String>,
        #[arg(long = "remove", value_name = "USER")]
        remove: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token for scripts; the secret is printed once and never stored.
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user: String,
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// `admin`, `admin:read` or `user` (may be repeated).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Days until the token stops working; without it, it works until revoked.
        #[arg(long, value_name = "DAYS")]
        expires_days: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke { id: String },
}

fn open(store: &StoreArgs) -> Result<Directory, String> {
    let overrides = Overrides { data_dir: store.data_dir.clone(), ..Default::default() };
    let config = match &store.config {
        Some(f) => servente_config::load_file(f, &overrides),
        None => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            servente_config::load_str("<embedded default>", EMBEDDED_DEFAULT, &cwd, &overrides)
        }
    }
    .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    let dir = servente_config::data_dir(&config);
    Directory::open(&dir, Settings::default()).map_err(|e| e.to_string())
}

fn read_password(from_stdin: bool) -> Result<Option<String>, String> {
    if !from_stdin {
        return Ok(None);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn err(e: DirError) -> String {
    e.to_string()
}

fn when(t: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
}

fn json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| e.to_string())?);
    Ok(())
}

pub fn user(cmd: UserCommand, store: &StoreArgs) -> ExitCode {
    finish((|| {
        let d = open(store)?;
        let actor = Actor::cli();
        match cmd {
            UserCommand::Add { name, display_name, email, groups, password_stdin } => {
                let password = read_password(password_stdin)?;
                let (u, generated) = d.add_user(&actor, NewUser { name, display_name, email, groups, password }).map_err(err)?;
                println!("created user {}", u.name);
                if let Some(p) = generated {
                    println!("password: {p}\n(shown only once)");
                }
            }
            UserCommand::Passwd { name, password_stdin } => {
                let password = read_password(password_stdin)?;
                let generated = d.set_password(&actor, &name, password).map_err(err)?;
                println!("password of {name} changed; their sessions are ended");
                if let Some(p) = generated {
                    println!("password: {p}\n(shown only once)");
                }
            }
            UserCommand::Remove { name } => {
                d.remove_user(&actor, &name).map_err(err)?;
                println!("removed user {name}");
            }
            UserCommand::Disable { name } => {
                d.update_user(&actor, &name, UserPatch { disabled: Some(true), ..Default::default() }).map_err(err)?;
                println!("disabled user {name}");
            }
            UserCommand::Enable { name } => {
                d.update_user(&actor, &name, UserPatch { disabled: Some(false), ..Default::default() }).map_err(err)?;
                println!("enabled user {name}");
            }
            UserCommand::List { json: true } => json(&d.store().users().map_err(|e| e.to_string())?)?,
            UserCommand::List { json: false } => {
                let users = d.store().users().map_err(|e| e.to_string())?;
                println!("{:<20} {:<24} {:<30} STATE", "NAME", "DISPLAY NAME", "GROUPS");
                for u in users {
                    let state = if u.disabled { "disabled" } else { "active" };
                    println!("{:<20} {:<24} {:<30} {state}", u.name, u.display_name, u.groups.join(","));
                }
            }
            UserCommand::Show { name, json: as_json } => {
                let u = d.store().user(&name).map_err(|e| e.to_string())?.ok_or_else(|| format!("user `{name}` not found"))?.user;
                if as_json {
                    json(&u)?;
                } else {
                    println!("name:             {}", u.name);
                    println!("display name:     {}", u.display_name);
                    println!("email:            {}", u.email);
                    println!("groups:           {}", u.groups.join(", "));
                    println!("state:            {}", if u.disabled { "disabled" } else { "active" });
                    println!("created:          {}", when(u.created));
                    println!("password changed: {}", when(u.password_changed));
                }
            }
        }
        Ok(())
    })())
}

pub fn group(cmd: GroupCommand, store: &StoreArgs) -> ExitCode {
    finish((|| {
        let d = open(store)?;
        let actor = Actor::cli();
        match cmd {
            GroupCommand::Add { name, description } => {
                d.add_group(&actor, &name, &description).map_err(err)?;
                println!("created group {name}");
            }
            GroupCommand::Remove { name } => {
                d.remove_group(&actor, &name).map_err(err)?;
                println!("removed group {name}");
            }
            GroupCommand::List { json: true } => json(&d.store().groups().map_err(|e| e.to_string())?)?,
            GroupCommand::List { json: false } => {
                println!("{:<20} {:<30} MEMBERS", "NAME", "DESCRIPTION");
                for g in d.store().groups().map_err(|e| e.to_string())? {
                    println!("{:<20} {:<30} {}", g.name, g.description, g.members.join(","));
                }
            }
            GroupCommand::Members { name, add, remove } => {
                for u in &add {
                    d.add_member(&actor, &name, u).map_err(err)?;
                }
                for u in &remove {
                    d.remove_member(&actor, &name, u).map_err(err)?;
                }
                let g = d.store().group(&name).map_err(|e| e.to_string())?.ok_or_else(|| format!("group `{name}` not found"))?;
                for m in g.members {
                    println!("{m}");
                }
            }
        }
        Ok(())
    })())
}

pub fn token(cmd: TokenCommand, store: &StoreArgs) -> ExitCode {
    finish((|| {
        let d = open(store)?;
        let actor = Actor::cli();
        match cmd {
            TokenCommand::Create { user, name, scopes, expires_days } => {
                let expires = expires_days.map(|n| Duration::from_secs(n.saturating_mul(86_400)));
                let (t, secret) = d.create_token(&actor, &user, &name, &scopes, expires).map_err(err)?;
                println!("created token {} for {} ({})", t.id, t.user, t.scopes.join(" "));
                println!("secret: {secret}\n(shown only once; send it as `Authorization: Bearer <secret>`)");
            }
            TokenCommand::List { user, json: as_json } => {
                let tokens = d.store().tokens(user.as_deref()).map_err(|e| e.to_string())?;
                if as_json {
                    json(&tokens)?;
                } else {
                    println!("{:<17} {:<16} {:<24} {:<18} EXPIRES", "ID", "USER", "NAME", "SCOPES");
                    for t in tokens {
                        let expires = t.expires.map(when).unwrap_or_else(|| "never".into());
                        println!("{:<17} {:<16} {:<24} {:<18} {expires}", t.id, t.user, t.name, t.scopes.join(" "));
                    }
                }
            }
            TokenCommand::Revoke { id } => {
                d.revoke_token(&actor, &id).map_err(err)?;
                println!("revoked token {id}");
            }
        }
        Ok(())
    })())
}

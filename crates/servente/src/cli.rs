//! The command line: `serve`, `check`, `cert`, `config`, and the lifecycle of `serve`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use servente_admin::{ControlRequest, Shared};
use servente_apps::registry::Registry;
use servente_auth::Directory;
use servente_config::{Config, ConfigError, EMBEDDED_DEFAULT, Overrides, RuntimeModel};
use servente_core::access_log::AccessLogger;
use servente_core::metrics::Metrics;
use servente_core::{Server, Settings};
use servente_web::Budget;

use crate::app::{self, AppRouter};
use crate::{apps_cli, users};

/// servente: one server for an organization's web, files, apps, database, mail, print and game.
///
/// Run without arguments (or `servente serve`) to share the current folder on
/// http://127.0.0.1:8080 and on a Unix socket in the data folder, with health and metrics on
/// http://127.0.0.1:8081.
#[derive(Parser)]
#[command(name = "servente", version, propagate_version = true, disable_help_subcommand = false)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start serving, on a config file or on the embedded default.
    ///
    /// Signals: SIGHUP reloads the config (an invalid one is refused and the old one keeps
    /// running), SIGTERM finishes requests in flight (up to `server.shutdown_grace`) and exits
    /// 0, SIGINT stops at once.
    Serve(ServeArgs),
    /// Check a config file and print every problem with its file, line and key.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificates for TLS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print the embedded default config or the reference of every config key.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage users of the directory every role signs in against.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
        #[command(flatten)]
        store: users::StoreArgs,
    },
    /// Manage groups (`admins` administers servente).
    Group {
        #[command(subcommand)]
        command: users::GroupCommand,
        #[command(flatten)]
        store: users::StoreArgs,
    },
    /// The supervised apps of a running servente (through its admin API; needs
    /// `$SERVENTE_TOKEN`).
    App {
        #[command(subcommand)]
        command: apps_cli::AppCommand,
        #[command(flatten)]
        admin: apps_cli::AdminArgs,
    },
    /// Manage API tokens for scripts.
    Token {
        #[command(subcommand)]
        command: users::TokenCommand,
        #[command(flatten)]
        store: users::StoreArgs,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Config file (TOML). Without it, servente runs on its embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Serve this folder (replaces the root of every site).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Listen on ADDR instead of the configured web listeners: `127.0.0.1:8080`, `[::]:80`,
    /// `:8080` or `unix:/path.sock`. May be given several times.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Health and metrics listener address, or `off`.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Folder for servente's own data (overrides `server.data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and key for local development.
    SelfSigned {
        /// Host names (and IP addresses) the certificate is for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hosts: Vec<String>,
        /// Folder to write `cert.pem` and `key.pem` into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default config.
    Default,
    /// Print the reference of every config key (Markdown).
    Reference,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Check { config } => check(&config),
        Command::Cert(CertCommand::SelfSigned { hosts, out_dir }) => self_signed(&hosts, &out_dir),
        Command::Config(ConfigCommand::Default) => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", servente_config::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::User { command, store } => users::user(command, &store),
        Command::Group { command, store } => users::group(command, &store),
        Command::Token { command, store } => users::token(command, &store),
        Command::App { command, admin } => apps_cli::run(command, &admin),
    }
}

fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

/// Where the config comes from, so that SIGHUP can read it again.
struct Source {
    file: Option<PathBuf>,
    overrides: Overrides,
    /// A config applied through the admin API while running on the embedded default (there is
    /// no file to write it to): SIGHUP reloads this text.
    applied: Option<String>,
}

impl Source {
    fn name(&self) -> String {
        match &self.file {
            Some(f) => f.display().to_string(),
            None => "<embedded default>".into(),
        }
    }

    /// The folder relative paths in the config are resolved from.
    fn base(&self) -> PathBuf {
        match &self.file {
            Some(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    fn text(&self) -> Result<String, Vec<ConfigError>> {
        match (&self.file, &self.applied) {
            (Some(f), _) => std::fs::read_to_string(f).map_err(|e| {
                vec![ConfigError { file: self.name(), line: 0, key: String::new(), message: format!("cannot read the config: {e}") }]
            }),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => Ok(EMBEDDED_DEFAULT.to_string()),
        }
    }

    fn parse(&self, text: &str) -> Result<Config, Vec<ConfigError>> {
        servente_config::load_str(&self.name(), text, &self.base(), &self.overrides)
    }

    /// The config and its text.
    fn load(&self) -> Result<(Config, String), Vec<ConfigError>> {
        let text = self.text()?;
        Ok((self.parse(&text)?, text))
    }
}

fn strings_to_errors(file: &str, list: Vec<String>) -> Vec<ConfigError> {
    list.into_iter().map(|message| ConfigError { file: file.to_string(), line: 0, key: String::new(), message }).collect()
}

fn check(path: &Path) -> ExitCode {
    let source = Source { file: Some(path.to_path_buf()), overrides: Overrides::default(), applied: None };
    let result = source.load().and_then(|(config, text)| {
        let metrics = Metrics::new();
        let budget = Budget::new(0, 0, 1000);
        // A throwaway directory: checking a config must not touch the real one.
        let store = servente_auth::sqlite::SqliteStore::in_memory()
            .map_err(|e| vec![ConfigError { file: source.name(), line: 0, key: String::new(), message: e.to_string() }])?;
        let (control, _) = tokio::sync::mpsc::channel(1);
        let shared = Arc::new(Shared {
            directory: Arc::new(Directory::new(Arc::new(store), servente_auth::Settings::default())),
            apps: servente_apps::supervisor::Supervisor::new(std::env::temp_dir()),
            metrics: metrics.clone(),
            control,
            started: std::time::SystemTime::now(),
        });
        let upstreams = Registry::detached(&config).map_err(|e| strings_to_errors(&source.name(), e))?;
        app::build(&config, &metrics, &budget, &app::Env { shared: &shared, config_text: &text, from_file: true, upstreams: &upstreams })
            .map(|_| config)
    });
    match result {
        Ok(config) => {
            println!("{}: ok ({} listeners, {} sites)", path.display(), config.listeners.len(), config.sites.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            eprintln!("{}: {} problem{}", path.display(), errors.len(), if errors.len() == 1 { "" } else { "s" });
            ExitCode::from(1)
        }
    }
}

fn self_signed(hosts: &[String], out_dir: &Path) -> ExitCode {
    let result = (|| -> anyhow::Result<(PathBuf, PathBuf)> {
        let ck = rcgen::generate_simple_self_signed(hosts.to_vec())?;
        std::fs::create_dir_all(out_dir)?;
        let cert = out_dir.join("cert.pem");
        let key = out_dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem())?;
        write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
        Ok((cert, key))
    })();
    match result {
        Ok((cert, key)) => {
            println!("wrote {} and {} for {}", cert.display(), key.display(), hosts.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write a self-signed certificate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)
}

fn serve(args: ServeArgs) -> ExitCode {
    let source = Source {
        file: args.config.clone(),
        overrides: Overrides { data_dir: args.data_dir, listen: args.listen, root: args.root, admin: args.admin },
        applied: None,
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    servente_core::logging::init(&config.0.log);
    let threads = match config.0.server.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let result = match config.0.server.runtime {
        RuntimeModel::Shared => serve_shared(source, config, threads),
        RuntimeModel::PerCore => serve_per_core(source, config, threads),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
}

/// How long an idle thread of a runtime's blocking pool (file writes, fsync, directory lookups)
/// waits for more work before it exits. With tokio's default, 10 s, a client that comes back
/// after a pause (a WebDAV client, a sync tool) waited for a new thread, its stack and its heap
/// to be set up again. At 120 s, a PROPFIND of 10,000 files after a pause of 135 s took 47 and
/// 33 ms on the two workers' new threads instead of 15; kept alive, 23 and 22 (the rest is
/// caches gone cold). An idle thread costs its stack's touched pages; a burst that needed many
/// keeps them this long.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// One multi-threaded runtime: connections move between threads as work is stolen.
fn serve_shared(source: Source, config: (Config, String), threads: usize) -> std::io::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(threads).thread_keep_alive(BLOCKING_KEEP_ALIVE).build()?;
    let code = runtime.block_on(run_server(source, config, vec![runtime.handle().clone()]));
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}

/// One single-threaded runtime per core, each accepting on its own socket (SO_REUSEPORT), as
/// nginx's workers do: a connection stays on one thread, with no cross-thread wake-ups. The
/// main thread runs a small runtime for signals and reloads.
fn serve_per_core(source: Source, config: (Config, String), threads: usize) -> std::io::Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut handles = Vec::new();
    let mut joins = Vec::new();
    for i in 0..threads {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_keep_alive(BLOCKING_KEEP_ALIVE).build()?;
        handles.push(runtime.handle().clone());
        let stop = stop.clone();
        joins.push(std::thread::Builder::new().name(format!("servente-worker-{i}")).spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = heartbeat() => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?);
    }
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = control.block_on(run_server(source, config, handles));
    stop.cancel();
    for j in joins {
        let _ = j.join();
    }
    control.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}

/// Keeps a timer due within a second on a worker's runtime, for ever.
///
/// tokio wakes its event loop (a write to an eventfd, and one more `epoll_wait`) whenever a
/// timer is set that falls due before every other one. With no timer pending, that was every
/// connection's first idle or head timeout: two system calls on each cold request (seen with
/// strace). Behind this timer the connections' timeouts never come first, as long as they are
/// a second or more (a shorter configured timeout still wakes the loop, as before). It costs
/// an idle worker about three system calls a second (the wake-up, and the eventfd write when
/// the heartbeat itself is re-armed with no other timer pending). A tokio that stopped waking
/// this way would only make it useless, not wrong.
async fn heartbeat() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// The directory's settings from the `[auth]` section (read at start; changes need a restart).
fn auth_settings(config: &Config) -> servente_auth::Settings {
    servente_auth::Settings {
        session_ttl: config.auth.session_ttl.0,
        throttle: servente_auth::ThrottlePolicy {
            delay_after: config.auth.login_delay_after,
            lock_after: config.auth.login_lock_after,
            window: config.auth.login_window.0,
        },
    }
}

/// Opens the user directory; on first run creates the administrator and prints the password
/// once (or takes it from `SERVENTE_ADMIN_PASSWORD`).
fn open_directory(config: &Config, data_dir: &Path) -> Result<Arc<Directory>, String> {
    let dir = Directory::open(data_dir, auth_settings(config)).map_err(|e| format!("cannot open the user directory: {e}"))?;
    let given = std::env::var("SERVENTE_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
    let from_env = given.is_some();
    match dir.ensure_admin(given) {
        Ok(Some(password)) => eprintln!(
            "servente: first run: created the administrator `{}` with password {password}\n\
             servente: (shown only this once; change it with `servente user passwd {}`)",
            servente_auth::FIRST_ADMIN,
            servente_auth::FIRST_ADMIN
        ),
        Ok(None) if from_env => {}
        Ok(None) => {}
        Err(e) => return Err(format!("cannot create the first administrator: {e}")),
    }
    Ok(Arc::new(dir))
}

struct Running {
    source: Source,
    current: Config,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

async fn run_server(source: Source, config: (Config, String), workers: Vec<tokio::runtime::Handle>) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (config, text) = config;
    // Handlers first: a signal sent as soon as the listeners are announced must find them.
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let metrics = Metrics::new();
    let budget =
        Budget::new(config.cache.max_total_bytes.0, config.cache.max_file_bytes.0, config.cache.revalidate_after.0.as_millis() as u64);
    let data_dir = servente_config::data_dir(&config);
    let directory = match open_directory(&config, &data_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (control, mut control_rx) = tokio::sync::mpsc::channel(8);
    let registry = Registry::new(&data_dir);
    let shared = Arc::new(Shared {
        directory,
        apps: registry.supervisor.clone(),
        metrics: metrics.clone(),
        control,
        started: std::time::SystemTime::now(),
    });
    let upstreams = match registry.prepare(&config, &source.base()) {
        Ok(u) => u,
        Err(errors) => {
            print_errors(&strings_to_errors(&source.name(), errors));
            return ExitCode::from(2);
        }
    };
    let env = app::Env { shared: &shared, config_text: &text, from_file: source.file.is_some(), upstreams: &upstreams };
    let generation = match app::build(&config, &metrics, &budget, &env) {
        Ok(g) => g,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    let access_log = match AccessLogger::open(&config.access_log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let started =
        Server::start(workers, generation.listeners, generation.router, Settings::from_config(&config), metrics.clone(), access_log);
    let server: Server<AppRouter> = match started {
        Ok((server, bound)) => {
            announce(&bound);
            server
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %config.source, data_dir = %data_dir.display(), "servente started");
    let mut run = Running { source, current: config, metrics, budget, shared, registry };
    loop {
        tokio::select! {
            _ = term.recv() => {
                let grace = run.current.server.shutdown_grace.0;
                tracing::info!(grace_seconds = grace.as_secs_f64(), open = server.open_connections(), "SIGTERM: finishing requests in flight");
                let drained = server.shutdown(grace).await;
                if drained {
                    tracing::info!("all connections finished");
                } else {
                    tracing::warn!(open = server.open_connections(), "grace period over; closing the remaining connections");
                }
                run.registry.supervisor.shutdown().await;
                tracing::info!("exiting");
                return ExitCode::SUCCESS;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                // Apps still get SIGTERM and their grace period: no process is left behind.
                run.registry.supervisor.shutdown().await;
                return ExitCode::from(130);
            }
            _ = hup.recv() => {
                match run.source.load().and_then(|(config, text)| run.apply(&server, config, &text)) {
                    Ok(()) => tracing::info!(config = %run.current.source, "SIGHUP: config reloaded"),
                    Err(errors) => {
                        run.metrics.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        for e in &errors {
                            tracing::error!("reload refused: {e}");
                        }
                        tracing::error!(problems = errors.len(), "SIGHUP: the new config is invalid; still running the previous one");
                    }
                }
            }
            Some(request) = control_rx.recv() => run.control(&server, request),
        }
    }
}

impl Running {
    /// Builds a generation from a parsed config and swaps it in; on any error the running one
    /// stays.
    fn apply(&mut self, server: &Server<AppRouter>, config: Config, text: &str) -> Result<(), Vec<ConfigError>> {
        // Build a throwaway generation first: a config that cannot run must not start or
        // restart any app.
        let detached = Registry::detached(&config).map_err(|e| strings_to_errors(&config.source, e))?;
        let env = app::Env { shared: &self.shared, config_text: text, from_file: self.source.file.is_some(), upstreams: &detached };
        app::build(&config, &self.metrics, &self.budget, &env)?;
        let upstreams = self.registry.prepare(&config, &self.source.base()).map_err(|e| strings_to_errors(&config.source, e))?;
        let env = app::Env { shared: &self.shared, config_text: text, from_file: self.source.file.is_some(), upstreams: &upstreams };
        let generation = app::build(&config, &self.metrics, &self.budget, &env)?;
        let access_log = AccessLogger::open(&config.access_log).map_err(|e| {
            vec![ConfigError { file: config.source.clone(), line: 0, key: "access_log.output".into(), message: e.to_string() }]
        })?;
        if config.server.worker_threads != self.current.server.worker_threads || config.server.runtime != self.current.server.runtime {
            tracing::warn!("server.worker_threads and server.runtime changes only take effect on restart");
        }
        let bound = server
            .apply(generation.listeners, generation.router, Settings::from_config(&config), Some(access_log))
            .map_err(|e| vec![ConfigError { file: config.source.clone(), line: 0, key: "listener".into(), message: e.to_string() }])?;
        announce(&bound);
        self.current = config;
        self.metrics.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Answers a request of the admin API: validate a config text, or apply it (and save it to
    /// the config file, atomically, once it runs).
    fn control(&mut self, server: &Server<AppRouter>, request: ControlRequest) {
        let strings = |errors: Vec<ConfigError>| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        match request {
            ControlRequest::Validate { text, reply } => {
                let result = self.source.parse(&text).and_then(|config| {
                    let upstreams = Registry::detached(&config).map_err(|e| strings_to_errors(&config.source, e))?;
                    let env =
                        app::Env { shared: &self.shared, config_text: &text, from_file: self.source.file.is_some(), upstreams: &upstreams };
                    app::build(&config, &self.metrics, &self.budget, &env).map(|_| ())
                });
                let _ = reply.send(result.map_err(strings));
            }
            ControlRequest::Apply { text, reply } => {
                let result = self.source.parse(&text).and_then(|config| self.apply(server, config, &text)).map_err(strings);
                let result = result.and_then(|()| match &self.source.file {
                    Some(f) => write_atomically(f, &text)
                        .map(|()| true)
                        .map_err(|e| vec![format!("the new config runs, but saving it to {} failed: {e}", f.display())]),
                    None => {
                        self.source.applied = Some(text);
                        Ok(false)
                    }
                });
                match &result {
                    Ok(_) => tracing::info!(config = %self.current.source, "admin API: new config applied"),
                    Err(p) => tracing::warn!(problems = p.len(), "admin API: config refused; still running the previous one"),
                }
                let _ = reply.send(result);
            }
        }
    }
}

/// Replaces a file so that readers see the old or the new content, never a mix: write a
/// temporary file beside it, flush it to disk, rename it over the old one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn announce(bound: &[servente_core::Bound]) {
    for b in bound {
        let scheme = if b.tls { "https" } else { "http" };
        let url = if b.local.starts_with("unix:") { b.local.clone() } else { format!("{scheme}://{}", b.local) };
        eprintln!("servente: listening on {url} (listener \"{}\", role {})", b.name, b.role.as_str());
    }
}

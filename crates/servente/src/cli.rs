//! The command line: `serve`, `check`, `cert`, `config`, and the lifecycle of `serve`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use servente_config::{Config, ConfigError, EMBEDDED_DEFAULT, Overrides, RuntimeModel};
use servente_core::access_log::AccessLogger;
use servente_core::metrics::Metrics;
use servente_core::{Server, Settings};
use servente_web::Budget;

use crate::app::{self, AppRouter};

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
}

impl Source {
    fn load(&self) -> Result<Config, Vec<ConfigError>> {
        match &self.file {
            Some(f) => servente_config::load_file(f, &self.overrides),
            None => {
                let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                servente_config::load_str("<embedded default>", EMBEDDED_DEFAULT, &cwd, &self.overrides)
            }
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let source = Source { file: Some(path.to_path_buf()), overrides: Overrides::default() };
    let result = source.load().and_then(|config| {
        let metrics = Metrics::new();
        let budget = Budget::new(0, 0, 1000);
        app::build(&config, &metrics, &budget).map(|_| config)
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
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    servente_core::logging::init(&config.log);
    let threads = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let result = match config.server.runtime {
        RuntimeModel::Shared => serve_shared(source, config, threads),
        RuntimeModel::PerCore => serve_per_core(source, config, threads),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
}

/// One multi-threaded runtime: connections move between threads as work is stolen.
fn serve_shared(source: Source, config: Config, threads: usize) -> std::io::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(threads).build()?;
    let code = runtime.block_on(run_server(source, config, vec![runtime.handle().clone()]));
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}

/// One single-threaded runtime per core, each accepting on its own socket (SO_REUSEPORT), as
/// nginx's workers do: a connection stays on one thread, with no cross-thread wake-ups. The
/// main thread runs a small runtime for signals and reloads.
fn serve_per_core(source: Source, config: Config, threads: usize) -> std::io::Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut handles = Vec::new();
    let mut joins = Vec::new();
    for i in 0..threads {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(runtime.handle().clone());
        let stop = stop.clone();
        joins.push(std::thread::Builder::new().name(format!("servente-worker-{i}")).spawn(move || {
            runtime.block_on(stop.cancelled());
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

async fn run_server(source: Source, config: Config, workers: Vec<tokio::runtime::Handle>) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal sent as soon as the listeners are announced must find them.
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let metrics = Metrics::new();
    let budget =
        Budget::new(config.cache.max_total_bytes.0, config.cache.max_file_bytes.0, config.cache.revalidate_after.0.as_millis() as u64);
    let generation = match app::build(&config, &metrics, &budget) {
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
    let data_dir = servente_config::data_dir(&config);
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
    let mut grace = config.server.shutdown_grace.0;
    let mut current = config;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(grace_seconds = grace.as_secs_f64(), open = server.open_connections(), "SIGTERM: finishing requests in flight");
                let drained = server.shutdown(grace).await;
                if drained {
                    tracing::info!("all connections finished; exiting");
                } else {
                    tracing::warn!(open = server.open_connections(), "grace period over; closing the remaining connections");
                }
                return ExitCode::SUCCESS;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ExitCode::from(130);
            }
            _ = hup.recv() => {
                match reload(&source, &current, &server, &metrics, &budget) {
                    Ok(new) => {
                        grace = new.server.shutdown_grace.0;
                        current = new;
                        metrics.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(errors) => {
                        metrics.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        for e in &errors {
                            tracing::error!("reload refused: {e}");
                        }
                        tracing::error!(problems = errors.len(), "SIGHUP: the new config is invalid; still running the previous one");
                    }
                }
            }
        }
    }
}

fn reload(
    source: &Source,
    current: &Config,
    server: &Server<AppRouter>,
    metrics: &Arc<Metrics>,
    budget: &Arc<Budget>,
) -> Result<Config, Vec<ConfigError>> {
    let config = source.load()?;
    let generation = app::build(&config, metrics, budget)?;
    let access_log = AccessLogger::open(&config.access_log)
        .map_err(|e| vec![ConfigError { file: config.source.clone(), line: 0, key: "access_log.output".into(), message: e.to_string() }])?;
    if config.server.worker_threads != current.server.worker_threads || config.server.runtime != current.server.runtime {
        tracing::warn!("server.worker_threads and server.runtime changes only take effect on restart");
    }
    let bound = server
        .apply(generation.listeners, generation.router, Settings::from_config(&config), Some(access_log))
        .map_err(|e| vec![ConfigError { file: config.source.clone(), line: 0, key: "listener".into(), message: e.to_string() }])?;
    announce(&bound);
    tracing::info!(config = %config.source, "SIGHUP: config reloaded");
    Ok(config)
}

fn announce(bound: &[servente_core::Bound]) {
    for b in bound {
        let scheme = if b.tls { "https" } else { "http" };
        let url = if b.local.starts_with("unix:") { b.local.clone() } else { format!("{scheme}://{}", b.local) };
        eprintln!("servente: listening on {url} (listener \"{}\", role {})", b.name, b.role.as_str());
    }
}

//! `servente app list|status|restart|logs`: the supervised apps of a running servente, through
//! its admin API (the same endpoints the console uses). Authenticates with an API token from
//! `$SERVENTE_TOKEN` (scope `admin`, or `admin:read` for everything but restart).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use http_body_util::BodyExt as _;
use servente_config::{EMBEDDED_DEFAULT, ListenAddress, ListenerRole, Overrides};

#[derive(Subcommand)]
pub enum AppCommand {
    /// List apps with their state and instances.
    List,
    /// Show one app's state and instances.
    Status { name: String },
    /// Rolling restart: new instances start and get traffic before old ones are stopped.
    Restart { name: String },
    /// Show an app's recent output (stdout and stderr of its instances).
    Logs {
        name: String,
        #[arg(long, default_value_t = 100)]
        lines: usize,
    },
}

#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// Config file of the running servente (to find its admin listener).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Admin listener to talk to, instead of the config's: `127.0.0.1:8081` or `unix:/path`.
    #[arg(long, global = true)]
    admin: Option<String>,
}

fn admin_address(args: &AdminArgs) -> Result<ListenAddress, String> {
    let config = match &args.config {
        Some(f) => servente_config::load_file(f, &Overrides::default()),
        None => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            servente_config::load_str("<embedded default>", EMBEDDED_DEFAULT, &cwd, &Overrides::default())
        }
    }
    .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    if let Some(a) = &args.admin {
        return servente_config::parse_listen_address(a, &servente_config::data_dir(&config));
    }
    config
        .listeners
        .iter()
        .filter(|l| l.role.get() == ListenerRole::Admin)
        .find_map(|l| l.resolved.clone())
        .ok_or_else(|| "the config has no admin listener; pass --admin ADDRESS".to_string())
}

async fn request(address: &ListenAddress, method: http::Method, path: &str, token: &str) -> Result<(u16, serde_json::Value), String> {
    let io_err = |e: std::io::Error| format!("cannot reach the admin listener at {address}: {e}");
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = match address {
        ListenAddress::Tcp(a) => {
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(a).await.map_err(io_err)?);
            send(io, req).await?
        }
        ListenAddress::Unix(p) => {
            let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await.map_err(io_err)?);
            send(io, req).await?
        }
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, value))
}

async fn send<IO>(io: IO, req: http::Request<http_body_util::Empty<bytes::Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

fn print_app(a: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    println!(
        "{}: {}{}",
        s(&a["name"]),
        s(&a["status"]),
        if s(&a["message"]).is_empty() { String::new() } else { format!(" ({})", s(&a["message"])) }
    );
    for i in a["instances"].as_array().into_iter().flatten() {
        println!(
            "  #{:<3} pid {:<8} {:<28} {:<8} restarts {}",
            i["id"],
            i["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s(&i["address"]),
            if i["ready"].as_bool() == Some(true) { "ready" } else { "starting" },
            i["restarts"]
        );
    }
}

pub fn run(cmd: AppCommand, args: &AdminArgs) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let token = std::env::var("SERVENTE_TOKEN").map_err(|_| {
            "set SERVENTE_TOKEN to an API token with the `admin` scope (create one with `servente token create --user admin --name cli --scope admin`)".to_string()
        })?;
        let address = admin_address(args)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let (method, path) = match &cmd {
            AppCommand::List => (http::Method::GET, "/api/apps".to_string()),
            AppCommand::Status { name } => (http::Method::GET, format!("/api/apps/{name}")),
            AppCommand::Restart { name } => (http::Method::POST, format!("/api/apps/{name}/restart")),
            AppCommand::Logs { name, lines } => (http::Method::GET, format!("/api/apps/{name}/logs?lines={lines}")),
        };
        let (status, body) = runtime.block_on(request(&address, method, &path, &token))?;
        if status >= 400 {
            return Err(body["error"].as_str().map(str::to_string).unwrap_or_else(|| format!("the admin API answered {status}")));
        }
        match cmd {
            AppCommand::List => {
                let apps = body.as_array().cloned().unwrap_or_default();
                if apps.is_empty() {
                    println!("no apps are configured");
                }
                apps.iter().for_each(print_app);
            }
            AppCommand::Status { .. } => print_app(&body),
            AppCommand::Restart { name } => {
                println!("restarted {name}");
                print_app(&body);
            }
            AppCommand::Logs { .. } => {
                for l in body.as_array().into_iter().flatten() {
                    println!("{}", l.as_str().unwrap_or(""));
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

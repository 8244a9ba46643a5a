//! servente's configuration: the model every part reads, the embedded default, and validation.
//!
//! A config is read from TOML by [`load_file`] or [`load_str`]; every problem (syntax, type,
//! unknown key, bad value, broken reference) is collected with its file, line and key, and the
//! config is only returned when there is none. The doc string given with each key is the
//! source of `docs/config.md` ([`reference_markdown`]). This crate does no network IO and knows
//! nothing of tokio; it only looks at the file system to check that roots and files exist.

pub mod apps;
pub mod files;
pub mod reader;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use apps::{App, AppListen, Balance, FastCgi, Health, ProxyRoute, Upstream, UpstreamProtocol, UpstreamSettings};
pub use files::{Files, Folder};
pub use reader::{ByteSize, ConfigError, Seconds};
use reader::{Reader, Section, TableReader};

/// The config servente runs on when none is given: serve the current folder on 127.0.0.1:8080
/// and on a Unix socket in the data folder, with metrics and health on 127.0.0.1:8081.
pub const EMBEDDED_DEFAULT: &str = r#"# servente's embedded default: a quick share of the current folder.
[[listener]]
name = "http"
address = "127.0.0.1:8080"

[[listener]]
# A relative Unix socket path is inside the data folder.
name = "local"
address = "unix:servente.sock"

[[listener]]
name = "admin"
address = "127.0.0.1:8081"
role = "admin"

[[site]]
name = "default"
root = "."
listing = true
"#;

/// The whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: Server,
    pub limits: Limits,
    pub log: Log,
    pub access_log: AccessLog,
    pub cache: Cache,
    pub auth: Auth,
    pub files: Files,
    pub listeners: Vec<Listener>,
    pub sites: Vec<Site>,
    pub upstreams: Vec<Upstream>,
    pub apps: Vec<App>,
    /// The file the config came from (`<embedded>` for the default), for messages.
    pub source: String,
}

impl Section for Config {
    fn read(t: &mut TableReader<'_>) -> Self {
        Config {
            server: t.section("server", "Process-wide settings."),
            limits: t.section("limits", "Bounds on what any client may send or hold, for every listener."),
            log: t.section("log", "Application log (what servente itself says) on standard error."),
            access_log: t.section("access_log", "One line per HTTP request."),
            cache: t.section("cache", "The in-memory cache of file metadata and small file bodies used by static sites."),
            auth: t.section(
                "auth",
                "Signing in: the user directory (in the data folder) is shared by every role; manage it with `servente user|group|token` or the admin console.",
            ),
            files: t.section("files", "The file role: every user's home folder, group and shared folders, served over WebDAV and the web file manager by sites with `files` set."),
            listeners: t.list("listener", "A socket servente listens on. Several are allowed; each has a role."),
            sites: t.list("site", "A web site, chosen by the request's Host (and TLS SNI): static files, and routes to upstreams, apps and FastCGI."),
            upstreams: t.list("upstream", "A group of HTTP servers that sites' `proxy` routes forward to."),
            apps: t.list("app", "An application servente starts, supervises and forwards to (its instances form an upstream of the same name)."),
            source: String::new(),
        }
    }
}

choice!(
    /// How connections are spread over threads.
    RuntimeModel {
        /// One single-threaded runtime per worker, each with its own listening socket.
        PerCore = "per_core",
        /// One multi-threaded runtime whose threads steal work from each other.
        Shared = "shared"
    } default PerCore
);

/// Process-wide settings.
#[derive(Debug, Clone, Default)]
pub struct Server {
    pub data_dir: Option<String>,
    pub worker_threads: usize,
    pub runtime: RuntimeModel,
    pub shutdown_grace: Seconds,
    pub max_connections: usize,
}

impl Section for Server {
    fn read(t: &mut TableReader<'_>) -> Self {
        Server {
            data_dir: t.optional(
                "data_dir",
                "Folder for servente's own data (Unix sockets with relative paths, later the embedded store). Default: `$SERVENTE_DATA_DIR`, else `$XDG_DATA_HOME/servente`, else `~/.local/share/servente`. The `--data-dir` flag overrides it.",
            ),
            worker_threads: t.field("worker_threads", 0, "Threads that serve connections; 0 means one per CPU core. Changes take effect on restart."),
            runtime: t.field(
                "runtime",
                RuntimeModel::PerCore,
                "`per_core`: one single-threaded event loop per worker thread, each accepting on its own socket (SO_REUSEPORT), so a connection never changes thread; `shared`: one work-stealing multi-threaded runtime. Changes take effect on restart.",
            ),
            shutdown_grace: t.field(
                "shutdown_grace",
                Seconds(Duration::from_secs(30)),
                "On SIGTERM, how long in-flight requests may take to finish before servente exits anyway.",
            ),
            max_connections: t.field(
                "max_connections",
                20_000,
                "Open client connections allowed over all listeners; past it a plain-HTTP client gets 503 and the connection is closed.",
            ),
        }
    }
}

/// Bounds on untrusted input.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub header_read_timeout: Seconds,
    pub idle_timeout: Seconds,
    pub send_timeout: Seconds,
    pub body_read_timeout: Seconds,
    pub tls_handshake_timeout: Seconds,
    pub max_header_bytes: ByteSize,
    pub max_headers: usize,
    pub max_body_bytes: ByteSize,
}

impl Section for Limits {
    fn read(t: &mut TableReader<'_>) -> Self {
        let l = Limits {
            header_read_timeout: t.field(
                "header_read_timeout",
                Seconds(Duration::from_secs(10)),
                "Time a client has to send a complete request head once it has started one; a slower client gets 408 and is disconnected.",
            ),
            idle_timeout: t.field(
                "idle_timeout",
                Seconds(Duration::from_secs(60)),
                "Time a keep-alive connection may stay idle between requests before servente closes it.",
            ),
            send_timeout: t.field(
                "send_timeout",
                Seconds(Duration::from_secs(60)),
                "Longest wait for room to write to a client (one that does not read, or reads very slowly: the kernel frees room a third of the send buffer at a time); then the connection is closed, as with nginx's send_timeout. Applies to tunnels (WebSocket) too, and to each HTTP/2 stream whose client takes none of its next 64 KiB that long (its flow-control window stays shut): that stream is reset, the connection goes on. 0: no limit.",
            ),
            body_read_timeout: t.field(
                "body_read_timeout",
                Seconds(Duration::from_secs(60)),
                "Longest wait for the next piece of a request body while a role is reading it (a client that stops sending an upload, or vanishes without closing); then the body fails and the request ends (the connection is closed, or the HTTP/2 stream reset), as with nginx's client_body_timeout. A role busy with what it already has is not timed. 0: no limit.",
            ),
            tls_handshake_timeout: t.field(
                "tls_handshake_timeout",
                Seconds(Duration::from_secs(10)),
                "Time a client has to complete the TLS handshake.",
            ),
            max_header_bytes: t.field(
                "max_header_bytes",
                ByteSize(16 * 1024),
                "Largest request head (request line and headers) accepted; larger gets 431. At least 8KiB.",
            ),
            max_headers: t.field("max_headers", 100, "Most header fields accepted in one request; more gets 431."),
            max_body_bytes: t.field(
                "max_body_bytes",
                ByteSize(10 << 20),
                "Largest request body accepted: a request declaring a larger Content-Length gets 413 before any role sees it; a body without one (chunked, HTTP/2) is cut off at this size by the role reading it (proxy and FastCGI answer 413; static sites read none).",
            ),
        };
        if l.max_header_bytes.0 < 8192 {
            t.error("max_header_bytes", "must be at least 8KiB (8192)");
        }
        if l.max_headers == 0 {
            t.error("max_headers", "must be at least 1");
        }
        l
    }
}

choice!(
    /// Level of the application log.
    LogLevel { Error = "error", Warn = "warn", Info = "info", Debug = "debug", Trace = "trace" } default Info
);
choice!(
    /// Format of the application log.
    LogFormat { Text = "text", Json = "json" } default Text
);
choice!(
    /// Format of the access log.
    AccessLogFormat { Combined = "combined", Json = "json" } default Combined
);

#[derive(Debug, Clone, Default)]
pub struct Log {
    pub level: LogLevel,
    pub format: LogFormat,
}

impl Section for Log {
    fn read(t: &mut TableReader<'_>) -> Self {
        Log {
            level: t.field("level", LogLevel::Info, "Least severe level written. `RUST_LOG` overrides it when set."),
            format: t.field("format", LogFormat::Text, "`text` for people, `json` (one object per line) for log collectors."),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    pub format: AccessLogFormat,
    pub output: String,
}

impl Section for AccessLog {
    fn read(t: &mut TableReader<'_>) -> Self {
        AccessLog {
            format: t.field(
                "format",
                AccessLogFormat::Combined,
                "`combined` (the Apache/nginx combined format) or `json` (one object per line).",
            ),
            output: t.field(
                "output",
                "stdout".to_string(),
                "Where lines go: `stdout`, `off`, or a file path (appended to; reopened on SIGHUP).",
            ),
        }
    }
}

/// Signing in, for every role.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub basic_over_plain_http: bool,
    pub session_ttl: Seconds,
    pub login_delay_after: u32,
    pub login_lock_after: u32,
    pub login_window: Seconds,
}

impl Section for Auth {
    fn read(t: &mut TableReader<'_>) -> Self {
        let a = Auth {
            basic_over_plain_http: t.field(
                "basic_over_plain_http",
                false,
                "Accept HTTP Basic authentication over plain HTTP from other machines. By default Basic is accepted only over TLS, from loopback and over Unix sockets, since plain HTTP shows the password to the network.",
            ),
            session_ttl: t.field("session_ttl", Seconds(Duration::from_secs(12 * 3600)), "How long a browser session lasts after signing in."),
            login_delay_after: t.field(
                "login_delay_after",
                3,
                "Failed sign-ins (per account and per client address, within `login_window`) after which each attempt is slowed down.",
            ),
            login_lock_after: t.field(
                "login_lock_after",
                10,
                "Failed sign-ins after which attempts are refused (429 with Retry-After) until `login_window` has passed since the last failure.",
            ),
            login_window: t.field("login_window", Seconds(Duration::from_secs(15 * 60)), "How long failed sign-ins are remembered."),
        };
        if a.login_lock_after == 0 || a.login_lock_after < a.login_delay_after {
            t.error("login_lock_after", "must be at least 1 and at least `login_delay_after`");
        }
        a
    }
}

#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub max_file_bytes: ByteSize,
    pub max_total_bytes: ByteSize,
    pub revalidate_after: Seconds,
}

impl Section for Cache {
    fn read(t: &mut TableReader<'_>) -> Self {
        Cache {
            max_file_bytes: t.field(
                "max_file_bytes",
                ByteSize(2 << 20),
                "Files up to this size are kept in memory once read; larger ones are streamed from disk each time. 0 turns body caching off.",
            ),
            max_total_bytes: t.field(
                "max_total_bytes",
                ByteSize(256 << 20),
                "Memory the cached bodies (including compressed variants) may use over all sites.",
            ),
            revalidate_after: t.field(
                "revalidate_after",
                Seconds(Duration::from_secs(1)),
                "How old cached metadata may be before the file is looked at again on disk; a changed file is seen at most this late.",
            ),
        }
    }
}

choice!(
    /// What a listener serves.
    ListenerRole {
        /// The sites (`[[site]]`), over HTTP/1.1 and HTTP/2.
        Web = "web",
        /// Health (`/healthz`) and Prometheus metrics (`/metrics`).
        Admin = "admin"
    } default Web
);

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all IPv6 and IPv4 addresses), or `unix:PATH`.
pub fn parse_listen_address(text: &str, data_dir: &Path) -> Result<ListenAddress, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("a Unix socket address needs a path after `unix:`".into());
        }
        let p = Path::new(path);
        return Ok(ListenAddress::Unix(if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) }));
    }
    let full = if text.starts_with(':') { format!("[::]{text}") } else { text.to_string() };
    full.parse::<SocketAddr>()
        .map(ListenAddress::Tcp)
        .map_err(|_| format!("`{text}` is not a listen address (write 127.0.0.1:8080, [::1]:8080, :8080 or unix:/path/to.sock)"))
}

#[derive(Debug, Clone, Default)]
pub struct Listener {
    pub name: String,
    pub address: String,
    pub role: ListenerRole,
    pub unix_mode: Option<String>,
    pub tls: Option<Tls>,
    /// Resolved by validation.
    pub resolved: Option<ListenAddress>,
    pub line: usize,
    pub key: String,
}

impl Section for Listener {
    fn read(t: &mut TableReader<'_>) -> Self {
        let mut l = Listener {
            name: t.required("name", "Name used in logs and by `site.listeners`. Unique."),
            address: t.required(
                "address",
                "`IP:PORT` (`127.0.0.1:8080`, `[::1]:8443`, `:8080` for every address) or `unix:PATH` (relative paths are inside the data folder). Port 0 picks a free port.",
            ),
            role: t.field("role", ListenerRole::Web, "`web` serves the sites; `admin` serves `/healthz` and `/metrics`."),
            unix_mode: t.optional("unix_mode", "File mode of a Unix socket, in octal as a string (`\"0660\"`). Default: `\"0666\"`."),
            tls: t.optional_section("tls", "Serve TLS on this listener with this default certificate; sites may add theirs, chosen by SNI."),
            resolved: None,
            line: t.line(),
            key: t.prefix().to_string(),
        };
        if let Some(mode) = &l.unix_mode {
            if u32::from_str_radix(mode, 8).map(|m| m > 0o777).unwrap_or(true) {
                t.error("unix_mode", format!("`{mode}` is not an octal file mode such as \"0660\""));
                l.unix_mode = None;
            } else if !l.address.starts_with("unix:") {
                t.error("unix_mode", "only applies to a Unix socket address (`unix:PATH`)");
            }
        }
        l
    }
}

choice!(
    /// Lowest TLS version accepted.
    TlsVersion { V1_2 = "1.2", V1_3 = "1.3" } default V1_2
);

#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub min_version: TlsVersion,
    /// Set by validation: the files, resolved against the config's folder.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub line: usize,
    pub key_name: String,
}

impl Section for Tls {
    fn read(t: &mut TableReader<'_>) -> Self {
        let files = cert_files(t);
        Tls { min_version: t.field("min_version", TlsVersion::V1_2, "`1.2` accepts TLS 1.2 and 1.3; `1.3` only TLS 1.3."), ..files }
    }
}

/// The certificate and key keys, shared by listener and site TLS sections.
fn cert_files(t: &mut TableReader<'_>) -> Tls {
    Tls {
        cert: t.required("cert", "PEM file with the certificate chain, leaf first."),
        key: t.required("key", "PEM file with the private key (PKCS#8, PKCS#1 or SEC1)."),
        line: t.line(),
        key_name: t.prefix().to_string(),
        ..Default::default()
    }
}

/// A site's certificate: only the files; TLS versions are set per listener, since the version
/// is agreed before the client's SNI could pick a site's settings.
#[derive(Debug, Clone, Default)]
struct SiteTls(Tls);

impl Section for SiteTls {
    fn read(t: &mut TableReader<'_>) -> Self {
        SiteTls(cert_files(t))
    }
}

choice!(
    /// How a site treats symbolic links under its root.
    SymlinkPolicy {
        /// Follow a link only when its target is inside the root.
        Inside = "inside",
        /// Never follow a link.
        Refuse = "refuse",
        /// Follow every link, even out of the root.
        Follow = "follow"
    } default Inside
);

#[derive(Debug, Clone, Default)]
pub struct Site {
    pub name: String,
    pub hosts: Vec<String>,
    pub default: bool,
    pub listeners: Vec<String>,
    pub root: String,
    pub index: Vec<String>,
    pub listing: bool,
    pub hide_dotfiles: bool,
    pub symlinks: SymlinkPolicy,
    pub compression: Compression,
    pub tls: Option<Tls>,
    pub error_pages: Vec<(String, String)>,
    pub redirects: Vec<Redirect>,
    pub rules: Vec<Rule>,
    pub access: Vec<Access>,
    pub proxy: Vec<ProxyRoute>,
    pub fastcgi: Option<FastCgi>,
    pub files: String,
    /// Set by validation: the root, resolved against the config's folder.
    pub root_path: PathBuf,
    pub line: usize,
    pub key: String,
}

impl Section for Site {
    fn read(t: &mut TableReader<'_>) -> Self {
        let site = Site {
            name: t.required("name", "Name used in logs and metrics. Unique."),
            hosts: t.field(
                "hosts",
                Vec::new(),
                "Host names this site answers (`example.org`, `*.example.org` for any subdomain). Matched without port, case-insensitively.",
            ),
            default: t.field(
                "default",
                false,
                "Answer requests whose Host matches no site. At most one site is the default; without one, the first site is.",
            ),
            listeners: t.field("listeners", Vec::new(), "Names of the `web` listeners this site is served on; empty means all of them."),
            root: t.field(
                "root",
                String::new(),
                "Folder whose files are served; relative to the config file's folder. A site without one serves only its `proxy` routes.",
            ),
            index: t.field("index", vec!["index.html".to_string()], "Files tried, in order, when a folder is requested."),
            listing: t.field("listing", false, "List a folder that has no index file (HTML, or JSON when the client asks for `application/json`)."),
            hide_dotfiles: t.field("hide_dotfiles", true, "Answer 404 for any path with a component starting with a dot (`.git`, `.env`)."),
            symlinks: t.field(
                "symlinks",
                SymlinkPolicy::Inside,
                "`inside` follows links whose target stays inside the root, `refuse` follows none, `follow` follows all.",
            ),
            compression: t.section("compression", "Compression of responses (br, zstd, gzip)."),
            tls: t
                .optional_section::<SiteTls>(
                    "tls",
                    "Certificate for this site's hosts on TLS listeners, chosen by SNI. TLS versions are the listener's (`listener.tls.min_version`).",
                )
                .map(|s| s.0),
            error_pages: t.map(
                "error_pages",
                "Status code to a page under the root served with that status, e.g. `404 = \"/errors/404.html\"`.",
            ),
            redirects: t.list("redirect", "Redirects, tried in order before files."),
            rules: t.list("rule", "Response headers by path; every matching rule applies, later ones win."),
            access: t.list(
                "access",
                "Who may read which paths. The first rule whose path matches decides; paths no rule matches are public.",
            ),
            proxy: t.list("proxy", "Paths forwarded to an upstream or app; the first matching route wins, before files."),
            fastcgi: t.optional_section("fastcgi", "Scripts run by a FastCGI server (php-fpm), under the site's root."),
            files: t.field(
                "files",
                String::new(),
                "Path where this site serves the file role (`/files/`): the web file manager there, WebDAV under `dav/`, share links under `s/`. Empty: none.",
            ),
            root_path: PathBuf::new(),
            line: t.line(),
            key: t.prefix().to_string(),
        };
        for (status, page) in &site.error_pages {
            if !matches!(status.parse::<u16>(), Ok(400..=599)) {
                t.error("error_pages", format!("`{status}` is not an error status between 400 and 599"));
            }
            if !page.starts_with('/') {
                t.error("error_pages", format!("page `{page}` must be a path under the root starting with `/`"));
            }
        }
        for h in &site.hosts {
            if h.is_empty() || h.contains(['/', ' ', ':']) || (h.contains('*') && !h.starts_with("*.")) {
                t.error("hosts", format!("`{h}` is not a host name (write `example.org` or `*.example.org`, without port)"));
            }
        }
        site
    }
}

#[derive(Debug, Clone, Default)]
pub struct Compression {
    pub enabled: bool,
    pub min_bytes: ByteSize,
    pub precompressed: bool,
    pub types: Vec<String>,
}

impl Section for Compression {
    fn read(t: &mut TableReader<'_>) -> Self {
        Compression {
            enabled: t.field("enabled", true, "Compress compressible responses on the fly when the client accepts it."),
            min_bytes: t.field("min_bytes", ByteSize(1024), "Smaller bodies are sent as they are."),
            precompressed: t.field(
                "precompressed",
                true,
                "Serve `FILE.br`, `FILE.zst` or `FILE.gz` beside `FILE` when present and not older than it.",
            ),
            types: t.field("types", default_compressible_types(), "Media types compressed on the fly; `text/*` matches every text type."),
        }
    }
}

fn default_compressible_types() -> Vec<String> {
    [
        "text/*",
        "application/javascript",
        "application/json",
        "application/xml",
        "application/wasm",
        "image/svg+xml",
        "application/manifest+json",
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Debug, Clone, Default)]
pub struct Redirect {
    pub from: String,
    pub to: String,
    pub status: u16,
}

impl Section for Redirect {
    fn read(t: &mut TableReader<'_>) -> Self {
        let r = Redirect {
            from: t.required(
                "from",
                "Path to redirect: exact (`/old.html`) or a prefix ending in `*` (`/blog/*`), whose rest replaces a `*` in `to`.",
            ),
            to: t.required("to", "Target URL or path; may end in `*` to carry the rest of a prefix match."),
            status: t.field("status", 301, "301, 302, 303, 307 or 308."),
        };
        if !matches!(r.status, 301 | 302 | 303 | 307 | 308) {
            t.error("status", format!("{} is not a redirect status (301, 302, 303, 307, 308)", r.status));
        }
        if !r.from.starts_with('/') {
            t.error("from", "must be a path starting with `/`");
        }
        r
    }
}

#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub path: String,
    pub cache_control: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Section for Rule {
    fn read(t: &mut TableReader<'_>) -> Self {
        let r = Rule {
            path: t.required(
                "path",
                "Path pattern: `*` matches within one segment, `**` across segments (`/assets/**`, `/**/*.css`); a pattern ending in `/` matches everything below.",
            ),
            cache_control: t.optional("cache_control", "Cache-Control value for matching responses, e.g. `\"public, max-age=31536000, immutable\"`."),
            headers: t.map("headers", "Extra response headers for matching responses, e.g. `{ X-Frame-Options = \"DENY\" }`."),
        };
        if !r.path.starts_with('/') {
            t.error("path", "must start with `/`");
        }
        for (name, value) in &r.headers {
            let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !name_ok {
                t.error("headers", format!("`{name}` is not a valid header name"));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                t.error("headers", format!("the value of `{name}` contains a line break or NUL"));
            }
        }
        r
    }
}

/// An access rule of a site.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub path: String,
    pub allow: Vec<String>,
}

impl Section for Access {
    fn read(t: &mut TableReader<'_>) -> Self {
        let a = Access {
            path: t.required("path", "Path pattern, as in `rule.path` (`/private/**`, `/reports/*.pdf`)."),
            allow: t.required(
                "allow",
                "Who may read: `public`, `users` (anyone signed in), `group:NAME`, `user:NAME`. Others get 401 (not signed in) or 403.",
            ),
        };
        if !a.path.starts_with('/') {
            t.error("path", "must start with `/`");
        }
        check_subjects(t, "allow", &a.allow, true);
        a
    }
}

/// Options that the command line may lay over a config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    /// Replace the `web` listeners with these addresses.
    pub listen: Vec<String>,
    /// Replace the roots of every site.
    pub root: Option<PathBuf>,
    /// Replace the admin listener's address; `off` removes it.
    pub admin: Option<String>,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path, overrides: &Overrides) -> Result<Config, Vec<ConfigError>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError { file: name.clone(), line: 0, key: String::new(), message: format!("cannot read the config: {e}") }]
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&name, &text, &base, overrides)
}

/// Reads and validates config text; `base` is the folder relative paths are resolved from.
pub fn load_str(file: &str, text: &str, base: &Path, overrides: &Overrides) -> Result<Config, Vec<ConfigError>> {
    let root = reader::parse_toml(file, text).map_err(|e| vec![e])?;
    let mut reader = Reader::new(file);
    let mut config: Config = reader.read_root(Some(&root));
    config.source = file.to_string();
    apply_overrides(&mut config, overrides);
    validate(&mut config, base, &mut reader);
    let mut errors = reader.into_errors();
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

fn apply_overrides(config: &mut Config, o: &Overrides) {
    if let Some(d) = &o.data_dir {
        config.server.data_dir = Some(d.display().to_string());
    }
    if !o.listen.is_empty() {
        let template = config.listeners.iter().find(|l| l.role == ListenerRole::Web).cloned().unwrap_or_default();
        config.listeners.retain(|l| l.role.get() != ListenerRole::Web);
        for (i, addr) in o.listen.iter().enumerate() {
            config.listeners.push(Listener {
                name: if i == 0 { "cli".into() } else { format!("cli{i}") },
                address: addr.clone(),
                tls: None,
                unix_mode: None,
                key: format!("--listen {addr}"),
                ..template.clone()
            });
        }
        for site in &mut config.sites {
            site.listeners.clear();
        }
    }
    if let Some(root) = &o.root {
        for site in &mut config.sites {
            site.root = root.display().to_string();
        }
    }
    if let Some(admin) = &o.admin {
        config.listeners.retain(|l| l.role.get() != ListenerRole::Admin);
        if admin != "off" {
            config.listeners.push(Listener {
                name: "admin".into(),
                address: admin.clone(),
                role: ListenerRole::Admin,
                key: format!("--admin {admin}"),
                ..Default::default()
            });
        }
    }
}

/// The data folder: config, then `$SERVENTE_DATA_DIR`, `$XDG_DATA_HOME/servente`, `~/.local/share/servente`.
pub fn data_dir(config: &Config) -> PathBuf {
    if let Some(d) = &config.server.data_dir {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("SERVENTE_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("servente");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/servente"),
        None => PathBuf::from("servente-data"),
    }
}

fn validate(config: &mut Config, base: &Path, r: &mut Reader) {
    let data_dir = data_dir(config);
    let mut names = std::collections::HashSet::new();
    let mut addresses = std::collections::HashSet::new();
    for l in &mut config.listeners {
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            r.error(l.line, &format!("{}.name", l.key), format!("another listener is already named `{}`", l.name));
        }
        if l.address.is_empty() {
            continue;
        }
        match parse_listen_address(&l.address, &data_dir) {
            Ok(a) => {
                let port_zero = matches!(a, ListenAddress::Tcp(s) if s.port() == 0);
                if !port_zero && !addresses.insert(a.clone()) {
                    r.error(l.line, &format!("{}.address", l.key), format!("another listener already uses {a}"));
                }
                l.resolved = Some(a);
            }
            Err(e) => r.error(l.line, &format!("{}.address", l.key), e),
        }
        if let Some(tls) = &mut l.tls {
            resolve_tls(tls, base, r);
        }
    }
    let web_listeners: Vec<&str> = config.listeners.iter().filter(|l| l.role.get() == ListenerRole::Web).map(|l| l.name.as_str()).collect();
    let mut site_names = std::collections::HashSet::new();
    let mut defaults = 0;
    let mut hosts = std::collections::HashMap::new();
    for s in &mut config.sites {
        if !s.name.is_empty() && !site_names.insert(s.name.clone()) {
            r.error(s.line, &format!("{}.name", s.key), format!("another site is already named `{}`", s.name));
        }
        if s.default {
            defaults += 1;
            if defaults > 1 {
                r.error(s.line, &format!("{}.default", s.key), "only one site may be the default");
            }
        }
        for h in &s.hosts {
            if let Some(other) = hosts.insert(h.to_ascii_lowercase(), s.name.clone()) {
                r.error(s.line, &format!("{}.hosts", s.key), format!("host `{h}` is already served by site `{other}`"));
            }
        }
        for l in &s.listeners {
            if !web_listeners.contains(&l.as_str()) {
                r.error(s.line, &format!("{}.listeners", s.key), format!("there is no `web` listener named `{l}`"));
            }
        }
        if !s.root.is_empty() {
            let root = base.join(&s.root);
            match std::fs::canonicalize(&root) {
                Ok(p) if p.is_dir() => s.root_path = p,
                Ok(_) => r.error(s.line, &format!("{}.root", s.key), format!("{} is not a folder", root.display())),
                Err(e) => r.error(s.line, &format!("{}.root", s.key), format!("cannot open {}: {e}", root.display())),
            }
        }
        let mount_ok = s.files.starts_with('/') && s.files.ends_with('/');
        if !s.files.is_empty() && !mount_ok {
            r.error(s.line, &format!("{}.files", s.key), "the file role's path must start and end with `/` (`/files/`)");
        }
        if let Some(tls) = &mut s.tls {
            resolve_tls(tls, base, r);
            if s.hosts.is_empty() {
                r.error(tls.line, &tls.key_name, "a site certificate needs `hosts` to be chosen by SNI");
            }
        }
    }
    config.files.root_path = if config.files.root.is_empty() { data_dir.join("files") } else { base.join(&config.files.root) };
    let mut folder_names = std::collections::HashSet::new();
    for f in &config.files.folders {
        if !folder_names.insert(f.name.clone()) {
            r.error(0, "files.folder.name", format!("two shared folders are named `{}`", f.name));
        }
    }
    let mut upstream_names = std::collections::HashSet::new();
    for (name, line, key) in
        config.upstreams.iter().map(|u| (&u.name, u.line, &u.key)).chain(config.apps.iter().map(|a| (&a.name, a.line, &a.key)))
    {
        if !upstream_names.insert(name.clone()) {
            r.error(line, &format!("{key}.name"), format!("another upstream or app is already named `{name}`"));
        }
    }
    for a in &config.apps {
        if let Some(d) = &a.dir
            && !base.join(d).is_dir()
        {
            r.error(a.line, &format!("{}.dir", a.key), format!("{} is not a folder", base.join(d).display()));
        }
    }
    for s in &config.sites {
        for p in &s.proxy {
            if !upstream_names.contains(&p.upstream) {
                r.error(p.line, &format!("{}.upstream", p.key), format!("there is no upstream or app named `{}`", p.upstream));
            }
        }
        if s.fastcgi.is_some() && s.root.is_empty() {
            r.error(s.line, &format!("{}.fastcgi", s.key), "FastCGI scripts live under the site's `root`: set one");
        }
    }
    if config.listeners.is_empty() {
        r.error(0, "listener", "no listener is configured: add a [[listener]]");
    }
    if !web_listeners.is_empty() && config.sites.is_empty() {
        r.error(0, "site", "a `web` listener is configured but no [[site]] to serve");
    }
}

fn resolve_tls(tls: &mut Tls, base: &Path, r: &mut Reader) {
    tls.cert_path = base.join(&tls.cert);
    tls.key_path = base.join(&tls.key);
    for (key, path) in [("cert", &tls.cert_path), ("key", &tls.key_path)] {
        if let Err(e) = std::fs::metadata(path) {
            r.error(tls.line, &format!("{}.{key}", tls.key_name), format!("cannot read {}: {e}", path.display()));
        }
    }
}

/// The reference page of every config key, in Markdown, generated from the doc strings above.
pub fn reference_markdown() -> String {
    let mut r = Reader::for_docs();
    let _: Config = r.read_root(None);
    let docs = r.into_docs();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated by `servente config reference` from the same code that reads the config; \
         a test keeps this file equal to that output.\n\n\
         servente reads one TOML file (`servente serve --config FILE`). Unknown keys are errors. \
         `servente check --config FILE` lists every problem with its line. Without a config, \
         servente runs on its embedded default (`servente config default` prints it).\n",
    );
    write_table_docs(&docs, "", &mut out);
    out
}

/// Writes the keys of the table at `prefix`, then each of its sub-tables under its own heading.
fn write_table_docs(docs: &[reader::DocEntry], prefix: &str, out: &mut String) {
    let children = docs.iter().filter(|d| d.path.rsplit_once('.').map(|(p, _)| p).unwrap_or("") == prefix);
    let (tables, keys): (Vec<_>, Vec<_>) = children.partition(|d| d.kind == "section" || d.kind == "list");
    for d in keys {
        let default = if d.required {
            "required".to_string()
        } else if d.default.is_empty() {
            "unset".to_string()
        } else {
            format!("default `{}`", d.default)
        };
        out.push_str(&format!("- `{}` ({}; {default}): {}\n", d.path.replace("[]", ""), d.kind, d.doc));
    }
    for d in tables {
        let shown = d.path.replace("[]", "");
        if d.kind == "list" {
            out.push_str(&format!("\n## `[[{shown}]]`\n\n{}\n\n", d.doc));
            write_table_docs(docs, &format!("{}[]", d.path), out);
        } else {
            out.push_str(&format!("\n## `[{shown}]`\n\n{}\n\n", d.doc));
            write_table_docs(docs, &d.path, out);
        }
    }
}

/// Names of users, groups and shared folders: lower-case letters, digits, `.`, `_`, `-`.
pub(crate) fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

/// Reports every entry of `list` that is not a subject of the user directory's permission model.
pub(crate) fn check_subjects(t: &mut TableReader<'_>, key: &str, list: &[String], public_ok: bool) {
    for s in list {
        let ok = match s.split_once(':') {
            None => (public_ok && s == "public") || s == "users",
            Some(("group" | "user", n)) => name_ok(n),
            Some(_) => false,
        };
        if !ok {
            let public = if public_ok { "`public`, " } else { "" };
            t.error(key, format!("`{s}` is not a subject: write {public}`users`, `group:NAME` or `user:NAME`"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let dir = std::env::temp_dir();
        match load_str("t.toml", text, &dir, &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = load_str("<embedded>", EMBEDDED_DEFAULT, Path::new("."), &Overrides::default());
        let c = c.map_err(|e| format!("{e:?}")).expect("embedded default must be valid");
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.sites[0].index, vec!["index.html"]);
    }

    #[test]
    fn every_problem_is_reported() {
        let errors = errors_of(
            "[server]\nmax_conections = 5\n\n[[listener]]\nname = \"a\"\naddress = \"nowhere\"\n\n[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nunix_mode = \"0999\"\n\n[[site]]\nname = \"s\"\nroot = \"/definitely/not/here\"\nlisteners = [\"b\"]\n[[site.redirect]]\nfrom = \"x\"\nto = \"/y\"\nstatus = 200\n",
        );
        let joined = errors.join("\n");
        for expected in [
            "t.toml:2: server.max_conections: unknown key (did you mean `max_connections`?)",
            "t.toml:4: listener[0].address: `nowhere` is not a listen address",
            "t.toml:11: listener[1].unix_mode: `0999` is not an octal file mode",
            "listener[1].name: another listener is already named `a`",
            "site[0].root: cannot open /definitely/not/here",
            "site[0].listeners: there is no `web` listener named `b`",
            "t.toml:18: site[0].redirect[0].from: must be a path starting with `/`",
            "t.toml:20: site[0].redirect[0].status: 200 is not a redirect status",
        ] {
            assert!(joined.contains(expected), "missing `{expected}` in:\n{joined}");
        }
    }

    #[test]
    fn listen_addresses() {
        let d = Path::new("/data");
        assert_eq!(parse_listen_address("unix:s.sock", d), Ok(ListenAddress::Unix("/data/s.sock".into())));
        assert_eq!(parse_listen_address("unix:/run/s", d), Ok(ListenAddress::Unix("/run/s".into())));
        assert!(matches!(parse_listen_address(":8080", d), Ok(ListenAddress::Tcp(a)) if a.port() == 8080 && a.ip().is_unspecified()));
        assert!(matches!(parse_listen_address("[::1]:1", d), Ok(ListenAddress::Tcp(a)) if a.is_ipv6()));
        assert!(parse_listen_address("localhost", d).is_err());
    }

    #[test]
    fn reference_doc_in_repo_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(current == reference_markdown(), "docs/config.md is out of date: run `cargo run -q -- config reference > docs/config.md`");
    }
}

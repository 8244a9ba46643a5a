//! The config of the application role: upstream groups servente proxies to, applications it
//! starts and supervises, and the routes of a site that go to them (proxy, FastCGI).

use std::time::Duration;

use crate::choice;
use crate::reader::{Seconds, Section, TableReader};

choice!(
    /// How requests are spread over an upstream's servers.
    Balance {
        /// Each server in turn.
        RoundRobin = "round_robin",
        /// The server with the fewest requests in flight.
        LeastConn = "least_conn",
        /// The same server for the same `hash_key` value (consistent hashing).
        Hash = "hash"
    } default RoundRobin
);

choice!(
    /// The protocol servente speaks to an upstream.
    UpstreamProtocol {
        Http1 = "http1",
        /// HTTP/2 without TLS (prior knowledge), as gRPC servers and some app servers speak.
        Http2 = "http2"
    } default Http1
);

/// A group of servers that answer the same requests.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<String>,
    pub settings: UpstreamSettings,
    pub line: usize,
    pub key: String,
}

/// Everything about an upstream but its servers; apps have these too.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    pub balance: Balance,
    pub hash_key: Option<String>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Seconds,
    pub response_timeout: Seconds,
    pub idle_timeout: Seconds,
    pub max_idle: usize,
    pub retries: usize,
    pub max_fails: u32,
    pub fail_timeout: Seconds,
    pub health: Option<Health>,
}

impl UpstreamSettings {
    fn fields(t: &mut TableReader<'_>) -> Self {
        let s = UpstreamSettings {
            balance: t.field("balance", Balance::RoundRobin, "`round_robin`, `least_conn` or `hash` (needs `hash_key`)."),
            hash_key: t.optional(
                "hash_key",
                "For `balance = \"hash\"`: `header:NAME` or `cookie:NAME`; requests with the same value go to the same server while it is up.",
            ),
            protocol: t.field("protocol", UpstreamProtocol::Http1, "`http1`, or `http2` (cleartext, prior knowledge)."),
            connect_timeout: t.field("connect_timeout", Seconds(Duration::from_secs(5)), "Longest wait for a connection to a server."),
            response_timeout: t.field(
                "response_timeout",
                Seconds(Duration::from_secs(60)),
                "Longest wait for a server's response head after the request was sent (then 504; counted from the request body's last piece, so a slow upload is not cut while the server takes it, nor while the client is the one not sending: `limits.body_read_timeout` covers that), and for each next piece of its body (then the transfer is cut, as nginx's proxy_read_timeout). An upgraded connection (WebSocket) is closed when no byte passed either way for this long.",
            ),
            idle_timeout: t.field("idle_timeout", Seconds(Duration::from_secs(60)), "Idle pooled connections are closed after this long."),
            max_idle: t.field("max_idle", 64, "Idle keep-alive connections kept per server and worker thread."),
            retries: t.field(
                "retries",
                1,
                "Other servers tried when connecting fails, for requests that are safe to repeat (GET, HEAD, OPTIONS, PUT, DELETE without a body).",
            ),
            max_fails: t.field(
                "max_fails",
                3,
                "Consecutive failures (connect errors, timeouts, 502s) after which a server is left out for `fail_timeout`.",
            ),
            fail_timeout: t.field("fail_timeout", Seconds(Duration::from_secs(10)), "How long a failing server is left out."),
            health: t.optional_section("health", "Active health checks: servente asks each server on its own."),
        };
        if s.balance == Balance::Hash {
            match s.hash_key.as_deref() {
                Some(k) if k.strip_prefix("header:").or_else(|| k.strip_prefix("cookie:")).is_some_and(|n| !n.is_empty()) => {}
                Some(k) => t.error("hash_key", format!("`{k}` is not `header:NAME` or `cookie:NAME`")),
                None => t.error("hash_key", "`balance = \"hash\"` needs a `hash_key`"),
            }
        }
        s
    }
}

impl Section for Upstream {
    fn read(t: &mut TableReader<'_>) -> Self {
        let u = Upstream {
            name: t.required("name", "Name routes refer to. Unique among upstreams and apps."),
            servers: t.required("servers", "Server addresses: `127.0.0.1:9000`, `[::1]:9000`, `localhost:9000` or `unix:/path.sock`."),
            settings: UpstreamSettings::fields(t),
            line: t.line(),
            key: t.prefix().to_string(),
        };
        if u.servers.is_empty() {
            t.error("servers", "an upstream needs at least one server");
        }
        for s in &u.servers {
            if let Err(e) = check_server_address(s) {
                t.error("servers", e);
            }
        }
        u
    }
}

/// Checks the shape of an upstream server address (names are resolved when connecting).
pub fn check_server_address(s: &str) -> Result<(), String> {
    if let Some(p) = s.strip_prefix("unix:") {
        return if p.starts_with('/') { Ok(()) } else { Err(format!("`{s}`: a Unix socket path must be absolute")) };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) && !host.contains('/') => Ok(()),
        _ => Err(format!("`{s}` is not `HOST:PORT` or `unix:/path.sock`")),
    }
}

/// An active health check.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub path: String,
    pub interval: Seconds,
    pub timeout: Seconds,
    pub expect_status: u16,
    pub fails: u32,
    pub passes: u32,
}

impl Section for Health {
    fn read(t: &mut TableReader<'_>) -> Self {
        let h = Health {
            path: t.field("path", "/".to_string(), "Path requested with GET."),
            interval: t.field("interval", Seconds(Duration::from_secs(5)), "Time between checks of one server."),
            timeout: t.field("timeout", Seconds(Duration::from_secs(2)), "A check not answered within this time fails."),
            expect_status: t.field("expect_status", 200, "Status a healthy server answers; `200` also accepts any 2xx."),
            fails: t.field("fails", 2, "Failed checks in a row that take a server out."),
            passes: t.field("passes", 1, "Passed checks in a row that bring it back."),
        };
        if !h.path.starts_with('/') {
            t.error("path", "must start with `/`");
        }
        if h.fails == 0 || h.passes == 0 {
            t.error("fails", "`fails` and `passes` must be at least 1");
        }
        h
    }
}

choice!(
    /// How an app instance is told where to listen.
    AppListen {
        /// A free TCP port on 127.0.0.1, in `PORT` (and `HOST=127.0.0.1`).
        Port = "port",
        /// A Unix socket path in the data folder, in `SOCKET_PATH`.
        Unix = "unix"
    } default Port
);

/// An application servente starts, supervises and proxies to.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub dir: Option<String>,
    pub env: Vec<(String, String)>,
    pub instances: usize,
    pub listen: AppListen,
    pub ready_path: String,
    pub ready_timeout: Seconds,
    pub stop_grace: Seconds,
    pub max_restarts: u32,
    pub restart_window: Seconds,
    pub upstream: UpstreamSettings,
    pub line: usize,
    pub key: String,
}

impl Section for App {
    fn read(t: &mut TableReader<'_>) -> Self {
        let a = App {
            name: t.required("name", "Name routes and `servente app` refer to; also the name of its upstream. Unique."),
            command: t.required("command", "Program to run (looked up in PATH when it has no `/`)."),
            args: t.field("args", Vec::new(), "Arguments."),
            dir: t.optional("dir", "Working folder, relative to the config file's folder. Default: that folder."),
            env: t.map("env", "Extra environment variables, e.g. `{ APP_ENV = \"production\" }`."),
            instances: t.field("instances", 1, "Processes to run at once; requests are spread over them."),
            listen: t.field(
                "listen",
                AppListen::Port,
                "`port`: `PORT` holds a free port on 127.0.0.1; `unix`: `SOCKET_PATH` holds a socket path.",
            ),
            ready_path: t.field("ready_path", "/".to_string(), "An instance gets traffic once a GET of this path answers below 500."),
            ready_timeout: t.field(
                "ready_timeout",
                Seconds(Duration::from_secs(30)),
                "An instance not ready by then is stopped and counted as a crash.",
            ),
            stop_grace: t.field(
                "stop_grace",
                Seconds(Duration::from_secs(10)),
                "After SIGTERM, how long an instance may take to exit before SIGKILL.",
            ),
            max_restarts: t.field(
                "max_restarts",
                5,
                "Crashes within `restart_window` after which the app is marked failed and no longer restarted.",
            ),
            restart_window: t.field("restart_window", Seconds(Duration::from_secs(60)), "Window for counting crashes."),
            upstream: t.section("upstream", "How servente talks to the instances (same keys as `[[upstream]]`, without `servers`)."),
            line: t.line(),
            key: t.prefix().to_string(),
        };
        if a.instances == 0 || a.instances > 64 {
            t.error("instances", "must be between 1 and 64");
        }
        if !a.ready_path.starts_with('/') {
            t.error("ready_path", "must start with `/`");
        }
        a
    }
}

impl Section for UpstreamSettings {
    fn read(t: &mut TableReader<'_>) -> Self {
        UpstreamSettings::fields(t)
    }
}

/// A path of a site that goes to an upstream or app.
#[derive(Debug, Clone, Default)]
pub struct ProxyRoute {
    pub path: String,
    pub upstream: String,
    pub strip_prefix: Option<String>,
    pub forwarded: bool,
    pub trust_forwarded_from: Vec<String>,
    pub line: usize,
    pub key: String,
}

impl Section for ProxyRoute {
    fn read(t: &mut TableReader<'_>) -> Self {
        let r = ProxyRoute {
            path: t.required("path", "Path pattern, as in `rule.path`: `/api/` (everything below), `/**` (everything)."),
            upstream: t.required("upstream", "Name of an `[[upstream]]` or `[[app]]`."),
            strip_prefix: t.optional("strip_prefix", "Remove this prefix from the path before forwarding (`/api` turns `/api/x` into `/x`)."),
            forwarded: t.field(
                "forwarded",
                true,
                "Send `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` to the upstream.",
            ),
            trust_forwarded_from: t.field(
                "trust_forwarded_from",
                Vec::new(),
                "Client addresses or CIDR ranges (`10.0.0.0/8`) whose own forwarding headers are kept and extended; from anyone else they are replaced.",
            ),
            line: t.line(),
            key: t.prefix().to_string(),
        };
        if !r.path.starts_with('/') {
            t.error("path", "must start with `/`");
        }
        for c in &r.trust_forwarded_from {
            if parse_cidr(c).is_none() {
                t.error("trust_forwarded_from", format!("`{c}` is not an address or CIDR range"));
            }
        }
        r
    }
}

/// Parses `10.0.0.0/8`, `::1/128` or a single address into (network, prefix length).
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.parse::<std::net::IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a: std::net::IpAddr = text.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// PHP (or any FastCGI application) for a site.
#[derive(Debug, Clone, Default)]
pub struct FastCgi {
    pub address: String,
    pub path: String,
    pub extension: String,
    pub front_controller: Option<String>,
    pub params: Vec<(String, String)>,
    pub max_idle: usize,
    pub timeout: Seconds,
    pub line: usize,
    pub key: String,
}

impl Section for FastCgi {
    fn read(t: &mut TableReader<'_>) -> Self {
        let f = FastCgi {
            address: t.required("address", "The FastCGI server: `unix:/run/php/php8.2-fpm.sock` or `127.0.0.1:9000`."),
            path: t.field("path", "/".to_string(), "Requests below this path may go to FastCGI."),
            extension: t.field(
                "extension",
                ".php".to_string(),
                "Scripts are files ending in this; the part of the path after it is `PATH_INFO` (`/index.php/a/b`).",
            ),
            front_controller: t.optional(
                "front_controller",
                "Script that answers paths matching no file or folder, as `try_files $uri $uri/ /index.php` does (`/index.php`).",
            ),
            params: t.map("params", "Extra FastCGI parameters, e.g. `{ APP_ENV = \"prod\" }`."),
            max_idle: t.field(
                "max_idle",
                0,
                "Connections kept open for reuse per worker thread (FCGI_KEEP_CONN, as nginx's `fastcgi_keep_conn`). Each one holds a php-fpm child while idle: keep it at most `pm.max_children` divided by the worker threads. 0: a connection per request.",
            ),
            timeout: t.field(
                "timeout",
                Seconds(Duration::from_secs(60)),
                "Longest wait for the application: to connect, to take each piece of the request (a script that stops reading its input; then 504), for the response head once the request is sent (then 504), and for each next piece of the body (then the transfer is cut), as nginx's `fastcgi_send_timeout` and `fastcgi_read_timeout`.",
            ),
            line: t.line(),
            key: t.prefix().to_string(),
        };
        if let Err(e) = check_server_address(&f.address) {
            t.error("address", e);
        }
        if !f.path.starts_with('/') {
            t.error("path", "must start with `/`");
        }
        if f.front_controller.as_deref().is_some_and(|c| !c.starts_with('/')) {
            t.error("front_controller", "must be a path under the root starting with `/`");
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_and_cidrs() {
        assert!(check_server_address("127.0.0.1:9000").is_ok());
        assert!(check_server_address("[::1]:9000").is_ok());
        assert!(check_server_address("app.internal:80").is_ok());
        assert!(check_server_address("unix:/run/app.sock").is_ok());
        assert!(check_server_address("unix:relative.sock").is_err());
        assert!(check_server_address("127.0.0.1").is_err());
        assert!(check_server_address("127.0.0.1:0").is_err());
        assert_eq!(parse_cidr("10.0.0.0/8"), Some(("10.0.0.0".parse().expect("ip"), 8)));
        assert_eq!(parse_cidr("::1"), Some(("::1".parse().expect("ip"), 128)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("nope"), None);
    }
}

//! Turning a config into a running generation: the roles (a closed enum matched here), the
//! listeners with their TLS, and the router the core calls for every HTTP request.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use servente_config::{Config, ConfigError, ListenerRole};
use servente_core::metrics::{Metrics, SiteStats};
use servente_core::tls::{self, SniResolver};
use servente_core::{Body, ListenerSpec, RequestCx, Router};
use servente_web::{Budget, WebRole};

/// The router of one config generation: the role of each listener, and each role's state.
pub struct AppRouter {
    /// Name and role of each listener, by index in the config.
    roles: Vec<(String, ListenerRole)>,
    web: WebRole,
    admin: Admin,
}

impl Router for AppRouter {
    async fn handle<'a>(&'a self, req: Request<Incoming>, cx: &'a mut RequestCx) -> Response<Body> {
        // Debug builds only, and only when asked: lets the tests prove a panicking handler ends
        // one request, never the process.
        #[cfg(debug_assertions)]
        if req.uri().path() == "/__servente_test_panic" && std::env::var_os("SERVENTE_TEST_HOOKS").is_some() {
            panic!("test hook: deliberate panic");
        }
        // A connection accepted under an older config keeps the listener index of that config;
        // the name tells which listener it is now (indexes move when listeners are added).
        if self.roles.get(cx.listener_index).is_none_or(|(name, _)| **name != *cx.listener) {
            match self.roles.iter().position(|(name, _)| **name == *cx.listener) {
                Some(i) => cx.listener_index = i,
                None => {
                    let mut r = servente_core::simple_response(StatusCode::MISDIRECTED_REQUEST, "this listener was removed by a reload\n");
                    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
            }
        }
        match self.roles[cx.listener_index].1 {
            ListenerRole::Admin => self.admin.handle(&req, cx),
            ListenerRole::Web => self.web.handle(req, cx).await,
        }
    }
}

/// Health and metrics on `admin` listeners.
struct Admin {
    metrics: Arc<Metrics>,
    stats: Arc<SiteStats>,
}

impl Admin {
    fn handle(&self, req: &Request<Incoming>, cx: &mut RequestCx) -> Response<Body> {
        cx.site = Some(self.stats.clone());
        let (status, content_type, body) = match req.uri().path() {
            "/healthz" => (StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n".to_string()),
            "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()),
            _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: try /healthz or /metrics\n".to_string()),
        };
        let mut r = Response::new(Body::full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// Everything built from one config, ready for `Server::apply`.
pub struct Generation {
    pub router: AppRouter,
    pub listeners: Vec<ListenerSpec>,
}

/// Builds a generation, reporting every problem as a config error (certificates that do not
/// load, sites that cannot be built).
pub fn build(config: &Config, metrics: &Arc<Metrics>, budget: &Arc<Budget>) -> Result<Generation, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let err = |line: usize, key: &str, message: String| ConfigError { file: config.source.clone(), line, key: key.to_string(), message };
    let mut listeners = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let Some(address) = l.resolved.clone() else { continue };
        let tls_config = match &l.tls {
            None => None,
            Some(t) => match tls_for_listener(config, &l.name, t) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(err(t.line, &e.key, e.message));
                    None
                }
            },
        };
        listeners.push(ListenerSpec {
            name: Arc::from(l.name.as_str()),
            index,
            address,
            unix_mode: l.unix_mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok()),
            role: l.role.get(),
            tls: tls_config,
        });
    }
    let web = match WebRole::new(config, metrics, budget.clone()) {
        Ok(w) => Some(w),
        Err(list) => {
            errors.extend(list.into_iter().map(|m| err(0, "site", m)));
            None
        }
    };
    match web {
        Some(web) if errors.is_empty() => Ok(Generation {
            router: AppRouter {
                roles: config.listeners.iter().map(|l| (l.name.clone(), l.role.get())).collect(),
                web,
                admin: Admin { metrics: metrics.clone(), stats: metrics.site("admin") },
            },
            listeners,
        }),
        _ => Err(errors),
    }
}

/// The rustls config of a TLS listener: its own certificate as the default, plus the
/// certificates of the sites it serves, chosen by SNI.
fn tls_for_listener(config: &Config, listener: &str, t: &servente_config::Tls) -> Result<Arc<rustls::ServerConfig>, tls::TlsError> {
    let mut resolver = SniResolver::new(tls::load_certified_key(t)?);
    for site in &config.sites {
        if !site.listeners.is_empty() && !site.listeners.iter().any(|l| l == listener) {
            continue;
        }
        if let Some(st) = &site.tls {
            let key = tls::load_certified_key(st)?;
            for host in &site.hosts {
                resolver.add(host, key.clone());
            }
        }
    }
    tls::server_config(t.min_version, resolver, true)
}

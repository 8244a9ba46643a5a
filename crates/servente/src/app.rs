//! Turning a config into a running generation: the roles (a closed enum matched here), the
//! listeners with their TLS, and the router the core calls for every HTTP request.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use servente_admin::{AccessInfo, Admin, ConfigView, Shared, SiteInfo};
use servente_apps::upstream::Upstream;
use servente_config::{Config, ConfigError, ListenerRole};
use servente_core::RequestBody;
use servente_core::metrics::Metrics;
use servente_core::tls::{self, SniResolver};
use servente_core::{Body, ListenerSpec, RequestCx, Router};
use servente_web::{Budget, WebAuth, WebRole};

/// The router of one config generation: the role of each listener, and each role's state.
pub struct AppRouter {
    /// Name and role of each listener, by index in the config.
    roles: Vec<(String, ListenerRole)>,
    web: WebRole,
    admin: Admin,
}

impl Router for AppRouter {
    async fn handle<'a>(&'a self, req: Request<RequestBody>, cx: &'a mut RequestCx) -> Response<Body> {
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
            // Boxed: the console's future is large, and every web request's future would be as
            // large as it (and be moved that much) if it were inline.
            // (The box is made before the await, as in `WebRole::handle`.)
            ListenerRole::Admin => {
                let boxed = Box::pin(self.admin.handle(req, cx));
                boxed.await
            }
            ListenerRole::Web => self.web.handle(req, cx).await,
        }
    }

    fn body_limit(&self, req: &Request<RequestBody>, cx: &RequestCx) -> u64 {
        match self.roles.get(cx.listener_index) {
            Some((_, ListenerRole::Web)) => self.web.body_limit(req, cx),
            _ => cx.max_body,
        }
    }
}

/// Everything built from one config, ready for `Server::apply`.
pub struct Generation {
    pub router: AppRouter,
    pub listeners: Vec<ListenerSpec>,
}

/// What a generation needs besides its config: the process-wide admin state and the config's
/// own text (which the admin API shows).
pub struct Env<'a> {
    pub shared: &'a Arc<Shared>,
    pub config_text: &'a str,
    /// Whether the config came from a file (which applying a new one rewrites).
    pub from_file: bool,
    /// Every upstream and app of the config by name (from `servente_apps::registry`).
    pub upstreams: &'a HashMap<String, Arc<Upstream>>,
}

/// Builds a generation, reporting every problem as a config error (certificates that do not
/// load, sites that cannot be built).
pub fn build(config: &Config, metrics: &Arc<Metrics>, budget: &Arc<Budget>, env: &Env<'_>) -> Result<Generation, Vec<ConfigError>> {
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
    let auth = WebAuth { directory: Some(env.shared.directory.clone()), basic_over_plain_http: config.auth.basic_over_plain_http };
    let files = match servente_files::FilesRole::new(config, &servente_config::data_dir(config), Some(env.shared.directory.clone())) {
        Ok(f) => f,
        Err(e) => {
            errors.push(err(0, "files", e));
            None
        }
    };
    let web = match WebRole::new(config, metrics, budget.clone(), auth, env.upstreams, files) {
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
                admin: Admin::new(
                    env.shared.clone(),
                    ConfigView { source: config.source.clone(), text: env.config_text.to_string(), persisted: env.from_file },
                    site_infos(config),
                    config.auth.basic_over_plain_http,
                ),
            },
            listeners,
        }),
        _ => Err(errors),
    }
}

fn site_infos(config: &Config) -> Vec<SiteInfo> {
    config
        .sites
        .iter()
        .map(|s| SiteInfo {
            name: s.name.clone(),
            hosts: s.hosts.clone(),
            root: s.root_path.display().to_string(),
            listing: s.listing,
            access: s.access.iter().map(|a| AccessInfo { path: a.path.clone(), allow: a.allow.clone() }).collect(),
        })
        .collect()
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

//! servente's web role: static sites.
//!
//! [`WebRole`] holds the sites of one config generation and picks the site for a request by
//! listener and Host (then SNI); [`site::Site`] answers from the site's root. The wire-level
//! logic (paths, negotiation; conditionals and ranges are the core's) lives in modules that do
//! no IO.

pub mod files;
pub mod listing;
pub mod negotiate;
pub mod path;
pub mod site;

// Pure HTTP logic shared with the file role, kept in the core.
pub use servente_core::{conditional, range};

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use servente_apps::upstream::Upstream;
use servente_auth::web::sign_in_user;
use servente_auth::{Acl, Client, Directory, Level};
use servente_config::{Config, ListenerRole};
use servente_core::RequestBody;
use servente_core::metrics::Metrics;
use servente_core::{Body, RequestCx, simple_response};
use servente_files::FilesRole;

pub use files::Budget;
pub use site::Site;

/// The sites reachable on one listener.
#[derive(Default)]
struct HostMap {
    exact: HashMap<String, usize, RandomState>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, usize, RandomState>,
    default: Option<usize>,
}

/// How sites with access rules sign people in.
#[derive(Clone)]
pub struct WebAuth {
    /// `None` when servente runs without a directory (then protected paths answer 503).
    pub directory: Option<Arc<Directory>>,
    pub basic_over_plain_http: bool,
}

/// Every site of a config generation, and how requests find them.
pub struct WebRole {
    sites: Vec<Site>,
    auth: WebAuth,
    /// Indexed by listener index; `None` for listeners of other roles.
    hosts: Vec<Option<HostMap>>,
    /// The file role, for sites that mount it (`site.files`).
    files: Option<Arc<FilesRole>>,
}

impl WebRole {
    /// Builds the sites; `budget` is shared across reloads so memory stays bounded.
    /// `upstreams`: every upstream and app of the config by name, for proxy routes.
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        budget: Arc<Budget>,
        auth: WebAuth,
        upstreams: &HashMap<String, Arc<Upstream>>,
        files: Option<Arc<FilesRole>>,
    ) -> Result<Self, Vec<String>> {
        let mut sites = Vec::new();
        let mut errors = Vec::new();
        for s in &config.sites {
            match Site::new(s, metrics.site(&s.name), budget.clone(), upstreams) {
                Ok(site) => sites.push(site),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let explicit_default = config.sites.iter().position(|s| s.default);
        let hosts = config
            .listeners
            .iter()
            .map(|l| {
                if l.role.get() != ListenerRole::Web {
                    return None;
                }
                let mut map = HostMap::default();
                for (i, s) in config.sites.iter().enumerate() {
                    if !s.listeners.is_empty() && !s.listeners.contains(&l.name) {
                        continue;
                    }
                    for h in &s.hosts {
                        let h = h.to_ascii_lowercase();
                        match h.strip_prefix("*.") {
                            Some(suffix) => map.wildcard.insert(suffix.to_string(), i),
                            None => map.exact.insert(h, i),
                        };
                    }
                    if map.default.is_none() || explicit_default == Some(i) {
                        map.default = Some(i);
                    }
                }
                if explicit_default.is_some_and(|d| config.sites[d].listeners.is_empty() || config.sites[d].listeners.contains(&l.name)) {
                    map.default = explicit_default;
                }
                Some(map)
            })
            .collect();
        Ok(WebRole { sites, auth, hosts, files })
    }

    /// The site for a request on a listener, by Host (or :authority), then SNI, then default.
    pub fn site_for<B>(&self, req: &Request<B>, cx: &RequestCx) -> Option<&Site> {
        let map = self.hosts.get(cx.listener_index)?.as_ref()?;
        let host = req.uri().host().or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok())).or(cx.sni.as_deref());
        let index = host
            .map(|h| {
                let h = strip_port(h);
                // Most clients send lower case already; only others pay for a copy.
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    std::borrow::Cow::Owned(h.to_ascii_lowercase())
                } else {
                    std::borrow::Cow::Borrowed(h)
                }
            })
            .and_then(|h| {
                let h = h.trim_end_matches('.');
                map.exact.get(h).or_else(|| h.split_once('.').and_then(|(_, suffix)| map.wildcard.get(suffix))).copied()
            })
            .or(map.default)?;
        self.sites.get(index)
    }

    /// Every request's future is as large as the largest branch it may take, and is moved a few
    /// times on its way into hyper's connection; the large branches (WebDAV, sign-in checks,
    /// FastCGI) are boxed so that the common ones (static files, proxying) stay small. Each box
    /// is made in a statement of its own: a future moved into a box in the statement that
    /// awaits it still takes its full size in this future (rustc keeps the moved-from
    /// temporary's storage until the statement ends).
    pub async fn handle(&self, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
        match self.site_for(&req, cx) {
            Some(site) => {
                cx.site = Some(site.stats.clone());
                if let Some(mount) = self.files_mount(site, req.uri().path()) {
                    if req.uri().path().len() < mount.len() {
                        return servente_core::redirect(StatusCode::MOVED_PERMANENTLY, mount);
                    }
                    if let Some(files) = &self.files {
                        let boxed = Box::pin(files.handle(mount, req, cx));
                        return boxed.await;
                    }
                }
                let (acl, proxy) = site.rules_for(req.uri().path());
                if let Some(acl) = acl {
                    let boxed = Box::pin(self.check_access(acl, &req, cx));
                    if let Err(refusal) = boxed.await {
                        return refusal;
                    }
                }
                if let Some(route) = proxy {
                    return route.handle(req, cx).await;
                }
                let script = site.fastcgi_script(req.uri().path()).await;
                if let Some((route, script)) = script {
                    let boxed = Box::pin(route.run(req, script, cx));
                    return boxed.await;
                }
                site.handle(&req, cx.started, cx.sendfile).await
            }
            None => servente_core::simple_response(http::StatusCode::MISDIRECTED_REQUEST, "no site serves this host\n"),
        }
    }
}

impl WebRole {
    /// The site's file-role mount when `path` is under it (or is it without the final slash).
    fn files_mount<'s>(&self, site: &'s Site, path: &str) -> Option<&'s str> {
        let m = site.files_mount.as_deref()?;
        (path.starts_with(m) || path == &m[..m.len() - 1]).then_some(m)
    }

    /// Request bodies of the file role are bounded by quotas, not by `limits.max_body_bytes`.
    pub fn body_limit<B>(&self, req: &Request<B>, cx: &RequestCx) -> u64 {
        match self.site_for(req, cx) {
            Some(site) if self.files.is_some() && self.files_mount(site, req.uri().path()).is_some() => u64::MAX,
            _ => cx.max_body,
        }
    }

    /// Lets the request through when `acl` allows its sender to read; otherwise the answer to
    /// send: 401 with a Basic challenge (where Basic is accepted), 403, or 429.
    async fn check_access<B>(&self, acl: &Acl, req: &Request<B>, cx: &mut RequestCx) -> Result<(), Response<Body>> {
        if acl.is_public(Level::Read) {
            return Ok(());
        }
        let Some(dir) = &self.auth.directory else {
            return Err(simple_response(StatusCode::SERVICE_UNAVAILABLE, "sign-in is unavailable: the user directory is not open\n"));
        };
        let client = Client { ip: cx.peer.map(|p| p.ip()), tls: cx.tls };
        match sign_in_user(dir, req.headers(), &client, self.auth.basic_over_plain_http).await {
            Ok(a) if acl.allows(Some(&a.principal), Level::Read) => {
                cx.user = Some(a.principal.user);
                Ok(())
            }
            Ok(a) => {
                cx.user = Some(a.principal.user);
                Err(simple_response(StatusCode::FORBIDDEN, "you are signed in but not allowed here\n"))
            }
            Err(r) => Err(servente_core::refused(r.status, r.message, r.challenge.then_some("servente"), r.retry_after)),
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.org:8080"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }
}

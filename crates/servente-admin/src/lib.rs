//! servente's admin role: what `role = "admin"` listeners serve.
//!
//! - `/healthz` and `/metrics` (Prometheus), open to anyone who can reach the listener;
//! - the JSON admin API under `/api/` ([`api`]), for members of the `admins` group, described
//!   by `/api/openapi.json`;
//! - the web console at `/` ([`console`]): static files embedded in the binary that use
//!   nothing but the API.
//!
//! [`Admin`] is built per config generation (it shows that generation's config and sites);
//! [`Shared`] lives for the whole process (directory, metrics, the channel to the control
//! loop that validates and applies configs).

pub mod api;
pub mod console;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Serialize;
use servente_auth::Directory;
use servente_core::RequestBody;
use servente_core::metrics::{Metrics, SiteStats};
use servente_core::{Body, RequestCx};
use tokio::sync::{mpsc, oneshot};

/// A request to the process's control loop, which owns the running config.
pub enum ControlRequest {
    /// Check a config text; the answer lists every problem.
    Validate { text: String, reply: oneshot::Sender<Result<(), Vec<String>>> },
    /// Check and apply a config text; on success, whether it was also written to the config
    /// file. On failure the running config is kept.
    Apply { text: String, reply: oneshot::Sender<Result<bool, Vec<String>>> },
}

/// What the admin role shares across config generations.
pub struct Shared {
    pub directory: Arc<Directory>,
    /// The supervised apps (none when the config declares none).
    pub apps: Arc<servente_apps::supervisor::Supervisor>,
    pub metrics: Arc<Metrics>,
    pub control: mpsc::Sender<ControlRequest>,
    pub started: SystemTime,
}

/// A site as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SiteInfo {
    pub name: String,
    pub hosts: Vec<String>,
    pub root: String,
    pub listing: bool,
    pub access: Vec<AccessInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessInfo {
    pub path: String,
    pub allow: Vec<String>,
}

/// The running config as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    /// The file it came from, or `<embedded default>`.
    pub source: String,
    pub text: String,
    /// Whether applying a new config writes it to that file.
    pub persisted: bool,
}

/// The admin role of one config generation.
pub struct Admin {
    shared: Arc<Shared>,
    stats: Arc<SiteStats>,
    config: ConfigView,
    sites: Vec<SiteInfo>,
    basic_over_plain_http: bool,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, config: ConfigView, sites: Vec<SiteInfo>, basic_over_plain_http: bool) -> Self {
        let stats = shared.metrics.site("admin");
        Admin { shared, stats, config, sites, basic_over_plain_http }
    }

    pub async fn handle(&self, req: Request<RequestBody>, cx: &mut RequestCx) -> Response<Body> {
        cx.site = Some(self.stats.clone());
        let path = req.uri().path();
        let mut r = match path {
            "/healthz" => text(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n".into()),
            "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.shared.metrics.render()),
            p if p == "/api" || p.starts_with("/api/") => api::handle(self, req, cx).await,
            _ => console::serve(&req),
        };
        let h = r.headers_mut();
        h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        r
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

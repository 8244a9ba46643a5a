//! The web file manager's page: plain HTML, CSS and JavaScript embedded in the binary (no
//! build step, no outside libraries), talking WebDAV and the JSON API of this mount.

use http::{HeaderValue, Request, Response, StatusCode, header};
use servente_core::{Body, simple_response};

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const FAVICON: &str = include_str!("../ui/favicon.svg");

/// Scripts and styles only from this server; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn handle<B>(rest: &str, req: &Request<B>) -> Response<Body> {
    let (body, mime) = match rest {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return simple_response(StatusCode::NOT_FOUND, "not found\n"),
    };
    let head = req.method() == http::Method::HEAD;
    let mut r = Response::new(if head { Body::empty() } else { Body::full(body) });
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

//! The web console's files, embedded in the binary at build time (no CDN, works offline),
//! served with a strict Content-Security-Policy: the console runs only its own script and
//! talks only to this server.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use servente_core::Body;

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Path, media type and content of each file.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../console/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../console/app.js")),
    ("/app.css", "text/css; charset=utf-8", include_str!("../console/app.css")),
    ("/favicon.svg", "image/svg+xml", include_str!("../console/favicon.svg")),
];

pub fn serve<B>(req: &Request<B>) -> Response<Body> {
    let path = match req.uri().path() {
        "/index.html" => "/",
        p => p,
    };
    let Some((_, media_type, content)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        let mut r = Response::new(Body::full("not found: the console is at /, the API at /api/\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return r;
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = Response::new(Body::full("method not allowed\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if req.method() == Method::HEAD { Body::empty() } else { Body::full(content.as_bytes()) };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(content.len()));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    // The files change only with the binary; revalidating costs nothing on loopback and avoids
    // a stale console after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

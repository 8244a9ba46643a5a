//! servente's core: everything between a socket and a role.
//!
//! It binds listeners (TCP over IPv4/IPv6, Unix sockets), terminates TLS with rustls (SNI,
//! ALPN), enforces connection limits and timeouts, runs the HTTP engine (hyper, HTTP/1.1 and
//! HTTP/2) and hands each request to a role's [`http::Router`]. It owns the lifecycle (reload,
//! graceful shutdown), the metrics and the access log. It knows nothing of any role: roles plug
//! in through `Router`, chosen by the binary.

pub mod access_log;
pub mod conditional;
pub mod file_body;
pub mod guard;
pub mod http;
pub mod lazy_timer;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod range;
pub mod request_body;
pub mod sendfile;
pub mod server;
pub mod streams;
pub mod tls;

pub use http::{Body, RequestCx, Router, redirect, refused, simple_response};
pub use request_body::RequestBody;
pub use server::{Bound, ListenerSpec, Server, Settings};

//! servente's application role: what a site forwards to.
//!
//! - [`upstream`]: groups of servers, load balancing, passive and active health;
//! - [`pool`]: connections to servers (TCP, Unix sockets; HTTP/1.1 or HTTP/2) kept alive per
//!   worker thread;
//! - [`proxy`]: forwarding a request and streaming the answer back, upgrades as tunnels
//!   ([`tunnel`], closed when quiet);
//! - [`supervisor`]: app processes (start, readiness, restart with backoff, rolling restart,
//!   stop);
//! - [`registry`]: upstreams and apps kept across config reloads;
//! - [`fastcgi`]: PHP and other FastCGI applications (php-fpm).

pub mod fastcgi;
pub mod h1;
pub mod pool;
pub mod proxy;
pub mod read_timeout;
pub mod registry;
pub mod supervisor;
pub mod tunnel;
pub mod upstream;

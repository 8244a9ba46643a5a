//! Counters for Prometheus: connections, TLS handshakes, and requests by site and status with
//! bytes and a latency histogram.
//!
//! Hand-written on atomics rather than with a metrics crate because every request updates
//! them: a label lookup (hashing a site name and a status per request) is replaced by an
//! `Arc<SiteStats>` the router resolves once per site and an array indexed by status code.
//! Rendering to the text exposition format is a few lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Request counters of one site (or of one role's unnamed traffic, such as the admin listener).
///
/// Every request adds to them, from every worker thread: kept in one place, their cache lines
/// would bounce between cores on each request. Each thread adds to a shard of its own (threads
/// beyond `SHARDS` share), and readers sum the shards.
pub struct SiteStats {
    name: String,
    shards: Box<[Shard]>,
}

/// How many copies of a site's counters there are.
const SHARDS: usize = 8;

/// One thread's share of a site's counters, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    /// Requests by status code: index `status - 100`.
    by_status: [AtomicU64; 500],
    bytes_sent: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_sent: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_count: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
        }
    }
}

/// The shard the current thread adds to: threads take the next one when they first count.
fn shard_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl SiteStats {
    fn new(name: &str) -> Self {
        SiteStats { name: name.to_string(), shards: (0..SHARDS).map(|_| Shard::new()).collect() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records one finished request.
    pub fn record(&self, status: u16, bytes: u64, elapsed: Duration) {
        let shard = &self.shards[shard_index()];
        if let Some(c) = shard.by_status.get(usize::from(status.saturating_sub(100))) {
            c.fetch_add(1, Relaxed);
        }
        if bytes > 0 {
            shard.bytes_sent.fetch_add(bytes, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            shard.buckets[i].fetch_add(1, Relaxed);
        }
        shard.latency_count.fetch_add(1, Relaxed);
        shard.latency_sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A counter summed over the shards.
    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Relaxed)).sum()
    }

    /// Totals since start: bytes sent, and requests by status class (`[1xx, 2xx, 3xx, 4xx, 5xx]`).
    pub fn totals(&self) -> (u64, [u64; 5]) {
        let mut classes = [0u64; 5];
        for i in 0..500 {
            classes[(i / 100).min(4)] += self.sum(|s| &s.by_status[i]);
        }
        (self.sum(|s| &s.bytes_sent), classes)
    }

    /// Total requests answered with `status`.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        let i = usize::from(status.saturating_sub(100));
        if i >= 500 {
            return 0;
        }
        self.sum(|s| &s.by_status[i])
    }
}

/// Every counter of the process. One instance lives as long as the server, across reloads.
#[derive(Default)]
pub struct Metrics {
    sites: Mutex<Vec<Arc<SiteStats>>>,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// The counters of the site named `name`, created on first use and kept across reloads.
    pub fn site(&self, name: &str) -> Arc<SiteStats> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sites.iter().find(|s| s.name == name) {
            return s.clone();
        }
        let s = Arc::new(SiteStats::new(name));
        sites.push(s.clone());
        s
    }

    /// Renders every metric in the Prometheus text exposition format.
    /// Every site (and role area) with statistics, in the order they were first seen.
    pub fn sites(&self) -> Vec<Arc<SiteStats>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut out,
            "servente_connections_open",
            "Client connections open now.",
            "gauge",
            self.connections_open.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_connections_total",
            "Client connections accepted.",
            "counter",
            self.connections_total.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_connections_refused_total",
            "Connections refused because max_connections was reached.",
            "counter",
            self.connections_refused.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_tls_handshakes_total",
            "TLS handshakes completed.",
            "counter",
            self.tls_handshakes.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            "counter",
            self.tls_handshake_failures.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_header_timeouts_total",
            "Connections closed because a request head took longer than header_read_timeout.",
            "counter",
            self.header_timeouts.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "servente_send_timeouts_total",
            "Connections closed, and HTTP/2 streams reset, because the client took nothing for send_timeout.",
            "counter",
            (crate::guard::SEND_TIMEOUTS.load(Relaxed) + crate::streams::SEND_TIMEOUTS.load(Relaxed)).to_string(),
        );
        gauge(
            &mut out,
            "servente_body_timeouts_total",
            "Request bodies that stopped coming for body_read_timeout (answered 408).",
            "counter",
            crate::request_body::BODY_TIMEOUTS.load(Relaxed).to_string(),
        );
        gauge(&mut out, "servente_reloads_total", "Config reloads applied.", "counter", self.reloads.load(Relaxed).to_string());
        gauge(
            &mut out,
            "servente_reload_failures_total",
            "Config reloads refused because the new config was invalid.",
            "counter",
            self.reload_failures.load(Relaxed).to_string(),
        );
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.push_str("# HELP servente_http_requests_total HTTP requests answered, by site and status.\n# TYPE servente_http_requests_total counter\n");
        for s in &sites {
            for i in 0..500 {
                let n = s.sum(|shard| &shard.by_status[i]);
                if n > 0 {
                    let _ = writeln!(out, "servente_http_requests_total{{site=\"{}\",status=\"{}\"}} {n}", escape(&s.name), i + 100);
                }
            }
        }
        out.push_str("# HELP servente_http_response_bytes_total Response body bytes sent, by site.\n# TYPE servente_http_response_bytes_total counter\n");
        for s in &sites {
            let _ =
                writeln!(out, "servente_http_response_bytes_total{{site=\"{}\"}} {}", escape(&s.name), s.sum(|shard| &shard.bytes_sent));
        }
        out.push_str("# HELP servente_http_request_duration_seconds Time from request head to the end of the response, by site.\n# TYPE servente_http_request_duration_seconds histogram\n");
        for s in &sites {
            let name = escape(&s.name);
            let mut cumulative = 0;
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += s.sum(|shard| &shard.buckets[i]);
                let _ = writeln!(out, "servente_http_request_duration_seconds_bucket{{site=\"{name}\",le=\"{b}\"}} {cumulative}");
            }
            let count = s.sum(|shard| &shard.latency_count);
            let _ = writeln!(out, "servente_http_request_duration_seconds_bucket{{site=\"{name}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "servente_http_request_duration_seconds_sum{{site=\"{name}\"}} {}",
                s.sum(|shard| &shard.latency_sum_micros) as f64 / 1e6
            );
            let _ = writeln!(out, "servente_http_request_duration_seconds_count{{site=\"{name}\"}} {count}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let m = Metrics::new();
        let s = m.site("docs");
        s.record(200, 1000, Duration::from_micros(300));
        s.record(404, 10, Duration::from_millis(20));
        assert!(Arc::ptr_eq(&s, &m.site("docs")));
        let text = m.render();
        assert!(text.contains("servente_http_requests_total{site=\"docs\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("servente_http_requests_total{site=\"docs\",status=\"404\"} 1"));
        assert!(text.contains("servente_http_response_bytes_total{site=\"docs\"} 1010"));
        assert!(text.contains("servente_http_request_duration_seconds_bucket{site=\"docs\",le=\"0.0005\"} 1"));
        assert!(text.contains("servente_http_request_duration_seconds_bucket{site=\"docs\",le=\"0.025\"} 2"));
        assert!(text.contains("servente_http_request_duration_seconds_count{site=\"docs\"} 2"));
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let m = Metrics::new();
        let s = m.site("busy");
        std::thread::scope(|scope| {
            for t in 0..(2 * SHARDS as u64) {
                let s = s.clone();
                scope.spawn(move || {
                    for _ in 0..100 {
                        s.record(200, t + 1, Duration::from_millis(2));
                    }
                    s.record(503, 0, Duration::from_secs(20));
                });
            }
        });
        let threads = 2 * SHARDS as u64;
        let (bytes, classes) = s.totals();
        assert_eq!((bytes, classes), ((1..=threads).sum::<u64>() * 100, [0, threads * 100, 0, 0, threads]));
        assert_eq!((s.requests_with_status(200), s.requests_with_status(503), s.requests_with_status(999)), (threads * 100, threads, 0));
        let text = m.render();
        assert!(text.contains(&format!("servente_http_request_duration_seconds_count{{site=\"busy\"}} {}", threads * 101)), "{text}");
        assert!(
            text.contains(&format!("servente_http_request_duration_seconds_bucket{{site=\"busy\",le=\"10\"}} {}", threads * 100)),
            "{text}"
        );
    }
}

//! Upstream groups: their servers, which one a request goes to (round robin, least
//! connections, consistent hashing), and whether a server is fit to get requests: passive
//! checks (failures of real requests take a server out for `fail_timeout`), active checks
//! (a task asks each server on its own), and draining (an app instance being replaced).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use servente_config::{Balance, Health, UpstreamSettings};
use tokio_util::sync::CancellationToken;

use crate::pool::{self, Address};

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// The process's start, so that instants fit in an atomic as milliseconds.
fn millis() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// One server of an upstream group.
pub struct Server {
    /// Unique in the process: the key of its pooled connections.
    pub id: u64,
    pub address: Address,
    in_flight: AtomicUsize,
    fails: AtomicU32,
    /// Left out by passive checks until this time (milliseconds since start).
    down_until: AtomicU64,
    /// The active check's verdict (true when there is no active check).
    healthy: AtomicBool,
    health_fails: AtomicU32,
    health_passes: AtomicU32,
    /// Gets no new requests (an app instance on its way out).
    draining: AtomicBool,
}

impl Server {
    pub fn new(address: Address) -> Arc<Server> {
        Arc::new(Server {
            id: NEXT_SERVER_ID.fetch_add(1, Relaxed),
            address,
            in_flight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            health_fails: AtomicU32::new(0),
            health_passes: AtomicU32::new(0),
            draining: AtomicBool::new(false),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub fn drain(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Left out after failing (its failures are then old news: log them quietly).
    pub fn is_down(&self) -> bool {
        self.passively_down()
    }

    /// Left out after failures; the clock is read only for a server that has failed before.
    fn passively_down(&self) -> bool {
        let until = self.down_until.load(Relaxed);
        until != 0 && until > millis()
    }

    fn eligible(&self) -> bool {
        !self.draining.load(Relaxed) && self.healthy.load(Relaxed)
    }
}

/// Counts a request in flight on a server for as long as it lives.
pub struct InFlight(Arc<Server>);

impl InFlight {
    pub fn server(&self) -> &Arc<Server> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A group of servers answering the same requests.
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    servers: ArcSwap<Vec<Arc<Server>>>,
    next: AtomicUsize,
    health_stop: CancellationToken,
}

impl Upstream {
    pub fn new(name: &str, settings: UpstreamSettings, servers: Vec<Arc<Server>>) -> Arc<Upstream> {
        Arc::new(Upstream {
            name: name.to_string(),
            settings,
            servers: ArcSwap::from_pointee(servers),
            next: AtomicUsize::new(0),
            health_stop: CancellationToken::new(),
        })
    }

    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.servers.load_full()
    }

    /// Replaces the server list (app instances come and go); pooled connections of servers
    /// that left are dropped as they are found closed or unknown.
    pub fn set_servers(&self, servers: Vec<Arc<Server>>) {
        self.servers.store(Arc::new(servers));
    }

    /// Picks a server for a request, skipping those in `tried`. Servers left out by passive
    /// checks are used only when no other is left (so that a recovered group is noticed).
    pub fn pick(&self, hash_value: Option<&[u8]>, tried: &[u64]) -> Option<InFlight> {
        let servers = self.servers.load();
        let candidates = |allow_down: bool| {
            servers.iter().filter(move |s| s.eligible() && !tried.contains(&s.id) && (allow_down || !s.passively_down()))
        };
        let choose = |allow_down: bool| -> Option<Arc<Server>> {
            match (self.settings.balance, hash_value) {
                (Balance::Hash, Some(v)) => candidates(allow_down).max_by_key(|s| rendezvous(v, s.id)).cloned(),
                (Balance::LeastConn, _) => {
                    let start = self.next.fetch_add(1, Relaxed);
                    let list: Vec<&Arc<Server>> = candidates(allow_down).collect();
                    let n = list.len();
                    (0..n).map(|i| list[(start + i) % n]).min_by_key(|s| s.in_flight()).cloned()
                }
                _ => {
                    // Two passes over the (short) list instead of collecting it: no allocation.
                    // The shared counter moves only when there is a choice to make.
                    match candidates(allow_down).count() {
                        0 => None,
                        1 => candidates(allow_down).next().cloned(),
                        n => candidates(allow_down).nth(self.next.fetch_add(1, Relaxed) % n).cloned(),
                    }
                }
            }
        };
        let server = choose(false).or_else(|| choose(true))?;
        server.in_flight.fetch_add(1, Relaxed);
        Some(InFlight(server))
    }

    /// Records the outcome of a request to `server` (passive health).
    pub fn report(&self, server: &Server, ok: bool) {
        if ok {
            // Read first: a write on every request would bounce the line between cores.
            if server.fails.load(Relaxed) != 0 {
                server.fails.store(0, Relaxed);
            }
            return;
        }
        let fails = server.fails.fetch_add(1, Relaxed) + 1;
        if fails >= self.settings.max_fails.max(1) {
            server.fails.store(0, Relaxed);
            server.down_until.store(millis() + self.settings.fail_timeout.0.as_millis() as u64, Relaxed);
            tracing::warn!(upstream = %self.name, server = %server.address, "server failed {fails} times in a row; left out for {:?}", self.settings.fail_timeout.0);
        }
    }

    /// Starts the active health checks (on the current runtime), if configured.
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(health) = self.settings.health.clone() else { return };
        let upstream = Arc::downgrade(self);
        let stop = self.health_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(health.interval.0);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(u) = upstream.upgrade() else { return };
                let servers = u.servers();
                let checks = servers.iter().map(|s| check_once(&u, s, &health));
                futures_util::future::join_all(checks).await;
            }
        });
    }

    pub fn stop_health_checks(&self) {
        self.health_stop.cancel();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.health_stop.cancel();
    }
}

async fn check_once(u: &Upstream, s: &Arc<Server>, h: &Health) {
    let ok = probe(&s.address, u.settings.protocol, &h.path, h.timeout.0)
        .await
        .is_ok_and(|status| if h.expect_status == 200 { (200..300).contains(&status) } else { status == h.expect_status });
    if ok {
        s.health_fails.store(0, Relaxed);
        let passes = s.health_passes.fetch_add(1, Relaxed) + 1;
        if !s.healthy.load(Relaxed) && passes >= h.passes {
            s.healthy.store(true, Relaxed);
            tracing::info!(upstream = %u.name, server = %s.address, "health check passes again; server back in");
        }
    } else {
        s.health_passes.store(0, Relaxed);
        let fails = s.health_fails.fetch_add(1, Relaxed) + 1;
        if s.healthy.load(Relaxed) && fails >= h.fails {
            s.healthy.store(false, Relaxed);
            tracing::warn!(upstream = %u.name, server = %s.address, "health check failed {fails} times; server taken out");
        }
    }
}

/// One GET on a fresh connection; the status, or why there is none.
pub async fn probe(address: &Address, protocol: servente_config::UpstreamProtocol, path: &str, timeout: Duration) -> Result<u16, String> {
    let fut = async {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
        headers.insert(http::header::USER_AGENT, http::HeaderValue::from_static("servente-health-check"));
        if protocol == servente_config::UpstreamProtocol::Http1 {
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(format!("bad check path: {path}"));
            }
            let mut conn = pool::open(address, timeout).await.map_err(|e| e.to_string())?;
            conn.send(&http::Method::GET, path, &headers, &crate::h1::Fields::default()).await.map_err(|e| e.to_string())?;
            let head = conn.read_head(false).await.map_err(|e| e.to_string())?;
            return Ok(head.status.as_u16());
        }
        let pool::Client::H2(mut sender) = pool::connect(address, protocol, timeout).await.map_err(|e| e.to_string())? else {
            return Err("not an HTTP/2 connection".into());
        };
        let uri: http::Uri = format!("http://localhost{path}").parse().map_err(|e| format!("bad check path: {e}"))?;
        let mut req = http::Request::get(uri).body(crate::proxy::empty_body()).map_err(|e| e.to_string())?;
        headers.remove(http::header::HOST);
        *req.headers_mut() = headers;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Rendezvous (highest random weight) hashing: every server gets a score for the key and the
/// highest wins, so removing a server moves only the keys it had.
fn rendezvous(key: &[u8], server: u64) -> u64 {
    let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    h.write(key);
    h.write_u64(server);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(balance: Balance, n: usize) -> Arc<Upstream> {
        let settings = UpstreamSettings {
            balance,
            max_fails: 2,
            fail_timeout: servente_config::Seconds(Duration::from_secs(30)),
            ..Default::default()
        };
        let servers = (0..n).map(|i| Server::new(Address::parse(&format!("127.0.0.1:{}", 9000 + i)).expect("address"))).collect();
        Upstream::new("u", settings, servers)
    }

    #[test]
    fn round_robin_takes_turns_and_skips_failed_servers() {
        let u = group(Balance::RoundRobin, 3);
        let picks: Vec<u64> = (0..6).map(|_| u.pick(None, &[]).expect("server").server().id).collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let first = u.servers()[0].clone();
        u.report(&first, false);
        u.report(&first, false);
        for _ in 0..6 {
            assert_ne!(u.pick(None, &[]).expect("server").server().id, first.id, "a failed server is left out");
        }
        let others: Vec<u64> = u.servers()[1..].iter().map(|s| s.id).collect();
        assert_eq!(u.pick(None, &others).expect("last resort").server().id, first.id, "used when nothing else is left");
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let u = group(Balance::LeastConn, 2);
        let busy = u.pick(None, &[]).expect("server");
        for _ in 0..4 {
            let p = u.pick(None, &[]).expect("server");
            assert_ne!(p.server().id, busy.server().id);
        }
        drop(busy);
        assert!(u.servers().iter().all(|s| s.in_flight() == 0), "in-flight counts return to zero");
    }

    #[test]
    fn hashing_is_sticky_and_moves_little() {
        let u = group(Balance::Hash, 4);
        let before: Vec<u64> = (0..200).map(|i| u.pick(Some(format!("user{i}").as_bytes()), &[]).expect("s").server().id).collect();
        let again: Vec<u64> = (0..200).map(|i| u.pick(Some(format!("user{i}").as_bytes()), &[]).expect("s").server().id).collect();
        assert_eq!(before, again);
        let gone = u.servers()[0].clone();
        gone.drain();
        let after: Vec<u64> = (0..200).map(|i| u.pick(Some(format!("user{i}").as_bytes()), &[]).expect("s").server().id).collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(moved, before.iter().filter(|b| **b == gone.id).count(), "only the drained server's keys move");
    }

    #[test]
    fn draining_and_unhealthy_servers_get_nothing() {
        let u = group(Balance::RoundRobin, 2);
        u.servers()[0].drain();
        u.servers()[1].healthy.store(false, Relaxed);
        assert!(u.pick(None, &[]).is_none());
    }
}

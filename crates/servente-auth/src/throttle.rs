//! Slowing and then refusing repeated failed sign-ins, per account and per client address.
//!
//! Each key (`user:NAME`, `addr:IP`) counts failures; a key whose last failure is older than
//! the window starts again from zero. From `delay_after` failures on, each attempt waits (250
//! ms, doubling, at most 5 s) before it is checked; from `lock_after` on, attempts are refused
//! without checking until the window has passed since the last failure. A success clears the
//! account's count (not the address's, so one known account cannot reset an attacker's
//! address). Counts live in memory: they reset on restart and are per process in a cluster.

use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub delay_after: u32,
    pub lock_after: u32,
    pub window: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy { delay_after: 3, lock_after: 10, window: Duration::from_secs(15 * 60) }
    }
}

/// What to do with a sign-in attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Check the credentials after waiting this long.
    Delay(Duration),
    /// Refuse; the client may try again after this long.
    Locked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Most keys tracked at once; past it, expired keys are dropped (and if none expired, the
/// oldest half), so a flood of addresses cannot grow memory without bound.
const MAX_KEYS: usize = 100_000;

pub struct Throttle {
    policy: ThrottlePolicy,
    entries: DashMap<String, Entry>,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Throttle { policy, entries: DashMap::new() }
    }

    pub fn policy(&self) -> ThrottlePolicy {
        self.policy
    }

    fn live(&self, key: &str, now: Instant) -> Option<Entry> {
        let e = *self.entries.get(key)?;
        (now.saturating_duration_since(e.last) < self.policy.window).then_some(e)
    }

    /// The verdict for an attempt concerning all `keys` (the strictest one wins).
    pub fn check(&self, keys: &[&str], now: Instant) -> Verdict {
        let mut verdict = Verdict::Go;
        for key in keys {
            let Some(e) = self.live(key, now) else { continue };
            let p = self.policy;
            if e.failures >= p.lock_after {
                let left = p.window.saturating_sub(now.saturating_duration_since(e.last));
                return Verdict::Locked(left.max(Duration::from_secs(1)));
            }
            if e.failures >= p.delay_after {
                let steps = (e.failures - p.delay_after).min(5);
                let d = (Duration::from_millis(250) * (1 << steps)).min(Duration::from_secs(5));
                if let Verdict::Delay(old) = verdict {
                    verdict = Verdict::Delay(old.max(d));
                } else {
                    verdict = Verdict::Delay(d);
                }
            }
        }
        verdict
    }

    pub fn failed(&self, keys: &[&str], now: Instant) {
        if self.entries.len() >= MAX_KEYS {
            self.shrink(now);
        }
        for key in keys {
            let failures = self.live(key, now).map_or(0, |e| e.failures);
            self.entries.insert(key.to_string(), Entry { failures: failures.saturating_add(1), last: now });
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.entries.remove(key);
    }

    fn shrink(&self, now: Instant) {
        let window = self.policy.window;
        self.entries.retain(|_, e| now.saturating_duration_since(e.last) < window);
        if self.entries.len() >= MAX_KEYS {
            let mut lasts: Vec<Instant> = self.entries.iter().map(|e| e.last).collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 2];
            self.entries.retain(|_, e| e.last > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_then_locks_then_forgets() {
        let t = Throttle::new(ThrottlePolicy { delay_after: 2, lock_after: 4, window: Duration::from_secs(60) });
        let now = Instant::now();
        let keys = ["user:alice", "addr:10.0.0.1"];
        assert_eq!(t.check(&keys, now), Verdict::Go);
        t.failed(&keys, now);
        t.failed(&keys, now);
        assert_eq!(t.check(&keys, now), Verdict::Delay(Duration::from_millis(250)));
        t.failed(&keys, now);
        assert_eq!(t.check(&keys, now), Verdict::Delay(Duration::from_millis(500)));
        t.failed(&keys, now);
        assert_eq!(t.check(&keys, now + Duration::from_secs(10)), Verdict::Locked(Duration::from_secs(50)));
        // Another account from the same address is locked too; the same account from elsewhere too.
        assert!(matches!(t.check(&["user:bob", "addr:10.0.0.1"], now), Verdict::Locked(_)));
        assert!(matches!(t.check(&["user:alice", "addr:10.0.0.2"], now), Verdict::Locked(_)));
        assert_eq!(t.check(&keys, now + Duration::from_secs(61)), Verdict::Go);
    }

    #[test]
    fn success_clears_the_account_only() {
        let t = Throttle::new(ThrottlePolicy { delay_after: 1, lock_after: 9, window: Duration::from_secs(60) });
        let now = Instant::now();
        t.failed(&["user:alice", "addr:a"], now);
        t.succeeded("user:alice");
        assert_eq!(t.check(&["user:alice"], now), Verdict::Go);
        assert!(matches!(t.check(&["addr:a"], now), Verdict::Delay(_)));
    }
}

//! The application log: structured events from `tracing`, as text or JSON lines on stderr,
//! and the most recent lines kept in memory ([`recent`]) for the admin API and console.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

use serde::Serialize;
use servente_config::{Log, LogFormat};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global subscriber. `RUST_LOG` (if set) overrides the configured level.
/// Calling it twice is harmless: the second call changes nothing.
pub fn init(config: &Log) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let registry = tracing_subscriber::registry().with(filter).with(RecentLayer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    let _ = match config.format.get() {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        _ => registry.with(fmt).try_init(),
    };
}

/// One line of the application log as the admin API serves it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub seq: u64,
    /// Unix milliseconds.
    pub time: u64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
}

/// Lines kept in memory.
const KEEP: usize = 1000;

struct Ring {
    next: u64,
    lines: VecDeque<LogLine>,
}

static RING: LazyLock<Mutex<Ring>> = LazyLock::new(|| Mutex::new(Ring { next: 1, lines: VecDeque::with_capacity(KEEP) }));

/// The kept lines with a sequence number above `after`, oldest first.
pub fn recent(after: u64) -> Vec<LogLine> {
    let ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.lines.iter().filter(|l| l.seq > after).cloned().collect()
}

struct RecentLayer;

/// Renders an event's message followed by its fields as `key=value`.
#[derive(Default)]
struct Render {
    message: String,
    fields: String,
}

impl Visit for Render {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
        let mut r = Render::default();
        event.record(&mut r);
        let meta = event.metadata();
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next;
        ring.next += 1;
        if ring.lines.len() == KEEP {
            ring.lines.pop_front();
        }
        ring.lines.push_back(LogLine {
            seq,
            time,
            level: meta.level().as_str(),
            target: meta.target().to_string(),
            message: format!("{}{}", r.message, r.fields),
        });
    }
}

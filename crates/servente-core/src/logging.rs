//! The application log: structured events from `tracing`, as text or JSON lines on stderr.

use servente_config::{Log, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` (if set) overrides the configured level.
/// Calling it twice is harmless: the second call changes nothing.
pub fn init(config: &Log) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match config.format.get() {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
}

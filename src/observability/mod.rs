//! Metrics and logs.
//!
//! Logs go to stderr through `tracing`, as text or JSON lines (`log.format`). Pingora logs
//! through the `log` crate and is bridged in. Nothing logged carries a secret: credentials
//! live in [`crate::config::secret::Secret`] and sensitive header values, whose debug
//! forms print `[redacted]`/`Sensitive`, and the config itself is never logged.

pub mod metrics;

use crate::config::schema::LogFormat;
use tracing_subscriber::EnvFilter;

/// Pingora logs every failed request at error level; the sidecar reports those itself
/// (once, with its own cause), so Pingora's own lines are kept at `warn` unless the filter
/// names Pingora explicitly.
fn filter(level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| level.to_string());
    let spec = if base.contains("pingora") {
        base
    } else {
        format!("{base},pingora_core=warn,pingora_proxy=warn")
    };
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Call once, before the runtime starts.
pub fn init_logging(level: &str, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

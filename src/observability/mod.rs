//! Metrics and logs.
//!
//! Logs go to stderr through `tracing`, as text or JSON lines (`log.format`). Pingora logs
//! through the `log` crate and is bridged in. Nothing logged carries a secret:
//! credentials live in [`crate::config::secret::Secret`] and in header values marked
//! sensitive (whose `Debug` prints `Sensitive`), and the config itself is never logged.
//!
//! One exception needs a filter: at TRACE, Pingora's HTTP code dumps raw request bytes,
//! injected credentials included. Those events are dropped at any configured level (see
//! [`log_filter`]); the canary test runs at TRACE to prove nothing else leaks.

pub mod audit;
pub mod compile;
pub mod genai;
pub mod metrics;
pub mod otlp;
pub mod redact;
pub mod trace;

use crate::config::schema::LogFormat;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Targets whose TRACE output is a dump of bytes on the wire.
const WIRE_DUMP_TARGETS: &[&str] = &["pingora_core::protocols::http"];

fn is_wire_dump(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::TRACE
        && WIRE_DUMP_TARGETS
            .iter()
            .any(|t| meta.target().starts_with(t))
}

/// The filter for `level` (or `RUST_LOG`, which overrides it).
///
/// Pingora logs every failed request at error level; the sidecar reports those itself
/// (once, with its own cause), so Pingora is kept at `warn` unless the filter names it.
pub fn log_filter(level: &str) -> impl Filter<Registry> + Send + Sync + 'static {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| level.to_string());
    let spec = if base.contains("pingora") {
        base
    } else {
        format!("{base},pingora_core=warn,pingora_proxy=warn")
    };
    let env = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    NoWireDumps(env)
}

/// The operator's filter minus wire dumps. A hand-written filter rather than a
/// `FilterExt::and` combinator because it keeps the inner filter's max-level hint: without
/// a hint the `log` bridge lets every `debug!`/`trace!` inside Pingora build and dispatch a
/// record on the request path.
struct NoWireDumps(EnvFilter);

impl<S> Filter<S> for NoWireDumps
where
    EnvFilter: Filter<S>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        !is_wire_dump(meta) && Filter::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_wire_dump(meta) {
            Interest::never()
        } else {
            Filter::<S>::callsite_enabled(&self.0, meta)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0)
    }
}

/// Installs the global subscriber writing to stderr. Call once, before the runtime starts.
pub fn init_logging(level: &str, format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_logging_to(level, format, std::io::stderr, ansi);
}

/// Installs the global subscriber with any writer (tests capture logs this way). Returns
/// false when a global subscriber was already set.
pub fn init_logging_to<W>(level: &str, format: LogFormat, writer: W, ansi: bool) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(log_filter(level)))
        .try_init()
        .is_ok()
}

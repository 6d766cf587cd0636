//! Prometheus metrics.
//!
//! One [`Metrics`] lives for the whole process (counters survive reloads). Each config load
//! asks it for per-route and per-provider handles ([`RouteMetrics`], [`ProviderMetrics`]),
//! so recording a request is an atomic add on a pre-resolved counter: no label hashing and
//! no lock on the request path.
//!
//! Labels are bounded: route and provider names come from the config, status is a number
//! between 100 and 599 (499 when the client went away first), reload results are a closed
//! set.

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Request durations span milliseconds (errors) to many minutes (long generations).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Status used when the client closed the connection before a response was sent
/// (nginx's convention).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// Route/provider label used for requests refused before a route was chosen.
pub const NO_ROUTE: &str = "-";

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_connections: IntCounterVec,
    upstream_connect: HistogramVec,
    upstream_tls: HistogramVec,
    upstream_tls_handshakes: IntCounterVec,
    upstream_pool_wait: HistogramVec,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_last_success: IntGauge,
    in_flight: IntGauge,
    unrouted: OnceLock<RouteMetrics>,
    key_requests: IntCounterVec,
    key_events: IntCounterVec,
    key_ejected: IntGaugeVec,
    key_cooldown_until: IntGaugeVec,
    token_fetches: IntCounterVec,
    token_expiry: IntGaugeVec,
    forward: ForwardMetrics,
    retries: IntCounterVec,
    fallbacks: IntCounterVec,
    translations: IntCounterVec,
    tokens: IntCounterVec,
    limited: IntCounterVec,
    limit_admitted: IntCounterVec,
    limits_backend: crate::limits::shared::BackendMetrics,
    genai: super::genai::GenAiMetrics,
    audit: super::audit::AuditMetrics,
    spans: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_opened: IntCounterVec,
    breaker_rejected: IntCounterVec,
}

/// Forward-proxy (HTTPS_PROXY) metrics. Labels are closed sets.
#[derive(Clone)]
pub struct ForwardMetrics {
    decisions: IntCounterVec,
    tunnel_bytes_up: IntCounter,
    tunnel_bytes_down: IntCounter,
    tunnels_open: IntGauge,
    leaf_hit: IntCounter,
    leaf_miss: IntCounter,
    handshake_failures: IntCounter,
}

impl ForwardMetrics {
    /// One proxy request decided: `kind` is connect or http, `decision` intercept,
    /// passthrough or refuse, `reason` a fixed cause string (empty unless refused).
    pub fn decision(&self, kind: &str, decision: &str, reason: &str) {
        self.decisions
            .with_label_values(&[kind, decision, reason])
            .inc();
    }
    pub fn leaf(&self, cache_hit: bool) {
        if cache_hit {
            self.leaf_hit.inc()
        } else {
            self.leaf_miss.inc()
        }
    }
    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }
    pub fn tunnel_bytes(&self, upstream: u64, downstream: u64) {
        self.tunnel_bytes_up.inc_by(upstream);
        self.tunnel_bytes_down.inc_by(downstream);
    }
    pub fn tunnels_open(&self) -> &IntGauge {
        &self.tunnels_open
    }
}

pub(crate) fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; they only fail on a programming error (bad name or
    // label set), which the unit tests below catch.
    #[allow(clippy::expect_used)]
    r.expect("static metric definition is valid")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_requests_total",
                "Requests answered, by route, provider and HTTP status.",
            ),
            &["route", "provider", "status"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "llm_sidecar_request_duration_seconds",
                "Time from the request arriving to the last byte of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "provider"],
        ));
        let upstream_connections = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_upstream_connections_total",
                "Upstream connections used by requests: reused=\"true\" came from the keep-alive pool, reused=\"false\" were opened.",
            ),
            &["provider", "reused"],
        ));
        let reloads = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_config_reloads_total",
                "Config reload attempts by result: success, failure (the old config keeps serving) or unchanged.",
            ),
            &["result"],
        ));
        let config_info = must(IntGaugeVec::new(
            Opts::new(
                "llm_sidecar_config_info",
                "1 for the config file hash (sha256, first 16 hex digits) currently serving.",
            ),
            &["hash"],
        ));
        let config_last_success = must(IntGauge::new(
            "llm_sidecar_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        ));
        let in_flight = must(IntGauge::new(
            "llm_sidecar_requests_in_flight",
            "Requests being proxied right now.",
        ));
        let key_requests = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_upstream_key_requests_total",
                "Requests sent with each pooled key, by its configured name.",
            ),
            &["provider", "key"],
        ));
        let key_events = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_upstream_key_events_total",
                "Pooled key state changes: ejected (after 401/403, until reload) or cooldown (after 429).",
            ),
            &["provider", "key", "event"],
        ));
        let key_ejected = must(IntGaugeVec::new(
            Opts::new(
                "llm_sidecar_upstream_key_ejected",
                "1 while a pooled key is ejected.",
            ),
            &["provider", "key"],
        ));
        let key_cooldown_until = must(IntGaugeVec::new(
            Opts::new(
                "llm_sidecar_upstream_key_cooldown_until_timestamp_seconds",
                "Unix time a pooled key's current cooldown ends (0: none since the last reload).",
            ),
            &["provider", "key"],
        ));
        let token_fetches = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_oauth_token_fetches_total",
                "Calls to OAuth2 token endpoints, by result.",
            ),
            &["provider", "result"],
        ));
        let token_expiry = must(IntGaugeVec::new(
            Opts::new(
                "llm_sidecar_oauth_token_expiry_timestamp_seconds",
                "Unix time the current access token expires.",
            ),
            &["provider"],
        ));
        let decisions = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_forward_requests_total",
                "HTTPS_PROXY listener: CONNECTs (kind=\"connect\") and absolute-form requests (kind=\"http\") by decision (intercept, passthrough, refuse) and the reason of a refusal.",
            ),
            &["kind", "decision", "reason"],
        ));
        let tunnel_bytes = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_forward_tunnel_bytes_total",
                "Bytes copied through pass-through tunnels: direction=\"upstream\" from the app, \"downstream\" to it.",
            ),
            &["direction"],
        ));
        let tunnels_open = must(IntGauge::new(
            "llm_sidecar_forward_tunnels_open",
            "Pass-through tunnels open right now.",
        ));
        let leaf_certs = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_forward_leaf_certificates_total",
                "TLS certificates for intercepted hosts: cache=\"hit\" reused, \"miss\" minted.",
            ),
            &["cache"],
        ));
        let handshake_failures = must(IntCounter::new(
            "llm_sidecar_forward_tls_handshake_failures_total",
            "Intercepted connections whose TLS handshake with the app failed (e.g. the app does not trust the CA).",
        ));
        let forward = ForwardMetrics {
            decisions: decisions.clone(),
            tunnel_bytes_up: tunnel_bytes.with_label_values(&["upstream"]),
            tunnel_bytes_down: tunnel_bytes.with_label_values(&["downstream"]),
            tunnels_open: tunnels_open.clone(),
            leaf_hit: leaf_certs.with_label_values(&["hit"]),
            leaf_miss: leaf_certs.with_label_values(&["miss"]),
            handshake_failures: handshake_failures.clone(),
        };
        let retries = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_retries_total",
                "Retries by route and the reason for them (an upstream status, or connect, connect_timeout, reset, dns).",
            ),
            &["route", "reason"],
        ));
        let fallbacks = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_fallbacks_total",
                "Requests that moved on to a fallback provider, by route and that provider.",
            ),
            &["route", "provider"],
        ));
        let translations = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_translations_total",
                "Requests translated between APIs, by route, the client's API, the provider's, and result: translated, untranslatable_request (400, the next target tried), untranslatable_answer (502 or a cut stream).",
            ),
            &["route", "api", "upstream_api", "result"],
        ));
        let breaker_state = must(IntGaugeVec::new(
            Opts::new(
                "llm_sidecar_breaker_state",
                "Circuit breaker state per provider: 0 closed, 1 open, 2 half-open.",
            ),
            &["provider"],
        ));
        let breaker_opened = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_breaker_opened_total",
                "Times a provider's circuit breaker opened.",
            ),
            &["provider"],
        ));
        let breaker_rejected = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_breaker_rejected_total",
                "Requests not sent to a provider because its breaker was open.",
            ),
            &["provider"],
        ));
        let tokens = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_tokens_total",
                "Tokens by route, provider and type: input (every prompt token, cached included), output, cache_read, cache_write, reasoning (part of output).",
            ),
            &["route", "provider", "type"],
        ));
        let limited = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_limited_total",
                "Requests refused by a limits rule, by rule and kind: requests, tokens, concurrency (429) or backend_down (503, a shared backend unreachable under on_backend_failure: deny).",
            ),
            &["rule", "kind"],
        ));
        let limit_admitted = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_limit_admitted_total",
                "Requests a limits rule admitted (with llm_sidecar_limited_total, the rule's decisions).",
            ),
            &["rule"],
        ));
        let limits_backend = crate::limits::shared::BackendMetrics {
            up: must(IntGauge::new(
                "llm_sidecar_limits_backend_up",
                "1 while the shared limits backend (Redis) answers; 0 when it does not or is not used yet.",
            )),
            errors: must(IntCounter::new(
                "llm_sidecar_limits_backend_errors_total",
                "Calls to the shared limits backend that failed or timed out.",
            )),
            leases: must(IntCounter::new(
                "llm_sidecar_limits_leases_total",
                "Budget slices leased from the shared limits backend.",
            )),
            failed_open: must(IntCounter::new(
                "llm_sidecar_limits_failed_open_total",
                "Requests admitted without the shared backend because it was unreachable and on_backend_failure is allow.",
            )),
        };
        let audit = super::audit::AuditMetrics {
            written: must(IntCounter::new(
                "llm_sidecar_audit_records_total",
                "Audit records written since the sidecar started.",
            )),
            dropped: must(IntCounterVec::new(
                Opts::new(
                    "llm_sidecar_audit_dropped_total",
                    "Audit records dropped: reason=\"queue_full\" (the writer fell behind; audit.when_full applied) or \"write_error\" (the sink failed).",
                ),
                &["reason"],
            )),
        };
        for reason in ["queue_full", "write_error"] {
            audit.dropped.with_label_values(&[reason]);
        }
        let spans = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_otlp_spans_total",
                "Upstream-attempt spans for OTLP export: result=\"exported\", \"failed\" (the collector did not take them) or \"dropped\" (the export queue was full).",
            ),
            &["result"],
        ));
        for result in ["exported", "failed", "dropped"] {
            spans.with_label_values(&[result]);
        }
        let connect_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let upstream_connect = must(HistogramVec::new(
            HistogramOpts::new(
                "llm_sidecar_upstream_connect_seconds",
                "New upstream connections: time from choosing the peer to a ready connection (TCP connect, plus the TLS handshake for TLS providers).",
            )
            .buckets(connect_buckets.clone()),
            &["provider"],
        ));
        let upstream_tls = must(HistogramVec::new(
            HistogramOpts::new(
                "llm_sidecar_upstream_tls_handshake_seconds",
                "New TLS upstream connections: time of the TLS handshake (the setup time after TCP connected; observed when Pingora timed the TCP connect).",
            )
            .buckets(connect_buckets),
            &["provider"],
        ));
        let upstream_tls_handshakes = must(IntCounterVec::new(
            Opts::new(
                "llm_sidecar_upstream_tls_handshakes_total",
                "TLS handshakes with providers (one per new TLS connection).",
            ),
            &["provider"],
        ));
        let upstream_pool_wait = must(HistogramVec::new(
            HistogramOpts::new(
                "llm_sidecar_upstream_pool_wait_seconds",
                "Reused upstream connections: time from choosing the peer to holding a pooled connection.",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["provider"],
        ));
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(upstream_connect.clone()),
            Box::new(upstream_tls.clone()),
            Box::new(upstream_tls_handshakes.clone()),
            Box::new(upstream_pool_wait.clone()),
            Box::new(spans.clone()),
            Box::new(audit.written.clone()),
            Box::new(audit.dropped.clone()),
            Box::new(limits_backend.up.clone()),
            Box::new(limits_backend.errors.clone()),
            Box::new(limits_backend.leases.clone()),
            Box::new(limits_backend.failed_open.clone()),
            Box::new(limited.clone()),
            Box::new(limit_admitted.clone()),
            Box::new(tokens.clone()),
            Box::new(retries.clone()),
            Box::new(fallbacks.clone()),
            Box::new(translations.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_opened.clone()),
            Box::new(breaker_rejected.clone()),
            Box::new(decisions),
            Box::new(tunnel_bytes),
            Box::new(tunnels_open),
            Box::new(leaf_certs),
            Box::new(handshake_failures),
            Box::new(key_requests.clone()),
            Box::new(key_events.clone()),
            Box::new(key_ejected.clone()),
            Box::new(key_cooldown_until.clone()),
            Box::new(token_fetches.clone()),
            Box::new(token_expiry.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(reloads.clone()),
            Box::new(config_info.clone()),
            Box::new(config_last_success.clone()),
            Box::new(in_flight.clone()),
        ];
        let genai = super::genai::GenAiMetrics::new();
        for c in collectors.into_iter().chain(genai.collectors()) {
            must(registry.register(c));
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            must(registry.register(Box::new(pc)));
        }
        for result in ["success", "failure", "unchanged"] {
            reloads.with_label_values(&[result]);
        }
        Arc::new(Metrics {
            genai,
            audit,
            spans,
            registry,
            requests,
            duration,
            upstream_connections,
            upstream_connect,
            upstream_tls,
            upstream_tls_handshakes,
            upstream_pool_wait,
            reloads,
            config_info,
            config_last_success,
            in_flight,
            unrouted: OnceLock::new(),
            key_requests,
            key_events,
            key_ejected,
            key_cooldown_until,
            token_fetches,
            token_expiry,
            forward,
            retries,
            fallbacks,
            translations,
            tokens,
            limited,
            limit_admitted,
            limits_backend,
            breaker_state,
            breaker_opened,
            breaker_rejected,
        })
    }

    pub fn retry(&self, route: &str, reason: &str) {
        self.retries.with_label_values(&[route, reason]).inc();
    }

    pub fn tokens(&self, route: &str, provider: &str, u: &crate::usage::Usage) {
        for (ty, n) in u.by_type() {
            if n > 0 {
                self.tokens
                    .with_label_values(&[route, provider, ty])
                    .inc_by(n);
            }
        }
    }

    pub fn limited(&self, rule: &str, kind: crate::limits::DeniedKind) {
        let k = match kind {
            crate::limits::DeniedKind::Requests { .. } => "requests",
            crate::limits::DeniedKind::Tokens { .. } => "tokens",
            crate::limits::DeniedKind::Concurrency { .. } => "concurrency",
            crate::limits::DeniedKind::BackendDown => "backend_down",
        };
        self.limited.with_label_values(&[rule, k]).inc();
    }

    /// The admitted-requests counter of one limits rule.
    pub fn limit_admitted(&self, rule: &str) -> IntCounter {
        self.limit_admitted.with_label_values(&[rule])
    }

    /// The counter of one translation result.
    pub fn translation(
        &self,
        route: &str,
        api: crate::translate::Api,
        upstream: crate::translate::Api,
        result: &str,
    ) -> IntCounter {
        self.translations
            .with_label_values(&[route, api.as_str(), upstream.as_str(), result])
    }

    pub fn fallback(&self, route: &str, provider: &str) {
        self.fallbacks.with_label_values(&[route, provider]).inc();
    }

    pub fn spans(&self) -> super::otlp::SpanMetrics {
        super::otlp::SpanMetrics {
            exported: self.spans.with_label_values(&["exported"]),
            failed: self.spans.with_label_values(&["failed"]),
            dropped: self.spans.with_label_values(&["dropped"]),
        }
    }

    pub fn audit(&self) -> super::audit::AuditMetrics {
        self.audit.clone()
    }

    pub fn limits_backend(&self) -> crate::limits::shared::BackendMetrics {
        self.limits_backend.clone()
    }

    pub fn breaker(&self, provider: &str) -> crate::resilience::breaker::BreakerMetrics {
        crate::resilience::breaker::BreakerMetrics {
            state: self.breaker_state.with_label_values(&[provider]),
            opened: self.breaker_opened.with_label_values(&[provider]),
            rejected: self.breaker_rejected.with_label_values(&[provider]),
        }
    }

    pub fn forward(&self) -> &ForwardMetrics {
        &self.forward
    }

    /// Handles for one key of a pool (named by its configured name, never its value).
    pub fn key(&self, provider: &str, key: &str) -> crate::auth::keys::KeyMetrics {
        crate::auth::keys::KeyMetrics {
            requests: self.key_requests.with_label_values(&[provider, key]),
            ejected: self
                .key_events
                .with_label_values(&[provider, key, "ejected"]),
            cooldowns: self
                .key_events
                .with_label_values(&[provider, key, "cooldown"]),
            ejected_now: self.key_ejected.with_label_values(&[provider, key]),
            cooldown_until: self.key_cooldown_until.with_label_values(&[provider, key]),
        }
    }

    pub fn token(&self, provider: &str) -> crate::auth::oauth2::TokenMetrics {
        crate::auth::oauth2::TokenMetrics {
            fetched: self.token_fetches.with_label_values(&[provider, "success"]),
            failed: self.token_fetches.with_label_values(&[provider, "failure"]),
            expires: self.token_expiry.with_label_values(&[provider]),
        }
    }

    pub fn route(&self, route: &str, provider: &str) -> RouteMetrics {
        RouteMetrics {
            duration: self.duration.with_label_values(&[route, provider]),
            requests: self.requests.clone(),
            labels: Arc::new([route.to_string(), provider.to_string()]),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            tokens: TOKEN_TYPES.map(|t| self.tokens.with_label_values(&[route, provider, t])),
        }
    }

    /// Handles for requests refused before any route matched.
    pub fn unrouted(&self) -> &RouteMetrics {
        self.unrouted.get_or_init(|| self.route(NO_ROUTE, NO_ROUTE))
    }

    pub fn provider(&self, provider: &str) -> ProviderMetrics {
        ProviderMetrics {
            conn_new: self
                .upstream_connections
                .with_label_values(&[provider, "false"]),
            conn_reused: self
                .upstream_connections
                .with_label_values(&[provider, "true"]),
            connect: self.upstream_connect.with_label_values(&[provider]),
            tls: self.upstream_tls.with_label_values(&[provider]),
            tls_handshakes: self.upstream_tls_handshakes.with_label_values(&[provider]),
            pool_wait: self.upstream_pool_wait.with_label_values(&[provider]),
        }
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }

    /// Marks `hash` as the serving config (and only it).
    pub fn set_active_config(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.config_last_success
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Per-call LLM metrics (GenAI conventions, TTFT, tokens by tenant and model).
    pub fn genai(&self) -> &super::genai::GenAiMetrics {
        &self.genai
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.genai.refresh();
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for valid families.
        let _ = TextEncoder::new().encode(&families, &mut buf);
        buf
    }
}

#[derive(Clone, Copy, Debug)]
pub enum ReloadResult {
    Success,
    Failure,
    Unchanged,
}

impl ReloadResult {
    fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
            ReloadResult::Unchanged => "unchanged",
        }
    }
}

/// Pre-resolved handles for one route.
pub struct RouteMetrics {
    duration: Histogram,
    requests: IntCounterVec,
    labels: Arc<[String; 2]>,
    /// Counter per status code, created on first use; index is `status - 100`.
    by_status: Box<[OnceLock<IntCounter>]>,
    /// Token counters for the route's own provider (input, output, cache_read,
    /// cache_write, reasoning), resolved once: no label hashing per request.
    tokens: [IntCounter; 5],
}

impl RouteMetrics {
    /// Counts tokens used through the route's own provider.
    pub fn tokens(&self, u: &crate::usage::Usage) {
        for (c, n) in
            self.tokens
                .iter()
                .zip([u.input, u.output, u.cache_read, u.cache_write, u.reasoning])
        {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }

    pub fn provider(&self) -> &str {
        &self.labels[1]
    }
}

const TOKEN_TYPES: [&str; 5] = ["input", "output", "cache_read", "cache_write", "reasoning"];

impl RouteMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let status = status.clamp(100, 599);
        let cell = &self.by_status[usize::from(status - 100)];
        cell.get_or_init(|| {
            let code = status.to_string();
            self.requests.with_label_values(&[
                self.labels[0].as_str(),
                self.labels[1].as_str(),
                code.as_str(),
            ])
        })
        .inc();
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({}, {})", self.labels[0], self.labels[1])
    }
}

/// Pre-resolved handles for one provider.
#[derive(Clone)]
pub struct ProviderMetrics {
    conn_new: IntCounter,
    conn_reused: IntCounter,
    connect: Histogram,
    tls: Histogram,
    tls_handshakes: IntCounter,
    pool_wait: Histogram,
}

impl ProviderMetrics {
    pub fn connection(&self, reused: bool) {
        if reused {
            self.conn_reused.inc()
        } else {
            self.conn_new.inc()
        }
    }

    /// A pooled connection was handed over `waited` after the peer was chosen.
    pub fn pool_wait(&self, waited: Duration) {
        self.pool_wait.observe(waited.as_secs_f64());
    }

    /// A new connection: its setup time, and its TLS handshake when it has one.
    pub fn established(&self, setup: Option<Duration>, tls: Option<Option<Duration>>) {
        if let Some(d) = setup {
            self.connect.observe(d.as_secs_f64());
        }
        if let Some(handshake) = tls {
            self.tls_handshakes.inc();
            if let Some(d) = handshake {
                self.tls.observe(d.as_secs_f64());
            }
        }
    }
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderMetrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders() {
        let m = Metrics::new();
        let r = m.route("openai", "openai");
        r.record(200, Duration::from_millis(12));
        r.record(200, Duration::from_millis(30));
        r.record(504, Duration::from_secs(1));
        m.provider("openai").connection(true);
        m.reload(ReloadResult::Failure);
        m.set_active_config("abc");
        m.set_active_config("def");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"llm_sidecar_requests_total{provider="openai",route="openai",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"status="504"} 1"#));
        assert!(text.contains(
            r#"llm_sidecar_request_duration_seconds_count{provider="openai",route="openai"} 3"#
        ));
        assert!(text.contains(
            r#"llm_sidecar_upstream_connections_total{provider="openai",reused="true"} 1"#
        ));
        assert!(text.contains(r#"llm_sidecar_config_reloads_total{result="failure"} 1"#));
        assert!(text.contains(r#"llm_sidecar_config_info{hash="def"} 1"#));
        assert!(!text.contains(r#"hash="abc""#), "old hash must be gone");
    }
}

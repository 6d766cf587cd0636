//! OTLP trace export: one CLIENT span per upstream attempt, with the OpenTelemetry
//! GenAI attributes.
//!
//! ```text
//! try_target ── attempt ends ──► Spans::record ──► (gate: queue full? drop, count)
//!                                  │ SpanData (ids are the ones sent upstream in traceparent)
//!                                  ▼
//!          BatchSpanProcessor (SDK): bounded channel ─► its own thread ─► batches
//!                                  ▼
//!          Counted<opentelemetry_otlp::SpanExporter>: HTTP/protobuf POST ─► collector
//! ```
//!
//! Spans are built finished (the attempt is over when they are recorded), so no live
//! span or tracer sits on the request path: the span id is the one this attempt sent in
//! its `traceparent`, and the parent is the client's span when it sent one. Recording
//! never waits: the processor's channel is bounded, and the sidecar keeps its own count
//! of spans not yet exported so a full queue is a counted drop, not a block. A collector
//! that is down costs one failed export per batch on the exporter thread.

use crate::usage::Usage;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// OTLP/HTTP trace export; a startup setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub endpoint: String,
    pub service_name: String,
    pub queue: usize,
    pub batch: usize,
    pub delay: Duration,
    pub timeout: Duration,
}

/// Counters of the exporter.
#[derive(Clone)]
pub struct SpanMetrics {
    pub exported: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
}

/// One finished upstream attempt, as a span says it.
pub struct AttemptSpan<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when the request joined its trace.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `gen_ai.operation.name`: chat, embeddings, ...
    pub operation: &'static str,
    /// `gen_ai.provider.name`
    pub provider: &'static str,
    pub request_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub usage: Option<Usage>,
    pub finish_reasons: &'a [Box<str>],
    /// `server.address` and `server.port`
    pub server: &'a str,
    pub port: u16,
    /// The provider's HTTP status, when one arrived.
    pub status: Option<u16>,
    /// `error.type`: a status class or the sidecar's cause.
    pub error: Option<&'static str>,
    /// The sidecar's route and provider names (`llm_sidecar.*`).
    pub route: &'a str,
    pub provider_name: &'a str,
    pub attempt: u32,
}

/// Counts what the real exporter did with each batch.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    done: Arc<AtomicI64>,
    exported: IntCounter,
    failed: IntCounter,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.exported.inc_by(n as u64),
            Err(e) => {
                if self.failed.get() == 0 {
                    tracing::warn!(error = %e, "OTLP export failed; spans are dropped (and counted) until the collector answers");
                }
                self.failed.inc_by(n as u64);
            }
        }
        self.done.fetch_add(n as i64, Ordering::Relaxed);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The span pipeline.
pub struct Spans {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    queue: i64,
    /// Spans handed to the processor.
    submitted: AtomicI64,
    /// Spans the exporter finished with (exported or failed).
    done: Arc<AtomicI64>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spans").field("queue", &self.queue).finish()
    }
}

impl Spans {
    /// Builds the exporter and its thread. Fails only on a bad endpoint.
    pub fn start(t: &TelemetrySettings, metrics: SpanMetrics) -> Result<Arc<Spans>, String> {
        // The blocking HTTP client owns a runtime of its own: build it off any async
        // context (it is used and dropped on the processor's thread).
        let endpoint = t.endpoint.clone();
        let timeout = t.timeout;
        let exporter = std::thread::spawn(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
                .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the OTLP exporter could not be built".to_string())??;
        let done = Arc::new(AtomicI64::new(0));
        let mut counted = Counted {
            inner: exporter,
            done: done.clone(),
            exported: metrics.exported,
            failed: metrics.failed,
        };
        counted.set_resource(
            &Resource::builder_empty()
                .with_service_name(t.service_name.clone())
                .build(),
        );
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(t.queue)
            .with_max_export_batch_size(t.batch)
            .with_scheduled_delay(t.delay)
            .build();
        let processor = BatchSpanProcessor::new(counted, config);
        Ok(Arc::new(Spans {
            processor,
            scope: InstrumentationScope::builder("llm-sidecar")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            queue: t.queue as i64,
            submitted: AtomicI64::new(0),
            done,
            dropped: metrics.dropped,
        }))
    }

    /// Hands a finished attempt's span to the exporter; never waits.
    pub fn record(&self, a: &AttemptSpan<'_>) {
        if !a.sampled {
            return;
        }
        let pending = self.submitted.load(Ordering::Relaxed) - self.done.load(Ordering::Relaxed);
        if pending >= self.queue {
            self.dropped.inc();
            return;
        }
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.processor.on_end(self.span(a));
    }

    fn span(&self, a: &AttemptSpan<'_>) -> SpanData {
        let mut attrs = Vec::with_capacity(16);
        attrs.push(KeyValue::new("gen_ai.operation.name", a.operation));
        attrs.push(KeyValue::new("gen_ai.provider.name", a.provider));
        if let Some(m) = a.request_model {
            attrs.push(KeyValue::new("gen_ai.request.model", m.to_string()));
        }
        if let Some(m) = a.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.to_string()));
        }
        if let Some(u) = a.usage {
            attrs.push(KeyValue::new("gen_ai.usage.input_tokens", u.input as i64));
            attrs.push(KeyValue::new("gen_ai.usage.output_tokens", u.output as i64));
        }
        if !a.finish_reasons.is_empty() {
            let list: Vec<opentelemetry::StringValue> = a
                .finish_reasons
                .iter()
                .map(|r| opentelemetry::StringValue::from(r.to_string()))
                .collect();
            attrs.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(list.into()),
            ));
        }
        attrs.push(KeyValue::new("server.address", a.server.to_string()));
        attrs.push(KeyValue::new("server.port", i64::from(a.port)));
        if let Some(s) = a.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        if let Some(e) = a.error {
            attrs.push(KeyValue::new("error.type", e));
        }
        attrs.push(KeyValue::new("llm_sidecar.route", a.route.to_string()));
        attrs.push(KeyValue::new(
            "llm_sidecar.provider",
            a.provider_name.to_string(),
        ));
        attrs.push(KeyValue::new("llm_sidecar.attempt", i64::from(a.attempt)));
        let name = match a.request_model {
            Some(m) => format!("{} {m}", a.operation),
            None => a.operation.to_string(),
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(a.trace_id),
                SpanId::from_bytes(a.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: a.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: a.parent.is_some(),
            span_kind: SpanKind::Client,
            name: name.into(),
            start_time: a.start,
            end_time: a.end.max(a.start),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match a.error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// Sends what is queued (at shutdown); waits at most `limit`.
    pub fn close(&self, limit: Duration) {
        let _ = self.processor.force_flush();
        let _ = self.processor.shutdown_with_timeout(limit);
    }
}

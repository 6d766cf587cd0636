//! What a finished request leaves behind: its metrics (per route, GenAI per call), its
//! OTLP span per attempt, its audit record and its log line.

use super::errors::Cause;
use super::{attempt, attempts::AttemptPlan, Ctx, ExchangeState, SidecarProxy};
use crate::config::compile::Target;
use crate::config::Snapshot;
use crate::observability::audit::Record as AuditRecord;
use crate::observability::metrics::STATUS_CLIENT_CLOSED;
use crate::observability::otlp::Spans;
use crate::observability::trace;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl SidecarProxy {
    /// The per-call LLM metrics of a routed request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_call(
        &self,
        route: &crate::config::compile::Route,
        x: &ExchangeState,
        path: &str,
        started: Instant,
        status: u16,
        elapsed: Duration,
    ) {
        use crate::observability::genai::{operation_name, Call};
        let (provider, gen_ai_provider) = answering_provider(route, x)
            .map_or((route.metrics.provider(), "none"), |(p, g)| (&**p, g));
        let request_model = x.model_label.as_deref().unwrap_or("none");
        let served = x.served.as_ref();
        let response_model = served
            .and_then(|s| s.response_model_label.as_deref())
            .unwrap_or("none");
        let error = match x.cause {
            Some(c) => Some(c.as_str()),
            None if status >= 400 => Some(status_error(status)),
            None => None,
        };
        self.metrics.genai().record(&Call {
            route: &route.name,
            provider,
            gen_ai_provider,
            operation: operation_name(path),
            tenant: x.tenant.as_deref().unwrap_or("-"),
            request_model,
            response_model,
            status,
            error,
            duration: elapsed,
            ttft: served
                .filter(|s| s.streaming)
                .and_then(|s| s.first_body)
                .map(|t| t.saturating_duration_since(started)),
            usage: x.usage,
        });
    }

    /// The span of one finished attempt, for OTLP export.
    pub(super) fn export_span(
        &self,
        spans: &Spans,
        plan: &AttemptPlan,
        outcome: &attempt::Outcome,
        start: std::time::SystemTime,
        route: &str,
        x: &ExchangeState,
    ) {
        use crate::observability::genai::{operation_name, provider_name};
        let answer = plan.report.answer().map(|(s, _)| s);
        let error = match outcome {
            attempt::Outcome::Complete { status } | attempt::Outcome::HeldBack { status } => {
                (*status >= 400).then(|| status_error(*status))
            }
            attempt::Outcome::NotStarted { error, .. } => Some(error.cause.as_str()),
            attempt::Outcome::Broken { cause, .. } => Some(cause.as_str()),
            attempt::Outcome::ClientGone { .. } => Some("client_closed"),
        };
        let p = &plan.provider;
        spans.record(&crate::observability::otlp::AttemptSpan {
            trace_id: plan.trace.trace_id,
            span_id: plan.span,
            parent: plan.trace.parent,
            sampled: plan.trace.sampled(),
            start,
            end: std::time::SystemTime::now(),
            operation: operation_name(plan.uri.path()),
            provider: provider_name(p.kind),
            request_model: x.model.as_deref(),
            response_model: plan.report.model(),
            usage: plan.report.usage(),
            finish_reasons: plan.report.finish_reasons.get().map_or(&[][..], |r| &r[..]),
            server: p.endpoint.host(),
            port: p.endpoint.port(),
            status: answer,
            error,
            route,
            provider_name: &p.name,
            attempt: x.attempts,
        });
    }

    /// The audit record of a finished request (the writer thread redacts it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn audit_record(
        &self,
        session: &Session,
        snap: &Snapshot,
        x: &mut ExchangeState,
        started: Instant,
        status: u16,
        elapsed: Duration,
        redactor: &Arc<crate::observability::redact::Redactor>,
    ) -> Box<AuditRecord> {
        use crate::observability::audit::RawBody;
        let route = x.route.and_then(|i| snap.routes.get(i));
        let cap = x
            .route
            .and_then(|i| snap.routes.get(i))
            .map(|r| &r.action.plan)
            .and_then(|p| p.audit_bodies)
            .map_or(0, |b| b.max_bytes);
        let req = session.req_header();
        let served = x.served.as_ref();
        let provider = route
            .and_then(|r| answering_provider(r, x))
            .map(|(p, _)| p.clone());
        Box::new(AuditRecord {
            time: std::time::SystemTime::now(),
            trace_id: x.trace.as_ref().map(|t| t.trace_id),
            tenant: x.tenant.clone(),
            route: route.map(|r| r.name.clone()),
            provider,
            key: x.key.clone(),
            model: x.model.clone(),
            response_model: served.and_then(|s| s.response_model.clone()),
            upstream_model: x.sent_model.clone(),
            apis: x.apis.map(|(f, t)| (f.as_str(), t.as_str())),
            method: req.method.clone(),
            target: req
                .uri
                .path_and_query()
                .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string()),
            status,
            error: x.cause.map(|c| c.as_str()),
            attempts: x.attempts,
            usage: x.usage,
            latency: elapsed,
            ttft: served
                .filter(|s| s.streaming)
                .and_then(|s| s.first_body)
                .map(|t| t.saturating_duration_since(started)),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            decisions: std::mem::take(&mut x.decisions),
            request_body: x.audit_request.take().map(|bytes| RawBody {
                bytes,
                complete: true,
                cap,
            }),
            response_body: x.audit_response.take().map(|(bytes, complete)| RawBody {
                bytes,
                complete,
                cap,
            }),
            redactor: redactor.clone(),
        })
    }
}

/// The provider whose answer the client got, else the route's own when it is ready:
/// its name and `gen_ai.provider.name`.
fn answering_provider<'a>(
    route: &'a crate::config::compile::Route,
    x: &'a ExchangeState,
) -> Option<(&'a Arc<str>, &'static str)> {
    match (&x.served, &route.action.target) {
        (Some(s), _) => Some((&s.provider, s.gen_ai_provider)),
        (None, Target::Ready(p)) => {
            Some((&p.name, crate::observability::genai::provider_name(p.kind)))
        }
        (None, _) => None,
    }
}

/// `error.type` for a provider's own error status.
fn status_error(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "client_closed",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        529 => "529",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

impl SidecarProxy {
    /// The request is over: settle its reservations, then its metrics, audit record and
    /// log line.
    pub(super) fn finish(&self, session: &Session, ctx: &mut Ctx) {
        let x = &mut ctx.x;
        if x.in_flight {
            self.metrics.in_flight().dec();
        }
        if let Some(mut held) = x.held.take() {
            // Settle token reservations: the usage read from the response; nothing when
            // the sidecar answered itself (no provider answer reached the client); the
            // reservation stands when a response passed but its usage was unreadable.
            let used = x
                .usage
                .or_else(|| x.cause.is_some().then(crate::usage::Usage::default));
            held.reconcile(used);
        }
        let elapsed = ctx.started.elapsed();
        let status = if x.status == 0 {
            session
                .response_written()
                .map_or(STATUS_CLIENT_CLOSED, |r| r.status.as_u16())
        } else {
            x.status
        };
        let Some(snap) = &ctx.snapshot else { return };
        let route = x.route.and_then(|i| snap.routes.get(i));
        match route {
            Some(r) => r.metrics.record(status, elapsed),
            None => self.metrics.unrouted().record(status, elapsed),
        }
        if let Some(r) = route {
            let path = session.req_header().uri.path();
            self.record_call(r, x, path, ctx.started, status, elapsed);
        }
        if let (Some(audit), Some(redactor)) = (&self.audit, &snap.redactor) {
            audit.submit(self.audit_record(
                session,
                snap,
                x,
                ctx.started,
                status,
                elapsed,
                redactor,
            ));
        }
        let route_name = route.map_or("-", |r| &r.name);
        // formatted only if a line is written
        let trace_id = trace::TraceId(x.trace.as_ref().map(|t| t.trace_id));
        let tenant = x.tenant.as_deref().unwrap_or("-");
        let key = x.key.as_deref().unwrap_or("-");
        let req = session.req_header();
        let ms = elapsed.as_secs_f64() * 1000.0;
        match x.cause {
            // A disabled provider was reported at load; per request it is a refusal.
            Some(cause)
                if (cause.status() >= 500 && cause != Cause::ProviderDisabled) || x.aborted =>
            {
                tracing::warn!(
                    trace_id = %trace_id, route = route_name, tenant, key, method = %req.method, path = req.uri.path(), status, cause = cause.as_str(),
                    attempts = x.attempts, duration_ms = ms, "request failed"
                )
            }
            Some(cause) => tracing::info!(
                trace_id = %trace_id, route = route_name, tenant, key, method = %req.method, path = req.uri.path(), status, cause = cause.as_str(),
                duration_ms = ms, "request refused"
            ),
            None => tracing::debug!(
                trace_id = %trace_id, route = route_name, tenant, key, method = %req.method, path = req.uri.path(), status,
                attempts = x.attempts, duration_ms = ms,
                input_tokens = x.usage.map_or(0, |u| u.input),
                output_tokens = x.usage.map_or(0, |u| u.output),
                "request"
            ),
        }
    }
}

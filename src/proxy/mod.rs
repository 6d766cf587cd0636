//! The `ProxyHttp` implementation: where each request goes through the sidecar.
//!
//! Every client request is an *exchange*: one pass through Pingora's hooks, in the
//! client's own session. Each try at the provider is an *attempt* the exchange runs
//! itself on a pooled upstream connection; Pingora's own upstream path (and a second
//! pipeline per attempt) is never used. The phases, each in its file:
//!
//! ```text
//!  early_request_filter  load the config snapshot
//!  request_filter        exchange():
//!    admission.rs          guards 431/400/413, route 404/421, provider 503, tenant
//!                          400/401/403, body (body.rs: read whole, ≤ max), limits 429
//!    attempts.rs           targets in order (provider, fallbacks), retries, breaker,
//!                          key pool; decides what follows a held-back answer
//!      attempt.rs            one try: first-byte / idle / total timers, hold back an
//!                            answer that will be retried, client hang-up
//!        call.rs               the request as the provider sees it (strip, inject,
//!                              sign), DNS, pooled h1/h2 connection, send, response head
//!        response.rs           the response to the client piece by piece: usage,
//!                              audit capture, nothing buffered
//!    respond()             every answer the sidecar makes itself, and whether the
//!                          connection stays open (errors.rs: provider-shaped JSON)
//!  fail_to_proxy         errors that escaped (client gone, a cut response)
//!  logging               record.rs: reservations settled, metrics, spans, audit, log line
//! ```
//!
//! A request reads one snapshot (one `ArcSwap` load) and keeps it to the end, including
//! in its attempts, so a reload never mixes two configs in one request.

mod admission;
pub mod attempt;
mod attempts;
mod body;
pub mod call;
pub mod errors;
pub mod guards;
mod record;
mod response;
pub mod serve;

pub use attempts::{AttemptPlan, AttemptReport, RetryGate};

use crate::config::{ConfigStore, Snapshot};
use crate::observability::audit::AuditLog;
use crate::observability::metrics::{Metrics, STATUS_CLIENT_CLOSED};
use crate::observability::otlp::Spans;
use crate::observability::trace::TraceContext;
use crate::upstream::dns::Resolver;
use admission::Refusal;
use async_trait::async_trait;
use attempts::TargetEnd;
use bytes::Bytes;
use errors::{Cause, ErrorStyle, SidecarError};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request state.
pub struct Ctx {
    started: Instant,
    snapshot: Option<Arc<Snapshot>>,
    x: ExchangeState,
}

#[derive(Default)]
pub struct ExchangeState {
    route: Option<usize>,
    style: Option<ErrorStyle>,
    /// Status the client got (0: none yet).
    status: u16,
    cause: Option<Cause>,
    /// The response was cut off: Pingora must write nothing more on this connection.
    aborted: bool,
    in_flight: bool,
    attempts: u32,
    tenant: Option<Arc<str>>,
    /// Name of the pooled key used last (never its value).
    key: Option<Arc<str>>,
    /// Tokens the provider reported (or, for a cut stream, what was seen).
    usage: Option<crate::usage::Usage>,
    /// Token reservations and concurrency slots held until the request ends.
    held: Option<crate::limits::Held>,
    /// The tokens this request is expected to use (when a limit budgets tokens).
    estimate: crate::limits::Estimate,
    /// The W3C trace this request belongs to (joined or started).
    trace: Option<TraceContext>,
    /// The model the request asks for, as written (length-capped): for the audit log
    /// and traces.
    model: Option<Arc<str>>,
    /// The same as a bounded metrics label value (`other` past the bound).
    model_label: Option<Arc<str>>,
    /// The model sent to the target last tried (after the route's model map).
    sent_model: Option<Arc<str>>,
    /// The last target tried was translated: the client's API and the target's.
    apis: Option<(crate::translate::Api, crate::translate::Api)>,
    /// The provider whose answer the client got, and what its response said.
    served: Option<Served>,
    /// An audit record will be written: keep the decisions (and bodies, if the route
    /// says so).
    auditing: bool,
    /// Why the request went the way it did (audit log only).
    decisions: Vec<std::borrow::Cow<'static, str>>,
    /// The request body, when the route's `audit_bodies.request` is on.
    audit_request: Option<Bytes>,
    /// The answer's body as captured, when `audit_bodies.response` is on.
    audit_response: Option<(Bytes, bool)>,
}

impl ExchangeState {
    /// Notes a decision for the audit record (formatted only when one is written).
    fn note(&mut self, f: impl FnOnce() -> std::borrow::Cow<'static, str>) {
        if self.auditing {
            self.decisions.push(f());
        }
    }
}

/// What the attempt whose answer reached the client saw.
struct Served {
    provider: Arc<str>,
    gen_ai_provider: &'static str,
    /// As the response named it (length-capped), and as a bounded label value.
    response_model: Option<Arc<str>>,
    response_model_label: Option<Arc<str>>,
    first_body: Option<Instant>,
    streaming: bool,
}

/// Reading the request body: the client must keep sending at least this often.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SidecarProxy {
    store: Arc<ConfigStore>,
    upstream: call::Upstream,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
    spans: Option<Arc<Spans>>,
}

impl SidecarProxy {
    pub fn new(
        conf: &pingora::server::configuration::ServerConf,
        store: Arc<ConfigStore>,
        resolver: Arc<Resolver>,
        audit: Option<Arc<AuditLog>>,
        spans: Option<Arc<Spans>>,
    ) -> SidecarProxy {
        let metrics = store.metrics().clone();
        SidecarProxy {
            store,
            upstream: call::Upstream::new(conf, resolver),
            metrics,
            audit,
            spans,
        }
    }

    /// One request, phase by phase. Always answers the client itself (`Ok(true)`),
    /// except when the connection has to be cut (`Err`).
    async fn exchange(
        &self,
        session: &mut Session,
        snap: &Arc<Snapshot>,
        x: &mut ExchangeState,
        started: Instant,
    ) -> Result<bool> {
        let admitted = match self.admit(session, snap, x).await {
            Ok(a) => a,
            Err(Refusal::Answer(e)) => return self.respond(session, x, e).await,
            Err(Refusal::ClientGone(e)) => {
                x.status = STATUS_CLIENT_CLOSED;
                x.aborted = true;
                return Err(e);
            }
        };
        if let Some(list) = models_request(session.req_header(), admitted.route) {
            return self.respond_json(session, x, list).await;
        }
        match self.run_targets(session, snap, x, admitted, started).await {
            TargetEnd::Done(r) => r,
            // Nothing reached the client: the last target's error is the answer.
            TargetEnd::Next(e) => self.respond(session, x, e).await,
        }
    }

    /// A 200 JSON answer the sidecar makes itself (a translating route's model list).
    async fn respond_json(
        &self,
        session: &mut Session,
        x: &mut ExchangeState,
        body: Bytes,
    ) -> Result<bool> {
        let mut h = pingora::http::ResponseHeader::build(200, Some(3))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        x.status = 200;
        if session
            .write_response_header(Box::new(h), false)
            .await
            .is_err()
            || session.write_response_body(Some(body), true).await.is_err()
        {
            x.status = STATUS_CLIENT_CLOSED;
        }
        Ok(true)
    }

    /// Every answer the sidecar makes itself goes out here, in the shape of the
    /// provider the request was for (a guess from the request when it matched none).
    /// This is also where the connection's fate is decided: it stays open only when the
    /// request was read to its end and the error is not about how it was framed.
    async fn respond(
        &self,
        session: &mut Session,
        x: &mut ExchangeState,
        err: SidecarError,
    ) -> Result<bool> {
        let style = x
            .style
            .unwrap_or_else(|| ErrorStyle::guess(session.req_header()));
        let keepalive = !err.cause.closes_connection() && session.is_body_done();
        x.status = err.status();
        x.cause = Some(err.cause);
        x.style = Some(style);
        if let Err(e) = err.write(session, style, keepalive).await {
            // The client is gone; nothing more to do for it.
            tracing::debug!(error = %e, "could not write error response");
            x.status = STATUS_CLIENT_CLOSED;
        }
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for SidecarProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snapshot: None,
            x: ExchangeState::default(),
        }
    }

    /// Runs first for every request: loads the config snapshot it will use to the end.
    async fn early_request_filter(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        serve::head_read();
        ctx.snapshot = Some(self.store.load());
        ctx.x.in_flight = true;
        self.metrics.in_flight().inc();
        Ok(())
    }

    /// Guards, routing, body, attempts; always answers (returns `Ok(true)`) or cuts the
    /// connection (`Err`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(snap) = ctx.snapshot.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no config snapshot");
        };
        self.exchange(session, &snap, &mut ctx.x, ctx.started).await
    }

    /// Never called: `request_filter` answers every request itself.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "the sidecar runs its own upstream attempts",
        )
    }

    /// An error escaped `request_filter` (the response was cut, or the client left) or
    /// Pingora failed before it ran.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let no_reuse = |code| FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        };
        let x = &mut ctx.x;
        if x.aborted || x.status != 0 {
            return no_reuse(x.status);
        }
        let (cause, msg) = match e.esource() {
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                    x.status = STATUS_CLIENT_CLOSED;
                    return no_reuse(STATUS_CLIENT_CLOSED);
                }
                _ => (
                    Cause::BadRequest,
                    "the request could not be read".to_string(),
                ),
            },
            _ => (
                Cause::Internal,
                "the sidecar failed to handle this request".to_string(),
            ),
        };
        let _ = self
            .respond(session, x, SidecarError::new(cause, msg))
            .await;
        no_reuse(x.status)
    }

    /// Failures the exchange answered are reported once, by its own log line.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.x.status != 0
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        self.finish(session, ctx);
    }
}

/// `GET …/models` on a translating route whose targets name their models: the list.
fn models_request(
    req: &pingora::http::RequestHeader,
    route: &crate::config::compile::Route,
) -> Option<Bytes> {
    if req.method != http::Method::GET || !req.uri.path().trim_end_matches('/').ends_with("/models")
    {
        return None;
    }
    route.action.models_list.clone()
}

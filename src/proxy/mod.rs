//! The `ProxyHttp` implementation: where each request goes through the sidecar.
//!
//! Every client request is an *exchange* (Pingora's main session). Each try at the
//! provider is an *attempt* (a Pingora subrequest the exchange drives, see [`attempt`]).
//! The same hooks serve both; [`Role`] says which one a context belongs to.
//!
//! ```text
//!  exchange (client side)                                attempt (upstream side)
//!  ─────────────────────                                 ───────────────────────
//!  early_request_filter   load the config snapshot       take the plan from the exchange
//!  request_filter         guards: 431 / 400 / 413
//!                         route (404), provider (503)
//!                         read the body (≤ max), then
//!                         drive attempts ──────────────► upstream_peer           async DNS → HttpPeer
//!                                                        upstream_request_filter path, Host, strip
//!                                                                                client credentials,
//!                                                                                sign, tenant headers
//!                                                        connected_to_upstream   pool reuse metric
//!                         forward response tasks ◄────── (Pingora proxies h1/h2, pooled)
//!  fail_to_proxy          errors before any response     fail_to_proxy: silent, the
//!                         (provider-shaped JSON)         exchange answers instead
//!  logging                metrics, log line
//! ```
//!
//! A request reads one snapshot (one `ArcSwap` load) and keeps it to the end, including
//! in its attempts, so a reload never mixes two configs in one request.

pub mod attempt;
pub mod errors;
pub mod guards;

use crate::auth::{AcquireError, Auth, Credential, SignContext, Verdict};
use crate::config::compile::{Guards, Target};
use crate::config::{ConfigStore, Snapshot};
use crate::forward::ForwardConn;
use crate::observability::audit::{AuditLog, Record as AuditRecord};
use crate::observability::metrics::{Metrics, STATUS_CLIENT_CLOSED};
use crate::observability::otlp::Spans;
use crate::observability::trace::{self, TraceContext};
use crate::resilience::{self, breaker::Admission};
use crate::routing;
use crate::tenant::{Tenant, TenantError};
use crate::upstream::dns::{Candidates, Resolver};
use crate::upstream::Provider;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use errors::{Cause, ErrorStyle, SidecarError};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an exchange hands to each of its attempts.
pub struct AttemptPlan {
    pub provider: Arc<Provider>,
    /// The credentials in use (the tenant's own, or the provider's).
    pub auth: Arc<Auth>,
    /// What this attempt signs with (a key of the pool, a token).
    pub credential: Credential,
    pub tenant: Tenant,
    /// Path and query to request upstream.
    pub uri: http::Uri,
    /// The whole request body (shared, not copied, between attempts).
    pub body: Bytes,
    /// Lowercase hex SHA-256 of `body` when the signer needs it, else empty.
    pub body_sha256: Arc<str>,
    /// Do not forward a 401: the exchange refreshes the token and tries once more.
    pub hold_back_401: bool,
    /// Decides, when the response header arrives, whether another attempt will follow
    /// (then the response is held back instead of forwarded).
    pub gate: RetryGate,
    pub report: AttemptReport,
    /// The exchange's trace, and this attempt's span in it.
    pub trace: TraceContext,
    pub span: [u8; 8],
    /// Keep this many bytes of the response body for the audit log (0: none).
    pub capture: usize,
}

impl AttemptPlan {
    /// The pool and the key this attempt signs with, if it uses a pool.
    pub fn pool_key(&self) -> Option<(&crate::auth::KeyPool, usize)> {
        match self.credential {
            Credential::Key(i) => self.auth.keys.as_ref().map(|p| (p, i)),
            _ => None,
        }
    }
}

/// What follows a held-back response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Retry { wait: Duration },
    Fallback,
}

/// The retry decision for one attempt's answer, made the moment its header arrives: a
/// response is held back only if another attempt is certain to follow, so the client
/// always gets either the provider's answer or the next attempt's.
pub struct RetryGate {
    snapshot: Arc<Snapshot>,
    route: usize,
    /// Retries left on this target.
    retries_left: u32,
    /// A later target (fallback) is ready.
    fallback_left: bool,
    /// A 401/403 may be retried with another key of the pool.
    other_keys: bool,
    deadline: tokio::time::Instant,
    decision: std::sync::OnceLock<NextStep>,
}

impl RetryGate {
    /// Whether to hold back an answer with `status` (and commit to the next step).
    /// `key`: the pool and the key this attempt signed with, if it used a pool.
    pub fn hold(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        key: Option<(&crate::auth::KeyPool, usize)>,
    ) -> bool {
        let retryable = resilience::retry::retryable_status(status)
            || (self.other_keys && matches!(status, 401 | 403));
        if !retryable {
            return false;
        }
        let wait = resilience::retry::wait_after(
            status,
            retry_after,
            key.map(|(pool, i)| pool.others(i)),
            key.map_or(Duration::ZERO, |(pool, _)| pool.cooldown(retry_after)),
        );
        if let Some(wait) = wait.and_then(|w| self.wait(w)) {
            return self.decision.set(NextStep::Retry { wait }).is_ok();
        }
        self.fallback_left && self.decision.set(NextStep::Fallback).is_ok()
    }

    /// The wait before a retry, if one is allowed now (attempts left, `Retry-After`
    /// within the cap, time left, and the retry budget — which this withdraws from).
    fn retry_wait(&self, retry_after: Option<Duration>) -> Option<Duration> {
        self.wait(retry_after.map_or(resilience::retry::Wait::Backoff, |r| {
            resilience::retry::Wait::AtLeast(r)
        }))
    }

    fn wait(&self, w: resilience::retry::Wait) -> Option<Duration> {
        use resilience::retry::Wait;
        let policy = &self.snapshot.plans.get(self.route)?.retry;
        if self.retries_left == 0 {
            return None;
        }
        let n = policy.max_attempts.saturating_sub(self.retries_left);
        let wait = match w {
            Wait::Now => Duration::ZERO,
            Wait::AtLeast(r) if r > policy.retry_after_max => return None,
            Wait::AtLeast(r) => policy.backoff(n, Some(r)),
            Wait::Backoff => policy.backoff(n, None),
        };
        if tokio::time::Instant::now() + wait >= self.deadline || !policy.budget.withdraw() {
            return None;
        }
        Some(wait)
    }

    pub fn decision(&self) -> Option<NextStep> {
        self.decision.get().copied()
    }
}

/// Facts an attempt reports back to its exchange.
#[derive(Default)]
pub struct AttemptReport {
    stale_connection: AtomicBool,
    /// Token usage read from the response as it passed (set when the attempt ends).
    usage: std::sync::OnceLock<crate::usage::Usage>,
    /// The provider's status and `Retry-After`, once its response header arrived.
    answer: std::sync::OnceLock<(u16, Option<Duration>)>,
    /// The model the response names.
    model: std::sync::OnceLock<String>,
    /// Why the model stopped, as the response said.
    finish_reasons: std::sync::OnceLock<Box<[Box<str>]>>,
    /// When the first body byte of the response arrived.
    first_body: std::sync::OnceLock<Instant>,
    /// The response is a stream (SSE, event-stream, NDJSON).
    streaming: AtomicBool,
    /// The start of the response body, for the audit log (only with `capture`), and
    /// whether it is all of it so far.
    captured: parking_lot::Mutex<(Vec<u8>, bool)>,
}

impl AttemptReport {
    pub fn stale_connection(&self) -> bool {
        self.stale_connection.load(Ordering::Relaxed)
    }

    pub fn set_answer(&self, status: u16, retry_after: Option<Duration>) {
        let _ = self.answer.set((status, retry_after));
    }

    pub fn answer(&self) -> Option<(u16, Option<Duration>)> {
        self.answer.get().copied()
    }

    pub fn set_usage(&self, u: crate::usage::Usage) {
        let _ = self.usage.set(u);
    }

    /// Records what the response's parser read: usage (`complete`: the body ended) and
    /// the model it named.
    pub fn settle(&self, p: &mut crate::usage::UsageParser, complete: bool) {
        self.set_usage(p.finish(complete));
        if let Some(m) = p.model() {
            let _ = self
                .model
                .set(crate::observability::genai::model_name(m).to_string());
        }
        if !p.finish_reasons().is_empty() {
            let _ = self.finish_reasons.set(p.finish_reasons().into());
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.model.get().map(String::as_str)
    }

    /// Notes a response body byte: the clock is read for the first one only.
    /// Keeps the start of the response body for the audit log, up to `cap` bytes.
    pub fn capture(&self, chunk: &[u8], cap: usize) {
        let mut c = self.captured.lock();
        let room = cap.saturating_sub(c.0.len());
        if chunk.len() > room {
            c.1 = true; // cut
        }
        c.0.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    /// The captured body, and whether it is complete.
    fn captured(&self) -> (Bytes, bool) {
        let mut c = self.captured.lock();
        let cut = c.1;
        (Bytes::from(std::mem::take(&mut c.0)), !cut)
    }

    pub fn body_seen(&self) {
        if self.first_body.get().is_none() {
            let _ = self.first_body.set(Instant::now());
        }
    }

    pub fn first_body_at(&self) -> Option<Instant> {
        self.first_body.get().copied()
    }

    pub fn set_streaming(&self, yes: bool) {
        self.streaming.store(yes, Ordering::Relaxed);
    }

    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> Option<crate::usage::Usage> {
        self.usage.get().copied()
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    snapshot: Option<Arc<Snapshot>>,
    role: Role,
}

// One per request, inside the request's own future; boxing the exchange would only add
// an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Role {
    Exchange(ExchangeState),
    Attempt(AttemptState),
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

pub struct AttemptState {
    plan: Arc<AttemptPlan>,
    candidates: Option<Candidates>,
    tries: usize,
    /// When `upstream_peer` chose the peer (the pool wait starts).
    peer_at: Option<Instant>,
}

/// Stale pooled connections are retried at most this many times per exchange.
const MAX_STALE_RETRIES: u32 = 2;

/// Reading the request body: the client must keep sending at least this often.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SidecarProxy {
    store: Arc<ConfigStore>,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
    spans: Option<Arc<Spans>>,
}

impl SidecarProxy {
    pub fn new(
        store: Arc<ConfigStore>,
        resolver: Arc<Resolver>,
        audit: Option<Arc<AuditLog>>,
        spans: Option<Arc<Spans>>,
    ) -> SidecarProxy {
        let metrics = store.metrics().clone();
        SidecarProxy {
            store,
            resolver,
            metrics,
            audit,
            spans,
        }
    }

    async fn answer(
        &self,
        session: &mut Session,
        x: &mut ExchangeState,
        style: ErrorStyle,
        err: SidecarError,
        keepalive: bool,
    ) -> Result<bool> {
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

    /// The client-facing side of a request. Always answers the client itself (returns
    /// `Ok(true)`) except when the connection has to be cut (`Err`).
    async fn exchange(
        &self,
        session: &mut Session,
        snap: &Arc<Snapshot>,
        x: &mut ExchangeState,
        started: Instant,
    ) -> Result<bool> {
        x.trace = Some(TraceContext::from_headers(&session.req_header().headers));
        x.auditing = self.audit.is_some();
        let raw_h1 = session
            .downstream_session
            .as_http1()
            .map(|_| session.downstream_session.to_h1_raw());
        let req = session.req_header();
        if let Err(e) = guards::check(req, raw_h1.as_deref(), &snap.guards) {
            let style = ErrorStyle::guess(req);
            // The body (if any) is left unread: close the connection after answering.
            return self.answer(session, x, style, e, false).await;
        }

        // A request that came through the forward listener (HTTPS_PROXY) routes by the
        // host it was intercepted for, and only to routes that match by host.
        let forwarded = session
            .digest()
            .and_then(|d| d.proxy_digest.clone())
            .filter(|d| d.user_data.is_some());
        let fwd = forwarded.as_deref().and_then(ForwardConn::of);
        let host = routing::request_host(req);
        let path = req.uri.path();
        let found = match fwd {
            None => snap.routes.find(host, path),
            Some(f) => {
                if !host.is_some_and(|h| h.eq_ignore_ascii_case(&f.host)) {
                    let style = ErrorStyle::guess(req);
                    let msg = format!(
                        "this connection was opened (CONNECT) for {}; the request is for {}",
                        f.host,
                        host.unwrap_or("no host")
                    );
                    return self
                        .answer(
                            session,
                            x,
                            style,
                            SidecarError::new(Cause::Misdirected, msg),
                            false,
                        )
                        .await;
                }
                snap.routes.find_intercepted(&f.host, path)
            }
        };
        let Some(route) = found else {
            let style = ErrorStyle::guess(req);
            let msg = format!("no route on this sidecar matches {} {}", req.method, path);
            let keep = session.is_body_empty();
            return self
                .answer(
                    session,
                    x,
                    style,
                    SidecarError::new(Cause::NoRoute, msg),
                    keep,
                )
                .await;
        };
        x.route = Some(route.index);
        let provider = match snap.target(route) {
            Target::Ready(p) => p.clone(),
            Target::Disabled { reason, style } => {
                let (keep, style) = (session.is_body_empty(), *style);
                let e = SidecarError::new(Cause::ProviderDisabled, reason.to_string());
                return self.answer(session, x, style, e, keep).await;
            }
        };
        let style = provider.style;
        x.style = Some(style);
        if let Err(e) = guards::check_declared_length(session.req_header(), &snap.guards) {
            return self.answer(session, x, style, e, false).await;
        }

        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // An authenticated proxy user's tenant wins over the other ways of naming one.
        let resolved = match fwd.and_then(|f| f.tenant.as_deref()) {
            Some(id) => snap.tenants.by_id(id).ok_or(TenantError::UnknownTenant),
            None => snap.tenants.resolve(session.req_header(), peer),
        };
        let tenant = match resolved {
            Ok(t) => t.clone(),
            Err(e) => {
                let keep = session.is_body_empty();
                return self.answer(session, x, style, tenant_error(e), keep).await;
            }
        };
        x.tenant = Some(tenant.id.clone());

        let uri = {
            let req = session.req_header();
            let up = route.upstream_path(req.uri.path(), req.uri.query());
            match up.parse::<http::Uri>() {
                Ok(u) => u,
                Err(_) => {
                    let e =
                        SidecarError::new(Cause::BadPath, "the request path cannot be forwarded");
                    return self.answer(session, x, style, e, false).await;
                }
            }
        };

        let expects_continue = session
            .req_header()
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.downstream_session.write_continue_response().await?;
        }
        let body = match read_body(session, &snap.guards).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                let e = guards::body_too_large(snap.guards.max_body_bytes);
                return self.answer(session, x, style, e, false).await;
            }
            Err(BodyError::Timeout) => {
                let e = SidecarError::new(
                    Cause::ClientTimeout,
                    format!(
                        "the request body stalled for {} (request.body_timeout)",
                        humantime::format_duration(snap.guards.body_timeout)
                    ),
                );
                return self.answer(session, x, style, e, false).await;
            }
            Err(BodyError::Malformed(why)) => {
                let e = SidecarError::new(
                    Cause::BadFraming,
                    format!("the request body is not valid chunked encoding ({why})"),
                );
                return self.answer(session, x, style, e, false).await;
            }
            Err(BodyError::Client(e)) => {
                x.status = STATUS_CLIENT_CLOSED;
                x.aborted = true;
                return Err(e);
            }
        };
        // HTTP/2 requests may omit Content-Length; the attempt frames its body by it.
        if session.req_header().version == http::Version::HTTP_2 {
            session
                .req_header_mut()
                .insert_header(CONTENT_LENGTH, body.len().to_string())?;
        }

        if x.auditing
            && snap.plans[route.index]
                .audit_bodies
                .is_some_and(|b| b.request)
        {
            x.audit_request = Some(body.clone());
        }

        // The body's model (a bounded label value) and output cap, in one parse.
        let fields = crate::usage::RequestFields::parse(session.req_header().uri.path(), &body);
        x.model_label = Some(self.metrics.genai().models.label(fields.model.as_deref()));
        x.model = fields
            .model
            .as_deref()
            .map(|m| Arc::from(crate::observability::genai::model_name(m)));
        x.estimate = snap.limits.estimate(body.len(), fields.max_output);
        drop(fields);

        // Limits: admitted (reserving tokens, taking a slot) or 429.
        let mut body = body;
        if !snap.limits.is_empty() {
            let subject = snap.limits.subject(tenant.index, route.index);
            match snap.limits.admit_estimate(subject, x.estimate).await {
                Ok(held) => {
                    if let Some(cap) = held.clamp_to {
                        if let Some(b) = with_max_tokens(&body, cap) {
                            body = b;
                        }
                    }
                    x.held = Some(held);
                }
                Err(denied) => {
                    self.metrics.limited(&denied.rule, denied.kind);
                    x.note(|| format!("limit {}: refused", denied.rule).into());
                    let e = limit_error(&denied, style);
                    return self.answer(session, x, style, e, true).await;
                }
            }
        }

        // The route's provider first, then its fallbacks; `total` counts from the
        // request's arrival, upload time and every attempt included.
        let deadline = tokio::time::Instant::from_std(started) + provider.timeouts.total;
        let plan = &snap.plans[route.index];
        plan.retry.budget.deposit();
        let mut last_error = None;
        for ti in 0..=plan.fallbacks.len() {
            let fallback_left = plan.ready_after(ti);
            let target = if ti == 0 {
                Some((provider.clone(), uri.clone(), body.clone()))
            } else {
                let fb = &plan.fallbacks[ti - 1];
                match &fb.target {
                    Target::Ready(p) => {
                        self.metrics.fallback(&route.name, &fb.provider);
                        x.note(|| format!("fallback to {}", fb.provider).into());
                        let req = session.req_header();
                        let up = route.fallback_path(&fb.mount, req.uri.path(), req.uri.query());
                        let body = match &fb.model {
                            Some(m) => with_model(&body, m).unwrap_or_else(|| body.clone()),
                            None => body.clone(),
                        };
                        up.parse::<http::Uri>().ok().map(|u| (p.clone(), u, body))
                    }
                    Target::Disabled { .. } => None,
                }
            };
            let Some((target, uri, target_body)) = target else {
                continue;
            };
            tracing::debug!(provider = %target.name, target = ti, "trying target");
            let end = self
                .try_target(
                    session,
                    snap,
                    x,
                    route.index,
                    &route.name,
                    &target,
                    &tenant,
                    uri,
                    target_body,
                    deadline,
                    fallback_left,
                )
                .await;
            match end {
                TargetEnd::Done(r) => return r,
                TargetEnd::Next(e) => last_error = Some(e),
            }
        }
        let e = last_error.unwrap_or_else(|| {
            SidecarError::new(Cause::Internal, "no provider could take the request")
        });
        self.answer(session, x, style, e, true).await
    }

    /// Attempts on one target (the route's provider or a fallback), with retries.
    #[allow(clippy::too_many_arguments)]
    async fn try_target(
        &self,
        session: &mut Session,
        snap: &Arc<Snapshot>,
        x: &mut ExchangeState,
        route_index: usize,
        route_name: &str,
        provider: &Arc<Provider>,
        tenant: &Tenant,
        uri: http::Uri,
        body: Bytes,
        deadline: tokio::time::Instant,
        fallback_left: bool,
    ) -> TargetEnd {
        let policy = &snap.plans[route_index].retry;
        let auth = provider.auth_for(tenant.index).clone();
        let body_sha256: Arc<str> = if auth.signer.needs_body_hash() {
            Arc::from(body_sha256_hex(&body).await)
        } else {
            Arc::from("")
        };
        let other_keys = auth.keys.as_ref().is_some_and(|k| k.has_alternatives());
        let mut attempts = 0u32;
        let mut stale_retries = 0;
        let mut token_replayed = false;
        // Bytes of the answer kept for the audit log: the cap, plus room for a secret
        // that starts before the cap to be seen whole (and masked) when redacted.
        let capture = match (&snap.redactor, snap.plans[route_index].audit_bodies) {
            (Some(r), Some(b)) if x.auditing && b.response => {
                b.max_bytes + r.longest_secret() + 256
            }
            _ => 0,
        };
        loop {
            let admission = provider
                .breaker
                .as_ref()
                .map_or(Admission::Allowed, |b| b.admit());
            if let Admission::Rejected { retry_in } = admission {
                x.note(|| format!("breaker open: {}", provider.name).into());
                let mut e = SidecarError::new(
                    Cause::CircuitOpen,
                    format!(
                        "provider \"{}\" is failing; requests to it are paused for a while (circuit breaker open)",
                        provider.name
                    ),
                );
                e.retry_after_secs = Some(retry_in.as_secs_f64().ceil().max(1.0) as u64);
                return TargetEnd::Next(e);
            }
            let record = |ok: bool| {
                if let Some(b) = &provider.breaker {
                    b.record(admission, ok);
                }
            };
            attempts += 1;
            x.attempts += 1;
            // A key at its key-scoped limit is passed over for the next one.
            let mut denied: Option<crate::limits::Denied> = None;
            let mut tried: Vec<usize> = Vec::new();
            let (credential, key_held) = loop {
                let credential = match auth.acquire_except(&tried).await {
                    Ok(c) => c,
                    Err(AcquireError::KeysUnavailable {
                        detail,
                        retry_after,
                        ..
                    }) => {
                        record(true);
                        let mut e = SidecarError::new(
                            Cause::KeysUnavailable,
                            format!("every key for provider \"{}\" is unavailable ({detail}); try again later", provider.name),
                        );
                        e.retry_after_secs = Some(retry_after.as_secs_f64().ceil() as u64);
                        return TargetEnd::Next(e);
                    }
                    Err(AcquireError::Token { reason, .. }) => {
                        record(true);
                        tracing::warn!(provider = %provider.name, %reason, "no access token");
                        let mut e = SidecarError::new(
                            Cause::TokenUnavailable,
                            format!(
                                "cannot get an access token for provider \"{}\" right now",
                                provider.name
                            ),
                        );
                        e.retry_after_secs = Some(1);
                        return TargetEnd::Next(e);
                    }
                };
                match self
                    .key_limits(snap, x, route_index, provider, tenant, &credential)
                    .await
                {
                    Ok(held) => break (credential, held),
                    Err(d) => {
                        // the soonest any key frees up
                        let d = match denied.take() {
                            Some(best) if best.retry_after <= d.retry_after => best,
                            _ => d,
                        };
                        let other = match credential {
                            Credential::Key(i)
                                if tried.len() + 1 < auth.keys.as_ref().map_or(1, |k| k.len()) =>
                            {
                                tried.push(i);
                                true
                            }
                            _ => false,
                        };
                        x.note(|| format!("key limit {}: key passed over", d.rule).into());
                        if !other {
                            record(true);
                            self.metrics.limited(&d.rule, d.kind);
                            return TargetEnd::Next(limit_error(&d, provider.style));
                        }
                        denied = Some(d);
                    }
                }
            };
            x.key = auth.key_name(&credential);
            let retries_left = policy.max_attempts.saturating_sub(attempts);
            let plan = Arc::new(AttemptPlan {
                provider: provider.clone(),
                auth: auth.clone(),
                hold_back_401: matches!(credential, Credential::Token(_)) && !token_replayed,
                gate: RetryGate {
                    snapshot: snap.clone(),
                    route: route_index,
                    retries_left,
                    fallback_left,
                    other_keys,
                    deadline,
                    decision: std::sync::OnceLock::new(),
                },
                credential: credential.clone(),
                tenant: tenant.clone(),
                uri: uri.clone(),
                body: body.clone(),
                body_sha256: body_sha256.clone(),
                report: AttemptReport::default(),
                trace: x.trace.clone().unwrap_or_else(TraceContext::root),
                span: trace::new_span_id(),
                capture,
            });
            let attempt_start = std::time::SystemTime::now();
            let outcome =
                attempt::run(session, plan.clone(), &body, &provider.timeouts, deadline).await;
            if let Some(spans) = &self.spans {
                self.export_span(spans, &plan, &outcome, attempt_start, route_name, x);
            }
            if let Some((status, retry_after)) = plan.report.answer() {
                let verdict = auth.feedback(&credential, status, retry_after);
                if verdict == Verdict::TokenRejected
                    && matches!(outcome, attempt::Outcome::HeldBack { .. })
                    && plan.gate.decision().is_none()
                {
                    record(true);
                    token_replayed = true;
                    x.note(|| "access token rejected: refreshed, sent again".into());
                    continue;
                }
            }
            if matches!(
                outcome,
                attempt::Outcome::Complete { .. }
                    | attempt::Outcome::Broken { .. }
                    | attempt::Outcome::ClientGone { .. }
            ) {
                x.served = Some(Served {
                    provider: provider.name.clone(),
                    gen_ai_provider: crate::observability::genai::provider_name(provider.kind),
                    response_model: plan.report.model().map(Arc::from),
                    response_model_label: plan
                        .report
                        .model()
                        .map(|m| self.metrics.genai().models.label(Some(m))),
                    first_body: plan.report.first_body_at(),
                    streaming: plan.report.streaming(),
                });
                // this attempt's answer is the client's: settle its key limits at the end
                if let Some(h) = key_held.and_then(crate::limits::AttemptHeld::keep) {
                    match &mut x.held {
                        Some(held) => held.absorb(h),
                        None => x.held = Some(h),
                    }
                }
            }
            match outcome {
                attempt::Outcome::Complete { status } => {
                    record(status < 500);
                    x.status = status;
                    if capture > 0 {
                        x.audit_response = Some(plan.report.captured());
                    }
                    if let Some(u) = plan.report.usage() {
                        self.count_tokens(snap, route_index, route_name, provider, &u);
                        x.usage = Some(u);
                    }
                    return TargetEnd::Done(Ok(true));
                }
                attempt::Outcome::HeldBack { status } => {
                    record(status < 500);
                    match plan.gate.decision() {
                        Some(NextStep::Retry { wait }) => {
                            let reason = resilience::retry::reason_for_status(status);
                            self.metrics.retry(route_name, reason);
                            x.note(|| format!("retry after {reason}").into());
                            tracing::debug!(provider = %provider.name, status, ?wait, "retrying");
                            if !wait.is_zero() {
                                tokio::time::sleep(wait).await;
                            }
                            continue;
                        }
                        Some(NextStep::Fallback) => {
                            x.note(|| {
                                format!("{} answered {status}: next target", provider.name).into()
                            });
                            return TargetEnd::Next(SidecarError::new(
                                Cause::UpstreamProtocol,
                                format!("provider \"{}\" answered {status}", provider.name),
                            ));
                        }
                        None => {
                            // Only a token's 401 is held back without a decision, and
                            // that always replays above.
                            let e = SidecarError::new(
                                Cause::Internal,
                                format!(
                                    "the provider answered {status} and the retry was not possible"
                                ),
                            );
                            return TargetEnd::Next(e);
                        }
                    }
                }
                attempt::Outcome::NotStarted {
                    error,
                    stale_connection,
                } => {
                    let upstream_fault = resilience::retry::retryable_cause(error.cause)
                        || matches!(
                            error.cause,
                            Cause::UpstreamTls | Cause::FirstByteTimeout | Cause::UpstreamProtocol
                        );
                    if stale_connection && stale_retries < MAX_STALE_RETRIES {
                        record(true);
                        stale_retries += 1;
                        attempts -= 1;
                        x.note(|| "stale pooled connection: sent again".into());
                        tracing::debug!(provider = %provider.name, "pooled connection was closed by the provider; retrying on a fresh one");
                        continue;
                    }
                    record(!upstream_fault);
                    if resilience::retry::retryable_cause(error.cause) {
                        if let Some(wait) = plan.gate.retry_wait(None) {
                            let reason = resilience::retry::reason_for_cause(error.cause);
                            self.metrics.retry(route_name, reason);
                            x.note(|| format!("retry after {reason}").into());
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                    return TargetEnd::Next(error);
                }
                attempt::Outcome::Broken { status, cause } => {
                    record(false);
                    if capture > 0 {
                        x.audit_response = Some((plan.report.captured().0, false));
                    }
                    if let Some(u) = plan.report.usage() {
                        self.count_tokens(snap, route_index, route_name, provider, &u);
                        x.usage = Some(u);
                    }
                    x.status = status;
                    x.cause = Some(cause);
                    x.aborted = true;
                    return TargetEnd::Done(Err(Error::explain(
                        ErrorType::HTTPStatus(cause.status()),
                        format!(
                            "response from provider \"{}\" cut off: {}",
                            provider.name,
                            cause.as_str()
                        ),
                    )));
                }
                attempt::Outcome::ClientGone { status } => {
                    record(true);
                    x.status = status.unwrap_or(STATUS_CLIENT_CLOSED);
                    x.aborted = true;
                    let mut e = Error::new(ErrorType::ConnectionClosed);
                    e.esource = ErrorSource::Downstream;
                    return TargetEnd::Done(Err(e));
                }
            }
        }
    }
}

impl SidecarProxy {
    /// The per-call LLM metrics of a routed request.
    #[allow(clippy::too_many_arguments)]
    fn record_call(
        &self,
        snap: &Snapshot,
        route: &crate::routing::Route,
        x: &ExchangeState,
        path: &str,
        started: Instant,
        status: u16,
        elapsed: Duration,
    ) {
        use crate::observability::genai::{operation_name, Call};
        let (provider, gen_ai_provider) = answering_provider(snap, route, x)
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
    fn export_span(
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
    fn audit_record(
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
            .and_then(|i| snap.plans.get(i))
            .and_then(|p| p.audit_bodies)
            .map_or(0, |b| b.max_bytes);
        let req = session.req_header();
        let served = x.served.as_ref();
        let provider = route
            .and_then(|r| answering_provider(snap, r, x))
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

    /// Admits one attempt under the rules scoped by key, for the key it picked.
    async fn key_limits(
        &self,
        snap: &Snapshot,
        x: &ExchangeState,
        route_index: usize,
        provider: &Provider,
        tenant: &Tenant,
        credential: &Credential,
    ) -> std::result::Result<Option<crate::limits::AttemptHeld>, crate::limits::Denied> {
        let pool_key = match credential {
            Credential::Key(i) => Some(*i),
            _ => None,
        };
        let tenant_key = provider
            .tenant_auth
            .get(tenant.index)
            .is_some_and(Option::is_some);
        let Some(subject) = snap.limits.key_subject(
            snap.limits.subject(tenant.index, route_index),
            &provider.name,
            pool_key,
            tenant_key,
        ) else {
            return Ok(None);
        };
        snap.limits
            .admit_key(subject, x.estimate)
            .await
            .map(|h| Some(crate::limits::AttemptHeld::new(h)))
    }

    fn count_tokens(
        &self,
        snap: &Snapshot,
        route_index: usize,
        route_name: &str,
        provider: &Provider,
        u: &crate::usage::Usage,
    ) {
        match snap.routes.get(route_index) {
            Some(r) if r.metrics.provider() == &*provider.name => r.metrics.tokens(u),
            _ => self.metrics.tokens(route_name, &provider.name, u),
        }
    }
}

/// The provider whose answer the client got, else the route's own when it is ready:
/// its name and `gen_ai.provider.name`.
fn answering_provider<'a>(
    snap: &'a Snapshot,
    route: &crate::routing::Route,
    x: &'a ExchangeState,
) -> Option<(&'a Arc<str>, &'static str)> {
    match (&x.served, snap.targets.get(route.index)) {
        (Some(s), _) => Some((&s.provider, s.gen_ai_provider)),
        (None, Some(Target::Ready(p))) => {
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

/// How the attempts on one target ended.
enum TargetEnd {
    /// The exchange is over (answered, or the connection must be cut).
    Done(Result<bool>),
    /// Nothing reached the client: try the next target, or answer this error.
    Next(SidecarError),
}

/// A JSON object body edited by `f` and serialized again (None: not a JSON object).
fn edit_json(
    body: &Bytes,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    f(v.as_object_mut()?);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The JSON body with its output cap lowered to `cap` (token budget clamping): every
/// cap field the request used, else `max_tokens`.
fn with_max_tokens(body: &Bytes, cap: u64) -> Option<Bytes> {
    edit_json(body, |o| {
        let mut set = false;
        for k in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
            if o.contains_key(k) {
                o.insert(k.into(), cap.into());
                set = true;
            }
        }
        if !set {
            o.insert("max_tokens".into(), cap.into());
        }
    })
}

/// The 429 for a limit, with `Retry-After` and the provider's own rate-limit headers.
fn limit_error(d: &crate::limits::Denied, style: ErrorStyle) -> SidecarError {
    use crate::limits::DeniedKind;
    let (cause, message, figures) = match d.kind {
        DeniedKind::Requests { limit } => (
            Cause::RateLimited,
            format!("rate limit \"{}\" reached; try again later", d.rule),
            Some(("requests", limit, 0)),
        ),
        DeniedKind::Tokens {
            limit,
            remaining,
            needed,
        } => (
            Cause::TokenBudget,
            format!(
                "token budget \"{}\" exhausted: this request needs about {needed} tokens, {remaining} of {limit} are left",
                d.rule
            ),
            Some(("tokens", limit, remaining)),
        ),
        DeniedKind::BackendDown => (
            Cause::LimitsBackendDown,
            format!(
                "limit \"{}\" is shared through a backend that cannot be reached right now, and this sidecar's share is spent (on_backend_failure: deny)",
                d.rule
            ),
            None,
        ),
        DeniedKind::Concurrency { max } => (
            Cause::ConcurrencyLimited,
            format!(
                "concurrency limit \"{}\" reached ({max} requests at a time); try again shortly",
                d.rule
            ),
            None,
        ),
    };
    let mut e = SidecarError::new(cause, message);
    e.retry_after_secs = Some(d.retry_after.as_secs_f64().ceil().max(1.0) as u64);
    if let Some((what, limit, remaining)) = figures {
        let reset = d.retry_after;
        let names: [String; 3] = match style {
            ErrorStyle::OpenAi => [
                format!("x-ratelimit-limit-{what}"),
                format!("x-ratelimit-remaining-{what}"),
                format!("x-ratelimit-reset-{what}"),
            ],
            ErrorStyle::Anthropic => [
                format!("anthropic-ratelimit-{what}-limit"),
                format!("anthropic-ratelimit-{what}-remaining"),
                format!("anthropic-ratelimit-{what}-reset"),
            ],
        };
        let reset_value = match style {
            ErrorStyle::OpenAi => crate::limits::openai_duration(reset),
            ErrorStyle::Anthropic => httpdate_rfc3339(std::time::SystemTime::now() + reset),
        };
        for (name, value) in
            names
                .iter()
                .zip([limit.to_string(), remaining.to_string(), reset_value])
        {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                e.headers.push((n, v));
            }
        }
    }
    e
}

/// RFC 3339 in UTC, as Anthropic's `*-reset` headers use.
fn httpdate_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}

/// The JSON body with its top-level `model` replaced (for a fallback target).
fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    edit_json(body, |o| {
        o.insert("model".into(), serde_json::Value::from(model));
    })
}

/// Hex SHA-256 of a body, computed once per exchange. Large bodies are hashed on the
/// blocking pool so a 32 MiB upload does not stall the worker thread for ~20 ms.
async fn body_sha256_hex(body: &Bytes) -> String {
    use sha2::{Digest, Sha256};
    const INLINE_LIMIT: usize = 256 * 1024;
    if body.len() <= INLINE_LIMIT {
        return hex::encode(Sha256::digest(body));
    }
    let b = body.clone();
    match tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&b))).await {
        Ok(h) => h,
        Err(_) => hex::encode(Sha256::digest(body)),
    }
}

fn tenant_error(e: TenantError) -> SidecarError {
    match e {
        TenantError::MissingHeader(name) => SidecarError::new(
            Cause::TenantMissing,
            format!("this sidecar serves several tenants: send the {name} header"),
        ),
        TenantError::UntrustedSource => SidecarError::new(
            Cause::TenantUntrusted,
            "the tenant header is not accepted from this client address",
        ),
        TenantError::UnknownTenant => SidecarError::new(Cause::TenantUnknown, "unknown tenant"),
        TenantError::MissingKey => SidecarError::new(
            Cause::KeyMissing,
            "send the API key this sidecar issued to your app (as Authorization: Bearer, x-api-key or api-key)",
        ),
        TenantError::UnknownKey => SidecarError::new(Cause::KeyUnknown, "the API key is not valid for this sidecar"),
    }
}

enum BodyError {
    TooLarge,
    /// Silent for longer than `request.body_timeout`.
    Timeout,
    /// Bad chunked framing; Pingora's own description.
    Malformed(String),
    /// The client hung up or its connection failed.
    Client(Box<Error>),
}

impl BodyError {
    fn from_read(e: Box<Error>) -> BodyError {
        match e.etype() {
            ErrorType::ReadTimedout => BodyError::Timeout,
            // Pingora's `INVALID_CHUNK` and `INVALID_TRAILER_END` are crate-private; their
            // names are what they export.
            ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd")
            | ErrorType::InvalidHTTPHeader => BodyError::Malformed(
                e.context
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            ),
            _ => BodyError::Client(e),
        }
    }
}

/// Reads the whole request body, refusing it past `max` bytes. A body that arrives in one
/// piece (the usual case) is kept without copying.
async fn read_body(
    session: &mut Session,
    guards: &Guards,
) -> std::result::Result<Bytes, BodyError> {
    if session.is_body_empty() {
        return Ok(Bytes::new());
    }
    let max = guards.max_body_bytes;
    session
        .downstream_session
        .set_read_timeout(Some(guards.body_timeout));
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(BodyError::from_read)?
    {
        total += chunk.len();
        if total > max {
            return Err(BodyError::TooLarge);
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let cap = session
                    .req_header()
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    .unwrap_or(total * 2)
                    .min(max);
                let mut b = BytesMut::with_capacity(cap.max(total));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (Some(f), None) => f,
        (_, Some(b)) => b.freeze(),
        (None, None) => Bytes::new(),
    })
}

fn attempt_plan(session: &Session) -> Option<Arc<AttemptPlan>> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<Arc<AttemptPlan>>()
        .cloned()
}

#[async_trait]
impl ProxyHttp for SidecarProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snapshot: None,
            role: Role::Exchange(ExchangeState::default()),
        }
    }

    /// Runs first for every request. Exchanges load the config snapshot they will use to
    /// the end; attempts pick up the plan their exchange prepared.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::server::head_read();
        if let Some(plan) = attempt_plan(session) {
            // The subrequest parsed the client's original head; its body reader frames
            // by this header (read lazily, after this hook), and a fallback may send a
            // body of another length (the model rewritten).
            if !plan.body.is_empty()
                && session
                    .req_header()
                    .headers
                    .get(CONTENT_LENGTH)
                    .is_some_and(|v| {
                        v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok())
                            != Some(plan.body.len())
                    })
            {
                session
                    .req_header_mut()
                    .insert_header(CONTENT_LENGTH, plan.body.len().to_string())?;
            }
            ctx.role = Role::Attempt(AttemptState {
                plan,
                candidates: None,
                tries: 0,
                peer_at: None,
            });
            return Ok(());
        }
        ctx.snapshot = Some(self.store.load());
        if let Role::Exchange(x) = &mut ctx.role {
            x.in_flight = true;
            self.metrics.in_flight().inc();
        }
        Ok(())
    }

    /// Only exchanges spawn attempts.
    fn allow_spawning_subrequest(&self, _session: &Session, ctx: &Ctx) -> bool {
        matches!(ctx.role, Role::Exchange(_))
    }

    /// Exchange: guards, routing, body, attempts; always answers (returns `Ok(true)`) or
    /// cuts the connection (`Err`). Attempt: continue to the upstream (`Ok(false)`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(snap) = ctx.snapshot.clone() else {
            return Ok(false); // attempt
        };
        let started = ctx.started;
        match &mut ctx.role {
            Role::Attempt(_) => Ok(false),
            Role::Exchange(x) => self.exchange(session, &snap, x, started).await,
        }
    }

    /// Attempt: where to connect. Resolves the provider host (cached, asynchronous) and
    /// walks through its addresses when a connect fails.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Role::Attempt(a) = &mut ctx.role else {
            return Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer called outside an attempt",
            );
        };
        let provider = &a.plan.provider;
        if a.candidates.is_none() {
            let c = provider
                .endpoint
                .candidates(&self.resolver, provider.dns)
                .await
                .map_err(|e| {
                    Error::explain(ErrorType::Custom(attempt::DNS_ERROR), e.to_string())
                })?;
            a.candidates = Some(c);
        }
        let addr = a
            .candidates
            .as_ref()
            .and_then(|c| c.get(a.tries))
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectError,
                    format!("no more addresses to try for {}", provider.endpoint.host()),
                )
            })?;
        a.tries += 1;
        a.peer_at = Some(Instant::now());
        Ok(Box::new(provider.peer(addr)))
    }

    /// Attempt: a connect failure moves on to the host's next address, if any.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Role::Attempt(a) = &ctx.role {
            let more = a.candidates.as_ref().is_some_and(|c| a.tries < c.len());
            e.set_retry(more);
        }
        e
    }

    /// Attempt: the request as the provider sees it. Pingora has already removed
    /// hop-by-hop headers (including any named in `Connection`), so what is set here
    /// cannot be stripped by a client's `Connection: authorization`.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Role::Attempt(a) = &ctx.role else {
            return Ok(());
        };
        let plan = &a.plan;
        let p = &plan.provider;
        req.set_uri(plan.uri.clone());
        for name in p.strip.iter().chain(plan.tenant.strip.iter()) {
            req.remove_header(name);
        }
        if let Some(prefix) = plan.auth.signer.strip_prefix() {
            let doomed: Vec<http::HeaderName> = req
                .headers
                .keys()
                .filter(|n| n.as_str().starts_with(prefix))
                .cloned()
                .collect();
            for name in doomed {
                req.remove_header(&name);
            }
        }
        req.remove_header(&EXPECT);
        req.remove_header(&TRANSFER_ENCODING);
        let method_has_body = !matches!(
            req.method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
        );
        if !plan.body.is_empty() || method_has_body {
            req.insert_header(CONTENT_LENGTH, plan.body.len().to_string())?;
        } else {
            req.remove_header(&CONTENT_LENGTH);
        }
        req.insert_header(HOST, p.authority.clone())?;
        for (n, v) in &p.defaults {
            if !req.headers.contains_key(n) {
                req.insert_header(n.clone(), v.clone())?;
            }
        }
        for (n, v) in plan.tenant.inject.iter() {
            req.insert_header(n.clone(), v.clone())?;
        }
        for (n, v) in &p.headers {
            req.insert_header(n.clone(), v.clone())?;
        }
        // Trace context: a child span of the client's (or of a trace started here).
        req.insert_header(trace::TRACEPARENT, plan.trace.child_header(plan.span))?;
        match &plan.trace.state {
            Some(state) => req.insert_header(trace::TRACESTATE, state.clone())?,
            None => {
                req.remove_header(trace::TRACESTATE);
            }
        }
        // Signing comes last: SigV4 covers content-type and x-amzn-* as finally sent.
        let method = req.method.clone();
        let cx = SignContext {
            method: method.as_str(),
            path_and_query: plan.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            host: p.authority.to_str().unwrap_or_default(),
            body: &plan.body,
            body_sha256: &plan.body_sha256,
            now: std::time::SystemTime::now(),
            credential: &plan.credential,
        };
        plan.auth.signer.sign(req, &cx).map_err(|e| {
            tracing::error!(provider = %p.name, error = %e, "signing failed");
            Error::explain(ErrorType::Custom(attempt::SIGNING_ERROR), e.to_string())
        })?;
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Role::Attempt(a) = &ctx.role {
            let m = &a.plan.provider.metrics;
            m.connection(reused);
            if reused {
                if let Some(t) = a.peer_at {
                    m.pool_wait(t.elapsed());
                }
            } else {
                // The whole setup is timed here; Pingora times the TCP layer
                // (timing_digest[0]) when it can, and the TLS handshake is the rest.
                let total = a.peer_at.map(|t| t.elapsed());
                let tcp = digest.and_then(|d| {
                    d.timing_digest
                        .first()
                        .and_then(Option::as_ref)
                        .and_then(|t| t.establishment_duration)
                });
                let handshake = total.zip(tcp).map(|(t, c)| t.saturating_sub(c));
                m.established(total, a.plan.provider.tls.then_some(handshake));
            }
        }
        Ok(())
    }

    /// Attempt: never let Pingora replay the request itself (its replay buffer stops at
    /// 64 KiB); tell the exchange when a pooled connection turned out to be dead, it holds
    /// the whole body and tries again on a fresh connection.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        e.retry.decide_reuse(client_reused);
        if let Role::Attempt(a) = &ctx.role {
            let stale = client_reused && matches!(e.retry, RetryType::Decided(true));
            a.plan
                .report
                .stale_connection
                .store(stale, Ordering::Relaxed);
        }
        e.set_retry(false);
        e
    }

    /// Exchange: an error escaped `request_filter` (the response was cut, or the client
    /// left) or Pingora failed before it ran. Attempt: say nothing, the exchange answers.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let no_reuse = |code| FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        };
        match &mut ctx.role {
            Role::Attempt(_) => no_reuse(0),
            Role::Exchange(x) if x.aborted || x.status != 0 => no_reuse(x.status),
            Role::Exchange(x) => {
                let (cause, msg) = match e.esource() {
                    ErrorSource::Downstream => match e.etype() {
                        ErrorType::ReadError
                        | ErrorType::WriteError
                        | ErrorType::ConnectionClosed => {
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
                let style = x
                    .style
                    .unwrap_or_else(|| ErrorStyle::guess(session.req_header()));
                let _ = self
                    .answer(session, x, style, SidecarError::new(cause, msg), false)
                    .await;
                no_reuse(x.status)
            }
        }
    }

    /// Attempt failures are reported once, by their exchange.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        match &ctx.role {
            Role::Attempt(_) => true,
            Role::Exchange(x) => x.status != 0,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let Role::Exchange(x) = &mut ctx.role else {
            return;
        };
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
            self.record_call(snap, r, x, path, ctx.started, status, elapsed);
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

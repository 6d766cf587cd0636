//! The attempt loop: the route's targets in order (its provider, then its fallbacks),
//! each with its retries, behind its circuit breaker and its key pool. Each attempt's
//! plan says what to sign with and when to hold an answer back for a retry; the attempt
//! itself is [`super::attempt`].

use super::admission::Admitted;
use super::body;
use super::errors::{Cause, SidecarError};
use super::{attempt, ExchangeState, Served, SidecarProxy};
use crate::auth::{AcquireError, Auth, Credential, Verdict};
use crate::config::compile::{Endpoint, Route, Target, Translation};
use crate::config::Snapshot;
use crate::observability::metrics::STATUS_CLIENT_CLOSED;
use crate::observability::trace::{self, TraceContext};
use crate::resilience::step::{self, Resend, Step};
use crate::resilience::{self, breaker::Admission};
use crate::tenant::Tenant;
use crate::upstream::Provider;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
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
    /// Decides, when the response header arrives, whether another attempt will follow
    /// (then the response is held back instead of forwarded).
    pub gate: RetryGate,
    pub report: AttemptReport,
    /// The exchange's trace, and this attempt's span in it.
    pub trace: TraceContext,
    pub span: [u8; 8],
    /// Keep this many bytes of the response body for the audit log (0: none).
    pub capture: usize,
    /// The target speaks another API than the client: how its answer is translated.
    pub reply: Option<Arc<ReplyPlan>>,
}

/// How an attempt's answer is translated back to the client's API.
#[derive(Debug)]
pub struct ReplyPlan {
    pub front: crate::translate::Api,
    pub target: crate::translate::Api,
    pub spec: crate::translate::ReplySpec,
    /// Counts an answer that could not be translated.
    pub failed: prometheus::IntCounter,
}

/// The path each front API translates: the front's endpoint, by method and path end.
fn is_front_endpoint(front: crate::translate::Api, req: &pingora::http::RequestHeader) -> bool {
    let path = req.uri.path().trim_end_matches('/');
    req.method == http::Method::POST
        && match front {
            crate::translate::Api::AnthropicMessages => path.ends_with("/messages"),
            crate::translate::Api::OpenAiResponses => path.ends_with("/responses"),
            _ => path.ends_with("/chat/completions"),
        }
}

/// The API this request speaks, on a route whose clients speak `front`: OpenAI clients
/// may call Chat Completions or Responses.
fn request_front(
    front: crate::translate::Api,
    req: &pingora::http::RequestHeader,
) -> crate::translate::Api {
    use crate::translate::Api;
    if front == Api::OpenAiChat && is_front_endpoint(Api::OpenAiResponses, req) {
        Api::OpenAiResponses
    } else {
        front
    }
}

/// The request as the target's API: its path, its body, and how its answer comes back.
fn translate_request(
    req: &pingora::http::RequestHeader,
    t: &Translation,
    front: crate::translate::Api,
    body: &Bytes,
    model: Option<&str>,
    counter: impl Fn(&str) -> prometheus::IntCounter,
) -> std::result::Result<(http::Uri, Bytes, Option<Arc<ReplyPlan>>), SidecarError> {
    if !is_front_endpoint(front, req) {
        let what = match t.front {
            crate::translate::Api::AnthropicMessages => "POST …/v1/messages",
            _ => "POST …/chat/completions and POST …/responses",
        };
        return Err(SidecarError::new(
            Cause::NoRoute,
            format!(
                "this route translates {what} (and lists its models at GET …/models); {} {} has no translation",
                req.method,
                req.uri.path()
            ),
        ));
    }
    let r = crate::translate::request(front, t.target, body, model, &t.options).map_err(|e| {
        counter("untranslatable_request").inc();
        SidecarError::new(Cause::Untranslatable, e.message)
    })?;
    counter("translated").inc();
    let uri = match &t.endpoint {
        Endpoint::Fixed(u) => u.clone(),
        Endpoint::PerModel { base } => t
            .target
            .model_path(base, &r.model, r.stream)
            .parse::<http::Uri>()
            .map_err(|_| {
                SidecarError::new(
                    Cause::Untranslatable,
                    format!(
                        "the model \"{}\" does not make a valid endpoint path",
                        r.model
                    ),
                )
            })?,
    };
    Ok((
        uri,
        Bytes::from(r.body),
        Some(Arc::new(ReplyPlan {
            front,
            target: t.target,
            spec: r.reply,
            failed: counter("untranslatable_answer"),
        })),
    ))
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

/// The retry policy's gate for one attempt: where the attempts on its target stand,
/// and the step decided when its answer (or its failure) came. A response is held back
/// only if another attempt is certain to follow, so the client always gets either the
/// provider's answer or the next attempt's.
pub struct RetryGate {
    snapshot: Arc<Snapshot>,
    route: usize,
    gate: step::Gate,
    decision: std::sync::OnceLock<Step>,
}

impl RetryGate {
    /// Decides what follows `outcome` ([`step::next_step`]) once; a later call returns
    /// that decision without asking the policy (or its budget) again.
    pub fn decide(&self, outcome: &step::Outcome) -> Step {
        *self
            .decision
            .get_or_init(|| match self.snapshot.routes.get(self.route) {
                Some(r) => step::next_step(outcome, &self.gate, &r.action.plan.retry),
                None => Step::Forward,
            })
    }

    pub fn decision(&self) -> Option<Step> {
        self.decision.get().copied()
    }
}

/// Facts an attempt reports back to its exchange.
#[derive(Default)]
pub struct AttemptReport {
    /// Token usage read from the response as it passed (set when the attempt ends).
    usage: std::sync::OnceLock<crate::usage::Usage>,
    /// The provider's status and `Retry-After`, once its response header arrived.
    answer: std::sync::OnceLock<(u16, Option<Duration>)>,
    /// The model the response names.
    model: std::sync::OnceLock<String>,
    /// Why the model stopped, as the response said.
    pub(super) finish_reasons: std::sync::OnceLock<Box<[Box<str>]>>,
    /// When the first body byte of the response arrived.
    first_body: std::sync::OnceLock<Instant>,
    /// The response is a stream (SSE, event-stream, NDJSON).
    streaming: AtomicBool,
    /// The start of the response body, for the audit log (only with `capture`), and
    /// whether it is all of it so far.
    captured: parking_lot::Mutex<(Vec<u8>, bool)>,
}

impl AttemptReport {
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

    /// [`Self::settle`] for a parser that may not be there.
    pub fn settle_opt(&self, p: &mut Option<crate::usage::UsageParser>, complete: bool) {
        if let Some(p) = p.as_mut() {
            self.settle(p, complete);
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

/// How the attempts on one target ended.
pub enum TargetEnd {
    /// The exchange is over (answered, or the connection must be cut).
    Done(Result<bool>),
    /// Nothing reached the client: try the next target, or answer this error.
    Next(SidecarError),
}

impl SidecarProxy {
    /// The route's provider first, then its fallbacks, each with its retries, until one
    /// answers; `total` counts from the request's arrival, upload time and every attempt
    /// included.
    pub(super) async fn run_targets(
        &self,
        session: &mut Session,
        snap: &Arc<Snapshot>,
        x: &mut ExchangeState,
        admitted: Admitted<'_>,
        started: Instant,
    ) -> TargetEnd {
        let Admitted {
            route,
            provider,
            tenant,
            uri,
            body,
        } = admitted;
        let deadline = tokio::time::Instant::from_std(started)
            + route.action.timeouts.over(&provider.timeouts).total;
        let plan = &route.action.plan;
        plan.retry.budget.deposit();
        let mut last_error = None;
        for ti in 0..=plan.fallbacks.len() {
            let fallback_left = plan.ready_after(ti);
            let target = if ti == 0 {
                Some((
                    provider.clone(),
                    uri.clone(),
                    &route.action.models,
                    route.action.timeouts,
                    route.action.translation.clone(),
                ))
            } else {
                let fb = &plan.fallbacks[ti - 1];
                match &fb.target {
                    Target::Ready(p) => {
                        self.metrics.fallback(&route.name, &fb.provider);
                        x.note(|| format!("fallback to {}", fb.provider).into());
                        let req = session.req_header();
                        let up = route.fallback_path(&fb.mount, req.uri.path(), req.uri.query());
                        up.parse::<http::Uri>().ok().map(|u| {
                            (
                                p.clone(),
                                u,
                                &fb.models,
                                fb.timeouts,
                                fb.translation.clone(),
                            )
                        })
                    }
                    Target::Disabled { .. } => None,
                }
            };
            let Some((target, uri, models, target_timeouts, translation)) = target else {
                continue;
            };
            let model = models.pick(x.model.as_deref());
            x.sent_model = model.clone().or_else(|| x.model.clone());
            x.apis = translation.as_ref().and_then(|t| {
                let front = request_front(t.front, session.req_header());
                (front != t.target
                    && !(front == crate::translate::Api::OpenAiResponses && t.responses.is_some()))
                .then_some((front, t.target))
            });
            let timeouts = target_timeouts.over(&target.timeouts);
            // The route's provider has the exchange's deadline; a fallback with its own
            // `total` gets that long from now.
            let deadline = match target_timeouts.total {
                Some(t) if ti > 0 => tokio::time::Instant::now() + t,
                _ => deadline,
            };
            let front = translation
                .as_ref()
                .map(|t| request_front(t.front, session.req_header()));
            let passes = translation.as_ref().is_none_or(|t| {
                t.front == t.target
                    && !is_front_endpoint(t.front, session.req_header())
                    && front != Some(crate::translate::Api::OpenAiResponses)
            });
            let (uri, target_body, reply) = match &translation {
                _ if passes => {
                    let b = match &model {
                        Some(m) => body::with_model(&body, m).unwrap_or_else(|| body.clone()),
                        None => body.clone(),
                    };
                    (uri, b, None)
                }
                Some(t) if front == Some(t.target) => {
                    let b = match &model {
                        Some(m) => body::with_model(&body, m).unwrap_or_else(|| body.clone()),
                        None => body.clone(),
                    };
                    (t.endpoint.fixed().clone(), b, None)
                }
                // A Responses request to a provider that has the Responses API.
                Some(t)
                    if front == Some(crate::translate::Api::OpenAiResponses)
                        && t.responses.is_some() =>
                {
                    let b = match &model {
                        Some(m) => body::with_model(&body, m).unwrap_or_else(|| body.clone()),
                        None => body.clone(),
                    };
                    (
                        t.responses
                            .clone()
                            .unwrap_or_else(|| t.endpoint.fixed().clone()),
                        b,
                        None,
                    )
                }
                None => (uri, body.clone(), None),
                Some(t) => {
                    let front = front.unwrap_or(t.front);
                    let counter = |result: &str| {
                        self.metrics
                            .translation(&route.name, front, t.target, result)
                    };
                    match translate_request(
                        session.req_header(),
                        t,
                        front,
                        &body,
                        model.as_deref(),
                        counter,
                    ) {
                        Ok(r) => r,
                        Err(e) => {
                            x.note(|| format!("{}: {}", target.name, e.message).into());
                            last_error = Some(e);
                            continue;
                        }
                    }
                }
            };
            tracing::debug!(provider = %target.name, target = ti, "trying target");
            let end = self
                .try_target(
                    session,
                    snap,
                    x,
                    route,
                    &target,
                    &tenant,
                    uri,
                    target_body,
                    reply,
                    &timeouts,
                    deadline,
                    fallback_left,
                )
                .await;
            match end {
                TargetEnd::Done(r) => return TargetEnd::Done(r),
                TargetEnd::Next(e) => last_error = Some(e),
            }
        }
        TargetEnd::Next(last_error.unwrap_or_else(|| {
            SidecarError::new(Cause::Internal, "no provider could take the request")
        }))
    }

    /// Attempts on one target (the route's provider or a fallback), with retries.
    #[allow(clippy::too_many_arguments)]
    async fn try_target(
        &self,
        session: &mut Session,
        snap: &Arc<Snapshot>,
        x: &mut ExchangeState,
        route: &Route,
        provider: &Arc<Provider>,
        tenant: &Tenant,
        uri: http::Uri,
        body: Bytes,
        reply: Option<Arc<ReplyPlan>>,
        timeouts: &crate::upstream::Timeouts,
        deadline: tokio::time::Instant,
        fallback_left: bool,
    ) -> TargetEnd {
        let (route_index, route_name, route_plan) = (route.index, &*route.name, &route.action.plan);
        let auth = provider.auth_for(tenant.index).clone();
        let body_sha256: Arc<str> = if auth.signer.needs_body_hash() {
            Arc::from(body::sha256_hex(&body).await)
        } else {
            Arc::from("")
        };
        let other_keys = auth.keys.as_ref().is_some_and(|k| k.has_alternatives());
        let mut attempts = 0u32;
        let mut stale_resends = 0;
        let mut token_replayed = false;
        // Bytes of the answer kept for the audit log: the cap, plus room for a secret
        // that starts before the cap to be seen whole (and masked) when redacted.
        let capture = match (&snap.redactor, route_plan.audit_bodies) {
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
                            return TargetEnd::Next(super::admission::limit_error(
                                &d,
                                provider.style,
                            ));
                        }
                        denied = Some(d);
                    }
                }
            };
            x.key = auth.key_name(&credential);
            let plan = Arc::new(AttemptPlan {
                provider: provider.clone(),
                auth: auth.clone(),
                gate: RetryGate {
                    snapshot: snap.clone(),
                    route: route_index,
                    gate: step::Gate {
                        attempts,
                        stale_resends,
                        fresh_token: matches!(credential, Credential::Token(_)) && !token_replayed,
                        other_keys,
                        fallback_left,
                        deadline,
                    },
                    decision: std::sync::OnceLock::new(),
                },
                credential: credential.clone(),
                tenant: tenant.clone(),
                uri: uri.clone(),
                body: body.clone(),
                body_sha256: body_sha256.clone(),
                report: AttemptReport::default(),
                reply: reply.clone(),
                trace: x.trace.clone().unwrap_or_else(TraceContext::root),
                span: trace::new_span_id(),
                capture,
            });
            let attempt_start = std::time::SystemTime::now();
            let outcome =
                attempt::run(session, &self.upstream, plan.clone(), timeouts, deadline).await;
            if let Some(spans) = &self.spans {
                self.export_span(spans, &plan, &outcome, attempt_start, route_name, x);
            }
            if let Some((status, retry_after)) = plan.report.answer() {
                let verdict = auth.feedback(&credential, status, retry_after);
                if verdict == Verdict::TokenRejected
                    && matches!(outcome, attempt::Outcome::HeldBack { .. })
                    && plan.gate.decision() == Some(Step::Resend(Resend::RefreshedToken))
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
                        Some(Step::Retry { wait, reason }) => {
                            self.metrics.retry(route_name, reason);
                            x.note(|| format!("retry after {reason}").into());
                            tracing::debug!(provider = %provider.name, status, ?wait, "retrying");
                            if !wait.is_zero() {
                                tokio::time::sleep(wait).await;
                            }
                            continue;
                        }
                        Some(Step::Fallback) => {
                            x.note(|| {
                                format!("{} answered {status}: next target", provider.name).into()
                            });
                            return TargetEnd::Next(SidecarError::new(
                                Cause::UpstreamProtocol,
                                format!("provider \"{}\" answered {status}", provider.name),
                            ));
                        }
                        _ => {
                            // Only a token's 401 is resent, and that replays above.
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
                    let step = plan.gate.decide(&step::Outcome::Failed {
                        cause: error.cause,
                        stale_connection,
                    });
                    match step {
                        Step::Resend(Resend::StaleConnection) => {
                            record(true);
                            stale_resends += 1;
                            attempts -= 1;
                            x.note(|| "stale pooled connection: sent again".into());
                            tracing::debug!(provider = %provider.name, "pooled connection was closed by the provider; retrying on a fresh one");
                            continue;
                        }
                        Step::Retry { wait, reason } => {
                            record(!upstream_fault);
                            self.metrics.retry(route_name, reason);
                            x.note(|| format!("retry after {reason}").into());
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        _ => {
                            record(!upstream_fault);
                            return TargetEnd::Next(error);
                        }
                    }
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

//! Admission: everything decided before the first attempt. Guards (431 / 400 / 413), the
//! route (404, 421, 503 for a disabled provider), the tenant (400 / 401 / 403), the body
//! (≤ `request.max_body_bytes`, 408 when it stalls), then the limits (429). A request
//! leaves here admitted, with what its attempts need, or refused with the error the
//! client gets.

use super::body::{self, BodyError};
use super::errors::{Cause, ErrorStyle, SidecarError};
use super::{ExchangeState, SidecarProxy};
use crate::config::compile::Route;
use crate::config::compile::Target;
use crate::config::Snapshot;
use crate::forward::settings::ForwardConn;
use crate::observability::trace::TraceContext;
use crate::routing;
use crate::tenant::{Tenant, TenantError};
use crate::upstream::Provider;
use bytes::Bytes;
use http::header::EXPECT;
use pingora::proxy::Session;
use pingora::Error;
use std::sync::Arc;

/// What the attempts of an admitted request need.
pub struct Admitted<'s> {
    pub route: &'s Route,
    pub provider: Arc<Provider>,
    pub tenant: Tenant,
    /// Path and query at the route's provider.
    pub uri: http::Uri,
    /// The whole request body (its output cap lowered when a token budget said so).
    pub body: Bytes,
}

/// Why a request goes no further.
pub enum Refusal {
    /// The sidecar answers with this error.
    Answer(SidecarError),
    /// The client went away (or its connection failed) while sending the request.
    ClientGone(Box<Error>),
}

impl From<SidecarError> for Refusal {
    fn from(e: SidecarError) -> Refusal {
        Refusal::Answer(e)
    }
}

impl SidecarProxy {
    pub(super) async fn admit<'s>(
        &self,
        session: &mut Session,
        snap: &'s Snapshot,
        x: &mut ExchangeState,
    ) -> Result<Admitted<'s>, Refusal> {
        x.trace = Some(TraceContext::from_headers(&session.req_header().headers));
        x.auditing = self.audit.is_some();
        let raw_h1 = session
            .downstream_session
            .as_http1()
            .map(|_| session.downstream_session.to_h1_raw());
        let req = session.req_header();
        super::guards::check(req, raw_h1.as_deref(), &snap.guards)?;

        let fwd = forward_conn(session);
        let route = find_route(session, snap, fwd)?;
        x.route = Some(route.index);
        let provider = match &route.action.target {
            Target::Ready(p) => p.clone(),
            Target::Disabled { reason, style } => {
                x.style = Some(*style);
                return Err(SidecarError::new(Cause::ProviderDisabled, reason.to_string()).into());
            }
        };
        let style = route.action.front.map_or(provider.style, ErrorStyle::of);
        x.style = Some(style);
        super::guards::check_declared_length(session.req_header(), &snap.guards)?;

        let tenant = resolve_tenant(session, snap, fwd).map_err(tenant_error)?;
        x.tenant = Some(tenant.id.clone());

        let uri = {
            let req = session.req_header();
            let up = route.upstream_path(req.uri.path(), req.uri.query());
            up.parse::<http::Uri>().map_err(|_| {
                SidecarError::new(Cause::BadPath, "the request path cannot be forwarded")
            })?
        };

        let expects_continue = session
            .req_header()
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .downstream_session
                .write_continue_response()
                .await
                .map_err(Refusal::ClientGone)?;
        }
        let mut body = body::read(session, &snap.guards)
            .await
            .map_err(|e| body_error(e, &snap.guards))?;

        if x.auditing && route.action.plan.audit_bodies.is_some_and(|b| b.request) {
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
        if !snap.limits.is_empty() {
            let subject = snap.limits.subject(tenant.index, route.index);
            match snap.limits.admit_estimate(subject, x.estimate).await {
                Ok(held) => {
                    if let Some(cap) = held.clamp_to {
                        if let Some(b) = body::with_max_tokens(&body, cap) {
                            body = b;
                        }
                    }
                    x.held = Some(held);
                }
                Err(denied) => {
                    self.metrics.limited(&denied.rule, denied.kind);
                    x.note(|| format!("limit {}: refused", denied.rule).into());
                    return Err(limit_error(&denied, style).into());
                }
            }
        }
        Ok(Admitted {
            route,
            provider,
            tenant,
            uri,
            body,
        })
    }
}

/// The forward listener's connection (HTTPS_PROXY) the request came through, if any.
fn forward_conn(session: &Session) -> Option<&ForwardConn> {
    session
        .digest()
        .and_then(|d| d.proxy_digest.as_deref())
        .filter(|d| d.user_data.is_some())
        .and_then(ForwardConn::of)
}

/// The route for a request. One that came through the forward listener routes by the
/// host it was intercepted for, and only to routes that match by host.
fn find_route<'s>(
    session: &Session,
    snap: &'s Snapshot,
    fwd: Option<&ForwardConn>,
) -> Result<&'s Route, SidecarError> {
    let req = session.req_header();
    let host = routing::request_host(req);
    let path = req.uri.path();
    let found = match fwd {
        None => snap.routes.find(host, path),
        Some(f) => {
            if !host.is_some_and(|h| h.eq_ignore_ascii_case(&f.host)) {
                let msg = format!(
                    "this connection was opened (CONNECT) for {}; the request is for {}",
                    f.host,
                    host.unwrap_or("no host")
                );
                return Err(SidecarError::new(Cause::Misdirected, msg));
            }
            snap.routes.find_intercepted(&f.host, path)
        }
    };
    found.ok_or_else(|| {
        SidecarError::new(
            Cause::NoRoute,
            format!("no route on this sidecar matches {} {}", req.method, path),
        )
    })
}

/// An authenticated proxy user's tenant wins over the other ways of naming one.
fn resolve_tenant(
    session: &Session,
    snap: &Snapshot,
    fwd: Option<&ForwardConn>,
) -> Result<Tenant, TenantError> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    match fwd.and_then(|f| f.tenant.as_deref()) {
        Some(id) => snap.tenants.by_id(id).ok_or(TenantError::UnknownTenant),
        None => snap.tenants.resolve(session.req_header(), peer),
    }
    .cloned()
}

fn body_error(e: BodyError, guards: &crate::config::compile::Guards) -> Refusal {
    match e {
        BodyError::TooLarge => super::guards::body_too_large(guards.max_body_bytes).into(),
        BodyError::Timeout => SidecarError::new(
            Cause::ClientTimeout,
            format!(
                "the request body stalled for {} (request.body_timeout)",
                humantime::format_duration(guards.body_timeout)
            ),
        )
        .into(),
        BodyError::Malformed(why) => SidecarError::new(
            Cause::BadFraming,
            format!("the request body is not valid chunked encoding ({why})"),
        )
        .into(),
        BodyError::Client(e) => Refusal::ClientGone(e),
    }
}

/// The 400/401/403 for a tenant that cannot be resolved.
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

/// The 429 for a limit, with `Retry-After` and the provider's own rate-limit headers.
pub(super) fn limit_error(d: &crate::limits::Denied, style: ErrorStyle) -> SidecarError {
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

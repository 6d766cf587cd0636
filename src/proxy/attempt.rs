//! The attempt driver: one upstream try for an exchange.
//!
//! Pingora's proxy loop offers one read timer per request and no hook while the upstream
//! is silent, and it can replay at most 64 KiB of request body. So the exchange (the
//! client-facing session) does not proxy itself: it runs each upstream try as a Pingora
//! *subrequest* with the whole body preset, and drives it here:
//!
//! ```text
//!  client ◄──────────────────── exchange (main session) ◄── tasks ── attempt (subrequest)
//!   │ headers+body already read      │ this loop:                       │ upstream_peer,
//!   │                                │  - feeds the preset body         │ upstream_request_filter
//!   └── hang-up detected ───────────►│  - forwards Header/Body tasks    │ (sign, inject), pooled
//!                                    │  - first-byte / idle / total     │ connection, h1 or h2
//!                                    │    timers, precise               │
//!                                    │  - client hang-up cancels it     ▼
//!                                    └──────────────────────────────► provider
//! ```
//!
//! The subrequest runs inside this task (no spawn); dropping it cancels the upstream
//! request, which on HTTP/2 resets only that stream. Response bytes are written to the
//! client as each task arrives: nothing is buffered here.

use super::errors::{Cause, SidecarError};
use super::AttemptPlan;
use crate::upstream::Timeouts;
use bytes::Bytes;
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Bodies go to the subrequest in slices of this size.
const BODY_SLICE: usize = 256 * 1024;

/// A provider's response head (status line and headers) larger than this is a protocol
/// error (502): SDKs choke on far less (Python's h11 stops at 16 KiB by default), and a
/// head this size is a broken or hostile upstream, not an answer to pass on.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The status line plus the header lines.
fn response_head_bytes(h: &pingora::http::ResponseHeader) -> usize {
    15 + super::guards::fields_bytes(&h.headers)
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// The whole response reached the client.
    Complete { status: u16 },
    /// Nothing was sent to the client: the exchange may answer or try again.
    NotStarted {
        error: SidecarError,
        /// The failure hit a reused keep-alive connection before any response byte (the
        /// provider had closed it): a fresh connection is worth one more try.
        stale_connection: bool,
    },
    /// The response started but could not finish; the client connection must be cut.
    Broken { status: u16, cause: Cause },
    /// The client went away.
    ClientGone { status: Option<u16> },
    /// Nothing was forwarded: the provider answered 401 to a token the exchange will
    /// refresh, or a retryable status the plan's gate decided to retry or fall back on.
    HeldBack { status: u16 },
}

enum Event {
    SubDone,
    WantsBody(bool),
    BodyPermit(Option<tokio::sync::mpsc::OwnedPermit<HttpTask>>),
    ProxyError(Option<Box<Error>>),
    Task(Option<HttpTask>),
    Client(pingora::Result<Option<Bytes>>),
    Timer,
}

/// Runs one attempt. `deadline` is when the whole exchange must be over.
pub async fn run(
    session: &mut Session,
    plan: Arc<AttemptPlan>,
    body: &Bytes,
    t: &Timeouts,
    deadline: Instant,
) -> Outcome {
    let body_mode = if body.is_empty() {
        BodyMode::NoBody
    } else {
        BodyMode::ExpectBody
    };
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(body_mode)
        .user_ctx(Box::new(plan.clone()))
        .build();
    // Pingora hands the subrequest the request serialized as HTTP/1 text; an HTTP/2
    // request would be written with the version `HTTP/2`, which its HTTP/1 parser refuses.
    // Present it as HTTP/1.1 for that moment (the attempt's upstream protocol is chosen
    // by ALPN, not by this).
    let version = session.req_header().version;
    if version == http::Version::HTTP_2 {
        session.req_header_mut().set_version(http::Version::HTTP_11);
    }
    let created = session
        .subrequest_spawner
        .as_ref()
        .map(|spawner| spawner.create_subrequest(&session.downstream_session, sub_ctx));
    if version == http::Version::HTTP_2 {
        session.req_header_mut().set_version(version);
    }
    let Some((prepared, handle)) = created else {
        return internal("subrequests are not enabled for this session");
    };
    let tx = handle.tx;
    let mut rx = handle.rx;
    let mut wants_rx = handle.subreq_wants_body;
    let mut err_rx = handle.subreq_proxy_error;

    let mut sub = Box::pin(prepared.run());
    let mut sub_done = false;
    let mut wants_body = body.is_empty();
    let mut wants_closed = body.is_empty();
    let mut body_offset = 0usize;
    let mut body_sent = body.is_empty();
    let mut err_closed = false;
    let mut rx_closed = false;
    let mut proxy_error: Option<Box<Error>> = None;
    let mut status: Option<u16> = None;
    let mut response_done = false;
    let mut client_open = true;
    let mut usage: Option<crate::usage::UsageParser> = None;

    let mut clock = Limits::start(Instant::now(), t, deadline);
    let timer = tokio::time::sleep_until(clock.first_wake());
    tokio::pin!(timer);

    loop {
        if sub_done && rx_closed {
            break;
        }
        let event = tokio::select! {
            biased;
            _ = &mut sub, if !sub_done => Event::SubDone,
            r = &mut wants_rx, if !wants_closed => Event::WantsBody(r.is_ok()),
            p = tx.clone().reserve_owned(), if wants_body && !body_sent => Event::BodyPermit(p.ok()),
            e = &mut err_rx, if !err_closed => Event::ProxyError(e.ok()),
            task = rx.recv(), if !rx_closed => Event::Task(task),
            c = session.downstream_session.read_body_or_idle(true), if client_open && !response_done => Event::Client(c),
            _ = &mut timer, if !response_done || !sub_done => Event::Timer,
        };
        match event {
            Event::SubDone => sub_done = true,
            Event::WantsBody(ok) => {
                wants_closed = true;
                wants_body = ok;
                if !ok {
                    body_sent = true;
                }
            }
            Event::BodyPermit(None) => body_sent = true,
            Event::BodyPermit(Some(permit)) => {
                let end = (body_offset + BODY_SLICE).min(body.len());
                let slice = body.slice(body_offset..end);
                body_offset = end;
                let last = body_offset >= body.len();
                permit.send(HttpTask::Body(Some(slice), last));
                if last {
                    body_sent = true;
                }
            }
            Event::ProxyError(e) => {
                err_closed = true;
                if let Some(e) = e {
                    proxy_error.get_or_insert(e);
                }
            }
            Event::Task(None) => rx_closed = true,
            Event::Task(Some(first)) => {
                if response_done {
                    continue;
                }
                // Write everything already waiting in one go (a small response's header
                // and body become one write); never wait for more.
                let mut batch = Vec::with_capacity(4);
                let mut next = Some(first);
                while let Some(task) = next.take() {
                    match task {
                        HttpTask::Header(h, _) if h.status.is_informational() => {
                            // 1xx from the provider: the client's 100-continue was
                            // already answered by the exchange.
                        }
                        HttpTask::Failed(e) => {
                            proxy_error.get_or_insert(e);
                        }
                        HttpTask::Header(h, end) => {
                            let head = response_head_bytes(&h);
                            if head > MAX_RESPONSE_HEAD {
                                return Outcome::NotStarted {
                                    error: SidecarError::new(
                                        Cause::UpstreamProtocol,
                                        format!("the provider's response header is {head} bytes, above the sidecar's limit of {MAX_RESPONSE_HEAD}"),
                                    ),
                                    stale_connection: false,
                                };
                            }
                            let code = h.status.as_u16();
                            let retry_after = crate::auth::retry_after(&h.headers);
                            plan.report.set_answer(code, retry_after);
                            // Dropping the subrequest closes this upstream connection;
                            // the exchange refreshes the token and replays, retries, or
                            // moves on to a fallback.
                            if code == 401 && plan.hold_back_401 {
                                return Outcome::HeldBack { status: code };
                            }
                            if plan.gate.hold(code, retry_after, plan.pool_key()) {
                                return Outcome::HeldBack { status: code };
                            }
                            status = Some(code);
                            if code < 300 {
                                usage = h
                                    .headers
                                    .get(http::header::CONTENT_TYPE)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(crate::usage::UsageParser::for_content_type);
                                plan.report
                                    .set_streaming(usage.as_ref().is_some_and(|p| p.is_stream()));
                            }
                            batch.push(HttpTask::Header(h, end));
                        }
                        // Body before header cannot happen; be safe.
                        other if status.is_some() => {
                            // Read after the bytes are handed on, never holding them.
                            if let HttpTask::Body(Some(b), _) = &other {
                                if !b.is_empty() {
                                    plan.report.body_seen();
                                }
                                if let Some(p) = usage.as_mut() {
                                    p.feed(b);
                                }
                                if plan.capture > 0 {
                                    plan.report.capture(b, plan.capture);
                                }
                            }
                            batch.push(other)
                        }
                        _ => {}
                    }
                    next = match rx.try_recv() {
                        Ok(t) => Some(t),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            rx_closed = true;
                            None
                        }
                    };
                }
                if batch.is_empty() {
                    continue;
                }
                clock.activity(Instant::now());
                match session.write_response_tasks(batch).await {
                    Ok(done) => response_done |= done,
                    Err(_) => {
                        charge_seen(&mut usage, &plan);
                        return Outcome::ClientGone { status };
                    }
                }
            }
            Event::Client(r) => {
                match r {
                    // Unreachable once the body is read, but harmless: keep watching.
                    Ok(Some(_)) => {}
                    Ok(None) => client_open = false,
                    Err(_) => {
                        charge_seen(&mut usage, &plan);
                        return Outcome::ClientGone { status };
                    }
                }
            }
            Event::Timer => {
                if response_done {
                    // The client has everything; the subrequest is only returning its
                    // connection to the pool and should have finished by now.
                    break;
                }
                match clock.on_timer(Instant::now(), status.is_some()) {
                    Ok(due) => timer.as_mut().reset(due),
                    Err(cause) => {
                        charge_seen(&mut usage, &plan);
                        return timed_out(cause, status, t);
                    }
                }
            }
        }
        if response_done && sub_done {
            break;
        }
    }

    if let Some(p) = usage.as_mut() {
        plan.report.settle(p, response_done);
    }
    if response_done {
        return Outcome::Complete {
            status: status.unwrap_or(0),
        };
    }
    let error = proxy_error.as_deref();
    match (status, error) {
        (Some(s), e) => Outcome::Broken {
            status: s,
            cause: e.map_or(Cause::UpstreamReset, |e| classify(e, true)),
        },
        (None, Some(e)) => Outcome::NotStarted {
            error: SidecarError::new(classify(e, false), describe(e, &plan)),
            stale_connection: plan.report.stale_connection(),
        },
        (None, None) => internal("the upstream attempt ended without a response"),
    }
}

/// The first-byte, idle and total limits of one attempt, as one lazily armed timer: armed
/// at the earliest moment a limit could expire and, on expiry, either firing or pushed
/// later. Activity only records its time; moving a Tokio timer *earlier* on every chunk
/// would wake the timer driver each time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    first_byte_at: Instant,
    idle: Duration,
    deadline: Instant,
    last_activity: Instant,
}

impl Limits {
    pub(crate) fn start(now: Instant, t: &Timeouts, deadline: Instant) -> Limits {
        Limits {
            first_byte_at: (now + t.first_byte).min(deadline),
            idle: t.idle,
            deadline,
            last_activity: now,
        }
    }

    /// When the timer is first armed.
    pub(crate) fn first_wake(&self) -> Instant {
        self.first_byte_at.min(self.last_activity + self.idle)
    }

    /// Bytes went to the client.
    pub(crate) fn activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// The timer fired at `now`: `Ok(when)` to re-arm it, or the limit that expired. The
    /// first byte applies before the response header, the idle gap after it; the total
    /// always.
    pub(crate) fn on_timer(&self, now: Instant, header_seen: bool) -> Result<Instant, Cause> {
        let limit = if header_seen {
            self.last_activity + self.idle
        } else {
            self.first_byte_at
        };
        let due = limit.min(self.deadline);
        if due > now {
            return Ok(due);
        }
        Err(if now >= self.deadline {
            Cause::TotalTimeout
        } else if header_seen {
            Cause::IdleTimeout
        } else {
            Cause::FirstByteTimeout
        })
    }
}

/// A response that ends early is charged the tokens seen so far.
fn charge_seen(usage: &mut Option<crate::usage::UsageParser>, plan: &AttemptPlan) {
    if let Some(p) = usage.as_mut() {
        plan.report.settle(p, false);
    }
}

fn internal(msg: &str) -> Outcome {
    Outcome::NotStarted {
        error: SidecarError::new(Cause::Internal, msg),
        stale_connection: false,
    }
}

fn timed_out(cause: Cause, status: Option<u16>, t: &Timeouts) -> Outcome {
    match status {
        Some(s) => Outcome::Broken { status: s, cause },
        None => {
            let (what, limit) = match cause {
                Cause::TotalTimeout => ("the request took longer than", t.total),
                _ => ("the provider sent no response within", t.first_byte),
            };
            Outcome::NotStarted {
                error: SidecarError::new(
                    cause,
                    format!("{what} {}", humantime::format_duration(limit)),
                ),
                stale_connection: false,
            }
        }
    }
}

/// The error code name the DNS step of an attempt uses.
pub const DNS_ERROR: &str = "dns";
/// ... and signing.
pub const SIGNING_ERROR: &str = "signing";

/// Maps a Pingora error from the attempt to why the exchange failed.
pub fn classify(e: &Error, after_header: bool) -> Cause {
    use ErrorType::*;
    match e.etype() {
        Custom(DNS_ERROR) => Cause::UpstreamDns,
        Custom(SIGNING_ERROR) => Cause::SigningFailed,
        ConnectTimedout => Cause::ConnectTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
        | ConnectProxyFailure => Cause::UpstreamConnect,
        TLSHandshakeTimedout => Cause::ConnectTimeout,
        TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => {
            Cause::UpstreamTls
        }
        ReadTimedout | WriteTimedout => {
            if after_header {
                Cause::IdleTimeout
            } else {
                Cause::FirstByteTimeout
            }
        }
        InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2 => Cause::UpstreamProtocol,
        ConnectionClosed | ReadError | WriteError => Cause::UpstreamReset,
        _ => Cause::UpstreamProtocol,
    }
}

/// A client-safe description: what failed and where, no internal error chain.
fn describe(e: &Error, plan: &AttemptPlan) -> String {
    let host = plan.provider.endpoint.host();
    let name = &plan.provider.name;
    match classify(e, false) {
        Cause::UpstreamDns => format!("cannot resolve the address of provider \"{name}\" ({host})"),
        Cause::ConnectTimeout => format!("connecting to provider \"{name}\" ({host}) timed out"),
        Cause::UpstreamConnect => format!("cannot connect to provider \"{name}\" ({host})"),
        Cause::UpstreamTls => format!("TLS with provider \"{name}\" ({host}) failed: its certificate is not trusted or the handshake was refused"),
        Cause::FirstByteTimeout => format!("provider \"{name}\" did not answer in time"),
        Cause::UpstreamReset => format!("provider \"{name}\" closed the connection before answering"),
        Cause::SigningFailed => format!("the request to provider \"{name}\" could not be signed"),
        _ => format!("provider \"{name}\" sent an invalid response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timeouts(first_byte: u64, idle: u64, total: u64) -> Timeouts {
        Timeouts {
            connect: ms(1000),
            tls: ms(1000),
            first_byte: ms(first_byte),
            idle: ms(idle),
            total: ms(total),
        }
    }

    /// Drives the limits as the attempt loop does, on Tokio's paused clock: bytes reach
    /// the client at `writes` (ms after the start; the first is the response header).
    /// Returns the limit that fired, when, and how many times the timer woke.
    async fn drive(t: &Timeouts, writes: &[u64]) -> (Cause, Duration, usize) {
        let start = Instant::now();
        let mut limits = Limits::start(start, t, start + t.total);
        let timer = tokio::time::sleep_until(limits.first_wake());
        tokio::pin!(timer);
        let mut writes: VecDeque<Instant> = writes.iter().map(|w| start + ms(*w)).collect();
        let mut header_seen = false;
        let mut wakes = 0;
        loop {
            let next = writes.front().copied();
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next.unwrap_or(start)), if next.is_some() => {
                    writes.pop_front();
                    header_seen = true;
                    limits.activity(Instant::now());
                }
                _ = &mut timer => {
                    wakes += 1;
                    match limits.on_timer(Instant::now(), header_seen) {
                        Ok(due) => timer.as_mut().reset(due),
                        Err(cause) => return (cause, start.elapsed(), wakes),
                    }
                }
            }
        }
    }

    /// Fired at `at` ms, to the millisecond (Tokio's timer resolution).
    fn at(got: (Cause, Duration, usize), cause: Cause, at: u64) -> usize {
        assert_eq!(got.0, cause, "{got:?}");
        assert!(
            got.1 >= ms(at) && got.1 < ms(at + 1),
            "{cause:?} at {:?}, wanted {at} ms",
            got.1
        );
        got.2
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_fires_exactly_when_no_header_comes() {
        at(
            drive(&timeouts(400, 300, 10_000), &[]).await,
            Cause::FirstByteTimeout,
            400,
        );
        // The idle limit does not apply before the header, even when it is shorter.
        let wakes = at(
            drive(&timeouts(1000, 100, 10_000), &[]).await,
            Cause::FirstByteTimeout,
            1000,
        );
        assert_eq!(
            wakes, 2,
            "an early wake at idle, re-armed once for the first byte"
        );
        // A first byte past the total: the total fires, and says so.
        at(
            drive(&timeouts(5000, 300, 1000), &[]).await,
            Cause::TotalTimeout,
            1000,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_just_in_time_hands_over_to_the_idle_limit() {
        at(
            drive(&timeouts(400, 300, 10_000), &[399]).await,
            Cause::IdleTimeout,
            699,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_exactly_one_gap_after_the_last_write_and_wakes_rarely() {
        let writes: Vec<u64> = (0..=1000).collect();
        let wakes = at(
            drive(&timeouts(400, 300, 10_000), &writes).await,
            Cause::IdleTimeout,
            1300,
        );
        // 1001 writes, yet the timer woke only about once per idle period: lazy.
        assert!(wakes <= 6, "{wakes} wakes");
        let gaps: Vec<u64> = (0..10).map(|i| 50 + i * 100).collect();
        at(
            drive(&timeouts(400, 300, 10_000), &gaps).await,
            Cause::IdleTimeout,
            950 + 300,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn total_fires_exactly_however_busy_the_stream() {
        let writes: Vec<u64> = (0..200).map(|i| i * 10).collect();
        at(
            drive(&timeouts(400, 300, 1500), &writes).await,
            Cause::TotalTimeout,
            1500,
        );
    }
}

//! The attempt driver: one upstream try for an exchange.
//!
//! Pingora's proxy loop offers one read timer per request and no hook while the upstream
//! is silent, and it can replay at most 64 KiB of request body. So the exchange (the
//! client's own request) does not let Pingora proxy it: it has read the whole body, and
//! runs each try at the provider itself, here, with the connection [`super::call`] opens:
//!
//! ```text
//!  client ◄────────────── exchange (the client's request, one pass) ────────────► provider
//!   │ head and body already read       this loop:                      call: request_for,
//!   │                                   - first-byte / idle / total     connect (pooled,
//!   └── hang-up detected ─────────────►   timers, precise               h1 or h2), send,
//!                                       - holds back an answer that     read_head
//!                                         will be retried
//!                                       - writes each body piece to
//!                                         the client as it arrives
//! ```
//!
//! Everything runs inside the request's own task (no spawn). Dropping the call cancels the
//! upstream request, which on HTTP/2 resets only that stream. Response bytes are written
//! to the client as each piece arrives, and the next piece is read only once the client
//! took this one: nothing is buffered here, and a slow reader slows the provider down.

use super::call::{self, Call, Upstream};
use super::errors::{Cause, SidecarError};
use super::AttemptPlan;
use crate::resilience::step;
use crate::upstream::Timeouts;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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

/// What woke the attempt while it waited.
pub(super) enum Wake<T> {
    Upstream(T),
    Client(pingora::Result<Option<Bytes>>),
    Timer,
}

/// Runs one attempt. `deadline` is when the whole exchange must be over.
pub async fn run(
    session: &mut Session,
    up: &Upstream,
    plan: Arc<AttemptPlan>,
    t: &Timeouts,
    deadline: Instant,
) -> Outcome {
    let mut clock = Limits::start(Instant::now(), t, deadline);
    let timer = tokio::time::sleep_until(clock.first_wake());
    tokio::pin!(timer);
    let mut client_open = true;

    let req = match call::request_for(session.req_header(), &plan) {
        Ok(r) => r,
        Err(e) => return not_started(&e, &plan, false),
    };

    // Up to the response head: connect, send, wait.
    let call: Call = {
        let start = call::start(up, &plan, req);
        tokio::pin!(start);
        loop {
            let wake = tokio::select! {
                biased;
                r = &mut start => Wake::Upstream(r),
                c = session.downstream_session.read_body_or_idle(true), if client_open => Wake::Client(c),
                _ = &mut timer => Wake::Timer,
            };
            match wake {
                Wake::Upstream(Ok(call)) => break call,
                Wake::Upstream(Err(f)) => return not_started(&f.error, &plan, f.stale),
                Wake::Client(Ok(Some(_))) => {}
                Wake::Client(Ok(None)) => client_open = false,
                Wake::Client(Err(_)) => return Outcome::ClientGone { status: None },
                Wake::Timer => match clock.on_timer(Instant::now(), false) {
                    Ok(due) => timer.as_mut().reset(due),
                    Err(cause) => return timed_out(cause, None, t),
                },
            }
        }
    };

    let head_request = session.req_header().method == http::Method::HEAD;
    let Some(head) = call.response_for_client(head_request) else {
        call.abandon(up).await;
        return internal("the provider's response head was lost");
    };
    let size = response_head_bytes(&head);
    if size > MAX_RESPONSE_HEAD {
        call.abandon(up).await;
        return Outcome::NotStarted {
            error: SidecarError::new(
                Cause::UpstreamProtocol,
                format!("the provider's response header is {size} bytes, above the sidecar's limit of {MAX_RESPONSE_HEAD}"),
            ),
            stale_connection: false,
        };
    }
    let code = head.status.as_u16();
    let retry_after = crate::auth::retry_after(&head.headers);
    plan.report.set_answer(code, retry_after);
    // An answer held back is not read: its connection is closed (an HTTP/2 stream reset),
    // and the exchange refreshes the token and replays, retries, or moves on.
    // (Below 400 nothing is retried: the policy is not asked.)
    if code >= 400
        && plan
            .gate
            .decide(&answered(&plan, code, retry_after))
            .holds_back()
    {
        call.abandon(up).await;
        return Outcome::HeldBack { status: code };
    }
    super::response::forward(
        session,
        up,
        call,
        &plan,
        head,
        t,
        &mut clock,
        timer,
        client_open,
    )
    .await
}

/// The policy's view of an answer: its status, and what the key pool can do about it.
fn answered(plan: &AttemptPlan, status: u16, retry_after: Option<Duration>) -> step::Outcome {
    step::Outcome::Answered {
        status,
        retry_after,
        key: plan
            .pool_key()
            .map(|(pool, i)| (pool.others(i), pool.cooldown(retry_after))),
    }
}

pub(super) fn not_started(e: &Error, plan: &AttemptPlan, stale: bool) -> Outcome {
    let mut error = SidecarError::new(classify(e, false), describe(e, plan));
    if error.cause == Cause::LocalConnect {
        error.retry_after_secs = Some(1);
    }
    Outcome::NotStarted {
        error,
        stale_connection: stale,
    }
}

/// The first-byte, idle and total limits of one attempt, as one lazily armed timer: armed
/// at the earliest moment a limit could expire and, on expiry, either firing or pushed
/// later. Activity only records its time; moving a Tokio timer *earlier* on every chunk
/// would wake the timer driver each time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    first_byte_at: Instant,
    idle: Duration,
    deadline: Instant,
    last_activity: Instant,
}

impl Limits {
    pub fn start(now: Instant, t: &Timeouts, deadline: Instant) -> Limits {
        Limits {
            first_byte_at: (now + t.first_byte).min(deadline),
            idle: t.idle,
            deadline,
            last_activity: now,
        }
    }

    /// When the timer is first armed.
    pub fn first_wake(&self) -> Instant {
        self.first_byte_at.min(self.last_activity + self.idle)
    }

    /// Bytes went to the client.
    pub fn activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// The timer fired at `now`: `Ok(when)` to re-arm it, or the limit that expired. The
    /// first byte applies before the response header, the idle gap after it; the total
    /// always.
    pub fn on_timer(&self, now: Instant, header_seen: bool) -> Result<Instant, Cause> {
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
pub(super) fn charge_seen(usage: &mut Option<crate::usage::UsageParser>, plan: &AttemptPlan) {
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

pub(super) fn timed_out(cause: Cause, status: Option<u16>, t: &Timeouts) -> Outcome {
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
        // EADDRNOTAVAIL (no local port) and a socket that could not be made (EMFILE,
        // ENFILE, ENOBUFS): the sidecar's own limits, not the provider failing.
        // (Pingora's connector wraps them in an InternalError.)
        BindError | SocketError => Cause::LocalConnect,
        InternalError
            if e.cause
                .as_ref()
                .and_then(|c| c.downcast_ref::<Box<Error>>())
                .is_some_and(|c| matches!(c.etype(), BindError | SocketError)) =>
        {
            Cause::LocalConnect
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure => {
            Cause::UpstreamConnect
        }
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
        Cause::LocalConnect => format!("the sidecar has no local port or file descriptor free to connect to provider \"{name}\" ({host}); try again shortly"),
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

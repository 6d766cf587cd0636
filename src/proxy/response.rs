//! The response: from the provider to the client piece by piece. Each piece is written
//! before the next is read, so nothing is buffered here and a slow reader slows the
//! provider down; usage is counted and the audit capture kept as the pieces pass.

use super::attempt::{charge_seen, classify, not_started, timed_out, Limits, Outcome, Wake};
use super::call::{Call, Upstream};
use super::errors::SidecarError;
use super::AttemptPlan;
use crate::upstream::Timeouts;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use std::pin::Pin;
use tokio::time::{Instant, Sleep};

/// A response with a `Content-Length` up to this size is written to the client as one
/// piece with its head (one write instead of two).
const JOIN_HEAD_AND_BODY: u64 = 64 * 1024;

/// Forwards the response whose head is `head` (already checked: not held back).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    session: &mut Session,
    up: &Upstream,
    mut call: Call,
    plan: &AttemptPlan,
    head: Box<ResponseHeader>,
    t: &Timeouts,
    clock: &mut Limits,
    mut timer: Pin<&mut Sleep>,
    mut client_open: bool,
) -> Outcome {
    let code = head.status.as_u16();
    let mut usage = None;
    if code < 300 {
        usage = head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::usage::UsageParser::for_content_type);
        plan.report
            .set_streaming(usage.as_ref().is_some_and(|p| p.is_stream()));
    }
    let small = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= JOIN_HEAD_AND_BODY);
    let status = Some(code);
    let mut pending = Some(head);
    let mut upstream_done = call.response_done();

    // The body: each piece to the client as it comes. The loop ends with the last
    // piece still to write when the provider's answer has been read to its end.
    let last = loop {
        let piece = if upstream_done {
            None
        } else if pending.is_some() && !small {
            // A stream's head goes out at once; its first event may be a while.
            Some(None)
        } else {
            let wake = tokio::select! {
                biased;
                b = call.read_body() => Wake::Upstream(b),
                c = session.downstream_session.read_body_or_idle(true), if client_open => Wake::Client(c),
                _ = &mut timer => Wake::Timer,
            };
            match wake {
                Wake::Upstream(Ok(b)) => {
                    upstream_done = b.is_none() || call.response_done();
                    Some(b)
                }
                Wake::Upstream(Err(e)) => {
                    charge_seen(&mut usage, plan);
                    call.abandon(up).await;
                    if pending.is_some() {
                        // Nothing reached the client yet: it can still get an error.
                        return not_started(&e, plan, false);
                    }
                    return Outcome::Broken {
                        status: code,
                        cause: classify(&e, true),
                    };
                }
                Wake::Client(Ok(Some(_))) => continue,
                Wake::Client(Ok(None)) => {
                    client_open = false;
                    continue;
                }
                Wake::Client(Err(_)) => {
                    charge_seen(&mut usage, plan);
                    call.abandon(up).await;
                    return Outcome::ClientGone { status };
                }
                Wake::Timer => {
                    match clock.on_timer(Instant::now(), true) {
                        Ok(due) => timer.as_mut().reset(due),
                        Err(cause) => {
                            charge_seen(&mut usage, plan);
                            call.abandon(up).await;
                            if pending.is_some() {
                                // Only the head came: the client can still get an error.
                                return Outcome::NotStarted {
                                    error: SidecarError::new(
                                        cause,
                                        format!(
                                            "provider \"{}\" stopped after its response header",
                                            plan.provider.name
                                        ),
                                    ),
                                    stale_connection: false,
                                };
                            }
                            return timed_out(cause, status, t);
                        }
                    }
                    continue;
                }
            }
        };
        let mut tasks = Vec::with_capacity(2);
        if let Some(h) = pending.take() {
            tasks.push(HttpTask::Header(h, upstream_done && piece.is_none()));
        }
        match piece {
            Some(Some(b)) => {
                if !b.is_empty() {
                    plan.report.body_seen();
                }
                // Read after the bytes are handed on, never holding them.
                if let Some(p) = usage.as_mut() {
                    p.feed(&b);
                }
                if plan.capture > 0 {
                    plan.report.capture(&b, plan.capture);
                }
                tasks.push(HttpTask::Body(Some(b), upstream_done));
            }
            Some(None) if upstream_done => tasks.push(HttpTask::Body(None, true)),
            Some(None) => {}
            None => {
                if tasks.is_empty() {
                    tasks.push(HttpTask::Body(None, true));
                }
            }
        }
        clock.activity(Instant::now());
        if upstream_done {
            break Some(tasks);
        }
        match session.write_response_tasks(tasks).await {
            Ok(true) => break None,
            Ok(false) => {}
            Err(_) => {
                charge_seen(&mut usage, plan);
                call.abandon(up).await;
                return Outcome::ClientGone { status };
            }
        }
    };

    // The provider's connection goes back to the pool before the client gets the last
    // piece: a client that sends its next request the moment it has this answer finds
    // the connection there, not a new one opening.
    call.finish(up).await;
    if let Some(tasks) = last {
        if session.write_response_tasks(tasks).await.is_err() {
            charge_seen(&mut usage, plan);
            return Outcome::ClientGone { status };
        }
    }
    if let Some(p) = usage.as_mut() {
        plan.report.settle(p, true);
    }
    Outcome::Complete { status: code }
}

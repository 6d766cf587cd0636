//! The response: from the provider to the client piece by piece. Each piece is written
//! before the next is read, so nothing is buffered here and a slow reader slows the
//! provider down; usage is counted and the audit capture kept as the pieces pass.

use super::attempt::{charge_seen, classify, not_started, timed_out, Limits, Outcome, Wake};
use super::call::{Call, Upstream};
use super::errors::{Cause, SidecarError};
use super::AttemptPlan;
use crate::translate::Reply;
use crate::upstream::Timeouts;
use bytes::Bytes;
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
    let mut head = head;
    // A target of another API: its answer is rewritten as it passes. A JSON answer is
    // read whole and sent with its new length; a stream goes out event by event.
    let mut tr = plan.reply.as_ref().map(|r| {
        let ct = head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let t = Reply::new(r.front, r.target, code, ct, r.spec.clone());
        head.remove_header(&http::header::CONTENT_LENGTH);
        head.remove_header(&http::header::CONTENT_ENCODING);
        head.remove_header(&http::header::TRANSFER_ENCODING);
        let _ = head.insert_header(http::header::CONTENT_TYPE, t.content_type());
        if t.is_stream() {
            let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        t
    });
    let hold = tr.as_ref().is_some_and(|t| !t.is_stream());
    let small = hold
        || head
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
        if let Some(Some(b)) = &piece {
            if !b.is_empty() {
                plan.report.body_seen();
            }
            // Read after the bytes are handed on, never holding them.
            if let Some(p) = usage.as_mut() {
                p.feed(b);
            }
        }
        // What the client gets of this piece.
        let body_out = match tr.as_mut() {
            None => piece.flatten(),
            Some(t) => {
                let mut out = Vec::new();
                let r = match &piece {
                    Some(Some(b)) => t.feed(b, &mut out),
                    _ => Ok(()),
                };
                let r = r.and_then(|()| {
                    if upstream_done {
                        t.finish(&mut out)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = r {
                    return untranslatable(
                        session,
                        up,
                        call,
                        plan,
                        &mut usage,
                        t,
                        &e,
                        pending.is_none(),
                        upstream_done,
                        code,
                    )
                    .await;
                }
                if hold && !upstream_done {
                    continue;
                }
                if hold {
                    if let Some(h) = pending.as_mut() {
                        let _ =
                            h.insert_header(http::header::CONTENT_LENGTH, out.len().to_string());
                    }
                }
                (!out.is_empty()).then(|| Bytes::from(out))
            }
        };
        if plan.capture > 0 {
            if let Some(b) = &body_out {
                plan.report.capture(b, plan.capture);
            }
        }
        let mut tasks = Vec::with_capacity(2);
        let mut ended = false;
        if let Some(h) = pending.take() {
            ended = upstream_done && body_out.is_none();
            tasks.push(HttpTask::Header(h, ended));
        }
        match body_out {
            Some(b) => tasks.push(HttpTask::Body(Some(b), upstream_done)),
            None if upstream_done && !ended => tasks.push(HttpTask::Body(None, true)),
            None => {}
        }
        clock.activity(Instant::now());
        if upstream_done {
            break Some(tasks);
        }
        if tasks.is_empty() {
            continue;
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

/// The provider's answer could not be put in the client's API. Before anything reached
/// the client it gets a 502 (`x-llm-sidecar-error: translation`), and the attempt loop
/// may try the next target; once a stream has started, it ends with the front's error
/// event and the exchange counts as cut.
#[allow(clippy::too_many_arguments)]
async fn untranslatable(
    session: &mut Session,
    up: &Upstream,
    call: Call,
    plan: &AttemptPlan,
    usage: &mut Option<crate::usage::UsageParser>,
    t: &Reply,
    e: &crate::translate::Error,
    started: bool,
    upstream_done: bool,
    code: u16,
) -> Outcome {
    tracing::warn!(provider = %plan.provider.name, error = %e, "the provider's answer could not be translated");
    if let Some(r) = &plan.reply {
        r.failed.inc();
    }
    if upstream_done {
        plan.report.settle_opt(usage, true);
        call.finish(up).await;
    } else {
        charge_seen(usage, plan);
        call.abandon(up).await;
    }
    let msg = format!(
        "the answer of provider \"{}\" could not be translated: {}",
        plan.provider.name, e.message
    );
    if !started {
        return Outcome::NotStarted {
            error: SidecarError::new(Cause::Translation, msg),
            stale_connection: false,
        };
    }
    let mut out = Vec::new();
    t.error_event(&crate::translate::Error::new(msg), &mut out);
    let _ = session
        .write_response_tasks(vec![HttpTask::Body(Some(Bytes::from(out)), true)])
        .await;
    Outcome::Broken {
        status: code,
        cause: Cause::Translation,
    }
}

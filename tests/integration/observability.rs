//! Trace context, metrics and the audit log, seen from outside.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use llm_sidecar::observability::trace::parse_traceparent;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// (trace id, span id, flags) of what the upstream received.
fn upstream_trace(r: &llm_sidecar::mock::Recorded) -> (String, String, u8) {
    let v = r.header("traceparent").expect("a traceparent upstream");
    let (t, s, f) = parse_traceparent(v).unwrap_or_else(|| panic!("invalid: {v}"));
    (hex::encode(t), hex::encode(s), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_joined_or_started_and_each_attempt_is_a_new_span() {
    let logs = capture_logs();
    let m = mock(MockOptions {
        fail_every: Some(2),
        record: 16,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&openai_to(&m.url(), "sk-trace")).await;
    let url = s.url("/openai/v1/chat/completions");

    // 1: the client's trace is joined; tracestate passes untouched
    let r = s
        .client
        .post(&url)
        .header("traceparent", CLIENT)
        .header("tracestate", "vendor=abc,other=1")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    let (trace, span, flags) = upstream_trace(&rec[0]);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        span, "00f067aa0ba902b7",
        "a new span, child of the client's"
    );
    assert_eq!(flags, 1);
    assert_eq!(rec[0].header("tracestate"), Some("vendor=abc,other=1"));

    // 2: no traceparent: a trace is started; the mock fails the first attempt (500), so
    // two attempts carry the same trace with different spans
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    assert_eq!(rec.len(), 3, "one retry");
    let (t1, s1, _) = upstream_trace(&rec[1]);
    let (t2, s2, _) = upstream_trace(&rec[2]);
    assert_eq!(t1, t2);
    assert_ne!(s1, s2);
    assert_ne!(t1, trace);
    assert!(rec[1].header("tracestate").is_none());

    // 3: a malformed traceparent is not passed on: a new trace replaces it
    let r = s
        .client
        .post(&url)
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=abc")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    let (t3, _, _) = upstream_trace(rec.last().unwrap());
    assert_ne!(t3, "00000000000000000000000000000000");
    assert!(rec.last().unwrap().header("tracestate").is_none());

    s.shutdown().await;
    let text = logs.text();
    for t in [&trace, &t1, &t3] {
        assert!(text.contains(t.as_str()), "trace id {t} in the request log");
    }
}

//! Streaming: SSE passes through unbuffered; timeouts and hang-ups end exchanges precisely.

use crate::support::upstreams::{gated_sse, silent};
use crate::support::*;
use futures_util::StreamExt;
use llm_sidecar::mock::MockOptions;
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_not_buffered_upstream_waits_for_client_acks() {
    const EVENTS: usize = 20;
    let up = gated_sse(EVENTS).await;
    let s = TestSidecar::start(&openai_to(&format!("http://{}", up.addr), "k")).await;
    let r = s.chat("/openai/v1/chat/completions", true).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut seen = 0usize;
    let mut done = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("stream stalled: some layer is buffering")
            .expect("stream ended early")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        // Acknowledge every complete event seen so far, in order.
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let data = event.trim().strip_prefix("data: ").unwrap();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["n"].as_u64(), Some(seen as u64));
            up.acks.send(seen).unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_from_the_mock_arrives_event_by_event() {
    let m = mock(MockOptions {
        interval: Duration::from_millis(150),
        chunks: 4,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let r = s.stream_with_usage("/openai/v1/chat/completions").await;
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut stream = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let start = Instant::now();
    while let Some(c) = stream.next().await {
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    // 1 role chunk + 4 content + 1 finish + 1 usage + [DONE] = 8 events, 150 ms apart.
    assert_eq!(text.matches("data: ").count(), 8, "{text}");
    let usage: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1, "{text}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 4, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        arrivals.len() >= 6,
        "events must arrive separately, got {} reads",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(900),
        "events arrived together ({spread:?}): buffered"
    );
}

fn timeouts_yaml(base: &str, t: &str) -> String {
    format!(
        "providers:\n  mock:\n    kind: openai\n    base_url: {base}/v1\n    timeouts: {{ {t} }}\nroutes:\n  - match: {{ path_prefix: /openai/v1 }}\n    provider: mock\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_silence_before_headers_is_504() {
    let addr = silent(Duration::from_secs(20)).await;
    let s = TestSidecar::start(&timeouts_yaml(
        &format!("http://{addr}"),
        "first_byte: 400ms",
    ))
    .await;
    let start = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    let took = start.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "upstream_timeout_first_byte"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_cut_after_idle_and_a_long_one_after_total() {
    let m = mock(MockOptions {
        interval: Duration::from_millis(50),
        chunks: 100,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&timeouts_yaml(
        &m.url(),
        "idle: 300ms, total: 1500ms, first_byte: 1s",
    ))
    .await;

    // Stalls after 3 events: the client gets those 3, then the connection is cut (no
    // clean end of the chunked body), about `idle` later.
    let r = s
        .client
        .post(s.url("/openai/v1/chat/completions"))
        .header("x-mock-stall-after", "3")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    let (text, completed) = read_stream(r).await;
    let failed = !completed;
    assert!(failed, "a cut stream must not look complete to the client");
    assert_eq!(text.matches("data: ").count(), 3);
    assert!(start.elapsed() < Duration::from_secs(3));

    // Never stalls but takes 5 s in all: cut at total (1.5 s).
    let start = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", true).await;
    let (_, completed) = read_stream(r).await;
    let failed = !completed;
    let took = start.elapsed();
    assert!(failed);
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    s.assert_metric(
        r#"llm_sidecar_requests_total{provider="mock",route="mock",status="200"}"#,
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hang_up_cancels_the_upstream_request() {
    let m = mock(MockOptions {
        interval: Duration::from_millis(100),
        chunks: 200,
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let r = s.chat("/openai/v1/chat/completions", true).await;
    let mut stream = r.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    // The hang-up reaches the provider: the sidecar drops its upstream request, and the
    // provider sees its stream cut long before the 20 s it would have lasted. (A sidecar
    // that kept reading upstream to the end would pass a check of its own gauges.)
    eventually("the provider's stream is cut", WAIT, || async {
        m.bodies_cut() == 1
    })
    .await;
    let sent = m.frames_sent();
    assert!(
        sent < 50,
        "the provider sent {sent} of 200 events before the hang-up reached it"
    );
    s.assert_metric("llm_sidecar_requests_in_flight", 0.0).await;
    // The exchange is counted once, with the status the client was sent (200: the
    // headers went out before the hang-up); 499 is for a client gone before them.
    s.assert_metric(
        r#"llm_sidecar_requests_total{provider="mock",route="mock",status="200"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        s.metric_zero_or_absent(
            r#"llm_sidecar_requests_total{provider="mock",route="mock",status="499"}"#
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_is_a_504() {
    // A listener that never accepts, with its accept queue full: Linux drops further SYNs,
    // so a new connect hangs (all on loopback).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let s = TestSidecar::start(&timeouts_yaml(&format!("http://{addr}"), "connect: 300ms")).await;
    let start = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "upstream_timeout_connect"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(listener);
}

//! Graceful shutdown, in-process and through the real binary's signals.

use crate::support::*;
use llm_sidecar::mock::MockOptions;
use std::time::{Duration, Instant};

/// Spawns a chat request that the mock holds for `latency_ms` before answering.
fn slow_chat(
    url: String,
    latency_ms: u64,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::StatusCode>> {
    let c = http_client();
    tokio::spawn(async move {
        c.post(url)
            .header("x-mock-latency-ms", latency_ms.to_string())
            .json(&chat_body(false))
            .send()
            .await
            .map(|r| r.status())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let m = mock(MockOptions {
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let addr = s.sidecar().reverse_addr();
    let admin = s.admin("/readyz");
    assert_eq!(s.client.get(&admin).send().await.unwrap().status(), 200);

    // Three slow requests in flight.
    let mut inflight = Vec::new();
    for _ in 0..3 {
        inflight.push(slow_chat(s.url("/openai/v1/chat/completions"), 800));
    }
    s.assert_metric("llm_sidecar_requests_in_flight", 3.0).await;

    let mut s = s;
    let handle = s.sidecar.take().unwrap();
    let shutdown =
        tokio::spawn(async move { handle.shutdown_with_grace(Duration::from_secs(10)).await });

    eventually(
        "the listener refuses new connections",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    let report = shutdown.await.unwrap();
    for h in inflight {
        assert_eq!(
            h.await.unwrap().unwrap(),
            200,
            "in-flight requests complete"
        );
    }
    assert!(report.drained);
    assert_eq!(report.cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_grace_period_are_cut() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let slow = slow_chat(s.url("/openai/v1/chat/completions"), 10_000);
    s.assert_metric("llm_sidecar_requests_in_flight", 1.0).await;
    let mut s = s;
    let start = Instant::now();
    let report = s
        .sidecar
        .take()
        .unwrap()
        .shutdown_with_grace(Duration::from_millis(300))
        .await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(!report.drained);
    assert_eq!(report.cut, 1);
    assert!(
        slow.await.unwrap().is_err(),
        "the cut request sees a closed connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_sighup_reloads() {
    let m = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.yaml");
    // A one-hour debounce: file events alone would not reload for an hour, so a quick
    // reload proves SIGHUP did it.
    let cfg = |tenant: &str| {
        with_listeners(&format!(
            "log: {{ format: json }}\nserver: {{ reload_debounce: 1h, grace_period: 10s }}\ntenant: {{ id: {tenant}, headers: {{ x-tenant: \"{{tenant}}\" }} }}\n{}",
            openai_to(&m.url(), "k")
        ))
    };
    std::fs::write(&path, cfg("one")).unwrap();
    let (mut child, reverse, _admin, logs) = spawn_binary(&path);
    let client = http_client();
    let url = format!("http://{reverse}/openai/v1/models");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(m.recorded().last().unwrap().header("x-tenant"), Some("one"));

    std::fs::write(&path, cfg("two")).unwrap();
    signal(&child, libc::SIGHUP);
    eventually(
        "SIGHUP applied the new config",
        Duration::from_secs(5),
        || async {
            client.get(&url).send().await.unwrap();
            m.recorded().last().unwrap().header("x-tenant") == Some("two")
        },
    )
    .await;

    let before = m.request_count();
    let slow = slow_chat(format!("http://{reverse}/openai/v1/chat/completions"), 1000);
    eventually("the slow request is at the provider", WAIT, || async {
        m.request_count() > before
    })
    .await;
    signal(&child, libc::SIGTERM);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request completes after SIGTERM"
    );
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    let log: Vec<String> = logs.try_iter().collect();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the sidecar did not exit after draining:\n{}",
            log.join("\n")
        )
    });
    assert!(status.success(), "{status:?}:\n{}", log.join("\n"));
    assert!(tokio::net::TcpStream::connect(&reverse).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_up_shutdown() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    // Connected, never sends a byte (a TCP health check, a slow client).
    let _silent = tokio::net::TcpStream::connect(s.sidecar().reverse_addr())
        .await
        .unwrap();
    eventually(
        "the connection is accepted",
        Duration::from_secs(5),
        || async { s.sidecar().open_connections() == 1 },
    )
    .await;
    let mut s = s;
    let start = Instant::now();
    let report = s
        .sidecar
        .take()
        .unwrap()
        .shutdown_with_grace(Duration::from_secs(10))
        .await;
    assert!(report.drained, "{report:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?}",
        start.elapsed()
    );
}

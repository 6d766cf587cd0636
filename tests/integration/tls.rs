//! TLS upstreams: verification against a private CA, SNI override, HTTP/2 pooling.

use crate::support::upstreams::silent;
use crate::support::*;
use llm_sidecar::mock::{MockOptions, MockServer};
use std::time::{Duration, Instant};

pub(crate) fn tls_provider(url: &str, tls: &str, pool: &str) -> String {
    format!(
        "providers:\n  secure:\n    kind: openai\n    base_url: {url}/v1\n    auth: {{ type: bearer, token: sk-tls }}\n    tls: {{ {tls} }}\n    pool: {{ {pool} }}\nroutes:\n  - match: {{ path_prefix: /openai/v1 }}\n    provider: secure\n"
    )
}

/// A TLS mock upstream whose certificate (for `names`, offering `alpn`) is issued by a
/// fresh test CA; returns the mock, the `ca_file: PATH` setting that trusts it, and the
/// directory holding the PEM (keep it alive for the test).
pub(crate) async fn tls_mock(
    names: &[&str],
    alpn: &[&[u8]],
    opts: MockOptions,
) -> (MockServer, String, tempfile::TempDir) {
    let ca = TestCa::new("llm-sidecar test CA");
    let m = mock(MockOptions {
        tls: Some(ca.server_config(names, alpn)),
        ..opts
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let trust = format!("ca_file: {}", ca.write_pem(dir.path()).display());
    (m, trust, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_upstream_certificates_against_the_configured_ca() {
    let (m, trust, _dir) = tls_mock(
        &["127.0.0.1", "upstream.test"],
        &[b"http/1.1"],
        MockOptions::default(),
    )
    .await;

    // Trusted through tls.ca_file (on top of the public roots).
    let s = TestSidecar::start(&tls_provider(&m.url(), &trust, "")).await;
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.recorded()[0].header("authorization"),
        Some("Bearer sk-tls")
    );

    // Without the CA the certificate is not trusted: 502, and nothing reaches the mock.
    let s2 = TestSidecar::start(&tls_provider(&m.url(), "", "")).await;
    let r = s2.get("/openai/v1/models").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-llm-sidecar-error"], "upstream_tls");
    assert_eq!(m.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_override_is_verified_against_the_certificate() {
    // The certificate names only upstream.test, not the IP we connect to.
    let (m, trust, _dir) =
        tls_mock(&["upstream.test"], &[b"http/1.1"], MockOptions::default()).await;

    let s = TestSidecar::start(&tls_provider(&m.url(), &trust, "")).await;
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 502, "hostname mismatch must fail");
    assert_eq!(r.headers()["x-llm-sidecar-error"], "upstream_tls");

    let s = TestSidecar::start(&tls_provider(
        &m.url(),
        &format!("{trust}, sni: upstream.test"),
        "",
    ))
    .await;
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 200);
    // SNI and Host are separate: Host stays the base URL's authority.
    assert_eq!(
        m.recorded()[0].header("host"),
        Some(m.addr().to_string().as_str())
    );

    let s = TestSidecar::start(&tls_provider(
        &m.url(),
        &format!("{trust}, sni: other.test"),
        "",
    ))
    .await;
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_connections_are_reused() {
    let (m, trust, _dir) = tls_mock(
        &["127.0.0.1"],
        &[b"h2", b"http/1.1"],
        MockOptions {
            interval: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .await;
    let s = TestSidecar::start(&tls_provider(&m.url(), &trust, "max_h2_streams: 50")).await;

    // Sequential requests share one connection...
    for _ in 0..5 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        m.connection_count(),
        1,
        "sequential requests reuse one connection"
    );
    // one TCP connect and one TLS handshake, timed; four pooled handovers
    for (series, n) in [
        (
            "llm_sidecar_upstream_connect_seconds_count{provider=\"secure\"}",
            1.0,
        ),
        (
            "llm_sidecar_upstream_tls_handshake_seconds_count{provider=\"secure\"}",
            1.0,
        ),
        (
            "llm_sidecar_upstream_tls_handshakes_total{provider=\"secure\"}",
            1.0,
        ),
        (
            "llm_sidecar_upstream_pool_wait_seconds_count{provider=\"secure\"}",
            4.0,
        ),
    ] {
        assert_eq!(s.metric(series).await, n, "{series}");
    }
    assert!(
        s.metric("llm_sidecar_upstream_tls_handshake_seconds_sum{provider=\"secure\"}")
            .await
            > 0.0
    );

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = s.client.clone();
        let url = s.url("/openai/v1/chat/completions");
        set.spawn(async move {
            let r = c.post(url).json(&chat_body(true)).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            (status, text)
        });
        // Staggered a little: each stream lasts ~45 ms, so many overlap, but they do not
        // all race for the pool in the same instant (see below).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Some(res) = set.join_next().await {
        let (status, text) = res.unwrap();
        assert_eq!(status, 200);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    let rec = m.recorded();
    assert_eq!(rec.len(), 25);
    assert!(
        rec.iter().all(|r| r.version == http::Version::HTTP_2),
        "all requests used HTTP/2"
    );
    // ...and 20 concurrent streams are multiplexed. Pingora's HTTP/2 pool takes a
    // connection out while it opens a stream on it, and callers arriving in that window
    // open another (a false negative its source accepts), so a burst may use a few
    // connections; without multiplexing (Pingora's default of 1 stream) it would be ~20.
    let conns = m.connection_count();
    assert!(conns <= 8, "20 concurrent streams used {conns} connections");
    let metrics = s.metrics().await;
    let opened = metric_value(
        &metrics,
        r#"llm_sidecar_upstream_connections_total{provider="secure",reused="false"}"#,
    );
    let reused = metric_value(
        &metrics,
        r#"llm_sidecar_upstream_connections_total{provider="secure",reused="true"}"#,
    );
    assert_eq!(opened as u64, conns, "{metrics}");
    assert_eq!(opened + reused, 25.0, "{metrics}");
    // Afterwards, sequential requests again open nothing new.
    for _ in 0..5 {
        let r = s.get("/openai/v1/models").await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(m.connection_count(), conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_are_pooled() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    for _ in 0..10 {
        let r = s.get("/openai/v1/models").await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(m.connection_count(), 1, "keep-alive reuse");
    assert_eq!(
        s.metric(r#"llm_sidecar_upstream_connections_total{provider="mock",reused="true"}"#)
            .await,
        9.0
    );
    // plain HTTP: a timed TCP connect, no TLS handshake
    assert_eq!(
        s.metric(r#"llm_sidecar_upstream_connect_seconds_count{provider="mock"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.metric(r#"llm_sidecar_upstream_tls_handshakes_total{provider="mock"}"#)
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_on_http2_cuts_only_its_own_stream() {
    let (m, trust, _dir) = tls_mock(
        &["127.0.0.1"],
        &[b"h2"],
        MockOptions {
            interval: Duration::from_millis(100),
            chunks: 15,
            ..Default::default()
        },
    )
    .await;
    let yaml = tls_provider(&m.url(), &trust, "").replace(
        "    pool: {  }\n",
        "    pool: {  }\n    timeouts: { idle: 400ms }\n",
    );
    let s = TestSidecar::start(&yaml).await;
    // Warm one HTTP/2 connection so both streams below share it.
    assert_eq!(s.get("/openai/v1/models").await.status(), 200);

    let read_all = |stall: Option<&'static str>| {
        let c = s.client.clone();
        let url = s.url("/openai/v1/chat/completions");
        async move {
            let mut req = c.post(url).json(&chat_body(true));
            if let Some(n) = stall {
                req = req.header("x-mock-stall-after", n);
            }
            read_stream(req.send().await.unwrap()).await
        }
    };
    // The second stream starts once the first is at the provider: Pingora's HTTP/2 pool
    // takes a connection out while it opens a stream on it, and a caller arriving in that
    // instant opens another connection (see the multiplexing test above), which would
    // make the one-connection check below fail for a reason that is not the one tested.
    let stalled = tokio::spawn(read_all(Some("2")));
    eventually("the stalled stream is at the provider", WAIT, || async {
        m.request_count() == 2
    })
    .await;
    let healthy = read_all(None).await;
    let stalled = stalled.await.unwrap();
    assert!(!stalled.1, "the stalled stream is cut");
    assert_eq!(stalled.0.matches("data: ").count(), 2);
    assert!(
        healthy.1,
        "the healthy stream on the same connection completes"
    );
    assert!(healthy.0.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        m.connection_count(),
        1,
        "one connection carried both; resetting a stream did not close it"
    );
    assert!(m
        .recorded()
        .iter()
        .all(|r| r.version == http::Version::HTTP_2));
}

/// `first_byte` and `total` hold on HTTP/2 as on HTTP/1.1 (the timer logic itself is
/// checked to the millisecond on a paused clock in `proxy::attempt`; here only a lower
/// bound and a loose upper one, since the machine may be loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_and_total_timeouts_hold_on_http2() {
    let (m, trust, _dir) = tls_mock(
        &["127.0.0.1"],
        &[b"h2"],
        MockOptions {
            interval: Duration::from_millis(100),
            chunks: 40,
            ..Default::default()
        },
    )
    .await;
    let yaml = tls_provider(&m.url(), &trust, "").replace(
        "    pool: {  }\n",
        "    pool: {  }\n    timeouts: { first_byte: 400ms, total: 1200ms }\n",
    );
    let s = TestSidecar::start(&yaml).await;
    assert_eq!(s.get("/openai/v1/models").await.status(), 200);

    // No response header within first_byte: 504, with the cause.
    let start = Instant::now();
    let r = s
        .client
        .post(s.url("/openai/v1/chat/completions"))
        .header("x-mock-latency-ms", "3000")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "upstream_timeout_first_byte"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A stream of 4 s is cut at total, the client having had what came before it.
    let start = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", true).await;
    assert_eq!(r.status(), 200);
    let (text, complete) = read_stream(r).await;
    let took = start.elapsed();
    assert!(!complete, "cut at total: {text}");
    assert!(text.matches("data: ").count() >= 2, "{text}");
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(m
        .recorded()
        .iter()
        .all(|r| r.version == http::Version::HTTP_2));
}

/// `timeouts.tls`: a provider that accepts the connection and never answers the TLS
/// handshake is given up on after connect + tls, with a 504 that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_is_cut_at_timeouts_tls() {
    let addr = silent(Duration::from_secs(30)).await;
    let yaml = format!(
        "providers:\n  secure:\n    kind: openai\n    base_url: https://{addr}/v1\n    auth: {{ type: bearer, token: sk-tls }}\n    timeouts: {{ connect: 200ms, tls: 800ms, first_byte: 20s }}\nroutes:\n  - match: {{ path_prefix: /openai/v1 }}\n    provider: secure\n"
    );
    let s = TestSidecar::start(&yaml).await;
    let start = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    let took = start.elapsed();
    assert_eq!(r.status(), 504, "{:?}", r.headers());
    // A handshake that never ends is a connect that never completes.
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "upstream_timeout_connect"
    );
    // The TCP connect is immediate on loopback: the handshake had its 800 ms, not the
    // 200 ms of `connect`.
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

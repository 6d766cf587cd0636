//! Hostile requests, sent as raw bytes (in the style of sozu's h1 security tests): each
//! must get a 400-class answer or a closed connection, reach no provider, and leave the
//! sidecar serving good requests.

use crate::support::*;

async fn assert_still_serves(s: &TestSidecar, m: &llm_sidecar::mock::MockServer, before: u64) {
    assert_eq!(
        m.request_count(),
        before,
        "the hostile request must not reach the provider"
    );
    let r = s.get("/openai/v1/models").await;
    assert_eq!(r.status(), 200);
}

fn status_of(resp: &str) -> Option<u16> {
    resp.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_framing_and_smuggling_attempts_are_refused() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let addr = s.sidecar().reverse_addr();
    let cases: &[(&str, &[u8])] = &[
        (
            "TE + CL",
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "conflicting CL",
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "CL list",
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nabcde",
        ),
        (
            "TE not chunked",
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        ),
        ("dot segments", b"GET /openai/v1/../../admin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("encoded dot segments", b"GET /openai/v1/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n"),
        // Dots made a segment by an encoded slash: a provider that decodes %2F before
        // normalising would resolve these outside the route's prefix.
        ("..%2f", b"GET /openai/v1/..%2f..%2fadmin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("%2e%2e%2f", b"GET /openai/v1/%2e%2e%2fadmin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("..%5c", b"GET /openai/v1/..%5c..%5cadmin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("mixed case", b"GET /openai/v1/%2E%2e%2Fadmin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("double-encoded", b"GET /openai/v1/%252e%252e%252fadmin HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("double-encoded slash", b"POST /openai/v1/..%252f..%252fadmin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let before = m.request_count();
        let resp = raw_request(addr, raw, b"").await;
        let status = status_of(&resp);
        assert!(
            resp.is_empty() || status == Some(400),
            "{name}: expected 400 or a closed connection, got: {resp}"
        );
        // Pingora itself refuses differing Content-Lengths and non-chunked TE; the rest
        // are the sidecar's guards.
        if status == Some(400) && !matches!(*name, "TE not chunked" | "conflicting CL" | "CL list")
        {
            assert!(
                resp.to_ascii_lowercase()
                    .contains("x-llm-sidecar-error: bad_"),
                "{name}: answered by the sidecar's guards: {resp}"
            );
        }
        assert_eq!(m.request_count(), before, "{name} reached the provider");
        assert_still_serves(&s, &m, before).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_headers() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "request: {{ max_header_bytes: 4KiB }}\n{}",
        openai_to(&m.url(), "k")
    ))
    .await;
    let addr = s.sidecar().reverse_addr();

    let big = format!(
        "GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let resp = raw_request(addr, big.as_bytes(), b"").await;
    assert_eq!(status_of(&resp), Some(431), "{resp}");
    assert!(resp.contains("headers_too_large"));

    let resp = raw_request(
        addr,
        b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nBad Header Name: y\r\n\r\n",
        b"",
    )
    .await;
    assert!(resp.is_empty() || status_of(&resp) == Some(400), "{resp}");

    let resp = raw_request(addr, b"\x16\x03\x01\x02\x00garbage-not-http\r\n\r\n", b"").await;
    assert!(resp.is_empty() || status_of(&resp) == Some(400), "{resp}");

    assert_still_serves(&s, &m, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_by_the_sidecar() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(s.sidecar().reverse_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tcp.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains("chat.completion") {
                break;
            }
        }
    })
    .await;
    assert!(
        String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        m.recorded()[0].headers.get("expect").is_none(),
        "Expect is not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_http2_preface_is_answered() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    // 18 bytes: shorter than the 24-byte HTTP/2 preface the server checks for.
    let resp = raw_request(s.sidecar().reverse_addr(), b"GET / HTTP/1.0\r\n\r\n", b"").await;
    assert!(
        resp.starts_with("HTTP/1.1 404") || resp.starts_with("HTTP/1.0 404"),
        "{resp}"
    );
    assert!(resp.contains("no_route"));
}

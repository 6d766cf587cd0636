//! A provider that misbehaves on the wire: it hangs before its headers or in the middle
//! of a stream, resets, sends broken chunked framing or a huge header, closes keep-alive
//! connections at random, or answers at one byte per second. Each fault has one precise
//! outcome for the client, and afterwards the sidecar holds no connection to the faulty
//! upstream, no request in flight and no extra task.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Reads the request, never answers.
    HangBeforeHeaders,
    /// Sends the SSE head and two events, then nothing.
    HangMidStream,
    /// Sends the SSE head and two events, then a TCP reset.
    ResetMidStream,
    /// Sends a TCP reset as soon as the request is read.
    ResetBeforeHeaders,
    /// A chunked JSON answer whose second chunk size is not hex.
    MalformedChunked,
    /// A 200 with a header of this many KiB.
    OversizedHeader(usize),
    /// A whole small answer, one byte per `Duration`; with `true`, the head comes at
    /// once and only the body is slow.
    Slow(Duration, bool),
    /// Answers normally, then closes the connection, without saying so, after
    /// 1–3 answers (pseudo-random).
    RandomKeepAliveClose,
}

struct FaultServer {
    addr: SocketAddr,
    /// Connections the sidecar holds open to this server right now.
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const JSON: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

fn sse_chunk(i: usize) -> String {
    let ev = format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n"
    );
    format!("{:x}\r\n{ev}\r\n", ev.len())
}

fn json_answer() -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
        JSON.len()
    )
}

/// Reads one request (head and Content-Length body); false when the peer closed.
async fn read_request(tcp: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Holds the connection until the sidecar closes it.
async fn wait_for_close(tcp: &mut TcpStream) {
    let mut b = [0u8; 1024];
    while matches!(tcp.read(&mut b).await, Ok(n) if n > 0) {}
}

fn reset(tcp: TcpStream) {
    // SO_LINGER 0: close sends RST.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn serve(mut tcp: TcpStream, fault: Fault, seq: usize, answered: Arc<AtomicUsize>) {
    let mut answers_left = 1 + seq % 3;
    loop {
        if !read_request(&mut tcp).await {
            return;
        }
        match fault {
            Fault::HangBeforeHeaders => return wait_for_close(&mut tcp).await,
            Fault::HangMidStream | Fault::ResetMidStream => {
                let out = format!("{SSE_HEAD}{}{}", sse_chunk(0), sse_chunk(1));
                if tcp.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                if matches!(fault, Fault::ResetMidStream) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return reset(tcp);
                }
                return wait_for_close(&mut tcp).await;
            }
            Fault::ResetBeforeHeaders => return reset(tcp),
            Fault::MalformedChunked => {
                let out = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"id\"\r\nzz\r\n:\"x\"}\r\n0\r\n\r\n";
                let _ = tcp.write_all(out.as_bytes()).await;
                return wait_for_close(&mut tcp).await;
            }
            Fault::OversizedHeader(kib) => {
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-huge: {}\r\ncontent-length: {}\r\n\r\n{JSON}",
                    "h".repeat(kib * 1024),
                    JSON.len()
                );
                let _ = tcp.write_all(out.as_bytes()).await;
                return wait_for_close(&mut tcp).await;
            }
            Fault::Slow(every, head_fast) => {
                let answer = json_answer();
                let (head, body) = answer.split_at(answer.find("\r\n\r\n").unwrap_or(0) + 4);
                let (fast, slow) = if head_fast {
                    (head, body)
                } else {
                    ("", answer.as_str())
                };
                if tcp.write_all(fast.as_bytes()).await.is_err() {
                    return;
                }
                for b in slow.bytes() {
                    if tcp.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Fault::RandomKeepAliveClose => {
                if tcp.write_all(json_answer().as_bytes()).await.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::SeqCst);
                answers_left -= 1;
                if answers_left == 0 {
                    return; // a plain close, no `Connection: close`
                }
            }
        }
    }
}

async fn fault_server(fault: Fault) -> FaultServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (o, a, n) = (open.clone(), accepted.clone(), answered.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seq = a.fetch_add(1, Ordering::SeqCst);
            let (o, n) = (o.clone(), n.clone());
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                serve(tcp, fault, seq, n).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    FaultServer {
        addr,
        open,
        accepted,
        answered,
    }
}

/// The faulty provider, and a healthy one the warm-up request goes to.
fn config(addr: SocketAddr, healthy: &str, timeouts: &str) -> String {
    format!(
        "providers:\n  flaky:\n    kind: openai\n    base_url: http://{addr}/v1\n    auth: {{ type: bearer, token: sk-x }}\n    timeouts: {{ {timeouts} }}\n  healthy:\n    kind: openai\n    base_url: {healthy}/v1\nroutes:\n  - match: {{ path_prefix: /openai/v1 }}\n    provider: flaky\n  - match: {{ path_prefix: /healthy/v1 }}\n    provider: healthy\n"
    )
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// After a fault: nothing in flight, every connection to the faulty server closed by the
/// sidecar (`keep` may stay pooled), and no more tasks than before the case but the two
/// each pooled connection keeps alive (this server's, Pingora's idle watch).
async fn assert_clean(
    s: &TestSidecar,
    f: &FaultServer,
    keep: usize,
    tasks_before: usize,
    slack: usize,
    case: &str,
) {
    s.assert_metric("llm_sidecar_requests_in_flight", 0.0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (open, tasks) = (f.open.load(Ordering::SeqCst), alive_tasks());
        let allowed = tasks_before + 2 * open + slack;
        if open <= keep && tasks <= allowed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: {open} upstream connections open (at most {keep}), {tasks} tasks alive (at most {allowed})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(f: &FaultServer, timeouts: &str) -> (TestSidecar, usize) {
    let healthy = default_mock().await;
    let s = TestSidecar::start(&config(f.addr, &healthy.url(), timeouts)).await;
    // Start everything that starts lazily (client and upstream pools, timers, metrics)
    // with a good request before counting tasks.
    let r = s.chat("/healthy/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let _ = s.metrics().await;
    std::mem::forget(healthy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    (s, alive_tasks())
}

fn error_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-llm-sidecar-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_before_headers_is_504_and_its_connection_closed() {
    let f = fault_server(Fault::HangBeforeHeaders).await;
    let (s, tasks) = start(&f, "first_byte: 500ms").await;
    let t = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 504);
    assert_eq!(error_of(&r), "upstream_timeout_first_byte");
    assert!(t.elapsed() >= Duration::from_millis(500) && t.elapsed() < Duration::from_secs(3));
    drop(r);
    assert_clean(&s, &f, 0, tasks, 0, "hang before headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_mid_stream_delivers_what_came_then_cuts_the_client() {
    let f = fault_server(Fault::HangMidStream).await;
    let (s, tasks) = start(&f, "idle: 500ms").await;
    let r = s.chat("/openai/v1/chat/completions", true).await;
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    let (text, completed) = read_stream(r).await;
    assert!(!completed, "a cut stream must not end cleanly");
    assert!(text.contains("t0") && text.contains("t1"), "{text}");
    assert!(t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(3));
    assert_clean(&s, &f, 0, tasks, 0, "hang mid-stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_stream_cuts_the_client_and_is_not_retried() {
    let f = fault_server(Fault::ResetMidStream).await;
    let (s, tasks) = start(&f, "idle: 5s").await;
    let r = s.chat("/openai/v1/chat/completions", true).await;
    assert_eq!(r.status(), 200);
    let (text, completed) = read_stream(r).await;
    assert!(!completed);
    assert!(text.contains("t1"), "{text}");
    assert_eq!(
        f.accepted.load(Ordering::SeqCst),
        1,
        "a started stream is never retried"
    );
    assert_clean(&s, &f, 0, tasks, 0, "reset mid-stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_headers_is_retried_then_502() {
    let f = fault_server(Fault::ResetBeforeHeaders).await;
    let (s, tasks) = start(&f, "first_byte: 2s").await;
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_of(&r), "upstream_reset");
    assert_eq!(
        f.accepted.load(Ordering::SeqCst),
        2,
        "one retry (retry.max_attempts: 2)"
    );
    drop(r);
    assert_clean(&s, &f, 0, tasks, 0, "reset before headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_framing_cuts_the_client() {
    let f = fault_server(Fault::MalformedChunked).await;
    let (s, tasks) = start(&f, "idle: 5s").await;
    let r = s.chat("/openai/v1/chat/completions", false).await;
    // The head was good and has gone to the client; the body cannot be finished.
    assert_eq!(r.status(), 200);
    let (text, completed) = read_stream(r).await;
    assert!(
        !completed,
        "a body the provider broke must not look complete: {text}"
    );
    assert!(
        !text.contains("zz"),
        "the broken framing leaked into the body: {text}"
    );
    assert_clean(&s, &f, 0, tasks, 0, "malformed chunked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_header_is_502() {
    // Above the sidecar's 64 KiB response-head limit, and above Pingora's own.
    for kib in [100, 2048] {
        let f = fault_server(Fault::OversizedHeader(kib)).await;
        let (s, tasks) = start(&f, "first_byte: 2s").await;
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 502, "{kib} KiB");
        assert_eq!(error_of(&r), "upstream_protocol", "{kib} KiB");
        let body = r.text().await.unwrap();
        assert!(!body.contains("hhhh"), "{body}");
        if kib == 100 {
            assert!(
                body.contains("response header is"),
                "the sidecar's own limit: {body}"
            );
        }
        // A response that was whole and well framed (the 100 KiB one) may leave its
        // connection in the pool: idle, bounded, not leaked.
        assert_clean(&s, &f, 1, tasks, 0, "oversized header").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_per_second_is_cut_by_first_byte_or_total() {
    // A head at 1 byte/s: `first_byte` is the time to the whole response head, so it
    // fires (every byte came within `idle`), before anything reached the client: 504.
    let f = fault_server(Fault::Slow(Duration::from_secs(1), false)).await;
    let (s, tasks) = start(&f, "first_byte: 2s, idle: 2s, total: 5s").await;
    let t = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 504);
    assert_eq!(error_of(&r), "upstream_timeout_first_byte");
    assert!(
        t.elapsed() >= Duration::from_millis(1900) && t.elapsed() < Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );
    drop(r);
    assert_clean(&s, &f, 0, tasks, 0, "head at 1 byte/s").await;

    // A Content-Length body at 1 byte/s: `total` cuts it. Pingora writes such a body to
    // the client when it completes (SSE and other chunked bodies go event by event), so
    // the client sees the 200 and the bytes that came when the cut happens, and a body
    // that must not look complete.
    let f = fault_server(Fault::Slow(Duration::from_secs(1), true)).await;
    let (s, tasks) = start(&f, "first_byte: 2s, idle: 2s, total: 3s").await;
    let t = Instant::now();
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    let (text, completed) = read_stream(r).await;
    assert!(!completed, "{text:?}");
    assert!(
        text.starts_with("{\""),
        "bytes already sent were delivered: {text:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(2900) && t.elapsed() < Duration::from_secs(6),
        "{:?}",
        t.elapsed()
    );
    assert_clean(&s, &f, 0, tasks, 0, "body at 1 byte/s").await;
    assert_eq!(f.answered.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_closed_at_random_lose_no_request() {
    let f = fault_server(Fault::RandomKeepAliveClose).await;
    let (s, tasks) = start(&f, "first_byte: 2s").await;
    // Sequential requests find pooled connections the server has just closed; concurrent
    // ones race the closes.
    for i in 0..60 {
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200, "request {i}: {}", error_of(&r));
        r.bytes().await.unwrap();
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut set = tokio::task::JoinSet::new();
    let concurrent = http_client();
    for _ in 0..8 {
        let (c, url) = (concurrent.clone(), s.url("/openai/v1/chat/completions"));
        set.spawn(async move {
            for _ in 0..25 {
                let r = c.post(&url).json(&chat_body(false)).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    drop(concurrent);
    assert_eq!(f.answered.load(Ordering::SeqCst), 260);
    assert!(
        f.accepted.load(Ordering::SeqCst) > 50,
        "the server did close connections"
    );
    // Healthy idle connections may stay pooled; the pool is bounded. The dropped client
    // leaves its pool's idle timer behind until its next tick, and under a loaded machine
    // (the whole suite in parallel) a connection task or two of its 8 connections can
    // outlive the 5 s wait (CI saw 2 over a slack of 2, once). A leak per request would
    // show as hundreds: 260 requests went through, so a slack of 8 still catches it.
    assert_clean(&s, &f, 128, tasks, 8, "random keep-alive closes").await;
}

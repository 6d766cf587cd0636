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

/// A slow reader costs the sidecar a small, bounded amount of memory, whatever the size
/// of the response, and the provider is slowed down to the reader's pace: 50 clients each
/// read a 64 MiB download at about 256 KiB/s through the real binary, and the sidecar's
/// RSS and the bytes the provider got rid of are measured while they read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_large_response_cost_bounded_memory_and_slow_the_provider() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CLIENTS: usize = 50;
    const SIZE: u64 = 64 << 20;
    const PIECE: usize = 64 * 1024;
    const READ_FOR: Duration = Duration::from_secs(4);

    // The provider: a 64 MiB body to every request, written as fast as TCP takes it,
    // counting what the kernel accepted. Small socket buffers on both outer ends, so what
    // is in flight is what the sidecar holds (or has its kernel hold).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(64 * 1024).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(128).unwrap();
    let up = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    crate::support::upstreams::accept_for(listener, Duration::from_secs(60), move |mut tcp| {
        let sent = counter.clone();
        async move {
            let mut buf = Vec::new();
            if crate::support::upstreams::read_request(&mut tcp, &mut buf)
                .await
                .is_none()
            {
                return;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {SIZE}\r\n\r\n"
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let piece = vec![b'x'; PIECE];
            let mut left = SIZE;
            while left > 0 {
                let n = (left as usize).min(PIECE);
                match tcp.write(&piece[..n]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => {
                        left -= k as u64;
                        sent.fetch_add(k as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    });

    let (_dir, path) = crate::support::binary_config(&openai_to(&format!("http://{up}"), "k"));
    let (child, reverse, _admin, _logs) = crate::support::process::spawn_binary(&path);
    let pid = child.0.id();
    let rss_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let c = reqwest::Client::new();
    // Warm up: one small request, so the base has the sidecar's first-use allocations.
    let warm = c
        .post(format!("http://{reverse}/openai/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    drop(warm); // hangs up on the 64 MiB answer
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib();
    let sent_before = sent.load(Ordering::Relaxed);

    let addr: std::net::SocketAddr = reverse.parse().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let read = read.clone();
        clients.push(tokio::spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(64 * 1024).unwrap();
            let mut tcp = sock.connect(addr).await.unwrap();
            tcp.write_all(b"GET /openai/v1/files/f/content HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            // 16 KiB every 62.5 ms: 256 KiB/s.
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0u64;
            let mut status = String::new();
            let end = Instant::now() + READ_FOR;
            while Instant::now() < end {
                let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                    .await
                    .expect("the download stalled")
                    .unwrap();
                assert!(n > 0, "the sidecar closed the download");
                if status.is_empty() {
                    status = String::from_utf8_lossy(&buf[..n.min(12)]).into_owned();
                }
                got += n as u64;
                read.fetch_add(n as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(62_500)).await;
            }
            (status, got, tcp)
        }));
    }
    // Sample while they read; keep the peak, and how far the provider is ahead of the
    // readers halfway through.
    let mut peak = base;
    let start = Instant::now();
    let mut halfway = None;
    while start.elapsed() < READ_FOR {
        peak = peak.max(rss_kib());
        if halfway.is_none() && start.elapsed() >= READ_FOR / 2 {
            halfway = Some((
                sent.load(Ordering::Relaxed) - sent_before,
                read.load(Ordering::Relaxed),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conns = Vec::new();
    for h in clients {
        let (status, got, tcp) = h.await.unwrap();
        assert_eq!(status, "HTTP/1.1 200", "a download did not start");
        assert!(got > 0);
        conns.push(tcp);
    }
    peak = peak.max(rss_kib());
    let provider_sent = sent.load(Ordering::Relaxed) - sent_before;
    let clients_read = read.load(Ordering::Relaxed);
    drop(conns);
    let per_reader_kib = peak.saturating_sub(base) / CLIENTS as u64;
    let mib = |b: u64| b as f64 / CLIENTS as f64 / 1048576.0;
    let ahead = mib(provider_sent.saturating_sub(clients_read));
    let (sent_half, read_half) = halfway.expect("sampled halfway");
    // From halfway to the end: what the provider sent beyond what the readers took.
    let ahead_late = mib((provider_sent - sent_half).saturating_sub(clients_read - read_half));
    eprintln!(
        "RSS {base} KiB -> peak {peak} KiB: {per_reader_kib} KiB per slow reader; per reader, the \
         provider sent {:.2} MiB, the client read {:.2} MiB: {ahead:.2} MiB ahead at the end, \
         {ahead_late:.2} MiB of it gained in the second half",
        mib(provider_sent),
        mib(clients_read)
    );
    // The target: 256 KiB per slow response beyond a stream's base (itself well under
    // 256 KiB). A queue of response pieces per reader would cost megabytes each.
    assert!(
        per_reader_kib <= 512,
        "{per_reader_kib} KiB of sidecar memory per slow reader"
    );
    // What the provider got rid of is what the readers took plus what the sockets on the
    // way hold (kernel buffers, filled in the first moments): nowhere near 64 MiB each,
    // and in the second half it sends at the readers' pace.
    assert!(
        ahead < 16.0,
        "the provider is {ahead:.1} MiB ahead of each reader"
    );
    assert!(
        ahead_late < 1.5,
        "the provider gained {ahead_late:.2} MiB per reader in the second half: the sidecar did not slow it down"
    );
}

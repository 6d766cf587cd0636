//! Reloads and shutdown while a load generator runs: nothing already accepted is lost.

use crate::support::*;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Config generation `i`: the key, the tenant header, a route and a limit all change.
fn generation(mock: &str, i: usize) -> String {
    format!(
        r#"server: {{ reload_debounce: 20ms }}
tenant: {{ id: gen-{i}, headers: {{ x-gen: "{{tenant}}" }} }}
providers:
  mock:
    kind: openai
    base_url: {mock}/v1
    auth: {{ type: bearer, token: "sk-gen-{i}" }}
routes:
  - match: {{ path_prefix: /openai/v1 }}
    provider: mock
  - match: {{ path_prefix: /extra-{i}/v1 }}
    provider: mock
    name: extra-{i}
limits:
  rules:
    - {{ name: rate, scope: [tenant], requests: {{ rate: {rate}/s, burst: 100000 }} }}
    - {{ name: slots, concurrency: {{ max: {slots} }} }}
"#,
        rate = 100_000 + i,
        slots = 1000 + i,
    )
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    bad_status: AtomicU64,
    errors: AtomicU64,
    incomplete_streams: AtomicU64,
    /// Clients that ended at a refusal or an error before SIGTERM was sent.
    ended_before_term: AtomicU64,
}

async fn reloads(s: &TestSidecar) -> f64 {
    s.metric(r#"llm_sidecar_config_reloads_total{result="success"}"#)
        .await
}

/// One request, checked end to end: a 2xx and, for a stream, its `[DONE]`.
async fn one(c: &reqwest::Client, url: &str, stream: bool, t: &Tally) {
    let r = match c.post(url).json(&chat_body(stream)).send().await {
        Ok(r) => r,
        Err(_) => {
            t.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if !r.status().is_success() {
        t.bad_status.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut body = r.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => text.extend_from_slice(&b),
            Err(_) => {
                t.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let done = !stream || text.windows(12).any(|w| w == b"data: [DONE]");
    if done {
        t.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        t.incomplete_streams.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_nothing() {
    let m = default_mock().await;
    let s = TestSidecar::start(&generation(&m.url(), 0)).await;
    let url = s.url("/openai/v1/chat/completions");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Streams that start before the first reload and end after the last ones: 200
    // events 40 ms apart take 8 s.
    let mut long = Vec::new();
    for _ in 0..3 {
        let (c, url) = (http_client(), url.clone());
        long.push(tokio::spawn(async move {
            let r = c
                .post(&url)
                .header("x-mock-chunks", "200")
                .header("x-mock-interval-ms", "40")
                .json(&chat_body(true))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            read_stream(r).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The load: 6 clients, one request after another, a third of them streams.
    let mut workers = Vec::new();
    for w in 0..6 {
        let (c, url, t, stop) = (http_client(), url.clone(), tally.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                one(&c, &url, (n + w) % 3 == 0, &t).await;
                n += 1;
            }
        }));
    }

    let before = reloads(&s).await;
    for i in 1..=50 {
        let yaml = generation(&m.url(), i);
        if i % 2 == 0 {
            s.write_in_place(&yaml);
        } else {
            s.rename_replace(&yaml);
        }
        let want = before + i as f64;
        eventually(
            &format!("reload {i} applied"),
            Duration::from_secs(10),
            || async { reloads(&s).await >= want },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    for h in long {
        let (text, completed) = h.await.unwrap();
        assert!(
            completed && text.contains("data: [DONE]"),
            "a stream started before the reloads was cut"
        );
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    assert_eq!(
        tally.bad_status.load(Ordering::Relaxed),
        0,
        "non-2xx answers during reloads"
    );
    assert_eq!(
        tally.errors.load(Ordering::Relaxed),
        0,
        "connection errors during reloads"
    );
    assert_eq!(
        tally.incomplete_streams.load(Ordering::Relaxed),
        0,
        "streams cut during reloads"
    );
    assert!(ok >= 200, "the load ran: {ok} requests");
    assert_eq!(
        metric_value(
            &s.metrics().await,
            r#"llm_sidecar_config_reloads_total{result="failure"}"#
        ),
        0.0
    );
    // Every request carried one whole generation: its key and its tenant agree.
    let recorded = m.recorded();
    assert!(!recorded.is_empty());
    for r in &recorded {
        let key = r.header("authorization").unwrap_or_default();
        let generation = r.header("x-gen").unwrap_or_default();
        assert_eq!(
            key.strip_prefix("Bearer sk-"),
            Some(generation),
            "a request mixed two configs"
        );
    }
    // The last generation serves now, its new route included.
    m.clear();
    let r = s.chat("/extra-50/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.recorded()[0].header("authorization"),
        Some("Bearer sk-gen-50")
    );
    assert_eq!(
        s.chat("/extra-49/v1/chat/completions", false)
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_every_accepted_request() {
    let m = default_mock().await;
    let (_dir, path) = binary_config(&format!(
        "server: {{ grace_period: 10s }}\n{}",
        openai_to(&m.url(), "k")
    ));
    let (mut child, reverse, _admin, logs) = spawn_binary(&path);
    let url = format!("http://{reverse}/openai/v1/chat/completions");

    // 12 clients, a new connection per request; slow answers (300 ms) and streams, so
    // that many are in flight when SIGTERM comes. Each stops at its first refusal.
    let tally = Arc::new(Tally::default());
    let refused = Arc::new(AtomicU64::new(0));
    let sent_after_term = Arc::new(AtomicU64::new(0));
    let term = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..12u64 {
        let (url, t, refused, term, after) = (
            url.clone(),
            tally.clone(),
            refused.clone(),
            term.clone(),
            sent_after_term.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            for n in 0u64.. {
                let stream = (n + w) % 3 == 0;
                if term.load(Ordering::SeqCst) {
                    after.fetch_add(1, Ordering::Relaxed);
                }
                let r = c
                    .post(&url)
                    .header("x-mock-latency-ms", "300")
                    .header("x-mock-interval-ms", "20")
                    .header("x-mock-chunks", "10")
                    .json(&chat_body(stream))
                    .send()
                    .await;
                match r {
                    Err(e) if e.is_connect() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        if !term.load(Ordering::SeqCst) {
                            t.ended_before_term.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    Err(_) => {
                        t.errors.fetch_add(1, Ordering::Relaxed);
                        if !term.load(Ordering::SeqCst) {
                            t.ended_before_term.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    Ok(r) if !r.status().is_success() => {
                        t.bad_status.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let (text, completed) = read_stream(r).await;
                        if completed && (!stream || text.contains("data: [DONE]")) {
                            t.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            t.incomplete_streams.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    // Under way: every client has had answers, and more are at the provider.
    eventually("the load is running", WAIT, || async {
        tally.ok.load(Ordering::Relaxed) >= 24
    })
    .await;
    let before_term = m.request_count();
    term.store(true, Ordering::SeqCst);
    signal(&child, libc::SIGTERM);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    let log: Vec<String> = logs.try_iter().collect();
    let status = status.unwrap_or_else(|| panic!("no exit after draining:\n{}", log.join("\n")));
    assert!(status.success(), "{status:?}");

    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    assert_eq!(
        tally.bad_status.load(Ordering::Relaxed),
        0,
        "non-2xx during the drain"
    );
    assert_eq!(
        tally.incomplete_streams.load(Ordering::Relaxed),
        0,
        "responses cut during the drain"
    );
    assert!(
        before_term >= 24,
        "the load ran: {before_term} requests before SIGTERM"
    );
    // No client was turned away before SIGTERM: every refusal or reset came after it.
    assert_eq!(
        tally.ended_before_term.load(Ordering::Relaxed),
        0,
        "clients refused or reset before SIGTERM"
    );
    // The drain was tested against new requests, not only those in flight. (Not one per
    // client: a client whose last connection sat in the listen backlog when the listener
    // closed is reset without sending another.)
    assert!(
        sent_after_term.load(Ordering::Relaxed) >= 1,
        "no request was sent after SIGTERM"
    );
    // Every request that reached the provider was answered in full: nothing accepted was
    // dropped. A client whose connection was still in the listen backlog when the
    // listener closed sees a reset before its request was read; that, or a refused
    // connect, is how a new connection is turned away.
    assert_eq!(
        m.request_count(),
        ok,
        "requests that reached the provider but not the client"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed) + errors,
        12,
        "every client ended at a refusal"
    );
    assert!(
        log.iter().any(|l| l.contains("drain")),
        "{}",
        log.join("\n")
    );
}

/// Two bursts of 2,000 new SSE streams, each burst opened within half a second, to a
/// provider on loopback: every stream is delivered whole, in both bursts. The sidecar
/// opens about as many new connections to the provider as it gets; a burst of them must
/// not look like the provider failing (its breaker opening would turn the second burst
/// into 503s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bursts_of_2000_new_streams_are_all_delivered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STREAMS: usize = 2000;
    const SPREAD: Duration = Duration::from_millis(500);

    let m = mock(llm_sidecar::mock::MockOptions {
        interval: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let (_dir, path) = binary_config(&openai_to(&m.url(), "k"));
    let (_child, reverse, admin, _logs) = spawn_binary(&path);
    let addr: std::net::SocketAddr = reverse.parse().unwrap();
    let body = chat_body(true).to_string();
    let request: Arc<[u8]> = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: sidecar\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();

    for burst in 1..=2 {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..STREAMS)
            .map(|i| {
                let request = request.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(start + SPREAD * i as u32 / STREAMS as u32).await;
                    let run = async {
                        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                        tcp.write_all(&request).await.ok()?;
                        let mut answer = Vec::new();
                        tcp.read_to_end(&mut answer).await.ok()?;
                        Some(String::from_utf8_lossy(&answer).into_owned())
                    };
                    match tokio::time::timeout(Duration::from_secs(60), run).await {
                        Ok(Some(a)) => a,
                        Ok(None) => "socket error".to_string(),
                        Err(_) => "no answer in 60 s".to_string(),
                    }
                })
            })
            .collect();
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            let a = t.await.unwrap();
            let kind = if a.starts_with("HTTP/1.1 200") && a.contains("data: [DONE]") {
                "delivered".to_string()
            } else {
                a.lines().next().unwrap_or("").to_string()
                    + a.find("\"type\"")
                        .map_or("", |i| &a[i..(i + 40).min(a.len())])
            };
            *outcomes.entry(kind).or_default() += 1;
        }
        assert_eq!(
            outcomes.get("delivered").copied().unwrap_or(0),
            STREAMS,
            "burst {burst}: {outcomes:?}"
        );
    }
    let text = metrics_at(&http_client(), &admin).await;
    assert_eq!(
        crate::support::metrics::series("llm_sidecar_breaker_opened_total").zero_or_absent(&text),
        0.0,
        "the breaker opened"
    );
}

/// One HTTP/1.1 exchange on an open connection: the status and the `x-llm-sidecar-error`
/// header of the answer (its body read by its Content-Length, so the connection stays
/// usable).
async fn exchange_on(tcp: &mut tokio::net::TcpStream, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut piece = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut piece))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&piece[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(str::trim)
                .map(str::to_string)
        })
    };
    let len: usize = header("content-length")
        .expect("a content-length")
        .parse()
        .unwrap();
    while buf.len() < head_end + len {
        let mut piece = [0u8; 4096];
        let n = tcp.read(&mut piece).await.unwrap();
        assert!(n > 0, "body cut");
        buf.extend_from_slice(&piece[..n]);
    }
    let status = head[9..12].parse().unwrap();
    (status, header("x-llm-sidecar-error").unwrap_or_default())
}

/// Out of file descriptors, the sidecar cannot open a socket to the provider: that is
/// its own limit, answered `503 local_connect`, and the provider's breaker does not count
/// it (with `consecutive_failures: 2`, counting would open it at once). Once descriptors
/// are free again the same connection gets the provider's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_local_sockets_is_not_the_provider_failing() {
    const FDS: u32 = 64;
    let m = default_mock().await;
    let (_dir, path) = binary_config(&openai_to(&m.url(), "k").replace(
        "    auth:",
        "    breaker: { consecutive_failures: 2 }\n    auth:",
    ));
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FDS} && exec \"$0\" run -c \"$1\""))
        .arg(env!("CARGO_BIN_EXE_llm-sidecar"))
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = crate::support::process::ChildGuard(child);
    let (reverse, admin) = crate::support::process::listening_addrs(stderr);
    let body = chat_body(false).to_string();
    let request = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: sidecar\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );

    // The app's connection, accepted while descriptors are free; then idle connections
    // until the sidecar has none left (those past the limit wait in the accept queue).
    let mut app = tokio::net::TcpStream::connect(&reverse).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = Vec::new();
    for _ in 0..FDS {
        idle.push(tokio::net::TcpStream::connect(&reverse).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        let (status, error) = exchange_on(&mut app, request.as_bytes()).await;
        assert_eq!(
            (status, error.as_str()),
            (503, "local_connect"),
            "request {i} without a free descriptor"
        );
    }
    drop(idle);
    let mut answer = (0, String::new());
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = exchange_on(&mut app, request.as_bytes()).await;
        if answer.0 == 200 {
            break;
        }
    }
    assert_eq!(answer.0, 200, "descriptors free again: {answer:?}");
    let text = metrics_at(&http_client(), &admin).await;
    assert_eq!(
        crate::support::metrics::series("llm_sidecar_breaker_opened_total").zero_or_absent(&text),
        0.0,
        "the breaker counted the sidecar's own limit"
    );
}

//! Hostile clients, as raw bytes: a request-smuggling corpus, hop-by-hop abuse, oversized
//! messages, slowloris and HTTP/2 floods. Each hostile request gets a 400-class answer
//! (400, 408, 413, 431) or a clean close, never reaches the provider, and the sidecar serves
//! a good request right after it.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[]}"#;

/// `(name, raw bytes)`. Every case is written with `format!` so they read alike.
#[allow(clippy::useless_format)]
fn smuggling_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let smuggled = "GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&'static str, String)> = vec![
        // CL.TE / TE.CL
        ("CL then TE", format!("{PATH}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX")),
        ("TE then CL", format!("{PATH}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n")),
        ("CL.TE with a smuggled request", format!("{PATH}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE.CL with a smuggled request", format!("{PATH}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len())),
        ("CL: 0 and TE", format!("{PATH}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        // Content-Length
        ("two different CL", format!("{PATH}Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde")),
        ("two identical CL", format!("{PATH}Content-Length: 5\r\nContent-Length: 5\r\n\r\nabcde")),
        ("CL 0 then CL with a smuggled request", format!("{PATH}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len())),
        ("CL list", format!("{PATH}Content-Length: 4, 5\r\n\r\nabcde")),
        ("CL list of equal values", format!("{PATH}Content-Length: 5, 5\r\n\r\nabcde")),
        ("CL with a plus sign", format!("{PATH}Content-Length: +5\r\n\r\nabcde")),
        ("CL negative", format!("{PATH}Content-Length: -1\r\n\r\nabcde")),
        ("CL in hex", format!("{PATH}Content-Length: 0x5\r\n\r\nabcde")),
        ("CL with trailing garbage", format!("{PATH}Content-Length: 5abc\r\n\r\nabcde")),
        ("CL with an inner space", format!("{PATH}Content-Length: 1 2\r\n\r\nabcdefghijkl")),
        ("CL overflowing u64", format!("{PATH}Content-Length: 99999999999999999999999\r\n\r\nabcde")),
        ("CL empty", format!("{PATH}Content-Length:\r\n\r\nabcde")),
        ("CL with a decimal point", format!("{PATH}Content-Length: 5.0\r\n\r\nabcde")),
        // Transfer-Encoding obfuscation
        ("TE xchunked", format!("{PATH}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n")),
        ("TE chunked then identity", format!("{PATH}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")),
        ("TE gzip only", format!("{PATH}Transfer-Encoding: gzip\r\n\r\nabcd")),
        ("TE chunked twice in one header", format!("{PATH}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")),
        ("TE in two headers", format!("{PATH}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n")),
        ("TE quoted", format!("{PATH}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n")),
        ("TE with a vertical tab", format!("{PATH}Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n")),
        ("TE with a trailing NUL", format!("{PATH}Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n")),
        ("TE empty with CL", format!("{PATH}Transfer-Encoding:\r\nContent-Length: 5\r\n\r\nabcde")),
        ("TE on HTTP/1.0", format!("POST /openai/v1/chat/completions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        // chunk-size tricks
        ("chunk size overflowing u64", format!("{PATH}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nabcde\r\n0\r\n\r\n")),
        ("chunk size negative", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n-1\r\nabcde\r\n0\r\n\r\n")),
        ("chunk size with 0x", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n")),
        ("chunk size not hex", format!("{PATH}Transfer-Encoding: chunked\r\n\r\nzz\r\nabcde\r\n0\r\n\r\n")),
        ("chunk data longer than its size", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n")),
        ("chunk without CRLF after data", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n5\r\nabcdeX0\r\n\r\n")),
        ("chunk size with a bare LF", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n5\nabcde\r\n0\r\n\r\n")),
        ("chunk extension with a bare LF", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n5;a=b\nabcde\r\n0\r\n\r\n")),
        // whitespace after a size is allowed only before a `;` extension (RFC 9112 7.1)
        ("chunk size then a space", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{:x} \r\n{BODY}\r\n0\r\n\r\n", BODY.len())),
        ("chunk size then a tab", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{:x}\t\r\n{BODY}\r\n0\r\n\r\n", BODY.len())),
        ("last chunk size then a space", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0 \r\n\r\n", BODY.len())),
        ("chunk size with no digits", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n;ext\r\n\r\n")),
        // after the last chunk only trailer field lines may come
        ("a request line as a trailer", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n{smuggled}", BODY.len())),
        ("a trailer line without a colon", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\nX-Ok: 1\r\nnot a field\r\n\r\n", BODY.len())),
        // line endings and folding
        ("bare LF line endings", format!("POST /openai/v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 5\n\nabcde")),
        ("a bare LF before Content-Length", format!("{PATH}X-A: b\nContent-Length: 5\r\n\r\nabcde")),
        ("a bare CR inside the head", format!("{PATH}X-A: b\rContent-Length: 5\r\n\r\nabcde")),
        ("obs-fold of an ordinary header", format!("{PATH}X-A: b\r\n c\r\nContent-Length: 5\r\n\r\nabcde")),
        ("obs-fold of Transfer-Encoding", format!("{PATH}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")),
        ("obs-fold of Content-Length", format!("{PATH}Content-Length:\r\n 5\r\n\r\nabcde")),
        // bad bytes in names and values
        ("NUL in a header value", format!("{PATH}X-A: b\x00c\r\nContent-Length: 5\r\n\r\nabcde")),
        ("NUL in a header name", format!("{PATH}X-\x00A: b\r\nContent-Length: 5\r\n\r\nabcde")),
        ("space before the colon of CL", format!("{PATH}Content-Length : 5\r\n\r\nabcde")),
        ("space before the colon of TE", format!("{PATH}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n")),
        ("tab before the colon", format!("{PATH}Content-Length\t: 5\r\n\r\nabcde")),
        ("header name with a bracket", format!("{PATH}Content(Length: 5\r\n\r\nabcde")),
        ("header line without a colon", format!("{PATH}Content-Length 5\r\n\r\nabcde")),
        // request line and Host
        ("two spaces in the request line", format!("POST  /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")),
        ("HTTP/1.1 without Host", format!("POST /openai/v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde")),
        ("two Host headers", format!("{PATH}Host: y\r\nContent-Length: 5\r\n\r\nabcde")),
        ("unknown HTTP version", format!("POST /openai/v1/chat/completions HTTP/1.7\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")),
        ("request target with a space", format!("POST /openai/v1/chat completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")),
        ("request target with a fragment", format!("POST /openai/v1/chat/completions#x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")),
    ];
    cases
        .into_iter()
        .map(|(n, s)| (n, s.into_bytes()))
        .collect()
}

async fn assert_serves(
    s: &TestSidecar,
    m: &llm_sidecar::mock::MockServer,
    before: u64,
    case: &str,
) {
    assert_eq!(m.request_count(), before, "{case}: reached the provider");
    let r = s.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200, "{case}: a good request right after failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smuggling_corpus_is_refused() {
    let m = default_mock().await;
    // A body that never completes its framing gets 408 after body_timeout.
    let s = TestSidecar::start(&format!(
        "request: {{ body_timeout: 1s }}\n{}",
        openai_to(&m.url(), "k")
    ))
    .await;
    let addr = s.sidecar().reverse_addr();
    let corpus = smuggling_corpus();
    assert!(corpus.len() >= 40, "{} cases", corpus.len());
    let mut failures = Vec::new();
    for (name, raw) in &corpus {
        let before = m.request_count();
        let answer = send_raw(addr, raw, Duration::from_secs(3)).await;
        let ok = match &answer {
            Answer::Status(code, _) => matches!(code, 400 | 408 | 413 | 431),
            Answer::Closed => true,
            Answer::Silent => false,
        };
        if !ok || m.request_count() != before {
            failures.push(format!(
                "{name}: {answer:?} (provider saw {})",
                m.request_count() - before
            ));
        }
        let after = m.request_count();
        assert_serves(&s, &m, after, name).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases were not refused:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

/// The framing the docs promise `400 bad_framing` for, which Pingora 0.9.1's body parser
/// (and httparse) let through: fixed in vendor/patches/pingora-core. A well-framed body
/// with an extension, and with real trailers, still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_chunk_framing_gets_400_bad_framing() {
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let addr = s.sidecar().reverse_addr();
    let n = BODY.len();
    let te = format!("{PATH}Transfer-Encoding: chunked\r\n\r\n");
    for (name, body) in [
        (
            "space after the size",
            format!("{n:x} \r\n{BODY}\r\n0\r\n\r\n"),
        ),
        (
            "tab after the size",
            format!("{n:x}\t\r\n{BODY}\r\n0\r\n\r\n"),
        ),
        (
            "a request line as a trailer",
            format!("{n:x}\r\n{BODY}\r\n0\r\nGET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
    ] {
        let before = m.request_count();
        let raw = format!("{te}{body}");
        match send_raw(addr, raw.as_bytes(), Duration::from_secs(3)).await {
            Answer::Status(400, head) => assert!(
                head.to_ascii_lowercase()
                    .contains("x-llm-sidecar-error: bad_framing"),
                "{name}: {head}"
            ),
            other => panic!("{name}: expected 400 bad_framing, got {other:?}"),
        }
        assert_serves(&s, &m, before, name).await;
    }
    for (name, body) in [
        (
            "an extension after whitespace",
            format!("{n:x} ;ext=1\r\n{BODY}\r\n0\r\n\r\n"),
        ),
        (
            "trailers",
            format!("{n:x}\r\n{BODY}\r\n0\r\nX-Checksum: abc\r\nX-B:\t2\r\n\r\n"),
        ),
    ] {
        let before = m.request_count();
        let raw = format!("{te}{body}");
        match send_raw(addr, raw.as_bytes(), Duration::from_secs(3)).await {
            Answer::Status(200, _) => {}
            other => panic!("{name}: expected 200, got {other:?}"),
        }
        assert_eq!(m.request_count(), before + 1, "{name}");
    }
}

/// A POST of `BODY` with extra header lines.
fn post_with(extra: &str) -> Vec<u8> {
    format!("{PATH}Content-Type: application/json\r\nAuthorization: Bearer sk-app-forged\r\nContent-Length: {}\r\n{extra}\r\n{BODY}", BODY.len()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_cannot_unframe_or_unsign_a_request() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "tenant: {{ id: team-a, headers: {{ x-tenant: \"{{tenant}}\" }} }}\n{}",
        openai_to(&m.url(), "sk-real")
    ))
    .await;
    let addr = s.sidecar().reverse_addr();

    // Naming a framing or routing header in Connection would make a proxy that honours
    // it drop the header and send the body unframed, or to another host: refused.
    for (name, extra) in [
        ("Connection: content-length", "Connection: content-length\r\n"),
        ("Connection: Content-Length, close", "Connection: Content-Length, close\r\n"),
        ("Connection: transfer-encoding", "Connection: transfer-encoding\r\n"),
        ("Connection: host", "Connection: host\r\n"),
        // The sidecar never hands a connection over.
        ("Upgrade to websocket", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
    ] {
        let before = m.request_count();
        let answer = send_raw(addr, &post_with(extra), Duration::from_secs(3)).await;
        match &answer {
            Answer::Status(400, text) => assert!(text.contains("x-llm-sidecar-error: bad_request"), "{name}: {text}"),
            other => panic!("{name}: expected 400, got {other:?}"),
        }
        assert_serves(&s, &m, before, name).await;
    }

    // The rest is hop-by-hop and goes no further than the sidecar; the credential and
    // the tenant header are the sidecar's, whatever Connection names.
    for (name, extra) in [
        ("Connection naming the credential", "Connection: authorization\r\n"),
        ("Connection naming the tenant header", "Connection: x-tenant\r\nX-Tenant: forged\r\n"),
        ("Connection naming a custom header", "Connection: x-secret-hop\r\nX-Secret-Hop: 1\r\n"),
        ("Keep-Alive", "Keep-Alive: timeout=5\r\n"),
        ("Proxy-Connection", "Proxy-Connection: keep-alive\r\n"),
        ("TE: trailers", "TE: trailers\r\n"),
        ("Upgrade to h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        ("Proxy-Authorization", "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"),
    ] {
        m.clear();
        let answer = send_raw(addr, &post_with(extra), Duration::from_secs(3)).await;
        let Answer::Status(code, text) = &answer else {
            panic!("{name}: no answer: {answer:?}");
        };
        assert_eq!(*code, 200, "{name}: {text}");
        let rec = m.recorded();
        let got = rec.last().unwrap_or_else(|| panic!("{name}: not recorded"));
        assert_eq!(got.header("authorization"), Some("Bearer sk-real"), "{name}");
        assert_eq!(got.header("x-tenant"), Some("team-a"), "{name}");
        assert_eq!(got.body.as_ref(), BODY.as_bytes(), "{name}: body");
        for hop in ["keep-alive", "proxy-connection", "te", "upgrade", "http2-settings", "proxy-authorization", "x-secret-hop", "sec-websocket-key"] {
            assert!(got.header(hop).is_none(), "{name}: {hop} reached the provider");
        }
        assert_serves(&s, &m, m.request_count(), name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_get_431_and_413() {
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "request: {{ max_header_bytes: 8KiB, max_body_bytes: 64KiB }}\n{}",
        openai_to(&m.url(), "k")
    ))
    .await;
    let addr = s.sidecar().reverse_addr();
    let many_headers: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_body = "x".repeat(70 * 1024);
    let chunked_big: String = (0..20)
        .map(|_| format!("1000\r\n{}\r\n", "y".repeat(4096)))
        .collect();
    let cases: Vec<(&str, String, &[u16])> = vec![
        ("one header of 9KiB", format!("{PATH}X-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(9 * 1024)), &[431]),
        ("one header of 200KiB", format!("{PATH}X-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(200 * 1024)), &[431, 400]),
        ("2000 headers", format!("{PATH}{many_headers}Content-Length: 0\r\n\r\n"), &[431, 400]),
        ("a 9KiB request target", format!("POST /openai/v1/chat/completions?q={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "q".repeat(9 * 1024)), &[431, 414, 400]),
        ("a declared body over the limit", format!("{PATH}Content-Length: {}\r\n\r\n", 65 * 1024), &[413]),
        ("a sent body over the limit", format!("{PATH}Content-Length: {}\r\n\r\n{big_body}", big_body.len()), &[413]),
        ("a chunked body over the limit", format!("{PATH}Transfer-Encoding: chunked\r\n\r\n{chunked_big}0\r\n\r\n"), &[413]),
    ];
    for (name, raw, want) in cases {
        let before = m.request_count();
        match send_raw(addr, raw.as_bytes(), Duration::from_secs(3)).await {
            Answer::Status(code, text) => assert!(
                want.contains(&code),
                "{name}: {code} not in {want:?}: {}",
                &text[..text.len().min(300)]
            ),
            Answer::Closed => {}
            Answer::Silent => panic!("{name}: no answer"),
        }
        assert_serves(&s, &m, before, name).await;
    }
}

/// Lets this process hold the slowloris connections (both ends are in it).
fn raise_open_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Opens a connection, sends `prefix` (a whole request) and reads its answer, then sends
/// a never-ending head one byte every `every`. Returns how long after its first byte the
/// sidecar closed the connection, or `None` if it was still open after `give_up`.
async fn trickle(
    addr: SocketAddr,
    prefix: Vec<u8>,
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let mut buf = [0u8; 512];
    if !prefix.is_empty() {
        // A whole request first, answered before the slow one starts (a byte sent
        // earlier would be pipelining, which closes the connection after the answer).
        tcp.write_all(&prefix).await.ok()?;
        let mut answer = Vec::new();
        while !head_complete(&answer) {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let started = tokio::time::Instant::now();
    let head = b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut i = 0usize;
    loop {
        if started.elapsed() > give_up {
            return None;
        }
        let byte = head.get(i).copied().unwrap_or(b'a');
        i += 1;
        if tcp.write_all(&[byte]).await.is_err() {
            return Some(started.elapsed());
        }
        match tokio::time::timeout(every, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_do_not_delay_others() {
    raise_open_files(4096);
    let m = default_mock().await;
    let s = TestSidecar::start(&format!(
        "request: {{ header_timeout: 2s }}\n{}",
        openai_to(&m.url(), "k")
    ))
    .await;
    let addr = s.sidecar().reverse_addr();
    let every = Duration::from_millis(200);
    let give_up = Duration::from_secs(8);

    let mut slow = tokio::task::JoinSet::new();
    for i in 0..500 {
        // Most trickle their first request; some first send a whole request on the same
        // keep-alive connection, so the deadline of a second head is tested too.
        let prefix = if i % 10 == 0 {
            b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()
        } else {
            Vec::new()
        };
        slow.spawn(async move { (i, trickle(addr, prefix, every, give_up).await) });
    }
    // A connection that sends nothing at all.
    let silent = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(give_up, tcp.read(&mut b))
            .await
            .ok()
            .map(|_| started.elapsed())
    });

    // Meanwhile, ordinary requests keep their usual latency.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        let t = tokio::time::Instant::now();
        let r = s.chat("/openai/v1/chat/completions", false).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "an ordinary request took {worst:?} beside 500 slowloris connections"
    );

    let mut closed = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (i, t) = r.unwrap();
        let t = t.unwrap_or_else(|| panic!("slowloris connection {i} was still open after 8s"));
        closed.push(t);
    }
    let first = closed.iter().min().unwrap();
    let last = closed.iter().max().unwrap();
    assert!(
        *first >= Duration::from_millis(1900),
        "cut before header_timeout: {first:?}"
    );
    assert!(
        *last < Duration::from_secs(5),
        "cut long after header_timeout (2s): {last:?}"
    );
    let silent = silent
        .await
        .unwrap()
        .expect("a silent connection was still open after 8s");
    assert!(
        silent >= Duration::from_millis(1900) && silent < Duration::from_secs(4),
        "{silent:?}"
    );
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
}

/// HTTP/2 frames, written by hand so the test controls exactly what goes on the wire.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// HPACK without Huffman or the dynamic table: `method` and `:scheme http` from the
    /// static table, `:path` and `:authority` as literals with indexed names.
    pub fn request_block(post: bool, path: &str) -> Vec<u8> {
        let mut b = vec![if post { 0x83 } else { 0x82 }, 0x86, 0x04, path.len() as u8];
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(&[0x01, 1, b'x']);
        b
    }

    /// Frames in `bytes`: (type, flags, stream, payload).
    pub fn parse(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            if bytes.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }
}

/// Writes `raw` after the preface and SETTINGS, then reads until the server closes or
/// `within` passes; returns the frames it sent.
async fn h2_exchange(
    addr: SocketAddr,
    raw: &[u8],
    within: Duration,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    use h2raw::*;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    out.extend_from_slice(raw);
    let (mut rd, mut wr) = tcp.split();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + within;
    let write = async {
        // The server may close mid-write: what it sent before matters.
        let _ = wr.write_all(&out).await;
        std::future::pending::<()>().await
    };
    tokio::pin!(write);
    loop {
        tokio::select! {
            () = &mut write => {}
            r = tokio::time::timeout_at(deadline, rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            },
        }
    }
    parse(&got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    use h2raw::*;
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let addr = s.sidecar().reverse_addr();
    let block = request_block(false, "/openai/v1/models");
    let mut raw = Vec::new();
    let attempts = 5000u32;
    for i in 0..attempts {
        let id = 1 + 2 * i;
        frame(&mut raw, HEADERS, END_STREAM | END_HEADERS, id, &block);
        frame(&mut raw, RST_STREAM, 0, id, &8u32.to_be_bytes()); // CANCEL
    }
    let frames = h2_exchange(addr, &raw, Duration::from_secs(10)).await;
    let goaway = frames
        .iter()
        .find(|f| f.0 == GOAWAY)
        .expect("no GOAWAY after a rapid-reset flood");
    let code = u32::from_be_bytes([goaway.3[4], goaway.3[5], goaway.3[6], goaway.3[7]]);
    assert_eq!(code, 0xb, "GOAWAY error code (ENHANCE_YOUR_CALM expected)");
    let reached = m.request_count();
    assert!(
        reached < u64::from(attempts) / 10,
        "{reached} of {attempts} reset requests reached the provider"
    );
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_floods_are_refused_past_the_concurrency_limit() {
    use h2raw::*;
    let m = default_mock().await;
    let s = TestSidecar::start(&openai_to(&m.url(), "k")).await;
    let addr = s.sidecar().reverse_addr();
    // 1000 POSTs whose bodies never come: each holds a stream open.
    let block = request_block(true, "/openai/v1/chat/completions");
    let mut raw = Vec::new();
    for i in 0..1000u32 {
        frame(&mut raw, HEADERS, END_HEADERS, 1 + 2 * i, &block);
    }
    let frames = h2_exchange(addr, &raw, Duration::from_secs(3)).await;
    let settings = frames
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .expect("server SETTINGS");
    let max_streams = settings
        .3
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
        .expect("SETTINGS_MAX_CONCURRENT_STREAMS is advertised");
    assert!(max_streams <= 1000, "max concurrent streams {max_streams}");
    let refused = frames
        .iter()
        .filter(|f| f.0 == RST_STREAM && f.3 == 7u32.to_be_bytes()) // REFUSED_STREAM
        .count();
    let goaway = frames.iter().any(|f| f.0 == GOAWAY);
    assert!(
        goaway || refused >= 1000 - max_streams as usize,
        "streams past the limit of {max_streams}: {refused} refused, no GOAWAY"
    );
    assert_eq!(
        m.request_count(),
        0,
        "a body-less POST reached the provider"
    );
    assert_eq!(
        s.chat("/openai/v1/chat/completions", false).await.status(),
        200
    );
}

//! Purpose-built upstreams for behaviours the mock provider does not cover.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

type Body = BoxBody<Bytes, Infallible>;

/// A response body fed from a channel.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An SSE upstream that sends event `n+1` only after the test acknowledges event `n`
/// (through `acks`). If anything between this upstream and the client held bytes back,
/// the client would never see event `n`, never acknowledge it, and the stream would stop
/// without `[DONE]`: completing proves there is no buffering on the way.
pub struct GatedSse {
    pub addr: SocketAddr,
    pub acks: mpsc::UnboundedSender<usize>,
}

pub async fn gated_sse(events: usize) -> GatedSse {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<usize>();
    let ack_rx = Arc::new(Mutex::new(ack_rx));
    tokio::spawn(async move {
        // The test makes one request; the server gives up after 30 s regardless.
        let Ok(Ok((tcp, _))) =
            tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
        else {
            return;
        };
        let svc = service_fn(move |_req: hyper::Request<Incoming>| {
            let ack_rx = ack_rx.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                tokio::spawn(async move {
                    let mut acks = ack_rx.lock().await;
                    for n in 0..events {
                        let ev = format!("data: {{\"n\":{n}}}\n\n");
                        if tx.send(Bytes::from(ev)).await.is_err() {
                            return;
                        }
                        match tokio::time::timeout(Duration::from_secs(10), acks.recv()).await {
                            Ok(Some(k)) if k == n => {}
                            _ => return, // never acknowledged: end without [DONE]
                        }
                    }
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                });
                let mut resp = hyper::Response::new(channel_body(rx));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });
    GatedSse { addr, acks: ack_tx }
}

/// Reads one HTTP/1.1 request (head, then Content-Length bytes) from `tcp`, keeping
/// whatever follows in `buf`; returns its body, or None when the connection ends first.
pub async fn read_request(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf.drain(..head_end + len).skip(head_end).collect())
}

/// Accepts connections on `listener` for `lifetime` (so a test's server stops by
/// itself), serving each on its own task.
pub fn accept_for<F, Fut>(listener: TcpListener, lifetime: Duration, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + lifetime;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            if let Ok((tcp, _)) = accepted {
                tokio::spawn(serve(tcp));
            }
        }
    });
}

/// A TCP server that accepts connections and reads the request but never answers, for at
/// most `hold`.
pub async fn silent(hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            if let Ok((mut tcp, _)) = accepted {
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    let _ = tokio::time::timeout_at(deadline, async {
                        while let Ok(n) = tcp.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
        }
    });
    addr
}

/// A port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// An HTTP/1.1 upstream that answers the first request on each connection (keeping it
/// alive) and closes the connection, unanswered, when a second request arrives on it: a
/// provider that dropped an idle keep-alive connection just as the proxy reused it.
/// Returns the address and the sha256 of every request body it answered.
pub async fn closes_reused_connections() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    accept_for(listener, Duration::from_secs(30), move |mut tcp| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            for nth in 0.. {
                let Some(body) = read_request(&mut tcp, &mut buf).await else {
                    return;
                };
                if nth > 0 {
                    return; // drop the connection without answering
                }
                seen.lock()
                    .unwrap()
                    .push(hex::encode(Sha256::digest(&body)));
                let answer = br#"{"object":"chat.completion","choices":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                if tcp.write_all(head.as_bytes()).await.is_err()
                    || tcp.write_all(answer).await.is_err()
                {
                    return;
                }
            }
        }
    });
    (addr, bodies)
}

/// An upstream whose answer depends on the credential presented (`Authorization` or
/// `x-api-key`): `answers` maps a credential to a status and an optional `Retry-After`;
/// anything else gets a 200 chat completion. Returns the address and, in order, the
/// credential of every request it received.
pub async fn by_credential(
    answers: Vec<(String, u16, Option<String>)>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answers = Arc::new(answers);
    let log = seen.clone();
    accept_for(listener, Duration::from_secs(60), move |tcp| {
        let (answers, log) = (answers.clone(), log.clone());
        async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let (answers, log) = (answers.clone(), log.clone());
                async move {
                    let cred = req
                        .headers()
                        .get("authorization")
                        .or_else(|| req.headers().get("x-api-key"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let _ = req.into_body().collect().await;
                    log.lock().unwrap().push(cred.clone());
                    let (status, retry_after) = answers
                        .iter()
                        .find(|(c, _, _)| *c == cred)
                        .map_or((200, None), |(_, s, r)| (*s, r.clone()));
                    let body = if status == 200 {
                        r#"{"object":"chat.completion","choices":[]}"#.to_string()
                    } else {
                        format!(
                            r#"{{"error":{{"message":"status {status}","type":"test","code":null}}}}"#
                        )
                    };
                    let mut resp = hyper::Response::new(BodyExt::boxed(http_body_util::Full::new(
                        Bytes::from(body),
                    )));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    resp.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    if let Some(r) = retry_after {
                        resp.headers_mut()
                            .insert("retry-after", http::HeaderValue::from_str(&r).unwrap());
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    });
    (addr, seen)
}

/// One scripted answer: a status, an optional `Retry-After`, and for 200s whether to
/// stream SSE that breaks after its first event.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub break_stream: bool,
}

impl Scripted {
    pub fn status(status: u16) -> Scripted {
        Scripted {
            status,
            retry_after: None,
            break_stream: false,
        }
    }
}

/// What a scripted upstream saw: per request, when it came and its body.
#[derive(Default)]
pub struct Seen {
    pub at: Vec<tokio::time::Instant>,
    pub bodies: Vec<Bytes>,
}

/// An upstream that answers its requests with `script` in order, then with 200 chat
/// completions.
pub async fn scripted(script: Vec<Scripted>) -> (SocketAddr, Arc<std::sync::Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        script,
    )));
    let log = seen.clone();
    accept_for(listener, Duration::from_secs(60), move |mut tcp| {
        let (script, log) = (script.clone(), log.clone());
        async move {
            // HTTP/1.1 by hand, so a stream can be cut without a clean end.
            let mut buf = Vec::new();
            loop {
                let Some(body) = read_request(&mut tcp, &mut buf).await else {
                    return;
                };
                {
                    let mut l = log.lock().unwrap();
                    l.at.push(tokio::time::Instant::now());
                    l.bodies.push(Bytes::from(body));
                }
                let next = script.lock().unwrap().pop_front();
                let s = next.unwrap_or(Scripted::status(200));
                if s.break_stream {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    let ev = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
                    let _ = tcp
                        .write_all(format!("{:x}\r\n", ev.len()).as_bytes())
                        .await;
                    let _ = tcp.write_all(ev).await;
                    let _ = tcp.write_all(b"\r\n").await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return; // cut: no terminating chunk
                }
                let body = if s.status == 200 {
                    r#"{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#.to_string()
                } else {
                    format!(
                        r#"{{"error":{{"message":"status {}","type":"test","code":null}}}}"#,
                        s.status
                    )
                };
                let mut resp = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    s.status,
                    body.len()
                );
                if let Some(r) = s.retry_after {
                    resp.push_str(&format!("retry-after: {r}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                if tcp.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, seen)
}

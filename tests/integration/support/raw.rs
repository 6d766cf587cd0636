//! A raw HTTP/1 client: exact bytes out, whatever comes back.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back for one raw request.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The status code (0 if unreadable) and everything read.
    Status(u16, String),
    /// The server closed the connection without a byte.
    Closed,
    /// Nothing within the bound, connection still open.
    Silent,
}

/// Sends `raw`, then reads until a complete response, a close, or `within`.
pub async fn send_raw(addr: SocketAddr, raw: &[u8], within: Duration) -> Answer {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The peer may close before everything is written: that is an answer too.
    let _ = tcp.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                if out.is_empty() {
                    return Answer::Silent;
                }
                break;
            }
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if head_complete(&out) {
                    break;
                }
            }
        }
    }
    if out.is_empty() {
        return Answer::Closed;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer::Status(status, text)
}

/// Sends a head and a body; returns what came back, empty if the server closed the
/// connection without a byte. No answer within 5 s, with the connection still open,
/// fails the test: a server that hangs on bad input has not refused it.
pub async fn raw_request(addr: SocketAddr, head: &[u8], body: &[u8]) -> String {
    let within = Duration::from_secs(5);
    match send_raw(addr, &[head, body].concat(), within).await {
        Answer::Status(_, text) => text,
        Answer::Closed => String::new(),
        Answer::Silent => panic!(
            "no answer within {within:?} and the connection still open, for {:?}",
            String::from_utf8_lossy(&head[..head.len().min(200)])
        ),
    }
}

/// A whole response head plus as much body as its Content-Length (0 when absent).
pub fn head_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    bytes.len() >= end + 4 + len
}

#[cfg(test)]
mod tests {
    /// A server that accepts and never answers is not a server that refused: the raw
    /// client fails the test instead of returning "" (which callers read as "closed").
    #[tokio::test]
    #[should_panic(expected = "no answer within")]
    async fn a_silent_server_fails_the_test() {
        let addr = crate::support::upstreams::silent(std::time::Duration::from_secs(10)).await;
        super::raw_request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"").await;
    }
}

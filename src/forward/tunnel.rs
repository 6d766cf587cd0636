//! Pass-through tunnels: bytes copied both ways, never parsed, with an idle and a total
//! time limit. Half-closes are passed on (one side's EOF shuts the other's write side),
//! so protocols that finish by closing their sending half still work.

use crate::observability::metrics::ForwardMetrics;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const BUF: usize = 16 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    Idle,
    Total,
    /// A read or write failed (a reset).
    Error,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes {
    pub upstream: u64,
    pub downstream: u64,
}

/// Copies between `client` and `upstream` until both are done or a limit is hit.
/// `early` is sent upstream first (bytes the client sent along with its request).
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: &[u8],
    idle: Duration,
    total: Duration,
    metrics: &ForwardMetrics,
) -> (End, Bytes)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    metrics.tunnels_open().inc();
    let mut bytes = Bytes::default();
    let end = copy(client, upstream, early, idle, total, &mut bytes, metrics).await;
    metrics.tunnels_open().dec();
    (end, bytes)
}

async fn copy<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: &[u8],
    idle: Duration,
    total: Duration,
    bytes: &mut Bytes,
    metrics: &ForwardMetrics,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let give_up = Instant::now() + total;
    if !early.is_empty() {
        if write(upstream, early).await.is_err() {
            return End::Error;
        }
        bytes.upstream += early.len() as u64;
        metrics.tunnel_bytes(early.len() as u64, 0);
    }
    let mut up_buf = vec![0u8; BUF];
    let mut down_buf = vec![0u8; BUF];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        let idle_at = (Instant::now() + idle).min(give_up);
        tokio::select! {
            r = client.read(&mut up_buf), if client_open => {
                match pass(r, &up_buf, upstream, &mut client_open).await {
                    Ok(n) => {
                        bytes.upstream += n;
                        metrics.tunnel_bytes(n, 0);
                    }
                    Err(()) => return End::Error,
                }
            }
            r = upstream.read(&mut down_buf), if upstream_open => {
                match pass(r, &down_buf, client, &mut upstream_open).await {
                    Ok(n) => {
                        bytes.downstream += n;
                        metrics.tunnel_bytes(0, n);
                    }
                    Err(()) => return End::Error,
                }
            }
            _ = tokio::time::sleep_until(idle_at) => {
                return if Instant::now() >= give_up { End::Total } else { End::Idle };
            }
        }
    }
    End::Closed
}

/// Passes one read on to `to`: the bytes written, or at EOF none, the read side marked
/// closed and `to`'s write side shut (a half-close). `Err` on a failed read or write.
async fn pass<W: AsyncWrite + Unpin + ?Sized>(
    read: std::io::Result<usize>,
    buf: &[u8],
    to: &mut W,
    open: &mut bool,
) -> Result<u64, ()> {
    match read {
        Ok(0) => {
            *open = false;
            let _ = to.shutdown().await;
            Ok(0)
        }
        Ok(n) => {
            write(to, &buf[..n]).await.map_err(|_| ())?;
            Ok(n as u64)
        }
        Err(_) => Err(()),
    }
}

/// Writes and flushes: Pingora's client sockets buffer writes until flushed.
async fn write<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::metrics::Metrics;

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_closes() {
        let m = Metrics::new();
        let (mut app, mut c) = tokio::io::duplex(64);
        let (mut u, mut server) = tokio::io::duplex(64);
        let t = tokio::spawn(async move {
            run(
                &mut c,
                &mut u,
                b"early-",
                Duration::from_secs(5),
                Duration::from_secs(5),
                m.forward(),
            )
            .await
        });
        app.write_all(b"hello").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early-hello");
        server.write_all(b"world").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world");
        let (end, b) = t.await.unwrap();
        assert_eq!(end, End::Closed);
        assert_eq!((b.upstream, b.downstream), (11, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_total_limits_end_the_tunnel() {
        let m = Metrics::new();
        let (_app, mut c) = tokio::io::duplex(64);
        let (mut u, _server) = tokio::io::duplex(64);
        let (end, _) = run(
            &mut c,
            &mut u,
            b"",
            Duration::from_secs(10),
            Duration::from_secs(60),
            m.forward(),
        )
        .await;
        assert_eq!(end, End::Idle);

        let (mut app, mut c) = tokio::io::duplex(64);
        let (mut u, mut server) = tokio::io::duplex(64);
        let chatter = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if app.write_all(b"x").await.is_err() {
                    return;
                }
                let _ = server.read(&mut buf).await;
            }
        });
        let (end, _) = run(
            &mut c,
            &mut u,
            b"",
            Duration::from_secs(10),
            Duration::from_secs(60),
            m.forward(),
        )
        .await;
        assert_eq!(end, End::Total);
        chatter.abort();
    }
}

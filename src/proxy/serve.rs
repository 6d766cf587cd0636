//! Serving a client's HTTP/1 connection, for both listeners (the reverse listener in
//! `server`, the forward listener's intercepted connections in `forward`): the
//! keep-alive loop with its request-head deadline, and the count of open connections
//! that shutdown waits on.

use super::SidecarProxy;
use crate::config::ConfigStore;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Proxy = HttpProxy<SidecarProxy>;

/// Counts open client connections and wakes whoever waits for zero.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    idle: Notify,
}

pub struct ConnectionGuard(Arc<Connections>);

impl Connections {
    /// Runs one client connection: counted while it lasts, cut at the hard stop.
    pub async fn serve(
        self: &Arc<Self>,
        hard_stop: &CancellationToken,
        connection: impl std::future::Future<Output = ()>,
    ) {
        let _guard = self.enter();
        tokio::select! {
            _ = connection => {}
            _ = hard_stop.cancelled() => {}
        }
    }

    fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }
    pub(crate) fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
    pub(crate) async fn wait_zero(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Pingora's HTTP/1 keep-alive loop (as in its `ServerApp` for HTTP apps), entered after
/// the sidecar's own protocol check (reverse listener) or TLS interception (forward).
///
/// Each request head must be complete by `head_deadline` (the first one) or within
/// `request.header_timeout` of its first byte (the next ones on a keep-alive connection):
/// Pingora's own read timeout restarts on every byte, so a client trickling a header a
/// byte at a time would otherwise hold its connection for ever. A connection that misses
/// the deadline is closed without an answer, as nginx does.
pub(crate) async fn serve_http1(
    proxy: &Arc<Proxy>,
    store: &ConfigStore,
    stream: Stream,
    shutdown: &ShutdownWatch,
    head_deadline: Instant,
) {
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(if *shutdown.borrow() {
        None
    } else {
        Some(KEEPALIVE_TIMEOUT.as_secs())
    });
    let mut deadline = head_deadline;
    loop {
        let served = HEAD_READ
            .scope(Cell::new(false), async {
                tokio::select! {
                    reused = proxy.process_new_http(session, shutdown) => Some(reused),
                    () = head_overdue(deadline) => None,
                }
            })
            .await;
        let reused = match served {
            Some(Some(reused)) => reused,
            Some(None) => return,
            None => {
                tracing::debug!("closing a connection whose request head was not complete in time (request.header_timeout)");
                return;
            }
        };
        let (mut stream, persistent) = reused.consume();
        let header_timeout = store.load().guards.header_timeout;
        deadline = match next_request(&mut stream, shutdown).await {
            NextRequest::Started => Instant::now() + header_timeout,
            NextRequest::Unknown => Instant::now() + KEEPALIVE_TIMEOUT + header_timeout,
            NextRequest::None => return,
        };
        session = ServerSession::new_http1(stream);
        if let Some(p) = persistent {
            p.apply_to_session(&mut session);
        }
    }
}

/// How long an idle client connection (either listener) waits for its next request.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// Whether the request being served on this connection has its whole head: set from
    /// the proxy's first hook, read by [`head_overdue`].
    static HEAD_READ: Cell<bool>;
}

/// Tells [`serve_http1`] that the current request's head has been read. Called from the
/// proxy's first hook; a no-op outside `serve_http1` (HTTP/2 streams).
pub(crate) fn head_read() {
    let _ = HEAD_READ.try_with(|h| h.set(true));
}

/// Completes at `deadline` unless the head was read by then; otherwise never.
async fn head_overdue(deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    if HEAD_READ.try_with(Cell::get).unwrap_or(true) {
        std::future::pending::<()>().await;
    }
}

enum NextRequest {
    /// A byte of the next request has arrived.
    Started,
    /// The stream cannot be peeked (TLS): the next head's clock includes the idle wait.
    Unknown,
    /// Closed, idle for too long, or shutting down.
    None,
}

/// Waits on a keep-alive connection for the first byte of the next request.
async fn next_request(stream: &mut Stream, shutdown: &ShutdownWatch) -> NextRequest {
    let mut shutdown = shutdown.clone();
    let mut byte = [0u8; 1];
    let idle = tokio::time::sleep(KEEPALIVE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        if *shutdown.borrow() {
            return NextRequest::None;
        }
        tokio::select! {
            peeked = stream.try_peek(&mut byte) => return match peeked {
                Ok(true) => NextRequest::Started,
                Ok(false) => NextRequest::Unknown,
                Err(_) => NextRequest::None,
            },
            changed = shutdown.changed() => if changed.is_err() { return NextRequest::None },
            () = &mut idle => return NextRequest::None,
        }
    }
}

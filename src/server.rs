//! Listeners, connection tasks and graceful shutdown.
//!
//! The sidecar runs Pingora's listening service and HTTP proxy inside its own runtime
//! instead of Pingora's `Server`. It binds the sockets itself (so port 0 works, the real
//! address is known and a bind error is a clear start-up error) and hands them to Pingora
//! through its inherited-socket table; Pingora accepts, buffers and drives the
//! connections. The sidecar reports readiness once everything is bound and shuts down
//! gracefully on its own terms:
//!
//! 1. `/readyz` turns 503 and the listeners close: new connections are refused;
//! 2. HTTP/1 keep-alive connections are closed after their current request, idle ones at
//!    once; HTTP/2 clients get GOAWAY;
//! 3. in-flight requests get `server.grace_period` to finish; whatever is left after that
//!    is cut (and counted in the log).
//!
//! Unlike Pingora's `Server`, the process exits as soon as the last request is done rather
//! than always sleeping out the grace period.

use crate::admin::{self, Readiness};
use crate::config::watch::{self, ReloadHandle};
use crate::config::{ConfigStore, ReloadOutcome};
use crate::forward::ForwardFront;
use crate::observability::audit::AuditLog;
use crate::observability::otlp::Spans;
use crate::proxy::serve::{serve_http1, Connections};
use crate::proxy::SidecarProxy;
use crate::upstream::dns::Resolver;
use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::{
    L4BufferSettings, Stream as L4Stream, DEFAULT_L4_WRITE_BUFFER_SIZE,
};
use pingora::protocols::Stream;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service as _;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch as tokio_watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the server is started.
#[derive(Default)]
pub struct Options {
    /// Handle SIGHUP (reload), SIGTERM and SIGINT (graceful shutdown). The binary sets
    /// this; tests start several sidecars in one process and leave it off.
    pub handle_signals: bool,
    /// DNS resolver; default: the system configuration.
    pub resolver: Option<Arc<Resolver>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot start OTLP export to {endpoint}: {reason}")]
    Telemetry { endpoint: String, reason: String },
    #[error("cannot open the audit log ({target}): {source}")]
    Audit {
        target: String,
        source: std::io::Error,
    },
}

type Proxy = HttpProxy<SidecarProxy>;

/// A running sidecar.
pub struct Sidecar {
    reverse_addr: SocketAddr,
    forward_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    store: Arc<ConfigStore>,
    reload: ReloadHandle,
    ready: Arc<Readiness>,
    service_done: tokio::task::JoinHandle<()>,
    shutdown_tx: tokio_watch::Sender<bool>,
    hard_stop: CancellationToken,
    background_stop: CancellationToken,
    connections: Arc<Connections>,
    signal_shutdown: Arc<Notify>,
    audit: Option<Arc<AuditLog>>,
    spans: Option<Arc<Spans>>,
}

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every connection finished within the grace period.
    pub drained: bool,
    /// Connections still open when the grace period ended (they were cut).
    pub cut: usize,
}

/// The accept queue of each listener (the kernel caps it at `net.core.somaxconn`).
/// Tokio's `TcpListener::bind` asks for 1,024, which a burst of new connections from the
/// app overflows; Pingora's own listeners ask for 65,535.
const LISTEN_BACKLOG: u32 = 65_535;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the listeners and starts serving with the store's config.
pub async fn build_server(store: Arc<ConfigStore>, opts: Options) -> Result<Sidecar, StartError> {
    let startup = store.applied_startup().clone();
    let reverse = bind(startup.reverse).map_err(|source| StartError::Bind {
        which: "listeners.reverse",
        addr: startup.reverse,
        source,
    })?;
    let admin = bind(startup.admin).map_err(|source| StartError::Bind {
        which: "listeners.admin",
        addr: startup.admin,
        source,
    })?;
    let forward = match startup.forward {
        Some(addr) => Some(bind(addr).map_err(|source| StartError::Bind {
            which: "listeners.forward",
            addr,
            source,
        })?),
        None => None,
    };
    let reverse_addr = reverse.local_addr().unwrap_or(startup.reverse);
    let forward_addr = forward.as_ref().map(|l| {
        l.local_addr()
            .unwrap_or_else(|_| startup.forward.unwrap_or(reverse_addr))
    });
    let admin_addr = admin.local_addr().unwrap_or(startup.admin);

    let resolver = opts.resolver.unwrap_or_else(Resolver::from_system);
    let mut conf = ServerConf::default();
    conf.threads = startup.threads.max(1);
    // Pingora's pool is global but configured per thread.
    conf.upstream_keepalive_pool_size = startup.upstream_pool_size.div_ceil(conf.threads);
    conf.max_retries = 16;
    let conf = Arc::new(conf);
    let audit = match &startup.audit {
        Some(settings) => Some(AuditLog::start(settings, store.metrics().audit()).map_err(
            |source| StartError::Audit {
                target: settings.to_string(),
                source,
            },
        )?),
        None => None,
    };
    let spans = match &startup.telemetry {
        Some(t) => Some(Spans::start(t, store.metrics().spans()).map_err(|reason| {
            StartError::Telemetry {
                endpoint: t.endpoint.clone(),
                reason,
            }
        })?),
        None => None,
    };
    let mut proxy = http_proxy(
        &conf,
        SidecarProxy::new(
            &conf,
            store.clone(),
            resolver.clone(),
            audit.clone(),
            spans.clone(),
        ),
    );
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    proxy.server_options = Some(server_options);
    let proxy = Arc::new(proxy);

    let ready = Arc::new(Readiness::default());
    let hard_stop = CancellationToken::new();
    let background_stop = CancellationToken::new();
    let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
    let connections = Arc::new(Connections::default());

    let reload = watch::spawn(store.clone(), background_stop.clone())?;
    tokio::spawn(admin::serve(
        admin,
        store.clone(),
        ready.clone(),
        background_stop.clone(),
    ));
    // Pingora takes the bound socket over through its inherited-socket table.
    let key = reverse_addr.to_string();
    let mut fds = Fds::new();
    fds.add(
        key.clone(),
        reverse
            .into_std()
            .map_err(|source| StartError::Bind {
                which: "listeners.reverse",
                addr: reverse_addr,
                source,
            })?
            .into_raw_fd(),
    );
    let mut service = ListeningService::new(
        "llm-sidecar reverse".to_string(),
        Front {
            proxy: proxy.clone(),
            store: store.clone(),
            connections: connections.clone(),
            hard_stop: hard_stop.clone(),
        },
    );
    service.add_listener(listener_config(&key));
    let mut forward_service = None;
    if let (Some(listener), Some(addr)) = (forward, forward_addr) {
        let key = addr.to_string();
        fds.add(
            key.clone(),
            listener
                .into_std()
                .map_err(|source| StartError::Bind {
                    which: "listeners.forward",
                    addr,
                    source,
                })?
                .into_raw_fd(),
        );
        let mut svc = ListeningService::new(
            "llm-sidecar forward".to_string(),
            ForwardFront {
                proxy: proxy.clone(),
                store: store.clone(),
                resolver,
                connections: connections.clone(),
                hard_stop: hard_stop.clone(),
            },
        );
        svc.add_listener(listener_config(&key));
        forward_service = Some(svc);
    }
    let fds = Arc::new(parking_lot::Mutex::new(fds));
    let service_done = tokio::spawn(async move {
        let reverse = service.start_service(Some(fds.clone()), shutdown_rx.clone(), 1);
        match forward_service {
            Some(mut f) => {
                let forward = f.start_service(Some(fds), shutdown_rx, 1);
                tokio::join!(reverse, forward);
            }
            None => reverse.await,
        }
    });

    let signal_shutdown = Arc::new(Notify::new());
    if opts.handle_signals {
        spawn_signal_handlers(reload.clone(), signal_shutdown.clone(), hard_stop.clone())?;
    }

    let snap = store.load();
    for w in &snap.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        reverse = %reverse_addr,
        forward = forward_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        admin = %admin_addr,
        config = %store.path().display(),
        hash = %snap.hash,
        routes = snap.routes.len(),
        providers = snap.providers.len(),
        "llm-sidecar listening"
    );
    ready.set(true);
    Ok(Sidecar {
        reverse_addr,
        forward_addr,
        admin_addr,
        store,
        reload,
        ready,
        service_done,
        shutdown_tx,
        hard_stop,
        background_stop,
        connections,
        signal_shutdown,
        audit,
        spans,
    })
}

fn spawn_signal_handlers(
    reload: ReloadHandle,
    shutdown: Arc<Notify>,
    hard_stop: CancellationToken,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e: std::io::Error| StartError::Watch(notify::Error::io(e));
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload.signal();
        }
    });
    tokio::spawn(async move {
        let mut asked = false;
        loop {
            let name = tokio::select! {
                s = term.recv() => { if s.is_none() { return } "SIGTERM" }
                s = int.recv() => { if s.is_none() { return } "SIGINT" }
            };
            if asked {
                tracing::warn!("{name} received again: stopping now, cutting open requests");
                hard_stop.cancel();
                return;
            }
            asked = true;
            tracing::info!("{name} received: draining (send it again to stop at once)");
            shutdown.notify_one();
        }
    });
    Ok(())
}

/// A client listener without Pingora's 64 KiB per-connection read buffer: the HTTP/1
/// parser and the TLS layer read into buffers of their own, so it only added a copy, and
/// it was most of the memory an open stream costs (see BENCHMARKS.md).
fn listener_config(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE))
}

/// Pingora's HTTP proxy plus connection accounting: counts open client connections (the
/// drain waits for them) and can cut them all at once when the grace period runs out.
struct Front {
    proxy: Arc<Proxy>,
    store: Arc<ConfigStore>,
    connections: Arc<Connections>,
    hard_stop: CancellationToken,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum FirstBytes {
    Http1(Stream),
    Http2(Stream),
}

impl Front {
    /// Waits for the client's first bytes and tells HTTP/1 from HTTP/2 (prior knowledge).
    ///
    /// Pingora's own check reads exactly 24 bytes with no timeout: an HTTP/1 request
    /// shorter than that (`GET / HTTP/1.0` + CRLFs is 18) would wait forever, and so
    /// does a connection that sends nothing, holding up shutdown. This reads only until
    /// the bytes stop matching the HTTP/2 preface, gives up at `deadline` (the head's,
    /// from `request.header_timeout`) or at shutdown, and puts the bytes back.
    async fn first_bytes(
        stream: Stream,
        shutdown: &ShutdownWatch,
        deadline: Instant,
    ) -> Option<FirstBytes> {
        use tokio::io::AsyncReadExt;
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(s) => s,
            // Not a plain TCP stream (none today): nothing to rewind, assume HTTP/1.
            Err(_) => return None,
        };
        let mut buf = [0u8; 24];
        let mut n = 0;
        let mut shutdown = shutdown.clone();
        let is_h2 = loop {
            if *shutdown.borrow() {
                return None;
            }
            let read = tokio::select! {
                r = l4.read(&mut buf[n..]) => r.ok()?,
                _ = shutdown.changed() => continue,
                _ = tokio::time::sleep_until(deadline) => return None,
            };
            if read == 0 {
                return None;
            }
            n += read;
            if buf[..n] != H2_PREFACE[..n] {
                break false;
            }
            if n == H2_PREFACE.len() {
                break true;
            }
        };
        l4.rewind(&buf[..n]);
        let stream: Stream = l4;
        Some(if is_h2 {
            FirstBytes::Http2(stream)
        } else {
            FirstBytes::Http1(stream)
        })
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The first request's head, from accept: a connection that sends nothing, or
        // trickles, is closed after `request.header_timeout`.
        let head_deadline = Instant::now() + self.store.load().guards.header_timeout;
        let serve = async {
            match Self::first_bytes(stream, shutdown, head_deadline).await {
                Some(FirstBytes::Http1(s)) => {
                    serve_http1(&self.proxy, &self.store, s, shutdown, head_deadline).await
                }
                // h2c is on in Pingora's options; its 24-byte check now returns at once
                // from the rewound bytes and it runs its HTTP/2 loop.
                Some(FirstBytes::Http2(s)) => {
                    self.proxy.process_new(s, shutdown).await;
                }
                None => {}
            }
        };
        self.connections.serve(&self.hard_stop, serve).await;
        None
    }

    /// Runs once the listener stopped: wakes keep-alive connections idling for their
    /// next request so they close now.
    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

impl Sidecar {
    /// Where apps send requests (the actual port when the config said 0).
    pub fn reverse_addr(&self) -> SocketAddr {
        self.reverse_addr
    }

    /// The HTTPS_PROXY listener's address, when `listeners.forward` is set.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Reloads the config now and returns what happened.
    pub async fn reload(&self) -> Option<ReloadOutcome> {
        self.reload.reload_now().await
    }

    /// Open client connections.
    pub fn open_connections(&self) -> usize {
        self.connections.count()
    }

    /// Waits for SIGTERM or SIGINT (with `handle_signals`), then shuts down gracefully.
    pub async fn run_until_signal(self) -> ShutdownReport {
        self.signal_shutdown.notified().await;
        self.shutdown().await
    }

    /// Stops accepting, lets in-flight requests finish within `server.grace_period`,
    /// then stops.
    pub async fn shutdown(self) -> ShutdownReport {
        let grace = self.store.load().grace_period;
        self.shutdown_with_grace(grace).await
    }

    pub async fn shutdown_with_grace(self, grace: Duration) -> ShutdownReport {
        self.ready.set(false);
        // Pingora's listener stops accepting (the port then refuses connections), h1
        // keep-alive ends after the current request, h2 clients get GOAWAY; then
        // `Front::cleanup` wakes idle keep-alive connections so they close.
        let _ = self.shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.service_done).await;
        let open = self.connections.count();
        if open > 0 {
            tracing::info!(connections = open, grace = ?grace, "waiting for in-flight requests");
        }
        let drained = tokio::select! {
            _ = self.connections.wait_zero() => true,
            _ = tokio::time::sleep(grace) => false,
            _ = self.hard_stop.cancelled() => false,
        };
        let cut = self.connections.count();
        if !drained {
            tracing::warn!(
                connections = cut,
                "grace period over: closing connections still open"
            );
            self.hard_stop.cancel();
            // Let the cancelled tasks drop their connections.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.connections.wait_zero()).await;
        }
        self.background_stop.cancel();
        if let Some(spans) = self.spans.clone() {
            // The spans of the last attempts (the collector may be down: bounded).
            let _ = tokio::task::spawn_blocking(move || spans.close(Duration::from_secs(2))).await;
        }
        if let Some(audit) = self.audit.clone() {
            // The last records of the requests that just finished.
            let _ = tokio::task::spawn_blocking(move || audit.close(Duration::from_secs(5))).await;
        }
        tracing::info!(drained, cut, "llm-sidecar stopped");
        ShutdownReport { drained, cut }
    }
}

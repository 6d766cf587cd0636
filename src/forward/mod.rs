//! The HTTPS_PROXY listener: `CONNECT` and absolute-form requests, and what happens to
//! each.
//!
//! ```text
//!  app ── CONNECT api.openai.com:443 ──► forward listener
//!                                         │ read head (≤ max_header_bytes, 60 s)
//!                                         │ Proxy-Authorization → user → tenant (407 if wrong)
//!                                         │ decide(host, port):
//!          ┌──────────────────────────────┼───────────────────────────────┐
//!     intercept                       passthrough                       refuse
//!  (a route matches the host,    (forward.passthrough matches;     403 + x-llm-sidecar-error
//!   port allowed)                 resolve, check every address     (host_not_allowed,
//!  200, TLS-accept with a leaf    with the guard, dial the          port_not_allowed,
//!  minted for the host (h2 or     checked address)                  blocked_address, ...)
//!  http/1.1 by ALPN), then the    200, copy bytes both ways
//!  same Pingora pipeline as       (idle/total limits); never
//!  base-URL mode                  decrypted
//! ```
//!
//! Plain `http://` absolute-form requests (`HTTP_PROXY`) take the same three ways, one
//! request at a time: an intercepted request goes to the pipeline (and the connection
//! comes back for the next request), a pass-through request is sent to the origin in
//! origin form with `Connection: close` and its response tunnelled back.
//!
//! An intercepted request never reaches the host it named: it goes to the route's
//! provider, exactly as in base-URL mode. Only pass-through dials the named host, which
//! is why the address guard ([`guard`]) sits on that path.
//!
//! The request path learns about the CONNECT through the connection's [`ProxyDigest`]:
//! its user data is a [`ForwardConn`] (the host the app asked for and the proxy user's
//! tenant), set on the socket before TLS and visible to HTTP/1 and HTTP/2 sessions alike.

pub mod ca;
pub mod guard;
pub mod head;
pub mod settings;
pub mod stream;
pub mod tunnel;

use crate::config::{ConfigStore, Snapshot};
use crate::observability::metrics::ForwardMetrics;
use crate::proxy::serve::{Connections, KEEPALIVE_TIMEOUT};
use crate::proxy::{SidecarProxy, CLIENT_READ_TIMEOUT};
use crate::upstream::dns::Resolver;
use async_trait::async_trait;
use head::{Head, HeadError};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use settings::ip_literal;
pub use settings::{
    Decision, ForwardConn, ForwardSettings, PassRule, ProxyAuth, ProxyUser, Refusal, TunnelLimits,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// How long an app may take to finish its TLS handshake after `200`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes a refusal and closes the write side.
async fn refuse<S>(stream: &mut S, why: Refusal, message: &str)
where
    S: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let (code, text) = why.status();
    let body = format!("llm-sidecar: {message}\n");
    let mut out = format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nx-llm-sidecar-error: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        why.as_str(),
        body.len()
    );
    if why == Refusal::ProxyAuth {
        out.push_str("Proxy-Authenticate: Basic realm=\"llm-sidecar\"\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

fn refusal_message(why: Refusal, host: &str, port: u16) -> String {
    match why {
        Refusal::HostNotAllowed => format!(
            "{host}:{port} is neither intercepted (no route matches the host) nor on forward.passthrough"
        ),
        Refusal::PortNotAllowed => format!("port {port} is not allowed for {host} (forward.ports)"),
        Refusal::BlockedAddress(b) => format!(
            "{host}:{port} is a {} address; destinations like this need an entry in forward.allow_private",
            b.as_str()
        ),
        Refusal::ProxyAuth => "proxy authentication required".into(),
        Refusal::Dns => format!("cannot resolve {host}"),
        Refusal::Connect => format!("cannot connect to {host}:{port}"),
        Refusal::ConnectTimeout => format!("timed out connecting to {host}:{port}"),
        Refusal::SniMismatch | Refusal::BadRequest | Refusal::HeadTooLarge => {
            "bad request".into()
        }
    }
}

type Proxy = HttpProxy<SidecarProxy>;

/// The forward listener's connection handler.
pub struct ForwardFront {
    pub proxy: Arc<Proxy>,
    pub store: Arc<ConfigStore>,
    pub resolver: Arc<Resolver>,
    pub connections: Arc<Connections>,
    pub hard_stop: CancellationToken,
}

enum Next {
    /// The connection is done.
    Done,
    /// A plain-HTTP request was served; read the next one from this stream.
    Again(Box<L4Stream>),
}

impl ForwardFront {
    fn metrics(&self) -> &ForwardMetrics {
        self.store.metrics().forward()
    }

    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
            return;
        };
        let mut first = true;
        loop {
            let snap = self.store.load();
            let wait = if first {
                CLIENT_READ_TIMEOUT
            } else {
                KEEPALIVE_TIMEOUT
            };
            first = false;
            let mut sd = shutdown.clone();
            let read = head::read(&mut *l4, snap.guards.max_header_bytes, wait);
            let head = tokio::select! {
                h = read => h,
                _ = sd.changed() => return,
            };
            let head = match head {
                Ok(h) => h,
                Err(HeadError::Closed | HeadError::Timeout | HeadError::Io(_)) => return,
                Err(e) => {
                    let why = if matches!(e, HeadError::TooLarge(_)) {
                        Refusal::HeadTooLarge
                    } else {
                        Refusal::BadRequest
                    };
                    self.metrics().decision("unknown", "refuse", why.as_str());
                    refuse(&mut *l4, why, &e.to_string()).await;
                    return;
                }
            };
            match self.handle(l4, head, &snap, shutdown).await {
                Next::Done => return,
                Next::Again(s) => l4 = s,
            }
        }
    }

    async fn handle(
        &self,
        mut l4: Box<L4Stream>,
        head: Head,
        snap: &Arc<Snapshot>,
        shutdown: &ShutdownWatch,
    ) -> Next {
        let fwd = &snap.forward;
        let kind = if head.is_connect() { "connect" } else { "http" };
        let (host, port) = head.host_port();
        let (host, port) = (host.to_string(), port);
        let user = match fwd.authenticate(head.header("proxy-authorization")) {
            Ok(u) => u.cloned(),
            Err(why) => {
                self.metrics().decision(kind, "refuse", why.as_str());
                refuse(&mut *l4, why, &refusal_message(why, &host, port)).await;
                return Next::Done;
            }
        };
        let decision = match fwd.decide(&host, port) {
            Ok(d) => d,
            Err(why) => {
                self.metrics().decision(kind, "refuse", why.as_str());
                tracing::info!(kind, host = %host, port, reason = why.as_str(), user = user.as_ref().map(|u| &*u.name), "forward proxy request refused");
                refuse(&mut *l4, why, &refusal_message(why, &host, port)).await;
                return Next::Done;
            }
        };
        let conn = ForwardConn {
            host: host.clone().into_boxed_str(),
            port,
            tenant: user.map(|u| u.tenant),
        };
        match (head.is_connect(), decision) {
            (true, Decision::Intercept) => {
                self.metrics().decision(kind, "intercept", "");
                self.intercept_tls(l4, head, conn, snap, shutdown).await;
                Next::Done
            }
            (true, Decision::Passthrough) | (false, Decision::Passthrough) => {
                match self.dial(&host, port, snap).await {
                    Ok(mut upstream) => {
                        self.metrics().decision(kind, "passthrough", "");
                        let early = if head.is_connect() {
                            if established(&mut l4).await.is_err() {
                                return Next::Done;
                            }
                            head.buf[head.len..].to_vec()
                        } else {
                            let mut e = head.origin_form();
                            e.extend_from_slice(&head.buf[head.len..]);
                            e
                        };
                        let (end, bytes) = tunnel::run(
                            &mut *l4,
                            &mut upstream,
                            &early,
                            fwd.tunnel.idle,
                            fwd.tunnel.total,
                            self.metrics(),
                        )
                        .await;
                        tracing::debug!(host = %host, port, ?end, up = bytes.upstream, down = bytes.downstream, "tunnel closed");
                    }
                    Err(why) => {
                        self.metrics().decision(kind, "refuse", why.as_str());
                        tracing::info!(kind, host = %host, port, reason = why.as_str(), "forward proxy request refused");
                        refuse(&mut *l4, why, &refusal_message(why, &host, port)).await;
                    }
                }
                Next::Done
            }
            (false, Decision::Intercept) => {
                self.metrics().decision(kind, "intercept", "");
                l4.rewind(&head.buf);
                l4.set_proxy_digest(proxy_digest(conn));
                let mut session = ServerSession::new_http1(l4);
                session.set_keepalive(if *shutdown.borrow() {
                    None
                } else {
                    Some(KEEPALIVE_TIMEOUT.as_secs())
                });
                let reused = self.proxy.process_new_http(session, shutdown).await;
                match reused.map(|r| r.consume().0.into_any().downcast::<L4Stream>()) {
                    Some(Ok(s)) => Next::Again(s),
                    _ => Next::Done,
                }
            }
        }
    }

    /// Answers 200, terminates TLS as the host, and serves the decrypted stream.
    async fn intercept_tls(
        &self,
        mut l4: Box<L4Stream>,
        head: Head,
        conn: ForwardConn,
        snap: &Arc<Snapshot>,
        shutdown: &ShutdownWatch,
    ) {
        let Some(authority) = snap.forward.authority.clone() else {
            // Config validation requires a CA whenever the listener is on.
            return;
        };
        if established(&mut l4).await.is_err() {
            return;
        }
        l4.rewind(&head.buf[head.len..]);
        let host = conn.host.clone();
        l4.set_proxy_digest(proxy_digest(conn));
        let stream: Stream = l4;
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let handshake = async {
            let start = acceptor.await.map_err(|e| e.to_string())?;
            if let Some(sni) = start.client_hello().server_name() {
                if !sni.eq_ignore_ascii_case(&host) {
                    self.metrics()
                        .decision("connect", "refuse", Refusal::SniMismatch.as_str());
                    return Err(format!("the app asked CONNECT {host} but TLS for {sni}"));
                }
            }
            let config = authority.server_config(&host).map_err(|e| e.to_string())?;
            start.into_stream(config).await.map_err(|e| e.to_string())
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(reason)) => {
                self.metrics().handshake_failed();
                tracing::info!(host = %host, %reason, "TLS handshake with the app failed (does it trust the sidecar's CA?)");
                return;
            }
            Err(_) => {
                self.metrics().handshake_failed();
                tracing::info!(host = %host, "TLS handshake with the app timed out");
                return;
            }
        };
        let tls = stream::InterceptedStream::new(tls);
        let h2 = tls.alpn() == Some(ALPN::H2);
        let stream: Stream = Box::new(tls);
        if h2 {
            // Pingora's HTTP app sees ALPN h2 on the stream and runs its HTTP/2 loop.
            self.proxy.process_new(stream, shutdown).await;
        } else {
            let deadline = tokio::time::Instant::now() + self.store.load().guards.header_timeout;
            crate::proxy::serve::serve_http1(&self.proxy, &self.store, stream, shutdown, deadline)
                .await;
        }
    }

    /// Resolves and checks the destination of a pass-through, and connects to a checked
    /// address.
    async fn dial(
        &self,
        host: &str,
        port: u16,
        snap: &Snapshot,
    ) -> Result<tokio::net::TcpStream, Refusal> {
        let fwd = &snap.forward;
        let addrs: Vec<SocketAddr> = if let Some(a) = snap.dns_overrides.lookup(host, port) {
            vec![a]
        } else if let Some(ip) = ip_literal(host) {
            vec![SocketAddr::new(ip, port)]
        } else {
            self.resolver
                .resolve(host, port)
                .await
                .map_err(|_| Refusal::Dns)?
        };
        if addrs.is_empty() {
            return Err(Refusal::Dns);
        }
        // One internal address in the answer refuses the whole name: a mixed answer is
        // what a rebinding attack looks like.
        for a in &addrs {
            fwd.allow_private
                .check(host, a.ip())
                .map_err(Refusal::BlockedAddress)?;
        }
        let mut last = Refusal::Connect;
        for a in addrs {
            match tokio::time::timeout(fwd.tunnel.connect, tokio::net::TcpStream::connect(a)).await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(_)) => last = Refusal::Connect,
                Err(_) => last = Refusal::ConnectTimeout,
            }
        }
        Err(last)
    }
}

/// Tells the app its tunnel is up. Pingora's sockets buffer writes: flush, or the `200`
/// waits behind the app's TLS ClientHello, which waits for the `200`.
async fn established(l4: &mut L4Stream) -> std::io::Result<()> {
    l4.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    l4.flush().await
}

/// The digest that carries `conn` to the request path, with the `200` the app got.
fn proxy_digest(conn: ForwardConn) -> ProxyDigest {
    let (parts, ()) = http::Response::new(()).into_parts();
    ProxyDigest::new(Box::new(ResponseHeader::from(parts)), Some(Box::new(conn)))
}

#[async_trait]
impl ServerApp for ForwardFront {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.connections
            .serve(&self.hard_stop, self.serve(stream, shutdown))
            .await;
        None
    }
}

#[cfg(test)]
mod tests;

//! Providers as the request path sees them: where to connect, how to speak TLS, which
//! credential and headers to send, and the timeouts of an attempt.
//!
//! Everything here is computed at config load: the Pingora `PeerOptions` template (ALPN,
//! pool idle timeout, h2 streams, trust list, connect timeouts), the `Host` value, SNI and
//! the strip list. Building the `HttpPeer` for an attempt is a struct copy with the
//! resolved address filled in.

pub mod dns;
pub mod trust;

use crate::auth::Auth;
use crate::config::schema::ProviderKind;
use crate::observability::metrics::ProviderMetrics;
use crate::proxy::errors::ErrorStyle;
use dns::{DnsSettings, HostEntry};
use http::{HeaderName, HeaderValue};
use pingora::protocols::l4::ext::TcpKeepalive;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Per-attempt time limits (see `docs/configuration.md#timeouts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub tls: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

pub struct Provider {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub style: ErrorStyle,
    pub tls: bool,
    /// `Host` header value: the base URL's host, with the port when it is not the default.
    pub authority: HeaderValue,
    pub sni: String,
    pub base_path: String,
    pub endpoint: Arc<HostEntry>,
    pub dns: DnsSettings,
    pub peer_options: PeerOptions,
    pub timeouts: Timeouts,
    pub auth: Arc<Auth>,
    /// A tenant's own credentials for this provider, by tenant index.
    pub tenant_auth: Vec<Option<Arc<Auth>>>,
    /// Provider-specific headers, always set (values may be secrets: marked sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers set only when the client did not send them (e.g. `anthropic-version`).
    pub defaults: Vec<(HeaderName, HeaderValue)>,
    /// Client headers removed before forwarding: credentials, tenant headers, and every
    /// header this provider sets itself.
    pub strip: Box<[HeaderName]>,
    pub metrics: ProviderMetrics,
    /// The endpoint's circuit breaker (None: turned off).
    pub breaker: Option<Arc<crate::resilience::Breaker>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("sni", &self.sni)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The parts of a provider's settings that shape its connections.
pub struct PeerSettings<'a> {
    pub tls: bool,
    pub http2: bool,
    pub max_h2_streams: usize,
    pub idle_timeout: Duration,
    pub timeouts: &'a Timeouts,
    pub trust: Option<trust::TrustList>,
}

pub fn peer_options(s: PeerSettings<'_>) -> PeerOptions {
    let mut o = PeerOptions::new();
    o.connection_timeout = Some(s.timeouts.connect);
    if s.tls {
        // Pingora's own handshake timer (vendor patch 0003; without it the handshake
        // would get `connect`).
        o.tls_handshake_timeout = Some(s.timeouts.tls);
        o.total_connection_timeout = Some(s.timeouts.connect + s.timeouts.tls);
    }
    // The attempt driver enforces first-byte, idle and total precisely; Pingora's own read
    // timer is a backstop a little behind it.
    o.read_timeout = Some(s.timeouts.first_byte.max(s.timeouts.idle) + Duration::from_secs(1));
    o.write_timeout = Some(s.timeouts.idle);
    o.idle_timeout = Some(s.idle_timeout);
    o.alpn = if s.tls && s.http2 {
        ALPN::H2H1
    } else {
        ALPN::H1
    };
    o.max_h2_streams = s.max_h2_streams.max(1);
    o.verify_cert = true;
    o.verify_hostname = true;
    o.ca = s.trust;
    o.tcp_keepalive = Some(TcpKeepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        count: 3,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::from_secs(0),
    });
    o
}

impl Provider {
    /// The credentials for a tenant: its own, or the provider's.
    pub fn auth_for(&self, tenant: usize) -> &Arc<Auth> {
        self.tenant_auth
            .get(tenant)
            .and_then(Option::as_ref)
            .unwrap_or(&self.auth)
    }

    /// The Pingora peer for one connection try to `addr`.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut p = HttpPeer::new(addr, self.tls, self.sni.clone());
        p.options = self.peer_options.clone();
        p
    }
}

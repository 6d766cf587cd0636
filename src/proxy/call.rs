//! The upstream call of one attempt: the request as the provider sees it, and the pooled
//! connection (HTTP/1.1 or HTTP/2) it goes on.
//!
//! The attempt drives pingora-core's connector and client sessions itself, inside the
//! client's own request: no second proxy pipeline (subrequest) per attempt. What Pingora's
//! proxy loop did on the way is done here, in this order:
//!
//! ```text
//!  request_for   the client's head → hop-by-hop headers (and any `Connection` names) out,
//!                path, Host, client credentials and tenant headers stripped, provider and
//!                tenant headers in, traceparent, signature last
//!  connect       async DNS → each address in turn until one connects; pooled (h1 or h2)
//!  send          head and body (the whole body, from memory: any attempt can replay it)
//!  read_head     the provider's status line and headers (1xx skipped)
//! ```

use super::{attempt, AttemptPlan};
use crate::auth::SignContext;
use crate::observability::trace;
use crate::upstream::dns::Resolver;
use bytes::Bytes;
use http::header::{self, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Instant;

/// Request bodies are written to the provider in slices of this size.
const BODY_SLICE: usize = 256 * 1024;

/// Where attempts get their connections: one connector (and so one pool) per sidecar.
pub struct Upstream {
    connector: Connector,
    resolver: Arc<Resolver>,
}

impl Upstream {
    pub fn new(conf: &ServerConf, resolver: Arc<Resolver>) -> Upstream {
        Upstream {
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            resolver,
        }
    }
}

/// One attempt's connection to the provider.
pub struct Call {
    session: HttpSession,
    peer: HttpPeer,
    /// The connection came from the pool.
    reused: bool,
}

/// A call that failed before any response byte.
pub struct Failed {
    pub error: Box<Error>,
    /// It failed on a pooled connection the provider had closed: a fresh connection is
    /// worth one more try.
    pub stale: bool,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), on top of
/// the ones the client's `Connection` names.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// At most this many `Connection` options are honoured (the guards refuse the dangerous
/// ones before a request gets here).
const MAX_CONNECTION_OPTIONS: usize = 16;

/// The request as the provider sees it, from the client's head. Hop-by-hop headers go
/// first, so nothing set here can be stripped by a client's `Connection: authorization`.
pub fn request_for(client: &RequestHeader, plan: &AttemptPlan) -> Result<Box<RequestHeader>> {
    let mut req = Box::new(client.clone());
    req.set_version(http::Version::HTTP_11);
    let named: Vec<http::HeaderName> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .take(MAX_CONNECTION_OPTIONS)
        .filter_map(|t| http::HeaderName::from_bytes(t).ok())
        .collect();
    for name in &named {
        req.remove_header(name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
    let p = &plan.provider;
    req.set_uri(plan.uri.clone());
    for name in p.strip.iter().chain(plan.tenant.strip.iter()) {
        req.remove_header(name);
    }
    if let Some(prefix) = plan.auth.signer.strip_prefix() {
        let doomed: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with(prefix))
            .cloned()
            .collect();
        for name in doomed {
            req.remove_header(&name);
        }
    }
    req.remove_header(&EXPECT);
    req.remove_header(&TRANSFER_ENCODING);
    if let Some(r) = &plan.reply {
        // A translated answer is rewritten: it must come uncompressed, as JSON.
        req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        req.insert_header(header::CONTENT_TYPE, "application/json")?;
        // The client SDK's own headers (its API's options, its telemetry) mean nothing
        // to a provider of another API, and could be read as options there.
        let foreign: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| sdk_header_foreign_to(n.as_str(), r.front, r.target))
            .cloned()
            .collect();
        for n in foreign {
            req.remove_header(&n);
        }
    }
    let method_has_body = !matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
    );
    if !plan.body.is_empty() || method_has_body {
        req.insert_header(CONTENT_LENGTH, plan.body.len().to_string())?;
    } else {
        req.remove_header(&CONTENT_LENGTH);
    }
    req.insert_header(HOST, p.authority.clone())?;
    for (n, v) in &p.defaults {
        if !req.headers.contains_key(n) {
            req.insert_header(n.clone(), v.clone())?;
        }
    }
    for (n, v) in plan.tenant.inject.iter() {
        req.insert_header(n.clone(), v.clone())?;
    }
    for (n, v) in &p.headers {
        req.insert_header(n.clone(), v.clone())?;
    }
    // Trace context: a child span of the client's (or of a trace started here).
    req.insert_header(trace::TRACEPARENT, plan.trace.child_header(plan.span))?;
    match &plan.trace.state {
        Some(state) => req.insert_header(trace::TRACESTATE, state.clone())?,
        None => {
            req.remove_header(trace::TRACESTATE);
        }
    }
    // Signing comes last: SigV4 covers content-type and x-amzn-* as finally sent.
    let method = req.method.clone();
    let cx = SignContext {
        method: method.as_str(),
        path_and_query: plan.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        host: p.authority.to_str().unwrap_or_default(),
        body: &plan.body,
        body_sha256: &plan.body_sha256,
        now: std::time::SystemTime::now(),
        credential: &plan.credential,
    };
    plan.auth.signer.sign(&mut req, &cx).map_err(|e| {
        tracing::error!(provider = %p.name, error = %e, "signing failed");
        Error::explain(ErrorType::Custom(attempt::SIGNING_ERROR), e.to_string())
    })?;
    Ok(req)
}

/// Connects (or takes a pooled connection), sends the request and reads the response
/// head. Cancelling the future abandons the call.
pub async fn start(
    up: &Upstream,
    plan: &AttemptPlan,
    req: Box<RequestHeader>,
) -> std::result::Result<Call, Failed> {
    let mut call = connect(up, plan).await.map_err(|error| Failed {
        error,
        stale: false,
    })?;
    let sent = match send(&mut call, req, &plan.body).await {
        Ok(()) => read_head(&mut call).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => Ok(call),
        Err(mut error) => {
            if matches!(error.etype(), ErrorType::H2Downgrade | ErrorType::InvalidH2) {
                up.connector.prefer_h1(&call.peer);
            }
            error.retry.decide_reuse(call.reused);
            let stale = call.reused
                && (error.retry.retry()
                    || matches!(
                        error.etype(),
                        ErrorType::WriteError | ErrorType::ConnectionClosed
                    ));
            call.abandon(up).await;
            Err(Failed { error, stale })
        }
    }
}

/// A pooled connection, or a new one to the first of the provider's addresses that
/// accepts it.
async fn connect(up: &Upstream, plan: &AttemptPlan) -> Result<Call> {
    let provider = &plan.provider;
    let candidates = provider
        .endpoint
        .candidates(&up.resolver, provider.dns)
        .await
        .map_err(|e| Error::explain(ErrorType::Custom(attempt::DNS_ERROR), e.to_string()))?;
    let m = &provider.metrics;
    let mut tries = 0;
    loop {
        let Some(addr) = candidates.get(tries) else {
            return Error::e_explain(
                ErrorType::ConnectError,
                format!("no more addresses to try for {}", provider.endpoint.host()),
            );
        };
        tries += 1;
        let peer = provider.peer(addr);
        let t0 = Instant::now();
        match up.connector.get_http_session(&peer).await {
            Ok((mut session, reused)) => {
                m.connection(reused);
                if reused {
                    m.pool_wait(t0.elapsed());
                } else {
                    // The whole setup is timed here; Pingora times the TCP layer
                    // (timing_digest[0]) when it can, and the TLS handshake is the rest.
                    let total = t0.elapsed();
                    let tcp = session.digest().and_then(|d| {
                        d.timing_digest
                            .first()
                            .and_then(Option::as_ref)
                            .and_then(|t| t.establishment_duration)
                    });
                    let handshake = tcp.map(|c| total.saturating_sub(c));
                    m.established(Some(total), provider.tls.then_some(handshake));
                }
                session.set_read_timeout(peer.options.read_timeout);
                session.set_write_timeout(peer.options.write_timeout);
                return Ok(Call {
                    session,
                    peer,
                    reused,
                });
            }
            // A connect failure moves on to the host's next address, if any.
            Err(e) if tries < candidates.len() => {
                tracing::debug!(provider = %provider.name, %addr, error = %e, "connect failed; trying the next address");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn send(call: &mut Call, mut req: Box<RequestHeader>, body: &Bytes) -> Result<()> {
    match &mut call.session {
        HttpSession::H1(h1) => {
            h1.write_request_header(req).await?;
            let mut off = 0;
            while off < body.len() {
                let end = (off + BODY_SLICE).min(body.len());
                h1.write_body(&body[off..end]).await?;
                off = end;
            }
            h1.finish_body().await?;
        }
        HttpSession::H2(h2) => {
            // HTTP/2 carries the authority in `:authority`, never as `Host`; the scheme
            // follows the peer.
            let host = req.remove_header(&HOST);
            let authority = host
                .as_ref()
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
            let pq = req
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            let mut uri = http::uri::Builder::new()
                .scheme(if call.peer.is_tls() { "https" } else { "http" })
                .path_and_query(pq);
            if let Some(a) = authority {
                uri = uri.authority(a);
            }
            let uri = uri.build().map_err(|e| {
                Error::because(ErrorType::InvalidHTTPHeader, "building the HTTP/2 URI", e)
            })?;
            req.set_uri(uri);
            req.set_version(http::Version::HTTP_2);
            let end = body.is_empty();
            h2.write_request_header(req, end)?;
            let mut off = 0;
            while off < body.len() {
                let end = (off + BODY_SLICE).min(body.len());
                h2.write_request_body(body.slice(off..end), end == body.len())
                    .await?;
                off = end;
            }
        }
        HttpSession::Custom(()) => {
            return Error::e_explain(ErrorType::InternalError, "custom upstream protocol")
        }
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head.
async fn read_head(call: &mut Call) -> Result<()> {
    loop {
        call.session.read_response_header().await?;
        match call.session.response_header() {
            Some(h) if h.status.is_informational() => continue,
            Some(_) => return Ok(()),
            None => {
                return Error::e_explain(ErrorType::H1Error, "no response header after reading it")
            }
        }
    }
}

impl Call {
    /// The response head as the client gets it. From HTTP/2 it is given HTTP/1.1 framing
    /// (the client side writes either version from it).
    pub fn response_for_client(&self, head_request: bool) -> Option<Box<ResponseHeader>> {
        let mut h = Box::new(self.session.response_header()?.clone());
        if matches!(self.session, HttpSession::H2(_)) {
            h.set_version(http::Version::HTTP_11);
            let no_body = head_request || matches!(h.status.as_u16(), 204 | 304);
            if !no_body && !h.headers.contains_key(CONTENT_LENGTH) {
                let _ = h.insert_header(TRANSFER_ENCODING, "chunked");
            }
        }
        Some(h)
    }

    /// The next piece of the response body; `None` at its end.
    pub async fn read_body(&mut self) -> Result<Option<Bytes>> {
        self.session.read_response_body().await
    }

    pub fn response_done(&mut self) -> bool {
        self.session.response_done()
    }

    /// The response was read to its end: the connection goes back to the pool if the
    /// provider allows it.
    pub async fn finish(self, up: &Upstream) {
        let idle = self.peer.options.idle_timeout;
        up.connector
            .release_http_session(self.session, &self.peer, idle)
            .await;
    }

    /// The call is given up before its end: an HTTP/1.1 connection is closed, an HTTP/2
    /// stream reset (its connection serves the others).
    pub async fn abandon(mut self, up: &Upstream) {
        match self.session {
            HttpSession::H2(_) => {
                self.session.shutdown().await;
                let idle = self.peer.options.idle_timeout;
                up.connector
                    .release_http_session(self.session, &self.peer, idle)
                    .await;
            }
            _ => self.session.shutdown().await,
        }
    }
}

/// A header that the client's SDK for `front` sends, which a `target` of another API
/// does not take: `anthropic-*` (but to Anthropic), `openai-*` (but to OpenAI-shaped
/// providers), and the SDKs' `x-stainless-*` telemetry.
fn sdk_header_foreign_to(
    name: &str,
    front: crate::translate::Api,
    target: crate::translate::Api,
) -> bool {
    use crate::translate::Api;
    if front == target {
        return false;
    }
    (name.starts_with("anthropic-") && target != Api::AnthropicMessages)
        || (name.starts_with("openai-") && target != Api::OpenAiChat)
        || name.starts_with("x-stainless-")
}

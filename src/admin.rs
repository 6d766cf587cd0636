//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`.
//!
//! It runs on its own port (default `127.0.0.1:9901`) so probes and scrapes never queue
//! behind LLM traffic. `/config` serves the effective config prepared at load time, with
//! every secret shown as `[redacted]`.

use crate::config::ConfigStore;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared readiness: true once the config is loaded and the listeners are bound; false
/// again as soon as shutdown starts, so Kubernetes stops sending traffic.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release)
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(req: &Request<Incoming>, store: &ConfigStore, ready: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            // Ready is about the sidecar itself; a provider with an open breaker is
            // reported as detail (other providers and fallbacks still serve).
            let mut detail = String::new();
            for (name, t) in &store.load().providers {
                if let crate::config::Target::Ready(p) = t {
                    if let Some(b) = &p.breaker {
                        let state = b.state();
                        if state != crate::resilience::breaker::State::Closed {
                            detail.push_str(&format!("breaker {name}: {}\n", state.as_str()));
                        }
                    }
                }
            }
            if ready.get() {
                text(StatusCode::OK, &format!("ready\n{detail}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready\n{detail}"),
                )
            }
        }
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(store.metrics().render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config" => {
            let snap = store.load();
            let mut r = Response::new(Full::new(snap.effective.clone()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&snap.hash) {
                r.headers_mut().insert("x-llm-sidecar-config-hash", v);
            }
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics or /config\n",
        ),
    }
}

/// Serves the admin API until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    store: Arc<ConfigStore>,
    ready: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        let ready = ready.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = route(&req, &store, &ready);
                async move { Ok::<_, Infallible>(resp) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Polls `url` (`http://host:port/path`, plain HTTP) until it answers 200 or `timeout`
/// passes; the error names the last thing that went wrong. Blocking: for the CLI.
pub fn wait_ready(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::{Duration, Instant};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = || -> Result<(), String> {
            let addr = authority
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {authority}: {e}"))?
                .next()
                .ok_or_else(|| format!("{authority} has no address"))?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("write: {e}"))?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
            match &head[9..12] {
                b"200" => Ok(()),
                code => Err(format!("status {}", String::from_utf8_lossy(code))),
            }
        };
        let last = match attempt() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready after {timeout:?} (last: {last})"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
